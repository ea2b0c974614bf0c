"""shared.api.body: the strict JSON body both functions read (regressions found by the fuzzers,
tests/test_fuzz_http.py)."""

from __future__ import annotations

import io

import pytest

from shared.api.body import InvalidJson, UnreadableBody, json_object, read_body
from shared.api.problems import ProblemError
from shared.execution.submission import HttpRequest, parse_submission
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
    (b"\xff\xfe\x00", "not valid JSON"),
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


def test_read_body_reads_at_most_one_byte_more_than_the_limit() -> None:
    assert read_body(io.BytesIO(b"x" * 100), 10) == b"x" * 11
    assert read_body(io.BytesIO(b"abc"), 10) == b"abc"
    assert read_body(_Trickle(b"abcdef"), 3) == b"abcd"
