"""`make demo` and `make run` (SPEC §7), driven from the outside as a developer or CI would.

- The demo's entry point (`python -m stack demo`, what `make demo` runs) as a subprocess from
  the repository: exit 0, every required summary row present and judged, every scripted step as
  expected, and afterwards none of its processes alive and its throwaway cluster gone.
- The supervisor of `make run` on free, non-default ports: once live (its "stack ready" line and a
  first tick answered), every process it started is collected from /proc — the functions' whole
  process groups (gunicorn master and worker), the sandbox, the postmaster and its backends — and
  after SIGINT (and SIGINT + SIGTERM: the hurried stop) none of them is alive, and no process on
  the machine still names its ports or its data directory.
- A port already in use: a message naming the port, what wanted it and who holds it; exit 1;
  nothing started. A failure after things started (a broken migration): exit 1 with the CLI's
  error, and what had started (PostgreSQL, the sandbox) is stopped again.
- Migrations: a kept cluster gets a migration added since its last start applied and recorded by
  the Supabase CLI (version, name, statements) exactly once; the seed is not applied again;
  `oracle verify`'s migrations check and `supabase db push` agree; a history this checkout does
  not know and a schema without history are refused with the way out.

No timing is asserted: the timeouts are hang guards.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest

from stack.cluster import ROOT, Cluster, free_port, project_data_dir
from stack.localdb import DatabaseError, LocalDatabase
from tests.oracle_console import oracle

START_TIMEOUT = 240.0   # hang guards only
STOP_TIMEOUT = 90.0
DEMO_TIMEOUT = 600.0
REQUIRED_ROWS = ("executed trades (trade_history)", "rejections by cooldown (G5)",
                 "rejections by anti_flip (G6)", "replayed idempotent requests (G1)")


# -- /proc ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Proc:
    pid: int
    start: str      # /proc/<pid>/stat field 22: a reused pid has another one
    cmdline: str


def _stat(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2:].split()  # fields from 3 (state) on


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(
            errors="replace")
    except OSError:
        return ""


def processes() -> dict[int, list[str]]:
    found = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (fields := _stat(int(entry.name))) is not None:
            found[int(entry.name)] = fields
    return found


def alive(proc: Proc) -> bool:
    fields = _stat(proc.pid)
    return fields is not None and fields[0] != "Z" and fields[19] == proc.start


def gone(pid: int) -> bool:
    fields = _stat(pid)
    return fields is None or fields[0] == "Z"


def stack_processes(state: dict[str, Any]) -> list[Proc]:
    """Every process of the running stack: each service's process group, the postmaster and
    its children."""
    groups = {s["pid"] for s in state["services"].values() if s["pid"]}
    postmaster = state["postgres"]["pid"]
    found = []
    for pid, fields in processes().items():
        ppid, pgid = int(fields[1]), int(fields[2])
        if pgid in groups or pid == postmaster or (postmaster and ppid == postmaster):
            found.append(Proc(pid, fields[19], _cmdline(pid)))
    return found


def naming(*needles: str) -> list[str]:
    """Command lines of live processes that mention any of `needles` (a port, a directory)."""
    own = os.getpid()
    hits = []
    for pid, fields in processes().items():
        if pid == own or fields[0] == "Z":
            continue
        line = _cmdline(pid)
        if any(n in line for n in needles):
            hits.append(f"{pid}: {line}")
    return hits


# -- the supervisor as a subprocess ---------------------------------------------------------------
@dataclass
class Supervisor:
    process: subprocess.Popen[str]
    state_dir: Path
    lines: list[str] = field(default_factory=list)
    _reader: threading.Thread | None = None

    @classmethod
    def start(cls, args: list[str], state_dir: Path) -> Supervisor:
        process = subprocess.Popen([sys.executable, "-m", "stack", *args], cwd=ROOT,
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                   env={**os.environ, "PYTHONUNBUFFERED": "1"})
        sup = cls(process, state_dir)
        sup._reader = threading.Thread(target=sup._read, daemon=True)
        sup._reader.start()
        return sup

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line)

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def wait_for(self, text: str, timeout: float = START_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.output:
            if self.process.poll() is not None:
                time.sleep(0.2)  # the reader may still hold the last lines
                raise AssertionError(f"exited {self.process.returncode} before {text!r}:\n"
                                     f"{self.output}")
            if time.monotonic() > deadline:
                raise AssertionError(f"no {text!r} within {timeout:.0f} s:\n{self.output}")
            time.sleep(0.1)

    def state(self) -> dict[str, Any]:
        return dict(json.loads((self.state_dir / "stack.json").read_text()))

    def wait(self, timeout: float = STOP_TIMEOUT) -> int:
        code = self.process.wait(timeout=timeout)
        if self._reader is not None:
            self._reader.join(timeout=10)
        return code

    def kill(self) -> None:
        """Test clean-up only: what the supervisor left is killed (and the test has failed)."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=30)


@dataclass
class Ports:
    db: int = field(default_factory=free_port)
    sandbox: int = field(default_factory=free_port)
    execute: int = field(default_factory=free_port)
    scanner: int = field(default_factory=free_port)

    def args(self) -> list[str]:
        return ["--db-port", str(self.db), "--sandbox-port", str(self.sandbox),
                "--trading-execute-port", str(self.execute),
                "--scan-scheduler-port", str(self.scanner)]

    def needles(self) -> list[str]:
        return [f"--port {p}" for p in (self.sandbox, self.execute, self.scanner)] + [
            f"127.0.0.1:{self.db}/"]


@pytest.fixture(scope="module")
def scratch() -> Iterator[Path]:
    tmp = Path(tempfile.mkdtemp(prefix="aio-stack-test-"))
    tmp.chmod(0o755)  # PostgreSQL runs as `postgres` when the tests run as root
    try:
        yield tmp
    finally:
        for pgdata in tmp.glob("**/pgdata"):
            Cluster(data_dir=pgdata.parent, port=0).stop("immediate")
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(scope="module")
def kept_data_dir(scratch: Path) -> Path:
    """One cluster directory shared by the run tests: the first start creates it, the later
    ones find it kept (the second `make run`)."""
    return scratch / "kept-cluster"


def run_args(ports: Ports, data_dir: Path, state_dir: Path, *extra: str) -> list[str]:
    return ["run", *ports.args(), "--data-dir", str(data_dir), "--state-dir", str(state_dir),
            "--tick-seconds", "1", *extra]


def assert_nothing_left(procs: list[Proc], ports: Ports, data_dir: Path) -> None:
    survivors = [f"{p.pid}: {p.cmdline}" for p in procs if alive(p)]
    assert survivors == [], f"still alive after the stop: {survivors}"
    named = naming(*ports.needles(), str(data_dir))
    assert named == [], f"processes still naming the stack's ports or data: {named}"
    assert not (data_dir / "pgdata" / "postmaster.pid").exists()


# -- make demo ------------------------------------------------------------------------------------
def test_make_demo_from_the_repository(scratch: Path) -> None:
    state_dir = scratch / "demo-state"
    proc = subprocess.run([sys.executable, "-m", "stack", "demo", "--state-dir",
                           str(state_dir)], cwd=ROOT, capture_output=True, text=True,
                          timeout=DEMO_TIMEOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"},
                          check=False)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    assert "make demo passed: every required row is there" in output, output
    summary = output[output.index("make demo — summary"):]
    for row in REQUIRED_ROWS:
        line = next((ln for ln in summary.splitlines() if ln.startswith(row)), None)
        assert line is not None, f"no summary row {row!r}:\n{summary}"
        cells = [c.strip() for c in line.split("│")]
        assert cells[2:4] == ["required", "yes"], line
        assert int(cells[1].split()[0]) >= 1, line
    steps = output[output.index("scripted steps"):output.index("2. scanner ticks")]
    answers = [ln.split("│") for ln in steps.splitlines() if ln[:2].strip().isdigit()]
    assert len(answers) == 10, steps
    assert all(a[-1].strip() == "yes" for a in answers), steps
    assert "200 Idempotent-Replayed" in steps
    # Afterwards: the processes it recorded are gone and its throwaway cluster is deleted.
    state = json.loads((state_dir / "stack.json").read_text())
    assert state["state"] == "stopped"
    assert not Path(state["postgres"]["data_dir"]).exists()
    assert [name for name, s in state["services"].items() if not gone(s["pid"])] == []
    ports = [str(s["port"]) for s in state["services"].values()]
    assert naming(*(f"--port {p}" for p in ports), state["postgres"]["data_dir"]) == []


# -- make run: shutdown ---------------------------------------------------------------------------
@pytest.mark.parametrize("signals", [(signal.SIGINT,), (signal.SIGINT, signal.SIGTERM)],
                         ids=["ctrl-c", "ctrl-c-then-sigterm"])
def test_run_stops_every_process_it_started(signals: tuple[int, ...], kept_data_dir: Path,
                                            scratch: Path) -> None:
    ports = Ports()
    state_dir = scratch / f"run-{len(signals)}"
    sup = Supervisor.start(run_args(ports, kept_data_dir, state_dir), state_dir)
    try:
        sup.wait_for("stack ready")
        sup.wait_for("scan_scheduler tick: 200")
        state = sup.state()
        assert state["state"] == "ready"
        assert state["postgres"]["started_here"] is True
        procs = stack_processes(state)
        by_name = {name: [p for p in procs if p.pid == s["pid"] or
                          int(processes()[p.pid][2]) == s["pid"]]
                   for name, s in state["services"].items()}
        assert set(by_name) == {"sandbox", "trading_execute", "scan_scheduler"}
        # gunicorn's master and its worker: the collection reaches the whole group.
        assert len(by_name["trading_execute"]) >= 2, procs
        assert len(by_name["scan_scheduler"]) >= 2, procs
        assert any(p.pid == state["postgres"]["pid"] for p in procs)
        assert len([p for p in procs if "postgres" in p.cmdline]) >= 3  # postmaster + children
        for sig in signals:
            sup.process.send_signal(sig)
            time.sleep(0.05)
        code = sup.wait()
        assert code == 0, sup.output
        assert "stopped every process this run started" in sup.output
        if len(signals) == 1:  # one Ctrl+C: every service stopped on SIGTERM, none killed
            assert "killed (SIGKILL)" not in sup.output, sup.output
        assert_nothing_left(procs, ports, kept_data_dir)
        assert sup.state()["state"] == "stopped"
    finally:
        sup.kill()


# -- make run: refusals and failures --------------------------------------------------------------
@pytest.mark.parametrize("role", ["db", "execute"])
def test_a_port_in_use_is_named_and_nothing_starts(role: str, scratch: Path) -> None:
    ports = Ports()
    data_dir = scratch / f"busy-{role}"
    state_dir = scratch / f"busy-{role}-state"
    busy = getattr(ports, role)
    wanted_by = {"db": "PostgreSQL (DB_PORT)",
                 "execute": "trading_execute (TRADING_EXECUTE_PORT)"}[role]
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", busy))
        holder.listen(1)
        sup = Supervisor.start(run_args(ports, data_dir, state_dir), state_dir)
        try:
            code = sup.wait()
        finally:
            sup.kill()
    assert code == 1, sup.output
    assert f"port {busy} is already in use (by pid {os.getpid()}:" in sup.output, sup.output
    assert f"{wanted_by} needs it" in sup.output, sup.output
    state = sup.state()
    assert state["services"] == {} and state["postgres"]["pid"] is None
    assert not (data_dir / "pgdata").exists()  # not even initdb ran
    assert naming(*ports.needles(), str(data_dir)) == []


def test_a_failure_after_start_stops_what_had_started(scratch: Path) -> None:
    workdir = copy_project(scratch / "broken-workdir")
    (workdir / "supabase" / "migrations" / "29991231000000_broken.sql").write_text(
        "create table public.stack_broken (id int primary key);\nthis is not sql;\n")
    ports = Ports()
    data_dir = scratch / "broken-cluster"
    state_dir = scratch / "broken-state"
    sup = Supervisor.start(run_args(ports, data_dir, state_dir, "--supabase-workdir",
                                    str(workdir)), state_dir)
    try:
        code = sup.wait(timeout=START_TIMEOUT)
    finally:
        sup.kill()
    assert code == 1, sup.output
    assert "supabase db push failed" in sup.output and "29991231000000_broken" in sup.output
    state = sup.state()
    # PostgreSQL and the sandbox had started (the sandbox starts while PostgreSQL migrates).
    assert state["postgres"]["started_here"] is True
    assert "sandbox" in state["services"]
    assert_nothing_left([Proc(s["pid"], "", "") for s in state["services"].values()
                         if s["pid"]], ports, data_dir)
    assert "stopped every process this run started" in sup.output


# -- migrations on a kept cluster -----------------------------------------------------------------
def copy_project(workdir: Path) -> Path:
    """A Supabase project directory (the CLI's --workdir) with this checkout's supabase/."""
    (workdir / "supabase").mkdir(parents=True)
    shutil.copy(ROOT / "supabase" / "config.toml", workdir / "supabase" / "config.toml")
    shutil.copy(ROOT / "supabase" / "seed.sql", workdir / "supabase" / "seed.sql")
    shutil.copytree(ROOT / "supabase" / "migrations", workdir / "supabase" / "migrations")
    return workdir


PROBE = "29991231000000_stack_probe"
PROBE_SQL = """-- a migration added after the cluster was built
create table public.stack_probe (id int primary key);

alter table public.stack_probe enable row level security;
insert into public.stack_probe (id) values (1);
"""


def test_migrations_added_since_the_last_run_are_applied_and_recorded_once(
        scratch: Path, capsys: pytest.CaptureFixture[str]) -> None:
    workdir = copy_project(scratch / "probe-workdir")
    files = sorted(p.stem for p in (workdir / "supabase" / "migrations").glob("*.sql"))
    db = LocalDatabase(Cluster(data_dir=scratch / "probe-cluster", port=free_port()),
                       workdir=workdir)
    try:
        db.start()
        first = db.migrate()
        assert first.local_applied and first.applied == files
        assert first.seeded == ["supabase/seed.sql"]
        demo_user = "d3e0d3e0-0000-4000-8000-000000000001"
        execute(db, "update public.trading_settings set trading_enabled = false "
                    "where user_id = %s", demo_user)
        db.stop()

        # The next start: one migration more.
        (workdir / "supabase" / "migrations" / f"{PROBE}.sql").write_text(PROBE_SQL)
        db = LocalDatabase(db.cluster, workdir=workdir)
        db.start()
        second = db.migrate()
        assert (second.applied, second.seeded, second.local_applied) == ([PROBE], [], False)
        assert second.recorded == len(files) + 1
        version, name = PROBE.split("_", 1)
        assert query(db, "select name, statements from supabase_migrations.schema_migrations "
                         "where version = %s", version) == [(name, [
                             "-- a migration added after the cluster was built\n"
                             "create table public.stack_probe (id int primary key)",
                             "alter table public.stack_probe enable row level security",
                             "insert into public.stack_probe (id) values (1)"])]
        # The seed ran once: the user's later change stands.
        assert query(db, "select trading_enabled from public.trading_settings "
                         "where user_id = %s", demo_user) == [(False,)]
        db.stop()

        # And once only: a third start applies nothing (the insert would fail if re-run).
        db = LocalDatabase(db.cluster, workdir=workdir)
        db.start()
        third = db.migrate()
        assert (third.applied, third.seeded) == ([], [])
        assert query(db, "select count(*) from public.stack_probe") == [(1,)]
        assert query(db, "select count(*) from supabase_migrations.schema_migrations "
                         "where version = %s", version) == [(1,)]

        # The Supabase CLI and the console agree with what was recorded.
        verify = oracle(capsys, "--db-url", db.url(), "verify", "--check", "migrations",
                        "--migrations-dir", str(workdir / "supabase" / "migrations"))
        assert verify.code == 0, verify.out + verify.err
        push = cli(workdir, "db", "push", "--db-url", f"{db.url()}?sslmode=disable",
                   "--dry-run")
        assert push.returncode == 0 and "up to date" in (push.stdout + push.stderr).lower(), \
            push.stdout + push.stderr

        # An applied migration edited since: refused by content, not only by version, by the
        # database layer and by `make run` (the supervisor), with the way out.
        probe = workdir / "supabase" / "migrations" / f"{PROBE}.sql"
        probe.write_text(PROBE_SQL.replace("(1)", "(2)"))
        with pytest.raises(DatabaseError, match=rf"changed since: {PROBE}\.sql \(from line 5 "
                                                r"on\)\. An applied migration was edited.*"
                                                r"make db-reset"):
            db.migrate()
        db.stop()
        ports = Ports(db=db.port)
        state_dir = scratch / "probe-state"
        sup = Supervisor.start(run_args(ports, db.data_dir, state_dir, "--supabase-workdir",
                                        str(workdir)), state_dir)
        try:
            code = sup.wait(timeout=START_TIMEOUT)
        finally:
            sup.kill()
        assert code == 1, sup.output
        said = " ".join(sup.output.split())
        assert f"make run: the database on port {db.port} applied migrations that have changed " \
               f"since: {PROBE}.sql (from line 5 on)" in said, sup.output
        assert "rebuild the local database with `make db-reset`" in said, sup.output
        assert "stopped every process this run started" in said, sup.output
        probe.write_text(PROBE_SQL)
        db = LocalDatabase(db.cluster, workdir=workdir)
        db.start()
        assert db.migrate().applied == []

        # Refusals, each naming the way out.
        execute(db, "insert into supabase_migrations.schema_migrations (version, name) "
                    "values ('29990101000000', 'elsewhere')")
        with pytest.raises(DatabaseError, match="29990101000000.*make db-reset"):
            db.migrate()
        execute(db, "drop schema supabase_migrations cascade")
        with pytest.raises(DatabaseError, match="no migration history.*make db-reset"):
            db.migrate()
    finally:
        db.started = True
        db.stop(immediate=True)


# -- make db / db-down / db-reset ------------------------------------------------------------------
def make(target: str, port: int) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["make", "--no-print-directory", target, f"DB_PORT={port}"], cwd=ROOT,
                          capture_output=True, text=True, timeout=START_TIMEOUT, check=False)


def scalar(url: str, sql: str) -> Any:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(sql).fetchone()
    return row[0] if row else None


def test_make_db_keeps_its_data_until_make_db_reset() -> None:
    """`make db` starts the project-local cluster the way `make run` does (migrated by the
    Supabase CLI, seeded once) and prints its URL; `make db-down` stops it with its data;
    `make db-reset` starts over."""
    port = free_port()
    data_dir = project_data_dir(port)
    seeded = "select count(*) from auth.users where email = 'demo@example.test'"
    marker = "select to_regclass('public.make_db_marker') is not null"
    try:
        up = make("db", port)
        assert up.returncode == 0, up.stdout + up.stderr
        url = up.stdout.splitlines()[-1]
        assert url == f"postgresql://postgres@127.0.0.1:{port}/postgres"
        assert scalar(url, "select count(*) from supabase_migrations.schema_migrations") == len(
            list((ROOT / "supabase" / "migrations").glob("*.sql")))
        assert scalar(url, seeded) == 1
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("create table public.make_db_marker (id int)")

        down = make("db-down", port)
        assert down.returncode == 0, down.stdout + down.stderr
        assert not (data_dir / "pgdata" / "postmaster.pid").exists()

        again = make("db", port)
        assert again.returncode == 0, again.stdout + again.stderr
        assert "# applied" not in again.stderr  # nothing new to apply
        assert scalar(url, marker) is True and scalar(url, seeded) == 1

        reset = make("db-reset", port)
        assert reset.returncode == 0, reset.stdout + reset.stderr
        assert reset.stdout.splitlines()[-1] == url
        assert scalar(url, marker) is False and scalar(url, seeded) == 1
    finally:
        Cluster(data_dir=data_dir, port=port).destroy()


def execute(db: LocalDatabase, sql: str, *params: Any) -> None:
    with psycopg.connect(db.url(), autocommit=True) as conn:
        conn.execute(sql, params or None)


def query(db: LocalDatabase, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(db.url(), autocommit=True) as conn:
        return conn.execute(sql, params or None).fetchall()


def cli(workdir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    home = tempfile.mkdtemp(prefix="aio-cli-home-")
    try:
        return subprocess.run([str(ROOT / "node_modules" / ".bin" / "supabase"), *args,
                               "--workdir", str(workdir)], cwd=workdir, capture_output=True,
                              text=True, timeout=300, check=False,
                              env={**os.environ, "HOME": home, "SUPABASE_TELEMETRY_DISABLED": "1",
                                   "DO_NOT_TRACK": "1", "SUPABASE_NO_UPDATE_NOTIFIER": "1"})
    finally:
        shutil.rmtree(home, ignore_errors=True)
