"""The error cases both RPC adapters are tested against (no tests of its own).

Each SQLSTATE is raised for real in PostgreSQL for DirectRpc (by `public.t_raise`, see
`install_test_functions`) and answered by a faked PostgREST for PostgrestRpc, with the HTTP status
PostgREST gives that code (its documented error table). Both must raise the `expected` class with
the same code, message, details and hint (tests/test_rpc_contract.py compares them side by side).
"""

from __future__ import annotations

from dataclasses import dataclass

from shared.rpc.errors import (
    RpcError,
    RpcInvalidArgument,
    RpcPermissionDenied,
    RpcUnavailable,
    RpcUndefinedFunction,
)
from tests.pg import Database


@dataclass(frozen=True)
class SqlstateCase:
    code: str
    http_status: int  # what PostgREST answers for this SQLSTATE
    expected: type[RpcError]

    @property
    def message(self) -> str:
        return f"raised {self.code} on purpose"

    @property
    def details(self) -> str:
        return f"details of {self.code}"

    @property
    def hint(self) -> str:
        return f"hint for {self.code}"

    def postgrest_body(self) -> dict[str, str]:
        return {"code": self.code, "message": self.message, "details": self.details,
                "hint": self.hint}


SQLSTATE_CASES = [
    SqlstateCase("22023", 400, RpcInvalidArgument),   # our RPCs' argument checks
    SqlstateCase("22P02", 400, RpcInvalidArgument),   # invalid text representation (bad uuid)
    SqlstateCase("22003", 400, RpcInvalidArgument),   # numeric value out of range
    SqlstateCase("42501", 403, RpcPermissionDenied),  # insufficient privilege
    SqlstateCase("28000", 403, RpcPermissionDenied),  # invalid authorization specification
    SqlstateCase("42883", 404, RpcUndefinedFunction),  # undefined function
    SqlstateCase("08006", 503, RpcUnavailable),       # connection failure
    SqlstateCase("40001", 500, RpcUnavailable),       # serialization failure
    SqlstateCase("40P01", 500, RpcUnavailable),       # deadlock detected
    SqlstateCase("53300", 503, RpcUnavailable),       # too many connections
    SqlstateCase("57014", 500, RpcUnavailable),       # query canceled (statement timeout)
    SqlstateCase("57P01", 503, RpcUnavailable),       # admin shutdown
    SqlstateCase("58030", 500, RpcUnavailable),       # I/O error
    SqlstateCase("P0001", 400, RpcError),             # plain RAISE EXCEPTION
    SqlstateCase("23505", 409, RpcError),             # unique violation
    SqlstateCase("XX000", 500, RpcError),             # internal error
]

# PostgREST answers that carry no SQLSTATE: (http status, body, expected class).
POSTGREST_ONLY_CASES: list[tuple[int, dict[str, object] | None, type[RpcError]]] = [
    (404, {"code": "PGRST202", "message": "Could not find the function public.nope in the "
           "schema cache", "details": None, "hint": None}, RpcUndefinedFunction),
    (503, {"code": "PGRST000", "message": "Could not connect with the database"}, RpcUnavailable),
    (504, {"code": "PGRST003", "message": "Timed out acquiring connection from connection pool."},
     RpcUnavailable),
    (401, {"code": "PGRST301", "message": "JWSError JWSInvalidSignature"}, RpcPermissionDenied),
    (401, {"message": "Invalid API key", "hint": "Double check your Supabase `anon` or "
           "`service_role` API key."}, RpcPermissionDenied),
    (403, None, RpcPermissionDenied),
    (500, None, RpcUnavailable),
    (502, {"message": "An invalid response was received from the upstream server"},
     RpcUnavailable),
    (503, None, RpcUnavailable),
    (504, None, RpcUnavailable),
    (400, None, RpcError),
    (404, None, RpcError),
]

TEST_FUNCTIONS_SQL = """
create table public.t_rpc_writes (id bigint generated always as identity primary key, note text);
grant all on public.t_rpc_writes to service_role;

-- Raises the given SQLSTATE with message, detail and hint (the shared error table).
create function public.t_raise(p_code text, p_message text, p_details text, p_hint text)
returns jsonb language plpgsql as $$
begin
  raise exception using errcode = p_code, message = p_message, detail = p_details, hint = p_hint;
end $$;

-- Who the call runs as, and the request settings PostgREST would have set.
create function public.t_whoami() returns jsonb language sql stable as $$
  select jsonb_build_object(
    'auth_role', auth.role(), 'current_user', current_user, 'session_user', session_user,
    'claims', auth.jwt(), 'method', current_setting('request.method', true),
    'path', current_setting('request.path', true), 'timezone', current_setting('TimeZone'),
    'isolation', current_setting('transaction_isolation'))
$$;

-- Executable by the login role but NOT by service_role: only a real role switch refuses it.
create function public.t_forbidden() returns text language sql as $$ select 'ran' $$;

-- Each argument arrives converted to its declared type.
create function public.t_echo(p_amount numeric, p_doc jsonb, p_id uuid, p_flag boolean,
                              p_count integer, p_text text, p_at timestamptz default null)
returns jsonb language sql stable as $$
  select jsonb_build_object('amount', p_amount, 'amount_text', p_amount::text, 'doc', p_doc,
    'id', p_id, 'flag', p_flag, 'count', p_count, 'text', p_text, 'at', p_at,
    'types', jsonb_build_array(pg_typeof(p_amount)::text, pg_typeof(p_doc)::text,
                               pg_typeof(p_id)::text, pg_typeof(p_flag)::text,
                               pg_typeof(p_count)::text, pg_typeof(p_text)::text))
$$;

-- Numbers of every shape in a jsonb result.
create function public.t_numbers() returns jsonb language sql stable as $$
  select jsonb_build_object('money', 12345.678901234567890123456789::numeric, 'int', 42,
                            'tenth', 0.1, 'big', 123456789012345678901234567890,
                            'nested', jsonb_build_array(1.50, 2), 'at', now())
$$;

-- Inserts a row, then fails when asked: the whole call must commit or vanish together.
create function public.t_write(p_note text, p_fail boolean) returns bigint
language plpgsql as $$
declare v_id bigint;
begin
  insert into public.t_rpc_writes (note) values (p_note) returning id into v_id;
  if p_fail then
    raise exception 'failing after the insert' using errcode = '22023';
  end if;
  return v_id;
end $$;

create function public.t_sleep(p_seconds numeric) returns boolean language plpgsql as $$
begin
  perform pg_sleep(p_seconds);
  return true;
end $$;

revoke execute on function public.t_raise(text, text, text, text), public.t_whoami(),
  public.t_forbidden(), public.t_echo(numeric, jsonb, uuid, boolean, integer, text, timestamptz),
  public.t_numbers(), public.t_write(text, boolean), public.t_sleep(numeric)
  from public, anon, authenticated, service_role;
grant execute on function public.t_raise(text, text, text, text), public.t_whoami(),
  public.t_echo(numeric, jsonb, uuid, boolean, integer, text, timestamptz), public.t_numbers(),
  public.t_write(text, boolean), public.t_sleep(numeric)
  to service_role;
grant execute on function public.t_forbidden() to authenticator;
"""


def install_test_functions(db: Database) -> None:
    """The t_* helper functions above, in a test database (as the superuser)."""
    db.query(TEST_FUNCTIONS_SQL)
