"""One quantizer: an order rounded to what its market accepts, or refused before it is sent.

Bitvavo's `/markets` listing decides what an order may look like (reference/bitvavo-api.md;
ccxt reads it the same way): `amount` has at most `quantityDecimals` decimals, `amountQuote` at
most `notionalDecimals`. Anything finer is refused by the exchange (205), so an AI-sized amount
such as 10.123456789 EUR would fail live while a paper trader filled it. Hence, for BitvavoTrade
and PaperTrade alike:

- a market whose `status` is not `trading` is refused with MarketNotTrading (a `halted` market
  accepts orders and fills them when it reopens, an `auction` refuses them; Bitvavo's support
  article on market statuses) — the listing comes from a lookup that read the status moments ago
  (shared.exchange.catalog);
- amounts (`amount`, `amountQuote`) are rounded DOWN: never spend or sell more than proposed;
- what is zero after rounding, or below `minOrderInBaseAsset` / `minOrderInQuoteAsset`, is
  refused with OrderBelowMinimum, what is above `maxOrderInBaseAsset` / `maxOrderInQuoteAsset`
  with OrderAboveMaximum (the exchange would answer 210) — nothing is sent.

A market order placed by `amount` cannot be checked against the quote minimum or maximum here (its
price is the exchange's); the exchange answers 217 / 210 then, a definitive refusal.
"""

from __future__ import annotations

from collections.abc import Callable
from decimal import ROUND_DOWN, Decimal, InvalidOperation

from shared.exchange.errors import (
    ExchangeError,
    InvalidOrderRequest,
    MarketListingUnavailable,
    MarketNotTrading,
    OrderAboveMaximum,
    OrderBelowMinimum,
)
from shared.exchange.models import Market, OrderRequest

TRADING = "trading"  # the one market status that takes orders and fills them now

MarketLookup = Callable[[str], Market]
"""A market's listing by name (e.g. "BTC-EUR"). `MarketCatalog` (shared.exchange.catalog) is the
live one; a test may pass `{name: Market(...)}.__getitem__`."""


def listing(markets: MarketLookup, market: str) -> Market:
    """The listing of `market`; an unknown market is an InvalidOrderRequest, an unreadable
    listing a MarketListingUnavailable (never an OutcomeUnknown: the order is not sent)."""
    try:
        found = markets(market)
    except LookupError:
        raise InvalidOrderRequest(f"market {market} is not listed on the exchange") from None
    except ExchangeError as error:
        raise MarketListingUnavailable(
            f"the listing of {market} could not be read ({type(error).__name__}: "
            f"{error.message}); the order was not sent",
            http_status=error.http_status,
            error_code=error.error_code,
            endpoint=error.endpoint,
        ) from error
    if found.market != market:
        raise InvalidOrderRequest(f"the market lookup answered {found.market} for {market}")
    return found


def quantize_order(request: OrderRequest, market: Market) -> OrderRequest:
    """`request` with its amounts rounded down, on a market that trades, checked against the
    market's minimums and maximums. Raises MarketNotTrading / OrderBelowMinimum /
    OrderAboveMaximum / InvalidOrderRequest."""
    if market.market != request.market:
        raise InvalidOrderRequest(f"{market.market}'s listing cannot size a {request.market} order")
    if market.status != TRADING:
        raise MarketNotTrading(
            f"{market.market} is {market.status!r}, not {TRADING!r}: a halted market fills "
            "orders only when it reopens and an auction refuses them; nothing was sent",
            status=market.status,
        )
    updates: dict[str, Decimal] = {}
    if request.amount is not None:
        amount = round_amount(market, request.amount)
        _at_least(market, "amount", amount, market.min_order_in_base_asset, market.base)
        _at_most(market, "amount", amount, market.max_order_in_base_asset, market.base)
        updates["amount"] = amount
    if request.amount_quote is not None:
        amount_quote = round_amount_quote(market, request.amount_quote)
        minimum = market.min_order_in_quote_asset
        _at_least(market, "amountQuote", amount_quote, minimum, market.quote)
        _at_most(market, "amountQuote", amount_quote, market.max_order_in_quote_asset,
                 market.quote)
        updates["amount_quote"] = amount_quote
    return request.model_copy(update=updates)


def round_amount(market: Market, amount: Decimal) -> Decimal:
    """`amount` (base asset) rounded down to the market's `quantityDecimals`."""
    return _round_down(amount, _decimals(market, market.quantity_decimals, "quantityDecimals"))


def round_amount_quote(market: Market, amount_quote: Decimal) -> Decimal:
    """`amountQuote` (quote asset) rounded down to the market's `notionalDecimals`."""
    return _round_down(
        amount_quote, _decimals(market, market.notional_decimals, "notionalDecimals")
    )


def _decimals(market: Market, value: int | None, name: str) -> int:
    if value is None or value < 0:
        raise InvalidOrderRequest(f"{market.market}'s listing has no usable {name}")
    return value


def _round_down(value: Decimal, decimals: int) -> Decimal:
    try:
        return _tidy(value.quantize(Decimal(1).scaleb(-decimals), rounding=ROUND_DOWN))
    except InvalidOperation:
        raise InvalidOrderRequest("amount is out of range") from None


def _tidy(value: Decimal) -> Decimal:
    """Without trailing zeros (the wire form is plain notation either way)."""
    return value.normalize() if value else Decimal(0)


def _at_least(
    market: Market, field: str, value: Decimal, minimum: Decimal | None, unit: str
) -> None:
    if value <= 0:
        raise OrderBelowMinimum(
            f"{field} rounds to zero at {market.market}'s precision; nothing was sent",
            field=field,
            value=value,
            minimum=minimum,
        )
    if minimum is not None and value < minimum:
        raise OrderBelowMinimum(
            f"{field} {format(value, 'f')} {unit} is below {market.market}'s minimum of "
            f"{format(minimum, 'f')} {unit} (after rounding to its precision); nothing was sent",
            field=field,
            value=value,
            minimum=minimum,
        )


def _at_most(
    market: Market, field: str, value: Decimal, maximum: Decimal | None, unit: str
) -> None:
    if maximum is not None and value > maximum:
        raise OrderAboveMaximum(
            f"{field} {format(value, 'f')} {unit} is above {market.market}'s maximum of "
            f"{format(maximum, 'f')} {unit}; nothing was sent",
            field=field,
            value=value,
            maximum=maximum,
        )
