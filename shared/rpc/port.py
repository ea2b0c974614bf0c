"""The RPC port: one interface, two adapters (DirectRpc over psycopg, PostgrestRpc over HTTP).

    call(fn, args) -> Any          a scalar / jsonb function, like PostgREST's POST /rpc/<fn>
    rows(fn, args) -> list[dict]   a SETOF / TABLE function
    close()

Every call acts as `service_role` (claims `{"role": "service_role"}`), exactly like a PostgREST call
with the service key. Arguments are named, like the JSON object PostgREST takes. Both adapters put
arguments and results through the same two functions below, so a value means the same thing on
either road:

- in (`encode_args`): `str`, `int`, `bool`, `None`, `Decimal`, `uuid.UUID`, tz-aware `datetime`,
  `date`, and dicts/lists of those (for json/jsonb parameters). `Decimal` goes out as its exact
  decimal string (money is a string on the wire, SPEC §3; PostgreSQL reads it into `numeric`
  exactly, and our jsonb readers accept decimal strings). `float` is refused: it is not money.
- out (`decode_json`): the result as PostgreSQL's own JSON rendering of it (what PostgREST sends),
  parsed with every JSON number as `Decimal` — never float, and never int either: a `numeric`
  whose value happens to be whole (`10`) is rendered without a fraction, and money must not change
  type with its value (`amount.quantize(…)` works on every amount). Counts are Decimal too and
  compare equal to ints. uuids and timestamps arrive as strings.

Errors are `shared.rpc.errors` classes, identical for both adapters.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Mapping
from datetime import date, datetime
from decimal import Decimal
from typing import Any, Protocol, runtime_checkable

from shared.rpc.errors import RpcInvalidArgument

# Unquoted lowercase SQL identifiers only: our functions and their p_… arguments. A name outside
# this shape is refused before anything is sent, so no caller-supplied text can reach the SQL
# (DirectRpc) or the URL path (PostgrestRpc).
_IDENTIFIER = re.compile(r"[a-z_][a-z0-9_]{0,62}")
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")

SERVICE_ROLE = "service_role"
SERVICE_CLAIMS = {"role": SERVICE_ROLE}


@runtime_checkable
class RpcPort(Protocol):
    def call(self, fn: str, args: Mapping[str, Any] | None = None) -> Any:
        """Call public.<fn>(<named args>) as service_role; its JSON result (Decimal numbers)."""
        ...

    def rows(self, fn: str, args: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
        """Call a SETOF/TABLE function public.<fn>(<named args>) as service_role; its rows."""
        ...

    def close(self) -> None:
        """Release connections / sessions. The port is unusable afterwards."""
        ...


def check_identifier(name: str, what: str = "name") -> str:
    if not isinstance(name, str) or not _IDENTIFIER.fullmatch(name):
        raise ValueError(f"invalid RPC {what} {name!r}: expected a lowercase SQL identifier")
    return name


def encode_args(fn: str, args: Mapping[str, Any] | None) -> dict[str, Any]:
    """Validate the function and argument names and turn the values into plain JSON values."""
    check_identifier(fn, "function name")
    encoded: dict[str, Any] = {}
    for name, value in (args or {}).items():
        check_identifier(name, "argument name")
        encoded[name] = _jsonable(value, fn, name)
    return encoded


def _jsonable(value: Any, fn: str, where: str) -> Any:
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, str):
        _check_text(value, fn, where)
        return value
    if isinstance(value, Decimal):
        if not value.is_finite():
            raise ValueError(f"{where}: {value} is not a finite decimal")
        return format(value, "f")
    if isinstance(value, float):
        raise TypeError(f"{where}: float is not accepted for RPC arguments; use Decimal")
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, datetime):
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(f"{where}: naive datetime; use an aware (UTC) datetime")
        return value.isoformat()
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"{where}: JSON object keys must be str, got {type(key).__name__}")
            _check_text(key, fn, f"{where} (a key)")
            out[key] = _jsonable(item, fn, f"{where}.{key}")
        return out
    if isinstance(value, list | tuple):
        return [_jsonable(item, fn, f"{where}[{i}]") for i, item in enumerate(value)]
    raise TypeError(f"{where}: {type(value).__name__} is not accepted for RPC arguments")


def _check_text(value: str, fn: str, where: str) -> None:
    """Text PostgreSQL can store, refused the same way on both roads before anything is sent:
    no NUL (text cannot hold it: 22P05), and no lone surrogate (U+D800-U+DFFF, what `json.loads`
    makes of a "\\ud800" escape; it has no UTF-8 encoding, so the driver raised a bare
    UnicodeEncodeError instead of an RpcError: 22021, PostgreSQL's code for invalid text)."""
    if "\x00" in value:
        raise RpcInvalidArgument(f"{where} must not contain NUL (0x00) characters",
                                 code="22P05", fn=fn)
    if _LONE_SURROGATE.search(value):
        raise RpcInvalidArgument(f"{where} must not contain lone surrogates (U+D800-U+DFFF)",
                                 code="22021", fn=fn)


def dumps(value: Any) -> str:
    """JSON text of an already-encoded value (compact, UTF-8, no NaN)."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def decode_json(text: str | bytes) -> Any:
    """Parse an RPC result: every JSON number becomes a Decimal (never float, never int)."""
    return json.loads(text, parse_float=Decimal, parse_int=Decimal)


def as_rows(fn: str, value: Any) -> list[dict[str, Any]]:
    """`rows()`'s contract: a JSON array of objects (a SETOF / TABLE function's result)."""
    if not isinstance(value, list) or not all(isinstance(row, dict) for row in value):
        raise TypeError(f"rpc {fn}: expected a set of rows, got {type(value).__name__}; "
                        "use call() for scalar and jsonb functions")
    return value
