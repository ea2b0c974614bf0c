"""G7 — GPT budget correctness, on a real PostgreSQL (migrations/*_gpt_budget.sql).

Settled cost + outstanding reservations never exceed the hourly or daily limit, even when many
reservations of one user race; the recorded cost is computed in SQL from the reported token counts
(cached prompt tokens at the cached price) and gpt_model_prices.
"""

from __future__ import annotations

import threading
import uuid
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import psycopg
import pytest

from tests.pg import Database, connect

MODEL = "test-model"
# USD per million tokens: input, cached input, output.
PRICES = (Decimal("2.00"), Decimal("0.50"), Decimal("8.00"))
MTOK = Decimal(1_000_000)


def worst_case(prompt: int, completion: int) -> Decimal:
    return (prompt * PRICES[0] + completion * PRICES[2]) / MTOK


def actual(prompt: int, cached: int, completion: int) -> Decimal:
    return ((prompt - cached) * PRICES[0] + cached * PRICES[1] + completion * PRICES[2]) / MTOK


@pytest.fixture
def budget_db(db: Database) -> Database:
    db.query("insert into public.gpt_model_prices (model, input_usd_per_mtok, "
             "cached_input_usd_per_mtok, output_usd_per_mtok) values (%s, %s, %s, %s)",
             (MODEL, *PRICES))
    return db


def new_user(db: Database, hourly: str = "0.25", daily: str = "1.00") -> uuid.UUID:
    user = db.create_user()
    db.query("update public.trading_settings set gpt_hourly_budget_usd = %s, "
             "gpt_daily_budget_usd = %s where user_id = %s",
             (Decimal(hourly), Decimal(daily), user))
    return user


def reserve(db: Database, user: uuid.UUID, prompt: int = 1000, completion: int = 500,
            model: str = MODEL, **kw: Any) -> dict[str, Any]:
    return db.rpc("reserve_gpt_budget", p_user_id=user, p_model=model,
                  p_max_prompt_tokens=prompt, p_max_completion_tokens=completion, **kw)


def settle(db: Database, reservation: Any, prompt: int, cached: int, completion: int,
           request_id: str | None = None) -> dict[str, Any]:
    return db.rpc("settle_gpt_usage", p_reservation_id=reservation, p_prompt_tokens=prompt,
                  p_cached_prompt_tokens=cached, p_completion_tokens=completion,
                  p_request_id=request_id)


def log_spend(db: Database, user: uuid.UUID) -> Decimal:
    """Settled cost + outstanding reservations, summed straight from gpt_usage_log."""
    return db.scalar("select coalesce(sum(case status when 'settled' then cost_usd "
                     "when 'reserved' then reserved_usd else 0 end), 0) "
                     "from public.gpt_usage_log where user_id = %s", (user,))


def usage_row(db: Database, reservation: Any) -> dict[str, Any]:
    with db.connect() as conn, conn.cursor() as cur:
        cur.execute("select * from public.gpt_usage_log where id = %s", (reservation,))
        row = cur.fetchone()
        assert row is not None
        return dict(zip([c.name for c in cur.description or []], row, strict=True))


# -- G7 under concurrency ----------------------------------------------------------------------
@pytest.mark.parametrize("window", ["hourly", "daily"])
def test_g7_32_concurrent_reservations_never_exceed_the_limit(budget_db: Database,
                                                              window: str) -> None:
    db = budget_db
    limit = Decimal("0.05")
    user = new_user(db, hourly=str(limit) if window == "hourly" else "10",
                    daily=str(limit) if window == "daily" else "10")
    # Settled spend already on the books counts too: 1000 prompt + 250 completion = 0.004.
    first = reserve(db, user, prompt=1000, completion=250)
    assert settle(db, first["reservation_id"], 1000, 0, 250)["cost_usd"] == Decimal("0.004")

    cost = worst_case(1000, 500)  # 0.006
    expected_allowed = int((limit - Decimal("0.004")) // cost)  # 7
    threads = 32
    barrier = threading.Barrier(threads)
    results: list[dict[str, Any]] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def attempt() -> None:
        try:
            with connect(db.authenticator_url) as conn:
                barrier.wait(timeout=30)
                result = db.rpc("reserve_gpt_budget", conn=conn, p_user_id=user, p_model=MODEL,
                                p_max_prompt_tokens=1000, p_max_completion_tokens=500)
            with lock:
                results.append(result)
        except BaseException as exc:  # noqa: BLE001 - surfaced below
            errors.append(exc)

    workers = [threading.Thread(target=attempt) for _ in range(threads)]
    for t in workers:
        t.start()
    for t in workers:
        t.join(timeout=60)
    assert not errors, errors
    assert len(results) == threads

    allowed = [r for r in results if r["allowed"]]
    denied = [r for r in results if not r["allowed"]]
    assert len(allowed) == expected_allowed
    assert {r["reason"] for r in denied} == {f"{window}_budget_exceeded"}
    assert all(r["reserved_usd"] == cost for r in allowed)
    assert all(r["reservation_id"] is None and r["reserved_usd"] == 0 for r in denied)
    assert len({r["reservation_id"] for r in allowed}) == expected_allowed
    spend = log_spend(db, user)
    assert spend == Decimal("0.004") + expected_allowed * cost
    assert spend <= limit
    # Each answer's spend figure is a distinct point of one serial history: no two reservations
    # saw the same state.
    key = "spent_hour_usd" if window == "hourly" else "spent_day_usd"
    assert sorted(r[key] for r in allowed) == [Decimal("0.004") + cost * n
                                               for n in range(1, expected_allowed + 1)]
    assert db.scalar("select count(*) from public.execution_audit_log "
                     "where user_id = %s and event = 'gpt_budget.denied'", (user,)) == len(denied)


def test_g7_spend_counts_settled_cost_and_reservations_in_the_last_hour_and_the_utc_day(
        budget_db: Database) -> None:
    db = budget_db
    user = new_user(db, hourly="5", daily="50")
    now, day_start = db.query("select now(), date_trunc('day', now() at time zone 'utc') "
                              "at time zone 'utc'")[0]
    rows = [  # (age, status, reserved_usd, cost_usd)
        (timedelta(minutes=5), "settled", Decimal("0.5"), Decimal("0.125")),
        (timedelta(minutes=59), "reserved", Decimal("0.25"), None),
        (timedelta(minutes=61), "settled", Decimal("1"), Decimal("0.75")),
        (timedelta(minutes=30), "released", Decimal("3"), None),
        (timedelta(hours=3), "reserved", Decimal("0.0625"), None),
        (timedelta(hours=25), "settled", Decimal("2"), Decimal("2")),
        (timedelta(days=3), "settled", Decimal("4"), Decimal("4")),
    ]
    for age, status, reserved_usd, cost_usd in rows:
        db.query(
            "insert into public.gpt_usage_log (user_id, model, status, reserved_usd, cost_usd, "
            "prompt_tokens, cached_prompt_tokens, completion_tokens, created_at, settled_at, "
            "released_at) values (%(u)s, %(m)s, %(s)s, %(r)s, %(c)s, %(t)s, %(z)s, %(t)s, "
            "%(at)s, case when %(s)s = 'settled' then %(at)s end, "
            "case when %(s)s = 'released' then %(at)s end)",
            {"u": user, "m": MODEL, "s": status, "r": reserved_usd, "c": cost_usd,
             "t": 0 if status == "reserved" else 10, "z": 0, "at": now - age})

    def counted(status: str, reserved_usd: Decimal, cost_usd: Decimal | None) -> Decimal:
        return {"settled": cost_usd, "reserved": reserved_usd}.get(status) or Decimal(0)

    expect_hour = sum((counted(s, r, c) for age, s, r, c in rows if now - age > now - timedelta(
        hours=1)), Decimal(0))
    expect_day = sum((counted(s, r, c) for age, s, r, c in rows if now - age >= day_start),
                     Decimal(0))
    assert expect_hour == Decimal("0.375")
    figures = db.rpc("check_gpt_budget", p_user_id=user)
    assert figures["spent_hour_usd"] == expect_hour
    assert figures["spent_day_usd"] == expect_day
    assert figures["allowed"] is True and figures["reservation_id"] is None
    assert figures["hourly_limit_usd"] == Decimal("5") and figures["daily_limit_usd"] == Decimal(
        "50")
    assert figures["remaining_hour_usd"] == Decimal("5") - expect_hour
    # check reserved nothing
    assert db.scalar("select count(*) from public.gpt_usage_log where user_id = %s",
                     (user,)) == len(rows)


def test_g7_reservation_denied_when_the_daily_limit_would_be_exceeded(budget_db: Database) -> None:
    db = budget_db
    user = new_user(db, hourly="1", daily="0.01")
    assert reserve(db, user)["allowed"] is True  # 0.006
    denied = reserve(db, user)
    assert denied["allowed"] is False and denied["reason"] == "daily_budget_exceeded"
    assert denied["spent_day_usd"] == Decimal("0.006")
    assert denied["daily_limit_usd"] == Decimal("0.01")
    assert denied["worst_case_usd"] == Decimal("0.006")
    check = db.rpc("check_gpt_budget", p_user_id=user)
    assert check["allowed"] is True and check["spent_day_usd"] == Decimal("0.006")


def test_g7_unknown_model_is_denied_and_reserves_nothing(budget_db: Database) -> None:
    db = budget_db
    user = new_user(db)
    result = reserve(db, user, model="gpt-does-not-exist")
    assert result["allowed"] is False
    assert result["reason"] == "unknown_model"
    assert result["reservation_id"] is None
    assert db.scalar("select count(*) from public.gpt_usage_log where user_id = %s", (user,)) == 0
    unknown_user = reserve(db, uuid.uuid4())
    assert unknown_user["allowed"] is False and unknown_user["reason"] == "not_found"


@pytest.mark.parametrize("args", [
    {"p_max_prompt_tokens": -1}, {"p_max_completion_tokens": -5},
    {"p_max_prompt_tokens": 0, "p_max_completion_tokens": 0}, {"p_model": ""},
    {"p_max_prompt_tokens": None},
])
def test_g7_reserve_rejects_invalid_arguments_with_22023(budget_db: Database,
                                                         args: dict[str, Any]) -> None:
    user = new_user(budget_db)
    call = {"p_user_id": user, "p_model": MODEL, "p_max_prompt_tokens": 100,
            "p_max_completion_tokens": 100, **args}
    with pytest.raises(psycopg.Error) as exc:
        budget_db.rpc("reserve_gpt_budget", **call)
    assert exc.value.sqlstate == "22023"


# -- settle ------------------------------------------------------------------------------------
def test_g7_settle_computes_cost_from_prices_and_tokens_with_cached_tokens_at_the_cached_price(
        budget_db: Database) -> None:
    db = budget_db
    user = new_user(db)
    res = reserve(db, user, prompt=2000, completion=1000)
    assert res["reserved_usd"] == Decimal("0.012")
    settled = settle(db, res["reservation_id"], 1234, 234, 567, request_id="req-1")
    # (1000 × 2.00 + 234 × 0.50 + 567 × 8.00) / 1e6
    assert settled["cost_usd"] == Decimal("0.006653") == actual(1234, 234, 567)
    assert settled["status"] == "settled"
    row = usage_row(db, res["reservation_id"])
    assert (row["status"], row["cost_usd"], row["prompt_tokens"], row["cached_prompt_tokens"],
            row["completion_tokens"], row["request_id"]) == (
        "settled", Decimal("0.006653"), 1234, 234, 567, "req-1")
    assert row["settled_at"] is not None
    assert log_spend(db, user) == Decimal("0.006653")

    # Prices with more decimals than a float can hold exactly: the figure stays exact.
    db.query("insert into public.gpt_model_prices values ('odd-model', 0.15, 0.075, 0.60)")
    res2 = reserve(db, user, model="odd-model", prompt=1001, completion=77)
    odd = settle(db, res2["reservation_id"], 1001, 333, 77)
    assert odd["cost_usd"] == Decimal("0.000171375")  # (668×0.15 + 333×0.075 + 77×0.6) / 1e6


def test_g7_settle_is_idempotent(budget_db: Database) -> None:
    db = budget_db
    user = new_user(db)
    res = reserve(db, user)
    first = settle(db, res["reservation_id"], 900, 100, 400, request_id="req-a")
    row = usage_row(db, res["reservation_id"])
    again = settle(db, res["reservation_id"], 900, 100, 400, request_id="req-a")
    different = settle(db, res["reservation_id"], 5, 0, 5, request_id="req-b")
    assert again["cost_usd"] == different["cost_usd"] == first["cost_usd"] == actual(900, 100, 400)
    assert again["status"] == different["status"] == "settled"
    assert again["replayed"] is True and first["replayed"] is False
    assert usage_row(db, res["reservation_id"]) == row
    assert log_spend(db, user) == first["cost_usd"]


def test_g7_settle_with_zero_tokens_releases_the_reservation(budget_db: Database) -> None:
    db = budget_db
    user = new_user(db)
    res = reserve(db, user)
    assert log_spend(db, user) == worst_case(1000, 500)
    released = settle(db, res["reservation_id"], 0, 0, 0)
    assert released["status"] == "released" and released["cost_usd"] == 0
    assert usage_row(db, res["reservation_id"])["status"] == "released"
    assert log_spend(db, user) == 0
    later = settle(db, res["reservation_id"], 100, 0, 100)
    assert later["status"] == "released" and later["cost_usd"] == 0
    assert settle(db, uuid.uuid4(), 1, 0, 1)["status"] == "not_found"


@pytest.mark.parametrize("tokens", [(100, 101, 10), (-1, 0, 10), (10, -1, 10), (10, 0, -1),
                                    (None, 0, 10)])
def test_g7_settle_rejects_invalid_token_counts_with_22023(budget_db: Database,
                                                           tokens: tuple[Any, ...]) -> None:
    db = budget_db
    res = reserve(db, new_user(db))
    with pytest.raises(psycopg.Error) as exc:
        settle(db, res["reservation_id"], *tokens)
    assert exc.value.sqlstate == "22023"
    assert usage_row(db, res["reservation_id"])["status"] == "reserved"


def test_g7_settled_rows_cannot_be_rewritten_or_revived(budget_db: Database) -> None:
    db = budget_db
    res = reserve(db, new_user(db))
    settle(db, res["reservation_id"], 10, 0, 10)
    for sql in ("update public.gpt_usage_log set cost_usd = 0 where id = %s",
                "update public.gpt_usage_log set status = 'reserved', cost_usd = null, "
                "settled_at = null where id = %s"):
        with pytest.raises(psycopg.Error) as exc:
            db.query(sql, (res["reservation_id"],))
        assert exc.value.sqlstate == "42501"


# -- analytics ---------------------------------------------------------------------------------
def test_get_budget_analytics_figures_match_the_usage_log(budget_db: Database) -> None:
    db = budget_db
    user = new_user(db, hourly="10", daily="10")
    other = new_user(db)
    settle(db, reserve(db, other)["reservation_id"], 999, 0, 999)  # someone else's: not counted
    a = settle(db, reserve(db, user)["reservation_id"], 800, 200, 300)
    b = settle(db, reserve(db, user)["reservation_id"], 100, 0, 50)
    c = settle(db, reserve(db, user, model="gpt-4o-mini")["reservation_id"], 1000, 500, 100)
    outstanding = reserve(db, user)
    settle(db, reserve(db, user)["reservation_id"], 0, 0, 0)  # released
    # Two days ago, settled; and eight days ago, outside a 7-day window.
    for days_ago, cost in ((2, Decimal("0.5")), (8, Decimal("7"))):
        db.query("insert into public.gpt_usage_log (user_id, model, status, reserved_usd, "
                 "cost_usd, prompt_tokens, cached_prompt_tokens, completion_tokens, created_at, "
                 "settled_at) values (%s, %s, 'settled', %s, %s, 10, 0, 10, "
                 "now() - make_interval(days => %s), now() - make_interval(days => %s))",
                 (user, MODEL, cost, cost, days_ago, days_ago))

    report = db.rpc("get_budget_analytics", p_user_id=user, p_days=7)
    assert report["status"] == "ok" and report["days"] == 7
    assert len(report["by_day"]) == 7
    today = report["by_day"][-1]
    mini_cost = (500 * Decimal("0.15") + 500 * Decimal("0.075") + 100 * Decimal("0.60")) / MTOK
    assert c["cost_usd"] == mini_cost
    today_spend = a["cost_usd"] + b["cost_usd"] + c["cost_usd"]
    assert today["day"] == report["to"]
    assert (today["spend_usd"], today["calls"], today["reservations"], today["released"],
            today["reserved_usd"]) == (today_spend, 3, 5, 1, outstanding["reserved_usd"])
    assert (today["prompt_tokens"], today["cached_prompt_tokens"],
            today["completion_tokens"]) == (1900, 700, 450)
    two_days_ago = report["by_day"][-3]
    assert two_days_ago["spend_usd"] == Decimal("0.5") and two_days_ago["calls"] == 1
    assert sum(d["calls"] for d in report["by_day"]) == 4
    assert report["totals"]["spend_usd"] == today_spend + Decimal("0.5")
    assert report["totals"]["calls"] == 4
    by_model = {m["model"]: m for m in report["by_model"]}
    assert set(by_model) == {MODEL, "gpt-4o-mini"}
    assert by_model["gpt-4o-mini"]["spend_usd"] == mini_cost
    assert by_model["gpt-4o-mini"]["calls"] == 1
    assert by_model[MODEL]["calls"] == 3
    assert by_model[MODEL]["spend_usd"] == a["cost_usd"] + b["cost_usd"] + Decimal("0.5")
    assert by_model[MODEL]["reservations"] == 5

    # Cross-check every total against the log itself.
    window_start = datetime.fromisoformat(report["from"])
    logged = db.query(
        "select coalesce(sum(cost_usd) filter (where status = 'settled'), 0), "
        "count(*) filter (where status = 'settled'), "
        "coalesce(sum(prompt_tokens) filter (where status = 'settled'), 0) "
        "from public.gpt_usage_log where user_id = %s and created_at >= %s::date",
        (user, window_start.date()))[0]
    assert (report["totals"]["spend_usd"], report["totals"]["calls"],
            report["totals"]["prompt_tokens"]) == logged
    assert report["spent_hour_usd"] == db.rpc("check_gpt_budget", p_user_id=user)[
        "spent_hour_usd"]


def test_get_budget_analytics_authenticated_only_for_self_and_not_for_anon(
        budget_db: Database) -> None:
    db = budget_db
    alice, bob = new_user(db), new_user(db)
    settle(db, reserve(db, alice)["reservation_id"], 100, 0, 100)
    settle(db, reserve(db, bob)["reservation_id"], 300, 0, 300)

    own = db.rpc("get_budget_analytics", role="authenticated", user_id=alice, p_user_id=alice)
    assert own["status"] == "ok"
    assert own["totals"] == db.rpc("get_budget_analytics", p_user_id=alice)["totals"]
    assert own["totals"]["spend_usd"] == actual(100, 0, 100)

    # Someone else's figures: the same answer as for a user that does not exist.
    foreign = db.rpc("get_budget_analytics", role="authenticated", user_id=alice, p_user_id=bob)
    assert foreign == {"status": "not_found"}
    assert db.rpc("get_budget_analytics", role="authenticated", user_id=alice,
                  p_user_id=uuid.uuid4()) == {"status": "not_found"}
    assert db.rpc("get_budget_analytics", p_user_id=bob)["totals"]["spend_usd"] == actual(300, 0,
                                                                                          300)
    with pytest.raises(psycopg.Error) as exc:
        db.rpc("get_budget_analytics", role="anon", p_user_id=alice)
    assert exc.value.sqlstate == "42501"
    with pytest.raises(psycopg.Error) as exc:
        db.rpc("get_budget_analytics", p_user_id=alice, p_days=0)
    assert exc.value.sqlstate == "22023"


def test_users_read_only_their_own_usage_rows(budget_db: Database) -> None:
    db = budget_db
    alice, bob = new_user(db), new_user(db)
    mine = reserve(db, alice)["reservation_id"]
    reserve(db, bob)
    with db.as_user(alice) as cur:
        cur.execute("select id::text from public.gpt_usage_log")
        assert [r[0] for r in cur.fetchall()] == [mine]
        cur.execute("select count(*) from public.gpt_model_prices where model = %s", (MODEL,))
        assert cur.fetchone() == (1,)
    with pytest.raises(psycopg.Error) as exc, db.as_user(alice) as cur:
        cur.execute("update public.gpt_usage_log set status = 'released' where id = %s", (mine,))
    assert exc.value.sqlstate == "42501"
    with pytest.raises(psycopg.Error) as exc, db.as_user(alice) as cur:
        cur.execute("update public.gpt_model_prices set input_usd_per_mtok = 0")
    assert exc.value.sqlstate == "42501"


# -- clear_todays_budget -----------------------------------------------------------------------
def test_clear_todays_budget_releases_todays_rows_and_audits(budget_db: Database) -> None:
    db = budget_db
    user = new_user(db, hourly="0.01", daily="0.01")
    settle(db, reserve(db, user)["reservation_id"], 1000, 0, 500)
    assert reserve(db, user)["reason"] == "daily_budget_exceeded"
    reserve(db, user, prompt=100, completion=100)  # 0.001, fits: an outstanding reservation

    assert db.rpc("clear_todays_budget", p_user_id=user) == 2
    assert log_spend(db, user) == 0
    assert db.scalar("select count(*) from public.gpt_usage_log where user_id = %s "
                     "and status = 'released' and release_reason = 'cleared_by_operator'",
                     (user,)) == 2
    audit = db.query("select detail from public.execution_audit_log "
                     "where user_id = %s and event = 'gpt_budget.cleared'", (user,))
    assert len(audit) == 1 and audit[0][0]["rows_released"] == 2
    assert reserve(db, user)["allowed"] is True
    assert db.rpc("clear_todays_budget", p_user_id=user) == 1


@pytest.mark.parametrize("role", ["anon", "authenticated"])
def test_budget_rpcs_are_service_only(budget_db: Database, role: str) -> None:
    db = budget_db
    user = new_user(db)
    reservation = reserve(db, user)["reservation_id"]
    calls = {
        "reserve_gpt_budget": {"p_user_id": user, "p_model": MODEL, "p_max_prompt_tokens": 1,
                               "p_max_completion_tokens": 1},
        "settle_gpt_usage": {"p_reservation_id": reservation, "p_prompt_tokens": 1,
                             "p_cached_prompt_tokens": 0, "p_completion_tokens": 1},
        "check_gpt_budget": {"p_user_id": user},
        "clear_todays_budget": {"p_user_id": user},
    }
    for fn, args in calls.items():
        with pytest.raises(psycopg.Error) as exc:
            db.rpc(fn, role=role, user_id=user if role == "authenticated" else None, **args)
        assert exc.value.sqlstate == "42501", fn
    assert usage_row(db, reservation)["status"] == "reserved"
    assert db.scalar("select count(*) from public.gpt_usage_log where user_id = %s", (user,)) == 1


def test_g7_reservation_records_its_scan_job_and_refuses_another_users_job(
        budget_db: Database) -> None:
    db = budget_db
    alice, bob = new_user(db), new_user(db)
    db.query("insert into public.market_allowlist (market, enabled) values ('BTC-EUR', true)")
    jobs = {u: db.scalar("insert into public.scan_jobs (user_id, market) values (%s, 'BTC-EUR') "
                         "returning id", (u,)) for u in (alice, bob)}
    own = reserve(db, alice, p_scan_job_id=jobs[alice])
    assert usage_row(db, own["reservation_id"])["scan_job_id"] == jobs[alice]
    with pytest.raises(psycopg.Error) as exc:
        reserve(db, alice, p_scan_job_id=jobs[bob])
    assert exc.value.sqlstate == "22023"
    # A job deleted mid-scan: the call is still accounted for, without the job.
    gone = reserve(db, alice, p_scan_job_id=uuid.uuid4())
    assert gone["allowed"] is True
    assert usage_row(db, gone["reservation_id"])["scan_job_id"] is None
    db.query("delete from public.scan_jobs where id = %s", (jobs[alice],))
    assert usage_row(db, own["reservation_id"])["scan_job_id"] is None


# -- G7 at every isolation level -------------------------------------------------------------------
def test_g7_two_interleaved_repeatable_read_reservations_cannot_both_pass(
        budget_db: Database) -> None:
    """Both transactions take their snapshot before either reserves; the second's snapshot cannot
    see the first's reservation. Reading the spend under such a snapshot would let 0.20 + 0.20
    through a 0.25 limit; the budget functions refuse to run there instead."""
    db = budget_db
    user = new_user(db, hourly="0.25", daily="1")
    outcomes: list[str] = []
    with connect(db.authenticator_url) as a, connect(db.authenticator_url) as b:
        for conn in (a, b):  # begin, as service_role, and take the snapshot (first query)
            conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
            conn.execute("select set_config('role', 'service_role', true), "
                         "set_config('request.jwt.claims', '{\"role\": \"service_role\"}', true)")
        for conn in (a, b):  # then A reserves and commits, then B
            try:
                result = conn.execute("select public.reserve_gpt_budget(%s, %s, 100000, 0)",
                                      (user, MODEL)).fetchone()  # 0.20 USD
                assert result is not None
                outcomes.append("allowed" if result[0]["allowed"] else "denied")
                conn.commit()
            except psycopg.errors.InvalidTransactionState:
                conn.rollback()
                outcomes.append("refused")
    assert log_spend(db, user) <= Decimal("0.25"), outcomes
    assert outcomes == ["refused", "refused"]


@pytest.mark.parametrize("level", [psycopg.IsolationLevel.REPEATABLE_READ,
                                   psycopg.IsolationLevel.SERIALIZABLE],
                         ids=["repeatable_read", "serializable"])
def test_g7_every_budget_function_refuses_a_snapshot_isolation_transaction(
        budget_db: Database, level: psycopg.IsolationLevel) -> None:
    db = budget_db
    user = new_user(db)
    reservation = reserve(db, user)["reservation_id"]
    calls = {
        "reserve_gpt_budget": "select public.reserve_gpt_budget(%(u)s, %(m)s, 10, 10)",
        "settle_gpt_usage": "select public.settle_gpt_usage(%(r)s, 10, 0, 10)",
        "check_gpt_budget": "select public.check_gpt_budget(%(u)s)",
        "clear_todays_budget": "select public.clear_todays_budget(%(u)s)",
    }
    for fn, statement in calls.items():
        with connect(db.authenticator_url) as conn:
            conn.isolation_level = level
            with pytest.raises(psycopg.errors.InvalidTransactionState), \
                    db.as_role("service_role", conn=conn) as cur:
                cur.execute(statement, {"u": user, "m": MODEL, "r": reservation})
            assert fn  # (named for the failure message)
    assert usage_row(db, reservation)["status"] == "reserved"


# -- the true cost, even above the reservation -----------------------------------------------------
def test_g7_settling_more_than_reserved_records_the_true_cost_and_audits_the_overshoot(
        budget_db: Database) -> None:
    db = budget_db
    user = new_user(db, hourly="0.25", daily="1")
    res = reserve(db, user, prompt=50, completion=50)  # 0.0005 USD reserved
    settled = settle(db, res["reservation_id"], 100, 0, 2_000_000, request_id="req-big")
    cost = actual(100, 0, 2_000_000)  # 16.0002 USD
    assert (settled["status"], settled["cost_usd"]) == ("settled", cost)
    assert settled["exceeded_reservation"] is True
    assert settled["overshoot_usd"] == cost - res["reserved_usd"]
    assert usage_row(db, res["reservation_id"])["cost_usd"] == cost
    assert log_spend(db, user) == cost  # the books carry the bill, not the reservation
    overshoots = db.query("select detail from public.execution_audit_log "
                          "where user_id = %s and event = 'gpt_budget.overshoot'", (user,))
    assert len(overshoots) == 1
    detail = overshoots[0][0]
    assert detail["reservation_id"] == str(res["reservation_id"])
    assert Decimal(str(detail["reserved_usd"])) == res["reserved_usd"]
    assert Decimal(str(detail["cost_usd"])) == cost
    assert Decimal(str(detail["overshoot_usd"])) == cost - res["reserved_usd"]
    assert detail["completion_tokens"] == 2_000_000 and detail["request_id"] == "req-big"
    # Nothing more fits today: the next reservation sees the real spend.
    assert reserve(db, user)["reason"] == "daily_budget_exceeded"
    # Within the reservation there is no overshoot row.
    other = new_user(db)
    within = settle(db, reserve(db, other)["reservation_id"], 10, 0, 10)
    assert within["exceeded_reservation"] is False and within["overshoot_usd"] == 0
    assert db.scalar("select count(*) from public.execution_audit_log where user_id = %s "
                     "and event = 'gpt_budget.overshoot'", (other,)) == 0


# -- a late settle records the bill ----------------------------------------------------------------
RESERVATION_LIFETIME = timedelta(minutes=15)  # SPEC §3


def age_reservation(db: Database, reservation: Any, age: timedelta) -> None:
    """What the passing of time does to a reservation (creation times never change otherwise:
    replica mode skips the row-transition trigger for this one arranged update)."""
    with db.connect() as conn:
        conn.execute("set session_replication_role = replica")
        conn.execute("update public.gpt_usage_log set created_at = now() - %s where id = %s",
                     (age, reservation))


def test_g7_a_reservation_lives_15_minutes_and_says_when_it_expires(budget_db: Database) -> None:
    db = budget_db
    user = new_user(db)
    res = reserve(db, user)
    row = usage_row(db, res["reservation_id"])
    assert datetime.fromisoformat(res["expires_at"]) == row["created_at"] + RESERVATION_LIFETIME
    young, old = reserve(db, user)["reservation_id"], reserve(db, user)["reservation_id"]
    age_reservation(db, young, RESERVATION_LIFETIME - timedelta(minutes=1))
    age_reservation(db, old, RESERVATION_LIFETIME + timedelta(minutes=1))
    assert db.rpc("run_maintenance")["released_reservations"] == 1
    assert [usage_row(db, r)["status"] for r in (res["reservation_id"], young, old)] == [
        "reserved", "reserved", "released"]


def test_g7_a_settle_after_the_reservation_was_released_records_the_providers_bill(
        budget_db: Database) -> None:
    db = budget_db
    user = new_user(db, hourly="5", daily="5")
    res = reserve(db, user)
    age_reservation(db, res["reservation_id"], RESERVATION_LIFETIME + timedelta(minutes=5))
    assert db.rpc("run_maintenance")["released_reservations"] == 1
    assert log_spend(db, user) == 0

    late = settle(db, res["reservation_id"], 1200, 200, 300, request_id="req-late")
    cost = actual(1200, 200, 300)
    assert (late["status"], late["cost_usd"], late["late"]) == ("settled", cost, True)
    row = usage_row(db, res["reservation_id"])
    assert (row["status"], row["cost_usd"], row["prompt_tokens"], row["request_id"]) == (
        "settled", cost, 1200, "req-late")
    assert log_spend(db, user) == cost
    audited = db.query("select detail from public.execution_audit_log where user_id = %s "
                       "and event = 'gpt_budget.late_settlement'", (user,))
    assert len(audited) == 1
    assert audited[0][0]["release_reason"] == "stale_reservation"
    assert Decimal(str(audited[0][0]["cost_usd"])) == cost
    # Idempotent like any settle.
    again = settle(db, res["reservation_id"], 1200, 200, 300, request_id="req-late")
    assert (again["status"], again["cost_usd"], again["replayed"]) == ("settled", cost, True)


# -- deleting a scan job or retiring a market keeps final usage rows -------------------------------
@pytest.fixture
def job_with_final_usage(budget_db: Database) -> dict[str, Any]:
    db = budget_db
    user = new_user(db, hourly="5", daily="5")
    db.query("insert into public.market_allowlist (market, enabled) values ('DEL-EUR', true)")
    db.query("insert into public.trading_allowlist (user_id, market) values (%s, 'DEL-EUR')",
             (user,))
    job = db.scalar("insert into public.scan_jobs (user_id, market) values (%s, 'DEL-EUR') "
                    "returning id", (user,))
    settled = reserve(db, user, p_scan_job_id=job)["reservation_id"]
    settle(db, settled, 100, 0, 100)
    released = reserve(db, user, p_scan_job_id=job)["reservation_id"]
    settle(db, released, 0, 0, 0)
    stale = reserve(db, user, p_scan_job_id=job)["reservation_id"]
    age_reservation(db, stale, RESERVATION_LIFETIME + timedelta(minutes=1))
    db.rpc("run_maintenance")
    rows = [settled, released, stale]
    return {"db": db, "user": user, "job": job, "rows": rows,
            "before": [usage_row(db, r) for r in rows]}


def assert_rows_kept_without_the_job(world: dict[str, Any]) -> None:
    db = world["db"]
    after = [usage_row(db, r) for r in world["rows"]]
    assert [r["scan_job_id"] for r in after] == [None, None, None]
    assert [{**r, "scan_job_id": None} for r in world["before"]] == after
    assert [r["status"] for r in after] == ["settled", "released", "released"]


def test_a_user_deletes_their_own_scan_job_that_has_final_usage_rows(
        job_with_final_usage: dict[str, Any]) -> None:
    world = job_with_final_usage
    db = world["db"]
    with db.as_user(world["user"]) as cur:
        cur.execute("delete from public.scan_jobs where id = %s", (world["job"],))
        assert cur.rowcount == 1
    assert_rows_kept_without_the_job(world)


def test_the_operator_retires_a_market_whose_job_has_final_usage_rows(
        job_with_final_usage: dict[str, Any]) -> None:
    world = job_with_final_usage
    db = world["db"]
    with db.as_service() as cur:
        cur.execute("delete from public.market_allowlist where market = 'DEL-EUR'")
        assert cur.rowcount == 1
    assert db.scalar("select count(*) from public.scan_jobs where id = %s", (world["job"],)) == 0
    assert_rows_kept_without_the_job(world)


def test_a_final_usage_row_may_lose_its_job_but_never_move_to_another(
        job_with_final_usage: dict[str, Any]) -> None:
    world = job_with_final_usage
    db = world["db"]
    db.query("insert into public.market_allowlist (market, enabled) values ('MOV-EUR', true)")
    db.query("insert into public.trading_allowlist (user_id, market) values (%s, 'MOV-EUR')",
             (world["user"],))
    other_job = db.scalar("insert into public.scan_jobs (user_id, market) "
                          "values (%s, 'MOV-EUR') returning id", (world["user"],))
    for row in world["rows"]:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            db.query("update public.gpt_usage_log set scan_job_id = %s where id = %s",
                     (other_job, row))
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            db.query("update public.gpt_usage_log set scan_job_id = null, request_id = 'x' "
                     "where id = %s", (row,))


# -- audit: reservations and settlements -----------------------------------------------------------
def test_g9_granted_reservations_and_settlements_are_audited(budget_db: Database) -> None:
    db = budget_db
    user = new_user(db)
    granted = reserve(db, user)
    settled = settle(db, granted["reservation_id"], 900, 100, 400, request_id="req-a")
    freed = reserve(db, user)
    settle(db, freed["reservation_id"], 0, 0, 0)
    rows = db.query("select event, detail from public.execution_audit_log where user_id = %s "
                    "and event like 'gpt_budget.%%' order by id", (user,))
    assert [e for e, _ in rows] == ["gpt_budget.reserved", "gpt_budget.settled",
                                    "gpt_budget.reserved", "gpt_budget.reservation_released"]
    reserved = rows[0][1]
    assert reserved["reservation_id"] == str(granted["reservation_id"])
    assert Decimal(str(reserved["reserved_usd"])) == granted["reserved_usd"]
    assert reserved["model"] == MODEL
    assert (reserved["max_prompt_tokens"], reserved["max_completion_tokens"]) == (1000, 500)
    settlement = rows[1][1]
    assert settlement["reservation_id"] == str(granted["reservation_id"])
    assert Decimal(str(settlement["cost_usd"])) == settled["cost_usd"]
    assert (settlement["prompt_tokens"], settlement["cached_prompt_tokens"],
            settlement["completion_tokens"], settlement["request_id"]) == (900, 100, 400, "req-a")
    assert rows[3][1]["reason"] == "no_tokens_used"
    # A replayed settle changes nothing and is not a second settlement.
    settle(db, granted["reservation_id"], 900, 100, 400, request_id="req-a")
    assert db.scalar("select count(*) from public.execution_audit_log where user_id = %s "
                     "and event = 'gpt_budget.settled'", (user,)) == 1
