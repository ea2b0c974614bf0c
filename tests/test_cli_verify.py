"""`oracle verify`, the post-deployment gate (SPEC §7): it passes on a freshly migrated database
and, after each way of breaking an invariant the guarantees rest on, exits 1 naming that check and
the object — RLS off, EXECUTE for an API role on a service-only RPC, an audit trigger disabled or
no longer ALWAYS, the maintenance cron job removed, an execution stuck open, an expired lease held,
the recorded migrations out of step with the files.

Every breaking test repairs what it broke, and the module checks after each test that verify
passes again, so the tests share one database without leaking into each other.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from psycopg.types.json import Jsonb

from console import migrations, verify
from tests.cron_stand_ins import STAND_INS, reapply_maintenance
from tests.oracle_console import Run, oracle
from tests.pg import Database
from tests.test_execution_support import (  # the module's shared database: db, module_db
    _fresh_db_fixture,  # noqa: F401
    _module_db_fixture,  # noqa: F401
    _shared_db_fixture,  # noqa: F401
    claimed,
    market_of,
    sql,
    trader,
)

Capsys = pytest.CaptureFixture[str]


def run_verify(capsys: Capsys, db: Database, *options: str) -> Run:
    return oracle(capsys, "verify", *options, env={"DATABASE_URL": db.url})


def lines_of(run: Run, check: str) -> list[str]:
    """The check's own line and its problem lines."""
    lines = run.out.splitlines()
    start = next(i for i, line in enumerate(lines) if line[6:].startswith(f"{check} "))
    end = start + 1
    while end < len(lines) and lines[end].startswith("      ") and "- " in lines[end]:
        end += 1
    return lines[start:end]


def assert_fails_only(run: Run, check: str, *fragments: str) -> None:
    """Exit 1; `check` FAILs with every fragment in its problem lines; every other check passes
    (or is skipped); the summary names the check."""
    assert run.code == 1, run
    marks = {line[6:].split()[0]: line[:4] for line in run.out.splitlines()[1:-1]
             if line[:4] in ("PASS", "FAIL", "SKIP")}
    assert marks == {name: ("FAIL" if name == check else marks[name] if marks[name] == "SKIP"
                            else "PASS") for name in verify.CHECK_NAMES}, run.out
    block = "\n".join(lines_of(run, check))
    for fragment in fragments:
        assert fragment in block, f"{fragment!r} not in:\n{block}"
    assert run.out.splitlines()[-1].startswith(f"verify FAILED: {check} (1 of ")


@pytest.fixture(autouse=True)
def intact(capsys: Capsys, db: Database) -> Iterator[None]:
    """After each test the database passes verify again (the repair worked)."""
    yield
    after = run_verify(capsys, db)
    assert after.code == 0, f"a test left the database broken:\n{after.out}"


def test_a_freshly_migrated_database_passes(capsys: Capsys, db: Database) -> None:
    run = run_verify(capsys, db)
    assert run.code == 0, run.out
    lines = run.out.splitlines()
    assert lines[0] == f"oracle verify — postgres@127.0.0.1:{db.cluster.port}/{db.name}"
    assert [line[:4] + " " + line[6:].split()[0] for line in lines[1:-1]] == [
        f"{'SKIP' if name == 'migrations' else 'PASS'} {name}" for name in verify.CHECK_NAMES]
    assert "not deployed with the Supabase CLI" in lines[-2]  # the migrations check
    assert lines[-1] == f"verify passed: {len(verify.CHECK_NAMES) - 1} checks passed, 1 skipped"
    data = run_verify(capsys, db, "--json").json
    assert data["passed"] is True
    assert [c["check"] for c in data["checks"]] == list(verify.CHECK_NAMES)


# (what breaks, the statements that break it, the statements that repair it, the check, fragments)
BREAKS = {
    "rls disabled on a table": (
        ["alter table public.market_allowlist disable row level security"],
        ["alter table public.market_allowlist enable row level security"],
        "rls", ["RLS is disabled on public.market_allowlist"]),
    "a new table without rls": (
        ["create table public.verify_probe (id int)"], ["drop table public.verify_probe"],
        "rls", ["RLS is disabled on public.verify_probe"]),
    "execute granted to authenticated on a service-only rpc": (
        ["grant execute on function public.claim_trade_execution(uuid, uuid, text, text, "
         "boolean, integer, integer) to authenticated"],
        ["revoke execute on function public.claim_trade_execution(uuid, uuid, text, text, "
         "boolean, integer, integer) from authenticated"],
        "function_privileges",
        ["authenticated can execute public.claim_trade_execution(uuid,uuid,text,text,boolean,"
         "integer,integer), a service-only SECURITY DEFINER function"]),
    "execute granted to anon on an api function": (
        ["grant execute on function public.decide_trade_proposal(uuid, text) to anon"],
        ["revoke execute on function public.decide_trade_proposal(uuid, text) from anon"],
        "function_privileges", ["anon can execute public.decide_trade_proposal(uuid,text)"]),
    "execute granted to public": (
        ["grant execute on function public.run_maintenance() to public"],
        ["revoke execute on function public.run_maintenance() from public"],
        "function_privileges", ["PUBLIC can execute public.run_maintenance()"]),
    "a new rpc that forgot its revoke": (
        ["create function public.verify_probe() returns int language sql as 'select 1'",
         "grant execute on function public.verify_probe() to public"],
        ["drop function public.verify_probe()"],
        "function_privileges", ["PUBLIC can execute public.verify_probe()",
                                "authenticated can execute public.verify_probe()"]),
    "the audit log's append-only trigger disabled": (
        ["alter table public.execution_audit_log disable trigger execution_audit_log_append_only"],
        ["alter table public.execution_audit_log "
         "enable always trigger execution_audit_log_append_only"],
        "audit_triggers",
        ["trigger execution_audit_log_append_only on public.execution_audit_log is disabled"]),
    "the audit log's truncate trigger no longer ALWAYS": (
        ["alter table public.execution_audit_log enable trigger execution_audit_log_no_truncate"],
        ["alter table public.execution_audit_log "
         "enable always trigger execution_audit_log_no_truncate"],
        "audit_triggers",
        ["trigger execution_audit_log_no_truncate on public.execution_audit_log is enabled, "
         "not ALWAYS"]),
    "the system_controls audit trigger disabled": (
        ["alter table public.system_controls disable trigger system_controls_audit"],
        ["alter table public.system_controls enable trigger system_controls_audit"],
        "audit_triggers", ["trigger system_controls_audit on public.system_controls is disabled"]),
    "the trading_settings audit trigger dropped": (
        ["drop trigger trading_settings_audit on public.trading_settings"],
        ["create trigger trading_settings_audit after update on public.trading_settings "
         "for each row execute function private.audit_row_change()"],
        "audit_triggers", ["trigger trading_settings_audit on public.trading_settings is missing"]),
    "truncate granted on the audit log": (
        ["grant truncate on public.execution_audit_log to service_role"],
        ["revoke truncate on public.execution_audit_log from service_role"],
        "audit_triggers", ["service_role has TRUNCATE on public.execution_audit_log"]),
    "the maintenance cron job removed": (
        ["select cron.unschedule('run-maintenance')"],
        ["select cron.schedule('run-maintenance', '* * * * *', "
         "'select public.run_maintenance()')"],
        "cron_jobs", ["cron job run-maintenance is missing"]),
    "the maintenance cron job paused": (
        ["update cron.job set active = false where jobname = 'run-maintenance'"],
        ["update cron.job set active = true where jobname = 'run-maintenance'"],
        "cron_jobs", ["cron job run-maintenance is inactive"]),
    "the history purge rescheduled to run something else": (
        ["update cron.job set command = 'select 1' where jobname = 'purge-cron-history'"],
        ["update cron.job set command = 'delete from cron.job_run_details where end_time < "
         "now() - interval ''7 days''' where jobname = 'purge-cron-history'"],
        "cron_jobs", ["cron job purge-cron-history runs 'select 1'"]),
}


@pytest.mark.parametrize("case", sorted(BREAKS))
def test_verify_names_each_broken_invariant(capsys: Capsys, db: Database, case: str) -> None:
    breaking, repairing, check, fragments = BREAKS[case]
    for statement in breaking:
        db.query(statement)
    try:
        assert_fails_only(run_verify(capsys, db), check, *fragments)
    finally:
        for statement in repairing:
            db.query(statement)


def test_an_execution_stuck_unknown_past_the_reconcile_window(capsys: Capsys,
                                                              db: Database) -> None:
    user = trader(db)
    execution = claimed(db, user)
    sql(db, "update public.trade_executions set status = 'unknown', "
            "claimed_at = now() - interval '2 hours' where id = %s", (execution["id"],))
    try:
        assert_fails_only(run_verify(capsys, db), "stuck_executions",
                          f"execution {execution['id']} ({execution['market']}) is still "
                          "unknown 2 h after its claim", "is the reconciler running?")
    finally:
        sql(db, "update public.trade_executions set status = 'failed', completed_at = now() "
                "where id = %s", (execution["id"],))


def test_the_reconcile_window_is_an_option(capsys: Capsys, db: Database) -> None:
    """A submitted execution 5 minutes after its claim is normal by default (10 minutes) and
    stuck with a 1-minute window."""
    user = trader(db)
    execution = claimed(db, user)
    sql(db, "update public.trade_executions set status = 'submitted', "
            "claimed_at = now() - interval '5 minutes' where id = %s", (execution["id"],))
    try:
        assert run_verify(capsys, db).code == 0
        assert_fails_only(run_verify(capsys, db, "--reconcile-window", "60"), "stuck_executions",
                          f"execution {execution['id']}", "still submitted 5 min after")
    finally:
        sql(db, "update public.trade_executions set status = 'failed', completed_at = now() "
                "where id = %s", (execution["id"],))


def test_an_expired_lease_still_held(capsys: Capsys, db: Database) -> None:
    user = trader(db)
    job = sql(db, "insert into public.scan_jobs (user_id, market, interval_seconds, locked_by, "
                  "locked_at, lock_expires_at) values (%s, %s, 60, 'worker-gone', "
                  "now() - interval '1 hour', now() - interval '55 minutes') returning id",
              (user, market_of(user)))[0][0]
    try:
        assert_fails_only(run_verify(capsys, db), "expired_leases",
                          f"scan job {job}", "still leased to 'worker-gone' 55 min after the "
                          "lease expired", "is run-maintenance running?")
        # A lease that expired a moment ago is within the grace (maintenance runs every minute).
        sql(db, "update public.scan_jobs set lock_expires_at = now() - interval '30 seconds' "
                "where id = %s", (job,))
        assert run_verify(capsys, db).code == 0
        assert_fails_only(run_verify(capsys, db, "--lease-grace", "10"), "expired_leases",
                          f"scan job {job}")
    finally:
        sql(db, "delete from public.scan_jobs where id = %s", (job,))


def test_recorded_migrations_must_match_the_files(capsys: Capsys, db: Database) -> None:
    """As `supabase db push` records them (supabase_migrations.schema_migrations): every file's
    version, name and statements; here each file's whole text is one statement, which is what a
    cut at no `;` would record (tests/test_migrations.py checks the CLI's real cuts)."""
    files = migrations.migration_files(verify.REPOSITORY_MIGRATIONS)
    assert len(files) >= 6
    sql(db, "create schema supabase_migrations")
    sql(db, "create table supabase_migrations.schema_migrations "
            "(version text primary key, statements text[], name text)")
    try:
        for file in files:
            sql(db, "insert into supabase_migrations.schema_migrations values (%s, %s, %s)",
                (file.version, [file.text().strip()], file.name))
        run = run_verify(capsys, db)
        assert run.code == 0, run.out
        assert f"PASS  migrations           the {len(files)} migrations" in run.out

        newest = files[-1]
        sql(db, "delete from supabase_migrations.schema_migrations where version = %s",
            (newest.version,))
        assert_fails_only(run_verify(capsys, db), "migrations",
                          f"migration {newest.version}_{newest.name} is not applied")
        sql(db, "insert into supabase_migrations.schema_migrations values "
                "(%s, %s, %s), ('29991231000000', '{}', 'from_the_future')",
            (newest.version, [newest.text().strip()], newest.name))
        assert_fails_only(run_verify(capsys, db), "migrations",
                          "migration 29991231000000 (from_the_future) is applied but has no file")
        sql(db, "delete from supabase_migrations.schema_migrations "
                "where version = '29991231000000'")
    finally:
        sql(db, "drop schema supabase_migrations cascade")


def test_a_migration_edited_or_renamed_after_it_was_applied_fails(capsys: Capsys,
                                                                   db: Database) -> None:
    """Compared by content, not by version: what was applied (the recorded statements) must be
    what the file reads now. A row without statements (an old CLI) cannot be compared, and
    says so."""
    files = migrations.migration_files(verify.REPOSITORY_MIGRATIONS)
    sql(db, "create schema supabase_migrations")
    sql(db, "create table supabase_migrations.schema_migrations "
            "(version text primary key, statements text[], name text)")
    try:
        for file in files:
            sql(db, "insert into supabase_migrations.schema_migrations values (%s, %s, %s)",
                (file.version, [file.text().strip()], file.name))
        edited = files[2]
        text = edited.text().strip()
        line = text.count("\n", 0, text.index("create table")) + 1
        applied = text.replace("create table", "create unlogged table", 1)
        sql(db, "update supabase_migrations.schema_migrations set statements = %s "
                "where version = %s", ([applied], edited.version))
        assert_fails_only(run_verify(capsys, db), "migrations",
                          f"migration {edited.filename} was edited after it was applied: from "
                          f"line {line} on, the file is not what `supabase db push` applied",
                          "An applied migration never changes")
        sql(db, "update supabase_migrations.schema_migrations set statements = %s, "
                "name = 'an_older_name' where version = %s", ([text], edited.version))
        assert_fails_only(run_verify(capsys, db), "migrations",
                          f"migration {edited.version} was applied as "
                          f"{edited.version}_an_older_name.sql, but the file is now "
                          f"{edited.filename}: an applied migration was renamed")
        sql(db, "update supabase_migrations.schema_migrations set statements = null, name = %s "
                "where version = %s", (edited.name, edited.version))
        run = run_verify(capsys, db, "--check", "migrations")
        assert run.code == 0, run.out
        assert f"1 recorded without statements, their text not compared ({edited.version})" \
            in run.out
    finally:
        sql(db, "drop schema supabase_migrations cascade")


def test_a_check_that_cannot_run_fails_it_does_not_pass(capsys: Capsys, db: Database) -> None:
    """As a login without the schema's privileges (PostgREST's authenticator): the catalog checks
    still run; the checks that read tables fail with the database's reason."""
    run = oracle(capsys, "verify", env={"DATABASE_URL": db.authenticator_url})
    assert run.code == 1
    block = "\n".join(lines_of(run, "stuck_executions"))
    assert "could not check: permission denied for table trade_executions" in block
    assert "PASS  rls" in run.out


def test_only_the_named_checks_run(capsys: Capsys, db: Database) -> None:
    run = run_verify(capsys, db, "--check", "rls", "--check", "cron_jobs", "--json")
    assert run.code == 0
    assert [c["check"] for c in run.json["checks"]] == ["rls", "cron_jobs"]


def test_the_http_jobs_are_expected_where_pg_net_can_make_the_call() -> None:
    assert [j.name for j in verify.expected_cron_jobs(False)] == [
        "run-maintenance", "purge-cron-history"]
    assert [j.name for j in verify.expected_cron_jobs(True)] == [
        "run-maintenance", "purge-cron-history", "invoke-scan-scheduler",
        "invoke-trading-reconcile"]


def test_where_pg_net_exists_the_scanner_and_reconciler_jobs_are_checked(
        capsys: Capsys, fresh_db: Database) -> None:
    """With pg_net's net.http_post and Vault (stand-ins, tests/cron_stand_ins.py): enabled after
    the migrations ran, both HTTP jobs are named missing; once the maintenance migration ran
    again they pass; the reconciler's job removed, it alone is named."""
    fresh_db.query(STAND_INS)
    run = run_verify(capsys, fresh_db, "--check", "cron_jobs")
    assert run.code == 1
    assert "cron job invoke-scan-scheduler is missing" in run.out
    assert "cron job invoke-trading-reconcile is missing: nothing calls trading_execute's " \
           "/reconcile" in run.out

    reapply_maintenance(fresh_db)
    run = run_verify(capsys, fresh_db, "--check", "cron_jobs")
    assert run.code == 0, run.out
    assert "invoke-scan-scheduler, invoke-trading-reconcile scheduled and active" in run.out

    fresh_db.query("select cron.unschedule('invoke-trading-reconcile')")
    run = run_verify(capsys, fresh_db, "--check", "cron_jobs")
    assert run.code == 1
    assert "cron job invoke-trading-reconcile is missing" in run.out
    assert "invoke-scan-scheduler is" not in run.out


def test_every_api_function_has_its_reason() -> None:
    assert sorted(verify.API_FUNCTIONS) == ["public.decide_trade_proposal(uuid,text)",
                                            "public.get_budget_analytics(uuid,integer)"]
    assert all(len(reason) > 60 for reason in verify.API_FUNCTIONS.values())


def test_an_order_on_the_exchange_without_an_execution_fails_until_acknowledged(
        capsys: Capsys, db: Database) -> None:
    orphan = {"market": "BTC-EUR", "exchange_order_id": "verify-orphan-1",
              "client_order_id": None, "side": "buy", "exchange_status": "filled",
              "result": {"status": "filled", "exchange_order_id": "verify-orphan-1",
                         "filled_amount": "0.0002", "filled_amount_quote": "10"}}
    answer = db.rpc("record_exchange_orders", p_orders=Jsonb([orphan]))
    assert answer["orphans"] == 1, answer
    [[discrepancy_id]] = sql(db, "select id from private.exchange_discrepancies "
                                 "where exchange_order_id = 'verify-orphan-1'")
    try:
        assert_fails_only(run_verify(capsys, db), "exchange_orders",
                          "order verify-orphan-1 on BTC-EUR (clientOrderId none, filled, filled "
                          "0.0002) has no execution: placed outside this backend?",
                          f"acknowledge_exchange_discrepancy('{discrepancy_id}'")
    finally:
        db.rpc("acknowledge_exchange_discrepancy", p_discrepancy_id=discrepancy_id,
               p_note="test: a known manual order")
