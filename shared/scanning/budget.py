"""The GPT budget around one shared model call (G7): every user reserves before, the bill is split.

    granted = budget.reserve(answer_id, [(user_id, job_id), …])   # reserve_gpt_budgets
    … one model call if any user was granted …
    budget.record(answer_id, worker_id, call)                     # record_oracle_answer
    budget.settle([answer_id, …])                                 # settle_oracle_answers (tick end)

reserve_gpt_budgets applies reserve_gpt_budget's rule to each user under that user's lock: the
call's whole worst case (the answer's prompt bound and completion cap, priced from
gpt_model_prices) is reserved only if the user's settled + reserved spend of the last hour and of
the UTC day stay within their limits; a denied user gets no proposal. The caller makes that worst
case a true upper bound (gpt.py: the prompt's byte bound, and the completion cap it sends as
max_completion_tokens). settle_oracle_answers splits the recorded bill among the reservations that
used the answer — the shares sum to the bill exactly and none exceeds it (the scanning
migration's header has the rule) — also after run_maintenance released a reservation as stale (a
late settlement is still recorded). A bill of zero tokens releases them all.

What is recorded as the bill, by how the call ended:
- an answer with `usage` (valid, malformed, refused, cut off): that usage;
- an answer without `usage` (a server that omits it): the call's worst case, since the call was
  billed and the bill is unknown — never less than it can have cost;
- an HTTP error answered by the provider: its body's `usage` if it has one, else zero (an error
  answer is not billed) — which releases the reservations;
- the request never left (connection refused, connect timeout): zero;
- a timeout or a broken connection after the request was sent: UNKNOWN whether it was billed.
  No bill is recorded; the reservations keep blocking their worst case until run_maintenance
  releases them after 15 minutes (private.gpt_reservation_lifetime). If the provider did bill the
  call, that spend is not recorded: the one case where recorded spend can be below the bill.
"""

from __future__ import annotations

from collections.abc import Sequence
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


@dataclass(frozen=True)
class Denial:
    reason: str
    worst_case_usd: Decimal | None
    spent_hour_usd: Decimal | None
    spent_day_usd: Decimal | None
    hourly_limit_usd: Decimal | None
    daily_limit_usd: Decimal | None


@dataclass(frozen=True)
class Reservations:
    """reserve_gpt_budgets' answer: per user, a reservation or a denial; `failed` when the answer
    failed meanwhile (nothing was reserved)."""

    answer_id: str
    answer_status: str
    by_user: dict[str, Reservation | Denial]

    @property
    def failed(self) -> bool:
        return self.answer_status == "failed"

    @property
    def granted(self) -> int:
        return sum(isinstance(r, Reservation) for r in self.by_user.values())


class GptBudget:
    def __init__(self, rpc: RpcPort) -> None:
        self._rpc = rpc

    def reserve(self, answer_id: str, requests: Sequence[tuple[str, str | None]]
                ) -> Reservations:
        """(user id, scan job id) pairs, distinct users, at most 1000."""
        answer: dict[str, Any] = self._rpc.call("reserve_gpt_budgets", {
            "p_oracle_answer_id": answer_id,
            "p_requests": [{"user_id": user, "scan_job_id": job} for user, job in requests]})
        by_user: dict[str, Reservation | Denial] = {}
        for row in answer.get("results", []):
            user = str(row["user_id"])
            if row.get("allowed"):
                by_user[user] = Reservation(str(row["reservation_id"]), row["reserved_usd"])
            else:
                by_user[user] = Denial(reason=str(row.get("reason")),
                                       worst_case_usd=row.get("worst_case_usd"),
                                       spent_hour_usd=row.get("spent_hour_usd"),
                                       spent_day_usd=row.get("spent_day_usd"),
                                       hourly_limit_usd=row.get("hourly_limit_usd"),
                                       daily_limit_usd=row.get("daily_limit_usd"))
        return Reservations(answer_id, str(answer.get("answer_status")), by_user)

    def record(self, answer_id: str, worker_id: str, *, answer: dict[str, Any] | None,
               bill: Usage | None, request_id: str | None, failure: str | None
               ) -> dict[str, Any]:
        """The call's outcome and bill (None: unknown whether billed) on its answer."""
        result: dict[str, Any] = self._rpc.call("record_oracle_answer", {
            "p_answer_id": answer_id, "p_worker_id": worker_id,
            "p_status": "answered" if answer is not None else "failed",
            "p_answer": answer,
            "p_prompt_tokens": None if bill is None else bill.prompt_tokens,
            "p_cached_prompt_tokens": None if bill is None else bill.cached_prompt_tokens,
            "p_completion_tokens": None if bill is None else bill.completion_tokens,
            "p_request_id": request_id[:200] if request_id else None,
            "p_failure": failure[:500] if failure else None})
        return result

    def settle(self, answer_ids: Sequence[str]) -> list[dict[str, Any]]:
        """Split each answer's recorded bill among its reservations (idempotent)."""
        if not answer_ids:
            return []
        result: dict[str, Any] = self._rpc.call("settle_oracle_answers",
                                                {"p_answer_ids": list(answer_ids)})
        return list(result.get("results", []))
