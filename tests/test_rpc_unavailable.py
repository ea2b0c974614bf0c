"""A pooler's FATAL or a broken connection is "unavailable" on every road, and names its cause.

Hosted functions reach the database through Supabase's transaction-mode pooler. When it has no
server connection for a client in time it answers `FATAL XX000 (ECHECKOUTTIMEOUT) …` (Supavisor)
or `FATAL 08P01 query_wait_timeout` (PgBouncer) and closes the connection; PostgREST passes such
failures on as PGRST000/PGRST001 (503, libpq's text in `details`), PGRST003 (504, its own pool), or
an XX000 500. Each must be RpcUnavailable (a 503 with nothing sent, never a 500), with a `cause`
the 503's log line shows: pool_timeout, pooler_timeout, pooler_error, connection_lost, …

- the PostgREST road with pytest-httpx, the request path included (503 and its log line);
- the direct road against a real PgBouncer (tests/pgbouncer.py) whose only server connection is
  held, with query_wait_timeout = 1: a pipelined call (what DirectRpc sends) and a plain query.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import Any

import httpx
import psycopg
import pytest
from pytest_httpx import HTTPXMock

from shared.api import steplog
from shared.execution.runtime import Runtime
from shared.rpc.direct import DirectRpc, _translate
from shared.rpc.errors import RpcError, RpcUnavailable, error_for
from shared.rpc.postgrest import PostgrestRpc
from tests.pg import Database
from tests.pgbouncer import PgBouncer
from tests.test_execute_path import FakeExchange, ScriptedRpc, execute, request, runtime
from tests.test_execution_support import (  # one database per module
    _fresh_db_fixture,  # noqa: F401
    _module_db_fixture,  # noqa: F401
    _shared_db_fixture,  # noqa: F401
)

SUPABASE_URL = "https://unavailable.supabase.co"
RPC_URL = f"{SUPABASE_URL}/rest/v1/rpc"
SERVICE_KEY = "sb_secret_unavailable-" + "u" * 24
SUPAVISOR_CHECKOUT = "(ECHECKOUTTIMEOUT) checkout timeout"
LIBPQ_CLOSED = ("server closed the connection unexpectedly\n\tThis probably means the server "
                "terminated abnormally\n\tbefore or while processing the request.")

# (status, PostgREST body, expected cause); every one is RpcUnavailable.
POSTGREST_UNAVAILABLE: dict[str, tuple[int, dict[str, Any], str]] = {
    "supavisor-checkout-timeout-as-xx000": (
        500, {"code": "XX000", "message": SUPAVISOR_CHECKOUT, "details": None, "hint": None},
        "pooler_timeout"),
    "supavisor-refusal-as-xx000": (
        500, {"code": "XX000", "message": "(EMAXCONNSESSION) max clients reached in session mode",
              "details": None, "hint": None}, "pooler_error"),
    "pgbouncer-query-wait-timeout-mid-request": (
        503, {"code": "PGRST001", "message": "Database client error. Retrying the connection.",
              "details": f"FATAL:  query_wait_timeout\n{LIBPQ_CLOSED}", "hint": None},
        "pooler_timeout"),
    "supavisor-checkout-timeout-at-connect": (
        503, {"code": "PGRST000", "message": "Database connection error. Retrying the connection.",
              "details": f'connection to server at "db" (10.0.0.1), port 6543 failed: FATAL:  '
                         f"{SUPAVISOR_CHECKOUT}", "hint": None}, "pooler_timeout"),
    "pgbouncer-max-client-conn-at-connect": (
        503, {"code": "PGRST000", "message": "Database connection error. Retrying the connection.",
              "details": 'connection to server at "db" (10.0.0.1), port 6543 failed: FATAL:  '
                         "no more connections allowed (max_client_conn)", "hint": None},
        "pooler_error"),
    "database-unreachable": (
        503, {"code": "PGRST000", "message": "Database connection error. Retrying the connection.",
              "details": 'connection to server at "db" (10.0.0.1), port 5432 failed: Connection '
                         "refused", "hint": None}, "connect_failed"),
    "connection-lost-mid-request": (
        503, {"code": "PGRST001", "message": "Database client error. Retrying the connection.",
              "details": LIBPQ_CLOSED, "hint": None}, "connection_lost"),
    "postgrest-pool-timeout": (
        504, {"code": "PGRST003", "message": "Timed out acquiring connection from connection "
              "pool.", "details": None, "hint": None}, "pool_timeout"),
}


@pytest.fixture
def postgrest() -> Iterator[PostgrestRpc]:
    with PostgrestRpc(SUPABASE_URL, SERVICE_KEY) as port:
        yield port


# -- the mapping itself ------------------------------------------------------------------------
@pytest.mark.parametrize(("code", "message", "severity", "cause"), [
    ("XX000", SUPAVISOR_CHECKOUT, "FATAL", "pooler_timeout"),
    ("08P01", "query_wait_timeout", "FATAL", "pooler_timeout"),
    ("08P01", "server login has been failing, try again later (server_login_retry)", "FATAL",
     "pooler_error"),
    ("XX000", "(EDBHANDLEREXITED) connection to database closed", "FATAL", "pooler_error"),
    ("25P03", "terminating connection due to idle-in-transaction timeout", "FATAL",
     "session_ended"),
    ("57P01", "terminating connection due to administrator command", "FATAL", "session_ended"),
    ("XX000", "an internal error with the session gone", "PANIC", "session_ended"),
    ("57014", "canceling statement due to statement timeout", "ERROR", "timeout"),
    ("40P01", "deadlock detected", "ERROR", "conflict"),
    ("53300", "sorry, too many clients already", "ERROR", "unavailable"),
])
def test_a_fatal_or_a_poolers_error_is_unavailable_whatever_its_code(
        code: str, message: str, severity: str, cause: str) -> None:
    error = error_for(message, code=code, severity=severity, fn="claim_trade_execution")
    assert type(error) is RpcUnavailable and error.outcome_unknown
    assert error.cause == cause
    assert f"({cause})" in str(error)  # what a step line's error_message shows


@pytest.mark.parametrize(("code", "message"), [
    ("XX000", "could not read block 0 in file \"base/1/2\""),  # a real internal error: definite
    ("P0001", "query_wait_timeout"),  # our own RAISE, whatever it says
    ("22023", "(ECHECKOUTTIMEOUT) is not a valid p_mode"),
    ("23505", "duplicate key value violates unique constraint"),
])
def test_a_definite_error_stays_definite_and_names_no_cause(code: str, message: str) -> None:
    error = error_for(message, code=code, severity="ERROR")
    assert not error.outcome_unknown and error.cause is None


def test_a_client_error_without_a_code_that_quotes_a_pooler_stays_definite() -> None:
    assert error_for("pgbouncer and query_wait_timeout", http_status=400).cause is None
    assert error_for("query_wait_timeout", http_status=502).cause == "pooler_timeout"


# -- the PostgREST road ------------------------------------------------------------------------
@pytest.mark.parametrize("case", list(POSTGREST_UNAVAILABLE))
def test_postgrest_answers_of_a_failing_pool_or_pooler_are_unavailable_with_their_cause(
        postgrest: PostgrestRpc, httpx_mock: HTTPXMock, case: str) -> None:
    status, body, cause = POSTGREST_UNAVAILABLE[case]
    httpx_mock.add_response(url=f"{RPC_URL}/claim_trade_execution", status_code=status, json=body)
    with pytest.raises(RpcUnavailable) as caught:
        postgrest.call("claim_trade_execution", {"p_mode": "live"})
    assert caught.value.cause == cause
    assert caught.value.http_status == status
    assert len(httpx_mock.get_requests()) == 1  # never repeated


@pytest.mark.parametrize(("failure", "cause"), [
    (httpx.ConnectError("connection refused"), "connect_failed"),
    (httpx.ReadTimeout("read timed out"), "timeout"),
    (httpx.RemoteProtocolError("server disconnected without sending a response"),
     "connection_lost"),
], ids=lambda value: type(value).__name__ if isinstance(value, Exception) else value)
def test_postgrest_transport_failures_name_their_cause(
        postgrest: PostgrestRpc, httpx_mock: HTTPXMock, failure: Exception, cause: str) -> None:
    httpx_mock.add_exception(failure, url=f"{RPC_URL}/claim_trade_execution")
    with pytest.raises(RpcUnavailable) as caught:
        postgrest.call("claim_trade_execution", {"p_mode": "live"})
    assert caught.value.cause == cause


def step_lines(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    return [json.loads(r.getMessage()) for r in caplog.records if r.name == steplog.LOGGER_NAME]


def test_a_supavisor_checkout_timeout_behind_postgrest_is_a_503_with_nothing_sent(
        httpx_mock: HTTPXMock, caplog: pytest.LogCaptureFixture) -> None:
    """The request path on the PostgREST road: the claim answered `XX000 (ECHECKOUTTIMEOUT)` was a
    500 internal-error; it is the 503 the client may retry with the same key, and the claim's
    log line says why."""
    caplog.set_level(logging.INFO, logger=steplog.LOGGER_NAME)
    status, body, _ = POSTGREST_UNAVAILABLE["supavisor-checkout-timeout-as-xx000"]
    httpx_mock.add_response(url=f"{RPC_URL}/claim_trade_execution", status_code=status, json=body)
    exchange = FakeExchange()
    scripted = runtime(ScriptedRpc(), exchange)
    rt = Runtime(scripted.settings, venue=scripted.venue,
                 rpc_factory=lambda: PostgrestRpc(SUPABASE_URL, SERVICE_KEY))
    reply_body, reply_status, headers = execute(request(), rt)
    problem = json.loads(reply_body)
    assert reply_status == 503, problem
    assert problem["type"] == "/problems/database-unavailable" and headers["Retry-After"] == "1"
    assert exchange.posted_orders() == []
    [claim] = [line for line in step_lines(caplog) if line["step"] == "claim"]
    assert claim["outcome"] == "database_unavailable" and claim["cause"] == "pooler_timeout"
    rt.close()


# -- the direct road through a real PgBouncer ----------------------------------------------------
@pytest.fixture
def held_pooler(db: Database) -> Iterator[tuple[PgBouncer, psycopg.Connection[Any]]]:
    """PgBouncer with one server connection for `db`, held by an open transaction, and a
    query_wait_timeout of 1 s: every other client waits 1 s and gets PgBouncer's FATAL."""
    with PgBouncer(db.cluster.port, pool_size=1, query_wait_timeout=1) as bouncer:
        holder = psycopg.connect(bouncer.url(db.name))
        try:
            holder.execute("select 1")  # in a transaction: the server connection stays its own
            yield bouncer, holder
        finally:
            holder.close()


def test_a_pipelined_call_that_pgbouncer_times_out_is_unavailable_and_the_next_call_works(
        db: Database, held_pooler: tuple[PgBouncer, psycopg.Connection[Any]]) -> None:
    bouncer, holder = held_pooler
    with DirectRpc(bouncer.url(db.name), min_size=0, max_size=1, pool_timeout=5) as rpc:
        with pytest.raises(RpcUnavailable) as caught:
            rpc.call("run_maintenance")
        # psycopg's pipeline reports PgBouncer's FATAL only as the closed connection after it.
        assert caught.value.cause == "connection_lost", repr(caught.value)
        assert "query_wait_timeout" in bouncer.log()
        holder.rollback()  # the server connection is free again
        assert rpc.call("run_maintenance")["expired_locks"] == 0  # the broken one was replaced


def test_a_plain_query_that_pgbouncer_times_out_is_unavailable_pooler_timeout(
        db: Database, held_pooler: tuple[PgBouncer, psycopg.Connection[Any]]) -> None:
    bouncer, _ = held_pooler
    with psycopg.connect(bouncer.url(db.name), autocommit=True) as conn:
        with pytest.raises(psycopg.Error) as caught:
            conn.execute("select 1")
        broken = conn.broken
    error = _translate(caught.value, "a_plain_query", broken=broken)
    assert isinstance(error, RpcUnavailable) and error.cause == "pooler_timeout", repr(error)
    assert error.code == "08P01" and broken


def test_no_free_connection_in_the_callers_pool_is_pool_timeout(db: Database) -> None:
    with DirectRpc(db.authenticator_url, min_size=1, max_size=1, pool_timeout=0.2) as rpc:
        with rpc._pool.connection():  # the only connection is busy
            with pytest.raises(RpcUnavailable) as caught:
                rpc.call("run_maintenance")
    assert caught.value.cause == "pool_timeout"


def test_an_rpc_error_repr_names_its_cause() -> None:
    error = RpcUnavailable("x", fn="f", cause="pooler_timeout")
    assert "cause='pooler_timeout'" in repr(error)
    assert RpcError("y").cause is None and RpcUnavailable("z").cause == "unavailable"
