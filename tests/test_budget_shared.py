"""G7 for shared oracle answers, on a real PostgreSQL (migrations/*_scanning.sql): one answer per
market snapshot (claim_oracle_answer, record_oracle_answer), every user reserving for it under
reserve_gpt_budget's own rule (reserve_gpt_budgets), and the bill split among them
(settle_oracle_answers): the rows sum to the provider's bill exactly, none above its reservation.
"""

from __future__ import annotations

import threading
import uuid
from datetime import timedelta
from decimal import Decimal
from typing import Any

import psycopg
import pytest
from psycopg.types.json import Jsonb

from tests.pg import Database, connect
from tests.test_budget import MODEL, PRICES, budget_db, log_spend, new_user, reserve, worst_case

__all__ = ["budget_db"]  # the fixture, used by name

DIGEST = "a" * 64
MTOK = Decimal(1_000_000)


def claim_answer(db: Database, worker: str = "w", *, digest: str = DIGEST, oracle: str = "openai",
                 answer: dict[str, Any] | None = None, prompt: int = 1000, completion: int = 500,
                 claim_seconds: int = 60, market: str = "BTC-EUR") -> dict[str, Any]:
    return db.rpc("claim_oracle_answer", p_worker_id=worker, p_market=market,
                  p_candle_interval="1h", p_input_digest=digest, p_oracle=oracle,
                  p_model=MODEL if oracle == "openai" else "", p_prompt_version="p1",
                  p_schema_version="s1", p_max_prompt_tokens=prompt,
                  p_max_completion_tokens=completion, p_claim_seconds=claim_seconds,
                  p_answer=None if answer is None else Jsonb(answer))


def reserve_for(db: Database, answer_id: Any, users: list[uuid.UUID], **kw: Any) -> dict[str, Any]:
    return db.rpc("reserve_gpt_budgets", p_oracle_answer_id=answer_id,
                  p_requests=Jsonb([{"user_id": str(u), "scan_job_id": None} for u in users]),
                  **kw)


def record(db: Database, answer_id: Any, worker: str = "w", *, tokens: tuple[int, int, int] | None,
           status: str = "answered") -> dict[str, Any]:
    prompt, cached, completion = tokens if tokens is not None else (None, None, None)
    return db.rpc("record_oracle_answer", p_answer_id=answer_id, p_worker_id=worker,
                  p_status=status,
                  p_answer=Jsonb({"kind": "no_signal", "reason": "flat"})
                  if status == "answered" else None,
                  p_prompt_tokens=prompt, p_cached_prompt_tokens=cached,
                  p_completion_tokens=completion, p_request_id="req_1")


def settle(db: Database, *answer_ids: Any) -> list[dict[str, Any]]:
    return list(db.rpc("settle_oracle_answers",
                       p_answer_ids=Jsonb([str(a) for a in answer_ids]))["results"])


def rows_of(db: Database, answer_id: Any) -> list[tuple[Any, ...]]:
    return db.query("select id, user_id, status, reserved_usd, cost_usd, prompt_tokens, "
                    "cached_prompt_tokens, completion_tokens, shared_by, request_id "
                    "from public.gpt_usage_log where oracle_answer_id = %s order by id",
                    (answer_id,))


def bill(prompt: int, cached: int, completion: int) -> Decimal:
    return ((prompt - cached) * PRICES[0] + cached * PRICES[1] + completion * PRICES[2]) / MTOK


# -- one answer per key -------------------------------------------------------------------------
def test_one_answer_per_key_whoever_asks(budget_db: Database) -> None:
    db = budget_db
    rules = claim_answer(db, oracle="rules", answer={"kind": "signal", "side": "buy",
                                                     "confidence": "0.8", "rationale": "up"})
    again = claim_answer(db, "other", oracle="rules",
                         answer={"kind": "signal", "side": "buy", "confidence": "0.8",
                                 "rationale": "up"})
    assert rules["outcome"] == again["outcome"] == "answered"
    assert rules["answer_id"] == again["answer_id"]

    mine = claim_answer(db, "w")
    assert mine["outcome"] == "claimed" and mine["answer_id"] != rules["answer_id"]
    assert claim_answer(db, "w")["outcome"] == "claimed"  # the claimant asking again
    theirs = claim_answer(db, "other")
    assert (theirs["outcome"], theirs["answer_id"]) == ("pending", mine["answer_id"])
    assert record(db, mine["answer_id"], "other", tokens=(1, 0, 1)) == {
        "recorded": False, "reason": "not_claimant"}
    assert record(db, mine["answer_id"], "w", tokens=(1000, 0, 100))["recorded"] is True
    answered = claim_answer(db, "other")
    assert (answered["outcome"], answered["answer_id"]) == ("answered", mine["answer_id"])
    assert answered["answer"] == {"kind": "no_signal", "reason": "flat"}
    assert record(db, mine["answer_id"], "w", tokens=(1, 0, 1))["reason"] == "not_claimant"
    # Another snapshot is another answer.
    assert claim_answer(db, "w", digest="b" * 64)["answer_id"] != mine["answer_id"]


def test_many_concurrent_claims_of_one_key_give_one_call(budget_db: Database) -> None:
    db = budget_db
    threads, barrier = 16, threading.Barrier(16)
    outcomes: list[dict[str, Any]] = []
    lock = threading.Lock()

    def attempt(n: int) -> None:
        with connect(db.authenticator_url) as conn:
            barrier.wait(timeout=30)
            answer = db.rpc("claim_oracle_answer", conn=conn, p_worker_id=f"w{n}",
                            p_market="BTC-EUR", p_candle_interval="1h", p_input_digest=DIGEST,
                            p_oracle="openai", p_model=MODEL, p_prompt_version="p1",
                            p_schema_version="s1", p_max_prompt_tokens=1000,
                            p_max_completion_tokens=500, p_claim_seconds=60, p_answer=None)
        with lock:
            outcomes.append(answer)

    workers = [threading.Thread(target=attempt, args=(n,)) for n in range(threads)]
    for t in workers:
        t.start()
    for t in workers:
        t.join(timeout=60)
    assert len(outcomes) == threads
    assert sorted(o["outcome"] for o in outcomes) == ["claimed"] + ["pending"] * (threads - 1)
    assert len({o["answer_id"] for o in outcomes}) == 1


def test_an_expired_claim_fails_and_the_key_is_claimed_anew(budget_db: Database) -> None:
    db = budget_db
    dead = claim_answer(db, "dead")["answer_id"]
    users = [new_user(db) for _ in range(2)]
    assert all(r["allowed"] for r in reserve_for(db, dead, users)["results"])
    db.query("update private.oracle_answers set claimed_until = now() - interval '1 second' "
             "where id = %s", (dead,))
    fresh = claim_answer(db, "alive")
    assert fresh["outcome"] == "claimed" and fresh["answer_id"] != dead
    assert db.query("select status, failure from private.oracle_answers where id = %s",
                    (dead,)) == [("failed", "the claim expired without an answer")]
    # The dead worker's reservations keep their worst case (its call may have been billed).
    assert {r[2] for r in rows_of(db, dead)} == {"reserved"}
    assert reserve_for(db, dead, [new_user(db)]) == {"answer_status": "failed", "results": []}
    assert record(db, dead, "dead", tokens=(1, 0, 1))["reason"] == "not_claimant"


# -- G7: the same rule per user ---------------------------------------------------------------
def test_g7_every_user_gets_reserve_gpt_budgets_own_rule(budget_db: Database) -> None:
    """Twin users — one reserving through reserve_gpt_budget for a call of their own, one through
    reserve_gpt_budgets for the shared call — get the same decision for the same worst case."""
    db = budget_db
    cost = worst_case(1000, 500)  # 0.006
    limits = [("0.25", "1.00"), ("0.005", "1.00"), ("0.25", "0.005"), ("0.012", "1.00")]
    singles = [new_user(db, *limit) for limit in limits]
    shared = [new_user(db, *limit) for limit in limits]
    for user in (singles[3], shared[3]):  # 0.007 of its 0.012 hour already spent
        first = reserve(db, user, prompt=1000, completion=250)
        db.rpc("settle_gpt_usage", p_reservation_id=first["reservation_id"], p_prompt_tokens=1500,
               p_cached_prompt_tokens=0, p_completion_tokens=500)
    answer_id = claim_answer(db)["answer_id"]

    alone = [reserve(db, u) for u in singles]
    together = reserve_for(db, answer_id, list(reversed(shared)))["results"][::-1]

    keys = ("allowed", "reason", "reserved_usd", "spent_hour_usd", "spent_day_usd",
            "hourly_limit_usd", "daily_limit_usd", "worst_case_usd")
    assert [{k: r[k] for k in keys} for r in together] == [{k: r[k] for k in keys}
                                                           for r in alone]
    assert [r["allowed"] for r in together] == [True, False, False, False]
    assert [r["user_id"] for r in together] == [str(u) for u in shared]
    assert together[0]["reserved_usd"] == cost
    rows = rows_of(db, answer_id)
    assert [(r[1], r[2], r[3]) for r in rows] == [(shared[0], "reserved", cost)]
    assert db.scalar("select count(*) from public.execution_audit_log where event = "
                     "'gpt_budget.denied' and user_id = any(%s)", (shared,)) == 3


def test_g7_concurrent_shared_and_single_reservations_never_exceed_a_users_limit(
        budget_db: Database) -> None:
    """16 batches for one answer and 16 single reservations, all at once, over the same 10 users:
    each user's settled + reserved spend stays within their limit, and each user gets exactly as
    many reservations as fit (the per-user lock serialises both kinds)."""
    db = budget_db
    cost = worst_case(1000, 500)
    users = [new_user(db, hourly=str(cost * 5), daily="10") for _ in range(10)]
    answer_id = claim_answer(db)["answer_id"]
    threads = 32
    barrier = threading.Barrier(threads)
    errors: list[BaseException] = []

    def batch() -> None:
        try:
            with connect(db.authenticator_url) as conn:
                barrier.wait(timeout=30)
                for _ in range(3):
                    db.rpc("reserve_gpt_budgets", conn=conn, p_oracle_answer_id=answer_id,
                           p_requests=Jsonb([{"user_id": str(u)} for u in users]))
        except BaseException as exc:  # noqa: BLE001 - surfaced below
            errors.append(exc)

    def single(user: uuid.UUID) -> None:
        try:
            with connect(db.authenticator_url) as conn:
                barrier.wait(timeout=30)
                for _ in range(3):
                    db.rpc("reserve_gpt_budget", conn=conn, p_user_id=user, p_model=MODEL,
                           p_max_prompt_tokens=1000, p_max_completion_tokens=500)
        except BaseException as exc:  # noqa: BLE001 - surfaced below
            errors.append(exc)

    workers = [threading.Thread(target=batch) for _ in range(16)]
    workers += [threading.Thread(target=single, args=(users[i % 10],)) for i in range(16)]
    for t in workers:
        t.start()
    for t in workers:
        t.join(timeout=120)
    assert not errors, errors
    for user in users:
        assert log_spend(db, user) == 5 * cost
        assert db.scalar("select count(*) from public.gpt_usage_log where user_id = %s",
                         (user,)) == 5


# -- G7: the split --------------------------------------------------------------------------------
@pytest.mark.parametrize(("users", "tokens"), [
    (7, (1234, 1000, 41)),      # 0.000816 + … : a bill that does not divide by 7
    (3, (1, 0, 0)),             # 0.000002 over 3: shares of 10^-12 units, remainder 2
    (1, (1200, 200, 150)),      # one user pays the whole bill
    (40, (3, 1, 1)),
])
def test_g7_the_split_sums_to_the_bill_exactly_and_no_share_exceeds_its_reservation(
        budget_db: Database, users: int, tokens: tuple[int, int, int]) -> None:
    db = budget_db
    people = [new_user(db) for _ in range(users)]
    answer_id = claim_answer(db)["answer_id"]
    assert all(r["allowed"] for r in reserve_for(db, answer_id, people)["results"])
    recorded = record(db, answer_id, tokens=tokens)
    assert recorded["cost_usd"] == bill(*tokens)

    (result,) = settle(db, answer_id)

    assert result == {"answer_id": str(answer_id), "status": "settled", "replayed": False,
                      "cost_usd": bill(*tokens), "shared_by": users}
    rows = rows_of(db, answer_id)
    shares = [r[4] for r in rows]
    assert sum(shares) == bill(*tokens)  # exactly: numeric, no rounding lost
    assert all(r[2] == "settled" and r[4] <= r[3] for r in rows)
    # The rule: units of 10^-max(12, scale); floor(K/N) each, one more to the first K mod N by id.
    scale = max(12, -bill(*tokens).normalize().as_tuple().exponent)
    unit = Decimal(1).scaleb(-scale)
    units = int(bill(*tokens) / unit)
    base, rest = divmod(units, users)
    assert shares == [unit * (base + (1 if i < rest else 0)) for i in range(users)]
    assert {(r[5], r[6], r[7], r[8], r[9]) for r in rows} == {(*tokens, users, "req_1")}
    assert db.scalar("select count(*) from public.execution_audit_log where event = "
                     "'gpt_budget.settled' and detail ->> 'oracle_answer_id' = %s",
                     (str(answer_id),)) == users
    # Idempotent: settling again changes nothing.
    again = settle(db, answer_id)[0]
    assert again["replayed"] is True and again["shared_by"] == users
    assert rows_of(db, answer_id) == rows


def test_g7_a_bill_above_the_reservation_is_recorded_and_the_overshoot_audited(
        budget_db: Database) -> None:
    db = budget_db
    people = [new_user(db) for _ in range(2)]
    answer_id = claim_answer(db, prompt=10, completion=10)["answer_id"]
    reserve_for(db, answer_id, people)
    record(db, answer_id, tokens=(100_000, 0, 100_000))  # far above the 10 + 10 reserved
    settle(db, answer_id)
    rows = rows_of(db, answer_id)
    assert sum(r[4] for r in rows) == bill(100_000, 0, 100_000)
    assert db.scalar("select count(*) from public.execution_audit_log "
                     "where event = 'gpt_budget.overshoot'") == 2


def test_g7_a_zero_bill_releases_every_reservation_and_an_unknown_one_keeps_them(
        budget_db: Database) -> None:
    db = budget_db
    people = [new_user(db) for _ in range(3)]
    unbilled = claim_answer(db)["answer_id"]
    reserve_for(db, unbilled, people)
    assert record(db, unbilled, tokens=(0, 0, 0), status="failed")["released"] == 3
    assert {(r[2], r[4]) for r in rows_of(db, unbilled)} == {("released", Decimal(0))}
    assert settle(db, unbilled)[0]["replayed"] is True

    unknown = claim_answer(db, digest="c" * 64)["answer_id"]
    reserve_for(db, unknown, people)
    assert record(db, unknown, tokens=None, status="failed")["recorded"] is True
    assert settle(db, unknown)[0]["status"] == "no_bill"
    assert {r[2] for r in rows_of(db, unknown)} == {"reserved"}  # maintenance releases them
    for user in people:
        assert log_spend(db, user) == worst_case(1000, 500)


def test_g7_a_user_who_joins_after_the_split_pays_nothing_and_a_stale_release_is_settled_late(
        budget_db: Database) -> None:
    db = budget_db
    early, stale, late = new_user(db), new_user(db), new_user(db)
    answer_id = claim_answer(db)["answer_id"]
    reserve_for(db, answer_id, [early, stale])
    # run_maintenance released the stale user's reservation before the bill was known.
    db.query("update public.gpt_usage_log set status = 'released', released_at = now(), "
             "release_reason = 'stale_reservation' where user_id = %s", (stale,))
    record(db, answer_id, tokens=(1000, 0, 100))
    settle(db, answer_id)
    rows = {r[1]: r for r in rows_of(db, answer_id)}
    assert rows[early][2] == rows[stale][2] == "settled"
    assert rows[early][4] + rows[stale][4] == bill(1000, 0, 100)
    assert db.scalar("select count(*) from public.execution_audit_log "
                     "where event = 'gpt_budget.late_settlement' and user_id = %s", (stale,)) == 1

    joined = reserve_for(db, answer_id, [late])["results"][0]
    assert joined["allowed"] is True
    assert [(r[2], r[4]) for r in rows_of(db, answer_id) if r[1] == late] == [
        ("released", Decimal(0))]
    assert log_spend(db, late) == 0
    assert sum(r[4] for r in rows_of(db, answer_id)) == bill(1000, 0, 100)


def test_run_maintenance_splits_a_bill_its_tick_never_settled(budget_db: Database) -> None:
    db = budget_db
    people = [new_user(db) for _ in range(4)]
    answer_id = claim_answer(db)["answer_id"]
    reserve_for(db, answer_id, people)
    record(db, answer_id, tokens=(999, 0, 99))
    assert db.rpc("run_maintenance")["settled_answers"] == 0  # its tick may still settle it
    db.query("update private.oracle_answers set answered_at = now() - %s where id = %s",
             (timedelta(minutes=11), answer_id))
    assert db.rpc("run_maintenance")["settled_answers"] == 1
    assert sum(r[4] for r in rows_of(db, answer_id)) == bill(999, 0, 99)
    assert {r[2] for r in rows_of(db, answer_id)} == {"settled"}


# -- arguments and privileges --------------------------------------------------------------
def test_the_answer_rpcs_refuse_bad_arguments_with_22023(budget_db: Database) -> None:
    db = budget_db
    answer_id = claim_answer(db)["answer_id"]
    user = new_user(db)
    bad_calls = [
        lambda: claim_answer(db, digest="xyz"),
        lambda: claim_answer(db, oracle="rules"),  # the rules oracle stores its answer
        lambda: claim_answer(db, answer={"kind": "no_signal"}),  # a model's answer comes later
        lambda: claim_answer(db, market="btc"),
        lambda: reserve_for(db, answer_id, [user, user]),
        lambda: reserve_for(db, uuid.uuid4(), [user]),
        lambda: db.rpc("reserve_gpt_budgets", p_oracle_answer_id=answer_id,
                       p_requests=Jsonb([{"user_id": "nope"}])),
        lambda: db.rpc("record_oracle_answer", p_answer_id=answer_id, p_worker_id="w",
                       p_status="answered", p_answer=None, p_prompt_tokens=1,
                       p_cached_prompt_tokens=0, p_completion_tokens=1),
        lambda: db.rpc("record_oracle_answer", p_answer_id=answer_id, p_worker_id="w",
                       p_status="answered", p_answer=Jsonb({}), p_prompt_tokens=1,
                       p_cached_prompt_tokens=None, p_completion_tokens=1),
        lambda: db.rpc("record_oracle_answer", p_answer_id=answer_id, p_worker_id="w",
                       p_status="answered", p_answer=Jsonb({}), p_prompt_tokens=1,
                       p_cached_prompt_tokens=2, p_completion_tokens=1),
        lambda: db.rpc("settle_oracle_answers", p_answer_ids=Jsonb(["nope"])),
    ]
    for n, call in enumerate(bad_calls):
        with pytest.raises(psycopg.Error) as exc:
            call()
        assert exc.value.sqlstate == "22023", n
    assert rows_of(db, answer_id) == []


@pytest.mark.parametrize("role", ["anon", "authenticated"])
@pytest.mark.parametrize("fn", ["claim_oracle_answer", "record_oracle_answer",
                                "reserve_gpt_budgets", "settle_oracle_answers"])
def test_the_answer_rpcs_are_service_only(budget_db: Database, role: str, fn: str) -> None:
    db = budget_db
    grants = db.query("select grantee::regrole::text from pg_proc p, aclexplode(p.proacl) a "
                      "where p.proname = %s and a.privilege_type = 'EXECUTE' order by 1", (fn,))
    assert [g for (g,) in grants] == ["postgres", "service_role"]
    user = new_user(db)
    answer_id = claim_answer(db)["answer_id"]
    args: dict[str, Any] = {
        "claim_oracle_answer": {"p_worker_id": "x", "p_market": "BTC-EUR",
                                "p_candle_interval": "1h", "p_input_digest": "d" * 64,
                                "p_oracle": "openai", "p_model": MODEL, "p_prompt_version": "p",
                                "p_schema_version": "s", "p_max_prompt_tokens": 1,
                                "p_max_completion_tokens": 1, "p_claim_seconds": 60},
        "record_oracle_answer": {"p_answer_id": answer_id, "p_worker_id": "w",
                                 "p_status": "failed", "p_answer": None, "p_prompt_tokens": 0,
                                 "p_cached_prompt_tokens": 0, "p_completion_tokens": 0},
        "reserve_gpt_budgets": {"p_oracle_answer_id": answer_id,
                                "p_requests": Jsonb([{"user_id": str(user)}])},
        "settle_oracle_answers": {"p_answer_ids": Jsonb([str(answer_id)])},
    }[fn]
    with pytest.raises(psycopg.Error) as exc:
        db.rpc(fn, role=role, user_id=user if role == "authenticated" else None, **args)
    assert exc.value.sqlstate == "42501"
    with pytest.raises(psycopg.Error) as exc, db.as_role(role) as cur:
        cur.execute("select * from private.oracle_answers")
    assert exc.value.sqlstate == "42501"
