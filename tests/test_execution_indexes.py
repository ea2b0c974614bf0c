"""Every validator lookup of claim_trade_execution is bounded by a validator index on user_id.

Not `enable_seqscan = off`: 10,000 executions of 100 users over 30 days, then the real function
runs with auto_explain (nested statements, plans sent to the client as NOTICEs), so the plans
asserted are the ones PostgreSQL chose inside the function, custom and generic alike.

What is asserted is the guarantee, not a planner preference: each lookup reaches
trade_executions only through one of the two validator indexes, with `user_id = …` in the index
condition (Index Scan, Index Only Scan or Bitmap Index Scan + Bitmap Heap Scan are all bounded
by it), and never by a sequential scan. Which of those access paths wins depends on the
visibility map and on cost settings, so it is deliberately left open. The fixture is
deterministic all the same: VACUUM ANALYZE after seeding sets the visibility map and reads all
10,000 rows into the statistics (ANALYZE samples up to 30,000), so autovacuum's timing cannot
change what the planner sees."""

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

# Each validator's statement, found by a fragment of its text: in claim_trade_execution, or for
# daily_limits in private.daily_executions, the helper it calls (auto_explain logs the helper's
# statement as nested in the claim, once per claim).
LOOKUPS = {
    "cooldown": "v_settings.cooldown_seconds)",
    "anti_flip": "e.side = v_opposite",
    "daily_limits": "e.claimed_at < v_day_start + interval '1 day'",
}
# The partial indexes built for them; with a handful of rows per user in any window the planner
# may pick either for cooldown (both bound user, mode and claimed_at), which is fine.
VALIDATOR_INDEXES = ("trade_executions_recent_idx", "trade_executions_daily_idx")
# Every way a plan node can read an index: "Index [Only ]Scan [Backward] using <idx> on <table>"
# and "Bitmap Index Scan on <idx>".
INDEX_ACCESS = re.compile(
    r"(?:Index (?:Only )?Scan(?: Backward)? using (\w+) on \w+|Bitmap Index Scan on (\w+))")
# Every node that reads trade_executions' heap or an index of it.
TABLE_READ = re.compile(r"(?:Seq|Tid|Sample) Scan on trade_executions\b|"
                        r"Index (?:Only )?Scan(?: Backward)? using \w+ on trade_executions\b|"
                        r"Bitmap Heap Scan on trade_executions\b")


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
    db.query("vacuum analyze")
    return plans_of_claims(db, claims)


def indexes_read(body: str) -> list[str]:
    """The index of every index access node in a plan body."""
    return [a or b for a, b in INDEX_ACCESS.findall(body)]


def bounded_by_validator_index(body: str) -> list[str]:
    """Why a plan body is NOT bounded by a validator index on user_id ([] when it is)."""
    problems = []
    if "Seq Scan" in body:
        problems.append("a sequential scan")
    used = indexes_read(body)
    if not used:
        problems.append("no index access at all")
    elif not set(used) <= set(VALIDATOR_INDEXES):
        problems.append(f"indexes other than the validator indexes: {sorted(set(used))}")
    if not re.search(r"Index Cond: \(\(?user_id = ", body):
        problems.append("no `user_id = …` index condition")
    heap_reads = TABLE_READ.findall(body)
    if any(r.startswith(("Seq", "Tid", "Sample")) for r in heap_reads):
        problems.append(f"a table read not through an index: {heap_reads}")
    if any(r.startswith("Bitmap Heap") for r in heap_reads) and "Bitmap Index Scan" not in body:
        problems.append("a bitmap heap scan without a bitmap index scan below it")
    return problems


@pytest.mark.parametrize("check", sorted(LOOKUPS))
def test_validator_lookups_are_bounded_by_a_validator_index_on_user_id(
        claim_plans: list[str], check: str) -> None:
    plans = plan_for(claim_plans, LOOKUPS[check])
    assert len(plans) == 8, f"expected one {check} plan per claim, got {len(plans)}"
    for plan in plans:
        body = plan.split("Query Text:", 1)[1]
        assert bounded_by_validator_index(body) == [], plan


# The checker itself, on plans of every shape it must accept or refuse (so a regression in the
# regexes cannot make the test above vacuous).
GOOD_PLANS = {
    "index only scan": """Aggregate
  ->  Index Only Scan using trade_executions_daily_idx on trade_executions e
        Index Cond: ((user_id = '1b1'::uuid) AND (mode = 'paper'::text))""",
    "bitmap": """Aggregate
  ->  Bitmap Heap Scan on trade_executions e
        Recheck Cond: ((user_id = '1b1'::uuid) AND (mode = 'paper'::text) AND counts_toward_limits)
        ->  Bitmap Index Scan on trade_executions_daily_idx
              Index Cond: ((user_id = '1b1'::uuid) AND (mode = 'paper'::text))""",
    "backward index scan": """Result
  InitPlan 1 (returns $0)
    ->  Limit
          ->  Index Scan Backward using trade_executions_recent_idx on trade_executions e
                Index Cond: ((user_id = $1) AND (market = $2) AND (mode = $3))""",
}
BAD_PLANS = {
    "seq scan": """Aggregate
  ->  Seq Scan on trade_executions e
        Filter: (counts_toward_limits AND (user_id = '1b1'::uuid))""",
    "another index": """Aggregate
  ->  Index Scan using trade_executions_unsettled_idx on trade_executions e
        Index Cond: (claimed_at >= now())
        Filter: (user_id = '1b1'::uuid)""",
    "not bounded by user": """Aggregate
  ->  Bitmap Heap Scan on trade_executions e
        ->  Bitmap Index Scan on trade_executions_daily_idx
              Index Cond: (claimed_at >= now())""",
}


@pytest.mark.parametrize("shape", sorted(GOOD_PLANS))
def test_the_plan_checker_accepts_every_bounded_access_path(shape: str) -> None:
    assert bounded_by_validator_index(GOOD_PLANS[shape]) == []


@pytest.mark.parametrize("shape", sorted(BAD_PLANS))
def test_the_plan_checker_refuses_unbounded_plans(shape: str) -> None:
    assert bounded_by_validator_index(BAD_PLANS[shape]) != []


def test_claim_reads_no_table_sequentially(claim_plans: list[str]) -> None:
    scans = [p for p in claim_plans if "Seq Scan on trade_executions" in p
             or "Seq Scan on trade_proposals" in p]
    assert scans == []
