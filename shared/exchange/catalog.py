"""MarketCatalog: Bitvavo's market listings, cached, as the order clients' lookup.

The order clients size every order with its market's listing (shared.exchange.precision), but
the trade client must not fetch market data itself (G3). trading_execute therefore composes:

    catalog = MarketCatalog(BitvavoReadonly(settings.bitvavo_rest_url))  # no credentials
    trade = BitvavoTrade.from_settings(settings, markets=catalog)         # or PaperTrade(…)

One `GET /markets` (weight 1, every market; unsigned, so it counts against the IP and never
against the trade key's budget) serves two freshness needs:

- an order's lookup (`catalog(market)`) needs the market's `status` read within
  `status_ttl_seconds` (3 s by default): a market can halt at any moment, and a halted market still
  accepts orders and fills them when it reopens (the quantizer refuses every status but
  `trading`). When that refresh fails, the lookup fails — an older status proves nothing — and the
  order is not sent;
- `markets()` (sizes and precisions, which change rarely) accepts a listing up to `ttl_seconds`
  old, and keeps using an earlier one when a refresh fails (the failure is logged).

A burst of orders thus reads `/markets` at most once per `status_ttl_seconds` per process, whatever
the number of orders or markets. Without any listing the error propagates — before any order is
sent.
"""

from __future__ import annotations

import logging
import threading
import time

from shared.exchange.errors import ExchangeError
from shared.exchange.models import Market
from shared.exchange.ratelimit import Clock
from shared.exchange.readonly import BitvavoReadonly

logger = logging.getLogger("shared.exchange")

DEFAULT_TTL_SECONDS = 300.0
DEFAULT_STATUS_TTL_SECONDS = 3.0


class MarketCatalog:
    def __init__(
        self,
        readonly: BitvavoReadonly,
        *,
        ttl_seconds: float = DEFAULT_TTL_SECONDS,
        status_ttl_seconds: float = DEFAULT_STATUS_TTL_SECONDS,
        clock: Clock = time.monotonic,
    ) -> None:
        if ttl_seconds <= 0 or status_ttl_seconds <= 0:
            raise ValueError("ttl_seconds and status_ttl_seconds must be positive")
        self._readonly = readonly
        self.ttl_seconds = ttl_seconds
        self.status_ttl_seconds = status_ttl_seconds
        self._clock = clock
        self._markets: dict[str, Market] | None = None
        self._loaded_at: float | None = None
        self._lock = threading.Lock()

    def __call__(self, market: str) -> Market:
        """The listing of `market` for an order (a MarketLookup): its status at most
        `status_ttl_seconds` old. LookupError when it is not listed; the refresh's ExchangeError
        when the status could not be read."""
        with self._lock:
            markets = self._fresh(self.status_ttl_seconds, stale_on_error=False)
        return markets[market]  # KeyError: not listed (precision.listing says so to the caller)

    def markets(self) -> dict[str, Market]:
        """Every listing by name, refreshed when older than `ttl_seconds`."""
        with self._lock:
            return self._fresh(self.ttl_seconds, stale_on_error=True)

    def refresh(self) -> None:
        """Forget the cached listing; the next lookup reads /markets again."""
        with self._lock:
            self._loaded_at = None

    def _fresh(self, max_age: float, *, stale_on_error: bool) -> dict[str, Market]:
        """The listings, read again when older than `max_age`. Called with the lock held."""
        now = self._clock()
        fresh = self._loaded_at is not None and now - self._loaded_at < max_age
        if self._markets is not None and fresh:
            return self._markets
        try:
            rows = self._readonly.markets()
        except ExchangeError as error:
            if self._markets is None or not stale_on_error:
                raise
            logger.warning("bitvavo /markets refresh failed, using the cached listing: %s",
                           error)
            return self._markets
        self._markets = {row.market: row for row in rows}
        self._loaded_at = now
        return self._markets
