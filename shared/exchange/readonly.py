"""BitvavoReadonly: market data and balances, for scan_scheduler (G3).

Without credentials it sends unsigned public requests; with the read-only key it signs every
request (as the official SDK does), which also moves its rate-limit budget from the IP to the key.
It cannot place, read or cancel orders: those methods exist only to say which client to use.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any, NoReturn, TypeVar, overload

import httpx
from pydantic import SecretStr

from shared.exchange.errors import MalformedResponse, MissingCredentials
from shared.exchange.models import (
    MARKET_PATTERN,
    Asset,
    Balance,
    Candle,
    Market,
    OrderBook,
    ServerTime,
    Ticker24h,
    TickerBook,
    TickerPrice,
    parse_answer,
    parse_rows,
)
from shared.exchange.ratelimit import Clock, Sleep
from shared.exchange.roles import refuse_trading
from shared.exchange.settings import DEFAULT_REST_URL, ReadonlyExchangeSettings
from shared.exchange.transport import (
    DEFAULT_TIMEOUT,
    BitvavoTransport,
    Credentials,
    TransportClient,
)

CANDLE_INTERVALS = frozenset(
    {"1m", "5m", "15m", "30m", "1h", "2h", "4h", "6h", "8h", "12h", "1d", "1W", "1M"}
)

_CLIENT = "BitvavoReadonly"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

M = TypeVar("M")


class BitvavoReadonly(TransportClient):
    def __init__(
        self,
        base_url: str = DEFAULT_REST_URL,
        *,
        api_key: str | SecretStr | None = None,
        api_secret: str | SecretStr | None = None,
        timeout: httpx.Timeout = DEFAULT_TIMEOUT,
        http_transport: httpx.BaseTransport | None = None,
        clock: Clock = time.time,
        sleep: Sleep = time.sleep,
        **transport_options: Any,
    ) -> None:
        if (api_key is None) != (api_secret is None):
            raise MissingCredentials(f"{_CLIENT} needs both an API key and secret, or neither")
        credentials = None if api_key is None else Credentials.of(api_key, api_secret)  # type: ignore[arg-type]
        self._transport = BitvavoTransport(
            base_url,
            credentials=credentials,
            timeout=timeout,
            http_transport=http_transport,
            clock=clock,
            sleep=sleep,
            **transport_options,
        )

    @classmethod
    def from_settings(
        cls, settings: ReadonlyExchangeSettings | None = None, **options: Any
    ) -> BitvavoReadonly:
        settings = settings or ReadonlyExchangeSettings()
        return cls(
            settings.bitvavo_rest_url,
            api_key=settings.bitvavo_readonly_api_key,
            api_secret=settings.bitvavo_readonly_api_secret,
            **options,
        )

    @property
    def has_credentials(self) -> bool:
        return self._transport.credentials is not None

    def signing(self) -> dict[str, str]:
        """Whose rate-limit budget this client spends, as a start-up log line's fields (outcome,
        severity, detail): Bitvavo counts signed requests against their key and unsigned ones
        against the IP they come from."""
        if self.has_credentials:
            return {"outcome": "signed", "severity": "INFO", "rate_limit": "api_key",
                    "detail": "requests are signed with the read-only key: Bitvavo counts them "
                              "against that key's budget (1,000 points a minute)"}
        return {"outcome": "unsigned", "severity": "WARNING", "rate_limit": "ip",
                "detail": "no read-only key (BITVAVO_READONLY_API_KEY/SECRET): requests are "
                          "unsigned, so Bitvavo counts them against this address's IP budget "
                          "(1,000 points a minute, shared with everything else on that address; "
                          "exceeding it bans the IP for 15 minutes)"}

    # -- public market data -----------------------------------------------------------------

    def time(self) -> datetime:
        return parse_answer(ServerTime, self._get("/time"), endpoint="GET /time").time

    def markets(self, market: str | None = None) -> list[Market]:
        payload = self._get("/markets", {"market": market})
        return parse_rows(Market, payload, endpoint="GET /markets")

    def assets(self, symbol: str | None = None) -> list[Asset]:
        return parse_rows(Asset, self._get("/assets", {"symbol": symbol}), endpoint="GET /assets")

    @overload
    def ticker_price(self, market: str) -> TickerPrice: ...
    @overload
    def ticker_price(self, market: None = None) -> list[TickerPrice]: ...
    def ticker_price(self, market: str | None = None) -> TickerPrice | list[TickerPrice]:
        payload = self._get("/ticker/price", {"market": market})
        return _one_or_all(TickerPrice, market, payload, "GET /ticker/price")

    @overload
    def ticker_book(self, market: str) -> TickerBook: ...
    @overload
    def ticker_book(self, market: None = None) -> list[TickerBook]: ...
    def ticker_book(self, market: str | None = None) -> TickerBook | list[TickerBook]:
        payload = self._get("/ticker/book", {"market": market})
        return _one_or_all(TickerBook, market, payload, "GET /ticker/book")

    @overload
    def ticker_24h(self, market: str) -> Ticker24h: ...
    @overload
    def ticker_24h(self, market: None = None) -> list[Ticker24h]: ...
    def ticker_24h(self, market: str | None = None) -> Ticker24h | list[Ticker24h]:
        weight = 1 if market else 25
        payload = self._get("/ticker/24h", {"market": market}, weight=weight)
        return _one_or_all(Ticker24h, market, payload, "GET /ticker/24h")

    def order_book(self, market: str, depth: int | None = None) -> OrderBook:
        if depth is not None and not 1 <= depth <= 1000:
            raise ValueError("depth must be within 1..1000")
        path = _market_path(market, "book")
        return parse_answer(OrderBook, self._get(path, {"depth": depth}), endpoint=f"GET {path}")

    def candles(
        self,
        market: str,
        interval: str,
        *,
        limit: int | None = None,
        start: datetime | None = None,
        end: datetime | None = None,
    ) -> list[Candle]:
        """Rows newest first, as Bitvavo sends them."""
        if interval not in CANDLE_INTERVALS:
            raise ValueError(f"interval must be one of {sorted(CANDLE_INTERVALS)}")
        if limit is not None and not 1 <= limit <= 1440:
            raise ValueError("limit must be within 1..1440")
        params = {
            "interval": interval,
            "limit": limit,
            "start": _ms(start),
            "end": _ms(end),
        }
        path = _market_path(market, "candles")
        return parse_rows(Candle, self._get(path, params), endpoint=f"GET {path}")

    # -- account (read-only key) ------------------------------------------------------------

    def balance(self, symbol: str | None = None) -> list[Balance]:
        payload = self._transport.request(
            "GET", "/balance", params={"symbol": symbol}, weight=5, signed=True
        )
        return parse_rows(Balance, payload, endpoint="GET /balance")

    # -- the trade role's methods: refused (G3) ----------------------------------------------

    def place_market_order(self, *args: Any, **kwargs: Any) -> NoReturn:
        raise refuse_trading(_CLIENT, "place orders")

    def get_order(self, *args: Any, **kwargs: Any) -> NoReturn:
        raise refuse_trading(_CLIENT, "read orders")

    def cancel_order(self, *args: Any, **kwargs: Any) -> NoReturn:
        raise refuse_trading(_CLIENT, "cancel orders")

    # -------------------------------------------------------------------------------------------

    def _get(self, path: str, params: dict[str, Any] | None = None, *, weight: int = 1) -> Any:
        return self._transport.request("GET", path, params=params, weight=weight)


def _one_or_all(model: type[M], market: str | None, payload: Any, endpoint: str) -> Any:
    rows = parse_rows(model, payload, endpoint=endpoint)
    if market is None:
        return rows
    if len(rows) != 1:
        raise MalformedResponse(
            f"expected one ticker for {market}, got {len(rows)}", endpoint=endpoint
        )
    return rows[0]


def _ms(moment: datetime | None) -> int | None:
    if moment is None:
        return None
    if moment.tzinfo is None:
        raise ValueError("start/end must be timezone-aware")
    return (moment - _EPOCH) // timedelta(milliseconds=1)


def _market_path(market: str, resource: str) -> str:
    if not MARKET_PATTERN.fullmatch(market):
        raise ValueError("market is not like BTC-EUR")
    return f"/{market}/{resource}"
