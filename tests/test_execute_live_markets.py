"""trading_execute end to end in live mode against what real markets do that a plain order path
does not expect: a market that is halted or in auction, a maximum order size, and a buy that
must leave room for the fee in the free balance. The real functions-framework server, the real
database, the sandbox over real HTTP (tests/execute_harness.py).

The function here reads a market's status at most MARKET_STATUS_TTL below old, and the free
balance whenever a buy could come near it (BALANCE_CACHE_SECONDS=0): the sandbox's markets and
balances change between tests, which a process-lifetime cache would carry from one test into the
next. The defaults (3 s and 10 s) are shared.exchange's unit tests' business.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest

from tests.execute_harness import Stack, proposal, served, trader
from tests.pg import Database
from tests.sandbox_server import SandboxServer
from tests.test_execution_support import (
    _module_db_fixture,  # noqa: F401 - one database per module
    set_controls,
)

MARKET_STATUS_TTL = 0.1  # seconds


@pytest.fixture(scope="module")
def stack(module_db: Database, bitvavo_sandbox_session: SandboxServer) -> Iterator[Stack]:
    set_controls(module_db, live_trading_allowed=True)
    with served(module_db, bitvavo_sandbox_session, "live",
                MARKET_STATUS_TTL_SECONDS=str(MARKET_STATUS_TTL),
                BALANCE_CACHE_SECONDS="0") as served_stack:
        yield served_stack


@pytest.fixture(autouse=True)
def fresh_sandbox(bitvavo_sandbox: SandboxServer) -> SandboxServer:
    """Every test starts with every market trading, default balances and no fault."""
    return bitvavo_sandbox


def set_market(stack: Stack, market: str, **fields: str) -> None:
    """Change the sandbox's listing and let the function's last read of it age out."""
    stack.sandbox.set_market(market, **fields)
    time.sleep(2 * MARKET_STATUS_TTL)


def execute(stack: Stack, market: str, amount: str) -> tuple[uuid.UUID, dict[str, Any]]:
    user = trader(stack.db, market=market, live=True)
    proposal_id = proposal(stack.db, user, market=market, amount=amount)
    response = stack.execute(proposal_id, user_id=user)
    assert response.status_code == 201, response.text
    return proposal_id, response.json()["execution"]


# -- only markets that trade -----------------------------------------------------------------------
@pytest.mark.parametrize("status", ["halted", "auction"])
def test_a_proposal_on_a_market_that_does_not_trade_places_no_order(
        stack: Stack, status: str) -> None:
    """Halted, the sandbox (like Bitvavo) would accept the order and fill it whenever the market
    trades again; in auction it would refuse it. Neither is sent: `failed`, certainly not placed."""
    set_market(stack, "ETH-EUR", status=status)
    proposal_id, execution = execute(stack, "ETH-EUR", "10")
    assert execution["status"] == "failed"
    assert execution["error_code"] == "market_not_trading"
    assert status in execution["error_message"]
    assert execution["submitted_at"] is None
    assert stack.sandbox.orders() == []
    assert stack.proposal_status(proposal_id) == "failed"

    set_market(stack, "ETH-EUR", status="trading")
    _, again = execute(stack, "ETH-EUR", "10")
    assert again["status"] == "filled"
    assert len(stack.sandbox.orders()) == 1


def test_an_order_above_the_markets_maximum_is_failed_and_never_sent(stack: Stack) -> None:
    set_market(stack, "SOL-EUR", maxOrderInQuoteAsset="20")
    proposal_id, execution = execute(stack, "SOL-EUR", "30")
    assert execution["status"] == "failed"
    assert execution["error_code"] == "order_above_maximum"
    assert execution["submitted_at"] is None
    assert stack.sandbox.orders() == []
    assert stack.proposal_status(proposal_id) == "failed"
    _, at_most = execute(stack, "SOL-EUR", "20")
    assert at_most["status"] == "filled"


# -- fee headroom ----------------------------------------------------------------------------------
@pytest.mark.parametrize("fee", ["on_top", "included"])
def test_a_buy_of_the_whole_free_balance_fits_with_the_taker_fee_on_top(
        stack: Stack, fee: str) -> None:
    """Whether Bitvavo takes the fee out of amountQuote or on top is undocumented; the sandbox
    does either. The buy is sized to 40 / 1.0025 = 39.90 and fills both ways; on top, the 40 EUR
    proposal as claimed is refused (216)."""
    stack.sandbox.reset(balances={"EUR": "40"})
    stack.sandbox.set_account(amount_quote_fee=fee)
    proposal_id, execution = execute(stack, "BTC-EUR", "40")
    assert execution["status"] == "filled", execution
    [order] = stack.orders_for(execution["client_order_id"])
    assert order["amountQuote"] == "39.9"
    assert Decimal(execution["fee_paid"]) == Decimal(order["feePaid"])  # as reported
    spent = Decimal(order["filledAmountQuote"]) + Decimal(order["feePaid"])
    assert spent <= Decimal("40")
    assert stack.proposal_status(proposal_id) == "executed"


def test_a_free_balance_below_the_minimum_is_refused_like_the_exchange_and_sends_nothing(
        stack: Stack) -> None:
    stack.sandbox.reset(balances={"EUR": "5.01"})  # 5.01 / 1.0025 = 4.99, below the minimum 5
    proposal_id, execution = execute(stack, "BTC-EUR", "10")
    assert (execution["status"], execution["error_code"]) == ("rejected", "216")
    assert stack.sandbox.orders() == []
    assert stack.proposal_status(proposal_id) == "failed"
