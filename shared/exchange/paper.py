"""PaperTrade: BitvavoTrade's interface, simulated in memory, no credentials (TRADING_MODE=paper).

Orders are sized exactly as BitvavoTrade sizes them (shared.exchange.precision, with the same
injected `markets` lookup), so what paper accepts, live accepts. A market order fills at once at
`price_source(market)` (trading_execute passes the public ticker price); the filled amount has
the market's quantityDecimals. The taker fee is charged in the quote currency and, as on the
exchange, a buy by amountQuote spends at most amountQuote, fee included. Orders are kept in
memory so `get_order(client_order_id=…)` answers like the exchange would, and refusals
use the exchange's exceptions (BelowMinimumSize 217, ClientOrderIdConflict 220,
OrderNotCancellable 233, OrderNotFound 240) so callers handle one set; each names the order.
A clientOrderId is never accepted twice while its order is remembered (at least as strict as
Bitvavo, which only forbids reuse among open orders).

Memory is bounded: a paper order is over as soon as it is placed, and only the latest
`max_finished_orders` (500 by default, ~2.5 MB) are kept. A trading_execute process places
paper orders for as long as it lives; keeping every one of them grew its worker by ~5 KB per
execution (+82 % RSS after 10,000 executions, found by bench/http_execute.py). The only reader of
a finished paper order is /reconcile, for an execution whose result could not be recorded, within
a minute or two; an order forgotten before that reads as not found (240), which the reconciler
treats like a paper order lost with its process: `failed` once old enough (nothing outside this
memory was ever placed).
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from datetime import datetime
from decimal import ROUND_DOWN, ROUND_UP, Decimal
from typing import Any

from shared.exchange.errors import (
    BelowMinimumSize,
    ClientOrderIdConflict,
    InvalidOrderRequest,
    OrderNotCancellable,
    OrderNotFound,
    datetime_from_ms,
    naming_order,
)
from shared.exchange.funds import DEFAULT_TAKER_FEE_RATE
from shared.exchange.models import (
    Fill,
    Market,
    Order,
    OrderCancellation,
    OrderReference,
    OrderRequest,
)
from shared.exchange.precision import MarketLookup, listing, quantize_order
from shared.exchange.ratelimit import Clock
from shared.exchange.roles import Side

DEFAULT_MAX_FINISHED_ORDERS = 500
FEE_QUANTUM = Decimal("1e-8")  # fees (in quote) round up to 8 decimals, as the sandbox's

PriceSource = Callable[[str], Decimal]


class PaperTrade:
    def __init__(
        self,
        price_source: PriceSource,
        *,
        markets: MarketLookup,
        taker_fee_rate: Decimal = DEFAULT_TAKER_FEE_RATE,
        operator_id: int | None = None,
        clock: Clock = time.time,
        max_finished_orders: int = DEFAULT_MAX_FINISHED_ORDERS,
    ) -> None:
        if isinstance(taker_fee_rate, float) or not 0 <= taker_fee_rate < 1:
            raise ValueError("taker_fee_rate must be a Decimal in [0, 1)")
        if max_finished_orders < 1:
            raise ValueError("max_finished_orders must be at least 1")
        self._price_source = price_source
        self._markets = markets
        self.taker_fee_rate = Decimal(taker_fee_rate)
        self.operator_id = operator_id
        self._clock = clock
        self._orders: dict[uuid.UUID, Order] = {}
        # Orders, oldest first: the ones forgotten first.
        self._finished: deque[uuid.UUID] = deque()
        self._max_finished = max_finished_orders
        self._lock = threading.Lock()

    # -- orders -------------------------------------------------------------------------------

    def place_market_order(
        self,
        market: str,
        side: Side,
        *,
        client_order_id: uuid.UUID | str,
        amount_quote: Decimal | None = None,
        amount: Decimal | None = None,
    ) -> Order:
        request = OrderRequest.market_order(
            market,
            side,
            amount_quote=amount_quote,
            amount=amount,
            client_order_id=client_order_id,
            operator_id=self.operator_id,
        )
        with naming_order(request.market, request.client_order_id):
            spec = listing(self._markets, request.market)
            request = quantize_order(request, spec)
            price = self._price(market)
            if request.amount is not None:
                minimum = spec.min_order_in_quote_asset
                if minimum is not None and request.amount * price < minimum:
                    raise BelowMinimumSize(  # what the exchange answers (217)
                        f"Minimum order size in quote currency is {minimum} {spec.quote}.",
                        http_status=400,
                        error_code=217,
                        endpoint="POST /order",
                    )
            return self._place(request, fill_price=price, spec=spec)

    def get_order(
        self,
        market: str,
        *,
        client_order_id: uuid.UUID | str | None = None,
        order_id: str | None = None,
    ) -> Order:
        reference = OrderReference.of(market, client_order_id, order_id)
        with naming_order(reference.market, reference.client_order_id), self._lock:
            return self._find(reference, "GET /order")

    def cancel_order(
        self,
        market: str,
        *,
        client_order_id: uuid.UUID | str | None = None,
        order_id: str | None = None,
    ) -> OrderCancellation:
        """A paper market order fills at once, so one that exists is never open: 233, as the
        exchange answers for a filled order (240 for one it does not know)."""
        reference = OrderReference.of(market, client_order_id, order_id)
        with naming_order(reference.market, reference.client_order_id), self._lock:
            self._find(reference, "DELETE /order")
            raise OrderNotCancellable(
                "Order must be active (status new or partiallyFilled) to allow "
                "updating/cancelling.",
                http_status=400,
                error_code=233,
                endpoint="DELETE /order",
            )

    # -- simulation ---------------------------------------------------------------------------

    def _price(self, market: str) -> Decimal:
        price = self._price_source(market)
        if not isinstance(price, Decimal) or not price.is_finite() or price <= 0:
            raise InvalidOrderRequest(f"no usable paper price for {market}: {price!r}")
        return price

    def _place(self, request: OrderRequest, *, fill_price: Decimal, spec: Market) -> Order:
        now = self._now()
        fields: dict[str, Any] = {
            "order_id": str(uuid.uuid4()),
            "client_order_id": request.client_order_id,
            "market": request.market,
            "side": request.side,
            "order_type": "market",
            "created": now,
            "updated": now,
            "amount": request.amount,
            "amount_quote": request.amount_quote,
            "fee_currency": request.market.split("-")[1],
            "operator_id": request.operator_id,
            "self_trade_prevention": "decrementAndCancel",
            "visible": False,
        }
        fields.update(self._fill(request, fill_price, now, spec))
        order = Order(**fields)
        with self._lock:
            if request.client_order_id in self._orders:
                raise ClientOrderIdConflict(
                    "A order with this clientOrderId already exists.",
                    http_status=400,
                    error_code=220,
                    endpoint="POST /order",
                )
            self._orders[request.client_order_id] = order
            self._finish(request.client_order_id)
        return order

    def _finish(self, client_order_id: uuid.UUID) -> None:
        """Remember this order; forget the oldest ones beyond the bound. Called with the lock
        held."""
        self._finished.append(client_order_id)
        while len(self._finished) > self._max_finished:
            self._orders.pop(self._finished.popleft(), None)

    def _fill(
        self, request: OrderRequest, price: Decimal, now: datetime, spec: Market
    ) -> dict[str, Any]:
        """Like the exchange: the fee is charged in quote; a buy by amountQuote spends at most
        amountQuote, fee included; the amount has the market's quantityDecimals, rounded down."""
        rate = self.taker_fee_rate
        assert spec.quantity_decimals is not None  # quantize_order checked the listing
        quantum = Decimal(1).scaleb(-spec.quantity_decimals)
        if request.amount is not None:
            amount = request.amount
        else:
            assert request.amount_quote is not None
            budget = (
                request.amount_quote / (1 + rate)
                if request.side == "buy"
                else (request.amount_quote)
            )
            amount = (budget / price).quantize(quantum, ROUND_DOWN)
        quote = amount * price
        fee = (quote * rate).quantize(FEE_QUANTUM, ROUND_UP)
        if request.side == "buy" and request.amount_quote is not None:
            while amount > 0 and quote + fee > request.amount_quote:
                amount -= quantum
                quote = amount * price
                fee = (quote * rate).quantize(FEE_QUANTUM, ROUND_UP)
        if amount <= 0:
            raise InvalidOrderRequest("the order is too small to fill a single unit")
        spent_quote = quote + fee if request.side == "buy" else quote
        fee_currency = request.market.split("-")[1]
        fill = Fill(
            id=str(uuid.uuid4()),
            timestamp=now,
            amount=amount,
            price=price,
            taker=True,
            fee=fee,
            fee_currency=fee_currency,
            settled=True,
        )
        return {
            "status": "filled",
            "amount_remaining": Decimal(0) if request.amount is not None else None,
            "amount_quote_remaining": (
                request.amount_quote - spent_quote if request.amount_quote is not None else None
            ),
            "filled_amount": amount,
            "filled_amount_quote": quote,
            "fee_paid": fee,
            "fills": (fill,),
        }

    def _find(self, reference: OrderReference, endpoint: str) -> Order:
        order: Order | None = None
        if reference.client_order_id is not None:
            order = self._orders.get(reference.client_order_id)
        else:
            order = next(
                (o for o in self._orders.values() if o.order_id == reference.order_id), None
            )
        if order is None or order.market != reference.market:
            raise OrderNotFound(
                "No order found.", http_status=404, error_code=240, endpoint=endpoint
            )
        return order

    def _now(self) -> datetime:
        return datetime_from_ms(int(self._clock() * 1000))
