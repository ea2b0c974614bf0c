"""G9: execution_audit_log is append-only for every role (postgres included, replica mode too),
and every claim decision, state change and proposal decision leaves its audit row.

Tests share one database per module (`db`), each with its own user and market."""

from __future__ import annotations

import uuid
from typing import Any

import psycopg
import pytest

from tests.pg import Database, claims_for
from tests.test_execution_support import (  # the database fixtures: db, module_db, fresh_db
    _fresh_db_fixture,  # noqa: F401
    _module_db_fixture,  # noqa: F401
    _shared_db_fixture,  # noqa: F401
    claim,
    claimed,
    propose,
    record,
    scalar,
    sql,
    trader,
)

CHANGES = {
    "update": "update public.execution_audit_log set event = 'tampered'",
    "delete": "delete from public.execution_audit_log",
    "truncate": "truncate public.execution_audit_log",
}


def audit(db: Database, **where: Any) -> list[tuple[str, dict[str, Any]]]:
    clause = " and ".join(f"{k} = %({k})s" for k in where)
    rows = sql(db, f"select event, detail from public.execution_audit_log where {clause} "  # noqa: S608
                   "order by id", where)
    return [(event, detail) for event, detail in rows]


def events(db: Database, **where: Any) -> list[str]:
    return [event for event, _ in audit(db, **where)]


# -- append-only -------------------------------------------------------------------------------
@pytest.fixture
def audited(db: Database) -> int:
    """At least one audit row exists; returns the row count."""
    user = trader(db)
    claimed(db, user)
    return scalar(db, "select count(*) from public.execution_audit_log")


@pytest.mark.parametrize("change", sorted(CHANGES))
@pytest.mark.parametrize("replica", [False, True], ids=["origin", "replica"])
def test_g9_superuser_cannot_change_audit_rows(db: Database, audited: int, change: str,
                                               replica: bool) -> None:
    with db.connect() as conn:
        if replica:
            conn.execute("set session_replication_role = replica")
        assert conn.execute("select rolsuper from pg_roles where rolname = current_user"
                            ).fetchone() == (True,)
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="append-only"):
            conn.execute(CHANGES[change])
    assert scalar(db, "select count(*) from public.execution_audit_log") >= audited
    assert scalar(db, "select count(*) from public.execution_audit_log "
                      "where event = 'tampered'") == 0


@pytest.mark.parametrize("change", sorted(CHANGES))
@pytest.mark.parametrize("role", ["service_role", "authenticated", "anon"])
def test_g9_api_roles_cannot_change_audit_rows(db: Database, audited: int, change: str,
                                               role: str) -> None:
    user = uuid.uuid4() if role == "authenticated" else None
    with pytest.raises(psycopg.errors.InsufficientPrivilege), \
            db.as_role(role, claims_for(role, user)) as cur:
        cur.execute(CHANGES[change])
    assert scalar(db, "select count(*) from public.execution_audit_log") >= audited
    assert scalar(db, "select count(*) from public.execution_audit_log "
                      "where event = 'tampered'") == 0


def test_g9_users_cannot_insert_audit_rows(db: Database) -> None:
    user = trader(db)
    with pytest.raises(psycopg.errors.InsufficientPrivilege), db.as_user(user) as cur:
        cur.execute("insert into public.execution_audit_log (user_id, event) "
                    "values (%s, 'forged')", (user,))


# -- every decision is audited -----------------------------------------------------------------
def test_g9_claim_decisions_are_audited_with_their_checks(db: Database) -> None:
    user = trader(db, cooldown_seconds=3600)
    proposal = propose(db, user)
    won = claim(db, user, proposal, key="k1")
    claim(db, user, proposal, key="k1")  # replay
    claim(db, user, proposal, key="k2")  # already executed
    other = propose(db, user)
    claim(db, user, other, key="k1")  # key reused
    rejected = claim(db, user, other, key="k3")  # cooldown
    claim(db, user, uuid.uuid4(), key="k4")  # not found

    rows = audit(db, user_id=user)
    claim_rows = [(e, d) for e, d in rows if e.startswith("claim.")]
    assert [e for e, _ in claim_rows] == ["claim.claimed", "claim.replayed", "claim.conflict",
                                          "claim.conflict", "claim.rejected", "claim.not_found"]
    claimed_detail = claim_rows[0][1]
    assert claimed_detail["checks"] == ["allowlist", "proposal_state", "order_limits", "cooldown",
                                        "anti_flip", "daily_limits", "trading_enabled"]
    assert claimed_detail["failed_checks"] == []
    assert claimed_detail["client_order_id"] == won["execution"]["client_order_id"]
    assert claimed_detail["idempotency_key"] == "k1"
    assert [d["reason"] for e, d in claim_rows if e == "claim.conflict"] == [
        "already_executed", "idempotency_key_reused"]
    rejected_detail = claim_rows[4][1]
    assert rejected_detail["failed_checks"] == rejected["failed_checks"]
    assert rejected_detail["failed_checks"][0]["check"] == "cooldown"
    # The claimed and replayed rows point at the execution.
    assert sql(db, "select execution_id::text from public.execution_audit_log where user_id = %s "
                   "and event in ('claim.claimed', 'claim.replayed') order by id",
               (user,)) == [(won["execution"]["id"],)] * 2


def test_g9_every_rejection_is_audited_even_when_repeated(db: Database) -> None:
    user = trader(db)
    proposal = propose(db, user, approve=False)
    for i in range(3):
        assert claim(db, user, proposal, key=f"r{i}")["outcome"] == "rejected"
    rejected = [d for e, d in audit(db, proposal_id=proposal) if e == "claim.rejected"]
    assert len(rejected) == 3
    assert all(d["failed_checks"][0]["check"] == "proposal_state" for d in rejected)


def test_g9_state_changes_and_ignored_results_are_audited(db: Database) -> None:
    user = trader(db)
    execution = claimed(db, user)
    record(db, execution["id"], status="submitted", exchange_order_id="o-1")
    record(db, execution["id"], status="submitted", exchange_order_id="o-1")
    record(db, execution["id"], status="filled", filled_amount="0.1", filled_amount_quote="10")
    record(db, execution["id"], status="failed")
    rows = audit(db, execution_id=execution["id"])
    assert [e for e, _ in rows] == ["claim.claimed", "execution.status_changed",
                                    "execution.result_unchanged", "execution.status_changed",
                                    "execution.illegal_transition"]
    assert (rows[1][1]["from"], rows[1][1]["to"]) == ("claimed", "submitted")
    filled = rows[3][1]
    assert (filled["from"], filled["to"]) == ("submitted", "filled")
    assert filled["trade_history_written"] is True
    assert filled["proposal_status"] == "executed"
    assert filled["result"]["filled_amount_quote"] == "10"
    assert (rows[4][1]["from"], rows[4][1]["to"]) == ("filled", "failed")


def test_g9_proposal_life_is_audited(db: Database) -> None:
    user = trader(db)
    proposal = propose(db, user, approve=False)
    db.rpc("decide_trade_proposal", role="authenticated", user_id=user, p_proposal_id=proposal,
           p_decision="approve")
    db.rpc("decide_trade_proposal", role="authenticated", user_id=user, p_proposal_id=proposal,
           p_decision="reject")
    assert events(db, proposal_id=proposal) == ["proposal.created", "proposal.decided",
                                                "proposal.decision_refused"]


def test_users_read_only_their_own_audit_rows(db: Database) -> None:
    alice, bob = trader(db), trader(db)
    claimed(db, alice)
    claimed(db, bob)
    with db.as_user(alice) as cur:
        cur.execute("select distinct user_id from public.execution_audit_log")
        assert cur.fetchall() == [(alice,)]


# -- settings and switches -------------------------------------------------------------------------
def changes_audited(db: Database, event: str, user: uuid.UUID | None) -> list[dict[str, Any]]:
    where = "user_id = %s" if user else "user_id is null"
    return [d for (d,) in sql(db, f"select detail from public.execution_audit_log "  # noqa: S608
                                  f"where event = %s and {where} order by id",
                              (event, user) if user else (event,))]


def test_g9_a_users_risk_setting_changes_are_audited_and_readable_by_them(db: Database) -> None:
    user = trader(db)  # (its set-up already changed trading_enabled, as the superuser)
    before = len(changes_audited(db, "trading_settings.changed", user))
    with db.as_user(user) as cur:
        cur.execute("update public.trading_settings set max_daily_quote = 300, "
                    "cooldown_seconds = 60, auto_execute = auto_execute")
    rows = changes_audited(db, "trading_settings.changed", user)[before:]
    assert len(rows) == 1
    assert rows[0]["changes"] == {"max_daily_quote": {"from": 200, "to": 300},
                                  "cooldown_seconds": {"from": 3600, "to": 60}}
    assert (rows[0]["role"], rows[0]["actor_user_id"]) == ("authenticated", str(user))
    assert rows[0]["key"] == {"user_id": str(user)}
    # Nothing changed, nothing audited.
    with db.as_user(user) as cur:
        cur.execute("update public.trading_settings set max_daily_quote = 300")
    assert len(changes_audited(db, "trading_settings.changed", user)) == before + 1
    with db.as_user(user) as cur:
        cur.execute("select count(*) from public.execution_audit_log "
                    "where event = 'trading_settings.changed'")
        assert cur.fetchone() == (before + 1,)


def test_g9_the_operators_changes_to_a_users_settings_are_audited(db: Database) -> None:
    user = trader(db)
    with db.as_service() as cur:
        cur.execute("update public.trading_settings set gpt_daily_budget_usd = 5, "
                    "live_trading_enabled = true where user_id = %s", (user,))
    rows = changes_audited(db, "trading_settings.changed", user)
    assert rows[-1]["changes"] == {"gpt_daily_budget_usd": {"from": 1.00, "to": 5},
                                   "live_trading_enabled": {"from": False, "to": True}}
    assert (rows[-1]["role"], rows[-1]["actor_user_id"]) == ("service_role", None)


def test_g9_system_controls_changes_are_audited(fresh_db: Database) -> None:
    db = fresh_db
    with db.as_service() as cur:
        cur.execute("update public.system_controls set trading_halted = true, max_order_quote = 25")
    sql(db, "update public.system_controls set trading_halted = false")  # the SQL editor
    sql(db, "update public.system_controls set trading_halted = false")  # no change
    rows = changes_audited(db, "system_controls.changed", None)
    assert [r["changes"] for r in rows] == [
        {"trading_halted": {"from": False, "to": True}, "max_order_quote": {"from": 100, "to": 25}},
        {"trading_halted": {"from": True, "to": False}}]
    assert [(r["role"], r["db_user"]) for r in rows] == [("service_role", "authenticator"),
                                                         (None, "postgres")]
    assert all(r["key"] == {"id": True} for r in rows)


def test_g9_allowlists_and_model_prices_are_audited_when_added_changed_or_removed(
        db: Database) -> None:
    """The operator's market allowlist and model prices, and a user's own allowlist: every row
    added or removed is audited with the whole row, every change with what changed, and who."""
    user = trader(db)
    market = "AUDIT-EUR"
    sql(db, "insert into public.market_allowlist (market, enabled, min_order_quote) "
            "values (%s, true, 5)", (market,))
    with db.as_service() as cur:
        cur.execute("update public.market_allowlist set max_order_quote = 40 where market = %s",
                    (market,))
        cur.execute("insert into public.gpt_model_prices (model, input_usd_per_mtok, "
                    "cached_input_usd_per_mtok, output_usd_per_mtok) "
                    "values ('audit-model', 1, 0.5, 4)")
        cur.execute("update public.gpt_model_prices set output_usd_per_mtok = 5 "
                    "where model = 'audit-model'")
    with db.as_user(user) as cur:
        cur.execute("insert into public.trading_allowlist (market) values (%s)", (market,))
        cur.execute("delete from public.trading_allowlist where market = %s", (market,))
    sql(db, "delete from public.gpt_model_prices where model = 'audit-model'")

    def trail(table: str, user_id: uuid.UUID | None, key: dict[str, str]) -> list[Any]:
        where = "user_id = %s" if user_id else "user_id is null"
        rows = sql(db, "select event, detail from public.execution_audit_log "  # noqa: S608
                       f"where event like %s and {where} order by id",
                   (f"{table}.%", user_id) if user_id else (f"{table}.%",))
        return [(event, detail) for event, detail in rows if detail["key"] == key]

    market_rows = trail("market_allowlist", None, {"market": market})
    assert [e for e, _ in market_rows] == ["market_allowlist.added", "market_allowlist.changed"]
    assert market_rows[0][1]["row"]["min_order_quote"] == 5
    assert market_rows[0][1]["db_user"] == "postgres"
    assert market_rows[1][1]["changes"] == {"max_order_quote": {"from": None, "to": 40}}
    assert market_rows[1][1]["role"] == "service_role"

    price_rows = trail("gpt_model_prices", None, {"model": "audit-model"})
    assert [e for e, _ in price_rows] == ["gpt_model_prices.added", "gpt_model_prices.changed",
                                          "gpt_model_prices.removed"]
    assert price_rows[1][1]["changes"] == {"output_usd_per_mtok": {"from": 4, "to": 5}}
    assert price_rows[2][1]["row"]["output_usd_per_mtok"] == 5

    user_rows = trail("trading_allowlist", user, {"user_id": str(user), "market": market})
    assert [e for e, _ in user_rows] == ["trading_allowlist.added", "trading_allowlist.removed"]
    assert all((d["role"], d["actor_user_id"]) == ("authenticated", str(user))
               for _, d in user_rows)
    # The user reads their own allowlist's trail; the operator's tables are not theirs to read.
    with db.as_user(user) as cur:
        cur.execute("select distinct event from public.execution_audit_log "
                    "where event like 'trading_allowlist.%' or event like 'market_allowlist.%'")
        assert {e for (e,) in cur.fetchall()} == {"trading_allowlist.added",
                                                   "trading_allowlist.removed"}

