"""trading_execute end to end in paper mode (the default): no trade key, fills simulated at the
sandbox's public ticker price with Bitvavo's taker fee, sized exactly as live orders are; every
validator's refusal as a client sees it; a paper order lost with its process; the numbers.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import httpx
import pytest

from tests.execute_harness import (
    MARKET,
    SECRETS,
    Stack,
    measure_executions,
    proposal,
    served,
    trader,
)
from tests.pg import Database
from tests.sandbox_server import SandboxServer
from tests.test_execution_support import (
    _module_db_fixture,  # noqa: F401 - one database per module
    allow_user_market,
    backdate,
    claim,
)


@pytest.fixture(scope="module")
def stack(module_db: Database, bitvavo_sandbox_session: SandboxServer) -> Iterator[Stack]:
    with served(module_db, bitvavo_sandbox_session, "paper") as served_stack:
        yield served_stack


def test_paper_mode_needs_no_trade_key_and_fills_at_the_ticker_with_the_taker_fee(
        stack: Stack, bitvavo_sandbox: SandboxServer) -> None:
    user = trader(stack.db)
    proposal_id = proposal(stack.db, user, amount="10.123456789")
    ticker = Decimal(httpx.get(f"{bitvavo_sandbox.rest_url}/ticker/price",
                               params={"market": MARKET}).json()["price"])
    response = stack.execute(proposal_id, user_id=user)
    assert response.status_code == 201, response.text
    execution = response.json()["execution"]
    assert execution["mode"] == "paper" and execution["status"] == "filled"
    amount, quote = Decimal(execution["filled_amount"]), Decimal(execution["filled_amount_quote"])
    fee = Decimal(execution["fee_paid"])
    price = quote / amount
    assert abs(price - ticker) / ticker < Decimal("0.01")  # the ticker of that moment
    assert fee == (quote * Decimal("0.0025")).quantize(Decimal("1e-8"), rounding="ROUND_UP")
    # Quantized like a live order: 10.12 EUR at most, fee included, 8 decimals of BTC.
    assert quote + fee <= Decimal("10.12") and amount == amount.quantize(Decimal("1e-8"))
    assert quote + fee > Decimal("10.12") - price * Decimal("1e-8") * 2
    assert bitvavo_sandbox.orders() == []  # paper never posts an order
    [ledger] = stack.history(execution["id"])
    assert ledger["mode"] == "paper" and ledger["fee_paid"] == fee
    assert stack.proposal_status(proposal_id) == "executed"


# -- the seven validators, as 422 ----------------------------------------------------------------
def _allowlist(db: Database) -> tuple[uuid.UUID, uuid.UUID]:
    user = trader(db)
    allow_user_market(db, user, MARKET, enabled=False)
    return user, proposal(db, user)


def _proposal_state(db: Database) -> tuple[uuid.UUID, uuid.UUID]:
    user = trader(db)
    return user, proposal(db, user, approve=False)


def _order_limits(db: Database) -> tuple[uuid.UUID, uuid.UUID]:
    user = trader(db, max_order_quote=Decimal(20))
    return user, proposal(db, user, amount="30")


def _cooldown(stack: Stack) -> tuple[uuid.UUID, uuid.UUID]:
    user = trader(stack.db, cooldown_seconds=3600)
    assert stack.execute(proposal(stack.db, user), user_id=user).status_code == 201
    return user, proposal(stack.db, user)


def _anti_flip(stack: Stack) -> tuple[uuid.UUID, uuid.UUID]:
    user = trader(stack.db, anti_flip_seconds=86400)
    assert stack.execute(proposal(stack.db, user), user_id=user).status_code == 201
    return user, proposal(stack.db, user, side="sell")


def _daily_limits(stack: Stack) -> tuple[uuid.UUID, uuid.UUID]:
    user = trader(stack.db, max_trades_per_day=1)
    assert stack.execute(proposal(stack.db, user), user_id=user).status_code == 201
    return user, proposal(stack.db, user)


def _trading_enabled(db: Database) -> tuple[uuid.UUID, uuid.UUID]:
    user = trader(db)
    proposal_id = proposal(db, user)
    from tests.test_execution_support import set_settings
    set_settings(db, user, trading_enabled=False)
    return user, proposal_id


VALIDATORS: dict[str, Any] = {
    "allowlist": lambda stack: _allowlist(stack.db),
    "proposal_state": lambda stack: _proposal_state(stack.db),
    "order_limits": lambda stack: _order_limits(stack.db),
    "cooldown": _cooldown,
    "anti_flip": _anti_flip,
    "daily_limits": _daily_limits,
    "trading_enabled": lambda stack: _trading_enabled(stack.db),
}


@pytest.mark.parametrize("check", list(VALIDATORS))
def test_each_validator_refusal_is_422_with_failed_checks_and_nothing_claimed(
        stack: Stack, check: str) -> None:
    user, proposal_id = VALIDATORS[check](stack)
    response = stack.execute(proposal_id, user_id=user)
    assert response.status_code == 422, response.text
    document = response.json()
    assert response.headers["content-type"] == "application/problem+json"
    assert document["type"] == "/problems/rejected"
    assert [entry["check"] for entry in document["failed_checks"]] == [check]
    assert document["failed_checks"][0]["reason"]
    assert stack.execution(proposal_id) is None


# -- paper orders live in the process --------------------------------------------------------------
def test_a_paper_execution_left_by_a_lost_process_becomes_failed_once_old_enough(
        stack: Stack) -> None:
    # What a process that claimed and died (or another instance) leaves behind: a claim whose
    # paper order exists in nobody's memory.
    user = trader(stack.db)
    proposal_id = proposal(stack.db, user)
    orphan = claim(stack.db, user, proposal_id)["execution"]
    assert orphan["status"] == "claimed"
    counts = stack.reconcile()
    assert counts["still_open"] >= 1 and counts["failed"] == 0  # too young to call it
    backdate(stack.db, orphan["id"], 136)  # MAX_CLAIM_AGE 5 + window 10 + margin 120
    counts = stack.reconcile()
    assert counts["failed"] >= 1, counts
    execution = stack.execution(proposal_id)
    assert execution is not None and execution["status"] == "failed"
    assert execution["error_code"] == "not_found_at_exchange"
    assert stack.proposal_status(proposal_id) == "failed"


def test_a_live_execution_is_skipped_by_a_paper_process(stack: Stack) -> None:
    from tests.test_execution_support import set_controls
    user = trader(stack.db, live=True)
    proposal_id = proposal(stack.db, user)
    set_controls(stack.db, live_trading_allowed=True)
    try:
        live = claim(stack.db, user, proposal_id, mode="live")["execution"]
    finally:
        set_controls(stack.db, live_trading_allowed=False)
    backdate(stack.db, live["id"], 3600)
    assert stack.reconcile()["skipped"] >= 1
    assert stack.execution(proposal_id)["status"] == "claimed"  # type: ignore[index]
    stack.db.query("update public.trade_executions set status = 'failed', "
                   "completed_at = now() where id = %s", (live["id"],))  # out of later runs' way


# -- numbers ---------------------------------------------------------------------------------------
def test_latency_and_database_round_trips_of_one_paper_execution(stack: Stack) -> None:
    user = trader(stack.db)
    latency = measure_executions(stack, user)
    print(f"\npaper execution: {latency}")
    assert latency.round_trips == 2  # claim_trade_execution + record_execution_result
    assert stack.proxy.unparsed_connections == 0  # counted from the PostgreSQL protocol


def test_no_secret_in_any_log_line_or_response_of_this_module(stack: Stack) -> None:
    user = trader(stack.db)
    assert stack.execute(proposal(stack.db, user), user_id=user).status_code == 201
    stack.reconcile()
    logs = stack.fn.logs()
    assert '"step":"record"' in logs
    for name, value in SECRETS.items():
        assert value not in logs, f"{name} leaked into the function's log"
        for answer in stack.answers:
            assert value not in answer, f"{name} leaked into a response"
