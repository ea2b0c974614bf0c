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

import httpx

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

        class _Server(ThreadingHTTPServer):
            def handle_error(self, request: Any, client_address: Any) -> None:
                pass  # a client that went away (a killed function) is expected here

        self._server = _Server(("127.0.0.1", 0), _Handler)
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



class HoldingProxy:
    """A pass-through proxy to the sandbox that can hold a market's candle requests: the job
    asking for them is then provably mid-job (after its claim and context, before its oracle)
    until `release()`. `arrived[market]` is set when a held request comes in."""

    def __init__(self, sandbox: SandboxServer, hold: Sequence[str] = ()) -> None:
        self.sandbox = sandbox
        self.held = set(hold)
        self.arrived = {m: threading.Event() for m in hold}
        self._go = threading.Event()
        self._client = httpx.Client(base_url=sandbox.root, timeout=30.0)
        self.server = RecordingServer(self._forward)

    @property
    def rest_url(self) -> str:
        return self.server.url + "/v2"

    def release(self) -> None:
        self._go.set()

    def _forward(self, request: Recorded) -> tuple[int, Mapping[str, str], bytes]:
        for market in self.held:
            if request.path.startswith(f"/v2/{market}/candles"):
                self.arrived[market].set()
                self._go.wait(60)
        headers = {k: v for k, v in request.headers.items()
                   if k.lower() not in ("host", "content-length", "connection")}
        answer = self._client.request(request.method, request.path, headers=headers,
                                      content=request.body or None)
        keep = {k: v for k, v in answer.headers.items()
                if k.lower() not in ("content-length", "transfer-encoding", "connection",
                                     "content-encoding")}
        return answer.status_code, keep, answer.content

    def __enter__(self) -> HoldingProxy:
        self.server.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._go.set()
        self.server.__exit__(*exc)
        self._client.close()


class ExecuteStandIn:
    """Answers like trading_execute's contract (SPEC §4) for the scanner's requests:
    the first request of an (Idempotency-Key, proposal) → 201 with a filled execution; the same
    key and proposal again → 200 + Idempotent-Replayed: true; a key seen with another proposal →
    422 idempotency-key-reused. `fail_first` answers 503 to that many requests first; `hold`
    makes the first request wait for `release()`. Records every request (RecordingServer)."""

    def __init__(self, *, fail_first: int = 0, hold: bool = False) -> None:
        self.fail_first = fail_first
        self.executed: dict[str, str] = {}  # key → proposal id
        self._hold = threading.Event() if hold else None
        self.arrived = threading.Event()
        self._lock = threading.Lock()
        self.server = RecordingServer(self._answer)

    @property
    def url(self) -> str:
        return self.server.url + "/"

    @property
    def requests(self) -> list[Recorded]:
        return self.server.snapshot()

    def release(self) -> None:
        if self._hold is not None:
            self._hold.set()

    def _answer(self, request: Recorded) -> tuple[int, Mapping[str, str], dict[str, Any]]:
        self.arrived.set()
        if self._hold is not None:
            self._hold.wait(60)
        key = request.header("Idempotency-Key") or ""
        proposal = (request.json() or {}).get("proposal_id")
        with self._lock:
            if self.fail_first > 0:
                self.fail_first -= 1
                return 503, {}, {"type": "/problems/unavailable", "status": 503}
            if key in self.executed:
                if self.executed[key] != proposal:
                    return 422, {}, {"type": "/problems/idempotency-key-reused", "status": 422}
                return 200, {"Idempotent-Replayed": "true"}, {
                    "execution": {"proposal_id": proposal, "status": "filled"}}
            self.executed[key] = proposal
        return 201, {}, {"execution": {"proposal_id": proposal, "status": "filled"}}

    def __enter__(self) -> ExecuteStandIn:
        self.server.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
        self.server.__exit__(*exc)


class Forwarder:
    """Records every request (RecordingServer) and forwards it to `target` — e.g. the real
    trading_execute — answering with the target's answer."""

    _HOP = ("host", "content-length", "connection", "transfer-encoding", "content-encoding")

    def __init__(self, target: str) -> None:
        self._client = httpx.Client(base_url=target, timeout=60.0)
        self.server = RecordingServer(self._forward)
        self.answers: list[tuple[int, dict[str, str], Any]] = []

    @property
    def url(self) -> str:
        return self.server.url + "/"

    @property
    def requests(self) -> list[Recorded]:
        return self.server.snapshot()

    def _forward(self, request: Recorded) -> tuple[int, Mapping[str, str], bytes]:
        headers = {k: v for k, v in request.headers.items() if k.lower() not in self._HOP}
        answer = self._client.request(request.method, request.path, headers=headers,
                                      content=request.body or None)
        keep = {k: v for k, v in answer.headers.items() if k.lower() not in self._HOP}
        self.answers.append((answer.status_code, keep, answer.json()))
        return answer.status_code, keep, answer.content

    def __enter__(self) -> Forwarder:
        self.server.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.__exit__(*exc)
        self._client.close()


class SandboxProxy:
    """A pass-through proxy to the sandbox that records every answer's rate-limit headers, and
    can play three parts (all off by default):

    - `pin_ms`: the market clock pinned — candles end before `pin_ms` (an hour boundary in the
      past, so every bucket is complete) and `GET /ticker/price` answers each market's price at
      `pin_ms`: every read in the test sees the same market, minute after minute;
    - `exhaust_after`: from the n-th answer on, the rate-limit headers say the budget is spent
      (remaining 0, the window resetting in 55 s), as Bitvavo's own would near the limit;
    - `ban`: a path prefix answered 429 / errorCode 105 (a ban), as Bitvavo answers an exceeded
      limit."""

    def __init__(self, sandbox: SandboxServer, *, pin_ms: int | None = None,
                 exhaust_after: int | None = None, ban: str | None = None) -> None:
        self.sandbox = sandbox
        self.pin_ms = pin_ms
        self.exhaust_after = exhaust_after
        self.ban = ban
        self.answers: list[tuple[str, dict[str, str]]] = []  # (path, headers) in answer order
        self._lock = threading.Lock()
        self._client = httpx.Client(base_url=sandbox.root, timeout=30.0)
        self.server = RecordingServer(self._forward)

    @property
    def rest_url(self) -> str:
        return self.server.url + "/v2"

    def weight(self) -> int:
        """Weight spent, from the sandbox's own headers: per window (bitvavo-ratelimit-resetat),
        the limit minus the lowest remaining seen."""
        spent: dict[str, int] = {}
        for _, headers in self.snapshot():
            window = headers.get("bitvavo-ratelimit-resetat")
            if window is None:
                continue
            used = int(headers["bitvavo-ratelimit-limit"]) - int(
                headers["bitvavo-ratelimit-remaining"])
            spent[window] = max(spent.get(window, 0), used)
        return sum(spent.values())

    def snapshot(self) -> list[tuple[str, dict[str, str]]]:
        with self._lock:
            return list(self.answers)

    def _forward(self, request: Recorded) -> tuple[int, Mapping[str, str], bytes | str]:
        path = request.path
        if self.ban is not None and path.startswith(self.ban):
            until = int(time.time() * 1000) + 60_000
            return 429, {}, json.dumps({"errorCode": 105, "error": (
                "Your IP or API key has been banned for not respecting the rate limit. The ban "
                f"expires at {until}.")})
        headers = {k: v for k, v in request.headers.items()
                   if k.lower() not in ("host", "content-length", "connection")}
        if self.pin_ms is not None and path.startswith("/v2/ticker/price"):
            status, keep, content = self._pinned_prices(headers)
        else:
            if self.pin_ms is not None and "/candles" in path:
                path += f"&end={self.pin_ms}"
            answer = self._client.request(request.method, path, headers=headers,
                                          content=request.body or None)
            status, content = answer.status_code, answer.content
            keep = {k: v for k, v in answer.headers.items()
                    if k.lower() not in ("content-length", "transfer-encoding", "connection",
                                         "content-encoding")}
        with self._lock:
            self.answers.append((request.path, {k.lower(): v for k, v in keep.items()}))
            spent = self.exhaust_after is not None and len(self.answers) >= self.exhaust_after
        if spent:
            keep = {**keep, "bitvavo-ratelimit-remaining": "0",
                    "bitvavo-ratelimit-resetat": str(int(time.time() * 1000) + 55_000)}
        return status, keep, content

    def _pinned_prices(self, headers: dict[str, str]
                       ) -> tuple[int, dict[str, str], bytes | str]:
        # The real request, for its rate-limit headers; the prices, from the pinned minute.
        answer = self._client.get("/v2/ticker/price", headers=headers)
        keep = {k: v for k, v in answer.headers.items() if k.lower().startswith("bitvavo-")}
        prices = [{"market": row["market"],
                   "price": self.sandbox.price_at(row["market"], self.pin_ms or 0)["price"]}
                  for row in answer.json()]
        return 200, {**keep, "Content-Type": "application/json"}, json.dumps(prices)

    def __enter__(self) -> SandboxProxy:
        self.server.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.__exit__(*exc)
        self._client.close()
