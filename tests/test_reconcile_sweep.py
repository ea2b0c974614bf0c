"""`failed` means never placed, whatever the exchange does (G10), and every order on the account
maps to an execution (the orphan sweep, G9) — end to end: trading_execute in live mode under the
real functions-framework, the real database, the sandbox exchange over real HTTP.

- an order the exchange executes 45 s after it received it (the sandbox's `latency` fault, held
  until the test releases it instead of a wall-clock wait; the claim's age moved back instead of
  waiting): reconcile keeps it `unknown` past the old 30-s not-found window, the fill is recorded
  when it comes, and no second order goes out inside the user's cooldown meanwhile or after;
- the same, executed after even the not-found window had passed (so it was called `failed`): the
  sweep records the fill against the execution (once, in the ledger too), audits the discrepancy,
  and `oracle verify` / `oracle status` show it until an operator acknowledges it;
- an order placed on the account behind the backend's back: an orphan, recorded once, audited,
  named by `oracle verify` and `oracle status`;
- a lost answer for a market order that filled at once, which GET /order by clientOrderId does not
  find (as Bitvavo may not find a completed order): found in the account's orders and fills,
  recorded `filled`, never `failed`.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from sandbox.auth import sign
from tests.execute_harness import Stack, proposal, served, trader
from tests.oracle_console import oracle
from tests.pg import Database
from tests.sandbox_server import SandboxServer
from tests.test_execution_support import (
    _module_db_fixture,  # noqa: F401 - one database per module
    backdate,
    set_controls,
)

READ_TIMEOUT_S = 1.5        # the function's exchange read timeout in this module
FAILED_AFTER_S = 135        # MAX_CLAIM_AGE 5 + access window 10 + RECONCILE_MARGIN 120 (defaults)
TODAYS_NOT_FOUND_S = 32     # what the old 30-s window called failed, as the issue reproduced it
LATE_MS = 45_000            # the reproduction's latency: the exchange executes 45 s late
COOLDOWN_S = 3600


@pytest.fixture(scope="module")
def stack(module_db: Database, bitvavo_sandbox_session: SandboxServer) -> Iterator[Stack]:
    set_controls(module_db, live_trading_allowed=True)
    with served(module_db, bitvavo_sandbox_session, "live",
                EXCHANGE_TIMEOUT_SECONDS=str(READ_TIMEOUT_S)) as served_stack:
        yield served_stack


@pytest.fixture(autouse=True)
def fresh_sandbox(bitvavo_sandbox: SandboxServer) -> SandboxServer:
    return bitvavo_sandbox


def wait_for(condition: Any, timeout: float = 10.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def held_order(stack: Stack, user: uuid.UUID, proposal_id: uuid.UUID) -> dict[str, Any]:
    """Execute with the exchange holding the order (received, authenticated, not yet executed):
    the client's read timeout answers 202 unknown; the order is nowhere yet."""
    stack.sandbox.set_fault(fault="latency", latency_ms=LATE_MS + 30_000, hold=True)
    response = stack.execute(proposal_id, user_id=user)
    assert response.status_code == 202, response.text
    execution = response.json()["execution"]
    assert execution["status"] == "unknown"
    assert stack.sandbox.held() == 1 and stack.sandbox.orders() == []
    return execution


def release(stack: Stack, client_order_id: str) -> None:
    assert stack.sandbox.release_held() == 1
    wait_for(lambda: stack.orders_for(client_order_id), what="the late order at the sandbox")


def audit_events(stack: Stack, execution_id: str) -> list[tuple[str, Any]]:
    return [(r["event"], r["detail"]) for r in stack.rows(
        "select event, detail from public.execution_audit_log where execution_id = %s order by id",
        (execution_id,))]


def discrepancies(stack: Stack, **where: Any) -> list[dict[str, Any]]:
    clause = " and ".join(f"d.{name} = %({name})s" for name in where) or "true"
    return stack.rows("select * from private.exchange_discrepancies d "  # noqa: S608 - test names
                      f"where {clause} order by d.detected_at", where)


def verify(capsys: pytest.CaptureFixture[str], stack: Stack) -> tuple[int, str]:
    run = oracle(capsys, "verify", "--check", "exchange_orders",
                 env={"DATABASE_URL": stack.db.url})
    return run.code, run.out


def status_json(capsys: pytest.CaptureFixture[str], stack: Stack) -> dict[str, Any]:
    run = oracle(capsys, "--db-url", stack.db.url, "status", "--json")
    assert run.code == 0, run.err
    return dict(run.json)


def acknowledge_all(stack: Stack) -> None:
    for row in stack.rows("select id from private.exchange_discrepancies "
                          "where acknowledged_at is null"):
        answer = stack.rows("select public.acknowledge_exchange_discrepancy(%s, 'test: handled') "
                            "as a", (row["id"],))[0]["a"]
        assert answer["outcome"] == "acknowledged", answer


# -- (a) the reproduction: the exchange executes 45 s late --------------------------------
def test_an_order_executed_45_s_late_is_recorded_filled_and_no_second_order_in_the_cooldown(
        stack: Stack) -> None:
    user = trader(stack.db, live=True, cooldown_seconds=COOLDOWN_S)
    first = proposal(stack.db, user)
    execution = held_order(stack, user, first)
    coid = execution["client_order_id"]
    # The claim is as old as when the old reconciler called it failed; the exchange still holds it.
    backdate(stack.db, execution["id"], TODAYS_NOT_FOUND_S)
    counts = stack.reconcile()
    assert counts["failed"] == 0 and counts["still_open"] >= 1, counts
    assert stack.execution(first)["status"] == "unknown"  # type: ignore[index]
    # Still unknown, so still counting: a second proposal on the market inside the cooldown.
    second = proposal(stack.db, user)
    refused = stack.execute(second, user_id=user)
    assert refused.status_code == 422, refused.text
    assert [c["check"] for c in refused.json()["failed_checks"]] == ["cooldown"]

    release(stack, coid)  # the exchange executes it, 45 s after it received it
    counts = stack.reconcile()
    assert counts["settled"] >= 1 and counts["discrepancies"] == 0, counts
    settled = stack.execution(first)
    assert settled is not None and settled["status"] == "filled"
    assert len(stack.history(settled["id"])) == 1
    assert stack.proposal_status(first) == "executed"
    assert not [e for e, d in audit_events(stack, settled["id"])
                if e == "execution.status_changed" and d["to"] == "failed"]
    # And after the fill: the cooldown holds, nothing else was sent.
    third = proposal(stack.db, user)
    assert stack.execute(third, user_id=user).status_code == 422
    assert [o["clientOrderId"] for o in stack.sandbox.orders()] == [coid]


# -- the same, executed after even the not-found window: the sweep records what happened ----------
def test_a_failed_execution_the_exchange_fills_later_is_corrected_once_audited_and_fails_verify(
        stack: Stack, capsys: pytest.CaptureFixture[str]) -> None:
    user = trader(stack.db, live=True, cooldown_seconds=COOLDOWN_S)
    first = proposal(stack.db, user)
    execution = held_order(stack, user, first)
    coid = execution["client_order_id"]
    backdate(stack.db, execution["id"], FAILED_AFTER_S + 1)
    counts = stack.reconcile()
    assert counts["failed"] >= 1, counts  # searched everywhere, long past its window: not placed
    assert stack.execution(first)["status"] == "failed"  # type: ignore[index]
    assert stack.proposal_status(first) == "failed"

    release(stack, coid)  # the exchange breaks the assumption: it executes it now
    counts = stack.reconcile()
    assert (counts["corrected"], counts["discrepancies"], counts["orphans"]) == (1, 1, 0), counts
    corrected = stack.execution(first)
    assert corrected is not None and corrected["status"] == "filled"
    assert corrected["corrected_at"] is not None
    assert corrected["error_code"] == "exchange_contradicted"
    [order] = stack.orders_for(coid)
    assert corrected["exchange_order_id"] == order["orderId"]
    assert str(corrected["filled_amount"]) == order["filledAmount"]
    [ledger] = stack.history(corrected["id"])
    assert str(ledger["amount_quote"]) == order["filledAmountQuote"]
    assert stack.proposal_status(first) == "executed"
    [row] = discrepancies(stack, execution_id=corrected["id"])
    assert (row["kind"], row["execution_status"], row["recorded_status"]) == \
        ("execution_contradicted", "failed", "filled")
    events = audit_events(stack, corrected["id"])
    changes = [(d["from"], d["to"]) for e, d in events if e == "execution.status_changed"]
    assert changes[-2:] == [("unknown", "failed"), ("failed", "filled")]
    assert [d["kind"] for e, d in events if e == "exchange.discrepancy"] == \
        ["execution_contradicted"]

    # Recorded once: the next sweeps see it as it is.
    again = stack.reconcile()
    assert (again["corrected"], again["discrepancies"]) == (0, 0), again
    assert len(stack.history(corrected["id"])) == 1 and len(discrepancies(stack)) >= 1
    # The corrected fill counts again: no second order inside the cooldown.
    assert stack.execute(proposal(stack.db, user), user_id=user).status_code == 422

    code, out = verify(capsys, stack)
    assert code != 0 and f"execution {corrected['id']} had been recorded failed" in out
    assert order["orderId"] in out
    shown = status_json(capsys, stack)["discrepancies"]
    assert [d["exchange_order_id"] for d in shown] == [order["orderId"]]
    acknowledge_all(stack)
    assert verify(capsys, stack)[0] == 0


# -- (b) an order placed behind the backend's back ------------------------------------------------
def place_directly(sandbox: SandboxServer, client_order_id: str | None) -> dict[str, Any]:
    """A market order on the account with the trade key, not through trading_execute."""
    body: dict[str, Any] = {"market": "BTC-EUR", "side": "buy", "orderType": "market",
                            "amountQuote": "12", "operatorId": 777}
    if client_order_id is not None:
        body["clientOrderId"] = client_order_id
    raw = json.dumps(body, separators=(",", ":"))
    stamp = int(time.time() * 1000)
    headers = {"Bitvavo-Access-Key": sandbox.trade_key, "Bitvavo-Access-Timestamp": str(stamp),
               "Bitvavo-Access-Signature": sign(sandbox.trade_secret, stamp, "POST", "/order", raw),
               "Bitvavo-Access-Window": "10000", "Content-Type": "application/json"}
    response = httpx.post(sandbox.rest_url + "/order", content=raw, headers=headers, timeout=5)
    assert response.status_code == 200, response.text
    return dict(response.json())


def test_an_order_placed_behind_the_backends_back_is_an_orphan_recorded_once_and_fails_verify(
        stack: Stack, capsys: pytest.CaptureFixture[str]) -> None:
    acknowledge_all(stack)  # what earlier tests left is not this test's
    with_id = place_directly(stack.sandbox, str(uuid.uuid4()))
    without_id = place_directly(stack.sandbox, None)
    audit_before = stack.rows("select count(*) as n from public.execution_audit_log "
                              "where event = 'exchange.discrepancy'")[0]["n"]
    counts = stack.reconcile()
    assert (counts["orphans"], counts["discrepancies"], counts["corrected"]) == (2, 2, 0), counts
    rows = {r["exchange_order_id"]: r for r in discrepancies(stack, kind="orphan_order")}
    for order in (with_id, without_id):
        row = rows[order["orderId"]]
        assert row["execution_id"] is None and row["client_order_id"] == order.get("clientOrderId")
        assert row["exchange_status"] == "filled"
        assert row["facts"]["result"]["filled_amount"] == order["filledAmount"]
    assert stack.rows("select count(*) as n from public.trade_history h where h.execution_id "
                      "not in (select id from public.trade_executions)")[0]["n"] == 0
    audited = stack.rows("select detail from public.execution_audit_log "
                         "where event = 'exchange.discrepancy' order by id")
    assert len(audited) == audit_before + 2
    assert {a["detail"]["exchange_order_id"] for a in audited[-2:]} == \
        {with_id["orderId"], without_id["orderId"]}

    again = stack.reconcile()  # the same window, swept again: nothing new, nothing audited again
    assert (again["orphans"], again["discrepancies"]) == (0, 0), again
    assert stack.rows("select count(*) as n from public.execution_audit_log "
                      "where event = 'exchange.discrepancy'")[0]["n"] == audit_before + 2

    code, out = verify(capsys, stack)
    assert code != 0
    assert f"order {with_id['orderId']} on BTC-EUR (clientOrderId {with_id['clientOrderId']}" in out
    assert f"order {without_id['orderId']} on BTC-EUR (clientOrderId none" in out
    assert "has no execution" in out
    shown = {d["exchange_order_id"] for d in status_json(capsys, stack)["discrepancies"]}
    assert shown == {with_id["orderId"], without_id["orderId"]}
    text = oracle(capsys, "--db-url", stack.db.url, "status").out
    assert "exchange discrepancies" in text and with_id["orderId"] in text
    acknowledge_all(stack)
    assert verify(capsys, stack)[0] == 0


# -- (c) a lost answer, and GET /order by clientOrderId does not find the completed order ---------
def test_a_lost_answer_for_a_filled_order_lookup_cannot_find_is_found_by_the_search_never_failed(
        stack: Stack) -> None:
    user = trader(stack.db, live=True)
    proposal_id = proposal(stack.db, user)
    stack.sandbox.find_completed_by_client_order_id(False)  # as Bitvavo may: open orders only
    stack.sandbox.set_fault(fault="drop_after_accept")
    response = stack.execute(proposal_id, user_id=user)
    assert response.status_code == 202, response.text
    execution = response.json()["execution"]
    [order] = stack.orders_for(execution["client_order_id"])
    assert order["status"] == "filled"
    # Old enough that "not found by clientOrderId" alone would have made it failed.
    backdate(stack.db, execution["id"], FAILED_AFTER_S + 1)
    counts = stack.reconcile()
    settled = stack.execution(proposal_id)
    assert settled is not None and settled["status"] == "filled", (settled, counts)
    assert counts["found_by_search"] == 1 and counts["failed"] == 0, counts
    assert counts["discrepancies"] == 0, counts
    assert settled["exchange_order_id"] == order["orderId"]
    assert str(settled["filled_amount"]) == order["filledAmount"]
    assert len(stack.history(settled["id"])) == 1
    assert stack.proposal_status(proposal_id) == "executed"
    assert len(stack.sandbox.orders()) == 1


def test_concurrent_reconciles_correct_a_late_fill_once(stack: Stack) -> None:
    """Two reconcilers sweep the same contradicted execution at once: one correction, one ledger
    row, one discrepancy, one audit of each."""
    user = trader(stack.db, live=True)
    proposal_id = proposal(stack.db, user)
    execution = held_order(stack, user, proposal_id)
    backdate(stack.db, execution["id"], FAILED_AFTER_S + 1)
    assert stack.reconcile()["failed"] >= 1
    release(stack, execution["client_order_id"])
    with ThreadPoolExecutor(max_workers=2) as pool:
        answers = list(pool.map(lambda _: stack.reconcile(), range(2)))
    assert sum(a["corrected"] for a in answers) == 1, answers
    corrected = stack.execution(proposal_id)
    assert corrected is not None and corrected["status"] == "filled"
    assert len(stack.history(corrected["id"])) == 1
    assert len(discrepancies(stack, execution_id=corrected["id"])) == 1
    events = [e for e, d in audit_events(stack, corrected["id"])
              if e == "exchange.discrepancy" or (e == "execution.status_changed"
                                                 and d["from"] == "failed")]
    assert sorted(events) == ["exchange.discrepancy", "execution.status_changed"]
    acknowledge_all(stack)
