"""Auto-execute dispatch: the database is the queue, trading_execute the only executor.

    dispatcher = Dispatcher(rpc, client, concurrency=4, max_wait_seconds=30)
    dispatcher.run(log, time_left) -> DispatchReport      # once per tick

A tick calls `run` once, after its jobs have written their proposals. One market's signal can make
thousands of users' proposals auto-approved in the same tick, and every one of them is an order on
the one trade key, whose budget (Bitvavo: 1,000 weight a minute, POST /order weighs 1; over it the
key is banned until its window ends plus a minute) every trading_execute instance shares. So the
scanner does not send each proposal as its job makes it; it drains a queue kept in the database:

1. `lease_auto_approved_proposals(p_dispatcher, p_limit, p_lease_seconds)` — auto-approved,
   unexpired proposals that have no execution yet and whose claim was never rejected, oldest first
   (first come, first served), each leased to this run for a moment: ticks that dispatch at the
   same time (one per scanner instance) send disjoint proposals instead of each sending all.
2. Each goes to trading_execute (shared.scanning.autoexecute) with `Idempotency-Key:
   auto:<proposal_id>`, at most `concurrency` requests at once. trading_execute's claim takes a
   slot of the trade key's order budget — kept in the database for every instance, sized below
   the key's limit — or answers 429 with Retry-After, having claimed and sent nothing.
3. The first 429 stops new requests (those already sent finish). If the budget has room again
   soon enough — this run's waits stay within `max_wait_seconds` in all, and the tick still has
   time for a request after the wait — the dispatcher waits and leases again; otherwise it stops,
   and what is left waits in the queue for the next tick. (A slot frees when its second leaves the
   window, so after a burst the budget refills as fast as it was spent: the first wait is the long
   one, the rounds after it are short. The bound is on the sum, so a tick never trickles along
   for the whole window.) No answer at all (trading_execute or the database down) stops it too.
   However it stops, it gives back the proposals it leased and did not send
   (release_auto_execution_leases).

Why nothing is lost or done twice: a proposal leaves the queue only when its claim exists (status
`executing` and on) or was rejected (a definite answer, audited as `claim.rejected`); a 429 or a
lost answer leaves it `approved` and queued. Every request for one proposal carries the same key,
so a repeat — another tick, another scanner instance, a lost answer — gets the stored execution or
409, never a second order (G1, trade_executions' unique proposal_id). A proposal still waiting when
it expires is expired by run_maintenance, which audits why (`not_executed_before_expiry`, with the
last claim answer, e.g. `claim.rate_limited`).
"""

from __future__ import annotations

import math
import os
import socket
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any

from shared.api.steplog import StepLog
from shared.rpc.errors import RpcError
from shared.rpc.port import RpcPort
from shared.scanning.autoexecute import (
    ExecuteAnswer,
    ExecuteClient,
    ExecuteUnavailable,
    idempotency_key,
)

LIST_BATCH = 100  # proposals per lease_auto_approved_proposals call
# A lease covers its batch's requests at their usual pace (a few seconds for a hundred) plus one
# request's timeout; one that runs out only lets another dispatcher repeat a request, which the
# claim's idempotency answers (a replay or 409).
LEASE_MARGIN_SECONDS = 10

# How each answer counts (ExecuteAnswer.outcome → DispatchReport field).
_TALLY = {"created": "executed", "accepted": "executed", "ok": "executed", "replayed": "executed",
          "in_flight": "conflicts", "conflict": "conflicts", "rejected": "rejected",
          "not_found": "rejected", "rate_limited": "rate_limited"}


@dataclass
class DispatchReport:
    listed: int = 0
    requested: int = 0
    executed: int = 0  # 201 / 202 / 200: the proposal has its execution
    rejected: int = 0  # 422 / 404: a definite no; the proposal leaves the queue
    conflicts: int = 0  # 409: another request is executing it, or has
    rate_limited: int = 0  # 429: the order budget was used up; the proposal stays queued
    unavailable: int = 0  # no definite answer; the proposal stays queued
    refused: int = 0  # any other answer (400: a bug of ours); counted, never repeated in a run
    waited_ms: int = 0
    retry_after_seconds: int | None = None
    # drained | rate_limited | time_budget | unavailable | lease_failed
    stopped: str = "drained"

    def as_json(self) -> dict[str, Any]:
        return {"listed": self.listed, "requested": self.requested, "executed": self.executed,
                "rejected": self.rejected, "conflicts": self.conflicts,
                "rate_limited": self.rate_limited, "unavailable": self.unavailable,
                "refused": self.refused, "waited_ms": self.waited_ms,
                "retry_after_seconds": self.retry_after_seconds, "stopped": self.stopped}


class Dispatcher:
    def __init__(self, rpc: RpcPort, client: ExecuteClient, *, concurrency: int,
                 max_wait_seconds: float, batch: int = LIST_BATCH,
                 sleep: Callable[[float], None] = time.sleep,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if concurrency < 1 or batch < 1 or max_wait_seconds < 0:
            raise ValueError("concurrency and batch must be positive, max_wait_seconds not "
                             "negative")
        self.rpc = rpc
        self.client = client
        self.concurrency = concurrency
        self.max_wait_seconds = max_wait_seconds
        self.batch = batch
        self._sleep = sleep
        self._clock = clock

    def run(self, log: StepLog, time_left: Callable[[], float]) -> DispatchReport:
        """Send the queued auto-approved proposals until the queue is empty, the order budget is
        used up (for longer than max_wait_seconds in all), trading_execute does not answer, or
        the caller's time (`time_left()`, seconds) no longer fits a request."""
        report = DispatchReport()
        dispatcher_id = f"{socket.gethostname()[:100]}:{os.getpid()}:dispatch:{uuid.uuid4().hex}"
        with log.step("dispatch", dispatcher=dispatcher_id) as step, ThreadPoolExecutor(
                max_workers=self.concurrency, thread_name_prefix="dispatch") as pool:
            try:
                self._drain(pool, dispatcher_id, log, report, time_left)
            finally:
                self._release(dispatcher_id, log)
            step.set(report.stopped, severity="WARNING" if report.stopped in (
                "unavailable", "lease_failed") else None, **report.as_json())
        return report

    def _drain(self, pool: ThreadPoolExecutor, dispatcher_id: str, log: StepLog,
               report: DispatchReport, time_left: Callable[[], float]) -> None:
        answered: set[str] = set()  # a proposal is sent at most once per run unless it got a 429
        while True:
            rows = self._lease(dispatcher_id, log, report)
            if rows is None:
                report.stopped = "lease_failed"
                return
            fresh = [row for row in rows if str(row["proposal_id"]) not in answered]
            if not fresh:
                return
            report.retry_after_seconds = None  # this round's, if it meets the budget
            stop = self._send(pool, fresh, answered, log, report, time_left)
            if stop == "rate_limited" and self._wait(report, time_left):
                continue
            if stop is not None:
                report.stopped = stop
                return
            if len(rows) < self.batch:
                return

    # -- the steps ------------------------------------------------------------------------------
    def _lease(self, dispatcher_id: str, log: StepLog,
               report: DispatchReport) -> list[dict[str, Any]] | None:
        lease_seconds = math.ceil(self.client.timeout) + LEASE_MARGIN_SECONDS
        with log.step("dispatch_lease", limit=self.batch, lease_seconds=lease_seconds) as step:
            try:
                rows = self.rpc.rows("lease_auto_approved_proposals", {
                    "p_dispatcher": dispatcher_id, "p_limit": self.batch,
                    "p_lease_seconds": lease_seconds})
            except RpcError as exc:
                step.set("error", severity="ERROR", error=type(exc).__name__,
                         error_code=exc.code)
                return None
            step.set(listed=len(rows))
        report.listed += len(rows)
        return rows

    def _release(self, dispatcher_id: str, log: StepLog) -> None:
        """Give back the proposals leased but not sent, so the next dispatcher has them at once
        (if this fails they go when the lease runs out)."""
        with log.step("dispatch_release") as step:
            try:
                released = self.rpc.call("release_auto_execution_leases",
                                         {"p_dispatcher": dispatcher_id})
            except RpcError as exc:
                step.set("error", severity="WARNING", error=type(exc).__name__,
                         error_code=exc.code)
                return
            step.set(released=released)

    def _send(self, pool: ThreadPoolExecutor, rows: Iterable[Mapping[str, Any]],
              answered: set[str], log: StepLog, report: DispatchReport,
              time_left: Callable[[], float]) -> str | None:
        """Requests for `rows`, `concurrency` at a time; after a 429 or no answer, none is
        started (those on the way finish). Returns why it stopped early, or None."""
        queue = iter(rows)
        running: dict[Future[ExecuteAnswer | None], Mapping[str, Any]] = {}
        stop: str | None = None
        while True:
            while stop is None and len(running) < self.concurrency:
                row = next(queue, None)
                if row is None:
                    break
                if time_left() < self.client.timeout:
                    stop = "time_budget"
                    break
                report.requested += 1
                running[pool.submit(self._request, row, log)] = row
            if not running:
                return stop
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                row = running.pop(future)
                answer = future.result()  # _request never raises
                if answer is None:
                    report.unavailable += 1
                    stop = "unavailable"
                    continue
                if answer.outcome == "rate_limited":
                    report.rate_limited += 1
                    report.retry_after_seconds = max(report.retry_after_seconds or 0,
                                                     answer.retry_after or 1)
                    stop = stop or "rate_limited"
                    continue
                answered.add(str(row["proposal_id"]))
                field_name = _TALLY.get(answer.outcome, "refused")
                setattr(report, field_name, getattr(report, field_name) + 1)

    def _request(self, row: Mapping[str, Any], log: StepLog) -> ExecuteAnswer | None:
        proposal_id, user_id = str(row["proposal_id"]), str(row["user_id"])
        with log.step("execute_request", proposal_id=proposal_id, user_id=user_id,
                      idempotency_key=idempotency_key(proposal_id)) as step:
            try:
                answer = self.client.request(proposal_id, user_id, request_id=log.request_id)
            except ExecuteUnavailable as exc:
                step.set("unavailable", severity="WARNING", error_message=str(exc))
                return None
            step.set(answer.outcome, http_status=answer.http_status,
                     execution_status=answer.execution_status, replayed=answer.replayed,
                     retry_after_seconds=answer.retry_after)
            return answer

    def _wait(self, report: DispatchReport, time_left: Callable[[], float]) -> bool:
        """Wait out a 429's Retry-After when this run's waits stay within max_wait_seconds and a
        request still fits after it; False: stop now."""
        seconds = float(report.retry_after_seconds or 1)
        if (report.waited_ms / 1000 + seconds > self.max_wait_seconds
                or time_left() - seconds < self.client.timeout):
            return False
        started = self._clock()
        self._sleep(seconds)
        report.waited_ms += round((self._clock() - started) * 1000)
        return True
