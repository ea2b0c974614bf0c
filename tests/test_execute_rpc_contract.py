"""The three RPCs trading_execute uses, with exactly the arguments it sends, through both adapters:
DirectRpc against the real database, PostgrestRpc against a faked PostgREST (pytest-httpx) that
answers what PostgreSQL answered for the same call. Both must send the same named arguments, decode
the same shapes (Decimal money, str uuids and times) and raise the same exception for the same
refusal. (tests/test_rpc_*.py cover the adapters in general; this is what the function relies on.)
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest
from psycopg.types.json import Jsonb
from pytest_httpx import HTTPXMock

from shared.rpc.direct import DirectRpc
from shared.rpc.errors import RpcError, RpcInvalidArgument
from shared.rpc.port import encode_args
from shared.rpc.postgrest import PostgrestRpc
from tests.pg import Database
from tests.test_execution_support import (
    _module_db_fixture,  # noqa: F401 - one database per module
    backdate,
    propose,
    trader,
)

SUPABASE_URL = "https://executecontract.supabase.co"
SERVICE_KEY = "sb_secret_" + "contract" + uuid.uuid4().hex


@pytest.fixture(scope="module")
def direct(module_db: Database) -> Iterator[DirectRpc]:
    with DirectRpc(module_db.authenticator_url, min_size=1, max_size=1) as port:
        yield port


@pytest.fixture
def postgrest() -> Iterator[PostgrestRpc]:
    with PostgrestRpc(SUPABASE_URL, SERVICE_KEY) as port:
        yield port


def rendered(db: Database, fn: str, args: dict[str, Any], *, setof: bool = False) -> bytes:
    """What PostgREST would send for this call now: PostgreSQL's JSON of it, as service_role, in a
    transaction that is rolled back (the real call is DirectRpc's)."""
    values = {k: Jsonb(v) if isinstance(v, dict) else v for k, v in encode_args(fn, args).items()}
    named = ", ".join(f"{name} => %({name})s" for name in values)
    select = (f"select coalesce(json_agg(r), '[]'::json)::text "  # noqa: S608 - our names
              f"from public.{fn}({named}) r" if setof
              else f"select to_json(public.{fn}({named}))::text")
    with db.connect(autocommit=False) as conn:
        conn.execute("select set_config('role', 'service_role', true), "
                     "set_config('request.jwt.claims', '{\"role\":\"service_role\"}', true)")
        row = conn.execute(select, values).fetchone()
        conn.rollback()
    assert row is not None
    return str(row[0]).encode()


def shape(value: Any) -> Any:
    """The types of a decoded answer, recursively (values aside)."""
    if isinstance(value, dict):
        return {k: shape(v) for k, v in sorted(value.items())}
    if isinstance(value, list):
        return [shape(v) for v in value]
    return type(value).__name__


def sent(httpx_mock: HTTPXMock) -> tuple[str, dict[str, Any]]:
    request = httpx_mock.get_requests()[-1]
    assert request.headers["authorization"] == f"Bearer {SERVICE_KEY}"
    return request.url.path, json.loads(request.content)


def test_claim_trade_execution_through_both_adapters(
        module_db: Database, direct: DirectRpc, postgrest: PostgrestRpc,
        httpx_mock: HTTPXMock) -> None:
    user = trader(module_db)
    proposal_id = propose(module_db, user, amount="10.123456789")
    args = {"p_user_id": user, "p_proposal_id": proposal_id, "p_idempotency_key": "contract-1",
            "p_mode": "paper"}  # what execute sends
    httpx_mock.add_response(url=f"{SUPABASE_URL}/rest/v1/rpc/claim_trade_execution",
                            content=rendered(module_db, "claim_trade_execution", args))
    through_postgrest = postgrest.call("claim_trade_execution", args)
    through_direct = direct.call("claim_trade_execution", args)
    assert sent(httpx_mock) == ("/rest/v1/rpc/claim_trade_execution",
                                {"p_user_id": str(user), "p_proposal_id": str(proposal_id),
                                 "p_idempotency_key": "contract-1", "p_mode": "paper"})
    assert through_direct["outcome"] == through_postgrest["outcome"] == "claimed"
    assert shape(through_direct) == shape(through_postgrest)
    for answer in (through_direct, through_postgrest):
        assert answer["execution"]["amount_quote"] == Decimal("10.123456789")
        assert isinstance(answer["execution"]["amount_quote"], Decimal)
        assert uuid.UUID(answer["execution"]["client_order_id"])


def test_record_execution_result_through_both_adapters(
        module_db: Database, direct: DirectRpc, postgrest: PostgrestRpc,
        httpx_mock: HTTPXMock) -> None:
    user = trader(module_db)
    claim = direct.call("claim_trade_execution", {
        "p_user_id": user, "p_proposal_id": propose(module_db, user), "p_mode": "paper",
        "p_idempotency_key": "contract-2"})
    execution_id = claim["execution"]["id"]
    result = {"status": "filled", "exchange_order_id": str(uuid.uuid4()),
              "filled_amount": Decimal("0.00012104"), "filled_amount_quote": Decimal("10.09437288"),
              "fee_paid": Decimal("0.02523594"), "fee_currency": "EUR"}  # what results.py builds
    args = {"p_execution_id": execution_id, "p_result": result}
    httpx_mock.add_response(url=f"{SUPABASE_URL}/rest/v1/rpc/record_execution_result",
                            content=rendered(module_db, "record_execution_result", args))
    through_postgrest = postgrest.call("record_execution_result", args)
    through_direct = direct.call("record_execution_result", args)
    path, body = sent(httpx_mock)
    assert path == "/rest/v1/rpc/record_execution_result"
    assert body["p_result"]["filled_amount"] == "0.00012104"  # money as an exact string
    assert body["p_result"]["fee_paid"] == "0.02523594"
    assert through_direct["outcome"] == through_postgrest["outcome"] == "updated"
    assert shape(through_direct) == shape(through_postgrest)
    for answer in (through_direct, through_postgrest):
        assert answer["execution"]["status"] == "filled"
        assert answer["execution"]["filled_amount_quote"] == Decimal("10.09437288")
        assert answer["execution"]["price"] == Decimal("10.09437288") / Decimal("0.00012104")


def test_list_unsettled_executions_through_both_adapters(
        module_db: Database, direct: DirectRpc, postgrest: PostgrestRpc,
        httpx_mock: HTTPXMock) -> None:
    user = trader(module_db)
    claim = direct.call("claim_trade_execution", {
        "p_user_id": user, "p_proposal_id": propose(module_db, user), "p_mode": "paper",
        "p_idempotency_key": "contract-3"})
    backdate(module_db, claim["execution"]["id"], 3600)
    args = {"p_older_than_seconds": 30, "p_limit": 50}  # what reconcile sends
    httpx_mock.add_response(url=f"{SUPABASE_URL}/rest/v1/rpc/list_unsettled_executions",
                            content=rendered(module_db, "list_unsettled_executions", args,
                                             setof=True))
    through_postgrest = postgrest.rows("list_unsettled_executions", args)
    through_direct = direct.rows("list_unsettled_executions", args)
    assert sent(httpx_mock) == ("/rest/v1/rpc/list_unsettled_executions", args)
    assert through_direct == through_postgrest
    mine = [row for row in through_direct if row["id"] == claim["execution"]["id"]]
    assert len(mine) == 1 and isinstance(mine[0]["amount_quote"], Decimal)


@pytest.mark.parametrize(("fn", "args"), [
    ("claim_trade_execution", {"p_user_id": uuid.uuid4(), "p_proposal_id": uuid.uuid4(),
                               "p_idempotency_key": " bad", "p_mode": "paper"}),
    ("record_execution_result", {"p_execution_id": uuid.uuid4(),
                                 "p_result": {"status": "filled", "surprise": 1}}),
    ("list_unsettled_executions", {"p_older_than_seconds": -1, "p_limit": 50}),
])
def test_each_rpcs_refusal_raises_the_same_exception_through_both_adapters(
        direct: DirectRpc, postgrest: PostgrestRpc, httpx_mock: HTTPXMock, fn: str,
        args: dict[str, Any]) -> None:
    call = direct.rows if fn == "list_unsettled_executions" else direct.call
    with pytest.raises(RpcError) as from_direct:
        call(fn, args)
    error = from_direct.value
    httpx_mock.add_response(url=f"{SUPABASE_URL}/rest/v1/rpc/{fn}", status_code=400,
                            json={"code": error.code, "message": error.message,
                                  "details": error.details, "hint": error.hint})
    with pytest.raises(RpcError) as from_postgrest:
        (postgrest.rows if fn == "list_unsettled_executions" else postgrest.call)(fn, args)
    assert type(error) is type(from_postgrest.value) is RpcInvalidArgument  # → HTTP 400
    assert (error.code, error.message, error.hint) == \
        (from_postgrest.value.code, from_postgrest.value.message, from_postgrest.value.hint)
