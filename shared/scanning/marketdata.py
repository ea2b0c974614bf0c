"""Market data for a tick: read once, shared by every job that scans the market (G3: read-only).

    data = MarketData(client, interval, limit)     # one per tick
    data.snapshot("BTC-EUR") -> MarketSnapshot      # the first caller reads, the others wait for it

What a tick sends, whatever the number of users: one `GET /ticker/price` without a market (all
prices, weight 1) and one `GET /{market}/candles` per market — at most markets + 1 weight points.
Concurrent callers for one market wait for the first one's answer (single flight); the answer, or
the error, is kept for the rest of the tick. `BitvavoReadonly` is the only client: it signs with the
optional read-only key or sends public requests, and refuses every order method. Nothing here
retries: an exchange error fails the jobs of that market (a rate-limit refusal is handled by the
tick: it stops and gives its unstarted jobs back, not a failure).

Gaps. Bitvavo sends no candle for an interval without trades. A gap is kept visible as a gap: the
series is laid on the interval's grid up to the current interval, and each missing interval is
filled forward — open = high = low = close = the previous close, volume 0 — and marked
(`MarketSnapshot.filled`). Both oracles see that series; past `max_gap_pct` filled candles the
snapshot is `insufficient` and no oracle is asked (oracle.py). Monthly candles (`1M`) have no fixed
length and are taken as they come.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from shared.exchange.errors import ExchangeError, MalformedResponse
from shared.exchange.models import Candle, TickerPrice
from shared.exchange.readonly import BitvavoReadonly

# Interval lengths; Bitvavo's weeks start on Monday (the Unix epoch was a Thursday).
INTERVAL_SECONDS = {
    "1m": 60, "5m": 300, "15m": 900, "30m": 1800, "1h": 3600, "2h": 7200, "4h": 14400,
    "6h": 21600, "8h": 28800, "12h": 43200, "1d": 86400, "1W": 604800,
}
_WEEK_SHIFT_SECONDS = 4 * 86400


@dataclass(frozen=True)
class MarketSnapshot:
    market: str
    interval: str
    candles: tuple[Candle, ...]  # oldest first, on the interval's grid
    price: Decimal  # the last traded price (GET /ticker/price)
    filled: tuple[bool, ...] = ()  # per candle: an interval without trades, filled forward

    @property
    def closes(self) -> list[Decimal]:
        return [c.close for c in self.candles]

    @property
    def as_of(self) -> datetime | None:
        return self.candles[-1].timestamp if self.candles else None

    @property
    def gaps(self) -> int:
        return sum(self.filled)

    def is_filled(self, index: int) -> bool:
        return bool(self.filled) and self.filled[index]

    def insufficient(self, max_gap_pct: Decimal) -> str | None:
        """Why this snapshot is too thin to decide on, or None."""
        if not self.candles:
            return f"insufficient data: no {self.interval} candles for {self.market}"
        if Decimal(self.gaps) * 100 > max_gap_pct * len(self.candles):
            return (f"insufficient data: {self.gaps} of the last {len(self.candles)} "
                    f"{self.interval} candles of {self.market} had no trades (more than "
                    f"{max_gap_pct} %)")
        return None


def bucket_start(moment: datetime, interval: str) -> datetime:
    """The start of the `interval` candle that holds `moment`."""
    size = INTERVAL_SECONDS[interval]
    shift = _WEEK_SHIFT_SECONDS if interval == "1W" else 0
    seconds = int(moment.timestamp())
    return datetime.fromtimestamp((seconds - shift) // size * size + shift, UTC)


def on_grid(rows: list[Candle], interval: str, limit: int, now: datetime
            ) -> tuple[tuple[Candle, ...], tuple[bool, ...]]:
    """The last `limit` intervals up to the one holding `now` (or the newest candle, if the
    exchange's clock is ahead), oldest first; intervals without a candle filled forward from the
    previous close with volume 0 and marked. Intervals before the first candle stay out: there is
    nothing to fill them from."""
    ordered = sorted(rows, key=lambda c: c.timestamp)
    if interval not in INTERVAL_SECONDS or not ordered:
        return tuple(ordered[-limit:]), tuple(False for _ in ordered[-limit:])
    step = timedelta(seconds=INTERVAL_SECONDS[interval])
    by_start = {c.timestamp: c for c in ordered}
    last = max(bucket_start(now, interval), ordered[-1].timestamp)
    first = max(ordered[0].timestamp, last - step * (limit - 1))
    candles: list[Candle] = []
    filled: list[bool] = []
    previous = next((c for c in reversed(ordered) if c.timestamp < first), None)
    moment = first
    while moment <= last:
        candle = by_start.get(moment)
        if candle is None and previous is not None:
            close = previous.close
            candle = Candle(timestamp=moment, open=close, high=close, low=close, close=close,
                            volume=Decimal(0))
            filled.append(True)
        elif candle is not None:
            filled.append(False)
        if candle is not None:
            candles.append(candle)
            previous = candle
        moment += step
    return tuple(candles), tuple(filled)


_Candles = tuple[tuple[Candle, ...], tuple[bool, ...]]


class _Flight:
    """One read in progress or done: the first caller reads, later callers wait for it."""

    def __init__(self) -> None:
        self.done = threading.Event()
        self.value: _Candles | list[TickerPrice] | None = None
        self.error: BaseException | None = None


class MarketData:
    """A tick's market data: all prices once, each market's candles once (see the module doc)."""

    PRICES = "GET /ticker/price"  # the key of the all-prices read

    def __init__(self, client: BitvavoReadonly, interval: str, limit: int, *,
                 clock: Callable[[], float] = time.time) -> None:
        self.client = client
        self.interval = interval
        self.limit = limit
        self.clock = clock
        self.requests = 0  # sent to the exchange (each of weight 1)
        self._flights: dict[str, _Flight] = {}
        self._lock = threading.Lock()
        self._refused: ExchangeError | None = None

    def refuse(self, error: ExchangeError) -> None:
        """Send nothing more in this tick (a rate-limit stop): every later read raises `error`."""
        with self._lock:
            self._refused = self._refused or error

    def snapshot(self, market: str) -> MarketSnapshot:
        # Candles first: a market the exchange does not know fails with the exchange's own error.
        candles = self._once(market, lambda: self._read_candles(market))
        prices = self._once(self.PRICES, self._read_prices)
        assert isinstance(candles, tuple) and isinstance(prices, list)
        price = next((p.price for p in prices if p.market == market), None)
        if price is None or price <= 0:
            raise MalformedResponse(f"no price for {market}", endpoint=self.PRICES)
        rows, filled = candles
        return MarketSnapshot(market=market, interval=self.interval, candles=rows, price=price,
                              filled=filled)

    def _once(self, key: str, read: Callable[[], _Candles | list[TickerPrice]]
              ) -> _Candles | list[TickerPrice]:
        with self._lock:
            flight = self._flights.get(key)
            first = flight is None
            if flight is None:
                flight = self._flights[key] = _Flight()
            refused = self._refused
        if first:
            try:
                if refused is not None:
                    raise refused
                flight.value = read()
            except BaseException as exc:
                flight.error = exc
            finally:
                flight.done.set()
        flight.done.wait()
        if flight.error is not None:
            raise flight.error
        assert flight.value is not None
        return flight.value

    def _read_prices(self) -> list[TickerPrice]:
        self.requests += 1
        return self.client.ticker_price()

    def _read_candles(self, market: str) -> _Candles:
        self.requests += 1
        rows = self.client.candles(market, self.interval, limit=self.limit)  # newest first
        return on_grid(rows, self.interval, self.limit, datetime.fromtimestamp(self.clock(), UTC))
