"""The two adapters are one port: the same SQLSTATE raises the same exception (class, code,
message, details, hint) through DirectRpc (raised for real in PostgreSQL) and PostgrestRpc (the
body PostgREST sends for it), and the same JSON result decodes to the same Python values.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest
from psycopg.types.json import Jsonb
from pytest_httpx import HTTPXMock

from shared.rpc.direct import DirectRpc
from shared.rpc.errors import RpcError, error_class
from shared.rpc.postgrest import PostgrestRpc
from tests.pg import Database
from tests.rpc_cases import SQLSTATE_CASES, SqlstateCase, install_test_functions
from tests.test_execution_support import (  # one database per module
    _fresh_db_fixture,  # noqa: F401
    _module_db_fixture,  # noqa: F401
    _shared_db_fixture,  # noqa: F401
)

SUPABASE_URL = "https://contract.supabase.co"


@pytest.fixture(scope="module")
def direct(module_db: Database) -> Iterator[DirectRpc]:
    install_test_functions(module_db)
    with DirectRpc(module_db.authenticator_url, min_size=1, max_size=1) as port:
        yield port


@pytest.fixture
def postgrest() -> Iterator[PostgrestRpc]:
    with PostgrestRpc(SUPABASE_URL, "service-key-for-the-contract-test") as port:
        yield port


def raised(call: Any) -> RpcError:
    with pytest.raises(RpcError) as caught:
        call()
    return caught.value


def shape(error: RpcError) -> tuple[Any, ...]:
    return type(error), error.code, error.message, error.details, error.hint, error.fn


@pytest.mark.parametrize("case", SQLSTATE_CASES, ids=[c.code for c in SQLSTATE_CASES])
def test_the_same_sqlstate_raises_the_same_exception_through_both_adapters(
        direct: DirectRpc, postgrest: PostgrestRpc, httpx_mock: HTTPXMock,
        case: SqlstateCase) -> None:
    args = {"p_code": case.code, "p_message": case.message, "p_details": case.details,
            "p_hint": case.hint}
    httpx_mock.add_response(url=f"{SUPABASE_URL}/rest/v1/rpc/t_raise",
                            status_code=case.http_status, json=case.postgrest_body())
    through_direct = raised(lambda: direct.call("t_raise", args))
    through_postgrest = raised(lambda: postgrest.call("t_raise", args))
    assert shape(through_direct) == shape(through_postgrest)
    assert type(through_direct) is case.expected is error_class(case.code)
    assert through_direct.outcome_unknown is through_postgrest.outcome_unknown


ECHO_ARGS = {"p_amount": Decimal("0.000000012345678901234567890"), "p_doc": {"a": [1, "2"]},
             "p_id": uuid.UUID(int=7), "p_flag": True, "p_count": -3, "p_text": "ünï"}


@pytest.mark.parametrize(("fn", "args"), [("t_numbers", {}), ("t_echo", ECHO_ARGS)])
def test_the_same_json_result_decodes_to_the_same_values(
        module_db: Database, direct: DirectRpc, postgrest: PostgrestRpc, httpx_mock: HTTPXMock,
        fn: str, args: dict[str, Any]) -> None:
    # What PostgREST would send is PostgreSQL's JSON rendering of the result, as service_role.
    named = ", ".join(f"{name} => %({name})s" for name in args)
    with module_db.as_service() as cur:
        cur.execute(f"select to_json(public.{fn}({named}))::text",  # noqa: S608 - our names
                    {**args, "p_doc": Jsonb(ECHO_ARGS["p_doc"])} if args else None)
        row = cur.fetchone()
    assert row is not None
    httpx_mock.add_response(url=f"{SUPABASE_URL}/rest/v1/rpc/{fn}", content=row[0].encode(),
                            headers={"content-type": "application/json"})
    from_postgrest = postgrest.call(fn, args)
    from_direct = direct.call(fn, args)
    if fn == "t_numbers":  # `now()` differs between the two calls
        del from_direct["at"], from_postgrest["at"]
    assert from_direct == from_postgrest
    # equal *and* of the same types (Decimal vs int vs str), value by value
    assert repr(from_direct) == repr(from_postgrest)
