"""No numeric column in `public` accepts NaN or ±Infinity.

PostgreSQL's numeric has NaN (which sorts above every number, so `NaN > 0` is true) and
±Infinity; a limit set to either silently disables the check that reads it — a user's own
`max_daily_quote = 'NaN'` lets every daily amount through, an operator's
`gpt_daily_budget_usd = 'NaN'` let three 125 USD reservations through. Every numeric column
carries a check constraint that refuses them (`… < 'Infinity'`, which NaN fails too).

The catalog test covers every numeric column there is, including future ones: one row in each
table, then each column set to each bad value with triggers off (session_replication_role =
replica), so that only the constraints can refuse it.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import psycopg
import pytest

from tests.pg import Database

BAD_VALUES = ("NaN", "Infinity", "-Infinity")

ONE_ROW_EACH = """
insert into auth.users (id, email) values (%(u)s, 'numeric@example.test');
insert into public.market_allowlist (market, enabled, min_order_quote, max_order_quote)
values ('NUM-EUR', true, 5, 100);
insert into public.trading_allowlist (user_id, market, max_order_quote)
values (%(u)s, 'NUM-EUR', 50);
insert into public.scan_jobs (user_id, market, last_claim_lag_seconds)
values (%(u)s, 'NUM-EUR', 1.5);
insert into public.trade_proposals (id, user_id, market, side, amount_quote, reference_price,
                                    confidence, source, status, expires_at)
values (%(p)s, %(u)s, 'NUM-EUR', 'buy', 10, 50000, 0.9, 'rules', 'executing',
        now() + interval '1 hour');
insert into public.trade_executions (id, proposal_id, user_id, idempotency_key, mode, market,
                                     side, amount_quote, status, filled_amount,
                                     filled_amount_quote, price, fee_paid, fee_currency,
                                     submitted_at, completed_at)
values (%(e)s, %(p)s, %(u)s, 'num-key', 'paper', 'NUM-EUR', 'buy', 10, 'filled', 0.0002, 10,
        50000, 0.025, 'EUR', now(), now());
insert into public.trade_history (execution_id, proposal_id, user_id, market, side, amount,
                                  amount_quote, price, fee_paid, fee_currency, mode)
values (%(e)s, %(p)s, %(u)s, 'NUM-EUR', 'buy', 0.0002, 10, 50000, 0.025, 'EUR', 'paper');
insert into public.gpt_usage_log (user_id, model, status, reserved_usd, prompt_tokens,
                                  cached_prompt_tokens, completion_tokens, cost_usd, settled_at)
values (%(u)s, 'gpt-4o-mini', 'settled', 0.01, 10, 0, 10, 0.005, now());
"""


@pytest.fixture
def populated(db: Database) -> Iterator[tuple[Database, uuid.UUID]]:
    user = uuid.uuid4()
    ids = {"u": user, "p": uuid.uuid4(), "e": uuid.uuid4()}
    with db.connect() as conn:
        for statement in filter(str.strip, ONE_ROW_EACH.split(";")):
            conn.execute(statement, {k: v for k, v in ids.items() if f"%({k})s" in statement})
    yield db, user


def numeric_columns(db: Database) -> list[tuple[str, str]]:
    return [(t, c) for t, c in db.query(
        "select table_name, column_name from information_schema.columns "
        "where table_schema = 'public' and data_type = 'numeric' and is_generated = 'NEVER' "
        "order by table_name, ordinal_position")]


def test_every_numeric_column_in_public_refuses_nan_and_infinity(
        populated: tuple[Database, uuid.UUID]) -> None:
    db, _ = populated
    columns = numeric_columns(db)
    assert len(columns) >= 25, columns  # the schema's money, price and limit columns
    empty = [t for t in sorted({t for t, _ in columns})
             if db.scalar(f"select count(*) from public.{t}") == 0]  # noqa: S608 - catalog names
    assert empty == [], "every table needs a row for the test to reach its columns"
    accepted = []
    with db.connect(autocommit=False) as conn:
        conn.execute("set session_replication_role = replica")  # constraints only, no triggers
        for table, column in columns:
            for value in BAD_VALUES:
                conn.execute("savepoint s")
                try:
                    conn.execute(f"update public.{table} set {column} = %s::numeric",  # noqa: S608
                                 (value,))
                    accepted.append(f"{table}.{column} = {value}")
                except psycopg.errors.CheckViolation:
                    pass
                conn.execute("rollback to savepoint s")
        conn.rollback()
    assert accepted == []


def test_a_user_cannot_set_a_nan_daily_limit_on_their_own_row(
        populated: tuple[Database, uuid.UUID]) -> None:
    db, user = populated
    for column in ("max_daily_quote", "max_order_quote"):
        with pytest.raises(psycopg.errors.CheckViolation), db.as_user(user) as cur:
            cur.execute(f"update public.trading_settings set {column} = 'NaN'")  # noqa: S608
    assert db.query("select max_daily_quote, max_order_quote from public.trading_settings "
                    "where user_id = %s", (user,))[0] == (200, 50)


def test_the_operator_cannot_set_a_nan_or_infinite_gpt_budget(
        populated: tuple[Database, uuid.UUID]) -> None:
    db, user = populated
    for column in ("gpt_daily_budget_usd", "gpt_hourly_budget_usd"):
        for value in BAD_VALUES:
            with pytest.raises(psycopg.errors.CheckViolation), db.as_service() as cur:
                cur.execute(f"update public.trading_settings set {column} = %s::numeric "  # noqa: S608
                            "where user_id = %s", (value, user))
