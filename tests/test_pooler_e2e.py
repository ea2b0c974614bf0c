"""Both functions end to end through PgBouncer in transaction mode with a small pool: how the hosted
functions reach the database (Supabase's Supavisor, port 6543, pools per transaction the same way;
DirectRpc keeps no session state, prepares nothing and runs each call as one transaction).

A representative subset of the end-to-end tests runs again, unchanged, with the functions'
DATABASE_URL pointing at PgBouncer (POOL_SIZE server connections per database, fewer than the
functions' own pools hold): trading_execute's 64-request race (G1), an unknown outcome replayed and
reconciled without a resend (G10), two reconcilers at once; scan_scheduler's 208 jobs under 4
concurrent ticks (G2) and the GPT budget under concurrent ticks (G7). Then what only a pooler can
break: session state left on a server connection for the next client, and an exhausted pool —
PgBouncer's (its query_wait_timeout closes the waiting client) or the function's own — which must
be a clean 503 whose log line names the cause, with nothing sent, and the next request fine.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest

import tests.test_execute_live as live
import tests.test_scan_e2e as scan
from scripts.wireturns import WireTurns
from shared.rpc.direct import DirectRpc
from shared.rpc.errors import RpcInvalidArgument
from tests.execute_harness import (
    DB_PASSWORD,
    Stack,
    function_env,
    proposal,
    trader,
)
from tests.function_server import start_function
from tests.pg import Database, SessionCluster, connect
from tests.pgbouncer import PgBouncer
from tests.sandbox_server import SandboxServer
from tests.scan_support import step_lines
from tests.test_execution_support import (
    _module_db_fixture,  # noqa: F401 - one database per module
    set_controls,
)

POOL_SIZE = 2  # server connections per database; each function's own pool holds up to 4 or 10


@pytest.fixture(scope="module")
def bouncer(pg_session: SessionCluster) -> Iterator[PgBouncer]:
    with PgBouncer(pg_session.cluster.port, pool_size=POOL_SIZE, query_wait_timeout=30) as pooler:
        yield pooler


@pytest.fixture(autouse=True)
def fresh_sandbox(bitvavo_sandbox: SandboxServer) -> SandboxServer:
    """Every test starts with an empty order book, default balances, no fault, whole budgets."""
    return bitvavo_sandbox


def through(proxy: WireTurns, db: Database) -> str:
    """`db`'s authenticator URL via `proxy` (in front of a pooler), with a password in it."""
    parts = urlsplit(db.authenticator_url)
    return urlunsplit(parts._replace(netloc=f"authenticator:{DB_PASSWORD}@127.0.0.1:{proxy.port}"))


@pytest.fixture(scope="module")
def stack(module_db: Database, bitvavo_sandbox_session: SandboxServer,
          bouncer: PgBouncer) -> Iterator[Stack]:
    """trading_execute in live mode, its database through a counting proxy and PgBouncer."""
    set_controls(module_db, live_trading_allowed=True)
    with WireTurns("127.0.0.1", bouncer.port) as proxy, start_function(
            "trading_execute", env=function_env(
                module_db, proxy, bitvavo_sandbox_session, "live",
                EXCHANGE_TIMEOUT_SECONDS=str(live.READ_TIMEOUT_S))) as fn:
        yield Stack(db=module_db, proxy=proxy, sandbox=bitvavo_sandbox_session, fn=fn,
                    mode="live")


@dataclass
class PooledDatabase(Database):
    """A test database whose API logins (`authenticator_url`, what the functions get as
    DATABASE_URL) go through PgBouncer; the superuser set-up and checks stay direct."""

    pooler_port: int = 0

    @property
    def authenticator_url(self) -> str:
        return f"postgresql://authenticator@127.0.0.1:{self.pooler_port}/{self.name}"


@pytest.fixture
def db(pg_session: SessionCluster, bouncer: PgBouncer) -> Iterator[Database]:
    database = pg_session.new_database()
    try:
        yield PooledDatabase(database.cluster, database.name, pooler_port=bouncer.port)
    finally:
        pg_session.drop(database)


# -- the end-to-end tests again, through the pooler ------------------------------------------------
def test_g1_64_concurrent_requests_place_exactly_one_order_through_pgbouncer(stack: Stack) -> None:
    live.test_64_concurrent_requests_for_one_proposal_place_exactly_one_order(stack)


@pytest.mark.parametrize("fault", ["drop_after_accept", "read_timeout"])
def test_g10_an_unknown_outcome_is_replayed_and_reconciled_without_a_resend_through_pgbouncer(
        stack: Stack, fault: str) -> None:
    live.test_an_unknown_outcome_answers_202_and_reconcile_settles_it_without_resending(
        stack, fault)


def test_two_concurrent_reconciles_record_each_execution_once_through_pgbouncer(
        stack: Stack) -> None:
    live.test_two_concurrent_reconciles_record_each_execution_once(stack)


def test_g2_208_jobs_and_4_concurrent_ticks_run_every_job_once_through_pgbouncer(
        db: Database, bitvavo_sandbox: SandboxServer) -> None:
    scan.test_g2_208_jobs_and_4_concurrent_callers_run_every_job_once(db, bitvavo_sandbox)


def test_g7_concurrent_ticks_never_spend_beyond_the_budget_through_pgbouncer(
        db: Database, bitvavo_sandbox: SandboxServer) -> None:
    scan.test_g7_concurrent_ticks_never_spend_beyond_the_limits_and_settle_every_call(
        db, bitvavo_sandbox)


# -- no session state crosses from one client to the next --------------------------------------
# What a request sets (role, claims, request.*, statement_timeout, TimeZone) as a server
# connection shows it to whoever gets it next. A custom setting set once stays defined as '' after
# its transaction, so empty and unset read the same here.
SESSION_STATE = """
select pg_backend_pid(), current_user, session_user, current_setting('role'),
       nullif(current_setting('request.jwt.claims', true), ''),
       nullif(current_setting('request.method', true), ''),
       nullif(current_setting('request.path', true), ''),
       current_setting('statement_timeout'), current_setting('TimeZone'),
       current_setting('search_path'), current_setting('transaction_isolation')
"""


def test_no_session_state_is_left_on_the_poolers_server_connections(
        stack: Stack, bouncer: PgBouncer) -> None:
    """Traffic of every kind through the function and the port (executions, a refusal, a replay,
    a reconcile, an RPC that raises), then every server connection of the pool is taken at once
    and read: each looks exactly like a fresh login. In transaction mode PgBouncer resets nothing
    between clients, so a setting made for the session instead of the transaction would show."""
    user = live.live_trader(stack)
    for _ in range(3):
        assert stack.execute(proposal(stack.db, user), user_id=user).status_code == 201
    replayed = proposal(stack.db, user)
    assert stack.execute(replayed, user_id=user, key="leak-key").status_code == 201
    assert stack.execute(replayed, user_id=user, key="leak-key").status_code == 200
    stranger = trader(stack.db, live=True, trading_enabled=False)
    assert stack.execute(proposal(stack.db, stranger), user_id=stranger).status_code == 422
    stack.reconcile()
    with DirectRpc(through(stack.proxy, stack.db), max_size=POOL_SIZE) as rpc:
        with pytest.raises(RpcInvalidArgument):
            rpc.call("claim_trade_execution", {
                "p_user_id": user, "p_proposal_id": uuid.uuid4(), "p_idempotency_key": "k",
                "p_mode": "sideways"})

    with connect(stack.db.authenticator_url) as fresh:  # a login straight to PostgreSQL
        expected = fresh.execute(SESSION_STATE).fetchone()[1:]  # type: ignore[index]
    clients = [psycopg.connect(bouncer.url(stack.db.name)) for _ in range(POOL_SIZE)]
    try:
        # Each client keeps its transaction open, so each holds a different server connection.
        seen = [client.execute(SESSION_STATE).fetchone() for client in clients]
    finally:
        for client in clients:
            client.close()
    assert len({row[0] for row in seen if row}) == POOL_SIZE  # every server connection, read
    for row in seen:
        assert row is not None and row[1:] == expected, (row, expected)


# -- an exhausted pool ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tight(module_db: Database,
          bitvavo_sandbox_session: SandboxServer) -> Iterator[tuple[Stack, PgBouncer]]:
    """trading_execute with one connection of its own (RPC_POOL_TIMEOUT_SECONDS=1) through a
    PgBouncer with one server connection for the database and a query_wait_timeout of 1 s."""
    with PgBouncer(module_db.cluster.port, pool_size=1, query_wait_timeout=1) as small, \
            WireTurns("127.0.0.1", small.port) as proxy, start_function(
                "trading_execute", env=function_env(
                    module_db, proxy, bitvavo_sandbox_session, "live", RPC_POOL_MIN_SIZE="1",
                    RPC_POOL_MAX_SIZE="1", RPC_POOL_TIMEOUT_SECONDS="1")) as fn:
        yield Stack(db=module_db, proxy=proxy, sandbox=bitvavo_sandbox_session, fn=fn,
                    mode="live"), small


def claim_lines(stack: Stack, proposal_id: uuid.UUID) -> list[dict[str, Any]]:
    return [line for line in step_lines(stack.fn.logs())
            if line["step"] == "claim" and line.get("proposal_id") == str(proposal_id)]


def test_an_exhausted_pgbouncer_pool_is_a_clean_503_that_names_the_cause_and_nothing_is_sent(
        tight: tuple[Stack, PgBouncer]) -> None:
    """PgBouncer's only server connection is held by a long transaction; the claim waits
    query_wait_timeout (1 s) in PgBouncer's queue and gets its FATAL and a closed connection. The
    claim never ran: 503 with Retry-After, no order, no execution; the claim's log line says
    `connection_lost` (psycopg's pipeline keeps nothing of the FATAL but the closed connection).
    Once the transaction ends, the same request goes through."""
    stack, pooler = tight
    user = trader(stack.db, live=True)
    proposal_id = proposal(stack.db, user)
    holder = psycopg.connect(pooler.url(stack.db.name))
    try:
        holder.execute("select 1")  # its open transaction keeps the server connection
        refused = stack.execute(proposal_id, user_id=user, key="exhausted")
    finally:
        holder.close()
    assert refused.status_code == 503, refused.text
    assert live.problem_type(refused) == "/problems/database-unavailable"
    assert refused.headers["retry-after"] == "1"
    assert stack.sandbox.orders() == [] and stack.execution(proposal_id) is None
    [line] = claim_lines(stack, proposal_id)
    assert line["outcome"] == "database_unavailable" and line["severity"] == "ERROR"
    assert line["cause"] == "connection_lost", line
    assert "query_wait_timeout" in pooler.log()
    after = stack.execute(proposal_id, user_id=user, key="exhausted")
    assert after.status_code == 201, after.text
    assert len(stack.sandbox.orders()) == 1


def test_an_exhausted_function_pool_is_a_clean_503_pool_timeout_and_nothing_is_sent(
        tight: tuple[Stack, PgBouncer]) -> None:
    """The function's only connection is busy with a claim that waits for its user's claim lock
    (held here): another request waits RPC_POOL_TIMEOUT_SECONDS for a connection and answers 503
    `pool_timeout`, nothing sent; the first then goes through, and the second after it."""
    stack, _ = tight
    db = stack.db
    waiting_user, other_user = trader(db, live=True), trader(db, live=True)
    waiting, other = proposal(db, waiting_user), proposal(db, other_user)
    lock = connect(db.url)
    try:
        lock.execute("select pg_advisory_xact_lock(hashtextextended('claim:' || %s, 0))",
                     (str(waiting_user),))
        with ThreadPoolExecutor(max_workers=1) as pool:
            first = pool.submit(stack.execute, waiting, user_id=waiting_user)
            live.wait_for(lambda: db.scalar(
                "select count(*) from pg_locks l join pg_database d on d.oid = l.database "
                "where l.locktype = 'advisory' and not l.granted and d.datname = %s",
                (db.name,)), timeout=10, what="the first claim waiting for its lock")
            refused = stack.execute(other, user_id=other_user, key="no-connection")
            lock.rollback()
            assert first.result(timeout=30).status_code == 201
    finally:
        lock.close()
    assert refused.status_code == 503, refused.text
    assert live.problem_type(refused) == "/problems/database-unavailable"
    assert [line["cause"] for line in claim_lines(stack, other)] == ["pool_timeout"]
    first_order = stack.execution(waiting)
    assert first_order is not None
    assert [o["clientOrderId"] for o in stack.sandbox.orders()] == \
        [str(first_order["client_order_id"])]
    assert stack.execution(other) is None
    assert stack.execute(other, user_id=other_user, key="no-connection").status_code == 201
