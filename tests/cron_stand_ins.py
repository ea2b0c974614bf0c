"""pg_net and Vault stand-ins for the Supabase Cron tests (no tests of its own).

Hosted Supabase schedules the functions' calls with pg_cron + pg_net, URLs and key from Vault
(migrations/*_maintenance.sql schedules them only where `net.http_post` and Vault exist). Neither
exists on the test cluster, so `install(db)` gives a test database a stand-in for each — a
`net.http_post` with pg_net's signature that records what it would send, and a
`vault.decrypted_secrets` view — and re-runs the maintenance migration. `run_job` then runs a
scheduled command exactly as pg_cron would and returns the requests it would have sent; `send`
sends one of them to the real function. Used by tests/test_scan_cron.py (the tick) and
tests/test_reconcile_cron.py (POST /reconcile).
"""

from __future__ import annotations

import json
from typing import Any

import httpx

from stack.cluster import MIGRATIONS
from tests.pg import Database

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


def install(db: Database) -> None:
    """The stand-ins, then the maintenance migration again (it now schedules the calls)."""
    db.query(STAND_INS)
    reapply_maintenance(db)


def reapply_maintenance(db: Database) -> None:
    db.cluster.psql(db.name, file=MAINTENANCE_SQL)


def set_secrets(db: Database, **values: str) -> None:
    """Vault holds exactly these secrets (name → value)."""
    db.query("delete from vault.secrets")
    for name, value in values.items():
        db.query("insert into vault.secrets values (%s, %s)", (name, value))


def run_job(db: Database, job: str) -> list[dict[str, Any]]:
    """What pg_cron does at the minute: run the job's command; then what it would have sent."""
    (command,) = db.query("select command from cron.job where jobname = %s", (job,))[0]
    db.query("delete from net.sent")
    db.query(command)
    rows = db.query("select url, body, params, headers, timeout_milliseconds from net.sent")
    return [dict(zip(("url", "body", "params", "headers", "timeout_ms"), r, strict=True))
            for r in rows]


def send(sent: dict[str, Any]) -> httpx.Response:
    """The recorded request, sent as pg_net would: POST, its URL, headers and JSON body."""
    return httpx.post(sent["url"], headers=sent["headers"],
                      content=json.dumps(sent["body"]).encode(), timeout=30)


def rotate_key_and_send(db: Database, job: str) -> httpx.Response:
    """Rotate the service key in Vault: the job's next requests carry the new key (no
    migration needed), which the function then refuses; returns the answer to the first."""
    db.query("update vault.secrets set secret = 'rotated-key-0123456789' "
             "where name = 'scan_scheduler_service_key'")
    rotated = run_job(db, job)
    assert rotated and {r["headers"]["Authorization"] for r in rotated} == {
        "Bearer rotated-key-0123456789"}
    return send(rotated[0])
