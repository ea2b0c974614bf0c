"""One JSON log line per step of a request, with the ids that tie the steps together.

    log = StepLog(request_id=request.headers.get("X-Request-Id"), mode="paper")
    with log.step("auth"):
        principal = verifier.verify(request.headers.get("Authorization"))
    log.bind(user_id=principal.user_id, proposal_id=body.proposal_id)
    with log.step("claim") as step:
        result = rpc.call("claim_trade_execution", …)
        step.set(outcome=result["outcome"], execution_id=(result["execution"] or {}).get("id"))

Each step writes, when it ends, one line to the `aio.steps` logger:

    {"severity": "INFO", "time": "…Z", "step": "claim", "outcome": "claimed", "duration_ms": 4.2,
     "request_id": "…", "mode": "paper", "user_id": "…", "proposal_id": "…", "execution_id": "…"}

`outcome` is "ok" unless the step sets it; an exception leaving the block makes it "error" (unless
the step had set another outcome) with `error` (the exception's class), `error_code` (its
`code`/`error_code`, when it has one) and a redacted, shortened `error_message` — never a
traceback. `duration_ms` is measured with the monotonic clock.

Every string in every line (keys and values) passes through shared.redaction.redact: the safety
net that scrubs credentials a caller logged by mistake.
"""

from __future__ import annotations

import json
import logging
import sys
import time
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, date, datetime
from decimal import Decimal
from enum import Enum
from typing import IO, Any

from pydantic import SecretStr

from shared.redaction import redact

LOGGER_NAME = "aio.steps"
MAX_ERROR_MESSAGE = 300

def new_request_id() -> str:
    return uuid.uuid4().hex


def _plain(value: Any) -> Any:
    """A JSON-ready, redacted copy of a field value."""
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, float):
        return round(value, 3)
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, Decimal | uuid.UUID):
        return str(value)
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, Enum):
        return _plain(value.value)
    if isinstance(value, Mapping):
        return {redact(str(k)): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_plain(v) for v in value]
    if isinstance(value, SecretStr):
        return "[redacted]"
    return redact(f"<{type(value).__name__}>")  # never str() of an arbitrary object


class Step:
    """The step in progress: set its outcome and extra fields before it ends."""

    def __init__(self, name: str, fields: dict[str, Any]) -> None:
        self.name = name
        self.outcome = "ok"
        self.severity: str | None = None
        self.fields = fields

    def set(self, outcome: str | None = None, *, severity: str | None = None,
            **fields: Any) -> None:
        if outcome is not None:
            self.outcome = outcome
        if severity is not None:
            self.severity = severity.upper()
        self.fields.update(fields)


class StepLog:
    """The step lines of one request. Not shared between requests (create one per request)."""

    def __init__(self, *, request_id: str | None = None, logger: logging.Logger | None = None,
                 **context: Any) -> None:
        self.request_id = request_id or new_request_id()
        self._logger = logger or logging.getLogger(LOGGER_NAME)
        self._context: dict[str, Any] = {k: v for k, v in context.items() if v is not None}

    def bind(self, **fields: Any) -> None:
        """Ids learned along the way (user_id, proposal_id, execution_id, mode …), added to every
        later line. None values are ignored."""
        self._context.update({k: v for k, v in fields.items() if v is not None})

    @contextmanager
    def step(self, name: str, **fields: Any) -> Iterator[Step]:
        step = Step(name, dict(fields))
        started = time.perf_counter()
        try:
            yield step
        except BaseException as exc:
            duration = (time.perf_counter() - started) * 1000
            if step.outcome == "ok":
                step.outcome = "error"
            code = getattr(exc, "code", None) or getattr(exc, "error_code", None)
            step.fields.update(error=type(exc).__name__,
                               error_message=redact(str(exc))[:MAX_ERROR_MESSAGE])
            if isinstance(code, str | int) and not isinstance(code, bool):
                step.fields["error_code"] = code
            self._write(step, duration, default_severity="ERROR")
            raise
        self._write(step, (time.perf_counter() - started) * 1000, default_severity="INFO")

    def event(self, name: str, outcome: str = "ok", *, severity: str = "INFO",
              **fields: Any) -> None:
        """A line for something that is not timed (a decision, a count)."""
        step = Step(name, dict(fields))
        step.set(outcome, severity=severity)
        self._write(step, None, default_severity="INFO")

    def _write(self, step: Step, duration_ms: float | None, *, default_severity: str) -> None:
        severity = step.severity or default_severity
        line: dict[str, Any] = {
            "severity": severity,
            "time": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "step": step.name,
            "outcome": step.outcome,
            "duration_ms": None if duration_ms is None else round(duration_ms, 1),
            "request_id": self.request_id,
            **self._context,
            **step.fields,
        }
        text = json.dumps(_plain(line), ensure_ascii=False, separators=(",", ":"))
        level = logging.getLevelName(severity)
        self._logger.log(level if isinstance(level, int) else logging.INFO, text)


def configure(stream: IO[str] | None = None, level: int = logging.INFO) -> logging.Handler:
    """Send the step lines, bare (one JSON object per line), to `stream` (stdout by default —
    what Cloud Functions / Cloud Run turn into structured logs). Returns the handler."""
    logger = logging.getLogger(LOGGER_NAME)
    handler = logging.StreamHandler(stream or sys.stdout)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False
    return handler
