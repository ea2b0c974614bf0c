"""A throwaway or project-local PostgreSQL 15 cluster with pg_cron, started without Docker.

Used by the test harness (one cluster per test session), the benchmarks, the RLS matrix and
`make db` / `make run` (the project-local cluster on port 54322; its schema is managed by
stack.localdb). PostgreSQL refuses to run as root, so when we are root the cluster runs as Debian's
`postgres` user in a directory that user owns.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PG_BIN = Path(os.environ.get("PG_BIN", "/usr/lib/postgresql/15/bin"))
LOCAL_SQL = ROOT / "supabase" / "local"
MIGRATIONS = ROOT / "supabase" / "migrations"
SEED = ROOT / "supabase" / "seed.sql"
SUPERUSER = "postgres"


class ClusterError(RuntimeError):
    """PostgreSQL could not be prepared; the message says why (never skip on this)."""


def running_as_root() -> bool:
    return os.geteuid() == 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def sql_files(*folders: Path) -> list[Path]:
    """Every *.sql of each folder, folders in the given order, files in file-name order."""
    return [f for folder in folders for f in sorted(folder.glob("*.sql"))]


def _run(cmd: Sequence[str], *, as_postgres: bool, env: dict[str, str] | None = None,
         check: bool = True) -> subprocess.CompletedProcess[str]:
    if as_postgres:
        cmd = ["runuser", "-u", "postgres", "--", *cmd]
    # A session of its own: a Ctrl+C at the terminal must not kill pg_ctl half-way through a start
    # (the postmaster would come up unsupervised); `make run` stops the cluster itself.
    proc = subprocess.run(list(cmd), capture_output=True, text=True, env=env, check=False,
                          start_new_session=True)
    if check and proc.returncode != 0:
        raise ClusterError(
            f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}".strip()
        )
    return proc


@dataclass
class Cluster:
    data_dir: Path
    port: int
    cron_database: str = "postgres"
    settings: dict[str, str] = field(default_factory=dict)

    @property
    def as_postgres(self) -> bool:
        return running_as_root()

    @property
    def pgdata(self) -> Path:
        return self.data_dir / "pgdata"

    @property
    def log_file(self) -> Path:
        return self.data_dir / "postgres.log"

    def url(self, database: str = "postgres", user: str = SUPERUSER) -> str:
        return f"postgresql://{user}@127.0.0.1:{self.port}/{database}"

    # -- lifecycle ---------------------------------------------------------------------------
    def init(self) -> None:
        if not (PG_BIN / "initdb").exists():
            raise ClusterError(
                f"PostgreSQL 15 binaries not found in {PG_BIN}. Install them with:\n"
                "  sudo apt-get install -y postgresql-15 postgresql-15-cron postgresql-15-pgtap "
                "libtap-parser-sourcehandler-pgtap-perl"
            )
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self.as_postgres:
            pw = pwd.getpwnam("postgres")
            os.chown(self.data_dir, pw.pw_uid, pw.pw_gid)
        if (self.pgdata / "PG_VERSION").exists():
            return
        _run([str(PG_BIN / "initdb"), "-D", str(self.pgdata), "-U", SUPERUSER, "--auth=trust",
              "-E", "UTF8", "--locale=C.UTF-8", "--no-sync"], as_postgres=self.as_postgres)

    def start(self) -> None:
        options = {
            "port": str(self.port),
            "listen_addresses": "127.0.0.1",
            "unix_socket_directories": str(self.data_dir),
            "shared_preload_libraries": "pg_cron",
            "cron.database_name": self.cron_database,
            "max_connections": "300",
            "timezone": "UTC",
            **self.settings,
        }
        opts = " ".join(f"-c {k}={v}" for k, v in options.items())
        _run([str(PG_BIN / "pg_ctl"), "-D", str(self.pgdata), "-l", str(self.log_file),
              "-o", opts, "-w", "-t", "60", "start"], as_postgres=self.as_postgres, check=False)
        if not self.is_running():
            tail = self.log_file.read_text()[-3000:] if self.log_file.exists() else ""
            raise ClusterError(f"PostgreSQL did not start on port {self.port}:\n{tail}")

    def stop(self, mode: str = "fast") -> None:
        """`fast` checkpoints first, so nothing committed is lost (the test clusters run with
        synchronous_commit=off); `immediate` is only for clusters about to be deleted."""
        if (self.pgdata / "postmaster.pid").exists():
            _run([str(PG_BIN / "pg_ctl"), "-D", str(self.pgdata), "-m", mode, "-w", "-t", "60",
                  "stop"], as_postgres=self.as_postgres, check=False)

    def restart(self, cron_database: str) -> None:
        self.stop("fast")
        self.cron_database = cron_database
        self.start()

    def is_running(self) -> bool:
        proc = _run([str(PG_BIN / "pg_isready"), "-h", "127.0.0.1", "-p", str(self.port)],
                    as_postgres=False, check=False)
        return proc.returncode == 0

    def destroy(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.data_dir, ignore_errors=True)

    # -- SQL ---------------------------------------------------------------------------------
    def psql(self, database: str, *, sql: str | None = None, file: Path | None = None) -> str:
        cmd = ["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", self.url(database)]
        cmd += ["-c", sql] if sql is not None else ["-f", str(file)]
        env = {**os.environ, "PGOPTIONS": "--client-min-messages=warning"}
        return _run(cmd, as_postgres=False, env=env).stdout

    def create_database(self, name: str, template: str | None = None) -> None:
        tmpl = f' template "{template}" strategy file_copy' if template else ""
        self.psql("postgres", sql=f'create database "{name}"{tmpl}')

    def apply(self, database: str, files: Sequence[Path]) -> None:
        """Apply files in order with plain `psql -v ON_ERROR_STOP=1` (SPEC §2)."""
        for f in files:
            try:
                self.psql(database, file=f)
            except ClusterError as exc:
                shown = f.relative_to(ROOT) if f.is_relative_to(ROOT) else f
                raise ClusterError(f"applying {shown} failed: {exc}") from exc


def project_data_dir(port: int) -> Path:
    """Where `make db` keeps its cluster: inside the project, or where `postgres` can reach."""
    if running_as_root():
        return Path(tempfile.gettempdir()) / f"aio-oracle-pg-{port}"
    return ROOT / ".local" / f"pg-{port}"

