"""Supabase Cron → scan_scheduler (the invoke-scan-scheduler job of migrations/*_maintenance.sql).

Hosted Supabase schedules the tick with pg_cron + pg_net, URL and key from Vault. Neither pg_net
nor Vault exists on the test cluster, so this test gives a test database a stand-in for each
(tests/cron_stand_ins.py), re-runs the maintenance migration (which schedules the job only when
both exist), runs the scheduled command exactly as pg_cron would, and checks the request against
the tick's contract. Then it sends that very request to the real function
(functions-framework on 127.0.0.1): the tick accepts it.
"""

from __future__ import annotations

import json
from typing import Any

from shared.scanning.settings import ScannerSettings
from shared.scanning.tick import max_jobs_from_body
from tests import cron_stand_ins
from tests.cron_stand_ins import rotate_key_and_send, run_job, send, set_secrets
from tests.function_server import start_function
from tests.pg import Database
from tests.sandbox_server import SandboxServer
from tests.scan_support import SERVICE_KEY, scan_env

JOB = "invoke-scan-scheduler"


def scheduled(db: Database) -> list[tuple[Any, ...]]:
    return db.query("select jobname, schedule, command, active from cron.job "
                    "where jobname = %s", (JOB,))


def test_without_pg_net_the_tick_is_not_scheduled(db: Database) -> None:
    assert scheduled(db) == []


def test_cron_posts_the_tick_with_the_vault_secrets_as_the_contract_says(
        db: Database, bitvavo_sandbox: SandboxServer) -> None:
    cron_stand_ins.install(db)
    jobs = scheduled(db)
    assert [(name, schedule, active) for name, schedule, _, active in jobs] == [
        (JOB, "* * * * *", True)]

    # No secrets yet: the command runs and sends nothing.
    assert run_job(db, JOB) == []
    set_secrets(db, scan_scheduler_url="http://placeholder/")
    assert run_job(db, JOB) == []  # the key is missing too: still nothing

    with start_function("scan_scheduler", env=scan_env(db, bitvavo_sandbox)) as fn:
        set_secrets(db, scan_scheduler_url=fn.url + "/", scan_scheduler_service_key=SERVICE_KEY)
        both = run_job(db, JOB)
        # Two ticks at once each minute (the deployed schedule), the same request twice.
        assert len(both) == 2 and both[0] == both[1]
        sent = both[0]

        # The request pg_net would send, against the tick's contract.
        assert sent["url"] == fn.url + "/"
        assert sent["headers"] == {"Authorization": f"Bearer {SERVICE_KEY}",
                                   "Content-Type": "application/json"}
        assert sent["body"] == {}  # no max_jobs: the tick drains what is due
        assert sent["params"] == {}
        assert max_jobs_from_body(json.dumps(sent["body"]).encode(), 100) is None
        # pg_net waits as long as the function may run: its deployed timeout, which a tick
        # (TICK_TIME_BUDGET_SECONDS + one job + the release) never exceeds by construction.
        defaults = ScannerSettings()
        assert sent["timeout_ms"] == defaults.function_timeout_seconds * 1000
        assert defaults.tick_time_budget_seconds * 1000 < sent["timeout_ms"]

        # And the function takes it: the same method, URL, headers and body.
        answer = send(sent)
        assert answer.status_code == 200, answer.text
        assert answer.json()["claimed"] == 0
        assert rotate_key_and_send(db, JOB).status_code == 401


def test_reapplying_keeps_one_invoke_job(db: Database) -> None:
    cron_stand_ins.install(db)
    cron_stand_ins.reapply_maintenance(db)
    assert len(scheduled(db)) == 1
