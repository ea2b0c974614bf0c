"""Fee headroom (shared.exchange.funds): a live buy fits the free quote balance with the taker fee
on top, and a burst of buys on one trade key does not spend its rate-limit budget on GET /balance
(weight 5): read at most once per BALANCE_CACHE_SECONDS, lowered locally in between, and read
again after the exchange refused a buy for funds."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest
from pytest_httpx import HTTPXMock

from shared.exchange.errors import InsufficientBalance
from shared.exchange.funds import FeeHeadroom, FreeBalance, fit_buy
from shared.exchange.models import OrderRequest
from shared.exchange.trade import BitvavoTrade
from tests.exchange_doubles import (
    BASE_URL,
    MARKETS,
    OPERATOR_ID,
    TRADE_KEY,
    TRADE_SECRET,
    FakeClock,
    markets,
    order_json,
)

BALANCE_URL = BASE_URL + "/balance?symbol=EUR"
ORDER_URL = BASE_URL + "/order"


@pytest.fixture(autouse=True)
def _no_ambient_readonly_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BITVAVO_READONLY_API_KEY", raising=False)


def make_trade(headroom: FeeHeadroom | None = None, **options: Any) -> BitvavoTrade:
    """A live client with fee headroom; its clock stands still (the figure never ages)."""
    return BitvavoTrade(BASE_URL, api_key=TRADE_KEY, api_secret=TRADE_SECRET,
                        operator_id=OPERATOR_ID, markets=options.pop("markets", markets),
                        fee_headroom=headroom or FeeHeadroom(), clock=FakeClock(), **options)


@pytest.fixture
def trade() -> Iterator[BitvavoTrade]:
    with make_trade() as client:
        yield client


def free_eur(httpx_mock: HTTPXMock, available: str, *, reusable: bool = False) -> None:
    httpx_mock.add_response(method="GET", url=BALANCE_URL, is_reusable=reusable,
                            json=[{"symbol": "EUR", "available": available, "inOrder": "0"}])


def filled(httpx_mock: HTTPXMock, *, reusable: bool = False, **fields: Any) -> None:
    httpx_mock.add_response(method="POST", url=ORDER_URL, json=order_json(**fields),
                            is_reusable=reusable)


def buy(trade: BitvavoTrade, amount_quote: str, market: str = "BTC-EUR") -> Any:
    return trade.place_market_order(market, "buy", amount_quote=Decimal(amount_quote),
                                    client_order_id=uuid.uuid4())


def sent(httpx_mock: HTTPXMock) -> list[dict[str, Any]]:
    return [json.loads(r.content) for r in httpx_mock.get_requests() if r.method == "POST"]


def balance_reads(httpx_mock: HTTPXMock) -> int:
    return sum(1 for r in httpx_mock.get_requests() if r.url.path == "/v2/balance")


def test_a_buy_of_the_whole_free_balance_leaves_room_for_the_fee(
    httpx_mock: HTTPXMock, trade: BitvavoTrade
) -> None:
    """Whether Bitvavo takes the fee out of amountQuote or on top is undocumented: sized so that
    it fits either way (100 / 1.0025 = 99.7506…, rounded down to notionalDecimals)."""
    free_eur(httpx_mock, "100")
    filled(httpx_mock)
    order = buy(trade, "100")
    assert [body["amountQuote"] for body in sent(httpx_mock)] == ["99.75"]
    assert order.fee_paid == Decimal("0.02499975")  # the fee as the exchange reports it
    (read, _) = httpx_mock.get_requests()
    assert read.url.path == "/v2/balance" and read.headers["Bitvavo-Access-Key"] == TRADE_KEY


def test_a_buy_that_fits_with_the_fee_on_top_is_sent_as_claimed(
    httpx_mock: HTTPXMock, trade: BitvavoTrade
) -> None:
    free_eur(httpx_mock, "100.25")
    filled(httpx_mock)
    buy(trade, "100")
    assert [body["amountQuote"] for body in sent(httpx_mock)] == ["100"]


def test_a_burst_of_1000_buys_reads_the_balance_once(
    httpx_mock: HTTPXMock, trade: BitvavoTrade
) -> None:
    """~1,000 auto-executions a minute on one key: 1,000 orders (weight 1 each) and one
    GET /balance (5), not 1,000 of them (5,000, five times the key's budget)."""
    free_eur(httpx_mock, "1000000")
    filled(httpx_mock, reusable=True)
    for _ in range(1000):
        buy(trade, "10")
    assert balance_reads(httpx_mock) == 1
    assert len(sent(httpx_mock)) == 1000
    assert {body["amountQuote"] for body in sent(httpx_mock)} == {"10"}


def test_near_the_balance_buys_are_sized_from_what_is_left_without_reading_again(
    httpx_mock: HTTPXMock, trade: BitvavoTrade
) -> None:
    free_eur(httpx_mock, "30")
    filled(httpx_mock, reusable=True)
    for _ in range(3):
        buy(trade, "10")
    # 30 − 2 × 10.025 = 9.95 left; 9.95 / 1.0025 = 9.925… → 9.92
    assert [body["amountQuote"] for body in sent(httpx_mock)] == ["10", "10", "9.92"]
    with pytest.raises(InsufficientBalance) as refused:  # nothing left: the exchange's 216
        buy(trade, "10")
    assert refused.value.error_code == 216 and refused.value.http_status is None
    assert refused.value.outcome_unknown is False and "before sending" in str(refused.value)
    assert balance_reads(httpx_mock) == 1 and len(sent(httpx_mock)) == 3


@pytest.mark.parametrize("refusal", ["216", "expired"])
def test_a_refusal_for_funds_makes_the_next_buy_read_the_balance_again(
    httpx_mock: HTTPXMock, trade: BitvavoTrade, refusal: str
) -> None:
    free_eur(httpx_mock, "1000")  # too high: someone else spent it
    if refusal == "216":
        httpx_mock.add_response(method="POST", url=ORDER_URL, status_code=400, json={
            "errorCode": 216, "error": "You do not have sufficient balance."})
        with pytest.raises(InsufficientBalance):
            buy(trade, "100")
    else:  # Bitvavo's create-order page: an order the balance cannot cover may end expired
        filled(httpx_mock, status="expired", filledAmount="0", filledAmountQuote="0",
               feePaid="0", fills=[])
        assert buy(trade, "100").status == "expired"
    free_eur(httpx_mock, "50")
    filled(httpx_mock)
    buy(trade, "100")
    assert balance_reads(httpx_mock) == 2
    assert sent(httpx_mock)[-1]["amountQuote"] == "49.87"  # 50 / 1.0025, rounded down


def test_an_unreadable_balance_sends_the_buy_as_claimed_and_is_not_retried_at_once(
    httpx_mock: HTTPXMock, trade: BitvavoTrade
) -> None:
    """A trade key without the view permission (311), a timeout: the exchange checks funds."""
    httpx_mock.add_response(method="GET", url=BALANCE_URL, status_code=403, json={
        "errorCode": 311, "error": "This key does not allow showing account information."})
    filled(httpx_mock, reusable=True)
    buy(trade, "100")
    buy(trade, "100")
    assert [body["amountQuote"] for body in sent(httpx_mock)] == ["100", "100"]
    assert balance_reads(httpx_mock) == 1


def test_sells_and_buys_by_amount_never_read_the_balance(
    httpx_mock: HTTPXMock, trade: BitvavoTrade
) -> None:
    filled(httpx_mock, reusable=True)
    trade.place_market_order("BTC-EUR", "sell", amount_quote=Decimal("10"),
                             client_order_id=uuid.uuid4())
    trade.place_market_order("BTC-EUR", "buy", amount=Decimal("0.001"),
                             client_order_id=uuid.uuid4())
    assert balance_reads(httpx_mock) == 0


def test_the_balance_is_read_before_the_listing_the_last_moment_that_may_wait(
    httpx_mock: HTTPXMock,
) -> None:
    """trading_execute's lookup checks MAX_CLAIM_AGE (shared.execution.deadline); nothing that
    can wait may come between it and POST /order."""
    seen: list[str] = []

    def lookup(name: str) -> Any:
        seen.append(f"listing after {balance_reads(httpx_mock)} balance read(s)")
        return markets(name)

    free_eur(httpx_mock, "100")
    filled(httpx_mock)
    with make_trade(markets=lookup) as client:
        buy(client, "10")
    assert seen == ["listing after 1 balance read(s)"]


def test_without_fee_headroom_the_client_reads_no_balance(httpx_mock: HTTPXMock) -> None:
    filled(httpx_mock)
    with BitvavoTrade(BASE_URL, api_key=TRADE_KEY, api_secret=TRADE_SECRET,
                      operator_id=OPERATOR_ID, markets=markets) as client:
        buy(client, "100")
    assert balance_reads(httpx_mock) == 0


# -- the figure's age (FreeBalance with a clock) ---------------------------------------------------


def request(amount_quote: str) -> OrderRequest:
    return OrderRequest.market_order("BTC-EUR", "buy", amount_quote=Decimal(amount_quote),
                                     client_order_id=uuid.uuid4())


def test_the_figure_is_trusted_for_its_ttl_then_read_again() -> None:
    clock = FakeClock(now=0.0)
    reads: list[str] = []
    answers = iter([Decimal("20"), Decimal("500")])

    def read(symbol: str) -> Decimal:
        reads.append(symbol)
        return next(answers)

    funds = FreeBalance(read, FeeHeadroom(balance_ttl_seconds=10), clock=clock)
    assert funds.before(request("10")) == Decimal("20")
    clock.now = 9.9
    assert funds.before(request("30")) == Decimal("20")  # young: trusted, even when it is short
    clock.now = 10
    assert funds.before(request("10")) == Decimal("500")  # old: read again
    assert reads == ["EUR", "EUR"]
    zero = FreeBalance(read, FeeHeadroom(balance_ttl_seconds=0), clock=clock)
    with pytest.raises(StopIteration):  # a TTL of 0 reads for every buy
        zero.before(request("10"))


def test_concurrent_buys_with_no_figure_read_the_balance_once() -> None:
    """A dispatch sends several buys at once to a process that has no figure yet: one of them
    reads GET /balance (weight 5 on the trade key), the others wait for that read instead of
    each making their own."""
    reads: list[str] = []
    release = threading.Event()

    def read(symbol: str) -> Decimal:
        reads.append(symbol)
        release.wait(timeout=10)
        return Decimal("500")

    funds = FreeBalance(read, FeeHeadroom(balance_ttl_seconds=10))
    start = threading.Barrier(8)
    answers: list[Decimal | None] = []

    def buy() -> None:
        start.wait(timeout=10)
        answers.append(funds.before(request("10")))

    threads = [threading.Thread(target=buy) for _ in range(8)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 2  # time for every buy to reach the read (or wait for it)
    while len(reads) < 8 and time.monotonic() < deadline:
        time.sleep(0.01)
    release.set()
    for thread in threads:
        thread.join(timeout=10)
    assert answers == [Decimal("500")] * 8
    assert reads == ["EUR"]


def test_fit_buy_sizes_down_rounds_down_and_refuses_below_the_minimum() -> None:
    btc, headroom = MARKETS["BTC-EUR"], FeeHeadroom(taker_fee_rate=Decimal("0.01"))
    assert fit_buy(request("100"), btc, Decimal("101"), headroom).amount_quote == Decimal("100")
    assert fit_buy(request("100"), btc, Decimal("100"), headroom).amount_quote == Decimal("99")
    with pytest.raises(InsufficientBalance, match="minimum"):
        fit_buy(request("100"), btc, Decimal("5.04"), headroom)  # 4.99 after the fee: below 5
    with pytest.raises(ValueError):
        FeeHeadroom(taker_fee_rate=0.0025)  # type: ignore[arg-type]
