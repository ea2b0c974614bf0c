"""The oracle interface: one answer per market snapshot, one of four kinds.

An oracle sees a market snapshot and nothing about any user, so one answer serves every user
whose scan read that snapshot (answers.py shares it); each user's proposal then follows from that
answer and the user's own settings and order room (tick.py).

- `Signal`: buy or sell, a confidence in [0, 1] and a rationale a person can read. The scan then
  proposes an order of the size sizing.py computed (oracles never size orders).
- `NoSignal`: nothing to do, and why.
- `Unusable`: a model answered, but the answer cannot be used (malformed, refused, cut off by
  the completion cap). No proposal; the call was still billed and its bill split.
- `BudgetDenied`: reserve_gpt_budget's rule said no to this user (G7): no proposal for them.

`ORACLE` picks the implementation: `rules` (shared/scanning/rules.py, the default: free,
deterministic, explainable) or `openai` (shared/scanning/gpt.py: the official SDK, within each
user's GPT budget). Each names its answers by an `AnswerKey`: everything the answer depends on,
with a SHA-256 digest of exactly what the oracle sees — the key of private.oracle_answers, so
concurrent ticks that read the same snapshot make one call.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Literal, Protocol

from shared.scanning.marketdata import MarketSnapshot

Side = Literal["buy", "sell"]


@dataclass(frozen=True)
class Signal:
    side: Side
    confidence: Decimal
    rationale: str


@dataclass(frozen=True)
class NoSignal:
    reason: str


@dataclass(frozen=True)
class Unusable:
    kind: Literal["malformed", "refusal", "truncated"]
    detail: str


@dataclass(frozen=True)
class BudgetDenied:
    reason: str


Answer = Signal | NoSignal | Unusable
OracleAnswer = Answer | BudgetDenied


class OracleUnavailable(Exception):
    """No answer was obtained (provider error, timeout). The jobs that needed it fail."""


@dataclass(frozen=True)
class AnswerKey:
    """What an answer depends on (private.oracle_answers' unique key, with the market and
    interval of the snapshot)."""

    oracle: Literal["rules", "openai"]
    model: str  # '' for the rules oracle
    prompt_version: str
    schema_version: str
    max_prompt_tokens: int  # the reservation's prompt bound (0: free)
    max_completion_tokens: int  # the completion cap sent (0: free)
    digest: str  # SHA-256 (hex) of exactly what the oracle sees


def digest(document: Any) -> str:
    """SHA-256 of a JSON document in one canonical form (sorted keys, no spaces, Decimals and
    datetimes as their text)."""
    text = json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def answer_json(answer: Answer) -> dict[str, Any]:
    """An answer as private.oracle_answers.answer stores it."""
    if isinstance(answer, Signal):
        return {"kind": "signal", "side": answer.side, "confidence": answer.confidence,
                "rationale": answer.rationale}
    if isinstance(answer, NoSignal):
        return {"kind": "no_signal", "reason": answer.reason}
    return {"kind": "unusable", "unusable": answer.kind, "detail": answer.detail}


def answer_from_json(stored: dict[str, Any]) -> Answer:
    """The answer answer_json stored (read back from the database, possibly another tick's)."""
    kind = stored.get("kind")
    if kind == "signal" and stored.get("side") in ("buy", "sell"):
        return Signal(side=stored["side"], confidence=Decimal(stored["confidence"]),
                      rationale=str(stored.get("rationale", "")))
    if kind == "no_signal":
        return NoSignal(str(stored.get("reason", "")))
    unusable = stored.get("unusable")
    return Unusable(unusable if unusable in ("malformed", "refusal", "truncated") else "malformed",
                    str(stored.get("detail", "the stored answer is not one this version reads")))


class Oracle(Protocol):
    @property
    def source(self) -> Literal["rules", "openai"]:  # trade_proposals.source
        ...

    @property
    def model(self) -> str | None:  # trade_proposals.model
        ...

    def key(self, snapshot: MarketSnapshot) -> AnswerKey: ...
