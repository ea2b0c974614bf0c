"""The GPT budget around one model call (G7): reserve before, settle after.

    reservation = budget.reserve(user_id, model, max_prompt_tokens, max_completion_tokens, job_id)
    if isinstance(reservation, Denial): no call
    … the call …
    budget.settle(reservation, usage, request_id)

reserve_gpt_budget (SQL, per-user advisory lock) reserves the worst-case cost only if the user's
settled + reserved spend of the last hour and of the UTC day stay within their limits; the caller
makes that worst case a true upper bound (gpt.py: the prompt's byte bound, and the completion cap it
sends as max_completion_tokens). settle_gpt_usage records the provider's reported usage priced in
SQL — also above the reservation (audited overshoot) and also after run_maintenance released the
reservation as stale (a late settle is still recorded). Settling zero tokens releases it.

What the caller settles, by how the call ended:
- an answer with `usage` (valid, malformed, refused, cut off): that usage;
- an answer without `usage` (a server that omits it): the reservation's own maximum, since the call
  was billed and the bill is unknown — never less than it can have cost;
- an HTTP error answered by the provider: its body's `usage` if it has one, else zero (an error
  answer is not billed) — which releases the reservation;
- the request never left (connection refused, connect timeout): zero;
- a timeout or a broken connection after the request was sent: UNKNOWN whether it was billed.
  Nothing is settled; the reservation keeps blocking its worst case until run_maintenance releases
  it after 15 minutes (private.gpt_reservation_lifetime). If the provider did bill the call, that
  spend is not recorded: the one case where recorded spend can be below the bill.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from shared.rpc.port import RpcPort


@dataclass(frozen=True)
class Usage:
    """Token counts as OpenAI reports them: prompt_tokens includes cached_prompt_tokens."""

    prompt_tokens: int
    cached_prompt_tokens: int
    completion_tokens: int

    def __post_init__(self) -> None:
        if min(self.prompt_tokens, self.cached_prompt_tokens, self.completion_tokens) < 0:
            raise ValueError("token counts are never negative")
        if self.cached_prompt_tokens > self.prompt_tokens:
            raise ValueError("cached prompt tokens are part of the prompt tokens")


NO_TOKENS = Usage(0, 0, 0)


@dataclass(frozen=True)
class Reservation:
    id: str
    reserved_usd: Decimal
    max_prompt_tokens: int
    max_completion_tokens: int
    expires_at: str | None
    reserved_at: float  # time.monotonic() when reserve_gpt_budget was sent

    @property
    def worst_case(self) -> Usage:
        """What the reservation covers: every prompt token uncached, the whole completion cap."""
        return Usage(self.max_prompt_tokens, 0, self.max_completion_tokens)


@dataclass(frozen=True)
class Denial:
    reason: str
    worst_case_usd: Decimal | None
    spent_hour_usd: Decimal | None
    spent_day_usd: Decimal | None
    hourly_limit_usd: Decimal | None
    daily_limit_usd: Decimal | None


class GptBudget:
    def __init__(self, rpc: RpcPort) -> None:
        self._rpc = rpc

    def reserve(self, user_id: str, model: str, max_prompt_tokens: int,
                max_completion_tokens: int, job_id: str | None = None) -> Reservation | Denial:
        sent = time.monotonic()
        answer: dict[str, Any] = self._rpc.call("reserve_gpt_budget", {
            "p_user_id": user_id, "p_model": model,
            "p_max_prompt_tokens": max_prompt_tokens,
            "p_max_completion_tokens": max_completion_tokens,
            "p_scan_job_id": job_id,
        })
        if not answer.get("allowed"):
            return Denial(reason=str(answer.get("reason")),
                          worst_case_usd=answer.get("worst_case_usd"),
                          spent_hour_usd=answer.get("spent_hour_usd"),
                          spent_day_usd=answer.get("spent_day_usd"),
                          hourly_limit_usd=answer.get("hourly_limit_usd"),
                          daily_limit_usd=answer.get("daily_limit_usd"))
        return Reservation(id=str(answer["reservation_id"]),
                           reserved_usd=answer["reserved_usd"],
                           max_prompt_tokens=max_prompt_tokens,
                           max_completion_tokens=max_completion_tokens,
                           expires_at=answer.get("expires_at"), reserved_at=sent)

    def settle(self, reservation: Reservation, usage: Usage,
               request_id: str | None = None) -> dict[str, Any]:
        answer: dict[str, Any] = self._rpc.call("settle_gpt_usage", {
            "p_reservation_id": reservation.id,
            "p_prompt_tokens": usage.prompt_tokens,
            "p_cached_prompt_tokens": usage.cached_prompt_tokens,
            "p_completion_tokens": usage.completion_tokens,
            "p_request_id": request_id[:200] if request_id else None,
        })
        return answer
