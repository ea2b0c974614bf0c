"""Maintenance (migrations/*_maintenance.sql): run_maintenance frees expired scan-job leases (G2),
expires stale proposals, releases GPT reservations older than their 15-minute lifetime (G7);
pg_cron runs it every minute.
"""

from __future__ import annotations

import uuid
from decimal import Decimal
from typing import Any

import psycopg
import pytest

from tests.cron_stand_ins import reapply_maintenance
from tests.pg import Database


def proposal(db: Database, user: uuid.UUID, status: str, expires_in_seconds: int) -> uuid.UUID:
    decided = status not in ("pending",)
    return db.scalar(
        "insert into public.trade_proposals (user_id, market, side, amount_quote, confidence, "
        "rationale, source, status, expires_at, decided_at, decided_by) values "
        "(%s, 'BTC-EUR', 'buy', 10, 0.9, 'test', 'rules', %s, "
        "now() + make_interval(secs => %s), case when %s then now() end, "
        "case when %s then 'user' end) returning id",
        (user, status, expires_in_seconds, decided, decided))


def reservation(db: Database, user: uuid.UUID, minutes_ago: int,
                status: str = "reserved") -> uuid.UUID:
    return db.scalar(
        "insert into public.gpt_usage_log (user_id, model, status, reserved_usd, cost_usd, "
        "prompt_tokens, cached_prompt_tokens, completion_tokens, created_at, settled_at) "
        "values (%(u)s, 'gpt-4o-mini', %(s)s, 0.01, case when %(s)s = 'settled' then 0.005 end, "
        "case when %(s)s = 'settled' then 10 end, case when %(s)s = 'settled' then 0 end, "
        "case when %(s)s = 'settled' then 10 end, now() - make_interval(mins => %(m)s), "
        "case when %(s)s = 'settled' then now() end) returning id",
        {"u": user, "s": status, "m": minutes_ago})


def statuses(db: Database, table: str, ids: list[uuid.UUID]) -> list[str]:
    rows = dict(db.query(f"select id, status from public.{table} where id = any(%s)",  # noqa: S608
                         (ids,)))
    return [rows[i] for i in ids]


@pytest.fixture
def world(db: Database) -> dict[str, Any]:
    db.query("insert into public.market_allowlist (market, enabled) values ('BTC-EUR', true), "
             "('ETH-EUR', true)")
    user = db.create_user()
    db.query("insert into public.trading_allowlist (user_id, market) values (%s, 'BTC-EUR'), "
             "(%s, 'ETH-EUR')", (user, user))
    jobs = [db.scalar("insert into public.scan_jobs (user_id, market, next_run_at) "
                      "values (%s, %s, now() - interval '1 minute') returning id", (user, m))
            for m in ("BTC-EUR", "ETH-EUR")]
    return {"db": db, "user": user, "jobs": jobs}


def test_run_maintenance_frees_expired_leases_expires_stale_proposals_and_releases_old_reservations(
        world: dict[str, Any]) -> None:
    db, user, jobs = world["db"], world["user"], world["jobs"]
    # Leases: one expired (a crashed worker), one live.
    db.rpc_rows("claim_due_scan_jobs", p_worker_id="crashed", p_limit=2)
    db.query("update public.scan_jobs set locked_at = now() - interval '10 minutes', "
             "lock_expires_at = now() - interval '1 second' where id = %s", (jobs[0],))
    # Proposals: stale pending + stale approved expire; fresh ones and decided ones stay.
    stale = [proposal(db, user, "pending", -1), proposal(db, user, "approved", -60)]
    kept = [proposal(db, user, "pending", 600), proposal(db, user, "approved", 600),
            proposal(db, user, "rejected", -60)]
    # Reservations: 16 minutes old → released; 14 minutes old and settled ones stay.
    old = reservation(db, user, 16)
    recent = reservation(db, user, 14)
    settled = reservation(db, user, 60, status="settled")

    result = db.rpc("run_maintenance")
    assert (result["expired_locks"], result["expired_proposals"],
            result["released_reservations"]) == (1, 2, 1)

    assert db.scalar("select locked_by from public.scan_jobs where id = %s", (jobs[0],)) is None
    assert db.scalar("select locked_by from public.scan_jobs where id = %s", (jobs[1],)) == (
        "crashed")
    assert statuses(db, "trade_proposals", stale) == ["expired", "expired"]
    assert statuses(db, "trade_proposals", kept) == ["pending", "approved", "rejected"]
    assert statuses(db, "gpt_usage_log", [old, recent, settled]) == [
        "released", "reserved", "settled"]
    assert db.scalar("select release_reason from public.gpt_usage_log where id = %s",
                     (old,)) == "stale_reservation"
    audited = db.query("select event, proposal_id from public.execution_audit_log "
                       "where user_id = %s and event in ('proposal.expired', "
                       "'gpt_budget.reservation_released') order by id", (user,))
    assert sorted(e for e, _ in audited) == ["gpt_budget.reservation_released",
                                             "proposal.expired", "proposal.expired"]
    assert {p for e, p in audited if e == "proposal.expired"} == set(stale)

    # Nothing left to do: a second run changes nothing.
    again = db.rpc("run_maintenance")
    assert (again["expired_locks"], again["expired_proposals"],
            again["released_reservations"]) == (0, 0, 0)


def test_run_maintenance_release_frees_budget_for_new_reservations(world: dict[str, Any]) -> None:
    db, user = world["db"], world["user"]
    db.query("update public.trading_settings set gpt_hourly_budget_usd = 0.01 where user_id = %s",
             (user,))
    reservation(db, user, 20)  # 0.01 reserved 20 minutes ago: the hour is used up
    denied = db.rpc("reserve_gpt_budget", p_user_id=user, p_model="gpt-4o-mini",
                    p_max_prompt_tokens=1000, p_max_completion_tokens=1000)
    assert denied["allowed"] is False and denied["reason"] == "hourly_budget_exceeded"
    assert db.rpc("run_maintenance")["released_reservations"] == 1
    allowed = db.rpc("reserve_gpt_budget", p_user_id=user, p_model="gpt-4o-mini",
                     p_max_prompt_tokens=1000, p_max_completion_tokens=1000)
    assert allowed["allowed"] is True and allowed["reserved_usd"] == Decimal("0.00075")


@pytest.mark.parametrize("role", ["anon", "authenticated"])
def test_run_maintenance_is_service_only(world: dict[str, Any], role: str) -> None:
    db = world["db"]
    with pytest.raises(psycopg.Error) as exc:
        db.rpc("run_maintenance", role=role,
               user_id=world["user"] if role == "authenticated" else None)
    assert exc.value.sqlstate == "42501"


def test_pg_cron_runs_maintenance_every_minute_and_schedules_no_http_call_without_pg_net(
        db: Database) -> None:
    jobs = db.query("select jobname, schedule, command, active from cron.job "
                    "where command like '%%run_maintenance%%'")
    assert jobs == [("run-maintenance", "* * * * *", "select public.run_maintenance()", True)]
    assert db.scalar("select count(*) from cron.job where jobname = 'invoke-scan-scheduler'") == 0
    assert db.scalar("select count(*) from cron.job where jobname = 'purge-cron-history'") == 1


def test_reapplying_the_maintenance_migration_keeps_one_job_of_each(db: Database) -> None:
    before = db.query("select jobname, schedule, command from cron.job order by jobname")
    reapply_maintenance(db)
    after = db.query("select jobname, schedule, command from cron.job order by jobname")
    assert after == before
    assert [name for name, *_ in after].count("run-maintenance") == 1
