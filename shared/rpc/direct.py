"""DirectRpc: the RPC port over a direct PostgreSQL connection (DATABASE_URL), one round trip each.

Each call is one request exactly as PostgREST runs it — one transaction in which
`set_config('role', 'service_role', true)` and `set_config('request.jwt.claims',
'{"role":"service_role"}', true)` (plus `request.method`/`request.path`, a per-call
`statement_timeout` and `TimeZone=UTC`) are followed by `select public.<fn>(p_a => …, …)`:

    client ── Parse/Bind/Execute (set_config …) ┐
              Parse/Bind/Execute (the call)     ├─ one write, psycopg pipeline mode
              Sync ─────────────────────────────┘
    server ── results of both, ReadyForQuery ──── one answer

The two statements must stay two: EXECUTE privilege is checked when the executor starts, so a role
set by `set_config` inside the same SELECT would come too late. They travel together in pipeline
mode on an autocommit connection, which makes everything up to the Sync one implicit transaction:
the `set_config(…, true)` settings apply to the call and vanish at its end, an error anywhere rolls
back everything, and the connection is idle again afterwards — also on the error path, so no
ROLLBACK round trip is ever needed. (tests/test_rpc_direct.py counts the round trips on the wire
with scripts/wireturns.py, which reads them from the protocol: one Sync per call.)

Arguments are sent as untyped text parameters (`encode_args` in port.py turned them into JSON
values; here every one becomes text of PostgreSQL's `unknown` type), so PostgreSQL converts each
to the declared parameter type with that type's input function — as PostgREST does from its JSON
body. The result is selected as `to_json(…)` text (PostgreSQL's own JSON rendering, what PostgREST
sends) and parsed with Decimal numbers.

Through Supabase's pooler (Supavisor, transaction mode, port 6543) this works unchanged: no
prepared statements (`prepare_threshold=None`), no session state (every setting is
transaction-local), no startup options, and each call is a single transaction. The login role must
be allowed to SET ROLE service_role (`authenticator` or `postgres` on Supabase).

A broken connection mid-call raises RpcUnavailable: the call may have committed. So does a FATAL
(a pooler's timeout or refusal, a shutdown), whatever its SQLSTATE — in pipeline mode psycopg
reports a pooler's FATAL only as the closed connection that follows it (`connection_lost`), a
plain query would see the FATAL itself. Each RpcUnavailable names its cause (errors.py), which the
503's log line shows. Nothing here retries a call.

The pool belongs to the process that first calls through it, and is opened then (not when the port
is built): functions-framework imports main.py in gunicorn's master and forks the worker from it,
and a pool opened before a fork is useless after it — its maintenance threads do not exist in the
child, so a connection that breaks is never replaced (every later call waits `pool_timeout` and
fails: found by the chaos soak, whose scanner answered 503 to every tick after one lost answer),
and its connections are the parent's sockets. A child therefore opens a pool of its own and
leaves the parent's alone.
"""

from __future__ import annotations

import functools
import math
import os
import select
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from types import TracebackType
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict
from psycopg_pool import ConnectionPool, PoolTimeout

from shared.rpc.errors import RpcError, RpcUnavailable, error_for
from shared.rpc.port import SERVICE_CLAIMS, SERVICE_ROLE, as_rows, decode_json, dumps, encode_args

DEFAULT_MIN_SIZE = 1
DEFAULT_MAX_SIZE = 4
DEFAULT_CONNECT_TIMEOUT = 5.0
DEFAULT_POOL_TIMEOUT = 5.0
DEFAULT_STATEMENT_TIMEOUT = 15.0
DEFAULT_MAX_IDLE = 60.0
DEFAULT_MAX_LIFETIME = 30 * 60.0

# What PostgREST sets per request (role, claims, method, path), plus a per-call statement timeout
# and UTC rendering of timestamps. Parameters only; nothing is interpolated.
_REQUEST_SQL = (
    "select set_config('role', %(role)s, true),"
    " set_config('request.jwt.claims', %(claims)s, true),"
    " set_config('request.method', 'POST', true),"
    " set_config('request.path', %(path)s, true),"
    " set_config('statement_timeout', %(statement_timeout)s, true),"
    " set_config('TimeZone', 'UTC', true)"
)
_CLAIMS = dumps(SERVICE_CLAIMS)


@functools.lru_cache(maxsize=256)
def _call_sql(fn: str, names: tuple[str, ...], setof: bool) -> sql.Composed:
    """`public.<fn>(<name> => %(<name>)s, …)` wrapped to return JSON text. The names were checked
    by encode_args, and are composed as quoted identifiers anyway."""
    call = sql.SQL("{}({})").format(
        sql.Identifier("public", fn),
        sql.SQL(", ").join(
            sql.SQL("{} => {}").format(sql.Identifier(name), sql.Placeholder(name))
            for name in names
        ),
    )
    if setof:
        return sql.SQL("select coalesce(json_agg(r), '[]'::json)::text from {} as r").format(call)
    return sql.SQL("select to_json({})::text").format(call)


def _param(value: Any) -> str | None:
    """A JSON value as text of type `unknown` (psycopg sends `str` untyped): PostgreSQL applies the
    declared parameter type's input function, as it does for a quoted literal."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | str):
        return str(value)
    return dumps(value)  # dict / list → JSON text, for json/jsonb parameters


def _server_hung_up(conn: psycopg.Connection[Any]) -> bool:
    """True when an idle pooled connection was closed by the server (idle timeout, restart,
    pg_terminate_backend). An idle connection has nothing to read unless the server sent a FATAL
    error or EOF, so a zero-timeout poll of the socket tells without a round trip. Written here
    because psycopg_pool's `check` hook pays a round trip per checkout, and sleeps a second after a
    failed check; this costs neither."""
    if conn.closed or conn.broken:
        return True
    readable, _, _ = select.select([conn.fileno()], [], [], 0)
    return bool(readable)


# Guards opening a pool. Replaced in a forked child: a thread of the parent may have held it.
_OPEN_LOCK = threading.Lock()


def _new_open_lock() -> None:
    global _OPEN_LOCK
    _OPEN_LOCK = threading.Lock()


os.register_at_fork(after_in_child=_new_open_lock)


class DirectRpc:
    """The RPC port over psycopg + psycopg_pool. Thread-safe; `close()` releases everything."""

    def __init__(
        self,
        conninfo: str,
        *,
        min_size: int = DEFAULT_MIN_SIZE,
        max_size: int = DEFAULT_MAX_SIZE,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        pool_timeout: float = DEFAULT_POOL_TIMEOUT,
        statement_timeout: float = DEFAULT_STATEMENT_TIMEOUT,
        max_idle: float = DEFAULT_MAX_IDLE,
        max_lifetime: float = DEFAULT_MAX_LIFETIME,
        name: str = "rpc",
    ) -> None:
        try:
            params = conninfo_to_dict(conninfo)
        except psycopg.ProgrammingError:
            # libpq's parse error may quote part of the URL, password included: say less.
            raise ValueError("not a valid PostgreSQL connection URL") from None
        self._where = f"{params.get('host', 'localhost')}:{params.get('port', 5432)}/" \
                      f"{params.get('dbname', '')}"
        self._statement_timeout_ms = str(max(0, math.ceil(statement_timeout * 1000)))
        self._pool_timeout = pool_timeout
        self._max_size = max_size
        kwargs: dict[str, Any] = {
            "autocommit": True,        # the pipeline's Sync ends each call's implicit transaction
            "prepare_threshold": None,  # no server-side prepared statements: pooler-safe
            # TCP keepalives, so a silently vanished server is noticed while we wait for an answer.
            "keepalives": 1, "keepalives_idle": 15, "keepalives_interval": 5,
            "keepalives_count": 3,
        }
        if "connect_timeout" not in params:
            kwargs["connect_timeout"] = max(2, math.ceil(connect_timeout))
        self._pool_options: dict[str, Any] = {
            "conninfo": conninfo, "kwargs": kwargs, "min_size": min_size, "max_size": max_size,
            "timeout": pool_timeout, "max_idle": max_idle, "max_lifetime": max_lifetime,
            "name": name}
        self._opened: tuple[int, ConnectionPool[psycopg.Connection[Any]]] | None = None
        self._closed = False

    def __repr__(self) -> str:
        return f"DirectRpc({self._where})"

    # -- the port -----------------------------------------------------------------------------
    def call(self, fn: str, args: Mapping[str, Any] | None = None) -> Any:
        return self._run(fn, args, setof=False)

    def rows(self, fn: str, args: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
        return as_rows(fn, self._run(fn, args, setof=True))

    def close(self) -> None:
        """Close this process's pool (a parent's, inherited through a fork, is the parent's)."""
        with _OPEN_LOCK:
            opened, self._opened, self._closed = self._opened, None, True
        if opened is not None and opened[0] == os.getpid():
            opened[1].close(timeout=5.0)

    @property
    def _pool(self) -> ConnectionPool[psycopg.Connection[Any]]:
        """This process's pool, opened on first use (see the module docstring)."""
        opened, pid = self._opened, os.getpid()
        if opened is not None and opened[0] == pid:
            return opened[1]
        with _OPEN_LOCK:
            if self._closed:
                raise psycopg.OperationalError("the RPC port is closed")
            if self._opened is None or self._opened[0] != pid:
                pool: ConnectionPool[psycopg.Connection[Any]] = ConnectionPool(
                    **self._pool_options, open=False)
                pool.open(wait=False)
                self._opened = (pid, pool)
            return self._opened[1]

    def __enter__(self) -> DirectRpc:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # -- one request --------------------------------------------------------------------------
    def _run(self, fn: str, args: Mapping[str, Any] | None, *, setof: bool) -> Any:
        payload = encode_args(fn, args)
        query = _call_sql(fn, tuple(payload), setof)
        params = {name: _param(value) for name, value in payload.items()}
        request = {"role": SERVICE_ROLE, "claims": _CLAIMS, "path": f"/rpc/{fn}",
                   "statement_timeout": self._statement_timeout_ms}
        try:
            with self._connection() as conn:
                try:
                    # Both statements and the Sync leave in one write when the pipeline block
                    # ends; fetching inside the block would send a Flush and cost a second round
                    # trip.
                    with conn.pipeline():
                        conn.execute(_REQUEST_SQL, request)
                        cursor = conn.execute(query, params)
                    row = cursor.fetchone()
                except psycopg.Error as exc:
                    raise _translate(exc, fn, broken=conn.broken) from exc
        except psycopg.Error as exc:  # no connection: the pool's timeout, a closed port
            raise _translate(exc, fn) from exc
        text = row[0] if row else None
        return None if text is None else decode_json(text)

    @contextmanager
    def _connection(self) -> Iterator[psycopg.Connection[Any]]:
        pool = self._pool
        conn = pool.getconn(timeout=self._pool_timeout)
        # Connections the server closed while they sat idle are replaced, never used: a call on one
        # would fail as outcome-unknown although nothing was sent.
        for _ in range(self._max_size):
            if not _server_hung_up(conn):
                break
            conn.close()
            pool.putconn(conn)  # a closed connection is discarded and replaced by the pool
            conn = pool.getconn(timeout=self._pool_timeout)
        try:
            yield conn
        finally:
            pool.putconn(conn)


def _translate(exc: psycopg.Error, fn: str, *, broken: bool = False) -> RpcError:
    """psycopg's exception → the port's. No free connection in the pool is `pool_timeout`; a
    failure without a SQLSTATE on a connection-level error (dropped connection, closed port) is
    `connection_lost`; otherwise errors.error_for decides from the SQLSTATE, the message and the
    severity (a FATAL, e.g. a pooler's, is unavailable whatever its code). An error that left the
    connection broken is unavailable too: the session is gone, and with it whatever it did."""
    if isinstance(exc, PoolTimeout):
        return RpcUnavailable(_first_line(str(exc)) or "no free connection in time", fn=fn,
                              cause="pool_timeout")
    code = exc.sqlstate
    if code is None:
        if broken or isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError):
            return RpcUnavailable(_first_line(str(exc)) or type(exc).__name__, fn=fn,
                                  cause="connection_lost")
        return RpcError(_first_line(str(exc)) or type(exc).__name__, fn=fn)
    diag = exc.diag
    error = error_for(diag.message_primary or _first_line(str(exc)), code=code,
                      details=diag.message_detail, hint=diag.message_hint, fn=fn,
                      severity=diag.severity_nonlocalized or diag.severity)
    if broken and not error.outcome_unknown:
        return RpcUnavailable(error.message, code=code, details=error.details, hint=error.hint,
                              fn=fn, cause="connection_lost")
    return error


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else ""
