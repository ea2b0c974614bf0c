"""A request body, read within bounds and parsed as one JSON object, strictly, for both functions.

    body = read_body(stream, limit, length=…, sock=…, seconds=…)   # bytes, or one of the errors
    document = json_object(body)              # dict, or InvalidJson naming what is wrong

Reading is bounded three ways, each the client's fault when it fails:
- in bytes: a `Content-Length` over the limit is `BodyTooLarge` before anything is read; a body
  without one (chunked) is read to one byte past the limit at most — never held whole in memory;
- in time: the whole read has `seconds` (shared.api.deadlines shuts the socket's read side when
  they are up): `BodyTimeout`, never a thread waiting for a client that stopped sending;
- in form: the WSGI server decodes the framing while we read, so a malformed chunked body surfaces
  as the server's own exception from `read()` (gunicorn's InvalidChunkSize,
  ChunkMissingTerminator…; werkzeug's ClientDisconnected), and a body that ends before its
  Content-Length says so by coming up short: both are `UnreadableBody`. Unhandled, the first was a
  500 with Flask's page.

`BodyStream` is what stays behind in the WSGI environ for functions-framework's after-request hook
(`read_request` → `request.get_data()`), which reads the whole body after every answer: for a
300 MiB body the worker held 300 MiB after it had answered 413, and a client that sent less than
its Content-Length never got the answer at all. Once the function is done the stream is empty;
what the client still sends is the server's to discard (gunicorn drains at most 64 KiB in 5 s
before it reuses a connection, else closes it).

Parsing: what is refused, and why each is a refusal rather than something to make sense of:
- not UTF-8, a byte order mark, or a NUL byte (UTF-16 and UTF-32 text of ASCII JSON is full of
  them): RFC 8259 §8.1 requires UTF-8 between systems. Python's `json.loads` guesses the encoding
  of bytes and executed UTF-16 and UTF-32 bodies, which a proxy or a WAF reading UTF-8 would not
  have read as the same request;
- not JSON (RFC 8259), including Python's extensions `NaN`, `Infinity`, `-Infinity`;
- a member name that appears twice in one object: RFC 8259 leaves the meaning open and I-JSON
  (RFC 7493 §2.3) forbids it. Python keeps the last value, other readers the first, so a proxy,
  a log or a WAF in front of us could read a different request than we execute;
- nesting deeper than the parser can follow (Python's decoder raises RecursionError, which is
  not a ValueError: unhandled, it was a 500);
- anything but an object at the top (the functions take named fields only).

An empty (or all-whitespace) body is the empty object. The errors' messages are safe to show the
caller: they never repeat the body.
"""

from __future__ import annotations

import json
import socket
from typing import Any, Protocol

from shared.api.deadlines import DEADLINES


class Readable(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


class UnreadableBody(ValueError):
    """The request's body could not be read (broken framing, the client went away)."""


class BodyTooLarge(ValueError):
    """The body is over the limit (announced by Content-Length, or read past it)."""


class BodyTimeout(ValueError):
    """The client did not send its body within the read deadline."""


class InvalidJson(ValueError):
    """The body is not one JSON object; `str()` says why, without quoting the body."""


class BodyStream:
    """The WSGI input as functions-framework's after-request read finds it: empty after `close()`
    (see the module docstring)."""

    def __init__(self, source: Readable) -> None:
        self._source = source
        self._open = True

    def read(self, size: int = -1, /) -> bytes:
        return self._source.read(size) if self._open else b""

    def close(self) -> None:
        self._open = False


def read_body(stream: Readable, limit: int, *, length: int | None = None,
              sock: socket.socket | None = None, seconds: float | None = None) -> bytes:
    """The body: `length` bytes when the request announced them, else what comes up to the end of
    the stream. With `sock` and `seconds`, the whole read has `seconds`."""
    if length is not None and length > limit:
        raise BodyTooLarge(f"the body must be at most {limit} bytes")
    watch = DEADLINES.arm(sock, seconds) if sock is not None and seconds is not None else None
    wanted = length if length is not None else limit + 1
    chunks: list[bytes] = []
    received = 0
    broken = False
    try:
        while received < wanted:
            chunk = stream.read(wanted - received)
            if not chunk:
                break
            chunks.append(chunk)
            received += len(chunk)
    except Exception:  # noqa: BLE001 - whatever the server's reader raises is the framing's fault
        broken = True
    if watch is not None and DEADLINES.disarm(watch):
        raise BodyTimeout(f"the body did not arrive within {seconds:g} s")
    if broken:
        raise UnreadableBody("the request body could not be read (malformed framing or the "
                             "connection broke)")
    if received > limit:
        raise BodyTooLarge(f"the body must be at most {limit} bytes")
    if length is not None and received < length:
        raise UnreadableBody("the body ended before its Content-Length")
    return b"".join(chunks)


def json_object(body: bytes) -> dict[str, Any]:
    try:
        text: str | None = body.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    if text is None or text.startswith("\ufeff") or "\x00" in text:
        raise InvalidJson("the body must be JSON in UTF-8, without a byte order mark "
                          "(RFC 8259 §8.1)")
    if not text.strip():
        return {}
    try:
        document = json.loads(text, object_pairs_hook=_unique_members,
                              parse_constant=_refuse_constant)
    except _DuplicateMember as duplicate:
        raise InvalidJson(str(duplicate)) from None
    except RecursionError:
        raise InvalidJson("the body is nested too deeply") from None
    except ValueError:  # JSONDecodeError, too many digits in a number
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
