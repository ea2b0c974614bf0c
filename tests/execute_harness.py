"""The end-to-end harness of trading_execute (no tests of its own).

The function runs under the real functions-framework CLI (tests/function_server.py) with exactly
the environment a deployment would give it: the database through `DATABASE_URL` = the test
database's `authenticator` URL — relayed by a WireTurns proxy, so the tests can count the round
trips and drop a connection on demand — the sandbox as `BITVAVO_REST_URL`, and the secrets below,
which the tests then look for in every log line and response body.
"""

from __future__ import annotations

import hashlib
import statistics
import time
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx

from sandbox.auth import DEFAULT_TRADE_KEY, DEFAULT_TRADE_SECRET
from scripts.wireturns import WireTurns
from shared.auth import dev_token
from tests.function_server import FunctionServer, start_function
from tests.pg import Database
from tests.sandbox_server import SandboxServer
from tests.test_execution_support import (
    allow_market,
    allow_user_market,
    new_user,
    propose,
    set_settings,
    sql,
)

JWT_SECRET = "e2e-jwt-secret-" + "J7q" * 12  # HS256, ≥ 32 characters
SERVICE_KEY = "sb_secret_" + "e2eServiceKey" + "S9x" * 8
DB_PASSWORD = "e2e-db-password-" + "P4w" * 6  # in the URL; the cluster trusts local logins
OPERATOR_ID = "424242"
MARKET = "BTC-EUR"
SECRETS = {"SUPABASE_JWT_SECRET": JWT_SECRET, "SUPABASE_SERVICE_ROLE_KEY": SERVICE_KEY,
           "DB password": DB_PASSWORD, "BITVAVO_TRADE_API_KEY": DEFAULT_TRADE_KEY,
           "BITVAVO_TRADE_API_SECRET": DEFAULT_TRADE_SECRET}


def proxied_url(db: Database, proxy: WireTurns) -> str:
    """The authenticator URL of `db`, through the proxy, with a password in it."""
    parts = urlsplit(db.authenticator_url)
    netloc = f"authenticator:{DB_PASSWORD}@127.0.0.1:{proxy.port}"
    return urlunsplit(parts._replace(netloc=netloc))


def function_env(db: Database, proxy: WireTurns, sandbox: SandboxServer, mode: str,
                 **extra: str) -> dict[str, str]:
    env = {
        "DATABASE_URL": proxied_url(db, proxy),
        "SUPABASE_JWT_SECRET": JWT_SECRET,
        "SUPABASE_SERVICE_ROLE_KEY": SERVICE_KEY,
        "BITVAVO_REST_URL": sandbox.rest_url,
        "TRADING_MODE": mode,
        # /reconcile looks at every open execution at once in these tests; what "old enough to be
        # declared not placed" means is tested by moving claimed_at back.
        "RECONCILE_MIN_AGE_SECONDS": "0",
        "RPC_POOL_MAX_SIZE": "4",
    }
    if mode == "live":
        env.update(BITVAVO_TRADE_API_KEY=DEFAULT_TRADE_KEY,
                   BITVAVO_TRADE_API_SECRET=DEFAULT_TRADE_SECRET,
                   BITVAVO_OPERATOR_ID=OPERATOR_ID)
    env.update(extra)
    return env


@dataclass
class Stack:
    """One served function with its database, proxy and sandbox."""

    db: Database
    proxy: WireTurns
    sandbox: SandboxServer
    fn: FunctionServer
    mode: str
    answers: list[str] = field(default_factory=list)  # every response (headers + body) seen

    # -- requests ------------------------------------------------------------------------------
    def execute(self, proposal_id: uuid.UUID | str, *, user_id: uuid.UUID | None = None,
                key: str | None = None, token: str | None = None,
                body: Any = None, headers: Mapping[str, str] | None = None) -> httpx.Response:
        """POST / as the proposal's user (or with `token` / `headers` / `body` as given)."""
        sent: dict[str, str] = {}
        if token is None and user_id is not None:
            token = dev_token(JWT_SECRET, user_id)
        if token is not None:
            sent["Authorization"] = f"Bearer {token}"
        sent["Idempotency-Key"] = key or f"key-{uuid.uuid4()}"
        sent.update(headers or {})
        payload = {"proposal_id": str(proposal_id)} if body is None else body
        if isinstance(payload, bytes):
            return self.seen(self.fn.post("/", content=payload, headers=sent))
        return self.seen(self.fn.post("/", json=payload, headers=sent))

    def seen(self, response: httpx.Response) -> httpx.Response:
        self.answers.append(f"{response.status_code} {dict(response.headers)} {response.text}")
        return response

    def logged(self, step: str, proposal_id: uuid.UUID | str, timeout: float = 10.0) -> None:
        """Wait until the function has logged `step` for this proposal (its step line is written
        when the step is over: for `claim`, its answer has come back through the proxy)."""
        deadline = time.monotonic() + timeout
        marks = (f'"step":"{step}"', f'"proposal_id":"{proposal_id}"')
        while time.monotonic() < deadline:
            if any(all(m in line for m in marks) for line in self.fn.logs().splitlines()):
                return
            time.sleep(0.02)
        raise AssertionError(f"no {step} step logged for {proposal_id}")

    def reconcile(self, **body: Any) -> dict[str, int]:
        response = self.seen(self.fn.post("/reconcile", json=body,
                                          headers={"Authorization": f"Bearer {SERVICE_KEY}"}))
        assert response.status_code == 200, response.text
        counts: dict[str, int] = response.json()
        return counts

    # -- state ---------------------------------------------------------------------------------
    def execution(self, proposal_id: uuid.UUID | str) -> dict[str, Any] | None:
        rows = self.rows("select * from public.trade_executions where proposal_id = %s",
                         (proposal_id,))
        return rows[0] if rows else None

    def proposal_status(self, proposal_id: uuid.UUID | str) -> str:
        return str(self.rows("select status from public.trade_proposals where id = %s",
                             (proposal_id,))[0]["status"])

    def history(self, execution_id: uuid.UUID | str) -> list[dict[str, Any]]:
        return self.rows("select * from public.trade_history where execution_id = %s",
                         (execution_id,))

    def rows(self, statement: str, params: Any = None) -> list[dict[str, Any]]:
        with self.db.connect() as conn:
            cur = conn.execute(statement, params)
            names = [c.name for c in cur.description or []]
            return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]

    def orders_for(self, client_order_id: uuid.UUID | str) -> list[dict[str, Any]]:
        return [o for o in self.sandbox.orders() if o.get("clientOrderId") == str(client_order_id)]


def trader(db: Database, *, market: str = MARKET, live: bool = False, **settings: Any) -> uuid.UUID:
    """A user who may trade `market` (a market the sandbox lists), without cooldown or anti-flip
    unless asked, with room for many orders a day."""
    user_id = new_user(db)
    allow_market(db, market)
    allow_user_market(db, user_id, market)
    defaults: dict[str, Any] = {"trading_enabled": True, "cooldown_seconds": 0,
                                "anti_flip_seconds": 0, "max_trades_per_day": 1000,
                                "max_daily_quote": Decimal(100000)}
    if live:
        defaults["live_trading_enabled"] = True
    set_settings(db, user_id, **{**defaults, **settings})
    return user_id


def proposal(db: Database, user_id: uuid.UUID, *, amount: str = "10", market: str = MARKET,
             side: str = "buy", **kwargs: Any) -> uuid.UUID:
    return propose(db, user_id, market=market, side=side, amount=amount, **kwargs)


def fingerprint(db: Database, tables: tuple[str, ...] = (
        "trade_executions", "trade_history", "trade_proposals", "trading_settings",
        "execution_audit_log")) -> dict[str, str]:
    """A digest of every row of each table: equal fingerprints, no row changed."""
    out = {}
    for table in tables:
        text = sql(db, f"select coalesce(string_agg(t::text, '|' order by t::text), '') "  # noqa: S608
                       f"from public.{table} t")[0][0]
        out[table] = hashlib.sha256(text.encode()).hexdigest()
    return out


@contextmanager
def served(db: Database, sandbox: SandboxServer, mode: str,
           **extra: str) -> Iterator[Stack]:
    """The function in `mode` against `db` (through a counting proxy) and `sandbox`."""
    port = int(urlsplit(db.url).port or 5432)
    with WireTurns("127.0.0.1", port) as proxy, \
            start_function("trading_execute",
                           env=function_env(db, proxy, sandbox, mode, **extra)) as fn:
        yield Stack(db=db, proxy=proxy, sandbox=sandbox, fn=fn, mode=mode)


@dataclass(frozen=True)
class Latency:
    """Sequential executions through a Stack: request latency and database round trips."""

    executions: int
    p50_ms: float
    p99_ms: float
    round_trips: float  # per execution, counted from the PostgreSQL protocol by the proxy

    def __str__(self) -> str:
        return (f"p50 {self.p50_ms:.1f} ms, p99 {self.p99_ms:.1f} ms over {self.executions}; "
                f"database round trips per execution: {self.round_trips:g}")


def measure_executions(stack: Stack, user_id: uuid.UUID, executions: int = 40) -> Latency:
    """Execute `executions` fresh proposals of `user_id` one after another (after one more that
    warms the connections), each answered 201; p50/p99 by the inclusive method (the p99 of a small
    sample is near its max)."""
    proposals = [proposal(stack.db, user_id) for _ in range(executions + 1)]
    assert stack.execute(proposals[0], user_id=user_id).status_code == 201  # connections warm
    stack.proxy.settle()
    round_trips_before = stack.proxy.round_trips
    samples = []
    for proposal_id in proposals[1:]:
        started = time.perf_counter()
        response = stack.execute(proposal_id, user_id=user_id)
        samples.append(time.perf_counter() - started)
        assert response.status_code == 201, response.text
    stack.proxy.settle()
    cuts = statistics.quantiles(samples, n=100, method="inclusive")
    return Latency(executions=len(samples), p50_ms=cuts[49] * 1000, p99_ms=cuts[98] * 1000,
                   round_trips=(stack.proxy.round_trips - round_trips_before) / len(samples))
