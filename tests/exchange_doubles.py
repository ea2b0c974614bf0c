"""Test doubles for the exchange tests: a fake clock, keys, an independent signature check,
market listings as Bitvavo sends them and a static market lookup."""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

import httpx

from shared.exchange.models import Market

BASE_URL = "https://api.bitvavo.test/v2"
READONLY_KEY = "r" * 64
READONLY_SECRET = "readonly-secret-" + "1" * 48
TRADE_KEY = "t" * 64
TRADE_SECRET = "trade-secret-" + "2" * 51
OPERATOR_ID = 4242
START = 1_700_000_000.0  # epoch seconds


class FakeClock:
    """time.time and time.sleep in one: sleeping records the wait and advances the clock."""

    def __init__(self, now: float = START) -> None:
        self.now = now
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds

    @property
    def ms(self) -> int:
        return int(self.now * 1000)


def expected_signature(secret: str, request: httpx.Request) -> str:
    """Recomputed from the request as it went out, without the code under test:
    timestamp + METHOD + request target (path and query, as sent) + body."""
    message = (
        request.headers["Bitvavo-Access-Timestamp"].encode()
        + request.method.encode()
        + request.url.raw_path
        + request.content
    )
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def order_json(**overrides: object) -> dict[str, object]:
    """A filled market order as Bitvavo returns it (numbers as strings, ms timestamps)."""
    order: dict[str, object] = {
        "orderId": "1be6d0df-d5dc-4b53-a250-3376f3b393e6",
        "clientOrderId": "2be7d0df-d5dc-4b53-a250-3376f3b393e6",
        "market": "BTC-EUR",
        "created": 1700000000123,
        "updated": 1700000000456,
        "status": "filled",
        "side": "buy",
        "orderType": "market",
        "amountQuote": "10",
        "amountQuoteRemaining": "0",
        "onHold": "0",
        "onHoldCurrency": "EUR",
        "filledAmount": "0.00027777",
        "filledAmountQuote": "9.9999",
        "feePaid": "0.02499975",
        "feeCurrency": "EUR",
        "fills": [
            {
                "id": "371c6bd3-d06d-4573-9f15-18697cd210e5",
                "timestamp": 1700000000400,
                "amount": "0.00027777",
                "price": "36000",
                "taker": True,
                "fee": "0.02499975",
                "feeCurrency": "EUR",
                "settled": True,
            }
        ],
        "selfTradePrevention": "decrementAndCancel",
        "visible": False,
        "timeInForce": "IOC",
        "postOnly": False,
        "operatorId": OPERATOR_ID,
        "someFieldBitvavoAddsLater": {"nested": 1},
    }
    order.update(overrides)
    return order


def market_json(market: str, **overrides: Any) -> dict[str, Any]:
    """A `/markets` row as Bitvavo sends it (since v2.12.0 `pricePrecision` is null)."""
    rows: dict[str, dict[str, Any]] = {
        "BTC-EUR": {"minOrderInBaseAsset": "0.00006", "quantityDecimals": 8, "tickSize": "1"},
        "ETH-EUR": {"minOrderInBaseAsset": "0.001", "quantityDecimals": 8, "tickSize": "0.01"},
        "XRP-EUR": {"minOrderInBaseAsset": "1", "quantityDecimals": 6, "tickSize": "0.00001"},
    }
    base, quote = market.split("-")
    row: dict[str, Any] = {
        "market": market,
        "status": "trading",
        "base": base,
        "quote": quote,
        "pricePrecision": None,
        "minOrderInQuoteAsset": "5",
        "maxOrderInBaseAsset": "1000000000",
        "maxOrderInQuoteAsset": "1000000000",
        "notionalDecimals": 2,
        "maxOpenOrders": 100,
        "orderTypes": ["market", "limit"],
        "feeCategory": "A",
        **rows[market],
    }
    row.update(overrides)
    return row


MARKETS = {
    name: Market.model_validate(market_json(name)) for name in ("BTC-EUR", "ETH-EUR", "XRP-EUR")
}


def markets(name: str) -> Market:
    """A static MarketLookup over MARKETS (KeyError for anything else, like MarketCatalog)."""
    return MARKETS[name]
