"""The intended RLS matrix (G8, SPEC §3): what each caller may do to each table in public.

scripts/rls_matrix.py observes the real one on a freshly migrated database; tests/test_rls_matrix.py
fails on any cell that differs, and on a table in public that is missing here. A change of a grant
or a policy therefore changes this file too, in the same commit, with its reason.

Cells (per operation, for the callers in ACTORS order):
    all / none      select: sees every target row / none of them (no error)
    ok / none       insert, update, delete: changed every target row / no row (no error: row-level
                    security hid the rows)
    denied:grant    42501 permission denied: the role has no privilege on the table (or columns)
    denied:rls      42501 new row violates row-level security policy (a WITH CHECK refused it)
    denied:trigger  42501 from one of our triggers (a guard refused the change)
The target rows: user A's in a per-user table, one row in a global table. `owner` is A acting on
them, `other` is B acting on them.
"""

from __future__ import annotations

ACTORS = ("anon", "owner", "other", "service_role")
OPERATIONS = ("select", "insert", "update", "delete")

GRANT = "denied:grant"
RLS = "denied:rls"

# Tables in the order the migrations create them. Per operation: (anon, owner, other, service_role).
INTENDED: dict[str, dict[str, tuple[str, str, str, str]]] = {
    "execution_audit_log": {
        "select": (GRANT, "all", "none", "all"),
        "insert": (GRANT, GRANT, GRANT, "ok"),
        "update": (GRANT, GRANT, GRANT, GRANT),
        "delete": (GRANT, GRANT, GRANT, GRANT),
    },
    "system_controls": {
        "select": (GRANT, GRANT, GRANT, "all"),
        "insert": (GRANT, GRANT, GRANT, GRANT),
        "update": (GRANT, GRANT, GRANT, "ok"),
        "delete": (GRANT, GRANT, GRANT, GRANT),
    },
    "market_allowlist": {
        "select": (GRANT, "all", "all", "all"),
        "insert": (GRANT, GRANT, GRANT, "ok"),
        "update": (GRANT, GRANT, GRANT, "ok"),
        "delete": (GRANT, GRANT, GRANT, "ok"),
    },
    "trading_settings": {
        "select": (GRANT, "all", "none", "all"),
        "insert": (GRANT, GRANT, GRANT, "ok"),
        "update": (GRANT, "ok", "none", "ok"),
        "delete": (GRANT, GRANT, GRANT, "ok"),
    },
    "trading_allowlist": {
        "select": (GRANT, "all", "none", "all"),
        "insert": (GRANT, "ok", RLS, "ok"),
        "update": (GRANT, "ok", "none", "ok"),
        "delete": (GRANT, "ok", "none", "ok"),
    },
    "scan_jobs": {
        "select": (GRANT, "all", "none", "all"),
        "insert": (GRANT, "ok", RLS, "ok"),
        "update": (GRANT, "ok", "none", "ok"),
        "delete": (GRANT, "ok", "none", "ok"),
    },
    "trade_proposals": {
        "select": (GRANT, "all", "none", "all"),
        "insert": (GRANT, GRANT, GRANT, GRANT),
        "update": (GRANT, GRANT, GRANT, GRANT),
        "delete": (GRANT, GRANT, GRANT, GRANT),
    },
    "trade_executions": {
        "select": (GRANT, "all", "none", "all"),
        "insert": (GRANT, GRANT, GRANT, GRANT),
        "update": (GRANT, GRANT, GRANT, GRANT),
        "delete": (GRANT, GRANT, GRANT, GRANT),
    },
    "trade_history": {
        "select": (GRANT, "all", "none", "all"),
        "insert": (GRANT, GRANT, GRANT, GRANT),
        "update": (GRANT, GRANT, GRANT, GRANT),
        "delete": (GRANT, GRANT, GRANT, GRANT),
    },
    "gpt_model_prices": {
        "select": (GRANT, "all", "all", "all"),
        "insert": (GRANT, GRANT, GRANT, "ok"),
        "update": (GRANT, GRANT, GRANT, "ok"),
        "delete": (GRANT, GRANT, GRANT, "ok"),
    },
    "gpt_usage_log": {
        "select": (GRANT, "all", "none", "all"),
        "insert": (GRANT, GRANT, GRANT, "ok"),
        "update": (GRANT, GRANT, GRANT, "ok"),
        "delete": (GRANT, GRANT, GRANT, GRANT),
    },
}

_SERVER_WRITTEN = ("written only by the SECURITY DEFINER RPCs, which enforce the state machine and "
                   "audit every step; no role, the service included, writes it directly")
_GLOBAL_READ = "reference data every signed-in user may read (SPEC §3); only the operator writes it"

# Why, for the cells whose reason is not obvious from "own rows only, anon nothing".
WHY: dict[tuple[str, str, str], str] = {
    **{("execution_audit_log", op, "service_role"): (
        "append-only for every role (G9): no UPDATE/DELETE grant, and a trigger refuses even "
        "postgres") for op in ("update", "delete")},
    ("execution_audit_log", "insert", "owner"): (
        "users never write the audit log; the RPCs do, as definer"),
    **{("system_controls", "select", actor): (
        "the operator's switches: no grant and no policy for anon/authenticated")
       for actor in ("owner", "other")},
    **{("system_controls", op, "service_role"): (
        "one row, created by the migration; the operator changes it (set_trading_halted), never "
        "adds or removes it") for op in ("insert", "delete")},
    **{(table, "select", actor): _GLOBAL_READ
       for table in ("market_allowlist", "gpt_model_prices") for actor in ("owner", "other")},
    ("trading_settings", "insert", "owner"): (
        "created with safe defaults by a trigger for every new auth user; a user only updates "
        "the risk columns of their row (column grants: supabase/tests/20_column_privileges.sql)"),
    ("trading_settings", "delete", "owner"): "a user cannot remove their own limits",
    **{(table, "insert", "other"): (
        "the WITH CHECK policy: a row for another user is refused (user_id = auth.uid())")
       for table in ("trading_allowlist", "scan_jobs")},
    ("scan_jobs", "insert", "owner"): (
        "only for a market the user and the operator both enabled (G4), and only the job's "
        "market, interval and switch (column grants)"),
    **{(table, op, actor): _SERVER_WRITTEN
       for table in ("trade_proposals", "trade_executions", "trade_history")
       for op in ("insert", "update", "delete") for actor in ("owner", "service_role")},
    ("gpt_usage_log", "delete", "service_role"): (
        "spend is never deleted, only released (G7); a trigger guards the row's transitions"),
    ("gpt_usage_log", "insert", "owner"): (
        "reservations are made by reserve_gpt_budget under the per-user lock (G7), not by users"),
}
