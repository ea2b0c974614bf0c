"""G1's backstop, by behaviour: each unique constraint of trade_executions refuses a duplicate that
bypasses claim_trade_execution (a direct INSERT as the database owner), so dropping any one of them
fails its test here — the claim's per-user lock serialises every claim, so no RPC-level race could
show a missing constraint."""

from __future__ import annotations

import uuid
from typing import Any

import psycopg
import pytest
from psycopg import errors

from tests.pg import Database
from tests.test_execution_support import (
    _module_db_fixture,  # noqa: F401 - one database per module
    _shared_db_fixture,  # noqa: F401
    claimed,
    market_of,
    propose,
    trader,
)

INSERT = """
    insert into public.trade_executions (proposal_id, user_id, idempotency_key, client_order_id,
                                         mode, market, side, amount_quote)
    values (%(proposal_id)s, %(user_id)s, %(idempotency_key)s, %(client_order_id)s, 'paper',
            %(market)s, 'buy', 10)"""


def duplicate(db: Database, **row: Any) -> psycopg.Error | None:
    """INSERT the row as the owner (no RPC, no lock); the error, or None when it went in."""
    with db.connect(autocommit=False) as conn:
        try:
            conn.execute(INSERT, row)
        except psycopg.Error as error:
            return error
        finally:
            conn.rollback()
    return None


def fresh(db: Database, user: uuid.UUID) -> dict[str, Any]:
    """A row that is valid and unique in every key: another proposal of the same user."""
    return {"proposal_id": propose(db, user), "user_id": user,
            "idempotency_key": f"key-{uuid.uuid4()}", "client_order_id": uuid.uuid4(),
            "market": market_of(user)}


@pytest.mark.parametrize(("key", "constraint"), [
    ("proposal_id", "trade_executions_proposal_key"),
    ("idempotency_key", "trade_executions_user_idempotency_key"),
    ("client_order_id", "trade_executions_client_order_key"),
])
def test_a_direct_duplicate_insert_is_refused_by_its_unique_constraint(
        db: Database, key: str, constraint: str) -> None:
    user = trader(db)
    execution = claimed(db, user)
    assert duplicate(db, **fresh(db, user)) is None  # the control: unique in every key, it goes in
    error = duplicate(db, **{**fresh(db, user), key: execution[key]})
    assert isinstance(error, errors.UniqueViolation), error
    assert error.diag.constraint_name == constraint
