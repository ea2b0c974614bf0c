"""The one road to Bitvavo: sign, send once, read, map errors.

`BitvavoTransport.request` reads top to bottom: rate-limit budget → build → sign → send →
observe rate-limit headers → parse (Decimal, never float) → map errors. It never retries:
a request that timed out or got a 5xx may have taken effect, and re-sending POST /order is how
other bots placed duplicate orders (G10). The caller reconciles instead.

Credentials never appear in logs or exceptions; logs carry the key id masked.
"""

from __future__ import annotations

import functools
import json
import logging
import ssl
import time
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Self

import httpx
from pydantic import SecretStr

from shared.exchange.errors import (
    ExchangeError,
    ExchangeTimeout,
    ExchangeTransportError,
    MalformedResponse,
    MissingCredentials,
    RateLimitBanned,
    error_for,
)
from shared.exchange.ratelimit import (
    DEFAULT_MAX_WAIT_SECONDS,
    DEFAULT_SAFETY_MARGIN,
    Clock,
    RateLimitBudget,
    Sleep,
)
from shared.exchange.settings import DEFAULT_REST_URL
from shared.exchange.signing import METHODS_WITH_BODY, encode_body, signature

logger = logging.getLogger("shared.exchange")

DEFAULT_TIMEOUT = httpx.Timeout(connect=5.0, read=10.0, write=10.0, pool=5.0)
DEFAULT_ACCESS_WINDOW_MS = 10_000

KEY_HEADER = "Bitvavo-Access-Key"
TIMESTAMP_HEADER = "Bitvavo-Access-Timestamp"
SIGNATURE_HEADER = "Bitvavo-Access-Signature"
WINDOW_HEADER = "Bitvavo-Access-Window"


@functools.cache
def _tls_context() -> ssl.SSLContext:
    """httpx's default verification (certifi), built once per process: loading the CA bundle
    costs ~50 ms, which every short-lived client would otherwise pay again."""
    return httpx.create_ssl_context()


@dataclass(frozen=True)
class Credentials:
    key: SecretStr
    secret: SecretStr = field(repr=False)

    def __post_init__(self) -> None:
        if not self.key.get_secret_value() or not self.secret.get_secret_value():
            raise MissingCredentials("an API key and secret are both required")

    @classmethod
    def of(cls, key: str | SecretStr, secret: str | SecretStr) -> Credentials:
        return cls(
            key if isinstance(key, SecretStr) else SecretStr(key),
            secret if isinstance(secret, SecretStr) else SecretStr(secret),
        )

    @property
    def masked_key(self) -> str:
        key = self.key.get_secret_value()
        return f"{key[:4]}…" if len(key) > 8 else "…"


class BitvavoTransport:
    def __init__(
        self,
        base_url: str = DEFAULT_REST_URL,
        *,
        credentials: Credentials | None = None,
        access_window_ms: int = DEFAULT_ACCESS_WINDOW_MS,
        timeout: httpx.Timeout = DEFAULT_TIMEOUT,
        http_client: httpx.Client | None = None,
        http_transport: httpx.BaseTransport | None = None,
        clock: Clock = time.time,
        sleep: Sleep = time.sleep,
        rate_limit_margin: int = DEFAULT_SAFETY_MARGIN,
        max_rate_limit_wait: float = DEFAULT_MAX_WAIT_SECONDS,
    ) -> None:
        if not 100 <= access_window_ms <= 60_000:
            raise ValueError("access_window_ms must be within 100..60000 (Bitvavo's range)")
        if http_client is not None and http_transport is not None:
            raise ValueError("pass http_client or http_transport, not both")
        self.base_url = httpx.URL(base_url.rstrip("/"))
        self._base_path = self.base_url.raw_path.decode("ascii")
        self.credentials = credentials
        self.access_window_ms = access_window_ms
        self._clock = clock
        self._owns_client = http_client is None
        self._client = http_client or httpx.Client(
            timeout=timeout, transport=http_transport, verify=_tls_context()
        )
        self.rate_limit = RateLimitBudget(
            clock=clock,
            sleep=sleep,
            safety_margin=rate_limit_margin,
            max_wait_seconds=max_rate_limit_wait,
        )

    # -- lifecycle --------------------------------------------------------------------------

    def close(self) -> None:
        if self._owns_client:
            self._client.close()

    def __enter__(self) -> BitvavoTransport:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- the request path -------------------------------------------------------------------

    def request(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, Any] | None = None,
        body: dict[str, Any] | None = None,
        weight: int = 1,
        signed: bool = False,
    ) -> Any:
        """Send one request, exactly once, and return its JSON (floats parsed as Decimal).

        `path` is relative to the API root ("/order", "/BTC-EUR/book"); `params` become the
        query string in the given order; `body` is sent as compact JSON for POST/PUT."""
        method = method.upper()
        endpoint = f"{method} {path}"
        if signed and self.credentials is None:
            raise MissingCredentials(f"{endpoint} needs an API key and secret")

        self.rate_limit.acquire(weight, endpoint)
        request = self._build(method, path, params, body)
        started = time.monotonic()
        try:
            response = self._client.send(request)
        except httpx.TimeoutException as exc:
            self._log_failure(endpoint, f"timeout ({type(exc).__name__})")
            raise ExchangeTimeout(
                f"no answer in time ({type(exc).__name__}); the outcome is unknown",
                endpoint=endpoint,
            ) from exc
        except httpx.RequestError as exc:
            self._log_failure(endpoint, f"transport error ({type(exc).__name__})")
            raise ExchangeTransportError(
                f"transport failure ({type(exc).__name__}); the outcome is unknown",
                endpoint=endpoint,
            ) from exc
        self.rate_limit.observe(response.headers)
        logger.info(
            "bitvavo %s -> %s in %.0f ms (key %s)",
            endpoint,
            response.status_code,
            (time.monotonic() - started) * 1000,
            self.credentials.masked_key if self.credentials else "none",
        )
        return self._read(response, endpoint)

    def _build(
        self,
        method: str,
        path: str,
        params: dict[str, Any] | None,
        body: dict[str, Any] | None,
    ) -> httpx.Request:
        if not path.startswith("/"):
            raise ValueError("path must start with '/'")
        content: bytes | None = None
        headers: dict[str, str] = {"Accept": "application/json"}
        body_text = ""
        if method in METHODS_WITH_BODY:
            body_text = encode_body(body or {})
            content = body_text.encode()
            headers["Content-Type"] = "application/json"
        elif body:
            raise ValueError(f"{method} requests carry no body")
        query = {k: _query_value(v) for k, v in (params or {}).items() if v is not None}
        request = self._client.build_request(
            method,
            self.base_url.copy_with(raw_path=(self._base_path + path).encode("ascii")),
            params=query or None,
            content=content,
            headers=headers,
        )
        if self.credentials is not None:
            self._sign(request, body_text)
        return request

    def _sign(self, request: httpx.Request, body_text: str) -> None:
        """Sign exactly the request target and body that will be sent."""
        assert self.credentials is not None
        raw_target = request.url.raw_path.decode("ascii")  # path + "?" + query, as sent
        path_with_query = raw_target.removeprefix(self._base_path)
        timestamp = int(self._clock() * 1000)
        request.headers[KEY_HEADER] = self.credentials.key.get_secret_value()
        request.headers[TIMESTAMP_HEADER] = str(timestamp)
        request.headers[SIGNATURE_HEADER] = signature(
            self.credentials.secret.get_secret_value(),
            timestamp,
            request.method,
            path_with_query,
            body_text,
        )
        request.headers[WINDOW_HEADER] = str(self.access_window_ms)

    def _read(self, response: httpx.Response, endpoint: str) -> Any:
        try:
            payload: Any = json.loads(response.content, parse_float=Decimal)
        except ValueError:
            payload = None
        is_error = response.status_code >= 400 or (
            isinstance(payload, dict) and "errorCode" in payload
        )
        if is_error:
            error = error_for(response.status_code, payload, endpoint=endpoint)
            if isinstance(error, RateLimitBanned):
                # Unsigned requests are counted (and banned) by IP, signed ones by key.
                error.ban_expires_at = self.rate_limit.ban(
                    error.ban_expires_at, by_ip=self.credentials is None
                )
            self._log_error(error)
            raise error
        if payload is None:
            error = MalformedResponse(
                f"HTTP {response.status_code} with a body that is not JSON; outcome unknown",
                http_status=response.status_code,
                endpoint=endpoint,
            )
            self._log_error(error)
            raise error
        return payload

    @staticmethod
    def _log_failure(endpoint: str, what: str) -> None:
        logger.warning("bitvavo %s: %s, outcome unknown, not retried", endpoint, what)

    @staticmethod
    def _log_error(error: ExchangeError) -> None:
        level = logging.WARNING if error.outcome_unknown else logging.INFO
        logger.log(level, "bitvavo error: %s (outcome_unknown=%s)", error, error.outcome_unknown)


class TransportClient:
    """What BitvavoReadonly and BitvavoTrade share: one transport, closed with the client."""

    _transport: BitvavoTransport

    @property
    def transport(self) -> BitvavoTransport:
        return self._transport

    def close(self) -> None:
        self._transport.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _query_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        raise TypeError("refusing a float in a query string: use Decimal or str")
    if isinstance(value, Decimal):
        return format(value, "f")
    return str(value)
