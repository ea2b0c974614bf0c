"""Every error code of reference/bitvavo-api.md → its exception and its outcome_unknown flag."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from decimal import Decimal

import pytest

from shared.exchange import errors as e

# (HTTP status, errorCode, exception class, outcome_unknown)
ERROR_TABLE = [
    (400, 102, e.InvalidJson, False),
    (400, 203, e.InvalidParameter, False),
    (400, 204, e.InvalidParameter, False),
    (400, 205, e.InvalidParameter, False),
    (400, 212, e.BelowMinimumSize, False),
    (400, 217, e.BelowMinimumSize, False),
    (400, 216, e.InsufficientBalance, False),
    (400, 214, e.InvalidParameter, False),  # price off the tick
    (400, 215, e.InvalidParameter, False),
    (400, 220, e.ClientOrderIdConflict, False),
    (400, 233, e.OrderNotCancellable, False),
    (400, 219, e.MarketUnavailable, False),
    (400, 423, e.MarketUnavailable, False),
    (400, 424, e.MarketUnavailable, False),
    (409, 431, e.MarketUnavailable, False),
    (403, 300, e.AuthenticationError, False),
    (403, 301, e.AuthenticationError, False),
    (403, 302, e.AccessWindowError, False),
    (403, 303, e.AccessWindowError, False),
    (403, 304, e.AccessWindowError, False),
    (403, 305, e.ApiKeyInactive, False),
    (403, 306, e.ApiKeyInactive, False),
    (403, 307, e.IpNotWhitelisted, False),
    (403, 308, e.InvalidSignature, False),
    (403, 309, e.InvalidSignature, False),
    (403, 310, e.TradePermissionMissing, False),
    (403, 311, e.ViewPermissionMissing, False),
    (403, 399, e.AuthenticationError, False),  # an auth code we do not know by name
    (404, 240, e.OrderNotFound, False),
    (429, 105, e.RateLimitBanned, False),
    (500, 101, e.ExchangeServerError, True),
    (503, 107, e.ExchangeServerError, True),
    (503, 108, e.ExchangeServerError, True),
    (503, 109, e.ExchangeServerError, True),
    (400, 400, e.ExchangeServerError, True),  # "Unknown server error. Contact support."
    (500, 400, e.ExchangeServerError, True),
    (400, 101, e.ExchangeServerError, True),  # the code decides even under a 4xx
    (500, None, e.ExchangeServerError, True),
    (502, None, e.ExchangeServerError, True),
    (503, None, e.ExchangeServerError, True),
    (504, None, e.ExchangeServerError, True),
    (500, 216, e.ExchangeServerError, True),  # any 5xx is outcome unknown
    (429, None, e.RateLimitBanned, False),
    (401, None, e.AuthenticationError, False),
    (403, None, e.AuthenticationError, False),
    (400, 999, e.ExchangeRejected, False),
    (404, None, e.ExchangeRejected, False),  # a bare 404 is never "order not found"
    (200, 216, e.InsufficientBalance, False),  # an error body under a success status
]


@pytest.mark.parametrize(("status", "code", "cls", "unknown"), ERROR_TABLE)
def test_error_table(status: int, code: int | None, cls: type, unknown: bool) -> None:
    body = {"errorCode": code, "error": "some text"} if code is not None else {"x": 1}
    error = e.error_for(status, body, endpoint="POST /order")
    assert type(error) is cls
    assert error.outcome_unknown is unknown
    assert isinstance(error, e.OutcomeUnknown) is unknown
    assert isinstance(error, e.ExchangeRejected) is (not unknown)
    assert error.http_status == status
    assert error.error_code == code
    assert error.endpoint == "POST /order"


def test_non_json_error_body_is_mapped_by_status() -> None:
    assert type(e.error_for(502, None)) is e.ExchangeServerError
    assert type(e.error_for(404, "<html>Not Found</html>")) is e.ExchangeRejected


def test_string_error_code_is_understood() -> None:
    assert type(e.error_for(400, {"errorCode": "216", "error": "x"})) is e.InsufficientBalance


def test_message_and_str_carry_the_exchange_text() -> None:
    error = e.error_for(
        400,
        {
            "errorCode": 216,
            "error": "You do not have sufficient balance to complete this operation.",
        },
        endpoint="POST /order",
    )
    assert error.message == "You do not have sufficient balance to complete this operation."
    assert str(error) == (
        "POST /order, HTTP 400, errorCode 216: "
        "You do not have sufficient balance to complete this operation."
    )


def test_ban_expiry_is_parsed_from_the_message() -> None:
    error = e.error_for(
        429,
        {
            "errorCode": 105,
            "error": "Your IP or API key has been banned for not respecting the rate limit. "
            "The ban expires at 1700000060123.",
        },
    )
    assert isinstance(error, e.RateLimitBanned)
    assert error.ban_expires_at == datetime(2023, 11, 14, 22, 14, 20, 123000, tzinfo=UTC)
    assert error.ban_expires_at.tzinfo is UTC


def test_110_is_a_ban_under_http_429_and_an_invalid_request_otherwise() -> None:
    ban = e.error_for(429, {"errorCode": 110, "error": "rate limit exceeded"})
    assert isinstance(ban, e.RateLimitBanned) and ban.ban_expires_at is None
    assert ban.outcome_unknown is False
    endpoint = e.error_for(400, {"errorCode": 110, "error": "Invalid endpoint."})
    assert isinstance(endpoint, e.InvalidRequest) and not isinstance(endpoint, e.RateLimitBanned)


def test_unknown_server_error_400_is_never_a_rejection() -> None:
    # Bitvavo's table: 400 "Unknown server error. Contact support." A maybe-placed order must not
    # be recorded as certainly not placed.
    body = {"errorCode": 400, "error": "Unknown error. Please contact support."}
    error = e.error_for(400, body, endpoint="POST /order")
    assert isinstance(error, e.OutcomeUnknown) and not isinstance(error, e.ExchangeRejected)
    assert error.outcome_unknown is True


def test_233_is_not_cancellable_and_never_not_found() -> None:
    # the order exists (filled, canceled…): the reconciler reads OrderNotFound as "not placed"
    error = e.error_for(400, {"errorCode": 233, "error": "Order must be active"})
    assert type(error) is e.OrderNotCancellable
    assert not isinstance(error, e.OrderNotFound)
    assert isinstance(error, e.ExchangeRejected) and error.outcome_unknown is False


def test_an_error_names_the_order_it_is_about() -> None:
    coid = uuid.UUID("2be7d0df-d5dc-4b53-a250-3376f3b393e6")
    error = e.error_for(503, {"errorCode": 109, "error": "did not respond"}, endpoint="POST /order")
    assert error.market is None and error.client_order_id is None
    assert error.about_order("BTC-EUR", coid) is error
    assert error.market == "BTC-EUR" and error.client_order_id == coid
    assert str(error) == (
        "POST /order, market BTC-EUR, clientOrderId 2be7d0df-d5dc-4b53-a250-3376f3b393e6, "
        "HTTP 503, errorCode 109: did not respond"
    )


def test_naming_order_names_every_exchange_error_and_nothing_else() -> None:
    coid = uuid.uuid4()
    with pytest.raises(e.ExchangeTimeout) as caught, e.naming_order("ETH-EUR", coid):
        raise e.ExchangeTimeout("no answer")
    assert (caught.value.market, caught.value.client_order_id) == ("ETH-EUR", coid)
    with pytest.raises(ValueError), e.naming_order("ETH-EUR", coid):
        raise ValueError("not an exchange error")


def test_order_below_minimum_is_a_local_refusal() -> None:
    assert issubclass(e.OrderBelowMinimum, e.InvalidOrderRequest)
    assert not issubclass(e.OrderBelowMinimum, e.ExchangeError)
    error = e.OrderBelowMinimum("x", field="amountQuote", value=Decimal("4.99"),
                                minimum=Decimal("5"))
    assert (error.field, error.value, error.minimum) == ("amountQuote", Decimal("4.99"), 5)


def test_usage_errors_are_not_exchange_answers() -> None:
    assert not issubclass(e.KeySeparationError, e.ExchangeError)
    assert issubclass(e.KeySeparationError, e.ExchangeUsageError)
    assert issubclass(e.MissingCredentials, e.KeySeparationError)
    assert issubclass(e.InvalidOrderRequest, ValueError)
    assert not issubclass(e.RateLimitWouldExceed, e.OutcomeUnknown)
    assert e.RateLimitWouldExceed("x").outcome_unknown is False
    assert not issubclass(e.MarketListingUnavailable, e.OutcomeUnknown | e.ExchangeRejected)
    assert e.MarketListingUnavailable("x").outcome_unknown is False


def test_every_documented_code_is_in_the_table() -> None:
    documented = {102, 203, 204, 205, 212, 214, 215, 217, 216, 220, 219, 423, 424, 431, 233, 240}
    documented |= set(range(300, 312)) | {101, 105, 107, 108, 109, 400}
    assert documented <= set(e.ERROR_CODES)
    tested = {code for _, code, _, _ in ERROR_TABLE if code is not None}
    assert documented <= tested
