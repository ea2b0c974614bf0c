"""The local stack's defaults in one place (the console, `make run` and `make demo` read them).

Everything here is for a developer's machine only and is public on purpose: the JWT secret and the
service key are the Supabase CLI's documented local-development values (`supabase status` prints
them for every local project), so tokens minted with them mean nothing anywhere else. The console
refuses to use the secret against a database that is not on this machine (`oracle token`).

    DATABASE_URL   postgresql://postgres@127.0.0.1:54322/postgres   (`make db`)
    sandbox        http://127.0.0.1:54330                            (`make sandbox`)
    functions      trading_execute 127.0.0.1:54331, scan_scheduler 127.0.0.1:54332
"""

from __future__ import annotations

from typing import Final

import psycopg
from psycopg.conninfo import conninfo_to_dict

HOST: Final = "127.0.0.1"
DB_PORT: Final = 54322                    # the Supabase CLI's local database port
SANDBOX_PORT: Final = 54330               # the Bitvavo-compatible sandbox (Makefile SANDBOX_PORT)
TRADING_EXECUTE_PORT: Final = 54331
SCAN_SCHEDULER_PORT: Final = 54332

DATABASE_URL: Final = f"postgresql://postgres@{HOST}:{DB_PORT}/postgres"

# The Supabase CLI's local JWT secret and the service_role key signed with it (role service_role,
# issuer supabase-demo, expiring 2032). Local development only; see the module docstring.
JWT_SECRET: Final = "super-secret-jwt-token-with-at-least-32-characters-long"  # noqa: S105
SERVICE_ROLE_KEY: Final = (  # noqa: S105 - the CLI's public local key, not a secret
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9."
    "eyJpc3MiOiJzdXBhYmFzZS1kZW1vIiwicm9sZSI6InNlcnZpY2Vfcm9sZSIsImV4cCI6MTk4MzgxMjk5Nn0."
    "EGIM96RAZx35lJzdJsyH-qQwv8Hdp7fsn3W0YpN81IU"
)
# The issuer of the local stack's user tokens (Supabase Auth at the CLI's API port).
JWT_ISSUER: Final = f"http://{HOST}:54321/auth/v1"

_LOOPBACK = frozenset({"127.0.0.1", "::1", "localhost", "localhost.localdomain"})


def is_local_database(url: str) -> bool:
    """True when every host the URL names is this machine (loopback or a Unix socket). A URL
    without a host means libpq's default Unix socket, also local."""
    try:
        params = conninfo_to_dict(url)
    except psycopg.ProgrammingError:  # not a connection string: not local either
        return False
    hosts = [h.strip() for h in str(params.get("host") or "").split(",")] or [""]
    hostaddrs = [h.strip() for h in str(params.get("hostaddr") or "").split(",") if h.strip()]
    if hostaddrs:
        return all(h in _LOOPBACK or h.startswith("127.") for h in hostaddrs)
    return all(h == "" or h.startswith("/") or h in _LOOPBACK or h.startswith("127.")
               for h in hosts)
