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
    # A success ends the period: the next run proposes anew (on the other side: the first buy
    # is still open, and an unchanged signal does not stack).
    assert release(db, "w3", job_id, True)["released_count"] == 1
    db.query("update public.scan_jobs set next_run_at = now() where id = %s", (job_id,))
    assert claim(db, "w4") == [job_id]
    assert context(db, job_id, "w4")["proposal"] is None
    fresh = propose(db, job_id, "w4", p_side="sell")
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
    high = propose(db, job_id, "w", p_confidence=Decimal("0.75"), p_side="sell")
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


# -- a batch: get_scan_contexts and create_scan_proposals ----------------------------------------
@pytest.fixture
def batch(db: Database) -> dict[str, Any]:
    """Three users with BTC-EUR and ETH-EUR jobs, all due."""
    for market in ("BTC-EUR", "ETH-EUR"):
        add_market(db, market)
    users = [db.create_user() for _ in range(3)]
    jobs: dict[tuple[uuid.UUID, str], uuid.UUID] = {}
    for user in users:
        for market in ("BTC-EUR", "ETH-EUR"):
            allow(db, user, market)
            jobs[(user, market)] = add_job(db, user, market, interval=300)
    return {"db": db, "users": users, "jobs": jobs}


def contexts(db: Database, worker: str, job_ids: list[uuid.UUID], mode: str = "paper") -> Any:
    return db.rpc("get_scan_contexts", p_worker_id=worker,
                  p_job_ids=Jsonb([str(j) for j in job_ids]), p_mode=mode)["contexts"]


def entry(job_id: uuid.UUID, **overrides: Any) -> dict[str, Any]:
    return {"job_id": str(job_id), "side": "buy", "amount_quote": "20", "confidence": "0.8",
            "rationale": "test", "source": "rules", **overrides}


def propose_batch(db: Database, worker: str, entries: list[dict[str, Any]]) -> list[Any]:
    answer = db.rpc("create_scan_proposals", p_worker_id=worker, p_proposals=Jsonb(entries),
                    p_ttl_seconds=900)
    return list(answer["results"])


def test_get_scan_contexts_answers_each_job_as_get_scan_context_in_order(
        batch: dict[str, Any]) -> None:
    db, jobs = batch["db"], list(batch["jobs"].values())
    assert sorted(claim(db, "w", limit=10)) == sorted(jobs)
    first_user = batch["users"][0]
    assert propose(db, batch["jobs"][(first_user, "BTC-EUR")], "w")["outcome"] == "created"
    missing = uuid.uuid4()
    asked = [*reversed(jobs), missing]

    answers = contexts(db, "w", asked)

    assert [a["job_id"] for a in answers] == [str(j) for j in asked]
    for job_id, answer in zip(asked, answers, strict=True):
        assert answer == context(db, job_id, "w")
    assert answers[-1] == {"found": False, "job_id": str(missing)}
    sides = {(a["user_id"], a["market"]): a["open_sides"] for a in answers[:-1]}
    assert sides[(str(first_user), "BTC-EUR")] == ["buy"]
    assert [v for k, v in sides.items() if k != (str(first_user), "BTC-EUR")] == [[]] * 5
    assert contexts(db, "other", jobs[:1])[0]["lease_held"] is False
    for bad in ({"p_job_ids": Jsonb(["x"])}, {"p_mode": "demo"}, {"p_worker_id": " "}):
        args = {"p_worker_id": "w", "p_job_ids": Jsonb([str(jobs[0])]), "p_mode": "paper", **bad}
        with pytest.raises(psycopg.Error) as exc:
            db.rpc("get_scan_contexts", **args)
        assert exc.value.sqlstate == "22023", bad


def test_create_scan_proposals_applies_every_rule_per_job_in_one_call(
        batch: dict[str, Any]) -> None:
    db, jobs, (a, b, c) = batch["db"], batch["jobs"], batch["users"]
    db.query("update public.trading_settings set auto_execute = true, min_confidence = 0.75 "
             "where user_id = %s", (c,))
    assert len(claim(db, "w", limit=10)) == 6
    # B's BTC-EUR job already proposed in this period (a run that died before its release).
    replay = propose(db, jobs[(b, "BTC-EUR")], "w")["proposal_id"]
    # A's ETH-EUR job: another worker took it over.
    expire_lease(db, jobs[(a, "ETH-EUR")])
    assert claim(db, "thief", limit=10) == [jobs[(a, "ETH-EUR")]]
    # B's ETH-EUR: an open buy from an earlier period (the job succeeded since).
    open_buy = propose(db, jobs[(b, "ETH-EUR")], "w")["proposal_id"]
    release(db, "w", jobs[(b, "ETH-EUR")], True)
    db.query("update public.scan_jobs set next_run_at = now() where id = %s",
             (jobs[(b, "ETH-EUR")],))
    assert claim(db, "w", limit=10) == [jobs[(b, "ETH-EUR")]]
    missing = uuid.uuid4()

    results = propose_batch(db, "w", [
        entry(jobs[(a, "BTC-EUR")], oracle_answer_id=None),
        entry(jobs[(b, "BTC-EUR")], side="sell"),
        entry(jobs[(a, "ETH-EUR")]),
        entry(missing),
        entry(jobs[(b, "ETH-EUR")]),
        entry(jobs[(c, "BTC-EUR")], confidence="0.75", amount_quote=12.5,
              reference_price="85000.5", model="m-1", source="openai"),
        entry(jobs[(c, "ETH-EUR")], confidence="0.74", side="sell"),
    ])

    assert [r["outcome"] for r in results] == ["created", "replayed", "lease_lost", "not_found",
                                               "unchanged", "created", "created"]
    assert [r["job_id"] for r in results] == [str(x) for x in (
        jobs[(a, "BTC-EUR")], jobs[(b, "BTC-EUR")], jobs[(a, "ETH-EUR")], missing,
        jobs[(b, "ETH-EUR")], jobs[(c, "BTC-EUR")], jobs[(c, "ETH-EUR")])]
    assert results[1]["proposal_id"] == replay and results[4]["proposal_id"] == open_buy
    assert (results[5]["status"], results[5]["decided_by"]) == ("approved", "auto")
    assert (results[6]["status"], results[6]["decided_by"]) == ("pending", None)
    assert (results[0]["status"], results[0]["decided_by"]) == ("pending", None)
    written = [db.query("select scan_job_id, side, amount_quote, confidence, source, model, "
                        "reference_price, rationale from public.trade_proposals where id = %s",
                        (results[i]["proposal_id"],))[0] for i in (0, 5, 6)]
    assert written == [
        (jobs[(a, "BTC-EUR")], "buy", Decimal(20), Decimal("0.8"), "rules", None, None, "test"),
        (jobs[(c, "BTC-EUR")], "buy", Decimal("12.5"), Decimal("0.75"), "openai", "m-1",
         Decimal("85000.5"), "test"),
        (jobs[(c, "ETH-EUR")], "sell", Decimal(20), Decimal("0.74"), "rules", None, None,
         "test")]
    # Each created proposal is audited as create_trade_proposal audits it, and is this period's.
    audited = db.scalar("select count(*) from public.execution_audit_log "
                        "where event = 'proposal.created' and proposal_id = any(%s)",
                        ([uuid.UUID(results[i]["proposal_id"]) for i in (0, 5, 6)],))
    assert audited == 3
    assert context(db, jobs[(a, "BTC-EUR")], "w")["proposal"]["proposal_id"] == \
        results[0]["proposal_id"]
    assert context(db, jobs[(a, "ETH-EUR")], "thief")["proposal"] is None


def test_a_malformed_batch_is_22023_and_writes_nothing(batch: dict[str, Any]) -> None:
    db, jobs = batch["db"], list(batch["jobs"].values())
    claim(db, "w", limit=10)
    bad_entries = [
        {"side": "hold"}, {"amount_quote": "0"}, {"amount_quote": "NaN"},
        {"amount_quote": "Infinity"}, {"amount_quote": "abc"}, {"confidence": "1.5"},
        {"source": "magic"},
        {"reference_price": "-1"}, {"model": ""}, {"rationale": "x" * 10001},
        {"oracle_answer_id": "nope"}, {"job_id": "nope"}, {"extra": 1}]
    for bad in bad_entries:
        with pytest.raises(psycopg.Error) as exc:
            propose_batch(db, "w", [entry(jobs[0]), {**entry(jobs[1]), **bad}])
        assert exc.value.sqlstate == "22023", bad
        assert "p_proposals[1]" in str(exc.value), bad
    with pytest.raises(psycopg.Error) as exc:
        propose_batch(db, "w", [entry(jobs[0]), entry(jobs[0], side="sell")])
    assert exc.value.sqlstate == "22023"
    assert db.scalar("select count(*) from public.trade_proposals") == 0


def test_a_user_has_at_most_one_open_scanner_proposal_per_market_and_side(
        batch: dict[str, Any]) -> None:
    """The database refuses a second open (pending or approved) scanner proposal on the same
    (user, market, side), whoever writes it; decided ones and manual ones do not count."""
    db, (a, _, _) = batch["db"], batch["users"]
    job_id = batch["jobs"][(a, "BTC-EUR")]
    insert = ("insert into public.trade_proposals (user_id, scan_job_id, market, side, "
              "amount_quote, confidence, source, status, expires_at) values (%s, %s, 'BTC-EUR', "
              "%s, 10, 0.9, 'rules', %s, now() + interval '1 hour') returning id")
    first = db.scalar(insert, (a, job_id, "buy", "pending"))
    with pytest.raises(psycopg.errors.UniqueViolation):
        db.query(insert, (a, job_id, "buy", "approved"))
    db.scalar(insert, (a, job_id, "sell", "pending"))  # the other side is free
    db.scalar("insert into public.trade_proposals (user_id, market, side, amount_quote, "
              "confidence, source, status, expires_at) values (%s, 'BTC-EUR', 'buy', 10, 0.9, "
              "'manual', 'pending', now() + interval '1 hour') returning id", (a,))
    db.query("update public.trade_proposals set status = 'rejected', decided_at = now(), "
             "decided_by = 'user' where id = %s", (first,))
    db.scalar(insert, (a, job_id, "buy", "pending"))  # decided: a new one may open


@pytest.mark.parametrize("role", ["anon", "authenticated"])
@pytest.mark.parametrize("fn", ["get_scan_contexts", "create_scan_proposals"])
def test_the_batch_scanning_rpcs_are_service_only(batch: dict[str, Any], role: str,
                                                  fn: str) -> None:
    db, (a, _, _) = batch["db"], batch["users"]
    job_id = batch["jobs"][(a, "BTC-EUR")]
    assert claim(db, "w", limit=10)
    args: dict[str, Any] = {"p_worker_id": "w"}
    if fn == "get_scan_contexts":
        args["p_job_ids"] = Jsonb([str(job_id)])
    else:
        args["p_proposals"] = Jsonb([entry(job_id)])
    with pytest.raises(psycopg.Error) as exc:
        db.rpc(fn, role=role, user_id=a if role == "authenticated" else None, **args)
    assert exc.value.sqlstate == "42501"
    assert proposals(db, job_id) == []
