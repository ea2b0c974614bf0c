"""POST /reconcile — settle open executions from what the exchange knows (G10). Service-role only.

    list_unsettled_executions → GET /order?clientOrderId= → record_execution_result → counts

For each execution still `claimed`, `submitted` or `unknown` (claimed at least
RECONCILE_MIN_AGE_SECONDS ago, oldest first, at most RECONCILE_BATCH_SIZE):
- the exchange has the order → its status is recorded (shared.execution.results.order_result):
  filled / partially filled / canceled / rejected settle it, an open order stays `submitted` with
  the figures so far. A *market* order still open RECONCILE_CANCEL_OPEN_AFTER_SECONDS after its
  claim is stuck: its remainder is cancelled, and what filled is recorded (partially_filled).
- the exchange does not know the order (240) → `failed` (certainly not placed) only when the claim
  is older than MAX_CLAIM_AGE + the access window + RECONCILE_MARGIN_SECONDS
  (settings.not_found_failed_after_seconds); younger, it is left for a later run. Which executions
  are old enough is asked of the database (a second list_unsettled_executions with that age), so
  the decision uses the clock that stamped `claimed_at`, never this host's.
- the read's outcome is unknown (timeout, 5xx…) or refused → left as it is, counted in `errors`.
- paper mode: orders live in the memory of the process that placed them. After a restart (or on
  another instance) a paper order is gone, so its execution becomes `failed` once old enough — in
  paper mode nothing outside that memory was ever placed. A live-mode process treats paper
  executions the same way; a paper-mode process cannot read live orders (no trade key) and skips
  them (`skipped`).

Nothing is ever re-sent. Running from two places at once is safe: record_execution_result takes the
execution's row lock and enforces the state machine, so the second report of the same result is
`unchanged` and a contradicting one `illegal_transition` (counted in `unchanged` / `conflicts`,
not errors); the ledger row is written once by the database.

Answer: `{"examined", "settled", "failed", "still_open", "unchanged", "conflicts", "skipped",
"errors"}`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from shared.api.problems import ProblemError
from shared.api.steplog import Step, StepLog
from shared.exchange.errors import (
    AccessWindowError,
    ExchangeError,
    OrderNotCancellable,
    OrderNotFound,
    OutcomeUnknown,
)
from shared.exchange.models import Order
from shared.execution import replies
from shared.execution.execute import authenticate, internal_error, refused, respond
from shared.execution.replies import Reply
from shared.execution.results import (
    FINAL_EXECUTION_STATUSES,
    OPEN_ORDER_STATUSES,
    Result,
    not_at_exchange_result,
    order_result,
)
from shared.execution.runtime import Runtime
from shared.execution.submission import HttpRequest, invalid_body, json_object
from shared.rpc.errors import RpcError

COUNTS = ("examined", "settled", "failed", "still_open", "unchanged", "conflicts", "skipped",
          "errors")


def reconcile(request: HttpRequest, runtime: Runtime) -> Reply:
    log = runtime.step_log(request)
    try:
        with log.step("parse") as step:
            limit = refused(step, batch_size, request, runtime)
        with log.step("auth") as step:
            principal = refused(step, authenticate, runtime, request)
            if not principal.is_service:
                refused(step, forbidden)
            step.set(caller=principal.role)
        with log.step("list") as step:
            work, old_enough = unsettled(step, runtime, limit)
        counts: Counter[str] = Counter(dict.fromkeys(COUNTS, 0))
        for execution in work:
            counts["examined"] += 1
            counts[settle(log, runtime, execution, may_fail=execution["id"] in old_enough)] += 1
        return respond(log, lambda: replies.json_reply(dict(counts), 200))
    except ProblemError as problem:
        return respond(log, problem.response)
    except Exception:  # noqa: BLE001 - our bug: the step that raised logged it (no traceback)
        return respond(log, internal_error().response)


def batch_size(request: HttpRequest, runtime: Runtime) -> int:
    document = json_object(request.body)
    unknown = [f"{name}: unknown field" for name in sorted(document) if name != "limit"]
    limit = document.get("limit", runtime.settings.execution.reconcile_batch_size)
    if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= 500:
        unknown.append("limit: must be an integer from 1 to 500")
    if unknown:
        raise invalid_body(unknown)
    return int(limit)


def forbidden() -> None:
    raise ProblemError(403, "forbidden", "only the service role may reconcile executions")


def unsettled(step: Step, runtime: Runtime,
              limit: int) -> tuple[list[dict[str, Any]], set[str]]:
    """The work list, and which of its executions are old enough to be declared not placed."""
    knobs = runtime.settings.execution
    try:
        work = runtime.rpc.rows("list_unsettled_executions", {
            "p_older_than_seconds": knobs.reconcile_min_age_seconds, "p_limit": limit})
        old = runtime.rpc.rows("list_unsettled_executions", {
            "p_older_than_seconds": knobs.not_found_failed_after_seconds, "p_limit": limit})
    except RpcError as error:
        step.set("database_unavailable", severity="ERROR", cause=error.cause)
        raise ProblemError(503, "database-unavailable", "the database did not answer; nothing "
                           "was changed", headers={"Retry-After": "5"}) from None
    step.set(count=len(work), old_enough=len(old))
    return work, {str(row["id"]) for row in old}


def settle(log: StepLog, runtime: Runtime, execution: Mapping[str, Any], *, may_fail: bool) -> str:
    """One execution: read its order, record what the exchange says; the count it adds to."""
    ids = {"execution_id": execution["id"], "proposal_id": execution["proposal_id"],
           "user_id": execution["user_id"], "client_order_id": execution["client_order_id"],
           "from_status": execution["status"], "execution_mode": execution["mode"]}
    try:
        return _settle(log, runtime, execution, ids, may_fail=may_fail)
    except Exception:  # noqa: BLE001 - our bug with one execution must not stop the others
        return "errors"  # the step line has the error (no traceback)


def _settle(log: StepLog, runtime: Runtime, execution: Mapping[str, Any], ids: dict[str, Any],
            *, may_fail: bool) -> str:
    with log.step("reconcile", **ids) as step:
        result = exchange_result(step, runtime, execution, may_fail=may_fail)
        if isinstance(result, str):
            step.set(result)
            return result
        try:
            answer = runtime.rpc.call("record_execution_result",
                                      {"p_execution_id": execution["id"], "p_result": result})
        except RpcError as error:
            step.set("errors", severity="ERROR", error=type(error).__name__, error_code=error.code)
            return "errors"
        count = _count(answer)
        step.set(count, record=answer.get("outcome"), reason=answer.get("reason"),
                 to_status=(answer.get("execution") or {}).get("status"))
        return count


def exchange_result(step: Step, runtime: Runtime, execution: Mapping[str, Any], *,
                    may_fail: bool) -> Result | str:
    """What to record for this execution, or the count to add when nothing is to be recorded."""
    market, client_order_id = str(execution["market"]), str(execution["client_order_id"])
    if execution["mode"] != runtime.mode:
        if runtime.mode == "paper":
            return "skipped"  # a live order: this process has no trade key to read it with
        return not_found(step, runtime, may_fail)  # a paper order lived in another process
    try:
        order = runtime.venue.read(market, client_order_id)
        if stuck(runtime, execution, order):
            order = cancel_rest(step, runtime, market, client_order_id)
    except OrderNotFound:
        return not_found(step, runtime, may_fail)
    except ExchangeError as error:
        step.set(severity="WARNING" if isinstance(error, OutcomeUnknown) else "ERROR",
                 error=type(error).__name__, error_code=error.error_code)
        if isinstance(error, AccessWindowError):
            step.set(**runtime.venue.remeasure())
        return "errors"
    step.set(exchange_status=order.status, exchange_order_id=order.order_id)
    return order_result(order)


def not_found(step: Step, runtime: Runtime, may_fail: bool) -> Result | str:
    """The exchange does not know the order: `failed` once the claim is old enough, else wait."""
    step.set(exchange="not_found")
    if not may_fail:
        return "still_open"
    return not_at_exchange_result(runtime.settings.execution.not_found_failed_after_seconds)


def stuck(runtime: Runtime, execution: Mapping[str, Any], order: Order) -> bool:
    """A market order still open long after its claim (host clock: a few seconds either way only
    moves when the remainder is cancelled)."""
    if order.status not in OPEN_ORDER_STATUSES or order.order_type != "market":
        return False
    claimed_at = datetime.fromisoformat(str(execution["claimed_at"]))
    age = (datetime.now(UTC) - claimed_at).total_seconds()
    return age > runtime.settings.execution.reconcile_cancel_open_after_seconds


def cancel_rest(step: Step, runtime: Runtime, market: str, client_order_id: str) -> Order:
    try:
        runtime.venue.cancel(market, client_order_id)
        step.set(cancelled=True)
    except OrderNotCancellable:
        step.set(cancelled=False)  # it ended meanwhile; read its final state
    return runtime.venue.read(market, client_order_id)


def _count(answer: Mapping[str, Any]) -> str:
    outcome = answer.get("outcome")
    status = (answer.get("execution") or {}).get("status")
    if outcome == "illegal_transition":
        return "conflicts"
    if outcome not in ("updated", "unchanged"):
        return "errors"
    if status not in FINAL_EXECUTION_STATUSES:
        return "still_open"  # an open order, whether or not it brought new figures
    if outcome == "unchanged":
        return "unchanged"  # another reconciler (or the request itself) recorded it first
    return "failed" if status == "failed" else "settled"
