"""shared.api.problems: RFC 9457 documents with relative /problems/<slug> types, the problem+json
content type, extension members, and nothing but data in them (no exception, repr or secret)."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from decimal import Decimal

import pytest

from shared.api.problems import PROBLEM_JSON, Problem, ProblemError, problem_response


def test_a_problem_response_is_body_status_and_headers() -> None:
    execution = uuid.uuid4()
    body, status, headers = problem_response(
        409, "in-flight", "the execution is still in flight", headers={"Retry-After": "1"},
        execution_id=execution)
    assert status == 409
    assert headers == {"Retry-After": "1", "Content-Type": "application/problem+json"}
    assert json.loads(body) == {"type": "/problems/in-flight", "title": "In flight",
                                "status": 409, "detail": "the execution is still in flight",
                                "execution_id": str(execution)}


def test_extension_members_carry_data_money_as_strings() -> None:
    error = ProblemError(422, "rejected", "the proposal failed its checks",
                         title="Proposal rejected", instance="/executions/abc",
                         failed_checks=[{"check": "cooldown", "reason": "too soon"}],
                         amount_quote=Decimal("10.10"), at=datetime(2026, 1, 1, tzinfo=UTC),
                         replayed=False, count=2, note=None)
    body, status, headers = error.response()
    assert status == 422 and headers["Content-Type"] == PROBLEM_JSON
    assert json.loads(body) == {
        "type": "/problems/rejected", "title": "Proposal rejected", "status": 422,
        "detail": "the proposal failed its checks", "instance": "/executions/abc",
        "failed_checks": [{"check": "cooldown", "reason": "too soon"}],
        "amount_quote": "10.10", "at": "2026-01-01T00:00:00+00:00", "replayed": False,
        "count": 2, "note": None}
    assert str(error) == "422 /problems/rejected: the proposal failed its checks"


def test_the_type_is_relative_and_the_title_follows_the_slug() -> None:
    problem = Problem(422, "idempotency-key-reused", "key used for another proposal")
    assert problem.type == "/problems/idempotency-key-reused"
    assert problem.to_dict()["title"] == "Idempotency key reused"


def test_unicode_is_kept_and_the_body_is_utf8() -> None:
    body, _, _ = problem_response(400, "invalid-body", "ünïcode détail")
    assert "ünïcode détail".encode() in body


def test_a_lone_surrogate_from_the_request_is_replaced_not_a_500() -> None:
    # Found by fuzzing: the body b'{"\xed\xa0\x80": null}' decodes (json.loads reads bytes with
    # surrogatepass) to a member name "\ud800", echoed as "\ud800: unknown field"; encoding the
    # document raised UnicodeEncodeError, which trading_execute answered with a 500.
    body, status, _ = problem_response(400, "invalid-body", "\ud800: unknown field",
                                       errors=["\udfff: unknown field"])
    assert status == 400
    assert json.loads(body.decode("utf-8"))["detail"] == "\ufffd: unknown field"


@pytest.mark.parametrize(("build", "error"), [
    (lambda: problem_response(500, "boom", "x", error=RuntimeError("trace")), TypeError),
    (lambda: problem_response(500, "boom", "x", when=object()), TypeError),
    (lambda: problem_response(500, "boom", RuntimeError("trace")), TypeError),  # type: ignore[arg-type]
    (lambda: problem_response(200, "fine", "not a problem"), ValueError),
    (lambda: problem_response(400, "Bad_Slug", "x"), ValueError),
    (lambda: problem_response(400, "../evil", "x"), ValueError),
    (lambda: problem_response(400, "bad", "x", **{"type": "https://evil"}), ValueError),
    (lambda: Problem(400, "bad", "x", extensions={"status": 200}), ValueError),
    (lambda: problem_response(400, "bad", "x", headers={"X": "a\r\nSet-Cookie: x=1"}),
     ValueError),
    (lambda: problem_response(400, "bad", "x", amount=Decimal("NaN")), ValueError),
])
def test_only_data_goes_in(build: object, error: type[Exception]) -> None:
    with pytest.raises(error):
        build()  # type: ignore[operator]


def test_secrets_in_detail_or_extensions_are_redacted() -> None:
    token = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJlc2lnbmF0dXJl"
    body, _, _ = problem_response(401, "unauthorized", f"bad token Bearer {token}",
                                  seen=f"postgresql://app:hunter2hunter2@db:5432/x {'ab' * 32}")
    text = body.decode()
    assert token not in text and "hunter2hunter2" not in text and "ab" * 32 not in text
    document = json.loads(body)
    assert document["detail"] == "bad token Bearer [redacted]"
    assert document["seen"] == "postgresql://app:[redacted]@db:5432/x [redacted-hex]"
