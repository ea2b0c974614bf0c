"""Clock skew: the trade transport signs with Bitvavo's time (ServerClock), measured with the
read-only client against GET /time, so a drifting host clock does not turn orders into 304s."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from pytest_httpx import HTTPXMock

from shared.exchange.catalog import MarketCatalog
from shared.exchange.clock import ServerClock
from shared.exchange.errors import AccessWindowError, ExchangeServerError
from shared.exchange.readonly import BitvavoReadonly
from shared.exchange.trade import BitvavoTrade
from tests.exchange_doubles import (
    BASE_URL,
    OPERATOR_ID,
    START,
    TRADE_KEY,
    TRADE_SECRET,
    FakeClock,
    expected_signature,
    markets,
    order_json,
)
from tests.sandbox_server import SandboxServer

TIME_URL = BASE_URL + "/time"


@pytest.fixture(autouse=True)
def _no_ambient_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BITVAVO_READONLY_API_KEY", raising=False)


def server_ms(seconds: float) -> int:
    return int(seconds * 1000)


def test_measure_keeps_the_offset_to_the_servers_time(httpx_mock: HTTPXMock) -> None:
    host = FakeClock()  # the host is 30 s behind the server
    httpx_mock.add_response(url=TIME_URL, json={"time": server_ms(START + 30)})
    clock = ServerClock(host)
    assert clock.offset_seconds == 0.0 and clock() == START
    with BitvavoReadonly(BASE_URL) as readonly:
        assert clock.measure(readonly.time) == pytest.approx(30)
    assert clock() == pytest.approx(START + 30)
    assert clock.round_trip_seconds == 0
    (request,) = httpx_mock.get_requests()
    assert "Bitvavo-Access-Key" not in request.headers  # unsigned: no key, no window to miss


def test_measure_uses_the_midpoint_of_the_round_trip() -> None:
    readings = iter([100.0, 100.4])
    clock = ServerClock(lambda: next(readings))
    offset = clock.measure(lambda: datetime.fromtimestamp(130.2, UTC))
    assert offset == pytest.approx(30.0)
    assert clock.round_trip_seconds == pytest.approx(0.4)


def test_a_failed_measurement_keeps_the_last_offset(httpx_mock: HTTPXMock) -> None:
    clock = ServerClock(FakeClock(), offset_seconds=12.5)
    httpx_mock.add_response(url=TIME_URL, status_code=503, json={"errorCode": 107})
    with BitvavoReadonly(BASE_URL) as readonly, pytest.raises(ExchangeServerError):
        clock.measure(readonly.time)
    assert clock.offset_seconds == 12.5
    with pytest.raises(ValueError, match="timezone-aware"):
        clock.measure(lambda: datetime(2030, 1, 1))  # noqa: DTZ001 - the point of the test
    assert clock.offset_seconds == 12.5


def test_the_trade_transport_signs_with_the_server_clock(httpx_mock: HTTPXMock) -> None:
    host = FakeClock()
    clock = ServerClock(host)
    clock.measure(lambda: datetime.fromtimestamp(START - 45, UTC))  # host 45 s ahead
    httpx_mock.add_response(method="POST", json=order_json())
    with BitvavoTrade(
        BASE_URL,
        api_key=TRADE_KEY,
        api_secret=TRADE_SECRET,
        operator_id=OPERATOR_ID,
        markets=markets,
        clock=clock,
    ) as trade:
        trade.place_market_order(
            "BTC-EUR", "buy", amount_quote=Decimal("10"), client_order_id=uuid.uuid4()
        )
    (request,) = httpx_mock.get_requests()
    assert request.headers["Bitvavo-Access-Timestamp"] == str(server_ms(START - 45))
    assert request.headers["Bitvavo-Access-Signature"] == expected_signature(TRADE_SECRET, request)


# -- against the sandbox: a host clock 30 s off, either way --------------------------------------


@pytest.fixture
def catalog(bitvavo_sandbox: SandboxServer) -> Iterator[MarketCatalog]:
    with BitvavoReadonly(bitvavo_sandbox.rest_url) as readonly:
        yield MarketCatalog(readonly)


def skewed_trade(sandbox: SandboxServer, catalog: MarketCatalog, clock: object) -> BitvavoTrade:
    return BitvavoTrade(
        sandbox.rest_url,
        api_key=sandbox.trade_key,
        api_secret=sandbox.trade_secret,
        operator_id=OPERATOR_ID,
        markets=catalog,
        clock=clock,  # type: ignore[arg-type]
    )


@pytest.mark.parametrize("skew_seconds", [-30, 30])
def test_a_host_clock_30s_off_still_gets_orders_accepted(
    bitvavo_sandbox: SandboxServer, catalog: MarketCatalog, skew_seconds: int
) -> None:
    def host() -> float:
        return time.time() + skew_seconds

    # signing with the host clock as it is: every order is refused (304), none is placed
    with skewed_trade(bitvavo_sandbox, catalog, host) as trade, pytest.raises(
        AccessWindowError
    ) as caught:
        trade.place_market_order(
            "BTC-EUR", "buy", amount_quote=Decimal("10"), client_order_id=uuid.uuid4()
        )
    assert caught.value.error_code == 304
    assert bitvavo_sandbox.orders() == []

    # measured against /time with a credential-less read-only client: accepted
    clock = ServerClock(host)
    with BitvavoReadonly(bitvavo_sandbox.rest_url, clock=host) as readonly:
        offset = clock.measure(readonly.time)
    assert offset == pytest.approx(-skew_seconds, abs=1)
    coid = uuid.uuid4()
    with skewed_trade(bitvavo_sandbox, catalog, clock) as trade:
        order = trade.place_market_order(
            "BTC-EUR", "buy", amount_quote=Decimal("10"), client_order_id=coid
        )
        assert order.status == "filled"
        assert trade.get_order("BTC-EUR", client_order_id=coid).order_id == order.order_id
    assert [o["clientOrderId"] for o in bitvavo_sandbox.orders()] == [str(coid)]
