"""What one trading_execute process holds: settings, the token verifier, the exchange, the RPC port.

    runtime = Runtime.start()       # at import of functions/trading_execute/main.py

`start()` loads the settings (a ConfigurationError names every bad variable; live mode without the
trade key refuses here; the loader registers every configured secret with the step log's
redaction), sends the step lines to stdout, builds the verifier and the exchange (G3 composition,
shared.execution.venue), and warms the exchange: market listings read, server clock measured — at
start-up, never on the claim path.

The RPC port is opened on first use in the process that serves, not at import: functions-framework
imports main.py in gunicorn's master and then forks the worker, and psycopg_pool's threads and
connections do not survive a fork (the master's pool would later close connections the worker
uses). Everything else built at import is plain data or httpx clients, which the worker inherits
safely (the master never uses them again).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable

from shared.api import steplog
from shared.api.steplog import StepLog
from shared.auth import Verifier
from shared.execution.settings import ExecuteSettings, load_execute_settings
from shared.execution.venue import Venue
from shared.rpc.port import RpcPort
from shared.rpc.settings import connect_rpc

_configured = False


class Runtime:
    def __init__(self, settings: ExecuteSettings, *, verifier: Verifier | None = None,
                 venue: Venue | None = None,
                 rpc_factory: Callable[[], RpcPort] | None = None) -> None:
        self.settings = settings
        self.verifier = verifier or Verifier(settings.auth)
        self.venue = venue or Venue(settings)
        self._rpc_factory = rpc_factory or (lambda: connect_rpc(settings.rpc))
        self._rpc: RpcPort | None = None
        self._rpc_pid: int | None = None
        self._lock = threading.Lock()

    @classmethod
    def start(cls) -> Runtime:
        """Load, check and build everything (ConfigurationError when the settings are bad)."""
        global _configured
        settings = load_execute_settings()
        if not _configured:
            steplog.configure()
            _configured = True
        runtime = cls(settings)
        warm = runtime.venue.warm()
        StepLog(mode=settings.mode).event(
            "start", "ok" if not any(k.endswith("_error") for k in warm) else "degraded",
            severity="INFO", rpc=settings.rpc.adapter, **warm)
        return runtime

    @property
    def mode(self) -> str:
        return self.settings.mode

    @property
    def rpc(self) -> RpcPort:
        """The RPC port of this process, opened on first use (see the module docstring)."""
        pid = os.getpid()
        with self._lock:
            if self._rpc is None or self._rpc_pid != pid:
                self._rpc = self._rpc_factory()
                self._rpc_pid = pid
            return self._rpc

    def close(self) -> None:
        with self._lock:
            if self._rpc is not None and self._rpc_pid == os.getpid():
                self._rpc.close()
            self._rpc = None
        self.venue.close()
        self.verifier.close()
