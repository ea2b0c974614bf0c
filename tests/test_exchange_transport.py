"""The wire: exact method, URL, headers, body and signature of every call; one send per call;
error mapping; no secret in logs."""

from __future__ import annotations

import inspect
import json
import logging
import uuid
from collections.abc import Callable, Iterator
from decimal import Decimal
from typing import Any

import httpx
import pydantic
import pytest
from pytest_httpx import HTTPXMock

from shared.exchange.errors import (
    ExchangeError,
    ExchangeServerError,
    ExchangeTimeout,
    ExchangeTransportError,
    InsufficientBalance,
    MalformedResponse,
    MissingCredentials,
    OrderBelowMinimum,
    OrderNotCancellable,
    OutcomeUnknown,
    RateLimitBanned,
)
from shared.exchange.paper import PaperTrade
from shared.exchange.readonly import BitvavoReadonly
from shared.exchange.roles import OrderClient
from shared.exchange.trade import BitvavoTrade
from tests.exchange_doubles import (
    BASE_URL,
    OPERATOR_ID,
    READONLY_KEY,
    READONLY_SECRET,
    TRADE_KEY,
    TRADE_SECRET,
    FakeClock,
    expected_signature,
    markets,
    order_json,
)

CLIENT_ORDER_ID = "2be7d0df-d5dc-4b53-a250-3376f3b393e6"


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def trade(clock: FakeClock, monkeypatch: pytest.MonkeyPatch) -> Iterator[BitvavoTrade]:
    monkeypatch.delenv("BITVAVO_READONLY_API_KEY", raising=False)
    client = BitvavoTrade(
        BASE_URL,
        api_key=TRADE_KEY,
        api_secret=TRADE_SECRET,
        operator_id=OPERATOR_ID,
        markets=markets,
        clock=clock,
        sleep=clock.sleep,
    )
    yield client
    client.close()


@pytest.fixture
def readonly(clock: FakeClock) -> Iterator[BitvavoReadonly]:
    client = BitvavoReadonly(
        BASE_URL, api_key=READONLY_KEY, api_secret=READONLY_SECRET, clock=clock, sleep=clock.sleep
    )
    yield client
    client.close()


@pytest.fixture
def public(clock: FakeClock) -> Iterator[BitvavoReadonly]:
    client = BitvavoReadonly(BASE_URL, clock=clock, sleep=clock.sleep)
    yield client
    client.close()


def assert_signed(request: httpx.Request, key: str, secret: str, clock: FakeClock) -> None:
    assert request.headers["Bitvavo-Access-Key"] == key
    assert request.headers["Bitvavo-Access-Timestamp"] == str(clock.ms)
    assert request.headers["Bitvavo-Access-Window"] == "10000"
    assert request.headers["Bitvavo-Access-Signature"] == expected_signature(secret, request)


# (call, method, URL as sent, body as sent or None, response JSON)
ReadonlyCall = Callable[[BitvavoReadonly], Any]
READONLY_CALLS: list[tuple[str, ReadonlyCall, str, Any]] = [
    ("time", lambda c: c.time(), "/time", {"time": 1700000000000}),
    ("markets", lambda c: c.markets(), "/markets", []),
    (
        "market",
        lambda c: c.markets("BTC-EUR"),
        "/markets?market=BTC-EUR",
        {"market": "BTC-EUR", "status": "trading", "base": "BTC", "quote": "EUR"},
    ),
    ("assets", lambda c: c.assets("BTC"), "/assets?symbol=BTC", {"symbol": "BTC"}),
    (
        "ticker_price",
        lambda c: c.ticker_price("BTC-EUR"),
        "/ticker/price?market=BTC-EUR",
        {"market": "BTC-EUR", "price": "36000"},
    ),
    (
        "ticker_book",
        lambda c: c.ticker_book("BTC-EUR"),
        "/ticker/book?market=BTC-EUR",
        {"market": "BTC-EUR", "bid": "1", "bidSize": "2", "ask": "3", "askSize": "4"},
    ),
    ("ticker_24h", lambda c: c.ticker_24h(), "/ticker/24h", []),
    (
        "order_book",
        lambda c: c.order_book("BTC-EUR", depth=2),
        "/BTC-EUR/book?depth=2",
        {"market": "BTC-EUR", "nonce": 1, "bids": [["1", "2"]], "asks": []},
    ),
    (
        "candles",
        lambda c: c.candles("BTC-EUR", "1h", limit=2),
        "/BTC-EUR/candles?interval=1h&limit=2",
        [[1700003600000, "1", "2", "0.5", "1.5", "3"]],
    ),
]


@pytest.mark.parametrize(("name", "call", "target", "answer"), READONLY_CALLS)
def test_public_calls_without_credentials_are_exact_and_unsigned(
    httpx_mock: HTTPXMock,
    public: BitvavoReadonly,
    name: str,
    call: ReadonlyCall,
    target: str,
    answer: Any,
) -> None:
    httpx_mock.add_response(method="GET", url=BASE_URL + target, json=answer)
    call(public)
    (request,) = httpx_mock.get_requests()
    assert request.method == "GET"
    assert str(request.url) == BASE_URL + target
    assert request.content == b""
    assert not [h for h in request.headers if h.lower().startswith("bitvavo-access")]


@pytest.mark.parametrize(("name", "call", "target", "answer"), READONLY_CALLS)
def test_readonly_key_signs_every_call(
    httpx_mock: HTTPXMock,
    readonly: BitvavoReadonly,
    clock: FakeClock,
    name: str,
    call: ReadonlyCall,
    target: str,
    answer: Any,
) -> None:
    httpx_mock.add_response(method="GET", url=BASE_URL + target, json=answer)
    call(readonly)
    (request,) = httpx_mock.get_requests()
    assert_signed(request, READONLY_KEY, READONLY_SECRET, clock)


def test_balance_is_signed_with_the_readonly_key(
    httpx_mock: HTTPXMock, readonly: BitvavoReadonly, clock: FakeClock
) -> None:
    httpx_mock.add_response(
        method="GET",
        url=BASE_URL + "/balance?symbol=EUR",
        json=[{"symbol": "EUR", "available": "10000", "inOrder": "0"}],
    )
    (balance,) = readonly.balance("EUR")
    assert balance.available == Decimal("10000")
    (request,) = httpx_mock.get_requests()
    assert str(request.url) == BASE_URL + "/balance?symbol=EUR"
    assert_signed(request, READONLY_KEY, READONLY_SECRET, clock)


def test_balance_without_credentials_is_refused_before_sending(
    httpx_mock: HTTPXMock, public: BitvavoReadonly
) -> None:
    with pytest.raises(MissingCredentials):
        public.balance()
    assert httpx_mock.get_requests() == []


# -- trade calls: exact body, always operatorId and a UUID clientOrderId -------------------------

TradeCall = Callable[[BitvavoTrade], Any]
TRADE_CALLS: list[tuple[str, TradeCall, str, str, dict[str, Any] | None, Any]] = [
    (
        "market buy by amountQuote",
        lambda c: c.place_market_order(
            "BTC-EUR", "buy", amount_quote=Decimal("10.00"), client_order_id=CLIENT_ORDER_ID
        ),
        "POST",
        "/order",
        {
            "market": "BTC-EUR",
            "side": "buy",
            "orderType": "market",
            "amountQuote": "10",
            "clientOrderId": CLIENT_ORDER_ID,
            "operatorId": OPERATOR_ID,
        },
        order_json(),
    ),
    (
        "market sell by amount",
        lambda c: c.place_market_order(
            "BTC-EUR",
            "sell",
            amount=Decimal("0.00027777"),
            client_order_id=uuid.UUID(CLIENT_ORDER_ID),
        ),
        "POST",
        "/order",
        {
            "market": "BTC-EUR",
            "side": "sell",
            "orderType": "market",
            "amount": "0.00027777",
            "clientOrderId": CLIENT_ORDER_ID,
            "operatorId": OPERATOR_ID,
        },
        order_json(side="sell"),
    ),
    (
        "get by clientOrderId",
        lambda c: c.get_order("BTC-EUR", client_order_id=CLIENT_ORDER_ID),
        "GET",
        f"/order?market=BTC-EUR&clientOrderId={CLIENT_ORDER_ID}",
        None,
        order_json(),
    ),
    (
        "get by orderId",
        lambda c: c.get_order("BTC-EUR", order_id="1be6d0df-d5dc-4b53-a250-3376f3b393e6"),
        "GET",
        "/order?market=BTC-EUR&orderId=1be6d0df-d5dc-4b53-a250-3376f3b393e6",
        None,
        order_json(),
    ),
    (
        "cancel by clientOrderId",
        lambda c: c.cancel_order("BTC-EUR", client_order_id=CLIENT_ORDER_ID),
        "DELETE",
        f"/order?market=BTC-EUR&clientOrderId={CLIENT_ORDER_ID}&operatorId={OPERATOR_ID}",
        None,
        {"orderId": "1", "clientOrderId": CLIENT_ORDER_ID, "operatorId": OPERATOR_ID},
    ),
    (
        "cancel by orderId",
        lambda c: c.cancel_order("BTC-EUR", order_id="1"),
        "DELETE",
        f"/order?market=BTC-EUR&orderId=1&operatorId={OPERATOR_ID}",
        None,
        {"orderId": "1", "operatorId": OPERATOR_ID},
    ),
]


@pytest.mark.parametrize(("name", "call", "method", "target", "body", "answer"), TRADE_CALLS)
def test_trade_calls_are_exact_and_signed(
    httpx_mock: HTTPXMock,
    trade: BitvavoTrade,
    clock: FakeClock,
    name: str,
    call: TradeCall,
    method: str,
    target: str,
    body: dict[str, Any] | None,
    answer: Any,
) -> None:
    httpx_mock.add_response(method=method, url=BASE_URL + target, json=answer)
    call(trade)
    (request,) = httpx_mock.get_requests()
    assert request.method == method
    assert str(request.url) == BASE_URL + target
    if body is None:
        assert request.content == b""
    else:
        # the exact compact text that was signed, keys in this order
        assert request.content == json.dumps(body, separators=(",", ":")).encode()
        assert request.headers["Content-Type"] == "application/json"
    assert_signed(request, TRADE_KEY, TRADE_SECRET, clock)


# -- G10: the clientOrderId is the caller's, always; every order error names it ----------------


@pytest.mark.parametrize("client", [BitvavoTrade, PaperTrade, OrderClient])
def test_g10_client_order_id_is_required_keyword_only(client: type) -> None:
    parameter = inspect.signature(client.place_market_order).parameters["client_order_id"]
    assert parameter.kind is inspect.Parameter.KEYWORD_ONLY
    assert parameter.default is inspect.Parameter.empty


def test_g10_an_order_without_client_order_id_is_never_sent(
    httpx_mock: HTTPXMock, trade: BitvavoTrade
) -> None:
    with pytest.raises(TypeError, match="client_order_id"):
        trade.place_market_order("BTC-EUR", "buy", amount_quote=Decimal("10"))  # type: ignore[call-arg]
    assert httpx_mock.get_requests() == []


def answer_with(httpx_mock: HTTPXMock, kind: str) -> None:
    """Program the POST /order answer of one failure kind."""
    match kind:
        case "timeout":
            httpx_mock.add_exception(httpx.ReadTimeout("read timed out"), method="POST")
        case "transport":
            httpx_mock.add_exception(httpx.RemoteProtocolError("disconnected"), method="POST")
        case "5xx":
            httpx_mock.add_response(method="POST", status_code=502, html="<h1>Bad Gateway</h1>")
        case "101":
            httpx_mock.add_response(
                method="POST", status_code=500, json={"errorCode": 101, "error": "Unknown"}
            )
        case "400":
            httpx_mock.add_response(
                method="POST", status_code=400, json={"errorCode": 400, "error": "Unknown"}
            )
        case "not json":
            httpx_mock.add_response(method="POST", status_code=200, text="<html>")
        case "unfit json":
            httpx_mock.add_response(method="POST", json=order_json(filledAmount=""))
        case "rejected":
            httpx_mock.add_response(
                method="POST", status_code=400, json={"errorCode": 216, "error": "balance"}
            )


FAILURES = ["timeout", "transport", "5xx", "101", "400", "not json", "unfit json", "rejected"]


@pytest.mark.parametrize("kind", FAILURES)
def test_g10_every_post_order_error_names_the_order(
    httpx_mock: HTTPXMock, trade: BitvavoTrade, kind: str
) -> None:
    answer_with(httpx_mock, kind)
    coid = uuid.uuid4()
    with pytest.raises(ExchangeError) as caught:
        trade.place_market_order(
            "ETH-EUR", "buy", amount_quote=Decimal("10"), client_order_id=str(coid)
        )
    error = caught.value
    assert error.client_order_id == coid and error.market == "ETH-EUR"
    assert str(coid) in str(error) and "ETH-EUR" in str(error)
    assert error.outcome_unknown is (kind != "rejected")
    (request,) = httpx_mock.get_requests()
    assert json.loads(request.content)["clientOrderId"] == str(coid)


def test_g10_a_local_refusal_names_the_order_too(
    httpx_mock: HTTPXMock, trade: BitvavoTrade, clock: FakeClock
) -> None:
    httpx_mock.add_response(
        method="POST",
        status_code=429,
        json={"errorCode": 105, "error": f"banned. The ban expires at {clock.ms + 60_000}."},
    )
    with pytest.raises(RateLimitBanned):
        place(trade)
    coid = uuid.uuid4()
    with pytest.raises(RateLimitBanned) as caught:
        trade.place_market_order("BTC-EUR", "sell", amount=Decimal("1"), client_order_id=coid)
    assert caught.value.http_status is None  # refused here, nothing sent
    assert caught.value.client_order_id == coid and caught.value.market == "BTC-EUR"
    assert len(httpx_mock.get_requests()) == 1


@pytest.mark.parametrize(
    ("call", "method", "body"),
    [
        (lambda c: c.get_order("BTC-EUR", client_order_id=CLIENT_ORDER_ID), "GET", None),
        (lambda c: c.cancel_order("BTC-EUR", client_order_id=CLIENT_ORDER_ID), "DELETE", None),
    ],
)
def test_order_lookups_name_the_order(
    httpx_mock: HTTPXMock, trade: BitvavoTrade, call: TradeCall, method: str, body: Any
) -> None:
    httpx_mock.add_response(
        method=method, status_code=400, json={"errorCode": 233, "error": "Order must be active"}
    )
    with pytest.raises(OrderNotCancellable) as caught:
        call(trade)
    assert caught.value.client_order_id == uuid.UUID(CLIENT_ORDER_ID)
    assert caught.value.market == "BTC-EUR"


# -- precision: what goes on the wire is what the market accepts --------------------------------


def sent_body(httpx_mock: HTTPXMock) -> dict[str, Any]:
    (request,) = httpx_mock.get_requests()
    body: dict[str, Any] = json.loads(request.content)
    return body


@pytest.mark.parametrize(
    ("call", "expected"),
    [
        (  # an AI-sized proposal: rounded DOWN to notionalDecimals (2)
            lambda c, coid: c.place_market_order(
                "BTC-EUR", "buy", amount_quote=Decimal("10.123456789"), client_order_id=coid
            ),
            {"amountQuote": "10.12"},
        ),
        (  # rounded DOWN to quantityDecimals (8 for BTC, 6 for XRP)
            lambda c, coid: c.place_market_order(
                "BTC-EUR", "sell", amount=Decimal("0.000123456789"), client_order_id=coid
            ),
            {"amount": "0.00012345"},
        ),
        (
            lambda c, coid: c.place_market_order(
                "XRP-EUR", "sell", amount=Decimal("12.3456789"), client_order_id=coid
            ),
            {"amount": "12.345678"},
        ),
    ],
)
def test_orders_are_rounded_to_the_market_before_sending(
    httpx_mock: HTTPXMock, trade: BitvavoTrade, call: Callable[..., Any],
    expected: dict[str, str],
) -> None:
    httpx_mock.add_response(method="POST", json=order_json())
    call(trade, uuid.uuid4())
    body = sent_body(httpx_mock)
    assert {key: body[key] for key in expected} == expected


@pytest.mark.parametrize(
    ("call", "field"),
    [
        (  # 4.999 EUR rounds to 4.99, below minOrderInQuoteAsset 5
            lambda c, coid: c.place_market_order(
                "BTC-EUR", "buy", amount_quote=Decimal("4.999"), client_order_id=coid
            ),
            "amountQuote",
        ),
        (  # 5.009 rounds to 5.00: fine; 0.004 rounds to zero
            lambda c, coid: c.place_market_order(
                "BTC-EUR", "buy", amount_quote=Decimal("0.004"), client_order_id=coid
            ),
            "amountQuote",
        ),
        (  # 0.000000009 BTC rounds to zero at 8 decimals
            lambda c, coid: c.place_market_order(
                "BTC-EUR", "sell", amount=Decimal("0.000000009"), client_order_id=coid
            ),
            "amount",
        ),
        (  # 0.00005999 BTC is below minOrderInBaseAsset 0.00006
            lambda c, coid: c.place_market_order(
                "BTC-EUR", "sell", amount=Decimal("0.000059999"), client_order_id=coid
            ),
            "amount",
        ),
    ],
)
def test_sub_minimum_orders_are_refused_before_sending(
    httpx_mock: HTTPXMock, trade: BitvavoTrade, call: Callable[..., Any], field: str
) -> None:
    with pytest.raises(OrderBelowMinimum) as caught:
        call(trade, uuid.uuid4())
    assert caught.value.field == field
    assert not isinstance(caught.value, ExchangeError)
    assert httpx_mock.get_requests() == []


def test_an_unlisted_market_is_refused_before_sending(
    httpx_mock: HTTPXMock, trade: BitvavoTrade
) -> None:
    from shared.exchange.errors import InvalidOrderRequest

    with pytest.raises(InvalidOrderRequest, match="SOL-EUR is not listed"):
        trade.place_market_order(
            "SOL-EUR", "buy", amount_quote=Decimal("10"), client_order_id=uuid.uuid4()
        )
    assert httpx_mock.get_requests() == []


# -- G10: POST /order is sent once; an unknown outcome is reported, never retried --------------


def place(trade: BitvavoTrade) -> Any:
    return trade.place_market_order(
        "BTC-EUR", "buy", amount_quote=Decimal("10"), client_order_id=CLIENT_ORDER_ID
    )


@pytest.mark.parametrize(
    "exception",
    [
        httpx.ReadTimeout("read timed out"),
        httpx.WriteTimeout("write timed out"),
        httpx.ConnectTimeout("connect timed out"),
        httpx.PoolTimeout("pool timed out"),
    ],
)
def test_g10_timeout_on_post_order_is_outcome_unknown_and_sent_once(
    httpx_mock: HTTPXMock, trade: BitvavoTrade, exception: Exception
) -> None:
    httpx_mock.add_exception(exception, method="POST")
    with pytest.raises(ExchangeTimeout) as caught:
        place(trade)
    assert caught.value.outcome_unknown is True
    assert len(httpx_mock.get_requests()) == 1


@pytest.mark.parametrize(
    "exception",
    [
        httpx.RemoteProtocolError("Server disconnected without sending a response."),
        httpx.ReadError("Connection reset by peer"),
        httpx.ConnectError("Connection refused"),
    ],
)
def test_g10_transport_error_on_post_order_is_outcome_unknown_and_sent_once(
    httpx_mock: HTTPXMock, trade: BitvavoTrade, exception: Exception
) -> None:
    httpx_mock.add_exception(exception, method="POST")
    with pytest.raises(ExchangeTransportError) as caught:
        place(trade)
    assert caught.value.outcome_unknown is True
    assert len(httpx_mock.get_requests()) == 1


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (
            500,
            {"errorCode": 101, "error": "Unknown error. Operation may or may not have succeeded."},
        ),
        (503, {"errorCode": 107, "error": "The matching engine is overloaded."}),
        (503, {"errorCode": 109, "error": "The matching engine did not respond in time."}),
        (502, None),
        (500, None),
    ],
)
def test_g10_server_error_on_post_order_is_outcome_unknown_and_sent_once(
    httpx_mock: HTTPXMock, trade: BitvavoTrade, status: int, body: Any
) -> None:
    if body is None:
        httpx_mock.add_response(method="POST", status_code=status, html="<h1>Bad Gateway</h1>")
    else:
        httpx_mock.add_response(method="POST", status_code=status, json=body)
    with pytest.raises(ExchangeServerError) as caught:
        place(trade)
    assert caught.value.outcome_unknown is True
    assert caught.value.http_status == status
    assert len(httpx_mock.get_requests()) == 1


def test_g10_unreadable_success_is_outcome_unknown(
    httpx_mock: HTTPXMock, trade: BitvavoTrade
) -> None:
    httpx_mock.add_response(method="POST", status_code=200, text="<html>")
    with pytest.raises(MalformedResponse) as caught:
        place(trade)
    assert isinstance(caught.value, OutcomeUnknown)
    assert len(httpx_mock.get_requests()) == 1


def test_definitive_rejection_is_not_outcome_unknown(
    httpx_mock: HTTPXMock, trade: BitvavoTrade
) -> None:
    httpx_mock.add_response(
        method="POST",
        status_code=400,
        json={
            "errorCode": 216,
            "error": "You do not have sufficient balance to complete this operation.",
        },
    )
    with pytest.raises(InsufficientBalance) as caught:
        place(trade)
    assert caught.value.outcome_unknown is False
    assert caught.value.error_code == 216


# -- an answer that does not fit its model: MalformedResponse, never a pydantic error ------------

UNFIT_TRADE_ANSWERS = [
    ("place", "POST", order_json(filledAmount="")),
    ("place", "POST", order_json(side="long")),
    ("place", "POST", [order_json()]),
    ("get", "GET", order_json(fills=[{"id": "1", "amount": "x"}])),
    ("get", "GET", {"orderId": "1"}),
    ("cancel", "DELETE", {"orderId": {"nested": "x"}}),
    ("cancel", "DELETE", []),
]


@pytest.mark.parametrize(("call", "method", "answer"), UNFIT_TRADE_ANSWERS)
def test_unfit_trade_answers_are_malformed_responses(
    httpx_mock: HTTPXMock, trade: BitvavoTrade, call: str, method: str, answer: Any
) -> None:
    httpx_mock.add_response(method=method, json=answer)
    with pytest.raises(MalformedResponse) as caught:
        match call:
            case "place":
                place(trade)
            case "get":
                trade.get_order("BTC-EUR", client_order_id=CLIENT_ORDER_ID)
            case "cancel":
                trade.cancel_order("BTC-EUR", client_order_id=CLIENT_ORDER_ID)
    assert not isinstance(caught.value, pydantic.ValidationError)
    assert caught.value.outcome_unknown is True
    assert caught.value.client_order_id == uuid.UUID(CLIENT_ORDER_ID)
    assert caught.value.endpoint == f"{method} /order"


def test_malformed_message_names_the_field_but_not_the_value(
    httpx_mock: HTTPXMock, trade: BitvavoTrade
) -> None:
    secret_looking = "sk-" + "9" * 40
    httpx_mock.add_response(method="POST", json=order_json(filledAmount=secret_looking))
    with pytest.raises(MalformedResponse) as caught:
        place(trade)
    text = str(caught.value) + repr(caught.value)
    assert "filledAmount" in text and "does not fit Order" in text
    assert secret_looking not in text


UNFIT_READONLY_ANSWERS: list[tuple[str, ReadonlyCall, str, Any]] = [
    ("time", lambda c: c.time(), "/time", {"time": "soon"}),
    ("markets", lambda c: c.markets(), "/markets", [{"market": "BTC-EUR"}]),
    ("assets", lambda c: c.assets("BTC"), "/assets?symbol=BTC", {"symbol": None}),
    ("ticker", lambda c: c.ticker_price("BTC-EUR"), "/ticker/price?market=BTC-EUR",
     {"market": "BTC-EUR", "price": "?"}),
    ("book top", lambda c: c.ticker_book("BTC-EUR"), "/ticker/book?market=BTC-EUR",
     {"market": "BTC-EUR", "bid": "?"}),
    ("24h", lambda c: c.ticker_24h("BTC-EUR"), "/ticker/24h?market=BTC-EUR",
     {"market": "BTC-EUR", "volume": []}),
    ("book", lambda c: c.order_book("BTC-EUR"), "/BTC-EUR/book",
     {"market": "BTC-EUR", "bids": [["1"]]}),
    ("candles", lambda c: c.candles("BTC-EUR", "1h"), "/BTC-EUR/candles?interval=1h",
     [[1, "1", "2"]]),
    ("balance", lambda c: c.balance(), "/balance", [{"symbol": "EUR", "available": ""}]),
]


@pytest.mark.parametrize(("name", "call", "target", "answer"), UNFIT_READONLY_ANSWERS)
def test_unfit_readonly_answers_are_malformed_responses(
    httpx_mock: HTTPXMock,
    readonly: BitvavoReadonly,
    name: str,
    call: ReadonlyCall,
    target: str,
    answer: Any,
) -> None:
    httpx_mock.add_response(method="GET", url=BASE_URL + target, json=answer)
    with pytest.raises(MalformedResponse) as caught:
        call(readonly)
    assert not isinstance(caught.value, pydantic.ValidationError)
    assert caught.value.endpoint is not None and caught.value.endpoint.startswith("GET /")


# -- parsing: Decimal, never float ---------------------------------------------------------------


def test_json_numbers_with_a_fraction_become_decimal(
    httpx_mock: HTTPXMock, public: BitvavoReadonly
) -> None:
    # Bitvavo sends strings, but a bare JSON number must never become a float either.
    httpx_mock.add_response(
        method="GET", content=b'{"market": "BTC-EUR", "price": 36000.12345678901234567}'
    )
    ticker = public.ticker_price("BTC-EUR")
    assert ticker.price == Decimal("36000.12345678901234567")
    assert type(ticker.price) is Decimal


# -- secrets never leave ------------------------------------------------------------------------


def test_no_key_secret_or_signature_in_logs_or_errors(
    httpx_mock: HTTPXMock, trade: BitvavoTrade, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    httpx_mock.add_response(method="POST", json=order_json())
    httpx_mock.add_response(
        method="POST",
        status_code=403,
        json={"errorCode": 309, "error": "The signature is invalid."},
    )
    httpx_mock.add_exception(httpx.ReadTimeout("timed out"), method="POST")
    place(trade)
    texts = []
    for _ in range(2):
        with pytest.raises(Exception) as caught:  # noqa: B017 - any error; its text is checked
            place(trade)
        texts += [str(caught.value), repr(caught.value)]
    signatures = [r.headers["Bitvavo-Access-Signature"] for r in httpx_mock.get_requests()]
    texts += [record.getMessage() for record in caplog.records]
    texts += [repr(trade.transport.credentials)]
    assert caplog.records
    for text in texts:
        assert TRADE_KEY not in text
        assert TRADE_SECRET not in text
        for sig in signatures:
            assert sig not in text
