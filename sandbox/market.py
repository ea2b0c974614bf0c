"""Market definitions and the deterministic, seeded price path behind every piece of market data.

The path is a function of (seed, market, minute) alone, so two sandboxes with the same seed show
the same prices at the same time, and any minute can be computed without replaying history:

    price(m) = base × (1 + Σ_levels interp(knot(level, m // span), knot(level, m // span + 1)))

Each level is piecewise-linear "value noise" with knots every `span` minutes whose heights come
from a hash of (seed, market, level, knot); amplitudes grow like sqrt(span), which gives the
look of a random walk (short wiggles on top of long trends) while staying within about ±15 % of
the base price. Everything is integer or Decimal arithmetic, rounded to the market's tickSize.

Minute m's candle runs from price(m-1) (open) to price(m) (close) with hashed wicks; the ticker,
the book and market-order fills use price(now) and a spread around it; resting limit orders fill
when a later minute's candle reaches their price (see matching.py). Resolution is one minute.

An illiquid market (`quiet_pct` > 0, THIN-EUR) has intervals without trades, as Bitvavo does: a
hashed `quiet_pct` % of its hours see no trade at all, and so does `quiet_pct` % of the minutes of
the other hours. Bitvavo sends no candle for an interval without trades, so its candles skip them
(and its public trades); its last price is the last minute that traded. The book and the 24-hour
ticker ignore the gaps.
"""

from __future__ import annotations

import calendar
import hashlib
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import ROUND_DOWN, ROUND_HALF_EVEN, Decimal
from functools import lru_cache

MINUTE_MS = 60_000


@dataclass(frozen=True)
class Market:
    market: str
    base: str
    quote: str
    base_price: Decimal  # centre of the price path
    tick_size: Decimal
    quantity_decimals: int
    notional_decimals: int
    min_base: Decimal
    min_quote: Decimal
    volume_unit: Decimal  # typical base volume traded per minute
    max_open_orders: int = 100
    quiet_pct: int = 0  # hours, and minutes of the other hours, without a trade (module doc)

    def listing(self) -> dict[str, object]:
        """The `/markets` row, with Bitvavo's field names and string/number types."""
        return {
            "market": self.market,
            "status": "trading",
            "base": self.base,
            "quote": self.quote,
            "pricePrecision": None,  # always null since Bitvavo v2.12.0 (tickSize replaced it)
            "minOrderInBaseAsset": str(self.min_base),
            "minOrderInQuoteAsset": str(self.min_quote),
            "maxOrderInBaseAsset": "1000000000",
            "maxOrderInQuoteAsset": "1000000000",
            "quantityDecimals": self.quantity_decimals,
            "notionalDecimals": self.notional_decimals,
            "tickSize": str(self.tick_size),
            "maxOpenOrders": self.max_open_orders,
            "feeCategory": "A",
            "orderTypes": [
                "market",
                "limit",
                "stopLoss",
                "stopLossLimit",
                "takeProfit",
                "takeProfitLimit",
            ],
        }

    def quantize_amount(self, amount: Decimal) -> Decimal:
        return amount.quantize(Decimal(1).scaleb(-self.quantity_decimals), rounding=ROUND_DOWN)

    def to_tick(self, price: Decimal) -> Decimal:
        ticks = (price / self.tick_size).to_integral_value(rounding=ROUND_HALF_EVEN)
        return max(ticks, Decimal(1)) * self.tick_size


MARKETS: dict[str, Market] = {
    m.market: m
    for m in (
        Market("BTC-EUR", "BTC", "EUR", Decimal("85000"), Decimal("1"), 8, 2,
               Decimal("0.00006"), Decimal("5"), Decimal("0.4")),
        Market("ETH-EUR", "ETH", "EUR", Decimal("3200"), Decimal("0.01"), 8, 2,
               Decimal("0.001"), Decimal("5"), Decimal("6")),
        Market("SOL-EUR", "SOL", "EUR", Decimal("150"), Decimal("0.01"), 8, 2,
               Decimal("0.01"), Decimal("5"), Decimal("60")),
        Market("XRP-EUR", "XRP", "EUR", Decimal("2.1"), Decimal("0.00001"), 6, 2,
               Decimal("1"), Decimal("5"), Decimal("9000")),
        Market("THIN-EUR", "THIN", "EUR", Decimal("0.8"), Decimal("0.0001"), 2, 2,
               Decimal("10"), Decimal("5"), Decimal("40"), quiet_pct=40),
    )
}

# symbol -> (name, decimals, withdrawalFee, withdrawalMinAmount, networks)
ASSETS: dict[str, tuple[str, int, str, str, list[str]]] = {
    "EUR": ("Euro", 2, "0", "10", ["SEPA"]),
    "BTC": ("Bitcoin", 8, "0.0000055", "0.000011", ["BTC"]),
    "ETH": ("Ethereum", 18, "0.0015", "0.003", ["ETH"]),
    "SOL": ("Solana", 9, "0.008", "0.016", ["SOL"]),
    "XRP": ("XRP", 6, "0.2", "0.4", ["XRP"]),
    "THIN": ("Thin (illiquid, sandbox only)", 2, "1", "2", ["THIN"]),
}


def asset_listing(symbol: str) -> dict[str, object]:
    name, decimals, fee, minimum, networks = ASSETS[symbol]
    return {
        "symbol": symbol,
        "name": name,
        "decimals": decimals,
        "depositFee": "0",
        "depositConfirmations": 0 if symbol == "EUR" else 10,
        "depositStatus": "OK",
        "withdrawalFee": fee,
        "withdrawalMinAmount": minimum,
        "withdrawalStatus": "OK",
        "networks": networks,
        "message": "",
    }


def fmt(value: Decimal) -> str:
    """Bitvavo-style number string: plain notation, no exponent, no trailing zeros."""
    if value == 0:
        return "0"
    text = format(value.normalize(), "f")
    return text


# (knot span in minutes, amplitude in tenths of a basis point): amplitude ~ 80 × sqrt(span)
_LEVELS = (
    (1, 80), (3, 140), (9, 240), (27, 420), (81, 720),
    (243, 1250), (729, 2160), (2187, 3740), (6561, 6480),
)
_UNITS = Decimal(100_000)  # tenths of a basis point per 1.0


def _hash_int(*parts: object) -> int:
    digest = hashlib.blake2b(":".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


@lru_cache(maxsize=1 << 16)
def _knot(seed: int, market: str, level: int, index: int) -> int:
    amplitude = _LEVELS[level][1]
    return _hash_int("knot", seed, market, level, index) % (2 * amplitude + 1) - amplitude


@lru_cache(maxsize=1 << 18)
def price_at_minute(seed: int, market: str, minute: int) -> Decimal:
    """Last-trade price during `minute` (minutes since the Unix epoch)."""
    spec = MARKETS[market]
    offset = Decimal(0)
    for level, (span, _amplitude) in enumerate(_LEVELS):
        index, position = divmod(minute, span)
        left = _knot(seed, market, level, index)
        right = _knot(seed, market, level, index + 1)
        offset += Decimal(left) + Decimal(right - left) * position / span
    return spec.to_tick(spec.base_price * (1 + offset / _UNITS))


@lru_cache(maxsize=1 << 18)
def trades_in_minute(seed: int, market: str, minute: int) -> bool:
    """Whether anything traded on `market` during `minute` (always, but on an illiquid market)."""
    quiet = MARKETS[market].quiet_pct
    if quiet == 0:
        return True
    if _hash_int("quiet-hour", seed, market, minute // 60) % 100 < quiet:
        return False
    return _hash_int("quiet-minute", seed, market, minute) % 100 >= quiet


# How far back the last trade of an illiquid market is looked for (a week of minutes).
_LAST_TRADE_SEARCH = 7 * 1440


@dataclass(frozen=True)
class Candle:
    start_ms: int
    open: Decimal
    high: Decimal
    low: Decimal
    close: Decimal
    volume: Decimal


@lru_cache(maxsize=1 << 16)
def minute_candle(seed: int, market: str, minute: int) -> Candle:
    spec = MARKETS[market]
    open_ = price_at_minute(seed, market, minute - 1)
    close = price_at_minute(seed, market, minute)
    wick_hash = _hash_int("wick", seed, market, minute)
    up_bp, down_bp = wick_hash % 6, (wick_hash >> 8) % 6  # 0..5 bp each way
    high = spec.to_tick(max(open_, close) * (1 + Decimal(up_bp) / 10_000))
    low = spec.to_tick(min(open_, close) * (1 - Decimal(down_bp) / 10_000))
    volume_permille = 100 + (_hash_int("volume", seed, market, minute) % 1900)  # 0.1 .. 2.0
    volume = spec.quantize_amount(spec.volume_unit * volume_permille / 1000)
    return Candle(minute * MINUTE_MS, open_, high, low, close, volume)


INTERVAL_MINUTES = {
    "1m": 1, "5m": 5, "15m": 15, "30m": 30, "1h": 60, "2h": 120, "4h": 240,
    "6h": 360, "8h": 480, "12h": 720, "1d": 1440, "1W": 10080,
}
_MONDAY_OFFSET = 4 * 1440  # the Unix epoch was a Thursday
_SAMPLES_PER_BUCKET = 48


def _bucket_bounds(interval: str, minute: int) -> tuple[int, int]:
    """[start, end) in minutes of the candle bucket containing `minute`."""
    if interval == "1M":
        day = datetime.fromtimestamp(minute * 60, tz=UTC)
        start = datetime(day.year, day.month, 1, tzinfo=UTC)
        days = calendar.monthrange(day.year, day.month)[1]
        first = int(start.timestamp()) // 60
        return first, first + days * 1440
    size = INTERVAL_MINUTES[interval]
    shift = _MONDAY_OFFSET if interval == "1W" else 0
    first = (minute - shift) // size * size + shift
    return first, first + size


class PricePath:
    """Market data for one seed, read against the market clock."""

    def __init__(self, seed: int) -> None:
        self.seed = seed

    def price(self, market: str, now_ms: int) -> Decimal:
        minute = now_ms // MINUTE_MS
        if MARKETS[market].quiet_pct:
            minute = next((m for m in range(minute, minute - _LAST_TRADE_SEARCH, -1)
                           if trades_in_minute(self.seed, market, m)), minute)
        return price_at_minute(self.seed, market, minute)

    def candle(self, market: str, minute: int) -> Candle:
        return minute_candle(self.seed, market, minute)

    def half_spread(self, market: str, price: Decimal) -> Decimal:
        spec = MARKETS[market]
        return max(spec.tick_size, spec.to_tick(price * Decimal("0.00005")))

    def best_bid_ask(self, market: str, now_ms: int) -> tuple[Decimal, Decimal]:
        price = self.price(market, now_ms)
        half = self.half_spread(market, price)
        return price - half, price + half

    def book(self, market: str, now_ms: int, depth: int) -> dict[str, object]:
        spec = MARKETS[market]
        minute = now_ms // MINUTE_MS
        bid, ask = self.best_bid_ask(market, now_ms)
        step = max(spec.tick_size, spec.to_tick(bid * Decimal("0.00002")))
        bids: list[list[str]] = []
        asks: list[list[str]] = []
        for level in range(depth):
            for side, rows, best, sign in (("b", bids, bid, -1), ("a", asks, ask, 1)):
                price = best + sign * step * level
                if price <= 0:
                    continue
                permille = 20 + _hash_int("book", self.seed, market, minute, side, level) % 980
                size = spec.quantize_amount(spec.volume_unit * permille / 1000)
                rows.append([fmt(price), fmt(size)])
        return {
            "market": market,
            "nonce": now_ms // 100,
            "bids": bids,
            "asks": asks,
            "timestamp": now_ms,
        }

    def ticker_book(self, market: str, now_ms: int) -> dict[str, object]:
        book = self.book(market, now_ms, 1)
        bid, ask = book["bids"][0], book["asks"][0]  # type: ignore[index]
        return {"market": market, "bid": bid[0], "bidSize": bid[1],
                "ask": ask[0], "askSize": ask[1]}

    def ticker_24h(self, market: str, now_ms: int) -> dict[str, object]:
        now_minute = now_ms // MINUTE_MS
        candles = [self.candle(market, m) for m in range(now_minute - 1439, now_minute + 1)]
        volume = sum((c.volume for c in candles), Decimal(0))
        volume_quote = sum((c.volume * c.close for c in candles), Decimal(0))
        top = self.ticker_book(market, now_ms)
        start_ms = now_ms - 1440 * MINUTE_MS
        return {
            "market": market,
            "startTimestamp": start_ms,
            "timestamp": now_ms,
            "open": fmt(candles[0].open),
            "openTimestamp": candles[0].start_ms,
            "high": fmt(max(c.high for c in candles)),
            "low": fmt(min(c.low for c in candles)),
            "last": fmt(candles[-1].close),
            "closeTimestamp": now_ms,
            "bid": top["bid"],
            "bidSize": top["bidSize"],
            "ask": top["ask"],
            "askSize": top["askSize"],
            "volume": fmt(volume),
            "volumeQuote": fmt(volume_quote.quantize(Decimal("0.01"))),
        }

    def candles(self, market: str, interval: str, now_ms: int, limit: int,
                start_ms: int | None, end_ms: int | None) -> list[list[object]]:
        """Rows `[ms, open, high, low, close, volume]`, newest first, none after `now`;
        `start_ms <= ms < end_ms` (ccxt asks for `end = since + limit × interval`)."""
        now_minute = now_ms // MINUTE_MS
        last_minute = now_minute if end_ms is None else min(now_minute, (end_ms - 1) // MINUTE_MS)
        rows: list[list[object]] = []
        first, end = _bucket_bounds(interval, last_minute)
        # An illiquid market's empty intervals send no row; stop looking back after as many again.
        looked, bound = 0, 2 * limit if MARKETS[market].quiet_pct else limit
        while len(rows) < limit and looked < bound:
            if start_ms is not None and first * MINUTE_MS < start_ms:
                break
            row = self._bucket_row(market, first, min(end, now_minute + 1))
            if row is not None:
                rows.append(row)
            looked += 1
            first, end = _bucket_bounds(interval, first - 1)
        return rows

    def _bucket_row(self, market: str, first: int, end: int) -> list[object] | None:
        count = end - first
        stride = max(1, count // _SAMPLES_PER_BUCKET)
        minutes = list(range(first, end, stride))
        if minutes[-1] != end - 1:
            minutes.append(end - 1)
        if MARKETS[market].quiet_pct:
            minutes = [m for m in minutes if trades_in_minute(self.seed, market, m)]
            if not minutes:
                return None  # nothing traded: Bitvavo sends no candle
        sampled = [self.candle(market, m) for m in minutes]
        volume = sum((c.volume for c in sampled), Decimal(0)) * stride
        return [
            first * MINUTE_MS,
            fmt(sampled[0].open),
            fmt(max(c.high for c in sampled)),
            fmt(min(c.low for c in sampled)),
            fmt(sampled[-1].close),
            fmt(MARKETS[market].quantize_amount(volume)),
        ]

    def public_trades(self, market: str, now_ms: int, limit: int,
                      start_ms: int | None, end_ms: int | None) -> list[dict[str, object]]:
        """One synthetic trade per minute at that minute's price, newest first."""
        upper = now_ms if end_ms is None else min(now_ms, end_ms)
        minute = upper // MINUTE_MS
        trades: list[dict[str, object]] = []
        while len(trades) < limit:
            at = minute * MINUTE_MS + _hash_int("trade-at", self.seed, market, minute) % MINUTE_MS
            if start_ms is not None and at < start_ms:
                break
            if at <= upper and trades_in_minute(self.seed, market, minute):
                candle = self.candle(market, minute)
                trade_hash = _hash_int("trade", self.seed, market, minute)
                trades.append({
                    "id": str(uuid.UUID(int=trade_hash << 64 | minute)),
                    "timestamp": at,
                    "amount": fmt(candle.volume),
                    "price": fmt(candle.close),
                    "side": "buy" if trade_hash % 2 else "sell",
                })
            minute -= 1
        return trades
