"""plpgsql_check (Debian's postgresql-15-plpgsql-check) over every PL/pgSQL function the migrations
create: what PostgreSQL itself only finds when a line runs — a misspelt column, a wrong type, a
hidden cast, a variable never read, dead code, a SECURITY DEFINER hazard.

Every function is checked with every warning class on (all_warnings, plus performance, security and
compatibility warnings) and fatal_errors off, so one run lists everything. A trigger function is
checked once per table it is attached to (relid, with its transition tables), because NEW and OLD
have that table's row type; a trigger function attached to no table cannot be checked and is a
finding too. The extension lives only in this test's own clone of the template database.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stack.cluster import MIGRATIONS, ROOT
from tests.pg import Database

FUNCTIONS_SQL = """
select p.oid, p.oid::regprocedure::text, p.prorettype = 'pg_catalog.trigger'::regtype
from pg_catalog.pg_proc p
join pg_catalog.pg_language l on l.oid = p.prolang
where l.lanname = 'plpgsql'
  and not exists (select from pg_catalog.pg_depend d
                  where d.classid = 'pg_catalog.pg_proc'::regclass and d.objid = p.oid
                    and d.deptype = 'e')
order by 2
"""
TRIGGERS_SQL = """
select t.tgfoid, t.tgrelid::regclass::text, t.tgname, t.tgoldtable, t.tgnewtable
from pg_catalog.pg_trigger t where not t.tgisinternal order by 2, 3
"""
CHECK_SQL = """
select lineno, statement, sqlstate, message, detail, hint, level, query
from plpgsql_check_function_tb(%(fn)s::regprocedure, relid => %(rel)s::regclass,
       fatal_errors => false, other_warnings => true, extra_warnings => true,
       performance_warnings => true, security_warnings => true, compatibility_warnings => true,
       all_warnings => true, oldtable => %(old)s, newtable => %(new)s)
"""
FIX_HINT = """
How to fix: change the function at the file and line named above so the finding goes away — e.g.
for "target type is different type than source type" (a hidden cast), declare the variable with
the type of what is assigned (count(*) and row_count are bigint). Only for a finding that is
wrong, switch that check off for that one function with a comment in its body, e.g.
`-- @plpgsql_check_options: extra_warnings = off`, and say why next to it. Re-run with:
    .venv/bin/python -m pytest tests/test_plpgsql_check.py
"""


@dataclass(frozen=True)
class Finding:
    function: str
    table: str | None
    line: int | None
    level: str
    sqlstate: str | None
    message: str
    detail: str | None
    hint: str | None
    statement: str | None

    def __str__(self) -> str:
        where = self.function + (f" (trigger on {self.table})" if self.table else "")
        text = (f"{where} at {source_line(self.function, self.line)}: "
                f"{self.level} [{self.sqlstate or '-'}] {self.message}")
        for label, value in (("detail", self.detail), ("hint", self.hint),
                             ("statement", self.statement)):
            if value:
                text += f"\n      {label}: {value}"
        return text


def source_line(function: str, line: int | None) -> str:
    """`file:line` of a finding: plpgsql_check counts lines from the one holding the body's opening
    `$$` (line 1), in the last migration that (re)defines the function."""
    name = function.split("(", 1)[0]
    schema, _, bare = name.rpartition(".")
    qualified = f"{re.escape(schema or 'public')}\\.{re.escape(bare)}"
    pattern = re.compile(rf"create\s+(?:or\s+replace\s+)?function\s+{qualified}\s*\("
                         r".*?\bas\s+(\$[A-Za-z_]*\$)", re.IGNORECASE | re.DOTALL)
    found: tuple[Path, int] | None = None
    for path in sorted(MIGRATIONS.glob("*.sql")):
        text = path.read_text()
        for match in pattern.finditer(text):
            found = (path, text.count("\n", 0, match.start(1)) + 1)
    if found is None:
        return f"line {line} of its body (its migration not found)"
    path, opening = found
    return f"{path.relative_to(ROOT)}:{opening + (line or 1) - 1}"


def check_all(db: Database) -> tuple[int, int, list[Finding]]:
    """(functions, checks run, findings) for the database's own PL/pgSQL functions."""
    with db.connect() as conn:
        conn.execute("create extension plpgsql_check")
        functions = conn.execute(FUNCTIONS_SQL).fetchall()
        triggers = conn.execute(TRIGGERS_SQL).fetchall()
        checks, findings = 0, []
        for oid, name, is_trigger in functions:
            targets: list[tuple[Any, ...]] = (
                [t for t in triggers if t[0] == oid] if is_trigger else [(oid, None, None, None,
                                                                         None)])
            if not targets:
                findings.append(Finding(name, None, None, "error", None,
                                        "a trigger function attached to no table cannot be "
                                        "checked: attach it or drop it", None, None, None))
            for _, table, _, old, new in targets:
                checks += 1
                for row in conn.execute(CHECK_SQL, {"fn": oid, "rel": table or 0, "old": old,
                                                    "new": new}).fetchall():
                    line, statement, sqlstate, message, detail, hint, level, query = row
                    findings.append(Finding(name, table, line, level, sqlstate, message, detail,
                                            hint, query or statement))
    return len(functions), checks, findings


def test_plpgsql_check_finds_nothing_in_any_function(db: Database) -> None:
    functions, checks, findings = check_all(db)
    print(f"\nplpgsql_check: {functions} PL/pgSQL functions, {checks} checks, "
          f"{len(findings)} findings")
    assert functions >= 40 and checks >= functions, (functions, checks)
    assert not findings, (
        f"plpgsql_check found {len(findings)} problem(s) in the migrations' PL/pgSQL functions:\n"
        + "\n".join(f"  - {finding}" for finding in findings) + "\n" + FIX_HINT)
