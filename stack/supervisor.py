"""`make run` (SPEC §7): the whole system on one machine, in paper mode, until Ctrl+C.

`Stack` starts, in this order, and stops in the reverse order:

    PostgreSQL      the project-local cluster (stack.localdb: kept between runs, the migrations
                    added since the last run applied and recorded by the Supabase CLI, the seed
                    applied once); pg_cron inside it runs run_maintenance every minute
    sandbox         python -m sandbox.bitvavo on 127.0.0.1 (a seeded, deterministic price path)
    trading_execute python -m shared.api.server on 127.0.0.1, TRADING_MODE=paper
    scan_scheduler  python -m shared.api.server on 127.0.0.1, ORACLE=rules,
                    EXECUTE_FUNCTION_URL → above

`run()` then plays Supabase Cron (stack.cron: a scanner tick every few seconds, /reconcile every
minute) and shows the system live (stack.live). Ctrl+C, SIGTERM or SIGHUP stops every process it
started — the functions, the sandbox, and PostgreSQL if it started it (the data is kept); a second
signal skips the grace periods. A port already in use stops it before anything starts, naming the
port and what wanted it. Child logs go to .local/run/logs/ (the view says where);
.local/run/stack.json lists what runs (pids, ports, logs) while it runs.

`make demo` (stack.demo) runs the same `Stack` on a throwaway cluster and free ports.

The local secrets (JWT secret, service key) are the Supabase CLI's public development values from
console.local: this command is for a developer's machine, never for a deployment.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import IO, Any

from rich.console import Console
from rich.live import Live

from console import local
from console.database import Target
from sandbox.auth import DEFAULT_VIEW_KEY, DEFAULT_VIEW_SECRET
from stack import live
from stack.cluster import ROOT, Cluster
from stack.cron import CallResult, Job, LocalCron
from stack.localdb import DatabaseError, Interrupted, LocalDatabase
from stack.ports import PortInUse, check_free
from stack.services import Service, ServiceFailed, stop_all

STATE_DIR = ROOT / ".local" / "run"
SERVICE_START_TIMEOUT = 60.0
STOP_GRACE = 5.0
REFRESH_SECONDS = 1.0
TICK_JOB = "scan_scheduler tick"
RECONCILE_JOB = "trading_execute /reconcile"
_INHERITED = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "TZ")


class StopRequested(Exception):
    """Ctrl+C / SIGTERM / SIGHUP arrived while starting: unwind and stop what was started."""


class StackFailed(Exception):
    """The stack could not start or a process died; the message says which and why."""


# -- configuration --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Ports:
    db: int
    sandbox: int
    trading_execute: int
    scan_scheduler: int

    def roles(self) -> dict[int, str]:
        return {self.db: "PostgreSQL (DB_PORT)", self.sandbox: "the sandbox (SANDBOX_PORT)",
                self.trading_execute: "trading_execute (TRADING_EXECUTE_PORT)",
                self.scan_scheduler: "scan_scheduler (SCAN_SCHEDULER_PORT)"}


@dataclass(frozen=True)
class Config:
    ports: Ports
    data_dir: Path
    state_dir: Path
    workdir: Path = ROOT              # holds supabase/ (migrations, seed.sql, config.toml)
    sandbox_seed: int = 42
    tick_seconds: float = 5.0
    reconcile_seconds: float = 60.0
    seed_demo_data: bool = True
    sandbox_clock_offset_ms: int = 0  # the sandbox's market clock ahead of (or behind) wall time

    @property
    def logs(self) -> Path:
        return self.state_dir / "logs"


# -- signals --------------------------------------------------------------------------------------
class Signals:
    """Ctrl+C (SIGINT), SIGTERM and SIGHUP only set flags: every wait of the stack polls them, so
    no exception is ever raised in the middle of starting or stopping a process (a child is always
    recorded once started). The first signal asks for a stop; any signal after the stop began asks
    to hurry (no grace periods). Children run in sessions of their own, so the terminal's Ctrl+C
    reaches only this process, which stops them in order."""

    HANDLED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

    def __init__(self) -> None:
        self.received: list[int] = []
        self.stop = threading.Event()
        self._stopping_at: int | None = None

    def install(self) -> None:
        for sig in self.HANDLED:
            signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.received.append(signum)
        self.stop.set()

    @property
    def requested(self) -> bool:
        return self.stop.is_set()

    def check(self) -> None:
        if self.requested:
            raise StopRequested()

    def begin_stopping(self) -> None:
        self.stop.set()
        if self._stopping_at is None:
            self._stopping_at = len(self.received)

    def hurry(self) -> bool:
        return self._stopping_at is not None and len(self.received) > self._stopping_at


# -- the stack ------------------------------------------------------------------------------------
@dataclass
class Stack:
    config: Config
    signals: Signals
    say: Callable[[str], None]
    db: LocalDatabase = field(init=False)
    services: list[Service] = field(default_factory=list)
    cron: LocalCron | None = None
    state: str = "starting"
    adopted: bool = False
    _cron_thread: threading.Thread | None = None

    def __post_init__(self) -> None:
        cluster = Cluster(data_dir=self.config.data_dir, port=self.config.ports.db,
                          cron_database="postgres")
        self.db = LocalDatabase(cluster, workdir=self.config.workdir)

    # urls the functions and the cron stand-in use
    @property
    def sandbox_url(self) -> str:
        return f"http://{local.HOST}:{self.config.ports.sandbox}"

    @property
    def execute_url(self) -> str:
        return f"http://{local.HOST}:{self.config.ports.trading_execute}"

    @property
    def scanner_url(self) -> str:
        return f"http://{local.HOST}:{self.config.ports.scan_scheduler}"

    @property
    def target(self) -> Target:
        return Target(self.db.url(), "the local stack")

    def service(self, name: str) -> Service:
        return next(s for s in self.services if s.name == name)

    # -- up ----------------------------------------------------------------------------------
    def up(self) -> None:
        """Start everything; StackFailed / PortInUse / StopRequested leave what started running
        for `down()` to stop (the caller always calls it)."""
        cfg = self.config
        previous = _read_state(cfg.state_dir)
        cfg.logs.mkdir(parents=True, exist_ok=True)
        pg_running = self.db.running_pid() is not None
        wanted = cfg.ports.roles()
        if pg_running:
            wanted.pop(cfg.ports.db)  # our own cluster already listens there
        check_free(wanted)
        self.write_state()

        # The sandbox needs nothing else: it starts while PostgreSQL starts and migrates.
        sandbox = self._service("sandbox", [sys.executable, "-m", "sandbox.bitvavo",
                                            "--host", local.HOST,
                                            "--port", str(cfg.ports.sandbox),
                                            "--seed", str(cfg.sandbox_seed)],
                                env={"SANDBOX_CLOCK_OFFSET_MS": str(cfg.sandbox_clock_offset_ms)},
                                ready_path="/v2/time")
        self._start(sandbox)

        if pg_running:
            self.adopted = _started_by_dead_supervisor(previous, self.db.running_pid())
            self.db.started = self.adopted
            self.say(f"PostgreSQL already running on port {cfg.ports.db} ({cfg.data_dir})"
                     + ("; a previous run started it and did not stop it: this run will"
                        if self.adopted else "; it is left running at the end"))
        else:
            self.say(("creating" if not (cfg.data_dir / "pgdata" / "PG_VERSION").exists()
                      else "starting") + f" PostgreSQL 15 + pg_cron on port {cfg.ports.db} "
                     f"({cfg.data_dir})")
            self.db.start()
        self.write_state()
        self.signals.check()
        try:
            report = self.db.migrate(seed=cfg.seed_demo_data, on_progress=self.say,
                                     should_stop=lambda: self.signals.requested)
        except Interrupted:
            raise StopRequested() from None
        if report.applied:
            self.say(f"applied and recorded {len(report.applied)} migration(s): "
                     f"{', '.join(report.applied)}")
        if report.seeded:
            self.say(f"seeded the demo data ({', '.join(report.seeded)}), once")
        self.say(f"schema up to date: {report.recorded} migrations recorded in "
                 "supabase_migrations.schema_migrations")

        self._wait_ready(sandbox)
        db_url = self.db.url(user="authenticator")  # the role PostgREST logs in as
        common = {
            "DATABASE_URL": db_url,
            "SUPABASE_JWT_SECRET": local.JWT_SECRET,
            "SUPABASE_JWT_ISSUER": local.JWT_ISSUER,
            "SUPABASE_SERVICE_ROLE_KEY": local.SERVICE_ROLE_KEY,
            "BITVAVO_REST_URL": f"{self.sandbox_url}/v2",
            "TRADING_MODE": "paper",
        }
        execute = self._function("trading_execute", cfg.ports.trading_execute, common)
        scanner = self._function("scan_scheduler", cfg.ports.scan_scheduler, {
            **common,
            "ORACLE": "rules",
            "EXECUTE_FUNCTION_URL": f"{self.execute_url}/",
            "BITVAVO_READONLY_API_KEY": DEFAULT_VIEW_KEY,
            "BITVAVO_READONLY_API_SECRET": DEFAULT_VIEW_SECRET,
        })
        self._start(execute)
        self._start(scanner)
        self._wait_ready(execute)
        self._wait_ready(scanner)
        self.cron = LocalCron(service_key=local.SERVICE_ROLE_KEY, jobs=[
            Job(TICK_JOB, f"{self.scanner_url}/", cfg.tick_seconds, {}),
            Job(RECONCILE_JOB, f"{self.execute_url}/reconcile", cfg.reconcile_seconds),
        ])
        self.state = "ready"
        self.write_state()

    def _service(self, name: str, argv: list[str], env: dict[str, str],
                 ready_path: str = "/") -> Service:
        base = {k: v for k, v in os.environ.items() if k in _INHERITED}
        port = {"sandbox": self.config.ports.sandbox,
                "trading_execute": self.config.ports.trading_execute,
                "scan_scheduler": self.config.ports.scan_scheduler}[name]
        return Service(name=name, argv=argv, port=port, ready_path=ready_path, cwd=ROOT,
                       env={**base, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT), **env},
                       log_path=self.config.logs / f"{name}.log")

    def _function(self, name: str, port: int, env: dict[str, str]) -> Service:
        source = ROOT / "functions" / name / "main.py"
        return self._service(name, [sys.executable, "-m", "shared.api.server",
                                    "--target", name, "--source", str(source),
                                    "--host", local.HOST, "--port", str(port)], env)

    def _start(self, service: Service) -> None:
        self.signals.check()
        service.start()
        self.services.append(service)
        self.write_state()

    def _wait_ready(self, service: Service) -> None:
        service.wait_ready(SERVICE_START_TIMEOUT, tick=self.signals.check)
        self.say(f"{service.name} serving on {service.url} (log {service.log_path})")

    # -- the cron stand-in -----------------------------------------------------------------------
    def start_cron(self, on_result: Callable[[CallResult], None]) -> None:
        """Call the functions on schedule from a thread of its own (a slow tick never holds up
        the view or a Ctrl+C); the first tick now, the first reconcile after one period."""
        cron = self.cron
        assert cron is not None
        cron.start(time.monotonic(), first_in={RECONCILE_JOB: self.config.reconcile_seconds})

        def loop() -> None:
            while not self.signals.requested:
                for result in cron.run_due(time.monotonic()):
                    if self.signals.requested:
                        return
                    on_result(result)
                self.signals.stop.wait(max(0.05, cron.next_due() - time.monotonic()))

        self._cron_thread = threading.Thread(target=loop, name="local-cron", daemon=True)
        self._cron_thread.start()

    def health(self) -> None:
        """StackFailed when a process it runs has died."""
        for service in self.services:
            if not service.alive:
                raise StackFailed(service.failure(f"exited with code {service.exit_code}"))
        if self.db.running_pid() is None:
            raise StackFailed(f"PostgreSQL on port {self.config.ports.db} is not running any "
                              f"more; its log: {self.db.log_file}")

    # -- down --------------------------------------------------------------------------------
    def down(self) -> None:
        """Stop everything this process started, in reverse order; PostgreSQL last (data kept)."""
        self.signals.begin_stopping()
        self.state = "stopping"
        self.write_state()
        if self._cron_thread is not None:
            self._cron_thread.join(timeout=0.5)  # an in-flight call ends when its function stops
        killed = stop_all(reversed(self.services), grace=STOP_GRACE, hurry=self.signals.hurry)
        if killed:
            self.say(f"killed (SIGKILL) {', '.join(killed)}: "
                     + ("a second signal asked to hurry" if self.signals.hurry()
                        else f"still running {STOP_GRACE:g} s after SIGTERM"))
        if self.cron is not None:
            self.cron.close()
        try:
            self.db.stop(immediate=self.signals.hurry())
        except DatabaseError as exc:  # pragma: no cover - the cluster changed under us
            self.say(f"could not stop PostgreSQL: {exc}")
        self.state = "stopped"
        self.write_state()

    # -- what runs, for people and tests ---------------------------------------------------------
    def write_state(self) -> None:
        pg_pid = self.db.running_pid() if self.state != "stopped" else None
        state = {
            "state": self.state,
            "supervisor": {"pid": os.getpid()},
            "written_at": datetime.now(UTC).isoformat(),
            "postgres": {"pid": pg_pid, "port": self.config.ports.db,
                         "data_dir": str(self.config.data_dir), "started_here": self.db.started,
                         "log": str(self.db.log_file)},
            "services": {s.name: {"pid": s.pid, "port": s.port, "url": s.url,
                                  "log": str(s.log_path)} for s in self.services},
        }
        self.config.state_dir.mkdir(parents=True, exist_ok=True)
        path = self.config.state_dir / "stack.json"
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(state, indent=2) + "\n")
        tmp.replace(path)


def _read_state(state_dir: Path) -> dict[str, Any]:
    try:
        state = json.loads((state_dir / "stack.json").read_text())
    except (OSError, ValueError):
        return {}
    return state if isinstance(state, dict) else {}


def _started_by_dead_supervisor(previous: dict[str, Any], pg_pid: int | None) -> bool:
    """True when the running cluster is the one a previous `make run` started and never stopped
    (that supervisor was killed): this run then owns it and stops it at the end."""
    pg = previous.get("postgres") or {}
    supervisor = (previous.get("supervisor") or {}).get("pid")
    return (bool(pg.get("started_here")) and pg.get("pid") == pg_pid and pg_pid is not None
            and isinstance(supervisor, int) and not Path(f"/proc/{supervisor}").exists())


# -- run ------------------------------------------------------------------------------------------
def run(config: Config, out: IO[str], err: IO[str], *, plain: bool) -> int:
    started = time.monotonic()
    signals = Signals()
    signals.install()

    def say(message: str) -> None:
        out.write(f"· {message}\n")
        out.flush()

    stack = Stack(config, signals, say)
    code = 0
    try:
        stack.up()
        say(f"stack ready in {time.monotonic() - started:.1f} s: trading_execute "
            f"{stack.execute_url}, scan_scheduler {stack.scanner_url}, sandbox "
            f"{stack.sandbox_url}, database {stack.target.display}; logs in {config.logs}")
        assert stack.cron is not None
        board = live.Board(title="Auto Invest Oracle — local stack, paper mode", db=stack.db,
                           services=stack.services, cron=stack.cron, logs=config.logs)
        cron_log = (config.logs / "cron.log").open("a")

        def on_result(result: CallResult) -> None:
            cron_log.write(json.dumps({"job": result.job, "at": result.at.isoformat(),
                                       "status": result.status, "ms": result.duration_ms,
                                       "counts": dict(result.counts),
                                       "error": result.error}) + "\n")
            cron_log.flush()
            if plain:
                out.write(live.call_line(result) + "\n")
                out.flush()

        stack.start_cron(on_result)
        try:
            if plain:
                while not signals.requested:
                    stack.health()
                    signals.stop.wait(REFRESH_SECONDS)
            else:
                console = Console(file=out)
                with Live(console=console, auto_refresh=False, screen=False,
                          vertical_overflow="crop", transient=False) as view:
                    while not signals.requested:
                        stack.health()
                        view.update(live.render(board, live.read_frame(stack.target)),
                                    refresh=True)
                        signals.stop.wait(REFRESH_SECONDS)
        finally:
            cron_log.close()
    except StopRequested:
        pass
    except PortInUse as exc:
        err.write(f"make run: {exc}\n")
        code = 1
    except (StackFailed, ServiceFailed, DatabaseError) as exc:
        err.write(f"make run: {exc}\n")
        code = 1
    finally:
        if signals.requested and code == 0:
            say("stopping (a second Ctrl+C skips the grace periods)")
        stack.down()
    kept = (f"; PostgreSQL stopped, data kept in {config.data_dir}" if stack.db.started
            else f"; PostgreSQL on port {config.ports.db} left running (this run did not start "
                 "it)" if stack.db.running_pid() else "")
    say(f"stopped every process this run started{kept}")
    return code
