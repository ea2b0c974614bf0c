"""Naming a user on the command line: a uuid or an email address, looked up in auth.users."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import psycopg

from console.database import OpsError, UsageError


@dataclass(frozen=True)
class User:
    id: uuid.UUID
    email: str | None

    @property
    def label(self) -> str:
        return f"{self.email} ({self.id})" if self.email else str(self.id)


def parse_user_ref(text: str) -> uuid.UUID | str:
    """A uuid, or an email address (compared case-insensitively); anything else is a usage error."""
    text = text.strip()
    try:
        return uuid.UUID(text)
    except ValueError:
        pass
    if "@" not in text or len(text) > 320 or any(c.isspace() for c in text):
        raise UsageError(f"{text!r} is neither a user id (uuid) nor an email address")
    return text


def find_user(conn: psycopg.Connection[Any], ref: uuid.UUID | str) -> User:
    if isinstance(ref, uuid.UUID):
        rows = conn.execute("select u.id, u.email from auth.users u where u.id = %s",
                            (ref,)).fetchall()
    else:
        rows = conn.execute("select u.id, u.email from auth.users u "
                            "where lower(u.email) = lower(%s) order by u.created_at limit 2",
                            (ref,)).fetchall()
    if not rows:
        raise OpsError(f"no user {ref} in auth.users")
    if len(rows) > 1:
        raise OpsError(f"more than one user has the email {ref}; name the user by id")
    user_id, email = rows[0]
    return User(id=user_id, email=email)
