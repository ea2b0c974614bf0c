"""Which database the console talks to, and the two ways it talks to it.

    --db-url URL  >  DATABASE_URL  >  the local stack (console.local.DATABASE_URL)

- **Reads** (status, audit, verify's catalog checks) run in a READ ONLY transaction on one
  connection as the URL's own user — `postgres` on hosted Supabase, which owns the schema and may
  read the catalog, `cron.job` and `supabase_migrations`. Nothing a read command does can change a
  row.
- **RPCs** (locks, budget, halt/resume) go through `shared.rpc.direct.DirectRpc`, which switches to
  `service_role` with service claims per call exactly as PostgREST does with the service key — the
  operator uses the same door as the backend, with the same grants.

A password in the URL is never printed: `Target.display` is `user@host:port/db`, and connection
errors are reduced to libpq's first line with the password scrubbed.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict
from psycopg.types.json import set_json_loads

from console import local
from shared.rpc.direct import DirectRpc

CONNECT_TIMEOUT_SECONDS = 5
STATEMENT_TIMEOUT_MS = 30_000


class OpsError(Exception):
    """A command could not do its job; the message says why (never a secret). Exit status 1."""

    exit_code = 1


class UsageError(OpsError):
    """The command line or the configuration is wrong; the caller must change it. Exit status 2."""

    exit_code = 2


@dataclass(frozen=True)
class Target:
    """A database URL and where it came from. `repr` and `display` never show the password."""

    url: str = field(repr=False)
    source: str

    @property
    def params(self) -> dict[str, Any]:
        return conninfo_to_dict(self.url)

    @property
    def display(self) -> str:
        p = self.params
        host = p.get("host") or p.get("hostaddr") or "localhost"
        return f"{p.get('user') or '?'}@{host}:{p.get('port') or 5432}/{p.get('dbname') or ''}"

    @property
    def is_local(self) -> bool:
        return local.is_local_database(self.url)

    def scrub(self, text: str) -> str:
        """`text` without the URL or its password (for error messages)."""
        password = str(self.params.get("password") or "")
        text = text.replace(self.url, self.display)
        return text.replace(password, "***") if password else text


def resolve_target(db_url: str | None, environ: Mapping[str, str] | None = None) -> Target:
    env = os.environ if environ is None else environ
    if db_url is not None and db_url.strip():
        target = Target(db_url.strip(), "--db-url")
    elif env.get("DATABASE_URL", "").strip():
        target = Target(env["DATABASE_URL"].strip(), "DATABASE_URL")
    else:
        target = Target(local.DATABASE_URL, "the local stack")
    if not target.url.startswith(("postgresql://", "postgres://")):
        raise UsageError(f"{target.source} must be a postgresql:// URL")
    try:
        target.params  # noqa: B018 - parse once, so a malformed URL is a usage error here
    except psycopg.ProgrammingError:
        raise UsageError(f"{target.source} is not a valid PostgreSQL URL") from None
    return target


def _decimal_json(text: str | bytes) -> Any:
    return json.loads(text, parse_float=Decimal)


def connect(target: Target) -> psycopg.Connection[Any]:
    """One connection as the URL's user; jsonb numbers as Decimal; no prepared statements (safe
    through Supabase's transaction-mode pooler)."""
    kwargs: dict[str, Any] = {"autocommit": False, "prepare_threshold": None,
                              "application_name": "oracle"}
    if "connect_timeout" not in target.params:
        kwargs["connect_timeout"] = CONNECT_TIMEOUT_SECONDS
    try:
        conn = psycopg.connect(target.url, **kwargs)
    except psycopg.Error as exc:
        raise OpsError(f"cannot connect to {target.display} ({target.source}): "
                       f"{target.scrub(first_line(exc))}") from None
    set_json_loads(_decimal_json, conn)
    return conn


@contextmanager
def reading(target: Target) -> Iterator[psycopg.Connection[Any]]:
    """A connection inside one READ ONLY transaction (rolled back at the end), timestamps in UTC,
    empty search_path (every name in the queries is qualified)."""
    conn = connect(target)
    try:
        conn.read_only = True
        with conn.transaction(force_rollback=True):
            conn.execute("select set_config('TimeZone', 'UTC', true), "
                         "set_config('search_path', '', true), "
                         "set_config('statement_timeout', %s, true)",
                         (str(STATEMENT_TIMEOUT_MS),))
            yield conn
    except psycopg.Error as exc:
        raise OpsError(f"{target.display}: {target.scrub(first_line(exc))}") from None
    finally:
        conn.close()


def rpc(target: Target) -> DirectRpc:
    """The RPC port as service_role (one connection is plenty for a console)."""
    return DirectRpc(target.url, min_size=0, max_size=1, connect_timeout=CONNECT_TIMEOUT_SECONDS,
                     pool_timeout=CONNECT_TIMEOUT_SECONDS + 2, name="oracle")


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
