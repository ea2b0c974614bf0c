"""record_exchange_orders (the reconciler's orphan sweep) and the state machine's one way out of a
final state, at the database: what each kind of order records, what it leaves alone, invalid input,
the backstops (triggers) for whoever bypasses the RPC, and concurrent sweeps counted."""

from __future__ import annotations

import uuid
from decimal import Decimal
from typing import Any

import psycopg
import pytest
from psycopg import errors
from psycopg.types.json import Jsonb

from tests.pg import Database
from tests.test_execution_support import (
    _module_db_fixture,  # noqa: F401 - one database per module
    _shared_db_fixture,  # noqa: F401
    api,
    claimed,
    race,
    record,
    scalar,
    sql,
    trader,
)


def sweep(db: Database, *orders: dict[str, Any],
          conn: psycopg.Connection[Any] | None = None) -> dict[str, Any]:
    answer: dict[str, Any] = db.rpc("record_exchange_orders", conn=conn or api(db),
                                    p_orders=Jsonb(list(orders)))
    return answer


def order(execution: dict[str, Any] | None, *, status: str = "filled", filled: str = "0.0002",
          quote: str = "10", exchange_status: str | None = "filled",
          order_id: str | None = None, market: str | None = None) -> dict[str, Any]:
    """An order as the sweep sends it; `execution` None: an order no execution knows."""
    result: dict[str, Any] = {"status": status, "exchange_order_id": order_id or str(uuid.uuid4()),
                              "filled_amount": filled, "filled_amount_quote": quote,
                              "fee_paid": "0.025", "fee_currency": "EUR"}
    if Decimal(filled) == 0:
        result.update(filled_amount_quote="0", fee_paid="0")
    return {"market": market or (execution["market"] if execution else "BTC-EUR"),
            "exchange_order_id": result["exchange_order_id"],
            "client_order_id": execution["client_order_id"] if execution else str(uuid.uuid4()),
            "side": "buy", "exchange_status": exchange_status, "result": result}


def execution_row(db: Database, execution_id: str) -> dict[str, Any]:
    with db.connect() as conn:
        cur = conn.execute("select * from public.trade_executions where id = %s", (execution_id,))
        names = [c.name for c in cur.description or []]
        row = cur.fetchone()
        assert row is not None
        return dict(zip(names, row, strict=True))


def failed_execution(db: Database) -> dict[str, Any]:
    execution = claimed(db, trader(db))
    assert record(db, execution["id"], status="failed",
                  error_code="not_found_at_exchange")["outcome"] == "updated"
    return execution


def proposal_status(db: Database, execution: dict[str, Any]) -> str:
    return str(scalar(db, "select status from public.trade_proposals where id = %s",
                      (execution["proposal_id"],)))


def test_a_failed_execution_the_exchange_filled_is_corrected_with_its_ledger_row_and_proposal(
        db: Database) -> None:
    execution = failed_execution(db)
    filled = order(execution)
    answer = sweep(db, filled)
    assert (answer["corrected"], answer["discrepancies"], answer["examined"]) == (1, 1, 1), answer
    row = execution_row(db, execution["id"])
    assert row["status"] == "filled" and row["corrected_at"] is not None
    assert row["filled_amount"] == Decimal("0.0002") and row["price"] == Decimal("50000")
    assert row["exchange_order_id"] == filled["exchange_order_id"]
    assert scalar(db, "select count(*) from public.trade_history where execution_id = %s",
                  (execution["id"],)) == 1
    assert proposal_status(db, execution) == "executed"
    again = sweep(db, filled)
    assert (again["matched"], again["corrected"], again["discrepancies"]) == (1, 0, 0), again


@pytest.mark.parametrize(("recorded", "exchange", "kind"), [
    ("failed", ("canceled", "0", "expired"), "execution_contradicted"),  # placed: not "never"
    ("failed", ("rejected", "0", "rejected"), None),                      # never on the book
    ("canceled", ("canceled", "0", "canceled"), None),
    ("canceled", ("partially_filled", "0.0001", "canceled"), "execution_contradicted"),
    ("filled", ("filled", "0.0002", "filled"), None),
    ("filled", ("filled", "0.0003", "filled"), "figures_differ"),        # never rewritten
])
def test_what_the_sweep_records_for_each_final_execution(
        db: Database, recorded: str, exchange: tuple[str, str, str], kind: str | None) -> None:
    execution = claimed(db, trader(db))
    order_id = str(uuid.uuid4())
    figures = {"exchange_order_id": order_id}
    if recorded == "filled":
        figures.update(filled_amount="0.0002", filled_amount_quote="10")
    assert record(db, execution["id"], status=recorded, **figures)["outcome"] == "updated"
    before = execution_row(db, execution["id"])
    status, filled, exchange_status = exchange
    answer = sweep(db, order(execution, status=status, filled=filled,
                             exchange_status=exchange_status, order_id=order_id))
    rows = sql(db, "select kind from private.exchange_discrepancies where execution_id = %s",
               (execution["id"],))
    assert [r[0] for r in rows] == ([kind] if kind else [])
    after = execution_row(db, execution["id"])
    if kind == "execution_contradicted":
        assert answer["corrected"] == 1 and after["status"] == status
    else:
        assert answer["corrected"] == 0
        assert {k: v for k, v in after.items() if k != "updated_at"} == \
            {k: v for k, v in before.items() if k != "updated_at"}


def test_an_order_with_no_execution_is_an_orphan_and_writes_nothing_else(db: Database) -> None:
    ledger = scalar(db, "select count(*) from public.trade_history")
    orphan = order(None)
    answer = sweep(db, orphan, {**order(None), "client_order_id": None})
    assert (answer["orphans"], answer["discrepancies"]) == (2, 2), answer
    assert scalar(db, "select count(*) from public.trade_history") == ledger
    again = sweep(db, orphan)
    assert (again["orphans"], again["known"]) == (0, 1), again
    # Another market's execution with the same clientOrderId is not this order's.
    execution = claimed(db, trader(db))
    assert sweep(db, order(execution, market="ETH-EUR"))["orphans"] == 1


def test_an_open_execution_is_left_to_the_reconciler(db: Database) -> None:
    execution = claimed(db, trader(db))
    answer = sweep(db, order(execution))
    assert (answer["open"], answer["discrepancies"]) == (1, 0), answer
    assert execution_row(db, execution["id"])["status"] == "claimed"


@pytest.mark.parametrize("orders", [
    {"market": "BTC-EUR"},                                              # not an array
    [1],
    [{"market": "btc-eur", "exchange_order_id": "1", "result": {"status": "filled"}}],
    [{"market": "BTC-EUR", "result": {"status": "canceled"}}],          # no order id
    [{"market": "BTC-EUR", "exchange_order_id": "1", "result": {"status": "canceled"}, "x": 1}],
    [{"market": "BTC-EUR", "exchange_order_id": "1", "result": {"status": "failed"}}],
    [{"market": "BTC-EUR", "exchange_order_id": "1",
      "result": {"status": "filled", "filled_amount": "1"}}],           # a fill without its quote
    [{"market": "BTC-EUR", "exchange_order_id": "1", "side": "long",
      "result": {"status": "canceled"}}],
])
def test_invalid_input_is_22023_and_records_nothing(db: Database, orders: Any) -> None:
    before = scalar(db, "select count(*) from private.exchange_discrepancies")
    with pytest.raises(psycopg.Error) as caught:
        db.rpc("record_exchange_orders", p_orders=Jsonb(orders))
    assert caught.value.sqlstate == "22023"
    assert scalar(db, "select count(*) from private.exchange_discrepancies") == before


def test_the_backstops_refuse_a_correction_outside_the_rpc(db: Database) -> None:
    execution = failed_execution(db)
    attempts = [
        # a final execution moved without saying it is a correction
        "update public.trade_executions set status = 'filled', filled_amount = 1, "
        "filled_amount_quote = 1, price = 1 where id = %(id)s",
        # a correction to something the exchange cannot report
        "update public.trade_executions set status = 'rejected', corrected_at = now() "
        "where id = %(id)s",
        # the proposal of a never-corrected execution brought back
        "update public.trade_proposals set status = 'executed' where id = %(proposal)s",
    ]
    for statement in attempts:
        with db.connect(autocommit=False) as conn, pytest.raises(psycopg.Error) as caught:
            conn.execute(statement, {"id": execution["id"], "proposal": execution["proposal_id"]})
        assert caught.value.sqlstate == "42501", (statement, caught.value)
    filled = claimed(db, trader(db))
    record(db, filled["id"], status="filled", filled_amount="1", filled_amount_quote="10")
    with db.connect(autocommit=False) as conn, pytest.raises(errors.InsufficientPrivilege):
        conn.execute("update public.trade_executions set status = 'canceled', corrected_at = now() "
                     "where id = %s", (filled["id"],))  # a counted one is never "corrected"
    sweep(db, order(execution))
    for statement in ("update public.trade_executions set corrected_at = now() where id = %(id)s",
                      "update private.exchange_discrepancies set facts = '{}' "
                      "where execution_id = %(id)s",
                      "delete from private.exchange_discrepancies where execution_id = %(id)s"):
        with db.connect(autocommit=False) as conn, \
                pytest.raises(errors.InsufficientPrivilege):
            conn.execute(statement, {"id": execution["id"]})


def test_concurrent_sweeps_of_one_contradicted_execution_correct_it_once(db: Database) -> None:
    workers = 8
    execution = failed_execution(db)
    filled = order(execution)
    answers = race(db, workers, lambda conn, _: sweep(db, filled, conn=conn))
    assert sum(a["corrected"] for a in answers) == 1, answers
    assert sum(a["known"] + a["matched"] for a in answers) == workers - 1, answers
    assert scalar(db, "select count(*) from public.trade_history where execution_id = %s",
                  (execution["id"],)) == 1
    assert scalar(db, "select count(*) from private.exchange_discrepancies "
                      "where execution_id = %s", (execution["id"],)) == 1
    assert scalar(db, "select count(*) from public.execution_audit_log where execution_id = %s "
                      "and event = 'exchange.discrepancy'", (execution["id"],)) == 1


def test_acknowledging_a_discrepancy_once_with_a_note(db: Database) -> None:
    sweep(db, order(None, order_id="ack-me"))
    [[discrepancy_id]] = sql(db, "select id from private.exchange_discrepancies "
                                 "where exchange_order_id = 'ack-me'")
    with pytest.raises(psycopg.Error) as caught:
        db.rpc("acknowledge_exchange_discrepancy", p_discrepancy_id=discrepancy_id, p_note=" ")
    assert caught.value.sqlstate == "22023"
    first = db.rpc("acknowledge_exchange_discrepancy", p_discrepancy_id=discrepancy_id,
                   p_note="placed by hand by the operator; booked elsewhere")
    second = db.rpc("acknowledge_exchange_discrepancy", p_discrepancy_id=discrepancy_id,
                    p_note="again")
    missing = db.rpc("acknowledge_exchange_discrepancy", p_discrepancy_id=uuid.uuid4(),
                     p_note="x")
    assert (first["outcome"], second["outcome"], missing["outcome"]) == \
        ("acknowledged", "already_acknowledged", "not_found")
    assert scalar(db, "select count(*) from public.execution_audit_log "
                      "where event = 'exchange.discrepancy_acknowledged' "
                      "and detail ->> 'discrepancy_id' = %s", (str(discrepancy_id),)) == 1
