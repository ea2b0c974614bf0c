"""Market data for one scan: candles and the ticker price, through the read-only client only (G3).

`BitvavoReadonly` is the only exchange client the scanner has: it signs with the optional read-only
key (BITVAVO_READONLY_API_KEY/SECRET) or sends public requests, and refuses every order method.
Any exchange error (timeout, 5xx, an unknown market, a rate-limit stop) fails the job, which the
scheduler then backs off; nothing here retries.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from shared.exchange.errors import MalformedResponse
from shared.exchange.models import Candle
from shared.exchange.readonly import BitvavoReadonly


@dataclass(frozen=True)
class MarketSnapshot:
    market: str
    interval: str
    candles: tuple[Candle, ...]  # oldest first
    price: Decimal  # the last traded price (GET /ticker/price)

    @property
    def closes(self) -> list[Decimal]:
        return [c.close for c in self.candles]


def read_market(client: BitvavoReadonly, market: str, interval: str, limit: int) -> MarketSnapshot:
    """The last `limit` candles of `interval` (oldest first) and the current price of `market`."""
    rows = client.candles(market, interval, limit=limit)  # newest first, as Bitvavo sends them
    ticker = client.ticker_price(market)
    if ticker.price is None or ticker.price <= 0:
        raise MalformedResponse(f"no price for {market}", endpoint="GET /ticker/price")
    candles = tuple(sorted(rows, key=lambda c: c.timestamp))
    return MarketSnapshot(market=market, interval=interval, candles=candles, price=ticker.price)
