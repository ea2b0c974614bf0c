"""shared.execution.results (pure): every exchange answer and every error placing can raise maps to
the recorded status of its docstring's table, and to the HTTP status; and every `failed` row is a
refusal raised before anything is sent. Also the settings: errors name variables, never values.
"""

from __future__ import annotations

import uuid
from decimal import Decimal
from typing import Any

import pytest

from shared.exchange.errors import (
    AccessWindowError,
    BelowMinimumSize,
    ClientOrderIdConflict,
    ExchangeError,
    ExchangeServerError,
    ExchangeTimeout,
    ExchangeTransportError,
    InsufficientBalance,
    InvalidOrderRequest,
    InvalidParameter,
    KeySeparationError,
    MalformedResponse,
    MarketListingUnavailable,
    MarketNotTrading,
    MarketUnavailable,
    OrderAboveMaximum,
    OrderBelowMinimum,
    RateLimitBanned,
    RateLimitWouldExceed,
    error_for,
)
from shared.exchange.models import Order
from shared.execution.deadline import ClaimTooOld
from shared.execution.replies import http_status
from shared.execution.results import error_result, not_at_exchange_result, order_result
from shared.execution.settings import load_execute_settings
from shared.settings import ConfigurationError
from tests.exchange_doubles import order_json


def order(**overrides: Any) -> Order:
    return Order.model_validate(order_json(**overrides))


# -- exchange order → execution ------------------------------------------------------------------
ORDER_CASES = [
    # (order fields, expected status)
    ({"status": "filled"}, "filled"),
    ({"status": "new", "filledAmount": "0", "filledAmountQuote": "0", "feePaid": "0"}, "submitted"),
    ({"status": "partiallyFilled"}, "submitted"),
    ({"status": "awaitingTrigger", "filledAmount": "0", "filledAmountQuote": "0"}, "submitted"),
    ({"status": "canceled"}, "partially_filled"),
    ({"status": "canceledMarketProtection"}, "partially_filled"),
    ({"status": "expired"}, "partially_filled"),
    ({"status": "rejected"}, "partially_filled"),
    ({"status": "canceled", "filledAmount": "0", "filledAmountQuote": "0"}, "canceled"),
    ({"status": "expired", "filledAmount": "0", "filledAmountQuote": "0"}, "canceled"),
    ({"status": "canceledIOC", "filledAmount": "0", "filledAmountQuote": "0"}, "canceled"),
    ({"status": "rejected", "filledAmount": "0", "filledAmountQuote": "0"}, "rejected"),
    ({"status": "somethingNew"}, "submitted"),
    ({"status": "filled", "filledAmount": "0", "filledAmountQuote": "0"}, "unknown"),
    ({"status": "partiallyFilled", "filledAmountQuote": "0"}, "unknown"),
]


@pytest.mark.parametrize(("fields", "status"), ORDER_CASES,
                         ids=[f"{f['status']}-{s}" for f, s in ORDER_CASES])
def test_each_order_status_maps_to_its_execution_status(fields: dict[str, Any],
                                                        status: str) -> None:
    result = order_result(order(**fields))
    assert result["status"] == status
    assert result["exchange_order_id"] == "1be6d0df-d5dc-4b53-a250-3376f3b393e6"
    assert "submitted_at" not in result and "completed_at" not in result  # the DB's clock
    assert "price" not in result  # quote ÷ amount, computed by the database


def test_a_fill_carries_its_figures_as_decimals() -> None:
    result = order_result(order())
    assert result == {
        "status": "filled", "exchange_order_id": "1be6d0df-d5dc-4b53-a250-3376f3b393e6",
        "filled_amount": Decimal("0.00027777"), "filled_amount_quote": Decimal("9.9999"),
        "fee_paid": Decimal("0.02499975"), "fee_currency": "EUR"}
    assert all(not isinstance(v, float) for v in result.values())


def test_figures_with_more_decimals_than_the_database_reads_are_cut_to_30() -> None:
    result = order_result(order(filledAmountQuote="1." + "1" * 40))
    assert result["filled_amount_quote"] == Decimal("1." + "1" * 30)


# -- errors → execution ----------------------------------------------------------------------------
def _rejected(code: int, status: int = 400) -> ExchangeError:
    return error_for(status, {"errorCode": code, "error": f"code {code}"}, endpoint="POST /order")


ERROR_CASES: list[tuple[str, BaseException, str, str]] = [
    ("timeout", ExchangeTimeout("no answer"), "unknown", "timeout"),
    ("transport", ExchangeTransportError("reset"), "unknown", "transport_error"),
    ("malformed", MalformedResponse("not json"), "unknown", "malformed_response"),
    ("101", _rejected(101, 500), "unknown", "101"),
    ("107", _rejected(107, 503), "unknown", "107"),
    ("109", _rejected(109, 503), "unknown", "109"),
    ("400 under HTTP 400", _rejected(400, 400), "unknown", "400"),
    ("502 html", ExchangeServerError("bad gateway", http_status=502), "unknown", "http_502"),
    ("220 exists", ClientOrderIdConflict("in use", http_status=400, error_code=220), "unknown",
     "220"),
    ("216", _rejected(216), "rejected", "216"),
    ("217", _rejected(217), "rejected", "217"),
    ("205", _rejected(205), "rejected", "205"),
    ("309", _rejected(309, 403), "rejected", "309"),
    ("304 window", _rejected(304, 403), "rejected", "304"),
    ("423 halted", _rejected(423), "rejected", "423"),
    ("105 from the exchange", _rejected(105, 429), "rejected", "105"),
    ("110 from the exchange", _rejected(110, 429), "rejected", "110"),
    ("210 above the maximum", _rejected(210), "rejected", "210"),
    ("claim too old", ClaimTooOld(6.2, 5), "failed", "claim_too_old"),
    ("below minimum", OrderBelowMinimum("4.99 < 5", field="amountQuote", value=Decimal("4.99"),
                                        minimum=Decimal(5)), "failed", "order_below_minimum"),
    ("invalid order", InvalidOrderRequest("not listed"), "failed", "invalid_order"),
    ("key separation", KeySeparationError("wrong client"), "failed", "key_separation"),
    ("would exceed", RateLimitWouldExceed("budget"), "failed", "rate_limit_would_exceed"),
    ("banned locally", RateLimitBanned("refused locally"), "failed", "rate_limit_banned"),
    ("listing", MarketListingUnavailable("no listing"), "failed", "market_listing_unavailable"),
    ("above maximum", OrderAboveMaximum("1001 > 1000", field="amountQuote",
                                        value=Decimal(1001), maximum=Decimal(1000)),
     "failed", "order_above_maximum"),
    ("halted", MarketNotTrading("BTC-EUR is halted", status="halted"), "failed",
     "market_not_trading"),
    ("bare exchange error", ExchangeError("?"), "unknown", "exchange_error"),
    ("our bug", ZeroDivisionError("boom"), "unknown", "internal_error"),
]


@pytest.mark.parametrize(("error", "status", "code"), [c[1:] for c in ERROR_CASES],
                         ids=[c[0] for c in ERROR_CASES])
def test_each_error_maps_to_its_execution_status(error: BaseException, status: str,
                                                 code: str) -> None:
    result = error_result(error)
    assert (result["status"], result["error_code"]) == (status, code)
    assert result["error_message"]


def test_the_error_classes_the_table_relies_on() -> None:
    # `rejected` rows are definitive refusals; `unknown` rows may have been placed.
    assert isinstance(_rejected(216), InsufficientBalance)
    assert isinstance(_rejected(217), BelowMinimumSize)
    assert isinstance(_rejected(205), InvalidParameter)
    assert isinstance(_rejected(423), MarketUnavailable)
    assert isinstance(_rejected(304, 403), AccessWindowError)
    assert _rejected(101, 500).outcome_unknown and _rejected(400, 400).outcome_unknown


def test_a_bugs_message_is_not_recorded_and_exchange_texts_are_redacted() -> None:
    secret = "a" * 64
    assert secret not in str(error_result(ValueError(f"leak {secret}")))
    assert secret not in str(error_result(ExchangeTimeout(f"key {secret}")))


def test_not_at_exchange_is_failed() -> None:
    result = not_at_exchange_result(30)
    assert result["status"] == "failed" and result["error_code"] == "not_found_at_exchange"


@pytest.mark.parametrize(("status", "replayed", "http"), [
    ("filled", False, 201), ("submitted", False, 201), ("failed", False, 201),
    ("rejected", False, 201), ("canceled", False, 201), ("partially_filled", False, 201),
    ("unknown", False, 202), ("filled", True, 200), ("failed", True, 200), ("unknown", True, 202),
    ("claimed", True, 409)])
def test_http_status(status: str, replayed: bool, http: int) -> None:
    assert http_status(status, replayed=replayed) == http


# -- settings --------------------------------------------------------------------------------------
SECRET_VALUE = "Sup3rSecretValue-" + uuid.uuid4().hex
SETTINGS_ENV = ("DATABASE_URL", "SUPABASE_URL", "SUPABASE_SERVICE_ROLE_KEY", "SUPABASE_JWT_SECRET",
                "SUPABASE_JWKS_URL", "SUPABASE_JWT_ISSUER", "TRADING_MODE", "BITVAVO_TRADE_API_KEY",
                "BITVAVO_TRADE_API_SECRET", "BITVAVO_OPERATOR_ID", "BITVAVO_READONLY_API_KEY",
                "BITVAVO_REST_URL", "MAX_CLAIM_AGE_SECONDS", "BITVAVO_ACCESS_WINDOW_MS")


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in SETTINGS_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DATABASE_URL", f"postgresql://authenticator:{SECRET_VALUE}@db:5432/x")
    monkeypatch.setenv("SUPABASE_JWT_SECRET", SECRET_VALUE + "-jwt-secret-long-enough")
    return monkeypatch


def test_paper_mode_is_the_default_and_needs_no_trade_key(env: pytest.MonkeyPatch) -> None:
    settings = load_execute_settings()
    assert settings.mode == "paper"
    assert settings.execution.not_found_failed_after_seconds == 135  # 5 + 10 + 120
    secrets = set(settings.secrets())
    assert SECRET_VALUE in secrets  # the DB password alone, not only the whole URL
    assert SECRET_VALUE + "-jwt-secret-long-enough" in secrets


@pytest.mark.parametrize("present", [(), ("BITVAVO_TRADE_API_KEY",),
                                     ("BITVAVO_TRADE_API_KEY", "BITVAVO_TRADE_API_SECRET")])
def test_live_mode_without_the_trade_credentials_names_what_is_missing(
        env: pytest.MonkeyPatch, present: tuple[str, ...]) -> None:
    env.setenv("TRADING_MODE", "live")
    for name in present:
        env.setenv(name, SECRET_VALUE + name)
    with pytest.raises(ConfigurationError) as caught:
        load_execute_settings()
    message = str(caught.value)
    missing = [n for n in ("BITVAVO_TRADE_API_KEY", "BITVAVO_TRADE_API_SECRET",
                           "BITVAVO_OPERATOR_ID") if n not in present]
    assert f"TRADING_MODE=live needs {', '.join(missing)} (not set)" in message
    assert SECRET_VALUE not in message


def test_every_bad_variable_is_named_and_no_value_is_printed(env: pytest.MonkeyPatch) -> None:
    env.setenv("TRADING_MODE", SECRET_VALUE)
    env.setenv("MAX_CLAIM_AGE_SECONDS", SECRET_VALUE)
    env.setenv("BITVAVO_ACCESS_WINDOW_MS", "99")
    env.setenv("BITVAVO_TRADE_API_KEY", "has space " + SECRET_VALUE)
    env.setenv("DATABASE_URL", f"mysql://root:{SECRET_VALUE}@db/x")
    with pytest.raises(ConfigurationError) as caught:
        load_execute_settings()
    message = str(caught.value)
    for name in ("TRADING_MODE", "MAX_CLAIM_AGE_SECONDS", "BITVAVO_ACCESS_WINDOW_MS",
                 "BITVAVO_TRADE_API_KEY", "DATABASE_URL"):
        assert f"{name}: " in message, name
    assert SECRET_VALUE not in message and caught.value.__cause__ is None
