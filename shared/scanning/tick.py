"""One scheduler tick: claim due scan jobs, run them, release them all in one call (SPEC §4, G2).

    Scanner.from_settings(settings).tick(max_jobs) -> TickReport

The tick, top to bottom:
1. A worker id unique to this process and tick: `<host>:<pid>:<uuid>` (the lease belongs to the id).
2. Claim and run, in a small thread pool (SCAN_CONCURRENCY, default 4). The tick claims only as
   many jobs as it has free threads (`claim_due_scan_jobs(p_limit = free threads)`), so every job
   it claims starts at once: no claimed job ever waits unstarted for a thread, and stopping claims
   is stopping starts. It claims again as threads free up, until it has claimed `max_jobs`, no job
   is due, or TICK_TIME_BUDGET_SECONDS has passed — then it only waits for the jobs it started.
   Why threads: a job is almost all waiting (two exchange requests, RPCs, a model call of seconds),
   so four at once finish a 10-job tick in about a third of the time of one-by-one and keep it
   inside its budget; the pool stays small so a tick stays within Bitvavo's 1000 weight/minute
   (2 per job), the RPC pool (RPC_POOL_MAX_SIZE) and the provider's rate limits. Jobs share nothing
   mutable but the thread-safe clients.
3. A heartbeat thread extends the lease of every claimed, unreleased job (lease.py); a job whose
   lease is lost stops before its next step and writes nothing (create_scan_proposal's fence).
4. Each job: get_scan_context (lease, this period's proposal, the order room) → market data
   (BitvavoReadonly) → oracle → create_scan_proposal. A job never raises: its failure (any
   exception) becomes its outcome, with a redacted error, and the other jobs go on.
5. One release_job_locks call with every claimed job: succeeded, or failed with its error (the
   database backs a failed job off: 30 s × 2^(failures − 1), at most its interval).
6. One auto-execute dispatch (shared.scanning.dispatch): the auto-approved proposals waiting in the
   database — this tick's and any earlier tick's left over — go to trading_execute within the
   trade key's order budget; what does not fit waits for the next tick.

Which job outcomes are failures (backoff, retried soon): market data errors, the model unreachable
or answering an HTTP error, an RPC error, a lost lease. Not failures (the next run is one interval
later): no signal, no room under the user's limits, the GPT budget denied (retrying sooner would
only be denied again), an unusable model answer (malformed, refused: retrying sooner would only
spend more).
"""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from shared.api.body import InvalidJson, json_object
from shared.api.problems import ProblemError
from shared.api.steplog import StepLog
from shared.exchange.readonly import BitvavoReadonly
from shared.redaction import redact
from shared.rpc.errors import RpcError
from shared.rpc.port import RpcPort
from shared.rpc.settings import connect_rpc
from shared.scanning.autoexecute import ExecuteClient
from shared.scanning.budget import GptBudget
from shared.scanning.dispatch import Dispatcher, DispatchReport
from shared.scanning.lease import Heartbeat, Lease, LeaseLost
from shared.scanning.marketdata import read_market
from shared.scanning.oracle import (
    BudgetDenied,
    NoSignal,
    Oracle,
    OracleRequest,
    Signal,
    Unusable,
)
from shared.scanning.rules import RulesOracle
from shared.scanning.settings import RELEASE_RESERVE_SECONDS, ScannerSettings, ScanSettings
from shared.scanning.sizing import order_room

MAX_ERROR_TEXT = 500
MAX_RATIONALE = 10_000


def new_worker_id() -> str:
    """`<host>:<pid>:<uuid>` — unique per process and tick (scan_jobs.locked_by, ≤ 200 chars)."""
    return f"{socket.gethostname()[:100]}:{os.getpid()}:{uuid.uuid4().hex}"


def _now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _error_text(exc: BaseException) -> str:
    text = redact(str(exc)).strip() or "no detail"
    return f"{type(exc).__name__}: {text}"[:MAX_ERROR_TEXT]


@dataclass
class JobOutcome:
    job_id: str
    succeeded: bool = False
    result: str = "failed"
    error: str | None = None
    proposal_id: str | None = None
    proposal_status: str | None = None
    proposal: str | None = None  # created | replayed: counted even when a later step fails


@dataclass
class TickReport:
    worker_id: str
    claimed: int = 0
    succeeded: int = 0
    failed: int = 0
    proposals: int = 0
    proposals_replayed: int = 0
    budget_denied: int = 0
    executions_requested: int = 0
    no_signal: int = 0
    no_room: int = 0
    oracle_unusable: int = 0
    lease_lost: int = 0
    released: int = 0
    stopped: str = "max_jobs"
    elapsed_ms: float = 0.0
    release_error: str | None = None
    claim_error: str | None = None
    dispatch: DispatchReport | None = None
    outcomes: list[JobOutcome] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return {
            "claimed": self.claimed, "succeeded": self.succeeded, "failed": self.failed,
            "proposals": self.proposals, "budget_denied": self.budget_denied,
            "executions_requested": self.executions_requested,
            "proposals_replayed": self.proposals_replayed, "no_signal": self.no_signal,
            "no_room": self.no_room, "oracle_unusable": self.oracle_unusable,
            "lease_lost": self.lease_lost, "released": self.released,
            "stopped": self.stopped, "worker_id": self.worker_id,
            "elapsed_ms": round(self.elapsed_ms),  # an integer: problem documents take no float
            "dispatch": self.dispatch.as_json() if self.dispatch else None,
        }


class Scanner:
    """The long-lived parts of scan_scheduler (one per process); `tick` runs one tick."""

    def __init__(self, settings: ScannerSettings, rpc: RpcPort, market: BitvavoReadonly,
                 oracle: Oracle, dispatcher: Dispatcher | None, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self.rpc = rpc
        self.market = market
        self.oracle = oracle
        self.dispatcher = dispatcher
        self.clock = clock

    @classmethod
    def from_settings(cls, settings: ScanSettings) -> Scanner:
        rpc = connect_rpc(settings.rpc)
        market = BitvavoReadonly.from_settings(settings.exchange)
        oracle: Oracle
        if settings.scanner.oracle == "openai":
            # Imported only when used: ORACLE=rules never loads the SDK.
            from shared.scanning.gpt import OpenAIOracle

            oracle = OpenAIOracle(settings.scanner, GptBudget(rpc))
        else:
            oracle = RulesOracle(settings.scanner)
        dispatcher = None  # without EXECUTE_FUNCTION_URL auto-approved proposals wait for the user
        if settings.scanner.execute_function_url and settings.service_key is not None:
            client = ExecuteClient(settings.scanner.execute_function_url, settings.service_key,
                                   settings.scanner.execute_timeout_seconds)
            dispatcher = Dispatcher(rpc, client,
                                    concurrency=settings.scanner.dispatch_concurrency,
                                    max_wait_seconds=settings.scanner.dispatch_max_wait_seconds)
        return cls(settings.scanner, rpc, market, oracle, dispatcher)

    def tick(self, max_jobs: int, *, request_id: str | None = None) -> TickReport:
        return Tick(self, max_jobs, request_id=request_id).run()


class Tick:
    def __init__(self, scanner: Scanner, max_jobs: int, *, request_id: str | None = None) -> None:
        if not 1 <= max_jobs <= 1000:
            raise ValueError("max_jobs must be within 1..1000")
        self.scanner = scanner
        self.settings = scanner.settings
        self.rpc = scanner.rpc
        self.clock = scanner.clock
        self.max_jobs = max_jobs
        self.worker_id = new_worker_id()
        self.log = StepLog(request_id=request_id, worker_id=self.worker_id)
        self.started = self.clock()
        self.claim_until = self.started + self.settings.tick_time_budget_seconds
        self.hard_deadline = (self.started + self.settings.function_timeout_seconds
                              - RELEASE_RESERVE_SECONDS)
        self.heartbeat = Heartbeat(self.rpc, self.worker_id, self.settings.job_lease_seconds,
                                   self.settings.heartbeat, self.log, clock=self.clock)
        self.report = TickReport(worker_id=self.worker_id)
        self._claimed: dict[str, JobOutcome | None] = {}
        self._lock = threading.Lock()

    def time_left(self) -> float:
        return self.hard_deadline - self.clock()

    # -- the tick -----------------------------------------------------------------------------
    def run(self) -> TickReport:
        concurrency = self.settings.scan_concurrency
        pool = ThreadPoolExecutor(max_workers=concurrency,
                                  thread_name_prefix=f"scan-{self.worker_id[-8:]}")
        running: dict[Future[JobOutcome], str] = {}
        self.heartbeat.start()
        try:
            while True:
                if len(self._claimed) >= self.max_jobs:
                    self.report.stopped = "max_jobs"
                    break
                if self.clock() >= self.claim_until:
                    self.report.stopped = "time_budget"
                    break
                free = concurrency - len(running)
                if free == 0:
                    done, _ = wait(running, timeout=max(0.0, self.claim_until - self.clock()),
                                   return_when=FIRST_COMPLETED)
                    for future in done:
                        self._finish(running.pop(future), future)
                    continue
                want = min(free, self.max_jobs - len(self._claimed))
                rows = self._claim(want)
                if rows is None:
                    self.report.stopped = "claim_failed"
                    break
                for row, sent in rows:
                    job_id = str(row["id"])
                    self._claimed[job_id] = None
                    lease = self.heartbeat.track(job_id, sent)
                    running[pool.submit(self._run_job, row, lease)] = job_id
                if len(rows) < want:
                    self.report.stopped = "no_due_jobs"
                    break
            for future in list(running):
                future.result()  # _run_job never raises; waits for it
                self._finish(running.pop(future), future)
        finally:
            pool.shutdown(wait=True)
            self._release()
            self.heartbeat.stop()
        self._dispatch()
        self.report.elapsed_ms = (self.clock() - self.started) * 1000
        return self.report

    def _dispatch(self) -> None:
        dispatcher = self.scanner.dispatcher
        if dispatcher is not None:
            self.report.dispatch = dispatcher.run(self.log, self.time_left)
            self.report.executions_requested = self.report.dispatch.requested

    def _finish(self, job_id: str, future: Future[JobOutcome]) -> None:
        try:
            outcome = future.result()
        except BaseException as exc:  # pragma: no cover - _run_job catches everything
            outcome = JobOutcome(job_id, error=_error_text(exc))
        with self._lock:
            self._claimed[job_id] = outcome

    def _claim(self, want: int) -> list[tuple[dict[str, Any], float]] | None:
        sent = self.clock()
        with self.log.step("claim", requested=want,
                           lease_seconds=self.settings.job_lease_seconds) as step:
            try:
                rows = self.rpc.rows("claim_due_scan_jobs", {
                    "p_worker_id": self.worker_id, "p_limit": want,
                    "p_lock_seconds": self.settings.job_lease_seconds})
            except RpcError as exc:
                # RpcUnavailable: the claim may have committed; any job it leased to us is run
                # again after its lease expires.
                self.report.claim_error = _error_text(exc)
                step.set("error", severity="ERROR", error=type(exc).__name__,
                         error_code=exc.code, cause=exc.cause,
                         error_message=self.report.claim_error)
                return None
            step.set(claimed=len(rows), job_ids=[str(r["id"]) for r in rows])
        return [(row, sent) for row in rows]

    def _release(self) -> None:
        outcomes: list[JobOutcome] = []
        for job_id, outcome in self._claimed.items():
            outcomes.append(outcome or JobOutcome(job_id, error="the tick ended before the job"))
        report = self.report
        report.outcomes = outcomes
        report.claimed = len(outcomes)
        for o in outcomes:
            report.succeeded += o.succeeded
            report.failed += not o.succeeded
            report.proposals += o.proposal == "created"
            report.proposals_replayed += o.proposal == "replayed"
            report.budget_denied += o.result == "budget_denied"
            report.no_signal += o.result == "no_signal"
            report.no_room += o.result == "no_room"
            report.oracle_unusable += o.result == "unusable"
            report.lease_lost += o.result == "lease_lost"
        if not outcomes:
            return
        results = [{"job_id": o.job_id, "succeeded": o.succeeded,
                    "error": None if o.succeeded else (o.error or "failed")} for o in outcomes]
        with self.log.step("release", jobs=len(results),
                           succeeded=report.succeeded, failed=report.failed) as step:
            try:
                answer = self.rpc.call("release_job_locks", {"p_worker_id": self.worker_id,
                                                             "p_results": results})
            except RpcError as exc:
                # The leases expire and the jobs run again, in the same due period: a proposal
                # already made is handed on again, never made twice.
                report.release_error = _error_text(exc)
                step.set("error", severity="ERROR", error=type(exc).__name__,
                         error_code=exc.code, cause=exc.cause,
                         error_message=report.release_error)
                return
            report.released = int(answer.get("released_count", 0))
            not_released = [r["job_id"] for r in answer.get("results", [])
                            if not r.get("released")]
            step.set(released=report.released, not_released=not_released)

    # -- one job ------------------------------------------------------------------------------
    def _run_job(self, row: dict[str, Any], lease: Lease) -> JobOutcome:
        job_id, user_id, market = str(row["id"]), str(row["user_id"]), str(row["market"])
        log = StepLog(request_id=self.log.request_id, worker_id=self.worker_id, job_id=job_id,
                      user_id=user_id, market=market)
        outcome = JobOutcome(job_id)
        with log.step("job", started_at=_now_iso(), attempts=row.get("attempts"),
                      due_at=row.get("next_run_at")) as step:
            try:
                self._scan(job_id, user_id, market, lease, log, outcome)
                outcome.succeeded = True
            except LeaseLost as exc:
                outcome.result, outcome.error = "lease_lost", _error_text(exc)
            except Exception as exc:  # one job's failure never stops the others
                outcome.result, outcome.error = "failed", _error_text(exc)
            step.set(outcome.result, severity=None if outcome.succeeded else "WARNING",
                     succeeded=outcome.succeeded, error_message=outcome.error,
                     proposal_id=outcome.proposal_id, proposal_status=outcome.proposal_status,
                     finished_at=_now_iso())
        return outcome

    def _scan(self, job_id: str, user_id: str, market: str, lease: Lease, log: StepLog,
              outcome: JobOutcome) -> None:
        settings = self.settings
        lease.check()
        with log.step("scan_context") as step:
            context = self.rpc.call("get_scan_context", {
                "p_job_id": job_id, "p_worker_id": self.worker_id,
                "p_mode": settings.trading_mode})
            step.set(lease_held=context.get("lease_held"),
                     period_start=context.get("period_start"))
        if not context.get("found"):
            outcome.result = "job_deleted"
            return
        if not context.get("lease_held"):
            lease.lose("get_scan_context: the job is no longer leased to this worker")
            lease.check()

        existing = context.get("proposal")
        if existing:
            # This due period already proposed (an earlier run died before its release): the same
            # proposal stands (an auto-approved one waits in the dispatch queue); never propose
            # twice.
            outcome.result = outcome.proposal = "replayed"
            outcome.proposal_id = str(existing["proposal_id"])
            outcome.proposal_status = existing.get("status")
            log.event("proposal", "replayed", proposal_id=outcome.proposal_id,
                      proposal_status=outcome.proposal_status)
            return

        room = order_room(context.get("sizing") or {})
        if not room.has_room:
            outcome.result = "no_room"
            log.event("sizing", "no_room", reason=room.reason)
            return

        lease.check()
        with log.step("market_data", interval=settings.candle_interval,
                      limit=settings.candle_limit) as step:
            snapshot = read_market(self.scanner.market, market, settings.candle_interval,
                                   settings.candle_limit)
            step.set(candles=len(snapshot.candles), price=snapshot.price)

        lease.check()
        oracle = self.scanner.oracle
        with log.step("oracle", source=oracle.source, model=oracle.model) as step:
            answer = oracle.decide(OracleRequest(job_id=job_id, user_id=user_id, market=market,
                                                 snapshot=snapshot, room=room, log=log,
                                                 time_left=self.time_left))
            if isinstance(answer, Signal):
                step.set("signal", side=answer.side, confidence=answer.confidence)
            elif isinstance(answer, NoSignal):
                step.set("no_signal", reason=answer.reason)
            elif isinstance(answer, Unusable):
                step.set("unusable", severity="WARNING", kind=answer.kind, detail=answer.detail)
            elif isinstance(answer, BudgetDenied):
                step.set("budget_denied", reason=answer.reason)
        if isinstance(answer, BudgetDenied):
            outcome.result = "budget_denied"
            return
        if isinstance(answer, NoSignal):
            outcome.result = "no_signal"
            return
        if isinstance(answer, Unusable):
            outcome.result = "unusable"
            return

        rationale = f"{answer.rationale} Size: {room.reason}."[:MAX_RATIONALE]
        lease.check()
        with log.step("proposal", side=answer.side, amount_quote=room.amount_quote,
                      confidence=answer.confidence) as step:
            created = self.rpc.call("create_scan_proposal", {
                "p_job_id": job_id, "p_worker_id": self.worker_id, "p_side": answer.side,
                "p_amount_quote": room.amount_quote, "p_confidence": answer.confidence,
                "p_rationale": rationale, "p_source": oracle.source, "p_model": oracle.model,
                "p_reference_price": snapshot.price,
                "p_ttl_seconds": settings.proposal_ttl_seconds})
            step.set(str(created.get("outcome")), proposal_id=created.get("proposal_id"),
                     proposal_status=created.get("status"), decided_by=created.get("decided_by"))
        if created.get("outcome") == "lease_lost":
            lease.lose("create_scan_proposal: the job is no longer leased to this worker")
            lease.check()
        if created.get("outcome") == "not_found":
            outcome.result = "job_deleted"
            return
        outcome.result = "proposed" if created.get("outcome") == "created" else "replayed"
        outcome.proposal = "created" if created.get("outcome") == "created" else "replayed"
        outcome.proposal_id = str(created["proposal_id"])
        outcome.proposal_status = created.get("status")


# -- the request body -------------------------------------------------------------------------
DEFAULT_MAX_JOBS = 10
MAX_BODY_BYTES = 1024


def max_jobs_from_body(body: bytes, limit: int) -> int:
    """The tick's `{"max_jobs": n}` (optional, default 10, 1..MAX_JOBS_LIMIT); an empty body is
    `{}`. Anything else — not JSON, not an object, another key, not an integer, out of range — is
    a 400 problem naming what is wrong."""
    if len(body) > MAX_BODY_BYTES:
        raise ProblemError(400, "invalid-body", f"the body is larger than {MAX_BODY_BYTES} bytes")
    try:
        document = json_object(body)
    except InvalidJson as error:
        raise ProblemError(400, "invalid-body",
                           f'{error} (expected an object like {{"max_jobs": 10}})') from None
    unknown = sorted(set(document) - {"max_jobs"})
    if unknown:
        raise ProblemError(400, "invalid-body",
                           f"unknown field {unknown[0]!r}: the body takes only max_jobs")
    value = document.get("max_jobs", min(DEFAULT_MAX_JOBS, limit))
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= limit:
        raise ProblemError(400, "invalid-body", f"max_jobs must be an integer from 1 to {limit}")
    return value
