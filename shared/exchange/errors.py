"""Everything that can go wrong talking to Bitvavo, as one exception tree.

The names tell the caller what to do:

    ExchangeError                      the exchange (or the road to it) said no / said nothing
    ├── ExchangeRejected               a definitive answer: the request had no effect
    │   ├── AuthenticationError        300-399  (key, timestamp, window, signature, permission)
    │   ├── InvalidRequest             102, 110 (not 429), 203-205, 210, 214, 215
    │   ├── BelowMinimumSize           212, 217
    │   ├── InsufficientBalance        216
    │   ├── ClientOrderIdConflict      220
    │   ├── OrderNotCancellable        233: the order exists but is no longer open
    │   ├── OrderNotFound              240
    │   ├── MarketUnavailable          219, 423, 424, 431
    │   └── RateLimitBanned            105, 110 under HTTP 429 (or HTTP 429), also raised
    │                                  locally while banned
    ├── OutcomeUnknown                 G10: the request may or may not have taken effect;
    │   ├── ExchangeServerError        5xx, 101, 107, 108,     never re-send, reconcile by
    │   │                              109, 400                 clientOrderId
    │   ├── ExchangeTimeout            timeouts
    │   ├── ExchangeTransportError     connection reset / closed without an answer
    │   └── MalformedResponse          a success status with a body we cannot read
    ├── RateLimitWouldExceed           refused locally, nothing was sent
    ├── MarketListingUnavailable       the market listing to size an order could not be read;
    │                                  the order was not sent
    └── MarketNotTrading               the market's status is not `trading`; not sent

    ExchangeUsageError                 our own code misused a client; nothing was sent
    ├── KeySeparationError             G3: the wrong role's method, or the wrong key
    │   └── MissingCredentials         the role's key/secret/operator id is not configured
    └── InvalidOrderRequest            an order that must not be sent (also a ValueError)
        ├── OrderBelowMinimum          rounded to the market's precision it is zero or below
        │                              the market's minimum size
        └── OrderAboveMaximum          above the market's maximum size

`outcome_unknown` is True exactly for OutcomeUnknown (timeouts, transport errors, 5xx and codes
101/107/108/109/400). `error_for` maps an HTTP answer to its exception with the two tables below.
An error raised by an order call also names the order: `market` and `client_order_id` (G10: an
order whose answer was lost can always be reconciled by what the error says).
Messages carry the exchange's own error text and the endpoint, never keys, secrets or signatures.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, ClassVar, Self


class ExchangeError(Exception):
    """Base of every error coming from the exchange or the network path to it."""

    outcome_unknown: ClassVar[bool] = False

    def __init__(
        self,
        message: str,
        *,
        http_status: int | None = None,
        error_code: int | None = None,
        endpoint: str | None = None,
    ) -> None:
        self.message = message
        self.http_status = http_status
        self.error_code = error_code
        self.endpoint = endpoint
        self.market: str | None = None
        self.client_order_id: uuid.UUID | None = None
        super().__init__(message)

    def about_order(self, market: str, client_order_id: uuid.UUID | None) -> Self:
        """Name the order this error is about (set by the order clients on every error of an
        order call): with `client_order_id` an unknown outcome can always be reconciled."""
        self.market = market
        self.client_order_id = client_order_id
        return self

    def __str__(self) -> str:
        parts = []
        if self.endpoint:
            parts.append(self.endpoint)
        if self.market is not None:
            parts.append(f"market {self.market}")
        if self.client_order_id is not None:
            parts.append(f"clientOrderId {self.client_order_id}")
        if self.http_status is not None:
            parts.append(f"HTTP {self.http_status}")
        if self.error_code is not None:
            parts.append(f"errorCode {self.error_code}")
        prefix = ", ".join(parts)
        return f"{prefix}: {self.message}" if prefix else self.message


@contextmanager
def naming_order(market: str, client_order_id: uuid.UUID | None) -> Iterator[None]:
    """Every ExchangeError raised inside names the order it is about (G10)."""
    try:
        yield
    except ExchangeError as error:
        error.about_order(market, client_order_id)
        raise


# -- definitive answers: the request had no effect ------------------------------------------


class ExchangeRejected(ExchangeError):
    """Bitvavo answered with a client error: the request was refused and had no effect."""


class AuthenticationError(ExchangeRejected):
    """Codes 300-399: missing/invalid key, timestamp, signature, or permissions."""


class AccessWindowError(AuthenticationError):
    """302/303/304: invalid timestamp, window out of range, or request older than the window."""


class ApiKeyInactive(AuthenticationError):
    """305/306: the key is not active."""


class IpNotWhitelisted(AuthenticationError):
    """307: the key does not allow access from this IP."""


class InvalidSignature(AuthenticationError):
    """308/309: the signature is malformed or does not match."""


class PermissionDenied(AuthenticationError):
    """The key lacks the permission the call needs."""


class TradePermissionMissing(PermissionDenied):
    """310: the key does not allow trading."""


class ViewPermissionMissing(PermissionDenied):
    """311: the key does not allow showing account information."""


class InvalidRequest(ExchangeRejected):
    """The request itself was malformed (a bug on our side)."""


class InvalidJson(InvalidRequest):
    """102: the body is not valid JSON."""


class InvalidParameter(InvalidRequest):
    """203/204/205: a parameter is missing, incompatible or has an invalid value."""


class BelowMinimumSize(ExchangeRejected):
    """212/217: amount or amountQuote below the market minimum."""


class InsufficientBalance(ExchangeRejected):
    """216: not enough balance."""


class ClientOrderIdConflict(ExchangeRejected):
    """220: an open order in this market already uses this clientOrderId."""


class OrderNotCancellable(ExchangeRejected):
    """233: only orders with status new or partiallyFilled can be cancelled. The order EXISTS
    (filled, canceled, expired…): deliberately not an OrderNotFound, which the reconciler reads
    as "certainly not placed". (ccxt maps 233 to its OrderNotFound; we must not.)"""


class OrderNotFound(ExchangeRejected):
    """240: no such order. (Cancelling one that exists but is no longer open is 233.)"""


class MarketUnavailable(ExchangeRejected):
    """219/423/424/431: market delisted, halted, cancel-only, or its data unavailable."""


class RateLimitBanned(ExchangeRejected):
    """105, or 110 under HTTP 429, or any HTTP 429: the key or IP is banned until
    `ban_expires_at` (tz-aware UTC). Raised by the transport, it carries the expiry the
    rate-limit budget keeps (the one in the answer, else the documented ban length)."""

    def __init__(self, message: str, *, ban_expires_at: datetime | None = None, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.ban_expires_at = ban_expires_at


# -- outcome unknown (G10) ---------------------------------------------------------------------


class OutcomeUnknown(ExchangeError):
    """The request may or may not have taken effect. Never re-send a non-idempotent request
    after this: reconcile it (an order by its clientOrderId)."""

    outcome_unknown: ClassVar[bool] = True


class ExchangeServerError(OutcomeUnknown):
    """Any 5xx, or codes 101 (unknown error), 107 (overloaded), 108 (engine could not process
    in time), 109 (engine timeout) and 400 ("Unknown server error. Contact support.", which may
    come under HTTP 400): whatever the status, the exchange could not say what it did."""


class ExchangeTimeout(OutcomeUnknown):
    """No answer within our timeout (connect, write, read or pool)."""


class ExchangeTransportError(OutcomeUnknown):
    """Connection refused/reset, or the server closed it without an answer."""


class MalformedResponse(OutcomeUnknown):
    """A success status whose body is not the JSON we expect: we cannot tell what happened."""


# -- refused locally ------------------------------------------------------------------------------


class RateLimitWouldExceed(ExchangeError):
    """Sending now would take the rate-limit budget below our safety margin and waiting for the
    reset would take too long. Nothing was sent."""

    def __init__(self, message: str, *, resets_at: datetime | None = None, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.resets_at = resets_at


class MarketListingUnavailable(ExchangeError):
    """The listing an order must be sized by (GET /markets, through the market lookup) could not
    be read. The order itself was NOT sent, whatever the listing's error was (its `__cause__`):
    an order call never raises an OutcomeUnknown for a request other than its POST /order."""


class MarketNotTrading(ExchangeError):
    """The market's status (GET /markets, read just before) is not `trading`. Bitvavo's support
    article on market statuses: a `halted` market still accepts orders and executes them when it
    reopens — at a price nobody chose when the order was approved — and an `auction` refuses them;
    ccxt counts only `trading` as active. Refused before anything was sent."""

    def __init__(self, message: str, *, status: str, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.status = status


# -- misuse of the clients (not an exchange answer) --------------------------------------------


class ExchangeUsageError(Exception):
    """Our own code used an exchange client in a way that is not allowed. Nothing was sent."""


class KeySeparationError(ExchangeUsageError):
    """G3: a method of the other role was called, or a key of the wrong role was supplied."""


class MissingCredentials(KeySeparationError):
    """The client's role needs a key, secret (and for trading an operator id) it was not given."""


class InvalidOrderRequest(ExchangeUsageError, ValueError):
    """An order request that must not be sent (bad market, side, amount, clientOrderId…)."""


class OrderBelowMinimum(InvalidOrderRequest):
    """Rounded down to the market's precision the order is zero, or below the market's minimum
    (minOrderInBaseAsset / minOrderInQuoteAsset). Refused before anything was sent: the exchange
    would answer 212/217 (or 205 for a zero)."""

    def __init__(
        self,
        message: str,
        *,
        field: str,
        value: Decimal,
        minimum: Decimal | None = None,
    ) -> None:
        super().__init__(message)
        self.field = field
        self.value = value
        self.minimum = minimum


class OrderAboveMaximum(InvalidOrderRequest):
    """Above the market's maximum (maxOrderInBaseAsset / maxOrderInQuoteAsset). Refused before
    anything was sent: the exchange would answer 210."""

    def __init__(self, message: str, *, field: str, value: Decimal, maximum: Decimal) -> None:
        super().__init__(message)
        self.field = field
        self.value = value
        self.maximum = maximum


# -- mapping an HTTP answer to an exception ----------------------------------------------------

# Bitvavo errorCode → exception class. Codes win over the HTTP status except that 5xx and
# 101/107/109 always mean "outcome unknown".
ERROR_CODES: dict[int, type[ExchangeError]] = {
    101: ExchangeServerError,
    102: InvalidJson,
    105: RateLimitBanned,
    107: ExchangeServerError,
    108: ExchangeServerError,
    109: ExchangeServerError,
    203: InvalidParameter,
    204: InvalidParameter,
    205: InvalidParameter,
    210: InvalidParameter,  # amount above the market's maximum
    212: BelowMinimumSize,
    214: InvalidParameter,  # price off the tick size / too many significant digits
    215: InvalidParameter,  # price with more than 15 decimals
    216: InsufficientBalance,
    217: BelowMinimumSize,
    219: MarketUnavailable,
    220: ClientOrderIdConflict,
    233: OrderNotCancellable,
    240: OrderNotFound,
    300: AuthenticationError,
    301: AuthenticationError,
    302: AccessWindowError,
    303: AccessWindowError,
    304: AccessWindowError,
    305: ApiKeyInactive,
    306: ApiKeyInactive,
    307: IpNotWhitelisted,
    308: InvalidSignature,
    309: InvalidSignature,
    310: TradePermissionMissing,
    311: ViewPermissionMissing,
    400: ExchangeServerError,
    423: MarketUnavailable,
    424: MarketUnavailable,
    431: MarketUnavailable,
}

# Bitvavo's rate-limit page answers an exceeded limit with HTTP 429 and errorCode 110; its older
# error table, the SDKs and ccxt know 110 only as "Invalid endpoint" (an HTTP 400). Under 429 it is
# a ban, otherwise a request we got wrong.
RATE_LIMIT_CODE_UNDER_429 = 110

# Codes not in ERROR_CODES: by range.
ERROR_CODE_RANGES: tuple[tuple[range, type[ExchangeError]], ...] = (
    (range(300, 400), AuthenticationError),
)

# No (known) code: by HTTP status.
HTTP_STATUSES: dict[int, type[ExchangeError]] = {
    401: AuthenticationError,
    403: AuthenticationError,
    429: RateLimitBanned,
}
# A 404 without errorCode 240 (wrong base URL, a proxy's page) is deliberately NOT OrderNotFound:
# the reconciler treats "not found" as "certainly not placed".

# 101 "Operation may or may not have succeeded", 109 "did not respond in time", 107/108 the
# matching engine overloaded / "could not process your order in time" (ambiguous for an order
# already handed to the engine), 400 "Unknown server error. Contact support." (under HTTP 400).
OUTCOME_UNKNOWN_CODES = frozenset({101, 107, 108, 109, 400})

_BAN_EXPIRY = re.compile(r" at (\d{10,})")


def error_for(
    http_status: int | None,
    body: object,
    *,
    endpoint: str | None = None,
) -> ExchangeError:
    """The exception for an error answer: `body` is the parsed JSON (or anything else)."""
    code: int | None = None
    text = ""
    if isinstance(body, dict):
        raw_code = body.get("errorCode")
        if isinstance(raw_code, int) and not isinstance(raw_code, bool):
            code = raw_code
        elif isinstance(raw_code, str) and raw_code.isdigit():
            code = int(raw_code)
        raw_text = body.get("error")
        if isinstance(raw_text, str):
            text = raw_text
    if not text:
        text = "no error text" if http_status is None else f"HTTP {http_status} without error text"

    cls = _class_for(http_status, code)
    kw: dict[str, Any] = {"http_status": http_status, "error_code": code, "endpoint": endpoint}
    if cls is RateLimitBanned:
        return RateLimitBanned(text, ban_expires_at=ban_expiry(text), **kw)
    return cls(text, **kw)


def _class_for(http_status: int | None, code: int | None) -> type[ExchangeError]:
    if code in OUTCOME_UNKNOWN_CODES or (http_status is not None and http_status >= 500):
        return ExchangeServerError
    if code == RATE_LIMIT_CODE_UNDER_429:
        return RateLimitBanned if http_status == 429 else InvalidRequest
    if code is not None:
        if code in ERROR_CODES:
            return ERROR_CODES[code]
        for codes, cls in ERROR_CODE_RANGES:
            if code in codes:
                return cls
    if http_status is not None and http_status in HTTP_STATUSES:
        return HTTP_STATUSES[http_status]
    if http_status is not None and 400 <= http_status < 500:
        return ExchangeRejected
    # A 2xx/3xx that still carries an error, or no status at all: we cannot tell what happened.
    return MalformedResponse


def ban_expiry(message: str) -> datetime | None:
    """The ban's end stated in the answer: the milliseconds after " at " in Bitvavo's 105
    message (as the official SDK parses it). None when the answer states none: the rate-limit
    budget then applies the documented ban length (shared.exchange.ratelimit)."""
    match = _BAN_EXPIRY.search(message)
    if match:
        return datetime_from_ms(int(match.group(1)))
    return None


def datetime_from_ms(ms: int) -> datetime:
    """Exact tz-aware UTC datetime for integer milliseconds since the epoch."""
    seconds, millis = divmod(ms, 1000)
    return datetime.fromtimestamp(seconds, UTC).replace(microsecond=millis * 1000)
