"""Closed by default: sequences and anything added later.

Supabase's default privileges give anon and authenticated ALL on every new table, function and
sequence in `public`, and PostgreSQL itself lets PUBLIC execute every new function. Tables are
guarded by RLS (and tests/test_advisor.py); functions and sequences are not: a sequence's UPDATE
privilege is `setval`, and `setval('execution_audit_log_id_seq', <max>)` by any signed-in user
would make every audited RPC fail. So the migrations revoke the API roles' grants on every
sequence and change the default privileges of the migration role (postgres): a function or a
sequence created later is closed to anon, authenticated and PUBLIC until a migration grants it.
"""

from __future__ import annotations

import psycopg
import pytest

from tests.pg import Database

API_ROLES = ("anon", "authenticated")


def sequences(db: Database) -> list[str]:
    return [r[0] for r in db.query(
        "select c.oid::regclass::text from pg_class c "
        "join pg_namespace n on n.oid = c.relnamespace "
        "where n.nspname = 'public' and c.relkind = 'S' order by 1")]


def sequence_privileges(db: Database, role: str, sequence: str) -> list[str]:
    return [p for p in ("USAGE", "SELECT", "UPDATE")
            if db.scalar("select has_sequence_privilege(%s, %s, %s)", (role, sequence, p))]


def test_no_api_role_has_any_privilege_on_a_sequence_in_public(db: Database) -> None:
    found = sequences(db)
    assert "execution_audit_log_id_seq" in found
    granted = {(role, seq): sequence_privileges(db, role, seq)
               for seq in found for role in API_ROLES}
    assert {k: v for k, v in granted.items() if v} == {}


@pytest.mark.parametrize("role", API_ROLES)
def test_the_api_roles_cannot_move_the_audit_sequence(db: Database, role: str) -> None:
    user = db.create_user()
    claims = {"role": role, **({"sub": str(user)} if role == "authenticated" else {})}
    for statement in ("select setval('public.execution_audit_log_id_seq', 9223372036854775807)",
                      "select nextval('public.execution_audit_log_id_seq')"):
        with pytest.raises(psycopg.errors.InsufficientPrivilege), \
                db.as_role(role, claims) as cur:
            cur.execute(statement)
    # The audit log keeps working for the RPCs and for service_role's own inserts.
    with db.as_service() as cur:
        cur.execute("insert into public.execution_audit_log (event) values ('test.inserted') "
                    "returning id")
        assert cur.fetchone() is not None


def function_access(db: Database, signature: str) -> dict[str, bool]:
    access = {role: db.scalar("select has_function_privilege(%s, %s, 'execute')",
                              (role, signature)) for role in (*API_ROLES, "service_role")}
    access["PUBLIC"] = db.scalar(
        "select exists (select 1 from pg_proc p, aclexplode(coalesce(p.proacl, "
        "acldefault('f', p.proowner))) a where p.oid = %s::regprocedure and a.grantee = 0 "
        "and a.privilege_type = 'EXECUTE')", (signature,))
    return access


def test_a_function_created_after_the_migrations_is_closed_to_anon_and_authenticated(
        db: Database) -> None:
    """As a later migration would do it: the migration role creates functions in public (an
    invoker one and a definer one, e.g. a forgotten `revoke`) and in private."""
    with db.connect() as conn:
        conn.execute("create function public.added_later() returns integer language sql "
                     "set search_path = '' as 'select 1'")
        conn.execute("create function public.added_later_definer() returns integer "
                     "language sql security definer set search_path = '' as 'select 2'")
        conn.execute("create function private.added_later() returns integer language sql "
                     "set search_path = '' as 'select 3'")
    assert function_access(db, "public.added_later()") == {
        "anon": False, "authenticated": False, "service_role": True, "PUBLIC": False}
    assert function_access(db, "public.added_later_definer()") == {
        "anon": False, "authenticated": False, "service_role": True, "PUBLIC": False}
    assert function_access(db, "private.added_later()")["PUBLIC"] is False
    for role in API_ROLES:
        for fn in ("added_later", "added_later_definer"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                db.rpc(fn, role=role, user_id=db.create_user() if role == "authenticated"
                       else None)
    assert db.rpc("added_later") == 1  # service_role keeps Supabase's grant


def test_a_sequence_created_after_the_migrations_is_closed_to_anon_and_authenticated(
        db: Database) -> None:
    with db.connect() as conn:
        conn.execute("create sequence public.added_later_seq")
        conn.execute("create table public.added_later_table (id bigint generated always as "
                     "identity primary key)")
    for seq in ("public.added_later_seq", "public.added_later_table_id_seq"):
        for role in API_ROLES:
            assert sequence_privileges(db, role, seq) == [], (role, seq)
        assert sequence_privileges(db, "service_role", seq) == ["USAGE", "SELECT", "UPDATE"]
