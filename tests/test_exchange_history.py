"""BitvavoTrade.orders / .trades: the account's order history and fills (GET /orders, GET /trades),
the reconciler's way to find an order that GET /order by clientOrderId does not find."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from pytest_httpx import HTTPXMock

from shared.exchange.errors import InvalidOrderRequest, MalformedResponse
from shared.exchange.trade import BitvavoTrade
from tests.exchange_doubles import (
    BASE_URL,
    OPERATOR_ID,
    TRADE_KEY,
    TRADE_SECRET,
    FakeClock,
    expected_signature,
    markets,
    order_json,
)

START = datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)  # 1767323045678 ms
END = datetime(2026, 1, 2, 3, 14, 5, tzinfo=UTC)           # 1767323645000 ms


@pytest.fixture
def trade(monkeypatch: pytest.MonkeyPatch) -> Iterator[BitvavoTrade]:
    monkeypatch.delenv("BITVAVO_READONLY_API_KEY", raising=False)
    clock = FakeClock()
    client = BitvavoTrade(BASE_URL, api_key=TRADE_KEY, api_secret=TRADE_SECRET,
                          operator_id=OPERATOR_ID, markets=markets, clock=clock,
                          sleep=clock.sleep)
    yield client
    client.close()


def test_orders_asks_for_the_window_in_milliseconds_signed_and_reads_completed_orders(
        httpx_mock: HTTPXMock, trade: BitvavoTrade) -> None:
    url = f"{BASE_URL}/orders?market=BTC-EUR&limit=1000&start=1767323045678&end=1767323645000"
    httpx_mock.add_response(method="GET", url=url, json=[order_json()])
    [order] = trade.orders("BTC-EUR", start=START, end=END)
    assert order.status == "filled" and order.client_order_id is not None
    [request] = httpx_mock.get_requests()
    assert request.headers["Bitvavo-Access-Key"] == TRADE_KEY
    assert request.headers["Bitvavo-Access-Signature"] == expected_signature(TRADE_SECRET, request)


def test_trades_name_their_order_by_both_ids(httpx_mock: HTTPXMock,
                                             trade: BitvavoTrade) -> None:
    coid = uuid.uuid4()
    httpx_mock.add_response(method="GET", url=f"{BASE_URL}/trades?market=BTC-EUR&limit=10",
                            json=[{"id": "f1", "orderId": "o1", "clientOrderId": str(coid),
                                   "timestamp": 1767323045678, "market": "BTC-EUR",
                                   "side": "buy", "amount": "0.001", "price": "50000",
                                   "taker": True, "fee": "0.125", "feeCurrency": "EUR",
                                   "settled": True},
                                  {"id": "f2", "orderId": "o2", "timestamp": 1767323045679,
                                   "market": "BTC-EUR", "side": "sell", "amount": "0.002",
                                   "price": "50001"}])
    first, second = trade.trades("BTC-EUR", limit=10)
    assert (first.order_id, first.client_order_id, first.fee) == ("o1", coid, Decimal("0.125"))
    assert first.timestamp == START
    assert second.client_order_id is None  # an order placed without one


def test_bad_history_arguments_are_refused_before_sending(trade: BitvavoTrade) -> None:
    with pytest.raises(InvalidOrderRequest):
        trade.orders("btc-eur")
    with pytest.raises(ValueError, match="limit"):
        trade.trades("BTC-EUR", limit=1001)
    with pytest.raises(ValueError, match="timezone"):
        trade.orders("BTC-EUR", start=datetime(2026, 1, 1))  # noqa: DTZ001 - the point


def test_an_unreadable_history_is_malformed_not_a_crash(httpx_mock: HTTPXMock,
                                                        trade: BitvavoTrade) -> None:
    httpx_mock.add_response(method="GET", url=f"{BASE_URL}/trades?market=BTC-EUR&limit=1000",
                            json=[{"id": "f1", "amount": 0.5}])
    with pytest.raises(MalformedResponse):
        trade.trades("BTC-EUR")
