"""The `rules` oracle (ORACLE=rules, the default): free, deterministic, explainable.

A trend signal with a momentum filter, on the candles' closes (Decimal arithmetic throughout):

- trend: the fast EMA (RULES_FAST_EMA, 12) against the slow EMA (RULES_SLOW_EMA, 26). The fast
  one at least RULES_MIN_TREND_PCT (0.10 %) above the slow one is an uptrend → buy; as far below,
  a downtrend → sell; closer than that, no signal.
- momentum filter: Wilder's RSI (RULES_RSI_PERIOD, 14). No buy at or above RULES_RSI_OVERBOUGHT
  (70) — the move is stretched, we do not chase it; no sell at or below RULES_RSI_OVERSOLD (30).
- confidence = 0.50 + 0.30 × trend strength + 0.15 × momentum agreement, in [0.50, 0.95]:
  trend strength is the EMA gap as a share of 2 % (capped at 1); momentum agreement is how far the
  RSI sits on the trend's side of 50, as a share of the distance to the overbought (buy) or
  oversold (sell) line (0 when it sits on the other side). Rounded down to 0.01.

The rationale states every number the decision used, so a person can check it against a chart,
and how many of the candles were intervals without trades (filled forward: marketdata.py).

The answer depends on the snapshot alone, so it is computed once per snapshot (`key` names it) and
shared by every user scanning that market.
"""

from __future__ import annotations

from collections.abc import Sequence
from decimal import ROUND_DOWN, Decimal
from typing import Literal

from shared.scanning.marketdata import MarketSnapshot
from shared.scanning.oracle import AnswerKey, NoSignal, Signal, digest
from shared.scanning.settings import ScannerSettings

# Part of every answer's key: bump it when the rules or their rationale change.
RULES_VERSION = "rules-1"

ONE = Decimal(1)
HUNDRED = Decimal(100)
FIFTY = Decimal(50)
FULL_TREND_PCT = Decimal(2)
BASE_CONFIDENCE = Decimal("0.50")
TREND_WEIGHT = Decimal("0.30")
MOMENTUM_WEIGHT = Decimal("0.15")


def ema(values: Sequence[Decimal], period: int) -> Decimal:
    """Exponential moving average of `values` (oldest first), seeded with the first period's SMA."""
    if period < 1 or len(values) < period:
        raise ValueError(f"an EMA of {period} needs at least {period} values, got {len(values)}")
    k = Decimal(2) / Decimal(period + 1)
    average = sum(values[:period], Decimal(0)) / Decimal(period)
    for value in values[period:]:
        average += (value - average) * k
    return average


def rsi(values: Sequence[Decimal], period: int) -> Decimal:
    """Wilder's relative strength index of `values` (oldest first), 0..100."""
    if period < 1 or len(values) < period + 1:
        raise ValueError(f"an RSI of {period} needs at least {period + 1} values, "
                         f"got {len(values)}")
    changes = [b - a for a, b in zip(values, values[1:], strict=False)]
    gain = sum((c for c in changes[:period] if c > 0), Decimal(0)) / period
    loss = sum((-c for c in changes[:period] if c < 0), Decimal(0)) / period
    for change in changes[period:]:
        gain = (gain * (period - 1) + max(change, Decimal(0))) / period
        loss = (loss * (period - 1) + max(-change, Decimal(0))) / period
    if loss == 0:
        return HUNDRED if gain > 0 else FIFTY
    return HUNDRED - HUNDRED / (ONE + gain / loss)


def _clamp(value: Decimal) -> Decimal:
    return max(Decimal(0), min(ONE, value))


def _num(value: Decimal, places: int = 2) -> str:
    return f"{value.quantize(Decimal(1).scaleb(-places)):,}"


def _price(value: Decimal) -> str:
    return f"{value.normalize():,f}"


class RulesOracle:
    source: Literal["rules"] = "rules"
    model: None = None

    def __init__(self, settings: ScannerSettings) -> None:
        self.fast = settings.rules_fast_ema
        self.slow = settings.rules_slow_ema
        self.rsi_period = settings.rules_rsi_period
        self.min_trend_pct = settings.rules_min_trend_pct
        self.overbought = settings.rules_rsi_overbought
        self.oversold = settings.rules_rsi_oversold

    def key(self, snapshot: MarketSnapshot) -> AnswerKey:
        seen = {"market": snapshot.market, "interval": snapshot.interval,
                "closes": snapshot.closes, "filled": snapshot.filled, "price": snapshot.price,
                "parameters": [self.fast, self.slow, self.rsi_period, self.min_trend_pct,
                               self.overbought, self.oversold]}
        return AnswerKey(oracle="rules", model="", prompt_version=RULES_VERSION,
                         schema_version=RULES_VERSION, max_prompt_tokens=0,
                         max_completion_tokens=0, digest=digest(seen))

    def decide(self, snapshot: MarketSnapshot) -> Signal | NoSignal:
        closes = snapshot.closes
        needed = max(self.slow, self.rsi_period + 1)
        if len(closes) < needed:
            return NoSignal(f"only {len(closes)} {snapshot.interval} candles for "
                            f"{snapshot.market}; the rules need {needed}")
        fast, slow = ema(closes, self.fast), ema(closes, self.slow)
        strength = rsi(closes, self.rsi_period)
        gap_pct = (fast - slow) / slow * HUNDRED
        gaps = (f" ({snapshot.gaps} without trades, filled forward)" if snapshot.gaps else "")
        head = (f"{snapshot.market} on {len(closes)} {snapshot.interval} candles{gaps}: "
                f"EMA{self.fast} {_num(fast)} is {_num(abs(gap_pct))} % "
                f"{'above' if gap_pct >= 0 else 'below'} EMA{self.slow} {_num(slow)}")
        rsi_text = f"RSI{self.rsi_period} {_num(strength, 1)}"
        price = f"Last price {_price(snapshot.price)}."

        if abs(gap_pct) < self.min_trend_pct:
            return NoSignal(f"{head}, less than the {self.min_trend_pct} % a trend needs; "
                            f"{rsi_text}. No signal.")
        if gap_pct > 0:
            if strength >= self.overbought:
                return NoSignal(f"{head} (uptrend), but {rsi_text} is at or above "
                                f"{self.overbought} (overbought): not buying into a stretched "
                                "move. No signal.")
            side: Literal["buy", "sell"] = "buy"
            momentum = _clamp((strength - FIFTY) / (self.overbought - FIFTY))
            filter_text = (f"{rsi_text} is below {self.overbought} (not overbought)"
                           + (" and above 50 (momentum up)" if strength > FIFTY
                              else ", though at or below 50 (momentum not confirming)"))
        else:
            if strength <= self.oversold:
                return NoSignal(f"{head} (downtrend), but {rsi_text} is at or below "
                                f"{self.oversold} (oversold): not selling into a stretched "
                                "move. No signal.")
            side = "sell"
            momentum = _clamp((FIFTY - strength) / (FIFTY - self.oversold))
            filter_text = (f"{rsi_text} is above {self.oversold} (not oversold)"
                           + (" and below 50 (momentum down)" if strength < FIFTY
                              else ", though at or above 50 (momentum not confirming)"))
        trend = _clamp(abs(gap_pct) / FULL_TREND_PCT)
        confidence = (BASE_CONFIDENCE + TREND_WEIGHT * trend + MOMENTUM_WEIGHT * momentum
                      ).quantize(Decimal("0.01"), rounding=ROUND_DOWN)
        rationale = (f"{head} ({'uptrend' if side == 'buy' else 'downtrend'}); {filter_text}. "
                     f"{price} Signal: {side}, confidence {confidence} = 0.50 + 0.30 × trend "
                     f"{_num(trend)} + 0.15 × momentum {_num(momentum)}.")
        return Signal(side=side, confidence=confidence, rationale=rationale)
