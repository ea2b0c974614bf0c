"""SPEC §2 migration conformance with the real Supabase CLI (pinned in package.json).

On a FRESH PostgreSQL 15 + pg_cron cluster that has only `supabase/local/*.sql` (what hosted
Supabase already has), `supabase db push --db-url … --yes` must apply every migration and record
it in `supabase_migrations.schema_migrations`; a second push is a no-op; `supabase migration list`
shows every version on both sides. Plain `psql -v ON_ERROR_STOP=1` over local + migrations in
file-name order must give the same schema, and `supabase/seed.sql` applies (twice) on top.

The CLI is run offline: telemetry and the update check are switched off by environment
(`SUPABASE_TELEMETRY_DISABLED`, `DO_NOT_TRACK`, `SUPABASE_NO_UPDATE_NOTIFIER`, all honoured by
2.117.0) and HOME is a temp dir, because it writes ~/.supabase. A missing CLI fails with the
install command; nothing here is ever skipped.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from console import migrations
from stack.cluster import LOCAL_SQL, MIGRATIONS, ROOT, SEED, Cluster, free_port, sql_files
from tests.oracle_console import oracle
from tests.pg import connect

SUPABASE_BIN = ROOT / "node_modules" / ".bin" / "supabase"
PINNED_VERSION = json.loads((ROOT / "package.json").read_text())["devDependencies"]["supabase"]
INSTALL_HINT = (
    f"the Supabase CLI is not installed at {SUPABASE_BIN.relative_to(ROOT)}. Install the pinned "
    f"version (supabase@{PINNED_VERSION}, package.json + package-lock.json) with:\n"
    f"  cd {ROOT} && npm ci\n"
    "(needs Node.js >= 18 and npm; the binary comes from the npm registry's "
    "@supabase/cli-<platform> package, nothing is downloaded from elsewhere)"
)
MIGRATION_FILE = re.compile(r"^(\d{14})_([a-z0-9_]+)\.sql$")
CLI_TIMEOUT = 300


def migration_files() -> list[tuple[str, str]]:
    """(version, name) of every migration file, in file-name order."""
    found = []
    for path in sorted(MIGRATIONS.glob("*.sql")):
        match = MIGRATION_FILE.match(path.name)
        assert match, f"{path.name}: migration files must be named <YYYYMMDDHHMMSS>_<name>.sql"
        found.append((match.group(1), match.group(2)))
    return found


@dataclass
class Cli:
    home: Path

    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "HOME": str(self.home),
            "SUPABASE_TELEMETRY_DISABLED": "1",
            "DO_NOT_TRACK": "1",
            "SUPABASE_NO_UPDATE_NOTIFIER": "1",
            "NO_COLOR": "1",
        }

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        assert SUPABASE_BIN.exists(), INSTALL_HINT
        assert shutil.which("node"), "Node.js is not installed (the CLI shim needs it).\n" + (
            INSTALL_HINT)
        started = time.monotonic()
        proc = subprocess.run([str(SUPABASE_BIN), *args], cwd=ROOT, env=self.env(),
                              capture_output=True, text=True, timeout=CLI_TIMEOUT,
                              stdin=subprocess.DEVNULL, check=False)
        print(f"$ supabase {' '.join(args)}  # exit {proc.returncode} in "
              f"{time.monotonic() - started:.2f}s\n{proc.stdout}{proc.stderr}")
        return proc


def db_url(cluster: Cluster) -> str:
    return f"postgresql://postgres@127.0.0.1:{cluster.port}/postgres?sslmode=disable"


def describe(proc: subprocess.CompletedProcess[str]) -> str:
    return f"exit {proc.returncode}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"


def fresh_cluster(root: Path, name: str) -> Cluster:
    """A new PostgreSQL 15 + pg_cron (cron.database_name = postgres) with supabase/local only."""
    cluster = Cluster(data_dir=root / name, port=free_port(), cron_database="postgres",
                      settings={"fsync": "off", "synchronous_commit": "off"})
    cluster.init()
    cluster.start()
    cluster.apply("postgres", sql_files(LOCAL_SQL))
    return cluster


@pytest.fixture(scope="module")
def workdir() -> Iterator[Path]:
    tmp = Path(tempfile.mkdtemp(prefix="aio-migrations-"))
    tmp.chmod(0o755)  # the postgres OS user (we may be root) must reach the data directories
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(scope="module")
def cli(workdir: Path) -> Cli:
    home = workdir / "home"
    home.mkdir()
    return Cli(home=home)


@pytest.fixture(scope="module")
def cli_cluster(workdir: Path) -> Iterator[Cluster]:
    cluster = fresh_cluster(workdir, "cli")
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="module")
def psql_cluster(workdir: Path) -> Iterator[Cluster]:
    # A cluster of its own: pg_cron can only be created in cron.database_name.
    cluster = fresh_cluster(workdir, "psql")
    try:
        cluster.apply("postgres", sql_files(MIGRATIONS))
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="module")
def first_push(cli: Cli, cli_cluster: Cluster) -> subprocess.CompletedProcess[str]:
    return cli.run("db", "push", "--db-url", db_url(cli_cluster), "--yes")


def schema_migrations(cluster: Cluster) -> list[tuple[str, str, int]]:
    with connect(cluster.url(), autocommit=True) as conn:
        return [(v, n, k) for v, n, k in conn.execute(
            "select version, name, coalesce(cardinality(statements), 0) "
            "from supabase_migrations.schema_migrations order by version").fetchall()]


# -- the CLI ---------------------------------------------------------------------------------
def test_supabase_cli_is_the_pinned_version(cli: Cli) -> None:
    assert PINNED_VERSION == "2.117.0", "package.json must pin supabase at exactly 2.117.0"
    lock = json.loads((ROOT / "package-lock.json").read_text())
    assert lock["packages"]["node_modules/supabase"]["version"] == PINNED_VERSION
    proc = cli.run("--version")
    assert proc.returncode == 0, describe(proc)
    assert proc.stdout.strip() == PINNED_VERSION, describe(proc)


def test_config_toml_is_read_without_complaint(first_push: Any) -> None:
    # `db push` reads supabase/config.toml first; 2.117.0 answers an invalid value with
    # "Failed reading config: …" and exit 1 before it connects.
    text = f"{first_push.stdout}\n{first_push.stderr}".lower()
    assert "failed reading config" not in text, describe(first_push)
    assert first_push.returncode == 0, describe(first_push)
    config = (ROOT / "supabase" / "config.toml").read_text()
    assert 'project_id = "auto-invest-oracle"' in config
    assert re.search(r"(?m)^major_version = 15$", config)
    assert re.search(r"(?m)^port = 54322$", config)


# -- db push ---------------------------------------------------------------------------------
def test_db_push_applies_every_migration(first_push: Any, cli_cluster: Cluster) -> None:
    assert first_push.returncode == 0, describe(first_push)
    expected = migration_files()
    assert expected, "no migration files found"
    output = first_push.stdout + first_push.stderr
    for version, name in expected:
        assert f"{version}_{name}.sql" in output, describe(first_push)
    rows = schema_migrations(cli_cluster)
    assert [(v, n) for v, n, _ in rows] == expected
    assert all(k > 0 for _, _, k in rows), f"a migration was recorded without statements: {rows}"


def test_second_db_push_is_a_no_op(first_push: Any, cli: Cli, cli_cluster: Cluster) -> None:
    assert first_push.returncode == 0, describe(first_push)
    before = schema_migrations(cli_cluster)
    proc = cli.run("db", "push", "--db-url", db_url(cli_cluster), "--yes")
    assert proc.returncode == 0, describe(proc)
    output = (proc.stdout + proc.stderr).lower()
    assert "up to date" in output, describe(proc)
    assert "applying migration" not in output, describe(proc)
    assert schema_migrations(cli_cluster) == before


def test_migration_list_shows_every_version_applied(first_push: Any, cli: Cli,
                                                     cli_cluster: Cluster) -> None:
    assert first_push.returncode == 0, describe(first_push)
    proc = cli.run("migration", "list", "--db-url", db_url(cli_cluster))
    assert proc.returncode == 0, describe(proc)
    rows: dict[str, tuple[str, str]] = {}
    for line in proc.stdout.splitlines():
        cells = [c.strip().strip("`").strip() for c in line.split("|")]
        if len(cells) == 3 and re.fullmatch(r"\d{14}", cells[0] or cells[1]):
            rows[cells[0] or cells[1]] = (cells[0], cells[1])
    versions = [v for v, _ in migration_files()]
    assert sorted(rows) == versions, describe(proc)
    for version in versions:
        assert rows[version] == (version, version), (
            f"{version} is not applied on both sides (Local, Remote) = {rows[version]}\n"
            + describe(proc))


# -- plain psql gives the same schema --------------------------------------------------------
CATALOG_QUERIES = {
    "tables": """
        select n.nspname || '.' || c.relname || ' kind=' || c.relkind::text
               || ' rls=' || c.relrowsecurity::text
        from pg_class c join pg_namespace n on n.oid = c.relnamespace
        where n.nspname in ('public', 'private', 'auth', 'extensions')
          and c.relkind in ('r', 'p', 'v', 'm', 'S')""",
    "columns": """
        select table_schema || '.' || table_name || '.' || column_name || ' ' || data_type
               || ' null=' || is_nullable || ' default=' || coalesce(column_default, '')
        from information_schema.columns where table_schema in ('public', 'private')""",
    "constraints": """
        select conrelid::regclass::text || ' ' || conname || ' ' || pg_get_constraintdef(oid)
        from pg_constraint where connamespace = 'public'::regnamespace""",
    "indexes": """
        select indexname || ' ' || indexdef from pg_indexes where schemaname = 'public'""",
    "functions": """
        select p.oid::regprocedure::text || ' returns ' || pg_get_function_result(p.oid)
               || ' definer=' || p.prosecdef::text || ' config=' || coalesce(p.proconfig::text, '')
               || ' acl=' || coalesce(p.proacl::text, 'default')
        from pg_proc p join pg_namespace n on n.oid = p.pronamespace
        where n.nspname in ('public', 'private')""",
    "policies": """
        select schemaname || '.' || tablename || ' ' || policyname || ' ' || cmd || ' '
               || roles::text || ' using=' || coalesce(qual, '')
               || ' check=' || coalesce(with_check, '')
        from pg_policies where schemaname = 'public'""",
    "triggers": """
        select tgrelid::regclass::text || ' ' || tgname || ' ' || tgenabled::text
        from pg_trigger where not tgisinternal""",
    "table_grants": """
        select grantee || ' ' || privilege_type || ' ' || table_schema || '.' || table_name
        from information_schema.role_table_grants where table_schema = 'public'""",
    "column_grants": """
        select grantee || ' ' || privilege_type || ' ' || table_name || '.' || column_name
        from information_schema.column_privileges
        where table_schema = 'public' and grantee in ('anon', 'authenticated', 'service_role')""",
    "cron_jobs": "select jobname || ' ' || schedule || ' ' || command from cron.job",
}


def catalog(cluster: Cluster) -> dict[str, set[str]]:
    with connect(cluster.url(), autocommit=True) as conn:
        return {name: {row[0] for row in conn.execute(sql).fetchall()}
                for name, sql in CATALOG_QUERIES.items()}


def test_plain_psql_gives_the_same_schema_as_db_push(first_push: Any, cli_cluster: Cluster,
                                                     psql_cluster: Cluster) -> None:
    assert first_push.returncode == 0, describe(first_push)
    pushed, plain = catalog(cli_cluster), catalog(psql_cluster)
    public_tables = {t for t in plain["tables"] if t.startswith("public.") and " kind=r" in t}
    assert len(public_tables) >= 11, f"plain psql made too few tables: {sorted(plain['tables'])}"
    diffs = {}
    for name in CATALOG_QUERIES:
        only_push = pushed[name] - plain[name]
        only_psql = plain[name] - pushed[name]
        if only_push or only_psql:
            diffs[name] = {"only db push": sorted(only_push), "only plain psql": sorted(only_psql)}
    assert not diffs, json.dumps(diffs, indent=2)


def test_plain_psql_records_no_migration_history(psql_cluster: Cluster) -> None:
    # Plain psql is the SPEC §2 path for a bare PostgreSQL; only the CLI keeps a history table.
    with connect(psql_cluster.url(), autocommit=True) as conn:
        assert conn.execute(
            "select to_regclass('supabase_migrations.schema_migrations')").fetchone() == (None,)


# -- the deployment gate ---------------------------------------------------------------------
def test_oracle_verify_passes_on_the_pushed_database_migrations_included(
        first_push: Any, cli_cluster: Cluster, capsys: pytest.CaptureFixture[str]) -> None:
    """`oracle verify`, the README's last deployment step, on what `supabase db push` built (cron
    in the database pg_cron runs in, the migration history recorded): every check passes, the
    migrations check included."""
    assert first_push.returncode == 0, describe(first_push)
    run = oracle(capsys, "verify", "--db-url", db_url(cli_cluster))
    assert run.code == 0, run.out + run.err
    assert f"PASS  migrations           the {len(migration_files())} migrations" in run.out
    assert "SKIP" not in run.out


def test_oracle_verify_passes_on_the_plain_psql_database(
        psql_cluster: Cluster, capsys: pytest.CaptureFixture[str]) -> None:
    run = oracle(capsys, "verify", "--db-url", psql_cluster.url())
    assert run.code == 0, run.out + run.err
    assert "SKIP  migrations" in run.out  # no history table to compare with


# -- what db push records is each file's text ---------------------------------------------------
def test_every_file_was_applied_as_it_reads(first_push: Any, cli_cluster: Cluster) -> None:
    """The statements the CLI recorded for each migration, taken in order, are the file's text
    with nothing but white space and semicolons between them (console.migrations)."""
    assert first_push.returncode == 0, describe(first_push)
    with connect(cli_cluster.url(), autocommit=True) as conn:
        history = migrations.read_history(conn)
    assert history is not None
    found = migrations.compare_history(migrations.migration_files(MIGRATIONS), history)
    assert (found.matching, found.pending, found.unknown, found.renamed, found.edited,
            found.unrecorded) == (len(migration_files()), [], [], [], [], [])


CUTS_SQL = """-- a header comment; with a semicolon
create table cuts (id int primary key, note text default 'a;b', "odd;name" text);

/* a block comment; /* nested; */ still inside; */
insert into cuts (id, note) values (1, 'it''s; quoted');;

create function cuts_body() returns int language plpgsql as $body$
begin
  perform 1; -- inside dollar quotes
  return 2;
end;
$body$;

create function cuts_atomic() returns int language sql
begin atomic
  select 1;
  select 2;
end;
select $$;$$ as dollar, 'x' as "y;z"
-- a last statement without a semicolon
"""
# (what to change, the line it is on): every edit of what was applied is seen, at its line.
CUTS_EDITS = [
    ("a header comment;", "a header comment:", 1),
    ("default 'a;b'", "default 'a; b'", 2),
    ("nested; */", "nested, */", 4),
    ("perform 1;", "perform 2;", 9),
    ("  select 2;\n", "", 17),                      # a statement of a body removed
    ("quoted');;\n", "quoted')\n", 5),              # two statements run together
    ("as dollar", "as dollars", 19),
    ("without a semicolon\n", "without a semicolon\nselect 3;\n", 21),  # one more at the end
]


def test_the_clis_cuts_are_read_back_from_the_file_whatever_the_sql(cli: Cli,
                                                                     workdir: Path) -> None:
    """Quotes, dollar quotes, nested comments, BEGIN ATOMIC, `;;`, a last statement without
    `;`: pushed by the real CLI, its recorded statements are the file's text; each edit is
    found at its line; white space and empty statements between statements are not recorded,
    so changing them changes nothing."""
    cluster = fresh_cluster(workdir, "cuts")
    try:
        project = workdir / "cuts-project"
        (project / "supabase" / "migrations").mkdir(parents=True)
        shutil.copy(ROOT / "supabase" / "config.toml", project / "supabase" / "config.toml")
        (project / "supabase" / "migrations" / "20260101000000_cuts.sql").write_text(CUTS_SQL)
        pushed = cli.run("db", "push", "--db-url", db_url(cluster), "--yes", "--workdir",
                         str(project))
        assert pushed.returncode == 0, describe(pushed)
        with connect(cluster.url(), autocommit=True) as conn:
            history = migrations.read_history(conn)
            assert conn.execute("select cuts_body() + cuts_atomic()").fetchone() == (4,)
    finally:
        cluster.stop()
    assert history is not None and len(history) == 1
    statements = history[0].statements
    assert statements is not None and len(statements) == 5, statements
    assert migrations.first_difference(CUTS_SQL, statements) is None
    for old, new, line in CUTS_EDITS:
        assert old in CUTS_SQL
        assert migrations.first_difference(CUTS_SQL.replace(old, new, 1), statements) == line, old
    for unseen in (CUTS_SQL.replace(";\n\n", ";\n\n\n;\n"), "\n" + CUTS_SQL + "\n;\n"):
        assert migrations.first_difference(unseen, statements) is None


def test_oracle_verify_names_a_migration_edited_after_it_was_pushed(
        first_push: Any, cli_cluster: Cluster, workdir: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    """What verify compared before was versions only: an edit of an applied migration passed."""
    assert first_push.returncode == 0, describe(first_push)
    folder = workdir / "edited-migrations"
    shutil.copytree(MIGRATIONS, folder)
    edited = sorted(folder.glob("*.sql"))[1]
    text = edited.read_text()
    at = text.index("create table")
    edited.write_text(text[:at] + "create unlogged table" + text[at + len("create table"):])
    run = oracle(capsys, "verify", "--db-url", db_url(cli_cluster), "--check", "migrations",
                 "--migrations-dir", str(folder))
    assert run.code == 1, run.out
    assert f"migration {edited.name} was edited after it was applied: from line " \
           f"{text.count(chr(10), 0, at) + 1} on" in " ".join(run.out.split()), run.out


# -- seed ------------------------------------------------------------------------------------
DEMO_USER = "d3e0d3e0-0000-4000-8000-000000000001"
SEED_COUNTS = {
    "select count(*) from auth.users where id = %(u)s and email = 'demo@example.test'": 1,
    "select count(*) from public.trading_settings where user_id = %(u)s "
    "and trading_enabled and auto_execute and not live_trading_enabled": 1,
    "select count(*) from public.market_allowlist "
    "where market in ('BTC-EUR', 'ETH-EUR') and enabled": 2,
    "select count(*) from public.trading_allowlist where user_id = %(u)s "
    "and market in ('BTC-EUR', 'ETH-EUR') and enabled": 2,
    "select count(*) from public.scan_jobs where user_id = %(u)s "
    "and market in ('BTC-EUR', 'ETH-EUR') and interval_seconds = 60 and enabled": 2,
    "select count(*) from public.gpt_model_prices where (model, input_usd_per_mtok, "
    "cached_input_usd_per_mtok, output_usd_per_mtok) in "
    "(('gpt-4o-mini', 0.15, 0.075, 0.60), ('gpt-4.1-mini', 0.40, 0.10, 1.60))": 2,
}


def test_seed_applies_on_top_and_is_idempotent(first_push: Any, cli_cluster: Cluster) -> None:
    assert first_push.returncode == 0, describe(first_push)
    cli_cluster.apply("postgres", [SEED])
    with connect(cli_cluster.url(), autocommit=True) as conn:
        got = {sql: conn.execute(sql, {"u": DEMO_USER}).fetchone()[0] for sql in SEED_COUNTS}
        totals = conn.execute(
            "select (select count(*) from auth.users), (select count(*) from public.scan_jobs), "
            "(select count(*) from public.trading_allowlist), "
            "(select count(*) from public.gpt_model_prices)").fetchone()
    assert got == SEED_COUNTS
    cli_cluster.apply("postgres", [SEED])  # a second run changes nothing
    with connect(cli_cluster.url(), autocommit=True) as conn:
        again = conn.execute(
            "select (select count(*) from auth.users), (select count(*) from public.scan_jobs), "
            "(select count(*) from public.trading_allowlist), "
            "(select count(*) from public.gpt_model_prices)").fetchone()
    assert again == totals
