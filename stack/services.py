"""The local stack's HTTP services as child processes: the sandbox and the two functions.

    service = Service("trading_execute", argv, env, port=54331, log_path=…)
    service.start()                 # own session, stdout+stderr to log_path
    service.wait_ready(deadline)    # an HTTP answer on its port, or ServiceFailed with its log
    stop_all([...], grace=5)        # SIGTERM to each process group, SIGKILL what is left

Each child runs in a session of its own, so the terminal's Ctrl+C reaches only the supervisor,
which stops the children in order; and with PR_SET_PDEATHSIG it gets SIGTERM should the supervisor
die without stopping it (killed with SIGKILL), so a crashed `make run` leaves no server behind.
A function is gunicorn's master plus its worker, in one process group: every signal goes to the
group.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from stack.ports import HOST

_PR_SET_PDEATHSIG = 1
READY_PROBE_TIMEOUT = httpx.Timeout(1.0)


class ServiceFailed(RuntimeError):
    """A service exited or never answered; the message has the end of its log."""


def _prepare_child() -> None:  # pragma: no cover - runs in the child between fork and exec
    # A signal mask survives fork and exec: whatever the supervisor's thread had blocked, the
    # child starts with none blocked, or it would never see the SIGTERM that stops it.
    signal.pthread_sigmask(signal.SIG_SETMASK, set())
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


@dataclass
class Service:
    name: str
    argv: list[str]
    env: Mapping[str, str]
    port: int
    log_path: Path
    cwd: Path
    ready_path: str = "/"
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    started_at: float | None = None

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def exit_code(self) -> int | None:
        return self.process.poll() if self.process is not None else None

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                self.argv, cwd=self.cwd, env=dict(self.env), stdout=log,
                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
                preexec_fn=_prepare_child,  # Popen runs in the main thread only
            )
        self.started_at = time.monotonic()

    def probe(self) -> bool:
        """True once the service answers HTTP at all (any status); ServiceFailed if it exited."""
        if not self.alive:
            raise ServiceFailed(self.failure(f"exited with code {self.exit_code} before serving"))
        try:
            httpx.get(self.url + self.ready_path, timeout=READY_PROBE_TIMEOUT)
        except httpx.TransportError:
            return False
        return True

    def wait_ready(self, timeout: float, *, tick: Callable[[], None] = lambda: None) -> None:
        deadline = time.monotonic() + timeout
        while not self.probe():
            if time.monotonic() > deadline:
                raise ServiceFailed(self.failure(f"did not answer on port {self.port} within "
                                                 f"{timeout:.0f} s"))
            tick()
            time.sleep(0.05)

    def failure(self, what: str) -> str:
        return f"{self.name} {what}. The end of its log ({self.log_path}):\n{self.log_tail()}"

    def log_tail(self, lines: int = 25) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.rstrip().splitlines()[-lines:]) or "(empty)"

    def signal_group(self, sig: int) -> None:
        if self.process is None:
            return
        try:
            os.killpg(self.process.pid, sig)
        except ProcessLookupError:
            pass


def stop_all(services: Iterable[Service], *, grace: float,
             hurry: Callable[[], bool] = lambda: False) -> list[str]:
    """SIGTERM every started service's process group, wait up to `grace` seconds (less once
    `hurry()` turns true), then SIGKILL the groups and reap. Groups are killed even when their
    leader already exited, so a worker that outlived its master goes too. Returns the names of
    the services that had to be killed (still running when the grace period ended)."""
    started = [s for s in services if s.process is not None]
    for service in started:
        if service.alive:
            service.signal_group(signal.SIGTERM)
    deadline = time.monotonic() + grace
    while any(s.alive for s in started) and time.monotonic() < deadline and not hurry():
        time.sleep(0.05)
    killed = [s.name for s in started if s.alive]
    for service in started:
        service.signal_group(signal.SIGKILL)
        assert service.process is not None
        try:
            service.process.wait(timeout=10)
        except subprocess.TimeoutExpired:  # pragma: no cover - SIGKILL is not ignorable
            pass
    return killed
