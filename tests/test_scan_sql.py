"""Scanning RPCs (migrations/*_scanning.sql) on a real PostgreSQL: get_scan_context and
create_scan_proposal.

- G2 fence: only the job's lease holder writes its proposal; a worker whose lease was taken over
  (or freed) is answered `lease_lost` and nothing is written.
- one proposal per due period (G1 for auto-execute): a job re-run before its first success — the
  same period — gets the proposal already made (`replayed`), never a second one; a success starts a
  new period.
- sizing figures: the smallest cap and the daily remainder, as claim_trade_execution reads them.
- both are service-only.
"""

from __future__ import annotations

import uuid
from decimal import Decimal
from typing import Any

import psycopg
import pytest
from psycopg.types.json import Jsonb

from tests.pg import Database
from tests.test_scheduler import add_job, add_market, allow, claim, expire_lease


def propose(db: Database, job_id: uuid.UUID, worker: str, **overrides: Any) -> Any:
    args: dict[str, Any] = {"p_job_id": job_id, "p_worker_id": worker, "p_side": "buy",
                            "p_amount_quote": Decimal("20"), "p_confidence": Decimal("0.8"),
                            "p_rationale": "test", "p_source": "rules"}
    args.update(overrides)
    return db.rpc("create_scan_proposal", **args)


def context(db: Database, job_id: uuid.UUID, worker: str, mode: str = "paper") -> Any:
    return db.rpc("get_scan_context", p_job_id=job_id, p_worker_id=worker, p_mode=mode)


def release(db: Database, worker: str, job_id: uuid.UUID, succeeded: bool) -> Any:
    return db.rpc("release_job_locks", p_worker_id=worker, p_results=Jsonb(
        [{"job_id": str(job_id), "succeeded": succeeded, "error": None if succeeded else "x"}]))


def proposals(db: Database, job_id: uuid.UUID) -> list[uuid.UUID]:
    return [r[0] for r in db.query("select id from public.trade_proposals where scan_job_id = %s "
                                   "order by created_at", (job_id,))]


@pytest.fixture
def scan(db: Database) -> dict[str, Any]:
    add_market(db, "BTC-EUR")
    user = db.create_user()
    allow(db, user, "BTC-EUR")
    return {"db": db, "user": user, "job": add_job(db, user, "BTC-EUR", interval=300)}


def test_g2_only_the_lease_holder_writes_a_proposal(scan: dict[str, Any]) -> None:
    db, job_id = scan["db"], scan["job"]
    assert propose(db, job_id, "nobody")["outcome"] == "lease_lost"  # not leased at all
    assert claim(db, "w1") == [job_id]
    assert propose(db, job_id, "w2")["outcome"] == "lease_lost"
    assert proposals(db, job_id) == []
    created = propose(db, job_id, "w1")
    assert created["outcome"] == "created" and created["status"] == "pending"
    assert proposals(db, job_id) == [uuid.UUID(created["proposal_id"])]


def test_g2_a_worker_whose_lease_was_taken_over_writes_nothing(scan: dict[str, Any]) -> None:
    db, job_id = scan["db"], scan["job"]
    assert claim(db, "stalled") == [job_id]
    assert context(db, job_id, "stalled")["lease_held"] is True
    expire_lease(db, job_id)
    assert claim(db, "successor") == [job_id]
    assert context(db, job_id, "stalled")["lease_held"] is False
    assert propose(db, job_id, "stalled")["outcome"] == "lease_lost"
    assert proposals(db, job_id) == []
    # The successor runs the job for the same period and writes it, once.
    assert propose(db, job_id, "successor")["outcome"] == "created"
    assert len(proposals(db, job_id)) == 1


def test_one_proposal_per_due_period_until_the_job_succeeds(scan: dict[str, Any]) -> None:
    db, job_id = scan["db"], scan["job"]
    assert claim(db, "w1") == [job_id]
    first = propose(db, job_id, "w1")
    assert context(db, job_id, "w1")["proposal"]["proposal_id"] == first["proposal_id"]
    # w1 dies; its lease expires; w2 re-runs the job in the same period (no success since).
    expire_lease(db, job_id)
    assert claim(db, "w2") == [job_id]
    seen = context(db, job_id, "w2")["proposal"]
    assert seen["proposal_id"] == first["proposal_id"] and seen["status"] == "pending"
    again = propose(db, job_id, "w2", p_side="sell")
    assert (again["outcome"], again["proposal_id"]) == ("replayed", first["proposal_id"])
    # A failed run keeps the period too.
    assert release(db, "w2", job_id, False)["released_count"] == 1
    db.query("update public.scan_jobs set next_run_at = now() where id = %s", (job_id,))
    assert claim(db, "w3") == [job_id]
    assert propose(db, job_id, "w3")["outcome"] == "replayed"
    assert len(proposals(db, job_id)) == 1
    # A success ends the period: the next run proposes anew.
    assert release(db, "w3", job_id, True)["released_count"] == 1
    db.query("update public.scan_jobs set next_run_at = now() where id = %s", (job_id,))
    assert claim(db, "w4") == [job_id]
    assert context(db, job_id, "w4")["proposal"] is None
    fresh = propose(db, job_id, "w4")
    assert fresh["outcome"] == "created" and fresh["proposal_id"] != first["proposal_id"]
    assert len(proposals(db, job_id)) == 2
    assert db.scalar("select count(*) from private.scan_period_proposals") == 1


def test_auto_approval_is_create_trade_proposals(scan: dict[str, Any]) -> None:
    db, job_id, user = scan["db"], scan["job"], scan["user"]
    db.query("update public.trading_settings set auto_execute = true, min_confidence = 0.75 "
             "where user_id = %s", (user,))
    assert claim(db, "w") == [job_id]
    low = propose(db, job_id, "w", p_confidence=Decimal("0.74"))
    assert (low["status"], low["decided_by"]) == ("pending", None)
    release(db, "w", job_id, True)
    db.query("update public.scan_jobs set next_run_at = now() where id = %s", (job_id,))
    assert claim(db, "w") == [job_id]
    high = propose(db, job_id, "w", p_confidence=Decimal("0.75"))
    assert (high["status"], high["decided_by"]) == ("approved", "auto")
    row = db.query("select scan_job_id, market, source, rationale from public.trade_proposals "
                   "where id = %s", (high["proposal_id"],))
    assert row == [(job_id, "BTC-EUR", "rules", "test")]


def test_create_scan_proposal_validates_like_create_trade_proposal(scan: dict[str, Any]) -> None:
    db, job_id = scan["db"], scan["job"]
    assert claim(db, "w") == [job_id]
    for bad in ({"p_side": "hold"}, {"p_amount_quote": Decimal(0)},
                {"p_confidence": Decimal("1.5")}, {"p_source": "magic"}, {"p_worker_id": " "}):
        with pytest.raises(psycopg.Error) as exc:
            propose(db, job_id, "w", **bad)
        assert exc.value.sqlstate == "22023", bad
    assert proposals(db, job_id) == []
    assert propose(db, uuid.uuid4(), "w")["outcome"] == "not_found"


def test_sizing_reads_the_smallest_cap_and_todays_remainder(scan: dict[str, Any]) -> None:
    db, job_id, user = scan["db"], scan["job"], scan["user"]
    sizing = context(db, job_id, "w")["sizing"]
    # Defaults: the user's 50 EUR cap (system 100, market none), 200 EUR a day, 10 trades.
    assert sizing == {"mode": "paper", "min_order_quote": 5, "max_order_quote": 50,
                      "max_order_source": "your max_order_quote",
                      "daily_remaining_quote": 200, "trades_left_today": 10}
    db.query("update public.trading_allowlist set max_order_quote = 30 where user_id = %s",
             (user,))
    db.query("update public.market_allowlist set max_order_quote = 40 where market = 'BTC-EUR'")
    sizing = context(db, job_id, "w")["sizing"]
    assert (sizing["max_order_quote"], sizing["max_order_source"]) == (
        30, "your allowlist limit for BTC-EUR")
    # Today's counting executions of this mode reduce the remainder; failed ones do not count.
    pid = db.scalar("insert into public.trade_proposals (user_id, market, side, amount_quote, "
                    "confidence, source, status, expires_at) values (%s, 'BTC-EUR', 'buy', 150, "
                    "0.9, 'manual', 'executing', now() + interval '1 hour') returning id", (user,))
    failed = db.scalar("insert into public.trade_proposals (user_id, market, side, amount_quote, "
                       "confidence, source, status, expires_at) values (%s, 'BTC-EUR', 'buy', 20, "
                       "0.9, 'manual', 'failed', now() + interval '1 hour') returning id", (user,))
    db.query("insert into public.trade_executions (proposal_id, user_id, idempotency_key, mode, "
             "market, side, amount_quote, status) values (%s, %s, 'k1', 'paper', 'BTC-EUR', "
             "'buy', 150, 'claimed')", (pid, user))
    db.query("insert into public.trade_executions (proposal_id, user_id, idempotency_key, mode, "
             "market, side, amount_quote, status, completed_at) values (%s, %s, 'k2', 'paper', "
             "'BTC-EUR', 'buy', 20, 'failed', now())", (failed, user))
    paper = context(db, job_id, "w", "paper")["sizing"]
    assert (paper["daily_remaining_quote"], paper["trades_left_today"]) == (50, 9)
    live = context(db, job_id, "w", "live")["sizing"]
    assert (live["daily_remaining_quote"], live["trades_left_today"]) == (200, 10)


def test_get_scan_context_of_an_unknown_job_and_bad_arguments(scan: dict[str, Any]) -> None:
    db = scan["db"]
    missing = uuid.uuid4()
    assert context(db, missing, "w") == {"found": False, "job_id": str(missing)}
    with pytest.raises(psycopg.Error) as exc:
        context(db, scan["job"], "w", mode="demo")
    assert exc.value.sqlstate == "22023"


@pytest.mark.parametrize("role", ["anon", "authenticated"])
@pytest.mark.parametrize("fn", ["get_scan_context", "create_scan_proposal"])
def test_the_scanning_rpcs_are_service_only(scan: dict[str, Any], role: str, fn: str) -> None:
    db, job_id, user = scan["db"], scan["job"], scan["user"]
    assert claim(db, "w") == [job_id]
    args: dict[str, Any] = {"p_job_id": job_id, "p_worker_id": "w"}
    if fn == "create_scan_proposal":
        args.update(p_side="buy", p_amount_quote=Decimal(10), p_confidence=Decimal("0.9"),
                    p_rationale="x", p_source="manual")
    with pytest.raises(psycopg.Error) as exc:
        db.rpc(fn, role=role, user_id=user if role == "authenticated" else None, **args)
    assert exc.value.sqlstate == "42501"
    assert proposals(db, job_id) == []
    grants = db.query("select grantee::regrole::text from pg_proc p, "
                      "aclexplode(p.proacl) a where p.proname = %s and a.privilege_type = "
                      "'EXECUTE' order by 1", (fn,))
    assert [g for (g,) in grants] == ["postgres", "service_role"]


def test_nobody_but_the_definer_functions_touches_the_period_table(db: Database) -> None:
    for role in ("anon", "authenticated", "service_role"):
        with pytest.raises(psycopg.Error) as exc, db.as_role(role) as cur:
            cur.execute("select * from private.scan_period_proposals")
        assert exc.value.sqlstate == "42501", role
