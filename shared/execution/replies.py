"""The answers trading_execute gives: an execution as JSON, or a problem document (RFC 9457).

    Reply = (body, status, headers)      what functions-framework / Flask return as a tuple

Money travels as strings (SPEC §3): every Decimal is rendered in plain notation, never as a JSON
number a client might read into a float. The edge (shared.api.edge) adds `X-Request-Id`.

    execution status                       new claim   replay (same Idempotency-Key)
    claimed (no result yet: in flight)     —           409 /problems/in-flight, Retry-After: 1
    unknown                                202         202 + Idempotent-Replayed: true
    submitted, or final (failed too)       201         200 + Idempotent-Replayed: true
"""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import Mapping
from datetime import date, datetime
from decimal import Decimal
from typing import Any

from shared.api.edge import Reply
from shared.api.problems import ProblemError

REPLAYED_HEADER = "Idempotent-Replayed"


def json_reply(document: Mapping[str, Any], status: int, *,
               headers: Mapping[str, str] | None = None) -> Reply:
    body = json.dumps(document, default=_plain, ensure_ascii=False, separators=(",", ":"))
    return body.encode(), status, {**(headers or {}), "Content-Type": "application/json"}


def execution_reply(execution: Mapping[str, Any], *, replayed: bool = False,
                    **members: Any) -> Reply:
    """201/200/202 with `{"execution": …}` (a replay carries `Idempotent-Replayed: true`)."""
    status = http_status(str(execution["status"]), replayed=replayed)
    headers = {REPLAYED_HEADER: "true"} if replayed else {}
    return json_reply({"execution": execution, **members}, status, headers=headers)


def claim_reply(claim: Mapping[str, Any]) -> Reply:
    """The answer for every claim outcome but `claimed` (that one goes on to the exchange)."""
    outcome = claim.get("outcome")
    execution = claim.get("execution") or {}
    if outcome == "replayed":
        if execution.get("status") == "claimed":
            raise in_flight(execution)
        return execution_reply(execution, replayed=True)
    if outcome == "conflict" and claim.get("reason") == "idempotency_key_reused":
        raise ProblemError(422, "idempotency-key-reused",
                           "this Idempotency-Key was already used for another proposal; use a new "
                           "key for each proposal")
    if outcome == "conflict":
        raise ProblemError(409, "already-executed",
                           "this proposal already has an execution under another Idempotency-Key",
                           execution_id=execution.get("id"),
                           execution_status=execution.get("status"))
    if outcome == "rejected":
        raise ProblemError(422, "rejected", "the proposal failed its pre-flight checks; nothing "
                           "was sent to the exchange", failed_checks=list(
                               claim.get("failed_checks") or []))
    if outcome == "not_found":
        raise ProblemError(404, "not-found", "no such proposal")
    if outcome == "rate_limited":
        raise order_budget_exhausted(claim.get("retry_after_seconds"))
    raise ProblemError(500, "internal-error", "the claim answered with an unexpected outcome")


def order_budget_exhausted(retry_after: Any) -> ProblemError:
    """429: the trade key's order budget is used up for now. Nothing was claimed or sent; the
    proposal is as it was, and the same request may be repeated after Retry-After."""
    seconds = 1  # anything unusable means "soon"
    # The RPC port reads every JSON number as a Decimal.
    if isinstance(retry_after, int | Decimal) and not isinstance(retry_after, bool):
        value = Decimal(retry_after)
        if value.is_finite():
            seconds = max(1, math.ceil(value))
    return ProblemError(429, "order-budget-exhausted", "the trade key's order budget is used up "
                        "for now; nothing was claimed or sent. Retry with the same "
                        f"Idempotency-Key in {seconds} s", headers={"Retry-After": str(seconds)},
                        retry_after_seconds=seconds)


def in_flight(execution: Mapping[str, Any]) -> ProblemError:
    return ProblemError(409, "in-flight", "this execution is still running; retry with the same "
                        "Idempotency-Key in a moment", headers={"Retry-After": "1"},
                        execution_id=execution.get("id"))


def http_status(status: str, *, replayed: bool) -> int:
    """The answer's status for an execution (the table above); 409 for one still in flight."""
    if status == "claimed":
        return 409
    if status == "unknown":
        return 202
    return 200 if replayed else 201


def _plain(value: Any) -> Any:
    if isinstance(value, Decimal):
        if not value.is_finite():
            raise ValueError("a non-finite decimal cannot be rendered")
        return format(value, "f")
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, datetime | date):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} cannot be rendered as JSON")
