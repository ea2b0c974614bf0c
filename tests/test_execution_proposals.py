"""create_trade_proposal (auto-approval, argument validation) and decide_trade_proposal (own,
pending, unexpired only; another user's proposal is not_found).

Tests share one database per module (`db`), each with its own user and market."""

from __future__ import annotations

import uuid
from datetime import timedelta
from decimal import Decimal
from typing import Any

import psycopg
import pytest

from tests.pg import Database
from tests.test_execution_support import (  # the database fixtures: db, module_db, fresh_db
    _fresh_db_fixture,  # noqa: F401
    _module_db_fixture,  # noqa: F401
    _shared_db_fixture,  # noqa: F401
    api,
    market_of,
    new_user,
    propose,
    scalar,
    set_settings,
    sql,
    trader,
)


def create(db: Database, user: uuid.UUID, **overrides: Any) -> dict[str, Any]:
    args: dict[str, Any] = {
        "p_user_id": user, "p_market": market_of(user), "p_side": "buy",
        "p_amount_quote": Decimal("10"), "p_confidence": Decimal("0.8"),
        "p_rationale": "RSI oversold", "p_source": "rules", **overrides}
    return db.rpc("create_trade_proposal", conn=api(db), **args)


def decide(db: Database, user: uuid.UUID, proposal: uuid.UUID | str, decision: str
           ) -> dict[str, Any]:
    return db.rpc("decide_trade_proposal", conn=api(db), role="authenticated", user_id=user,
                  p_proposal_id=proposal, p_decision=decision)


def proposal_row(db: Database, proposal: uuid.UUID | str) -> dict[str, Any]:
    with db.connect() as conn, conn.cursor(row_factory=psycopg.rows.dict_row) as cur:
        cur.execute("select * from public.trade_proposals where id = %s", (proposal,))
        row = cur.fetchone()
        assert row is not None
        return row


# -- create_trade_proposal ---------------------------------------------------------------------
def test_create_is_pending_without_auto_execute(db: Database) -> None:
    user = trader(db)
    result = create(db, user, p_confidence=Decimal("0.99"), p_model="gpt-4o-mini",
                    p_reference_price=Decimal("51234.5"), p_ttl_seconds=600)
    assert set(result) == {"proposal_id", "status"}
    assert result["status"] == "pending"
    row = proposal_row(db, result["proposal_id"])
    assert row["decided_by"] is None and row["decided_at"] is None
    assert row["user_id"] == user
    assert (row["side"], row["amount_quote"], row["confidence"]) == ("buy", Decimal("10"),
                                                                     Decimal("0.99"))
    assert (row["model"], row["reference_price"], row["source"]) == ("gpt-4o-mini",
                                                                     Decimal("51234.5"), "rules")
    assert row["expires_at"] - row["created_at"] == timedelta(seconds=600)


@pytest.mark.parametrize(("confidence", "status"), [("0.69", "pending"), ("0.70", "approved"),
                                                    ("1", "approved")])
def test_create_auto_approves_at_min_confidence(db: Database, confidence: str,
                                                status: str) -> None:
    user = trader(db, auto_execute=True, min_confidence=Decimal("0.70"))
    result = create(db, user, p_confidence=Decimal(confidence))
    assert result["status"] == status
    row = proposal_row(db, result["proposal_id"])
    if status == "approved":
        assert row["decided_by"] == "auto"
        assert row["decided_at"] is not None
    else:
        assert row["decided_by"] is None


def test_create_accepts_the_users_own_scan_job_and_survives_its_deletion(db: Database) -> None:
    user = trader(db)
    job = scalar(db, "insert into public.scan_jobs (user_id, market, interval_seconds) "
                     "values (%s, %s, 300) returning id", (user, market_of(user)))
    result = create(db, user, p_scan_job_id=job)
    assert proposal_row(db, result["proposal_id"])["scan_job_id"] == job
    sql(db, "delete from public.scan_jobs where id = %s", (job,))
    assert proposal_row(db, result["proposal_id"])["scan_job_id"] is None


@pytest.mark.parametrize("overrides", [
    {"p_market": "btc-eur"}, {"p_market": "BTCEUR"}, {"p_market": None},
    {"p_market": "BTC-EUR; drop table x"},
    {"p_side": "hold"}, {"p_side": None},
    {"p_source": "gpt"}, {"p_source": None},
    {"p_amount_quote": Decimal(0)}, {"p_amount_quote": Decimal(-1)},
    {"p_amount_quote": Decimal("NaN")}, {"p_amount_quote": Decimal("Infinity")},
    {"p_amount_quote": None},
    {"p_confidence": Decimal("1.01")}, {"p_confidence": Decimal("-0.1")},
    {"p_confidence": Decimal("NaN")}, {"p_confidence": None},
    {"p_ttl_seconds": 0}, {"p_ttl_seconds": -5}, {"p_ttl_seconds": None},
    {"p_ttl_seconds": 86401},
    {"p_reference_price": Decimal(0)},
    {"p_user_id": None}, {"p_user_id": "unknown"},
    {"p_scan_job_id": "unknown"}, {"p_scan_job_id": "foreign"},
], ids=lambda o: "-".join(f"{k}={v}" for k, v in o.items()))
def test_create_rejects_invalid_arguments(db: Database, overrides: dict[str, Any]) -> None:
    user = trader(db)
    if overrides.get("p_user_id") == "unknown":
        overrides = {"p_user_id": uuid.uuid4()}
    if overrides.get("p_scan_job_id") == "unknown":
        overrides = {"p_scan_job_id": uuid.uuid4()}
    if overrides.get("p_scan_job_id") == "foreign":
        stranger = trader(db)
        overrides = {"p_scan_job_id": scalar(
            db, "insert into public.scan_jobs (user_id, market) values (%s, %s) returning id",
            (stranger, market_of(stranger)))}
    with pytest.raises(psycopg.errors.InvalidParameterValue):
        create(db, user, **overrides)
    assert scalar(db, "select count(*) from public.trade_proposals where user_id = %s",
                  (user,)) == 0


# -- decide_trade_proposal ---------------------------------------------------------------------
@pytest.mark.parametrize(("decision", "status"), [("approve", "approved"), ("reject", "rejected")])
def test_decide_own_pending_proposal(db: Database, decision: str, status: str) -> None:
    user = trader(db)
    proposal = propose(db, user, approve=False)
    result = decide(db, user, proposal, decision)
    assert result == {"outcome": "decided", "proposal_id": str(proposal), "status": status}
    row = proposal_row(db, proposal)
    assert (row["status"], row["decided_by"]) == (status, "user")
    assert row["decided_at"] is not None


def test_decide_another_users_proposal_is_not_found(db: Database) -> None:
    alice, mallory = trader(db), trader(db)
    proposal = propose(db, alice, approve=False)
    result = decide(db, mallory, proposal, "approve")
    assert result == {"outcome": "not_found", "proposal_id": str(proposal)}
    assert proposal_row(db, proposal)["status"] == "pending"
    assert decide(db, mallory, uuid.uuid4(), "reject")["outcome"] == "not_found"


@pytest.mark.parametrize("state", ["approved", "rejected", "executing"])
def test_decide_refuses_a_proposal_that_is_not_pending(db: Database, state: str) -> None:
    user = trader(db)
    proposal = propose(db, user, approve=False)
    if state in ("approved", "rejected"):
        decide(db, user, proposal, "approve" if state == "approved" else "reject")
    else:
        decide(db, user, proposal, "approve")
        assert db.rpc("claim_trade_execution", conn=api(db), p_user_id=user,
                      p_proposal_id=proposal, p_idempotency_key="k",
                      p_mode="paper")["outcome"] == "claimed"
    result = decide(db, user, proposal, "reject")
    assert result == {"outcome": "invalid_state", "proposal_id": str(proposal), "status": state}
    assert proposal_row(db, proposal)["status"] == state


def test_decide_an_expired_proposal_expires_it(db: Database) -> None:
    user = trader(db)
    proposal = propose(db, user, approve=False)
    sql(db, "update public.trade_proposals set expires_at = now() - interval '1 second' "
            "where id = %s", (proposal,))
    result = decide(db, user, proposal, "approve")
    assert result == {"outcome": "expired", "proposal_id": str(proposal), "status": "expired"}
    assert proposal_row(db, proposal)["status"] == "expired"


@pytest.mark.parametrize("decision", ["APPROVE", "yes", "", None])
def test_decide_rejects_an_invalid_decision(db: Database, decision: str | None) -> None:
    user = trader(db)
    proposal = propose(db, user, approve=False)
    with pytest.raises(psycopg.errors.InvalidParameterValue):
        decide(db, user, proposal, decision)  # type: ignore[arg-type]


def test_decide_needs_a_signed_in_user(db: Database) -> None:
    user = trader(db)
    proposal = propose(db, user, approve=False)
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        db.rpc("decide_trade_proposal", role="authenticated", p_proposal_id=proposal,
               p_decision="approve")


def test_auto_approval_respects_the_users_own_threshold(db: Database) -> None:
    user = trader(db, auto_execute=True)
    set_settings(db, user, min_confidence=Decimal("0.95"))
    assert create(db, user, p_confidence=Decimal("0.9"))["status"] == "pending"
    other = new_user(db)  # defaults: auto_execute off
    assert create(db, other, p_market="ABC-EUR", p_confidence=Decimal("1"))["status"] == "pending"
