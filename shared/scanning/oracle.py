"""The oracle interface: one question per scan job, one of four answers.

    oracle.decide(OracleRequest) -> Signal | NoSignal | Unusable | BudgetDenied

- `Signal`: buy or sell, a confidence in [0, 1] and a rationale a person can read. The scan then
  proposes an order of the size sizing.py computed (oracles never size orders).
- `NoSignal`: nothing to do, and why.
- `Unusable`: a model answered, but the answer cannot be used (malformed, refused, cut off by
  the completion cap). No proposal; the call was still billed and settled.
- `BudgetDenied`: reserve_gpt_budget said no (G7); the model was not called.

A failure to get any answer (a provider HTTP error, a timeout) raises `OracleUnavailable`; the job
fails and the scheduler backs it off.

`ORACLE` picks the implementation: `rules` (shared/scanning/rules.py, the default: free,
deterministic, explainable) or `openai` (shared/scanning/gpt.py: the official SDK within the
user's GPT budget).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Literal, Protocol

from shared.api.steplog import StepLog
from shared.scanning.marketdata import MarketSnapshot
from shared.scanning.sizing import OrderRoom

Side = Literal["buy", "sell"]


@dataclass(frozen=True)
class OracleRequest:
    job_id: str
    user_id: str
    market: str
    snapshot: MarketSnapshot
    room: OrderRoom
    log: StepLog
    # Seconds a model call may still take before the tick's hard deadline (None: no limit).
    time_left: Callable[[], float] = field(default=lambda: float("inf"))


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


OracleAnswer = Signal | NoSignal | Unusable | BudgetDenied


class OracleUnavailable(Exception):
    """No answer was obtained (provider error, timeout, not enough time left). The job fails."""


class Oracle(Protocol):
    @property
    def source(self) -> Literal["rules", "openai"]:  # trade_proposals.source
        ...

    @property
    def model(self) -> str | None:  # trade_proposals.model
        ...

    def decide(self, request: OracleRequest) -> OracleAnswer: ...
