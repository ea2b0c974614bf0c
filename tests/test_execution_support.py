"""Helpers shared by the tests/test_execution_*.py files (no tests of its own).

Everything goes through the real RPCs as PostgREST would call them; the superuser is used only to
arrange state (settings, allowlists, the clock by moving `claimed_at` back) and to inspect it.
"""

from __future__ import annotations

import threading
import uuid
import weakref
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from typing import Any, TypeVar

import psycopg
import pytest
from psycopg.types.json import Jsonb

from tests.pg import Database, SessionCluster, connect

MARKET = "BTC-EUR"
CHECK_ORDER = ["allowlist", "proposal_state", "order_limits", "cooldown", "anti_flip",
               "daily_limits", "trading_enabled"]

T = TypeVar("T")


# -- databases -----------------------------------------------------------------------------------
# Cloning a database per test costs ~0.4 s, ten times what a test does; so the execution tests share
# one database per module: every test works with its own user and its own market, and scopes what it
# counts to them. Tests that flip system-wide switches (system_controls) or list across users take
# `fresh_db` instead. A test module opts in by importing the three fixture functions below (pytest
# registers a fixture under its `name=` wherever the function is a module attribute).
@pytest.fixture(scope="module", name="module_db")
def _module_db_fixture(pg_session: SessionCluster) -> Iterator[Database]:
    database = pg_session.new_database()
    try:
        yield database
    finally:
        pg_session.drop(database)


@pytest.fixture(name="db")
def _shared_db_fixture(module_db: Database) -> Database:
    """The module's shared database (overrides conftest's per-test `db` where imported)."""
    return module_db


@pytest.fixture(name="fresh_db")
def _fresh_db_fixture(pg_session: SessionCluster) -> Iterator[Database]:
    """A database of this test's own, for tests that change system-wide state."""
    database = pg_session.new_database()
    try:
        yield database
    finally:
        pg_session.drop(database)


# One superuser and one API connection per test database, reused by the helpers below (a new
# connection per call would dominate the suite's runtime); closed when the Database goes away.
_CONNECTIONS: dict[str, tuple[psycopg.Connection[Any], psycopg.Connection[Any]]] = {}


def _connections(db: Database) -> tuple[psycopg.Connection[Any], psycopg.Connection[Any]]:
    if db.name not in _CONNECTIONS:
        _CONNECTIONS[db.name] = (db.connect(), connect(db.authenticator_url))
        weakref.finalize(db, _close, db.name)
    return _CONNECTIONS[db.name]


def _close(name: str) -> None:
    for conn in _CONNECTIONS.pop(name, ()):
        conn.close()


def sql(db: Database, statement: str, params: Any = None) -> list[tuple[Any, ...]]:
    """Run a statement as the superuser on the cached connection."""
    cur = _connections(db)[0].execute(statement, params)
    return cur.fetchall() if cur.description else []


def scalar(db: Database, statement: str, params: Any = None) -> Any:
    rows = sql(db, statement, params)
    return rows[0][0] if rows else None


def new_user(db: Database) -> uuid.UUID:
    """An auth user (its trading_settings row comes from the foundation's trigger)."""
    user_id = uuid.uuid4()
    sql(db, "insert into auth.users (id, email, aud, role) "
            "values (%s, %s, 'authenticated', 'authenticated')",
        (user_id, f"{user_id.hex[:8]}@example.test"))
    return user_id


def api(db: Database) -> psycopg.Connection[Any]:
    """The cached connection that `db.rpc(..., conn=api(db))` runs requests on (as PostgREST)."""
    return _connections(db)[1]


def allow_market(db: Database, market: str = MARKET, *, enabled: bool = True,
                 min_order_quote: str = "5", max_order_quote: str | None = None) -> None:
    """Put a market in the global allowlist (or change its row)."""
    sql(db,
        "insert into public.market_allowlist (market, enabled, min_order_quote, max_order_quote) "
        "values (%s, %s, %s, %s) on conflict (market) do update set enabled = excluded.enabled, "
        "min_order_quote = excluded.min_order_quote, max_order_quote = excluded.max_order_quote",
        (market, enabled, Decimal(min_order_quote),
         Decimal(max_order_quote) if max_order_quote else None))


def allow_user_market(db: Database, user_id: uuid.UUID, market: str = MARKET, *,
                      enabled: bool = True, max_order_quote: str | None = None) -> None:
    """Put a market in the user's trading allowlist (or change the row)."""
    sql(db,
        "insert into public.trading_allowlist (user_id, market, enabled, max_order_quote) "
        "values (%s, %s, %s, %s) on conflict (user_id, market) do update set "
        "enabled = excluded.enabled, max_order_quote = excluded.max_order_quote",
        (user_id, market, enabled, Decimal(max_order_quote) if max_order_quote else None))


def set_settings(db: Database, user_id: uuid.UUID, **columns: Any) -> None:
    assignments = ", ".join(f"{name} = %({name})s" for name in columns)
    sql(db, f"update public.trading_settings set {assignments} "  # noqa: S608 - test names
             "where user_id = %(user_id)s", {**columns, "user_id": user_id})


def set_controls(db: Database, **columns: Any) -> None:
    assignments = ", ".join(f"{name} = %({name})s" for name in columns)
    sql(db, f"update public.system_controls set {assignments}", columns)  # noqa: S608


_MARKETS: dict[uuid.UUID, str] = {}


def new_market() -> str:
    """A market name no other test uses (matches ^[A-Z0-9]{1,15}-[A-Z]{2,6}$)."""
    return f"T{uuid.uuid4().hex[:12].upper()}-EUR"


def market_of(user_id: uuid.UUID) -> str:
    """The market `trader` allowlisted for this user (propose's default)."""
    return _MARKETS.get(user_id, MARKET)


def trader(db: Database, market: str | None = None, **settings: Any) -> uuid.UUID:
    """A user who may trade a market of their own (or `market`) in paper mode: allowlisted
    globally and in the user's list, trading enabled; `settings` override trading_settings."""
    user_id = new_user(db)
    market = market or new_market()
    _MARKETS[user_id] = market
    allow_market(db, market)
    allow_user_market(db, user_id, market)
    set_settings(db, user_id, **{"trading_enabled": True, **settings})
    return user_id


def propose(db: Database, user_id: uuid.UUID, *, market: str | None = None, side: str = "buy",
            amount: str = "10", confidence: str = "0.9", approve: bool = True,
            ttl_seconds: int = 900) -> uuid.UUID:
    """A proposal made by the service, approved by its user through decide_trade_proposal."""
    result = db.rpc("create_trade_proposal", conn=api(db), p_user_id=user_id,
                    p_market=market or market_of(user_id),
                    p_side=side, p_amount_quote=Decimal(amount), p_confidence=Decimal(confidence),
                    p_rationale="test", p_source="rules", p_ttl_seconds=ttl_seconds)
    proposal_id = uuid.UUID(result["proposal_id"])
    if approve and result["status"] == "pending":
        decided = db.rpc("decide_trade_proposal", conn=api(db), role="authenticated",
                         user_id=user_id,
                         p_proposal_id=proposal_id, p_decision="approve")
        assert decided["status"] == "approved", decided
    return proposal_id


def claim(db: Database, user_id: uuid.UUID, proposal_id: uuid.UUID, key: str | None = None,
          mode: str = "paper", conn: psycopg.Connection[Any] | None = None, *,
          require_auto_approval: bool | None = None) -> dict[str, Any]:
    """claim_trade_execution as trading_execute calls it; `require_auto_approval` left out (None)
    uses the RPC's default (false, a user's own claim)."""
    flag = {} if require_auto_approval is None else \
        {"p_require_auto_approval": require_auto_approval}
    return db.rpc("claim_trade_execution", conn=conn or api(db), p_user_id=user_id,
                  p_proposal_id=proposal_id, p_idempotency_key=key or f"key-{uuid.uuid4()}",
                  p_mode=mode, **flag)


def record(db: Database, execution_id: uuid.UUID | str, conn: psycopg.Connection[Any] | None = None,
           **result: Any) -> dict[str, Any]:
    return db.rpc("record_execution_result", conn=conn or api(db), p_execution_id=execution_id,
                  p_result=Jsonb(result))


def claimed(db: Database, user_id: uuid.UUID, **proposal: Any) -> dict[str, Any]:
    """An approved proposal claimed successfully; returns the execution."""
    result = claim(db, user_id, propose(db, user_id, **proposal))
    assert result["outcome"] == "claimed", result
    return result["execution"]


def failed_checks(result: dict[str, Any]) -> list[str]:
    return [entry["check"] for entry in result["failed_checks"]]


def backdate(db: Database, execution_id: uuid.UUID | str, seconds: int) -> None:
    """Pretend the execution was claimed `seconds` earlier (executions are not append-only)."""
    sql(db, "update public.trade_executions "
             "set claimed_at = claimed_at - make_interval(secs => %s) where id = %s",
             (seconds, execution_id))


def race(db: Database, workers: int, call: Callable[[psycopg.Connection[Any], int], T]) -> list[T]:
    """Run `call(conn, i)` in `workers` threads, each with its own connection opened beforehand,
    all released at once by a barrier."""
    conns = [connect(db.authenticator_url) for _ in range(workers)]
    barrier = threading.Barrier(workers)

    def run(i: int) -> T:
        barrier.wait(timeout=30)
        return call(conns[i], i)

    try:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            return list(pool.map(run, range(workers)))
    finally:
        for conn in conns:
            conn.close()
