"""The request path in-process, with a scripted RPC port and a faked exchange (httpx MockTransport):
the branches no real server can be made to take on demand — a claim that got too old before the
order could leave, a bug while placing, a misconfigured database role, a record that comes second
to the reconciler or is refused, an access-window refusal that re-measures the clock.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Mapping
from decimal import Decimal
from typing import Any

import httpx
import pytest

from shared.api.edge import Edge, HttpRequest, HttpSettings, Reply, Route
from shared.auth import AuthSettings, dev_token
from shared.exchange.settings import TradeExchangeSettings
from shared.execution.execute import execute as execute_call
from shared.execution.runtime import Runtime
from shared.execution.settings import ExecuteSettings, ExecutionSettings
from shared.execution.venue import Venue
from shared.rpc.errors import RpcInvalidArgument, RpcPermissionDenied
from shared.rpc.settings import RpcSettings
from tests.exchange_doubles import (
    BASE_URL,
    OPERATOR_ID,
    TRADE_KEY,
    TRADE_SECRET,
    market_json,
    order_json,
)

JWT_SECRET = "path-test-jwt-secret-" + "q" * 20
SERVICE_KEY = "sb_secret_path-test-" + "s" * 20
USER = uuid.uuid4()


class FakeExchange:
    """Bitvavo's /time, /markets and POST /order; records every request."""

    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []
        self.markets_delay = 0.0
        self.order_answer: Callable[[dict[str, Any]], httpx.Response] = self.filled

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        path = request.url.path.removeprefix("/v2")
        if path == "/time":
            return httpx.Response(200, json={"time": int(time.time() * 1000)})
        if path == "/markets":
            time.sleep(self.markets_delay)
            return httpx.Response(200, json=[market_json("BTC-EUR")])
        if path == "/order" and request.method == "POST":
            return self.order_answer(json.loads(request.content))
        return httpx.Response(404, text="no")

    @staticmethod
    def filled(body: dict[str, Any]) -> httpx.Response:
        return httpx.Response(200, json=order_json(clientOrderId=body["clientOrderId"]))

    def posted_orders(self) -> list[httpx.Request]:
        return [r for r in self.requests if r.method == "POST" and r.url.path.endswith("/order")]


class ScriptedRpc:
    """claim_trade_execution answers `claimed`; record_execution_result runs `record`."""

    def __init__(self, record: Callable[[dict[str, Any]], Any] | None = None,
                 claim: Callable[[], Any] | None = None) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.execution = {
            "id": str(uuid.uuid4()), "proposal_id": str(uuid.uuid4()), "user_id": str(USER),
            "client_order_id": str(uuid.uuid4()), "market": "BTC-EUR", "side": "buy",
            "amount_quote": Decimal("10.123456789"), "status": "claimed", "mode": "live"}
        self._record = record or (lambda result: {
            "outcome": "updated", "execution": {**self.execution, **result}})
        self._claim = claim or (lambda: {"outcome": "claimed", "execution": self.execution,
                                         "failed_checks": [], "reason": None})

    def call(self, fn: str, args: Mapping[str, Any] | None = None) -> Any:
        self.calls.append((fn, dict(args or {})))
        if fn == "claim_trade_execution":
            return self._claim()
        assert fn == "record_execution_result"
        return self._record(dict(args or {})["p_result"])

    def rows(self, fn: str, args: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
        raise AssertionError("not used")

    def close(self) -> None:
        pass

    def recorded(self) -> dict[str, Any]:
        [(fn, args)] = [c for c in self.calls if c[0] == "record_execution_result"]
        return dict(args["p_result"])


def runtime(rpc: ScriptedRpc, exchange: FakeExchange, **knobs: Any) -> Runtime:
    settings = ExecuteSettings(
        rpc=RpcSettings(database_url="postgresql://authenticator@db.invalid/x"),
        auth=AuthSettings(supabase_jwt_secret=JWT_SECRET, supabase_service_role_key=SERVICE_KEY),
        exchange=TradeExchangeSettings(bitvavo_rest_url=BASE_URL, bitvavo_trade_api_key=TRADE_KEY,
                                       bitvavo_trade_api_secret=TRADE_SECRET,
                                       bitvavo_operator_id=OPERATOR_ID),
        execution=ExecutionSettings(**{"trading_mode": "live", **knobs}))
    venue = Venue(settings, http_transport=httpx.MockTransport(exchange))
    return Runtime(settings, venue=venue, rpc_factory=lambda: rpc)


def execute(request: HttpRequest, runtime: Runtime) -> Reply:
    """POST / through the edge, routed as functions/trading_execute/main.py routes it."""
    edge = Edge("trading_execute", {"/": Route(lambda call: execute_call(call, runtime))},
                verifier=runtime.verifier, settings=HttpSettings())
    return edge.handle(request)


def request() -> HttpRequest:
    return HttpRequest("POST", "/", {"authorization": f"Bearer {dev_token(JWT_SECRET, USER)}",
                                     "idempotency-key": "path-key"},
                       json.dumps({"proposal_id": str(uuid.uuid4())}).encode())


def answer(reply: tuple[bytes, int, dict[str, str]]) -> tuple[int, dict[str, Any]]:
    body, status, _ = reply
    return status, json.loads(body)


def test_a_claim_older_than_max_claim_age_is_recorded_failed_and_never_sent() -> None:
    exchange, rpc = FakeExchange(), ScriptedRpc()
    exchange.markets_delay = 0.3  # the listing (not warmed) takes longer than the claim may wait
    status, body = answer(execute(request(), runtime(rpc, exchange, max_claim_age_seconds=0.2)))
    assert status == 201
    assert rpc.recorded()["status"] == "failed"
    assert rpc.recorded()["error_code"] == "claim_too_old"
    assert body["execution"]["status"] == "failed"
    assert exchange.posted_orders() == []  # checked after the listing, right before sending


def test_within_max_claim_age_the_order_goes_out_quantized_with_operator_and_client_order_id(
        ) -> None:
    exchange, rpc = FakeExchange(), ScriptedRpc()
    status, body = answer(execute(request(), runtime(rpc, exchange)))
    assert status == 201 and body["execution"]["status"] == "filled"
    [posted] = exchange.posted_orders()
    sent = json.loads(posted.content)
    assert sent["amountQuote"] == "10.12" and sent["operatorId"] == OPERATOR_ID
    assert sent["clientOrderId"] == rpc.execution["client_order_id"]
    assert [fn for fn, _ in rpc.calls] == ["claim_trade_execution", "record_execution_result"]


def test_the_claim_requires_auto_approval_for_the_service_and_not_for_a_user() -> None:
    """SPEC §4: the service executes auto-approved proposals only; the claim is told who asks."""
    service = HttpRequest("POST", "/", {"authorization": f"Bearer {SERVICE_KEY}",
                                        "idempotency-key": "auto:x"},
                          json.dumps({"proposal_id": str(uuid.uuid4()),
                                      "user_id": str(USER)}).encode())
    flags = []
    for sent in (request(), service):
        rpc = ScriptedRpc()
        status, _ = answer(execute(sent, runtime(rpc, FakeExchange())))
        assert status == 201
        [(fn, args)] = [c for c in rpc.calls if c[0] == "claim_trade_execution"]
        assert args["p_user_id"] == USER
        flags.append(args["p_require_auto_approval"])
    assert flags == [False, True]


def test_a_bug_while_placing_is_an_unknown_outcome_never_a_resend() -> None:
    exchange, rpc = FakeExchange(), ScriptedRpc()

    def broken(body: dict[str, Any]) -> httpx.Response:
        raise RuntimeError("a bug after the request left")

    exchange.order_answer = broken
    status, body = answer(execute(request(), runtime(rpc, exchange)))
    assert status == 202 and body["execution"]["status"] == "unknown"
    assert rpc.recorded()["status"] == "unknown"
    assert rpc.recorded()["error_code"] in ("internal_error", "transport_error")
    assert len(exchange.posted_orders()) == 1


def test_a_misconfigured_database_role_is_a_500_without_detail_and_nothing_is_sent() -> None:
    exchange = FakeExchange()

    def denied() -> Any:
        raise RpcPermissionDenied("permission denied for function claim_trade_execution",
                                  code="42501", fn="claim_trade_execution")

    rpc = ScriptedRpc(claim=denied)
    status, body = answer(execute(request(), runtime(rpc, exchange)))
    assert status == 500 and body["type"] == "/problems/internal-error"
    assert "permission" not in json.dumps(body) and "claim_trade_execution" not in json.dumps(body)
    assert exchange.posted_orders() == []


def test_a_claim_argument_the_database_refuses_is_400() -> None:
    def invalid() -> Any:
        raise RpcInvalidArgument("p_idempotency_key must be …", code="22023")

    status, body = answer(execute(request(), runtime(ScriptedRpc(claim=invalid), FakeExchange())))
    assert status == 400 and body["type"] == "/problems/invalid-argument"


def test_the_reconciler_recording_first_is_answered_with_the_stored_execution() -> None:
    exchange = FakeExchange()
    rpc = ScriptedRpc()
    rpc._record = lambda result: {"outcome": "illegal_transition", "reason": "execution_final",
                                  "execution": {**rpc.execution, "status": "filled",
                                                "exchange_order_id": "by-the-reconciler"}}
    status, body = answer(execute(request(), runtime(rpc, exchange)))
    assert status == 201 and body["execution"]["exchange_order_id"] == "by-the-reconciler"
    assert len(exchange.posted_orders()) == 1


def test_a_refused_record_is_202_with_what_is_known_and_the_order_is_not_resent() -> None:
    exchange = FakeExchange()

    def refuse(result: dict[str, Any]) -> Any:
        raise RpcInvalidArgument("p_result: …", code="22023")

    rpc = ScriptedRpc(record=refuse)
    status, body = answer(execute(request(), runtime(rpc, exchange)))
    assert status == 202 and body["recorded"] is False
    assert body["exchange_result"]["status"] == "filled"
    assert body["execution"]["status"] == "unknown"
    assert len(exchange.posted_orders()) == 1


def test_an_access_window_refusal_is_rejected_and_the_clock_is_measured_again() -> None:
    exchange = FakeExchange()
    exchange.order_answer = lambda body: httpx.Response(
        403, json={"errorCode": 304, "error": "Request was not received within acceptance window"})
    rpc = ScriptedRpc()
    rt = runtime(rpc, exchange)
    rt.venue.warm()
    times_before = sum(1 for r in exchange.requests if r.url.path.endswith("/time"))
    status, body = answer(execute(request(), rt))
    assert status == 201 and rpc.recorded()["status"] == "rejected"
    assert rpc.recorded()["error_code"] == "304"
    assert sum(1 for r in exchange.requests if r.url.path.endswith("/time")) == times_before + 1


@pytest.mark.parametrize("mode", ["paper", "live"])
def test_warm_reads_the_listing_once_and_measures_the_clock_only_when_it_signs(mode: str) -> None:
    exchange = FakeExchange()
    rt = runtime(ScriptedRpc(), exchange, trading_mode=mode)
    report = rt.venue.warm()
    assert report["markets"] == 1
    assert ("clock_offset_ms" in report) is (mode == "live")
    paths = [r.url.path for r in exchange.requests]
    assert paths.count("/v2/markets") == 1
    assert all("Bitvavo-Access-Key" not in r.headers for r in exchange.requests)  # G3: no key
