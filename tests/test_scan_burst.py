"""A burst of auto-execution, end to end: scan_scheduler (the real function) proposes for every user
of one market in one tick, and its dispatch sends the auto-approved proposals to the real
trading_execute (live mode) against the sandbox's trade key — within the key's order budget.

The sandbox here gives the trade key 100 weight per 3-second window (its own `rate_limit`, a short
SANDBOX_RATE_WINDOW_MS so the test takes seconds, not minutes) and the read-only key plenty;
trading_execute's ORDER_BUDGET is 70 per that window (RATE_LIMIT_WINDOW_SECONDS=3). The tick runs
16 jobs at once, so 210 proposals are made within a few seconds. Sent as each job makes them (as
before the dispatch), their orders run into the key's limit: trading_execute's transport refuses
the rest after their claims, and those proposals are lost (`failed`) — or the key is banned.

- 210 users, one market: the first tick proposes 210 and executes exactly the budget, then meets a
  429 and leaves the rest queued; later ticks finish them. Every proposal is executed exactly once
  (the sandbox's orders counted by clientOrderId), the sandbox never answered 429 (no ban);
- a proposal that cannot go before it expires ends `expired`, audited with its reason.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest

from sandbox.auth import (
    DEFAULT_TRADE_KEY,
    DEFAULT_TRADE_SECRET,
    DEFAULT_VIEW_KEY,
    DEFAULT_VIEW_SECRET,
)
from tests.function_server import FunctionServer, start_function
from tests.pg import Database
from tests.sandbox_server import SandboxServer, start_sandbox
from tests.scan_support import (
    ALWAYS_SIGNAL,
    JWT_SECRET,
    SERVICE_KEY,
    build_world,
    scan_env,
    service_headers,
)

TRADE_KEY_LIMIT = 100  # the sandbox's trade-key weight per window
WINDOW_SECONDS = 3  # the sandbox's window, and trading_execute's RATE_LIMIT_WINDOW_SECONDS
BUDGET = 70  # ORDER_BUDGET: below the limit by more than the transport's margin (25)
AUTO_LIVE = {"auto_execute": True, "min_confidence": Decimal("0.5"), "trading_enabled": True,
             "live_trading_enabled": True}


@pytest.fixture
def sandbox() -> Iterator[SandboxServer]:
    keys = [{"key": DEFAULT_VIEW_KEY, "secret": DEFAULT_VIEW_SECRET, "permissions": ["view"],
             "rate_limit": 100_000},
            {"key": DEFAULT_TRADE_KEY, "secret": DEFAULT_TRADE_SECRET,
             "permissions": ["view", "trade"], "rate_limit": TRADE_KEY_LIMIT}]
    with start_sandbox(env={"SANDBOX_KEYS": json.dumps(keys),
                            "SANDBOX_RATE_WINDOW_MS": str(WINDOW_SECONDS * 1000),
                            "SANDBOX_BALANCES": json.dumps({"EUR": "1000000"})}) as server:
        yield server


def execute_env(db: Database, sandbox: SandboxServer, **extra: str) -> dict[str, str]:
    """trading_execute in live mode with the trade key and the test's order budget."""
    return {"DATABASE_URL": db.authenticator_url, "SUPABASE_SERVICE_ROLE_KEY": SERVICE_KEY,
            "SUPABASE_JWT_SECRET": JWT_SECRET, "BITVAVO_REST_URL": sandbox.rest_url,
            "TRADING_MODE": "live", "BITVAVO_TRADE_API_KEY": DEFAULT_TRADE_KEY,
            "BITVAVO_TRADE_API_SECRET": DEFAULT_TRADE_SECRET, "BITVAVO_OPERATOR_ID": "424242",
            "ORDER_BUDGET": str(BUDGET), "RATE_LIMIT_WINDOW_SECONDS": str(WINDOW_SECONDS),
            # An order reaches the exchange within MAX_CLAIM_AGE + the access window of its claim:
            # a slot counts for 3 + ceil(2 + 2) + 2 = 9 s.
            "MAX_CLAIM_AGE_SECONDS": "2", "BITVAVO_ACCESS_WINDOW_MS": "2000",
            # The free balance (GET /balance, weight 5 on the trade key) is read once: the key's
            # small limit here has room for the budget's orders and the transport's margin only.
            "BALANCE_CACHE_SECONDS": "3600", **extra}


def tick(fn: FunctionServer, max_jobs: int) -> dict[str, Any]:
    answer = fn.post("/", json={"max_jobs": max_jobs}, headers=service_headers())
    assert answer.status_code == 200, answer.text
    return dict(answer.json())


def test_a_burst_of_210_auto_approved_proposals_is_executed_once_each_within_the_budget(
        db: Database, sandbox: SandboxServer) -> None:
    users = build_world(db, users=210, markets=("BTC-EUR",), settings=AUTO_LIVE)
    db.query("update public.system_controls set live_trading_allowed = true")
    with start_function("trading_execute", env=execute_env(db, sandbox)) as executor:
        env = scan_env(db, sandbox, EXECUTE_FUNCTION_URL=executor.url + "/", TRADING_MODE="live",
                       MAX_JOBS_LIMIT="300", SCAN_CONCURRENCY="16", RPC_POOL_MAX_SIZE="24",
                       DISPATCH_MAX_WAIT_SECONDS="0", **ALWAYS_SIGNAL)
        with start_function("scan_scheduler", env=env) as scanner:
            ticks = [tick(scanner, 300)]
            deadline = time.monotonic() + 120
            while ticks[-1]["dispatch"]["stopped"] == "rate_limited":
                assert time.monotonic() < deadline, ticks[-1]
                time.sleep(ticks[-1]["dispatch"]["retry_after_seconds"])
                ticks.append(tick(scanner, 300))

    first, later = ticks[0], ticks[1:]
    assert (first["claimed"], first["proposals"], first["failed"]) == (210, 210, 0)
    # The first tick executes exactly the budget and leaves the rest queued; later ticks, with
    # no job due, finish them.
    assert first["dispatch"]["executed"] == BUDGET
    assert first["dispatch"]["stopped"] == "rate_limited"
    assert 1 <= first["dispatch"]["rate_limited"] <= 4  # the requests already on their way
    assert later and all(t["claimed"] == 0 for t in later)
    assert sum(t["dispatch"]["executed"] for t in ticks) == 210
    assert all(t["dispatch"]["executed"] <= BUDGET for t in ticks)
    assert ticks[-1]["dispatch"]["stopped"] == "drained"

    # Exactly one order per proposal at the exchange, each filled; none lost, none twice.
    orders = sandbox.orders()
    assert len(orders) == 210
    assert set(Counter(o["clientOrderId"] for o in orders).values()) == {1}
    assert {o["status"] for o in orders} == {"filled"}
    rows = db.query("select e.client_order_id::text, e.status, p.status, e.idempotency_key "
                    "= 'auto:' || p.id::text from public.trade_executions e "
                    "join public.trade_proposals p on p.id = e.proposal_id")
    assert len(rows) == 210 and {coid for coid, *_ in rows} == {o["clientOrderId"]
                                                                 for o in orders}
    assert {(e, p, k) for _, e, p, k in rows} == {("filled", "executed", True)}
    assert db.scalar("select count(distinct user_id) from public.trade_executions") == len(users)
    # The trade key was never refused: no 429, no ban.
    assert sandbox.limits()["refused"] == 0
    # The refusals that made proposals wait are audited, none of them a lost proposal.
    assert db.scalar("select count(*) from public.execution_audit_log "
                     "where event = 'claim.rate_limited'") >= len(later)
    assert db.scalar("select count(*) from public.trade_proposals "
                     "where status <> 'executed'") == 0


def test_a_proposal_that_cannot_go_before_it_expires_ends_expired_with_the_reason(
        db: Database, sandbox: SandboxServer) -> None:
    build_world(db, users=5, markets=("BTC-EUR",), settings=AUTO_LIVE)
    db.query("update public.system_controls set live_trading_allowed = true")
    with start_function("trading_execute", env=execute_env(db, sandbox, ORDER_BUDGET="2")) \
            as executor:
        env = scan_env(db, sandbox, EXECUTE_FUNCTION_URL=executor.url + "/", TRADING_MODE="live",
                       DISPATCH_CONCURRENCY="1", DISPATCH_MAX_WAIT_SECONDS="0", **ALWAYS_SIGNAL)
        with start_function("scan_scheduler", env=env) as scanner:
            first = tick(scanner, 10)
            # The waiting proposals reach their expiry (their TTL is moved forward, as time
            # would), and maintenance runs before the next tick.
            db.query("update public.trade_proposals set expires_at = now() - interval '1 second' "
                     "where status = 'approved'")
            maintenance = db.scalar("select public.run_maintenance()")
            # The budget has room again (its slots made older than their window): still nothing
            # is sent for an expired proposal.
            db.query("update private.order_budget_seconds "
                     "set second = second - interval '60 seconds'")
            second = tick(scanner, 10)

    assert (first["proposals"], first["dispatch"]["executed"]) == (5, 2)
    assert (first["dispatch"]["rate_limited"], first["dispatch"]["stopped"]) == (1, "rate_limited")
    assert maintenance["expired_proposals"] == 3
    assert (second["dispatch"]["listed"], second["executions_requested"]) == (0, 0)
    assert len(sandbox.orders()) == 2
    assert dict(Counter(s for (s,) in db.query("select status from public.trade_proposals"))) == {
        "executed": 2, "expired": 3}
    expired = db.query("select a.detail from public.execution_audit_log a "
                       "join public.trade_proposals p on p.id = a.proposal_id "
                       "where a.event = 'proposal.expired' order by p.created_at, p.id")
    assert [d["reason"] for (d,) in expired] == ["not_executed_before_expiry"] * 3
    assert [d["status_was"] for (d,) in expired] == ["approved"] * 3
    # The first waiting one in the queue's order (created_at, id: a batch writes its proposals at
    # one created_at) was refused for the order budget; the others were never sent.
    assert [(d["last_claim"] or {}).get("event") for (d,) in expired] == [
        "claim.rate_limited", None, None]
    assert sandbox.limits()["refused"] == 0
