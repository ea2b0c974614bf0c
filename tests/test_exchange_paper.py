"""PaperTrade: BitvavoTrade's interface, sized by the same quantizer, fills at the given price,
taker fee in quote, the exchange's refusals."""

from __future__ import annotations

import uuid
from decimal import Decimal

import pytest

from shared.exchange.errors import (
    BelowMinimumSize,
    ClientOrderIdConflict,
    InvalidOrderRequest,
    OrderBelowMinimum,
    OrderNotCancellable,
    OrderNotFound,
)
from shared.exchange.models import Order
from shared.exchange.paper import PaperTrade
from tests.exchange_doubles import FakeClock, markets

PRICE = Decimal("36000")


def coid() -> uuid.UUID:
    return uuid.uuid4()


@pytest.fixture
def paper() -> PaperTrade:
    prices = {"BTC-EUR": PRICE, "ETH-EUR": Decimal("2000"), "XRP-EUR": Decimal("0.5")}
    return PaperTrade(prices.__getitem__, markets=markets, operator_id=7, clock=FakeClock())


def test_market_buy_by_amount_quote(paper: PaperTrade) -> None:
    order = paper.place_market_order(
        "BTC-EUR", "buy", amount_quote=Decimal("10"), client_order_id=coid()
    )
    assert isinstance(order, Order)
    assert order.status == "filled" and order.is_final
    # spends at most amountQuote, fee included: 10 / 1.0025 / 36000, rounded down to 8 decimals
    assert order.filled_amount == Decimal("0.00027708")
    assert order.filled_amount_quote == Decimal("0.00027708") * PRICE == Decimal("9.97488")
    assert order.fee_paid == Decimal("0.02493720") and order.fee_currency == "EUR"
    assert order.filled_amount_quote + order.fee_paid <= Decimal("10")
    assert order.amount_quote_remaining == Decimal("10") - Decimal("9.97488") - order.fee_paid
    assert order.fills[0].price == PRICE and order.fills[0].taker is True
    assert order.operator_id == 7
    assert isinstance(order.client_order_id, uuid.UUID) and order.client_order_id.version == 4
    assert order.created is not None and order.created.tzinfo is not None


def test_market_sell_by_amount(paper: PaperTrade) -> None:
    order = paper.place_market_order(
        "ETH-EUR", "sell", amount=Decimal("0.5"), client_order_id=coid()
    )
    assert order.filled_amount == Decimal("0.5")
    assert order.filled_amount_quote == Decimal("1000")
    assert order.fee_paid == Decimal("2.5")


def test_configurable_fee_rate() -> None:
    paper = PaperTrade(lambda _: PRICE, markets=markets, taker_fee_rate=Decimal("0.0015"))
    order = paper.place_market_order(
        "BTC-EUR", "buy", amount=Decimal("0.01"), client_order_id=coid()
    )
    assert order.filled_amount_quote == Decimal("360")
    assert order.fee_paid == Decimal("0.54")


def test_sell_by_amount_quote_charges_the_fee_on_the_proceeds(paper: PaperTrade) -> None:
    order = paper.place_market_order(
        "ETH-EUR", "sell", amount_quote=Decimal("100"), client_order_id=coid()
    )
    assert order.filled_amount == Decimal("0.05")
    assert order.filled_amount_quote == Decimal("100")
    assert order.fee_paid == Decimal("0.25")


def test_fee_rate_must_not_be_float() -> None:
    with pytest.raises(ValueError):
        PaperTrade(lambda _: PRICE, markets=markets, taker_fee_rate=0.0025)  # type: ignore[arg-type]


def test_get_order_by_client_order_id_and_order_id(paper: PaperTrade) -> None:
    coid = uuid.uuid4()
    placed = paper.place_market_order(
        "BTC-EUR", "buy", amount_quote=Decimal("10"), client_order_id=str(coid)
    )
    assert paper.get_order("BTC-EUR", client_order_id=coid) == placed
    assert paper.get_order("BTC-EUR", order_id=placed.order_id) == placed
    with pytest.raises(OrderNotFound) as caught:
        paper.get_order("BTC-EUR", client_order_id=uuid.uuid4())
    assert caught.value.error_code == 240
    with pytest.raises(OrderNotFound) as other_market:
        paper.get_order("ETH-EUR", client_order_id=coid)
    assert other_market.value.client_order_id == coid and other_market.value.market == "ETH-EUR"


def test_client_order_id_is_never_reused(paper: PaperTrade) -> None:
    coid = uuid.uuid4()
    paper.place_market_order("BTC-EUR", "buy", amount_quote=Decimal("10"), client_order_id=coid)
    with pytest.raises(ClientOrderIdConflict) as caught:
        paper.place_market_order("BTC-EUR", "buy", amount_quote=Decimal("10"), client_order_id=coid)
    assert caught.value.client_order_id == coid and caught.value.market == "BTC-EUR"


def test_memory_is_bounded_and_the_oldest_orders_are_forgotten() -> None:
    """A long-lived process keeps the latest `max_finished_orders` orders (the bench found +82 %
    RSS after 10,000 paper executions when it kept them all); a forgotten order reads as not
    found (240), like one lost with its process."""
    paper = PaperTrade({"BTC-EUR": PRICE}.__getitem__, markets=markets, clock=FakeClock(),
                       max_finished_orders=3)
    filled = [paper.place_market_order("BTC-EUR", "buy", amount_quote=Decimal("10"),
                                       client_order_id=coid()) for _ in range(5)]
    for order in filled[:2]:
        with pytest.raises(OrderNotFound):
            paper.get_order("BTC-EUR", client_order_id=order.client_order_id)
    for order in filled[2:]:
        assert paper.get_order("BTC-EUR", client_order_id=order.client_order_id) == order
    for _ in range(1000):
        paper.place_market_order("BTC-EUR", "sell", amount_quote=Decimal("10"),
                                 client_order_id=coid())
    assert len(paper._orders) == 3
    with pytest.raises(ValueError, match="max_finished_orders"):
        PaperTrade({"BTC-EUR": PRICE}.__getitem__, markets=markets, max_finished_orders=0)


def test_same_validation_as_the_live_client(paper: PaperTrade) -> None:
    with pytest.raises(InvalidOrderRequest):
        paper.place_market_order(
            "BTC-EUR", "buy", amount_quote=Decimal("10"), amount=Decimal(1), client_order_id=coid()
        )
    with pytest.raises(InvalidOrderRequest):
        paper.place_market_order(
            "BTC-EUR", "buy", amount_quote=10.0, client_order_id=coid()  # type: ignore[arg-type]
        )
    with pytest.raises(InvalidOrderRequest):
        paper.place_market_order(
            "BTC-EUR", "buy", amount_quote=Decimal("10"), client_order_id="not-a-uuid"
        )


def test_a_placed_order_is_never_open_so_cancelling_it_is_233(paper: PaperTrade) -> None:
    placed = paper.place_market_order(
        "BTC-EUR", "buy", amount_quote=Decimal("10"), client_order_id=coid()
    )
    # it exists but is no longer open: Bitvavo's 233, never "not found"
    with pytest.raises(OrderNotCancellable) as caught:
        paper.cancel_order("BTC-EUR", order_id=placed.order_id)
    assert caught.value.error_code == 233 and not isinstance(caught.value, OrderNotFound)
    assert caught.value.client_order_id is None and caught.value.market == "BTC-EUR"
    with pytest.raises(OrderNotFound):
        paper.cancel_order("BTC-EUR", order_id="no-such-order")


def test_unusable_price_is_refused() -> None:
    paper = PaperTrade(lambda _: Decimal("0"), markets=markets)
    with pytest.raises(InvalidOrderRequest):
        paper.place_market_order(
            "BTC-EUR", "buy", amount_quote=Decimal("10"), client_order_id=coid()
        )


# -- sized like the live client (shared.exchange.precision) -------------------------------------


def test_an_ai_sized_proposal_is_rounded_down_like_live(paper: PaperTrade) -> None:
    order = paper.place_market_order(
        "BTC-EUR", "buy", amount_quote=Decimal("10.123456789"), client_order_id=coid()
    )
    assert order.amount_quote == Decimal("10.12")
    assert order.filled_amount_quote + order.fee_paid <= Decimal("10.12")
    assert order.amount_quote_remaining == Decimal("10.12") - order.filled_amount_quote \
        - order.fee_paid


def test_fills_have_the_markets_quantity_decimals(paper: PaperTrade) -> None:
    order = paper.place_market_order(
        "XRP-EUR", "buy", amount_quote=Decimal("10"), client_order_id=coid()
    )
    assert order.filled_amount == Decimal("19.950124")  # 10 / 1.0025 / 0.5, 6 decimals, down
    assert -order.filled_amount.as_tuple().exponent <= 6  # type: ignore[operator]
    sold = paper.place_market_order(
        "XRP-EUR", "sell", amount=Decimal("20.3456789"), client_order_id=coid()
    )
    assert sold.amount == Decimal("20.345678")


@pytest.mark.parametrize(
    "place",
    [
        lambda p: p.place_market_order(
            "BTC-EUR", "buy", amount_quote=Decimal("4.999"), client_order_id=coid()
        ),
        lambda p: p.place_market_order(
            "BTC-EUR", "sell", amount=Decimal("0.000000001"), client_order_id=coid()
        ),
    ],
)
def test_sub_minimum_is_refused_like_live(paper: PaperTrade, place: object) -> None:
    with pytest.raises(OrderBelowMinimum):
        place(paper)  # type: ignore[operator]
    with pytest.raises(OrderNotFound):
        paper.get_order("BTC-EUR", order_id="anything")  # nothing was recorded


def test_market_order_by_amount_below_the_quote_minimum_is_the_exchanges_217(
    paper: PaperTrade,
) -> None:
    # 0.0001 BTC is above minOrderInBaseAsset but worth 3.60 EUR: Bitvavo answers 217
    order_id = coid()
    with pytest.raises(BelowMinimumSize) as caught:
        paper.place_market_order(
            "BTC-EUR", "buy", amount=Decimal("0.0001"), client_order_id=order_id
        )
    assert caught.value.error_code == 217 and caught.value.client_order_id == order_id
    with pytest.raises(OrderNotFound):
        paper.get_order("BTC-EUR", client_order_id=order_id)


def test_paper_needs_a_market_lookup() -> None:
    with pytest.raises(TypeError, match="markets"):
        PaperTrade(lambda _: PRICE)  # type: ignore[call-arg]
