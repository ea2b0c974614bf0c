"""G8/G9 at the SQL level: the pgTAP suite in supabase/tests, run with pg_prove.

Each file is one transaction that seeds two users with rows in every table, impersonates anon and
the other user exactly as PostgREST does, and rolls back (SPEC §2, reference/supabase-local.md).
It runs against a fresh clone of the migrated template database; pg_prove's own output is printed
when anything fails. A missing pg_prove is a failure with the install command, never a skip.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from tests.pg import Database

ROOT = Path(__file__).resolve().parent.parent
PGTAP_DIR = ROOT / "supabase" / "tests"
INSTALL_HINT = (
    "pg_prove is not installed. Install pgTAP and pg_prove with:\n"
    "  sudo apt-get install -y postgresql-15-pgtap libtap-parser-sourcehandler-pgtap-perl"
)


def pg_prove() -> str:
    path = shutil.which("pg_prove")
    assert path is not None, INSTALL_HINT
    return path


def pgtap_files() -> list[Path]:
    return sorted(PGTAP_DIR.glob("*.sql"))


def test_pg_prove_is_installed() -> None:
    proc = subprocess.run([pg_prove(), "--version"], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, f"{INSTALL_HINT}\n{proc.stdout}{proc.stderr}"


def test_pgtap_extension_is_available(db: Database) -> None:
    available = db.scalar("select count(*) from pg_available_extensions where name = 'pgtap'")
    assert available == 1, (
        "the pgtap extension is not available to PostgreSQL 15. Install it with:\n"
        "  sudo apt-get install -y postgresql-15-pgtap"
    )


def test_pgtap_files_exist() -> None:
    names = [f.name for f in pgtap_files()]
    assert names, f"no pgTAP files in {PGTAP_DIR}"
    for expected in ("00_schema_contract.sql", "10_tenant_isolation.sql",
                     "20_column_privileges.sql", "30_rpc_privileges.sql",
                     "50_default_privileges.sql"):
        assert expected in names, f"{expected} missing from {PGTAP_DIR}: {names}"


def test_pgtap_suite_passes(db: Database) -> None:
    port = db.cluster.port
    cmd = [pg_prove(), "--verbose", "--failures", "-h", "127.0.0.1", "-p", str(port),
           "-U", "postgres", "-d", db.name, *[str(f.relative_to(ROOT)) for f in pgtap_files()]]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False,
                          timeout=600)
    output = f"$ {' '.join(cmd)}\n{proc.stdout}\n{proc.stderr}"
    print(output)  # the whole TAP stream, shown by pytest when the test fails
    failures = "\n".join(line for line in f"{proc.stdout}\n{proc.stderr}".splitlines()
                         if line.strip() and not line.startswith("ok "))
    assert proc.returncode == 0, f"pg_prove exited {proc.returncode}:\n{failures}"
    assert "Result: PASS" in proc.stdout, failures
    # The suite rolls back: the clone is left exactly as the migrations made it.
    assert db.scalar("select count(*) from pg_namespace where nspname = 'tap'") == 0
    assert db.scalar("select count(*) from pg_extension where extname = 'pgtap'") == 0
