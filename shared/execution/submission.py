"""What a client submits to `POST /` (SPEC §4), read and checked before anything else happens.

    Idempotency-Key: <1..255 printable ASCII, no leading/trailing space>     (else 400)
    body: {"proposal_id": "<uuid>"}                       from a user token
          {"proposal_id": "<uuid>", "user_id": "<uuid>"}   from a service-role bearer

A JSON object (the edge has bounded its size), no other members, uuids in their canonical
36-character form. Every refusal is a 400 problem document saying what was wrong, never echoing a
value. Whether `user_id` may or must be present depends on who is calling,
so `Submission.owner(principal)` decides it after authentication: a user token may not send it
(400 unknown field — the user is the token's `sub`), the service must.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from shared.api import body as body_json
from shared.api.edge import HttpRequest
from shared.api.problems import ProblemError
from shared.auth import Principal

IDEMPOTENCY_KEY_HEADER = "idempotency-key"
# The same rule as trade_executions_idempotency_key_format (the database checks it again).
_IDEMPOTENCY_KEY = re.compile(r"[\x21-\x7e](?:[\x20-\x7e]{0,253}[\x21-\x7e])?")
_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_FIELDS = ("proposal_id", "user_id")


@dataclass(frozen=True)
class Submission:
    idempotency_key: str
    proposal_id: uuid.UUID
    user_id: uuid.UUID | None = None

    def owner(self, principal: Principal) -> uuid.UUID:
        """Whose proposal this is (claim_trade_execution's p_user_id)."""
        if principal.is_service:
            if self.user_id is None:
                raise invalid_body(["user_id: required for a service-role caller"])
            return self.user_id
        if self.user_id is not None:
            raise invalid_body(["user_id: unknown field (the user is the token's subject)"])
        assert principal.user_id is not None
        return principal.user_id


def parse_submission(request: HttpRequest) -> Submission:
    key = idempotency_key(request.header(IDEMPOTENCY_KEY_HEADER))
    document = json_object(request.body)
    problems = [f"{name}: unknown field" for name in sorted(document) if name not in _FIELDS]
    proposal_id = _uuid(document, "proposal_id", problems, required=True)
    user_id = _uuid(document, "user_id", problems, required=False)
    if problems:
        raise invalid_body(problems)
    assert proposal_id is not None
    return Submission(idempotency_key=key, proposal_id=proposal_id, user_id=user_id)


def idempotency_key(value: str | None) -> str:
    if value is None or value == "":
        raise ProblemError(400, "invalid-idempotency-key",
                           "the Idempotency-Key header is required (1..255 printable ASCII "
                           "characters); send the same key when you retry")
    if len(value) > 255 or not _IDEMPOTENCY_KEY.fullmatch(value):
        raise ProblemError(400, "invalid-idempotency-key",
                           "the Idempotency-Key header must be 1..255 printable ASCII characters "
                           "without leading or trailing spaces")
    return value


def json_object(body: bytes) -> dict[str, Any]:
    """The body as a JSON object (an empty body is an empty object); strict: shared.api.body."""
    try:
        return body_json.json_object(body)
    except body_json.InvalidJson as error:
        raise invalid_body([str(error)]) from None


def invalid_body(problems: list[str]) -> ProblemError:
    return ProblemError(400, "invalid-body", "; ".join(problems), errors=problems)


def _uuid(document: Mapping[str, Any], name: str, problems: list[str],
          *, required: bool) -> uuid.UUID | None:
    if name not in document:
        if required:
            problems.append(f"{name}: required")
        return None
    value = document[name]
    if not isinstance(value, str):
        problems.append(f"{name}: must be a string (a uuid), not {_json_type(value)}")
        return None
    if not _UUID.fullmatch(value):
        problems.append(f"{name}: must be a uuid like 123e4567-e89b-12d3-a456-426614174000")
        return None
    return uuid.UUID(value)


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__
