"""The bench's RPC path: one PostgREST-style request per RPC, one network round trip each.

`PipelinedRpc` has the shape of `shared.rpc.port.RpcPort` (`call`, `rows`, `close`), so the
benchmarks are written against that interface and switch to `shared.rpc.direct.DirectRpc` by
changing `open_port` alone once that adapter lands. Until then this is the minimal equivalent:
per call one transaction that does what PostgREST does for `POST /rpc/<fn>` as the service key —
`set_config('role', 'service_role', true)` and `set_config('request.jwt.claims', …, true)`, then
the function with named arguments — sent as BEGIN / set_config / call / COMMIT in psycopg's
pipeline mode, so the four statements cost one round trip (`round_trips` counts the syncs).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

import psycopg
from psycopg.types.json import Jsonb, set_json_loads

SERVICE_CLAIMS = json.dumps({"role": "service_role"})


def _decimal_json(text: str | bytes) -> Any:
    return json.loads(text, parse_float=Decimal)


class PipelinedRpc:
    """`RpcPort`-shaped: `call(fn, args)`, `rows(fn, args)`, `close()`; acts as service_role."""

    def __init__(self, url: str) -> None:
        self._conn = psycopg.connect(url, autocommit=True)
        set_json_loads(_decimal_json, self._conn)
        # The connection stays in pipeline mode: leaving it costs a Sync (a round trip) itself.
        self._pipeline_cm = self._conn.pipeline()
        self._pipeline = self._pipeline_cm.__enter__()
        self.round_trips = 0

    def _run(self, fn: str, args: Mapping[str, Any] | None, *, scalar: bool) -> Any:
        values = {k: Jsonb(v) if isinstance(v, dict | list) else v for k, v in (args or {}).items()}
        named = ", ".join(f"{k} => %({k})s" for k in values)
        # fn names are ours (the benchmarks'), never input
        sql = (f"select public.{fn}({named})" if scalar  # noqa: S608
               else f"select * from public.{fn}({named})")  # noqa: S608
        conn = self._conn
        # psycopg's conn.transaction() syncs at BEGIN and at COMMIT (three round trips); queued by
        # hand, the whole request is one Sync.
        try:
            conn.execute("begin")
            conn.execute("select set_config('role', 'service_role', true), "
                         "set_config('request.jwt.claims', %s, true)", (SERVICE_CLAIMS,))
            cur = conn.execute(sql, values)
            conn.execute("commit")
            self.round_trips += 1
            self._pipeline.sync()
        except psycopg.Error:
            if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                conn.execute("rollback")
                self._pipeline.sync()
            raise
        if scalar:
            row = cur.fetchone()
            return row[0] if row else None
        cols = [c.name for c in cur.description or []]
        return [dict(zip(cols, r, strict=True)) for r in cur.fetchall()]

    def call(self, fn: str, args: Mapping[str, Any] | None = None) -> Any:
        return self._run(fn, args, scalar=True)

    def rows(self, fn: str, args: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self._run(fn, args, scalar=False)
        return result

    def close(self) -> None:
        self._pipeline_cm.__exit__(None, None, None)
        self._conn.close()


def open_port(url: str) -> PipelinedRpc:
    """The one place to switch to `shared.rpc.direct.DirectRpc` when it exists."""
    return PipelinedRpc(url)
