"""The order room — the largest order allowed and today's counting executions — has one definition
(private.order_cap, private.daily_executions in the execution migration), read by
claim_trade_execution's order_limits and daily_limits validators and by get_scan_context's sizing,
so the scanner never sizes an order by other rules than the claim applies.

Tests share one database per module, each with its own user and market; the system-wide cap
takes `fresh_db`."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from tests.pg import Database
from tests.test_execution_support import (  # the database fixtures: db, module_db, fresh_db
    _fresh_db_fixture,  # noqa: F401
    _module_db_fixture,  # noqa: F401
    _shared_db_fixture,  # noqa: F401
    allow_market,
    allow_user_market,
    backdate,
    claim,
    claimed,
    failed_checks,
    market_of,
    propose,
    record,
    scalar,
    set_controls,
    set_settings,
    sql,
    trader,
)

CAPS = ["user_setting", "user_allowlist_row", "market", "system"]


def order_cap(db: Database, *caps: str | None) -> tuple[Any, Any]:
    user_max, user_market_max, market_max, system_max = (
        Decimal(c) if c is not None else None for c in caps)
    rows = sql(db, "select max_order_quote, max_order_source "
                   "from private.order_cap('BTC-EUR', %s, %s, %s, %s)",
               (user_max, user_market_max, market_max, system_max))
    return rows[0]


@pytest.mark.parametrize(("caps", "expected"), [
    (("20", "30", "40", "50"), (20, "your max_order_quote")),
    (("30", "20", "40", "50"), (20, "your allowlist limit for BTC-EUR")),
    (("30", "40", "20", "50"), (20, "the market limit for BTC-EUR")),
    (("30", "40", "50", "20"), (20, "the system-wide limit")),
    ((None, None, "25", None), (25, "the market limit for BTC-EUR")),
    # A tie names the first in this order: the user's setting, their row, the market, the system.
    (("20", "20.00", "20", "20"), (20, "your max_order_quote")),
    ((None, None, None, None), (None, None)),
])
def test_order_cap_is_the_smallest_cap_that_is_set_and_names_it(
        db: Database, caps: tuple[str | None, ...], expected: tuple[Any, Any]) -> None:
    assert order_cap(db, *caps) == expected


def test_daily_executions_count_the_utc_day_of_the_given_time(db: Database) -> None:
    user = trader(db, cooldown_seconds=0, anti_flip_seconds=0)
    first = claimed(db, user, amount="10")
    claimed(db, user, amount="12.5")
    refused = claimed(db, user, amount="7")
    record(db, refused["id"], status="rejected", error_code=216, error_message="test")
    # The reference time is the first claim's own, so the test does not depend on the clock.
    at = datetime.fromisoformat(first["claimed_at"])
    day_start = datetime.combine(at.astimezone(UTC).date(), datetime.min.time(), UTC)
    figures = "select trades, quote_sum from private.daily_executions(%s, %s, %s)"
    # The rejected one does not count (counts_toward_limits), the live mode has none.
    assert sql(db, figures, (user, "paper", at)) == [(2, Decimal("22.5"))]
    assert sql(db, figures, (user, "live", at)) == [(0, 0)]
    assert sql(db, figures, (user, "paper", day_start - timedelta(microseconds=1))) == [(0, 0)]
    assert sql(db, figures, (user, "paper", day_start + timedelta(days=1))) == [(0, 0)]
    assert sql(db, figures, (user, "paper", day_start + timedelta(hours=23, minutes=59))) == \
        [(2, Decimal("22.5"))]


# -- the scanner and the claim read the same room --------------------------------------------------
def scan_job(db: Database, user: uuid.UUID) -> uuid.UUID:
    return scalar(db, "insert into public.scan_jobs (user_id, market, interval_seconds) "
                      "values (%s, %s, 60) returning id", (user, market_of(user)))


def sizing(db: Database, job: uuid.UUID) -> dict[str, Any]:
    context = db.rpc("get_scan_context", p_job_id=job, p_worker_id="w", p_mode="paper")
    return dict(context["sizing"])


def set_cap(db: Database, user: uuid.UUID, cap: str, amount: str) -> None:
    if cap == "user_setting":
        set_settings(db, user, max_order_quote=Decimal(amount))
    elif cap == "user_allowlist_row":
        allow_user_market(db, user, market_of(user), max_order_quote=amount)
    elif cap == "market":
        allow_market(db, market_of(user), max_order_quote=amount)
    else:
        set_controls(db, max_order_quote=Decimal(amount))


@pytest.mark.parametrize("cap", CAPS)
def test_the_scanner_sizes_by_the_cap_the_claim_enforces(fresh_db: Database, cap: str) -> None:
    db = fresh_db
    user = trader(db)
    set_cap(db, user, cap, "20")
    room = sizing(db, scan_job(db, user))
    assert room["max_order_quote"] == 20
    refused = claim(db, user, propose(db, user, amount="20.01"))
    [entry] = refused["failed_checks"]
    assert entry["check"] == "order_limits"
    assert entry["reason"] == (f"amount 20.01 EUR is above the maximum order of 20 EUR "
                               f"({room['max_order_source']})")
    assert claim(db, user, propose(db, user, amount="20"))["outcome"] == "claimed"


def test_the_scanner_sees_the_daily_room_the_claim_enforces(db: Database) -> None:
    user = trader(db, cooldown_seconds=0, anti_flip_seconds=0, max_daily_quote=Decimal(30),
                  max_trades_per_day=3)
    job = scan_job(db, user)
    claimed(db, user, amount="12")
    yesterday = claimed(db, user, amount="7")
    backdate(db, yesterday["id"], 86400 + 60)  # yesterday (UTC) or earlier: not today's
    room = sizing(db, job)
    assert (room["daily_remaining_quote"], room["trades_left_today"]) == (18, 2)
    # One cent above the scanner's daily_remaining_quote is refused, exactly it is claimed.
    over = claim(db, user, propose(db, user, amount="18.01"))
    assert failed_checks(over) == ["daily_limits"]
    assert "today's paper orders total 12 EUR" in over["failed_checks"][0]["reason"]
    assert claim(db, user, propose(db, user, amount="18"))["outcome"] == "claimed"
    room = sizing(db, job)
    assert (room["daily_remaining_quote"], room["trades_left_today"]) == (0, 1)


def test_the_scanner_sees_the_trades_left_the_claim_enforces(db: Database) -> None:
    user = trader(db, cooldown_seconds=0, anti_flip_seconds=0, max_trades_per_day=2)
    job = scan_job(db, user)
    for expected_left in (2, 1):
        assert sizing(db, job)["trades_left_today"] == expected_left
        claimed(db, user, amount="5")
    assert sizing(db, job)["trades_left_today"] == 0
    refused = claim(db, user, propose(db, user, amount="5"))
    assert failed_checks(refused) == ["daily_limits"]
    assert refused["failed_checks"][0]["reason"] == \
        "2 paper orders today (UTC) already; the limit is 2 per day"


def test_the_order_room_is_defined_once(db: Database) -> None:
    """The cap and the daily query live in the helpers only; both RPCs call them."""
    sources = dict(sql(db, "select n.nspname || '.' || p.proname, p.prosrc from pg_proc p "
                           "join pg_namespace n on n.oid = p.pronamespace "
                           "where n.nspname in ('public', 'private')"))
    cap = [name for name, body in sources.items() if "least(" in body and "max_order_quote" in body]
    daily = [name for name, body in sources.items() if "sum(e.amount_quote)" in body]
    assert cap == ["private.order_cap"]
    assert daily == ["private.daily_executions"]
    for rpc in ("public.claim_trade_execution", "public.get_scan_contexts"):
        assert "private.order_cap(" in sources[rpc] and "private.daily_executions(" in sources[rpc]
