"""BitvavoTrade: place, read and cancel orders with the trade key — trading_execute only (G3).

This module is left out of the scanner's bundle, and `shared.exchange` never imports it:
import it as `from shared.exchange.trade import BitvavoTrade`.

Every order carries `operatorId` and the caller's UUID `clientOrderId` (required: the
execution's claim id), so an order whose answer is lost can be found again with
`get_order(client_order_id=…)`; every error an order call raises names that id and the market.
POST /order is sent exactly once: a timeout, a transport failure, a 5xx, codes 101/107/108/109/400
or an unreadable answer raise an OutcomeUnknown error and the caller reconciles (G10). Nothing
here retries.

Orders are sized to their market first (shared.exchange.precision) with the listing from the
injected `markets` lookup — a MarketCatalog on a read-only client: this client never fetches
market data itself (G3). What rounds to below the market minimum, what exceeds its maximum and
any market that is not `trading` are refused before sending. With `fee_headroom`
(shared.exchange.funds; trading_execute always passes it) a buy by amountQuote is also sized to fit
the account's free quote balance with the taker fee on top: the one account read this client
makes, GET /balance with the trade key (its own account, not market data), rarely.
"""

from __future__ import annotations

import os
import time
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, NoReturn

import httpx
from pydantic import SecretStr

from shared.exchange.errors import (
    ExchangeError,
    InvalidOrderRequest,
    KeySeparationError,
    MissingCredentials,
    naming_order,
)
from shared.exchange.funds import FeeHeadroom, FreeBalance, fit_buy
from shared.exchange.models import (
    MARKET_PATTERN,
    AccountTrade,
    Balance,
    Order,
    OrderCancellation,
    OrderReference,
    OrderRequest,
    parse_answer,
    parse_rows,
)
from shared.exchange.precision import MarketLookup, listing, quantize_order
from shared.exchange.ratelimit import Clock, Sleep
from shared.exchange.roles import Side, refuse_market_data
from shared.exchange.settings import DEFAULT_REST_URL, TradeExchangeSettings
from shared.exchange.transport import (
    DEFAULT_TIMEOUT,
    BitvavoTransport,
    Credentials,
    TransportClient,
)

_CLIENT = "BitvavoTrade"


def _text(value: str | SecretStr | None) -> str | None:
    if value is None:
        return None
    text = value.get_secret_value() if isinstance(value, SecretStr) else value
    return text or None


class BitvavoTrade(TransportClient):
    def __init__(
        self,
        base_url: str = DEFAULT_REST_URL,
        *,
        api_key: str | SecretStr | None,
        api_secret: str | SecretStr | None,
        operator_id: int | None,
        markets: MarketLookup,
        readonly_api_key: str | SecretStr | None = None,
        fee_headroom: FeeHeadroom | None = None,
        timeout: httpx.Timeout = DEFAULT_TIMEOUT,
        http_transport: httpx.BaseTransport | None = None,
        clock: Clock = time.time,
        sleep: Sleep = time.sleep,
        **transport_options: Any,
    ) -> None:
        key, secret = _text(api_key), _text(api_secret)
        missing = [
            name
            for name, value in (
                ("BITVAVO_TRADE_API_KEY", key),
                ("BITVAVO_TRADE_API_SECRET", secret),
                ("BITVAVO_OPERATOR_ID", operator_id),
            )
            if value is None
        ]
        if missing:
            raise MissingCredentials(f"{_CLIENT} needs {', '.join(missing)}")
        if isinstance(operator_id, bool) or not isinstance(operator_id, int) or operator_id < 0:
            raise MissingCredentials(f"{_CLIENT} needs BITVAVO_OPERATOR_ID as a non-negative int")
        # G3: the trade key must not be the read-only key. Also checked against the process
        # environment, so a client built by hand cannot skip it.
        readonly = _text(readonly_api_key) or os.environ.get("BITVAVO_READONLY_API_KEY") or None
        if readonly is not None and readonly == key:
            raise KeySeparationError(
                f"{_CLIENT} refuses the read-only key: BITVAVO_TRADE_API_KEY must be a "
                "separate key with trade permission"
            )
        assert key is not None and secret is not None
        self.operator_id: int = operator_id
        self._markets = markets
        self._funds = (None if fee_headroom is None
                       else FreeBalance(self._free_balance, fee_headroom, clock=clock))
        self._transport = BitvavoTransport(
            base_url,
            credentials=Credentials.of(key, secret),
            timeout=timeout,
            http_transport=http_transport,
            clock=clock,
            sleep=sleep,
            **transport_options,
        )

    @classmethod
    def from_settings(
        cls,
        settings: TradeExchangeSettings | None = None,
        *,
        markets: MarketLookup,
        **options: Any,
    ) -> BitvavoTrade:
        settings = settings or TradeExchangeSettings()
        return cls(
            settings.bitvavo_rest_url,
            api_key=settings.bitvavo_trade_api_key,
            api_secret=settings.bitvavo_trade_api_secret,
            operator_id=settings.bitvavo_operator_id,
            markets=markets,
            readonly_api_key=settings.bitvavo_readonly_api_key,
            **options,
        )

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
        """Exactly one of `amount_quote` (spend/receive this much quote) and `amount` (base),
        each rounded down to the market's precision."""
        request = OrderRequest.market_order(
            market,
            side,
            amount_quote=amount_quote,
            amount=amount,
            client_order_id=client_order_id,
            operator_id=self.operator_id,
        )
        return self._place(request)

    def get_order(
        self,
        market: str,
        *,
        client_order_id: uuid.UUID | str | None = None,
        order_id: str | None = None,
    ) -> Order:
        """The way to learn an order's fate after OutcomeUnknown (raises OrderNotFound)."""
        reference = OrderReference.of(market, client_order_id, order_id)
        with naming_order(reference.market, reference.client_order_id):
            payload = self._transport.request(
                "GET", "/order", params=reference.to_params(), signed=True
            )
            return parse_answer(Order, payload, endpoint="GET /order")

    def cancel_order(
        self,
        market: str,
        *,
        client_order_id: uuid.UUID | str | None = None,
        order_id: str | None = None,
    ) -> OrderCancellation:
        reference = OrderReference.of(market, client_order_id, order_id)
        params = {**reference.to_params(), "operatorId": self.operator_id}
        with naming_order(reference.market, reference.client_order_id):
            payload = self._transport.request("DELETE", "/order", params=params, signed=True)
            return parse_answer(OrderCancellation, payload, endpoint="DELETE /order")

    # -- the account's history: how /reconcile finds an order GET /order does not ---------------

    def orders(self, market: str, *, start: datetime | None = None,
               end: datetime | None = None, limit: int = 1000) -> list[Order]:
        """GET /orders: the market's orders created in [start, end], open and completed, newest
        first, at most `limit` (1..1000). Weight 5."""
        payload = self._transport.request(
            "GET", "/orders", params=_history_params(market, start, end, limit), weight=5,
            signed=True)
        return parse_rows(Order, payload, endpoint="GET /orders")

    def trades(self, market: str, *, start: datetime | None = None,
               end: datetime | None = None, limit: int = 1000) -> list[AccountTrade]:
        """GET /trades: the account's fills on the market in [start, end], each naming its order
        (orderId, clientOrderId), newest first, at most `limit` (1..1000). Weight 5."""
        payload = self._transport.request(
            "GET", "/trades", params=_history_params(market, start, end, limit), weight=5,
            signed=True)
        return parse_rows(AccountTrade, payload, endpoint="GET /trades")

    def _place(self, request: OrderRequest) -> Order:
        # Sent once. No retry, whatever happens (G10); whatever is raised names the order.
        with naming_order(request.market, request.client_order_id):
            # The free balance may be read (it may wait) before the listing's lookup, which is
            # the last moment before sending that may wait (shared.execution.deadline).
            free = self._funds.before(request) if self._funds is not None else None
            market = listing(self._markets, request.market)
            request = quantize_order(request, market)
            if free is not None and self._funds is not None:
                request = fit_buy(request, market, free, self._funds.headroom)
            try:
                payload = self._transport.request(
                    "POST", "/order", body=request.to_body(), signed=True
                )
                order = parse_answer(Order, payload, endpoint="POST /order")
            except ExchangeError as error:
                if self._funds is not None:
                    self._funds.after(request, error)
                raise
            if self._funds is not None:
                self._funds.after(request, order)
            return order

    def _free_balance(self, symbol: str) -> Decimal:
        """GET /balance?symbol= (weight 5): what is available of `symbol` (not in orders)."""
        payload = self._transport.request(
            "GET", "/balance", params={"symbol": symbol}, weight=5, signed=True
        )
        rows = parse_rows(Balance, payload, endpoint="GET /balance")
        return sum((row.available for row in rows if row.symbol == symbol), Decimal(0))

    # -- the read-only role's methods: refused (G3) -----------------------------------------------

    def time(self, *args: Any, **kwargs: Any) -> NoReturn:
        raise refuse_market_data(_CLIENT, "fetch market data")

    def markets(self, *args: Any, **kwargs: Any) -> NoReturn:
        raise refuse_market_data(_CLIENT, "fetch market data")

    def assets(self, *args: Any, **kwargs: Any) -> NoReturn:
        raise refuse_market_data(_CLIENT, "fetch market data")

    def ticker_price(self, *args: Any, **kwargs: Any) -> NoReturn:
        raise refuse_market_data(_CLIENT, "fetch market data")

    def ticker_book(self, *args: Any, **kwargs: Any) -> NoReturn:
        raise refuse_market_data(_CLIENT, "fetch market data")

    def ticker_24h(self, *args: Any, **kwargs: Any) -> NoReturn:
        raise refuse_market_data(_CLIENT, "fetch market data")

    def order_book(self, *args: Any, **kwargs: Any) -> NoReturn:
        raise refuse_market_data(_CLIENT, "fetch market data")

    def candles(self, *args: Any, **kwargs: Any) -> NoReturn:
        raise refuse_market_data(_CLIENT, "fetch market data")

    def balance(self, *args: Any, **kwargs: Any) -> NoReturn:
        raise refuse_market_data(_CLIENT, "read balances")


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _history_params(market: str, start: datetime | None, end: datetime | None,
                    limit: int) -> dict[str, Any]:
    """GET /orders and /trades' query: the market, start/end in integer milliseconds, limit."""
    if not MARKET_PATTERN.fullmatch(market):
        raise InvalidOrderRequest("market is not like BTC-EUR")
    if not 1 <= limit <= 1000:
        raise ValueError("limit must be within 1..1000")

    def ms(moment: datetime | None) -> int | None:
        if moment is None:
            return None
        if moment.tzinfo is None:
            raise ValueError("start/end must be timezone-aware")
        return (moment - _EPOCH) // timedelta(milliseconds=1)

    return {"market": market, "limit": limit, "start": ms(start), "end": ms(end)}
