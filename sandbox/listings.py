"""What `/markets` says about a market beyond its fixed definition (market.py): its status and its
maximum order sizes, settable at start (`SANDBOX_MARKETS`) and at run time
(`POST /_sandbox/markets`); `POST /_sandbox/reset` goes back to the start values.

    SANDBOX_MARKETS='{"BTC-EUR": {"status": "halted", "maxOrderInQuoteAsset": "1000"}}'

Statuses, as Bitvavo's support article on market statuses describes them: `trading`; `halted`
(orders are accepted and cancellable but nothing executes until the market trades again);
`auction` (orders are neither accepted nor cancelled). matching.py acts on them.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, replace
from decimal import Decimal, InvalidOperation
from typing import Any

from sandbox.market import MARKETS, Market

TRADING, HALTED, AUCTION = "trading", "halted", "auction"
STATUSES = (TRADING, HALTED, AUCTION)
DEFAULT_MAXIMUM = Decimal("1000000000")  # what Bitvavo lists for most markets (ccxt's sample)
_FIELDS = {"status", "maxOrderInBaseAsset", "maxOrderInQuoteAsset"}


@dataclass(frozen=True)
class Listing:
    status: str = TRADING
    max_base: Decimal = DEFAULT_MAXIMUM
    max_quote: Decimal = DEFAULT_MAXIMUM

    def row(self, spec: Market) -> dict[str, object]:
        """The `/markets` row of `spec` as listed now."""
        return {**spec.listing(), "status": self.status,
                "maxOrderInBaseAsset": str(self.max_base),
                "maxOrderInQuoteAsset": str(self.max_quote)}


def updated(listing: Listing, market: str, spec: dict[str, Any]) -> Listing:
    """`listing` with the fields of `spec` (Bitvavo's names); ValueError naming what is wrong."""
    unknown = sorted(set(spec) - _FIELDS - {"market"})
    if unknown:
        raise ValueError(f"{market}: unknown fields {unknown}; known: {sorted(_FIELDS)}")
    status = spec.get("status", listing.status)
    if status not in STATUSES:
        raise ValueError(f"{market}: status must be one of {', '.join(STATUSES)}")
    return replace(listing, status=status,
                   max_base=_maximum(spec, "maxOrderInBaseAsset", listing.max_base, market),
                   max_quote=_maximum(spec, "maxOrderInQuoteAsset", listing.max_quote, market))


def load_listings(env: Any) -> dict[str, Listing]:
    """Every market's start listing: the defaults, changed by `SANDBOX_MARKETS`."""
    listings = {name: Listing() for name in MARKETS}
    raw = env.get("SANDBOX_MARKETS")
    if not raw:
        return listings
    parsed = json.loads(raw)
    if not isinstance(parsed, dict):
        raise ValueError('SANDBOX_MARKETS must be a JSON object like {"BTC-EUR": {"status": '
                         '"halted"}}')
    for market, spec in parsed.items():
        if market not in listings or not isinstance(spec, dict):
            raise ValueError(f"SANDBOX_MARKETS: {market!r} is not a sandbox market with an "
                             "object of fields")
        try:
            listings[market] = updated(listings[market], market, spec)
        except ValueError as error:
            raise ValueError(f"SANDBOX_MARKETS: {error}") from None
    return listings


class Listings:
    def __init__(self, initial: dict[str, Listing]) -> None:
        self._initial = dict(initial)
        self._current = dict(initial)
        self._lock = threading.Lock()

    def __getitem__(self, market: str) -> Listing:
        with self._lock:
            return self._current[market]

    def set(self, market: str, spec: dict[str, Any]) -> tuple[Listing, Listing]:
        """Change `market`'s listing; returns (before, after)."""
        with self._lock:
            if market not in self._current:
                raise ValueError(f"market must be one of {', '.join(self._current)}")
            before = self._current[market]
            self._current[market] = updated(before, market, spec)
            return before, self._current[market]

    def reset(self) -> None:
        """Back to the start values (the account's orders are reset with them)."""
        with self._lock:
            self._current = dict(self._initial)


def _maximum(spec: dict[str, Any], name: str, default: Decimal, market: str) -> Decimal:
    value = spec.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise ValueError(f'{market}: {name} must be a string like "1000"')
    try:
        number = Decimal(value)
    except InvalidOperation:
        raise ValueError(f'{market}: {name} must be a string like "1000"') from None
    if not number.is_finite() or number <= 0:
        raise ValueError(f"{market}: {name} must be above 0")
    return number
