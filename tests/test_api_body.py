"""shared.api.body: the strict JSON body both functions read (regressions found by the fuzzers,
tests/test_fuzz_http.py)."""

from __future__ import annotations

import io
import json
import socket
import time

import pytest

from shared.api.body import (
    BodyStream,
    BodyTimeout,
    BodyTooLarge,
    InvalidJson,
    UnreadableBody,
    json_object,
    read_body,
)
from shared.api.edge import HttpRequest
from shared.api.problems import ProblemError
from shared.execution.submission import parse_submission
from shared.scanning.tick import max_jobs_from_body

PROPOSAL = "123e4567-e89b-12d3-a456-426614174000"


@pytest.mark.parametrize(("body", "reason"), [
    # finding 1: Python keeps the last of two equal names, so `{"proposal_id": <not mine>,
    # "proposal_id": <mine>}` executed "mine" while anything reading the first saw another request
    (f'{{"proposal_id": "x", "proposal_id": "{PROPOSAL}"}}'.encode(), "more than once"),
    (b'{"a": {"b": 1, "b": 1}}', "more than once"),
    # finding 2: nesting past the recursion limit raised RecursionError (not a ValueError): a 500
    (b"[" * 5000 + b"]" * 5000, "nested too deeply"),
    (b'{"a":' * 2000 + b"1" + b"}" * 2000, "nested too deeply"),
    (b'{"max_jobs": NaN}', "not valid JSON"),
    (b'{"max_jobs": Infinity}', "not valid JSON"),
    (b'{"n": ' + b"9" * 5000 + b"}", "not valid JSON"),   # Python's int-digits limit
    (b"\xff\xfe\x00", "in UTF-8"),
    (b"[]", "must be a JSON object"),
    (b"null", "must be a JSON object"),
])
def test_refused_bodies_say_why(body: bytes, reason: str) -> None:
    with pytest.raises(InvalidJson, match=reason):
        json_object(body)


@pytest.mark.parametrize("body", [b"", b" \r\n\t "])
def test_an_empty_body_is_the_empty_object(body: bytes) -> None:
    assert json_object(body) == {}


def test_the_same_name_in_different_objects_is_fine() -> None:
    assert json_object(b'{"a": {"x": 1}, "b": {"x": 2}}') == {"a": {"x": 1}, "b": {"x": 2}}


def test_both_functions_refuse_a_duplicate_member_with_a_400() -> None:
    body = f'{{"proposal_id": "{PROPOSAL}", "proposal_id": "{PROPOSAL}"}}'.encode()
    request = HttpRequest("POST", "/", {"idempotency-key": "k"}, body)
    with pytest.raises(ProblemError) as refused:
        parse_submission(request)
    assert refused.value.problem.status == 400
    with pytest.raises(ProblemError) as refused:
        max_jobs_from_body(b'{"max_jobs": 1, "max_jobs": 2}', 100)
    assert refused.value.problem.status == 400
    with pytest.raises(ProblemError) as refused:
        max_jobs_from_body(b"[" * 1000, 100)  # within the 1 KiB limit, deeper than the parser
    assert refused.value.problem.status == 400


class _Broken(io.RawIOBase):
    """What gunicorn's reader does with a malformed chunked body: raise its own exception."""

    def read(self, size: int = -1, /) -> bytes:
        raise RuntimeError("InvalidChunkSize('zz')")


class _Trickle(io.RawIOBase):
    """A reader that returns one byte per call (short reads are legal)."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def read(self, size: int = -1, /) -> bytes:
        chunk, self.data = self.data[:1], self.data[1:]
        return chunk


def test_a_body_that_cannot_be_read_is_the_request_s_fault() -> None:
    # finding 3: a malformed chunked body made the server's reader raise inside the function: 500
    with pytest.raises(UnreadableBody, match="could not be read"):
        read_body(_Broken(), 10)


class _Counting(io.RawIOBase):
    """An endless body that counts what was read from it."""

    def __init__(self) -> None:
        self.read_bytes = 0

    def read(self, size: int = -1, /) -> bytes:
        size = 1 << 20 if size < 0 else size
        self.read_bytes += size
        return b"x" * size


def test_read_body_reads_at_most_one_byte_more_than_the_limit() -> None:
    endless = _Counting()
    with pytest.raises(BodyTooLarge, match="at most 10 bytes"):
        read_body(endless, 10)
    assert endless.read_bytes == 11
    assert read_body(io.BytesIO(b"abc"), 10) == b"abc"
    assert read_body(_Trickle(b"abc"), 3) == b"abc"
    with pytest.raises(BodyTooLarge):
        read_body(_Trickle(b"abcdef"), 3)


def test_a_content_length_over_the_limit_is_refused_before_reading() -> None:
    endless = _Counting()
    with pytest.raises(BodyTooLarge):
        read_body(endless, 10, length=11)
    assert endless.read_bytes == 0


def test_a_body_shorter_than_its_content_length_is_unreadable() -> None:
    assert read_body(io.BytesIO(b"abc"), 10, length=3) == b"abc"
    with pytest.raises(UnreadableBody, match="ended before its Content-Length"):
        read_body(io.BytesIO(b"ab"), 10, length=3)


def test_a_client_that_stops_sending_meets_the_deadline() -> None:
    """A socket whose peer sends two bytes of ten and then nothing: the read ends at the
    deadline (the read side is shut), as BodyTimeout — not when the client pleases."""
    ours, theirs = socket.socketpair()
    with ours, theirs:
        theirs.sendall(b"{ ")
        started = time.monotonic()
        with pytest.raises(BodyTimeout, match="within 0.3 s"):
            read_body(ours.makefile("rb", buffering=0), 100, length=10, sock=ours, seconds=0.3)
        assert time.monotonic() - started < 5


def test_a_client_that_sends_in_time_is_read_whole() -> None:
    ours, theirs = socket.socketpair()
    with ours, theirs:
        theirs.sendall(b'{"a": 1}')
        assert read_body(ours.makefile("rb", buffering=0), 100, length=8, sock=ours,
                         seconds=5) == b'{"a": 1}'
        theirs.sendall(b"more")
        assert ours.recv(4) == b"more"  # the deadline was disarmed: the socket still reads


def test_the_body_stream_is_empty_once_closed() -> None:
    """What functions-framework's after-request hook finds: nothing past what the edge read."""
    stream = BodyStream(io.BytesIO(b"x" * 1000))
    assert stream.read(10) == b"x" * 10
    stream.close()
    assert stream.read() == b"" and stream.read(5) == b""


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le", "utf-16-be", "utf-32", "utf-32-le",
                                      "utf-32-be", "utf-8-sig"])
def test_only_utf8_without_a_byte_order_mark_is_json(encoding: str) -> None:
    """RFC 8259 §8.1. Python's json.loads guesses the encoding of bytes and read all of these."""
    body = json.dumps({"proposal_id": PROPOSAL, "note": "caf\u00e9"}).encode(encoding)
    with pytest.raises(InvalidJson, match="JSON in UTF-8, without a byte order mark"):
        json_object(body)
    assert json_object(json.dumps({"note": "caf\u00e9"}).encode()) == {"note": "caf\u00e9"}


def test_an_encoded_surrogate_is_not_utf8() -> None:
    """json.loads read bytes with 'surrogatepass': CESU-style surrogate bytes were accepted."""
    with pytest.raises(InvalidJson, match="UTF-8"):
        json_object(b'{"a": "\xed\xa0\x80"}')
