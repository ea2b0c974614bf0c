"""What the scan_scheduler tests share: the function's environment, bulk world-building, the
step-log lines, and a small recording HTTP server for stand-ins (trading_execute, an
OpenAI-compatible model) and fakes.

    with RecordingServer(handler) as server:       # handler(Recorded) -> (status, headers, body)
        server.url, server.requests                # every request, in arrival order
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tests.pg import Database
from tests.sandbox_server import SandboxServer

SERVICE_KEY = "sb_secret_scan-tests-" + "k" * 24
JWT_SECRET = "scan-tests-jwt-secret-" + "s" * 24
OPENAI_KEY = "sk-scan-tests-" + "o" * 24
SANDBOX_MARKETS = ("BTC-EUR", "ETH-EUR", "SOL-EUR", "XRP-EUR")
# Thresholds under which the rules oracle signals on every market (EMA gap ≠ 0, RSI strictly
# between 0 and 100), so an end-to-end test knows how many proposals to expect.
ALWAYS_SIGNAL = {"RULES_MIN_TREND_PCT": "0", "RULES_RSI_OVERBOUGHT": "100",
                 "RULES_RSI_OVERSOLD": "0"}


def scan_env(db: Database, sandbox: SandboxServer, **overrides: str) -> dict[str, str]:
    """scan_scheduler's environment against this test database and sandbox (read-only key)."""
    env = {
        "DATABASE_URL": db.authenticator_url,
        "SUPABASE_SERVICE_ROLE_KEY": SERVICE_KEY,
        "SUPABASE_JWT_SECRET": JWT_SECRET,
        "BITVAVO_REST_URL": sandbox.rest_url,
        "BITVAVO_READONLY_API_KEY": sandbox.view_key,
        "BITVAVO_READONLY_API_SECRET": sandbox.view_secret,
        "RPC_POOL_MAX_SIZE": "10",
        "CANDLE_LIMIT": "60",
    }
    env.update(overrides)
    return env


def service_headers(**extra: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {SERVICE_KEY}", **extra}


def build_world(db: Database, *, users: int, markets: Sequence[str] = SANDBOX_MARKETS,
                interval: int = 600, settings: Mapping[str, Any] | None = None,
                due_within_seconds: int = 3600) -> list[uuid.UUID]:
    """`users` users, each with every market allowlisted and one due scan job per market.
    Returns the user ids."""
    user_ids = [uuid.uuid4() for _ in range(users)]
    with db.connect() as conn:
        with conn.cursor() as cur:
            cur.executemany("insert into auth.users (id, email) values (%s, %s)",
                            [(u, f"{u.hex[:10]}@scan.test") for u in user_ids])
            cur.executemany("insert into public.market_allowlist (market, enabled) "
                            "values (%s, true) on conflict (market) do nothing",
                            [(m,) for m in markets])
            cur.execute("insert into public.trading_allowlist (user_id, market) "
                        "select u, m from unnest(%s::uuid[]) u, unnest(%s::text[]) m",
                        (user_ids, list(markets)))
            cur.execute("insert into public.scan_jobs (user_id, market, interval_seconds, "
                        "next_run_at) select user_id, market, %s, "
                        "now() - random() * make_interval(secs => %s) "
                        "from public.trading_allowlist where user_id = any(%s)",
                        (interval, due_within_seconds, user_ids))
            for column, value in (settings or {}).items():
                cur.execute(f"update public.trading_settings set {column} = %s "  # noqa: S608
                            "where user_id = any(%s)", (value, user_ids))
    return user_ids


def step_lines(text: str) -> list[dict[str, Any]]:
    """The JSON step-log lines in a function's output."""
    lines = []
    for raw in text.splitlines():
        raw = raw.strip()
        if raw.startswith("{") and '"step"' in raw:
            try:
                lines.append(json.loads(raw))
            except ValueError:
                continue
    return lines


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    at: float

    def json(self) -> Any:
        return json.loads(self.body or b"null")

    def header(self, name: str) -> str | None:
        for key, value in self.headers.items():
            if key.lower() == name.lower():
                return value
        return None


Handler = Callable[[Recorded], tuple[int, Mapping[str, str], bytes | str | dict[str, Any]]]


@dataclass
class RecordingServer:
    """A threaded HTTP server on 127.0.0.1 that records every request and answers with
    `handler`. Use as a context manager."""

    handler: Handler
    requests: list[Recorded] = field(default_factory=list)
    _server: ThreadingHTTPServer | None = None
    _thread: threading.Thread | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        assert self._server is not None
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def __enter__(self) -> RecordingServer:
        outer = self

        class _Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                record = Recorded(self.command, self.path, dict(self.headers.items()), body,
                                  time.time())
                with outer._lock:
                    outer.requests.append(record)
                status, headers, payload = outer.handler(record)
                if isinstance(payload, dict):
                    data = json.dumps(payload).encode()
                    headers = {"Content-Type": "application/json", **headers}
                else:
                    data = payload.encode() if isinstance(payload, str) else payload
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = _serve  # noqa: N815

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._server is not None and self._thread is not None
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def snapshot(self) -> list[Recorded]:
        with self._lock:
            return list(self.requests)

