"""Supabase Cron → scan_scheduler (migrations/*_maintenance.sql, issue 8 Build §7).

Hosted Supabase schedules the tick with pg_cron + pg_net, URL and key from Vault. Neither pg_net
nor Vault exists on the test cluster, so this test gives a test database a stand-in for each — a
`net.http_post` with pg_net's signature that records what it would send, and a
`vault.decrypted_secrets` view — re-runs the maintenance migration (which schedules the job only
when both exist), runs the scheduled command exactly as pg_cron would, and checks the request
against the tick's contract. Then it sends that very request to the real function
(functions-framework on 127.0.0.1): the tick accepts it.
"""

from __future__ import annotations

import json
from typing import Any

import httpx

from scripts.pgcluster import MIGRATIONS
from shared.scanning.settings import ScannerSettings
from shared.scanning.tick import DEFAULT_MAX_JOBS, max_jobs_from_body
from tests.function_server import start_function
from tests.pg import Database
from tests.sandbox_server import SandboxServer
from tests.scan_support import SERVICE_KEY, scan_env

MAINTENANCE_SQL = next(MIGRATIONS.glob("*_maintenance.sql"))

STAND_INS = """
create schema net;
create table net.sent (id bigserial primary key, url text, body jsonb, params jsonb,
                       headers jsonb, timeout_milliseconds integer);
-- pg_net's signature (supabase/pg_net docs/api.md); records instead of sending.
create function net.http_post(
  url text,
  body jsonb default '{}'::jsonb,
  params jsonb default '{}'::jsonb,
  headers jsonb default '{"Content-Type": "application/json"}'::jsonb,
  timeout_milliseconds integer default 5000
) returns bigint language sql as $$
  insert into net.sent (url, body, params, headers, timeout_milliseconds)
  values (url, body, params, headers, timeout_milliseconds) returning id
$$;
create schema vault;
create table vault.secrets (name text primary key, secret text not null);
create view vault.decrypted_secrets as select name, secret as decrypted_secret from vault.secrets;
"""


def scheduled(db: Database) -> list[tuple[Any, ...]]:
    return db.query("select jobname, schedule, command, active from cron.job "
                    "where jobname = 'invoke-scan-scheduler'")


def run_scheduled_command(db: Database) -> list[dict[str, Any]]:
    """What pg_cron does at the minute: run the job's command; then what it would have sent."""
    (command,) = db.query("select command from cron.job "
                          "where jobname = 'invoke-scan-scheduler'")[0]
    db.query("delete from net.sent")
    db.query(command)
    rows = db.query("select url, body, params, headers, timeout_milliseconds from net.sent")
    return [dict(zip(("url", "body", "params", "headers", "timeout_ms"), r, strict=True))
            for r in rows]


def test_without_pg_net_the_tick_is_not_scheduled(db: Database) -> None:
    assert scheduled(db) == []


def test_cron_posts_the_tick_with_the_vault_secrets_as_the_contract_says(
        db: Database, bitvavo_sandbox: SandboxServer) -> None:
    db.query(STAND_INS)
    db.cluster.psql(db.name, file=MAINTENANCE_SQL)
    jobs = scheduled(db)
    assert [(name, schedule, active) for name, schedule, _, active in jobs] == [
        ("invoke-scan-scheduler", "* * * * *", True)]

    # No secrets yet: the command runs and sends nothing.
    assert run_scheduled_command(db) == []
    db.query("insert into vault.secrets values ('scan_scheduler_url', 'http://placeholder/')")
    assert run_scheduled_command(db) == []  # the key is missing too: still nothing

    with start_function("scan_scheduler", env=scan_env(db, bitvavo_sandbox)) as fn:
        db.query("delete from vault.secrets")
        db.query("insert into vault.secrets values ('scan_scheduler_url', %s), "
                 "('scan_scheduler_service_key', %s)", (fn.url + "/", SERVICE_KEY))
        (sent,) = run_scheduled_command(db)

        # The request pg_net would send, against the tick's contract.
        assert sent["url"] == fn.url + "/"
        assert sent["headers"] == {"Authorization": f"Bearer {SERVICE_KEY}",
                                   "Content-Type": "application/json"}
        assert sent["body"] == {"max_jobs": DEFAULT_MAX_JOBS}
        assert sent["params"] == {}
        assert max_jobs_from_body(json.dumps(sent["body"]).encode(), 100) == DEFAULT_MAX_JOBS
        # pg_net waits as long as the function may run: its deployed timeout, which a tick
        # (TICK_TIME_BUDGET_SECONDS + one job + the release) never exceeds by construction.
        defaults = ScannerSettings()
        assert sent["timeout_ms"] == defaults.function_timeout_seconds * 1000
        assert defaults.tick_time_budget_seconds * 1000 < sent["timeout_ms"]

        # And the function takes it: the same method, URL, headers and body.
        answer = httpx.post(sent["url"], headers=sent["headers"],
                            content=json.dumps(sent["body"]).encode(), timeout=30)
        assert answer.status_code == 200, answer.text
        assert answer.json()["claimed"] == 0
        # Rotating the key in Vault changes the next call, with no migration.
        db.query("update vault.secrets set secret = 'rotated-key-0123456789' "
                 "where name = 'scan_scheduler_service_key'")
        (rotated,) = run_scheduled_command(db)
        assert rotated["headers"]["Authorization"] == "Bearer rotated-key-0123456789"
        refused = httpx.post(rotated["url"], headers=rotated["headers"],
                             content=json.dumps(rotated["body"]).encode(), timeout=30)
        assert refused.status_code == 401


def test_reapplying_keeps_one_invoke_job(db: Database) -> None:
    db.query(STAND_INS)
    db.cluster.psql(db.name, file=MAINTENANCE_SQL)
    db.cluster.psql(db.name, file=MAINTENANCE_SQL)
    assert len(scheduled(db)) == 1
