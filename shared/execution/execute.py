"""POST / — a user executes an own approved proposal, or the scanner (the service) a user's
auto-approved one (SPEC §4).

One request: parse → claim RPC → exchange → record RPC, each step one JSON log line; the edge
(shared.api.edge) has authenticated the caller and read the body before, and answers after. The
claim is `claim_trade_execution`: the seven validators and the idempotent claim in
one transaction (G1, G4–G6). The order goes out at most once: the claim's clientOrderId names it,
nothing here retries (G10), and it is sent only within MAX_CLAIM_AGE of the claim's answer.

What can go wrong, and what the client is told:
- before the claim commits (bad input 400/413, no valid token 401, the database unreachable during
  the claim 503 — nothing sent, the same Idempotency-Key may be retried);
- the claim's own outcomes: replay (200/202 with the stored execution, 409 while still in flight),
  409 already executed, 422 rejected with failed_checks or key reused, 404, 429 the trade key's
  order budget (shared by every instance, kept in the database) is used up for now — nothing
  claimed or sent, Retry-After says when to send the same request again;
- the exchange: whatever it answers or raises becomes the recorded status (shared.execution.results:
  201 for a result, 202 when the outcome is unknown);
- the record RPC fails (connection dropped, …): the order is NOT re-sent; 202 with what is known,
  and /reconcile settles the execution from the exchange by clientOrderId.
Only our own bugs (and a misconfigured database role) answer 500, without any detail.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping
from typing import Any

from shared.api.edge import Call, Reply, internal_error, refused
from shared.api.problems import ProblemError
from shared.api.steplog import Step
from shared.exchange.errors import AccessWindowError
from shared.exchange.models import Order
from shared.execution import replies
from shared.execution.results import Result, error_result, order_result
from shared.execution.runtime import Runtime
from shared.execution.submission import parse_submission
from shared.rpc.errors import RpcError, RpcInvalidArgument, RpcUnavailable


def execute(call: Call, runtime: Runtime) -> Reply:
    log, principal = call.log, call.principal
    with log.step("parse") as step:
        submission = refused(step, parse_submission, call.request)
        user_id = refused(step, submission.owner, principal)
        step.set(caller=principal.role)
    log.bind(user_id=user_id, proposal_id=submission.proposal_id)
    with log.step("claim") as step:
        claim = claim_execution(step, runtime, user_id, submission.proposal_id,
                                submission.idempotency_key,
                                require_auto_approval=principal.is_service)
        claim_answered_at = time.monotonic()
    execution = claim.get("execution") or {}
    log.bind(execution_id=execution.get("id"), client_order_id=execution.get("client_order_id"))
    if claim["outcome"] != "claimed":
        return replies.claim_reply(claim)
    with log.step("exchange") as step:
        result = place_order(step, runtime, execution, claim_answered_at)
    with log.step("record") as step:
        return record_result(step, runtime, execution, result)


# -- the steps ------------------------------------------------------------------------------------
def claim_execution(step: Step, runtime: Runtime, user_id: uuid.UUID, proposal_id: uuid.UUID,
                    key: str, *, require_auto_approval: bool) -> Mapping[str, Any]:
    """The claim RPC. `require_auto_approval` for the service caller: it may execute a user's
    auto-approved proposal only (SPEC §4), which the claim's proposal_state validator enforces.
    The trade key's order budget, shared by every instance, is taken by the same claim once its
    validators passed: with no slot free it claims nothing (`rate_limited`, answered 429 with
    Retry-After) and the same Idempotency-Key may be sent again."""
    knobs = runtime.settings.execution
    try:
        claim = runtime.rpc.call("claim_trade_execution", {
            "p_user_id": user_id, "p_proposal_id": proposal_id, "p_idempotency_key": key,
            "p_mode": runtime.mode, "p_require_auto_approval": require_auto_approval,
            "p_order_budget": knobs.order_budget,
            "p_order_budget_window_seconds": knobs.order_budget_window_seconds})
    except RpcInvalidArgument as error:
        step.set("invalid_argument", severity="WARNING")
        raise ProblemError(400, "invalid-argument", error.message) from None
    except RpcUnavailable as error:
        step.set("database_unavailable", severity="ERROR", cause=error.cause)
        raise ProblemError(503, "database-unavailable",
                           "the database did not answer; nothing was sent to the exchange. "
                           "Retrying with the same Idempotency-Key is safe",
                           headers={"Retry-After": "1"}) from None
    except RpcError:
        step.set("database_error", severity="ERROR")
        raise internal_error() from None
    if not isinstance(claim, Mapping) or not isinstance(claim.get("outcome"), str):
        step.set("unexpected_answer", severity="ERROR")
        raise internal_error()
    execution = claim.get("execution") or {}
    step.set(claim["outcome"], reason=claim.get("reason"), execution_id=execution.get("id"),
             execution_status=execution.get("status"),
             retry_after_seconds=claim.get("retry_after_seconds"),
             failed_checks=[c.get("check") for c in claim.get("failed_checks") or []] or None)
    return claim


def place_order(step: Step, runtime: Runtime, execution: Mapping[str, Any],
                claim_answered_at: float) -> Result:
    """Send the claimed order once and turn the answer — or whatever was raised — into the result
    to record. Never raises (an unexpected exception is an `unknown` result: it may have been sent
    already)."""
    order: Order | None = None
    try:
        order = runtime.venue.place(
            execution, claimed_at=claim_answered_at,
            max_age=runtime.settings.execution.max_claim_age_seconds)
        result = order_result(order)
    except Exception as error:  # noqa: BLE001 - every failure is mapped to a recorded status
        result = error_result(error)
        step.set(error=type(error).__name__, severity="WARNING")
        if isinstance(error, AccessWindowError):
            step.set(**runtime.venue.remeasure())
    step.set(result["status"], error_code=result.get("error_code"),
             exchange_order_id=order.order_id if order else None,
             exchange_status=order.status if order else None)
    return result


def record_result(step: Step, runtime: Runtime, execution: Mapping[str, Any],
                  result: Result) -> Reply:
    """Record the result and answer with the stored execution. If the record RPC fails, the order
    stays as it is (never re-sent): 202 with the claim and the exchange's result; /reconcile
    settles the execution."""
    try:
        answer = runtime.rpc.call("record_execution_result",
                                  {"p_execution_id": execution["id"], "p_result": result})
        outcome = answer["outcome"]
        stored = answer["execution"]
    except (RpcError, KeyError, TypeError) as error:
        step.set("not_recorded", severity="ERROR", error=type(error).__name__,
                 error_code=getattr(error, "code", None))
        return unrecorded(execution, result)
    if outcome not in ("updated", "unchanged", "illegal_transition") or not stored:
        step.set(str(outcome), severity="ERROR")
        return unrecorded(execution, result)
    # illegal_transition: the reconciler recorded first; the stored execution is the truth — unless
    # the exchange reports a fill the stored result lacks, which an operator must see at once.
    severity = None
    if outcome == "illegal_transition":
        missed_fill = (result.get("filled_amount") or 0) > 0 and not stored.get("filled_amount")
        severity = "ERROR" if missed_fill else "WARNING"
    step.set(outcome, reason=answer.get("reason"), execution_status=stored.get("status"),
             severity=severity)
    return replies.execution_reply(stored)


def unrecorded(execution: Mapping[str, Any], result: Result) -> Reply:
    """202: what the claim and the exchange said, the database's state unknown to us."""
    return replies.json_reply({"execution": {**execution, "status": "unknown"},
                               "exchange_result": result, "recorded": False}, 202)
