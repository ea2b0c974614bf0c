"""Supabase's own advisor, as part of the suite: no error and no unexplained warning.

Supabase's database linter (the Security and Performance Advisors of the dashboard) runs a set of
catalog queries on a project. The checks below are this project's own SQL for the lints that
matter to this schema, each as strict as the advisor's or stricter, run on a freshly migrated
database:

    rls_disabled_in_public               ERROR  every table in public has RLS on
    policy_exists_rls_disabled           ERROR  no policy sits on a table whose RLS is off
    auth_users_exposed                   ERROR  no view in public reads auth.users
    security_definer_view                ERROR  every view in public runs as the caller
    sensitive_columns_exposed            ERROR  no API-readable table without RLS has a column
                                                named like a credential or personal identifier
    extension_in_public                  WARN   no extension lives in public
    function_search_path_mutable         WARN   every function of ours pins search_path
    anon_security_definer_function_…     WARN   anon can execute no SECURITY DEFINER function
    authenticated_security_definer_…     WARN   authenticated can execute only the definer
                                                functions allowed below, each with its reason
    auth_rls_initplan                    WARN   policies call auth.*() once per statement
    unindexed_foreign_keys               INFO   every foreign key has a covering index
    rls_enabled_no_policy                INFO   only the tables allowed below, each with its reason

Every check is also shown to find its violation (a probe object created in a transaction that is
rolled back), so none of them can pass vacuously. The RLS query is the one `oracle verify` runs
after a deployment (console/verify.py owns it; the suite reuses it), and the definer functions
allowed to signed-in users here must be among the console's API functions.
"""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest

from console.verify import API_FUNCTIONS, RLS_DISABLED_SQL
from tests.pg import Database
from tests.test_execution_support import (  # the module's shared database: db, module_db
    _fresh_db_fixture,  # noqa: F401
    _module_db_fixture,  # noqa: F401
    _shared_db_fixture,  # noqa: F401
)

# Schemas the platform owns (or, locally, supabase/local stands in for); the advisor skips them.
PLATFORM_SCHEMAS = ("pg_catalog", "information_schema", "pg_toast", "auth", "cron", "extensions",
                    "storage", "vault", "graphql", "graphql_public", "realtime", "net",
                    "supabase_functions", "supabase_migrations", "pgsodium")
NOT_PLATFORM = f"not in ({', '.join(repr(s) for s in PLATFORM_SCHEMAS)})"
# Objects that belong to an extension are the extension's business.
NOT_EXTENSION_OWNED = ("not exists (select 1 from pg_depend d where d.objid = {oid} "
                       "and d.deptype = 'e')")

# Intended findings, each with the reason a reader needs.
ALLOWED = {
    "authenticated_security_definer_function_executable": {
        "public.decide_trade_proposal(uuid,text)":
            "SPEC §3: users change a proposal's status only through this function, so they have "
            "no write grant on trade_proposals at all; it must write the append-only audit log "
            "(refusals included), which no user may write. It takes no user id (auth.uid() only),"
            " touches only the caller's own pending proposal, pins search_path = ''.",
    },
    "rls_enabled_no_policy": {
        "public.system_controls":
            "the operator's switches: service-only by design (service_role bypasses RLS); no "
            "policy means anon and authenticated see nothing.",
    },
}

CHECKS: dict[str, str] = {
    "rls_disabled_in_public": RLS_DISABLED_SQL,
    "policy_exists_rls_disabled": """
        select distinct c.oid::regclass::text from pg_policy p join pg_class c on c.oid = p.polrelid
        join pg_namespace n on n.oid = c.relnamespace
        where n.nspname {not_platform} and not c.relrowsecurity""",
    "auth_users_exposed": """
        select distinct v.oid::regclass::text
        from pg_depend d join pg_rewrite r on r.oid = d.objid join pg_class v on v.oid = r.ev_class
        join pg_namespace n on n.oid = v.relnamespace
        where d.refobjid = 'auth.users'::regclass and v.relkind in ('v', 'm')
          and n.nspname = 'public' and v.oid <> d.refobjid""",
    "security_definer_view": """
        select c.oid::regclass::text from pg_class c join pg_namespace n on n.oid = c.relnamespace
        where n.nspname = 'public' and c.relkind in ('v', 'm')
          and not coalesce(c.reloptions && array['security_invoker=true', 'security_invoker=on',
                                                 'security_invoker=1', 'security_invoker=yes'],
                           false)""",
    "sensitive_columns_exposed": """
        select c.oid::regclass::text || '.' || a.attname
        from pg_class c join pg_namespace n on n.oid = c.relnamespace
        join pg_attribute a on a.attrelid = c.oid and a.attnum > 0 and not a.attisdropped
        where n.nspname = 'public' and c.relkind = 'r' and not c.relrowsecurity
          and (has_table_privilege('anon', c.oid, 'select')
               or has_table_privilege('authenticated', c.oid, 'select'))
          and lower(replace(a.attname, '-', '_')) ~ ('^(.*_)?(password|passwd|passphrase|secret|'
              'api_?key|private_key|access_token|refresh_token|session_token|token|jwt|otp|'
              'ssn|social_security(_number)?|passport(_number|_id)?|national_id|tax_id|'
              'credit_card|card_number|cvv|cvc|iban|bank_account|account_number|'
              'routing_number)$')""",
    "extension_in_public": """
        select e.extname::text from pg_extension e
        where e.extnamespace = 'public'::regnamespace and e.extname <> 'plpgsql'""",
    "function_search_path_mutable": """
        select p.oid::regprocedure::text
        from pg_proc p join pg_namespace n on n.oid = p.pronamespace
        where n.nspname {not_platform} and n.nspname not like 'pg\\_%'
          and {not_extension_owned_p}
          and not exists (select 1 from unnest(coalesce(p.proconfig, '{{}}')) c
                          where c like 'search\\_path=%')""",
    "anon_security_definer_function_executable": """
        select p.oid::regprocedure::text
        from pg_proc p join pg_namespace n on n.oid = p.pronamespace
        where n.nspname = 'public' and p.prosecdef
          and has_function_privilege('anon', p.oid, 'execute')""",
    "authenticated_security_definer_function_executable": """
        select replace(p.oid::regprocedure::text, ' ', '')
        from pg_proc p join pg_namespace n on n.oid = p.pronamespace
        where n.nspname = 'public' and p.prosecdef
          and has_function_privilege('authenticated', p.oid, 'execute')""",
    # A policy expression that calls auth.uid()/auth.jwt()/auth.role() or current_setting() outside
    # a scalar subquery is evaluated once per row instead of once per statement.
    "auth_rls_initplan": """
        select c.oid::regclass::text || ' ' || p.polname
        from pg_policy p join pg_class c on c.oid = p.polrelid
        join pg_namespace n on n.oid = c.relnamespace
        where n.nspname {not_platform}
          and regexp_replace(
                coalesce(pg_get_expr(p.polqual, p.polrelid), '') || ' '
                || coalesce(pg_get_expr(p.polwithcheck, p.polrelid), ''),
                '\\( SELECT (auth\\.(uid|jwt|role)\\(\\)|current_setting\\([^()]*\\)) AS \\w+\\)',
                '', 'g')
              ~ '(auth\\.(uid|jwt|role)\\(\\)|current_setting\\()'""",
    # Covered: the foreign key's columns are the leading columns of a valid index (key columns,
    # then INCLUDE columns, as the advisor counts them), and a partial index only when its
    # predicate is implied by the lookup (`<fk column> IS NOT NULL`).
    "unindexed_foreign_keys": """
        select k.conrelid::regclass::text || ' ' || k.conname
        from pg_constraint k join pg_namespace n on n.oid = k.connamespace
        where k.contype = 'f' and n.nspname {not_platform}
          and not exists (
            select 1 from pg_index i
            where i.indrelid = k.conrelid and i.indisvalid
              and (string_to_array(i.indkey::text, ' ')::int2[])[1:cardinality(k.conkey)]
                  = k.conkey
              and (i.indpred is null
                   or pg_get_expr(i.indpred, i.indrelid) ~ '^\\(?\\w+ IS NOT NULL\\)?$'))""",
    "rls_enabled_no_policy": """
        select c.oid::regclass::text from pg_class c join pg_namespace n on n.oid = c.relnamespace
        where n.nspname = 'public' and c.relkind in ('r', 'p') and c.relrowsecurity
          and not exists (select 1 from pg_policy p where p.polrelid = c.oid)""",
}
LEVELS = {
    "ERROR": ("rls_disabled_in_public", "policy_exists_rls_disabled", "auth_users_exposed",
              "security_definer_view", "sensitive_columns_exposed"),
    "WARN": ("extension_in_public", "function_search_path_mutable",
             "anon_security_definer_function_executable",
             "authenticated_security_definer_function_executable", "auth_rls_initplan"),
    "INFO": ("unindexed_foreign_keys", "rls_enabled_no_policy"),
}
assert sorted(sum(LEVELS.values(), ())) == sorted(CHECKS)


def findings(conn: psycopg.Connection, check: str) -> set[str]:
    """What one check finds (the allow-list is applied by `unexplained`). Object names are
    printed schema-qualified: the search_path is empty while the checks run."""
    conn.execute("set search_path = ''")
    query = CHECKS[check].format(not_platform=NOT_PLATFORM,
                                 not_extension_owned_p=NOT_EXTENSION_OWNED.format(oid="p.oid"))
    return {row[0] for row in conn.execute(query).fetchall()}


def unexplained(conn: psycopg.Connection, check: str) -> set[str]:
    return findings(conn, check) - set(ALLOWED.get(check, {}))


@pytest.fixture(scope="module")
def migrated(module_db: Database) -> Iterator[psycopg.Connection]:
    """A superuser connection to a freshly migrated database (a clone of the template)."""
    with module_db.connect() as conn:
        yield conn


@pytest.mark.parametrize("check", [c for level in ("ERROR", "WARN") for c in LEVELS[level]])
def test_the_advisor_finds_no_error_and_no_unexplained_warning(migrated: psycopg.Connection,
                                                                check: str) -> None:
    assert unexplained(migrated, check) == set()


@pytest.mark.parametrize("check", LEVELS["INFO"])
def test_the_advisor_finds_no_unexplained_info(migrated: psycopg.Connection, check: str) -> None:
    assert unexplained(migrated, check) == set()


@pytest.mark.parametrize("check", sorted(ALLOWED))
def test_every_allowed_finding_is_still_there_and_explained(migrated: psycopg.Connection,
                                                            check: str) -> None:
    """An allow-list entry that no longer matches anything is stale: remove it."""
    assert set(ALLOWED[check]) <= findings(migrated, check)
    assert all(len(reason) > 40 for reason in ALLOWED[check].values())


def test_the_definer_functions_allowed_to_users_are_api_functions_of_the_console() -> None:
    """`oracle verify` lets authenticated execute exactly console.verify.API_FUNCTIONS; a SECURITY
    DEFINER function allowed here that is not one of them would fail every deployment's gate."""
    allowed = set(ALLOWED["authenticated_security_definer_function_executable"])
    assert allowed <= set(API_FUNCTIONS)


def test_pg_cron_lives_in_pg_catalog_as_on_supabase(migrated: psycopg.Connection) -> None:
    row = migrated.execute("select extnamespace::regnamespace::text from pg_extension "
                           "where extname = 'pg_cron'").fetchone()
    assert row == ("pg_catalog",)


# -- each check can fail -----------------------------------------------------------------------
# (check, statements that create one violation, the finding expected)
PROBES: dict[str, tuple[list[str], str]] = {
    "rls_disabled_in_public": (["create table public.lint_probe (id int)"], "lint_probe"),
    "policy_exists_rls_disabled": (
        ["alter table public.market_allowlist disable row level security"], "market_allowlist"),
    "auth_users_exposed": (
        ["create view public.lint_users with (security_invoker = true) as "
         "select id, email from auth.users",
         "grant select on public.lint_users to authenticated"], "lint_users"),
    "security_definer_view": (["create view public.lint_view as select 1 as one"], "lint_view"),
    "sensitive_columns_exposed": (
        ["create table public.lint_keys (id int, api_key text)",
         "grant select on public.lint_keys to anon"], "lint_keys.api_key"),
    "extension_in_public": (["create extension citext schema public"], "citext"),
    "function_search_path_mutable": (
        ["create function private.lint_probe() returns int language sql as 'select 1'"],
        "private.lint_probe()"),
    "anon_security_definer_function_executable": (
        ["create function public.lint_definer() returns int language sql security definer "
         "set search_path = '' as 'select 1'",
         "grant execute on function public.lint_definer() to anon"], "lint_definer()"),
    "authenticated_security_definer_function_executable": (
        ["create function public.lint_definer() returns int language sql security definer "
         "set search_path = '' as 'select 1'",
         "grant execute on function public.lint_definer() to authenticated"], "lint_definer()"),
    "auth_rls_initplan": (
        ["create policy \"lint per-row uid\" on public.trading_allowlist for select "
         "to authenticated using (user_id = auth.uid())"], "lint per-row uid"),
    "unindexed_foreign_keys": (["drop index public.gpt_usage_log_model_idx"],
                               "gpt_usage_log_model_fkey"),
    "rls_enabled_no_policy": (
        ["create table public.lint_closed (id int)",
         "alter table public.lint_closed enable row level security"], "lint_closed"),
}
assert sorted(PROBES) == sorted(CHECKS)


@pytest.mark.parametrize("check", sorted(PROBES))
def test_each_check_finds_its_violation(module_db: Database, check: str) -> None:
    statements, expected = PROBES[check]
    with module_db.connect(autocommit=False) as conn:
        try:
            before = unexplained(conn, check)
            for statement in statements:
                conn.execute(statement)
            new = unexplained(conn, check) - before
            assert any(expected in finding for finding in new), (check, new)
        finally:
            conn.rollback()
