"""The RLS matrix (G8): observed on a freshly migrated database, it is the intended one, cell by
cell (scripts/rls_matrix.py observes, scripts/rls_intended.py intends).

The matrix complements supabase/tests/10_tenant_isolation.sql (every attack on the victim's rows
is blocked) and 20_column_privileges.sql (which columns of one's own rows may change) with the
positive side: who MAY do what — the owner may manage their allowlist and scan jobs, the service
may write the operator's tables — so a grant or policy that silently widens or narrows fails here.
"""

from __future__ import annotations

import pytest

from scripts.rls_intended import ACTORS, INTENDED, OPERATIONS, WHY
from scripts.rls_matrix import (
    END_MARKER,
    README,
    START_MARKER,
    TABLES,
    Observed,
    differences,
    observe,
    render,
    replace_in_readme,
)
from tests.pg import Database


@pytest.fixture(scope="module")
def observed(pg_session) -> Observed:  # type: ignore[no-untyped-def]
    database = pg_session.new_database()
    try:
        with database.connect(autocommit=False) as conn:
            return observe(conn)
    finally:
        pg_session.drop(database)


def test_the_controls_hold(observed: Observed) -> None:
    """Every table has target rows, and every insert tried is one the superuser can make: a
    refusal in the matrix is the caller's, never broken test data."""
    failed = [f"{what}: {detail}" for what, passed, detail in observed.controls if not passed]
    assert failed == []
    assert len(observed.controls) == 2 * len(TABLES)


def test_every_table_in_public_is_in_the_matrix(observed: Observed) -> None:
    assert sorted(observed.tables_in_public) == sorted(INTENDED) == sorted(t.name for t in TABLES)


def test_the_observed_matrix_is_the_intended_one(observed: Observed) -> None:
    assert differences(observed) == []
    assert len(observed.cells) == len(INTENDED) * len(OPERATIONS) * len(ACTORS)


def test_every_reason_names_a_cell_of_the_matrix() -> None:
    for table, op, actor in WHY:
        assert table in INTENDED and op in OPERATIONS and actor in ACTORS, (table, op, actor)


def test_a_widened_grant_is_a_difference(db: Database) -> None:
    """The comparison can fail: grant anon SELECT on the audit log (RLS still hides every row, so
    the cell moves from `denied:grant` to `none`) and the difference is reported by name."""
    with db.connect(autocommit=False) as conn:
        conn.execute("grant select on public.execution_audit_log to anon")
        changed = observe(conn)  # rolls back the grant with everything else
    assert differences(changed) == [
        "execution_audit_log select as anon: intended denied:grant, observed none"]


def test_the_markdown_shows_every_cell_and_replaces_the_readme_block(observed: Observed) -> None:
    markdown = render(observed)
    rows = [line for line in markdown.splitlines() if line.startswith("| `")]
    assert len(rows) == len(INTENDED) * len(OPERATIONS)
    assert all(line.count(" | ") == len(ACTORS) + 1 for line in rows)
    assert "⚠" not in markdown  # no unexpected SQLSTATE anywhere
    readme = f"# Title\n\n{START_MARKER}\nold\n{END_MARKER}\n\nmore\n"
    once = replace_in_readme(readme, markdown)
    assert once == replace_in_readme(once, markdown)  # idempotent
    assert once.startswith(f"# Title\n\n{START_MARKER}\n<!-- generated") and "old" not in once
    assert once.endswith(f"{END_MARKER}\n\nmore\n")
    with pytest.raises(ValueError, match="not found"):
        replace_in_readme("# no markers\n", markdown)


def test_the_readme_shows_the_observed_matrix(observed: Observed) -> None:
    """README.md's block between the markers is this matrix: regenerate it (`make rls-matrix`)
    whenever a grant or a policy changes."""
    text = README.read_text()
    assert replace_in_readme(text, render(observed)) == text, "README.md is stale: make rls-matrix"
