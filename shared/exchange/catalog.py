"""MarketCatalog: Bitvavo's market listings, read once and cached, as the order clients' lookup.

The order clients size every order with its market's listing (shared.exchange.precision), but
the trade client must not fetch market data itself (G3). trading_execute therefore composes:

    catalog = MarketCatalog(BitvavoReadonly(settings.bitvavo_rest_url))  # no credentials
    trade = BitvavoTrade.from_settings(settings, markets=catalog)         # or PaperTrade(…)

`GET /markets` (weight 1) is read on first use and again once `ttl_seconds` have passed. If a
refresh fails while an earlier listing is at hand, that listing is used (precision and minimums
change rarely) and the failure is logged; without any listing the error propagates — before any
order is sent.
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


class MarketCatalog:
    def __init__(
        self,
        readonly: BitvavoReadonly,
        *,
        ttl_seconds: float = DEFAULT_TTL_SECONDS,
        clock: Clock = time.monotonic,
    ) -> None:
        if ttl_seconds <= 0:
            raise ValueError("ttl_seconds must be positive")
        self._readonly = readonly
        self.ttl_seconds = ttl_seconds
        self._clock = clock
        self._markets: dict[str, Market] | None = None
        self._loaded_at: float | None = None
        self._lock = threading.Lock()

    def __call__(self, market: str) -> Market:
        """The listing of `market` (a MarketLookup); LookupError when it is not listed."""
        markets = self.markets()
        return markets[market]  # KeyError: not listed (precision.listing says so to the caller)

    def markets(self) -> dict[str, Market]:
        """Every listing by name, refreshed when older than `ttl_seconds`."""
        with self._lock:
            now = self._clock()
            fresh = self._loaded_at is not None and now - self._loaded_at < self.ttl_seconds
            if self._markets is not None and fresh:
                return self._markets
            try:
                rows = self._readonly.markets()
            except ExchangeError as error:
                if self._markets is None:
                    raise
                logger.warning("bitvavo /markets refresh failed, using the cached listing: %s",
                               error)
                return self._markets
            self._markets = {row.market: row for row in rows}
            self._loaded_at = now
            return self._markets

    def refresh(self) -> None:
        """Forget the cached listing; the next lookup reads /markets again."""
        with self._lock:
            self._loaded_at = None
