"""The database test harness: a real PostgreSQL 15 with pg_cron, one cluster per session.

The session builds `aio_template` once (supabase/local + supabase/migrations through plain
`psql -v ON_ERROR_STOP=1`, which is also SPEC §2's plain-psql conformance check); each test
gets its own database cloned from it. pg_cron may only be created in `cron.database_name`, and
its launcher keeps a connection to that database, which would block cloning; so the template is
built while it is the cron database and the cluster is then restarted pointing pg_cron at
`postgres`.

Role helpers act exactly as PostgREST does: log in as `authenticator`, then per transaction
`set_config('role', …, true)` and `set_config('request.jwt.claims', …, true)`.
"""

from __future__ import annotations

import itertools
import json
import shutil
import tempfile
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
from psycopg.types.json import set_json_loads

from stack.cluster import LOCAL_SQL, MIGRATIONS, Cluster, free_port, sql_files

TEMPLATE = "aio_template"


def _decimal_json(text: str | bytes) -> Any:
    return json.loads(text, parse_float=Decimal)


def connect(url: str, **kwargs: Any) -> psycopg.Connection[Any]:
    conn = psycopg.connect(url, **kwargs)
    set_json_loads(_decimal_json, conn)
    return conn


def claims_for(role: str, user_id: uuid.UUID | str | None = None) -> dict[str, Any]:
    claims: dict[str, Any] = {"role": role}
    if user_id is not None:
        claims.update(sub=str(user_id), aud="authenticated")
    return claims


class SessionCluster:
    """The session's cluster with the template database built."""

    def __init__(self) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="aio-pg-"))
        self.cluster = Cluster(data_dir=self.tmp / "cluster", port=free_port(),
                               cron_database=TEMPLATE,
                               settings={"fsync": "off", "synchronous_commit": "off",
                                         "full_page_writes": "off"})
        self._names = itertools.count()

    def build(self) -> None:
        self.tmp.chmod(0o755)
        self.cluster.init()
        self.cluster.start()
        self.cluster.create_database(TEMPLATE)
        self.cluster.apply(TEMPLATE, sql_files(LOCAL_SQL, MIGRATIONS))
        self.cluster.restart(cron_database="postgres")

    def new_database(self) -> Database:
        name = f"t{next(self._names)}_{uuid.uuid4().hex[:6]}"
        self.cluster.create_database(name, template=TEMPLATE)
        return Database(self.cluster, name)

    def drop(self, db: Database) -> None:
        self.cluster.psql("postgres", sql=f'drop database if exists "{db.name}" with (force)')

    def destroy(self) -> None:
        self.cluster.destroy()
        shutil.rmtree(self.tmp, ignore_errors=True)


@dataclass
class Database:
    cluster: Cluster
    name: str

    @property
    def url(self) -> str:
        return self.cluster.url(self.name)

    @property
    def authenticator_url(self) -> str:
        return self.cluster.url(self.name, user="authenticator")

    # -- as the superuser (test set-up and inspection) ---------------------------------------
    def connect(self, *, autocommit: bool = True) -> psycopg.Connection[Any]:
        return connect(self.url, autocommit=autocommit)

    def query(self, sql: str, params: Any = None) -> list[tuple[Any, ...]]:
        with self.connect() as conn:
            cur = conn.execute(sql, params)
            return cur.fetchall() if cur.description else []

    def scalar(self, sql: str, params: Any = None) -> Any:
        rows = self.query(sql, params)
        return rows[0][0] if rows else None

    def create_user(self, email: str | None = None) -> uuid.UUID:
        user_id = uuid.uuid4()
        self.query("insert into auth.users (id, email, aud, role) values (%s, %s, %s, %s)",
                   (user_id, email or f"{user_id.hex[:8]}@example.test", "authenticated",
                    "authenticated"))
        return user_id

    # -- as PostgREST would ------------------------------------------------------------------
    @contextmanager
    def as_role(self, role: str, claims: Mapping[str, Any] | None = None,
                conn: psycopg.Connection[Any] | None = None) -> Iterator[psycopg.Cursor[Any]]:
        """One request: a transaction with the role and the JWT claims set locally."""
        own = conn is None
        conn = conn or connect(self.authenticator_url)
        try:
            with conn.transaction(), conn.cursor() as cur:
                cur.execute("select set_config('role', %s, true), "
                            "set_config('request.jwt.claims', %s, true)",
                            (role, json.dumps(dict(claims or {"role": role}))))
                yield cur
        finally:
            if own:
                conn.close()

    def as_anon(self) -> Any:
        return self.as_role("anon", claims_for("anon"))

    def as_user(self, user_id: uuid.UUID | str) -> Any:
        return self.as_role("authenticated", claims_for("authenticated", user_id))

    def as_service(self) -> Any:
        return self.as_role("service_role", claims_for("service_role"))

    def rpc(self, fn: str, *, role: str = "service_role", user_id: uuid.UUID | None = None,
            conn: psycopg.Connection[Any] | None = None, **args: Any) -> Any:
        """Call a scalar/jsonb public.<fn> with named arguments, as PostgREST's /rpc does."""
        named = ", ".join(f"{k} => %({k})s" for k in args)
        with self.as_role(role, claims_for(role, user_id), conn=conn) as cur:
            cur.execute(f"select public.{fn}({named})", args)  # noqa: S608 - names are ours
            row = cur.fetchone()
            return row[0] if row else None

    def rpc_rows(self, fn: str, *, role: str = "service_role",
                 user_id: uuid.UUID | None = None, **args: Any) -> list[dict[str, Any]]:
        """Call a SETOF / TABLE function and return its rows as dicts."""
        named = ", ".join(f"{k} => %({k})s" for k in args)
        with self.as_role(role, claims_for(role, user_id)) as cur:
            cur.execute(f"select * from public.{fn}({named})", args)  # noqa: S608
            cols = [c.name for c in cur.description or []]
            return [dict(zip(cols, row, strict=True)) for row in cur.fetchall()]
