"""Helpers shared by the tests/test_execution_*.py files (no tests of its own).

Everything goes through the real RPCs as PostgREST would call them; the superuser is used only to
arrange state (settings, allowlists, the clock by moving `claimed_at` back) and to inspect it.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from typing import Any, TypeVar

import psycopg
from psycopg.types.json import Jsonb

from tests.pg import Database, connect

MARKET = "BTC-EUR"
CHECK_ORDER = ["allowlist", "proposal_state", "order_limits", "cooldown", "anti_flip",
               "daily_limits", "trading_enabled"]

T = TypeVar("T")


def allow_market(db: Database, market: str = MARKET, *, enabled: bool = True,
                 min_order_quote: str = "5", max_order_quote: str | None = None) -> None:
    """Put a market in the global allowlist (or change its row)."""
    db.query(
        "insert into public.market_allowlist (market, enabled, min_order_quote, max_order_quote) "
        "values (%s, %s, %s, %s) on conflict (market) do update set enabled = excluded.enabled, "
        "min_order_quote = excluded.min_order_quote, max_order_quote = excluded.max_order_quote",
        (market, enabled, Decimal(min_order_quote),
         Decimal(max_order_quote) if max_order_quote else None))


def allow_user_market(db: Database, user_id: uuid.UUID, market: str = MARKET, *,
                      enabled: bool = True, max_order_quote: str | None = None) -> None:
    """Put a market in the user's trading allowlist (or change the row)."""
    db.query(
        "insert into public.trading_allowlist (user_id, market, enabled, max_order_quote) "
        "values (%s, %s, %s, %s) on conflict (user_id, market) do update set "
        "enabled = excluded.enabled, max_order_quote = excluded.max_order_quote",
        (user_id, market, enabled, Decimal(max_order_quote) if max_order_quote else None))


def set_settings(db: Database, user_id: uuid.UUID, **columns: Any) -> None:
    assignments = ", ".join(f"{name} = %({name})s" for name in columns)
    db.query(f"update public.trading_settings set {assignments} "  # noqa: S608 - test names
             "where user_id = %(user_id)s", {**columns, "user_id": user_id})


def set_controls(db: Database, **columns: Any) -> None:
    assignments = ", ".join(f"{name} = %({name})s" for name in columns)
    db.query(f"update public.system_controls set {assignments}", columns)  # noqa: S608


def trader(db: Database, market: str = MARKET, **settings: Any) -> uuid.UUID:
    """A user who may trade `market` in paper mode: allowlisted twice, trading enabled."""
    user_id = db.create_user()
    allow_market(db, market)
    allow_user_market(db, user_id, market)
    set_settings(db, user_id, **{"trading_enabled": True, **settings})
    return user_id


def propose(db: Database, user_id: uuid.UUID, *, market: str = MARKET, side: str = "buy",
            amount: str = "10", confidence: str = "0.9", approve: bool = True,
            ttl_seconds: int = 900) -> uuid.UUID:
    """A proposal made by the service, approved by its user through decide_trade_proposal."""
    result = db.rpc("create_trade_proposal", p_user_id=user_id, p_market=market, p_side=side,
                    p_amount_quote=Decimal(amount), p_confidence=Decimal(confidence),
                    p_rationale="test", p_source="rules", p_ttl_seconds=ttl_seconds)
    proposal_id = uuid.UUID(result["proposal_id"])
    if approve and result["status"] == "pending":
        decided = db.rpc("decide_trade_proposal", role="authenticated", user_id=user_id,
                         p_proposal_id=proposal_id, p_decision="approve")
        assert decided["status"] == "approved", decided
    return proposal_id


def claim(db: Database, user_id: uuid.UUID, proposal_id: uuid.UUID, key: str | None = None,
          mode: str = "paper", conn: psycopg.Connection[Any] | None = None) -> dict[str, Any]:
    return db.rpc("claim_trade_execution", conn=conn, p_user_id=user_id,
                  p_proposal_id=proposal_id, p_idempotency_key=key or f"key-{uuid.uuid4()}",
                  p_mode=mode)


def record(db: Database, execution_id: uuid.UUID | str, conn: psycopg.Connection[Any] | None = None,
           **result: Any) -> dict[str, Any]:
    return db.rpc("record_execution_result", conn=conn, p_execution_id=execution_id,
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
    db.query("update public.trade_executions "
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
