"""Proposal, execution and ledger ids are time-ordered UUIDs (version 7, private.uuid_v7); the
client order id the exchange sees stays a random version-4 UUID.

Why it matters is cost, not correctness: a new row's id index entries land at the right-hand end
of each index instead of on a random page of an index that outgrew the cache (bench/claim_path.py
measures it). What is pinned here is the shape that buys it: version and variant bits, the time in
the first 48 bits, later ids sorting after earlier ones, and which columns get them."""

from __future__ import annotations

import uuid

from tests.pg import Database
from tests.test_execution_support import (  # the database fixtures: db, module_db, fresh_db
    _fresh_db_fixture,  # noqa: F401
    _module_db_fixture,  # noqa: F401
    _shared_db_fixture,  # noqa: F401
    claimed,
    record,
    scalar,
    sql,
    trader,
)


def test_uuid_v7_is_version_7_rfc_variant_with_the_time_in_its_first_48_bits(db: Database) -> None:
    rows = sql(db, "select (extract(epoch from clock_timestamp()) * 1000)::bigint, "
                   "private.uuid_v7(), (extract(epoch from clock_timestamp()) * 1000)::bigint "
                   "from generate_series(1, 50)")
    for before, made, after in rows:
        assert made.version == 7 and made.variant == uuid.RFC_4122, made
        assert before <= int.from_bytes(made.bytes[:6], "big") <= after, (before, made, after)
    assert len({made for _, made, _ in rows}) == len(rows)


def test_a_later_id_sorts_after_an_earlier_one(db: Database) -> None:
    ids = []
    for _ in range(5):
        ids.append(scalar(db, "select private.uuid_v7()"))
        sql(db, "select pg_sleep(0.002)")  # the next millisecond at least
    assert ids == sorted(ids)
    # PostgreSQL orders uuids the same way (bytewise), so the index order is the time order.
    assert scalar(db, "select array_agg(u order by u) = %s::uuid[] from unnest(%s::uuid[]) u",
                  (ids, ids))


def test_proposals_executions_and_ledger_rows_get_v7_ids_the_client_order_id_stays_random(
        db: Database) -> None:
    user_id = trader(db)
    execution = claimed(db, user_id)
    filled = record(db, execution["id"], status="filled", filled_amount="0.0002",
                    filled_amount_quote="10", price="50000")
    assert filled["outcome"] == "updated", filled
    history_id = scalar(db, "select id from public.trade_history where execution_id = %s",
                        (execution["id"],))
    assert uuid.UUID(execution["proposal_id"]).version == 7
    assert uuid.UUID(execution["id"]).version == 7
    assert history_id.version == 7
    assert uuid.UUID(execution["client_order_id"]).version == 4
