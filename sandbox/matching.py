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
- Validation follows Bitvavo's order: parameters (203/205/...), minimum and maximum sizes
  (212/217, 210), open-order limits (220/235), then funds (216). Cancelling an order that exists
  but is no longer open answers 233; one that does not exist, 240.
- Market statuses (listings.py): an `auction` refuses orders and cancellations (423, a guess at
  the code); a `halted` market accepts orders and executes none: a market order waits as `new`
  with its funds on hold and fills at the price of the moment its market trades again (or ends
  `expired` if the funds no longer cover it), a limit order rests and is matched only from then
  on (IOC/FOK answer 231, as Bitvavo's error table says for paused markets).
- A market order the balance cannot cover answers 216 (`insufficient_funds="reject"`, the default)
  or is accepted and ends `expired` without a fill (`"expire"`: Bitvavo's create-order page says it
  may). Whether Bitvavo takes the fee out of `amountQuote` or on top is undocumented: a buy by
  `amountQuote` spends at most `amountQuote` fee included (`amount_quote_fee="included"`, the
  default) or `amountQuote` plus the fee (`"on_top"`). Both are settable
  (`SANDBOX_INSUFFICIENT_FUNDS`, `SANDBOX_AMOUNT_QUOTE_FEE`, `POST /_sandbox/account`).
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import ROUND_UP, Decimal, InvalidOperation

from sandbox.errors import ApiError, invalid, required
from sandbox.listings import AUCTION, HALTED, TRADING, Listings
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
INSUFFICIENT_FUNDS = ("reject", "expire")
AMOUNT_QUOTE_FEE = ("included", "on_top")
AUCTION_REFUSAL = 423


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
    parked: bool = False  # a market order accepted while its market was halted

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

    def __init__(self, path: PricePath, balances: dict[str, Decimal], listings: Listings, *,
                 insufficient_funds: str = "reject", amount_quote_fee: str = "included") -> None:
        self.path = path
        self.listings = listings
        self._initial = dict(balances)
        self._initial_rules = {"insufficient_funds": insufficient_funds,
                               "amount_quote_fee": amount_quote_fee}
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
            self.configure(self._initial_rules)

    def configure(self, spec: Mapping[str, object]) -> dict[str, str]:
        """Set `insufficient_funds` and/or `amount_quote_fee` (see the module docstring)."""
        unknown = sorted(set(spec) - {"insufficient_funds", "amount_quote_fee"})
        if unknown:
            raise ValueError(f"unknown fields {unknown}")
        insufficient = spec.get("insufficient_funds", getattr(self, "insufficient_funds", None))
        fee = spec.get("amount_quote_fee", getattr(self, "amount_quote_fee", None))
        if insufficient not in INSUFFICIENT_FUNDS:
            raise ValueError(f"insufficient_funds must be one of {', '.join(INSUFFICIENT_FUNDS)}")
        if fee not in AMOUNT_QUOTE_FEE:
            raise ValueError(f"amount_quote_fee must be one of {', '.join(AMOUNT_QUOTE_FEE)}")
        with self._lock:
            self.insufficient_funds, self.amount_quote_fee = str(insufficient), str(fee)
            return self.rules()

    def rules(self) -> dict[str, str]:
        return {"insufficient_funds": self.insufficient_funds,
                "amount_quote_fee": self.amount_quote_fee}

    def change_listing(self, market: str, spec: dict[str, object], now_ms: int) -> None:
        """Set a market's status / maximum sizes. Nothing resting matches while a market does not
        trade; when it trades again, the market orders it accepted meanwhile fill (or expire)."""
        with self._lock:
            self.settle(now_ms)  # up to now under the old status
            before, after = self.listings.set(market, dict(spec))
            if before.status != TRADING and after.status == TRADING:
                for order in self.orders:
                    if order.market == market and order.parked and order.is_open:
                        self._move(order.hold_currency, in_order=-order.on_hold,
                                   available=order.on_hold)
                        order.on_hold = Decimal(0)
                        self._fill_market(order, now_ms)
                        order.parked = False

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
            halted = self.listings[order.market].status == HALTED
            if order.order_type == "market" and halted:
                self._park(order, now_ms)
            elif order.order_type == "market":
                self._fill_market(order, now_ms, outcome)
            else:
                self._place_limit(order, now_ms, halted=halted)
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
        if self.listings[str(market)].status == AUCTION:
            raise ApiError(AUCTION_REFUSAL, "The market is in auction: orders can be neither "
                           "placed nor cancelled.")
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
        listing = self.listings[spec.market]
        if amount is not None and amount > listing.max_base:
            raise ApiError(210, f"Amount exceeds the maximum allowed amount ({listing.max_base}).")
        if (amount_quote is not None or order_type == "limit") and notional > listing.max_quote:
            raise ApiError(210, f"Amount exceeds the maximum allowed amount ({listing.max_quote}"
                           f" {spec.quote}).")
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
        fee_on_top = self.amount_quote_fee == "on_top"
        if order.amount is not None:
            amount = order.amount
        elif order.side == "buy":
            budget = order.amount_quote if fee_on_top else order.amount_quote / (1 + TAKER_FEE)  # type: ignore[operator]
            amount = spec.quantize_amount(budget / price)  # type: ignore[operator]
        else:
            amount = spec.quantize_amount(order.amount_quote / price)  # type: ignore[operator]
        if amount <= 0:
            raise ApiError(212)
        quote = amount * price
        fee = _fee(quote, TAKER_FEE)
        if order.side == "buy":
            if (order.amount_quote is not None and not fee_on_top
                    and quote + fee > order.amount_quote):
                amount -= Decimal(1).scaleb(-spec.quantity_decimals)
                quote = amount * price
                fee = _fee(quote, TAKER_FEE)
            covered = self.available.get(spec.quote, Decimal(0)) >= quote + fee
        else:
            covered = self.available.get(spec.base, Decimal(0)) >= amount
        if not covered:
            if not order.parked and self.insufficient_funds == "reject":
                raise self._insufficient()
            order.status, order.updated = "expired", now_ms  # accepted, nothing filled
            return
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
            order.spent_quote = quote if fee_on_top else quote + fee
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

    def _park(self, order: Order, now_ms: int) -> None:
        """A market order on a halted market: accepted as `new`, its funds on hold, filled when
        the market trades again (change_listing)."""
        spec = order.spec
        bid, ask = self.path.best_bid_ask(spec.market, now_ms)
        if order.side == "sell":
            hold = order.amount if order.amount is not None else spec.quantize_amount(
                order.amount_quote / bid)  # type: ignore[operator]
        elif order.amount_quote is not None:
            hold = order.amount_quote + (_fee(order.amount_quote, TAKER_FEE)
                                         if self.amount_quote_fee == "on_top" else 0)
        else:
            hold = (order.amount * ask * (1 + TAKER_FEE)).quantize(  # type: ignore[operator]
                FEE_QUANTUM, rounding=ROUND_UP)
        if self.available.get(order.hold_currency, Decimal(0)) < hold:
            if self.insufficient_funds == "reject":
                raise self._insufficient()
            order.status = "expired"
            return
        self._move(order.hold_currency, available=-hold, in_order=hold)
        order.on_hold = hold
        order.parked = True

    def _place_limit(self, order: Order, now_ms: int, *, halted: bool = False) -> None:
        spec = order.spec
        amount, price = order.amount, order.price
        assert amount is not None and price is not None
        if halted and order.time_in_force != "GTC":
            raise ApiError(231, "The order is rejected by the matching engine. TimeInForce must "
                           "be GTC when markets are paused.")
        if order.side == "buy":
            hold = (amount * price * (1 + TAKER_FEE)).quantize(FEE_QUANTUM, rounding=ROUND_UP)
            if self.available.get(spec.quote, Decimal(0)) < hold:
                raise self._insufficient()
        else:
            hold = amount
            if self.available.get(spec.base, Decimal(0)) < hold:
                raise self._insufficient()
        bid, ask = self.path.best_bid_ask(spec.market, now_ms)
        marketable = not halted and (price >= ask if order.side == "buy" else price <= bid)
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
                if self.listings[order.market].status != TRADING:
                    order.checked_minute = now_minute  # nothing executes while it does not trade
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
            if self.listings[market].status == AUCTION:
                raise ApiError(AUCTION_REFUSAL, "The market is in auction: orders can be neither "
                               "placed nor cancelled.")
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
