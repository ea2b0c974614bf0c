"""The local stack's PostgreSQL (`make db`, `make run`, `make demo`): started or reused, migrated
the way a deployment is, seeded once.

    db = LocalDatabase(Cluster(data_dir, port))
    db.start()                  # initdb + start when needed; `db.started` says whether we did
    report = db.migrate()       # supabase/local (a new cluster only), then `supabase db push`
    db.stop()                   # pg_ctl stop -m fast: the data is kept

Migrations are applied by the Supabase CLI itself (`supabase db push --db-url … --include-all
--include-seed`, the pinned CLI of package.json) — the command a deployment runs. So each file is
applied in one transaction and recorded, in that transaction, in
`supabase_migrations.schema_migrations (version, name, statements)` exactly as the CLI records it:
`oracle verify`'s migrations check and a later `supabase db push` agree with it by construction.
Only versions not recorded yet are applied, so a kept cluster gets the migrations added since its
last run and nothing is re-created. The seed (`[db.seed]` of supabase/config.toml) is recorded by
the CLI in `supabase_migrations.seed_files` and applied once per cluster.

Refused, with the way out in the message: a cluster that has the schema but no migration history
(built by an older `make db`, which applied the files with psql), a history that lists versions
this checkout has no file for (another branch's migrations), and a migration applied as a text
its file no longer has — edited or renamed since (console.migrations compares the statements the
CLI recorded with the file). A push would not apply an edit: the CLI skips a recorded version.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

from console.migrations import (
    AppliedMigration,
    HistoryComparison,
    compare_history,
    migration_files,
    read_history,
)
from stack.cluster import LOCAL_SQL, ROOT, Cluster, ClusterError, sql_files

SUPABASE_BIN = ROOT / "node_modules" / ".bin" / "supabase"
SEED_PATH = "supabase/seed.sql"  # as the CLI records it in supabase_migrations.seed_files
CLI_TIMEOUT_SECONDS = 300
# The CLI runs offline: no telemetry, no update check (all honoured by the pinned 2.117.0).
_CLI_ENV = {"SUPABASE_TELEMETRY_DISABLED": "1", "DO_NOT_TRACK": "1",
            "SUPABASE_NO_UPDATE_NOTIFIER": "1", "NO_COLOR": "1"}


class DatabaseError(RuntimeError):
    """The local database could not be prepared; the message says why and what to do."""


class Interrupted(Exception):
    """A stop was requested while a command ran; the command was killed."""


@dataclass
class MigrationReport:
    applied: list[str] = field(default_factory=list)   # `<version>_<name>` applied by this run
    recorded: int = 0                                  # versions in schema_migrations afterwards
    seeded: list[str] = field(default_factory=list)    # seed files applied by this run
    local_applied: bool = False                        # supabase/local/*.sql (a new cluster)


@dataclass
class LocalDatabase:
    cluster: Cluster
    workdir: Path = ROOT                 # the directory that holds supabase/ (the CLI's --workdir)
    started: bool = False                # this process started PostgreSQL (so it stops it)
    created: bool = False                # this process ran initdb

    @property
    def port(self) -> int:
        return self.cluster.port

    @property
    def data_dir(self) -> Path:
        return self.cluster.data_dir

    @property
    def log_file(self) -> Path:
        return self.cluster.log_file

    def url(self, user: str = "postgres") -> str:
        return self.cluster.url("postgres", user=user)

    # -- lifecycle ---------------------------------------------------------------------------
    def running_pid(self) -> int | None:
        """The postmaster's pid when this data directory's server is running, else None."""
        pid_file = self.cluster.pgdata / "postmaster.pid"
        try:
            lines = pid_file.read_text().splitlines()
            pid = int(lines[0])
        except (OSError, ValueError, IndexError):
            return None
        if not Path(f"/proc/{pid}").exists():
            return None
        if len(lines) > 3 and lines[3].strip() and int(lines[3]) != self.port:
            raise DatabaseError(f"the cluster in {self.data_dir} is running on port {lines[3]}, "
                                f"not {self.port}: stop it first (`pg_ctl -D "
                                f"{self.cluster.pgdata} stop`) or use port {lines[3]}")
        return pid

    def start(self) -> None:
        """initdb when there is no cluster yet, and start it unless it already runs."""
        if self.running_pid() is not None:
            return
        self.created = not (self.cluster.pgdata / "PG_VERSION").exists()
        try:
            self.cluster.init()
            self.started = True  # from here on, stop() must run even if start fails half-way
            self.cluster.start()
        except ClusterError as exc:
            raise DatabaseError(str(exc)) from None

    def stop(self, *, immediate: bool = False) -> None:
        """Stop the server (data kept) if this process started it and it still runs."""
        if self.started and self.running_pid() is not None:
            self.cluster.stop("immediate" if immediate else "fast")

    # -- schema --------------------------------------------------------------------------------
    def migrate(self, *, seed: bool = True,
                on_progress: Callable[[str], None] = lambda _: None,
                should_stop: Callable[[], bool] = lambda: False) -> MigrationReport:
        """supabase/local on a cluster that lacks it, then the pending migrations and (`seed`) the
        seed through `supabase db push`; the CLI is not started when nothing is pending.
        `should_stop()` turning true kills the CLI and raises Interrupted."""
        report = MigrationReport()
        before = self._history()
        if before is None:
            on_progress("applying supabase/local (roles, auth, extensions schemas)")
            try:
                self.cluster.apply("postgres", sql_files(LOCAL_SQL))
            except ClusterError as exc:
                raise DatabaseError(str(exc)) from None
            report.local_applied = True
            before = self._history()
            assert before is not None
        history, seeds = before
        listed = migration_files(self.workdir / "supabase" / "migrations")
        self._refuse_a_changed_history(compare_history(listed, history))
        files = {f.version: f"{f.version}_{f.name}" for f in listed}
        migrations = [applied.version for applied in history]
        pending = [files[v] for v in sorted(set(files) - set(migrations))]
        seed_due = seed and (self.workdir / SEED_PATH).exists() and SEED_PATH not in seeds
        if pending or seed_due:
            on_progress(f"supabase db push: {len(pending)} migration(s) to apply"
                        + (", then the seed (once)" if seed_due else ""))
            self._push(seed=seed_due, should_stop=should_stop)
        after = self._history()
        assert after is not None
        recorded = [applied.version for applied in after[0]]
        report.applied = [files[v] for v in sorted(set(recorded) - set(migrations))]
        report.recorded = len(recorded)
        report.seeded = sorted(set(after[1]) - set(seeds))
        missing = [name for name in pending if name.split("_", 1)[0] not in recorded]
        if missing:
            raise DatabaseError(f"supabase db push did not record {', '.join(missing)}")
        return report

    def _refuse_a_changed_history(self, found: HistoryComparison) -> None:
        if found.unknown:
            raise DatabaseError(
                f"the database on port {self.port} has migrations this checkout has no file for: "
                f"{', '.join(a.version for a in found.unknown)} (another branch's?). Check out a "
                "branch that has them, or rebuild the local database with `make db-reset` (its "
                "data is lost).")
        changed = [f"{e.file.filename} (from line {e.line} on)" for e in found.edited]
        changed += [f"{f.filename} (applied as {a.version}_{a.name}.sql)"
                    for a, f in found.renamed]
        if changed:
            raise DatabaseError(
                f"the database on port {self.port} applied migrations that have changed since: "
                f"{', '.join(changed)}. An applied migration was edited or renamed, and `supabase "
                "db push` never applies a migration again, so this database would keep the old "
                "text. A released migration never changes: restore it and make the change a new "
                "migration with a later timestamp. While a migration is still unreleased and "
                "edited on purpose, rebuild the local database with `make db-reset` (its data is "
                "lost).")

    def _history(self) -> tuple[list[AppliedMigration], list[str]] | None:
        """(recorded migrations, recorded seed paths), or None for a cluster without
        supabase/local applied. Refuses a schema without history (see the module docstring)."""
        with psycopg.connect(self.url(), autocommit=True, connect_timeout=10) as conn:
            row = conn.execute(
                "select to_regclass('auth.users') is not null, "
                "to_regclass('supabase_migrations.schema_migrations') is not null, "
                "to_regclass('supabase_migrations.seed_files') is not null, "
                "to_regclass('public.trade_executions') is not null").fetchone()
            assert row is not None
            has_auth, has_history, has_seeds, has_schema = row
            if not has_auth:
                return None
            if has_schema and not has_history:
                raise DatabaseError(
                    f"the database in {self.data_dir} has the schema but no migration history "
                    "(supabase_migrations.schema_migrations): an older `make db` built it, "
                    "applying the migrations without recording them, so which ones it has is "
                    "unknown. Rebuild it with `make db-reset` (its data is lost).")
            history = read_history(conn) or []
            seeds = [r[0] for r in conn.execute(
                "select path from supabase_migrations.seed_files order by path"
            ).fetchall()] if has_seeds else []
        return history, seeds

    def _push(self, *, seed: bool, should_stop: Callable[[], bool]) -> None:
        if not SUPABASE_BIN.exists():
            raise DatabaseError(f"the Supabase CLI is not installed ({SUPABASE_BIN}): run "
                                "`make setup` (npm ci installs the version pinned in package.json)")
        url = f"{self.url()}?sslmode=disable"
        args = [str(SUPABASE_BIN), "db", "push", "--db-url", url, "--yes", "--include-all",
                "--workdir", str(self.workdir)]
        if seed:
            args.append("--include-seed")
        home = Path(tempfile.mkdtemp(prefix="aio-supabase-home-"))  # the CLI writes ~/.supabase
        try:
            code, output = run_interruptible(args, env={**os.environ, **_CLI_ENV,
                                                        "HOME": str(home)},
                                             cwd=self.workdir, timeout=CLI_TIMEOUT_SECONDS,
                                             should_stop=should_stop)
        finally:
            shutil.rmtree(home, ignore_errors=True)
        if code != 0:
            raise DatabaseError(f"supabase db push failed (exit {code}):\n{output.strip()}")


def run_interruptible(args: list[str], *, env: dict[str, str], cwd: Path, timeout: float,
                      should_stop: Callable[[], bool] = lambda: False) -> tuple[int, str]:
    """Run a command in its own session and return (exit code, output). When `should_stop()`
    turns true (the stack's stop request) or anything interrupts the wait, the command's whole
    process group is killed first: the CLI's node shim starts the real binary as a child, which a
    plain kill of the shim would leave running."""
    with tempfile.TemporaryFile(mode="w+") as out:
        proc = subprocess.Popen(args, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            deadline = time.monotonic() + timeout
            while proc.poll() is None:
                if should_stop():
                    raise Interrupted(f"{Path(args[0]).name} {args[1]} stopped")
                if time.monotonic() > deadline:
                    raise DatabaseError(f"{Path(args[0]).name} {args[1]} did not finish within "
                                        f"{timeout:.0f} s")
                time.sleep(0.05)
        finally:
            if proc.poll() is None:
                _kill_group(proc)
        out.seek(0)
        return proc.returncode, out.read()


def _kill_group(proc: subprocess.Popen[Any]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()
