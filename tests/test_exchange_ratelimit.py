"""Rate limits: stop before Bitvavo's limit (wait or refuse), and respect a 105 ban."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from pytest_httpx import HTTPXMock

from shared.exchange import BitvavoReadonly
from shared.exchange.errors import RateLimitBanned, RateLimitWouldExceed
from tests.exchange_doubles import BASE_URL, FakeClock

TIME_URL = BASE_URL + "/time"
MARGIN = 10
MAX_WAIT = 5.0


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def client(clock: FakeClock) -> Iterator[BitvavoReadonly]:
    c = BitvavoReadonly(
        BASE_URL,
        clock=clock,
        sleep=clock.sleep,
        rate_limit_margin=MARGIN,
        max_rate_limit_wait=MAX_WAIT,
    )
    yield c
    c.close()


def limit_headers(remaining: int, reset_in_s: float, clock: FakeClock) -> dict[str, str]:
    return {
        "bitvavo-ratelimit-limit": "1000",
        "bitvavo-ratelimit-remaining": str(remaining),
        "bitvavo-ratelimit-resetat": str(int((clock.now + reset_in_s) * 1000)),
    }


def test_plenty_left_sends_without_waiting(
    httpx_mock: HTTPXMock, client: BitvavoReadonly, clock: FakeClock
) -> None:
    httpx_mock.add_response(
        url=TIME_URL, json={"time": 1}, headers=limit_headers(500, 30, clock), is_reusable=True
    )
    client.time()
    client.time()
    assert clock.sleeps == []
    assert len(httpx_mock.get_requests()) == 2


def test_low_budget_waits_until_resetat_then_sends(
    httpx_mock: HTTPXMock, client: BitvavoReadonly, clock: FakeClock
) -> None:
    httpx_mock.add_response(
        url=TIME_URL, json={"time": 1}, headers=limit_headers(MARGIN, 3.5, clock)
    )
    httpx_mock.add_response(url=TIME_URL, json={"time": 2})
    client.time()  # leaves MARGIN points: the next call (weight 1) would go below the margin
    client.time()
    assert clock.sleeps == [pytest.approx(3.5)]
    assert len(httpx_mock.get_requests()) == 2


def test_low_budget_with_a_long_wait_is_refused_without_sending(
    httpx_mock: HTTPXMock, client: BitvavoReadonly, clock: FakeClock
) -> None:
    httpx_mock.add_response(
        url=TIME_URL, json={"time": 1}, headers=limit_headers(MARGIN, 42, clock)
    )
    client.time()
    with pytest.raises(RateLimitWouldExceed) as caught:
        client.time()
    assert caught.value.outcome_unknown is False
    assert caught.value.resets_at == datetime.fromtimestamp(clock.now + 42, UTC)
    assert clock.sleeps == []
    assert len(httpx_mock.get_requests()) == 1


def test_budget_is_fresh_after_the_reset_time(
    httpx_mock: HTTPXMock, client: BitvavoReadonly, clock: FakeClock
) -> None:
    httpx_mock.add_response(url=TIME_URL, json={"time": 1}, headers=limit_headers(0, 42, clock))
    httpx_mock.add_response(url=TIME_URL, json={"time": 2})
    client.time()
    clock.now += 43
    client.time()
    assert clock.sleeps == []


def test_heavy_call_counts_its_weight(
    httpx_mock: HTTPXMock, client: BitvavoReadonly, clock: FakeClock
) -> None:
    # ticker/24h for all markets weighs 25: with 30 left and a margin of 10 it must wait.
    httpx_mock.add_response(url=TIME_URL, json={"time": 1}, headers=limit_headers(30, 2, clock))
    httpx_mock.add_response(url=BASE_URL + "/ticker/24h", json=[])
    client.time()
    client.ticker_24h()
    assert clock.sleeps == [pytest.approx(2)]


def test_105_bans_and_the_next_call_is_refused_without_sending(
    httpx_mock: HTTPXMock, client: BitvavoReadonly, clock: FakeClock
) -> None:
    expiry_ms = clock.ms + 60_000
    httpx_mock.add_response(
        url=TIME_URL,
        status_code=429,
        json={
            "errorCode": 105,
            "error": "Your IP or API key has been banned for not respecting the rate limit. "
            f"The ban expires at {expiry_ms}.",
        },
    )
    with pytest.raises(RateLimitBanned) as first:
        client.time()
    expected = datetime.fromtimestamp(expiry_ms / 1000, UTC)
    assert first.value.ban_expires_at == expected
    with pytest.raises(RateLimitBanned) as second:
        client.time()
    assert second.value.ban_expires_at == expected
    assert second.value.http_status is None  # refused here, not answered there
    assert len(httpx_mock.get_requests()) == 1

    clock.now += 61
    httpx_mock.add_response(url=TIME_URL, json={"time": 1})
    client.time()
    assert len(httpx_mock.get_requests()) == 2


def test_105_without_expiry_bans_until_a_minute_after_resetat(
    httpx_mock: HTTPXMock, client: BitvavoReadonly, clock: FakeClock
) -> None:
    headers = limit_headers(0, 20, clock)
    httpx_mock.add_response(
        url=TIME_URL, status_code=429, headers=headers, json={"errorCode": 105, "error": "banned"}
    )
    with pytest.raises(RateLimitBanned) as caught:
        client.time()
    assert caught.value.ban_expires_at == datetime.fromtimestamp(clock.now + 20 + 60, UTC)
    clock.now += 79  # past the resetat and past "60 s from now", still within the ban
    with pytest.raises(RateLimitBanned) as local:
        client.time()
    assert local.value.http_status is None
    assert len(httpx_mock.get_requests()) == 1
    clock.now += 2
    httpx_mock.add_response(url=TIME_URL, json={"time": 1})
    client.time()
    assert len(httpx_mock.get_requests()) == 2


def test_105_without_expiry_and_a_stale_resetat_bans_a_minute_from_now(
    httpx_mock: HTTPXMock, client: BitvavoReadonly, clock: FakeClock
) -> None:
    # the last resetat seen is already past: it says nothing about this ban
    httpx_mock.add_response(url=TIME_URL, json={"time": 1}, headers=limit_headers(500, 5, clock))
    client.time()
    clock.now += 30
    httpx_mock.add_response(
        url=TIME_URL, status_code=429, json={"errorCode": 105, "error": "banned"}
    )
    with pytest.raises(RateLimitBanned) as caught:
        client.time()
    assert caught.value.ban_expires_at is None
    clock.now += 59
    with pytest.raises(RateLimitBanned) as local:
        client.time()
    assert local.value.ban_expires_at == datetime.fromtimestamp(clock.now + 1, UTC)
    clock.now += 2
    httpx_mock.add_response(url=TIME_URL, json={"time": 2})
    client.time()
    assert len(httpx_mock.get_requests()) == 3
