"""Supabase Cron → trading_execute's POST /reconcile (migrations/*_maintenance.sql).

Like the scanner's tick (tests/test_scan_cron.py, whose pg_net and Vault stand-ins this reuses):
the maintenance migration schedules `invoke-trading-reconcile` only where `net.http_post` and Vault
exist; the test gives a database both, re-runs the migration, runs the scheduled command as pg_cron
would, checks the request against /reconcile's contract, and sends that very request to the real
function (functions-framework on 127.0.0.1, paper mode): it settles an execution left open.
"""

from __future__ import annotations

import json
from typing import Any

import httpx

from tests.execute_harness import SERVICE_KEY, served, trader
from tests.pg import Database
from tests.sandbox_server import SandboxServer
from tests.test_execution_support import backdate, claimed
from tests.test_scan_cron import MAINTENANCE_SQL, STAND_INS

JOB = "invoke-trading-reconcile"


def scheduled(db: Database) -> list[tuple[Any, ...]]:
    return db.query("select jobname, schedule, active from cron.job "
                    "where jobname like 'invoke-%' order by jobname")


def run_scheduled_command(db: Database) -> list[dict[str, Any]]:
    """What pg_cron does at the minute: run the job's command; then what it would have sent."""
    (command,) = db.query("select command from cron.job where jobname = %s", (JOB,))[0]
    db.query("delete from net.sent")
    db.query(command)
    rows = db.query("select url, body, params, headers, timeout_milliseconds from net.sent")
    return [dict(zip(("url", "body", "params", "headers", "timeout_ms"), r, strict=True))
            for r in rows]


def secrets(db: Database, **values: str) -> None:
    db.query("delete from vault.secrets")
    for name, value in values.items():
        db.query("insert into vault.secrets values (%s, %s)", (name, value))


def test_without_pg_net_the_reconciler_is_not_scheduled(db: Database) -> None:
    assert scheduled(db) == []


def test_cron_posts_reconcile_with_the_vault_secrets_and_the_function_settles(
        db: Database, bitvavo_sandbox: SandboxServer) -> None:
    db.query(STAND_INS)
    db.cluster.psql(db.name, file=MAINTENANCE_SQL)
    assert scheduled(db) == [("invoke-scan-scheduler", "* * * * *", True),
                             (JOB, "* * * * *", True)]

    # Nothing is sent until both secrets exist.
    assert run_scheduled_command(db) == []
    secrets(db, trading_execute_url="http://placeholder/")
    assert run_scheduled_command(db) == []
    secrets(db, scan_scheduler_service_key=SERVICE_KEY)
    assert run_scheduled_command(db) == []

    # A paper execution claimed an hour ago whose process is gone: its order was never placed.
    user = trader(db)
    execution = claimed(db, user, amount="10")
    backdate(db, execution["id"], 3600)

    with served(db, bitvavo_sandbox, "paper") as stack:
        for url in (stack.fn.url + "/", stack.fn.url):  # a trailing slash or none: one URL
            secrets(db, trading_execute_url=url, scan_scheduler_service_key=SERVICE_KEY)
            (sent,) = run_scheduled_command(db)
            assert sent["url"] == stack.fn.url + "/reconcile"
        assert sent["headers"] == {"Authorization": f"Bearer {SERVICE_KEY}",
                                   "Content-Type": "application/json"}
        assert sent["body"] == {} and sent["params"] == {}
        assert sent["timeout_ms"] == 60_000

        # The function takes that request and settles the execution: not placed → failed.
        answer = httpx.post(sent["url"], headers=sent["headers"],
                            content=json.dumps(sent["body"]).encode(), timeout=30)
        assert answer.status_code == 200, answer.text
        counts = answer.json()
        assert counts["examined"] >= 1 and counts["failed"] == 1 and counts["errors"] == 0
        assert stack.execution(execution["proposal_id"])["status"] == "failed"  # type: ignore[index]
        assert stack.sandbox.orders() == []

        # Rotating the key in Vault changes the next call, with no migration.
        db.query("update vault.secrets set secret = 'rotated-key-0123456789' "
                 "where name = 'scan_scheduler_service_key'")
        (rotated,) = run_scheduled_command(db)
        assert rotated["headers"]["Authorization"] == "Bearer rotated-key-0123456789"
        refused = httpx.post(rotated["url"], headers=rotated["headers"],
                             content=json.dumps(rotated["body"]).encode(), timeout=30)
        assert refused.status_code == 401


def test_reapplying_keeps_one_job_each(db: Database) -> None:
    db.query(STAND_INS)
    db.cluster.psql(db.name, file=MAINTENANCE_SQL)
    db.cluster.psql(db.name, file=MAINTENANCE_SQL)
    assert [name for name, _, _ in scheduled(db)] == ["invoke-scan-scheduler", JOB]
