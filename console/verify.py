"""`oracle verify`: the post-deployment gate — the invariants the guarantees rest on, checked on a
live database with read-only catalog queries (as `postgres` on hosted Supabase, or locally).

    check                what must hold                                          guarantees
    rls                  RLS is enabled on every table in public                 G8
    function_privileges  PUBLIC and anon execute no function in public;          G8 (money-moving
                         authenticated only the allow-listed API functions       RPCs not callable
                         (API_FUNCTIONS, each with its reason)                   from a browser)
    audit_triggers       the audit log's append-only triggers are enabled        G9
                         ALWAYS (replica sessions too) and no API role may
                         UPDATE/DELETE/TRUNCATE it; the change-audit triggers of
                         trading_settings and system_controls are enabled
    cron_jobs            pg_cron runs run-maintenance and purge-cron-history     G2, G7 (expired
                         (and, where pg_net's net.http_post exists,              leases and stale
                         invoke-scan-scheduler and invoke-trading-reconcile)     reservations
                                                                                 freed), G10
    stuck_executions     no execution is still claimed/submitted/unknown         G10 (the reconciler
                         longer than the reconcile window after its claim        is running)
    exchange_orders      every order the reconciler's sweep saw on the exchange  G9, G10 (failed
                         maps to an execution that says what it did: no open    means never
                         row in private.exchange_discrepancies (an order with    placed; every
                         no execution, an execution the exchange contradicted)   order is ours)
    expired_leases       no scan-job lease is held past its expiry (+ grace:     G2
                         run_maintenance frees them every minute)
    migrations           supabase_migrations.schema_migrations lists exactly     (the schema is the
                         the files of supabase/migrations, each applied as the   one these checks
                         file reads now (its recorded statements are the         were written for)
                         file's text: console.migrations), none renamed
                         (skipped when the table or the files are absent)

Each check reports `pass`, `fail` with one line per problem, or `skip` with why. `run_checks`
never raises for a failing invariant; a query that cannot run (no privilege, missing schema) is a
failure of that check, with the database's message. The SQL of a check that tests/test_advisor.py
also runs is defined here and imported there (the product owns the check, the tests reuse it).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal

import psycopg

from console import migrations

REPOSITORY_MIGRATIONS = Path(__file__).resolve().parent.parent / "supabase" / "migrations"
DEFAULT_RECONCILE_WINDOW = timedelta(minutes=10)
DEFAULT_LEASE_GRACE = timedelta(minutes=2)
MAX_LISTED = 20  # problems listed per check; the rest are counted

Status = Literal["pass", "fail", "skip"]

# Tables in public without row level security (the advisor's rls_disabled_in_public, stricter:
# partitioned tables too). Run with an empty search_path, so names come out schema-qualified.
RLS_DISABLED_SQL = """
        select c.oid::regclass::text from pg_class c join pg_namespace n on n.oid = c.relnamespace
        where n.nspname = 'public' and c.relkind in ('r', 'p') and not c.relrowsecurity"""

# The functions in public that a signed-in user may execute (PostgREST /rpc with a user's JWT), as
# `schema.name(argtypes)` without spaces, each with the reason. Every other function in public is
# service-only (SPEC §3): no EXECUTE for PUBLIC, anon or authenticated. anon executes nothing.
API_FUNCTIONS: dict[str, str] = {
    "public.decide_trade_proposal(uuid,text)":
        "SPEC §3: the only way a signed-in user approves or rejects a proposal; it takes no "
        "user id and acts on auth.uid()'s own pending, unexpired proposals only.",
    "public.get_budget_analytics(uuid,integer)":
        "SPEC §3: a signed-in user reads their own GPT spend; it runs as the caller (SECURITY "
        "INVOKER, RLS applies) and answers not_found for any other user id.",
}

# What a scheduled job's command must contain, and its schedule when that matters.
@dataclass(frozen=True)
class CronJob:
    name: str
    command_contains: str
    schedule: str | None
    why: str


CRON_JOBS = (
    CronJob("run-maintenance", "public.run_maintenance()", "* * * * *",
            "expired scan-job leases, stale proposals and GPT reservations are never freed"),
    CronJob("purge-cron-history", "cron.job_run_details", None,
            "pg_cron's run log grows by 1,440 rows a day without bound"),
)
HTTP_JOBS = (
    CronJob("invoke-scan-scheduler", "net.http_post", None,
            "nothing calls scan_scheduler: no scans, no proposals"),
    CronJob("invoke-trading-reconcile", "/reconcile", None,
            "nothing calls trading_execute's /reconcile: executions whose outcome is unknown stay "
            "unknown and their proposals stay executing"),
)


def expected_cron_jobs(pg_net_installed: bool) -> tuple[CronJob, ...]:
    """The jobs the migrations schedule: the HTTP calls only where pg_net can make them."""
    return CRON_JOBS + (HTTP_JOBS if pg_net_installed else ())


# pg_trigger.tgtype bits (PostgreSQL's TRIGGER_TYPE_*).
_ROW, _BEFORE, _INSERT, _DELETE, _UPDATE, _TRUNCATE = 1, 2, 4, 8, 16, 32
_EVENTS = {"INSERT": _INSERT, "DELETE": _DELETE, "UPDATE": _UPDATE, "TRUNCATE": _TRUNCATE}


@dataclass(frozen=True)
class AuditTrigger:
    table: str
    name: str
    function: str
    events: tuple[str, ...]
    always: bool  # must fire in replica sessions too (session_replication_role = replica)


AUDIT_TRIGGERS = (
    AuditTrigger("public.execution_audit_log", "execution_audit_log_append_only",
                 "private.reject_audit_change()", ("UPDATE", "DELETE"), always=True),
    AuditTrigger("public.execution_audit_log", "execution_audit_log_no_truncate",
                 "private.reject_audit_change()", ("TRUNCATE",), always=True),
    AuditTrigger("public.trading_settings", "trading_settings_audit",
                 "private.audit_row_change()", ("UPDATE",), always=False),
    AuditTrigger("public.system_controls", "system_controls_audit",
                 "private.audit_row_change()", ("UPDATE",), always=False),
    *(AuditTrigger(f"public.{table}", f"{table}_audit", "private.audit_row_change()",
                   ("INSERT", "UPDATE", "DELETE"), always=False)
      for table in ("market_allowlist", "trading_allowlist", "gpt_model_prices")),
)
_TGENABLED = {"O": "enabled", "A": "enabled ALWAYS", "R": "enabled in replica sessions only",
              "D": "disabled"}


@dataclass(frozen=True)
class Options:
    reconcile_window: timedelta = DEFAULT_RECONCILE_WINDOW
    lease_grace: timedelta = DEFAULT_LEASE_GRACE
    migrations_dir: Path | None = REPOSITORY_MIGRATIONS


@dataclass(frozen=True)
class Result:
    check: str
    title: str
    status: Status
    summary: str = ""
    problems: tuple[str, ...] = field(default_factory=tuple)

    def as_json(self) -> dict[str, Any]:
        return {"check": self.check, "title": self.title, "status": self.status,
                "summary": self.summary, "problems": list(self.problems)}


Cursor = psycopg.Connection[Any]
CheckFn = Callable[[Cursor, Options], tuple[Status, str, list[str]]]


def _listed(problems: list[str], more: int = 0) -> list[str]:
    if len(problems) > MAX_LISTED:
        more += len(problems) - MAX_LISTED
        problems = problems[:MAX_LISTED]
    return problems + ([f"… and {more} more"] if more else [])


def _verdict(problems: list[str], summary: str) -> tuple[Status, str, list[str]]:
    """`pass` with what was found to hold, or `fail` with the problems (and no summary)."""
    if problems:
        return "fail", "", _listed(problems)
    return "pass", summary, []


# -- the checks -----------------------------------------------------------------------------------
def check_rls(conn: Cursor, options: Options) -> tuple[Status, str, list[str]]:
    tables = conn.execute("select count(*) from pg_class c join pg_namespace n "
                          "on n.oid = c.relnamespace "
                          "where n.nspname = 'public' and c.relkind in ('r', 'p')").fetchone()
    off = sorted(row[0] for row in conn.execute(RLS_DISABLED_SQL).fetchall())
    return _verdict([f"RLS is disabled on {table}: the API roles' grants alone guard its rows"
                     for table in off],
                    f"{tables[0] if tables else 0} tables, every one with RLS enabled")


_FUNCTION_PRIVILEGES_SQL = """
    select replace(p.oid::regprocedure::text, ' ', '') as signature,
           exists (select 1 from aclexplode(coalesce(p.proacl, acldefault('f', p.proowner))) a
                   where a.grantee = 0 and a.privilege_type = 'EXECUTE') as public,
           has_function_privilege('anon', p.oid, 'execute') as anon,
           has_function_privilege('authenticated', p.oid, 'execute') as authenticated,
           p.prosecdef as definer
    from pg_proc p join pg_namespace n on n.oid = p.pronamespace
    where n.nspname = 'public'
      -- a trigger function cannot be called directly
      and p.prorettype <> 'pg_catalog.trigger'::pg_catalog.regtype
      -- an extension's functions are the extension's business
      and not exists (select 1 from pg_depend d where d.classid = 'pg_proc'::regclass
                      and d.objid = p.oid and d.deptype = 'e')
    order by 1"""


def check_function_privileges(conn: Cursor, options: Options) -> tuple[Status, str, list[str]]:
    rows = conn.execute(_FUNCTION_PRIVILEGES_SQL).fetchall()
    problems = []
    for signature, public, anon, authenticated, definer in rows:
        kind = "SECURITY DEFINER " if definer else ""
        if public:
            problems.append(f"PUBLIC can execute {signature} (every role, anon included)")
        elif anon:
            problems.append(f"anon can execute {signature}")
        if authenticated and signature not in API_FUNCTIONS:
            problems.append(f"authenticated can execute {signature}, a service-only "
                            f"{kind}function: any signed-in user can call it")
    api = sum(1 for row in rows if row[0] in API_FUNCTIONS)
    return _verdict(problems, f"{len(rows)} functions in public: {len(rows) - api} service-only, "
                              f"{api} for signed-in users ("
                              + ", ".join(s.split("(")[0].removeprefix("public.")
                                          for s in API_FUNCTIONS) + ")")


_TRIGGERS_SQL = """
    select t.tgrelid::regclass::text, t.tgname::text, t.tgenabled::text, t.tgtype::int,
           t.tgfoid::regprocedure::text
    from pg_trigger t
    where not t.tgisinternal
      and t.tgrelid in (select to_regclass(x) from unnest(%s::text[]) x)"""

_AUDIT_LOG_WRITES_SQL = """
    select r.rolname::text, p.privilege
    from pg_roles r cross join unnest(array['UPDATE', 'DELETE', 'TRUNCATE']) p(privilege)
    where r.rolname in ('anon', 'authenticated', 'service_role', 'authenticator')
      and has_table_privilege(r.oid, 'public.execution_audit_log', p.privilege)
    order by 1, 2"""


def check_audit_triggers(conn: Cursor, options: Options) -> tuple[Status, str, list[str]]:
    tables = sorted({t.table for t in AUDIT_TRIGGERS})
    found = {(table, name): (enabled, tgtype, function) for table, name, enabled, tgtype, function
             in conn.execute(_TRIGGERS_SQL, (tables,)).fetchall()}
    problems = []
    for want in AUDIT_TRIGGERS:
        got = found.get((want.table, want.name))
        where = f"trigger {want.name} on {want.table}"
        if got is None:
            problems.append(f"{where} is missing")
            continue
        enabled, tgtype, function = got
        if enabled == "D":
            problems.append(f"{where} is disabled")
        elif want.always and enabled != "A":
            problems.append(f"{where} is {_TGENABLED.get(enabled, enabled)}, not ALWAYS: a session "
                            "with session_replication_role = replica bypasses it")
        elif enabled == "R":
            problems.append(f"{where} is {_TGENABLED['R']}: ordinary sessions bypass it")
        if function != want.function:
            problems.append(f"{where} calls {function}, not {want.function}")
        missing = [event for event in want.events if not tgtype & _EVENTS[event]]
        if missing:
            problems.append(f"{where} does not fire on {', '.join(missing)}")
        if want.always and not tgtype & _BEFORE:
            problems.append(f"{where} fires AFTER the change; it must refuse it BEFORE")
    for role, privilege in conn.execute(_AUDIT_LOG_WRITES_SQL).fetchall():
        problems.append(f"{role} has {privilege} on public.execution_audit_log (append-only)")
    return _verdict(problems, f"{len(AUDIT_TRIGGERS)} audit triggers enabled (the audit log's "
                              "append-only pair ALWAYS), no API role may change the log")


def check_cron_jobs(conn: Cursor, options: Options) -> tuple[Status, str, list[str]]:
    # pg_net is there when its extension is, or when its function is (what the maintenance
    # migration tests before it schedules the HTTP calls).
    row = conn.execute("select exists (select 1 from pg_extension where extname = 'pg_cron'), "
                       "exists (select 1 from pg_extension where extname in ('pg_net', 'net')) "
                       "or to_regprocedure('net.http_post(text, jsonb, jsonb, jsonb, integer)') "
                       "is not null").fetchone()
    has_cron, has_net = row if row else (False, False)
    if not has_cron or conn.execute("select to_regclass('cron.job')").fetchone() == (None,):
        return "fail", "", ["pg_cron is not installed in this database: nothing runs "
                            "run_maintenance (expired leases, stale reservations are never freed)"]
    jobs = {name: (schedule, command, active) for name, schedule, command, active in
            conn.execute("select j.jobname::text, j.schedule::text, j.command::text, j.active "
                         "from cron.job j where j.jobname is not null").fetchall()}
    expected = expected_cron_jobs(has_net)
    problems = []
    for job in expected:
        got = jobs.get(job.name)
        if got is None:
            problems.append(f"cron job {job.name} is missing: {job.why}")
            continue
        schedule, command, active = got
        if not active:
            problems.append(f"cron job {job.name} is inactive: {job.why}")
        if job.command_contains not in command:
            problems.append(f"cron job {job.name} runs {command.strip()!r}, which does not call "
                            f"{job.command_contains}")
        if job.schedule is not None and schedule.strip() != job.schedule:
            problems.append(f"cron job {job.name} runs on {schedule!r}, not {job.schedule!r}")
    names = ", ".join(job.name for job in expected)
    note = "" if has_net else (" (pg_net not installed: the local stack calls the scanner and "
                               "the reconciler)")
    return _verdict(problems, f"{names} scheduled and active{note}")


def check_stuck_executions(conn: Cursor, options: Options) -> tuple[Status, str, list[str]]:
    rows = conn.execute(
        "select e.id, e.status, e.market, e.claimed_at, now() - e.claimed_at, "
        "       count(*) over () "
        "from public.trade_executions e "
        "where e.status in ('claimed', 'submitted', 'unknown') "
        "  and e.claimed_at < now() - %s::interval "
        "order by e.claimed_at, e.id limit %s",
        (options.reconcile_window, MAX_LISTED)).fetchall()
    problems = [f"execution {id_} ({market}) is still {status} {_age(age)} after its claim "
                f"({claimed_at:%Y-%m-%d %H:%M:%S}Z): is the reconciler running?"
                for id_, status, market, claimed_at, age, _ in rows]
    total = rows[0][5] if rows else 0
    window = _age(options.reconcile_window)
    if problems:
        return "fail", "", _listed(problems, total - len(rows))
    return "pass", f"no execution open (claimed/submitted/unknown) longer than {window}", []


def check_exchange_discrepancies(conn: Cursor,
                                 options: Options) -> tuple[Status, str, list[str]]:
    if conn.execute("select to_regclass('private.exchange_discrepancies')").fetchone() == (None,):
        return "fail", "", ["private.exchange_discrepancies is missing: apply the migrations"]
    rows = conn.execute(
        "select d.id, d.kind, d.market, d.exchange_order_id, d.client_order_id, d.execution_id, "
        "       d.exchange_status, d.execution_status, d.recorded_status, d.detected_at, "
        "       d.facts -> 'result' ->> 'filled_amount', count(*) over () "
        "from private.exchange_discrepancies d where d.acknowledged_at is null "
        "order by d.detected_at, d.id limit %s", (MAX_LISTED,)).fetchall()
    problems = [_discrepancy(*row[:11]) for row in rows]
    if problems:
        return "fail", "", _listed(problems, rows[0][11] - len(rows))
    return "pass", ("every order the reconciler's sweep saw on the exchange maps to an execution "
                    "that says what it did"), []


def _discrepancy(id_: Any, kind: str, market: str, order_id: str, client_order_id: str | None,
                 execution_id: Any, exchange_status: str | None, execution_status: str | None,
                 recorded_status: str | None, detected_at: Any, filled: str | None) -> str:
    order = (f"order {order_id} on {market} (clientOrderId {client_order_id or 'none'}, "
             f"{exchange_status or 'known by its fills'}, filled {filled or '0'})")
    what = {
        "orphan_order": f"{order} has no execution: placed outside this backend?",
        "execution_contradicted": f"execution {execution_id} had been recorded "
                                  f"{execution_status}, but the exchange has {order}; "
                                  f"now recorded {recorded_status}",
        "figures_differ": f"execution {execution_id} is {execution_status}, but the exchange's "
                          f"{order} says otherwise",
    }.get(kind, f"{kind}: {order}")
    return (f"{what} (discrepancy {id_}, detected {detected_at:%Y-%m-%d %H:%M:%S}Z; once handled: "
            f"select public.acknowledge_exchange_discrepancy('{id_}', '<what was done>'))")


def check_expired_leases(conn: Cursor, options: Options) -> tuple[Status, str, list[str]]:
    rows = conn.execute(
        "select j.id, j.market, j.locked_by, now() - j.lock_expires_at, count(*) over () "
        "from public.scan_jobs j "
        "where j.locked_by is not null and j.lock_expires_at <= now() - %s::interval "
        "order by j.lock_expires_at, j.id limit %s",
        (options.lease_grace, MAX_LISTED)).fetchall()
    problems = [f"scan job {id_} ({market}) is still leased to {worker!r} {_age(age)} after the "
                "lease expired: is run-maintenance running?"
                for id_, market, worker, age, _ in rows]
    if problems:
        return "fail", "", _listed(problems, rows[0][4] - len(rows))
    return "pass", (f"no lease held more than {_age(options.lease_grace)} past its expiry"), []


def check_migrations(conn: Cursor, options: Options) -> tuple[Status, str, list[str]]:
    applied = migrations.read_history(conn)
    if applied is None:
        return "skip", ("no supabase_migrations.schema_migrations: not deployed with the Supabase "
                        "CLI (`supabase db push`)"), []
    folder = options.migrations_dir
    files = migrations.migration_files(folder) if folder is not None and folder.is_dir() else []
    if not files or folder is None:
        return "skip", f"no migration files to compare with ({folder or 'none given'})", []
    found = migrations.compare_history(files, applied)
    problems = [f"migration {f.version}_{f.name} is not applied (supabase db push)"
                for f in found.pending]
    problems += [f"migration {a.version} ({a.name or 'no name'}) is applied but has no file in "
                 f"{folder}: the database is ahead of (or diverged from) this checkout"
                 for a in found.unknown]
    problems += [f"migration {a.version} was applied as {a.version}_{a.name}.sql, but the file is "
                 f"now {f.filename}: an applied migration was renamed; give it back its name"
                 for a, f in found.renamed]
    problems += [f"migration {e.file.filename} was edited after it was applied: from line "
                 f"{e.line} on, the file is not what `supabase db push` applied (recorded in "
                 "supabase_migrations.schema_migrations). An applied migration never changes: "
                 "restore the file as it was applied and make the change a new migration with a "
                 "later timestamp" for e in found.edited]
    unrecorded = (f"; {len(found.unrecorded)} recorded without statements, their text not "
                  f"compared ({', '.join(a.version for a in found.unrecorded)})"
                  if found.unrecorded else "")
    return _verdict(problems, f"the {len(files)} migrations of {folder.name} are applied, each as "
                              f"its file reads now, and nothing else{unrecorded}")


CHECKS: tuple[tuple[str, str, CheckFn], ...] = (
    ("rls", "row level security on every table in public", check_rls),
    ("function_privileges", "service-only functions closed to PUBLIC, anon and authenticated",
     check_function_privileges),
    ("audit_triggers", "audit triggers enabled, the audit log append-only", check_audit_triggers),
    ("cron_jobs", "pg_cron jobs present and active", check_cron_jobs),
    ("stuck_executions", "no execution stuck open past the reconcile window",
     check_stuck_executions),
    ("exchange_orders", "every order on the exchange is an execution that says what it did",
     check_exchange_discrepancies),
    ("expired_leases", "no expired scan-job lease still held", check_expired_leases),
    ("migrations", "applied migrations match supabase/migrations", check_migrations),
)
CHECK_NAMES = tuple(name for name, _, _ in CHECKS)


def run_checks(conn: Cursor, options: Options | None = None,
               only: Sequence[str] | None = None) -> list[Result]:
    """Every check (or the named ones) on `conn`, which must be inside a transaction with an empty
    search_path (console.database.reading). Each check runs in a savepoint, so one that cannot run
    (e.g. no privilege on cron.job) fails alone with the database's message."""
    options = options or Options()
    results = []
    for name, title, fn in CHECKS:
        if only and name not in only:
            continue
        try:
            with conn.transaction():
                status, summary, problems = fn(conn, options)
        except psycopg.Error as exc:
            message = (exc.diag.message_primary if exc.diag else None) or str(exc).strip()
            status, summary, problems = "fail", "", [f"could not check: {message}"]
        results.append(Result(name, title, status, summary, tuple(problems)))
    return results


def _age(value: timedelta) -> str:
    seconds = int(value.total_seconds())
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 2 * 3600:
        return f"{seconds // 60} min"
    if seconds < 2 * 86400:
        return f"{seconds // 3600} h"
    return f"{seconds // 86400} days"
