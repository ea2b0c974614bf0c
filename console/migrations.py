"""The migration files of supabase/migrations, and whether a database applied them as they read now.

`supabase db push` (the pinned CLI, 2.117.0) applies a file as the statements its parser cuts it
into and records them, in the same transaction, in `supabase_migrations.schema_migrations
(version, name, statements text[])`. The parser cuts after every `;` that is outside quotes,
dollar quotes, comments and BEGIN ATOMIC bodies; it trims trailing `;` and then white space from
each piece and drops empty pieces; nothing else is changed (comments stay in). So a file can be
compared with what was applied without reproducing the parser: the recorded statements, taken in
order, must be the file's text with nothing but white space and semicolons between them, and at
least one `;` between two statements (the CLI cuts nowhere else). Any edit of what was applied —
a statement, a comment, a literal, one statement more or less — breaks that, wherever the cut
falls. What the CLI does not record cannot be compared: white space and empty statements between
statements.

`migration repair --status applied` records the file's statements the same way. A row without
statements (a CLI older than the `statements` column) is `unrecorded`: its text cannot be checked.

`oracle verify` (the `migrations` check) and the local stack (`make run`, `make db`) both compare
with `compare_history`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from os.path import commonprefix
from pathlib import Path
from typing import Any

import psycopg

# The CLI's own pattern (pkg/migration): what `supabase db push` applies; it skips other files.
MIGRATION_FILE = re.compile(r"^([0-9]+)_(.*)\.sql$")

# Go's unicode.IsSpace, which the CLI trims with: Python's str.isspace() less the four information
# separators (U+001C..U+001F) that Python counts as white space and Go does not.
_NOT_GO_SPACE = frozenset("\x1c\x1d\x1e\x1f")


@dataclass(frozen=True)
class MigrationFile:
    version: str
    name: str
    path: Path

    @property
    def filename(self) -> str:
        return self.path.name

    def text(self) -> str:
        return self.path.read_bytes().decode("utf-8", errors="surrogateescape")


@dataclass(frozen=True)
class AppliedMigration:
    """One row of supabase_migrations.schema_migrations."""

    version: str
    name: str
    statements: tuple[str, ...] | None  # None: recorded without statements


@dataclass(frozen=True)
class Edited:
    applied: AppliedMigration
    file: MigrationFile
    line: int  # the file's first line that is not what was applied


@dataclass
class HistoryComparison:
    """A database's migration history against the files of a checkout."""

    pending: list[MigrationFile] = field(default_factory=list)       # files not applied
    unknown: list[AppliedMigration] = field(default_factory=list)    # applied, no file
    renamed: list[tuple[AppliedMigration, MigrationFile]] = field(default_factory=list)
    edited: list[Edited] = field(default_factory=list)               # applied text ≠ file
    unrecorded: list[AppliedMigration] = field(default_factory=list)  # no statements to compare
    matching: int = 0                                                 # applied as they read now


def migration_files(folder: Path) -> list[MigrationFile]:
    """Every file of the folder that `supabase db push` applies, in the order it applies them."""
    found = []
    for path in sorted(folder.glob("*.sql")):
        match = MIGRATION_FILE.match(path.name)
        if match:
            found.append(MigrationFile(match.group(1), match.group(2), path))
    return found


def _between(char: str) -> bool:
    """What may stand between two recorded statements: white space (Go's) and semicolons."""
    return char == ";" or (char.isspace() and char not in _NOT_GO_SPACE)


def first_difference(text: str, statements: Sequence[str]) -> int | None:
    """None when `statements` are what the CLI records for a file reading `text`; otherwise the
    1-based line of `text` from which they differ."""
    at = 0
    for index, statement in enumerate(statements):
        start = at
        while at < len(text) and _between(text[at]):
            at += 1
        if index > 0 and ";" not in text[start:at]:  # two statements run together
            return text.count("\n", 0, start) + 1
        same = len(commonprefix([statement, text[at:at + len(statement)]]))
        if not statement or same < len(statement):
            return text.count("\n", 0, at + same) + 1
        at += len(statement)
    while at < len(text) and _between(text[at]):
        at += 1
    if at < len(text):
        return text.count("\n", 0, at) + 1
    return None


HISTORY_SQL = """
    select m.version::text, coalesce(m.name, '')::text, m.statements
    from supabase_migrations.schema_migrations m order by m.version"""


def read_history(conn: psycopg.Connection[Any]) -> list[AppliedMigration] | None:
    """The recorded history, or None where there is no history table (never pushed by the CLI)."""
    row = conn.execute("select to_regclass('supabase_migrations.schema_migrations') is not null, "
                       "exists (select from information_schema.columns where "
                       "table_schema = 'supabase_migrations' and table_name = 'schema_migrations' "
                       "and column_name = 'statements')").fetchone()
    if not row or not row[0]:
        return None
    sql = HISTORY_SQL if row[1] else HISTORY_SQL.replace("m.statements", "null::text[]")
    return [AppliedMigration(version, name, None if statements is None else tuple(statements))
            for version, name, statements in conn.execute(sql).fetchall()]


def compare_history(files: Sequence[MigrationFile],
                    applied: Sequence[AppliedMigration]) -> HistoryComparison:
    """Which files are applied as they read now, which were edited or renamed since, which are
    not applied yet, and what was applied that no file explains."""
    by_version = {f.version: f for f in files}
    recorded = {a.version for a in applied}
    result = HistoryComparison(pending=[f for f in files if f.version not in recorded])
    for migration in applied:
        file = by_version.get(migration.version)
        if file is None:
            result.unknown.append(migration)
        elif migration.name != file.name:
            result.renamed.append((migration, file))
        elif migration.statements is None:
            result.unrecorded.append(migration)
        else:
            line = first_difference(file.text(), migration.statements)
            if line is None:
                result.matching += 1
            else:
                result.edited.append(Edited(migration, file, line))
    return result
