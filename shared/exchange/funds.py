"""Fee headroom: a market buy sized so that it fits the free quote balance with the fee on top.

Whether Bitvavo takes a market buy's taker fee out of `amountQuote` or charges it on top is not
documented (reference/bitvavo-api.md, "What the documentation leaves open"). If on top, a buy of
the whole free balance cannot be covered: Bitvavo answers 216, or the order ends `expired` (its
create-order page). So BitvavoTrade sizes a buy by `amountQuote` down, when it must, to

    amountQuote × (1 + taker fee rate) ≤ the free quote balance

(the rate configurable; 0.25 % by default, Bitvavo's base taker fee). If the fee is in fact taken
out of `amountQuote`, such a buy spends up to that rate less than it could have; either way it is
covered. What rounds to below the market's minimum is refused before sending, as the exchange's
216 (InsufficientBalance, outcome known). The fee recorded is always the one the exchange reports.

When GET /balance is read. It weighs 5 against the trade key's 1,000 points a minute, which its
orders (1 each) spend too; a burst of ~1,000 buys a minute on one key (auto-executions of one
signal) cannot afford a read per buy (5,000). So `FreeBalance` keeps, per currency, the figure last
read, trusts it for `ttl_seconds` (BALANCE_CACHE_SECONDS, 10 s by default) and lowers it locally by
what each buy sent may spend (amountQuote × (1 + rate), an upper bound; a buy whose outcome is
unknown counts as spent). A burst of any length thus costs at most one read per `ttl_seconds` per
process: ≤ 6 reads, 30 points a minute at 10 s (3 % of the key's budget), plus one after each
refusal for funds (below). Reading only when a buy comes near the figure would save even those, but
would trust a figure that is too high for as long as buys fit it; a short age bounds how long any
figure is believed. Why this is safe either way:
- a figure too high (another process, the account owner's own trades, a withdrawal) only lets a buy
  go unshrunk; the exchange refuses what it cannot cover (216, or `expired` without a fill), after
  which the figure is dropped and read again for the next buy;
- a figure too low (a deposit, a sell) shrinks or refuses buys for at most `ttl_seconds`;
- a balance that cannot be read (a timeout, a key without the view permission) sizes nothing: the
  buy goes as claimed and the exchange decides; the read is tried again after `ttl_seconds`.
Only market buys by `amountQuote` are sized; a sell spends the base asset, which the fee (charged
in quote) does not touch.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal

from shared.exchange.errors import ExchangeError, InsufficientBalance, OutcomeUnknown
from shared.exchange.models import Market, Order, OrderRequest
from shared.exchange.precision import round_amount_quote
from shared.exchange.ratelimit import Clock

logger = logging.getLogger("shared.exchange")

DEFAULT_TAKER_FEE_RATE = Decimal("0.0025")
DEFAULT_BALANCE_TTL_SECONDS = 10.0


@dataclass(frozen=True)
class FeeHeadroom:
    """How BitvavoTrade sizes buys to the free balance (None there: it does not)."""

    taker_fee_rate: Decimal = DEFAULT_TAKER_FEE_RATE
    balance_ttl_seconds: float = DEFAULT_BALANCE_TTL_SECONDS

    def __post_init__(self) -> None:
        if isinstance(self.taker_fee_rate, float) or not 0 <= self.taker_fee_rate < 1:
            raise ValueError("taker_fee_rate must be a Decimal in [0, 1)")
        if self.balance_ttl_seconds < 0:
            raise ValueError("balance_ttl_seconds must not be negative")

    def cost(self, amount_quote: Decimal) -> Decimal:
        """The most a buy of `amount_quote` may take from the balance: the fee on top."""
        return amount_quote * (1 + self.taker_fee_rate)


@dataclass
class _Figure:
    free: Decimal | None  # None: the last read failed
    read_at: float  # the clock's seconds


class FreeBalance:
    """The free balance per currency, as far as this process knows (see the module docstring)."""

    def __init__(self, read: Callable[[str], Decimal], headroom: FeeHeadroom, *,
                 clock: Clock = time.monotonic) -> None:
        self._read = read
        self.headroom = headroom
        self._clock = clock
        self._figures: dict[str, _Figure] = {}
        self._lock = threading.Lock()
        # One read at a time: buys sent at once to a process with no young figure wait for the
        # first one's read instead of each reading (a burst's first requests arrive together).
        self._reading = threading.Lock()

    def before(self, request: OrderRequest) -> Decimal | None:
        """What is free to size this order by: None for anything but a buy by amountQuote, or when
        the balance cannot be read. May read GET /balance (so: before the order's last-moment
        checks, never between them and POST /order)."""
        if request.side != "buy" or request.amount_quote is None:
            return None
        symbol = quote_of(request.market)
        figure = self._young(symbol, self._clock())
        if figure is not None:
            return figure.free
        with self._reading:
            now = self._clock()
            figure = self._young(symbol, now)  # read by the buy this one waited for
            if figure is not None:
                return figure.free
            try:
                free: Decimal | None = self._read(symbol)
            except ExchangeError as error:
                logger.warning("bitvavo GET /balance failed (%s): buys go unsized, the exchange "
                               "checks the funds", type(error).__name__)
                free = None
            with self._lock:
                self._figures[symbol] = _Figure(free, now)
            return free

    def _young(self, symbol: str, now: float) -> _Figure | None:
        """The figure for `symbol` if it is younger than the TTL."""
        with self._lock:
            figure = self._figures.get(symbol)
        if figure is not None and now - figure.read_at < self.headroom.balance_ttl_seconds:
            return figure
        return None

    def after(self, request: OrderRequest, outcome: Order | ExchangeError) -> None:
        """Account for a buy that was sent: what it may have spent comes off the figure; a refusal
        for funds (216, or `expired` without a fill) drops the figure, to be read again."""
        if request.side != "buy" or request.amount_quote is None:
            return
        symbol = quote_of(request.market)
        cost = self.headroom.cost(request.amount_quote)
        refused_for_funds = isinstance(outcome, InsufficientBalance) or (
            isinstance(outcome, Order) and outcome.status == "expired"
            and outcome.filled_amount == 0)
        with self._lock:
            figure = self._figures.get(symbol)
            if figure is None:
                return
            if refused_for_funds:
                del self._figures[symbol]
            elif figure.free is not None and isinstance(outcome, Order | OutcomeUnknown):
                figure.free = max(Decimal(0), figure.free - cost)


def fit_buy(request: OrderRequest, market: Market, free: Decimal,
            headroom: FeeHeadroom) -> OrderRequest:
    """`request` (quantized) sized down so that amountQuote with the fee on top fits `free`;
    InsufficientBalance (the exchange's 216, raised here: nothing is sent) when what fits is below
    the market's minimum."""
    if request.side != "buy" or request.amount_quote is None:
        return request
    if headroom.cost(request.amount_quote) <= free:
        return request
    fitted = round_amount_quote(market, free / (1 + headroom.taker_fee_rate))
    minimum = market.min_order_in_quote_asset or Decimal(0)
    rate = format(headroom.taker_fee_rate * 100, "f")
    if fitted <= 0 or fitted < minimum:
        raise InsufficientBalance(
            f"refused before sending: the free {market.quote} balance ({format(free, 'f')}) does "
            f"not cover {format(minimum, 'f')} {market.quote}, the market's minimum, with the "
            f"{rate} % taker fee on top",
            error_code=216,
            endpoint="POST /order",
        )
    logger.info("bitvavo buy of %s %s sized down to %s: the free balance (%s) with the %s %% "
                "taker fee on top", format(request.amount_quote, "f"), market.quote,
                format(fitted, "f"), format(free, "f"), rate)
    return request.model_copy(update={"amount_quote": fitted})


def quote_of(market: str) -> str:
    return market.split("-", 1)[1]
