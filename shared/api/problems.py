"""RFC 9457 problem documents (`application/problem+json`), framework-agnostic.

    body, status, headers = problem_response(409, "in-flight", "the execution is still running",
                                             headers={"Retry-After": "1"}, execution_id=eid)
    return body, status, headers            # Flask / functions-framework accept this tuple

    raise ProblemError(422, "rejected", "the proposal failed its checks", failed_checks=[…])
    …
    except ProblemError as problem:
        return problem.response()

A document always has `type` = `/problems/<slug>` (relative, RFC 9457), `title` (one per type:
the slug as a sentence unless given), `status` and `detail` (this occurrence; SPEC §4 requires
it), optionally `instance`, and extension members. Only data goes in — str, int, bool, None,
Decimal, UUID, datetime, and lists / dicts of them; anything else (an exception, an arbitrary
object) is a TypeError when the document is built, so no stack trace or repr can ever reach a
response. Strings pass through `shared.redaction.redact`, the same safety net as the logs.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal
from typing import Any

from shared.redaction import redact

PROBLEM_JSON = "application/problem+json"
TYPE_PREFIX = "/problems/"

_SLUG = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)*")
_MEMBER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
_RESERVED = frozenset({"type", "title", "status", "detail", "instance"})


def _value(value: Any, where: str) -> Any:
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, Decimal):
        if not value.is_finite():
            raise ValueError(f"{where}: {value} is not a finite decimal")
        return format(value, "f")
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, Mapping):
        return {str(k): _value(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_value(v, f"{where}[{i}]") for i, v in enumerate(value)]
    raise TypeError(f"{where}: {type(value).__name__} cannot go into a problem document")


@dataclass(frozen=True)
class Problem:
    status: int
    slug: str
    detail: str
    title: str | None = None
    instance: str | None = None
    extensions: Mapping[str, Any] = field(default_factory=dict)
    headers: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not 400 <= self.status <= 599:
            raise ValueError(f"a problem's status is 4xx or 5xx, not {self.status}")
        if not _SLUG.fullmatch(self.slug):
            raise ValueError(f"problem slug {self.slug!r} must be lowercase words joined by '-'")
        for text in (self.detail, self.title, self.instance):
            if text is not None and not isinstance(text, str):
                raise TypeError(f"detail, title and instance are text, not {type(text).__name__}")
        for name, value in self.headers.items():
            if not isinstance(value, str) or "\r" in value or "\n" in value:
                raise ValueError(f"header {name!r} must be a single-line string")
        for name in self.extensions:
            if name in _RESERVED or not _MEMBER.fullmatch(name):
                raise ValueError(f"{name!r} cannot be a problem extension member")
        self.to_dict()  # refuse what cannot be serialised now, not when answering

    @property
    def type(self) -> str:
        return TYPE_PREFIX + self.slug

    def to_dict(self) -> dict[str, Any]:
        document: dict[str, Any] = {
            "type": self.type,
            "title": self.title or self.slug.replace("-", " ").capitalize(),
            "status": self.status,
            "detail": self.detail,
        }
        if self.instance is not None:
            document["instance"] = self.instance
        document.update(self.extensions)
        return {name: _value(value, name) for name, value in document.items()}

    def response(self) -> tuple[bytes, int, dict[str, str]]:
        """(body, status, headers) with Content-Type application/problem+json."""
        body = json.dumps(self.to_dict(), ensure_ascii=False, separators=(",", ":")).encode()
        headers = {**self.headers, "Content-Type": PROBLEM_JSON}
        return body, self.status, headers


def problem_response(status: int, slug: str, detail: str, *,
                     title: str | None = None, instance: str | None = None,
                     headers: Mapping[str, str] | None = None,
                     **extensions: Any) -> tuple[bytes, int, dict[str, str]]:
    """Build and render a problem document in one go."""
    return Problem(status, slug, detail, title, instance, extensions, headers or {}).response()


class ProblemError(Exception):
    """Raise anywhere in a request path to answer with this problem document."""

    def __init__(self, status: int, slug: str, detail: str, *,
                 title: str | None = None, instance: str | None = None,
                 headers: Mapping[str, str] | None = None, **extensions: Any) -> None:
        self.problem = Problem(status, slug, detail, title, instance, extensions, headers or {})
        super().__init__(f"{status} {self.problem.type}: {detail}")

    def response(self) -> tuple[bytes, int, dict[str, str]]:
        return self.problem.response()
