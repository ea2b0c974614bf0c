"""G3 key separation: which client plays which role, and what it says when misused.

BitvavoReadonly (scan_scheduler, read-only key or none) reads market data and balances.
BitvavoTrade (trading_execute, trade key) places, reads and cancels orders, nothing else.
PaperTrade has BitvavoTrade's interface without any key. Each client also *has* the other
role's methods, only to refuse them with a message naming the client to use instead.
"""

from __future__ import annotations

import uuid
from decimal import Decimal
from typing import Literal, Protocol

from shared.exchange.errors import KeySeparationError
from shared.exchange.models import Order, OrderCancellation

Side = Literal["buy", "sell"]

READONLY_USE = "use BitvavoReadonly, the read-only client"
TRADE_USE = "use BitvavoTrade in trading_execute"


def refuse_trading(client: str, action: str) -> KeySeparationError:
    return KeySeparationError(f"{client} cannot {action}: {TRADE_USE}")


def refuse_market_data(client: str, action: str) -> KeySeparationError:
    return KeySeparationError(f"{client} cannot {action}: {READONLY_USE}")


class OrderClient(Protocol):
    """What trading_execute needs; BitvavoTrade (live) and PaperTrade (paper) provide it."""

    # G10: `client_order_id` is required (the execution's claim id), so an order whose answer
    # is lost can always be found again; the clients never generate one.

    def place_market_order(
        self,
        market: str,
        side: Side,
        *,
        client_order_id: uuid.UUID | str,
        amount_quote: Decimal | None = None,
        amount: Decimal | None = None,
    ) -> Order: ...

    def get_order(
        self,
        market: str,
        *,
        client_order_id: uuid.UUID | str | None = None,
        order_id: str | None = None,
    ) -> Order: ...

    def cancel_order(
        self,
        market: str,
        *,
        client_order_id: uuid.UUID | str | None = None,
        order_id: str | None = None,
    ) -> OrderCancellation: ...
