"""The `bitvavo_sandbox` fixture: the sandbox exchange as a real subprocess over real HTTP.

    def test_something(bitvavo_sandbox):
        httpx.get(bitvavo_sandbox.rest_url + "/time")
        bitvavo_sandbox.set_fault(fault="drop_after_accept", times=1)
        assert len(bitvavo_sandbox.orders()) == 1

One process per test session (`python -m sandbox.bitvavo --host 127.0.0.1 --port 0 --seed 42`);
`reset()` runs before every test that uses the fixture, so orders, balances, faults, rate-limit
counters and the market clock start fresh. Tests that need other keys, balances or rate limits
start their own with `start_sandbox(env={...})` (a context manager).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from sandbox.auth import (
    DEFAULT_TRADE_KEY,
    DEFAULT_TRADE_SECRET,
    DEFAULT_VIEW_KEY,
    DEFAULT_VIEW_SECRET,
)

REPO_ROOT = Path(__file__).resolve().parent.parent
START_TIMEOUT_S = 15.0
READY_PREFIX = "SANDBOX_READY "


@dataclass
class SandboxServer:
    root: str
    process: subprocess.Popen[str]
    log_path: Path
    view_key: str = DEFAULT_VIEW_KEY
    view_secret: str = DEFAULT_VIEW_SECRET
    trade_key: str = DEFAULT_TRADE_KEY
    trade_secret: str = DEFAULT_TRADE_SECRET
    _control: httpx.Client = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._control = httpx.Client(base_url=self.root, timeout=5.0)

    @property
    def rest_url(self) -> str:
        return self.root + "/v2"

    # -- control surface ---------------------------------------------------------------------

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        response = self._control.request(method, path, json=body)
        response.raise_for_status()
        return response.json()

    def set_fault(self, **spec: Any) -> dict[str, Any]:
        """`fault="error"|"latency"|"drop_after_accept"|"none"`, `times`, `http_status`,
        `error_code`, `latency_ms`, `place`, `hold` — for the next `times` POST /order requests."""
        return self._call("POST", "/_sandbox/faults", spec)

    def release_held(self) -> int:
        """Let every `POST /order` held by a `latency` fault with `hold` go on; how many."""
        return int(self._call("POST", "/_sandbox/faults/release")["released"])

    def held(self) -> int:
        """How many `POST /order` requests a holding latency fault holds right now."""
        return int(self._call("GET", "/_sandbox/faults")["held"])

    def find_completed_by_client_order_id(self, found: bool) -> None:
        """False: `GET /order?clientOrderId=` answers 240 for an order that is no longer open
        (as real Bitvavo may); until the next reset."""
        self._call("POST", "/_sandbox/order_lookup", {"completed_by_client_order_id": found})

    def set_market(self, market: str, **fields: str) -> dict[str, Any]:
        """`status="trading"|"halted"|"auction"`, `maxOrderInBaseAsset`, `maxOrderInQuoteAsset`
        (strings); answers the market's `/markets` row."""
        return self._call("POST", "/_sandbox/markets", {"market": market, **fields})

    def set_account(self, **rules: str) -> dict[str, Any]:
        """`insufficient_funds="reject"|"expire"`, `amount_quote_fee="included"|"on_top"`."""
        return self._call("POST", "/_sandbox/account", rules)

    def orders(self) -> list[dict[str, Any]]:
        """Every order the sandbox accepted (including ones whose answer was dropped)."""
        return self._call("GET", "/_sandbox/orders")

    def limits(self) -> dict[str, int]:
        """{"limit", "window_ms", "refused"}: refused counts the 429 answers since the reset."""
        return self._call("GET", "/_sandbox/limits")

    def reset(self, balances: dict[str, str] | None = None) -> None:
        self._call("POST", "/_sandbox/reset", {"balances": balances} if balances else {})

    def advance_clock(self, ms: int) -> dict[str, Any]:
        """Move the market clock (prices, candles, limit matching) forward by `ms`."""
        return self._call("POST", "/_sandbox/clock", {"advance_ms": ms})

    def clock(self) -> dict[str, Any]:
        return self._call("GET", "/_sandbox/clock")

    def price_at(self, market: str, at_ms: int) -> dict[str, Any]:
        """The deterministic path at any market time: {"price", "candle": [ms,o,h,l,c]}."""
        return self._call("GET", f"/_sandbox/price?market={market}&at={at_ms}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        self._control.close()
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
        self.log_path.unlink(missing_ok=True)


def _launch(env: dict[str, str] | None, seed: int, host: str) -> SandboxServer:
    log = tempfile.NamedTemporaryFile(prefix="bitvavo-sandbox-", suffix=".log", delete=False)
    log_path = Path(log.name)
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("SANDBOX_")}
    full_env.update(env or {})
    full_env["PYTHONUNBUFFERED"] = "1"
    process = subprocess.Popen(
        [sys.executable, "-m", "sandbox.bitvavo", "--host", host, "--port", "0",
         "--seed", str(seed)],
        cwd=REPO_ROOT, env=full_env, stdout=subprocess.PIPE, stderr=log, text=True,
    )
    log.close()
    assert process.stdout is not None
    line = process.stdout.readline()  # blocks until ready or exit
    if not line.startswith(READY_PREFIX):
        process.kill()
        process.wait(timeout=5)
        raise RuntimeError(f"sandbox did not start: {line!r}\n{log_path.read_text()}")
    root = line[len(READY_PREFIX):].strip()
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        try:
            if httpx.get(root + "/v2/time", timeout=1.0).status_code == 200:
                break
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline or process.poll() is not None:
            process.kill()
            raise RuntimeError(f"sandbox at {root} never answered /v2/time\n"
                               f"{log_path.read_text()}")
        time.sleep(0.05)
    return SandboxServer(root=root, process=process, log_path=log_path)


@contextmanager
def start_sandbox(env: dict[str, str] | None = None, seed: int = 42,
                  host: str = "127.0.0.1") -> Iterator[SandboxServer]:
    """A private sandbox with custom `SANDBOX_KEYS` / `SANDBOX_BALANCES` / `SANDBOX_RATE_LIMIT`."""
    server = _launch(env, seed, host)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def bitvavo_sandbox_session() -> Iterator[SandboxServer]:
    with start_sandbox() as server:
        yield server


@pytest.fixture
def bitvavo_sandbox(bitvavo_sandbox_session: SandboxServer) -> SandboxServer:
    """The session's sandbox, reset to its starting state for this test."""
    bitvavo_sandbox_session.reset()
    return bitvavo_sandbox_session
