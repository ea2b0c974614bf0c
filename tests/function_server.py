"""An HTTP function served on 127.0.0.1 as `make run` serves it (functions-framework's app and
gunicorn server with this project's settings, shared.api.server), for end-to-end tests.

    with start_function("trading_execute", env={...}) as fn:     # or command=/cwd= for a bundle
        response = fn.post("/", json={...}, headers={...})
        fn.kill()            # SIGKILL the whole server (gunicorn master and worker)

The server runs in its own session, so `kill()` reaches the worker that runs the request, not only
gunicorn's master. Its stdout/stderr (the JSON step logs) go to a file that `logs()` reads. Start-up
failures raise with that log, so a misconfigured function fails the test with the function's own
message.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from stack.cluster import free_port

REPO_ROOT = Path(__file__).resolve().parent.parent
START_TIMEOUT_S = 30.0


@dataclass
class FunctionServer:
    name: str
    url: str
    process: subprocess.Popen[bytes]
    log_path: Path
    _client: httpx.Client = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._client = httpx.Client(base_url=self.url, timeout=30.0)

    def post(self, path: str = "/", **kwargs: Any) -> httpx.Response:
        return self._client.post(path, **kwargs)

    def request(self, method: str, path: str = "/", **kwargs: Any) -> httpx.Response:
        return self._client.request(method, path, **kwargs)

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Signal the server's whole process group (master and worker) and wait for the master."""
        if self.alive:
            try:
                os.killpg(self.process.pid, sig)
            except ProcessLookupError:
                pass
            self.process.wait(timeout=10)

    def stop(self) -> None:
        self._client.close()
        if self.alive:
            self.kill(signal.SIGTERM)
        # Whatever is left of the group (a worker that outlived its master) goes too.
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _launch(name: str, env: Mapping[str, str], source: Path,
            command: Sequence[str] | None = None, cwd: Path | None = None) -> FunctionServer:
    port = free_port()
    log = tempfile.NamedTemporaryFile(prefix=f"{name}-", suffix=".log", delete=False)
    log_path = Path(log.name)
    full_env = {k: v for k, v in os.environ.items()
                if k in ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "SYSTEMROOT")}
    full_env.update(env)
    full_env["PYTHONUNBUFFERED"] = "1"
    if command is None:  # this checkout's server, with the repository importable
        command = [sys.executable, "-m", "shared.api.server"]
        full_env.setdefault("PYTHONPATH", str(REPO_ROOT))
    process = subprocess.Popen(
        [*command, "--target", name, "--source", str(source),
         "--host", "127.0.0.1", "--port", str(port)],
        cwd=cwd or REPO_ROOT, env=full_env, stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    log.close()
    url = f"http://127.0.0.1:{port}"
    server = FunctionServer(name=name, url=url, process=process, log_path=log_path)
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        if process.poll() is not None:
            server.stop()
            raise RuntimeError(f"{name} exited with {process.returncode} before serving:\n"
                               f"{log_path.read_text(errors='replace')}")
        try:
            httpx.get(url + "/", timeout=1.0)  # any HTTP answer means it is serving
            return server
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            server.stop()
            raise RuntimeError(f"{name} did not serve within {START_TIMEOUT_S:.0f} s:\n"
                               f"{log_path.read_text(errors='replace')}")
        time.sleep(0.05)


@contextmanager
def start_function(name: str, env: Mapping[str, str], *, source: Path | None = None,
                   command: Sequence[str] | None = None,
                   cwd: Path | None = None) -> Iterator[FunctionServer]:
    """Serve `functions/<name>/main.py` (or `source`) with exactly `env` plus PATH/HOME/locale.
    The parent's environment is not inherited, so a setting the function needs must be passed.

    By default this checkout's server (shared.api.server) serves it with the repository on
    PYTHONPATH; with `command` (e.g. a bundle venv's `functions-framework` executable, what
    production runs) that command runs in
    `cwd` and nothing is added to the path: a bundle must stand alone."""
    server = _launch(name, env, source or REPO_ROOT / "functions" / name / "main.py",
                     command, cwd)
    try:
        yield server
    finally:
        server.stop()
        server.log_path.unlink(missing_ok=True)
