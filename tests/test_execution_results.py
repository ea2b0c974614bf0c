"""record_execution_result: the full transition matrix, no-op repeats, the ledger written exactly
once (also under concurrent identical reports), the proposal following its execution, input
validation; and list_unsettled_executions.

Tests share one database per module (`db`), each with its own user and market; the listing test,
which sees every user's executions, has `fresh_db`."""

from __future__ import annotations

import uuid
from collections import Counter
from datetime import timedelta
from decimal import Decimal
from typing import Any

import psycopg
import pytest
from psycopg.types.json import Jsonb

from tests.pg import Database
from tests.test_execution_support import (  # the database fixtures: db, module_db, fresh_db
    _fresh_db_fixture,  # noqa: F401
    _module_db_fixture,  # noqa: F401
    _shared_db_fixture,  # noqa: F401
    backdate,
    claim,
    claimed,
    propose,
    race,
    record,
    scalar,
    sql,
    trader,
)

STATES = ["claimed", "submitted", "unknown", "filled", "partially_filled", "canceled", "rejected",
          "failed"]
TARGETS = STATES[1:]  # `claimed` is set by claim_trade_execution only
FINAL = {"filled", "partially_filled", "canceled", "rejected", "failed"}
FILLS = {"filled", "partially_filled"}

PAYLOAD: dict[str, dict[str, Any]] = {
    "submitted": {"status": "submitted", "exchange_order_id": "ord-1"},
    "unknown": {"status": "unknown", "error_code": "timeout", "error_message": "read timed out"},
    "filled": {"status": "filled", "exchange_order_id": "ord-1", "filled_amount": "0.0002",
               "filled_amount_quote": "10", "fee_paid": "0.025", "fee_currency": "EUR"},
    "partially_filled": {"status": "partially_filled", "filled_amount": "0.0001",
                         "filled_amount_quote": "5", "fee_paid": 0.0125, "fee_currency": "EUR"},
    "canceled": {"status": "canceled"},
    "rejected": {"status": "rejected", "error_code": 216, "error_message": "Insufficient balance"},
    "failed": {"status": "failed", "error_message": "certainly not placed"},
}


def expected_outcome(origin: str, target: str) -> str:
    """The state machine, written out independently of the SQL."""
    if origin == target:
        return "unchanged"
    if origin == "claimed":
        return "updated"
    if origin in ("submitted", "unknown"):
        return "updated"
    return "illegal_transition"


def execution_in(db: Database, state: str) -> dict[str, Any]:
    """A fresh user's execution brought to `state` through the RPCs."""
    user = trader(db, cooldown_seconds=0, anti_flip_seconds=0)
    execution = claimed(db, user)
    if state != "claimed":
        result = record(db, execution["id"], **PAYLOAD[state])
        assert result["outcome"] == "updated", result
        execution = result["execution"]
    return execution


def proposal_status(db: Database, execution: dict[str, Any]) -> str:
    return scalar(db, "select status from public.trade_proposals where id = %s",
                     (execution["proposal_id"],))


def history_rows(db: Database, execution_id: str) -> list[tuple[Any, ...]]:
    return sql(db, "select amount, amount_quote, price, fee_paid, fee_currency, side, mode, "
                    "executed_at from public.trade_history where execution_id = %s",
                    (execution_id,))


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("origin", STATES)
def test_transition_matrix(db: Database, origin: str, target: str) -> None:
    before = execution_in(db, origin)
    result = record(db, before["id"], **PAYLOAD[target])
    outcome = expected_outcome(origin, target)
    assert result["outcome"] == outcome
    after = result["execution"]
    stored = scalar(db, "select status from public.trade_executions where id = %s", (before["id"],))
    if outcome == "updated":
        assert after["status"] == stored == target
    else:
        assert after == before  # nothing changed, not even updated_at
        assert stored == origin
    final = stored
    expected_proposal = ("executed" if final in FILLS else "failed" if final in FINAL
                         else "executing")
    assert proposal_status(db, before) == expected_proposal
    assert len(history_rows(db, before["id"])) == (1 if final in FILLS else 0)
    if final in FINAL:
        assert after["completed_at"] is not None


def test_repeated_final_result_is_a_no_op(db: Database) -> None:
    execution = execution_in(db, "claimed")
    first = record(db, execution["id"], **PAYLOAD["filled"])
    assert first["outcome"] == "updated"
    again = record(db, execution["id"], **PAYLOAD["filled"])
    assert again["outcome"] == "unchanged"
    assert again["execution"] == first["execution"]
    assert len(history_rows(db, execution["id"])) == 1


def test_different_result_on_final_execution_is_illegal_not_an_error(db: Database) -> None:
    execution = execution_in(db, "filled")
    result = record(db, execution["id"], status="failed", error_message="late")
    assert result["outcome"] == "illegal_transition"
    assert result["execution"]["status"] == "filled"
    assert result["execution"]["error_message"] is None
    assert proposal_status(db, execution) == "executed"


def test_sixteen_concurrent_identical_fill_reports_write_the_ledger_once(db: Database) -> None:
    execution = execution_in(db, "submitted")
    results = race(db, 16, lambda conn, i: record(db, execution["id"], conn=conn,
                                                   **PAYLOAD["filled"]))
    assert Counter(r["outcome"] for r in results) == {"updated": 1, "unchanged": 15}
    assert len(history_rows(db, execution["id"])) == 1
    assert scalar(db, "select count(*) from public.trade_history where proposal_id = %s",
                  (execution["proposal_id"],)) == 1
    assert proposal_status(db, execution) == "executed"


def test_fill_writes_the_ledger_row_with_derived_price(db: Database) -> None:
    execution = execution_in(db, "submitted")
    # The exchange's fill time: a moment after the claim, at whole seconds, whatever today is.
    fill_time = scalar(db, "select date_trunc('second', claimed_at) + interval '1 second' "
                           "from public.trade_executions where id = %s", (execution["id"],))
    result = record(db, execution["id"], status="filled", filled_amount="0.0002",
                    filled_amount_quote="10", fee_paid="0.025", fee_currency="EUR",
                    completed_at=fill_time.strftime("%Y-%m-%dT%H:%M:%SZ"))
    row = result["execution"]
    assert row["price"] == Decimal("50000")
    assert row["exchange_order_id"] == "ord-1"  # from the earlier `submitted` report
    amount, quote, price, fee, currency, side, mode, executed_at = history_rows(
        db, execution["id"])[0]
    assert (amount, quote, price, fee, currency) == (Decimal("0.0002"), Decimal("10"),
                                                      Decimal("50000"), Decimal("0.025"), "EUR")
    assert (side, mode) == ("buy", "paper")
    assert executed_at == fill_time


def test_fill_with_price_only_derives_the_quote_amount(db: Database) -> None:
    execution = execution_in(db, "claimed")
    result = record(db, execution["id"], status="filled", filled_amount="0.5", price="20")
    assert result["execution"]["filled_amount_quote"] == Decimal("10.0")
    assert history_rows(db, execution["id"])[0][1] == Decimal("10.0")


def test_cancel_after_partial_fill_is_an_execution(db: Database) -> None:
    execution = execution_in(db, "submitted")
    result = record(db, execution["id"], status="canceled", filled_amount="0.0001",
                    filled_amount_quote="4.9")
    assert result["outcome"] == "updated"
    assert len(history_rows(db, execution["id"])) == 1
    assert proposal_status(db, execution) == "executed"


def test_cancel_without_fill_fails_the_proposal_without_ledger_row(db: Database) -> None:
    execution = execution_in(db, "submitted")
    assert record(db, execution["id"], status="canceled", filled_amount="0")["outcome"] == \
        "updated"
    assert history_rows(db, execution["id"]) == []
    assert proposal_status(db, execution) == "failed"


def test_timestamps_follow_the_state_machine(db: Database) -> None:
    execution = execution_in(db, "claimed")
    assert execution["submitted_at"] is None and execution["completed_at"] is None
    submitted = record(db, execution["id"], **PAYLOAD["submitted"])["execution"]
    assert submitted["submitted_at"] is not None and submitted["completed_at"] is None
    filled = record(db, execution["id"], **PAYLOAD["filled"])["execution"]
    assert filled["submitted_at"] == submitted["submitted_at"]
    assert filled["completed_at"] is not None
    never_placed = record(db, execution_in(db, "claimed")["id"], **PAYLOAD["failed"])["execution"]
    assert never_placed["submitted_at"] is None
    assert never_placed["completed_at"] is not None


def test_unknown_execution_is_not_found(db: Database) -> None:
    assert record(db, uuid.uuid4(), status="failed") == {"outcome": "not_found", "execution": None}


def test_long_error_message_is_truncated_not_refused(db: Database) -> None:
    execution = execution_in(db, "claimed")
    result = record(db, execution["id"], status="rejected", error_code="205",
                    error_message="x" * 5000)
    assert result["outcome"] == "updated"
    assert len(result["execution"]["error_message"]) == 2000


@pytest.mark.parametrize("result", [
    [],
    "filled",
    {},
    {"status": None},
    {"status": "claimed"},
    {"status": "done"},
    {"status": 3},
    {"status": "filled", "filled_amount": "-1", "filled_amount_quote": "10"},
    {"status": "filled", "filled_amount": -1, "filled_amount_quote": "10"},
    {"status": "filled", "filled_amount": "abc", "filled_amount_quote": "10"},
    {"status": "filled", "filled_amount": "NaN", "filled_amount_quote": "10"},
    {"status": "filled", "filled_amount": "1e5", "filled_amount_quote": "10"},
    {"status": "filled", "filled_amount": True, "filled_amount_quote": "10"},
    {"status": "filled", "filled_amount": {"v": 1}, "filled_amount_quote": "10"},
    {"status": "filled", "filled_amount": "0.1", "filled_amount_quote": "10", "fee_paid": "1,5"},
    {"status": "filled", "filled_amount": "0.1", "filled_amount_quote": "10", "price": "-3"},
    {"status": "filled"},
    {"status": "filled", "filled_amount": "0"},
    {"status": "filled", "filled_amount": "0.1"},
    {"status": "filled", "filled_amount": "0.1", "filled_amount_quote": "0"},
    {"status": "partially_filled", "filled_amount_quote": "10"},
    {"status": "rejected", "filled_amount": "0.1"},
    {"status": "failed", "filled_ammount": "0"},
    {"status": "submitted", "exchange_order_id": ["a"]},
    {"status": "submitted", "exchange_order_id": "x" * 129},
    {"status": "failed", "completed_at": "yesterday"},
    {"status": "failed", "completed_at": "2026-13-45T99:00:00Z"},
])
def test_garbage_results_are_invalid_arguments(db: Database, result: Any) -> None:
    execution = execution_in(db, "claimed")
    with pytest.raises(psycopg.errors.InvalidParameterValue):
        db.rpc("record_execution_result", p_execution_id=execution["id"], p_result=Jsonb(result))
    assert scalar(db, "select status from public.trade_executions where id = %s",
                     (execution["id"],)) == "claimed"


def test_null_arguments_are_invalid(db: Database) -> None:
    execution = execution_in(db, "claimed")
    with pytest.raises(psycopg.errors.InvalidParameterValue):
        db.rpc("record_execution_result", p_execution_id=execution["id"], p_result=None)
    with pytest.raises(psycopg.errors.InvalidParameterValue):
        db.rpc("record_execution_result", p_execution_id=None, p_result=Jsonb({"status": "failed"}))


def test_table_trigger_enforces_the_state_machine_even_for_the_superuser(db: Database) -> None:
    execution = execution_in(db, "filled")
    for statement in (
        "update public.trade_executions set status = 'failed' where id = %s",
        "update public.trade_executions set filled_amount = 1 where id = %s",
        "update public.trade_executions set client_order_id = gen_random_uuid() where id = %s",
        "update public.trade_proposals set status = 'approved' "
        "where id = (select proposal_id from public.trade_executions where id = %s)",
    ):
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            sql(db, statement, (execution["id"],))
    open_execution = execution_in(db, "submitted")
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        sql(db, "update public.trade_executions set status = 'claimed' where id = %s",
                 (open_execution["id"],))


# -- list_unsettled_executions -----------------------------------------------------------------
def test_list_unsettled_returns_open_executions_older_than_the_age_oldest_first(
        fresh_db: Database) -> None:
    db = fresh_db
    rows = {state: execution_in(db, state) for state in STATES}
    for age, state in enumerate(STATES):
        backdate(db, rows[state]["id"], 100 + 10 * age)
    fresh = execution_in(db, "unknown")  # too young
    listed = db.rpc_rows("list_unsettled_executions", p_older_than_seconds=30)
    assert [r["status"] for r in listed] == ["unknown", "submitted", "claimed"]
    assert fresh["id"] not in {str(r["id"]) for r in listed}
    assert [r["claimed_at"] for r in listed] == sorted(r["claimed_at"] for r in listed)
    assert len(db.rpc_rows("list_unsettled_executions", p_older_than_seconds=0)) == 4
    assert len(db.rpc_rows("list_unsettled_executions", p_older_than_seconds=30, p_limit=2)) == 2
    assert len(db.rpc_rows("list_unsettled_executions", p_older_than_seconds=0, p_limit=0)) == 1
    assert len(db.rpc_rows("list_unsettled_executions", p_older_than_seconds=0,
                           p_limit=100000)) == 4
    with pytest.raises(psycopg.errors.InvalidParameterValue):
        db.rpc_rows("list_unsettled_executions", p_older_than_seconds=-1)


# -- a fill is never erased ------------------------------------------------------------------------
# A report of a fill is a fact about money that moved. A later `failed` ("certainly not placed")
# or `rejected` contradicts it, and a later report of a smaller fill contradicts it too: such a
# report is refused (`illegal_transition` with a `reason`), the execution stays open with its fill
# — counted by the validators and listed for the reconciler, which settles it from the exchange's
# own answer (by clientOrderId) with the true final state.
def test_a_late_failed_after_a_reported_fill_is_refused_and_the_fill_stays(db: Database) -> None:
    user = trader(db, cooldown_seconds=3600, anti_flip_seconds=0)
    execution = claimed(db, user)
    partial = record(db, execution["id"], status="submitted", exchange_order_id="ord-f",
                     filled_amount="0.004", filled_amount_quote="200")
    assert partial["outcome"] == "updated"
    for status in ("failed", "rejected"):
        late = record(db, execution["id"], status=status, error_message="late report")
        assert late["outcome"] == "illegal_transition", late
        assert late["reason"] == "fill_recorded"
        assert late["execution"] == partial["execution"]
    row = sql(db, "select status, filled_amount, counts_toward_limits from public.trade_executions "
                  "where id = %s", (execution["id"],))[0]
    assert row == ("submitted", Decimal("0.004"), True)
    assert proposal_status(db, execution) == "executing"
    # The money that moved still counts: a second order 1 s later is inside the cooldown.
    assert claim(db, user, propose(db, user))["failed_checks"][0]["check"] == "cooldown"
    # The reconciler still sees it, and settles it with the exchange's answer.
    backdate(db, execution["id"], 60)
    assert execution["id"] in {str(r["id"]) for r in db.rpc_rows(
        "list_unsettled_executions", p_older_than_seconds=30, p_limit=500)}
    done = record(db, execution["id"], status="canceled", filled_amount="0.004",
                  filled_amount_quote="200")
    assert done["outcome"] == "updated"
    assert len(history_rows(db, execution["id"])) == 1
    assert proposal_status(db, execution) == "executed"


def test_a_report_cannot_shrink_a_recorded_fill(db: Database) -> None:
    execution = execution_in(db, "claimed")
    record(db, execution["id"], status="submitted", filled_amount="0.004",
           filled_amount_quote="200")
    for report in ({"status": "canceled", "filled_amount": "0"},
                   {"status": "unknown", "filled_amount": "0.001"},
                   {"status": "submitted", "filled_amount": "0.003"}):
        result = record(db, execution["id"], **report)
        assert (result["outcome"], result.get("reason")) == ("illegal_transition",
                                                             "fill_decreased"), report
    assert scalar(db, "select filled_amount from public.trade_executions where id = %s",
                  (execution["id"],)) == Decimal("0.004")
    assert history_rows(db, execution["id"]) == []


def test_the_table_refuses_a_failed_or_rejected_execution_with_a_fill(db: Database) -> None:
    """The backstop behind record_execution_result, whoever writes (the superuser here)."""
    execution = execution_in(db, "claimed")
    record(db, execution["id"], status="submitted", filled_amount="0.004",
           filled_amount_quote="200")
    for status in ("failed", "rejected"):
        with pytest.raises(psycopg.errors.CheckViolation):
            sql(db, "update public.trade_executions set status = %s, completed_at = now() "
                    "where id = %s", (status, execution["id"]))
    with pytest.raises(psycopg.errors.InsufficientPrivilege, match="fill"):
        sql(db, "update public.trade_executions set filled_amount = 0.001 where id = %s",
            (execution["id"],))


# -- a repeated non-final status adds the facts it brings ------------------------------------------
def test_repeating_submitted_with_the_exchange_order_id_records_it(db: Database) -> None:
    execution = execution_in(db, "claimed")
    first = record(db, execution["id"], status="submitted")
    assert first["execution"]["exchange_order_id"] is None
    again = record(db, execution["id"], status="submitted", exchange_order_id="ord-late")
    assert again["outcome"] == "updated"
    assert again["execution"]["exchange_order_id"] == "ord-late"
    assert again["execution"]["status"] == "submitted"
    assert again["execution"]["submitted_at"] == first["execution"]["submitted_at"]
    assert scalar(db, "select exchange_order_id from public.trade_executions where id = %s",
                  (execution["id"],)) == "ord-late"
    # Nothing new: unchanged, and nothing is written.
    same = record(db, execution["id"], status="submitted", exchange_order_id="ord-late")
    assert same["outcome"] == "unchanged" and same["execution"] == again["execution"]
    audit_events = [e for (e,) in sql(db, "select event from public.execution_audit_log "
                                          "where execution_id = %s order by id",
                                      (execution["id"],))]
    assert audit_events == ["claim.claimed", "execution.status_changed", "execution.facts_added",
                            "execution.result_unchanged"]


def test_repeating_a_non_final_status_adds_a_growing_fill_and_error_details(db: Database) -> None:
    execution = execution_in(db, "claimed")
    record(db, execution["id"], status="submitted", exchange_order_id="ord-g",
           filled_amount="0.001", filled_amount_quote="50")
    grown = record(db, execution["id"], status="submitted", filled_amount="0.003",
                   filled_amount_quote="150")
    assert grown["outcome"] == "updated"
    assert (grown["execution"]["filled_amount"], grown["execution"]["filled_amount_quote"]) == (
        Decimal("0.003"), Decimal("150"))
    assert grown["execution"]["exchange_order_id"] == "ord-g"
    record(db, execution["id"], status="unknown")
    detailed = record(db, execution["id"], status="unknown", error_code="timeout",
                      error_message="status poll timed out")
    assert detailed["outcome"] == "updated"
    assert (detailed["execution"]["error_code"], detailed["execution"]["error_message"]) == (
        "timeout", "status poll timed out")


def test_a_repeat_cannot_swap_the_exchange_order_id(db: Database) -> None:
    execution = execution_in(db, "claimed")
    record(db, execution["id"], status="submitted", exchange_order_id="ord-1")
    for status in ("submitted", "filled"):
        swapped = record(db, execution["id"], status=status, exchange_order_id="ord-2",
                         filled_amount="0.1", filled_amount_quote="10")
        assert (swapped["outcome"], swapped.get("reason")) == (
            "illegal_transition", "exchange_order_id_mismatch"), swapped
    assert sql(db, "select status, exchange_order_id from public.trade_executions where id = %s",
               (execution["id"],)) == [("submitted", "ord-1")]


# -- result timestamps are bounded -----------------------------------------------------------------
# Exchange times may differ from the database clock by a little (Bitvavo's own access window is
# at most 60 s): a reported time is accepted from one minute before the claim to one minute
# after now, and refused with 22023 outside that.
@pytest.mark.parametrize("field", ["completed_at", "submitted_at"])
@pytest.mark.parametrize("value", [
    "0044-03-15T12:00 BC",
    "0001-01-01T00:00:00Z",
    "1999-12-31T23:59:59Z",
    "9999-12-31T23:59:59Z",
    "infinity",
    "-infinity",
])
def test_result_timestamps_out_of_any_sane_range_are_invalid(db: Database, field: str,
                                                             value: str) -> None:
    execution = execution_in(db, "claimed")
    with pytest.raises(psycopg.errors.InvalidParameterValue):
        record(db, execution["id"], status="failed", **{field: value})
    assert scalar(db, "select status from public.trade_executions where id = %s",
                  (execution["id"],)) == "claimed"


def test_result_timestamps_before_the_claim_or_after_now_are_invalid(db: Database) -> None:
    execution = execution_in(db, "claimed")
    claimed_at, now = sql(db, "select claimed_at, clock_timestamp() from public.trade_executions "
                              "where id = %s", (execution["id"],))[0]
    for at in (claimed_at - timedelta(minutes=2), now + timedelta(minutes=5)):
        with pytest.raises(psycopg.errors.InvalidParameterValue):
            record(db, execution["id"], status="failed", completed_at=at.isoformat())
    # A few seconds of clock difference with the exchange is fine.
    skewed = record(db, execution["id"], status="submitted",
                    submitted_at=(claimed_at - timedelta(seconds=5)).isoformat())
    assert skewed["outcome"] == "updated"
    done = record(db, execution["id"], status="filled", filled_amount="0.1",
                  filled_amount_quote="10", completed_at=(now + timedelta(seconds=5)).isoformat())
    assert done["outcome"] == "updated"
