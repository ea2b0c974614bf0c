"""Rate limits: stop before Bitvavo's limit (wait or refuse), and respect a ban (110 under HTTP 429,
or 105) for as long as Bitvavo's rate-limit page says: a key until its window ends plus a minute, an
IP for 15 minutes."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from pytest_httpx import HTTPXMock

from shared.exchange.errors import InvalidRequest, RateLimitBanned, RateLimitWouldExceed
from shared.exchange.readonly import BitvavoReadonly
from tests.exchange_doubles import BASE_URL, READONLY_KEY, READONLY_SECRET, FakeClock

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


@pytest.fixture
def signed(clock: FakeClock) -> Iterator[BitvavoReadonly]:
    """A client with a key: its requests count against the key, and so does a ban."""
    c = BitvavoReadonly(BASE_URL, api_key=READONLY_KEY, api_secret=READONLY_SECRET, clock=clock,
                        sleep=clock.sleep, rate_limit_margin=MARGIN, max_rate_limit_wait=MAX_WAIT)
    yield c
    c.close()


def ban_answer(httpx_mock: HTTPXMock, code: int = 110, **headers: str) -> None:
    """Bitvavo's rate-limit page: HTTP 429 with errorCode 110, here without a stated expiry."""
    httpx_mock.add_response(url=TIME_URL, status_code=429, headers=headers,
                            json={"errorCode": code, "error": "rate limit exceeded"})


def at(moment: datetime) -> float:
    return moment.timestamp()


def test_a_key_over_the_limit_at_12_00_15_may_send_again_at_12_02_00(
    httpx_mock: HTTPXMock, signed: BitvavoReadonly, clock: FakeClock
) -> None:
    """Bitvavo's own example: the key is blocked until its window ends plus one minute. Without
    an expiry in the answer and without a resetat header, the window ends at the next minute."""
    clock.now = at(datetime(2030, 1, 1, 12, 0, 15, tzinfo=UTC))
    ban_answer(httpx_mock)
    with pytest.raises(RateLimitBanned) as caught:
        signed.time()
    allowed_again = datetime(2030, 1, 1, 12, 2, tzinfo=UTC)
    assert caught.value.error_code == 110 and caught.value.ban_expires_at == allowed_again
    clock.now = at(datetime(2030, 1, 1, 12, 1, 59, 900_000, tzinfo=UTC))
    with pytest.raises(RateLimitBanned) as local:
        signed.time()
    assert local.value.http_status is None and local.value.ban_expires_at == allowed_again
    assert len(httpx_mock.get_requests()) == 1
    clock.now = at(allowed_again)
    httpx_mock.add_response(url=TIME_URL, json={"time": 1})
    signed.time()
    assert len(httpx_mock.get_requests()) == 2


def test_a_key_ban_without_expiry_lasts_a_minute_past_the_windows_resetat(
    httpx_mock: HTTPXMock, signed: BitvavoReadonly, clock: FakeClock
) -> None:
    headers = limit_headers(0, 20, clock)
    ban_answer(httpx_mock, code=105, **headers)
    with pytest.raises(RateLimitBanned) as caught:
        signed.time()
    assert caught.value.ban_expires_at == datetime.fromtimestamp(clock.now + 20 + 60, UTC)
    clock.now += 79  # past the resetat and past "60 s from now", still within the ban
    with pytest.raises(RateLimitBanned) as local:
        signed.time()
    assert local.value.http_status is None
    assert len(httpx_mock.get_requests()) == 1
    clock.now += 2
    httpx_mock.add_response(url=TIME_URL, json={"time": 1})
    signed.time()
    assert len(httpx_mock.get_requests()) == 2


def test_a_stale_resetat_says_nothing_about_the_ban_the_next_minute_does(
    httpx_mock: HTTPXMock, signed: BitvavoReadonly, clock: FakeClock
) -> None:
    clock.now = at(datetime(2030, 1, 1, 12, 0, 0, tzinfo=UTC))
    httpx_mock.add_response(url=TIME_URL, json={"time": 1}, headers=limit_headers(500, 5, clock))
    signed.time()
    clock.now += 30  # the resetat seen (12:00:05) is past
    ban_answer(httpx_mock)
    with pytest.raises(RateLimitBanned) as caught:
        signed.time()
    assert caught.value.ban_expires_at == datetime(2030, 1, 1, 12, 2, tzinfo=UTC)


def test_an_unsigned_ban_without_expiry_is_an_ip_ban_of_15_minutes(
    httpx_mock: HTTPXMock, client: BitvavoReadonly, clock: FakeClock
) -> None:
    ban_answer(httpx_mock, **limit_headers(0, 20, clock))
    with pytest.raises(RateLimitBanned) as caught:
        client.time()
    assert caught.value.ban_expires_at == datetime.fromtimestamp(clock.now + 15 * 60, UTC)
    clock.now += 15 * 60 - 1
    with pytest.raises(RateLimitBanned):
        client.time()
    assert len(httpx_mock.get_requests()) == 1
    clock.now += 1
    httpx_mock.add_response(url=TIME_URL, json={"time": 1})
    client.time()
    assert len(httpx_mock.get_requests()) == 2


def test_110_without_http_429_is_not_a_ban(
    httpx_mock: HTTPXMock, signed: BitvavoReadonly
) -> None:
    """Before the rate-limit page, 110 meant "Invalid endpoint" (Bitvavo's error table, the SDKs,
    ccxt's BadRequest): under any other status it is our mistake, and nothing is banned."""
    httpx_mock.add_response(url=TIME_URL, status_code=400,
                            json={"errorCode": 110, "error": "Invalid endpoint."})
    with pytest.raises(InvalidRequest) as caught:
        signed.time()
    assert not isinstance(caught.value, RateLimitBanned)
    httpx_mock.add_response(url=TIME_URL, json={"time": 1})
    signed.time()
    assert signed.transport.rate_limit.banned_until is None
