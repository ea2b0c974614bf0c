"""A tick's oracle answers: one per market snapshot, shared by every job that reads that snapshot.

    book = AnswerBook(rpc, oracle, worker_id, settings, log, time_left)   # one per tick
    book.answers(snapshot, askers) -> {job_id: Shared(answer, answer_id)}
    book.settle()                                                          # at the tick's end

Each answer has a row in private.oracle_answers under its key (oracle.py's AnswerKey with the
market and interval), so the answer is computed once per snapshot per tick, and concurrent ticks
that read the same snapshot share one row:

- rules: the answer is computed here and stored (claim_oracle_answer with the answer; free).
- openai: claim_oracle_answer gives this tick the call, or names another tick's call in progress,
  or its answer. Every asking user reserves the call's worst case (reserve_gpt_budgets, G7: a
  denied user gets `BudgetDenied`, no proposal); the call is made once, only if some user was
  granted, and its outcome and bill recorded (record_oracle_answer). Later batches of the tick
  reserve for the same answer and use it. At the tick's end `settle` splits each bill among all
  the reservations that used it (settle_oracle_answers).

A call that fails is not repeated within the tick (its jobs fail and back off); a call that would
not fit before the tick's hard deadline is not started (`NoTimeLeft`: its jobs are given back).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from shared.api.steplog import StepLog
from shared.rpc.port import RpcPort
from shared.scanning.budget import NO_TOKENS, Denial, GptBudget, Reservations
from shared.scanning.marketdata import MarketSnapshot
from shared.scanning.oracle import (
    Answer,
    AnswerKey,
    BudgetDenied,
    OracleAnswer,
    OracleUnavailable,
    answer_from_json,
    answer_json,
)
from shared.scanning.rules import RulesOracle

if TYPE_CHECKING:  # ORACLE=rules never loads the OpenAI SDK
    from shared.scanning.gpt import OpenAIOracle

# How long a claim to make a call holds beyond the call's own timeout (claim → reserve → call →
# record), and how often a tick waiting for another tick's call asks again.
CLAIM_MARGIN_SECONDS = 30
WAIT_POLL_SECONDS = 0.25


class NoTimeLeft(Exception):
    """The call would not end before the tick's hard deadline: its jobs did not run."""


@dataclass(frozen=True)
class Asker:
    job_id: str
    user_id: str


@dataclass(frozen=True)
class Shared:
    answer: OracleAnswer
    answer_id: str | None


@dataclass
class _Entry:
    lock: threading.Lock = field(default_factory=threading.Lock)
    answer_id: str | None = None
    answer: Answer | None = None
    failure: str | None = None


class AnswerBook:
    def __init__(self, rpc: RpcPort, oracle: RulesOracle | OpenAIOracle, worker_id: str,
                 log: StepLog, time_left: Callable[[], float], *,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.rpc = rpc
        self.oracle = oracle
        self.worker_id = worker_id
        self.log = log
        self.time_left = time_left
        self.sleep = sleep
        self.budget = GptBudget(rpc)
        self.model_calls = 0
        self.answer_ids: set[str] = set()
        self._called: list[str] = []  # answers whose call this tick made (it settles them)
        self._entries: dict[tuple[str, str, AnswerKey], _Entry] = {}
        self._lock = threading.Lock()

    def answers(self, snapshot: MarketSnapshot, askers: Sequence[Asker]) -> dict[str, Shared]:
        key = self.oracle.key(snapshot)
        with self._lock:
            entry = self._entries.setdefault((snapshot.market, snapshot.interval, key), _Entry())
        with entry.lock:  # one snapshot's answer is worked out once, batch after batch
            if isinstance(self.oracle, RulesOracle):
                return self._rules(self.oracle, snapshot, key, entry, askers)
            return self._model(self.oracle, snapshot, key, entry, askers)

    def settle(self) -> list[dict[str, Any]]:
        """Split the bills of the calls this tick made among their reservations."""
        with self.log.step("settle", answers=len(self._called)) as step:
            results = self.budget.settle(self._called)
            step.set(shared_by=[r.get("shared_by") for r in results],
                     cost_usd=[r.get("cost_usd") for r in results],
                     status=[r.get("status") for r in results])
        return results

    # -- rules: free, computed here, stored for the record -------------------------------------
    def _rules(self, oracle: RulesOracle, snapshot: MarketSnapshot, key: AnswerKey,
               entry: _Entry, askers: Sequence[Asker]) -> dict[str, Shared]:
        if entry.answer is None:
            with self.log.step("oracle", source="rules", market=snapshot.market,
                               digest=key.digest[:16]) as step:
                decided = oracle.decide(snapshot)
                row = self._claim(snapshot, key, answer_json(decided))
                entry.answer_id = str(row["answer_id"])
                entry.answer = answer_from_json(row["answer"])
                self.answer_ids.add(entry.answer_id)
                step.set(type(entry.answer).__name__, answer_id=entry.answer_id)
        return {a.job_id: Shared(entry.answer, entry.answer_id) for a in askers}

    # -- a model: reserve per user, one call, the bill recorded --------------------------------
    def _model(self, oracle: OpenAIOracle, snapshot: MarketSnapshot, key: AnswerKey,
               entry: _Entry, askers: Sequence[Asker]) -> dict[str, Shared]:
        if entry.failure is not None:
            raise OracleUnavailable(entry.failure)
        if entry.answer is not None and entry.answer_id is not None:
            granted = self._reserve(entry.answer_id, askers, snapshot)
            if granted.failed:
                raise OracleUnavailable("the shared answer failed")
            return self._shares(entry.answer, entry.answer_id, granted, askers)

        reserved: Reservations | None = None
        while True:
            if self.time_left() < oracle.timeout:
                raise NoTimeLeft("not enough time left in this tick for a model call")
            row = self._claim(snapshot, key, None,
                              claim_seconds=int(oracle.timeout) + CLAIM_MARGIN_SECONDS)
            answer_id = str(row["answer_id"])
            self.answer_ids.add(answer_id)
            if row["outcome"] == "answered":
                entry.answer_id, entry.answer = answer_id, answer_from_json(row["answer"])
                if reserved is None or reserved.answer_id != answer_id:
                    return self._model(oracle, snapshot, key, entry, askers)
                return self._shares(entry.answer, answer_id, reserved, askers)
            if reserved is None or reserved.answer_id != answer_id:
                reserved = self._reserve(answer_id, askers, snapshot)
                if reserved.failed:
                    continue  # that call failed meanwhile: the key is free, claim it anew
            if row["outcome"] == "pending":
                # Another tick is making this call; our users hold their reservations for it.
                self.sleep(WAIT_POLL_SECONDS)
                continue
            if reserved.granted == 0:
                # Nobody here may pay for the call: it is not made, and the claim is given up
                # (nothing billed: a zero bill, which also releases the reservations other ticks
                # made while waiting for it), so users who may pay can claim the key again.
                self.budget.record(answer_id, self.worker_id, answer=None, bill=NO_TOKENS,
                                   request_id=None,
                                   failure="no user's GPT budget allowed the call")
                return self._shares(None, answer_id, reserved, askers)
            call = oracle.call(snapshot, key, answer_id, self.log)
            self.model_calls += 1
            self._called.append(answer_id)
            self.budget.record(answer_id, self.worker_id,
                               answer=None if call.answer is None else answer_json(call.answer),
                               bill=call.bill, request_id=call.request_id, failure=call.failure)
            if call.answer is None:
                entry.failure = call.failure or "the model call failed"
                raise OracleUnavailable(entry.failure)
            entry.answer_id, entry.answer = answer_id, call.answer
            return self._shares(call.answer, answer_id, reserved, askers)

    def _claim(self, snapshot: MarketSnapshot, key: AnswerKey, answer: dict[str, Any] | None,
               *, claim_seconds: int = 1) -> dict[str, Any]:
        row: dict[str, Any] = self.rpc.call("claim_oracle_answer", {
            "p_worker_id": self.worker_id, "p_market": snapshot.market,
            "p_candle_interval": snapshot.interval, "p_input_digest": key.digest,
            "p_oracle": key.oracle, "p_model": key.model,
            "p_prompt_version": key.prompt_version, "p_schema_version": key.schema_version,
            "p_max_prompt_tokens": key.max_prompt_tokens,
            "p_max_completion_tokens": key.max_completion_tokens,
            "p_claim_seconds": claim_seconds, "p_answer": answer})
        return row

    def _reserve(self, answer_id: str, askers: Sequence[Asker], snapshot: MarketSnapshot
                 ) -> Reservations:
        with self.log.step("reserve", answer_id=answer_id, market=snapshot.market,
                           users=len(askers)) as step:
            granted = self.budget.reserve(answer_id, [(a.user_id, a.job_id) for a in askers])
            denied = [d.reason for d in granted.by_user.values() if isinstance(d, Denial)]
            step.set(granted.answer_status, granted=granted.granted, denied=len(denied),
                     reasons=sorted(set(denied)))
        return granted

    @staticmethod
    def _shares(answer: Answer | None, answer_id: str, granted: Reservations,
                askers: Sequence[Asker]) -> dict[str, Shared]:
        shared: dict[str, Shared] = {}
        for asker in askers:
            reservation = granted.by_user.get(asker.user_id)
            if isinstance(reservation, Denial) or reservation is None:
                reason = reservation.reason if isinstance(reservation, Denial) else "not reserved"
                shared[asker.job_id] = Shared(BudgetDenied(reason), answer_id)
            elif answer is not None:
                shared[asker.job_id] = Shared(answer, answer_id)
        return shared
