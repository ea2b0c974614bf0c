"""The chaos soak (README → Reliability): the whole system under random traffic, random exchange
faults and SIGKILLed function processes; at the end the guarantees are checked (no tests here:
tests/test_soak.py runs it, short and deterministic in `make test`, long in `make soak`).

What runs (real processes, real HTTP):

    PostgreSQL        the test cluster's database (tests/pg.py), migrated like production,
                      reached by the functions through two relays (scripts/wireturns.py: one
                      for trading_execute, one for the scanners) that can cut an answer
    sandbox           python -m sandbox.bitvavo: the exchange, faults switched at run time
    trading_execute   python -m shared.api.server, TRADING_MODE=live against the sandbox
    scan_scheduler ×2 python -m shared.api.server, ORACLE=rules and ORACLE=openai (→ the fake),
                      both auto-executing through trading_execute, both on the same scan jobs
    fake model        an OpenAI-compatible /v1/chat/completions (tests/scan_support.py's
                      RecordingServer) that checks G7 at every call it receives

The plan is drawn from one seeded random generator (`plan()`), step by step: user executions
(one request with retries that reuse the Idempotency-Key as real clients do, concurrent
duplicates, a second key for an executed proposal, a key reused for another proposal), scanner
ticks on either scanner, /reconcile, sandbox faults (drop_after_accept, 5xx and 101/109 without
and with the order placed, latency beyond the function's exchange timeout and beyond reconcile's
not-found window, unfilled variants),
PostgreSQL answers lost on the way to a function (the connection closed after the statement ran:
a claim, a result, a lease, a reservation, … chosen by the plan, or whatever comes next),
scan jobs made due again (time passing), run_maintenance (pg_cron's job), budget samples, and
SIGKILLs of a function process's whole group after a random delay, restarted at once. Requests
run on a few client threads while the plan goes on, so kills and faults land mid-request.
The same seed gives the same plan; thread interleavings differ, and the invariants must hold
for every interleaving (no assertion depends on timing: waits are for windows to pass and hang
guards only).

At the end, after a quiet period (no traffic, no faults, every lease expired, run_maintenance,
scanner ticks until no job is due, then past the reconcile window, /reconcile until nothing is
open), `Soak.check()` verifies, and `SoakFailure` lists every violation:

- orders: every sandbox order maps to exactly one execution by clientOrderId; an order with a
  fill ↔ an execution `filled`/`partially_filled` with the same filled amount (and one
  trade_history row); an order without one ↔ `canceled`; a `failed` or `rejected` execution has
  no order — the execution says what the exchange did: a late fault ("latency beyond the
  not-found window") executes orders after reconcile recorded them `failed`, and the sweep must
  have corrected each of those, once, as a recorded and audited discrepancy (and nothing else is
  one); never two orders for one proposal (G1, G10);
- no execution left `claimed`, `submitted` or `unknown`;
- every execution's audit trail: `claim.claimed`, then `execution.status_changed` events that
  chain from `claimed` to its final status (G9);
- a replay of every execution's Idempotency-Key answers 200 + Idempotent-Replayed with the
  stored execution (G1);
- G5: the users with a cooldown have at most one counted execution per market, but for a later
  claim made while an earlier execution stood `failed` that the sweep then corrected;
- G7: settled + reserved ≤ both limits at every call the fake model received, at every sample,
  and at the end; every model call carried a live reservation;
- G2: no scan job locked after its lease expired and run_maintenance ran, every job ran, none is
  left due;
- no 5xx from a function for a well-formed request except 503 database-unavailable / release-
  failed (the documented "database unreachable" answers); no 4xx a well-formed request should
  not get (400/401/403/404/405/413).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx

from sandbox.auth import (
    DEFAULT_TRADE_KEY,
    DEFAULT_TRADE_SECRET,
    DEFAULT_VIEW_KEY,
    DEFAULT_VIEW_SECRET,
)
from scripts.wireturns import WireTurns
from shared.auth import dev_token
from stack.cluster import free_port
from stack.services import Service
from tests.pg import Database, connect
from tests.sandbox_server import SandboxServer
from tests.scan_support import ALWAYS_SIGNAL, Recorded, RecordingServer

REPO_ROOT = Path(__file__).resolve().parent.parent
JWT_SECRET = "soak-jwt-secret-" + "z" * 24
SERVICE_KEY = "sb_secret_soak-" + "q" * 24
OPENAI_KEY = "sk-soak-" + "o" * 24
OPERATOR_ID = "5150"
MARKETS = ("BTC-EUR", "ETH-EUR", "SOL-EUR", "XRP-EUR")
MODEL = "gpt-4o-mini"
SANDBOX_BALANCES = {"EUR": "1000000000", "BTC": "100000", "ETH": "1000000", "SOL": "100000000",
                    "XRP": "10000000000"}

# The function's knobs in the soak: short windows so a minute holds many reconcile cycles.
EXCHANGE_TIMEOUT_S = 1.0      # the function's read timeout of POST /order
MAX_CLAIM_AGE_S = 2.0
ACCESS_WINDOW_MS = 2000
RECONCILE_MARGIN_S = 3.0      # covers the sandbox's injected latency (≤ 2.5 s) after its checks…
FAILED_AFTER_S = 7            # ceil(MAX_CLAIM_AGE + window + margin): not found → failed
LATE_MS = (8000, 11000)       # … not this one: the exchange executes after `failed` is recorded
CANCEL_OPEN_AFTER_S = 3
RECONCILE_PERIOD_S = 1.0      # the cron stand-in's /reconcile (production: every minute)
JOB_LEASE_S = 10
CLIENT_TIMEOUT_S = 8.0        # the soak's own HTTP clients
START_TIMEOUT_S = 60.0
HANG_GUARD_S = 180.0          # no single wait of the soak may take longer than this

# Well-formed requests may get these; anything else is a violation (5xx: see `allowed_5xx`).
EXECUTE_STATUSES = {200, 201, 202, 409, 422, 503}
RECONCILE_STATUSES = {200, 503}
TICK_STATUSES = {200, 503}
ALLOWED_503 = {"/problems/database-unavailable", "/problems/release-failed"}


class SoakFailure(AssertionError):
    """The invariants that did not hold, each with its details, and how to replay the run."""


# -- the plan -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Step:
    kind: str
    args: dict[str, Any]


FAULTS: list[tuple[str, dict[str, Any]]] = [
    ("drop_after_accept", {"fault": "drop_after_accept"}),
    ("error 500/101", {"fault": "error", "http_status": 500, "error_code": 101}),
    ("error 503/109", {"fault": "error", "http_status": 503, "error_code": 109}),
    ("error 502 html", {"fault": "error", "http_status": 502, "error_code": None}),
    ("error 500/101 placed", {"fault": "error", "http_status": 500, "error_code": 101,
                              "place": True}),
    ("error 504/109 placed", {"fault": "error", "http_status": 504, "error_code": 109,
                              "place": True}),
    ("latency beyond the not-found window", {"fault": "latency"}),  # LATE_MS, drawn per step
    ("latency beyond timeout", {"fault": "latency"}),  # latency_ms drawn per step
    ("latency within timeout", {"fault": "latency", "latency_ms": 150}),
    ("unfilled expired", {"fault": "unfilled", "status": "expired"}),
    ("unfilled expired partly", {"fault": "unfilled", "status": "expired",
                                 "fill_fraction": "0.4"}),
    ("unfilled market protection", {"fault": "unfilled", "status": "canceledMarketProtection",
                                    "fill_fraction": "0.5"}),
    ("unfilled partially filled", {"fault": "unfilled", "status": "partiallyFilled",
                                   "fill_fraction": "0.3"}),
    ("none", {"fault": "none"}),
]

# What a db_cut step loses: the answer to the next call of one of these functions on that side
# (its statement names it), or (None) the next answer of any kind, a connection's start included.
DB_CUT_AFTER: dict[str, tuple[str | None, ...]] = {
    "execute": ("claim_trade_execution", "record_execution_result", "list_unsettled_executions",
                None),
    "scanners": ("claim_due_scan_jobs", "get_scan_contexts", "reserve_gpt_budgets",
                 "record_oracle_answer", "create_scan_proposals", "release_job_locks",
                 "settle_oracle_answers", None),
}

WEIGHTS = {"execute": 40, "fault": 14, "tick": 16, "reconcile": 7, "kill": 4, "due": 6,
           "maintenance": 4, "budget": 5, "pause": 4, "db_cut": 4}


def plan(seed: int, manual_users: int) -> Iterator[Step]:
    """The endless, seeded sequence of steps (the caller takes as many as it runs)."""
    rng = random.Random(seed)
    kinds = list(WEIGHTS)
    weights = [WEIGHTS[k] for k in kinds]
    n = 0
    while True:
        n += 1
        kind = rng.choices(kinds, weights)[0]
        args: dict[str, Any] = {"n": n}
        if kind == "execute":
            args.update(user=rng.randrange(manual_users), market=rng.choice(MARKETS),
                        side=rng.choice(("buy", "buy", "sell")),
                        amount=str(Decimal(rng.randrange(600, 3000)) / 100),
                        pattern=rng.choices(("single", "duplicates", "other_key", "reused_key"),
                                            (55, 25, 10, 10))[0],
                        copies=rng.randint(2, 3))
        elif kind == "fault":
            name, spec = rng.choice(FAULTS)
            spec = {**spec, "times": rng.randint(1, 3)}
            if name == "latency beyond timeout":
                spec["latency_ms"] = rng.randrange(1300, 2500)
            elif name == "latency beyond the not-found window":
                spec["latency_ms"] = rng.randrange(*LATE_MS)
            args.update(name=name, spec=spec)
        elif kind == "tick":
            args.update(scanner=rng.choice(("rules", "openai")), max_jobs=rng.randint(1, 8))
        elif kind == "kill":
            args.update(target=rng.choices(("trading_execute", "scan_rules", "scan_openai"),
                                           (60, 20, 20))[0],
                        delay_ms=rng.randrange(0, 400))
        elif kind == "db_cut":
            target = rng.choices(("execute", "scanners"), (60, 40))[0]
            args.update(target=target, after=rng.choice(DB_CUT_AFTER[target]))
        elif kind == "due":
            args.update(jobs=rng.randint(1, 6), pick=rng.random())
        elif kind == "pause":
            args.update(ms=rng.randrange(20, 300))
        yield Step(kind, args)


def plan_digest(seed: int, manual_users: int, steps: int) -> str:
    """A fingerprint of the first `steps` steps: the same seed, the same plan."""
    digest = hashlib.sha256()
    for _, step in zip(range(steps), plan(seed, manual_users), strict=False):
        digest.update(json.dumps([step.kind, step.args], sort_keys=True).encode())
    return digest.hexdigest()[:16]


# -- the record of what happened ------------------------------------------------------------------
@dataclass
class Ledger:
    """Every answer and transport error, by endpoint; faults, kills; violations seen live."""

    statuses: Counter[tuple[str, int]] = field(default_factory=Counter)
    problems: Counter[tuple[str, int, str]] = field(default_factory=Counter)
    transport: Counter[tuple[str, str]] = field(default_factory=Counter)
    faults: Counter[str] = field(default_factory=Counter)
    kills: Counter[str] = field(default_factory=Counter)
    steps: Counter[str] = field(default_factory=Counter)
    violations: list[str] = field(default_factory=list)
    ticks: Counter[str] = field(default_factory=Counter)
    budget_samples: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def answer(self, endpoint: str, response: httpx.Response, allowed: set[int]) -> None:
        problem = ""
        if response.headers.get("content-type", "").startswith("application/problem+json"):
            try:
                problem = str(response.json().get("type", ""))
            except ValueError:
                problem = "(unreadable problem)"
        with self.lock:
            self.statuses[(endpoint, response.status_code)] += 1
            if problem:
                self.problems[(endpoint, response.status_code, problem)] += 1
            if response.status_code not in allowed or (
                    response.status_code == 503 and problem not in ALLOWED_503) or (
                    response.status_code >= 500 and response.status_code != 503):
                self.violations.append(
                    f"{endpoint} answered {response.status_code} {problem or ''} to a "
                    f"well-formed request: {response.text[:300]}")

    def transport_error(self, endpoint: str, error: Exception) -> None:
        with self.lock:
            self.transport[(endpoint, type(error).__name__)] += 1

    def violation(self, text: str) -> None:
        with self.lock:
            self.violations.append(text)


# -- the fake model (G7 at every call) ------------------------------------------------------------
class FakeModel:
    """An OpenAI-compatible chat completions endpoint. Each call must carry the id of a shared
    oracle answer (X-Client-Request-Id) with at least one reservation, every one of them
    `reserved`, and at that moment each of those users' settled + reserved spend must be within
    both limits. It answers, by a seeded draw per call: a valid signal, hold, a malformed answer,
    a refusal, an HTTP 500, no usage, or nothing within the scanner's timeout; usage as OpenAI
    reports it, never above what was reserved."""

    def __init__(self, db: Database, ledger: Ledger, seed: int) -> None:
        self.db = db
        self.ledger = ledger
        self.seed = seed
        self.calls: Counter[str] = Counter()
        self._count = 0
        self._lock = threading.Lock()
        self.server = RecordingServer(self.answer)

    def answer(self, request: Recorded) -> tuple[int, dict[str, str], dict[str, Any] | str]:
        rid = request.header("X-Client-Request-Id") or ""
        try:
            body = request.json()
        except ValueError:
            body = {}
        with self._lock:
            self._count += 1
            n = self._count
        rng = random.Random(f"{self.seed}:{n}")
        kind = rng.choices(("signal", "hold", "malformed", "refusal", "error", "no_usage",
                            "slow"), (55, 10, 8, 5, 8, 6, 8))[0]
        with self._lock:
            self.calls[kind] += 1
        max_prompt, max_completion = self._check(rid, body)
        if kind == "slow":
            time.sleep(3.0)  # beyond OPENAI_TIMEOUT_SECONDS: the reservation stays reserved
        if kind == "error":
            return 500, {}, {"error": {"message": "overloaded", "type": "server_error"}}
        content = {"signal": json.dumps({"action": rng.choice(("buy", "sell")),
                                         "confidence": 0.9, "rationale": "Soak."}),
                   "hold": '{"action":"hold","confidence":0.5,"rationale":"Flat."}',
                   "malformed": '{"action":"buy","confidence":"very"}',
                   "refusal": None, "no_usage": '{"action":"hold","confidence":0.4,'
                                                '"rationale":"Flat."}',
                   "slow": '{"action":"hold","confidence":0.4,"rationale":"Late."}'}[kind]
        prompt = max(1, min(max_prompt, rng.randint(200, 1500)))
        cached = rng.randint(0, prompt // 2)
        completion = max(1, min(max_completion, rng.randint(20, 200)))
        document: dict[str, Any] = {
            "id": f"chatcmpl-soak{n}", "object": "chat.completion", "created": 1764331200,
            "model": body.get("model", MODEL),
            "choices": [{"index": 0, "finish_reason": "stop", "logprobs": None, "message": {
                "role": "assistant", "content": content,
                "refusal": "I can't help with that." if kind == "refusal" else None}}]}
        if kind != "no_usage":
            document["usage"] = {"prompt_tokens": prompt, "completion_tokens": completion,
                                 "total_tokens": prompt + completion,
                                 "prompt_tokens_details": {"cached_tokens": cached}}
        return 200, {"x-request-id": f"req_soak_{n}"}, document

    def _check(self, rid: str, body: dict[str, Any]) -> tuple[int, int]:
        rows = self.db.query("""
            select l.status, l.user_id, l.max_prompt_tokens, l.max_completion_tokens,
                   g.spent_hour_usd, g.spent_day_usd, s.gpt_hourly_budget_usd,
                   s.gpt_daily_budget_usd
            from public.gpt_usage_log l
            join public.trading_settings s using (user_id)
            cross join lateral private.gpt_spend(l.user_id) g
            where l.oracle_answer_id::text = %s""", (rid,))
        if not rows:
            self.ledger.violation(f"G7: a model call without a reservation ({rid!r})")
            return 1000, 200
        for status, user, _, max_completion, hour, day, hourly, daily in rows:
            if status != "reserved":
                self.ledger.violation(f"G7: a model call on a {status} reservation ({rid})")
            if body.get("max_completion_tokens") != max_completion:
                self.ledger.violation(f"G7: completion cap {body.get('max_completion_tokens')} "
                                      f"is not the reserved {max_completion} ({rid})")
            if hour > hourly or day > daily:
                self.ledger.violation(f"G7: user {user} spends {hour} this hour / {day} today "
                                      f"at a call, limits {hourly} / {daily}")
        return int(rows[0][2] or 1000), int(rows[0][3] or 200)


# -- the processes --------------------------------------------------------------------------------
class Function:
    """One function server (stack.services.Service) that can be SIGKILLed as a group and
    restarted on the same port."""

    def __init__(self, name: str, target: str, port: int, env: dict[str, str],
                 logs: Path) -> None:
        base = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "LC_ALL",
                                                            "TMPDIR")}
        source = REPO_ROOT / "functions" / target / "main.py"
        self.service = Service(
            name, [sys.executable, "-m", "shared.api.server", "--target", target,
                   "--source", str(source), "--host", "127.0.0.1", "--port", str(port)],
            env={**base, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(REPO_ROOT), **env},
            port=port, log_path=logs / f"{name}.log", cwd=REPO_ROOT,
            ready_path="/health" if target == "trading_execute" else "/")
        self.logs = logs
        self.lock = threading.Lock()
        self.starts = 0

    @property
    def url(self) -> str:
        return self.service.url

    def start(self) -> None:
        """Start (again): each process logs to a file of its own (`<name>-<n>.log`). Called from
        the soak's main thread only: PR_SET_PDEATHSIG (stack.services) follows the starting
        thread."""
        self.service.log_path = self.logs / f"{self.service.name}-{self.starts}.log"
        self.starts += 1
        self.service.start()
        self.service.wait_ready(START_TIMEOUT_S)

    def kill_and_restart(self) -> None:
        with self.lock:
            self.service.signal_group(signal.SIGKILL)
            assert self.service.process is not None
            self.service.process.wait(timeout=30)
            self.start()

    def ensure_alive(self) -> None:
        with self.lock:
            if not self.service.alive:
                self.start()

    def stop(self) -> None:
        self.service.signal_group(signal.SIGTERM)
        process = self.service.process
        if process is not None:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        self.service.signal_group(signal.SIGKILL)
        if process is not None:
            process.wait(timeout=10)


# -- the soak -------------------------------------------------------------------------------------
@dataclass
class SoakConfig:
    seed: int
    steps: int | None = None          # run this many plan steps (CI) …
    seconds: float | None = None      # … or until this many seconds have passed (make soak)
    manual_users: int = 6             # users who execute their own proposals (one with G5/G6)
    auto_users: int = 4               # users with auto-execute and one scan job per market
    clients: int = 4                  # client threads sending requests while the plan goes on
    workdir: Path = field(default_factory=lambda: Path("/tmp"))


@dataclass
class Summary:
    seconds: float
    steps: Counter[str]
    statuses: dict[str, dict[int, int]]
    problems: dict[str, int]
    transport: dict[str, int]
    faults: Counter[str]
    kills: Counter[str]
    orders: dict[str, int]
    executions: dict[str, int]
    model_calls: Counter[str]
    ticks: Counter[str]
    budget_samples: int
    jobs: int
    proposals: dict[str, int]
    corrected: int = 0  # executions recorded `failed` that the exchange executed after all

    def render(self, config: SoakConfig, digest: str) -> str:
        lines = [f"chaos soak: seed {config.seed}, "
                 + (f"{config.steps} steps" if config.steps else f"{config.seconds:g} s")
                 + f" (plan {digest}), ran {self.seconds:.0f} s",
                 "steps:           " + _counts(self.steps)]
        for endpoint, counted in sorted(self.statuses.items()):
            lines.append(f"{endpoint + ':':<17}" + _counts({str(k): v for k, v in counted.items()}))
        lines.append("problem types:   " + _counts(self.problems))
        lines.append("transport errs:  " + (_counts(self.transport) or "none"))
        lines.append("faults injected: " + _counts(self.faults))
        lines.append("kills (SIGKILL): " + _counts(self.kills))
        lines.append("model calls:     " + _counts(self.model_calls))
        lines.append("ticks:           " + _counts(self.ticks))
        lines.append("sandbox orders:  " + _counts(self.orders))
        lines.append("executions:      " + _counts(self.executions))
        lines.append("proposals:       " + _counts(self.proposals))
        lines.append(f"budget samples:  {self.budget_samples}; scan jobs: {self.jobs}")
        lines.append(f"late executions: {self.corrected} failed executions corrected by the sweep")
        return "\n".join(lines)


def _problem_type(response: httpx.Response) -> str | None:
    if response.status_code < 400:
        return None
    try:
        return str(response.json().get("type"))
    except (ValueError, AttributeError):
        return "(not a problem document)"


def _counts(counter: Any) -> str:
    items = sorted(dict(counter).items(), key=lambda kv: (-kv[1], str(kv[0])))
    return ", ".join(f"{k} {v}" for k, v in items)


class Soak:
    def __init__(self, db: Database, sandbox: SandboxServer, config: SoakConfig) -> None:
        self.db = db
        self.sandbox = sandbox
        self.config = config
        self.ledger = Ledger()
        self.model = FakeModel(db, self.ledger, config.seed)
        self.logs = config.workdir / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.manual: list[uuid.UUID] = []
        self.cooldown_user: uuid.UUID | None = None
        self.auto: list[uuid.UUID] = []
        self.tokens: dict[uuid.UUID, str] = {}
        self.functions: dict[str, Function] = {}
        self.proxies: dict[str, WireTurns] = {}
        self._local = threading.local()
        self._conn = connect(db.authenticator_url, autocommit=True)
        self._started = 0.0

    # -- the world --------------------------------------------------------------------------
    def build(self) -> None:
        with self.db.connect() as conn:
            users = [uuid.uuid4() for _ in range(self.config.manual_users + self.config.auto_users)]
            for user in users:
                conn.execute("insert into auth.users (id, email, aud, role) values "
                             "(%s, %s, 'authenticated', 'authenticated')",
                             (user, f"{user.hex[:10]}@soak.test"))
            for market in MARKETS:
                conn.execute("insert into public.market_allowlist (market, enabled) values "
                             "(%s, true) on conflict (market) do update set enabled = true",
                             (market,))
            conn.execute("insert into public.trading_allowlist (user_id, market) "
                         "select u, m from unnest(%s::uuid[]) u, unnest(%s::text[]) m",
                         (users, list(MARKETS)))
            conn.execute("update public.system_controls set live_trading_allowed = true")
            conn.execute("update public.trading_settings set trading_enabled = true, "
                         "live_trading_enabled = true, cooldown_seconds = 0, "
                         "anti_flip_seconds = 0, max_trades_per_day = 1000, "
                         "max_daily_quote = 1000000 where user_id = any(%s)", (users,))
            self.manual = users[:self.config.manual_users]
            self.auto = users[self.config.manual_users:]
            # One manual user keeps the defaults' cooldown and anti-flip: G5/G6 under chaos.
            self.cooldown_user = self.manual[0]
            conn.execute("update public.trading_settings set cooldown_seconds = 3600, "
                         "anti_flip_seconds = 86400 where user_id = %s", (self.cooldown_user,))
            for i, user in enumerate(self.auto):
                tight = i % 2 == 0
                conn.execute(
                    "update public.trading_settings set auto_execute = true, "
                    "min_confidence = 0.5, gpt_hourly_budget_usd = %s, gpt_daily_budget_usd = %s "
                    "where user_id = %s",
                    (Decimal("0.0010") if tight else Decimal("0.25"),
                     Decimal("0.0016") if tight else Decimal("1.00"), user))
            conn.execute("insert into public.scan_jobs (user_id, market, interval_seconds, "
                         "next_run_at) select user_id, market, 60, now() - interval '1 second' "
                         "from public.trading_allowlist where user_id = any(%s)", (self.auto,))
        self.tokens = {u: dev_token(JWT_SECRET, u, ttl=24 * 3600) for u in users}

    def start(self) -> None:
        self.model.server.__enter__()
        db_port = int(urlsplit(self.db.url).port or 5432)
        for name in ("execute", "scanners"):
            self.proxies[name] = WireTurns("127.0.0.1", db_port).start()
        execute_port = free_port()
        common = {"SUPABASE_JWT_SECRET": JWT_SECRET, "SUPABASE_SERVICE_ROLE_KEY": SERVICE_KEY,
                  "BITVAVO_REST_URL": self.sandbox.rest_url, "TRADING_MODE": "live",
                  "RPC_POOL_MAX_SIZE": "6"}
        self.functions["trading_execute"] = Function(
            "trading_execute", "trading_execute", execute_port, {
                **common, "DATABASE_URL": self._proxied("execute"),
                "BITVAVO_TRADE_API_KEY": DEFAULT_TRADE_KEY,
                "BITVAVO_TRADE_API_SECRET": DEFAULT_TRADE_SECRET,
                "BITVAVO_OPERATOR_ID": OPERATOR_ID,
                "EXCHANGE_TIMEOUT_SECONDS": str(EXCHANGE_TIMEOUT_S),
                "MAX_CLAIM_AGE_SECONDS": str(MAX_CLAIM_AGE_S),
                "BITVAVO_ACCESS_WINDOW_MS": str(ACCESS_WINDOW_MS),
                "RECONCILE_MARGIN_SECONDS": str(RECONCILE_MARGIN_S),
                "RECONCILE_MIN_AGE_SECONDS": "1",
                "RECONCILE_CANCEL_OPEN_AFTER_SECONDS": str(CANCEL_OPEN_AFTER_S)}, self.logs)
        scanner = {**common, "DATABASE_URL": self._proxied("scanners"),
                   "BITVAVO_READONLY_API_KEY": DEFAULT_VIEW_KEY,
                   "BITVAVO_READONLY_API_SECRET": DEFAULT_VIEW_SECRET,
                   "EXECUTE_FUNCTION_URL": f"http://127.0.0.1:{execute_port}/",
                   "EXECUTE_TIMEOUT_SECONDS": "6", "JOB_LEASE_SECONDS": str(JOB_LEASE_S),
                   "HEARTBEAT_SECONDS": "3", "TICK_TIME_BUDGET_SECONDS": "5",
                   "FUNCTION_TIMEOUT_SECONDS": "60", "CANDLE_LIMIT": "60", **ALWAYS_SIGNAL}
        self.functions["scan_rules"] = Function("scan_rules", "scan_scheduler", free_port(),
                                                {**scanner, "ORACLE": "rules"}, self.logs)
        self.functions["scan_openai"] = Function(
            "scan_openai", "scan_scheduler", free_port(),
            {**scanner, "ORACLE": "openai", "OPENAI_API_KEY": OPENAI_KEY,
             "OPENAI_BASE_URL": self.model.server.url + "/v1", "OPENAI_MODEL": MODEL,
             "OPENAI_MAX_COMPLETION_TOKENS": "200", "OPENAI_TIMEOUT_SECONDS": "2"}, self.logs)
        for function in self.functions.values():
            function.start()

    def stop(self) -> None:
        """Stop every process, the fake model and the relays, whatever fails on the way."""
        try:
            for function in self.functions.values():
                try:
                    function.stop()
                except Exception:  # noqa: BLE001, S110 - stop every one of them
                    pass
            self.model.server.__exit__(None, None, None)
        finally:
            for proxy in self.proxies.values():
                proxy.close()
            self._conn.close()

    def _proxied(self, name: str) -> str:
        """The authenticator URL with its host and port replaced by this soak's relay `name`
        (whose answers it can cut); user, password, database and query are kept."""
        parts = urlsplit(self.db.authenticator_url)
        userinfo, at, _ = parts.netloc.rpartition("@")
        netloc = f"{userinfo}{at}127.0.0.1:{self.proxies[name].port}"
        proxied = urlunsplit(parts._replace(netloc=netloc))
        assert urlsplit(proxied).port == self.proxies[name].port, proxied
        return proxied

    # -- HTTP -------------------------------------------------------------------------------
    def _client(self) -> httpx.Client:
        client: httpx.Client | None = getattr(self._local, "client", None)
        if client is None:
            client = httpx.Client(timeout=CLIENT_TIMEOUT_S)
            self._local.client = client
        return client

    def post(self, target: str, path: str, endpoint: str, allowed: set[int], *,
             json_body: Any, headers: dict[str, str]) -> httpx.Response | None:
        url = self.functions[target].url + path
        try:
            response = self._client().post(url, json=json_body, headers=headers)
        except httpx.HTTPError as error:  # a killed process, a timeout: counted, never a verdict
            self.ledger.transport_error(endpoint, error)
            self._client().close()
            self._local.client = None
            return None
        self.ledger.answer(endpoint, response, allowed)
        return response

    # -- steps ------------------------------------------------------------------------------
    def propose(self, user: uuid.UUID, market: str, side: str, amount: str) -> uuid.UUID:
        created = self.db.rpc("create_trade_proposal", conn=self._conn, p_user_id=user,
                              p_market=market, p_side=side, p_amount_quote=Decimal(amount),
                              p_confidence=Decimal("0.8"), p_rationale="soak",
                              p_source="manual", p_ttl_seconds=3600)
        proposal = uuid.UUID(created["proposal_id"])
        decided = self.db.rpc("decide_trade_proposal", conn=self._conn, role="authenticated",
                              user_id=user, p_proposal_id=proposal, p_decision="approve")
        assert decided.get("status") == "approved", decided
        return proposal

    def execute_once(self, user: uuid.UUID, proposal: uuid.UUID, key: str,
                     attempts: int = 6) -> httpx.Response | None:
        """A client as we document it: retry with the same key on a transport error, 503, 409
        in-flight and 202 (outcome unknown), a few times, then give up (the result is kept)."""
        last = None
        for attempt in range(attempts):
            response = self.post("trading_execute", "/", "execute", EXECUTE_STATUSES,
                                 json_body={"proposal_id": str(proposal)},
                                 headers={"Authorization": f"Bearer {self.tokens[user]}",
                                          "Idempotency-Key": key})
            last = response
            if response is not None:
                problem = _problem_type(response)
                if response.status_code in (200, 201, 422) or (
                        response.status_code == 409 and problem != "/problems/in-flight"):
                    return response
            time.sleep(0.15 * (attempt + 1))
        return last

    def run_execute(self, args: dict[str, Any], proposal: uuid.UUID,
                    second: uuid.UUID | None) -> None:
        user = self.manual[args["user"]]
        key = f"soak-{self.config.seed}-{args['n']}"
        pattern = args["pattern"]
        if pattern == "duplicates":
            threads = [threading.Thread(target=self.execute_once, args=(user, proposal, key))
                       for _ in range(args["copies"])]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(HANG_GUARD_S)
        else:
            self.execute_once(user, proposal, key)
        if pattern == "other_key":
            self.execute_once(user, proposal, key + "-other", attempts=2)
        if pattern == "reused_key" and second is not None:
            self.execute_once(user, second, key, attempts=2)

    def tick(self, scanner: str, max_jobs: int) -> None:
        response = self.post(scanner, "/", "tick", TICK_STATUSES, json_body={"max_jobs": max_jobs},
                             headers={"Authorization": f"Bearer {SERVICE_KEY}"})
        if response is not None and response.status_code == 200:
            counts = response.json()
            with self.ledger.lock:
                for name in ("claimed", "succeeded", "failed", "proposals", "budget_denied",
                             "executions_requested", "lease_lost"):
                    self.ledger.ticks[name] += int(counts.get(name, 0))

    def _reconcile_step(self) -> None:
        self.reconcile()

    def reconcile(self) -> dict[str, int] | None:
        response = self.post("trading_execute", "/reconcile", "reconcile", RECONCILE_STATUSES,
                             json_body={"limit": 500},
                             headers={"Authorization": f"Bearer {SERVICE_KEY}"})
        if response is None or response.status_code != 200:
            return None
        counts: dict[str, int] = response.json()
        return counts

    def due(self, jobs: int, pick: float) -> None:
        """Time passing: `jobs` scan jobs (chosen by `pick`) become due now."""
        ids = [r[0] for r in self.db.query("select id from public.scan_jobs order by id")]
        if not ids:
            return
        start = int(pick * len(ids))
        chosen = [ids[(start + i) % len(ids)] for i in range(min(jobs, len(ids)))]
        self.db.query("update public.scan_jobs set next_run_at = now() where id = any(%s)",
                      (chosen,))

    def maintenance(self) -> None:
        self.db.rpc("run_maintenance", conn=self._conn)

    def sample_budget(self) -> None:
        rows = self.db.query("""
            select s.user_id, g.spent_hour_usd, g.spent_day_usd, s.gpt_hourly_budget_usd,
                   s.gpt_daily_budget_usd
            from public.trading_settings s cross join lateral private.gpt_spend(s.user_id) g
            where s.user_id = any(%s)""", (self.auto,))
        with self.ledger.lock:
            self.ledger.budget_samples += 1
        for user, hour, day, hourly, daily in rows:
            if hour > hourly or day > daily:
                self.ledger.violation(f"G7: user {user} spends {hour} this hour / {day} today, "
                                      f"limits {hourly} / {daily}")

    def kill(self, target: str, delay_ms: int) -> None:
        time.sleep(delay_ms / 1000)
        self.functions[target].kill_and_restart()
        with self.ledger.lock:
            self.ledger.kills[target] += 1

    # -- the run ----------------------------------------------------------------------------
    def run(self) -> Summary:
        self._started = time.monotonic()
        pool = ThreadPoolExecutor(max_workers=self.config.clients, thread_name_prefix="soak")
        slots = threading.BoundedSemaphore(self.config.clients)
        futures: list[Future[None]] = []

        def submit(call: Callable[[], None]) -> None:
            if not slots.acquire(timeout=HANG_GUARD_S):
                raise SoakFailure("hang guard: no client slot freed within "
                                  f"{HANG_GUARD_S:.0f} s")

            def run() -> None:
                try:
                    call()
                finally:
                    slots.release()
            futures.append(pool.submit(run))

        deadline = (self._started + self.config.seconds) if self.config.seconds else None
        # Supabase Cron's /reconcile, on the soak's compressed time scale: about once a second
        # (the windows are seconds here, a minute in production), racing the request path.
        stop_cron = threading.Event()
        cron = threading.Thread(target=self._cron, args=(stop_cron,), name="soak-cron",
                                daemon=True)
        cron.start()
        try:
            for index, step in enumerate(plan(self.config.seed, self.config.manual_users)):
                if self.config.steps is not None and index >= self.config.steps:
                    break
                if deadline is not None and time.monotonic() >= deadline:
                    break
                self.ledger.steps[step.kind] += 1
                self.dispatch(step, submit)
                for future in [f for f in futures if f.done()]:
                    future.result()  # a client thread's own error (our bug) stops the soak
                    futures.remove(future)
        finally:
            pool.shutdown(wait=True, cancel_futures=False)
            stop_cron.set()
            cron.join(HANG_GUARD_S)
        for future in futures:
            future.result(timeout=HANG_GUARD_S)  # re-raises a client thread's own error
        self.quiet()
        return self.summary()

    def _cron(self, stop: threading.Event) -> None:
        while not stop.wait(RECONCILE_PERIOD_S):
            self.reconcile()
            with self.ledger.lock:
                self.ledger.steps["cron reconcile"] += 1

    def dispatch(self, step: Step, submit: Callable[[Callable[[], None]], None]) -> None:
        args = step.args
        if step.kind == "execute":
            user = self.manual[args["user"]]
            proposal = self.propose(user, args["market"], args["side"], args["amount"])
            second = (self.propose(user, args["market"], args["side"], args["amount"])
                      if args["pattern"] == "reused_key" else None)
            submit(lambda: self.run_execute(args, proposal, second))
        elif step.kind == "fault":
            self.sandbox.set_fault(**args["spec"])
            self.ledger.faults[args["name"]] += args["spec"]["times"]
        elif step.kind == "tick":
            submit(lambda: self.tick(f"scan_{args['scanner']}", args["max_jobs"]))
        elif step.kind == "reconcile":
            submit(self._reconcile_step)
        elif step.kind == "kill":
            self.kill(args["target"], args["delay_ms"])
        elif step.kind == "db_cut":
            # The answer PostgreSQL sends to that side's next call of `after` (or to anything
            # next) is lost and its connection closed: the claim, record, lease or reservation
            # committed unheard. Arming again replaces a cut not yet made; the summary counts the
            # cuts that happened, by statement.
            after = args["after"]
            self.proxies[args["target"]].cut_next_response(
                after=after.encode() if after else None)
        elif step.kind == "due":
            self.due(args["jobs"], args["pick"])
        elif step.kind == "maintenance":
            self.maintenance()
        elif step.kind == "budget":
            self.sample_budget()
        elif step.kind == "pause":
            time.sleep(args["ms"] / 1000)

    def quiet(self) -> None:
        """No traffic, no faults; leases expire; maintenance; ticks until no job is due; past the
        reconcile window; /reconcile until nothing is open."""
        self.sandbox.set_fault(fault="none")
        for proxy in self.proxies.values():
            proxy.cancel_cut()
        for function in self.functions.values():
            function.ensure_alive()
        self._wait_for("every scan job lease to expire", lambda: self.db.scalar(
            "select count(*) from public.scan_jobs where locked_by is not null "
            "and lock_expires_at > now()") == 0, JOB_LEASE_S + 5)
        self.maintenance()
        locked = self.db.query("select id, locked_by, lock_expires_at from public.scan_jobs "
                               "where locked_by is not null")
        for job, worker, expires in locked:
            self.ledger.violation(f"G2: job {job} still locked by {worker} (lease until "
                                  f"{expires}) after lease expiry + run_maintenance")
        for scanner in ("scan_rules", "scan_openai") * 10:
            self.tick(scanner, 20)
            if not self.db.scalar("select count(*) from public.scan_jobs "
                                  "where next_run_at <= now()"):
                break
        for job, next_run in self.db.query("select id, next_run_at from public.scan_jobs "
                                           "where next_run_at <= now()"):
            self.ledger.violation(f"G2: job {job} still due ({next_run}) after 20 final ticks")
        self.sample_budget()
        last_claim = self.db.scalar("select coalesce(extract(epoch from now() - max(claimed_at)),"
                                    " 1e9) from public.trade_executions")
        # Past the not-found window and past the latest late execution, so the sweep sees it.
        time.sleep(max(0.0, max(FAILED_AFTER_S, LATE_MS[1] / 1000) + 1 - float(last_claim)))
        for _ in range(20):
            counts = self.reconcile()
            open_now = self.db.scalar("select count(*) from public.trade_executions "
                                      "where status in ('claimed', 'submitted', 'unknown')")
            if counts is not None and open_now == 0:
                break
            time.sleep(max(1.0, CANCEL_OPEN_AFTER_S / 2))
        self.maintenance()

    @staticmethod
    def _wait_for(what: str, condition: Callable[[], bool], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise SoakFailure(f"hang guard: waited {timeout:.0f} s for {what}")
            time.sleep(0.2)

    # -- the verdict ------------------------------------------------------------------------
    def summary(self) -> Summary:
        orders = self.sandbox.orders()
        executions = self.db.query("select status, count(*) from public.trade_executions "
                                   "group by status")
        proposals = self.db.query("select status, count(*) from public.trade_proposals "
                                  "group by status")
        statuses: dict[str, dict[int, int]] = defaultdict(dict)
        for (endpoint, status), count in self.ledger.statuses.items():
            statuses[endpoint][status] = count
        order_kinds: Counter[str] = Counter()
        for order in orders:
            filled = Decimal(str(order.get("filledAmount", "0")))
            order_kinds[f"{order['status']}{' (filled)' if filled > 0 else ''}"
                        if order["status"] != "filled" else "filled"] += 1
        faults = Counter(self.ledger.faults)
        for name, proxy in self.proxies.items():
            for trigger, cuts in proxy.cuts_by_trigger.items():
                faults[f"db answer cut ({name}: {trigger})"] = cuts
        return Summary(
            seconds=time.monotonic() - self._started, steps=self.ledger.steps,
            statuses=dict(statuses),
            problems={f"{e} {s} {t}": c for (e, s, t), c in self.ledger.problems.items()},
            transport={f"{e} {k}": c for (e, k), c in self.ledger.transport.items()},
            faults=faults, kills=self.ledger.kills, orders=dict(order_kinds),
            executions={s: c for s, c in executions}, model_calls=self.model.calls,
            ticks=self.ledger.ticks, budget_samples=self.ledger.budget_samples,
            jobs=int(self.db.scalar("select count(*) from public.scan_jobs")),
            proposals={s: c for s, c in proposals},
            corrected=int(self.db.scalar("select count(*) from public.trade_executions "
                                         "where corrected_at is not null")))

    def check(self) -> list[str]:
        """Every invariant; the list of violations (empty: all hold). What was seen during the
        run (answers, the fake model's and the samples' G7 checks) is in the ledger."""
        problems = self._check_orders()
        problems += self._check_open()
        problems += self._check_audit()
        problems += self._check_replays()
        problems += self._check_cooldown()
        problems += self._check_discrepancies()
        problems += self._check_budget()
        problems += self._check_jobs()
        return list(self.ledger.violations) + problems

    def _executions(self) -> list[dict[str, Any]]:
        with self.db.connect() as conn:
            cur = conn.execute("select e.*, (select count(*) from public.trade_history h "
                               "where h.execution_id = e.id) as history "
                               "from public.trade_executions e")
            names = [c.name for c in cur.description or []]
            return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]

    def _check_orders(self) -> list[str]:
        problems = []
        executions = self._executions()
        by_coid = {str(e["client_order_id"]): e for e in executions}
        orders = self.sandbox.orders()
        seen: Counter[str] = Counter(str(o.get("clientOrderId")) for o in orders)
        per_proposal: Counter[str] = Counter()
        for order in orders:
            coid = str(order.get("clientOrderId"))
            execution = by_coid.get(coid)
            if seen[coid] > 1:
                problems.append(f"G1: {seen[coid]} sandbox orders share clientOrderId {coid}")
            if execution is None:
                problems.append(f"G1/G10: sandbox order {order['orderId']} ({coid}) maps to no "
                                f"execution: {order}")
                continue
            per_proposal[str(execution["proposal_id"])] += 1
            filled = Decimal(str(order.get("filledAmount", "0")))
            if filled > 0:
                if execution["status"] not in ("filled", "partially_filled"):
                    problems.append(f"G10: order {coid} filled {filled} but its execution "
                                    f"{execution['id']} is {execution['status']}")
                elif execution["filled_amount"] != filled:
                    problems.append(f"execution {execution['id']} records filled_amount "
                                    f"{execution['filled_amount']}, the order filled {filled}")
                if execution["history"] != 1:
                    problems.append(f"execution {execution['id']} has {execution['history']} "
                                    "trade_history rows, not 1")
            elif execution["status"] != "canceled":
                problems.append(f"order {coid} ended {order['status']} without a fill but its "
                                f"execution {execution['id']} is {execution['status']}")
        for proposal, count in per_proposal.items():
            if count > 1:
                problems.append(f"G1: {count} orders for proposal {proposal}")
        for execution in executions:
            coid = str(execution["client_order_id"])
            if execution["status"] in ("filled", "partially_filled") and coid not in seen:
                problems.append(f"execution {execution['id']} is {execution['status']} but the "
                                f"sandbox has no order {coid}")
            if execution["status"] in ("failed", "rejected") and coid in seen:
                problems.append(f"G10: execution {execution['id']} is {execution['status']} "
                                f"({execution['error_code']}) but order {coid} exists")
            if execution["status"] not in ("filled", "partially_filled") and execution["history"]:
                problems.append(f"execution {execution['id']} is {execution['status']} with a "
                                "trade_history row")
        duplicates = self.db.query("select proposal_id, count(*) from public.trade_executions "
                                   "group by proposal_id having count(*) > 1")
        problems += [f"G1: proposal {p} has {c} executions" for p, c in duplicates]
        return problems

    def _check_open(self) -> list[str]:
        rows = self.db.query("select id, status, error_code, claimed_at from "
                             "public.trade_executions where status in "
                             "('claimed', 'submitted', 'unknown')")
        return [f"execution {i} left {s} ({c}), claimed at {t}" for i, s, c, t in rows]

    def _check_audit(self) -> list[str]:
        problems = []
        rows = self.db.query("""
            select e.id, e.status,
                   coalesce(array_agg(a.event order by a.id)
                            filter (where a.id is not null), '{}'),
                   coalesce(array_agg(a.detail ->> 'from' order by a.id)
                            filter (where a.id is not null), '{}'),
                   coalesce(array_agg(a.detail ->> 'to' order by a.id)
                            filter (where a.id is not null), '{}')
            from public.trade_executions e
            left join public.execution_audit_log a on a.execution_id = e.id
                 and a.event in ('claim.claimed', 'execution.status_changed')
            group by e.id, e.status""")
        for execution, status, events, froms, tos in rows:
            trail = f"{list(zip(events, froms, tos, strict=True))}"
            if not events or events[0] != "claim.claimed" or events.count("claim.claimed") != 1:
                problems.append(f"G9: execution {execution} ({status}) lacks one leading "
                                f"claim.claimed: {trail}")
                continue
            current = "claimed"
            for event, before, after in zip(events[1:], froms[1:], tos[1:], strict=True):
                if before != current:
                    problems.append(f"G9: execution {execution}: {event} from {before} after "
                                    f"{current}: {trail}")
                current = after
            if current != status:
                problems.append(f"G9: execution {execution} is {status}, its trail ends at "
                                f"{current}: {trail}")
        return problems

    def _check_replays(self) -> list[str]:
        """G1: the same Idempotency-Key again → the stored execution, 200 + Idempotent-Replayed."""
        problems = []
        for execution in self._executions():
            key = str(execution["idempotency_key"])
            user = uuid.UUID(str(execution["user_id"]))
            if key.startswith("auto:"):
                token = SERVICE_KEY
                body = {"proposal_id": str(execution["proposal_id"]), "user_id": str(user)}
            else:
                token = self.tokens[user]
                body = {"proposal_id": str(execution["proposal_id"])}
            response = self.post("trading_execute", "/", "final replay", {200},
                                 json_body=body, headers={"Authorization": f"Bearer {token}",
                                                          "Idempotency-Key": key})
            if response is None:
                problems.append(f"G1: the replay of {execution['id']} got no answer")
                continue
            stored = response.json().get("execution") or {}
            if response.status_code != 200 or response.headers.get(
                    "Idempotent-Replayed") != "true" or stored.get("id") != str(
                    execution["id"]) or stored.get("status") != execution["status"]:
                problems.append(f"G1: replaying {key} answered {response.status_code} "
                                f"{response.text[:200]}, stored {execution['status']}")
        return problems

    def _check_cooldown(self) -> list[str]:
        """G5 for the cooldown user: no two counted executions on one market — except where the
        earlier one stood `failed` when the later one was claimed and the exchange executed it
        after all (the sweep corrected it after that claim; _check_discrepancies checks that each
        correction is a recorded discrepancy)."""
        rows = self.db.query("""
            select market, claimed_at, corrected_at from public.trade_executions
            where user_id = %s and (status not in ('rejected', 'failed', 'canceled')
                                    or coalesce(filled_amount, 0) > 0)
            order by market, claimed_at""", (self.cooldown_user,))
        problems = []
        for i, (market, claimed_at, _) in enumerate(rows):
            for earlier_market, earlier_claim, corrected_at in rows[:i]:
                if earlier_market == market and not (corrected_at and corrected_at > claimed_at):
                    problems.append(f"G5: the cooldown user has executions on {market} claimed "
                                    f"at {earlier_claim} and {claimed_at}, both counted")
        return problems

    def _check_discrepancies(self) -> list[str]:
        """The exchange executed an order after its execution was recorded `failed` (the
        not-found window is shorter than LATE_MS on purpose): the execution says what the exchange
        did (_check_orders), it was corrected exactly once, and each correction — and nothing
        else: no order here is placed behind the backend's back — is a recorded, audited
        discrepancy that `oracle verify` reports."""
        problems = []
        rows = self.db.query("""
            select e.id, e.status, e.corrected_at is not null,
                   (select count(*) from private.exchange_discrepancies d
                     where d.execution_id = e.id and d.kind = 'execution_contradicted'),
                   (select count(*) from public.execution_audit_log a
                     where a.execution_id = e.id and a.event = 'exchange.discrepancy')
            from public.trade_executions e""")
        for execution, status, corrected, recorded, audited in rows:
            if (recorded, audited) != ((1, 1) if corrected else (0, 0)):
                problems.append(f"execution {execution} ({status}, corrected: {corrected}) has "
                                f"{recorded} discrepancy rows and {audited} audit events")
        others = self.db.query("select kind, market, exchange_order_id from "
                               "private.exchange_discrepancies where kind <> "
                               "'execution_contradicted'")
        problems += [f"discrepancy {kind}: order {order} on {market}"
                     for kind, market, order in others]
        corrections = sum(1 for row in rows if row[2])
        open_ones = self.db.scalar("select count(*) from private.exchange_discrepancies "
                                   "where acknowledged_at is null")
        if open_ones != corrections:
            problems.append(f"{open_ones} open discrepancies for {corrections} corrections")
        return problems

    def _check_budget(self) -> list[str]:
        self.sample_budget()  # a violation lands in the ledger
        problems = []
        stray = self.db.scalar("select count(*) from public.gpt_usage_log l "
                               "where l.user_id <> all(%s)", (self.auto,))
        if stray:
            problems.append(f"G7: {stray} gpt_usage_log rows of users without scan jobs")
        return problems

    def _check_jobs(self) -> list[str]:
        """After the final ticks (quiet()): nothing locked, every job ran and is scheduled again
        (a job backed off may be due by now: due is not lost)."""
        rows = self.db.query("""
            select id, locked_by, lock_expires_at, last_run_at, next_run_at
            from public.scan_jobs where locked_by is not null or last_run_at is null
                                     or next_run_at < last_run_at""")
        return [f"G2: job {job} locked by {locked_by} (until {expires}), last run {last_run}, "
                f"next run {next_run}" for job, locked_by, expires, last_run, next_run in rows]

    def describe_failure(self, problems: list[str], summary: Summary, digest: str) -> str:
        tails = []
        for name, function in self.functions.items():
            tails.append(f"--- {name} log: {function.service.log_path}")
        shown = "\n".join(f"  - {p}" for p in problems[:60])
        more = f"\n  … and {len(problems) - 60} more" if len(problems) > 60 else ""
        return (f"the chaos soak broke {len(problems)} invariant(s); replay with "
                f"SOAK_SEED={self.config.seed}"
                + (f" SOAK_STEPS={self.config.steps}" if self.config.steps
                   else f" SOAK_SECONDS={self.config.seconds:g}")
                + f"\n{shown}{more}\n\n{summary.render(self.config, digest)}\n"
                + "\n".join(tails))


def run_soak(db: Database, sandbox: SandboxServer, config: SoakConfig,
             report: Callable[[str], None]) -> Summary:
    """Build, start, run, stop, check; SoakFailure with every violation and the replay line."""
    digest = plan_digest(config.seed, config.manual_users, config.steps or 100_000)
    soak = Soak(db, sandbox, config)
    soak.build()
    try:
        soak.start()
        summary = soak.run()
        problems = soak.check()
    finally:
        soak.stop()
    report(summary.render(config, digest))
    if problems:
        raise SoakFailure(soak.describe_failure(problems, summary, digest))
    return summary

