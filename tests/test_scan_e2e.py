"""scan_scheduler end to end: the real function (functions-framework CLI on 127.0.0.1), the real
database (tests/pg.py) and the Bitvavo sandbox over real HTTP.

- G2: 208 due jobs over 52 users and 4 markets, 4 concurrent tick callers on 2 function processes
  → every job claimed and run exactly once for its due period, proposals written, jobs rescheduled;
- G2: a worker SIGKILLed before its release → the next tick's dispatch executes its queued
  proposals once, each with its Idempotency-Key → its leases expire → a later tick completes each
  job once, and the jobs that had already proposed do not propose again;
- G2: the heartbeat extends the leases of running jobs; a job whose lease was taken over writes
  nothing;
- a failing job (a market the sandbox does not know) backs off, the others are unaffected;
- G7 with ORACLE=openai against an OpenAI-compatible fake served here over HTTP;
- auto-execute: the request's headers and body, and a failed request retried with the same key
  by the next tick's dispatch (tests/test_scan_burst.py: a burst within the trade key's budget);
- the HTTP contract (401/400/405) and the jobs/second of one tick (printed, never asserted).
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter, defaultdict
from contextlib import ExitStack
from datetime import datetime
from decimal import Decimal
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import pytest

from scripts.wireturns import WireTurns
from shared.auth import dev_token
from shared.scanning.tick import SUCCEEDED
from tests.function_server import FunctionServer, start_function
from tests.pg import Database
from tests.sandbox_server import SandboxServer
from tests.scan_support import (
    ALWAYS_SIGNAL,
    JWT_SECRET,
    OPENAI_KEY,
    SERVICE_KEY,
    ExecuteStandIn,
    Forwarder,
    HoldingProxy,
    Recorded,
    RecordingServer,
    build_world,
    scan_env,
    service_headers,
    step_lines,
)

AUTO = {"auto_execute": True, "min_confidence": Decimal("0.5"), "trading_enabled": True}


def tick(fn: FunctionServer, max_jobs: int = 10) -> dict[str, Any]:
    answer = fn.post("/", json={"max_jobs": max_jobs}, headers=service_headers())
    assert answer.status_code == 200, answer.text
    return answer.json()


def total(responses: list[dict[str, Any]], key: str) -> int:
    return sum(r[key] for r in responses)


def ts(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def lines(*servers: FunctionServer, step: str | None = None) -> list[dict[str, Any]]:
    found = [line for fn in servers for line in step_lines(fn.logs())]
    return [line for line in found if step is None or line["step"] == step]


def job_runs(*servers: FunctionServer) -> list[dict[str, Any]]:
    """Every job run the servers logged: the batch lines ("jobs") expanded, one record per job
    with its batch's worker, start and end."""
    return [{"job_id": job_id, "outcome": outcome, "succeeded": outcome in SUCCEEDED,
             "worker_id": line["worker_id"], "started_at": line["started_at"],
             "finished_at": line["finished_at"]}
            for line in lines(*servers, step="jobs")
            for outcome, ids in line["job_ids"].items() for job_id in ids]


def jobs_by_market(db: Database) -> dict[str, uuid.UUID]:
    return {m: j for j, m in db.query("select id, market from public.scan_jobs")}


def wait_for(condition: Any, timeout: float = 30.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


# -- G2 under concurrency -------------------------------------------------------------------------
def test_g2_208_jobs_and_4_concurrent_callers_run_every_job_once(
        db: Database, bitvavo_sandbox: SandboxServer) -> None:
    build_world(db, users=52)
    assert db.scalar("select count(*) from public.scan_jobs where next_run_at <= now()") == 208
    env = scan_env(db, bitvavo_sandbox, **ALWAYS_SIGNAL)
    responses: list[dict[str, Any]] = []
    errors: list[BaseException] = []

    def caller(fn: FunctionServer) -> None:
        try:
            while True:
                answer = tick(fn, 10)
                responses.append(answer)
                if answer["claimed"] == 0:
                    return
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    with start_function("scan_scheduler", env=env) as a, \
            start_function("scan_scheduler", env=env) as b:
        threads = [threading.Thread(target=caller, args=(fn,)) for fn in (a, b, a, b)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        assert not errors, errors
        claims = lines(a, b, step="claim")
        runs = job_runs(a, b)
        releases = lines(a, b, step="release")

    # The ticks' own counts.
    assert total(responses, "claimed") == 208 == total(responses, "succeeded")
    assert total(responses, "failed") == 0 and total(responses, "released") == 208
    assert total(responses, "proposals") == 208
    # Claimed exactly once: every job id is in exactly one claim line, run exactly once.
    claimed = Counter(job for line in claims for job in line.get("job_ids", []))
    assert len(claimed) == 208 and set(claimed.values()) == {1}
    ran = Counter(line["job_id"] for line in runs)
    assert len(ran) == 208 and set(ran.values()) == {1}
    assert all(line["succeeded"] and line["outcome"] == "proposed" for line in runs)
    # Never two at the same time: per job, its lease intervals (claim → its tick's release) and
    # its run intervals do not overlap (each job has one of each); and the work really was
    # concurrent — several ticks' jobs ran at once.
    released_at = {line["worker_id"]: ts(line["time"]) for line in releases}
    leases: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for line in claims:
        for job in line.get("job_ids", []):
            leases[job].append((ts(line["time"]), released_at[line["worker_id"]]))
    for intervals in leases.values():
        intervals.sort()
        assert all(end <= nxt for (_, end), (nxt, _) in zip(intervals, intervals[1:],
                                                             strict=False))
    spans = sorted((ts(r["started_at"]), ts(r["finished_at"])) for r in runs)
    peak = max(sum(1 for s, e in spans if s <= start < e) for start, _ in spans)
    assert peak > 1
    assert len({line["worker_id"] for line in runs}) >= 4

    # The database: one proposal per job, every job released and rescheduled one interval on.
    per_job = db.query("select count(*) from public.trade_proposals group by scan_job_id")
    assert len(per_job) == 208 and {n for (n,) in per_job} == {1}
    state = db.query("""
        select count(*) filter (where locked_by is null and attempts = 1
                                  and consecutive_failures = 0 and last_success_at is not null
                                  and next_run_at between last_run_at + interval '599 seconds'
                                                      and last_run_at + interval '601 seconds')
        from public.scan_jobs""")
    assert state == [(208,)]


def test_jobs_per_second_of_one_tick(db: Database, bitvavo_sandbox: SandboxServer) -> None:
    """One tick of 60 due jobs, rules oracle, sandbox market data: printed, never asserted."""
    build_world(db, users=15)
    measured = {}
    for concurrency in (1, 4):
        db.query("update public.scan_jobs set next_run_at = now() - interval '1 second'")
        env = scan_env(db, bitvavo_sandbox, SCAN_CONCURRENCY=str(concurrency), **ALWAYS_SIGNAL)
        with start_function("scan_scheduler", env=env) as fn:
            tick(fn, 1)  # warm the connection pools
            db.query("update public.scan_jobs set next_run_at = now() - interval '1 second'")
            bitvavo_sandbox.reset()
            started = time.perf_counter()
            answer = tick(fn, 60)
            wall = time.perf_counter() - started
        assert answer["claimed"] == 60 == answer["succeeded"]
        measured[concurrency] = (60 / (answer["elapsed_ms"] / 1000), 60 / wall)
    for concurrency, (inside, http) in measured.items():
        print(f"\none tick, 60 jobs, SCAN_CONCURRENCY={concurrency}: {inside:.1f} jobs/s "
              f"(inside the tick), {http:.1f} jobs/s (request to response)")


def test_g2_g1_a_sigkilled_worker_s_jobs_run_again_once_and_execute_once(
        db: Database, bitvavo_sandbox: SandboxServer) -> None:
    """The real chain, paper mode: scan_scheduler → the real trading_execute (through a recorder).
    Worker A claims BTC-EUR's, ETH-EUR's and SOL-EUR's jobs (SOL-EUR has no room under its market
    cap) and writes the two proposals, auto-approved — then it is SIGKILLed while its release
    waits (the test holds SOL-EUR's row lock, and the release's statement times out after the
    kill), before its tick released or dispatched anything. The proposals wait in the database:
    the next tick's dispatch executes both while the dead worker still holds the jobs' leases.
    After the leases expire, a later tick completes every job once: BTC-EUR's and ETH-EUR's jobs
    find their period's proposals and do not propose again, and nothing is left to dispatch. One
    execution per proposal, one paper fill each, under Idempotency-Key auto:<proposal_id>. A
    stalled scanner repeating a request (same key, same body) gets trading_execute's replay; any
    other key for that proposal is refused (trade_executions: unique proposal_id)."""
    build_world(db, users=1, markets=("BTC-EUR", "ETH-EUR", "SOL-EUR"), settings=AUTO)
    db.query("update public.trading_allowlist set max_order_quote = 1 where market = 'SOL-EUR'")
    job = jobs_by_market(db)
    executor_env = {"DATABASE_URL": db.authenticator_url, "SUPABASE_SERVICE_ROLE_KEY": SERVICE_KEY,
                    "SUPABASE_JWT_SECRET": JWT_SECRET, "BITVAVO_REST_URL": bitvavo_sandbox.rest_url,
                    "TRADING_MODE": "paper"}
    with start_function("trading_execute", env=executor_env) as trading_execute, \
            Forwarder(trading_execute.url) as execute, \
            HoldingProxy(bitvavo_sandbox, hold=["BTC-EUR"]) as proxy, ExitStack() as stack:
        env = scan_env(db, bitvavo_sandbox, BITVAVO_REST_URL=proxy.rest_url,
                       EXECUTE_FUNCTION_URL=execute.url, JOB_LEASE_SECONDS="10",
                       HEARTBEAT_SECONDS="2", TICK_TIME_BUDGET_SECONDS="5",
                       RPC_TIMEOUT_SECONDS="3", **ALWAYS_SIGNAL)
        # B starts before A dies, so its first tick comes well inside the dead worker's leases.
        b = stack.enter_context(start_function("scan_scheduler", env=env))
        with start_function("scan_scheduler", env=env) as a, \
                db.connect(autocommit=False) as blocker:
            doomed = threading.Thread(target=lambda: _ignore(lambda: tick(a, 10)))
            doomed.start()
            assert proxy.arrived["BTC-EUR"].wait(20)  # claimed, mid-batch
            blocker.execute("select 1 from public.scan_jobs where id = %s for update",
                            (job["SOL-EUR"],))
            proxy.release()
            wait_for(lambda: db.scalar("select count(*) from public.trade_proposals") == 2,
                     what="the batch's proposals")
            wait_for(lambda: db.scalar("select count(*) from pg_stat_activity where "
                                       "wait_event_type = 'Lock' and query like "
                                       "'%%release_job_locks%%'") == 1,
                     what="the release to wait on the row lock")
            claim_line = lines(a, step="claim")[0]
            killed_at = time.time()
            a.kill()
            doomed.join(timeout=30)
            # The dead worker's release statement times out (RPC_TIMEOUT_SECONDS): nothing
            # released.
            wait_for(lambda: db.scalar("select count(*) from pg_stat_activity where "
                                       "query like '%%release_job_locks%%' and state = 'active' "
                                       "and pid <> pg_backend_pid()") == 0,
                     what="the dead worker's release to end")
            blocker.rollback()
        held = db.query("select market, locked_by, lock_expires_at > now() from public.scan_jobs "
                        "order by market")
        assert {w for _, w, _ in held} == {claim_line["worker_id"]}
        assert db.query("select market, status, decided_by from public.trade_proposals "
                        "order by market") == [("BTC-EUR", "approved", "auto"),
                                               ("ETH-EUR", "approved", "auto")]
        assert execute.requests == []  # the dispatch comes after the release: it never ran

        waiting = tick(b)  # the dead worker's leases still hold; its proposals are queued
        assert (waiting["claimed"], waiting["executions_requested"]) == (0, 2)
        assert (waiting["dispatch"]["executed"], waiting["dispatch"]["stopped"]) == (2, "drained")
        wait_for(lambda: db.scalar("select bool_and(lock_expires_at <= now()) "
                                   "from public.scan_jobs"), timeout=20,
                 what="the dead worker's leases to expire")
        later = tick(b)
        runs = job_runs(b)
        requests, answers = execute.requests, execute.answers
        # A stalled scanner repeating ETH-EUR's request (same key, same body), straight to
        # trading_execute; and a request for that proposal under any other key.
        first = requests[0]
        replay = httpx.post(trading_execute.url + "/", content=first.body, timeout=30, headers={
            k: first.header(k) or "" for k in ("Authorization", "Idempotency-Key",
                                               "Content-Type")})
        other_key = httpx.post(trading_execute.url + "/", content=first.body, timeout=30,
                               headers={"Authorization": f"Bearer {SERVICE_KEY}",
                                        "Content-Type": "application/json",
                                        "Idempotency-Key": f"auto:{uuid.uuid4()}"})

    assert (later["claimed"], later["succeeded"], later["failed"]) == (3, 3, 0)
    assert (later["proposals"], later["proposals_replayed"], later["no_room"]) == (0, 2, 1)
    assert later["executions_requested"] == 0  # both were executed before
    assert (later["dispatch"]["listed"], later["dispatch"]["stopped"]) == (0, "drained")
    # Completed once: one proposal per job, every job released and rescheduled.
    assert db.query("select market, count(*) from public.trade_proposals group by market "
                    "order by market") == [("BTC-EUR", 1), ("ETH-EUR", 1)]
    assert db.query("select count(*) from public.scan_jobs where locked_by is null and "
                    "last_success_at is not null and attempts = 2") == [(3,)]
    proposal = {m: str(p) for m, p in db.query("select market, id from public.trade_proposals")}
    assert sorted(r.header("Idempotency-Key") for r in requests) == sorted(
        f"auto:{proposal[m]}" for m in ("BTC-EUR", "ETH-EUR"))
    assert [status for status, _, _ in answers] == [201, 201]
    # Executed once even if a stalled scanner repeats its request: same key → the replay.
    assert replay.status_code == 200 and replay.headers["Idempotent-Replayed"] == "true"
    executed = {a[2]["execution"]["proposal_id"]: a[2]["execution"]["id"] for a in answers}
    assert replay.json()["execution"]["id"] == executed[first.json()["proposal_id"]]
    assert other_key.status_code == 409
    executions = db.query("select p.market, e.idempotency_key, e.mode, e.status "
                          "from public.trade_executions e join public.trade_proposals p "
                          "on p.id = e.proposal_id order by p.market")
    assert executions == [("BTC-EUR", f"auto:{proposal['BTC-EUR']}", "paper", "filled"),
                          ("ETH-EUR", f"auto:{proposal['ETH-EUR']}", "paper", "filled")]
    assert db.scalar("select count(*) from public.trade_history") == 2
    assert bitvavo_sandbox.orders() == []  # paper mode: nothing reached the exchange
    # Never at the same time: the later run started after the kill, after the lease expired.
    assert all(ts(r["started_at"]) > killed_at for r in runs)
    assert ts(claim_line["time"]) < killed_at


def _ignore(call: Any) -> None:
    try:
        call()
    except (httpx.HTTPError, AssertionError):
        pass  # the server was killed under it


def test_g2_the_heartbeat_keeps_leases_and_a_taken_over_job_writes_nothing(
        db: Database, bitvavo_sandbox: SandboxServer) -> None:
    build_world(db, users=1, markets=("BTC-EUR", "ETH-EUR"))
    job = jobs_by_market(db)
    with HoldingProxy(bitvavo_sandbox, hold=["BTC-EUR", "ETH-EUR"]) as proxy:
        env = scan_env(db, bitvavo_sandbox, BITVAVO_REST_URL=proxy.rest_url,
                       JOB_LEASE_SECONDS="10", HEARTBEAT_SECONDS="1",
                       TICK_TIME_BUDGET_SECONDS="5", **ALWAYS_SIGNAL)
        with start_function("scan_scheduler", env=env) as fn:
            result: dict[str, Any] = {}
            runner = threading.Thread(target=lambda: result.update(tick(fn, 10)))
            runner.start()
            assert proxy.arrived["BTC-EUR"].wait(20) and proxy.arrived["ETH-EUR"].wait(20)
            before = dict(db.query("select market, lock_expires_at from public.scan_jobs"))
            time.sleep(2.5)
            after = dict(db.query("select market, lock_expires_at from public.scan_jobs"))
            for market in before:
                assert (after[market] - before[market]).total_seconds() > 1.5, market
            # Another worker takes ETH-EUR's job over (its lease is made to have expired).
            db.query("update public.scan_jobs set locked_at = now() - interval '30 seconds', "
                     "lock_expires_at = now() - interval '1 second' where id = %s",
                     (job["ETH-EUR"],))
            taken = db.rpc_rows("claim_due_scan_jobs", p_worker_id="thief", p_limit=10)
            assert [r["id"] for r in taken] == [job["ETH-EUR"]]
            proxy.release()
            runner.join(timeout=60)
            release = lines(fn, step="release")[0]

    assert (result["claimed"], result["succeeded"], result["failed"]) == (2, 1, 1)
    assert (result["lease_lost"], result["proposals"], result["released"]) == (1, 1, 1)
    assert release["not_released"] == [str(job["ETH-EUR"])]
    assert db.query("select market from public.trade_proposals") == [("BTC-EUR",)]
    assert db.scalar("select locked_by from public.scan_jobs where id = %s",
                     (job["ETH-EUR"],)) == "thief"


# -- failures -------------------------------------------------------------------------------------
def test_a_failing_job_backs_off_and_the_others_are_unaffected(
        db: Database, bitvavo_sandbox: SandboxServer) -> None:
    # DOGE-EUR is allowlisted here but unknown to the exchange: its market data answers 205.
    build_world(db, users=3, markets=("BTC-EUR", "ETH-EUR", "DOGE-EUR"))
    with start_function("scan_scheduler",
                        env=scan_env(db, bitvavo_sandbox, **ALWAYS_SIGNAL)) as fn:
        first = tick(fn, 20)
        after_first = db.query("""
            select market, consecutive_failures, last_error,
                   extract(epoch from next_run_at - last_run_at)::int, locked_by
            from public.scan_jobs order by market""")
        db.query("update public.scan_jobs set next_run_at = now() where market = 'DOGE-EUR'")
        second = tick(fn, 20)
        after_second = db.query("select market, consecutive_failures, "
                                "extract(epoch from next_run_at - last_run_at)::int "
                                "from public.scan_jobs order by market")

    assert (first["claimed"], first["succeeded"], first["failed"]) == (9, 6, 3)
    assert first["proposals"] == 6
    for market, failures, error, wait, locked_by in after_first:
        assert locked_by is None
        if market == "DOGE-EUR":
            assert (failures, wait) == (1, 30)  # backoff: 30 s × 2^0
            assert "205" in error and "market parameter is invalid" in error
        else:
            assert (failures, error, wait) == (0, None, 600)
    assert (second["claimed"], second["failed"], second["proposals"]) == (3, 3, 0)
    assert {(m, f, w) for m, f, w in after_second if m == "DOGE-EUR"} == {("DOGE-EUR", 2, 60)}
    assert {(m, f, w) for m, f, w in after_second if m != "DOGE-EUR"} == {
        ("BTC-EUR", 0, 600), ("ETH-EUR", 0, 600)}
    assert db.scalar("select count(*) from public.trade_proposals") == 6


# -- G7: the GPT budget with ORACLE=openai --------------------------------------------------------
class FakeModel:
    """An OpenAI-compatible /v1/chat/completions served over HTTP. Every request carries the id of
    a shared oracle answer (X-Client-Request-Id); for each, it checks in the database that the
    answer has at least one reservation, every one of them `reserved` for this call's completion
    cap, and that each of those users' spend (settled + reserved) is within both limits at that
    moment. Answers a valid buy, or every 5th a malformed answer and every 7th a refusal, with
    fixed usage (its bill: `billed`)."""

    USAGE = {"prompt_tokens": 1200, "completion_tokens": 150, "total_tokens": 1350,
             "prompt_tokens_details": {"cached_tokens": 200}}

    def __init__(self, db: Database, delay: float = 0.2) -> None:
        self.db = db
        self.delay = delay
        self.violations: list[str] = []
        self.served: dict[str, str] = {}  # answer id → what was answered
        self.request_ids: dict[str, str] = {}
        self.max_completion_tokens: set[int] = set()
        self._count = 0
        self._lock = threading.Lock()
        self.server = RecordingServer(self.answer)

    def answer(self, request: Recorded) -> tuple[int, dict[str, str], dict[str, Any]]:
        answer_id = request.header("X-Client-Request-Id") or ""
        body = request.json()
        rows = self.db.query("select status, user_id, max_completion_tokens "
                             "from public.gpt_usage_log where oracle_answer_id::text = %s",
                             (answer_id,))
        if not rows:
            self.violations.append(f"a call without a reservation: {answer_id!r}")
        for status, user, reserved_completion in rows:
            if status != "reserved":
                self.violations.append(f"a call on a {status} reservation ({answer_id})")
            if body.get("max_completion_tokens") != reserved_completion:
                self.violations.append(f"completion cap {body.get('max_completion_tokens')} is "
                                       f"not the reserved {reserved_completion}")
            (spent, hourly, daily), = self.db.query("""
                select coalesce(sum(case l.status when 'settled' then l.cost_usd
                                                  else l.reserved_usd end), 0),
                       s.gpt_hourly_budget_usd, s.gpt_daily_budget_usd
                from public.trading_settings s
                left join public.gpt_usage_log l on l.user_id = s.user_id
                                                and l.status <> 'released'
                where s.user_id = %s group by s.user_id, s.gpt_hourly_budget_usd,
                                              s.gpt_daily_budget_usd""", (user,))
            if spent > min(hourly, daily):
                self.violations.append(f"spend {spent} above a limit ({hourly}, {daily})")
        self.max_completion_tokens.add(body.get("max_completion_tokens"))
        time.sleep(self.delay)  # a model takes a while: reservations of concurrent ticks overlap
        with self._lock:
            self._count += 1
            n = self._count
        kind = "malformed" if n % 5 == 0 else "refusal" if n % 7 == 0 else "buy"
        content = {"buy": '{"action":"buy","confidence":0.9,"rationale":"Uptrend."}',
                   "malformed": '{"action":"buy","confidence":"very"}',
                   "refusal": None}[kind]
        self.served[answer_id] = kind
        self.request_ids[answer_id] = f"req_fake_{n}"
        return 200, {"x-request-id": f"req_fake_{n}"}, {
            "id": f"chatcmpl-fake{n}", "object": "chat.completion", "created": 1764331200,
            "model": body.get("model"),
            "choices": [{"index": 0, "finish_reason": "stop", "logprobs": None, "message": {
                "role": "assistant", "content": content,
                "refusal": "I can't help with that." if kind == "refusal" else None}}],
            "usage": self.USAGE}

    def billed(self, db: Database) -> Decimal:
        """One call's bill, priced as gpt_model_prices says."""
        usage = self.USAGE
        prices = db.query("select input_usd_per_mtok, cached_input_usd_per_mtok, "
                          "output_usd_per_mtok from public.gpt_model_prices "
                          "where model = 'gpt-4o-mini'")[0]
        cached = usage["prompt_tokens_details"]["cached_tokens"]  # type: ignore[index]
        return ((usage["prompt_tokens"] - cached) * prices[0] + cached * prices[1]  # type: ignore[operator]
                + usage["completion_tokens"] * prices[2]) / Decimal(1_000_000)


def openai_env(db: Database, sandbox: SandboxServer, fake: FakeModel, **extra: str
               ) -> dict[str, str]:
    return scan_env(db, sandbox, ORACLE="openai", OPENAI_API_KEY=OPENAI_KEY,
                    OPENAI_BASE_URL=fake.server.url + "/v1", OPENAI_MODEL="gpt-4o-mini",
                    OPENAI_MAX_COMPLETION_TOKENS="200", OPENAI_TIMEOUT_SECONDS="10", **extra)


def test_g7_concurrent_ticks_never_spend_beyond_the_limits_and_settle_every_call(
        db: Database, bitvavo_sandbox: SandboxServer) -> None:
    # Two users, 4 jobs each: A's hourly limit binds first, B's daily limit. Each round every job
    # is due again and the market has moved a minute, so each round reads new snapshots.
    hourly_bound = build_world(db, users=1, settings={"gpt_hourly_budget_usd": Decimal("0.0020"),
                                                     "gpt_daily_budget_usd": Decimal("0.0100")})
    daily_bound = build_world(db, users=1, settings={"gpt_hourly_budget_usd": Decimal("0.0100"),
                                                    "gpt_daily_budget_usd": Decimal("0.0015")})
    users = hourly_bound + daily_bound
    fake = FakeModel(db)
    responses: list[dict[str, Any]] = []
    with fake.server:
        with start_function("scan_scheduler", env=openai_env(db, bitvavo_sandbox, fake)) as fn:
            for _ in range(4):  # rounds: every job due again, 4 ticks at once
                bitvavo_sandbox.advance_clock(60_000)
                db.query("update public.scan_jobs set next_run_at = now() - interval '1 second'")
                threads = [threading.Thread(target=lambda: responses.append(tick(fn, 2)))
                           for _ in range(4)]
                for t in threads:
                    t.start()
                for t in threads:
                    t.join(timeout=60)

    assert fake.violations == []
    assert total(responses, "claimed") == 32 == total(responses, "succeeded")
    calls = len(fake.served)
    denied = total(responses, "budget_denied")
    assert total(responses, "model_calls") == calls
    assert 0 < calls <= 16 and denied > 0  # at most one call per market snapshot
    # Denied users are counted, and each denial is audited (a user asked again for a snapshot
    # whose first claim was given up is audited again), never a request.
    assert db.scalar("select count(*) from public.execution_audit_log "
                     "where event = 'gpt_budget.denied'") >= denied
    # Every call's bill settled — malformed and refused ones too — split among its reservations:
    # the rows of a call sum to its bill exactly and each keeps the call's usage and request id.
    rows = db.query("""
        select l.oracle_answer_id::text, sum(l.cost_usd), bool_and(l.status = 'settled'),
               bool_and(l.cost_usd <= l.reserved_usd), min(l.prompt_tokens),
               min(l.completion_tokens), min(l.request_id), count(*), min(l.shared_by)
        from public.gpt_usage_log l
        where l.oracle_answer_id::text = any(%s) group by 1""", (list(fake.served),))
    assert {r[0] for r in rows} == set(fake.served)
    for answer_id, cost, settled, within, prompt, completion, request_id, n, shared_by in rows:
        assert settled and within and (prompt, completion) == (1200, 150)
        assert cost == fake.billed(db) and n == shared_by
        assert request_id == fake.request_ids[answer_id]
    assert db.scalar("select count(*) from public.gpt_usage_log where status = 'reserved'") == 0
    kinds = Counter(fake.served.values())
    assert fake.max_completion_tokens == {200}
    assert total(responses, "oracle_unusable") > 0 or kinds["malformed"] + kinds["refusal"] == 0
    # A buy on a market where the user's buy is still open does not stack.
    assert db.scalar("select count(*) from public.trade_proposals") == \
        total(responses, "proposals") <= 8
    # Settled + reserved within both limits for each user, now as at every call.
    for user in users:
        spent, hourly, daily = db.query("""
            select coalesce(sum(l.cost_usd), 0), s.gpt_hourly_budget_usd, s.gpt_daily_budget_usd
            from public.trading_settings s left join public.gpt_usage_log l using (user_id)
            where s.user_id = %s group by 2, 3""", (user,))[0]
        assert 0 < spent <= min(hourly, daily)
    reasons = {r for (r,) in db.query("select distinct detail ->> 'reason' from "
                                      "public.execution_audit_log where event = "
                                      "'gpt_budget.denied'")}
    assert reasons and reasons <= {"hourly_budget_exceeded", "daily_budget_exceeded"}


# -- auto-execute ---------------------------------------------------------------------------------
def test_auto_execute_requests_each_proposal_once_with_its_key_after_the_jobs_are_released(
        db: Database, bitvavo_sandbox: SandboxServer) -> None:
    """The tick hands its auto-approved proposals on once, at its end, each under
    Idempotency-Key auto:<proposal_id>; the jobs' outcome does not hang on trading_execute's
    answer (an unanswered request leaves the proposal approved, never proposed again)."""
    (user,) = build_world(db, users=1, markets=("BTC-EUR", "ETH-EUR"), settings=AUTO)
    with ExecuteStandIn(fail_first=1) as execute:
        env = scan_env(db, bitvavo_sandbox, EXECUTE_FUNCTION_URL=execute.url, SCAN_CONCURRENCY="1",
                       DISPATCH_CONCURRENCY="1", **ALWAYS_SIGNAL)
        with start_function("scan_scheduler", env=env) as fn:
            first = tick(fn)
            second = tick(fn)
            releases = lines(fn, step="release")
            requests = lines(fn, step="execute_request")

    # The first request gets no definite answer (503): the dispatch stops, both proposals stay
    # queued, and no job fails for it. The next tick's dispatch sends both.
    assert (first["proposals"], first["failed"], first["executions_requested"]) == (2, 0, 1)
    assert (first["dispatch"]["unavailable"], first["dispatch"]["stopped"]) == (1, "unavailable")
    assert (second["claimed"], second["executions_requested"]) == (0, 2)
    assert (second["dispatch"]["executed"], second["dispatch"]["stopped"]) == (2, "drained")
    # Every request went after the jobs were released.
    assert max(ts(line["time"]) for line in releases) <= min(ts(r["time"]) for r in requests)
    proposals = {str(pid): str(uid) for pid, uid in db.query(
        "select id, user_id from public.trade_proposals where status = 'approved' "
        "and decided_by = 'auto'")}
    assert len(proposals) == 2 and set(proposals.values()) == {str(user)}
    for request in execute.requests:
        assert (request.method, request.path) == ("POST", "/")
        assert request.header("Authorization") == f"Bearer {SERVICE_KEY}"
        assert request.header("Content-Type") == "application/json"
        body = request.json()
        assert set(body) == {"proposal_id", "user_id"} and proposals[body["proposal_id"]] == \
            body["user_id"]
        assert request.header("Idempotency-Key") == f"auto:{body['proposal_id']}"
    # The failed request was repeated with the same key for the same proposal, not re-proposed.
    keys = Counter(r.header("Idempotency-Key") for r in execute.requests)
    assert sorted(keys.values()) == [1, 2]
    assert sorted(execute.executed.values()) == sorted(proposals)
    assert db.scalar("select count(*) from public.scan_jobs where consecutive_failures = 0 "
                     "and last_success_at is not null") == 2


# -- the HTTP contract ----------------------------------------------------------------------------
def test_the_tick_is_for_the_service_role_only_and_validates_its_body(
        db: Database, bitvavo_sandbox: SandboxServer) -> None:
    (user,) = build_world(db, users=3)[:1]
    user_token = dev_token(JWT_SECRET, user)
    with start_function("scan_scheduler", env=scan_env(db, bitvavo_sandbox)) as fn:
        answers = {
            "none": fn.post("/", json={}),
            "user": fn.post("/", json={}, headers={"Authorization": f"Bearer {user_token}"}),
            "wrong key": fn.post("/", json={}, headers={"Authorization": "Bearer sb_secret_x"}),
            "get": fn.request("GET", "/", headers=service_headers()),
            "not json": fn.post("/", content=b"{", headers=service_headers()),
            "unknown": fn.post("/", json={"max_jobs": 1, "x": 1}, headers=service_headers()),
            "zero": fn.post("/", json={"max_jobs": 0}, headers=service_headers()),
            "too many": fn.post("/", json={"max_jobs": 1_000_001}, headers=service_headers()),
        }
        default = fn.post("/", headers=service_headers())
        logs = fn.logs()
    statuses = {name: a.status_code for name, a in answers.items()}
    assert statuses == {"none": 401, "user": 401, "wrong key": 401, "get": 405, "not json": 400,
                        "unknown": 400, "zero": 400, "too many": 400}
    for name, answer in answers.items():
        assert answer.headers["Content-Type"] == "application/problem+json", name
        assert SERVICE_KEY not in answer.text and user_token not in answer.text
    assert answers["user"].headers["WWW-Authenticate"].startswith("Bearer")
    assert db.scalar("select count(*) from public.scan_jobs where attempts > 0") == 12
    assert default.status_code == 200 and default.json()["claimed"] == 12  # drains what is due
    assert SERVICE_KEY not in logs and user_token not in logs and JWT_SECRET not in logs


# -- the database failing under the tick (found by the chaos soak) -------------------------------
def test_a_lost_database_answer_is_a_503_and_the_next_tick_reconnects(
        db: Database, bitvavo_sandbox: SandboxServer) -> None:
    """The claim's answer is lost (the connection closed after the statement ran): the tick
    answers the documented 503 database-unavailable problem with its counts — it was a 500, the
    float `elapsed_ms` refused by the problem document — and the ticks after it claim again: the
    RPC pool was opened in gunicorn's master before the fork, so in the worker it had no threads
    to replace a broken connection and every later tick waited 5 s for one and answered 503."""
    build_world(db, users=2, markets=("BTC-EUR", "ETH-EUR"))
    port = int(urlsplit(db.url).port or 5432)
    with WireTurns("127.0.0.1", port) as proxy:
        parts = urlsplit(db.authenticator_url)
        proxied = urlunsplit(parts._replace(netloc=f"authenticator@127.0.0.1:{proxy.port}"))
        env = scan_env(db, bitvavo_sandbox, DATABASE_URL=proxied, RPC_POOL_TIMEOUT_SECONDS="3",
                       **ALWAYS_SIGNAL)
        with start_function("scan_scheduler", env=env) as fn:
            first = fn.post("/", json={"max_jobs": 1}, headers=service_headers())
            proxy.cut_next_response()
            cut = fn.post("/", json={"max_jobs": 1}, headers=service_headers())
            db.query("update public.scan_jobs set locked_by = null, locked_at = null, "
                     "lock_expires_at = null")  # whatever the lost claim leased is free again
            after = [fn.post("/", json={"max_jobs": 1}, headers=service_headers())
                     for _ in range(3)]
            logs = fn.logs()
    assert first.status_code == 200 and first.json()["claimed"] == 1
    assert cut.status_code == 503, cut.text
    problem = cut.json()
    assert cut.headers["Content-Type"] == "application/problem+json"
    assert problem["type"] == "/problems/database-unavailable" and problem["claimed"] == 0
    assert isinstance(problem["elapsed_ms"], int) and cut.headers["Retry-After"] == "60"
    assert [a.status_code for a in after] == [200, 200, 200], [a.text for a in after]
    assert [a.json()["claimed"] for a in after] == [1, 1, 1]
    assert "Traceback" not in logs


@pytest.fixture(autouse=True)
def _fresh_sandbox_limits(bitvavo_sandbox: SandboxServer) -> None:
    """Each test starts with the sandbox's rate-limit budget whole (the fixture resets it)."""
