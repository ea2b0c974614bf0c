"""Orders, balances and fees of the one sandbox account (all keys belong to it, as on Bitvavo).

- Market orders fill completely and at once at the best ask (buy) or bid (sell) of the price
  path, as a taker (fee 0.25 % in the quote currency). A buy by `amountQuote` spends at most
  `amountQuote`, fee included. The `unfilled` fault makes one fill only a fraction and end
  `expired`, `canceledMarketProtection` or `partiallyFilled` (open, cancellable, never filling
  further).
- Limit orders check their price against the book at placement: marketable → filled as a taker
  at the best price (or `canceledPostOnly`); otherwise IOC/FOK are canceled and GTC orders rest
  (`new`) with their funds `onHold`. Resting orders are matched lazily, before every request:
  the first later minute whose candle reaches the limit price fills the whole order at that
  price as a maker (fee 0.15 %).
- Validation follows Bitvavo's order: parameters (203/205/...), minimum sizes (212/217),
  open-order limits (220/235), then funds (216). Cancelling an order that exists but is no longer
  open answers 233; one that does not exist, 240.
"""

from __future__ import annotations

import threading
import uuid
from dataclasses import dataclass, field
from decimal import ROUND_UP, Decimal, InvalidOperation

from sandbox.errors import ApiError, invalid, required
from sandbox.market import MARKETS, MINUTE_MS, Market, PricePath, fmt

TAKER_FEE = Decimal("0.0025")
MAKER_FEE = Decimal("0.0015")
FEE_QUANTUM = Decimal("0.00000001")
INT64_MAX = 2**63 - 1
MAX_LAZY_SCAN_MINUTES = 100_000  # ~69 days of one-minute candles per resting order

ORDER_TYPES = ("market", "limit", "stopLoss", "stopLossLimit", "takeProfit", "takeProfitLimit")
SUPPORTED_ORDER_TYPES = ("market", "limit")
TIME_IN_FORCE = ("GTC", "IOC", "FOK")
SELF_TRADE_PREVENTION = ("decrementAndCancel", "cancelOldest", "cancelNewest", "cancelBoth")
BODY_PARAMS = {
    "market", "side", "orderType", "amount", "amountQuote", "price", "timeInForce", "postOnly",
    "selfTradePrevention", "responseRequired", "clientOrderId", "operatorId",
    "disableMarketProtection", "triggerAmount", "triggerType", "triggerReference",
}
OPEN_STATUSES = ("new", "partiallyFilled")


def _fee(quote: Decimal, rate: Decimal) -> Decimal:
    return (quote * rate).quantize(FEE_QUANTUM, rounding=ROUND_UP)


@dataclass
class Fill:
    id: str
    timestamp: int
    amount: Decimal
    price: Decimal
    taker: bool
    fee: Decimal
    fee_currency: str

    def to_json(self) -> dict[str, object]:
        return {"id": self.id, "timestamp": self.timestamp, "amount": fmt(self.amount),
                "price": fmt(self.price), "taker": self.taker, "fee": fmt(self.fee),
                "feeCurrency": self.fee_currency, "settled": True}


@dataclass
class Order:
    order_id: str
    client_order_id: str | None
    market: str
    side: str
    order_type: str
    operator_id: int
    created: int
    amount: Decimal | None = None
    amount_quote: Decimal | None = None
    price: Decimal | None = None
    time_in_force: str = "GTC"
    post_only: bool = False
    self_trade_prevention: str = "decrementAndCancel"
    status: str = "new"
    updated: int = 0
    on_hold: Decimal = Decimal(0)
    filled_amount: Decimal = Decimal(0)
    filled_amount_quote: Decimal = Decimal(0)
    fee_paid: Decimal = Decimal(0)
    spent_quote: Decimal = Decimal(0)  # amountQuote orders: quote used, fee included
    fills: list[Fill] = field(default_factory=list)
    checked_minute: int = 0  # lazy matching has looked at candles up to this minute

    @property
    def spec(self) -> Market:
        return MARKETS[self.market]

    @property
    def is_open(self) -> bool:
        return self.status in OPEN_STATUSES

    @property
    def hold_currency(self) -> str:
        return self.spec.quote if self.side == "buy" else self.spec.base

    def to_json(self) -> dict[str, object]:
        body: dict[str, object] = {"orderId": self.order_id}
        if self.client_order_id is not None:
            body["clientOrderId"] = self.client_order_id
        body.update({"market": self.market, "created": self.created,
                     "updated": self.updated or self.created, "status": self.status,
                     "side": self.side, "orderType": self.order_type})
        if self.amount is not None:
            body["amount"] = fmt(self.amount)
            body["amountRemaining"] = fmt(self.amount - self.filled_amount)
        if self.amount_quote is not None:
            body["amountQuote"] = fmt(self.amount_quote)
            body["amountQuoteRemaining"] = fmt(self.amount_quote - self.spent_quote)
        if self.price is not None:
            body["price"] = fmt(self.price)
        body.update({
            "onHold": fmt(self.on_hold),
            "onHoldCurrency": self.hold_currency,
            "filledAmount": fmt(self.filled_amount),
            "filledAmountQuote": fmt(self.filled_amount_quote),
            "feePaid": fmt(self.fee_paid),
            "feeCurrency": self.spec.quote,
            "fills": [fill.to_json() for fill in self.fills],
            "selfTradePrevention": self.self_trade_prevention,
            "visible": self.order_type == "limit",
            "timeInForce": self.time_in_force,
            "postOnly": self.post_only,
            "operatorId": self.operator_id,
        })
        if self.order_type == "market":
            body["disableMarketProtection"] = False
        return body


def _decimal(body: dict[str, object], name: str) -> Decimal | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, str | int | Decimal):
        raise invalid(name)
    try:
        number = Decimal(value)
    except (InvalidOperation, ValueError):
        raise invalid(name) from None
    if not number.is_finite() or number <= 0:
        raise invalid(name)
    return number


def _uuid_text(value: object) -> bool:
    if not isinstance(value, str):
        return False
    try:
        return str(uuid.UUID(value)) == value.lower()
    except ValueError:
        return False


class Account:
    """Balances and orders; every public method takes the lock and settles first."""

    def __init__(self, path: PricePath, balances: dict[str, Decimal]) -> None:
        self.path = path
        self._initial = dict(balances)
        self._lock = threading.RLock()
        self.reset()

    def reset(self, balances: dict[str, Decimal] | None = None) -> None:
        with self._lock:
            if balances is not None:
                self._initial = dict(balances)
            self.available: dict[str, Decimal] = dict(self._initial)
            self.in_order: dict[str, Decimal] = {}
            self.orders: list[Order] = []
            # Off: GET/DELETE /order by clientOrderId find open orders only (a completed one
            # answers 240), as Bitvavo may — it documents no lookup of completed orders by
            # clientOrderId. By orderId, /orders and /trades still find them.
            self.completed_by_client_order_id = True

    # -- balances ----------------------------------------------------------------------------

    def _move(self, symbol: str, available: Decimal = Decimal(0),
              in_order: Decimal = Decimal(0)) -> None:
        self.available[symbol] = self.available.get(symbol, Decimal(0)) + available
        self.in_order[symbol] = self.in_order.get(symbol, Decimal(0)) + in_order

    def balance(self, now_ms: int, symbol: str | None) -> list[dict[str, str]]:
        with self._lock:
            self.settle(now_ms)
            symbols = sorted(set(self.available) | set(self.in_order))
            rows = []
            for name in symbols:
                available = self.available.get(name, Decimal(0))
                in_order = self.in_order.get(name, Decimal(0))
                if symbol is not None and name != symbol:
                    continue
                if available == 0 and in_order == 0:
                    continue
                rows.append({"symbol": name, "available": fmt(available),
                             "inOrder": fmt(in_order)})
            return rows

    # -- placing -----------------------------------------------------------------------------

    def place(self, body: dict[str, object], now_ms: int,
              outcome: tuple[str, Decimal] | None = None) -> Order:
        """Validate and place; `outcome` (the `unfilled` fault): a market order fills only that
        fraction of its size and ends with that status."""
        with self._lock:
            self.settle(now_ms)
            order = self._validate(body, now_ms)
            if order.order_type == "market":
                self._fill_market(order, now_ms, outcome)
            else:
                self._place_limit(order, now_ms)
            self.orders.append(order)
            return order

    def _validate(self, body: dict[str, object], now_ms: int) -> Order:
        for name in body:
            if name not in BODY_PARAMS:
                raise ApiError(201, f"{name} body parameter is not supported.")
        market = body.get("market")
        if market is None:
            raise required("market")
        if market not in MARKETS:
            raise invalid("market")
        side = body.get("side")
        if side is None:
            raise required("side")
        if side not in ("buy", "sell"):
            raise invalid("side")
        order_type = body.get("orderType")
        if order_type is None:
            raise required("orderType")
        if order_type not in ORDER_TYPES:
            raise invalid("orderType")
        if order_type not in SUPPORTED_ORDER_TYPES:
            raise ApiError(202, f"{order_type} orders are not supported by the sandbox.")
        operator_id = body.get("operatorId")
        if operator_id is None:
            raise required("operatorId")
        if (isinstance(operator_id, bool) or not isinstance(operator_id, int)
                or not -INT64_MAX - 1 <= operator_id <= INT64_MAX):
            raise invalid("operatorId")
        raw_client_order_id = body.get("clientOrderId")
        if raw_client_order_id is not None and not _uuid_text(raw_client_order_id):
            raise invalid("clientOrderId")
        client_order_id = None if raw_client_order_id is None else str(raw_client_order_id)
        spec = MARKETS[str(market)]
        amount = _decimal(body, "amount")
        amount_quote = _decimal(body, "amountQuote")
        price = _decimal(body, "price")
        time_in_force = body.get("timeInForce", "GTC")
        if time_in_force not in TIME_IN_FORCE:
            raise invalid("timeInForce")
        post_only = body.get("postOnly", False)
        if not isinstance(post_only, bool):
            raise invalid("postOnly")
        stp = body.get("selfTradePrevention", "decrementAndCancel")
        if stp not in SELF_TRADE_PREVENTION:
            raise invalid("selfTradePrevention")

        if order_type == "market":
            if amount is not None and amount_quote is not None:
                raise ApiError(206, "Use either amount or amountQuote. The usage of both "
                               "parameters at the same time is not supported.")
            if amount is None and amount_quote is None:
                raise required("amount")
            for name in ("price", "postOnly"):
                if name in body:
                    raise ApiError(202, f"{name} order parameter is not supported.")
        else:
            if amount_quote is not None:
                raise ApiError(202, "amountQuote order parameter is not supported.")
            if amount is None:
                raise required("amount")
            if price is None:
                raise required("price")
            if price % spec.tick_size != 0:
                raise ApiError(214)
        if amount is not None and amount != spec.quantize_amount(amount):
            raise invalid("amount")
        if amount_quote is not None and amount_quote != amount_quote.quantize(
                Decimal(1).scaleb(-spec.notional_decimals)):
            raise invalid("amountQuote")

        bid, ask = self.path.best_bid_ask(spec.market, now_ms)
        reference_price = price if price is not None else (ask if side == "buy" else bid)
        if amount is not None and amount < spec.min_base:
            raise ApiError(212)
        notional = amount_quote if amount_quote is not None else amount * reference_price  # type: ignore[operator]
        if notional < spec.min_quote:
            raise ApiError(217, f"Minimum order size in quote currency is {spec.min_quote} "
                           f"{spec.quote} or {spec.min_base} {spec.base}.")
        if client_order_id is not None and any(
                o.market == market and o.is_open and o.client_order_id == client_order_id
                for o in self.orders):
            raise ApiError(220, "clientOrderId is already in use by an open order in this "
                           "market.")
        if order_type == "limit":
            open_count = sum(1 for o in self.orders if o.market == market and o.is_open)
            if open_count >= spec.max_open_orders:
                raise ApiError(235)
        return Order(
            order_id=str(uuid.uuid4()), client_order_id=client_order_id, market=spec.market,
            side=str(side), order_type=str(order_type), operator_id=operator_id,
            created=now_ms, updated=now_ms, amount=amount, amount_quote=amount_quote,
            price=price, time_in_force=str(time_in_force), post_only=post_only,
            self_trade_prevention=str(stp), checked_minute=now_ms // MINUTE_MS,
        )

    def _insufficient(self) -> ApiError:
        return ApiError(216)

    def _fill_market(self, order: Order, now_ms: int,
                     outcome: tuple[str, Decimal] | None = None) -> None:
        spec = order.spec
        bid, ask = self.path.best_bid_ask(spec.market, now_ms)
        price = ask if order.side == "buy" else bid
        if order.amount is not None:
            amount = order.amount
        elif order.side == "buy":
            budget = order.amount_quote / (1 + TAKER_FEE)  # type: ignore[operator]
            amount = spec.quantize_amount(budget / price)
        else:
            amount = spec.quantize_amount(order.amount_quote / price)  # type: ignore[operator]
        if amount <= 0:
            raise ApiError(212)
        quote = amount * price
        fee = _fee(quote, TAKER_FEE)
        if order.side == "buy":
            if order.amount_quote is not None and quote + fee > order.amount_quote:
                amount -= Decimal(1).scaleb(-spec.quantity_decimals)
                quote = amount * price
                fee = _fee(quote, TAKER_FEE)
            if self.available.get(spec.quote, Decimal(0)) < quote + fee:
                raise self._insufficient()
        elif self.available.get(spec.base, Decimal(0)) < amount:
            raise self._insufficient()
        status = "filled"
        if outcome is not None:  # the whole order was funded; only part of it fills
            status, fraction = outcome
            amount = spec.quantize_amount(amount * fraction)
            quote = amount * price
            fee = _fee(quote, TAKER_FEE)
        order.status = status
        if amount <= 0:
            return
        if order.side == "buy":
            self._move(spec.quote, available=-(quote + fee))
            self._move(spec.base, available=amount)
            order.spent_quote = quote + fee
        else:
            self._move(spec.base, available=-amount)
            self._move(spec.quote, available=quote - fee)
            order.spent_quote = quote
        self._record_fill(order, amount, price, fee, taker=True, at=now_ms)

    def _record_fill(self, order: Order, amount: Decimal, price: Decimal, fee: Decimal, *,
                     taker: bool, at: int) -> None:
        order.fills.append(Fill(str(uuid.uuid4()), at, amount, price, taker, fee,
                                order.spec.quote))
        order.filled_amount += amount
        order.filled_amount_quote += amount * price
        order.fee_paid += fee
        order.updated = at

    def _place_limit(self, order: Order, now_ms: int) -> None:
        spec = order.spec
        amount, price = order.amount, order.price
        assert amount is not None and price is not None
        if order.side == "buy":
            hold = (amount * price * (1 + TAKER_FEE)).quantize(FEE_QUANTUM, rounding=ROUND_UP)
            if self.available.get(spec.quote, Decimal(0)) < hold:
                raise self._insufficient()
        else:
            hold = amount
            if self.available.get(spec.base, Decimal(0)) < hold:
                raise self._insufficient()
        bid, ask = self.path.best_bid_ask(spec.market, now_ms)
        marketable = price >= ask if order.side == "buy" else price <= bid
        if marketable and order.post_only:
            order.status = "canceledPostOnly"
            return
        if marketable:
            self._settle_limit(order, hold, ask if order.side == "buy" else bid, now_ms,
                               taker=True)
            return
        if order.time_in_force in ("IOC", "FOK"):
            order.status = "canceledIOC" if order.time_in_force == "IOC" else "canceledFOK"
            return
        self._move(order.hold_currency, available=-hold, in_order=hold)
        order.on_hold = hold

    def _settle_limit(self, order: Order, hold: Decimal, fill_price: Decimal, at: int, *,
                      taker: bool) -> None:
        """Fill a whole limit order at `fill_price`; `hold` is what it reserved (or would)."""
        spec = order.spec
        amount = order.amount
        assert amount is not None
        quote = amount * fill_price
        fee = _fee(quote, TAKER_FEE if taker else MAKER_FEE)
        self._move(order.hold_currency, in_order=-order.on_hold, available=order.on_hold)
        order.on_hold = Decimal(0)
        if order.side == "buy":
            self._move(spec.quote, available=-(quote + fee))
            self._move(spec.base, available=amount)
        else:
            self._move(spec.base, available=-amount)
            self._move(spec.quote, available=quote - fee)
        self._record_fill(order, amount, fill_price, fee, taker=taker, at=at)
        order.status = "filled"

    # -- lazy matching of resting limit orders -----------------------------------------------

    def settle(self, now_ms: int) -> None:
        with self._lock:
            now_minute = now_ms // MINUTE_MS
            for order in self.orders:
                if not order.is_open or order.order_type != "limit":
                    continue
                start = max(order.checked_minute + 1, now_minute - MAX_LAZY_SCAN_MINUTES)
                for minute in range(start, now_minute + 1):
                    candle = self.path.candle(order.market, minute)
                    price = order.price
                    assert price is not None
                    reached = candle.low <= price if order.side == "buy" else candle.high >= price
                    if reached:
                        at = max(order.created, minute * MINUTE_MS)
                        self._settle_limit(order, order.on_hold, price, at, taker=False)
                        break
                order.checked_minute = now_minute

    # -- reading and canceling ---------------------------------------------------------------

    def find(self, market: str, order_id: str | None, client_order_id: str | None) -> Order:
        """clientOrderId wins when both are given; the newest match is returned."""
        for order in reversed(self.orders):
            if order.market != market:
                continue
            if client_order_id is not None:
                if order.client_order_id == client_order_id and (
                        order.is_open or self.completed_by_client_order_id):
                    return order
            elif order.order_id == order_id:
                return order
        raise ApiError(240)

    def get(self, market: str, order_id: str | None, client_order_id: str | None,
            now_ms: int) -> Order:
        with self._lock:
            self.settle(now_ms)
            return self.find(market, order_id, client_order_id)

    def cancel(self, market: str, order_id: str | None, client_order_id: str | None,
               now_ms: int) -> Order:
        with self._lock:
            self.settle(now_ms)
            order = self.find(market, order_id, client_order_id)
            if not order.is_open:  # it exists, but is filled/canceled/expired: Bitvavo's 233
                raise ApiError(233)
            self._move(order.hold_currency, in_order=-order.on_hold, available=order.on_hold)
            order.on_hold = Decimal(0)
            order.status = "canceled"
            order.updated = now_ms
            return order

    def cancel_all(self, market: str | None, now_ms: int) -> list[Order]:
        with self._lock:
            self.settle(now_ms)
            open_orders = [o for o in self.orders
                           if o.is_open and (market is None or o.market == market)]
            for order in open_orders:
                self.cancel(order.market, order.order_id, None, now_ms)
            return open_orders

    def history(self, market: str, now_ms: int, limit: int, start: int | None,
                end: int | None) -> list[Order]:
        with self._lock:
            self.settle(now_ms)
            rows = [o for o in reversed(self.orders) if o.market == market
                    and (start is None or o.created >= start)
                    and (end is None or o.created <= end)]
            return rows[:limit]

    def open_orders(self, market: str | None, now_ms: int) -> list[Order]:
        with self._lock:
            self.settle(now_ms)
            return [o for o in reversed(self.orders)
                    if o.is_open and (market is None or o.market == market)]

    def trades(self, market: str, now_ms: int, limit: int, start: int | None,
               end: int | None) -> list[dict[str, object]]:
        with self._lock:
            self.settle(now_ms)
            rows: list[dict[str, object]] = []
            for order in self.orders:
                if order.market != market:
                    continue
                for fill in order.fills:
                    if (start is not None and fill.timestamp < start) or (
                            end is not None and fill.timestamp > end):
                        continue
                    row: dict[str, object] = {"id": fill.id, "orderId": order.order_id}
                    if order.client_order_id is not None:
                        row["clientOrderId"] = order.client_order_id
                    row.update({"timestamp": fill.timestamp, "market": market,
                                "side": order.side, "amount": fmt(fill.amount),
                                "price": fmt(fill.price), "taker": fill.taker,
                                "fee": fmt(fill.fee), "feeCurrency": fill.fee_currency,
                                "settled": True})
                    rows.append(row)
            rows.sort(key=lambda r: r["timestamp"], reverse=True)  # type: ignore[arg-type,return-value]
            return rows[:limit]

    def all_orders(self, now_ms: int) -> list[dict[str, object]]:
        with self._lock:
            self.settle(now_ms)
            return [o.to_json() for o in self.orders]
