"""One scheduler tick: drain due scan jobs, a batch at a time, set-based (SPEC §4, G2, G7).

    Scanner.from_settings(settings).tick(max_jobs) -> TickReport

The tick, top to bottom:
1. A worker id unique to this process and tick: `<host>:<pid>:<uuid>` (the lease belongs to the id).
2. Claim a batch (SCAN_BATCH_SIZE, at most 1000) with claim_due_scan_jobs, run it, release it —
   and again, until no job is due, `max_jobs` (when the body names one) are claimed,
   TICK_TIME_BUDGET_SECONDS has passed, or the exchange's rate limit stops the tick.
3. A heartbeat thread extends the leases of every claimed, unreleased job (lease.py); a job whose
   lease is lost writes nothing (create_scan_proposals' fence).
4. A batch, whatever its number of users, costs five RPCs and shares everything that is not about
   a user:
   - get_scan_contexts: every job's lease, its due period's proposal, the user's order room and
     the sides that already have an open proposal;
   - market data once per market per tick (marketdata.py: all prices in one request, each market's
     candles once), read in parallel (SCAN_CONCURRENCY threads) for the markets of the batch;
   - the oracle once per snapshot (answers.py): one answer for every user who reads it; with
     ORACLE=openai every user reserves within their own budget (one reserve_gpt_budgets call per
     market), one model call, its bill split at the tick's end;
   - each user's proposal from that answer and their own sizing (sizing.py), written for the whole
     batch by one create_scan_proposals call (once per due period, never a second open proposal
     per market and side);
   - one release_job_locks call: succeeded, failed with its error (the database backs a failed
     job off: 30 s × 2^(failures − 1), at most its interval), or given back unrun.
5. At the end: settle_oracle_answers for the calls this tick made, then one auto-execute dispatch
   (shared.scanning.dispatch): the auto-approved proposals waiting in the database — this tick's
   and any earlier tick's left over — go to trading_execute within the trade key's order budget;
   what does not fit waits for the next tick. The dispatch runs even when nothing was due, so a
   tick drains what earlier ticks left.

A rate limit is not a failure: when the exchange refuses (RateLimitWouldExceed: the budget would
run out; RateLimitBanned: a ban) the tick sends nothing more to the exchange, claims nothing more,
gives the jobs it could not start back unrun (no attempt, no failure, no backoff: due again at
once) and answers `stopped: rate_limited`. The same holds for a model call that would not fit
before the tick's hard deadline.

Which job outcomes are failures (backoff, retried soon): market data errors, the model unreachable
or answering an HTTP error, an RPC error, a lost lease. Not failures (the next run is one interval
later): a proposal, no signal, an unchanged signal (an open proposal on that side), no room under
the user's limits, the GPT budget denied (retrying sooner would only be denied again), an unusable
model answer (malformed, refused: retrying sooner would only spend more).
"""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from shared.api.body import InvalidJson, json_object
from shared.api.problems import ProblemError
from shared.api.steplog import StepLog
from shared.exchange.errors import RateLimitBanned, RateLimitWouldExceed
from shared.exchange.readonly import BitvavoReadonly
from shared.redaction import redact
from shared.rpc.errors import RpcError
from shared.rpc.port import RpcPort
from shared.rpc.settings import connect_rpc
from shared.scanning.answers import AnswerBook, Asker, NoTimeLeft
from shared.scanning.autoexecute import ExecuteClient
from shared.scanning.dispatch import Dispatcher, DispatchReport
from shared.scanning.lease import Heartbeat, Lease, LeaseLost
from shared.scanning.marketdata import MarketData, MarketSnapshot
from shared.scanning.oracle import BudgetDenied, NoSignal, Signal, Unusable
from shared.scanning.rules import RulesOracle
from shared.scanning.settings import RELEASE_RESERVE_SECONDS, ScannerSettings, ScanSettings
from shared.scanning.sizing import OrderRoom, order_room

if TYPE_CHECKING:
    from shared.scanning.gpt import OpenAIOracle

MAX_ERROR_TEXT = 500
MAX_RATIONALE = 10_000
# Outcomes that end a job's run without a failure.
SUCCEEDED = frozenset({"proposed", "replayed", "unchanged", "no_signal", "no_room",
                       "budget_denied", "unusable", "job_deleted"})


def new_worker_id() -> str:
    """`<host>:<pid>:<uuid>` — unique per process and tick (scan_jobs.locked_by, ≤ 200 chars)."""
    return f"{socket.gethostname()[:100]}:{os.getpid()}:{uuid.uuid4().hex}"


def _now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _error_text(exc: BaseException) -> str:
    text = redact(str(exc)).strip() or "no detail"
    return f"{type(exc).__name__}: {text}"[:MAX_ERROR_TEXT]


def percentile(values: Sequence[float], q: float) -> float:
    """The nearest-rank percentile (q in 0..100); 0 for none."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * q // 100))
    return ordered[int(rank) - 1]


class CountingRpc:
    """The RPC port, counting the calls a tick makes (its answer's `rpc_calls`)."""

    def __init__(self, rpc: RpcPort) -> None:
        self._rpc = rpc
        self._lock = threading.Lock()
        self.calls = 0

    def _count(self) -> None:
        with self._lock:
            self.calls += 1

    def call(self, fn: str, args: Mapping[str, Any] | None = None) -> Any:
        self._count()
        return self._rpc.call(fn, args)

    def rows(self, fn: str, args: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
        self._count()
        return self._rpc.rows(fn, args)

    def close(self) -> None:
        self._rpc.close()


@dataclass
class JobOutcome:
    job_id: str
    user_id: str = ""
    market: str = ""
    result: str = "failed"
    error: str | None = None
    proposal_id: str | None = None
    proposal_status: str | None = None
    proposal: str | None = None  # created | replayed
    lag_ms: float = 0.0

    @property
    def succeeded(self) -> bool:
        return self.result in SUCCEEDED

    @property
    def ran(self) -> bool:
        return self.result != "not_run"


@dataclass
class TickReport:
    worker_id: str
    claimed: int = 0
    succeeded: int = 0
    failed: int = 0
    proposals: int = 0
    proposals_replayed: int = 0
    unchanged: int = 0
    budget_denied: int = 0
    executions_requested: int = 0
    no_signal: int = 0
    no_room: int = 0
    oracle_unusable: int = 0
    lease_lost: int = 0
    not_run: int = 0
    released: int = 0
    batches: int = 0
    exchange_weight: int = 0
    model_calls: int = 0
    oracle_answers: int = 0
    rpc_calls: int = 0
    rate_limited: bool = False
    stopped: str = "no_due_jobs"
    elapsed_ms: float = 0.0
    lags_ms: list[float] = field(default_factory=list)
    release_error: str | None = None
    claim_error: str | None = None
    dispatch: DispatchReport | None = None
    outcomes: list[JobOutcome] = field(default_factory=list)

    def count(self, outcome: JobOutcome) -> None:
        self.outcomes.append(outcome)
        self.lags_ms.append(outcome.lag_ms)
        self.succeeded += outcome.succeeded
        self.failed += outcome.ran and not outcome.succeeded
        self.not_run += not outcome.ran
        self.proposals += outcome.proposal == "created"
        self.proposals_replayed += outcome.proposal == "replayed"
        self.unchanged += outcome.result == "unchanged"
        self.budget_denied += outcome.result == "budget_denied"
        self.no_signal += outcome.result == "no_signal"
        self.no_room += outcome.result == "no_room"
        self.oracle_unusable += outcome.result == "unusable"
        self.lease_lost += outcome.result == "lease_lost"

    def as_json(self) -> dict[str, Any]:
        # Integers only: problem documents take no float.
        return {
            "claimed": self.claimed, "succeeded": self.succeeded, "failed": self.failed,
            "proposals": self.proposals, "budget_denied": self.budget_denied,
            "executions_requested": self.executions_requested,
            "proposals_replayed": self.proposals_replayed, "unchanged": self.unchanged,
            "no_signal": self.no_signal, "no_room": self.no_room,
            "oracle_unusable": self.oracle_unusable, "lease_lost": self.lease_lost,
            "not_run": self.not_run, "released": self.released, "batches": self.batches,
            "exchange_weight": self.exchange_weight, "model_calls": self.model_calls,
            "oracle_answers": self.oracle_answers, "rpc_calls": self.rpc_calls,
            "rate_limited": self.rate_limited,
            "lag_p50_ms": round(percentile(self.lags_ms, 50)),
            "lag_p99_ms": round(percentile(self.lags_ms, 99)),
            "lag_max_ms": round(max(self.lags_ms, default=0.0)),
            "stopped": self.stopped, "worker_id": self.worker_id,
            "elapsed_ms": round(self.elapsed_ms),
            "dispatch": self.dispatch.as_json() if self.dispatch else None,
        }


class Scanner:
    """The long-lived parts of scan_scheduler (one per process); `tick` runs one tick."""

    def __init__(self, settings: ScannerSettings, rpc: RpcPort, market: BitvavoReadonly,
                 oracle: RulesOracle | OpenAIOracle, dispatcher: Dispatcher | None, *,
                 clock: Callable[[], float] = time.monotonic,
                 wall_clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.rpc = rpc
        self.market = market
        self.oracle = oracle
        self.dispatcher = dispatcher
        self.clock = clock
        self.wall_clock = wall_clock

    @classmethod
    def from_settings(cls, settings: ScanSettings) -> Scanner:
        rpc = connect_rpc(settings.rpc)
        market = BitvavoReadonly.from_settings(settings.exchange)
        oracle: RulesOracle | OpenAIOracle
        if settings.scanner.oracle == "openai":
            # Imported only when used: ORACLE=rules never loads the SDK.
            from shared.scanning.gpt import OpenAIOracle

            oracle = OpenAIOracle(settings.scanner)
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

    def tick(self, max_jobs: int | None = None, *, request_id: str | None = None) -> TickReport:
        return Tick(self, max_jobs, request_id=request_id).run()


@dataclass
class _Job:
    """A claimed job through its batch."""

    row: dict[str, Any]
    lease: Lease
    outcome: JobOutcome
    context: dict[str, Any] = field(default_factory=dict)
    room: OrderRoom | None = None
    signal: Signal | None = None
    answer_id: str | None = None
    price: Decimal | None = None

    @property
    def job_id(self) -> str:
        return self.outcome.job_id


class Tick:
    def __init__(self, scanner: Scanner, max_jobs: int | None, *,
                 request_id: str | None = None) -> None:
        settings = scanner.settings
        if max_jobs is not None and not 1 <= max_jobs <= settings.max_jobs_limit:
            raise ValueError(f"max_jobs must be within 1..{settings.max_jobs_limit}")
        self.scanner = scanner
        self.settings = settings
        self.rpc = CountingRpc(scanner.rpc)
        self.clock = scanner.clock
        self.max_jobs = max_jobs
        self.worker_id = new_worker_id()
        self.log = StepLog(request_id=request_id, worker_id=self.worker_id)
        self.started = self.clock()
        self.claim_until = self.started + settings.tick_time_budget_seconds
        self.hard_deadline = (self.started + settings.function_timeout_seconds
                              - RELEASE_RESERVE_SECONDS)
        self.heartbeat = Heartbeat(self.rpc, self.worker_id, settings.job_lease_seconds,
                                   settings.heartbeat, self.log, clock=self.clock)
        self.market_data = MarketData(scanner.market, settings.candle_interval,
                                      settings.candle_limit, clock=scanner.wall_clock)
        self.answers = AnswerBook(self.rpc, scanner.oracle, self.worker_id, self.log,
                                  self.time_left)
        self.report = TickReport(worker_id=self.worker_id)
        self._stop_reason: str | None = None

    def time_left(self) -> float:
        return self.hard_deadline - self.clock()

    # -- the tick -----------------------------------------------------------------------------
    def run(self) -> TickReport:
        self.heartbeat.start()
        pool = ThreadPoolExecutor(max_workers=self.settings.scan_concurrency,
                                  thread_name_prefix=f"scan-{self.worker_id[-8:]}")
        try:
            while True:
                if self._stop_reason is not None:
                    self.report.stopped = self._stop_reason
                    break
                claimed = self.report.claimed
                if self.max_jobs is not None and claimed >= self.max_jobs:
                    self.report.stopped = "max_jobs"
                    break
                if self.clock() >= self.claim_until:
                    self.report.stopped = "time_budget"
                    break
                want = self.settings.scan_batch_size
                if self.max_jobs is not None:
                    want = min(want, self.max_jobs - claimed)
                rows = self._claim(want)
                if rows is None:
                    self.report.stopped = "claim_failed"
                    break
                if rows:
                    self._batch(rows, pool)
                if len(rows) < want:
                    self.report.stopped = self._stop_reason or "no_due_jobs"
                    break
        finally:
            pool.shutdown(wait=True)
            self._finish()
        return self.report

    def _finish(self) -> None:
        report = self.report
        try:
            if self.answers.model_calls:
                self.answers.settle()
        except RpcError as exc:
            # The bills stay recorded on their answers; run_maintenance splits them later.
            self.log.event("settle", "error", severity="ERROR", error=type(exc).__name__,
                           error_code=exc.code)
        self.heartbeat.stop()
        dispatcher = self.scanner.dispatcher
        if dispatcher is not None:
            report.dispatch = dispatcher.run(self.log, self.time_left)
            report.executions_requested = report.dispatch.requested
        report.exchange_weight = self.market_data.requests
        report.model_calls = self.answers.model_calls
        report.oracle_answers = len(self.answers.answer_ids)
        report.rpc_calls = self.rpc.calls
        report.rate_limited = self._stop_reason == "rate_limited"
        report.elapsed_ms = (self.clock() - self.started) * 1000

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

    # -- one batch ----------------------------------------------------------------------------
    def _batch(self, rows: list[tuple[dict[str, Any], float]], pool: ThreadPoolExecutor) -> None:
        started_at = _now_iso()
        self.report.claimed += len(rows)
        self.report.batches += 1
        jobs: list[_Job] = []
        for row, sent in rows:
            job_id = str(row["id"])
            lag = Decimal(row.get("last_claim_lag_seconds") or 0) * 1000
            outcome = JobOutcome(job_id, user_id=str(row["user_id"]), market=str(row["market"]),
                                 lag_ms=float(lag))
            jobs.append(_Job(row, self.heartbeat.track(job_id, sent), outcome))
        try:
            self._contexts(jobs)
            groups: dict[str, list[_Job]] = defaultdict(list)
            for job in jobs:
                if job.outcome.result == "needs_oracle":
                    groups[job.outcome.market].append(job)
            futures = [pool.submit(self._group, market, group) for market, group in groups.items()]
            wait(futures)
            for future in futures:
                future.result()
            self._propose([j for j in jobs if j.outcome.result == "propose"])
        except RpcError as exc:
            error = _error_text(exc)
            for job in jobs:
                if job.outcome.result in ("needs_oracle", "propose", "failed"):
                    job.outcome.result, job.outcome.error = "failed", error
        self._release(jobs, started_at)

    def _contexts(self, jobs: list[_Job]) -> None:
        with self.log.step("scan_contexts", jobs=len(jobs)) as step:
            answer = self.rpc.call("get_scan_contexts", {
                "p_worker_id": self.worker_id, "p_job_ids": [j.job_id for j in jobs],
                "p_mode": self.settings.trading_mode})
            contexts = answer["contexts"]
            step.set(contexts=len(contexts))
        for job, context in zip(jobs, contexts, strict=True):
            job.context = context
            outcome = job.outcome
            if not context.get("found"):
                outcome.result = "job_deleted"
            elif not context.get("lease_held"):
                outcome.result = "lease_lost"
                outcome.error = "get_scan_contexts: the job is no longer leased to this worker"
                job.lease.lose(outcome.error)
            elif context.get("proposal"):
                # This due period already proposed (an earlier run died before its release): the
                # same proposal stands (an auto-approved one waits in the dispatch queue); never
                # propose twice.
                existing = context["proposal"]
                outcome.result = outcome.proposal = "replayed"
                outcome.proposal_id = str(existing["proposal_id"])
                outcome.proposal_status = existing.get("status")
            else:
                job.room = order_room(context.get("sizing") or {})
                if not job.room.has_room:
                    outcome.result = "no_room"
                elif set(context.get("open_sides") or ()) >= {"buy", "sell"}:
                    # Whatever the signal, it would repeat an open proposal: ask nobody.
                    outcome.result = "unchanged"
                else:
                    outcome.result = "needs_oracle"

    def _group(self, market: str, jobs: list[_Job]) -> None:
        """One market's jobs of the batch: its snapshot, its answer, each user's proposal."""
        snapshot = self._snapshot(market, jobs)
        if snapshot is None:
            return
        thin = snapshot.insufficient(self.settings.candle_max_gap_pct)
        if thin is not None:
            for job in jobs:
                job.outcome.result, job.outcome.error = "no_signal", None
            self.log.event("oracle", "no_signal", market=market, reason=thin, jobs=len(jobs))
            return
        try:
            shared = self.answers.answers(snapshot, [Asker(j.job_id, j.outcome.user_id)
                                                     for j in jobs])
        except NoTimeLeft as exc:
            self._give_back(jobs, exc)
            return
        except Exception as exc:  # the oracle failed: these jobs fail, the others go on
            error = _error_text(exc)
            for job in jobs:
                job.outcome.result, job.outcome.error = "failed", error
            return
        for job in jobs:
            outcome = job.outcome
            share = shared.get(job.job_id)
            answer = share.answer if share is not None else BudgetDenied("not reserved")
            job.answer_id = share.answer_id if share is not None else None
            if isinstance(answer, BudgetDenied):
                outcome.result = "budget_denied"
            elif isinstance(answer, NoSignal):
                outcome.result = "no_signal"
            elif isinstance(answer, Unusable):
                outcome.result = "unusable"
            elif answer.side in (job.context.get("open_sides") or ()):
                outcome.result = "unchanged"
            else:
                outcome.result = "propose"
                job.signal, job.price = answer, snapshot.price

    def _snapshot(self, market: str, jobs: list[_Job]) -> MarketSnapshot | None:
        with self.log.step("market_data", market=market, jobs=len(jobs),
                           interval=self.settings.candle_interval) as step:
            try:
                snapshot = self.market_data.snapshot(market)
            except (RateLimitWouldExceed, RateLimitBanned) as exc:
                self.market_data.refuse(exc)
                self._stop_reason = "rate_limited"
                step.set("rate_limited", severity="WARNING", error=type(exc).__name__)
                self._give_back(jobs, exc)
                return None
            except Exception as exc:  # this market's jobs fail; the others go on
                error = _error_text(exc)
                step.set("error", severity="WARNING", error_message=error)
                for job in jobs:
                    job.outcome.result, job.outcome.error = "failed", error
                return None
            step.set(candles=len(snapshot.candles), gaps=snapshot.gaps, price=snapshot.price,
                     as_of=snapshot.as_of)
        return snapshot

    def _give_back(self, jobs: list[_Job], why: BaseException) -> None:
        for job in jobs:
            job.outcome.result, job.outcome.error = "not_run", _error_text(why)

    def _propose(self, jobs: list[_Job]) -> None:
        entries: list[dict[str, Any]] = []
        writing: list[_Job] = []
        oracle = self.scanner.oracle
        for job in jobs:
            try:
                job.lease.check()
            except LeaseLost as exc:
                job.outcome.result, job.outcome.error = "lease_lost", _error_text(exc)
                continue
            signal = job.signal
            assert signal is not None and job.room is not None
            assert job.room.amount_quote is not None
            entries.append({
                "job_id": job.job_id, "side": signal.side,
                "amount_quote": job.room.amount_quote, "confidence": signal.confidence,
                "rationale": f"{signal.rationale} Size: {job.room.reason}."[:MAX_RATIONALE],
                "source": oracle.source, "model": oracle.model,
                "reference_price": job.price, "oracle_answer_id": job.answer_id})
            writing.append(job)
        if not entries:
            return
        with self.log.step("proposals", jobs=len(entries)) as step:
            answer = self.rpc.call("create_scan_proposals", {
                "p_worker_id": self.worker_id, "p_proposals": entries,
                "p_ttl_seconds": self.settings.proposal_ttl_seconds})
            results = answer["results"]
            step.set(created=sum(r.get("outcome") == "created" for r in results))
        for job, result in zip(writing, results, strict=True):
            outcome, kind = job.outcome, result.get("outcome")
            if kind == "not_found":
                outcome.result = "job_deleted"
            elif kind == "lease_lost":
                outcome.result = "lease_lost"
                outcome.error = "create_scan_proposals: the job is no longer leased to this worker"
            elif kind == "unchanged":
                outcome.result = "unchanged"
                outcome.proposal_id = result.get("proposal_id")
            else:
                outcome.result = "proposed" if kind == "created" else "replayed"
                outcome.proposal = "created" if kind == "created" else "replayed"
                outcome.proposal_id = str(result["proposal_id"])
                outcome.proposal_status = result.get("status")

    def _release(self, jobs: list[_Job], started_at: str) -> None:
        for job in jobs:
            if job.outcome.result in ("needs_oracle", "propose"):  # an RPC error cut it short
                job.outcome.result = "failed"
        results = [{"job_id": j.job_id, "succeeded": j.outcome.succeeded,
                    "error": None if j.outcome.succeeded else (j.outcome.error or "failed"),
                    **({} if j.outcome.ran else {"ran": False})} for j in jobs]
        with self.log.step("release", jobs=len(results),
                           succeeded=sum(r["succeeded"] for r in results),
                           not_run=sum(not j.outcome.ran for j in jobs)) as step:
            try:
                answer = self.rpc.call("release_job_locks", {"p_worker_id": self.worker_id,
                                                             "p_results": results})
            except RpcError as exc:
                # The leases expire and the jobs run again, in the same due period: a proposal
                # already made is handed on again, never made twice.
                self.report.release_error = _error_text(exc)
                step.set("error", severity="ERROR", error=type(exc).__name__,
                         error_code=exc.code, cause=exc.cause,
                         error_message=self.report.release_error)
            else:
                self.report.released += int(answer.get("released_count", 0))
                not_released = [r["job_id"] for r in answer.get("results", [])
                                if not r.get("released")]
                step.set(released=answer.get("released_count"), not_released=not_released)
        self.heartbeat.forget([j.job_id for j in jobs])
        # One line for the batch (a line per job cost more than the job itself at scale): every
        # job id under its outcome, and each failure with its error.
        by_outcome: dict[str, list[str]] = defaultdict(list)
        failures = []
        for job in jobs:
            outcome = job.outcome
            self.report.count(outcome)
            by_outcome[outcome.result].append(outcome.job_id)
            if not outcome.succeeded:
                failures.append({"job_id": outcome.job_id, "market": outcome.market,
                                 "error": outcome.error})
        lags = [j.outcome.lag_ms for j in jobs]
        self.log.event("jobs", "ok" if not failures else "failures",
                       severity="INFO" if not failures else "WARNING", jobs=len(jobs),
                       started_at=started_at, finished_at=_now_iso(),
                       counts={k: len(v) for k, v in by_outcome.items()},
                       job_ids=dict(by_outcome), failures=failures,
                       lag_p50_ms=round(percentile(lags, 50)),
                       lag_max_ms=round(max(lags, default=0.0)))


# -- the request body -------------------------------------------------------------------------
MAX_BODY_BYTES = 1024


def max_jobs_from_body(body: bytes, limit: int) -> int | None:
    """The tick's `{"max_jobs": n}` (optional: without it the tick drains what is due; 1..limit);
    an empty body is `{}`. Anything else — not JSON, not an object, another key, not an integer,
    out of range — is a 400 problem naming what is wrong."""
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
    if "max_jobs" not in document:
        return None
    value = document["max_jobs"]
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= limit:
        raise ProblemError(400, "invalid-body", f"max_jobs must be an integer from 1 to {limit}")
    return value
