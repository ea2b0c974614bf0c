"""`make demo`: a bounded, deterministic run of the real system, then a summary.

`demo()` starts the stack (stack.supervisor) on a throwaway cluster and free ports, plays the
scenario and deletes the cluster. Everything goes through the real doors — the RPCs (service_role,
or the user's claims exactly as PostgREST sets them) and the HTTP functions served by
functions-framework. Two parts, labelled as such in the output:

1. **Scripted** (the demo user acting by hand, on BTC-EUR, before anything else traded):
   create_trade_proposal (manual, confidence below the user's min_confidence → pending) →
   decide_trade_proposal `approve` as the user → POST trading_execute with the user's token
   (shared.auth.dev_token) and an Idempotency-Key → 201 filled; the same request again → 200
   `Idempotent-Replayed: true`, the same execution (G1); a second buy → 422 `cooldown` (G5); a sell
   → 422 `anti_flip` (G6, with cooldown).
2. **Scanner ticks** (what Supabase Cron would do): `ticks` POSTs to scan_scheduler, which reads the
   sandbox's market data, asks the rules oracle and auto-executes confident proposals through
   trading_execute. The sandbox's market clock is pinned to MARKET_EPOCH (its price path is a
   function of the seed and the market time), so the oracle sees the same candles on every run;
   between ticks the demo fast-forwards — the scan jobs are made due and the market clock moves
   an hour — instead of waiting a minute per tick.

Then one /reconcile, and the summary read back from the database (audit log, trade_history,
executions). Required rows: an executed trade, a rejection by `cooldown`, one by `anti_flip`, a
replayed idempotent request; `play()` is false, and `demo()` exits 1, when one is missing or a
scripted step answered something else than expected.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import IO, Any

import httpx
import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import set_json_loads
from rich.text import Text

from console import local, views
from console.database import reading
from console.users import User, find_user
from shared.auth import dev_token
from shared.rpc.direct import DirectRpc
from stack import live
from stack.cluster import ROOT, Cluster, free_port
from stack.localdb import DatabaseError
from stack.ports import PortInUse
from stack.services import ServiceFailed
from stack.supervisor import Config, Ports, Signals, Stack, StackFailed, StopRequested

DEMO_STATE_DIR = ROOT / ".local" / "demo"
DEMO_EMAIL = "demo@example.test"  # supabase/seed.sql
SCRIPTED_MARKET = "BTC-EUR"
SCRIPTED_AMOUNT = Decimal("10")
# Below the demo user's min_confidence (0.70): the proposal waits for the user's decision.
SCRIPTED_CONFIDENCE = Decimal("0.60")
# The sandbox's market time at the first tick (seed 42): ETH-EUR shows an uptrend and BTC-EUR a
# downtrend, both confident enough to be auto-approved, so the first tick auto-executes.
MARKET_EPOCH = datetime(2026, 6, 8, 9, 30, tzinfo=UTC)
FAST_FORWARD = timedelta(hours=1)
HTTP_TIMEOUT = httpx.Timeout(30.0, connect=5.0)
TICK_FIELDS = live.TICK_FIELDS


def market_epoch_ms() -> int:
    return int(MARKET_EPOCH.timestamp() * 1000)


@dataclass
class Step:
    part: str
    action: str
    expected: str
    answer: str
    ok: bool


@dataclass
class Row:
    what: str
    value: Any
    required: bool = False
    ok: bool | None = None  # only required rows are judged
    source: str = ""


@dataclass
class Scenario:
    stack: Stack
    out: IO[str]
    should_stop: Callable[[], bool]
    steps: list[Step] = field(default_factory=list)
    ticks: list[dict[str, Any]] = field(default_factory=list)

    # -- the whole run -----------------------------------------------------------------------
    def play(self, ticks: int) -> bool:
        console = views.console(self.out)
        started = datetime.now(UTC)
        with reading(self.stack.target) as conn:
            user = find_user(conn, DEMO_EMAIL)
        rpc = DirectRpc(self.stack.db.url(user="authenticator"), min_size=0, max_size=2,
                        name="make-demo")
        client = httpx.Client(timeout=HTTP_TIMEOUT)
        try:
            console.print(Text("1. scripted: the demo user trades by hand (create_trade_proposal "
                               "→ decide_trade_proposal → POST trading_execute)", style="bold"))
            self.scripted(rpc, client, user)
            console.print(views.table("scripted steps", ["#", "action", "expected", "answer",
                                                         "as expected"],
                                      [[i, s.action, s.expected, s.answer, s.ok]
                                       for i, s in enumerate(self.steps, 1)]))
            console.print(Text(f"2. scanner ticks: {ticks} POSTs to scan_scheduler (ORACLE=rules),"
                               f" market clock pinned at {views.cell(MARKET_EPOCH)}, "
                               f"+{FAST_FORWARD} and jobs made due between ticks", style="bold"))
            self.scanner(ticks)
            console.print(views.table("scanner ticks", ["tick", "market time", *TICK_FIELDS,
                                                        "no_signal", "result"],
                                      [[t["n"], t["market_time"],
                                        *(t["counts"].get(k) for k in TICK_FIELDS),
                                        t["counts"].get("no_signal"), t["result"]]
                                       for t in self.ticks]))
            console.print(views.table(
                "the scanner's proposals and what became of them",
                ["created", "market", "side", "EUR", "confidence", "status", "execution",
                 "claim rejected by"],
                [[r["created_at"], r["market"], r["side"], r["amount_quote"], r["confidence"],
                  r["status"], r["execution"], r["rejected_by"]]
                 for r in self.scanner_proposals(started)], empty="none"))
            assert self.stack.cron is not None
            reconciled = self.stack.cron.call("trading_execute /reconcile")
            console.print(Text(f"3. reconcile: {live.result_text(reconciled).plain}",
                               style="bold"))
        finally:
            client.close()
            rpc.close()
        rows = self.summary(started)
        console.print(views.table("make demo — summary (read back from the database)",
                                  ["row", "value", "required", "ok", "source"],
                                  [[r.what, r.value, "required" if r.required else "",
                                    "" if r.ok is None else r.ok, r.source] for r in rows]))
        missing = [r.what for r in rows if r.required and not r.ok]
        wrong = [f"step {i}" for i, s in enumerate(self.steps, 1) if not s.ok]
        if missing or wrong:
            console.print(Text("make demo FAILED: " + ", ".join(
                [*(f"missing: {m}" for m in missing), *(f"unexpected answer at {w}"
                                                        for w in wrong)]), style="bold red"))
            return False
        console.print(Text("make demo passed: every required row is there", style="bold green"))
        return True

    # -- 1. scripted -------------------------------------------------------------------------
    def scripted(self, rpc: DirectRpc, client: httpx.Client, user: User) -> None:
        token = dev_token(local.JWT_SECRET, user.id, user.email, timedelta(minutes=30),
                          issuer=local.JWT_ISSUER)
        first = self.manual_proposal(rpc, user, "buy")
        key = f"make-demo-buy-{uuid.uuid4().hex[:8]}"
        created = self.execute(client, token, first, key, "POST / (Idempotency-Key A)",
                               "201, execution filled", want_status=201,
                               check=lambda d: d.get("execution", {}).get("status") == "filled")
        execution_id = (created or {}).get("execution", {}).get("id")
        self.execute(client, token, first, key, "the same request again (key A)",
                     "200 Idempotent-Replayed, same execution", want_status=200, replay=True,
                     check=lambda d: d.get("execution", {}).get("id") == execution_id)
        second = self.manual_proposal(rpc, user, "buy")
        self.execute(client, token, second, f"make-demo-buy-{uuid.uuid4().hex[:8]}",
                     "POST / a second buy (key B)", "422 cooldown", want_status=422,
                     check=lambda d: "cooldown" in _checks(d))
        sell = self.manual_proposal(rpc, user, "sell")
        self.execute(client, token, sell, f"make-demo-sell-{uuid.uuid4().hex[:8]}",
                     "POST / a sell after the buy (key C)", "422 anti_flip", want_status=422,
                     check=lambda d: "anti_flip" in _checks(d))

    def manual_proposal(self, rpc: DirectRpc, user: User, side: str) -> str:
        created = rpc.call("create_trade_proposal", {
            "p_user_id": user.id, "p_market": SCRIPTED_MARKET, "p_side": side,
            "p_amount_quote": SCRIPTED_AMOUNT, "p_confidence": SCRIPTED_CONFIDENCE,
            "p_rationale": f"make demo: a manual {side} of {SCRIPTED_AMOUNT} EUR",
            "p_source": "manual"})
        proposal_id = str(created["proposal_id"])
        self.steps.append(Step("scripted", f"create_trade_proposal {side} {SCRIPTED_MARKET} "
                               f"{SCRIPTED_AMOUNT} EUR, confidence {SCRIPTED_CONFIDENCE}",
                               "pending", str(created.get("status")),
                               created.get("status") == "pending"))
        decided = decide_as_user(self.stack.db.url(user="authenticator"), user.id, proposal_id,
                                 "approve")
        self.steps.append(Step("scripted", "decide_trade_proposal approve (as the user)",
                               "approved", f"{decided.get('outcome')} → {decided.get('status')}",
                               decided.get("status") == "approved"))
        return proposal_id

    def execute(self, client: httpx.Client, token: str, proposal_id: str, key: str, action: str,
                expected: str, *, want_status: int, replay: bool = False,
                check: Callable[[dict[str, Any]], bool]) -> dict[str, Any] | None:
        response = client.post(f"{self.stack.execute_url}/", json={"proposal_id": proposal_id},
                               headers={"Authorization": f"Bearer {token}",
                                        "Idempotency-Key": key})
        try:
            document = response.json()
        except ValueError:
            document = {}
        replayed = response.headers.get("Idempotent-Replayed") == "true"
        answer = f"{response.status_code}" + (" Idempotent-Replayed" if replayed else "")
        if "execution" in document:
            answer += f", execution {document['execution'].get('status')}"
        if _checks(document):
            answer += f", failed_checks {', '.join(_checks(document))}"
        ok = (response.status_code == want_status and replayed == replay
              and isinstance(document, dict) and check(document))
        self.steps.append(Step("scripted", action, expected, answer, ok))
        return document if isinstance(document, dict) else None

    # -- 2. scanner ------------------------------------------------------------------------------
    def scanner(self, ticks: int) -> None:
        sandbox = self.stack.sandbox_url
        with httpx.Client(base_url=sandbox, timeout=HTTP_TIMEOUT) as control:
            now = int(control.get("/_sandbox/clock").json()["market_time"])
            if now < market_epoch_ms():
                control.post("/_sandbox/clock", json={"advance_ms": market_epoch_ms() - now})
            assert self.stack.cron is not None
            for n in range(1, ticks + 1):
                if self.should_stop():
                    return
                if n > 1:
                    control.post("/_sandbox/clock",
                                 json={"advance_ms": int(FAST_FORWARD.total_seconds() * 1000)})
                    make_jobs_due(self.stack.db.url())
                market_time = datetime.fromtimestamp(
                    int(control.get("/_sandbox/clock").json()["market_time"]) / 1000, UTC)
                result = self.stack.cron.call("scan_scheduler tick")
                self.ticks.append({"n": n, "market_time": market_time,
                                   "counts": dict(result.counts),
                                   "result": "ok" if result.ok else result.error})

    def scanner_proposals(self, since: datetime) -> list[dict[str, Any]]:
        with reading(self.stack.target) as conn, conn.cursor(row_factory=dict_row) as cur:
            return cur.execute("""
                select p.created_at, p.market, p.side, p.amount_quote, p.confidence, p.status,
                       e.status as execution,
                       (select string_agg(distinct f ->> 'check', ', ')
                        from public.execution_audit_log l
                        cross join lateral jsonb_array_elements(l.detail -> 'failed_checks') f
                        where l.proposal_id = p.id and l.event = 'claim.rejected') as rejected_by
                from public.trade_proposals p
                left join public.trade_executions e on e.proposal_id = p.id
                where p.source <> 'manual' and p.created_at >= %s
                order by p.created_at, p.market""", (since,)).fetchall()

    # -- the summary -------------------------------------------------------------------------
    def summary(self, since: datetime) -> list[Row]:
        with reading(self.stack.target) as conn:
            def scalar(query: str, *params: Any) -> Any:
                row = conn.execute(query, params).fetchone()
                return row[0] if row else None

            trades = scalar("select count(*) from public.trade_history h "
                            "where h.executed_at >= %s", since)
            by_source = dict(conn.execute(
                "select p.source, count(*) from public.trade_history h "
                "join public.trade_executions e on e.id = h.execution_id "
                "join public.trade_proposals p on p.id = e.proposal_id "
                "where h.executed_at >= %s group by 1 order by 1", (since,)).fetchall())
            rejections = dict(conn.execute(
                "select f ->> 'check', count(*) from public.execution_audit_log l "
                "cross join lateral jsonb_array_elements(l.detail -> 'failed_checks') f "
                "where l.event = 'claim.rejected' and l.created_at >= %s "
                "group by 1 order by 1", (since,)).fetchall())
            replays = scalar("select count(*) from public.execution_audit_log l "
                             "where l.event = 'claim.replayed' and l.created_at >= %s", since)
            executions = dict(conn.execute(
                "select e.status, count(*) from public.trade_executions e "
                "where e.claimed_at >= %s group by 1 order by 1", (since,)).fetchall())
            proposals = dict(conn.execute(
                "select p.status || ' (' || p.source || ')', count(*) "
                "from public.trade_proposals p where p.created_at >= %s "
                "group by 1 order by 1", (since,)).fetchall())
        tick_totals = {k: sum(int(t["counts"].get(k) or 0) for t in self.ticks)
                       for k in (*TICK_FIELDS, "no_signal")}
        return [
            Row("executed trades (trade_history)", _breakdown(trades, by_source), True,
                bool(trades), "scripted + scanner"),
            Row("rejections by cooldown (G5)", rejections.get("cooldown", 0), True,
                rejections.get("cooldown", 0) > 0, "audit log claim.rejected"),
            Row("rejections by anti_flip (G6)", rejections.get("anti_flip", 0), True,
                rejections.get("anti_flip", 0) > 0, "audit log claim.rejected"),
            Row("replayed idempotent requests (G1)", replays, True, bool(replays),
                "audit log claim.replayed"),
            Row("rejections by validator (all)", _listing(rejections), source="audit log"),
            Row("executions by status", _listing(executions), source="trade_executions"),
            Row("proposals by status (source)", _listing(proposals), source="trade_proposals"),
            Row("scanner ticks", f"{len(self.ticks)}: " + ", ".join(
                f"{k} {v}" for k, v in tick_totals.items()), source="scan_scheduler answers"),
        ]


def _checks(document: Mapping[str, Any]) -> list[str]:
    checks = document.get("failed_checks") if isinstance(document, Mapping) else None
    return [str(c.get("check")) for c in checks if isinstance(c, Mapping)] \
        if isinstance(checks, list) else []


def _listing(counts: Mapping[str, Any]) -> str:
    return ", ".join(f"{k} {v}" for k, v in counts.items()) or "none"


def _breakdown(total: Any, by: Mapping[str, Any]) -> str:
    parts = ", ".join(f"{k} {v}" for k, v in by.items())
    return f"{total}" + (f" ({parts})" if parts else "")


def _decimal_json(text: str | bytes) -> Any:
    return json.loads(text, parse_float=Decimal)


def decide_as_user(url: str, user_id: uuid.UUID, proposal_id: str,
                   decision: str) -> dict[str, Any]:
    """decide_trade_proposal as the signed-in user, exactly as PostgREST runs it: one transaction
    as `authenticated` with the user's claims (auth.uid() reads them)."""
    claims = {"sub": str(user_id), "role": "authenticated", "aud": "authenticated"}
    with psycopg.connect(url, autocommit=True, connect_timeout=10) as conn:
        set_json_loads(_decimal_json, conn)
        with conn.transaction():
            conn.execute("select set_config('role', 'authenticated', true), "
                         "set_config('request.jwt.claims', %s, true)", (json.dumps(claims),))
            row = conn.execute("select public.decide_trade_proposal(%s, %s)",
                               (proposal_id, decision)).fetchone()
    return dict(row[0]) if row and isinstance(row[0], dict) else {}


def make_jobs_due(url: str) -> None:
    """The demo's fast-forward: every enabled scan job due now (instead of a minute from now)."""
    with psycopg.connect(url, autocommit=True, connect_timeout=10) as conn:
        conn.execute("update public.scan_jobs set next_run_at = now() where enabled")


# -- the command (python -m stack demo) -----------------------------------------------------------
def demo(ticks: int, sandbox_seed: int, state_dir: Path, out: IO[str], err: IO[str]) -> int:
    started = time.monotonic()
    signals = Signals()
    signals.install()
    scratch = Path(tempfile.mkdtemp(prefix="aio-demo-"))
    scratch.chmod(0o755)  # PostgreSQL runs as `postgres` when we are root
    shutil.rmtree(state_dir / "logs", ignore_errors=True)
    ports = Ports(db=free_port(), sandbox=free_port(), trading_execute=free_port(),
                  scan_scheduler=free_port())
    # The market clock starts a little before the scenario's pinned epoch (it only moves forward).
    offset = market_epoch_ms() - 600_000 - int(time.time() * 1000)
    config = Config(ports=ports, data_dir=scratch / "cluster", state_dir=state_dir,
                    sandbox_seed=sandbox_seed, tick_seconds=1.0, reconcile_seconds=3600.0,
                    sandbox_clock_offset_ms=offset)

    def say(message: str) -> None:
        out.write(f"· {message}\n")
        out.flush()

    say("make demo: the whole stack on a throwaway PostgreSQL and free ports, paper mode, "
        f"sandbox seed {sandbox_seed}")
    stack = Stack(config, signals, say)
    code = 1
    try:
        stack.up()
        say(f"stack ready in {time.monotonic() - started:.1f} s (logs in {config.logs})")
        assert stack.cron is not None
        scenario = Scenario(stack=stack, out=out, should_stop=lambda: signals.requested)
        code = 0 if scenario.play(ticks) else 1
    except StopRequested:
        err.write("make demo: interrupted\n")
        code = 130
    except (PortInUse, StackFailed, ServiceFailed, DatabaseError) as exc:
        err.write(f"make demo: {exc}\n")
    finally:
        stack.down()
        Cluster(data_dir=config.data_dir, port=ports.db).destroy()
        shutil.rmtree(scratch, ignore_errors=True)
    say(f"make demo finished in {time.monotonic() - started:.1f} s; every process it started "
        "is stopped, its database deleted" + ("" if code == 0 else f" (exit {code})"))
    return code
