"""The RLS matrix (G8): every table in public × select/insert/update/delete × caller, observed.

    python -m scripts.rls_matrix                       # the markdown, on a throwaway cluster
    python -m scripts.rls_matrix --db-url URL          # on a freshly migrated database of yours
    python -m scripts.rls_matrix --readme README.md    # also replace the README's matrix
    python -m scripts.rls_matrix --json                # the observed cells as JSON

Each cell is one request as PostgREST runs it: one transaction in which `set_config('role', …,
true)` and `set_config('request.jwt.claims', …, true)` are followed by the statement. The callers:

    anon           role anon, claims {"role": "anon"}
    owner          role authenticated, the claims of user A — on A's rows
    another user   role authenticated, the claims of user B — on A's rows
    service_role   role service_role, claims {"role": "service_role"} (the backend's key)

The statements target user A's rows in a per-user table, or one row of a global table. A select
counts how many of the target rows the caller sees; an insert adds a row for A (a valid one: the
superuser can insert it, a control checks that); an update sets a column the owner may change if
any, else one that matters; a delete deletes the target rows. What comes back is recorded: rows
seen or changed (n of N), or the refusal — no grant (42501 `permission denied`), a row-level
security policy (42501 `new row violates row-level security policy`), a trigger (our 42501s), or
any other SQLSTATE.

Everything runs in ONE transaction on a superuser connection that is rolled back at the end: the
seed (users A and B with rows in every table, fixed ids), then each cell inside a savepoint (an
optional superuser `prepare` step — e.g. removing A's settings row so that inserting one is a
valid request — then the role switch and the statement) rolled back before the next. So nothing
is left behind, and any freshly migrated database will do. The role switch is PostgREST's
(`set_config('role', …)`); only the login differs (PostgREST logs in as `authenticator`), which
no privilege check, policy or trigger reads.

The intended matrix is scripts/rls_intended.py; tests/test_rls_matrix.py fails on any difference.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import psycopg

from scripts.rls_intended import ACTORS, INTENDED, OPERATIONS, WHY
from stack.cluster import LOCAL_SQL, MIGRATIONS, Cluster, ClusterError, free_port, sql_files

README = Path(__file__).resolve().parent.parent / "README.md"
START_MARKER = "<!-- rls-matrix:start -->"
END_MARKER = "<!-- rls-matrix:end -->"

USER_A = "a1500000-0000-4000-8000-00000000000a"   # the owner
USER_B = "b1500000-0000-4000-8000-00000000000b"   # another user
JOB_A = "5a150000-0000-4000-8000-00000000000a"
JOB_B = "5b150000-0000-4000-8000-00000000000b"
PROPOSALS_A = ("7a150000-0000-4000-8000-000000000001", "7a150000-0000-4000-8000-000000000002",
               "7a150000-0000-4000-8000-000000000003")
PROPOSAL_B = "7b150000-0000-4000-8000-000000000001"
EXECUTIONS_A = ("ea150000-0000-4000-8000-000000000001", "ea150000-0000-4000-8000-000000000002")
EXECUTION_B = "eb150000-0000-4000-8000-000000000001"

CLAIMS = {
    "anon": ("anon", {"role": "anon"}),
    "owner": ("authenticated", {"role": "authenticated", "sub": USER_A, "aud": "authenticated"}),
    "other": ("authenticated", {"role": "authenticated", "sub": USER_B, "aud": "authenticated"}),
    "service_role": ("service_role", {"role": "service_role"}),
}

# Two users with rows in every per-user table (A: an executed proposal with its filled execution
# and ledger row, an executing one with a claimed execution, a pending one; B: an executed one),
# and global rows nobody references (so a delete is not stopped by a foreign key).
SEED = f"""
insert into auth.users (id, email, aud, role) values
  ('{USER_A}', 'owner@rls.test', 'authenticated', 'authenticated'),
  ('{USER_B}', 'other@rls.test', 'authenticated', 'authenticated');
insert into public.market_allowlist (market, enabled, min_order_quote, max_order_quote) values
  ('RLSA-EUR', true, 5, 500), ('RLSB-EUR', true, 5, 500), ('RLSX-EUR', true, 5, 500);
insert into public.gpt_model_prices (model, input_usd_per_mtok, cached_input_usd_per_mtok,
                                     output_usd_per_mtok)
values ('rls-model', 1, 0.5, 2);
insert into public.trading_allowlist (user_id, market) values
  ('{USER_A}', 'RLSA-EUR'), ('{USER_A}', 'RLSB-EUR'), ('{USER_B}', 'RLSA-EUR');
insert into public.scan_jobs (id, user_id, market, interval_seconds) values
  ('{JOB_A}', '{USER_A}', 'RLSA-EUR', 300), ('{JOB_B}', '{USER_B}', 'RLSA-EUR', 300);
insert into public.trade_proposals (id, user_id, scan_job_id, market, side, amount_quote,
                                    confidence, rationale, source, status, expires_at, decided_at,
                                    decided_by)
values
  ('{PROPOSALS_A[0]}', '{USER_A}', '{JOB_A}', 'RLSA-EUR', 'buy', 10, 0.9, 'seed', 'rules',
   'executed', now() + interval '1 hour', now(), 'auto'),
  ('{PROPOSALS_A[1]}', '{USER_A}', null, 'RLSA-EUR', 'sell', 10, 0.9, 'seed', 'rules',
   'executing', now() + interval '1 hour', now(), 'user'),
  ('{PROPOSALS_A[2]}', '{USER_A}', null, 'RLSB-EUR', 'buy', 10, 0.5, 'seed', 'manual',
   'pending', now() + interval '1 hour', null, null),
  ('{PROPOSAL_B}', '{USER_B}', '{JOB_B}', 'RLSA-EUR', 'buy', 10, 0.9, 'seed', 'rules',
   'executed', now() + interval '1 hour', now(), 'auto');
insert into public.trade_executions (id, proposal_id, user_id, idempotency_key, mode, market, side,
                                     amount_quote, status, exchange_order_id, filled_amount,
                                     filled_amount_quote, fee_paid, fee_currency, submitted_at,
                                     completed_at)
values
  ('{EXECUTIONS_A[0]}', '{PROPOSALS_A[0]}', '{USER_A}', 'rls-a1', 'paper', 'RLSA-EUR', 'buy', 10,
   'filled', 'order-a1', 0.0002, 10, 0.025, 'EUR', now(), now()),
  ('{EXECUTIONS_A[1]}', '{PROPOSALS_A[1]}', '{USER_A}', 'rls-a2', 'paper', 'RLSA-EUR', 'sell', 10,
   'claimed', null, null, null, null, null, null, null),
  ('{EXECUTION_B}', '{PROPOSAL_B}', '{USER_B}', 'rls-b1', 'paper', 'RLSA-EUR', 'buy', 10,
   'filled', 'order-b1', 0.0002, 10, 0.025, 'EUR', now(), now());
insert into public.trade_history (execution_id, proposal_id, user_id, market, side, amount,
                                  amount_quote, price, fee_paid, fee_currency, mode)
values
  ('{EXECUTIONS_A[0]}', '{PROPOSALS_A[0]}', '{USER_A}', 'RLSA-EUR', 'buy', 0.0002, 10, 50000,
   0.025, 'EUR', 'paper'),
  ('{EXECUTION_B}', '{PROPOSAL_B}', '{USER_B}', 'RLSA-EUR', 'buy', 0.0002, 10, 50000, 0.025,
   'EUR', 'paper');
insert into public.gpt_usage_log (user_id, scan_job_id, model, status, reserved_usd) values
  ('{USER_A}', '{JOB_A}', 'gpt-4o-mini', 'reserved', 0.001),
  ('{USER_B}', '{JOB_B}', 'gpt-4o-mini', 'reserved', 0.001);
insert into public.execution_audit_log (user_id, proposal_id, execution_id, event, detail) values
  ('{USER_A}', '{PROPOSALS_A[0]}', '{EXECUTIONS_A[0]}', 'rls.seed', '{{"who": "owner"}}'),
  ('{USER_B}', '{PROPOSAL_B}', '{EXECUTION_B}', 'rls.seed', '{{"who": "other"}}');
"""


@dataclass(frozen=True)
class Table:
    """How each operation is tried on one table."""

    name: str
    target: str           # the rows every operation aims at (A's, or one global row)
    insert: str           # a new row (for A), valid for the superuser
    update: str           # the SET list
    prepare_insert: str = ""  # superuser statement that makes the insert valid (undone after)


TABLES = (
    Table("system_controls", "id",
          "insert into public.system_controls (id, trading_halted) values (true, false)",
          "trading_halted = true",
          prepare_insert="delete from public.system_controls"),  # the one row: make room
    Table("market_allowlist", "market = 'RLSX-EUR'",
          "insert into public.market_allowlist (market, enabled) values ('RLSN-EUR', true)",
          "enabled = false, max_order_quote = 1000000"),
    Table("gpt_model_prices", "model = 'rls-model'",
          "insert into public.gpt_model_prices (model, input_usd_per_mtok, "
          "cached_input_usd_per_mtok, output_usd_per_mtok) values ('rls-free', 0, 0, 0)",
          "output_usd_per_mtok = 0"),
    Table("trading_settings", f"user_id = '{USER_A}'",
          f"insert into public.trading_settings (user_id) values ('{USER_A}')",
          "max_order_quote = 40",
          prepare_insert=f"delete from public.trading_settings where user_id = '{USER_A}'"),
    Table("trading_allowlist", f"user_id = '{USER_A}'",
          f"insert into public.trading_allowlist (user_id, market) values ('{USER_A}', 'RLSX-EUR')",
          "enabled = false"),
    Table("scan_jobs", f"user_id = '{USER_A}'",
          "insert into public.scan_jobs (user_id, market, interval_seconds) "
          f"values ('{USER_A}', 'RLSB-EUR', 600)",
          "interval_seconds = 600"),
    Table("trade_proposals", f"user_id = '{USER_A}'",
          "insert into public.trade_proposals (user_id, market, side, amount_quote, confidence, "
          f"source, expires_at) values ('{USER_A}', 'RLSA-EUR', 'buy', 10, 0.9, 'manual', "
          "now() + interval '1 hour')",
          "rationale = 'changed'"),
    Table("trade_executions", f"user_id = '{USER_A}'",
          "insert into public.trade_executions (proposal_id, user_id, idempotency_key, mode, "
          f"market, side, amount_quote) values ('{PROPOSALS_A[2]}', '{USER_A}', 'rls-new', "
          "'paper', 'RLSB-EUR', 'buy', 10)",
          "error_message = 'changed'"),
    Table("trade_history", f"user_id = '{USER_A}'",
          "insert into public.trade_history (execution_id, proposal_id, user_id, market, side, "
          f"amount, amount_quote, price, mode) values ('{EXECUTIONS_A[1]}', '{PROPOSALS_A[1]}', "
          f"'{USER_A}', 'RLSA-EUR', 'sell', 1, 10, 10, 'paper')",
          "fee_paid = 0"),
    Table("gpt_usage_log", f"user_id = '{USER_A}'",
          "insert into public.gpt_usage_log (user_id, model, status, reserved_usd) "
          f"values ('{USER_A}', 'gpt-4o-mini', 'reserved', 0.01)",
          "request_id = 'changed'"),
    Table("execution_audit_log", f"user_id = '{USER_A}'",
          "insert into public.execution_audit_log (user_id, event, detail) "
          f"values ('{USER_A}', 'rls.matrix', '{{}}')",
          "detail = '{}'"),
)


@dataclass(frozen=True)
class Cell:
    outcome: str          # all | none | some | ok | denied:grant | denied:rls | denied:trigger |
    #                       error:<sqlstate>
    rows: int             # rows seen (select) or changed
    of: int               # the target rows (1 for an insert)
    detail: str = ""      # the refusal's message, for a reader

    @property
    def code(self) -> str:
        """What the intended matrix states: the outcome without counts."""
        return self.outcome


@dataclass(frozen=True)
class Observed:
    cells: dict[tuple[str, str, str], Cell]   # (table, operation, actor) → cell
    controls: list[tuple[str, bool, str]]     # (what, passed, detail)
    tables_in_public: list[str]


# -- observing -------------------------------------------------------------------------------------
def observe(conn: psycopg.Connection[Any]) -> Observed:
    """Seed, try every cell, roll everything back (including whatever `conn`'s open transaction
    had done before). `conn` is a superuser connection."""
    cells: dict[tuple[str, str, str], Cell] = {}
    controls: list[tuple[str, bool, str]] = []
    if conn.autocommit:
        conn.autocommit = False
    try:
        with conn.cursor() as cur:
            cur.execute(SEED)
            cur.execute("select c.relname::text from pg_class c join pg_namespace n "
                        "on n.oid = c.relnamespace where n.nspname = 'public' "
                        "and c.relkind in ('r', 'p') order by 1")
            tables_in_public = [name for (name,) in cur.fetchall()]
            for table in TABLES:
                cur.execute(f"select count(*) from public.{table.name} where {table.target}")
                (targets,) = cur.fetchone() or (0,)
                controls.append((f"public.{table.name} has target rows ({table.target})",
                                 targets > 0, str(targets)))
                result = _attempt(cur, None, table.insert, table.prepare_insert)
                controls.append((f"the insert into public.{table.name} is valid for the superuser",
                                 result.outcome == "ok" and result.rows == 1, result.detail))
                for op in OPERATIONS:
                    for actor in ACTORS:
                        cells[(table.name, op, actor)] = _cell(cur, table, op, actor, targets)
    finally:
        conn.rollback()
    return Observed(cells, controls, tables_in_public)


def _cell(cur: psycopg.Cursor[Any], table: Table, op: str, actor: str, targets: int) -> Cell:
    where = f"public.{table.name}"
    if op == "select":
        cell = _attempt(cur, actor, f"select count(*) from {where} where {table.target}",
                        count=True)
        of = targets
    elif op == "insert":
        cell = _attempt(cur, actor, table.insert, table.prepare_insert)
        of = 1
    elif op == "update":
        cell = _attempt(cur, actor, f"update {where} set {table.update} where {table.target}")
        of = targets
    else:
        cell = _attempt(cur, actor, f"delete from {where} where {table.target}")
        of = targets
    if cell.outcome != "ok":
        return Cell(cell.outcome, 0, of, cell.detail)
    rows = cell.rows
    if op in ("select",):
        outcome = "all" if rows == of else "none" if rows == 0 else "some"
    else:
        outcome = "ok" if rows == of else "none" if rows == 0 else "some"
    return Cell(outcome, rows, of)


def _attempt(cur: psycopg.Cursor[Any], actor: str | None, statement: str, prepare: str = "", *,
             count: bool = False) -> Cell:
    """One request in a savepoint, undone afterwards: prepare (superuser), then as `actor` (None:
    stay superuser). Cell.rows is the count read (count=True) or the rows affected."""
    cur.execute("savepoint cell")
    try:
        if prepare:
            cur.execute(prepare)  # type: ignore[arg-type]
        if actor is not None:
            role, claims = CLAIMS[actor]
            cur.execute("select set_config('role', %s, true), "
                        "set_config('request.jwt.claims', %s, true)", (role, json.dumps(claims)))
        cur.execute(statement)  # type: ignore[arg-type]
        if count:
            (rows,) = cur.fetchone() or (0,)
        else:
            rows = cur.rowcount
        return Cell("ok", int(rows), 0)
    except psycopg.Error as error:
        return Cell(_refusal(error), 0, 0, (error.diag.message_primary or str(error)).strip())
    finally:
        cur.execute("rollback to savepoint cell")


def _refusal(error: psycopg.Error) -> str:
    message = (error.diag.message_primary or "").lower()
    if error.sqlstate == "42501":
        if message.startswith("permission denied"):
            return "denied:grant"
        if "row-level security" in message:
            return "denied:rls"
        return "denied:trigger"
    return f"error:{error.sqlstate}"


# -- comparing -------------------------------------------------------------------------------------
def differences(observed: Observed) -> list[str]:
    """Every cell where the observed outcome is not the intended one, and every table missing from
    either side."""
    problems = []
    intended_tables = sorted(INTENDED)
    if sorted(observed.tables_in_public) != intended_tables:
        problems.append(f"tables in public {observed.tables_in_public} != the intended matrix's "
                        f"{intended_tables}")
    for table, ops in INTENDED.items():
        for op, expected in ops.items():
            for actor, want in zip(ACTORS, expected, strict=True):
                cell = observed.cells.get((table, op, actor))
                got = cell.code if cell else "missing"
                if got != want:
                    detail = f" ({cell.detail})" if cell and cell.detail else ""
                    problems.append(f"{table} {op} as {actor}: intended {want}, observed "
                                    f"{got}{detail}")
    return problems


# -- rendering -------------------------------------------------------------------------------------
ACTOR_TITLES = {"anon": "anon", "owner": "owner (A on A's rows)",
                "other": "another user (B on A's rows)", "service_role": "service_role"}


def render(observed: Observed) -> str:
    """The observed matrix as markdown, with the reasons of the intended matrix as notes."""
    notes: list[str] = []
    lines = [
        "<!-- generated by `python -m scripts.rls_matrix --readme README.md`; do not edit -->",
        "Observed on a freshly migrated database, each cell one request as PostgREST runs it (role"
        " + `request.jwt.claims` in one transaction; tests/test_rls_matrix.py fails when it"
        " differs from the intended matrix in scripts/rls_intended.py). Per-user tables: the"
        " operation aims at user A's rows; global tables: at one row. `✓ n/N` the caller saw or"
        " changed n of the N target rows · `∅ 0/N` no error, no row (row-level security hid them)"
        " · `✗ grant` no privilege (42501) · `✗ policy` a row-level security policy refused the"
        " new row (42501) · `✗ trigger` refused by a trigger.",
        "",
        "| table | operation | " + " | ".join(ACTOR_TITLES[a] for a in ACTORS) + " |",
        "|---|---|" + "---|" * len(ACTORS),
    ]
    for table in INTENDED:
        for op in OPERATIONS:
            row = []
            for actor in ACTORS:
                text = _cell_text(observed.cells[(table, op, actor)])
                reason = WHY.get((table, op, actor))
                if reason:
                    if reason not in notes:
                        notes.append(reason)
                    text += f" [{notes.index(reason) + 1}]"
                row.append(text)
            lines.append(f"| `{table}` | {op} | " + " | ".join(row) + " |")
    lines.append("")
    lines += [f"[{i}] {reason}  " for i, reason in enumerate(notes, 1)]
    return "\n".join(lines).rstrip() + "\n"


def _cell_text(cell: Cell) -> str:
    if cell.outcome in ("all", "ok", "some"):
        return f"✓ {cell.rows}/{cell.of}"
    if cell.outcome == "none":
        return f"∅ 0/{cell.of}"
    if cell.outcome == "denied:grant":
        return "✗ grant"
    if cell.outcome == "denied:rls":
        return "✗ policy"
    if cell.outcome == "denied:trigger":
        return "✗ trigger"
    return f"⚠ {cell.outcome}"


def replace_in_readme(text: str, markdown: str) -> str:
    """`text` with everything between the markers replaced by `markdown` (ValueError if the
    markers are missing or out of order)."""
    start, end = text.find(START_MARKER), text.find(END_MARKER)
    if start < 0 or end < start:
        raise ValueError(f"{START_MARKER} … {END_MARKER} not found (in this order)")
    return text[:start + len(START_MARKER)] + "\n" + markdown + text[end:]


# -- the command -----------------------------------------------------------------------------------
@contextmanager
def throwaway_database() -> Iterator[str]:
    """A new cluster with supabase/local + supabase/migrations applied; its superuser URL."""
    tmp = Path(tempfile.mkdtemp(prefix="aio-rls-"))
    tmp.chmod(0o755)
    cluster = Cluster(data_dir=tmp / "cluster", port=free_port(), cron_database="rls",
                      settings={"fsync": "off", "synchronous_commit": "off"})
    try:
        cluster.init()
        cluster.start()
        cluster.create_database("rls")
        cluster.apply("rls", sql_files(LOCAL_SQL, MIGRATIONS))
        yield cluster.url("rls")
    finally:
        cluster.destroy()
        shutil.rmtree(tmp, ignore_errors=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scripts.rls_matrix", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--db-url", help="superuser URL of a freshly migrated database (nothing "
                        "is left behind); default: a throwaway cluster")
    parser.add_argument("--readme", type=Path, nargs="?", const=README,
                        help="replace the matrix between the markers in this file")
    parser.add_argument("--json", action="store_true", help="print the observed cells as JSON")
    args = parser.parse_args(argv)
    try:
        if args.db_url:
            with psycopg.connect(args.db_url) as conn:
                observed = observe(conn)
        else:
            with throwaway_database() as url, psycopg.connect(url) as conn:
                observed = observe(conn)
    except (ClusterError, psycopg.Error) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    failed = [f"{what}: {detail}" for what, passed, detail in observed.controls if not passed]
    drift = differences(observed)
    markdown = render(observed)
    if args.json:
        print(json.dumps({f"{t}.{o}.{a}": asdict(c) for (t, o, a), c in observed.cells.items()},
                         indent=1, ensure_ascii=False))
    else:
        print(markdown, end="")
    if args.readme:
        try:
            args.readme.write_text(replace_in_readme(args.readme.read_text(), markdown))
        except ValueError as error:
            print(f"error: {args.readme}: {error}", file=sys.stderr)
            return 1
        print(f"# wrote the matrix into {args.readme}", file=sys.stderr)
    for problem in failed + drift:
        print(f"DIFFERS: {problem}", file=sys.stderr)
    return 1 if failed or drift else 0


if __name__ == "__main__":
    sys.exit(main())
