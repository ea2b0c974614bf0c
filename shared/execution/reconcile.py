"""POST /reconcile — settle open executions from what the exchange knows (G10), and sweep the
account's orders so that every one maps to an execution (G9). Service-role only.

    list_unsettled_executions → GET /order?clientOrderId= → (not found: GET /orders + GET /trades)
      → record_execution_result → list_sweep_markets + record_exchange_orders → counts

For each execution still `claimed`, `submitted` or `unknown` (claimed at least
RECONCILE_MIN_AGE_SECONDS ago, oldest first, at most RECONCILE_BATCH_SIZE):
- the exchange has the order → its status is recorded (shared.execution.results.order_result):
  filled / partially filled / canceled / rejected settle it, an open order stays `submitted` with
  the figures so far. A *market* order still open RECONCILE_CANCEL_OPEN_AFTER_SECONDS after its
  claim is stuck: its remainder is cancelled, and what filled is recorded (partially_filled).
- GET /order does not know the order (240) → not proof (Bitvavo may not find a completed order by
  clientOrderId): the market's orders and fills since a minute before the claim are searched
  (shared.execution.sweep, one read per market for all such executions and the sweep together);
  an order found there is recorded as what it is (`found_by_search`). Found nowhere → `failed`
  (certainly not placed) only when the claim is older than MAX_CLAIM_AGE + the access window +
  RECONCILE_MARGIN_SECONDS (settings.not_found_failed_after_seconds); younger, it stays open (and
  keeps counting toward cooldown, anti-flip and daily limits) for a later run, and so does one
  whose market could not be searched completely (`errors`). Which executions are old enough is
  asked of the database (a second list_unsettled_executions with that age), so the decision uses
  the clock that stamped `claimed_at`, never this host's.
- the read's outcome is unknown (timeout, 5xx…) or refused → left as it is, counted in `errors`.
- paper mode: orders live in the memory of the process that placed them. After a restart (or on
  another instance) a paper order is gone, so its execution becomes `failed` once old enough — in
  paper mode nothing outside that memory was ever placed. A live-mode process treats paper
  executions the same way; a paper-mode process cannot read live orders (no trade key) and skips
  them (`skipped`).

- the sweep (live mode): every order and fill of the account on every market of market_allowlist
  (and of the open executions) since RECONCILE_SWEEP_WINDOW_SECONDS ago is matched to its execution
  by clientOrderId (record_exchange_orders): an order without an execution, or one whose execution
  says otherwise (e.g. `failed`, and the exchange filled it late), is recorded as what happened,
  audited and left for the operator (`oracle status`, `oracle verify`); the ledger gets a late fill
  once. `swept` orders looked at, new `orphans`, `corrected` executions, new `discrepancies` (of
  every kind, orphans and corrections included).

Nothing is ever re-sent. Running from two places at once is safe: record_execution_result takes the
execution's row lock and enforces the state machine, so the second report of the same result is
`unchanged` and a contradicting one `illegal_transition` (counted in `unchanged` / `conflicts`,
not errors); the ledger row is written once by the database.

Answer: `{"examined", "settled", "failed", "still_open", "unchanged", "conflicts", "skipped",
"errors", "found_by_search", "swept", "orphans", "corrected", "discrepancies"}` (`found_by_search`
is also counted in `settled` or `still_open`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from shared.api.edge import Call, HttpRequest, Reply, refused
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
from shared.execution.results import (
    FINAL_EXECUTION_STATUSES,
    OPEN_ORDER_STATUSES,
    Result,
    not_at_exchange_result,
    order_result,
)
from shared.execution.runtime import Runtime
from shared.execution.submission import invalid_body, json_object
from shared.execution.sweep import History, read_history, sweep, windows
from shared.rpc.errors import RpcError

COUNTS = ("examined", "settled", "failed", "still_open", "unchanged", "conflicts", "skipped",
          "errors", "found_by_search", "swept", "orphans", "corrected", "discrepancies")
NOT_FOUND = "not_found"  # settle(): GET /order did not find it; the account's history decides


def reconcile(call: Call, runtime: Runtime) -> Reply:
    """The service's call (the edge admits no one else)."""
    log = call.log
    with log.step("parse") as step:
        limit = refused(step, batch_size, call.request, runtime)
    with log.step("list") as step:
        work, old_enough = unsettled(step, runtime, limit)
    counts: Counter[str] = Counter(dict.fromkeys(COUNTS, 0))
    missing = []
    for execution in work:
        counts["examined"] += 1
        count = settle(log, runtime, execution, may_fail=execution["id"] in old_enough)
        if count == NOT_FOUND:
            missing.append(execution)
        else:
            counts[count] += 1
    counts.update(search_and_sweep(log, runtime, missing, old_enough))
    return replies.json_reply(dict(counts), 200)


def batch_size(request: HttpRequest, runtime: Runtime) -> int:
    document = json_object(request.body)
    unknown = [f"{name}: unknown field" for name in sorted(document) if name != "limit"]
    limit = document.get("limit", runtime.settings.execution.reconcile_batch_size)
    if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= 500:
        unknown.append("limit: must be an integer from 1 to 500")
    if unknown:
        raise invalid_body(unknown)
    return int(limit)


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
        return record(step, runtime, execution, result)


def record(step: Step, runtime: Runtime, execution: Mapping[str, Any], result: Result) -> str:
    """record_execution_result; the count it adds to."""
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


def search_and_sweep(log: StepLog, runtime: Runtime, missing: Sequence[Mapping[str, Any]],
                     old_enough: set[str]) -> Counter[str]:
    """Live mode: read the account's orders and fills once — on the markets of `missing` (GET
    /order did not find them) and on the sweep's — settle `missing` from them, then sweep."""
    counts: Counter[str] = Counter()
    trade = runtime.venue.trade
    if trade is None:
        return counts  # paper: there is no account to read (and nothing is ever missing)
    with log.step("history") as step:
        plan = sweep_plan(step, runtime)
        markets, since = plan if plan is not None else ([], None)
        history = read_history(step, trade, windows(missing, markets, since))
    if plan is None:
        counts["errors"] += 1
    for execution in missing:
        count, found = settle_missing(log, runtime, execution, history,
                                      may_fail=execution["id"] in old_enough)
        counts[count] += 1
        counts["found_by_search"] += found
    if plan is not None:
        with log.step("sweep") as step:
            counts.update(sweep(step, runtime, history))
    return counts


def sweep_plan(step: Step, runtime: Runtime) -> tuple[list[str], datetime] | None:
    """list_sweep_markets: the markets to sweep and since when (the database's clock)."""
    try:
        plan = runtime.rpc.call("list_sweep_markets", {
            "p_window_seconds": runtime.settings.execution.reconcile_sweep_window_seconds})
        markets = [str(market) for market in plan["markets"]]
        since = datetime.fromisoformat(str(plan["since"]))
    except (RpcError, KeyError, TypeError, ValueError) as error:
        step.set(severity="ERROR", sweep_error=type(error).__name__)
        return None
    step.set(sweep_markets=len(markets), since=since.isoformat())
    return markets, since


def settle_missing(log: StepLog, runtime: Runtime, execution: Mapping[str, Any],
                   history: History, *, may_fail: bool) -> tuple[str, bool]:
    """An execution GET /order did not find: what the account's orders and fills say about it, or
    `failed` when they do not have it either and it is old enough; (its count, found there)."""
    market, client_order_id = str(execution["market"]), str(execution["client_order_id"])
    ids = {"execution_id": execution["id"], "proposal_id": execution["proposal_id"],
           "user_id": execution["user_id"], "client_order_id": client_order_id,
           "from_status": execution["status"], "execution_mode": execution["mode"]}
    try:
        with log.step("search", **ids) as step:
            facts = history.find(market, client_order_id)
            if facts is not None:
                step.set(exchange_status=facts.exchange_status, exchange_order_id=facts.order_id)
                result = facts.result
                if facts.exchange_status is None and not may_fail:
                    result = {**result, "status": "submitted"}  # fills only: not over yet
                return record(step, runtime, execution, result), True
            if market not in history.complete:
                step.set("errors", severity="WARNING",
                         reason="the market's orders and fills could not all be read")
                return "errors", False
            outcome = not_found(step, runtime, may_fail)
            if isinstance(outcome, str):
                step.set(outcome)
                return outcome, False
            return record(step, runtime, execution, outcome), False
    except Exception:  # noqa: BLE001 - our bug with one execution must not stop the others
        return "errors", False


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
        if runtime.venue.trade is not None:
            step.set(exchange="not_found_by_client_order_id")
            return NOT_FOUND  # searched for in the account's orders and fills next
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
    """The exchange does not know the order (and, live, its account's orders and fills do not
    have it either): `failed` once the claim is old enough, else wait."""
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
