"""The benchmarks' RPC path: `shared.rpc.direct.DirectRpc`, the adapter the functions use.

One RPC is one PostgREST-style request as the service key — `set_config('role', 'service_role',
true)`, the JWT claims and the request settings, then the function with named arguments — sent in
psycopg's pipeline mode as one implicit transaction: one round trip per call (counted on the wire
by tests/test_rpc_direct.py, and again by bench/claim_path.py through scripts/wireturns.py).

The floor every RPC benchmark divides by is `public.bench_floor`: a trivial RPC shaped like ours
(PL/pgSQL, SECURITY DEFINER, `search_path = ''`, one uuid argument, a one-key jsonb answer,
service-only), created in the bench database only and called through the same adapter. What an
RPC costs above it is the RPC's own work.
"""

from __future__ import annotations

from shared.rpc.direct import DirectRpc

FLOOR = "bench_floor"
FLOOR_SQL = """
create or replace function public.bench_floor(p_user_id uuid) returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
begin
  return pg_catalog.jsonb_build_object('outcome', 'ok');
end;
$$;
revoke execute on function public.bench_floor(uuid) from public, anon, authenticated;
grant execute on function public.bench_floor(uuid) to service_role;
"""


def open_port(url: str) -> DirectRpc:
    """One client's port: one pooled connection (a bench client is one connection)."""
    return DirectRpc(url, min_size=1, max_size=1, name="bench")
