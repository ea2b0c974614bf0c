"""The exchange as trading_execute composes it (G3): one read-only client without credentials, and
the order client of the configured mode.

    BitvavoReadonly (no key) ──► MarketCatalog ──► DeadlineLookup ──► BitvavoTrade | PaperTrade
                             ──► ServerClock (signs BitvavoTrade's requests)
                             ──► ticker price (PaperTrade's fills)

- `live`: BitvavoTrade with the trade key, `markets=` the catalog (through DeadlineLookup, which
  enforces MAX_CLAIM_AGE right before POST /order), `clock=` the server clock, `operatorId` from
  BITVAVO_OPERATOR_ID, the configured access window and read timeout, a rate-limit budget that
  refuses instead of sleeping (a wait would push the order past its claim's deadline), and fee
  headroom: a buy fits the free balance with TAKER_FEE_RATE on top (GET /balance read rarely,
  BALANCE_CACHE_SECONDS; shared.exchange.funds).
- `paper`: PaperTrade, sized by the same lookup, filled at the public ticker price with the taker
  fee (TAKER_FEE_RATE, 0.25 %). Its orders live in this process's memory: after a restart they are
  gone.

The catalog is read and the clock measured by `warm()` at start-up; an order's lookup reads
`/markets` again when the market's status is older than MARKET_STATUS_TTL_SECONDS (before the
MAX_CLAIM_AGE check, never between it and POST /order), and refuses a market that is not
`trading`. The clock is measured again after an AccessWindowError (`remeasure()`). Exchange errors
propagate unchanged (shared.execution.results maps them); a ticker price that cannot be read for a
paper fill is a MarketListingUnavailable — nothing was placed.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from decimal import Decimal
from typing import Any, cast

import httpx

from shared.exchange.catalog import MarketCatalog
from shared.exchange.clock import ServerClock
from shared.exchange.errors import ExchangeError, MarketListingUnavailable
from shared.exchange.funds import FeeHeadroom
from shared.exchange.models import Order, OrderCancellation
from shared.exchange.paper import PaperTrade
from shared.exchange.readonly import BitvavoReadonly
from shared.exchange.roles import OrderClient, Side
from shared.exchange.trade import BitvavoTrade
from shared.execution.deadline import DeadlineLookup
from shared.execution.settings import ExecuteSettings


class Venue:
    def __init__(self, settings: ExecuteSettings,
                 *, http_transport: httpx.BaseTransport | None = None) -> None:
        exchange, knobs = settings.exchange, settings.execution
        self.mode = knobs.trading_mode
        timeout = httpx.Timeout(connect=knobs.exchange_connect_timeout_seconds,
                                read=knobs.exchange_timeout_seconds,
                                write=knobs.exchange_timeout_seconds,
                                pool=knobs.exchange_connect_timeout_seconds)
        transport_options: dict[str, Any] = {"timeout": timeout, "max_rate_limit_wait": 0.0,
                                             "http_transport": http_transport}
        self.readonly = BitvavoReadonly(exchange.bitvavo_rest_url, **transport_options)
        self.catalog = MarketCatalog(self.readonly, ttl_seconds=knobs.market_catalog_ttl_seconds,
                                     status_ttl_seconds=knobs.market_status_ttl_seconds)
        self.clock = ServerClock()
        self.lookup = DeadlineLookup(self.catalog)
        self.orders: OrderClient
        if self.mode == "live":
            self.orders = BitvavoTrade.from_settings(
                exchange, markets=self.lookup, clock=self.clock,
                fee_headroom=FeeHeadroom(knobs.taker_fee_rate, knobs.balance_cache_seconds),
                access_window_ms=knobs.bitvavo_access_window_ms, **transport_options)
        else:
            self.orders = PaperTrade(self._paper_price, markets=self.lookup,
                                     taker_fee_rate=knobs.taker_fee_rate,
                                     operator_id=exchange.bitvavo_operator_id)
        # The live account, whose order history and fills /reconcile searches and sweeps.
        self.trade = self.orders if isinstance(self.orders, BitvavoTrade) else None

    # -- start-up -----------------------------------------------------------------------------
    def warm(self) -> dict[str, Any]:
        """Read the market listings and (live) measure the server clock. Never raises: what failed
        is retried on first use (the catalog) or left at the host clock (the offset)."""
        report: dict[str, Any] = {}
        try:
            report["markets"] = len(self.catalog.markets())
        except ExchangeError as error:
            report["markets_error"] = type(error).__name__
        if self.mode == "live":
            report.update(self.remeasure())
        return report

    def remeasure(self) -> dict[str, Any]:
        """Measure the server clock again (at start-up, and after an AccessWindowError)."""
        try:
            offset = self.clock.measure(self.readonly.time)
        except ExchangeError as error:
            return {"clock_error": type(error).__name__}
        return {"clock_offset_ms": round(offset * 1000, 1)}

    # -- orders -------------------------------------------------------------------------------
    def place(self, execution: Mapping[str, Any], *, claimed_at: float, max_age: float) -> Order:
        """A market order for the claimed execution: its market, side and amount in quote (rounded
        down to the market's precision), its clientOrderId. Sent only if the claim (answered at
        monotonic `claimed_at`) is at most `max_age` seconds old when the order goes out."""
        with self.lookup.deadline(claimed_at, max_age):
            return self.orders.place_market_order(
                str(execution["market"]), cast(Side, execution["side"]),
                client_order_id=uuid.UUID(str(execution["client_order_id"])),
                amount_quote=Decimal(execution["amount_quote"]))

    def read(self, market: str, client_order_id: str) -> Order:
        """GET /order?clientOrderId= (paper: this process's memory); OrderNotFound if unknown."""
        return self.orders.get_order(market, client_order_id=uuid.UUID(client_order_id))

    def cancel(self, market: str, client_order_id: str) -> OrderCancellation:
        return self.orders.cancel_order(market, client_order_id=uuid.UUID(client_order_id))

    def close(self) -> None:
        close = getattr(self.orders, "close", None)
        if close is not None:
            close()
        self.readonly.close()

    # -- paper --------------------------------------------------------------------------------
    def _paper_price(self, market: str) -> Decimal:
        try:
            price = self.readonly.ticker_price(market).price
        except ExchangeError as error:
            raise MarketListingUnavailable(
                f"the ticker price of {market} could not be read for the paper fill "
                f"({type(error).__name__}); nothing was placed",
                http_status=error.http_status, error_code=error.error_code,
                endpoint=error.endpoint) from error
        if price is None:
            raise MarketListingUnavailable(f"the exchange has no ticker price for {market}; "
                                           "nothing was placed", endpoint="GET /ticker/price")
        return price
