"""G2 for a whole tick: release_job_locks (migrations/*_scheduler.sql), on a real PostgreSQL.

A tick releases its finished jobs in one call. Per job it applies exactly release_job_lock's rule
(both go through private.release_scan_jobs): only the lease holder releases, success schedules the
next run one interval later, failure backs off 30 s × 2^(failures − 1) capped at the interval; a job
the caller does not hold is answered `not_lock_owner` / `not_found` and left alone while the
others are released. Malformed batches are 22023 and change nothing; only service_role may call it.
"""

from __future__ import annotations

import random
import threading
import uuid
from collections import Counter
from datetime import timedelta
from typing import Any

import psycopg
import pytest
from psycopg.types.json import Jsonb

from tests.pg import Database, connect
from tests.test_scheduler import add_job, add_market, allow, claim, expire_lease, job


def release_batch(db: Database, worker: str, results: Any, **kwargs: Any) -> Any:
    return db.rpc("release_job_locks", p_worker_id=worker, p_results=Jsonb(results), **kwargs)


def outcome(job_id: uuid.UUID, succeeded: bool, error: str | None = None) -> dict[str, Any]:
    return {"job_id": str(job_id), "succeeded": succeeded, "error": error}


def markets(db: Database, user: uuid.UUID, n: int) -> list[str]:
    names = [f"B{i}-EUR" for i in range(n)]
    for m in names:
        add_market(db, m)
        allow(db, user, m)
    return names


# -- G2: the holder check, per job ------------------------------------------------------------
def test_g2_batch_releases_the_callers_jobs_and_answers_the_others_per_job_in_order(
        db: Database) -> None:
    user = db.create_user()
    m = markets(db, user, 4)
    mine = add_job(db, user, m[0], interval=300, due_seconds_ago=40)
    taken_over = add_job(db, user, m[1], interval=300, due_seconds_ago=30)
    assert sorted(claim(db, "w", limit=2)) == sorted([mine, taken_over])
    expire_lease(db, taken_over)
    assert claim(db, "w2", limit=10) == [taken_over]           # the lease moved to w2
    others = add_job(db, user, m[2], interval=300, due_seconds_ago=20)
    assert claim(db, "w3", limit=10) == [others]
    free = add_job(db, user, m[3], interval=300, due_seconds_ago=10)  # due, nobody holds it
    missing = uuid.uuid4()
    untouched = {j: job(db, j) for j in (taken_over, others, free)}

    answer = release_batch(db, "w", [outcome(missing, True), outcome(taken_over, True),
                                     outcome(mine, True), outcome(others, False, "x"),
                                     outcome(free, True)])

    assert answer["released_count"] == 1
    results = answer["results"]
    assert [r["job_id"] for r in results] == [str(j) for j in (missing, taken_over, mine,
                                                                others, free)]
    assert results[0] == {"job_id": str(missing), "released": False, "next_run_at": None,
                          "reason": "not_found"}
    for r in (results[1], results[3], results[4]):
        assert r["released"] is False and r["reason"] == "not_lock_owner", r
        assert set(r) == {"job_id", "released", "next_run_at", "reason"}
    assert results[2]["released"] is True and results[2]["reason"] == "succeeded"
    assert results[2]["consecutive_failures"] == 0
    assert {j: job(db, j) for j in untouched} == untouched, "jobs not held by w are unchanged"
    row = job(db, mine)
    assert row["locked_by"] is None and row["locked_at"] is None and row["lock_expires_at"] is None
    assert row["next_run_at"] - row["last_run_at"] == timedelta(seconds=300)
    assert row["last_success_at"] == row["last_run_at"]


def test_g2_batch_release_after_a_release_is_not_lock_owner(db: Database) -> None:
    user = db.create_user()
    m = markets(db, user, 2)
    jobs = [add_job(db, user, name) for name in m]
    claim(db, "w", limit=2)
    first = release_batch(db, "w", [outcome(j, True) for j in jobs])
    assert first["released_count"] == 2
    released = {j: job(db, j) for j in jobs}
    again = release_batch(db, "w", [outcome(j, False, "late") for j in jobs])
    assert again["released_count"] == 0
    assert [r["reason"] for r in again["results"]] == ["not_lock_owner"] * 2
    assert {j: job(db, j) for j in jobs} == released, "a second release changes nothing"


# -- G2: the same rule as release_job_lock ----------------------------------------------------
# (interval, consecutive_failures before, succeeded, error)
TWIN_CASES = [
    (300, 0, True, None),
    (300, 4, True, "ignored on success"),
    (300, 0, False, "exchange down"),      # 30 s
    (300, 1, False, "again"),              # 60 s
    (300, 3, False, "   "),                # 240 s, blank error → 'unspecified error'
    (300, 4, False, None),                 # 480 s capped at the 300 s interval
    (3600, 30, False, "y" * 5000),         # exponent capped, 3600 s cap, error truncated
    (60, 0, False, ""),                    # 30 s, empty error
]


def comparable(row: dict[str, Any], answer: dict[str, Any]) -> dict[str, Any]:
    """What the rule decided, independent of the transaction's clock and the job's identity."""
    return {
        "answer": {k: v for k, v in answer.items() if k not in ("job_id", "next_run_at")},
        "answer_next_run_at_is_row": answer["next_run_at"] is not None,
        "delay": row["next_run_at"] - row["last_run_at"],
        "success_now": row["last_success_at"] == row["last_run_at"],
        "last_success_at_kept": row["last_success_at"] is None,
        "lease": (row["locked_by"], row["locked_at"], row["lock_expires_at"]),
        "consecutive_failures": row["consecutive_failures"],
        "last_error": row["last_error"],
        "attempts": row["attempts"],
    }


def test_g2_batch_applies_exactly_release_job_locks_rule_on_twin_jobs(db: Database) -> None:
    user = db.create_user()
    m = markets(db, user, 2 * len(TWIN_CASES))
    twins = []
    for i, (interval, failures, _, _) in enumerate(TWIN_CASES):
        pair = []
        for name in (m[2 * i], m[2 * i + 1]):
            job_id = add_job(db, user, name, interval=interval)
            db.query("update public.scan_jobs set consecutive_failures = %s, "
                     "last_error = 'before' where id = %s", (failures, job_id))
            pair.append(job_id)
        twins.append(pair)
    assert len(claim(db, "w", limit=100)) == 2 * len(TWIN_CASES)

    single = {}
    for (_, _, succeeded, error), (a, _) in zip(TWIN_CASES, twins, strict=True):
        single[a] = db.rpc("release_job_lock", p_job_id=a, p_worker_id="w",
                           p_succeeded=succeeded, p_error=error)
    batch = release_batch(db, "w", [outcome(b, succeeded, error)
                                    for (_, _, succeeded, error), (_, b)
                                    in zip(TWIN_CASES, twins, strict=True)])
    assert batch["released_count"] == len(TWIN_CASES)

    for case, (a, b), answer_b in zip(TWIN_CASES, twins, batch["results"], strict=True):
        assert answer_b["job_id"] == str(b)
        assert comparable(job(db, b), answer_b) == comparable(job(db, a), single[a]), case
    delays = [job(db, b)["next_run_at"] - job(db, b)["last_run_at"] for _, b in twins]
    assert delays == [timedelta(seconds=s) for s in (300, 300, 30, 60, 240, 300, 3600, 30)]
    errors = [job(db, b)["last_error"] for _, b in twins]
    assert errors == ["before", "before", "exchange down", "again", "unspecified error",
                      "unspecified error", "y" * 2000, "unspecified error"]


# -- a job given back unrun (a rate limit, no time left) ---------------------------------------
def test_a_job_given_back_unrun_keeps_its_schedule_failures_and_error_and_gets_its_attempt_back(
        db: Database) -> None:
    """A tick that could not start a job (its exchange budget ran out) gives it back: no attempt,
    no failure, no backoff — due again at once, for the next tick."""
    user = db.create_user()
    m = markets(db, user, 2)
    unrun, ran = add_job(db, user, m[0], due_seconds_ago=40), add_job(db, user, m[1])
    db.query("update public.scan_jobs set consecutive_failures = 2, last_error = 'earlier', "
             "last_run_at = now() - interval '1 hour'")
    before = job(db, unrun)
    assert sorted(claim(db, "w", limit=2)) == sorted([unrun, ran])
    assert job(db, unrun)["attempts"] == before["attempts"] + 1

    answer = release_batch(db, "w", [{"job_id": str(unrun), "succeeded": False,
                                      "error": "RateLimitWouldExceed: …", "ran": False},
                                     outcome(ran, False, "exchange down")])

    assert answer["released_count"] == 2
    assert answer["results"][0] == {"job_id": str(unrun), "released": True,
                                    "next_run_at": answer["results"][0]["next_run_at"],
                                    "reason": "not_run", "consecutive_failures": 2}
    after = job(db, unrun)
    assert after["locked_by"] is None and after["lock_expires_at"] is None
    for column in ("attempts", "consecutive_failures", "next_run_at", "last_run_at",
                   "last_success_at", "last_error"):
        assert after[column] == before[column], column
    assert job(db, ran)["consecutive_failures"] == 3  # a run that failed still counts
    assert claim(db, "w2", limit=1) == [unrun], "due again at once"


@pytest.mark.parametrize("entry", [
    {"succeeded": True, "ran": False},      # a job that did not run did not succeed
    {"succeeded": False, "ran": "no"},
    {"succeeded": False, "ran": None},
])
def test_a_malformed_not_run_entry_is_22023(db: Database, entry: dict[str, Any]) -> None:
    user = db.create_user()
    held = add_job(db, user, markets(db, user, 1)[0])
    claim(db, "w")
    before = job(db, held)
    with pytest.raises(psycopg.Error) as exc:
        release_batch(db, "w", [{"job_id": str(held), **entry}])
    assert exc.value.sqlstate == "22023"
    assert job(db, held) == before
    # The well-formed entry is taken.
    given_back = release_batch(db, "w", [{"job_id": str(held), "succeeded": False,
                                          "ran": False}])
    assert given_back["results"][0]["reason"] == "not_run"


# -- G2: one heartbeat for a tick's leases ------------------------------------------------------
def test_g2_heartbeat_scan_jobs_extends_only_the_callers_leases(db: Database) -> None:
    user = db.create_user()
    m = markets(db, user, 3)
    mine = add_job(db, user, m[0], due_seconds_ago=30)
    taken = add_job(db, user, m[1], due_seconds_ago=20)
    free = add_job(db, user, m[2], due_seconds_ago=-600)  # not due: nobody holds it
    assert sorted(claim(db, "w", limit=5, lock_seconds=30)) == sorted([mine, taken])
    expire_lease(db, taken)
    assert claim(db, "thief", limit=5) == [taken]
    before = {j: job(db, j) for j in (mine, taken, free)}

    held = db.rpc("heartbeat_scan_jobs", p_worker_id="w",
                  p_job_ids=Jsonb([str(mine), str(taken), str(free), str(uuid.uuid4())]),
                  p_lock_seconds=600)

    assert held == [str(mine)]
    assert job(db, mine)["lock_expires_at"] > before[mine]["lock_expires_at"]
    assert job(db, taken) == before[taken] and job(db, free) == before[free]
    for bad in (Jsonb(["nope"]), Jsonb({"a": 1}), Jsonb([str(uuid.UUID(int=i + 1))
                                                         for i in range(1001)])):
        with pytest.raises(psycopg.Error) as exc:
            db.rpc("heartbeat_scan_jobs", p_worker_id="w", p_job_ids=bad, p_lock_seconds=60)
        assert exc.value.sqlstate == "22023"


# -- arguments ---------------------------------------------------------------------------------
BAD_BATCHES = {
    "not an array (object)": {"job_id": "x"},
    "not an array (string)": "[]",
    "not an array (number)": 1,
    "not an array (JSON null)": None,
    "element not an object": ["00000000-0000-4000-8000-000000000001"],
    "no job_id": [{"succeeded": True}],
    "no succeeded": [{"job_id": "00000000-0000-4000-8000-000000000001"}],
    "unknown key": [{"job_id": "00000000-0000-4000-8000-000000000001", "succeeded": True,
                     "sucess": True}],
    "job_id not a uuid": [{"job_id": "not-a-uuid", "succeeded": True}],
    "job_id a number": [{"job_id": 7, "succeeded": True}],
    "job_id too short": [{"job_id": "00000000-0000-4000-8000-00000000001", "succeeded": True}],
    "job_id null": [{"job_id": None, "succeeded": True}],
    "succeeded a string": [{"job_id": "00000000-0000-4000-8000-000000000001",
                            "succeeded": "true"}],
    "succeeded null": [{"job_id": "00000000-0000-4000-8000-000000000001", "succeeded": None}],
    "error a number": [{"job_id": "00000000-0000-4000-8000-000000000001", "succeeded": False,
                        "error": 500}],
    "duplicate job id": [{"job_id": "00000000-0000-4000-8000-000000000001", "succeeded": True},
                         {"job_id": "00000000-0000-4000-8000-000000000001", "succeeded": False}],
    "duplicate job id, other case": [
        {"job_id": "0000000a-0000-4000-8000-000000000001", "succeeded": True},
        {"job_id": "0000000A-0000-4000-8000-000000000001", "succeeded": True}],
    "1001 entries": [{"job_id": str(uuid.UUID(int=i + 1)), "succeeded": True}
                     for i in range(1001)],
}


@pytest.mark.parametrize("case", list(BAD_BATCHES))
def test_batch_release_rejects_a_malformed_batch_with_22023_and_changes_nothing(
        db: Database, case: str) -> None:
    user = db.create_user()
    held = add_job(db, user, markets(db, user, 1)[0])
    claim(db, "w")
    before = job(db, held)
    bad = BAD_BATCHES[case]
    if isinstance(bad, list):  # a valid entry for a held job rides along: it must not be released
        bad = [outcome(held, True), *bad]
    with pytest.raises(psycopg.Error) as exc:
        release_batch(db, "w", bad)
    assert exc.value.sqlstate == "22023", case
    assert job(db, held) == before


@pytest.mark.parametrize("worker", ["", "  ", None])
def test_batch_release_rejects_a_missing_worker_id_with_22023(db: Database,
                                                              worker: str | None) -> None:
    with pytest.raises(psycopg.Error) as exc:
        release_batch(db, worker, [])  # type: ignore[arg-type]
    assert exc.value.sqlstate == "22023"


def test_batch_release_rejects_sql_null_results_with_22023(db: Database) -> None:
    with pytest.raises(psycopg.Error) as exc:
        db.rpc("release_job_locks", p_worker_id="w", p_results=None)
    assert exc.value.sqlstate == "22023"


def test_batch_release_accepts_an_empty_batch_and_1000_entries(db: Database) -> None:
    assert release_batch(db, "w", []) == {"released_count": 0, "results": []}
    answer = release_batch(db, "w", [{"job_id": str(uuid.UUID(int=i + 1)), "succeeded": True}
                                     for i in range(1000)])
    assert answer["released_count"] == 0 and len(answer["results"]) == 1000
    assert {r["reason"] for r in answer["results"]} == {"not_found"}


# -- G8: service-only --------------------------------------------------------------------------
@pytest.mark.parametrize("role", ["anon", "authenticated"])
def test_batch_release_is_service_only(db: Database, role: str) -> None:
    user = db.create_user()
    held = add_job(db, user, markets(db, user, 1)[0])
    claim(db, "w")
    before = job(db, held)
    caller = user if role == "authenticated" else None
    with pytest.raises(psycopg.Error) as exc:
        release_batch(db, "w", [outcome(held, True)], role=role, user_id=caller)
    assert exc.value.sqlstate == "42501"
    for helper in ("select * from private.release_scan_jobs('w', "
                   "array[row(%s, true, null, true)::private.scan_job_outcome])",):
        with pytest.raises(psycopg.Error) as exc, db.as_role(role) as cur:
            cur.execute(helper, (held,))
        assert exc.value.sqlstate == "42501", "the private rule is not callable either"
    assert job(db, held) == before
    assert release_batch(db, "w", [outcome(held, True)])["released_count"] == 1, "service may"


def test_batch_release_is_not_executable_by_public_anon_or_authenticated_in_the_catalog(
        db: Database) -> None:
    fn = "public.release_job_locks(text, jsonb)"
    rows = db.query("select has_function_privilege('anon', %s, 'execute'), "
                    "has_function_privilege('authenticated', %s, 'execute'), "
                    "has_function_privilege('service_role', %s, 'execute'), "
                    "exists (select 1 from pg_proc p, aclexplode(p.proacl) a "
                    "        where p.oid = %s::regprocedure and a.grantee = 0)",
                    (fn, fn, fn, fn))
    assert rows == [(False, False, True, False)]


# -- G2 under concurrency: claim(batch) → batch release by N workers ---------------------------
def test_g2_concurrent_workers_claim_and_batch_release_each_of_2400_jobs_exactly_once(
        db: Database) -> None:
    users, n_markets = 40, 60
    db.query("insert into public.market_allowlist (market, enabled) "
             "select 'C' || g || '-EUR', true from generate_series(1, %s) g", (n_markets,))
    db.query("insert into auth.users (id, email) select gen_random_uuid(), 'c' || g || '@ex.test' "
             "from generate_series(1, %s) g", (users,))
    db.query("insert into public.trading_allowlist (user_id, market) "
             "select u.id, m.market from auth.users u cross join public.market_allowlist m")
    db.query("insert into public.scan_jobs (user_id, market, interval_seconds, next_run_at) "
             "select user_id, market, 600, now() - random() * interval '1 hour' "
             "from public.trading_allowlist")
    total = users * n_markets
    assert db.scalar("select count(*) from public.scan_jobs") == total

    workers = 8
    barrier = threading.Barrier(workers)
    claimed: dict[str, list[uuid.UUID]] = {}
    failed: dict[str, set[uuid.UUID]] = {}
    answers: dict[str, list[dict[str, Any]]] = {}
    errors: list[BaseException] = []

    def work(name: str, seed: int) -> None:
        rng = random.Random(seed)
        mine: list[uuid.UUID] = []
        my_failures: set[uuid.UUID] = set()
        my_answers: list[dict[str, Any]] = []
        try:
            with connect(db.authenticator_url) as conn:
                barrier.wait(timeout=30)
                while True:
                    with db.as_role("service_role", conn=conn) as cur:
                        cur.execute("select id from public.claim_due_scan_jobs("
                                    "p_worker_id => %s, p_limit => 25)", (name,))
                        batch = [r[0] for r in cur.fetchall()]
                    if not batch:
                        break
                    mine.extend(batch)
                    results = []
                    for job_id in batch:  # one in ten scans fails
                        ok = rng.random() >= 0.1
                        if not ok:
                            my_failures.add(job_id)
                        results.append(outcome(job_id, ok, None if ok else f"boom {job_id}"))
                    answer = db.rpc("release_job_locks", conn=conn, p_worker_id=name,
                                    p_results=Jsonb(results))
                    my_answers.extend(answer["results"])
        except BaseException as exc:  # noqa: BLE001 - surfaced below
            errors.append(exc)
        finally:
            claimed[name], failed[name], answers[name] = mine, my_failures, my_answers

    threads = [threading.Thread(target=work, args=(f"batch-worker-{i}", i))
               for i in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors

    every_claim = [j for ids in claimed.values() for j in ids]
    assert [j for j, n in Counter(every_claim).items() if n > 1] == [], "duplicate claims"
    assert len(every_claim) == total
    assert sum(1 for ids in claimed.values() if ids) >= 2, "the work was not shared at all"
    every_answer = [a for rs in answers.values() for a in rs]
    assert len(every_answer) == total and all(a["released"] for a in every_answer)
    all_failed = set().union(*failed.values())
    stats = db.query(
        "select count(*), min(attempts), max(attempts), count(locked_by), "
        "count(*) filter (where consecutive_failures = 0 and last_success_at = last_run_at "
        "                 and next_run_at = last_run_at + interval '600 seconds'), "
        "count(*) filter (where consecutive_failures = 1 and last_error = 'boom ' || id "
        "                 and next_run_at = last_run_at + interval '30 seconds') "
        "from public.scan_jobs")
    assert stats == [(total, 1, 1, 0, total - len(all_failed), len(all_failed))]
    assert claim(db, "late-worker", limit=1000) == [], "no job is due twice in its period"
