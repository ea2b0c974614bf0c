"""How big a scan's proposal is: the room the user's limits leave, decided before any oracle runs.

The rule, the same for every oracle: propose the largest order the user's limits allow right now —

    amount_quote = min(max_order_quote, daily_remaining_quote), rounded down to the cent

where max_order_quote is the smallest cap that is set (the user's `max_order_quote`, their
allowlist row's, the market's, the system's) and daily_remaining_quote is the user's
`max_daily_quote` minus today's (UTC) counting executions in this trading mode — the figures
claim_trade_execution's `order_limits` and `daily_limits` validators read, from one RPC
(get_scan_context). No room (a cap below the market minimum, the daily amount or trade count used
up, no cap configured) means no proposal and no oracle call: nothing is spent on a scan whose
proposal could not be executed. An oracle never sizes an order; it only picks the side.

The validators stay the authority: they run again, in one transaction with the claim, when the
proposal is executed (limits may change in between).
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_DOWN, Decimal
from typing import Any

CENT = Decimal("0.01")


@dataclass(frozen=True)
class OrderRoom:
    """The room for the next order, or why there is none (`amount_quote` None, `reason` set)."""

    amount_quote: Decimal | None
    reason: str
    min_order_quote: Decimal | None = None
    max_order_quote: Decimal | None = None
    daily_remaining_quote: Decimal | None = None

    @property
    def has_room(self) -> bool:
        return self.amount_quote is not None


def _decimal(value: Any) -> Decimal | None:
    if value is None:
        return None
    if isinstance(value, float):
        raise TypeError("money is never a float")
    return Decimal(value)


def order_room(sizing: dict[str, Any]) -> OrderRoom:
    """The room described by get_scan_context's `sizing` object."""
    minimum = _decimal(sizing.get("min_order_quote"))
    cap = _decimal(sizing.get("max_order_quote"))
    remaining = _decimal(sizing.get("daily_remaining_quote"))
    trades_left = sizing.get("trades_left_today")
    figures = {"min_order_quote": minimum, "max_order_quote": cap,
               "daily_remaining_quote": remaining}
    if minimum is None:
        return OrderRoom(None, "the market is not in the global allowlist", **figures)
    if cap is None:
        return OrderRoom(None, "no maximum order size is configured", **figures)
    if trades_left is not None and Decimal(trades_left) <= 0:
        return OrderRoom(None, "today's trade count is used up (max_trades_per_day)", **figures)
    amount = cap if remaining is None else min(cap, remaining)
    amount = amount.quantize(CENT, rounding=ROUND_DOWN)
    if amount < minimum:
        limit = ("today's remaining amount (max_daily_quote)"
                 if remaining is not None and remaining < cap
                 else str(sizing.get("max_order_source") or "the maximum order size"))
        return OrderRoom(None, f"{limit} leaves {amount} EUR, below the market minimum of "
                               f"{minimum} EUR", **figures)
    source = ("today's remaining amount (max_daily_quote)" if remaining is not None
              and remaining < cap else str(sizing.get("max_order_source") or "your limits"))
    return OrderRoom(amount, f"{amount} EUR, the most {source} allows", **figures)
