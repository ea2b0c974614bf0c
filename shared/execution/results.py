"""What the exchange said → what record_execution_result stores and how the request answers. Pure.

    order_result(order)      an Order (POST /order's answer, or GET /order's)  → p_result
    error_result(error)      whatever placing the order raised                  → p_result

## Exchange order status → execution status

    filled (filledAmount > 0)                      → filled
    new, partiallyFilled, awaitingTrigger (open)   → submitted, with the figures known so far;
                                                     /reconcile finishes it
    final (canceled*, expired, rejected), 0 < fill → partially_filled
    final canceled* / expired, nothing filled      → canceled
    final rejected, nothing filled                 → rejected
    a status we do not know                        → submitted (open: never guess it is over)
    filled without a fill, or a fill without its   → unknown (the answer contradicts itself)
    quote amount

Recorded: `exchange_order_id`, `filled_amount`, `filled_amount_quote`, `fee_paid`,
`fee_currency`; the average price is left to the database (quote ÷ amount). The exchange's own
timestamps are NOT sent: they are the exchange's clock (the sandbox's market clock may run ahead),
and record_execution_result refuses times outside [claim − 1 min, now + 1 min]; a refused record
after a placed order would leave it to the reconciler for nothing. The database stamps
submitted_at/completed_at when it learns the result.

## What placing raised → execution status (error_code)

    OutcomeUnknown: timeout, transport error, 5xx,   → unknown (the code, or timeout /
      101/107/108/109/400, an unreadable answer         transport_error / malformed_response /
                                                        http_<status>)
    ClientOrderIdConflict (220): an open order with  → unknown (220)
      this clientOrderId EXISTS
    any other ExchangeRejected: 216, 217, 205, 3xx,  → rejected (Bitvavo's code, or http_<status>)
      105/110 answered by the exchange, 219/423/424 …;
      216 also when raised before sending (the free
      balance with the fee on top cannot cover the
      market's minimum: what the exchange would say)
    ClaimTooOld: MAX_CLAIM_AGE passed                → failed (claim_too_old)
    OrderBelowMinimum / OrderAboveMaximum after      → failed (order_below_minimum /
      quantizing                                        order_above_maximum)
    MarketNotTrading: the market's status (read      → failed (market_not_trading)
      just before) is halted, auction, …
    other InvalidOrderRequest / KeySeparationError   → failed (invalid_order / key_separation)
    RateLimitWouldExceed; RateLimitBanned raised     → failed (rate_limit_would_exceed /
      locally while a ban lasts                         rate_limit_banned)
    MarketListingUnavailable: the listing or the     → failed (market_listing_unavailable)
      paper price could not be read
    any other ExchangeError                          → unknown (its code or class)
    anything else (our bug, perhaps after sending)   → unknown (internal_error)

`failed` means certainly not placed (SPEC §3): every `failed` row above is raised before POST
/order leaves. `unknown` is never re-sent (G10): /reconcile settles it by clientOrderId. How an
execution status answers over HTTP is shared.execution.replies'.
"""

from __future__ import annotations

from decimal import ROUND_DOWN, Context, Decimal
from typing import Any, Final

from shared.exchange.errors import (
    ClientOrderIdConflict,
    ExchangeError,
    ExchangeRejected,
    ExchangeServerError,
    ExchangeTimeout,
    ExchangeTransportError,
    ExchangeUsageError,
    KeySeparationError,
    MalformedResponse,
    MarketListingUnavailable,
    MarketNotTrading,
    OrderAboveMaximum,
    OrderBelowMinimum,
    OutcomeUnknown,
    RateLimitBanned,
    RateLimitWouldExceed,
)
from shared.exchange.models import Order
from shared.execution.deadline import ClaimTooOld
from shared.redaction import redact

Result = dict[str, Any]
"""record_execution_result's p_result: `status` and the keys SPEC §3 names."""

OPEN_ORDER_STATUSES: Final = frozenset({"new", "partiallyFilled", "awaitingTrigger"})
CANCELED_ORDER_STATUSES: Final = frozenset({
    "canceled", "canceledAuction", "canceledSelfTradePrevention", "canceledIOC", "canceledFOK",
    "canceledMarketProtection", "canceledPostOnly", "expired"})
FINAL_EXECUTION_STATUSES: Final = frozenset({"filled", "partially_filled", "canceled", "rejected",
                                             "failed"})
MAX_ERROR_MESSAGE: Final = 2000
_MAX_DECIMALS: Final = Decimal("1e-30")  # record_execution_result reads at most 30 decimals
_WIDE: Final = Context(prec=100)


def order_result(order: Order) -> Result:
    """The execution result for what the exchange reports about the order (see the table)."""
    filled = order.filled_amount
    figures: Result = {
        "exchange_order_id": order.order_id,
        "filled_amount": _plain(filled),
        "filled_amount_quote": _plain(order.filled_amount_quote),
        "fee_paid": _plain(order.fee_paid),
    }
    if order.fee_currency:
        figures["fee_currency"] = order.fee_currency
    if filled > 0 and order.filled_amount_quote <= 0:
        return _contradiction(order, "reports a fill without its quote amount")
    if order.status == "filled":
        if filled <= 0:
            return _contradiction(order, "is filled without a fill")
        return {"status": "filled", **figures}
    if order.status in OPEN_ORDER_STATUSES:
        return {"status": "submitted", **figures}
    if order.status in CANCELED_ORDER_STATUSES or order.status == "rejected":
        if filled > 0:
            return {"status": "partially_filled", **figures}
        status = "rejected" if order.status == "rejected" else "canceled"
        return {"status": status, **figures, "error_code": order.status,
                "error_message": f"the exchange ended the order as {order.status} without a fill"}
    # An order status Bitvavo may add one day: keep the execution open, never guess it is over.
    return {"status": "submitted", **figures}


def error_result(error: BaseException) -> Result:
    """The execution result for an exception raised while placing an order (see the table)."""
    if isinstance(error, ClaimTooOld):
        return _failed("claim_too_old", str(error))
    if isinstance(error, ExchangeUsageError):
        if isinstance(error, OrderBelowMinimum):
            code = "order_below_minimum"
        elif isinstance(error, OrderAboveMaximum):
            code = "order_above_maximum"
        elif isinstance(error, KeySeparationError):
            code = "key_separation"
        else:
            code = "invalid_order"
        return _failed(code, str(error))
    if isinstance(error, ExchangeError):
        return _exchange_error_result(error)
    return {"status": "unknown", "error_code": "internal_error",
            "error_message": f"internal error ({type(error).__name__}) while placing the order; "
                             "it may or may not have been sent"}


def _exchange_error_result(error: ExchangeError) -> Result:
    message = _message(str(error))
    if isinstance(error, OutcomeUnknown) or isinstance(error, ClientOrderIdConflict):
        return {"status": "unknown", "error_code": _unknown_code(error), "error_message": message}
    if isinstance(error, RateLimitWouldExceed):
        return _failed("rate_limit_would_exceed", message)
    if isinstance(error, RateLimitBanned) and error.http_status is None:
        return _failed("rate_limit_banned", message)  # refused locally while banned: not sent
    if isinstance(error, MarketListingUnavailable):
        return _failed("market_listing_unavailable", message)
    if isinstance(error, MarketNotTrading):
        return _failed("market_not_trading", message)
    if isinstance(error, ExchangeRejected):
        return {"status": "rejected", "error_code": _code(error), "error_message": message}
    return {"status": "unknown", "error_code": _code(error), "error_message": message}


def not_at_exchange_result(age_seconds: int) -> Result:
    """/reconcile: the exchange does not know the order, and the claim is old enough that it never
    will (settings.not_found_failed_after_seconds): certainly not placed."""
    return _failed("not_found_at_exchange",
                   f"the exchange has no order with this clientOrderId {age_seconds} s or more "
                   "after the claim; it was never placed")


# -- helpers --------------------------------------------------------------------------------------
def _failed(code: str, message: str) -> Result:
    return {"status": "failed", "error_code": code, "error_message": _message(message)}


def _contradiction(order: Order, what: str) -> Result:
    return {"status": "unknown", "exchange_order_id": order.order_id,
            "error_code": "contradictory_answer",
            "error_message": f"the exchange's order ({order.status}) {what}"}


def _code(error: ExchangeError) -> str:
    if error.error_code is not None:
        return str(error.error_code)
    if error.http_status is not None:
        return f"http_{error.http_status}"
    return _snake(type(error).__name__)


def _unknown_code(error: ExchangeError) -> str:
    if error.error_code is not None:
        return str(error.error_code)
    if isinstance(error, ExchangeTimeout):
        return "timeout"
    if isinstance(error, ExchangeTransportError):
        return "transport_error"
    if isinstance(error, MalformedResponse):
        return "malformed_response"
    if isinstance(error, ExchangeServerError) and error.http_status is not None:
        return f"http_{error.http_status}"
    return _code(error)


def _snake(name: str) -> str:
    return "".join(f"_{c.lower()}" if c.isupper() else c for c in name).lstrip("_")


def _message(text: str) -> str:
    return redact(text)[:MAX_ERROR_MESSAGE]


def _plain(value: Decimal) -> Decimal:
    """An exchange figure as record_execution_result reads it: at most 30 decimals (cut)."""
    if value.as_tuple().exponent < -30:  # type: ignore[operator]
        value = value.quantize(_MAX_DECIMALS, rounding=ROUND_DOWN, context=_WIDE)
    return value
