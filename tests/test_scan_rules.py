"""The rules oracle (shared/scanning/rules.py) and the sizing rule (sizing.py), on fixed data.

Fixed candle series: a steady uptrend with pullbacks (buy), its mirror (sell), a flat market and
a tight range (no signal), a vertical rally (no buy: overbought) and a crash (no sell: oversold).
The indicators are checked against values worked out by hand; the rationale must carry every
number the decision used.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from shared.exchange.models import Candle
from shared.scanning.marketdata import MarketSnapshot
from shared.scanning.oracle import NoSignal, Signal
from shared.scanning.rules import RulesOracle, ema, rsi
from shared.scanning.settings import ScannerSettings
from shared.scanning.sizing import order_room

START = datetime(2026, 11, 1, tzinfo=UTC)


def snapshot(closes: list[Decimal], market: str = "BTC-EUR") -> MarketSnapshot:
    candles = tuple(
        Candle(timestamp=START + timedelta(hours=i), open=c, high=c + 1, low=c - 1, close=c,
               volume=Decimal(1))
        for i, c in enumerate(closes))
    return MarketSnapshot(market=market, interval="1h", candles=candles, price=closes[-1])


def zigzag(start: int, step: int, up: int, down: int, n: int = 80) -> list[Decimal]:
    """A trend of `step` per candle: `up`-candle rises, then a one-candle pullback of `down`."""
    prices, price = [], Decimal(start)
    for i in range(n):
        price += Decimal(-down) if i % (up + 1) == up else Decimal(step)
        prices.append(price)
    return prices


UPTREND = zigzag(1000, 4, up=2, down=5)       # +8 −5 every 3 candles: trending up, RSI ≈ 62
DOWNTREND = [Decimal(2000) * 2 - p for p in UPTREND]  # its mirror image
FLAT = [Decimal(1000)] * 80
RANGE = [Decimal(1000 + (3 if i % 2 else -3)) for i in range(80)]
RALLY = [Decimal(1000 + 10 * i) for i in range(80)]   # straight up: RSI 100
CRASH = [Decimal(2000 - 10 * i) for i in range(80)]   # straight down: RSI 0


@pytest.fixture
def oracle() -> RulesOracle:
    return RulesOracle(ScannerSettings())


def test_ema_and_rsi_match_hand_computed_values() -> None:
    values = [Decimal(v) for v in (1, 2, 3, 4, 5)]
    # EMA3: seed (1+2+3)/3 = 2; then 2 + (4−2)/2 = 3; then 3 + (5−3)/2 = 4.
    assert ema(values, 3) == Decimal(4)
    # RSI2 of 1,2,1,2,1: first gains (1+0)/2, losses (0+1)/2; then Wilder smoothing →
    # gain (0.5+1)/2 = 0.75, loss 0.25 → after the last fall gain 0.375, loss 0.625 → RSI 37.5.
    assert rsi([Decimal(v) for v in (1, 2, 1, 2, 1)], 2) == Decimal("37.5")
    assert rsi(RALLY, 14) == 100 and rsi(CRASH, 14) == 0 and rsi(FLAT, 14) == 50
    with pytest.raises(ValueError):
        ema(values, 6)


def test_uptrend_with_momentum_is_a_buy_with_every_number_in_the_rationale(
        oracle: RulesOracle) -> None:
    answer = oracle.decide(snapshot(UPTREND))
    assert isinstance(answer, Signal) and answer.side == "buy"
    fast, slow, strength = ema(UPTREND, 12), ema(UPTREND, 26), rsi(UPTREND, 14)
    assert 50 < strength < 70 and fast > slow
    assert Decimal("0.50") <= answer.confidence <= Decimal("0.95")
    assert answer.confidence == oracle.decide(snapshot(UPTREND)).confidence  # deterministic
    for text in ("EMA12", "EMA26", "above", "uptrend", "RSI14", f"{strength:.1f}",
                 "not overbought", "Signal: buy", str(answer.confidence), "Last price"):
        assert text in answer.rationale, text


def test_downtrend_with_momentum_is_a_sell(oracle: RulesOracle) -> None:
    answer = oracle.decide(snapshot(DOWNTREND))
    assert isinstance(answer, Signal) and answer.side == "sell"
    assert "below EMA26" in answer.rationale and "downtrend" in answer.rationale
    # The mirror image of the buy: the same momentum agreement (the RSI mirrors around 50).
    assert "momentum 0.71" in answer.rationale and "momentum 0.71" in oracle.decide(
        snapshot(UPTREND)).rationale  # type: ignore[union-attr]
    assert Decimal("0.50") <= answer.confidence <= Decimal("0.95")


@pytest.mark.parametrize(("series", "why"), [
    (FLAT, "less than the 0.10 % a trend needs"),
    (RANGE, "less than the 0.10 % a trend needs"),
    (RALLY, "overbought"),
    (CRASH, "oversold"),
])
def test_no_signal(oracle: RulesOracle, series: list[Decimal], why: str) -> None:
    answer = oracle.decide(snapshot(series))
    assert isinstance(answer, NoSignal)
    assert why in answer.reason and "No signal." in answer.reason


def test_too_few_candles_is_no_signal(oracle: RulesOracle) -> None:
    answer = oracle.decide(snapshot(UPTREND[:20]))
    assert isinstance(answer, NoSignal) and "only 20 1h candles" in answer.reason


def test_the_filter_thresholds_are_settings() -> None:
    loose = RulesOracle(ScannerSettings(rules_min_trend_pct=Decimal(0),
                                        rules_rsi_overbought=Decimal(100),
                                        rules_rsi_oversold=Decimal(0)))
    assert isinstance(loose.decide(snapshot(RANGE)), Signal)      # any EMA gap is a trend
    assert isinstance(loose.decide(snapshot(RALLY)), NoSignal)    # RSI 100 is still ≥ 100
    strict = RulesOracle(ScannerSettings(rules_min_trend_pct=Decimal(50)))
    assert isinstance(strict.decide(snapshot(UPTREND)), NoSignal)


# -- sizing ---------------------------------------------------------------------------------------
def sizing(**overrides: object) -> dict[str, object]:
    base: dict[str, object] = {"mode": "paper", "min_order_quote": Decimal(5),
                               "max_order_quote": Decimal(50),
                               "max_order_source": "your max_order_quote",
                               "daily_remaining_quote": Decimal(200), "trades_left_today": 10}
    base.update(overrides)
    return base


def test_sizing_is_the_largest_order_the_limits_allow() -> None:
    room = order_room(sizing())
    assert room.amount_quote == Decimal("50.00") and "your max_order_quote" in room.reason
    room = order_room(sizing(daily_remaining_quote=Decimal("12.349")))
    assert room.amount_quote == Decimal("12.34") and "max_daily_quote" in room.reason


@pytest.mark.parametrize(("overrides", "why"), [
    ({"daily_remaining_quote": Decimal("4.99")}, "below the market minimum"),
    ({"max_order_quote": Decimal(3)}, "below the market minimum"),
    ({"trades_left_today": 0}, "max_trades_per_day"),
    ({"max_order_quote": None}, "no maximum order size"),
    ({"min_order_quote": None}, "not in the global allowlist"),
])
def test_no_room_means_no_proposal(overrides: dict[str, object], why: str) -> None:
    room = order_room(sizing(**overrides))
    assert not room.has_room and room.amount_quote is None and why in room.reason
