"""Every validator lookup of claim_trade_execution is an index scan on a realistic table.

Not `enable_seqscan = off`: 10,000 executions of 100 users over 30 days, ANALYZEd, then the real
function runs with auto_explain (nested statements, plans sent to the client as NOTICEs), so the
plans asserted are the ones PostgreSQL chose inside the function, custom and generic alike."""

from __future__ import annotations

import re
import uuid

import pytest

from tests.pg import Database
from tests.test_execution_support import (  # the database fixtures: db, module_db, fresh_db
    _fresh_db_fixture,  # noqa: F401
    _module_db_fixture,  # noqa: F401
    _shared_db_fixture,  # noqa: F401
    propose,
)

# 100 users x 100 executions (10 markets, both sides, 1 in 7 live, some failed or canceled),
# claimed over the last 30 days.
SEED = """
insert into auth.users (id, email)
select extensions.gen_random_uuid(), 'bulk' || g || '@example.test' from generate_series(1, 100) g;
update public.trading_settings set trading_enabled = true;
insert into public.market_allowlist (market, enabled)
select 'M' || g || '-EUR', true from generate_series(1, 10) g;
create temporary table bulk on commit drop as
select extensions.gen_random_uuid() as proposal_id, u.id as user_id,
       'M' || (1 + g % 10) || '-EUR' as market,
       case when g % 2 = 0 then 'buy' else 'sell' end as side,
       case when g % 7 = 0 then 'live' else 'paper' end as mode,
       case when g % 11 = 0 then 'failed' when g % 13 = 0 then 'canceled' else 'filled' end
         as status,
       now() - make_interval(secs => (g * 263) % (30 * 86400)) as claimed_at,
       g
from generate_series(1, 10000) g
join auth.users u on u.email = 'bulk' || (1 + (g / 10) % 100) || '@example.test';
insert into public.trade_proposals (id, user_id, market, side, amount_quote, confidence, source,
                                    status, expires_at, created_at)
select proposal_id, user_id, market, side, 10, 0.9, 'rules', 'executing',
       claimed_at + interval '15 minutes', claimed_at
from bulk;
insert into public.trade_executions (proposal_id, user_id, idempotency_key, mode, market, side,
                                     amount_quote, status, filled_amount, filled_amount_quote,
                                     price, claimed_at, submitted_at, completed_at)
select proposal_id, user_id, 'bulk-' || g, mode, market, side, 10, status,
       case when status = 'filled' then 0.0002 end, case when status = 'filled' then 10 end,
       case when status = 'filled' then 50000 end, claimed_at, claimed_at,
       claimed_at + interval '1 second'
from bulk;
"""

# Each validator's statement in claim_trade_execution, found by a fragment of its text.
LOOKUPS = {
    "cooldown": "v_settings.cooldown_seconds)",
    "anti_flip": "e.side = v_opposite",
    "daily_limits": "coalesce(sum(e.amount_quote), 0)",
}
# The partial indexes built for them; with a handful of rows per user in any window the planner
# may pick either for cooldown (both bound user, mode and claimed_at), which is fine.
VALIDATOR_INDEXES = ("trade_executions_recent_idx", "trade_executions_daily_idx")
INDEX_SCAN = re.compile(r"Index (?:Only )?Scan(?: Backward)? using (\w+) on trade_executions")


def plans_of_claims(db: Database, claims: list[tuple[uuid.UUID, uuid.UUID]]) -> list[str]:
    """Run the claims in one session with auto_explain; return every nested plan logged."""
    notices: list[str] = []
    with db.connect(autocommit=False) as conn:
        conn.add_notice_handler(lambda diag: notices.append(diag.message_primary or ""))
        conn.execute("load 'auto_explain'")
        for setting, value in (("log_min_duration", "0"), ("log_nested_statements", "on"),
                               ("log_level", "notice"), ("log_format", "text")):
            conn.execute(f"set auto_explain.{setting} = {value}")
        for i, (user, proposal) in enumerate(claims):
            with conn.transaction():
                conn.execute("select public.claim_trade_execution(%s, %s, %s, 'paper')",
                             (user, proposal, f"explain-{i}"))
        conn.rollback()
    return notices


def plan_for(plans: list[str], fragment: str) -> list[str]:
    return [p for p in plans if fragment in p.split("Query Text:", 1)[-1]]


@pytest.fixture(scope="module")
def claim_plans(module_db: Database) -> list[str]:
    """The plans of eight claims on the seeded table (seeded once per module)."""
    db = module_db
    with db.connect() as conn:
        conn.execute(SEED)
    assert db.scalar("select count(*) from public.trade_executions") == 10000
    # Eight claims (plpgsql switches to a generic plan after five), each by a bulk user with a
    # hundred executions of history, in one of their markets.
    claims: list[tuple[uuid.UUID, uuid.UUID]] = []
    for i in range(1, 9):
        user = db.scalar("select id from auth.users where email = %s", (f"bulk{i}@example.test",))
        market = db.scalar("select market from public.trade_executions where user_id = %s "
                           "order by claimed_at desc limit 1", (user,))
        db.query("insert into public.trading_allowlist (user_id, market) values (%s, %s)",
                 (user, market))
        claims.append((user, propose(db, user, market=market)))
    db.query("analyze")
    return plans_of_claims(db, claims)


@pytest.mark.parametrize("check", sorted(LOOKUPS))
def test_validator_lookups_are_index_scans(claim_plans: list[str], check: str) -> None:
    plans = plan_for(claim_plans, LOOKUPS[check])
    assert len(plans) == 8, f"expected one {check} plan per claim, got {len(plans)}"
    for plan in plans:
        body = plan.split("Query Text:", 1)[1]
        assert "Seq Scan" not in body and "Bitmap Heap Scan" not in body, plan
        used = INDEX_SCAN.findall(body)
        assert used and set(used) <= set(VALIDATOR_INDEXES), plan
        assert "Index Cond: ((user_id = " in body, plan
        if check == "daily_limits":
            assert "Index Only Scan using trade_executions_daily_idx" in body, plan


def test_claim_reads_no_table_sequentially(claim_plans: list[str]) -> None:
    scans = [p for p in claim_plans if "Seq Scan on trade_executions" in p
             or "Seq Scan on trade_proposals" in p]
    assert scans == []
