"""MAX_CLAIM_AGE, enforced at the last moment before POST /order: a stale claim is never sent.

The order clients look up the market's listing (`markets=…`, shared.exchange.precision) and then,
with nothing that can wait in between (pure quantizing, a rate-limit budget that never sleeps,
signing), send the order. So the listing lookup is where the claim's age is checked:

    lookup = DeadlineLookup(catalog)                  # what BitvavoTrade / PaperTrade get
    with lookup.deadline(claim_answered_at + max_claim_age):
        trade.place_market_order(…)                   # ClaimTooOld: nothing was sent

`ClaimTooOld` is not an ExchangeError (the order clients pass it through untouched); the request
path records the execution `failed` — certainly not placed. Outside a `deadline` block (the
reconciler's reads) there is no limit. The deadline is per thread of execution (a ContextVar), so
one lookup serves every concurrent request of the process. Times are `time.monotonic()`.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from shared.exchange.models import Market
from shared.exchange.precision import MarketLookup

# (claim answered at, MAX_CLAIM_AGE) of the order being placed in this context, if any.
_claim: ContextVar[tuple[float, float] | None] = ContextVar("claim_deadline", default=None)


class ClaimTooOld(Exception):
    """More than MAX_CLAIM_AGE passed since the claim: the order was not sent."""

    def __init__(self, age_seconds: float, limit_seconds: float) -> None:
        self.age_seconds = age_seconds
        self.limit_seconds = limit_seconds
        super().__init__(f"the claim is {age_seconds:.3f} s old, more than MAX_CLAIM_AGE "
                         f"({limit_seconds:g} s); the order was not sent")


class DeadlineLookup:
    """A MarketLookup that refuses, after the listing is at hand, once the deadline has passed."""

    def __init__(self, markets: MarketLookup) -> None:
        self._markets = markets

    def __call__(self, market: str) -> Market:
        listing = self._markets(market)  # may refresh the catalog: before the check, not after
        claim = _claim.get()
        if claim is not None:
            claimed_at, max_age = claim
            age = time.monotonic() - claimed_at
            if age > max_age:
                raise ClaimTooOld(age, max_age)
        return listing

    @staticmethod
    @contextmanager
    def deadline(claimed_at: float, max_age: float) -> Iterator[None]:
        """Orders placed inside may be sent until `claimed_at + max_age` (monotonic seconds)."""
        token = _claim.set((claimed_at, max_age))
        try:
            yield
        finally:
            _claim.reset(token)
