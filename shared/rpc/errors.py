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
                                   PGRST000-003. The call's OUTCOME IS UNKNOWN — it may have
                                   committed. Never repeat a write blindly; reconcile (G10).

A plain `RpcError` is a definite failure the database reported (the transaction rolled back) that
none of the above describes (e.g. P0001, 23505).

One function, `error_for`, decides the class for both adapters: the SQLSTATE decides when there is
one (so a PostgREST body and a psycopg exception with the same code give the same class), the HTTP
status only when PostgREST (or a gateway in front of it) sent no code. Messages are the database's
or our own; they never contain the DB URL, a password or the service key.
"""

from __future__ import annotations

from typing import ClassVar


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
    ) -> None:
        self.message = message
        self.code = code
        self.details = details
        self.hint = hint
        self.fn = fn
        self.http_status = http_status
        super().__init__(message)

    def __str__(self) -> str:
        where = f"rpc {self.fn}" if self.fn else "rpc"
        code = f" [{self.code}]" if self.code else ""
        return f"{where}{code}: {self.message}"

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(fn={self.fn!r}, code={self.code!r}, "
                f"message={self.message!r})")


class RpcInvalidArgument(RpcError):
    """Class 22 (data exception): the arguments were refused; nothing was changed."""


class RpcPermissionDenied(RpcError):
    """The role may not do this (42501, class 28, PostgREST 401/403): a configuration error."""


class RpcUndefinedFunction(RpcError):
    """No such function with these argument names (42883 / PGRST202)."""


class RpcUnavailable(RpcError):
    """No definite answer: the call may or may not have taken effect. Never repeat a write."""

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
) -> RpcError:
    """The exception for one failed call, identical for both adapters for the same code."""
    cls = error_class(code, http_status)
    return cls(message, code=code, details=details, hint=hint, fn=fn, http_status=http_status)
