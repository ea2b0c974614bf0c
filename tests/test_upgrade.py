"""The upgrade test (SPEC §2: a schema change must upgrade a database that holds data without losing
any): a database migrated with the released migrations and filled with data, then migrated with
the migrations released after them, keeps every row and every guarantee.

Which migrations are released is read from supabase/released-migrations.json (scripts.release),
so the test follows every release: the released ones build the database a deployment has, the
rest are the upgrade it would get next. Before the first release everything is unreleased: the
database is then built with all of them, filled, and checked the same way with nothing to apply
on top. Once a release is cut and no migration is newer, the same holds. The machinery is proven
on a scratch copy of the migrations with a release cut there and one newer file (a column added
with a default, a table added): the data is kept, and an edit of a released file is caught by
`make test`'s rule and by `oracle verify`.

Two roads, each on a fresh PostgreSQL 15 + pg_cron with supabase/local: plain `psql -v
ON_ERROR_STOP=1` (as tests/pg.py builds its template) and `supabase db push` (the pinned CLI,
as a hosted project is migrated; its recorded history is then checked by `oracle verify`).
pg_cron is pointed away from the database once it is built, so nothing changes a row between the
snapshots but the upgrade.

tests/upgrade_data.py holds the data (every table gets rows: a table the migrations add needs
rows there), the comparison and the guarantee checks.
"""

from __future__ import annotations

import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from console import verify
from scripts import release
from stack.cluster import LOCAL_SQL, MIGRATIONS, ROOT, Cluster, free_port, sql_files
from tests.pg import Database, connect
from tests.test_migrations import Cli, describe
from tests.upgrade_data import Table, World, check_guarantees, empty_tables, fill, lost, snapshot

ROADS = ("psql", "supabase db push")
PROBE = "29991231000000_upgrade_probe.sql"
PROBE_SQL = """set lock_timeout = '5s';

-- A later migration as the rules want one: what it adds has a default, nothing is rewritten.
alter table public.trade_proposals add column upgrade_probe text not null default 'kept';

create table public.upgrade_probe (
  id bigint generated always as identity primary key,
  note text not null
);
alter table public.upgrade_probe enable row level security;
revoke all on public.upgrade_probe from public, anon, authenticated, service_role;
"""


def split(folder: Path, manifest: release.Manifest) -> tuple[list[Path], list[Path]]:
    """(what a deployed database has, what the upgrade applies): the released migrations and
    those after them; before the first release, all of them and none."""
    files = sorted(folder.glob("*.sql"))
    released = [p for p in files if p.name in manifest.released]
    base = released or files
    return base, [p for p in files if p not in base]


@dataclass
class Upgraded:
    road: str
    db: Database
    world: World
    before: dict[str, Table]
    after: dict[str, Table]
    project: Path  # the Supabase project directory the CLI was pointed at (its road only)


class Project:
    """A Supabase project directory for the CLI's --workdir: config.toml and some migrations."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.migrations = root / "supabase" / "migrations"
        self.migrations.mkdir(parents=True)
        shutil.copy(ROOT / "supabase" / "config.toml", root / "supabase" / "config.toml")

    def add(self, files: list[Path]) -> None:
        for path in files:
            shutil.copy(path, self.migrations / path.name)


@contextmanager
def upgraded(road: str, base: list[Path], later: list[Path], scratch: Path) -> Iterator[Upgraded]:
    """A fresh cluster migrated with `base`, filled, snapshotted, migrated with `later` along
    `road`, snapshotted again; stopped and removed afterwards."""
    name = f"upgrade_{uuid.uuid4().hex[:8]}"
    root = scratch / road.replace(" ", "-")
    cluster = Cluster(data_dir=root / "cluster", port=free_port(), cron_database=name,
                      settings={"fsync": "off", "synchronous_commit": "off"})
    project = Project(root / "project")
    cli = Cli(home=root / "home")
    cli.home.mkdir(parents=True)
    url = f"{cluster.url(name)}?sslmode=disable"

    def migrate(files: list[Path]) -> None:
        if road == "psql":
            cluster.apply(name, files)
            return
        project.add(files)
        pushed = cli.run("db", "push", "--db-url", url, "--yes", "--workdir", str(project.root))
        assert pushed.returncode == 0, describe(pushed)

    try:
        cluster.init()
        cluster.start()
        cluster.create_database(name)
        cluster.apply(name, sql_files(LOCAL_SQL))
        migrate(base)
        cluster.restart(cron_database="postgres")  # pg_cron writes nothing into it from here on
        db = Database(cluster, name)
        world = fill(db)
        before = snapshot(db)
        migrate(later)
        yield Upgraded(road, db, world, before, snapshot(db, only=before), project.root)
    finally:
        cluster.destroy()


@pytest.fixture
def scratch() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="aio-upgrade-"))
    path.chmod(0o755)  # the postgres OS user (we may be root) must reach the data directory
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def assert_kept(run: Upgraded) -> None:
    empty = empty_tables(run.before)
    assert not empty, (
        f"the upgrade test's data has no rows in {', '.join(empty)}: every table must hold data "
        "before the upgrade, or the test cannot see what an upgrade does to it. Add rows for it "
        "in tests/upgrade_data.py (fill), written the way production writes them")
    problems = lost(run.before, run.after)
    assert not problems, (f"the upgrade ({run.road}) lost data:\n" + "\n".join(problems)
                          + "\nA migration after a release must keep every row: add columns with "
                            "a default, never rewrite or drop what a deployment holds")


@pytest.mark.parametrize("road", ROADS)
def test_the_unreleased_migrations_upgrade_a_released_database_keeping_data_and_guarantees(
        road: str, scratch: Path) -> None:
    base, later = split(MIGRATIONS, release.load())
    with upgraded(road, base, later, scratch) as run:
        assert_kept(run)
        check_guarantees(run.db, run.world)
        if road == "supabase db push":
            with connect(run.db.url) as conn:
                status, summary, problems = verify.check_migrations(conn, verify.Options(
                    migrations_dir=run.project / "supabase" / "migrations"))
            assert (status, problems) == ("pass", []), summary
            assert f"the {len(base) + len(later)} migrations" in summary


def test_a_release_cut_in_a_scratch_copy_upgrades_and_its_released_files_are_guarded(
        scratch: Path) -> None:
    """The machinery on a release of its own: every migration of today released, one newer file.
    The upgrade keeps every row (the new column reads its default on the old rows) and every
    guarantee; then a released file is edited, and both `make test`'s rule and `oracle verify`
    name it."""
    folder = scratch / "migrations"
    shutil.copytree(MIGRATIONS, folder)
    manifest = scratch / "released-migrations.json"
    release.save(release.Manifest(), manifest)
    cut = release.cut("scratch-1", folder, manifest)
    assert sorted(cut.migrations) == sorted(p.name for p in MIGRATIONS.glob("*.sql"))
    (folder / PROBE).write_text(PROBE_SQL)
    base, later = split(folder, release.load(manifest))
    assert [p.name for p in later] == [PROBE]
    assert release.problems(folder, release.load(manifest)) == []

    with upgraded("supabase db push", base, later, scratch) as run:
        assert_kept(run)
        proposals = sum(run.before["public.trade_proposals"].rows.values())
        assert run.db.scalar("select count(*) filter (where upgrade_probe = 'kept') "
                             "from public.trade_proposals") == proposals
        check_guarantees(run.db, run.world)

        # An edit of a released file, in the middle of the first migration.
        foundation = sorted(run.project.glob("supabase/migrations/*.sql"))[0]
        lines = foundation.read_text().splitlines(keepends=True)
        edited_line = len(lines) // 2
        lines.insert(edited_line, "-- an edit after the release\n")
        edited = "".join(lines)
        foundation.write_text(edited)
        (folder / foundation.name).write_text(edited)

        rules = release.problems(folder, release.load(manifest))
        assert len(rules) == 1 and rules[0].startswith(
            f"{foundation.name} is released (in scratch-1) but has changed"), rules
        with connect(run.db.url) as conn:
            status, _, problems = verify.check_migrations(
                conn, verify.Options(migrations_dir=foundation.parent))
        assert status == "fail"
        assert problems == [
            f"migration {foundation.name} was edited after it was applied: from line "
            f"{edited_line + 1} on, the file is not what `supabase db push` applied (recorded in "
            "supabase_migrations.schema_migrations). An applied migration never changes: "
            "restore the file as it was applied and make the change a new migration with a "
            "later timestamp"], problems
