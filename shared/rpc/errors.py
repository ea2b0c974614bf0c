"""Everything that can go wrong calling an RPC, as one exception tree shared by both adapters.

The names tell the caller what to do:

    RpcError                       .code (SQLSTATE / PGRST code or None), .message, .details, .hint
    ├── RpcInvalidArgument         class 22 (22023 from our RPCs' argument checks, 22P02 bad
    │                              input syntax, …): the caller's input was wrong   → HTTP 400
    ├── RpcPermissionDenied        42501, class 28, PGRST301-303, HTTP 401/403: our
    │                              configuration is wrong (role, grants, key)      → HTTP 500
    ├── RpcUndefinedFunction       42883 / PGRST202: the function (with these argument names)
    │                              does not exist — a deploy/migration mismatch     → HTTP 500
    └── RpcUnavailable             nothing definite came back: connect failure, dropped
                                   connection, timeout, 5xx without a code, classes 08/40/53/57/58,
                                   PGRST000-003, any FATAL (the session is gone: a pooler's
                                   refusal or timeout, a shutdown). The call's OUTCOME IS UNKNOWN —
                                   it may have committed. Never repeat a write blindly; reconcile
                                   (G10). `.cause` says why, for the log line of the 503 it becomes.

A plain `RpcError` is a definite failure the database reported (the transaction rolled back) that
none of the above describes (e.g. P0001, 23505, an XX000 that is not a pooler's).

One function, `error_for`, decides the class for both adapters: a FATAL or a pooler's own error
(Supavisor answers a checkout timeout with `FATAL XX000 (ECHECKOUTTIMEOUT) …` and closes the
connection; PgBouncer's FATALs are 08P01 `query_wait_timeout`, …; PostgREST puts the text of a
connection failure in PGRST000/PGRST001's details) is RpcUnavailable whatever its code; otherwise
the SQLSTATE decides when there is one (so a PostgREST body and a psycopg exception with the same
code give the same class), the HTTP status only when PostgREST (or a gateway in front of it) sent
no code. Messages are the database's or our own; they never contain the DB URL, a password or the
service key.

The causes an RpcUnavailable names (`Cause`):

    pool_timeout      no free connection in the caller's pool in time (psycopg_pool; PostgREST's
                      PGRST003): nothing was sent
    pooler_timeout    the pooler found no server connection in time (Supavisor ECHECKOUTTIMEOUT,
                      PgBouncer query_wait_timeout): the call did not run
    pooler_error      any other error of the pooler itself (Supavisor's `(E…)` errors, PgBouncer's
                      08P01 FATALs: max_client_conn, server login failing, …)
    session_ended     the server ended the session (FATAL: shutdown, terminated, idle timeout)
    connection_lost   the connection broke or closed without an answer (a pipelined call sees a
                      pooler's FATAL only so: psycopg drops the message when the socket closes)
    connect_failed    no connection could be opened (PGRST000 without a pooler's text)
    timeout           statement_timeout (57014) or no HTTP answer in time
    conflict          serialization failure or deadlock (class 40)
    unavailable       anything else that gave no definite answer (classes 08/53/57/58, PGRST002,
                      HTTP 5xx/408/429 without a code, a 2xx body that is not JSON)
"""

from __future__ import annotations

import re
from typing import ClassVar, Literal

Cause = Literal["pool_timeout", "pooler_timeout", "pooler_error", "session_ended",
                "connection_lost", "connect_failed", "timeout", "conflict", "unavailable"]


class RpcError(Exception):
    """A failed RPC. `code` is the SQLSTATE (or PostgREST's PGRSTnnn), when there is one."""

    outcome_unknown: ClassVar[bool] = False

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        details: str | None = None,
        hint: str | None = None,
        fn: str | None = None,
        http_status: int | None = None,
        cause: Cause | None = None,
    ) -> None:
        self.message = message
        self.code = code
        self.details = details
        self.hint = hint
        self.fn = fn
        self.http_status = http_status
        # Why no definite answer came back: always named for RpcUnavailable, None otherwise.
        self.cause: Cause | None = cause or ("unavailable" if self.outcome_unknown else None)
        super().__init__(message)

    def __str__(self) -> str:
        where = f"rpc {self.fn}" if self.fn else "rpc"
        code = f" [{self.code}]" if self.code else ""
        cause = f" ({self.cause})" if self.cause else ""
        return f"{where}{code}{cause}: {self.message}"

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(fn={self.fn!r}, code={self.code!r}, "
                f"cause={self.cause!r}, message={self.message!r})")


class RpcInvalidArgument(RpcError):
    """Class 22 (data exception): the arguments were refused; nothing was changed."""


class RpcPermissionDenied(RpcError):
    """The role may not do this (42501, class 28, PostgREST 401/403): a configuration error."""


class RpcUndefinedFunction(RpcError):
    """No such function with these argument names (42883 / PGRST202)."""


class RpcUnavailable(RpcError):
    """No definite answer: the call may or may not have taken effect. Never repeat a write.
    `cause` (always set) says why."""

    outcome_unknown: ClassVar[bool] = True


# SQLSTATE classes (first two characters) and exact codes → the class. Exact codes win.
_BY_CODE: dict[str, type[RpcError]] = {
    "42501": RpcPermissionDenied,   # insufficient_privilege (EXECUTE, SET ROLE, RLS …)
    "42883": RpcUndefinedFunction,  # undefined_function
    "PGRST202": RpcUndefinedFunction,  # PostgREST: function not found in the schema cache
    "PGRST000": RpcUnavailable,     # PostgREST: could not connect to the database
    "PGRST001": RpcUnavailable,     # PostgREST: internal connection error
    "PGRST002": RpcUnavailable,     # PostgREST: schema cache not loaded yet
    "PGRST003": RpcUnavailable,     # PostgREST: timed out waiting for a pool connection
    "PGRST301": RpcPermissionDenied,  # PostgREST: JWT could not be decoded / invalid
    "PGRST302": RpcPermissionDenied,  # PostgREST: anonymous access disabled, no bearer
    "PGRST303": RpcPermissionDenied,  # PostgREST: JWT claims validation failed
}
_BY_CLASS: dict[str, type[RpcError]] = {
    "22": RpcInvalidArgument,   # data_exception: 22023, 22P02, 22003, 22004, 22007, …
    "28": RpcPermissionDenied,  # invalid_authorization_specification
    "08": RpcUnavailable,       # connection_exception
    "40": RpcUnavailable,       # transaction_rollback (serialization failure, deadlock)
    "53": RpcUnavailable,       # insufficient_resources (too many connections, disk full)
    "57": RpcUnavailable,       # operator_intervention (query_canceled/statement timeout,
    #                             admin_shutdown, cannot_connect_now)
    "58": RpcUnavailable,       # system_error (I/O)
}


def error_class(code: str | None, http_status: int | None = None) -> type[RpcError]:
    """The exception class for a SQLSTATE / PGRST code, else for an HTTP status without one."""
    if code:
        return _BY_CODE.get(code) or _BY_CLASS.get(code[:2]) or RpcError
    if http_status is None:
        return RpcError
    if http_status in (401, 403):
        return RpcPermissionDenied
    if http_status >= 500 or http_status in (408, 429):
        return RpcUnavailable
    return RpcError


def error_for(
    message: str,
    *,
    code: str | None = None,
    details: str | None = None,
    hint: str | None = None,
    fn: str | None = None,
    http_status: int | None = None,
    severity: str | None = None,
) -> RpcError:
    """The exception for one failed call, identical for both adapters for the same code.
    `severity` is PostgreSQL's (ERROR, FATAL, PANIC) when the adapter knows it."""
    cause = unavailable_cause(message, code=code, details=details, http_status=http_status,
                              severity=severity)
    cls = error_class(code, http_status) if cause is None else RpcUnavailable
    return cls(message, code=code, details=details, hint=hint, fn=fn, http_status=http_status,
               cause=cause)


# A pooler's own errors, by their text (they come with generic codes: XX000, 08P01, PGRST000/001).
_POOLER_TIMEOUT = re.compile(r"\(ECHECKOUTTIMEOUT\)|\bquery_wait_timeout\b")
_POOLER_ERROR = re.compile(
    r"\(E[A-Z_]{3,}\)"  # Supavisor: "(EMAXCONNSESSION) …", "(ECIRCUITBREAKER) …"
    r"|\bpgbouncer\b|\bmax_client_conn\b|\bserver login has been failing\b"
    r"|\bserver conn crashed\b|\bno more connections allowed\b|\bclient_login_timeout\b",
    re.IGNORECASE)
# The codes a pooler's error may come with (or none, from a gateway's 5xx): checking only these
# keeps a message of ours (P0001, 22023, …) that happens to quote such a text a definite error.
_POOLER_CODES = frozenset({"XX000", "08P01", "PGRST000", "PGRST001"})
_CAUSE_BY_CODE: dict[str, Cause] = {
    "PGRST000": "connect_failed", "PGRST001": "connection_lost", "PGRST003": "pool_timeout",
    "57014": "timeout",
}


def unavailable_cause(message: str, *, code: str | None = None, details: str | None = None,
                      http_status: int | None = None,
                      severity: str | None = None) -> Cause | None:
    """Why a failure gave no definite answer, or None when it is a definite error."""
    fatal = (severity or "").upper() in ("FATAL", "PANIC")
    if fatal or code in _POOLER_CODES or (code is None and (http_status or 500) >= 500):
        text = f"{message}\n{details or ''}"
        if _POOLER_TIMEOUT.search(text):
            return "pooler_timeout"
        if _POOLER_ERROR.search(text):
            return "pooler_error"
    if fatal:
        return "pooler_error" if (code or "").startswith("08") else "session_ended"
    if error_class(code, http_status) is not RpcUnavailable:
        return None
    if code in _CAUSE_BY_CODE:
        return _CAUSE_BY_CODE[code]
    if code is not None and code.startswith("40"):
        return "conflict"
    return "unavailable"
