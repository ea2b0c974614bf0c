"""Our clients against the local Bitvavo sandbox over real HTTP: every method, the error codes the
sandbox produces seen as our exceptions, and the faults behind G10 (an order whose answer is lost
is sent once and found again by its clientOrderId)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import httpx
import pytest

from shared.exchange.catalog import MarketCatalog
from shared.exchange.errors import (
    AccessWindowError,
    ApiKeyInactive,
    BelowMinimumSize,
    ClientOrderIdConflict,
    ExchangeServerError,
    ExchangeTimeout,
    ExchangeTransportError,
    InsufficientBalance,
    InvalidParameter,
    InvalidSignature,
    OrderBelowMinimum,
    OrderNotCancellable,
    OrderNotFound,
    RateLimitBanned,
    RateLimitWouldExceed,
    TradePermissionMissing,
    ViewPermissionMissing,
)
from shared.exchange.models import Candle, Order, OrderRequest
from shared.exchange.paper import PaperTrade
from shared.exchange.readonly import BitvavoReadonly
from shared.exchange.trade import BitvavoTrade
from tests.sandbox_server import SandboxServer, start_sandbox

OPERATOR_ID = 1001
MARKET = "BTC-EUR"


@pytest.fixture(autouse=True)
def _no_ambient_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BITVAVO_READONLY_API_KEY", raising=False)


@pytest.fixture
def public(bitvavo_sandbox: SandboxServer) -> Iterator[BitvavoReadonly]:
    with BitvavoReadonly(bitvavo_sandbox.rest_url) as client:
        yield client


@pytest.fixture
def readonly(bitvavo_sandbox: SandboxServer) -> Iterator[BitvavoReadonly]:
    with BitvavoReadonly(
        bitvavo_sandbox.rest_url,
        api_key=bitvavo_sandbox.view_key,
        api_secret=bitvavo_sandbox.view_secret,
    ) as client:
        yield client


def catalog_of(sandbox: SandboxServer) -> MarketCatalog:
    """What trading_execute composes: the listing from a read-only client without a key."""
    return MarketCatalog(BitvavoReadonly(sandbox.rest_url))


def make_trade(sandbox: SandboxServer, **options: object) -> BitvavoTrade:
    return BitvavoTrade(
        sandbox.rest_url,
        api_key=sandbox.trade_key,
        api_secret=sandbox.trade_secret,
        operator_id=OPERATOR_ID,
        markets=catalog_of(sandbox),
        **options,  # type: ignore[arg-type]
    )


@pytest.fixture
def trade(bitvavo_sandbox: SandboxServer) -> Iterator[BitvavoTrade]:
    with make_trade(bitvavo_sandbox) as client:
        yield client


def posts_to_order(sandbox: SandboxServer, *, at_least: int = 0) -> int:
    """POST /order requests the sandbox received (its log has one line per request, written
    when the request is done: after a dropped connection, maybe a moment after we gave up)."""
    deadline = time.monotonic() + 3
    while True:
        lines = sandbox.log().splitlines()
        count = sum(1 for line in lines if line.startswith("POST /v2/order "))
        if count >= at_least or time.monotonic() > deadline:
            return count
        time.sleep(0.02)


def sandbox_orders_with(sandbox: SandboxServer, client_order_id: uuid.UUID) -> list[dict]:
    return [o for o in sandbox.orders() if o.get("clientOrderId") == str(client_order_id)]


# -- market data ---------------------------------------------------------------------------------


@pytest.mark.parametrize("client_name", ["public", "readonly"])
def test_market_data(client_name: str, request: pytest.FixtureRequest) -> None:
    client: BitvavoReadonly = request.getfixturevalue(client_name)
    assert abs(client.time() - datetime.now(UTC)) < timedelta(seconds=10)

    markets = client.markets()
    btc = next(m for m in markets if m.market == MARKET)
    assert btc.min_order_in_quote_asset == Decimal("5") and type(btc.tick_size) is Decimal
    assert client.markets(MARKET) == [btc]

    assets = client.assets()
    assert {"EUR", "BTC"} <= {a.symbol for a in assets}
    assert client.assets("BTC")[0].withdrawal_fee == Decimal("0.0000055")

    price = client.ticker_price(MARKET)
    assert type(price.price) is Decimal and price.price > 0
    assert MARKET in {t.market for t in client.ticker_price()}

    book_top = client.ticker_book(MARKET)
    assert book_top.bid is not None and book_top.ask is not None and book_top.bid < book_top.ask
    assert len(client.ticker_book()) >= 1

    day = client.ticker_24h(MARKET)
    assert day.low is not None and day.high is not None and day.low <= day.high
    assert type(day.volume_quote) is Decimal
    assert MARKET in {t.market for t in client.ticker_24h()}

    book = client.order_book(MARKET, depth=5)
    assert len(book.bids) == 5 and len(book.asks) == 5
    assert [b.price for b in book.bids] == sorted((b.price for b in book.bids), reverse=True)
    assert book.bids[0].price < book.asks[0].price

    candles = client.candles(MARKET, "1m", limit=10)
    assert len(candles) == 10 and all(isinstance(c, Candle) for c in candles)
    stamps = [c.timestamp for c in candles]
    assert stamps == sorted(stamps, reverse=True)  # newest first, as Bitvavo sends
    assert all(c.timestamp.tzinfo is UTC for c in candles)
    assert all(type(v) is Decimal for c in candles for v in (c.open, c.high, c.low, c.close))
    assert all(c.low <= min(c.open, c.close) and c.high >= max(c.open, c.close) for c in candles)


def test_balance_with_the_view_key(readonly: BitvavoReadonly) -> None:
    (eur,) = readonly.balance("EUR")
    assert eur.available == Decimal("10000") and eur.in_order == 0


def test_balance_needs_view_permission() -> None:
    keys = '[{"key": "%s", "secret": "s", "permissions": []}]' % ("n" * 64)
    with start_sandbox(env={"SANDBOX_KEYS": keys}) as sandbox:
        with BitvavoReadonly(sandbox.rest_url, api_key="n" * 64, api_secret="s") as client:
            with pytest.raises(ViewPermissionMissing) as caught:
                client.balance()
    assert caught.value.error_code == 311


# -- orders --------------------------------------------------------------------------------------


def test_market_buy_by_amount_quote(
    trade: BitvavoTrade, readonly: BitvavoReadonly, bitvavo_sandbox: SandboxServer
) -> None:
    coid = uuid.uuid4()
    order = trade.place_market_order(
        MARKET, "buy", amount_quote=Decimal("25.00"), client_order_id=coid
    )
    assert isinstance(order, Order)
    assert order.status == "filled" and order.client_order_id == coid
    assert order.operator_id == OPERATOR_ID
    assert order.filled_amount > 0 and order.fee_paid > 0 and order.fee_currency == "EUR"
    assert order.filled_amount_quote + order.fee_paid <= Decimal("25.00")
    assert sum(f.amount for f in order.fills) == order.filled_amount
    (eur,) = readonly.balance("EUR")
    assert eur.available == Decimal("10000") - order.filled_amount_quote - order.fee_paid
    assert len(sandbox_orders_with(bitvavo_sandbox, coid)) == 1


def test_market_buy_and_sell_by_amount(trade: BitvavoTrade, readonly: BitvavoReadonly) -> None:
    coid = uuid.uuid4()
    bought = trade.place_market_order(MARKET, "buy", amount=Decimal("0.001"), client_order_id=coid)
    assert bought.status == "filled" and bought.filled_amount == Decimal("0.001")
    assert bought.client_order_id == coid
    sold = trade.place_market_order(
        MARKET, "sell", amount=Decimal("0.001"), client_order_id=uuid.uuid4()
    )
    assert sold.status == "filled" and sold.side == "sell"
    assert readonly.balance("BTC") == []  # all sold: zero balances are not listed


def place_open_order(trade: BitvavoTrade, sandbox: SandboxServer, coid: uuid.UUID) -> Order:
    """A market order that stays open (the sandbox's `unfilled` fault: half filled, the rest
    open until cancelled)."""
    sandbox.set_fault(fault="unfilled", times=1, status="partiallyFilled", fill_fraction="0.5")
    return trade.place_market_order(MARKET, "buy", amount=Decimal("0.001"), client_order_id=coid)


def test_an_open_order_get_and_cancel(
    trade: BitvavoTrade, bitvavo_sandbox: SandboxServer
) -> None:
    coid = uuid.uuid4()
    placed = place_open_order(trade, bitvavo_sandbox, coid)
    assert placed.status == "partiallyFilled" and placed.filled_amount == Decimal("0.0005")

    by_coid = trade.get_order(MARKET, client_order_id=coid)
    by_id = trade.get_order(MARKET, order_id=placed.order_id)
    assert by_coid.order_id == by_id.order_id == placed.order_id
    assert by_id.client_order_id == coid

    cancelled = trade.cancel_order(MARKET, client_order_id=coid)
    assert cancelled.order_id == placed.order_id
    assert cancelled.operator_id == OPERATOR_ID
    assert trade.get_order(MARKET, order_id=placed.order_id).status == "canceled"
    # it exists but is no longer open: 233, never "not found" (which means "not placed")
    with pytest.raises(OrderNotCancellable) as caught:
        trade.cancel_order(MARKET, client_order_id=coid)
    assert caught.value.error_code == 233 and caught.value.http_status == 400
    assert not isinstance(caught.value, OrderNotFound)
    assert caught.value.client_order_id == coid and caught.value.market == MARKET
    with pytest.raises(OrderNotFound) as missing:
        trade.cancel_order(MARKET, client_order_id=uuid.uuid4())
    assert missing.value.error_code == 240 and missing.value.http_status == 404


def test_a_filled_order_is_not_cancellable(trade: BitvavoTrade) -> None:
    coid = uuid.uuid4()
    trade.place_market_order(MARKET, "buy", amount_quote=Decimal("10"), client_order_id=coid)
    with pytest.raises(OrderNotCancellable):
        trade.cancel_order(MARKET, client_order_id=coid)
    assert trade.get_order(MARKET, client_order_id=coid).status == "filled"


def test_cancel_by_order_id(trade: BitvavoTrade, bitvavo_sandbox: SandboxServer) -> None:
    placed = place_open_order(trade, bitvavo_sandbox, uuid.uuid4())
    assert trade.cancel_order(MARKET, order_id=placed.order_id).order_id == placed.order_id


# -- precision: an AI-sized proposal becomes an order the exchange accepts ----------------------


def test_an_ai_sized_proposal_is_accepted(
    trade: BitvavoTrade, bitvavo_sandbox: SandboxServer
) -> None:
    # Unrounded, the exchange refuses it (205): the failure every live order would meet.
    raw = OrderRequest.market_order(
        MARKET, "buy", amount_quote=Decimal("10.123456789"), client_order_id=uuid.uuid4(),
        operator_id=OPERATOR_ID,
    )
    with pytest.raises(InvalidParameter) as refused:
        trade.transport.request("POST", "/order", body=raw.to_body(), signed=True)
    assert refused.value.error_code == 205

    coid = uuid.uuid4()
    order = trade.place_market_order(
        MARKET, "buy", amount_quote=Decimal("10.123456789"), client_order_id=coid
    )
    assert order.status == "filled" and order.amount_quote == Decimal("10.12")
    assert order.filled_amount_quote + order.fee_paid <= Decimal("10.12")
    (accepted,) = sandbox_orders_with(bitvavo_sandbox, coid)
    assert accepted["amountQuote"] == "10.12"


def test_an_ai_sized_proposal_is_sized_alike_by_paper_and_live(
    trade: BitvavoTrade, bitvavo_sandbox: SandboxServer
) -> None:
    catalog = catalog_of(bitvavo_sandbox)
    with BitvavoReadonly(bitvavo_sandbox.rest_url) as public:

        def ticker(market: str) -> Decimal:
            price = public.ticker_price(market).price
            assert price is not None
            return price

        paper = PaperTrade(ticker, markets=catalog, operator_id=OPERATOR_ID)
        for market, amount_quote in (("BTC-EUR", "10.123456789"), ("XRP-EUR", "7.777777")):
            proposal = Decimal(amount_quote)
            simulated = paper.place_market_order(
                market, "buy", amount_quote=proposal, client_order_id=uuid.uuid4()
            )
            live = trade.place_market_order(
                market, "buy", amount_quote=proposal, client_order_id=uuid.uuid4()
            )
            assert simulated.amount_quote == live.amount_quote == proposal.quantize(
                Decimal("0.01"), rounding="ROUND_DOWN"
            )
            assert simulated.status == live.status == "filled"
            decimals = catalog(market).quantity_decimals
            assert decimals is not None
            for order in (simulated, live):  # fills have the market's quantityDecimals in both
                assert order.filled_amount == order.filled_amount.quantize(
                    Decimal(1).scaleb(-decimals)
                )


def test_amounts_off_the_markets_precision_are_accepted_after_rounding(
    trade: BitvavoTrade,
) -> None:
    bought = trade.place_market_order(
        MARKET, "buy", amount=Decimal("0.000123456789"), client_order_id=uuid.uuid4()
    )
    assert bought.filled_amount == Decimal("0.00012345")
    eth = trade.place_market_order(
        "ETH-EUR", "buy", amount=Decimal("0.0123456789"), client_order_id=uuid.uuid4()
    )
    assert eth.amount == eth.filled_amount == Decimal("0.01234567")


def test_below_the_minimum_after_rounding_nothing_is_sent(
    trade: BitvavoTrade, bitvavo_sandbox: SandboxServer
) -> None:
    before = posts_to_order(bitvavo_sandbox)
    with pytest.raises(OrderBelowMinimum):
        trade.place_market_order(
            MARKET, "buy", amount_quote=Decimal("4.999999"), client_order_id=uuid.uuid4()
        )
    assert posts_to_order(bitvavo_sandbox) == before
    assert bitvavo_sandbox.orders() == []


# -- the sandbox's error answers as our exceptions -----------------------------------------------


def test_below_minimum(trade: BitvavoTrade) -> None:
    # refused locally after rounding (nothing sent) ...
    with pytest.raises(OrderBelowMinimum):
        trade.place_market_order(
            MARKET, "buy", amount_quote=Decimal("1"), client_order_id=uuid.uuid4()
        )
    # ... and what only the exchange can know (the price of a market order by amount): 1 XRP is
    # its minOrderInBaseAsset but worth ~2 EUR, below the 5 EUR minimum: 217
    coid = uuid.uuid4()
    with pytest.raises(BelowMinimumSize) as caught:
        trade.place_market_order("XRP-EUR", "buy", amount=Decimal("1"), client_order_id=coid)
    assert caught.value.error_code == 217 and not caught.value.outcome_unknown
    assert caught.value.client_order_id == coid


def test_insufficient_balance(trade: BitvavoTrade) -> None:
    with pytest.raises(InsufficientBalance) as caught:
        trade.place_market_order(
            MARKET, "buy", amount_quote=Decimal("20000"), client_order_id=uuid.uuid4()
        )
    assert caught.value.error_code == 216 and caught.value.http_status == 400


def test_client_order_id_conflict(trade: BitvavoTrade, bitvavo_sandbox: SandboxServer) -> None:
    coid = uuid.uuid4()
    place_open_order(trade, bitvavo_sandbox, coid)
    with pytest.raises(ClientOrderIdConflict) as caught:
        trade.place_market_order(MARKET, "buy", amount=Decimal("0.001"), client_order_id=coid)
    assert caught.value.error_code == 220


def test_order_not_found(trade: BitvavoTrade) -> None:
    with pytest.raises(OrderNotFound):
        trade.get_order(MARKET, client_order_id=uuid.uuid4())


def test_invalid_market(public: BitvavoReadonly) -> None:
    with pytest.raises(InvalidParameter) as caught:
        public.ticker_price("DOGE-EUR")
    assert caught.value.error_code == 205


def test_view_key_cannot_trade(bitvavo_sandbox: SandboxServer) -> None:
    with BitvavoTrade(
        bitvavo_sandbox.rest_url,
        api_key=bitvavo_sandbox.view_key,
        api_secret=bitvavo_sandbox.view_secret,
        operator_id=OPERATOR_ID,
        markets=catalog_of(bitvavo_sandbox),
    ) as client:
        with pytest.raises(TradePermissionMissing) as caught:
            client.place_market_order(
                MARKET, "buy", amount_quote=Decimal("10"), client_order_id=uuid.uuid4()
            )
    assert caught.value.error_code == 310
    assert bitvavo_sandbox.orders() == []


def test_wrong_secret_unknown_key_and_stale_timestamp(bitvavo_sandbox: SandboxServer) -> None:
    rest = bitvavo_sandbox.rest_url
    key = bitvavo_sandbox.view_key
    with BitvavoReadonly(rest, api_key=key, api_secret="not-the-secret") as client:
        with pytest.raises(InvalidSignature) as caught:
            client.balance()
        assert caught.value.error_code == 309
    with BitvavoReadonly(rest, api_key="u" * 64, api_secret="x") as client:
        with pytest.raises(ApiKeyInactive):
            client.balance()
    late = BitvavoReadonly(
        rest,
        api_key=key,
        api_secret=bitvavo_sandbox.view_secret,
        clock=lambda: time.time() - 20,
    )
    with late, pytest.raises(AccessWindowError) as caught:
        late.balance()
    assert caught.value.error_code == 304


def test_rate_limit_stops_before_the_limit() -> None:
    with start_sandbox(env={"SANDBOX_RATE_LIMIT": "20"}) as sandbox:
        sleeps: list[float] = []
        with BitvavoReadonly(
            sandbox.rest_url,
            rate_limit_margin=5,
            max_rate_limit_wait=0,
            sleep=sleeps.append,
        ) as client:
            with pytest.raises(RateLimitWouldExceed):
                for _ in range(30):
                    client.time()
            remaining = client.transport.rate_limit.remaining
        assert remaining is not None and remaining >= 5
        assert "429" not in sandbox.log()  # never banned


def test_rate_limit_ban_is_respected() -> None:
    with start_sandbox(env={"SANDBOX_RATE_LIMIT": "5"}) as sandbox:
        for _ in range(5):  # spend the IP's budget behind our client's back
            httpx.get(sandbox.rest_url + "/time", timeout=5)
        with BitvavoReadonly(sandbox.rest_url) as client:
            with pytest.raises(RateLimitBanned) as first:
                client.time()
            assert first.value.error_code == 110 and first.value.http_status == 429
            assert first.value.ban_expires_at is not None
            assert first.value.ban_expires_at > datetime.now(UTC) + timedelta(minutes=10)
            sent = sandbox.log().count("GET /v2/time ")
            with pytest.raises(RateLimitBanned) as second:
                client.time()
            assert second.value.http_status is None  # refused locally
            assert sandbox.log().count("GET /v2/time ") == sent


# -- faults: G10 -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("http_status", "error_code"), [(500, 101), (503, 109), (503, 107), (502, None)]
)
def test_g10_server_error_is_outcome_unknown_and_sent_once(
    trade: BitvavoTrade, bitvavo_sandbox: SandboxServer, http_status: int, error_code: int | None
) -> None:
    bitvavo_sandbox.set_fault(
        fault="error", times=1, http_status=http_status, error_code=error_code
    )
    before = posts_to_order(bitvavo_sandbox)
    coid = uuid.uuid4()
    with pytest.raises(ExchangeServerError) as caught:
        trade.place_market_order(MARKET, "buy", amount_quote=Decimal("10"), client_order_id=coid)
    assert caught.value.outcome_unknown is True
    assert caught.value.http_status == http_status and caught.value.error_code == error_code
    assert posts_to_order(bitvavo_sandbox, at_least=before + 1) == before + 1
    # this fault did not place the order: reconciliation finds nothing
    assert sandbox_orders_with(bitvavo_sandbox, coid) == []
    with pytest.raises(OrderNotFound):
        trade.get_order(MARKET, client_order_id=coid)


def test_g10_server_error_after_placing_is_reconciled(
    trade: BitvavoTrade, bitvavo_sandbox: SandboxServer
) -> None:
    bitvavo_sandbox.set_fault(fault="error", times=1, http_status=500, error_code=101, place=True)
    coid = uuid.uuid4()
    with pytest.raises(ExchangeServerError) as caught:
        trade.place_market_order(MARKET, "buy", amount_quote=Decimal("10"), client_order_id=coid)
    assert caught.value.outcome_unknown is True
    assert len(sandbox_orders_with(bitvavo_sandbox, coid)) == 1
    assert trade.get_order(MARKET, client_order_id=coid).status == "filled"


def test_g10_latency_beyond_read_timeout_is_outcome_unknown(
    bitvavo_sandbox: SandboxServer,
) -> None:
    timeout = httpx.Timeout(connect=2.0, read=0.2, write=2.0, pool=2.0)
    bitvavo_sandbox.set_fault(fault="latency", times=1, latency_ms=700)
    before = posts_to_order(bitvavo_sandbox)
    coid = uuid.uuid4()
    with make_trade(bitvavo_sandbox, timeout=timeout) as client:
        with pytest.raises(ExchangeTimeout) as caught:
            client.place_market_order(
                MARKET, "buy", amount_quote=Decimal("10"), client_order_id=coid
            )
        assert caught.value.outcome_unknown is True
        # the sandbox finishes the order after its latency: it was placed exactly once
        deadline = time.monotonic() + 5
        while not sandbox_orders_with(bitvavo_sandbox, coid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(sandbox_orders_with(bitvavo_sandbox, coid)) == 1
        assert client.get_order(MARKET, client_order_id=coid).status == "filled"
    assert posts_to_order(bitvavo_sandbox, at_least=before + 1) == before + 1


def test_g10_drop_after_accept_is_outcome_unknown_and_found_by_client_order_id(
    trade: BitvavoTrade, bitvavo_sandbox: SandboxServer
) -> None:
    bitvavo_sandbox.set_fault(fault="drop_after_accept", times=1)
    before = posts_to_order(bitvavo_sandbox)
    coid = uuid.uuid4()
    with pytest.raises(ExchangeTransportError) as caught:
        trade.place_market_order(MARKET, "buy", amount_quote=Decimal("10"), client_order_id=coid)
    assert caught.value.outcome_unknown is True
    assert posts_to_order(bitvavo_sandbox, at_least=before + 1) == before + 1
    (accepted,) = sandbox_orders_with(bitvavo_sandbox, coid)
    found = trade.get_order(MARKET, client_order_id=coid)
    assert found.status == "filled" and found.order_id == accepted["orderId"]
    assert found.filled_amount > 0


# -- placed but not (fully) filled: a 200 is not a fill ------------------------------------------


@pytest.mark.parametrize(
    ("status", "fraction", "final"),
    [
        ("expired", "0", True),
        ("canceledMarketProtection", "0", True),
        ("canceledMarketProtection", "0.4", True),
        ("partiallyFilled", "0.5", False),
    ],
)
def test_a_market_order_answered_200_may_be_unfilled(
    trade: BitvavoTrade,
    readonly: BitvavoReadonly,
    bitvavo_sandbox: SandboxServer,
    status: str,
    fraction: str,
    final: bool,
) -> None:
    bitvavo_sandbox.set_fault(fault="unfilled", times=1, status=status, fill_fraction=fraction)
    coid = uuid.uuid4()
    order = trade.place_market_order(
        MARKET, "buy", amount_quote=Decimal("100"), client_order_id=coid
    )
    assert order.status == status and order.is_final is final
    assert (order.filled_amount > 0) is (fraction != "0")
    assert order.filled_amount == sum((f.amount for f in order.fills), Decimal(0))
    assert order.amount_quote_remaining == (
        Decimal("100") - order.filled_amount_quote - order.fee_paid
    )
    assert trade.get_order(MARKET, client_order_id=coid) == order  # the lookup agrees
    (eur,) = readonly.balance("EUR")
    assert eur.available == Decimal("10000") - order.filled_amount_quote - order.fee_paid
    btc = [row.available for row in readonly.balance("BTC")]
    assert btc == ([] if order.filled_amount == 0 else [order.filled_amount])
    if final:
        with pytest.raises(OrderNotCancellable):
            trade.cancel_order(MARKET, client_order_id=coid)
    else:
        trade.cancel_order(MARKET, client_order_id=coid)
        cancelled = trade.get_order(MARKET, client_order_id=coid)
        assert cancelled.status == "canceled" and cancelled.filled_amount == order.filled_amount
