"""Models accept Bitvavo's real shapes; every number is a Decimal; a float is never accepted."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pydantic
import pytest

from shared.exchange.errors import InvalidOrderRequest
from shared.exchange.models import (
    Asset,
    Balance,
    Candle,
    Market,
    Order,
    OrderBook,
    OrderCancellation,
    OrderRequest,
    Ticker24h,
    TickerBook,
    TickerPrice,
)
from tests.exchange_doubles import order_json

MARKET = {
    "market": "BTC-EUR",
    "status": "trading",
    "base": "BTC",
    "quote": "EUR",
    "pricePrecision": None,
    "minOrderInBaseAsset": "0.00006",
    "minOrderInQuoteAsset": "5",
    "maxOrderInBaseAsset": "1000000000",
    "maxOrderInQuoteAsset": "1000000000",
    "quantityDecimals": 8,
    "notionalDecimals": 2,
    "tickSize": "1",
    "maxOpenOrders": 100,
    "orderTypes": ["market", "limit", "stopLoss"],
    "feeCategory": "A",
}
ASSET = {
    "symbol": "BTC",
    "name": "Bitcoin",
    "decimals": 8,
    "depositFee": "0",
    "depositConfirmations": 2,
    "depositStatus": "OK",
    "withdrawalFee": "0.0000136",
    "withdrawalMinAmount": "0.0000136",
    "withdrawalStatus": "OK",
    "networks": ["BTC"],
    "message": "",
}
TICKER_24H = {
    "market": "BTC-EUR",
    "startTimestamp": 1699913600000,
    "timestamp": 1700000000000,
    "open": "35000",
    "openTimestamp": 1699913600100,
    "high": "36500",
    "low": "34800",
    "last": "36000",
    "closeTimestamp": 1699999999000,
    "bid": "35999",
    "bidSize": "0.5",
    "ask": "36001",
    "askSize": "0.4",
    "volume": "1234.5",
    "volumeQuote": "44444444.44",
}
BOOK = {
    "market": "BTC-EUR",
    "nonce": 438524,
    "timestamp": 1700000000000,
    "bids": [["35999", "0.5"], ["35998", "1.25"]],
    "asks": [["36001", "0.4"]],
}


def decimals_only(value: Any, path: str = "") -> None:
    """Walk a model dump: numbers must be Decimal (or int counts/ids), never float."""
    if isinstance(value, float):
        raise AssertionError(f"float at {path}")
    if isinstance(value, dict):
        for k, v in value.items():
            decimals_only(v, f"{path}.{k}")
    elif isinstance(value, list | tuple):
        for i, v in enumerate(value):
            decimals_only(v, f"{path}[{i}]")


def test_market() -> None:
    m = Market.model_validate(MARKET | {"unknownNewField": 1.5})
    assert m.min_order_in_quote_asset == Decimal("5")
    assert m.tick_size == Decimal("1")
    assert m.quantity_decimals == 8 and m.price_precision is None
    assert m.order_types == ("market", "limit", "stopLoss")
    for name in (
        "min_order_in_base_asset",
        "min_order_in_quote_asset",
        "max_order_in_base_asset",
        "max_order_in_quote_asset",
        "tick_size",
    ):
        assert type(getattr(m, name)) is Decimal
    decimals_only(m.model_dump())


def test_asset() -> None:
    a = Asset.model_validate(ASSET)
    assert type(a.withdrawal_fee) is Decimal and a.withdrawal_fee == Decimal("0.0000136")
    decimals_only(a.model_dump())


def test_tickers() -> None:
    assert TickerPrice.model_validate({"market": "BTC-EUR", "price": "36000"}).price == Decimal(
        "36000"
    )
    book = TickerBook.model_validate(
        {"market": "BTC-EUR", "bid": "1.1", "bidSize": "2", "ask": "1.2", "askSize": "3"}
    )
    assert (book.bid, book.bid_size, book.ask, book.ask_size) == tuple(
        map(Decimal, ("1.1", "2", "1.2", "3"))
    )
    t = Ticker24h.model_validate(TICKER_24H)
    for name in (
        "open",
        "high",
        "low",
        "last",
        "volume",
        "volume_quote",
        "bid",
        "bid_size",
        "ask",
        "ask_size",
    ):
        assert type(getattr(t, name)) is Decimal, name
    assert t.timestamp == datetime(2023, 11, 14, 22, 13, 20, tzinfo=UTC)
    # an inactive market has nulls
    assert Ticker24h.model_validate({"market": "X-EUR", "open": None, "last": None}).last is None


def test_order_book_rows() -> None:
    b = OrderBook.model_validate(BOOK)
    assert b.bids[1].price == Decimal("35998") and b.bids[1].size == Decimal("1.25")
    assert all(
        type(level.price) is Decimal and type(level.size) is Decimal for level in b.bids + b.asks
    )
    decimals_only(b.model_dump())


def test_candles_rows_with_utc_timestamps() -> None:
    c = Candle.model_validate([1700003600000, "36000", "36100", "35900", "36050", "12.5"])
    assert c.timestamp == datetime(2023, 11, 14, 23, 13, 20, tzinfo=UTC)
    assert c.timestamp.tzinfo is UTC
    assert (c.open, c.high, c.low, c.close, c.volume) == tuple(
        map(Decimal, ("36000", "36100", "35900", "36050", "12.5"))
    )
    with pytest.raises(pydantic.ValidationError):
        Candle.model_validate([1700003600000, "1", "2"])


def test_balance() -> None:
    b = Balance.model_validate({"symbol": "EUR", "available": "9990.01", "inOrder": "0"})
    assert b.available == Decimal("9990.01") and type(b.in_order) is Decimal


def test_order_every_numeric_field_is_decimal() -> None:
    o = Order.model_validate(order_json())
    assert o.client_order_id == uuid.UUID("2be7d0df-d5dc-4b53-a250-3376f3b393e6")
    assert o.created == datetime(2023, 11, 14, 22, 13, 20, 123000, tzinfo=UTC)
    assert o.operator_id == 4242 and type(o.operator_id) is int
    for name in (
        "amount_quote",
        "amount_quote_remaining",
        "on_hold",
        "filled_amount",
        "filled_amount_quote",
        "fee_paid",
    ):
        assert type(getattr(o, name)) is Decimal, name
    (fill,) = o.fills
    assert type(fill.amount) is Decimal and type(fill.price) is Decimal
    assert type(fill.fee) is Decimal
    assert fill.timestamp.tzinfo is UTC
    assert o.is_final and o.average_price == Decimal("9.9999") / Decimal("0.00027777")
    decimals_only(o.model_dump())


def test_order_without_client_order_id_and_unknown_status() -> None:
    payload = order_json(status="somethingNew")
    del payload["clientOrderId"]
    o = Order.model_validate(payload)
    assert o.client_order_id is None and o.status == "somethingNew" and not o.is_final


def test_cancellation() -> None:
    c = OrderCancellation.model_validate(
        {"orderId": "1", "clientOrderId": "2be7d0df-d5dc-4b53-a250-3376f3b393e6", "operatorId": 1}
    )
    assert c.order_id == "1" and c.operator_id == 1


def test_parsed_with_parse_float_every_number_is_decimal() -> None:
    raw = json.dumps(order_json(filledAmount=1.5, feePaid=0.1)).encode()
    o = Order.model_validate(json.loads(raw, parse_float=Decimal))
    assert o.filled_amount == Decimal("1.5") and type(o.fee_paid) is Decimal


@pytest.mark.parametrize(
    ("model", "payload"),
    [
        (Balance, {"symbol": "EUR", "available": 1.5}),
        (TickerPrice, {"market": "BTC-EUR", "price": 36000.5}),
        (Candle, [1700003600000, 1.0, "2", "0.5", "1.5", "3"]),
        (Order, order_json(filledAmount=0.1)),
    ],
)
def test_floats_are_refused(model: type[pydantic.BaseModel], payload: Any) -> None:
    with pytest.raises(pydantic.ValidationError, match="float"):
        model.model_validate(payload)


def test_models_are_frozen() -> None:
    b = Balance.model_validate({"symbol": "EUR", "available": "1"})
    with pytest.raises(pydantic.ValidationError):
        b.available = Decimal("2")  # type: ignore[misc]


# -- outbound ---------------------------------------------------------------------------------


def test_order_request_body_has_strings_for_money() -> None:
    r = OrderRequest.market_order(
        "BTC-EUR",
        "buy",
        amount_quote=Decimal("1E+1"),
        client_order_id="2be7d0df-d5dc-4b53-a250-3376f3b393e6",
        operator_id=7,
    )
    assert r.to_body() == {
        "market": "BTC-EUR",
        "side": "buy",
        "orderType": "market",
        "amountQuote": "10",
        "clientOrderId": "2be7d0df-d5dc-4b53-a250-3376f3b393e6",
        "operatorId": 7,
    }


@pytest.mark.parametrize(
    "kwargs",
    [
        {"amount_quote": 10.0},  # float
        {"amount_quote": Decimal("10"), "amount": Decimal("1")},  # both
        {},  # neither
        {"amount_quote": Decimal("0")},
        {"amount_quote": Decimal("-1")},
        {"amount_quote": Decimal("NaN")},
        {"amount_quote": Decimal("10"), "client_order_id": "my-order-1"},  # not a UUID
        {"amount_quote": Decimal("10"), "client_order_id": ""},
        {"amount_quote": Decimal("10"), "market": "btc-eur"},
        {"amount_quote": Decimal("10"), "market": "../order"},
        {"amount_quote": Decimal("10"), "side": "long"},
        {"amount_quote": True},
    ],
)
def test_invalid_order_requests_are_refused(kwargs: dict[str, Any]) -> None:
    args = {"market": "BTC-EUR", "side": "buy", "client_order_id": uuid.uuid4()} | kwargs
    with pytest.raises(InvalidOrderRequest):
        OrderRequest.market_order(args.pop("market"), args.pop("side"), **args)


def test_invalid_order_message_does_not_echo_values() -> None:
    with pytest.raises(InvalidOrderRequest) as caught:
        OrderRequest.market_order(
            "BTC-EUR", "buy", amount_quote=Decimal("10"), client_order_id="secret-looking-value"
        )
    assert "secret-looking-value" not in str(caught.value)
    assert "clientOrderId must be a UUID" in str(caught.value)


def test_an_order_request_never_invents_a_client_order_id() -> None:
    with pytest.raises(TypeError, match="client_order_id"):
        OrderRequest.market_order("BTC-EUR", "buy", amount_quote=Decimal("10"))  # type: ignore[call-arg]
    with pytest.raises(InvalidOrderRequest, match="clientOrderId must be a UUID"):
        OrderRequest.market_order(
            "BTC-EUR", "buy", amount_quote=Decimal("10"), client_order_id=None  # type: ignore[arg-type]
        )


def test_market_listing_with_null_price_precision() -> None:
    # Bitvavo since v2.12.0: pricePrecision is always null, tickSize rules prices
    m = Market.model_validate(MARKET | {"pricePrecision": None, "tickSize": "0.01"})
    assert m.price_precision is None and m.tick_size == Decimal("0.01")
