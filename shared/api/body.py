"""A request body, read and parsed as one JSON object, strictly, for both functions.

    body = read_body(request.stream, limit)   # at most limit + 1 bytes, or UnreadableBody
    document = json_object(body)              # dict, or InvalidJson naming what is wrong

Reading: the WSGI server decodes the framing (Content-Length, chunked) while the function reads,
so a malformed chunked body surfaces as the server's own exception from `read()` (gunicorn's
InvalidChunkSize, ChunkMissingTerminator…; werkzeug's ClientDisconnected). Unhandled, that was a
500 with Flask's page; it is the request's fault, so it is `UnreadableBody` (→ 400). At most one
byte more than the limit is read, so a large body (chunked bodies announce no length) is never
held in memory.

Parsing: what is refused, and why each is a refusal rather than something to make sense of:
- not JSON (RFC 8259), including Python's extensions `NaN`, `Infinity`, `-Infinity`;
- a member name that appears twice in one object: RFC 8259 leaves the meaning open and I-JSON
  (RFC 7493 §2.3) forbids it. Python keeps the last value, other readers the first, so a proxy,
  a log or a WAF in front of us could read a different request than we execute;
- nesting deeper than the parser can follow (Python's decoder raises RecursionError, which is
  not a ValueError: unhandled, it was a 500);
- anything but an object at the top (the functions take named fields only).

An empty (or all-whitespace) body is the empty object. `InvalidJson`'s message is safe to show
the caller: it never repeats the body.
"""

from __future__ import annotations

import json
from typing import Any, Protocol


class Readable(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


class UnreadableBody(ValueError):
    """The request's body could not be read (broken framing, the client went away)."""


class InvalidJson(ValueError):
    """The body is not one JSON object; `str()` says why, without quoting the body."""


def read_body(stream: Readable, limit: int) -> bytes:
    """Up to `limit` + 1 bytes of the body (one byte more than allowed shows it is too large)."""
    chunks: list[bytes] = []
    remaining = limit + 1
    try:
        while remaining > 0:
            chunk = stream.read(remaining)
            if not chunk:
                break
            chunks.append(chunk)
            remaining -= len(chunk)
    except Exception:  # noqa: BLE001 - whatever the server's reader raises is the framing's fault
        raise UnreadableBody("the request body could not be read (malformed framing or the "
                             "connection broke)") from None
    return b"".join(chunks)


def json_object(body: bytes) -> dict[str, Any]:
    if not body.strip():
        return {}
    try:
        document = json.loads(body, object_pairs_hook=_unique_members,
                              parse_constant=_refuse_constant)
    except _DuplicateMember as duplicate:
        raise InvalidJson(str(duplicate)) from None
    except RecursionError:
        raise InvalidJson("the body is nested too deeply") from None
    except ValueError:  # JSONDecodeError, UnicodeDecodeError, too many digits in a number
        raise InvalidJson("the body is not valid JSON") from None
    if not isinstance(document, dict):
        raise InvalidJson("the body must be a JSON object")
    return document


class _DuplicateMember(ValueError):
    pass


def _unique_members(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    document: dict[str, Any] = {}
    for name, value in pairs:
        if name in document:
            raise _DuplicateMember("the body names a member more than once (RFC 7493 §2.3)")
        document[name] = value
    return document


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")
