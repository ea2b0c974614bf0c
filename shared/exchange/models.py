"""Typed, frozen views of Bitvavo's answers, and the one outbound model (an order request).

Inbound: field aliases are Bitvavo's camelCase, unknown fields are ignored, numeric strings become
Decimal, integer milliseconds become tz-aware UTC datetimes. The transport parses JSON with
`parse_float=Decimal`, so a float never exists; a float handed to a model directly is refused.
Clients read every answer through `parse_answer` / `parse_rows`: an answer that does not fit its
model is a MalformedResponse (outcome unknown), never a raw pydantic ValidationError.

Outbound: `OrderRequest` validates a market order (the only kind this backend places) before
anything is signed and renders it as the exact body Bitvavo expects (amounts as strings,
operatorId as int, clientOrderId as UUID text).
"""

from __future__ import annotations

import functools
import re
import uuid
from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any, Literal, TypeVar

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

from shared.exchange.errors import InvalidOrderRequest, MalformedResponse, datetime_from_ms

MARKET_PATTERN = re.compile(r"^[A-Z0-9]{1,15}-[A-Z]{2,6}$")


def _decimal_not_float(value: Any) -> Any:
    if isinstance(value, float):
        raise ValueError("floats are not accepted for money: use a string or Decimal")
    if isinstance(value, bool):
        raise ValueError("a boolean is not a number")
    if isinstance(value, Decimal) and not value.is_finite():
        raise ValueError("amounts must be finite")
    return value


def _datetime_from_ms(value: Any) -> Any:
    if isinstance(value, bool):
        raise ValueError("a boolean is not a timestamp")
    if isinstance(value, int):
        return datetime_from_ms(value)
    if isinstance(value, str) and value.isdigit():
        return datetime_from_ms(int(value))
    return value


Amount = Annotated[
    Decimal,
    BeforeValidator(_decimal_not_float),
    PlainSerializer(lambda d: format(d, "f"), return_type=str),
]
"""A Decimal that refuses floats and serialises as a plain string (never an exponent)."""

Timestamp = Annotated[datetime, BeforeValidator(_datetime_from_ms)]
"""Integer milliseconds since the epoch (Bitvavo's format) as a tz-aware UTC datetime."""


class BitvavoModel(BaseModel):
    model_config = ConfigDict(
        frozen=True,
        extra="ignore",
        alias_generator=to_camel,
        populate_by_name=True,
    )


# -- public market data ---------------------------------------------------------------------


class ServerTime(BitvavoModel):
    time: Timestamp


class Market(BitvavoModel):
    market: str
    status: str
    base: str
    quote: str
    price_precision: int | None = None
    min_order_in_base_asset: Amount | None = None
    min_order_in_quote_asset: Amount | None = None
    max_order_in_base_asset: Amount | None = None
    max_order_in_quote_asset: Amount | None = None
    quantity_decimals: int | None = None
    notional_decimals: int | None = None
    tick_size: Amount | None = None
    max_open_orders: int | None = None
    order_types: tuple[str, ...] = ()
    fee_category: str | None = None


class Asset(BitvavoModel):
    symbol: str
    name: str | None = None
    decimals: int | None = None
    deposit_fee: Amount | None = None
    deposit_confirmations: int | None = None
    deposit_status: str | None = None
    withdrawal_fee: Amount | None = None
    withdrawal_min_amount: Amount | None = None
    withdrawal_status: str | None = None
    networks: tuple[str, ...] = ()
    message: str | None = None


class TickerPrice(BitvavoModel):
    market: str
    price: Amount | None = None


class TickerBook(BitvavoModel):
    market: str
    bid: Amount | None = None
    bid_size: Amount | None = None
    ask: Amount | None = None
    ask_size: Amount | None = None


class Ticker24h(BitvavoModel):
    market: str
    open: Amount | None = None
    high: Amount | None = None
    low: Amount | None = None
    last: Amount | None = None
    volume: Amount | None = None
    volume_quote: Amount | None = None
    bid: Amount | None = None
    bid_size: Amount | None = None
    ask: Amount | None = None
    ask_size: Amount | None = None
    timestamp: Timestamp | None = None
    start_timestamp: Timestamp | None = None
    open_timestamp: Timestamp | None = None
    close_timestamp: Timestamp | None = None


class BookLevel(BitvavoModel):
    """One `[price, size]` row of an order book."""

    price: Amount
    size: Amount

    @model_validator(mode="before")
    @classmethod
    def _from_row(cls, value: Any) -> Any:
        if isinstance(value, list | tuple):
            if len(value) < 2:
                raise ValueError("a book row is [price, size]")
            return {"price": value[0], "size": value[1]}
        return value


class OrderBook(BitvavoModel):
    market: str
    nonce: int | None = None
    bids: tuple[BookLevel, ...] = ()
    asks: tuple[BookLevel, ...] = ()
    timestamp: Timestamp | None = None


class Candle(BitvavoModel):
    """One `[timestamp_ms, open, high, low, close, volume]` row."""

    timestamp: Timestamp
    open: Amount
    high: Amount
    low: Amount
    close: Amount
    volume: Amount

    @model_validator(mode="before")
    @classmethod
    def _from_row(cls, value: Any) -> Any:
        if isinstance(value, list | tuple):
            if len(value) != 6:
                raise ValueError("a candle row is [timestamp, open, high, low, close, volume]")
            keys = ("timestamp", "open", "high", "low", "close", "volume")
            return dict(zip(keys, value, strict=True))
        return value


# -- account and orders -----------------------------------------------------------------------


class Balance(BitvavoModel):
    symbol: str
    available: Amount
    in_order: Amount = Decimal(0)


class Fill(BitvavoModel):
    id: str
    timestamp: Timestamp
    amount: Amount
    price: Amount
    taker: bool | None = None
    fee: Amount | None = None
    fee_currency: str | None = None
    settled: bool | None = None


FINAL_ORDER_STATUSES = frozenset(
    {
        "filled",
        "canceled",
        "canceledAuction",
        "canceledSelfTradePrevention",
        "canceledIOC",
        "canceledFOK",
        "canceledMarketProtection",
        "canceledPostOnly",
        "expired",
        "rejected",
    }
)


class Order(BitvavoModel):
    """An order as Bitvavo reports it (POST/GET /order). `status` is kept as Bitvavo's text:
    an unknown status must not make a filled order unreadable."""

    order_id: str
    client_order_id: uuid.UUID | None = None
    market: str
    side: Literal["buy", "sell"]
    order_type: str
    status: str
    created: Timestamp | None = None
    updated: Timestamp | None = None
    amount: Amount | None = None
    amount_remaining: Amount | None = None
    amount_quote: Amount | None = None
    amount_quote_remaining: Amount | None = None
    price: Amount | None = None
    on_hold: Amount | None = None
    on_hold_currency: str | None = None
    filled_amount: Amount = Decimal(0)
    filled_amount_quote: Amount = Decimal(0)
    fee_paid: Amount = Decimal(0)
    fee_currency: str | None = None
    fills: tuple[Fill, ...] = ()
    self_trade_prevention: str | None = None
    visible: bool | None = None
    time_in_force: str | None = None
    post_only: bool | None = None
    operator_id: int | None = None

    @property
    def is_final(self) -> bool:
        return self.status in FINAL_ORDER_STATUSES

    @property
    def average_price(self) -> Decimal | None:
        if self.filled_amount == 0:
            return None
        return self.filled_amount_quote / self.filled_amount


class AccountTrade(BitvavoModel):
    """One fill of the account (GET /trades): which order it belongs to, by both ids."""

    id: str
    order_id: str
    client_order_id: uuid.UUID | None = None
    timestamp: Timestamp
    market: str
    side: Literal["buy", "sell"]
    amount: Amount
    price: Amount
    taker: bool | None = None
    fee: Amount | None = None
    fee_currency: str | None = None
    settled: bool | None = None


class OrderCancellation(BitvavoModel):
    """DELETE /order answer."""

    order_id: str
    client_order_id: uuid.UUID | None = None
    operator_id: int | None = None


# -- outbound -------------------------------------------------------------------------------------


def _market_shape(value: str) -> str:
    if not MARKET_PATTERN.fullmatch(value):
        raise ValueError("market is not like BTC-EUR")
    return value


MarketName = Annotated[str, AfterValidator(_market_shape)]


def _plain(value: Decimal) -> str:
    return format(value, "f")


class OrderRequest(BaseModel):
    """A validated market order, rendered by `to_body()` as POST /order's JSON body.

    Shared by BitvavoTrade and PaperTrade so both refuse exactly the same requests."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    market: MarketName
    side: Literal["buy", "sell"]
    client_order_id: uuid.UUID
    operator_id: int | None = Field(default=None, ge=0, le=2**63 - 1)
    amount: Amount | None = None
    amount_quote: Amount | None = None

    @field_validator("client_order_id", mode="before")
    @classmethod
    def _uuid_only(cls, value: Any) -> Any:
        if isinstance(value, uuid.UUID):
            return value
        if isinstance(value, str):
            try:
                return uuid.UUID(value)
            except ValueError:
                raise ValueError("clientOrderId must be a UUID") from None
        raise ValueError("clientOrderId must be a UUID")

    @field_validator("amount", "amount_quote")
    @classmethod
    def _positive(cls, value: Decimal | None) -> Decimal | None:
        if value is not None and value <= 0:
            raise ValueError("must be greater than zero")
        return value

    @model_validator(mode="after")
    def _one_amount(self) -> OrderRequest:
        if (self.amount is None) == (self.amount_quote is None):
            raise ValueError("a market order needs exactly one of amount and amount_quote")
        return self

    def to_body(self) -> dict[str, Any]:
        """Bitvavo's body, key order fixed (the signature covers it), no float anywhere."""
        body: dict[str, Any] = {
            "market": self.market,
            "side": self.side,
            "orderType": "market",
        }
        if self.amount is not None:
            body["amount"] = _plain(self.amount)
        if self.amount_quote is not None:
            body["amountQuote"] = _plain(self.amount_quote)
        body["clientOrderId"] = str(self.client_order_id)
        if self.operator_id is not None:
            body["operatorId"] = self.operator_id
        return body

    @classmethod
    def market_order(
        cls,
        market: str,
        side: str,
        *,
        client_order_id: uuid.UUID | str,
        amount_quote: Any = None,
        amount: Any = None,
        operator_id: int | None = None,
    ) -> OrderRequest:
        try:
            return cls.model_validate({
                "market": market,
                "side": side,
                "amount": amount,
                "amount_quote": amount_quote,
                "client_order_id": client_order_id,
                "operator_id": operator_id,
            })
        except ValidationError as exc:
            raise InvalidOrderRequest(_describe(exc)) from None


class OrderReference(BaseModel):
    """Which order GET/DELETE /order is about: a market and exactly one of the two ids."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    market: MarketName
    client_order_id: uuid.UUID | None = None
    order_id: str | None = None

    @model_validator(mode="after")
    def _exactly_one_id(self) -> OrderReference:
        if (self.client_order_id is None) == (self.order_id is None):
            raise ValueError("give exactly one of client_order_id and order_id")
        return self

    @classmethod
    def of(
        cls,
        market: str,
        client_order_id: uuid.UUID | str | None,
        order_id: str | None,
    ) -> OrderReference:
        try:
            return cls.model_validate(
                {"market": market, "client_order_id": client_order_id, "order_id": order_id}
            )
        except ValidationError as exc:
            raise InvalidOrderRequest(_describe(exc)) from None

    def to_params(self) -> dict[str, str]:
        params = {"market": self.market}
        if self.client_order_id is not None:
            params["clientOrderId"] = str(self.client_order_id)
        else:
            assert self.order_id is not None
            params["orderId"] = self.order_id
        return params


# -- reading answers ------------------------------------------------------------------------------

M = TypeVar("M")


@functools.cache
def _adapter(shape: Any) -> TypeAdapter[Any]:
    return TypeAdapter(shape)


def parse_answer(model: type[M], payload: Any, *, endpoint: str) -> M:
    """`payload` (a parsed 2xx answer) as `model`, or MalformedResponse naming the fields that
    did not fit — never the values (an answer may carry anything)."""
    return _parse(model, model.__name__, payload, endpoint)  # type: ignore[no-any-return]


def parse_rows(model: type[M], payload: Any, *, endpoint: str) -> list[M]:
    """A list answer; Bitvavo answers a filtered query (?market=…, ?symbol=…) with one object."""
    rows = payload if isinstance(payload, list) else [payload]
    return _parse(list[model], f"a list of {model.__name__}", rows, endpoint)  # type: ignore[valid-type,no-any-return]


def _parse(shape: Any, name: str, payload: Any, endpoint: str) -> Any:
    try:
        return _adapter(shape).validate_python(payload)
    except ValidationError as exc:
        raise MalformedResponse(
            f"the answer does not fit {name} ({_describe(exc)})", endpoint=endpoint
        ) from None


def _describe(exc: ValidationError, limit: int = 5) -> str:
    """A ValidationError's reasons (the first `limit`) without echoing the input values."""
    errors = exc.errors(include_url=False, include_input=False, include_context=False)
    reasons = [f"{'.'.join(str(p) for p in err['loc']) or 'order'}: {err['msg']}" for err in errors]
    more = f"; and {len(reasons) - limit} more" if len(reasons) > limit else ""
    return "; ".join(reasons[:limit]) + more
