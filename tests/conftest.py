"""Shared fixtures. The database fixtures start a real PostgreSQL 15 (never skipped)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.pg import Database, SessionCluster
from tests.sandbox_server import bitvavo_sandbox, bitvavo_sandbox_session  # noqa: F401


@pytest.fixture(scope="session")
def pg_session() -> Iterator[SessionCluster]:
    """One throwaway cluster per test session, template built once. Fails (never skips)
    with PostgreSQL's own reason when it cannot start."""
    session = SessionCluster()
    try:
        session.build()
        yield session
    finally:
        session.destroy()


@pytest.fixture
def db(pg_session: SessionCluster) -> Iterator[Database]:
    """A fresh database cloned from the migrated template."""
    database = pg_session.new_database()
    try:
        yield database
    finally:
        pg_session.drop(database)
