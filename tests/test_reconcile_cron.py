"""Supabase Cron → trading_execute's POST /reconcile (migrations/*_maintenance.sql).

Like the scanner's tick (tests/test_scan_cron.py; the pg_net and Vault stand-ins of
tests/cron_stand_ins.py):
the maintenance migration schedules `invoke-trading-reconcile` only where `net.http_post` and Vault
exist; the test gives a database both, re-runs the migration, runs the scheduled command as pg_cron
would, checks the request against /reconcile's contract, and sends that very request to the real
function (functions-framework on 127.0.0.1, paper mode): it settles an execution left open.
"""

from __future__ import annotations

from typing import Any

from tests import cron_stand_ins
from tests.cron_stand_ins import rotate_key_and_send, run_job, send, set_secrets
from tests.execute_harness import SERVICE_KEY, served, trader
from tests.pg import Database
from tests.sandbox_server import SandboxServer
from tests.test_execution_support import backdate, claimed

JOB = "invoke-trading-reconcile"


def scheduled(db: Database) -> list[tuple[Any, ...]]:
    return db.query("select jobname, schedule, active from cron.job "
                    "where jobname like 'invoke-%' order by jobname")


def test_without_pg_net_the_reconciler_is_not_scheduled(db: Database) -> None:
    assert scheduled(db) == []


def test_cron_posts_reconcile_with_the_vault_secrets_and_the_function_settles(
        db: Database, bitvavo_sandbox: SandboxServer) -> None:
    cron_stand_ins.install(db)
    assert scheduled(db) == [("invoke-scan-scheduler", "* * * * *", True),
                             (JOB, "* * * * *", True)]

    # Nothing is sent until both secrets exist.
    assert run_job(db, JOB) == []
    set_secrets(db, trading_execute_url="http://placeholder/")
    assert run_job(db, JOB) == []
    set_secrets(db, scan_scheduler_service_key=SERVICE_KEY)
    assert run_job(db, JOB) == []

    # A paper execution claimed an hour ago whose process is gone: its order was never placed.
    user = trader(db)
    execution = claimed(db, user, amount="10")
    backdate(db, execution["id"], 3600)

    with served(db, bitvavo_sandbox, "paper") as stack:
        for url in (stack.fn.url + "/", stack.fn.url):  # a trailing slash or none: one URL
            set_secrets(db, trading_execute_url=url, scan_scheduler_service_key=SERVICE_KEY)
            (sent,) = run_job(db, JOB)
            assert sent["url"] == stack.fn.url + "/reconcile"
        assert sent["headers"] == {"Authorization": f"Bearer {SERVICE_KEY}",
                                   "Content-Type": "application/json"}
        assert sent["body"] == {} and sent["params"] == {}
        assert sent["timeout_ms"] == 60_000

        # The function takes that request and settles the execution: not placed → failed.
        answer = send(sent)
        assert answer.status_code == 200, answer.text
        counts = answer.json()
        assert counts["examined"] >= 1 and counts["failed"] == 1 and counts["errors"] == 0
        assert stack.execution(execution["proposal_id"])["status"] == "failed"  # type: ignore[index]
        assert stack.sandbox.orders() == []

        assert rotate_key_and_send(db, JOB).status_code == 401


def test_reapplying_keeps_one_job_each(db: Database) -> None:
    cron_stand_ins.install(db)
    cron_stand_ins.reapply_maintenance(db)
    assert [name for name, _, _ in scheduled(db)] == ["invoke-scan-scheduler", JOB]
