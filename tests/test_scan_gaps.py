"""Candle gaps (shared/scanning/marketdata.py): Bitvavo sends no candle for an interval without
trades. Both oracles must see a gap as a gap — the series laid on the interval's grid, each missing
interval filled forward from the previous close with volume 0 and marked — and past
CANDLE_MAX_GAP_PCT the snapshot is too thin: no signal, no oracle asked.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

from shared.exchange.models import Candle
from shared.exchange.readonly import BitvavoReadonly
from shared.scanning.gpt import GAP_MARK, OpenAIOracle, build_messages
from shared.scanning.marketdata import MarketData, MarketSnapshot, on_grid
from shared.scanning.oracle import NoSignal, Signal
from shared.scanning.rules import RulesOracle
from shared.scanning.settings import ScannerSettings
from tests.sandbox_server import SandboxServer
from tests.test_scan_rules import UPTREND

HOUR = timedelta(hours=1)
START = datetime(2026, 11, 1, tzinfo=UTC)
SETTINGS = ScannerSettings(oracle="openai", openai_api_key="sk-test-key-0123456789",
                           candle_limit=60)


def candle(at: datetime, close: Decimal, volume: Decimal = Decimal(1)) -> Candle:
    return Candle(timestamp=at, open=close, high=close + 1, low=close - 1, close=close,
                  volume=volume)


def gapped(closes: list[Decimal], missing: set[int]) -> list[Candle]:
    """Hourly candles from START, without the intervals in `missing`, newest first (Bitvavo)."""
    return [candle(START + i * HOUR, c) for i, c in enumerate(closes) if i not in missing][::-1]


def test_a_gap_is_filled_forward_with_volume_zero_and_marked() -> None:
    rows = gapped([Decimal(v) for v in (10, 11, 12, 13, 14)], missing={2})
    now = START + 6 * HOUR + timedelta(minutes=20)  # hours 5 and 6 have no candle yet

    candles, filled = on_grid(rows, "1h", 6, now)

    assert [c.timestamp for c in candles] == [START + i * HOUR for i in range(1, 7)]
    assert filled == (False, True, False, False, True, True)
    gap = candles[1]
    assert (gap.open, gap.high, gap.low, gap.close, gap.volume) == (
        Decimal(11), Decimal(11), Decimal(11), Decimal(11), Decimal(0))
    assert [c.close for c in candles] == [Decimal(v) for v in (11, 11, 13, 14, 14, 14)]
    # An exchange clock ahead of ours: its newest candle is the end of the grid.
    ahead, _ = on_grid(rows, "1h", 3, START)
    assert ahead[-1].timestamp == START + 4 * HOUR
    # Monthly candles have no fixed length: taken as they come.
    monthly, marks = on_grid(rows, "1M", 10, now)
    assert len(monthly) == 4 and marks == (False,) * 4


def test_past_the_threshold_a_snapshot_is_insufficient_data() -> None:
    rows = gapped(UPTREND[:60], missing=set(range(10, 22)))  # 12 of 60
    candles, filled = on_grid(rows, "1h", 60, START + 59 * HOUR)
    snapshot = MarketSnapshot("THIN-EUR", "1h", candles, UPTREND[59], filled)
    assert snapshot.gaps == 12
    assert snapshot.insufficient(Decimal(20)) is None
    why = snapshot.insufficient(Decimal(19))
    assert why == ("insufficient data: 12 of the last 60 1h candles of THIN-EUR had no trades "
                   "(more than 19 %)")
    assert MarketSnapshot("THIN-EUR", "1h", (), Decimal(1)).insufficient(Decimal(20))


def test_the_rules_oracle_sees_a_gap_as_a_gap() -> None:
    """What the rules compute on a gapped series is what they compute on the same series filled
    forward by hand; the rationale says how many candles had no trades; and a filled candle is
    not the same input as a traded one at the same price (the answer's key differs)."""
    oracle = RulesOracle(ScannerSettings())
    missing = {30, 31, 45}
    candles, filled = on_grid(gapped(UPTREND[:60], missing), "1h", 60, START + 59 * HOUR)
    with_gaps = MarketSnapshot("THIN-EUR", "1h", candles, UPTREND[59], filled)
    by_hand = [UPTREND[i - 1] if i in (30, 45) else UPTREND[29] if i == 31 else UPTREND[i]
               for i in range(60)]
    traded = MarketSnapshot("THIN-EUR", "1h",
                            tuple(candle(START + i * HOUR, c) for i, c in enumerate(by_hand)),
                            UPTREND[59])

    assert with_gaps.closes == by_hand
    seen, plain = oracle.decide(with_gaps), oracle.decide(traded)
    assert isinstance(seen, Signal) and isinstance(plain, Signal)
    assert (seen.side, seen.confidence) == (plain.side, plain.confidence)
    assert "60 1h candles (3 without trades, filled forward)" in seen.rationale
    assert "without trades" not in plain.rationale
    assert oracle.key(with_gaps) != oracle.key(traded)

    too_thin = MarketSnapshot("THIN-EUR", "1h", candles[:30] + candles[30:], UPTREND[59],
                              (True,) * 30 + filled[30:])
    assert too_thin.insufficient(ScannerSettings().candle_max_gap_pct) is not None
    assert isinstance(oracle.decide(MarketSnapshot("THIN-EUR", "1h", candles[:10],
                                                   UPTREND[59])), NoSignal)


def test_the_prompt_marks_every_gap_and_counts_them() -> None:
    missing = {50, 52, 59}
    candles, filled = on_grid(gapped(UPTREND[:60], missing), "1h", 60, START + 59 * HOUR)
    snapshot = MarketSnapshot("THIN-EUR", "1h", candles, UPTREND[58], filled)

    system, user = build_messages(snapshot, SETTINGS)

    assert f"'{GAP_MARK}'" in system["content"]
    lines = user["content"].splitlines()
    assert ("Intervals without trades: 3 of the last 60 (filled forward from the previous close, "
            f"volume 0, marked '{GAP_MARK}')") in lines
    rows = [line for line in lines if line.startswith("2026-")]
    marked = [line for line in rows if line.endswith(f",{GAP_MARK}")]
    assert len(marked) == 3
    assert marked[0].startswith(f"{START + 50 * HOUR:%Y-%m-%dT%H:%MZ},{UPTREND[49]}")
    assert marked[0].endswith(f",0,{GAP_MARK}")
    oracle = OpenAIOracle(SETTINGS)
    unmarked = MarketSnapshot("THIN-EUR", "1h", candles, UPTREND[58])
    assert oracle.key(snapshot).digest != oracle.key(unmarked).digest
    assert all(not line.endswith(GAP_MARK) for line in build_messages(unmarked, SETTINGS)[1]
               ["content"].splitlines())


def test_the_sandbox_thin_market_has_gaps_and_the_scanner_fills_them(
        bitvavo_sandbox: SandboxServer) -> None:
    client = BitvavoReadonly(bitvavo_sandbox.rest_url)
    try:
        raw = client.candles("THIN-EUR", "1h", limit=60)
        snapshot = MarketData(client, "1h", 60).snapshot("THIN-EUR")
        liquid = MarketData(client, "1h", 60).snapshot("BTC-EUR")
    finally:
        client.close()
    assert snapshot.gaps > 0 and liquid.gaps == 0
    stamps = [c.timestamp for c in snapshot.candles]
    assert all(b - a == HOUR for a, b in zip(stamps, stamps[1:], strict=False))
    assert len(stamps) == 60
    assert {c.timestamp for c in raw if c.timestamp >= stamps[0]} <= set(stamps)
    for index, c in enumerate(snapshot.candles):
        if snapshot.is_filled(index):
            assert c.volume == 0 and c.close == c.open == snapshot.candles[index - 1].close
            assert c.timestamp not in {r.timestamp for r in raw}
