"""Auto-execute: an auto-approved proposal is handed to trading_execute, never executed here.
The dispatcher (shared.scanning.dispatch) decides which proposals and when; this module is the one
request.

    POST EXECUTE_FUNCTION_URL
    Authorization: Bearer <SUPABASE_SERVICE_ROLE_KEY>
    Idempotency-Key: auto:<proposal_id>
    Content-Type: application/json
    {"proposal_id": "<uuid>", "user_id": "<uuid>"}

The scanner has no trade client (G3); trading_execute claims and places the order. A repeated
request never executes twice: the Idempotency-Key is derived from the proposal id, so every
request for one proposal, from any tick or instance, carries one key; trading_execute answers a
repeat with the stored result (or 409 while it is in flight), and trade_executions' unique
(proposal_id) and unique (user_id, idempotency_key) make a second execution impossible whoever
calls.

Answers (SPEC §4): 201 executed (or rejected by the exchange), 200 + Idempotent-Replayed: true a
replay, 202 outcome unknown (the reconciler settles it), 409 in flight / already executed, 422
failed its checks, 404 not found — all definite: that proposal is done. 429 is the trade key's
order budget used up for now: nothing was claimed, the answer carries Retry-After
(`rate_limited`, `retry_after`). A 5xx, 401/403 (our key is wrong) or no answer is not definite:
`ExecuteUnavailable`; the proposal stays in the queue and a later request repeats the same key.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import httpx
from pydantic import SecretStr

IDEMPOTENCY_PREFIX = "auto:"


def idempotency_key(proposal_id: str) -> str:
    return f"{IDEMPOTENCY_PREFIX}{proposal_id}"


class ExecuteUnavailable(Exception):
    """trading_execute gave no definite answer; the proposal stays queued for a later request."""


@dataclass(frozen=True)
class ExecuteAnswer:
    http_status: int
    # created | ok | replayed | accepted | in_flight | conflict | rejected | not_found | refused
    # | rate_limited
    outcome: str
    execution_status: str | None
    replayed: bool
    retry_after: int | None = None  # rate_limited: seconds until the order budget has room


def _retry_after(response: httpx.Response) -> int:
    """Retry-After in seconds (trading_execute sends an integer); 1 when missing or unreadable."""
    text = response.headers.get("Retry-After", "").strip()
    return max(1, int(text)) if text.isdigit() else 1


_OUTCOMES = {201: "created", 202: "accepted", 404: "not_found", 422: "rejected", 400: "refused"}


class ExecuteClient:
    def __init__(self, url: str, service_key: SecretStr, timeout: float, *,
                 http: httpx.Client | None = None) -> None:
        self._url = url
        self._key = service_key
        self._own = http is None
        self._http = http or httpx.Client(timeout=httpx.Timeout(timeout, connect=5.0),
                                          follow_redirects=False)
        self._timeout = timeout

    @property
    def timeout(self) -> float:
        return self._timeout

    def close(self) -> None:
        if self._own:
            self._http.close()

    def request(self, proposal_id: str, user_id: str, *, request_id: str | None = None
                ) -> ExecuteAnswer:
        headers = {
            "Authorization": f"Bearer {self._key.get_secret_value()}",
            "Idempotency-Key": idempotency_key(proposal_id),
            "Content-Type": "application/json",
        }
        if request_id:
            headers["X-Request-Id"] = request_id
        try:
            response = self._http.post(self._url, json={"proposal_id": proposal_id,
                                                        "user_id": user_id}, headers=headers)
        except httpx.HTTPError as exc:
            raise ExecuteUnavailable(f"no answer from trading_execute ({type(exc).__name__})"
                                     ) from None
        status = response.status_code
        if status == 429:
            return ExecuteAnswer(status, "rate_limited", None, False, _retry_after(response))
        if status >= 500 or status in (401, 403, 408):
            raise ExecuteUnavailable(f"trading_execute answered HTTP {status}")
        body: Any
        try:
            body = response.json()
        except ValueError:
            body = None
        execution = body.get("execution") if isinstance(body, dict) else None
        execution_status = execution.get("status") if isinstance(execution, dict) else None
        replayed = response.headers.get("Idempotent-Replayed", "").lower() == "true"
        if status == 200:
            outcome = "replayed" if replayed else "ok"
        elif status == 409:
            kind = str(body.get("type", "")) if isinstance(body, dict) else ""
            outcome = "in_flight" if kind.endswith("in-flight") else "conflict"
        else:
            outcome = _OUTCOMES.get(status, f"http_{status}")
        return ExecuteAnswer(status, outcome, execution_status, replayed)
