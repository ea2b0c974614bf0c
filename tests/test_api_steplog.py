"""shared.api.steplog: one JSON line per step with ids, outcome and duration; errors logged by class
and code without a traceback; the redaction net over every line."""

from __future__ import annotations

import io
import json
import logging
import uuid
from decimal import Decimal
from typing import Any

import pytest
from pydantic import SecretStr

from shared.api import steplog
from shared.api.steplog import StepLog
from shared.redaction import redact, register_secret
from shared.rpc.errors import RpcInvalidArgument

JWT = ("eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIiwicm9sZSI6InNlcnZpY2Vfcm9s"
       "ZSJ9.SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c")
HEX_KEY = "0123456789abcdef" * 4
HEX_SECRET = "fedcba9876543210" * 8


def records(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    return [json.loads(r.getMessage()) for r in caplog.records if r.name == steplog.LOGGER_NAME]


def test_one_line_per_step_with_ids_outcome_and_duration(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=steplog.LOGGER_NAME)
    user, proposal, execution = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    log = StepLog(request_id="req-1", mode="paper")
    with log.step("parse"):
        pass
    log.bind(user_id=user, proposal_id=proposal, ignored=None)
    with log.step("claim") as step:
        step.set(outcome="claimed", execution_id=execution)
    log.event("respond", "201", status=201)
    parse, claim, respond = records(caplog)
    assert parse["step"] == "parse" and parse["outcome"] == "ok"
    assert parse["request_id"] == "req-1" and parse["mode"] == "paper"
    assert "user_id" not in parse
    assert claim == {**claim, "step": "claim", "outcome": "claimed", "user_id": str(user),
                     "proposal_id": str(proposal), "execution_id": str(execution),
                     "severity": "INFO"}
    assert "ignored" not in claim
    assert isinstance(claim["duration_ms"], float) and claim["duration_ms"] >= 0
    assert respond["duration_ms"] is None and respond["status"] == 201
    assert claim["time"].endswith("Z")
    assert all(r.levelno == logging.INFO for r in caplog.records)


def test_an_exception_is_an_error_line_with_class_and_code_then_reraised(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=steplog.LOGGER_NAME)
    log = StepLog(request_id="req-2")
    with pytest.raises(RpcInvalidArgument):
        with log.step("claim"):
            raise RpcInvalidArgument("p_mode must be paper or live", code="22023",
                                     fn="claim_trade_execution")
    (line,) = records(caplog)
    assert line["outcome"] == "error" and line["severity"] == "ERROR"
    assert line["error"] == "RpcInvalidArgument" and line["error_code"] == "22023"
    assert "p_mode must be paper or live" in line["error_message"]
    assert "Traceback" not in caplog.text
    assert caplog.records[0].levelno == logging.ERROR and caplog.records[0].exc_info is None


def test_an_outcome_set_before_the_exception_is_kept(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=steplog.LOGGER_NAME)
    log = StepLog()
    with pytest.raises(TimeoutError):
        with log.step("exchange") as step:
            step.set(outcome="unknown", severity="warning", client_order_id="c-1")
            raise TimeoutError("read timed out")
    (line,) = records(caplog)
    assert (line["outcome"], line["severity"], line["error"]) == \
        ("unknown", "WARNING", "TimeoutError")
    assert line["client_order_id"] == "c-1"
    assert caplog.records[0].levelno == logging.WARNING


def test_every_line_is_redacted(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=steplog.LOGGER_NAME)
    log = StepLog(request_id="req-3", authorization=f"Bearer {JWT}")
    with pytest.raises(ValueError):
        with log.step("auth", token=JWT, header={"Authorization": f"bearer {JWT}"},
                      keys=[HEX_KEY, HEX_SECRET], key=SecretStr("hidden-value"),
                      url="postgresql://postgres:pa55w0rd-xyz@db.example:6543/postgres",
                      new_key="sb_secret_abcDEF123_-xyz", amount=Decimal("1.5")):
            raise ValueError(f"bad signature {HEX_KEY} for {JWT}")
    text = caplog.text
    for secret in (JWT, HEX_KEY, HEX_SECRET, "pa55w0rd-xyz", "sb_secret_abcDEF123_-xyz",
                   "hidden-value"):
        assert secret not in text
    (line,) = records(caplog)
    assert line["authorization"] == "Bearer [redacted]"
    assert line["url"] == "postgresql://postgres:[redacted]@db.example:6543/postgres"
    assert line["keys"] == ["[redacted-hex]", "[redacted-hex]"]
    assert line["amount"] == "1.5"


def test_registered_secrets_are_scrubbed_and_objects_never_stringified(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=steplog.LOGGER_NAME)
    secret = f"plain-{uuid.uuid4().hex[:10]}"
    register_secret(SecretStr(secret))
    register_secret("short")  # too short to register; ordinary words stay

    class Leaky:
        def __str__(self) -> str:
            return secret

    StepLog().event("config", detail=f"using {secret}", obj=Leaky(), word="short")
    (line,) = records(caplog)
    assert line["detail"] == "using [redacted]" and line["obj"] == "<Leaky>"
    assert line["word"] == "short"


@pytest.mark.parametrize("reason", [
    "missing bearer token", "the bearer token is not a valid JWT", "the bearer token is too long",
    "the Authorization header must be 'Bearer <token>'", "Bearer error=\"invalid_token\""])
def test_redact_leaves_our_own_401_reasons_readable(reason: str) -> None:
    """The redactor took the word after "bearer" in our own messages for a credential: 401
    details read "missing Bearer [redacted]"."""
    assert redact(reason) == reason


@pytest.mark.parametrize("credential", [
    "opaque-token-0123456789abcdef", "sb_secret_abcDEF123_-xyz", "A" * 16, JWT, HEX_KEY,
    "dXNlcjpwYXNzd29yZC1sb25nLWVub3VnaA=="])
def test_redact_still_hides_every_real_credential(credential: str) -> None:
    for text in (f"Authorization: Bearer {credential}", f"bearer\t{credential} sent"):
        assert credential not in redact(text), text


def test_redact_leaves_ordinary_text_alone() -> None:
    text = ("claimed BTC-EUR 10.50 EUR for 6f1c1e7e-3b7a-4c52-9d55-0b6f2c4b8a11 at "
            "https://api.bitvavo.com/v2/order?market=BTC-EUR, sha1 " + "a" * 40)
    assert redact(text) == text


def test_configure_writes_bare_json_lines() -> None:
    stream = io.StringIO()
    handler = steplog.configure(stream)
    try:
        StepLog(request_id="req-4").event("tick", "ok", claimed=3)
    finally:
        logger = logging.getLogger(steplog.LOGGER_NAME)
        logger.removeHandler(handler)
        logger.propagate = True
    (line,) = stream.getvalue().splitlines()
    assert json.loads(line)["claimed"] == 3


def test_a_line_with_a_lone_surrogate_is_written_not_a_logging_error() -> None:
    # What a request body's "\ud800" member name becomes in the parse step's `reason`: a UTF-8
    # stream cannot take it, and logging printed a "Logging error" traceback instead of the line.
    raw = io.BytesIO()
    stream = io.TextIOWrapper(raw, encoding="utf-8", errors="strict", write_through=True)
    handler = steplog.configure(stream)

    def fail(record: logging.LogRecord) -> None:
        raise AssertionError("logging error: the line was not written")

    handler.handleError = fail  # type: ignore[method-assign]
    try:
        StepLog(request_id="req-5").event("parse", "400", reason="\ud800: unknown field",
                                          **{"\udfff": 1})
    finally:
        logger = logging.getLogger(steplog.LOGGER_NAME)
        logger.removeHandler(handler)
        logger.propagate = True
    (line,) = raw.getvalue().decode("utf-8").splitlines()
    assert json.loads(line)["reason"] == "\ufffd: unknown field"
