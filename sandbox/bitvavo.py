"""A local Bitvavo-compatible exchange for development and tests (never deployed).

    python -m sandbox.bitvavo --host 127.0.0.1 --port 8765 [--seed 42]

Serves the REST endpoints of reference/bitvavo-api.md under `/v2` closely enough that the
official SDK and ccxt work against it, plus a loopback-only control surface under `/_sandbox`
(see `Control` below). Environment:

- `SANDBOX_KEYS`        JSON list of {"key": <64 chars>, "secret": …, "permissions": [...]};
                        default: the view key and trade key in `sandbox.auth`.
- `SANDBOX_BALANCES`    JSON like {"EUR": "10000"} (the default), the one account's balances.
- `SANDBOX_RATE_LIMIT`  weight points per minute per key/IP (default 1000); a key's own
                        `rate_limit` in SANDBOX_KEYS overrides it for that key.
- `SANDBOX_RATE_WINDOW_MS`  the rate-limit window (default 60000: a minute; tests shorten it).
- `SANDBOX_RATE_LIMIT_ERROR_CODE`  the errorCode of a rate-limit ban: 110 (default, Bitvavo's
                        rate-limit page) or 105 (what the SDKs and ccxt know).
- `SANDBOX_CLOCK_OFFSET_MS`  start the market clock this far ahead of wall time (default 0).
- `SANDBOX_MARKETS`     JSON like {"BTC-EUR": {"status": "halted", "maxOrderInQuoteAsset": "1000"}}:
                        market statuses (trading | halted | auction) and maximum sizes.
- `SANDBOX_INSUFFICIENT_FUNDS`  a market order the balance cannot cover: `reject` (216, default)
                        or `expire` (accepted, ends `expired` without a fill).
- `SANDBOX_AMOUNT_QUOTE_FEE`  a buy by amountQuote spends at most amountQuote fee `included`
                        (default) or amountQuote plus the fee (`on_top`).

On start it prints `SANDBOX_READY http://HOST:PORT` on stdout; it logs one line per request on
stderr (method, path, status, duration) and never a header value.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from ipaddress import ip_address
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from sandbox.auth import TRADE, VIEW, Authenticator, load_keys
from sandbox.clock import MarketClock, wall_ms
from sandbox.errors import ApiError, invalid, required
from sandbox.faults import FaultPlan
from sandbox.limits import Quota, RateLimitBan, RateLimiter
from sandbox.listings import Listings, load_listings
from sandbox.market import (
    ASSETS,
    INTERVAL_MINUTES,
    MARKETS,
    PricePath,
    asset_listing,
    fmt,
)
from sandbox.matching import Account

DEFAULT_BALANCES = {"EUR": Decimal("10000")}
MAX_BODY_BYTES = 64 * 1024

NOT_FOUND_HTML = (
    b"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>Error</title>"
    b"</head><body><pre>Cannot GET</pre></body></html>\n"
)
_MARKET_PATH = re.compile(r"^/([A-Za-z0-9]{1,15}-[A-Za-z]{2,6})/(book|trades|candles)$")


def load_balances(env: dict[str, str] | os._Environ[str]) -> dict[str, Decimal]:
    raw = env.get("SANDBOX_BALANCES")
    if not raw:
        return dict(DEFAULT_BALANCES)
    parsed = json.loads(raw)
    if not isinstance(parsed, dict):
        raise ValueError("SANDBOX_BALANCES must be a JSON object like {\"EUR\": \"10000\"}")
    balances: dict[str, Decimal] = {}
    for symbol, amount in parsed.items():
        try:
            value = Decimal(str(amount))
        except InvalidOperation:
            raise ValueError(f"SANDBOX_BALANCES[{symbol}] is not a number") from None
        if not value.is_finite() or value < 0:
            raise ValueError(f"SANDBOX_BALANCES[{symbol}] must be a non-negative number")
        balances[str(symbol)] = value
    return balances


# -- request parameters ------------------------------------------------------------------------


class Query:
    def __init__(self, query: str) -> None:
        self.values = dict(parse_qsl(query, keep_blank_values=True))

    def get(self, name: str) -> str | None:
        return self.values.get(name)

    def market(self, *, needed: bool) -> str | None:
        market = self.values.get("market")
        if market is None:
            if needed:
                raise required("market")
            return None
        if market not in MARKETS:
            raise invalid("market")
        return market

    def integer(self, name: str, default: int | None, low: int, high: int) -> int | None:
        text = self.values.get(name)
        if text is None:
            return default
        if not re.fullmatch(r"-?\d{1,19}", text) or not low <= int(text) <= high:
            raise invalid(name)
        return int(text)

    def timestamp(self, name: str) -> int | None:
        return self.integer(name, None, 0, 8_640_000_000_000_000)


# -- the exchange ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Route:
    handler: Callable[[Exchange, Query, Any, int], Any]
    weight: int
    permission: str | None = None  # None: public
    weight_without_market: int | None = None

    def cost(self, query: Query) -> int:
        if self.weight_without_market is not None and query.get("market") is None:
            return self.weight_without_market
        return self.weight


class Exchange:
    """The state of one sandbox: keys, one account, the price path, limits, faults, clock."""

    def __init__(self, seed: int, env: dict[str, str] | os._Environ[str]) -> None:
        self.seed = seed
        self.auth = Authenticator(load_keys(dict(env)))
        self.initial_balances = load_balances(env)
        self.initial_offset_ms = int(env.get("SANDBOX_CLOCK_OFFSET_MS", "0"))
        self.clock = MarketClock(self.initial_offset_ms)
        self.path = PricePath(seed)
        self.listings = Listings(load_listings(env))
        self.account = Account(
            self.path, self.initial_balances, self.listings,
            insufficient_funds=env.get("SANDBOX_INSUFFICIENT_FUNDS", "reject"),
            amount_quote_fee=env.get("SANDBOX_AMOUNT_QUOTE_FEE", "included"))
        self.limiter = RateLimiter(
            int(env.get("SANDBOX_RATE_LIMIT", "1000")),
            int(env.get("SANDBOX_RATE_LIMIT_ERROR_CODE", "110")),
            int(env.get("SANDBOX_RATE_WINDOW_MS", "60000")),
            {f"key:{k.key}": k.rate_limit for k in self.auth.keys.values() if k.rate_limit})
        self.faults = FaultPlan()

    def reset(self, balances: dict[str, Decimal] | None = None) -> None:
        self.listings.reset()
        self.account.reset(balances if balances is not None else self.initial_balances)
        self.limiter.reset()
        self.faults.reset()
        self.clock.reset(self.initial_offset_ms)

    # public ---------------------------------------------------------------------------------

    def time(self, query: Query, body: Any, now: int) -> Any:
        return {"time": wall_ms(), "timeNs": time.time_ns()}

    def markets(self, query: Query, body: Any, now: int) -> Any:
        market = query.market(needed=False)
        if market is not None:
            return self.listings[market].row(MARKETS[market])
        return [self.listings[name].row(spec) for name, spec in MARKETS.items()]

    def assets(self, query: Query, body: Any, now: int) -> Any:
        symbol = query.get("symbol")
        if symbol is not None:
            if symbol not in ASSETS:
                raise invalid("symbol")
            return asset_listing(symbol)
        return [asset_listing(name) for name in ASSETS]

    def book(self, market: str, query: Query, now: int) -> Any:
        depth = query.integer("depth", 1000, 1, 1000)
        return self.path.book(market, now, depth or 1000)

    def public_trades(self, market: str, query: Query, now: int) -> Any:
        limit = query.integer("limit", 500, 1, 1000) or 500
        return self.path.public_trades(market, now, limit, query.timestamp("start"),
                                       query.timestamp("end"))

    def candles(self, market: str, query: Query, now: int) -> Any:
        interval = query.get("interval")
        if interval is None:
            raise required("interval")
        if interval not in INTERVAL_MINUTES and interval != "1M":
            raise invalid("interval")
        limit = query.integer("limit", 1440, 1, 1440) or 1440
        return self.path.candles(market, interval, now, limit, query.timestamp("start"),
                                 query.timestamp("end"))

    def ticker_price(self, query: Query, body: Any, now: int) -> Any:
        market = query.market(needed=False)
        rows = [{"market": m, "price": fmt(self.path.price(m, now))}
                for m in ([market] if market else MARKETS)]
        return rows[0] if market else rows

    def ticker_book(self, query: Query, body: Any, now: int) -> Any:
        market = query.market(needed=False)
        rows = [self.path.ticker_book(m, now) for m in ([market] if market else MARKETS)]
        return rows[0] if market else rows

    def ticker_24h(self, query: Query, body: Any, now: int) -> Any:
        market = query.market(needed=False)
        rows = [self.path.ticker_24h(m, now) for m in ([market] if market else MARKETS)]
        return rows[0] if market else rows

    # private --------------------------------------------------------------------------------

    def account_info(self, query: Query, body: Any, now: int) -> Any:
        return {"fees": {"tier": 0, "volume": "0.00", "maker": "0.0015", "taker": "0.0025"},
                "capabilities": ["buy", "sell", "depositCrypto", "depositFiat",
                                 "withdrawCrypto", "withdrawFiat"]}

    def account_fees(self, query: Query, body: Any, now: int) -> Any:
        query.market(needed=False)
        return {"tier": 0, "volume": "0.00", "taker": "0.0025", "maker": "0.0015"}

    def balance(self, query: Query, body: Any, now: int) -> Any:
        return self.account.balance(now, query.get("symbol"))

    def place_order(self, query: Query, body: Any, now: int,
                    outcome: tuple[str, Decimal] | None = None) -> Any:
        return self.account.place(body, now, outcome).to_json()

    @staticmethod
    def _order_ref(query: Query) -> tuple[str, str | None, str | None]:
        market = query.market(needed=True)
        assert market is not None
        order_id, client_order_id = query.get("orderId"), query.get("clientOrderId")
        if order_id is None and client_order_id is None:
            raise required("orderId")
        for name, value in (("orderId", order_id), ("clientOrderId", client_order_id)):
            if value is not None and not re.fullmatch(
                    r"[0-9a-fA-F]{8}-([0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}", value):
                raise invalid(name)
        return market, order_id, client_order_id

    def get_order(self, query: Query, body: Any, now: int) -> Any:
        return self.account.get(*self._order_ref(query), now).to_json()

    def cancel_order(self, query: Query, body: Any, now: int) -> Any:
        market, order_id, client_order_id = self._order_ref(query)
        operator_id = self._operator_id(query)
        order = self.account.cancel(market, order_id, client_order_id, now)
        answer: dict[str, object] = {"orderId": order.order_id}
        if order.client_order_id is not None:
            answer["clientOrderId"] = order.client_order_id
        answer["operatorId"] = operator_id
        return answer

    @staticmethod
    def _operator_id(query: Query) -> int:
        operator_id = query.get("operatorId")
        if operator_id is None:
            raise required("operatorId")
        if not re.fullmatch(r"-?\d{1,19}", operator_id) or not (
                -(2**63) <= int(operator_id) < 2**63):
            raise invalid("operatorId")
        return int(operator_id)

    def cancel_orders(self, query: Query, body: Any, now: int) -> Any:
        market = query.market(needed=False)
        operator_id = self._operator_id(query)
        canceled = self.account.cancel_all(market, now)
        return [{"orderId": order.order_id, "operatorId": operator_id} for order in canceled]

    def orders(self, query: Query, body: Any, now: int) -> Any:
        market = query.market(needed=True)
        assert market is not None
        limit = query.integer("limit", 500, 1, 1000) or 500
        rows = self.account.history(market, now, limit, query.timestamp("start"),
                                    query.timestamp("end"))
        return [order.to_json() for order in rows]

    def orders_open(self, query: Query, body: Any, now: int) -> Any:
        market = query.market(needed=False)
        return [order.to_json() for order in self.account.open_orders(market, now)]

    def trades(self, query: Query, body: Any, now: int) -> Any:
        market = query.market(needed=True)
        assert market is not None
        limit = query.integer("limit", 500, 1, 1000) or 500
        return self.account.trades(market, now, limit, query.timestamp("start"),
                                   query.timestamp("end"))


ROUTES: dict[tuple[str, str], Route] = {
    ("GET", "/time"): Route(Exchange.time, 1),
    ("GET", "/markets"): Route(Exchange.markets, 1),
    ("GET", "/assets"): Route(Exchange.assets, 1),
    ("GET", "/ticker/price"): Route(Exchange.ticker_price, 1),
    ("GET", "/ticker/book"): Route(Exchange.ticker_book, 1),
    ("GET", "/ticker/24h"): Route(Exchange.ticker_24h, 1, weight_without_market=25),
    ("GET", "/account"): Route(Exchange.account_info, 1, VIEW),
    ("GET", "/account/fees"): Route(Exchange.account_fees, 1, VIEW),
    ("GET", "/balance"): Route(Exchange.balance, 5, VIEW),
    ("POST", "/order"): Route(Exchange.place_order, 1, TRADE),
    # Reading orders and fills needs the trade permission (reference: "Key permissions").
    ("GET", "/order"): Route(Exchange.get_order, 1, TRADE),
    ("DELETE", "/order"): Route(Exchange.cancel_order, 1, TRADE),
    ("DELETE", "/orders"): Route(Exchange.cancel_orders, 25, TRADE, weight_without_market=100),
    ("GET", "/orders"): Route(Exchange.orders, 5, TRADE),
    ("GET", "/ordersOpen"): Route(Exchange.orders_open, 5, TRADE, weight_without_market=100),
    ("GET", "/trades"): Route(Exchange.trades, 5, TRADE),
}
_MARKET_ROUTES = {
    "book": (Exchange.book, 1),
    "trades": (Exchange.public_trades, 5),
    "candles": (Exchange.candles, 1),
}


def resolve(method: str, path: str) -> Route | None:
    route = ROUTES.get((method, path))
    if route is not None or method != "GET":
        return route
    match = _MARKET_PATH.match(path)
    if match is None:
        return None
    market, kind = match.groups()
    handler, weight = _MARKET_ROUTES[kind]

    def market_handler(exchange: Exchange, query: Query, body: Any, now: int) -> Any:
        if market not in MARKETS:
            raise invalid("market")
        return handler(exchange, market, query, now)

    return Route(market_handler, weight)


# -- HTTP --------------------------------------------------------------------------------------


class _Dropped(Exception):
    """The connection was closed on purpose without an answer."""


class _HtmlFault(ApiError):
    """An injected failure answered with an HTML page, like a proxy's 502."""

    def __init__(self, http_status: int) -> None:
        super().__init__(101, f"HTTP {http_status}", http_status)

    def page(self) -> bytes:
        return b"<html><body><h1>%d</h1></body></html>\n" % self.http_status


@dataclass
class Answer:
    status: int
    body: bytes
    content_type: str = "application/json; charset=utf-8"
    headers: dict[str, str] | None = None


def _json_answer(status: int, payload: Any, quota: Quota | None = None) -> Answer:
    body = json.dumps(payload, separators=(",", ":")).encode()
    return Answer(status, body, headers=quota.headers() if quota else None)


def _is_loopback(host: str) -> bool:
    try:
        return ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        return False


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "bitvavo-sandbox"
    # Headers and body leave in two writes; with Nagle's algorithm the body would wait for the
    # client's delayed ACK (~40 ms on every answer), a latency the real exchange does not add.
    disable_nagle_algorithm = True

    def version_string(self) -> str:
        return self.server_version
    exchange: Exchange  # set on the subclass by `make_server`

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self._serve("GET")

    def do_POST(self) -> None:  # noqa: N802
        self._serve("POST")

    def do_DELETE(self) -> None:  # noqa: N802
        self._serve("DELETE")

    def do_PUT(self) -> None:  # noqa: N802
        self._serve("PUT")

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        return  # one line per request is written by `_serve`

    def _serve(self, method: str) -> None:
        started = time.perf_counter()
        target = self.path
        status: int | str = 500
        try:
            raw_body = self._read_body()
            if target.startswith("/_sandbox/"):
                answer = self._control(method, target, raw_body)
            elif target.startswith("/v2/"):
                answer = self._api(method, target[len("/v2"):], raw_body)
            else:
                answer = Answer(404, NOT_FOUND_HTML, "text/html; charset=utf-8")
            status = answer.status
            self._send(answer)
        except ApiError as error:  # a request the HTTP layer cannot even read
            status = error.http_status
            self.close_connection = True
            self._send(_json_answer(error.http_status, error.body()))
        except _Dropped:
            status = "dropped"
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        except (BrokenPipeError, ConnectionResetError):
            # The client hung up first (e.g. its read timeout during a latency fault): what was
            # done is done, and there is nobody left to answer.
            status = f"{status} client-gone"
            self.close_connection = True
        except Exception:  # noqa: BLE001 - the sandbox answers like Bitvavo's 101
            traceback.print_exc(file=sys.stderr)
            status = 500
            try:
                self._send(_json_answer(500, ApiError(101).body()))
            except OSError:
                self.close_connection = True
        finally:
            duration_ms = (time.perf_counter() - started) * 1000
            path = urlsplit(target).path
            print(f"{method} {path} {status} {duration_ms:.1f}ms", file=sys.stderr, flush=True)

    def _read_body(self) -> bytes:
        """The request body, refusing what no Bitvavo client sends (a bad or huge length)."""
        header = self.headers.get("Content-Length") or "0"
        if not header.isdigit():
            raise ApiError(102, "Invalid JSON.")
        length = int(header)
        if length > MAX_BODY_BYTES:
            raise ApiError(102, f"Request body larger than {MAX_BODY_BYTES} bytes.")
        return self.rfile.read(length) if length > 0 else b""

    def _send(self, answer: Answer) -> None:
        self.send_response(answer.status)
        self.send_header("Content-Type", answer.content_type)
        self.send_header("Content-Length", str(len(answer.body)))
        for name, value in (answer.headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(answer.body)

    # -- /v2 ----------------------------------------------------------------------------------

    def _api(self, method: str, target: str, raw_body: bytes) -> Answer:
        exchange = self.exchange
        split = urlsplit(target)
        route = resolve(method, split.path)
        if route is None:
            return Answer(404, NOT_FOUND_HTML, "text/html; charset=utf-8")
        query = Query(split.query)
        headers = {name.lower(): value for name, value in self.headers.items()}
        now_wall = wall_ms()  # signatures are checked against real time ...
        now_market = exchange.clock.now_ms()  # ... rate windows follow the market clock
        identity = f"ip:{self.client_address[0]}"
        quota: Quota | None = None
        try:
            signed = "bitvavo-access-key" in headers
            if route.permission is not None or signed:
                try:
                    api_key = exchange.auth.authenticate(
                        method=method, target=target, headers=headers, raw_body=raw_body,
                        now_ms=now_wall)
                except ApiError:
                    quota = exchange.limiter.charge(identity, route.cost(query), now_market,
                                                    is_key=False)
                    raise
                identity = f"key:{api_key.key}"
                quota = exchange.limiter.charge(identity, route.cost(query), now_market,
                                                is_key=True)
                if route.permission is not None:
                    exchange.auth.require(api_key, route.permission)
            else:
                quota = exchange.limiter.charge(identity, route.cost(query), now_market,
                                                is_key=False)
            body = self._parse_body(method, raw_body)
            if (method, split.path) == ("POST", "/order"):
                return _json_answer(200, self._place(query, body), quota)
            payload = route.handler(exchange, query, body, exchange.clock.now_ms())
            return _json_answer(200, payload, quota)
        except RateLimitBan as ban:
            return _json_answer(ban.http_status, ban.body(), ban.quota)
        except _HtmlFault as fault:
            return Answer(fault.http_status, fault.page(), "text/html; charset=utf-8",
                          quota.headers() if quota else None)
        except ApiError as error:
            quota = quota or exchange.limiter.peek(identity, now_market)
            return _json_answer(error.http_status, error.body(), quota)

    @staticmethod
    def _parse_body(method: str, raw_body: bytes) -> Any:
        if method not in ("POST", "PUT"):
            return None
        if not raw_body.strip():
            return {}
        try:
            body = json.loads(raw_body, parse_float=Decimal)
        except ValueError:
            raise ApiError(102) from None
        if not isinstance(body, dict):
            raise ApiError(102)
        return body

    def _place(self, query: Query, body: Any) -> Any:
        exchange = self.exchange
        fault = exchange.faults.take()
        if fault is not None and fault.kind == "latency":
            exchange.faults.delay(fault)
        if fault is not None and fault.kind == "error":
            if fault.place:
                exchange.place_order(query, body, exchange.clock.now_ms())
            if fault.error_code is None:
                raise _HtmlFault(fault.http_status)
            raise ApiError(fault.error_code, None, fault.http_status)
        outcome = None
        if fault is not None and fault.kind == "unfilled":
            outcome = (fault.status, fault.fill_fraction)
        order = exchange.place_order(query, body, exchange.clock.now_ms(), outcome)
        if fault is not None and fault.kind == "drop_after_accept":
            raise _Dropped
        return order

    # -- /_sandbox ----------------------------------------------------------------------------

    def _control(self, method: str, target: str, raw_body: bytes) -> Answer:
        if not _is_loopback(self.client_address[0]):
            return _json_answer(403, {"error": "the control surface is loopback-only"})
        exchange = self.exchange
        split = urlsplit(target)
        query = Query(split.query)
        try:
            body = json.loads(raw_body) if raw_body.strip() else {}
            if not isinstance(body, dict):
                raise ValueError("the body must be a JSON object")
            match (method, split.path):
                case ("POST", "/_sandbox/faults"):
                    return _json_answer(200, exchange.faults.configure(body))
                case ("GET", "/_sandbox/faults"):
                    return _json_answer(200, exchange.faults.describe())
                case ("POST", "/_sandbox/faults/release"):
                    return _json_answer(200, {"released": exchange.faults.release()})
                case ("POST", "/_sandbox/order_lookup"):
                    found = body.get("completed_by_client_order_id")
                    if not isinstance(found, bool):
                        raise ValueError("completed_by_client_order_id must be a boolean")
                    exchange.account.completed_by_client_order_id = found
                    return _json_answer(200, {"completed_by_client_order_id": found})
                case ("GET", "/_sandbox/limits"):
                    return _json_answer(200, exchange.limiter.describe())
                case ("GET", "/_sandbox/orders"):
                    return _json_answer(200, exchange.account.all_orders(
                        exchange.clock.now_ms()))
                case ("POST", "/_sandbox/reset"):
                    balances = body.get("balances")
                    exchange.reset(load_balances({"SANDBOX_BALANCES": json.dumps(balances)})
                                   if balances is not None else None)
                    return _json_answer(200, {"reset": True, **self._clock_state()})
                case ("POST", "/_sandbox/clock"):
                    advance = body.get("advance_ms")
                    if not isinstance(advance, int) or isinstance(advance, bool) or advance < 0:
                        raise ValueError("advance_ms must be a non-negative integer")
                    exchange.clock.advance(advance)
                    return _json_answer(200, self._clock_state())
                case ("GET", "/_sandbox/clock"):
                    return _json_answer(200, self._clock_state())
                case ("POST", "/_sandbox/markets"):
                    market = body.get("market")
                    if market not in MARKETS:
                        raise ValueError(f"market must be one of {', '.join(MARKETS)}")
                    fields = {k: v for k, v in body.items() if k != "market"}
                    exchange.account.change_listing(market, fields, exchange.clock.now_ms())
                    return _json_answer(200, exchange.listings[market].row(MARKETS[market]))
                case ("POST", "/_sandbox/account"):
                    return _json_answer(200, exchange.account.configure(body))
                case ("GET", "/_sandbox/account"):
                    return _json_answer(200, exchange.account.rules())
                case ("GET", "/_sandbox/price"):
                    return _json_answer(200, self._price(query))
            return _json_answer(404, {"error": f"no control endpoint {method} {split.path}"})
        except (ValueError, ApiError) as error:
            return _json_answer(400, {"error": str(error)})

    def _clock_state(self) -> dict[str, object]:
        clock = self.exchange.clock
        return {"offset_ms": clock.offset_ms, "market_time": clock.now_ms(), "wall_time": wall_ms()}

    def _price(self, query: Query) -> dict[str, object]:
        """The price path at any market time: lets tests pick limit prices that will cross."""
        market = query.market(needed=True)
        assert market is not None
        at = query.timestamp("at")
        at = self.exchange.clock.now_ms() if at is None else at
        candle = self.exchange.path.candle(market, at // 60_000)
        return {"market": market, "at": at, "price": fmt(candle.close),
                "candle": [candle.start_ms, fmt(candle.open), fmt(candle.high),
                           fmt(candle.low), fmt(candle.close)]}


class SandboxServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


def make_server(host: str, port: int, seed: int,
                env: dict[str, str] | os._Environ[str] | None = None) -> SandboxServer:
    exchange = Exchange(seed, os.environ if env is None else env)
    handler = type("BoundHandler", (Handler,), {"exchange": exchange})
    return SandboxServer((host, port), handler)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sandbox.bitvavo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765, help="0 picks a free port")
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args(argv)
    try:
        server = make_server(args.host, args.port, args.seed)
    except (ValueError, OSError) as error:
        print(f"sandbox: cannot start: {error}", file=sys.stderr)
        return 2
    host, port = str(server.server_address[0]), server.server_address[1]
    if not _is_loopback(host):
        print(f"sandbox: WARNING listening on {host}; /_sandbox stays loopback-only",
              file=sys.stderr)

    def stop(signum: int, frame: object) -> None:
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print(f"SANDBOX_READY http://{host}:{port}", flush=True)
    try:
        server.serve_forever(poll_interval=0.1)
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
