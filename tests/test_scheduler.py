"""G2 — scheduler concurrency safety, on a real PostgreSQL (migrations/*_scheduler.sql).

A scan job is leased by at most one worker at a time (claim_due_scan_jobs: FOR UPDATE SKIP LOCKED
plus the lease re-check on the locked row); only the holder can extend or release the lease; a
crashed worker's lease expires and the job is claimed again; users manage their jobs through RLS
and column grants but never the lease.
"""

from __future__ import annotations

import threading
import uuid
from collections import Counter
from datetime import timedelta
from typing import Any

import psycopg
import pytest

from tests.pg import Database, connect

SERVICE_ONLY = {
    "claim_due_scan_jobs": {"p_worker_id": "w"},
    "heartbeat_scan_job": {"p_job_id": uuid.uuid4(), "p_worker_id": "w"},
    "release_job_lock": {"p_job_id": uuid.uuid4(), "p_worker_id": "w", "p_succeeded": True},
    "cleanup_expired_locks": {},
    "debug_check_locks": {},
}


# -- set-up helpers (as the superuser) --------------------------------------------------------
def add_market(db: Database, market: str, *, enabled: bool = True) -> None:
    db.query("insert into public.market_allowlist (market, enabled) values (%s, %s)",
             (market, enabled))


def allow(db: Database, user_id: uuid.UUID, market: str, *, enabled: bool = True) -> None:
    db.query("insert into public.trading_allowlist (user_id, market, enabled) values (%s, %s, %s)",
             (user_id, market, enabled))


def add_job(db: Database, user_id: uuid.UUID, market: str, *, interval: int = 300,
            due_seconds_ago: int = 1, enabled: bool = True) -> uuid.UUID:
    return db.scalar(
        "insert into public.scan_jobs (user_id, market, interval_seconds, enabled, next_run_at) "
        "values (%s, %s, %s, %s, now() - make_interval(secs => %s)) returning id",
        (user_id, market, interval, enabled, due_seconds_ago))


def job(db: Database, job_id: uuid.UUID) -> dict[str, Any]:
    with db.connect() as conn, conn.cursor() as cur:
        cur.execute("select * from public.scan_jobs where id = %s", (job_id,))
        row = cur.fetchone()
        assert row is not None
        return dict(zip([c.name for c in cur.description or []], row, strict=True))


def expire_lease(db: Database, job_id: uuid.UUID) -> None:
    """What the passing of time does to a lease: it ends in the past."""
    db.query("update public.scan_jobs set locked_at = now() - interval '10 minutes', "
             "lock_expires_at = now() - interval '1 second' where id = %s", (job_id,))


def claim(db: Database, worker: str, limit: int = 10, lock_seconds: int = 300) -> list[uuid.UUID]:
    rows = db.rpc_rows("claim_due_scan_jobs", p_worker_id=worker, p_limit=limit,
                       p_lock_seconds=lock_seconds)
    return [r["id"] for r in rows]


@pytest.fixture
def one_job(db: Database) -> tuple[Database, uuid.UUID]:
    add_market(db, "BTC-EUR")
    user = db.create_user()
    allow(db, user, "BTC-EUR")
    return db, add_job(db, user, "BTC-EUR", interval=300)


# -- G2: concurrent draining ------------------------------------------------------------------
def test_g2_concurrent_workers_claim_each_of_2000_due_jobs_exactly_once(db: Database) -> None:
    users, markets = 40, 50
    db.query("insert into public.market_allowlist (market, enabled) "
             "select 'M' || g || '-EUR', true from generate_series(1, %s) g", (markets,))
    db.query("insert into auth.users (id, email) select gen_random_uuid(), 'u' || g || '@ex.test' "
             "from generate_series(1, %s) g", (users,))
    db.query("insert into public.trading_allowlist (user_id, market) "
             "select u.id, m.market from auth.users u cross join public.market_allowlist m")
    db.query("insert into public.scan_jobs (user_id, market, interval_seconds, next_run_at) "
             "select user_id, market, 600, now() - random() * interval '1 hour' "
             "from public.trading_allowlist")
    assert db.scalar("select count(*) from public.scan_jobs") == 2000

    workers = 8
    barrier = threading.Barrier(workers)
    claimed: dict[str, list[uuid.UUID]] = {}
    errors: list[BaseException] = []

    def work(name: str) -> None:
        mine: list[uuid.UUID] = []
        try:
            with connect(db.authenticator_url) as conn:
                barrier.wait(timeout=30)
                while True:
                    with db.as_role("service_role", conn=conn) as cur:
                        cur.execute("select id from public.claim_due_scan_jobs("
                                    "p_worker_id => %s, p_limit => 25, p_lock_seconds => 300)",
                                    (name,))
                        batch = [r[0] for r in cur.fetchall()]
                    if not batch:
                        break
                    mine.extend(batch)
                    for job_id in batch:  # the scan "succeeds": release as the holder
                        with db.as_role("service_role", conn=conn) as cur:
                            cur.execute("select public.release_job_lock(%s, %s, true)",
                                        (job_id, name))
                            result = cur.fetchone()[0]  # type: ignore[index]
                        assert result["released"] is True, result
        except BaseException as exc:  # noqa: BLE001 - surfaced below
            errors.append(exc)
        finally:
            claimed[name] = mine

    threads = [threading.Thread(target=work, args=(f"worker-{i}",)) for i in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors

    every_claim = [j for ids in claimed.values() for j in ids]
    duplicates = [j for j, n in Counter(every_claim).items() if n > 1]
    assert duplicates == []
    assert len(every_claim) == 2000
    # How the 2000 jobs spread over the workers is the OS scheduler's business (on a busy machine
    # one worker may drain them all); that workers never wait for each other is pinned
    # deterministically by the open-claim test below.
    stats = db.query("select count(*), min(attempts), max(attempts), count(locked_by), "
                     "count(*) filter (where last_success_at is not null and "
                     "next_run_at > now() + interval '9 minutes') from public.scan_jobs")
    assert stats == [(2000, 1, 1, 0, 2000)]


def test_g2_a_worker_holding_an_open_claim_never_blocks_another_worker(db: Database) -> None:
    """SKIP LOCKED: while worker A's claim transaction is still open (its row lock on the oldest
    due job held, nothing committed), worker B gets the other due job at once. Without SKIP
    LOCKED, B's ordered scan reaches A's row first and waits on it: lock_timeout turns that wait
    into error 55P03 instead of a hang."""
    add_market(db, "BTC-EUR")
    add_market(db, "ETH-EUR")
    user = db.create_user()
    allow(db, user, "BTC-EUR")
    allow(db, user, "ETH-EUR")
    oldest = add_job(db, user, "BTC-EUR", due_seconds_ago=120)
    other = add_job(db, user, "ETH-EUR", due_seconds_ago=10)

    with connect(db.authenticator_url) as worker_a, connect(db.authenticator_url) as worker_b:
        with db.as_role("service_role", conn=worker_a) as a:
            a.execute("select id from public.claim_due_scan_jobs("
                      "p_worker_id => 'worker-a', p_limit => 1, p_lock_seconds => 300)")
            assert [r[0] for r in a.fetchall()] == [oldest]
            # A's transaction is still open here.
            with db.as_role("service_role", conn=worker_b) as b:
                b.execute("set local lock_timeout = '1s'")
                b.execute("select id from public.claim_due_scan_jobs("
                          "p_worker_id => 'worker-b', p_limit => 10, p_lock_seconds => 300)")
                assert [r[0] for r in b.fetchall()] == [other]
            assert job(db, other)["locked_by"] == "worker-b"  # B committed while A was open
            assert job(db, oldest)["locked_by"] is None  # A's lease is not committed yet
    assert (job(db, oldest)["locked_by"], job(db, other)["locked_by"]) == ("worker-a", "worker-b")


def test_g2_claim_leases_only_enabled_due_jobs_in_next_run_at_order(db: Database) -> None:
    add_market(db, "BTC-EUR")
    add_market(db, "ETH-EUR")
    add_market(db, "SOL-EUR")
    add_market(db, "ADA-EUR")
    user = db.create_user()
    for m in ("BTC-EUR", "ETH-EUR", "SOL-EUR", "ADA-EUR"):
        allow(db, user, m)
    older = add_job(db, user, "BTC-EUR", due_seconds_ago=120)
    newer = add_job(db, user, "ETH-EUR", due_seconds_ago=10)
    add_job(db, user, "SOL-EUR", due_seconds_ago=-600)  # not due yet
    add_job(db, user, "ADA-EUR", due_seconds_ago=600, enabled=False)

    first = claim(db, "w1", limit=1, lock_seconds=60)
    assert first == [older]
    row = job(db, older)
    assert row["locked_by"] == "w1" and row["attempts"] == 1
    assert row["lock_expires_at"] - row["locked_at"] == timedelta(seconds=60)
    assert claim(db, "w2", limit=10) == [newer]
    assert claim(db, "w3", limit=10) == []


@pytest.mark.parametrize("revoke", [
    "update public.trading_allowlist set enabled = false where market = 'ETH-EUR'",
    "delete from public.trading_allowlist where market = 'ETH-EUR'",
    "update public.market_allowlist set enabled = false where market = 'ETH-EUR'",
])
def test_g4_jobs_for_a_market_dropped_from_either_allowlist_are_not_claimed(
        db: Database, revoke: str) -> None:
    add_market(db, "BTC-EUR")
    add_market(db, "ETH-EUR")
    user = db.create_user()
    allow(db, user, "BTC-EUR")
    allow(db, user, "ETH-EUR")
    kept = add_job(db, user, "BTC-EUR", due_seconds_ago=10)
    dropped = add_job(db, user, "ETH-EUR", due_seconds_ago=120)
    db.query(revoke)

    assert claim(db, "w1", limit=10) == [kept]
    assert job(db, dropped)["locked_by"] is None and job(db, dropped)["attempts"] == 0


@pytest.mark.parametrize("args", [
    {"p_worker_id": ""}, {"p_worker_id": "   "}, {"p_worker_id": None},
    {"p_worker_id": "w", "p_limit": 0}, {"p_worker_id": "w", "p_limit": 1001},
    {"p_worker_id": "w", "p_lock_seconds": 9}, {"p_worker_id": "w", "p_lock_seconds": 3601},
])
def test_g2_claim_rejects_invalid_arguments_with_22023(db: Database, args: dict[str, Any]) -> None:
    with pytest.raises(psycopg.Error) as exc:
        db.rpc_rows("claim_due_scan_jobs", **args)
    assert exc.value.sqlstate == "22023"


# -- G2: leases --------------------------------------------------------------------------------
def test_g2_expired_lease_is_reclaimed_by_another_worker_and_old_holder_loses_it(
        one_job: tuple[Database, uuid.UUID]) -> None:
    db, job_id = one_job
    assert claim(db, "crashed-worker") == [job_id]
    assert claim(db, "other-worker") == [], "a live lease must not be claimable"

    expire_lease(db, job_id)
    assert claim(db, "other-worker") == [job_id]
    row = job(db, job_id)
    assert row["locked_by"] == "other-worker" and row["attempts"] == 2

    late = db.rpc("release_job_lock", p_job_id=job_id, p_worker_id="crashed-worker",
                  p_succeeded=True)
    assert late["released"] is False and late["reason"] == "not_lock_owner"
    assert db.rpc("heartbeat_scan_job", p_job_id=job_id, p_worker_id="crashed-worker") is False
    assert job(db, job_id)["locked_by"] == "other-worker", "the old holder changed nothing"

    done = db.rpc("release_job_lock", p_job_id=job_id, p_worker_id="other-worker",
                  p_succeeded=True)
    assert done["released"] is True and done["reason"] == "succeeded"
    row = job(db, job_id)
    assert row["locked_by"] is None and row["locked_at"] is None and row["lock_expires_at"] is None
    assert row["next_run_at"] - row["last_run_at"] == timedelta(seconds=300)
    assert row["last_success_at"] == row["last_run_at"]


def test_g2_heartbeat_extends_the_lease_only_for_its_holder(
        one_job: tuple[Database, uuid.UUID]) -> None:
    db, job_id = one_job
    claim(db, "holder", lock_seconds=30)
    before = job(db, job_id)["lock_expires_at"]

    assert db.rpc("heartbeat_scan_job", p_job_id=job_id, p_worker_id="intruder",
                  p_lock_seconds=600) is False
    assert job(db, job_id)["lock_expires_at"] == before

    assert db.rpc("heartbeat_scan_job", p_job_id=job_id, p_worker_id="holder",
                  p_lock_seconds=600) is True
    after = job(db, job_id)
    assert after["locked_by"] == "holder"
    assert after["lock_expires_at"] - before > timedelta(seconds=500)

    assert db.rpc("heartbeat_scan_job", p_job_id=uuid.uuid4(), p_worker_id="holder") is False
    with pytest.raises(psycopg.Error) as exc:
        db.rpc("heartbeat_scan_job", p_job_id=job_id, p_worker_id="holder", p_lock_seconds=5)
    assert exc.value.sqlstate == "22023"


def test_g2_release_answers_not_found_and_not_lock_owner_without_changing_the_job(
        one_job: tuple[Database, uuid.UUID]) -> None:
    db, job_id = one_job
    missing = db.rpc("release_job_lock", p_job_id=uuid.uuid4(), p_worker_id="w",
                     p_succeeded=True)
    assert missing == {"released": False, "next_run_at": None, "reason": "not_found"}

    unlocked = db.rpc("release_job_lock", p_job_id=job_id, p_worker_id="w", p_succeeded=True)
    assert unlocked["released"] is False and unlocked["reason"] == "not_lock_owner"

    claim(db, "holder")
    before = job(db, job_id)
    foreign = db.rpc("release_job_lock", p_job_id=job_id, p_worker_id="w", p_succeeded=False,
                     p_error="boom")
    assert foreign["released"] is False and foreign["reason"] == "not_lock_owner"
    assert job(db, job_id) == before


def test_g2_failure_backoff_doubles_from_30_seconds_and_is_capped_at_the_interval(
        one_job: tuple[Database, uuid.UUID]) -> None:
    db, job_id = one_job  # interval 300 s
    expected = [30, 60, 120, 240, 300, 300]
    for failures, delay in enumerate(expected, start=1):
        db.query("update public.scan_jobs set next_run_at = now() - interval '1 second' "
                 "where id = %s", (job_id,))
        assert claim(db, "w") == [job_id]
        result = db.rpc("release_job_lock", p_job_id=job_id, p_worker_id="w",
                        p_succeeded=False, p_error=f"exchange down #{failures}")
        assert result["released"] is True and result["reason"] == "failed"
        assert result["consecutive_failures"] == failures
        row = job(db, job_id)
        assert row["consecutive_failures"] == failures
        assert row["next_run_at"] - row["last_run_at"] == timedelta(seconds=delay)
        assert row["last_error"] == f"exchange down #{failures}"
        assert row["locked_by"] is None

    db.query("update public.scan_jobs set next_run_at = now() - interval '1 second' "
             "where id = %s", (job_id,))
    claim(db, "w")
    db.rpc("release_job_lock", p_job_id=job_id, p_worker_id="w", p_succeeded=True)
    row = job(db, job_id)
    assert row["consecutive_failures"] == 0
    assert row["next_run_at"] - row["last_run_at"] == timedelta(seconds=300)
    assert row["attempts"] == len(expected) + 1


def test_g2_release_truncates_a_long_error(one_job: tuple[Database, uuid.UUID]) -> None:
    db, job_id = one_job
    claim(db, "w")
    db.rpc("release_job_lock", p_job_id=job_id, p_worker_id="w", p_succeeded=False,
           p_error="x" * 10_000)
    assert len(job(db, job_id)["last_error"]) == 2000


def test_g2_cleanup_expired_locks_frees_only_expired_leases_and_debug_check_locks_shows_them(
        db: Database) -> None:
    add_market(db, "BTC-EUR")
    add_market(db, "ETH-EUR")
    add_market(db, "SOL-EUR")
    user = db.create_user()
    jobs = []
    for m in ("BTC-EUR", "ETH-EUR", "SOL-EUR"):
        allow(db, user, m)
        jobs.append(add_job(db, user, m))
    assert sorted(claim(db, "w", limit=3)) == sorted(jobs)
    expire_lease(db, jobs[0])
    expire_lease(db, jobs[1])

    locks = {r["job_id"]: r for r in db.rpc_rows("debug_check_locks")}
    assert set(locks) == set(jobs)
    assert {j: locks[j]["expired"] for j in jobs} == {jobs[0]: True, jobs[1]: True,
                                                       jobs[2]: False}
    assert all(r["locked_by"] == "w" and r["user_id"] == user for r in locks.values())
    assert locks[jobs[2]]["market"] == "SOL-EUR"

    assert db.rpc("cleanup_expired_locks") == 2
    assert db.rpc("cleanup_expired_locks") == 0
    assert [r["job_id"] for r in db.rpc_rows("debug_check_locks")] == [jobs[2]]
    freed = job(db, jobs[0])
    assert freed["locked_by"] is None and freed["consecutive_failures"] == 1
    assert "lease expired" in freed["last_error"]
    # Freed jobs are due again at once; the live lease stays with its holder.
    assert sorted(claim(db, "w2", limit=10)) == sorted(jobs[:2])


def test_g2_cleanup_expired_locks_locks_rows_in_id_order_like_the_batch_release(
        db: Database) -> None:
    """Two expired leases, the higher id stored first. A holds the lower id's row lock; cleanup
    (B) must then wait on that row before it has locked the higher one — id order, as
    release_job_locks locks — so A can still take the higher row without waiting. Cleanup in
    storage order would hold the higher row already (A's NOWAIT fails with 55P03), the
    opposite order of a batch release of the same two jobs: a deadlock (40P01)."""
    add_market(db, "BTC-EUR")
    add_market(db, "ETH-EUR")
    user = db.create_user()
    low, high = uuid.UUID(int=1), uuid.UUID(int=2**128 - 1)
    for job_id, market in ((high, "BTC-EUR"), (low, "ETH-EUR")):  # storage order: high first
        allow(db, user, market)
        db.query("insert into public.scan_jobs (id, user_id, market, locked_by, locked_at, "
                 "lock_expires_at) values (%s, %s, %s, 'crashed', now() - interval '10 minutes', "
                 "now() - interval '1 second')", (job_id, user, market))
    assert db.scalar("select array_agg(id order by ctid) from public.scan_jobs") == [high, low]

    freed: list[int] = []
    with connect(db.url) as holder, connect(db.url, autocommit=True) as watcher:
        holder.execute("select 1 from public.scan_jobs where id = %s for update", (low,))
        cleaner = threading.Thread(target=lambda: freed.append(db.rpc("cleanup_expired_locks")))
        cleaner.start()
        # Until cleanup waits on a row lock (B is blocked, holding whatever it locked before).
        for _ in range(3000):
            waiting = watcher.execute(
                "select count(*) from pg_stat_activity where wait_event_type = 'Lock' "
                "and query like '%%cleanup_expired_locks%%'").fetchone()
            if waiting and waiting[0] == 1:
                break
            threading.Event().wait(0.01)
        else:
            raise AssertionError("cleanup_expired_locks never waited on the held row")
        holder.execute("select 1 from public.scan_jobs where id = %s for update nowait", (high,))
        holder.commit()
        cleaner.join(timeout=30)
    assert freed == [2]
    assert job(db, low)["locked_by"] is None and job(db, high)["locked_by"] is None


# -- G2 / G8: what users can and cannot do through PostgREST -----------------------------------
@pytest.fixture
def tenants(db: Database) -> dict[str, Any]:
    add_market(db, "BTC-EUR")
    add_market(db, "ETH-EUR")
    add_market(db, "DOGE-EUR", enabled=False)
    alice, bob = db.create_user(), db.create_user()
    allow(db, alice, "BTC-EUR")
    allow(db, alice, "ETH-EUR", enabled=False)
    allow(db, alice, "DOGE-EUR")
    allow(db, bob, "BTC-EUR")
    return {"db": db, "alice": alice, "bob": bob,
            "bob_job": add_job(db, bob, "BTC-EUR")}


def test_user_creates_a_job_for_an_own_allowlisted_market_and_changes_only_enabled_and_interval(
        tenants: dict[str, Any]) -> None:
    db, alice = tenants["db"], tenants["alice"]
    with db.as_user(alice) as cur:
        cur.execute("insert into public.scan_jobs (market, interval_seconds) "
                    "values ('BTC-EUR', 120) returning id, user_id, locked_by, attempts")
        job_id, owner, locked_by, attempts = cur.fetchone()
    assert owner == alice and locked_by is None and attempts == 0
    with db.as_user(alice) as cur:
        cur.execute("update public.scan_jobs set enabled = false, interval_seconds = 3600 "
                    "where id = %s", (job_id,))
        assert cur.rowcount == 1
    row = job(db, job_id)
    assert row["enabled"] is False and row["interval_seconds"] == 3600
    with pytest.raises(psycopg.Error) as exc, db.as_user(alice) as cur:
        cur.execute("update public.scan_jobs set interval_seconds = 30 where id = %s", (job_id,))
    assert exc.value.sqlstate == "23514"


def test_user_can_switch_off_but_not_on_a_job_whose_market_left_the_allowlist(
        tenants: dict[str, Any]) -> None:
    db, alice = tenants["db"], tenants["alice"]
    job_id = add_job(db, alice, "BTC-EUR")
    db.query("update public.trading_allowlist set enabled = false "
             "where user_id = %s and market = 'BTC-EUR'", (alice,))
    with db.as_user(alice) as cur:
        cur.execute("update public.scan_jobs set enabled = false where id = %s", (job_id,))
        assert cur.rowcount == 1
    with pytest.raises(psycopg.Error) as exc, db.as_user(alice) as cur:
        cur.execute("update public.scan_jobs set enabled = true where id = %s", (job_id,))
    assert exc.value.sqlstate == "42501"
    assert job(db, job_id)["enabled"] is False


USER_FORBIDDEN_ASSIGNMENTS = [
    "locked_by = 'me'", "locked_at = now()", "lock_expires_at = now() + interval '1 day'",
    "attempts = 0", "consecutive_failures = 0", "next_run_at = now()", "last_error = null",
    "last_success_at = now()", "user_id = user_id", "market = 'BTC-EUR'",
]


def test_user_cannot_write_lock_or_bookkeeping_columns_42501(tenants: dict[str, Any]) -> None:
    db, alice = tenants["db"], tenants["alice"]
    job_id = add_job(db, alice, "BTC-EUR")
    before = job(db, job_id)
    for assignment in USER_FORBIDDEN_ASSIGNMENTS:
        with pytest.raises(psycopg.Error) as exc, db.as_user(alice) as cur:
            cur.execute(f"update public.scan_jobs set {assignment} where id = %s",  # noqa: S608
                        (job_id,))
        assert exc.value.sqlstate == "42501", assignment
    assert job(db, job_id) == before


def test_user_cannot_insert_a_job_with_lock_columns_42501(tenants: dict[str, Any]) -> None:
    db, alice = tenants["db"], tenants["alice"]
    with pytest.raises(psycopg.Error) as exc, db.as_user(alice) as cur:
        cur.execute("insert into public.scan_jobs (market, locked_by, locked_at, lock_expires_at) "
                    "values ('BTC-EUR', 'me', now(), now() + interval '1 day')")
    assert exc.value.sqlstate == "42501"


@pytest.mark.parametrize("market,why", [
    ("SOL-EUR", "not in any allowlist"),
    ("ETH-EUR", "disabled in the user's allowlist"),
    ("DOGE-EUR", "disabled in the global market_allowlist"),
])
def test_user_cannot_insert_a_job_for_a_market_outside_their_allowlist(
        tenants: dict[str, Any], market: str, why: str) -> None:
    db, alice = tenants["db"], tenants["alice"]
    if market == "SOL-EUR":
        add_market(db, "SOL-EUR")
    with pytest.raises(psycopg.Error) as exc, db.as_user(alice) as cur:
        cur.execute("insert into public.scan_jobs (market) values (%s)", (market,))
    assert exc.value.sqlstate == "42501", why


def test_user_cannot_insert_a_job_for_another_user(tenants: dict[str, Any]) -> None:
    db, alice, bob = tenants["db"], tenants["alice"], tenants["bob"]
    with pytest.raises(psycopg.Error) as exc, db.as_user(alice) as cur:
        cur.execute("insert into public.scan_jobs (user_id, market) values (%s, 'BTC-EUR')",
                    (bob,))
    assert exc.value.sqlstate == "42501"


def test_user_cannot_see_change_or_delete_other_users_jobs(tenants: dict[str, Any]) -> None:
    db, alice, bob_job = tenants["db"], tenants["alice"], tenants["bob_job"]
    own = add_job(db, alice, "BTC-EUR")
    with db.as_user(alice) as cur:
        cur.execute("select id from public.scan_jobs")
        assert [r[0] for r in cur.fetchall()] == [own]
        cur.execute("update public.scan_jobs set enabled = false where id = %s", (bob_job,))
        assert cur.rowcount == 0
        cur.execute("delete from public.scan_jobs where id = %s", (bob_job,))
        assert cur.rowcount == 0
        cur.execute("delete from public.scan_jobs where id = %s", (own,))
        assert cur.rowcount == 1
    assert job(db, bob_job)["enabled"] is True
    with pytest.raises(psycopg.Error) as exc, db.as_anon() as cur:
        cur.execute("select * from public.scan_jobs")
    assert exc.value.sqlstate == "42501"


@pytest.mark.parametrize("role", ["anon", "authenticated"])
def test_scheduler_rpcs_are_service_only(tenants: dict[str, Any], role: str) -> None:
    db = tenants["db"]
    user = tenants["alice"] if role == "authenticated" else None
    for fn, args in SERVICE_ONLY.items():
        with pytest.raises(psycopg.Error) as exc:
            db.rpc_rows(fn, role=role, user_id=user, **args)
        assert exc.value.sqlstate == "42501", fn
    assert job(db, tenants["bob_job"])["locked_by"] is None
    assert claim(db, "service-worker") == [tenants["bob_job"]], "service_role may"
