"""The account's orders and fills, read once per /reconcile (live mode): the search that comes
before `failed`, and the orphan sweep (G9, G10).

    history = read_history(step, trade, windows)      # GET /orders + GET /trades per market
    history.find(market, client_order_id)             # an order GET /order did not find
    sweep(step, runtime, history)                     # record_exchange_orders: every order → its
                                                      # execution, each discrepancy recorded

Why: Bitvavo documents no lookup of a *completed* order by clientOrderId (GET /order may answer 240
for an order that filled), nor how late a request received inside its access window may still
execute. So "GET /order does not know it" is never proof on its own: the market's order history
(GET /orders, which lists completed orders with their clientOrderId) and its fills (GET /trades,
each naming its order by both ids) are searched from a minute before the claim on, and an order
found there is recorded as what it is. And whatever /reconcile decided, the sweep matches every
order and fill of the account in RECONCILE_SWEEP_WINDOW_SECONDS (and since the oldest execution
being settled) to its execution by clientOrderId in one RPC, which records any order that has no
execution, or whose execution says otherwise, as what happened (private.exchange_discrepancies).

Each market is read in pages of 1,000, newest first, down to its window's start (weight 5 a page:
both reads together cost 10 per market and run). A market whose pages could not all be read
(rate-limit budget, an error) is `incomplete`: nothing found missing there is declared `failed`.
Orders are keyed by (market, orderId): orderId is unique per market only.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from functools import partial
from typing import Any, TypeVar

from shared.api.steplog import Step
from shared.exchange.errors import ExchangeError
from shared.exchange.models import AccountTrade, Order
from shared.exchange.trade import BitvavoTrade
from shared.execution.results import Result, order_result
from shared.execution.runtime import Runtime
from shared.rpc.errors import RpcError

PAGE = 1000           # rows per GET /orders or GET /trades (Bitvavo's maximum)
MAX_PAGES = 20        # per market and endpoint and run: 20,000 orders
CLOCK_SKEW = timedelta(minutes=1)  # the exchange's clock against the database's, generously
RPC_CHUNK = 5000      # orders per record_exchange_orders call (it takes up to 10,000)

R = TypeVar("R", Order, AccountTrade)


@dataclass(frozen=True)
class OrderFacts:
    """One order of the account as the exchange lists it, and the result it means."""

    market: str
    order_id: str
    client_order_id: str | None
    side: str
    exchange_status: str | None  # None: known from its fills only
    result: Result

    def as_rpc(self) -> dict[str, Any]:
        return {"market": self.market, "exchange_order_id": self.order_id,
                "client_order_id": self.client_order_id, "side": self.side,
                "exchange_status": self.exchange_status, "result": self.result}


@dataclass
class History:
    """What was read: the orders by (market, orderId), which markets were read completely."""

    orders: dict[tuple[str, str], OrderFacts] = field(default_factory=dict)
    complete: set[str] = field(default_factory=set)
    incomplete: set[str] = field(default_factory=set)

    def find(self, market: str, client_order_id: str) -> OrderFacts | None:
        """The newest order of `market` with this clientOrderId (orders are unique by it)."""
        for facts in self.orders.values():
            if facts.market == market and facts.client_order_id == client_order_id:
                return facts
        return None


def windows(executions: Iterable[Mapping[str, Any]], markets: Sequence[str],
            since: datetime | None) -> dict[str, datetime]:
    """Where each market's read starts: the sweep's `since`, or a minute before the oldest claim of
    an execution being searched for on it, whichever is earlier."""
    starts = {market: since for market in markets} if since is not None else {}
    for execution in executions:
        claimed = datetime.fromisoformat(str(execution["claimed_at"])) - CLOCK_SKEW
        market = str(execution["market"])
        starts[market] = min(starts.get(market, claimed), claimed)
    return starts


def read_history(step: Step, trade: BitvavoTrade, starts: Mapping[str, datetime]) -> History:
    """GET /orders and GET /trades of every market from its start on; never raises for the
    exchange (a market that fails is `incomplete`, named in the step)."""
    history = History()
    errors: dict[str, str] = {}
    listed = fills_seen = 0
    for market, start in sorted(starts.items()):
        try:
            orders, orders_complete = _pages(partial(_orders, trade, market), start,
                                             _order_time, _order_key)
            fills, fills_complete = _pages(partial(_fills, trade, market), start,
                                           _fill_time, _fill_key)
        except ExchangeError as error:
            errors[market] = type(error).__name__
            history.incomplete.add(market)
            continue
        listed, fills_seen = listed + len(orders), fills_seen + len(fills)
        for facts in _facts(market, orders, fills):
            history.orders[(market, facts.order_id)] = facts
        (history.complete if orders_complete and fills_complete else history.incomplete).add(market)
        if not (orders_complete and fills_complete):
            errors[market] = f"more than {MAX_PAGES * PAGE} rows"
    step.set(markets=len(starts), orders=listed, fills=fills_seen,
             incomplete=sorted(history.incomplete) or None, history_errors=errors or None,
             severity="WARNING" if errors else None)
    return history


def sweep(step: Step, runtime: Runtime, history: History) -> Counter[str]:
    """record_exchange_orders over everything read; the counts /reconcile adds to its answer."""
    counts: Counter[str] = Counter()
    facts = sorted(history.orders.values(), key=lambda f: (f.market, f.order_id))
    answers: list[Mapping[str, Any]] = []
    try:
        for chunk in range(0, len(facts), RPC_CHUNK):
            answers.append(runtime.rpc.call("record_exchange_orders", {
                "p_orders": [f.as_rpc() for f in facts[chunk:chunk + RPC_CHUNK]]}))
    except RpcError as error:
        step.set("errors", severity="ERROR", error=type(error).__name__, error_code=error.code)
        counts["errors"] += 1
    for answer in answers:
        for key in ("orphans", "corrected", "discrepancies"):
            counts[key] += int(answer.get(key) or 0)
        counts["swept"] += int(answer.get("examined") or 0)
    new = counts["discrepancies"]
    step.set("discrepancies" if new else "ok", swept=counts["swept"], orphans=counts["orphans"],
             corrected=counts["corrected"], discrepancies=new,
             severity="ERROR" if new or counts["errors"] else None)
    return counts


def fills_result(order_id: str, fills: Sequence[AccountTrade], *, final: bool) -> Result:
    """What an order's fills alone say (its order row was not listed): what filled, no more —
    `partially_filled` once nothing can change any more, `submitted` with the figures before."""
    amount = sum((f.amount for f in fills), Decimal(0))
    quote = sum((f.amount * f.price for f in fills), Decimal(0))
    fee = sum((f.fee or Decimal(0) for f in fills), Decimal(0))
    result: Result = {"status": "partially_filled" if final else "submitted",
                      "exchange_order_id": order_id, "filled_amount": amount,
                      "filled_amount_quote": quote, "fee_paid": fee}
    currency = next((f.fee_currency for f in fills if f.fee_currency), None)
    if currency:
        result["fee_currency"] = currency
    return result


# -- helpers --------------------------------------------------------------------------------------
def _pages(fetch: Callable[[datetime, datetime | None], list[R]], start: datetime,
           stamp: Callable[[R], datetime | None], key: Callable[[R], str]) -> tuple[list[R], bool]:
    """Every row from `start` on, newest first, page by page (each next page ends at the oldest
    time seen, inclusive, so rows of that millisecond are not lost; duplicates are dropped).
    Complete unless MAX_PAGES were needed or one millisecond holds a whole page."""
    rows: dict[str, R] = {}
    end: datetime | None = None
    for _ in range(MAX_PAGES):
        page = fetch(start, end)
        before = len(rows)
        for row in page:
            rows.setdefault(key(row), row)
        if len(page) < PAGE:
            return list(rows.values()), True
        times = [t for t in (stamp(row) for row in page) if t is not None]
        if not times or len(rows) == before or (end is not None and min(times) >= end):
            break
        end = min(times)
    return list(rows.values()), False


def _orders(trade: BitvavoTrade, market: str, start: datetime,
            end: datetime | None) -> list[Order]:
    return trade.orders(market, start=start, end=end, limit=PAGE)


def _fills(trade: BitvavoTrade, market: str, start: datetime,
           end: datetime | None) -> list[AccountTrade]:
    return trade.trades(market, start=start, end=end, limit=PAGE)


def _order_time(order: Order) -> datetime | None:
    return order.created


def _order_key(order: Order) -> str:
    return order.order_id


def _fill_time(fill: AccountTrade) -> datetime | None:
    return fill.timestamp


def _fill_key(fill: AccountTrade) -> str:
    return fill.id


def _facts(market: str, orders: Sequence[Order], fills: Sequence[AccountTrade]) -> list[OrderFacts]:
    listed = {order.order_id for order in orders}
    facts = [OrderFacts(market, order.order_id,
                        str(order.client_order_id) if order.client_order_id else None,
                        order.side, order.status, order_result(order))
             for order in orders]
    unlisted: dict[str, list[AccountTrade]] = {}
    for fill in fills:
        if fill.order_id not in listed:
            unlisted.setdefault(fill.order_id, []).append(fill)
    for order_id, own in unlisted.items():
        coid = next((str(f.client_order_id) for f in own if f.client_order_id), None)
        facts.append(OrderFacts(market, order_id, coid, own[0].side, None,
                                fills_result(order_id, own, final=True)))
    return facts

