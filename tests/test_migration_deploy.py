"""Deploying onto a live project (SPEC §2): `auth.users` already has users, and transactions are
running while `supabase db push` applies the migrations.

- Users who signed up before the deploy get a trading_settings row with the safe defaults (trading
  off, paper only), and every guarantee holds for them as for a new user: a claim is refused by
  trading_enabled, RLS shows each only their own row, the trigger covers whoever signs up next.
- A DDL lock that has to queue behind an open transaction (creating the trigger and the foreign keys
  on auth.users takes SHARE ROW EXCLUSIVE, which waits for any transaction that wrote a user) fails
  the migration after its lock_timeout, on both roads (`supabase db push` and plain psql), instead
  of waiting — and making every sign-up queue behind it — until that transaction ends.
- The lock_timeout does not outlive the migration's session.
"""

from __future__ import annotations

import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
import pytest

from stack.cluster import LOCAL_SQL, MIGRATIONS, Cluster, ClusterError, sql_files
from tests.pg import Database, connect
from tests.test_execution_support import allow_market, allow_user_market, claim, propose
from tests.test_migrations import Cli, db_url, describe, fresh_cluster, migration_files

EXISTING_USERS = 5
LOCK_TIMEOUT_S = 5
# How long a push may take while a transaction holds auth.users before the test calls it queued:
# the lock timeout plus generous room for the CLI on a loaded machine.
QUEUED_AFTER_S = LOCK_TIMEOUT_S + 40
SAFE_DEFAULTS = {"trading_enabled": False, "live_trading_enabled": False, "auto_execute": False}


def sign_up(conn: psycopg.Connection[Any], count: int = 1) -> list[uuid.UUID]:
    """Users as GoTrue inserts them (the columns supabase/local's auth.users has)."""
    ids = [uuid.uuid4() for _ in range(count)]
    for user_id in ids:
        conn.execute("insert into auth.users (id, email, aud, role, raw_app_meta_data) "
                     "values (%s, %s, 'authenticated', 'authenticated', "
                     "'{\"provider\": \"email\"}')", (user_id, f"{user_id.hex[:8]}@live.test"))
    return ids


@contextmanager
def scratch(prefix: str) -> Iterator[Path]:
    """A directory the postgres OS user can reach (pytest's tmp_path is private to root)."""
    root = Path(tempfile.mkdtemp(prefix=prefix))
    root.chmod(0o755)
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def live_project() -> Iterator[tuple[Cluster, list[uuid.UUID]]]:
    """supabase/local (what the hosted project has), users signed up, then `supabase db push`."""
    with scratch("aio-live-project-") as root:
        cluster = fresh_cluster(root, "cluster")
        try:
            with connect(cluster.url(), autocommit=True) as conn:
                users = sign_up(conn, EXISTING_USERS)
            home = root / "home"
            home.mkdir()
            push = Cli(home=home).run("db", "push", "--db-url", db_url(cluster), "--yes")
            assert push.returncode == 0, describe(push)
            yield cluster, users
        finally:
            cluster.stop()


@pytest.fixture
def live_db(live_project: tuple[Cluster, list[uuid.UUID]]) -> Database:
    return Database(live_project[0], "postgres")


def settings_of(db: Database, user_id: uuid.UUID) -> dict[str, Any] | None:
    with db.connect() as conn:
        cur = conn.execute("select * from public.trading_settings where user_id = %s", (user_id,))
        row = cur.fetchone()
        return None if row is None else dict(zip([c.name for c in cur.description or []], row,
                                                 strict=True))


# -- users who were there before the deploy --------------------------------------------------------
def test_every_existing_user_has_settings_with_the_safe_defaults(
        live_project: tuple[Cluster, list[uuid.UUID]], live_db: Database) -> None:
    _, users = live_project
    missing = live_db.query("select u.id from auth.users u where not exists "
                            "(select from public.trading_settings s where s.user_id = u.id)")
    assert missing == [], f"users without trading_settings after the deploy: {missing}"
    defaults = live_db.query(
        "select column_name, column_default from information_schema.columns "
        "where table_schema = 'public' and table_name = 'trading_settings' "
        "and column_default is not null and column_name not in ('created_at', 'updated_at')")
    assert len(defaults) >= 10, defaults
    for user_id in users:
        row = settings_of(live_db, user_id)
        assert row is not None
        assert {k: row[k] for k in SAFE_DEFAULTS} == SAFE_DEFAULTS, row
        # Every other setting is its column default, exactly what the trigger gives a new user.
        for column, default in defaults:
            assert row[column] == live_db.scalar(f"select {default}"), (column, row)  # noqa: S608


def test_a_claim_for_an_existing_user_is_refused_by_trading_enabled(
        live_project: tuple[Cluster, list[uuid.UUID]], live_db: Database) -> None:
    user_id = live_project[1][0]
    allow_market(live_db, "BTC-EUR")
    allow_user_market(live_db, user_id, "BTC-EUR")
    result = claim(live_db, user_id, propose(live_db, user_id, market="BTC-EUR"))
    assert result["outcome"] == "rejected", result
    assert [c["check"] for c in result["failed_checks"]] == ["trading_enabled"], result
    assert live_db.scalar("select count(*) from public.trade_executions where user_id = %s",
                          (user_id,)) == 0


def test_rls_shows_an_existing_user_only_their_own_settings(
        live_project: tuple[Cluster, list[uuid.UUID]], live_db: Database) -> None:
    users = live_project[1]
    for user_id in users[:2]:
        with live_db.as_user(user_id) as cur:
            seen = [r[0] for r in cur.execute("select user_id from public.trading_settings")]
            assert seen == [user_id]
            cur.execute("update public.trading_settings set cooldown_seconds = 7200")
            assert cur.rowcount == 1  # their own row, and only it
    with pytest.raises(psycopg.errors.InsufficientPrivilege), live_db.as_anon() as cur:
        cur.execute("select count(*) from public.trading_settings")


def test_a_user_who_signs_up_after_the_deploy_gets_settings_from_the_trigger(
        live_db: Database) -> None:
    with live_db.connect() as conn:
        [user_id] = sign_up(conn)
    row = settings_of(live_db, user_id)
    assert row is not None and {k: row[k] for k in SAFE_DEFAULTS} == SAFE_DEFAULTS


def test_the_migrations_lock_timeout_ends_with_their_session(live_db: Database) -> None:
    with live_db.connect() as conn:
        assert conn.execute("show lock_timeout").fetchone() == ("0",)
    assert live_db.query(
        "select setrole, setdatabase, setconfig from pg_db_role_setting "
        "where array_to_string(setconfig, ',') like '%%lock_timeout%%'") == []
    assert live_db.query(
        "select p.oid::regprocedure::text from pg_proc p "
        "where array_to_string(p.proconfig, ',') like '%%lock_timeout%%'") == []


# -- a long transaction on auth.users while the push runs ------------------------------------------
@pytest.fixture
def busy_project() -> Iterator[tuple[Cluster, Path]]:
    with scratch("aio-busy-project-") as root:
        cluster = fresh_cluster(root, "busy")
        try:
            yield cluster, root
        finally:
            cluster.stop()


def test_a_ddl_lock_queued_behind_a_long_transaction_fails_the_deploy_instead_of_waiting(
        busy_project: tuple[Cluster, Path]) -> None:
    """A transaction that signed a user up and has not committed holds auth.users against the
    foundation's foreign keys and trigger on it. Both roads give up after the lock timeout, with
    nothing applied by the push (one transaction per file), and succeed once the transaction is
    over; its user gets the safe settings too."""
    cluster, root = busy_project
    cluster.create_database("plain")
    cluster.apply("plain", sql_files(LOCAL_SQL))
    holders = {name: connect(cluster.url(name)) for name in ("postgres", "plain")}
    try:
        signing_up = {name: sign_up(conn)[0] for name, conn in holders.items()}  # not committed
        home = root / "home"
        home.mkdir()
        cli = Cli(home=home)
        outcome: dict[str, Any] = {}

        def push() -> None:
            started = time.monotonic()
            outcome["push"] = cli.run("db", "push", "--db-url", db_url(cluster), "--yes")
            outcome["push_s"] = time.monotonic() - started

        def plain() -> None:
            started = time.monotonic()
            try:
                cluster.apply("plain", [sorted(MIGRATIONS.glob("*.sql"))[0]])
                outcome["plain"] = "applied"
            except ClusterError as exc:
                outcome["plain"] = str(exc)
            outcome["plain_s"] = time.monotonic() - started

        threads = [threading.Thread(target=push, name="supabase db push"),
                   threading.Thread(target=plain, name="plain psql")]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(QUEUED_AFTER_S)
        queued = [t.name for t in threads if t.is_alive()]
        for conn in holders.values():
            conn.commit()  # lets a queued migration go on, so the threads end either way
        for thread in threads:
            thread.join(120)
        assert not queued, (
            f"a migration was still waiting for its lock after {QUEUED_AFTER_S} s: without a "
            "lock_timeout it queues behind the open transaction, and every sign-up behind it")
        push_proc = outcome["push"]
        assert push_proc.returncode != 0, describe(push_proc)
        assert "lock timeout" in (push_proc.stdout + push_proc.stderr), describe(push_proc)
        assert "lock timeout" in outcome["plain"], outcome["plain"]
        print(f"\npush gave up after {outcome['push_s']:.1f} s, plain psql after "
              f"{outcome['plain_s']:.1f} s")
        with connect(cluster.url(), autocommit=True) as conn:
            applied = conn.execute(
                "select to_regclass('public.trading_settings') is not null").fetchone()
            assert applied == (False,), "the push left part of a migration behind"
    finally:
        for conn in holders.values():
            conn.close()

    retry = cli.run("db", "push", "--db-url", db_url(cluster), "--yes")
    assert retry.returncode == 0, describe(retry)
    recorded = Database(cluster, "postgres").query(
        "select version from supabase_migrations.schema_migrations order by version")
    assert [r[0] for r in recorded] == [v for v, _ in migration_files()]
    row = settings_of(Database(cluster, "postgres"), signing_up["postgres"])
    assert row is not None and {k: row[k] for k in SAFE_DEFAULTS} == SAFE_DEFAULTS
