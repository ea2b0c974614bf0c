"""claim_trade_execution: G1 idempotency under concurrency, G5/G6 under concurrency, argument
validation, tenant isolation (G8) and who may call the execution RPCs at all.

Tests share one database per module (`db`), each with its own users and markets."""

from __future__ import annotations

import uuid
from collections import Counter
from decimal import Decimal

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
    failed_checks,
    market_of,
    new_user,
    propose,
    race,
    scalar,
    sql,
    trader,
)


def execution_count(db: Database, **where: object) -> int:
    clause = " and ".join(f"{k} = %({k})s" for k in where) or "true"
    return scalar(db, f"select count(*) from public.trade_executions where {clause}",  # noqa: S608
                     where)


# -- G1: idempotency ---------------------------------------------------------------------------
def test_g1_fifty_concurrent_claims_of_one_proposal_claim_exactly_once(db: Database) -> None:
    user = trader(db)
    proposal = propose(db, user)
    results = race(db, 50, lambda conn, i: claim(db, user, proposal, key=f"racer-{i}", conn=conn))
    outcomes = Counter(r["outcome"] for r in results)
    assert outcomes == {"claimed": 1, "conflict": 49}
    assert {r["reason"] for r in results if r["outcome"] == "conflict"} == {"already_executed"}
    assert execution_count(db, proposal_id=proposal) == 1
    winner = next(r for r in results if r["outcome"] == "claimed")["execution"]
    assert scalar(db, "select status from public.trade_proposals where id = %s", (proposal,)) == \
        "executing"
    # The winner's key replays the same execution.
    replay = claim(db, user, proposal, key=winner["idempotency_key"])
    assert replay["outcome"] == "replayed"
    assert replay["execution"]["id"] == winner["id"]
    assert replay["execution"]["client_order_id"] == winner["client_order_id"]


def test_g1_sixty_four_racers_with_the_same_key_get_one_claim_and_replays(db: Database) -> None:
    user = trader(db)
    proposal = propose(db, user)
    results = race(db, 64, lambda conn, i: claim(db, user, proposal, key="same-key", conn=conn))
    outcomes = Counter(r["outcome"] for r in results)
    assert outcomes == {"claimed": 1, "replayed": 63}
    assert len({r["execution"]["id"] for r in results}) == 1
    assert len({r["execution"]["client_order_id"] for r in results}) == 1
    assert execution_count(db, proposal_id=proposal) == 1


def test_g1_replay_returns_the_stored_execution_even_after_it_moved_on(db: Database) -> None:
    user = trader(db)
    proposal = propose(db, user)
    first = claim(db, user, proposal, key="k-1")
    db.rpc("record_execution_result", p_execution_id=first["execution"]["id"],
           p_result=Jsonb({"status": "filled", "filled_amount": "0.0002",
                           "filled_amount_quote": "10"}))
    replay = claim(db, user, proposal, key="k-1")
    assert replay["outcome"] == "replayed"
    assert replay["failed_checks"] == []
    assert replay["execution"]["id"] == first["execution"]["id"]
    assert replay["execution"]["status"] == "filled"


def test_g1_key_reused_for_another_proposal_is_a_conflict(db: Database) -> None:
    user = trader(db, cooldown_seconds=0)
    first = claim(db, user, propose(db, user), key="shared-key")
    assert first["outcome"] == "claimed"
    other = propose(db, user)
    result = claim(db, user, other, key="shared-key")
    assert result == {"outcome": "conflict", "execution": None, "failed_checks": [],
                      "reason": "idempotency_key_reused"}
    assert execution_count(db, proposal_id=other) == 0


def test_g1_second_key_for_an_executed_proposal_is_already_executed(db: Database) -> None:
    user = trader(db)
    proposal = propose(db, user)
    first = claim(db, user, proposal, key="a")
    result = claim(db, user, proposal, key="b")
    assert result["outcome"] == "conflict"
    assert result["reason"] == "already_executed"
    assert result["execution"]["id"] == first["execution"]["id"]


def test_g1_the_same_key_is_independent_per_user(db: Database) -> None:
    alice, bob = trader(db), trader(db)
    assert claim(db, alice, propose(db, alice), key="k")["outcome"] == "claimed"
    assert claim(db, bob, propose(db, bob), key="k")["outcome"] == "claimed"


def test_claim_returns_the_execution_row(db: Database) -> None:
    user = trader(db)
    proposal = propose(db, user, amount="12.5", side="sell")
    result = claim(db, user, proposal, key="row-key")
    execution = result["execution"]
    assert result["reason"] is None
    assert execution["proposal_id"] == str(proposal)
    assert execution["user_id"] == str(user)
    assert execution["idempotency_key"] == "row-key"
    assert execution["status"] == "claimed"
    assert execution["mode"] == "paper"
    assert (execution["market"], execution["side"]) == (market_of(user), "sell")
    assert execution["amount_quote"] == Decimal("12.5")
    assert uuid.UUID(execution["client_order_id"])
    assert "counts_toward_limits" not in execution
    row = sql(db, "select client_order_id, claimed_at from public.trade_executions where id = %s",
                   (execution["id"],))[0]
    assert str(row[0]) == execution["client_order_id"]


# -- G5 / G6 under concurrency -----------------------------------------------------------------
def test_g5_twenty_concurrent_proposals_same_market_claim_once(db: Database) -> None:
    user = trader(db, cooldown_seconds=3600)
    proposals = [propose(db, user) for _ in range(20)]
    results = race(db, 20, lambda conn, i: claim(db, user, proposals[i], conn=conn))
    outcomes = Counter(r["outcome"] for r in results)
    assert outcomes == {"claimed": 1, "rejected": 19}
    assert all(failed_checks(r) == ["cooldown"] for r in results if r["outcome"] == "rejected")
    assert execution_count(db, user_id=user) == 1


def test_g6_concurrent_opposite_sides_claim_only_one(db: Database) -> None:
    user = trader(db, cooldown_seconds=0, anti_flip_seconds=86400, max_trades_per_day=100,
                  max_daily_quote=10000)
    proposals = [propose(db, user, side="buy" if i % 2 else "sell") for i in range(20)]
    results = race(db, 20, lambda conn, i: claim(db, user, proposals[i], conn=conn))
    winners = [r["execution"] for r in results if r["outcome"] == "claimed"]
    sides = {w["side"] for w in winners}
    assert len(sides) == 1  # only one side of the market ever got through
    losers = [r for r in results if r["outcome"] == "rejected"]
    assert len(winners) == 10 and len(losers) == 10
    assert all(failed_checks(r) == ["anti_flip"] for r in losers)


def test_g6_opposite_side_in_window_rejected_same_side_after_cooldown_allowed(db: Database) -> None:
    user = trader(db, cooldown_seconds=600, anti_flip_seconds=86400)
    first = claimed(db, user, side="buy")
    backdate(db, first["id"], 601)  # cooldown over, anti-flip window still open
    flip = claim(db, user, propose(db, user, side="sell"))
    assert flip["outcome"] == "rejected"
    assert failed_checks(flip) == ["anti_flip"]
    assert claim(db, user, propose(db, user, side="buy"))["outcome"] == "claimed"


def test_claims_of_different_users_do_not_block_each_other(db: Database) -> None:
    users = [trader(db) for _ in range(8)]
    proposals = [propose(db, u) for u in users]
    results = race(db, 8, lambda conn, i: claim(db, users[i], proposals[i], conn=conn))
    assert [r["outcome"] for r in results] == ["claimed"] * 8


# -- not_found and tenant isolation (G8) -------------------------------------------------------
def test_claim_of_another_users_proposal_is_not_found(db: Database) -> None:
    alice, mallory = trader(db), trader(db)
    proposal = propose(db, alice)
    result = claim(db, mallory, proposal)
    assert result == {"outcome": "not_found", "execution": None, "failed_checks": [],
                      "reason": "proposal_not_found"}
    assert execution_count(db, proposal_id=proposal) == 0
    # Alice's proposal is untouched and still claimable by Alice.
    assert claim(db, alice, proposal)["outcome"] == "claimed"


def test_claim_of_another_users_executed_proposal_is_not_found(db: Database) -> None:
    alice, mallory = trader(db), trader(db)
    proposal = propose(db, alice)
    assert claim(db, alice, proposal, key="alice-key")["outcome"] == "claimed"
    assert claim(db, mallory, proposal)["outcome"] == "not_found"
    assert claim(db, mallory, proposal, key="alice-key")["outcome"] == "not_found"


def test_claim_of_a_missing_proposal_is_not_found(db: Database) -> None:
    user = trader(db)
    assert claim(db, user, uuid.uuid4())["outcome"] == "not_found"


@pytest.mark.parametrize(("fn", "args"), [
    ("claim_trade_execution", {"p_user_id": uuid.uuid4(), "p_proposal_id": uuid.uuid4(),
                               "p_idempotency_key": "k", "p_mode": "paper"}),
    ("record_execution_result", {"p_execution_id": uuid.uuid4(),
                                 "p_result": Jsonb({"status": "failed"})}),
    ("list_unsettled_executions", {"p_older_than_seconds": 0}),
    ("create_trade_proposal", {"p_user_id": uuid.uuid4(), "p_market": "BTC-EUR", "p_side": "buy",
                               "p_amount_quote": Decimal(10), "p_confidence": Decimal("0.9"),
                               "p_rationale": "x", "p_source": "manual"}),
])
@pytest.mark.parametrize("role", ["anon", "authenticated"])
def test_execution_rpcs_are_not_callable_from_a_browser(db: Database, fn: str, args: dict,
                                                        role: str) -> None:
    user = new_user(db)
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        db.rpc(fn, role=role, user_id=user if role == "authenticated" else None, **args)


def test_decide_is_not_callable_by_anon(db: Database) -> None:
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        db.rpc("decide_trade_proposal", role="anon", p_proposal_id=uuid.uuid4(),
               p_decision="approve")


def test_users_read_only_their_own_rows_and_cannot_write(db: Database) -> None:
    alice, bob = trader(db), trader(db)
    mine = claimed(db, alice)
    claimed(db, bob)
    with db.as_user(alice) as cur:
        cur.execute("select id, user_id from public.trade_executions")
        assert [(str(r[0]), r[1]) for r in cur.fetchall()] == [(mine["id"], alice)]
        cur.execute("select user_id from public.trade_proposals")
        assert {r[0] for r in cur.fetchall()} == {alice}
    for statement in ("update public.trade_proposals set status = 'approved'",
                      "update public.trade_executions set status = 'failed'",
                      "delete from public.trade_executions",
                      "insert into public.trade_history (execution_id) values (gen_random_uuid())"):
        with pytest.raises(psycopg.errors.InsufficientPrivilege), db.as_user(alice) as cur:
            cur.execute(statement)
    with db.as_anon() as cur, pytest.raises(psycopg.errors.InsufficientPrivilege):
        cur.execute("select * from public.trade_executions")


# -- invalid arguments (22023) -----------------------------------------------------------------
@pytest.mark.parametrize(("key", "mode"), [
    (None, "paper"), ("", "paper"), ("x" * 256, "paper"), ("bad\nkey", "paper"),
    ("tab\tkey", "paper"), (" leading", "paper"), ("trailing ", "paper"), ("ключ", "paper"),
    ("ok-key", "sandbox"), ("ok-key", None), ("ok-key", "LIVE"),
])
def test_claim_rejects_invalid_key_or_mode(db: Database, key: str | None, mode: str | None) -> None:
    user = trader(db)
    proposal = propose(db, user)
    with pytest.raises(psycopg.errors.InvalidParameterValue):
        db.rpc("claim_trade_execution", p_user_id=user, p_proposal_id=proposal,
               p_idempotency_key=key, p_mode=mode)
    assert execution_count(db, user_id=user) == 0


def test_claim_rejects_a_null_auto_approval_flag(db: Database) -> None:
    user = trader(db)
    proposal = propose(db, user)
    with pytest.raises(psycopg.errors.InvalidParameterValue):
        db.rpc("claim_trade_execution", p_user_id=user, p_proposal_id=proposal,
               p_idempotency_key="k", p_mode="paper", p_require_auto_approval=None)
    assert execution_count(db, user_id=user) == 0


def test_claim_accepts_a_255_character_printable_key(db: Database) -> None:
    user = trader(db)
    key = ("A-z0-9 ~!@#$%^&*()_+{}|:\"<>?`-=[]\\;',./" * 7)[:254] + "Z"
    assert len(key) == 255
    result = claim(db, user, propose(db, user), key=key)
    assert result["outcome"] == "claimed"
    assert result["execution"]["idempotency_key"] == key


def test_claim_refuses_a_snapshot_isolation_transaction(db: Database) -> None:
    user = trader(db)
    proposal = propose(db, user)
    with psycopg.connect(db.url) as conn:
        conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        with pytest.raises(psycopg.errors.InvalidTransactionState):
            conn.execute("select public.claim_trade_execution(%s, %s, 'k', 'paper')",
                         (user, proposal))
