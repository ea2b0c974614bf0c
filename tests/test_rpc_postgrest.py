"""PostgrestRpc with a faked Supabase REST API (pytest-httpx): the request supabase-py builds (path,
headers, JSON body), Decimal in and out, every error body / status of the shared table mapped to
the class DirectRpc raises for the same SQLSTATE, transport failures, no retry, no key leaks.
"""

from __future__ import annotations

import json
import socket
import traceback
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import httpx
import pytest
from pytest_httpx import HTTPXMock

from shared.rpc.errors import RpcError, RpcInvalidArgument, RpcUnavailable
from shared.rpc.port import RpcPort
from shared.rpc.postgrest import PostgrestRpc
from tests.rpc_cases import POSTGREST_ONLY_CASES, SQLSTATE_CASES, SqlstateCase

SUPABASE_URL = "https://abcdefghijklmnop.supabase.co"
SERVICE_KEY = "sb_secret_" + "k" * 8 + uuid.uuid4().hex  # a new-style secret key
RPC_URL = f"{SUPABASE_URL}/rest/v1/rpc"


@pytest.fixture
def rpc() -> Iterator[PostgrestRpc]:
    port = PostgrestRpc(SUPABASE_URL + "/", SERVICE_KEY)
    try:
        yield port
    finally:
        port.close()


def sent_json(request: httpx.Request) -> Any:
    return json.loads(request.content)


# -- the request ---------------------------------------------------------------------------------
def test_post_to_rest_v1_rpc_fn_with_the_service_key_headers_and_named_arguments(
        rpc: PostgrestRpc, httpx_mock: HTTPXMock) -> None:
    httpx_mock.add_response(method="POST", url=f"{RPC_URL}/claim_trade_execution",
                            json={"outcome": "claimed"})
    user, proposal = uuid.uuid4(), uuid.uuid4()
    result = rpc.call("claim_trade_execution", {"p_user_id": user, "p_proposal_id": proposal,
                                                "p_idempotency_key": "key-1", "p_mode": "paper"})
    assert result == {"outcome": "claimed"}
    request = httpx_mock.get_request()
    assert request is not None
    assert request.method == "POST"
    assert str(request.url) == f"{RPC_URL}/claim_trade_execution"
    assert request.headers["apikey"] == SERVICE_KEY
    assert request.headers["authorization"] == f"Bearer {SERVICE_KEY}"
    assert request.headers["content-profile"] == "public"
    assert request.headers["content-type"] == "application/json"
    assert request.headers["accept"] == "application/json"
    assert sent_json(request) == {"p_user_id": str(user), "p_proposal_id": str(proposal),
                                  "p_idempotency_key": "key-1", "p_mode": "paper"}


def test_decimals_go_out_exact_and_come_back_as_decimal(rpc: PostgrestRpc,
                                                        httpx_mock: HTTPXMock) -> None:
    body = (b'{"outcome":"claimed","execution":{"amount_quote":10.123456789012345678901234567,'
            b'"count":3,"fee":0.1,"nested":[1.50,{"x":1e-7}]}}')
    httpx_mock.add_response(url=f"{RPC_URL}/record_execution_result", content=body,
                            headers={"content-type": "application/json"})
    at = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    result = rpc.call("record_execution_result", {
        "p_execution_id": uuid.UUID(int=1),
        "p_result": {"status": "filled", "filled_amount": Decimal("0.000123456789"),
                     "price": Decimal("82000.100000000000000000001"), "fee_paid": Decimal("1E-8"),
                     "at": at, "ok": True, "none": None}})
    execution = result["execution"]
    assert execution["amount_quote"] == Decimal("10.123456789012345678901234567")
    assert isinstance(execution["amount_quote"], Decimal)
    assert execution["fee"] == Decimal("0.1") and isinstance(execution["fee"], Decimal)
    assert execution["count"] == 3 and isinstance(execution["count"], Decimal)
    assert execution["nested"] == [Decimal("1.50"), {"x": Decimal("1e-7")}]
    request = httpx_mock.get_request()
    assert request is not None
    assert sent_json(request)["p_result"] == {
        "status": "filled", "filled_amount": "0.000123456789",
        "price": "82000.100000000000000000001", "fee_paid": "0.00000001",
        "at": "2026-01-02T03:04:05+00:00", "ok": True, "none": None}


def test_rows_returns_the_array_and_void_is_none(rpc: PostgrestRpc, httpx_mock: HTTPXMock) -> None:
    httpx_mock.add_response(url=f"{RPC_URL}/claim_due_scan_jobs",
                            json=[{"id": "a", "attempts": 1}, {"id": "b", "attempts": 2}])
    httpx_mock.add_response(url=f"{RPC_URL}/run_maintenance", status_code=204)
    assert rpc.rows("claim_due_scan_jobs", {"p_worker_id": "w", "p_limit": 2}) == \
        [{"id": "a", "attempts": 1}, {"id": "b", "attempts": 2}]
    assert rpc.call("run_maintenance") is None
    first = httpx_mock.get_requests()[0]
    assert sent_json(first) == {"p_worker_id": "w", "p_limit": 2}


def test_no_arguments_is_an_empty_object(rpc: PostgrestRpc, httpx_mock: HTTPXMock) -> None:
    httpx_mock.add_response(url=f"{RPC_URL}/run_maintenance", json={"expired_locks": 0})
    assert rpc.call("run_maintenance") == {"expired_locks": 0}
    request = httpx_mock.get_request()
    assert request is not None and sent_json(request) == {}


def test_rows_refuses_a_scalar_answer(rpc: PostgrestRpc, httpx_mock: HTTPXMock) -> None:
    httpx_mock.add_response(url=f"{RPC_URL}/check_gpt_budget", json={"allowed": True})
    with pytest.raises(TypeError, match="use call"):
        rpc.rows("check_gpt_budget", {"p_user_id": str(uuid.uuid4())})


# -- errors: the shared table --------------------------------------------------------------------
@pytest.mark.parametrize("case", SQLSTATE_CASES, ids=[c.code for c in SQLSTATE_CASES])
def test_each_postgrest_error_body_maps_like_directrpc(
        rpc: PostgrestRpc, httpx_mock: HTTPXMock, case: SqlstateCase) -> None:
    httpx_mock.add_response(url=f"{RPC_URL}/t_raise", status_code=case.http_status,
                            json=case.postgrest_body())
    with pytest.raises(RpcError) as caught:
        rpc.call("t_raise", {"p_code": case.code})
    error = caught.value
    assert type(error) is case.expected
    assert (error.code, error.message, error.details, error.hint, error.fn) == \
        (case.code, case.message, case.details, case.hint, "t_raise")
    assert error.http_status == case.http_status


@pytest.mark.parametrize(("status", "body", "expected"), POSTGREST_ONLY_CASES,
                         ids=[f"{s}-{(b or {}).get('code', 'nocode')}"
                              for s, b, _ in POSTGREST_ONLY_CASES])
def test_postgrest_and_gateway_answers_without_sqlstate(
        rpc: PostgrestRpc, httpx_mock: HTTPXMock, status: int, body: dict[str, Any] | None,
        expected: type[RpcError]) -> None:
    if body is None:
        httpx_mock.add_response(url=f"{RPC_URL}/check_gpt_budget", status_code=status,
                                content=b"<html>upstream trouble</html>",
                                headers={"content-type": "text/html"})
    else:
        httpx_mock.add_response(url=f"{RPC_URL}/check_gpt_budget", status_code=status, json=body)
    with pytest.raises(RpcError) as caught:
        rpc.call("check_gpt_budget", {"p_user_id": str(uuid.uuid4())})
    assert type(caught.value) is expected
    assert caught.value.http_status == status
    assert "<html>" not in caught.value.message


@pytest.mark.parametrize("failure", [
    httpx.ConnectError("connection refused"),
    httpx.ReadTimeout("read timed out"),
    httpx.ConnectTimeout("connect timed out"),
    httpx.RemoteProtocolError("server disconnected without sending a response"),
    httpx.ReadError("connection reset by peer"),
], ids=lambda e: type(e).__name__)
def test_transport_failures_and_timeouts_are_unavailable_and_not_retried(
        rpc: PostgrestRpc, httpx_mock: HTTPXMock, failure: Exception) -> None:
    httpx_mock.add_exception(failure, url=f"{RPC_URL}/record_execution_result")
    with pytest.raises(RpcUnavailable) as caught:
        rpc.call("record_execution_result", {"p_execution_id": str(uuid.uuid4()),
                                             "p_result": {"status": "filled"}})
    assert caught.value.outcome_unknown is True
    assert len(httpx_mock.get_requests()) == 1  # sent once, never repeated


def test_a_503_write_is_not_retried(rpc: PostgrestRpc, httpx_mock: HTTPXMock) -> None:
    httpx_mock.add_response(url=f"{RPC_URL}/claim_trade_execution", status_code=503)
    with pytest.raises(RpcUnavailable):
        rpc.call("claim_trade_execution", {"p_mode": "paper"})
    assert len(httpx_mock.get_requests()) == 1


def test_a_success_we_cannot_read_is_unavailable(rpc: PostgrestRpc, httpx_mock: HTTPXMock) -> None:
    httpx_mock.add_response(url=f"{RPC_URL}/record_execution_result", content=b"{not json",
                            headers={"content-type": "application/json"})
    with pytest.raises(RpcUnavailable) as caught:
        rpc.call("record_execution_result", {"p_execution_id": str(uuid.uuid4()),
                                             "p_result": {"status": "filled"}})
    assert caught.value.http_status == 200


def test_a_real_timeout_is_unavailable() -> None:
    # A real (loopback) server that accepts and never answers, and a short read timeout.
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        with PostgrestRpc(f"http://127.0.0.1:{port}", SERVICE_KEY, timeout=0.3) as rpc:
            with pytest.raises(RpcUnavailable) as caught:
                rpc.call("check_gpt_budget", {"p_user_id": str(uuid.uuid4())})
    assert "ReadTimeout" in caught.value.message


# -- names and values refused before sending -----------------------------------------------------
@pytest.mark.parametrize(("fn", "args"), [
    ("../admin", {}), ("check_gpt_budget?select=*", {}), ("Check", {}),
    ("check_gpt_budget", {"p user": 1}),
])
def test_bad_names_never_reach_the_url(rpc: PostgrestRpc, fn: str, args: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="invalid RPC"):
        rpc.call(fn, args)  # pytest-httpx fails the test if any request was sent


def test_floats_are_refused(rpc: PostgrestRpc) -> None:
    with pytest.raises(TypeError, match="Decimal"):
        rpc.call("create_trade_proposal", {"p_amount_quote": 10.5})


@pytest.mark.parametrize(("args", "code"), [
    ({"p_rationale": "nul\x00byte"}, "22P05"),
    ({"p_result": {"error_message": "nul\x00byte"}}, "22P05"),
    ({"p_result": {"key\x00": "x"}}, "22P05"),
    # found by fuzzing (tests/test_fuzz_rpc.py): a lone surrogate raised a bare UnicodeEncodeError
    ({"p_rationale": "lone \ud800 surrogate"}, "22021"),
    ({"p_result": {"error_message": ["\udfff"]}}, "22021"),
    ({"p_result": {"key\ud83d": "x"}}, "22021"),
])
def test_text_postgresql_cannot_hold_is_refused_like_direct(
        rpc: PostgrestRpc, args: dict[str, Any], code: str) -> None:
    with pytest.raises(RpcInvalidArgument) as refused:
        rpc.call("record_execution_result", args)  # pytest-httpx fails the test if anything is sent
    assert refused.value.code == code


# -- the key stays secret ------------------------------------------------------------------------
def test_the_service_key_is_in_no_error_repr_or_traceback(
        rpc: PostgrestRpc, httpx_mock: HTTPXMock, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("DEBUG")
    httpx_mock.add_response(url=f"{RPC_URL}/check_gpt_budget", status_code=401,
                            json={"message": f"Invalid API key {SERVICE_KEY}",
                                  "hint": f"key was {SERVICE_KEY}"})
    httpx_mock.add_exception(httpx.ConnectError("refused"), url=f"{RPC_URL}/check_gpt_budget")
    shown = [repr(rpc)]
    for _ in range(2):
        with pytest.raises(RpcError) as caught:
            rpc.call("check_gpt_budget", {"p_user_id": str(uuid.uuid4())})
        shown += [str(caught.value), repr(caught.value), str(caught.value.hint),
                  "".join(traceback.format_exception(caught.value))]
    assert isinstance(caught.value, RpcUnavailable)
    shown.append(caplog.text)
    assert all(SERVICE_KEY not in text for text in shown)


def test_postgrest_rpc_is_an_rpc_port(rpc: PostgrestRpc) -> None:
    assert isinstance(rpc, RpcPort)
