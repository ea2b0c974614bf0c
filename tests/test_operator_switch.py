"""The kill switch at the SQL level (migrations/*_operator.sql): set_trading_halted is service-only,
audits the operator's reason next to the change the trigger records (G9), is idempotent, and
concurrent requests are ordered by the row lock (counted with real connections)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from tests.pg import Database, connect
from tests.test_execution_support import (  # the module's shared database: db, module_db
    _fresh_db_fixture,  # noqa: F401
    _module_db_fixture,  # noqa: F401
    _shared_db_fixture,  # noqa: F401
)


@pytest.fixture(autouse=True)
def running(db: Database) -> Iterator[None]:
    """Every test starts and ends with trading running (the module shares one database)."""
    db.query("update public.system_controls set trading_halted = false")
    yield
    db.query("update public.system_controls set trading_halted = false")


def last_id(db: Database) -> int:
    return int(db.scalar("select coalesce(max(id), 0) from public.execution_audit_log"))


def events_after(db: Database, after: int) -> list[tuple[str, dict[str, Any]]]:
    return [(event, detail) for event, detail in db.query(
        "select event, detail from public.execution_audit_log where id > %s order by id",
        (after,))]


def halted(db: Database) -> bool:
    return bool(db.scalar("select trading_halted from public.system_controls"))


@pytest.mark.parametrize("role", ["anon", "authenticated"])
def test_only_the_service_may_pull_the_switch(db: Database, role: str) -> None:
    user_id = db.create_user() if role == "authenticated" else None
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        db.rpc("set_trading_halted", role=role, user_id=user_id, p_halted=True,
               p_reason="from a browser")
    assert not halted(db)


def test_halt_then_resume_each_audits_the_reason_before_the_change(db: Database) -> None:
    before = last_id(db)
    result = db.rpc("set_trading_halted", p_halted=True, p_reason="  exchange incident #42 ")
    assert result["trading_halted"] is True and result["changed"] is True
    assert halted(db)
    result = db.rpc("set_trading_halted", p_halted=False, p_reason="incident resolved")
    assert result["trading_halted"] is False and result["changed"] is True
    assert not halted(db)

    events = events_after(db, before)
    assert [e for e, _ in events] == ["system_controls.halt", "system_controls.changed",
                                      "system_controls.resume", "system_controls.changed"]
    halt, halt_change, resume, resume_change = (d for _, d in events)
    assert halt["reason"] == "exchange incident #42"  # trimmed
    assert (halt["changed"], halt["trading_halted_before"], halt["trading_halted"]) == (
        True, False, True)
    assert halt["role"] == "service_role" and halt["db_user"] == "authenticator"  # the login
    assert halt_change["changes"] == {"trading_halted": {"from": False, "to": True}}
    assert resume["reason"] == "incident resolved"
    assert resume_change["changes"] == {"trading_halted": {"from": True, "to": False}}


def test_halting_a_halted_system_changes_nothing_but_is_audited(db: Database) -> None:
    db.rpc("set_trading_halted", p_halted=True, p_reason="first")
    updated_at = db.scalar("select updated_at from public.system_controls")
    before = last_id(db)
    result = db.rpc("set_trading_halted", p_halted=True, p_reason="second, to be sure")
    assert result["changed"] is False and result["trading_halted"] is True
    assert db.scalar("select updated_at from public.system_controls") == updated_at
    events = events_after(db, before)
    assert [e for e, _ in events] == ["system_controls.halt"]  # no .changed: nothing changed
    assert events[0][1]["reason"] == "second, to be sure" and events[0][1]["changed"] is False


@pytest.mark.parametrize(("halt", "reason"), [
    (True, None), (True, ""), (True, "   "), (True, "x" * 501), (None, "a reason"),
])
def test_a_missing_reason_or_state_is_refused_and_changes_nothing(
        db: Database, halt: bool | None, reason: str | None) -> None:
    before = last_id(db)
    with pytest.raises(psycopg.errors.InvalidParameterValue):
        db.rpc("set_trading_halted", p_halted=halt, p_reason=reason)
    assert not halted(db)
    assert events_after(db, before) == []


def test_concurrent_halts_are_ordered_one_changes_the_rest_see_it(db: Database) -> None:
    """Eight requests queue behind a held row lock and then run: exactly one finds the system
    running and changes it; seven find it halted (without the FOR UPDATE they would all have read
    `running` before the first committed, and all reported a change)."""
    callers = 8
    results: list[dict[str, Any]] = []
    errors: list[BaseException] = []
    lock = threading.Lock()
    before = last_id(db)
    with connect(db.url) as blocker:
        blocker.execute("select 1 from public.system_controls for update")  # opens a transaction
        waiting = connect(db.url, autocommit=True)

        def call(i: int) -> None:
            try:
                result = db.rpc("set_trading_halted", p_halted=True, p_reason=f"caller {i}")
                with lock:
                    results.append(result)
            except BaseException as exc:  # reported below
                with lock:
                    errors.append(exc)

        threads = [threading.Thread(target=call, args=(i,)) for i in range(callers)]
        for t in threads:
            t.start()
        # Every caller is queued on the row lock before it is released.
        for _ in range(500):
            queued = waiting.execute(
                "select count(*) from pg_stat_activity where datname = current_database() "
                "and wait_event_type = 'Lock' and query like %s",
                ("%set_trading_halted%",)).fetchone()
            if queued and queued[0] == callers:
                break
            time.sleep(0.02)
        waiting.close()
        blocker.rollback()
        for t in threads:
            t.join(timeout=60)
    assert errors == []
    assert sorted(r["changed"] for r in results) == [False] * (callers - 1) + [True]
    assert halted(db)
    events = [e for e, _ in events_after(db, before)]
    assert events.count("system_controls.halt") == callers
    assert events.count("system_controls.changed") == 1
