"""The trade key's order budget in SQL (claim_trade_execution's p_order_budget, taken by
private.take_order_budget), the auto-execute queue (lease_auto_approved_proposals) and why
run_maintenance expires an approved proposal.

Every test that takes slots has a database of its own (`fresh_db`): the budget is one for all
users, as it is for all trading_execute instances. Concurrency claims are counted with real
concurrent connections (tests/test_execution_support.race).
"""

from __future__ import annotations

import uuid
from collections import Counter
from decimal import Decimal
from typing import Any

import psycopg
import pytest

from tests.execute_harness import fingerprint
from tests.pg import Database, claims_for
from tests.test_execution_support import (  # the database fixtures: db, module_db, fresh_db
    _fresh_db_fixture,  # noqa: F401
    _module_db_fixture,  # noqa: F401
    _shared_db_fixture,  # noqa: F401
    api,
    claim,
    propose,
    race,
    scalar,
    set_controls,
    sql,
    trader,
)

WINDOW = 30  # seconds a slot counts in these tests


def budget_claim(db: Database, user: uuid.UUID, proposal: uuid.UUID, budget: int, *,
                 key: str | None = None, conn: psycopg.Connection[Any] | None = None,
                 window: int = WINDOW) -> dict[str, Any]:
    """claim_trade_execution as trading_execute calls it, with the order budget."""
    return db.rpc("claim_trade_execution", conn=conn or api(db), p_user_id=user,
                  p_proposal_id=proposal, p_idempotency_key=key or f"key-{uuid.uuid4()}",
                  p_mode="paper", p_require_auto_approval=False, p_order_budget=budget,
                  p_order_budget_window_seconds=window)


def free_trader(db: Database, **settings: Any) -> uuid.UUID:
    """A user of a market of their own with room for many orders (no cooldown, no anti-flip)."""
    return trader(db, cooldown_seconds=0, anti_flip_seconds=0, max_trades_per_day=100,
                  max_daily_quote=Decimal(10000), **settings)


def auto_trader(db: Database) -> uuid.UUID:
    """A user whose proposals are auto-approved (auto_execute, min_confidence 0.5)."""
    return free_trader(db, auto_execute=True, min_confidence=Decimal("0.5"))


def age_slots(db: Database, seconds: int) -> None:
    """Pretend every slot was taken `seconds` earlier."""
    sql(db, "update private.order_budget_seconds "
            "set second = second - make_interval(secs => %s)", (seconds,))


def status_of(db: Database, proposal: uuid.UUID) -> str:
    return str(scalar(db, "select status from public.trade_proposals where id = %s", (proposal,)))


# -- the budget ------------------------------------------------------------------------------------
def test_32_concurrent_claims_take_exactly_the_10_slots_of_the_budget(fresh_db: Database) -> None:
    db = fresh_db
    work = [(user, propose(db, user)) for user in (free_trader(db) for _ in range(32))]
    results = race(db, 32, lambda conn, i: budget_claim(db, *work[i], 10, conn=conn))

    assert Counter(r["outcome"] for r in results) == {"claimed": 10, "rate_limited": 22}
    refused = [(w, r) for w, r in zip(work, results, strict=True)
               if r["outcome"] == "rate_limited"]
    for (_, proposal), result in refused:
        assert result["reason"] == "order_budget_exhausted" and result["execution"] is None
        assert 1 <= result["retry_after_seconds"] <= WINDOW
        assert status_of(db, proposal) == "approved"  # nothing claimed: it may be sent again
    assert scalar(db, "select count(*) from public.trade_executions") == 10
    assert scalar(db, "select sum(weight) from private.order_budget_seconds") == 10
    assert scalar(db, "select count(*) from public.execution_audit_log "
                      "where event = 'claim.rate_limited'") == 22


def test_only_a_claim_that_will_send_an_order_takes_a_slot(fresh_db: Database) -> None:
    """Replays, conflicts and rejections never spend the budget: a user cannot drain it with
    requests that place nothing."""
    db = fresh_db
    user = free_trader(db)
    first = propose(db, user)
    won = budget_claim(db, user, first, 1, key="the-key")
    assert won["outcome"] == "claimed" and won["execution"]["status"] == "claimed"
    # The budget is now used up; still, a replay, a conflict and a rejection are answered as
    # they always are.
    assert budget_claim(db, user, first, 1, key="the-key")["outcome"] == "replayed"
    assert budget_claim(db, user, first, 1)["outcome"] == "conflict"
    other = propose(db, user)
    assert budget_claim(db, user, other, 1, key="the-key")["reason"] == "idempotency_key_reused"
    pending = propose(db, user, approve=False)
    assert budget_claim(db, user, pending, 1)["outcome"] == "rejected"
    assert budget_claim(db, user, uuid.uuid4(), 1)["outcome"] == "not_found"
    assert scalar(db, "select sum(weight) from private.order_budget_seconds") == 1
    # A valid claim is the one that meets the budget.
    assert budget_claim(db, user, other, 1)["outcome"] == "rate_limited"


def test_a_slot_counts_for_its_window_and_retry_after_says_when_it_frees(
        fresh_db: Database) -> None:
    db = fresh_db
    user = free_trader(db)
    proposals = [propose(db, user) for _ in range(3)]
    assert [budget_claim(db, user, p, 2)["outcome"] for p in proposals[:2]] == ["claimed"] * 2
    refused = budget_claim(db, user, proposals[2], 2)
    assert refused["outcome"] == "rate_limited"
    assert WINDOW - 2 <= refused["retry_after_seconds"] <= WINDOW
    age_slots(db, WINDOW - 5)  # the slots were taken 25 s ago: they free in about 5 s
    again = budget_claim(db, user, proposals[2], 2)
    assert again["outcome"] == "rate_limited" and 3 <= again["retry_after_seconds"] <= 6
    age_slots(db, 5)  # now they have left the window
    assert budget_claim(db, user, proposals[2], 2)["outcome"] == "claimed"
    # The seconds that left the window are gone; the new slot is the only one counted.
    assert sql(db, "select weight from private.order_budget_seconds") == [(1,)]


def test_a_refused_claim_changes_nothing_but_its_audit_row(fresh_db: Database) -> None:
    db = fresh_db
    user = free_trader(db)
    taken, refused = propose(db, user), propose(db, user)
    assert budget_claim(db, user, taken, 1)["outcome"] == "claimed"
    before = fingerprint(db, ("trade_executions", "trade_history", "trade_proposals"))
    slots = sql(db, "select * from private.order_budget_seconds")
    result = budget_claim(db, user, refused, 1, key="k-refused")
    assert result["outcome"] == "rate_limited"
    assert fingerprint(db, ("trade_executions", "trade_history", "trade_proposals")) == before
    assert sql(db, "select * from private.order_budget_seconds") == slots
    (detail,) = scalar(db, "select array_agg(detail) from public.execution_audit_log "
                           "where event = 'claim.rate_limited' and proposal_id = %s", (refused,))
    assert detail["idempotency_key"] == "k-refused"
    assert detail["order_budget"]["granted"] is False
    assert (detail["order_budget"]["used"], detail["order_budget"]["budget"]) == (1, 1)
    # The claim that got the slot says which it was.
    claimed_detail = scalar(db, "select detail from public.execution_audit_log "
                                "where event = 'claim.claimed' and proposal_id = %s", (taken,))
    assert claimed_detail["order_budget"]["granted"] is True


def test_without_a_budget_the_claim_is_as_before(fresh_db: Database) -> None:
    db = fresh_db
    user = free_trader(db)
    results = [claim(db, user, propose(db, user))["outcome"] for _ in range(3)]
    assert results == ["claimed"] * 3
    assert scalar(db, "select count(*) from private.order_budget_seconds") == 0


@pytest.mark.parametrize(("budget", "window"), [(0, 30), (-1, 30), (5, None), (5, 0),
                                                (5, 86401)])
def test_an_invalid_budget_is_22023_and_changes_nothing(db: Database, budget: int,
                                                        window: int | None) -> None:
    user = free_trader(db)
    proposal = propose(db, user)
    with pytest.raises(psycopg.errors.InvalidParameterValue):
        db.rpc("claim_trade_execution", p_user_id=user, p_proposal_id=proposal,
               p_idempotency_key="k", p_mode="paper", p_order_budget=budget,
               p_order_budget_window_seconds=window)
    assert status_of(db, proposal) == "approved"


# -- the auto-execute queue ----------------------------------------------------------------------
def lease(db: Database, dispatcher: str = "dispatcher-a", limit: int = 1000,
          conn: psycopg.Connection[Any] | None = None) -> list[uuid.UUID]:
    """lease_auto_approved_proposals as the scanner's dispatch calls it; the proposal ids."""
    with db.as_role("service_role", claims_for("service_role"), conn=conn) as cur:
        cur.execute("select proposal_id from public.lease_auto_approved_proposals(%s, %s, 30)",
                    (dispatcher, limit))
        return [row[0] for row in cur.fetchall()]


def end_leases(db: Database) -> None:
    """Pretend every dispatch lease has run out."""
    sql(db, "update private.auto_execution_leases set leased_until = now() - interval '1 second'")


def test_the_queue_holds_auto_approved_unexecuted_unexpired_proposals_oldest_first(
        fresh_db: Database) -> None:
    db = fresh_db
    a, b = auto_trader(db), auto_trader(db)
    first, second, third = propose(db, a), propose(db, b), propose(db, a)
    executing = propose(db, b)
    assert claim(db, b, executing, require_auto_approval=True)["outcome"] == "claimed"
    expired = propose(db, a)
    sql(db, "update public.trade_proposals set expires_at = now() - interval '1 second' "
            "where id = %s", (expired,))
    by_hand = propose(db, free_trader(db))  # approved by its user, not auto
    low = propose(db, a, confidence="0.1", approve=False)  # below min_confidence: pending
    assert status_of(db, low) == "pending" and status_of(db, by_hand) == "approved"

    assert lease(db, limit=2) == [first, second]
    assert lease(db) == [first, second, third]  # a dispatcher leases its own again
    row = db.rpc_rows("lease_auto_approved_proposals", p_dispatcher="dispatcher-a", p_limit=1)[0]
    assert (row["user_id"], row["market"], row["side"], row["amount_quote"]) == (
        a, scalar(db, "select market from public.trade_proposals where id = %s", (first,)),
        "buy", Decimal(10))

    # Refused for the order budget: it stays queued. Rejected by a validator: it leaves.
    set_controls(db, trading_halted=True)
    try:
        rejected = claim(db, a, first, require_auto_approval=True)
    finally:
        set_controls(db, trading_halted=False)
    assert rejected["outcome"] == "rejected"
    sql(db, "insert into private.order_budget_seconds (second, weight) "
            "values (date_trunc('second', now()), 1)")
    assert budget_claim(db, b, second, 1)["outcome"] == "rate_limited"
    assert lease(db) == [second, third]


def test_a_leased_proposal_goes_to_another_dispatcher_only_when_the_lease_ran_out(
        fresh_db: Database) -> None:
    db = fresh_db
    user = auto_trader(db)
    proposals = [propose(db, user) for _ in range(4)]
    assert lease(db, "a", limit=3) == proposals[:3]
    assert lease(db, "b") == proposals[3:]
    assert lease(db, "c") == []
    end_leases(db)
    assert lease(db, "c") == proposals
    # A dispatcher that stops gives back what it did not send: the next one has it at once.
    assert db.rpc("release_auto_execution_leases", p_dispatcher="c") == 4
    assert db.rpc("release_auto_execution_leases", p_dispatcher="c") == 0
    assert lease(db, "d", limit=2) == proposals[:2]
    # Maintenance deletes the leases that ran out.
    end_leases(db)
    db.rpc("run_maintenance")
    assert scalar(db, "select count(*) from private.auto_execution_leases") == 0


def test_8_concurrent_dispatchers_lease_disjoint_proposals_and_all_of_them(
        fresh_db: Database) -> None:
    db = fresh_db
    users = [auto_trader(db) for _ in range(10)]
    proposals = {propose(db, u) for u in users for _ in range(20)}
    leased = race(db, 8, lambda conn, i: lease(db, f"dispatcher-{i}", limit=20, conn=conn))
    taken = [p for batch in leased for p in batch]
    assert len(taken) == len(set(taken)) and set(taken) <= proposals  # never one twice
    assert Counter(d for (d,) in sql(db, "select dispatcher from private.auto_execution_leases")
                   ) == {f"dispatcher-{i}": len(batch) for i, batch in enumerate(leased) if batch}
    # What the racers did not take (a racer skips what another is leasing) is still there.
    rest = lease(db, "latecomer")
    assert set(rest) == proposals - set(taken) and len(rest) == len(proposals) - len(taken)


@pytest.mark.parametrize("dispatcher", ["", None, "x" * 201])
def test_a_release_s_dispatcher_is_checked(db: Database, dispatcher: str | None) -> None:
    with pytest.raises(psycopg.errors.InvalidParameterValue):
        db.rpc("release_auto_execution_leases", p_dispatcher=dispatcher)


@pytest.mark.parametrize(("dispatcher", "limit", "seconds"), [
    ("d", 0, 30), ("d", 1001, 30), ("d", None, 30), ("", 10, 30), (None, 10, 30),
    ("x" * 201, 10, 30), ("d", 10, 0), ("d", 10, 3601), ("d", 10, None)])
def test_the_lease_s_arguments_are_checked(db: Database, dispatcher: str | None,
                                           limit: int | None, seconds: int | None) -> None:
    with pytest.raises(psycopg.errors.InvalidParameterValue):
        db.rpc_rows("lease_auto_approved_proposals", p_dispatcher=dispatcher, p_limit=limit,
                    p_lease_seconds=seconds)


# -- expiry with its reason ---------------------------------------------------------------------
def test_maintenance_records_why_each_proposal_expired(fresh_db: Database) -> None:
    db = fresh_db
    user = auto_trader(db)
    waited, never_sent, undecided = propose(db, user), propose(db, user), \
        propose(db, user, confidence="0.1", approve=False)
    sql(db, "insert into private.order_budget_seconds (second, weight) "
            "values (date_trunc('second', now()), 1)")
    assert budget_claim(db, user, waited, 1)["outcome"] == "rate_limited"
    sql(db, "update public.trade_proposals set expires_at = now() - interval '1 second' "
            "where id = any(%s)", ([waited, never_sent, undecided],))

    assert db.rpc("run_maintenance")["expired_proposals"] == 3
    details = dict(sql(db, "select proposal_id, detail from public.execution_audit_log "
                           "where event = 'proposal.expired'"))
    assert details[waited]["reason"] == "not_executed_before_expiry"
    assert (details[waited]["status_was"], details[waited]["decided_by"]) == ("approved", "auto")
    assert details[waited]["last_claim"]["event"] == "claim.rate_limited"
    assert details[never_sent]["reason"] == "not_executed_before_expiry"
    assert details[never_sent]["last_claim"] is None
    assert details[undecided]["reason"] == "not_decided_before_expiry"
    assert details[undecided]["status_was"] == "pending"
    assert {status_of(db, p) for p in (waited, never_sent, undecided)} == {"expired"}
    assert lease(db) == []
