"""What every migration file must look like before it reaches a live project.

- It starts (after its header comment) with `set lock_timeout`: on a running project a DDL statement
  that must queue for its lock (a trigger or a foreign key on auth.users takes SHARE ROW EXCLUSIVE,
  behind any open transaction that wrote a user) would otherwise wait without end, and every
  sign-up and write to that table would queue behind it. With the timeout the push fails instead
  and can be retried (tests/test_migration_deploy.py shows both roads). A plain `set` (not
  `set local`): `supabase db push` runs a file in one transaction, plain psql runs it statement by
  statement, and only a session-level setting holds on both; it ends with the migration's session.
- squawk (requirements-dev.txt, rules in .squawk.toml) finds nothing in them.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from stack.cluster import MIGRATIONS, ROOT

MAX_LOCK_TIMEOUT_S = 10
_LEADING_COMMENTS = re.compile(r"\A(?:\s+|--[^\n]*(?:\n|\Z)|/\*.*?\*/)*", re.DOTALL)
_SET_LOCK_TIMEOUT = re.compile(
    r"set\s+(?:session\s+)?lock_timeout\s*(?:=|to)\s*'(\d+)\s*(ms|s)?'\s*;", re.IGNORECASE)
SQUAWK = Path(sys.executable).parent / "squawk"


def first_statement(path: Path) -> str:
    text = path.read_text()
    return text[_LEADING_COMMENTS.match(text).end():]  # type: ignore[union-attr]


def lock_timeout_seconds(path: Path) -> float | None:
    """The lock_timeout the file sets as its first statement, or None."""
    match = _SET_LOCK_TIMEOUT.match(first_statement(path))
    if match is None:
        return None
    value, unit = int(match.group(1)), match.group(2) or "ms"
    return value / 1000 if unit.lower() == "ms" else float(value)


def test_every_migration_sets_a_lock_timeout_before_anything_else() -> None:
    files = sorted(MIGRATIONS.glob("*.sql"))
    assert files, "no migration files found"
    wrong = {}
    for path in files:
        seconds = lock_timeout_seconds(path)
        if seconds is None or not 0 < seconds <= MAX_LOCK_TIMEOUT_S:
            wrong[path.name] = first_statement(path).split("\n", 1)[0][:80]
    assert not wrong, (
        "every migration must start, right after its header comment, with\n"
        "    set lock_timeout = '5s';\n"
        f"(a session-level SET, not SET LOCAL; at most {MAX_LOCK_TIMEOUT_S} s), so a DDL lock that "
        "queues behind a long transaction on a live project fails the push instead of blocking "
        "every write to that table. These files start otherwise:\n"
        + "\n".join(f"  {name}: {line!r}" for name, line in wrong.items()))


def test_squawk_finds_nothing_in_the_migrations() -> None:
    assert SQUAWK.exists(), (f"squawk is not installed at {SQUAWK}; `make setup` installs it "
                             "(squawk-cli in requirements-dev.txt)")
    files = [str(p.relative_to(ROOT)) for p in sorted(MIGRATIONS.glob("*.sql"))]
    proc = subprocess.run([str(SQUAWK), "--config", str(ROOT / ".squawk.toml"),
                           "--reporter", "gcc", *files], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, check=False)
    print(proc.stdout, proc.stderr)
    assert proc.returncode == 0 and not proc.stdout.strip(), (
        "squawk (rules: .squawk.toml; each rule is explained at https://squawkhq.com/docs/rules) "
        f"found problems in the migrations:\n{proc.stdout}{proc.stderr}")
