"""DirectRpc against the real database: every RPC the functions use, one round trip each (counted
on the wire), the role switch really applied, Decimal both ways, the error table, dropped and idle-
killed connections, timeouts, names that never reach the SQL, and no password in any error.

The tests log in as `authenticator` (what PostgREST and the pooler URL use); RPCs run as
service_role only because DirectRpc switches the role per call.
"""

from __future__ import annotations

import logging
import multiprocessing
import time
import traceback
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import psycopg
import pytest

from scripts.wireturns import WireTurns
from shared.rpc.direct import DirectRpc
from shared.rpc.errors import (
    RpcError,
    RpcInvalidArgument,
    RpcPermissionDenied,
    RpcUnavailable,
    RpcUndefinedFunction,
)
from shared.rpc.port import RpcPort
from tests.pg import Database
from tests.rpc_cases import SQLSTATE_CASES, SqlstateCase, install_test_functions
from tests.test_execution_support import (  # one database per module: db, module_db, fresh_db
    _fresh_db_fixture,  # noqa: F401
    _module_db_fixture,  # noqa: F401
    _shared_db_fixture,  # noqa: F401
    allow_market,
    allow_user_market,
    new_market,
    new_user,
    scalar,
    set_settings,
    sql,
)

MODEL = "rpc-test-model"


@pytest.fixture(scope="module")
def rpc_db(module_db: Database) -> Database:
    install_test_functions(module_db)
    module_db.query("insert into public.gpt_model_prices (model, input_usd_per_mtok, "
                    "cached_input_usd_per_mtok, output_usd_per_mtok) values (%s, %s, %s, %s)",
                    (MODEL, Decimal("2.00"), Decimal("0.50"), Decimal("8.00")))
    return module_db


@pytest.fixture
def rpc(rpc_db: Database) -> Iterator[DirectRpc]:
    port = DirectRpc(rpc_db.authenticator_url, min_size=1, max_size=2)
    try:
        yield port
    finally:
        port.close()


@pytest.fixture
def wire(rpc_db: Database) -> Iterator[WireTurns]:
    with WireTurns("127.0.0.1", rpc_db.cluster.port) as proxy:
        yield proxy


def proxied_url(db: Database, proxy: WireTurns, user: str = "authenticator") -> str:
    return f"postgresql://{user}@127.0.0.1:{proxy.port}/{db.name}"


@pytest.fixture
def counted(rpc_db: Database, wire: WireTurns) -> Iterator[tuple[DirectRpc, WireTurns]]:
    """A one-connection DirectRpc behind the turn-counting proxy, connection already open."""
    port = DirectRpc(proxied_url(rpc_db, wire), min_size=1, max_size=1)
    try:
        port.call("t_whoami")  # connect (many turns) before anything is counted
        yield port, wire
    finally:
        port.close()


def turns(proxy: WireTurns, call: Any) -> tuple[int, Any]:
    """Database round trips of `call`, read from the PostgreSQL protocol on the wire (the Syncs
    and Queries the client waited on), however the client library split its writes."""
    proxy.settle()
    before = proxy.round_trips
    try:
        result = call()
    except RpcError as exc:
        result = exc
    proxy.settle()
    assert proxy.unparsed_connections == 0  # every connection was read as PostgreSQL
    return proxy.round_trips - before, result


def no_floats(value: Any) -> bool:
    if isinstance(value, float):
        return False
    if isinstance(value, dict):
        return all(no_floats(v) for v in value.values())
    if isinstance(value, list):
        return all(no_floats(v) for v in value)
    return True


def trader(db: Database, **settings: Any) -> tuple[uuid.UUID, str]:
    user, market = new_user(db), new_market()
    allow_market(db, market)
    allow_user_market(db, user, market)
    set_settings(db, user, trading_enabled=True, **settings)
    return user, market


# -- every RPC the functions use, one round trip each --------------------------------------------
def test_execution_rpcs_each_take_one_round_trip_and_keep_decimals(
        rpc_db: Database, counted: tuple[DirectRpc, WireTurns]) -> None:
    rpc, proxy = counted
    user, market = trader(rpc_db, auto_execute=True, cooldown_seconds=0)
    measured: dict[str, int] = {}

    n, proposal = turns(proxy, lambda: rpc.call("create_trade_proposal", {
        "p_user_id": user, "p_market": market, "p_side": "buy",
        "p_amount_quote": Decimal("10.123456789"), "p_confidence": Decimal("0.9"),
        "p_rationale": "rpc port test", "p_source": "rules"}))
    measured["create_trade_proposal"] = n
    assert proposal["status"] == "approved"  # auto_execute and confidence ≥ min_confidence
    proposal_id = uuid.UUID(proposal["proposal_id"])
    assert scalar(rpc_db, "select amount_quote from public.trade_proposals where id = %s",
                  (proposal_id,)) == Decimal("10.123456789")

    n, claim = turns(proxy, lambda: rpc.call("claim_trade_execution", {
        "p_user_id": user, "p_proposal_id": proposal_id, "p_idempotency_key": "rpc-key-1",
        "p_mode": "paper"}))
    measured["claim_trade_execution"] = n
    assert claim["outcome"] == "claimed", claim
    execution = claim["execution"]
    assert execution["amount_quote"] == Decimal("10.123456789")
    assert isinstance(execution["amount_quote"], Decimal)
    assert uuid.UUID(execution["client_order_id"])  # uuids arrive as strings
    assert no_floats(claim)

    n, recorded = turns(proxy, lambda: rpc.call("record_execution_result", {
        "p_execution_id": execution["id"],
        "p_result": {"status": "filled", "exchange_order_id": "ex-1",
                     "filled_amount": Decimal("0.000123456789"),
                     "filled_amount_quote": Decimal("10.12345678"),
                     "price": Decimal("82000.123456789"), "fee_paid": Decimal("0.0253086"),
                     "fee_currency": "EUR"}}))
    measured["record_execution_result"] = n
    assert recorded["execution"]["status"] == "filled", recorded
    assert no_floats(recorded)
    assert sql(rpc_db, "select amount, amount_quote, fee_paid from public.trade_history "
                       "where execution_id = %s", (execution["id"],)) == \
        [(Decimal("0.000123456789"), Decimal("10.12345678"), Decimal("0.0253086"))]

    # An older claim still open is on the reconciler's list, as rows with PostgREST's shapes.
    open_claim = rpc.call("claim_trade_execution", {
        "p_user_id": user, "p_idempotency_key": "rpc-key-2", "p_mode": "paper",
        "p_proposal_id": rpc.call("create_trade_proposal", {
            "p_user_id": user, "p_market": market, "p_side": "buy",
            "p_amount_quote": Decimal("5"), "p_confidence": Decimal("0.95"),
            "p_rationale": "second", "p_source": "rules"})["proposal_id"]})
    assert open_claim["outcome"] == "claimed", open_claim
    sql(rpc_db, "update public.trade_executions set claimed_at = claimed_at - interval '1 hour' "
                "where id = %s", (open_claim["execution"]["id"],))
    n, unsettled = turns(proxy, lambda: rpc.rows("list_unsettled_executions",
                                                 {"p_older_than_seconds": 60, "p_limit": 500}))
    measured["list_unsettled_executions"] = n
    mine = [row for row in unsettled if row["id"] == open_claim["execution"]["id"]]
    assert len(mine) == 1 and mine[0]["status"] == "claimed"
    # A whole amount is still a Decimal (PostgreSQL renders numeric 5 as `5`).
    assert mine[0]["amount_quote"] == 5 and isinstance(mine[0]["amount_quote"], Decimal)
    claimed_at = datetime.fromisoformat(mine[0]["claimed_at"])
    assert claimed_at.utcoffset() == timedelta(0)
    assert execution["id"] not in {row["id"] for row in unsettled}  # filled is settled

    assert measured == dict.fromkeys(measured, 1), measured


def test_scheduler_rpcs_each_take_one_round_trip(
        rpc_db: Database, counted: tuple[DirectRpc, WireTurns]) -> None:
    rpc, proxy = counted
    user, market = trader(rpc_db)
    job_id = scalar(rpc_db, "insert into public.scan_jobs (user_id, market, interval_seconds, "
                            "enabled, next_run_at) values (%s, %s, 300, true, "
                            "now() - interval '1 second') returning id", (user, market))
    worker = f"worker-{uuid.uuid4().hex[:6]}"
    measured: dict[str, int] = {}

    n, jobs = turns(proxy, lambda: rpc.rows("claim_due_scan_jobs",
                                            {"p_worker_id": worker, "p_limit": 1000}))
    measured["claim_due_scan_jobs"] = n
    assert [row["id"] for row in jobs if row["id"] == str(job_id)] == [str(job_id)]
    assert next(row for row in jobs if row["id"] == str(job_id))["locked_by"] == worker

    n, extended = turns(proxy, lambda: rpc.call("heartbeat_scan_job", {
        "p_job_id": job_id, "p_worker_id": worker, "p_lock_seconds": 120}))
    measured["heartbeat_scan_job"] = n
    assert extended is True

    n, released = turns(proxy, lambda: rpc.call("release_job_lock", {
        "p_job_id": job_id, "p_worker_id": worker, "p_succeeded": True}))
    measured["release_job_lock"] = n
    assert released["released"] is True and released["reason"] == "succeeded"
    assert scalar(rpc_db, "select locked_by from public.scan_jobs where id = %s",
                  (job_id,)) is None

    assert measured == dict.fromkeys(measured, 1), measured


def test_budget_and_maintenance_rpcs_each_take_one_round_trip(
        rpc_db: Database, counted: tuple[DirectRpc, WireTurns]) -> None:
    rpc, proxy = counted
    user = new_user(rpc_db)
    measured: dict[str, int] = {}

    n, reservation = turns(proxy, lambda: rpc.call("reserve_gpt_budget", {
        "p_user_id": user, "p_model": MODEL, "p_max_prompt_tokens": 1000,
        "p_max_completion_tokens": 500}))
    measured["reserve_gpt_budget"] = n
    assert reservation["allowed"] is True, reservation
    # (1000 × 2.00 + 500 × 8.00) / 1e6, exactly
    assert reservation["reserved_usd"] == Decimal("0.006")
    assert isinstance(reservation["reserved_usd"], Decimal)

    n, settled = turns(proxy, lambda: rpc.call("settle_gpt_usage", {
        "p_reservation_id": reservation["reservation_id"], "p_prompt_tokens": 900,
        "p_cached_prompt_tokens": 300, "p_completion_tokens": 123,
        "p_request_id": "req-rpc-1"}))
    measured["settle_gpt_usage"] = n
    # (600 × 2.00 + 300 × 0.50 + 123 × 8.00) / 1e6
    assert settled["cost_usd"] == Decimal("0.002334")
    assert settled["status"] == "settled"

    n, budget = turns(proxy, lambda: rpc.call("check_gpt_budget", {"p_user_id": user}))
    measured["check_gpt_budget"] = n
    assert budget["spent_hour_usd"] == Decimal("0.002334")
    assert no_floats(budget)

    n, maintenance = turns(proxy, lambda: rpc.call("run_maintenance"))
    measured["run_maintenance"] = n
    assert set(maintenance) >= {"expired_locks", "expired_proposals", "released_reservations"}
    datetime.fromisoformat(maintenance["ran_at"])

    assert measured == dict.fromkeys(measured, 1), measured


INVALID_CALLS: list[tuple[str, dict[str, Any]]] = [
    ("claim_trade_execution", {"p_user_id": uuid.uuid4(), "p_proposal_id": uuid.uuid4(),
                               "p_idempotency_key": "k", "p_mode": "yolo"}),
    ("record_execution_result", {"p_execution_id": uuid.uuid4(),
                                 "p_result": {"status": "bogus"}}),
    ("list_unsettled_executions", {"p_older_than_seconds": -1}),
    ("create_trade_proposal", {"p_user_id": uuid.uuid4(), "p_market": "BTC-EUR",
                               "p_side": "hold", "p_amount_quote": Decimal("10"),
                               "p_confidence": Decimal("0.9"), "p_rationale": "x",
                               "p_source": "rules"}),
    ("claim_due_scan_jobs", {"p_worker_id": "w", "p_limit": 0}),
    ("heartbeat_scan_job", {"p_job_id": uuid.uuid4(), "p_worker_id": "w", "p_lock_seconds": 5}),
    ("release_job_lock", {"p_job_id": uuid.uuid4(), "p_worker_id": "", "p_succeeded": True}),
    ("reserve_gpt_budget", {"p_user_id": uuid.uuid4(), "p_model": MODEL,
                            "p_max_prompt_tokens": -1, "p_max_completion_tokens": 1}),
    ("settle_gpt_usage", {"p_reservation_id": uuid.uuid4(), "p_prompt_tokens": -1,
                          "p_cached_prompt_tokens": 0, "p_completion_tokens": 0}),
    ("check_gpt_budget", {"p_user_id": None}),
]


@pytest.mark.parametrize(("fn", "args"), INVALID_CALLS, ids=[c[0] for c in INVALID_CALLS])
def test_22023_from_each_rpc_is_rpc_invalid_argument_in_one_round_trip(
        counted: tuple[DirectRpc, WireTurns], fn: str, args: dict[str, Any]) -> None:
    rpc, proxy = counted
    n, error = turns(proxy, lambda: rpc.call(fn, args))
    assert isinstance(error, RpcInvalidArgument), error
    assert error.code == "22023" and error.fn == fn and error.message
    assert n == 1
    assert rpc.call("t_whoami")["auth_role"] == "service_role"  # the connection is usable


# -- the error table (shared with the PostgREST adapter) -----------------------------------------
@pytest.mark.parametrize("case", SQLSTATE_CASES, ids=[c.code for c in SQLSTATE_CASES])
def test_each_sqlstate_maps_to_its_class_with_message_details_and_hint(
        rpc: DirectRpc, case: SqlstateCase) -> None:
    with pytest.raises(RpcError) as caught:
        rpc.call("t_raise", {"p_code": case.code, "p_message": case.message,
                             "p_details": case.details, "p_hint": case.hint})
    error = caught.value
    assert type(error) is case.expected
    assert (error.code, error.message, error.details, error.hint, error.fn) == \
        (case.code, case.message, case.details, case.hint, "t_raise")
    assert error.outcome_unknown is (case.expected is RpcUnavailable)


def test_real_errors_map_like_the_table(rpc: DirectRpc) -> None:
    with pytest.raises(RpcInvalidArgument) as bad_uuid:
        rpc.call("check_gpt_budget", {"p_user_id": "not-a-uuid"})
    assert bad_uuid.value.code == "22P02"
    with pytest.raises(RpcUndefinedFunction) as missing:
        rpc.call("no_such_function", {"p_a": 1})
    assert missing.value.code == "42883"
    with pytest.raises(RpcUndefinedFunction):  # right function, unknown argument name
        rpc.call("check_gpt_budget", {"p_user": str(uuid.uuid4())})
    with pytest.raises(RpcInvalidArgument) as not_an_int:  # '1.5' into an integer parameter
        rpc.call("claim_due_scan_jobs", {"p_worker_id": "w", "p_limit": Decimal("1.5")})
    assert not_an_int.value.code == "22P02"


# -- the role really applies ---------------------------------------------------------------------
@pytest.mark.parametrize("login", ["authenticator", "postgres"])
def test_calls_run_as_service_role_with_postgrest_claims(rpc_db: Database, login: str) -> None:
    url = rpc_db.authenticator_url if login == "authenticator" else rpc_db.url
    with DirectRpc(url, min_size=1, max_size=1) as rpc:
        who = rpc.call("t_whoami")
    assert who == {"auth_role": "service_role", "current_user": "service_role",
                   "session_user": login, "claims": {"role": "service_role"},
                   "method": "POST", "path": "/rpc/t_whoami", "timezone": "UTC",
                   "isolation": "read committed"}


def test_a_function_service_role_may_not_execute_is_refused_although_the_login_role_may(
        rpc_db: Database, rpc: DirectRpc) -> None:
    # The login role itself may run it: only the switch to service_role makes this fail.
    with rpc_db.as_role("authenticator", {}) as cur:
        cur.execute("select public.t_forbidden()")
        assert cur.fetchone() == ("ran",)
    with pytest.raises(RpcPermissionDenied) as denied:
        rpc.call("t_forbidden")
    assert denied.value.code == "42501"
    assert "t_forbidden" in denied.value.message


def test_role_and_claims_end_with_the_call(rpc_db: Database) -> None:
    with DirectRpc(rpc_db.authenticator_url, min_size=1, max_size=1) as rpc:
        rpc.call("t_whoami")
        with rpc._pool.connection() as conn:  # the same, only, pooled connection
            row = conn.execute("select current_user, current_setting('request.jwt.claims', true),"
                               " current_setting('statement_timeout')").fetchone()
    assert row == ("authenticator", "", "0")


def test_a_call_commits_or_rolls_back_as_a_whole(rpc_db: Database, rpc: DirectRpc) -> None:
    note = f"note-{uuid.uuid4()}"
    with pytest.raises(RpcInvalidArgument):
        rpc.call("t_write", {"p_note": note, "p_fail": True})
    assert scalar(rpc_db, "select count(*) from public.t_rpc_writes where note = %s",
                  (note,)) == 0
    row_id = rpc.call("t_write", {"p_note": note, "p_fail": False})
    assert scalar(rpc_db, "select id from public.t_rpc_writes where note = %s", (note,)) == row_id


# -- values in and out ---------------------------------------------------------------------------
def test_arguments_arrive_as_their_declared_types_and_decimals_stay_exact(rpc: DirectRpc) -> None:
    some_id = uuid.uuid4()
    at = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
    echo = rpc.call("t_echo", {
        "p_amount": Decimal("12345678901234567890.123456789012345678"),
        "p_doc": {"fee": Decimal("0.000000001"), "ids": [some_id], "ok": True, "none": None},
        "p_id": some_id, "p_flag": False, "p_count": 7, "p_text": "it's \"quoted\" ünïcode",
        "p_at": at})
    assert echo["types"] == ["numeric", "jsonb", "uuid", "boolean", "integer", "text"]
    assert echo["amount"] == Decimal("12345678901234567890.123456789012345678")
    assert echo["amount_text"] == "12345678901234567890.123456789012345678"
    assert echo["doc"] == {"fee": "0.000000001", "ids": [str(some_id)], "ok": True, "none": None}
    assert (echo["id"], echo["flag"], echo["count"]) == (str(some_id), False, 7)
    assert echo["text"] == "it's \"quoted\" ünïcode"
    assert datetime.fromisoformat(echo["at"]) == at


def test_json_numbers_come_back_as_decimal_never_float(rpc: DirectRpc) -> None:
    numbers = rpc.call("t_numbers")
    assert numbers["money"] == Decimal("12345.678901234567890123456789")
    assert isinstance(numbers["money"], Decimal)
    assert numbers["tenth"] == Decimal("0.1") and isinstance(numbers["tenth"], Decimal)
    assert numbers["int"] == 42 and numbers["big"] == 123456789012345678901234567890
    assert isinstance(numbers["int"], Decimal) and isinstance(numbers["big"], Decimal)
    assert numbers["nested"] == [Decimal("1.50"), 2]
    assert all(isinstance(n, Decimal) for n in numbers["nested"])
    assert no_floats(numbers)


def test_values_that_are_not_money_are_refused_before_sending(
        counted: tuple[DirectRpc, WireTurns]) -> None:
    rpc, proxy = counted
    proxy.settle()
    before = proxy.turns
    with pytest.raises(TypeError):
        rpc.call("t_echo", {"p_amount": 1.5})
    with pytest.raises(ValueError):
        rpc.call("t_echo", {"p_amount": Decimal("NaN")})
    with pytest.raises(ValueError):
        rpc.call("t_echo", {"p_at": datetime(2026, 1, 1)})  # noqa: DTZ001 - the naive one
    with pytest.raises(RpcInvalidArgument):
        rpc.call("t_echo", {"p_text": "nul\x00byte"})
    # found by fuzzing (tests/test_fuzz_rpc.py): a lone surrogate has no UTF-8 encoding, and the
    # driver raised a bare UnicodeEncodeError (not an RpcError) while sending
    for args in ({"p_text": "lone \ud800"}, {"p_doc": {"k": ["\udfff"]}},
                 {"p_doc": {"\ud83d": 1}}):
        with pytest.raises(RpcInvalidArgument) as refused:
            rpc.call("t_echo", args)
        assert refused.value.code == "22021"
    proxy.settle()
    assert proxy.turns == before


@pytest.mark.parametrize(("fn", "args"), [
    ("t_whoami; drop table public.t_rpc_writes", {}),
    ("T_WHOAMI", {}),
    ("public.t_whoami", {}),
    ("t_echo", {"p_text) or (true": "x"}),
    ("t_echo", {'p_text"': "x"}),
])
def test_function_and_argument_names_must_be_identifiers_nothing_is_sent(
        counted: tuple[DirectRpc, WireTurns], rpc_db: Database, fn: str,
        args: dict[str, Any]) -> None:
    rpc, proxy = counted
    proxy.settle()
    before = proxy.turns
    with pytest.raises(ValueError, match="invalid RPC"):
        rpc.call(fn, args)
    proxy.settle()
    assert proxy.turns == before
    assert scalar(rpc_db, "select to_regclass('public.t_rpc_writes') is not null") is True


# -- connections that break ----------------------------------------------------------------------
def test_a_connection_dropped_mid_call_is_unavailable_and_the_write_may_have_happened(
        rpc_db: Database, counted: tuple[DirectRpc, WireTurns]) -> None:
    rpc, proxy = counted
    note = f"cut-{uuid.uuid4()}"
    proxy.cut_next_response()
    with pytest.raises(RpcUnavailable) as caught:
        rpc.call("t_write", {"p_note": note, "p_fail": False})
    assert caught.value.outcome_unknown is True
    # The server committed it; only the answer was lost — why RpcUnavailable means "unknown".
    assert scalar(rpc_db, "select count(*) from public.t_rpc_writes where note = %s",
                  (note,)) == 1
    # The broken connection was discarded; the next call gets a fresh one.
    assert rpc.call("t_whoami")["auth_role"] == "service_role"


def test_an_idle_connection_the_server_closed_is_replaced_not_used(rpc_db: Database) -> None:
    with DirectRpc(rpc_db.authenticator_url, min_size=1, max_size=1) as rpc:
        rpc.call("t_whoami")
        with rpc._pool.connection() as conn:
            pid = conn.info.backend_pid
        rpc_db.query("select pg_terminate_backend(%s)", (pid,))
        deadline = time.monotonic() + 10
        while rpc_db.scalar("select count(*) from pg_stat_activity where pid = %s", (pid,)):
            assert time.monotonic() < deadline, "the backend did not go away"
            time.sleep(0.02)
        assert rpc.call("t_whoami")["auth_role"] == "service_role"


def _in_forked_child(rpc: DirectRpc, db_url: str, out: Any) -> None:
    """In a child forked after the parent used `rpc`: which backend serves the child, and does a
    call still work after the server closed that backend?"""
    try:
        rpc.call("t_whoami")
        with rpc._pool.connection() as conn:
            backend = conn.info.backend_pid
        with psycopg.connect(db_url, autocommit=True) as admin:
            admin.execute("select pg_terminate_backend(%s)", (backend,))
            deadline = time.monotonic() + 10
            while admin.execute("select count(*) from pg_stat_activity where pid = %s",
                                (backend,)).fetchone() != (0,):
                if time.monotonic() > deadline:
                    break
                time.sleep(0.02)
        role = rpc.call("t_whoami")["auth_role"]
        out.put((backend, role))
    except Exception as exc:  # noqa: BLE001 - reported to the parent
        out.put((None, f"{type(exc).__name__}: {exc}"))


def test_a_forked_child_opens_its_own_pool_and_replaces_a_broken_connection(
        rpc_db: Database) -> None:
    """functions-framework imports main.py in gunicorn's master and forks the worker (found by
    the chaos soak: scan_scheduler built its port at import). A pool opened before the fork has
    no maintenance threads in the child and its connections are the parent's: the child must
    use a pool of its own, which replaces a connection the server closed; the parent's is
    untouched."""
    with DirectRpc(rpc_db.authenticator_url, min_size=1, max_size=1, pool_timeout=3) as rpc:
        rpc.call("t_whoami")
        with rpc._pool.connection() as conn:
            parent_backend = conn.info.backend_pid
        ctx = multiprocessing.get_context("fork")
        out = ctx.Queue()
        child = ctx.Process(target=_in_forked_child, args=(rpc, rpc_db.url, out))
        child.start()
        child_backend, role = out.get(timeout=60)
        child.join(timeout=30)
        assert role == "service_role", role
        assert child_backend != parent_backend  # never the parent's socket
        assert rpc.call("t_whoami")["auth_role"] == "service_role"
        with rpc._pool.connection() as conn:
            assert conn.info.backend_pid == parent_backend


def test_a_statement_timeout_is_unavailable(rpc_db: Database) -> None:
    with DirectRpc(rpc_db.authenticator_url, min_size=1, max_size=1,
                   statement_timeout=0.2) as rpc:
        with pytest.raises(RpcUnavailable) as caught:
            rpc.call("t_sleep", {"p_seconds": 30})
        assert caught.value.code == "57014"
        assert rpc.call("t_sleep", {"p_seconds": 0}) is True


def test_no_free_connection_in_time_is_unavailable(rpc_db: Database) -> None:
    with DirectRpc(rpc_db.authenticator_url, min_size=1, max_size=1, pool_timeout=0.2) as rpc:
        with rpc._pool.connection():  # the only connection is busy
            with pytest.raises(RpcUnavailable):
                rpc.call("t_whoami")


def test_close_releases_every_connection(rpc_db: Database) -> None:
    def connections() -> int:
        return int(rpc_db.scalar("select count(*) from pg_stat_activity where datname = %s and "
                                 "usename = 'authenticator' and application_name = 'rpc-close'",
                                 (rpc_db.name,)))

    rpc = DirectRpc(rpc_db.authenticator_url + "?application_name=rpc-close", min_size=2,
                    max_size=2)
    rpc.call("t_whoami")
    deadline = time.monotonic() + 10
    while connections() < 2:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    rpc.close()
    while connections() > 0:
        assert time.monotonic() < deadline, "connections left open after close()"
        time.sleep(0.02)
    with pytest.raises(RpcUnavailable):
        rpc.call("t_whoami")


def test_no_password_in_errors_reprs_or_logs(rpc_db: Database,
                                             caplog: pytest.LogCaptureFixture) -> None:
    password = "pw-" + uuid.uuid4().hex
    # A port nobody listens on: the pool keeps failing to connect.
    url = f"postgresql://authenticator:{password}@127.0.0.1:1/{rpc_db.name}"
    caplog.set_level(logging.DEBUG)
    with DirectRpc(url, min_size=1, max_size=1, pool_timeout=0.5, connect_timeout=2) as rpc:
        with pytest.raises(RpcUnavailable) as caught:
            rpc.call("t_whoami")
        text = "".join(traceback.format_exception(caught.value))
        for shown in (str(caught.value), repr(caught.value), text, repr(rpc), caplog.text):
            assert password not in shown
    # libpq's own message would quote the password here; DirectRpc says less.
    with pytest.raises(ValueError) as malformed:
        DirectRpc(f"postgresql://u:{password}@h/db?{password}")
    assert password not in "".join(traceback.format_exception(malformed.value))


def test_direct_rpc_is_an_rpc_port(rpc: DirectRpc) -> None:
    assert isinstance(rpc, RpcPort)


def test_one_port_serves_many_threads_within_its_pool_size(rpc_db: Database) -> None:
    def backends() -> int:
        return int(rpc_db.scalar("select count(*) from pg_stat_activity where datname = %s and "
                                 "application_name = 'rpc-threads'", (rpc_db.name,)))

    peak = 0
    with DirectRpc(rpc_db.authenticator_url + "?application_name=rpc-threads", min_size=1,
                   max_size=4) as rpc:
        def work(i: int) -> list[str]:
            nonlocal peak
            roles = []
            for _ in range(20):
                roles.append(rpc.call("t_whoami")["auth_role"])
                peak = max(peak, backends()) if i == 0 else peak
            return roles

        with ThreadPoolExecutor(max_workers=16) as pool:
            results = [role for roles in pool.map(work, range(16)) for role in roles]
        assert backends() <= 4
    assert results == ["service_role"] * 320
    assert 1 <= peak <= 4
