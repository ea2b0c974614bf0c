"""The one quantizer (shared.exchange.precision): amounts round down, sub-minimum and
above-maximum orders refused, and only a market that trades takes one; and the MarketCatalog that
feeds it (cached: listings for long, the status an order needs for seconds)."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from decimal import Decimal

import pytest
from pytest_httpx import HTTPXMock

from shared.exchange.catalog import MarketCatalog
from shared.exchange.errors import (
    ExchangeError,
    ExchangeServerError,
    InvalidOrderRequest,
    MarketListingUnavailable,
    MarketNotTrading,
    OrderAboveMaximum,
    OrderBelowMinimum,
    OutcomeUnknown,
)
from shared.exchange.models import Market, OrderRequest
from shared.exchange.paper import PaperTrade
from shared.exchange.precision import (
    listing,
    quantize_order,
    round_amount,
    round_amount_quote,
)
from shared.exchange.readonly import BitvavoReadonly
from shared.exchange.trade import BitvavoTrade
from tests.exchange_doubles import (
    BASE_URL,
    MARKETS,
    OPERATOR_ID,
    TRADE_KEY,
    TRADE_SECRET,
    FakeClock,
    market_json,
    markets,
)

BTC, ETH, XRP = MARKETS["BTC-EUR"], MARKETS["ETH-EUR"], MARKETS["XRP-EUR"]
COID = uuid.UUID("2be7d0df-d5dc-4b53-a250-3376f3b393e6")


def market_order(market: str = "BTC-EUR", side: str = "buy", **amounts: Decimal) -> OrderRequest:
    return OrderRequest.market_order(market, side, client_order_id=COID, **amounts)


@pytest.mark.parametrize(
    ("market", "value", "expected"),
    [
        (BTC, "0.000123456789", "0.00012345"),
        (BTC, "0.99999999999", "0.99999999"),  # down, never up to 1
        (BTC, "1", "1"),
        (XRP, "12.3456789", "12.345678"),
        (XRP, "12.3", "12.3"),
    ],
)
def test_amounts_round_down_to_quantity_decimals(
    market: Market, value: str, expected: str
) -> None:
    assert round_amount(market, Decimal(value)) == Decimal(expected)


@pytest.mark.parametrize(
    ("value", "expected"),
    [("10.123456789", "10.12"), ("10.129", "10.12"), ("10", "10"), ("0.001", "0")],
)
def test_amount_quote_rounds_down_to_notional_decimals(value: str, expected: str) -> None:
    assert round_amount_quote(BTC, Decimal(value)) == Decimal(expected)


def test_quantize_order_keeps_everything_else() -> None:
    request = market_order(amount_quote=Decimal("10.123456789"))
    sized = quantize_order(request, BTC)
    assert sized.amount_quote == Decimal("10.12")
    assert sized.to_body() == request.to_body() | {"amountQuote": "10.12"}
    sell = quantize_order(market_order("ETH-EUR", "sell", amount=Decimal("0.123456789")), ETH)
    assert sell.to_body()["amount"] == "0.12345678" and sell.client_order_id == COID


def test_wire_values_have_no_exponent_and_no_trailing_zeros() -> None:
    body = quantize_order(market_order(amount_quote=Decimal("1E+2")), BTC).to_body()
    assert body["amountQuote"] == "100"
    body = quantize_order(market_order(side="sell", amount=Decimal("0.00100000")), BTC).to_body()
    assert body["amount"] == "0.001"


@pytest.mark.parametrize(
    ("request_", "field", "minimum"),
    [
        (market_order(amount_quote=Decimal("4.999")), "amountQuote", Decimal("5")),
        (market_order(amount_quote=Decimal("0.009")), "amountQuote", Decimal("5")),
        (market_order(side="sell", amount=Decimal("0.000059999")), "amount", Decimal("0.00006")),
        (market_order(side="sell", amount=Decimal("1E-9")), "amount", Decimal("0.00006")),
    ],
)
def test_sub_minimum_orders_are_refused(
    request_: OrderRequest, field: str, minimum: Decimal | None
) -> None:
    with pytest.raises(OrderBelowMinimum) as caught:
        quantize_order(request_, BTC)
    assert caught.value.field == field and caught.value.minimum == minimum
    assert "nothing was sent" in str(caught.value)


def test_exactly_the_minimum_passes() -> None:
    assert quantize_order(market_order(amount_quote=Decimal("5.009")), BTC).amount_quote == 5
    sell = quantize_order(market_order("XRP-EUR", "sell", amount=Decimal("1")), XRP)
    assert sell.amount == 1


@pytest.mark.parametrize(
    ("broken", "request_"),
    [
        ({"quantityDecimals": None}, market_order(side="sell", amount=Decimal("1"))),
        ({"notionalDecimals": None}, market_order(amount_quote=Decimal("10"))),
    ],
)
def test_a_listing_without_precision_refuses_to_size(
    broken: dict[str, object], request_: OrderRequest
) -> None:
    market = Market.model_validate(market_json("BTC-EUR", **broken))
    with pytest.raises(InvalidOrderRequest, match="listing has no usable"):
        quantize_order(request_, market)


def test_a_listing_of_another_market_is_refused() -> None:
    with pytest.raises(InvalidOrderRequest):
        quantize_order(market_order(amount_quote=Decimal("10")), ETH)
    with pytest.raises(InvalidOrderRequest, match="answered ETH-EUR"):
        listing(lambda _: ETH, "BTC-EUR")
    with pytest.raises(InvalidOrderRequest, match="DOGE-EUR is not listed"):
        listing(markets, "DOGE-EUR")


def test_absurd_sizes_are_refused_not_crashed() -> None:
    with pytest.raises(InvalidOrderRequest):
        quantize_order(market_order(amount_quote=Decimal("1E+40")), BTC)


@pytest.mark.parametrize("status", ["halted", "auction", "auctionMatching", "cancelOnly"])
def test_only_a_market_that_trades_takes_an_order(status: str) -> None:
    """A halted market accepts orders and fills them when it reopens; an auction refuses them
    (Bitvavo's support article on market statuses); ccxt counts only `trading` as active."""
    market = Market.model_validate(market_json("BTC-EUR", status=status))
    with pytest.raises(MarketNotTrading) as caught:
        quantize_order(market_order(amount_quote=Decimal("10")), market)
    assert caught.value.status == status and status in str(caught.value)
    assert isinstance(caught.value, ExchangeError) and caught.value.outcome_unknown is False
    assert "nothing was sent" in str(caught.value)


@pytest.mark.parametrize(
    ("over", "at_most", "field", "maximum"),
    [
        ("1000.01", "1000.009", "amountQuote", Decimal("1000")),
        ("2.00000001", "2.000000009", "amount", Decimal("2")),
    ],
)
def test_above_the_maximum_is_refused_like_bitvavos_210(
    over: str, at_most: str, field: str, maximum: Decimal
) -> None:
    market = Market.model_validate(
        market_json("BTC-EUR", maxOrderInQuoteAsset="1000", maxOrderInBaseAsset="2"))

    def order(value: str) -> OrderRequest:
        if field == "amount":
            return market_order(side="sell", amount=Decimal(value))
        return market_order(amount_quote=Decimal(value))

    with pytest.raises(OrderAboveMaximum) as caught:
        quantize_order(order(over), market)
    assert caught.value.field == field and caught.value.maximum == maximum
    assert isinstance(caught.value, InvalidOrderRequest)
    assert "nothing was sent" in str(caught.value)
    # what rounds down to exactly the maximum passes
    assert quantize_order(order(at_most), market).to_body()[field] == format(maximum, "f")


# -- MarketCatalog --------------------------------------------------------------------------------

MARKETS_URL = BASE_URL + "/markets"


@pytest.fixture
def monotonic() -> FakeClock:
    return FakeClock(now=1000.0)


@pytest.fixture
def catalog(monotonic: FakeClock) -> Iterator[MarketCatalog]:
    with BitvavoReadonly(BASE_URL) as readonly:
        yield MarketCatalog(readonly, ttl_seconds=60, status_ttl_seconds=3, clock=monotonic)


def listings() -> list[dict[str, object]]:
    return [market_json("BTC-EUR"), market_json("ETH-EUR")]


def test_catalog_reads_markets_once_then_serves_the_cache(
    httpx_mock: HTTPXMock, catalog: MarketCatalog, monotonic: FakeClock
) -> None:
    httpx_mock.add_response(url=MARKETS_URL, json=listings())
    assert catalog("BTC-EUR") == BTC
    assert catalog("ETH-EUR") == ETH
    monotonic.now += 2.9
    assert catalog("BTC-EUR").tick_size == Decimal("1")
    monotonic.now += 56
    assert catalog.markets()["BTC-EUR"] == BTC  # sizes may be a minute old
    assert len(httpx_mock.get_requests()) == 1
    request = httpx_mock.get_requests()[0]
    assert "Bitvavo-Access-Key" not in request.headers  # a read-only client without a key


def test_an_orders_lookup_reads_the_status_again_after_its_short_ttl(
    httpx_mock: HTTPXMock, catalog: MarketCatalog, monotonic: FakeClock
) -> None:
    httpx_mock.add_response(url=MARKETS_URL, json=listings())
    httpx_mock.add_response(url=MARKETS_URL, json=[market_json("BTC-EUR", status="halted"),
                                                   market_json("ETH-EUR")])
    assert catalog("BTC-EUR").status == "trading"
    monotonic.now += 3
    assert catalog("BTC-EUR").status == "halted"  # one read of every market, weight 1
    assert catalog("ETH-EUR").status == "trading"
    assert len(httpx_mock.get_requests()) == 2


def test_catalog_refreshes_after_its_ttl(
    httpx_mock: HTTPXMock, catalog: MarketCatalog, monotonic: FakeClock
) -> None:
    httpx_mock.add_response(url=MARKETS_URL, json=listings())
    httpx_mock.add_response(url=MARKETS_URL, json=[market_json("BTC-EUR", tickSize="5")])
    assert catalog.markets()["BTC-EUR"].tick_size == 1
    monotonic.now += 61
    assert catalog.markets()["BTC-EUR"].tick_size == 5
    with pytest.raises(KeyError):  # delisted in the new listing
        catalog("ETH-EUR")
    assert len(httpx_mock.get_requests()) == 2
    catalog.refresh()
    httpx_mock.add_response(url=MARKETS_URL, json=listings())
    assert catalog("ETH-EUR") == ETH
    assert len(httpx_mock.get_requests()) == 3


def test_catalog_keeps_its_listing_when_a_refresh_fails_but_an_order_does_not(
    httpx_mock: HTTPXMock,
    catalog: MarketCatalog,
    monotonic: FakeClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Sizes change rarely: `markets()` keeps an older listing. A status read before the last
    few seconds proves nothing: an order's lookup fails, and the order is not sent."""
    httpx_mock.add_response(url=MARKETS_URL, json=listings())
    httpx_mock.add_response(url=MARKETS_URL, status_code=503, json={"errorCode": 107},
                            is_reusable=True)
    catalog("BTC-EUR")
    monotonic.now += 61
    with caplog.at_level(logging.WARNING, "shared.exchange"):
        assert catalog.markets()["BTC-EUR"] == BTC
    assert "using the cached listing" in caplog.text
    with pytest.raises(ExchangeServerError):
        catalog("BTC-EUR")
    with pytest.raises(MarketListingUnavailable):
        listing(catalog, "BTC-EUR")


def test_catalog_without_any_listing_propagates_the_error(
    httpx_mock: HTTPXMock, catalog: MarketCatalog
) -> None:
    httpx_mock.add_response(url=MARKETS_URL, status_code=503, json={"errorCode": 107})
    with pytest.raises(ExchangeServerError):
        catalog("BTC-EUR")


def test_catalog_is_the_lookup_the_quantizer_uses(
    httpx_mock: HTTPXMock, catalog: MarketCatalog
) -> None:
    httpx_mock.add_response(url=MARKETS_URL, json=listings())
    with pytest.raises(InvalidOrderRequest, match="XRP-EUR is not listed"):
        listing(catalog, "XRP-EUR")
    sized = quantize_order(
        market_order(amount_quote=Decimal("10.123456789")), listing(catalog, "BTC-EUR")
    )
    assert sized.amount_quote == Decimal("10.12")


def test_catalog_ttls_must_be_positive() -> None:
    with BitvavoReadonly(BASE_URL) as readonly:
        with pytest.raises(ValueError):
            MarketCatalog(readonly, ttl_seconds=0)
        with pytest.raises(ValueError):
            MarketCatalog(readonly, status_ttl_seconds=0)


@pytest.mark.parametrize("client", ["live", "paper"])
def test_an_unreadable_listing_is_never_an_unknown_outcome(
    httpx_mock: HTTPXMock,
    catalog: MarketCatalog,
    monkeypatch: pytest.MonkeyPatch,
    client: str,
) -> None:
    """GET /markets failing with a 5xx must not make an order call look like "maybe placed"."""
    monkeypatch.delenv("BITVAVO_READONLY_API_KEY", raising=False)
    httpx_mock.add_response(url=MARKETS_URL, status_code=503, json={"errorCode": 109})
    coid = uuid.uuid4()
    order_client: BitvavoTrade | PaperTrade = (
        BitvavoTrade(BASE_URL, api_key=TRADE_KEY, api_secret=TRADE_SECRET,
                     operator_id=OPERATOR_ID, markets=catalog)
        if client == "live"
        else PaperTrade(lambda _: Decimal("36000"), markets=catalog)
    )
    with pytest.raises(MarketListingUnavailable) as caught:
        order_client.place_market_order(
            "BTC-EUR", "buy", amount_quote=Decimal("10"), client_order_id=coid
        )
    error = caught.value
    assert error.outcome_unknown is False and not isinstance(error, OutcomeUnknown)
    assert isinstance(error.__cause__, ExchangeServerError)
    assert error.client_order_id == coid and error.endpoint == "GET /markets"
    assert [r.url.path for r in httpx_mock.get_requests()] == ["/v2/markets"]  # no POST /order


@pytest.mark.parametrize("client", ["live", "paper"])
@pytest.mark.parametrize("status", ["halted", "auction"])
def test_no_order_is_sent_on_a_market_that_does_not_trade(
    httpx_mock: HTTPXMock,
    catalog: MarketCatalog,
    monkeypatch: pytest.MonkeyPatch,
    client: str,
    status: str,
) -> None:
    monkeypatch.delenv("BITVAVO_READONLY_API_KEY", raising=False)
    httpx_mock.add_response(url=MARKETS_URL, json=[market_json("BTC-EUR", status=status)])
    coid = uuid.uuid4()
    order_client: BitvavoTrade | PaperTrade = (
        BitvavoTrade(BASE_URL, api_key=TRADE_KEY, api_secret=TRADE_SECRET,
                     operator_id=OPERATOR_ID, markets=catalog)
        if client == "live"
        else PaperTrade(lambda _: Decimal("36000"), markets=catalog)
    )
    with pytest.raises(MarketNotTrading) as caught:
        order_client.place_market_order(
            "BTC-EUR", "buy", amount_quote=Decimal("10"), client_order_id=coid
        )
    assert caught.value.client_order_id == coid and caught.value.market == "BTC-EUR"
    assert [r.url.path for r in httpx_mock.get_requests()] == ["/v2/markets"]  # no POST /order
