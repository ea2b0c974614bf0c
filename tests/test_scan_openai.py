"""The openai oracle (shared/scanning/gpt.py) on recorded response bodies, with pytest-httpx.

Every case goes through the official SDK over httpx: reserve → one request → settle. Checked:
- a valid answer → a Signal (or NoSignal for hold), usage settled as reported (prompt incl. cached,
  cached, completion) with the provider's request id;
- malformed output, a refusal, an answer cut off by the cap → Unusable, usage still settled;
- an HTTP error answer → no answer, zero tokens settled (nothing billed) unless its body reports
  usage; the SDK never retries (max_retries=0: exactly one request);
- a connection refused → zero settled; a timeout → nothing settled (the reservation expires);
- no usage in a 200 → the reservation's worst case settled;
- never a request without a granted reservation: denied → no request at all; granted → the request
  carries that reservation's id, sent after the grant and before the settle;
- the request itself: the model, the strict JSON schema, max_completion_tokens = the reserved
  completion tokens, and a prompt bound of at least the prompt's UTF-8 bytes.
"""

from __future__ import annotations

import copy
import json
import logging
import uuid
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

import httpx
import pytest
from pytest_httpx import HTTPXMock

from shared.api.steplog import StepLog
from shared.scanning.budget import GptBudget
from shared.scanning.gpt import (
    RESPONSE_FORMAT,
    SIGNAL_SCHEMA,
    ModelSignal,
    OpenAIOracle,
    build_messages,
    prompt_token_bound,
)
from shared.scanning.oracle import (
    BudgetDenied,
    NoSignal,
    OracleRequest,
    OracleUnavailable,
    Signal,
    Unusable,
)
from shared.scanning.settings import ScannerSettings
from shared.scanning.sizing import OrderRoom
from tests.test_scan_rules import UPTREND, snapshot

BASE_URL = "http://model.test/v1"
COMPLETIONS = BASE_URL + "/chat/completions"
SETTINGS = ScannerSettings(oracle="openai", openai_api_key="sk-test-key-0123456789",
                           openai_base_url=BASE_URL, openai_model="gpt-4o-mini",
                           openai_max_completion_tokens=300)

# Recorded OpenAI chat.completion bodies (structured output), as the API sends them.
VALID = {
    "id": "chatcmpl-CaT9xK1", "object": "chat.completion", "created": 1764331200,
    "model": "gpt-4o-mini-2024-07-18",
    "choices": [{"index": 0, "message": {
        "role": "assistant",
        "content": '{"action":"buy","confidence":0.82,"rationale":"EMA12 is above EMA26 and '
                   'RSI is 62: an uptrend with room to run."}',
        "refusal": None, "annotations": []}, "logprobs": None, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 1234, "completion_tokens": 41, "total_tokens": 1275,
              "prompt_tokens_details": {"cached_tokens": 1024, "audio_tokens": 0},
              "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0,
                                            "accepted_prediction_tokens": 0,
                                            "rejected_prediction_tokens": 0}},
    "service_tier": "default", "system_fingerprint": "fp_560af6e559",
}


def variant(content: str | None = None, *, refusal: str | None = None,
            finish_reason: str = "stop", usage: Any = "keep") -> dict[str, Any]:
    body = copy.deepcopy(VALID)
    message = body["choices"][0]["message"]
    message["content"] = content
    message["refusal"] = refusal
    body["choices"][0]["finish_reason"] = finish_reason
    if usage != "keep":
        if usage is None:
            del body["usage"]
        else:
            body["usage"] = usage
    return body


HOLD = variant('{"action":"hold","confidence":0.4,"rationale":"No clear trend."}')
MALFORMED = variant('{"action":"moon","confidence":7}')
NOT_JSON = variant("I think you should buy.")
REFUSAL = variant(None, refusal="I can't help with trading decisions.")
TRUNCATED = variant('{"action":"buy","confidence":0.8,"rationale":"EMA12 is ab',
                    finish_reason="length")
NO_USAGE = variant(VALID["choices"][0]["message"]["content"], usage=None)
SERVER_ERROR = {"error": {"message": "The server had an error while processing your request.",
                          "type": "server_error", "param": None, "code": None}}
RATE_LIMITED = {"error": {"message": "Rate limit reached for gpt-4o-mini.",
                          "type": "requests", "param": None, "code": "rate_limit_exceeded"}}


class FakeBudgetPort:
    """The RPC port's reserve/settle as the database answers them; records the order of events."""

    def __init__(self, events: list[tuple[Any, ...]], *, allowed: bool = True) -> None:
        self.events = events
        self.allowed = allowed
        self.settled: dict[str, tuple[int, int, int, str | None]] = {}

    def call(self, fn: str, args: Mapping[str, Any] | None = None) -> Any:
        args = dict(args or {})
        if fn == "reserve_gpt_budget":
            if not self.allowed:
                self.events.append(("denied",))
                return {"allowed": False, "reservation_id": None, "reserved_usd": 0,
                        "reason": "hourly_budget_exceeded", "worst_case_usd": Decimal("0.001"),
                        "spent_hour_usd": Decimal("0.25"), "spent_day_usd": Decimal("0.5"),
                        "hourly_limit_usd": Decimal("0.25"), "daily_limit_usd": Decimal(1)}
            rid = str(uuid.uuid4())
            self.events.append(("reserved", rid, args["p_max_prompt_tokens"],
                                args["p_max_completion_tokens"]))
            return {"allowed": True, "reservation_id": rid, "reserved_usd": Decimal("0.0008"),
                    "reason": None, "expires_at": "2026-11-28T13:15:00+00:00"}
        if fn == "settle_gpt_usage":
            rid = args["p_reservation_id"]
            tokens = (args["p_prompt_tokens"], args["p_cached_prompt_tokens"],
                      args["p_completion_tokens"], args["p_request_id"])
            self.settled[rid] = tokens
            self.events.append(("settled", rid, *tokens))
            return {"status": "settled" if tokens[0] or tokens[2] else "released",
                    "cost_usd": Decimal(0)}
        raise AssertionError(f"unexpected rpc {fn}")

    def rows(self, fn: str, args: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
        raise AssertionError(fn)

    def close(self) -> None:
        pass


@pytest.fixture
def events() -> list[tuple[Any, ...]]:
    return []


@pytest.fixture
def port(events: list[tuple[Any, ...]]) -> FakeBudgetPort:
    return FakeBudgetPort(events)


@pytest.fixture
def oracle(port: FakeBudgetPort) -> OpenAIOracle:
    return OpenAIOracle(SETTINGS, GptBudget(port))


def ask(oracle: OpenAIOracle) -> Any:
    return oracle.decide(OracleRequest(
        job_id=str(uuid.uuid4()), user_id=str(uuid.uuid4()), market="BTC-EUR",
        snapshot=snapshot(UPTREND), room=OrderRoom(Decimal(50), "50 EUR"),
        log=StepLog(logger=logging.getLogger("test"))))


def guarded(events: list[tuple[Any, ...]], status: int, body: Any,
            headers: Mapping[str, str] | None = None) -> Any:
    """An httpx_mock callback that refuses any request not covered by a granted, unsettled
    reservation whose id the request carries — and records the request among the events."""

    def callback(request: httpx.Request) -> httpx.Response:
        rid = request.headers.get("X-Client-Request-Id")
        granted = [e for e in events if e[0] == "reserved"]
        assert granted and granted[-1][1] == rid, "a model request without its reservation"
        assert not any(e[0] == "settled" and e[1] == rid for e in events), "settled before call"
        events.append(("request", rid, json.loads(request.content)))
        return httpx.Response(status, json=body,
                              headers={"x-request-id": "req_abc123", **(headers or {})})

    return callback


def settled_only(port: FakeBudgetPort) -> tuple[int, int, int, str | None]:
    assert len(port.settled) == 1
    return next(iter(port.settled.values()))


# -- answers --------------------------------------------------------------------------------------
def test_a_valid_answer_is_a_signal_and_its_usage_is_settled(
        oracle: OpenAIOracle, port: FakeBudgetPort, events: list[tuple[Any, ...]],
        httpx_mock: HTTPXMock) -> None:
    httpx_mock.add_callback(guarded(events, 200, VALID), url=COMPLETIONS, method="POST")
    answer = ask(oracle)
    assert isinstance(answer, Signal)
    assert (answer.side, answer.confidence) == ("buy", Decimal("0.82"))
    assert answer.rationale.startswith("gpt-4o-mini: EMA12 is above EMA26")
    assert settled_only(port) == (1234, 1024, 41, "req_abc123")
    assert [e[0] for e in events] == ["reserved", "request", "settled"]

    # The request: model, strict schema, the reserved completion cap, the reservation's id.
    _, rid, max_prompt, max_completion = events[0]
    (request,) = httpx_mock.get_requests()
    sent = json.loads(request.content)
    assert sent["model"] == "gpt-4o-mini"
    assert sent["response_format"] == RESPONSE_FORMAT
    assert sent["response_format"]["json_schema"]["strict"] is True
    assert sent["max_completion_tokens"] == max_completion == 300
    assert request.headers["X-Client-Request-Id"] == rid
    assert request.headers["Authorization"] == "Bearer sk-test-key-0123456789"
    # The prompt bound covers every byte sent as prompt (messages and schema).
    prompt_bytes = sum(len(str(v).encode()) for m in sent["messages"] for v in m.values())
    schema_bytes = len(json.dumps(sent["response_format"]).encode())
    assert max_prompt >= prompt_bytes + schema_bytes
    assert max_prompt == prompt_token_bound(sent["messages"])


def test_control_characters_in_the_rationale_are_dropped_not_fatal(
        oracle: OpenAIOracle, port: FakeBudgetPort, events: list[tuple[Any, ...]],
        httpx_mock: HTTPXMock) -> None:
    # NUL cannot be stored in PostgreSQL text: kept, it would fail the job at create_scan_proposal
    # and its retry would spend the budget again.
    content = json.dumps({"action": "sell", "confidence": 0.9,
                          "rationale": "Down\u0000trend\u0007 below EMA26.\nSell."})
    httpx_mock.add_callback(guarded(events, 200, variant(content)), url=COMPLETIONS)
    answer = ask(oracle)
    assert isinstance(answer, Signal) and answer.side == "sell"
    assert answer.rationale == "gpt-4o-mini: Downtrend below EMA26.\nSell."
    assert settled_only(port)[:3] == (1234, 1024, 41)


def test_hold_is_no_signal_and_still_settled(oracle: OpenAIOracle, port: FakeBudgetPort,
                                             events: list[tuple[Any, ...]],
                                             httpx_mock: HTTPXMock) -> None:
    httpx_mock.add_callback(guarded(events, 200, HOLD), url=COMPLETIONS)
    answer = ask(oracle)
    assert isinstance(answer, NoSignal) and "No clear trend." in answer.reason
    assert settled_only(port)[:3] == (1234, 1024, 41)


@pytest.mark.parametrize(("body", "kind"), [
    (MALFORMED, "malformed"), (NOT_JSON, "malformed"), (REFUSAL, "refusal"),
    (TRUNCATED, "truncated"),
])
def test_an_unusable_answer_makes_no_proposal_but_its_usage_is_settled(
        oracle: OpenAIOracle, port: FakeBudgetPort, events: list[tuple[Any, ...]],
        httpx_mock: HTTPXMock, body: dict[str, Any], kind: str) -> None:
    httpx_mock.add_callback(guarded(events, 200, body), url=COMPLETIONS)
    answer = ask(oracle)
    assert isinstance(answer, Unusable) and answer.kind == kind
    assert settled_only(port) == (1234, 1024, 41, "req_abc123")


def test_an_answer_without_usage_settles_the_reserved_worst_case(
        oracle: OpenAIOracle, port: FakeBudgetPort, events: list[tuple[Any, ...]],
        httpx_mock: HTTPXMock) -> None:
    httpx_mock.add_callback(guarded(events, 200, NO_USAGE), url=COMPLETIONS)
    assert isinstance(ask(oracle), Signal)
    _, _, max_prompt, max_completion = events[0]
    assert settled_only(port) == (max_prompt, 0, max_completion, "req_abc123")


@pytest.mark.parametrize(("status", "body"), [(500, SERVER_ERROR), (429, RATE_LIMITED),
                                              (400, SERVER_ERROR)])
def test_an_http_error_answer_settles_zero_and_is_never_retried(
        oracle: OpenAIOracle, port: FakeBudgetPort, events: list[tuple[Any, ...]],
        httpx_mock: HTTPXMock, status: int, body: dict[str, Any]) -> None:
    httpx_mock.add_callback(guarded(events, status, body), url=COMPLETIONS)
    with pytest.raises(OracleUnavailable, match=f"HTTP {status}"):
        ask(oracle)
    assert len(httpx_mock.get_requests()) == 1  # max_retries=0: one billed call at most
    assert settled_only(port) == (0, 0, 0, "req_abc123")  # zero releases the reservation


def test_an_error_answer_that_reports_usage_settles_it(
        oracle: OpenAIOracle, port: FakeBudgetPort, events: list[tuple[Any, ...]],
        httpx_mock: HTTPXMock) -> None:
    billed = {**SERVER_ERROR, "usage": {"prompt_tokens": 900, "completion_tokens": 12,
                                        "prompt_tokens_details": {"cached_tokens": 0}}}
    httpx_mock.add_callback(guarded(events, 502, billed), url=COMPLETIONS)
    with pytest.raises(OracleUnavailable):
        ask(oracle)
    assert settled_only(port)[:3] == (900, 0, 12)


def test_a_refused_connection_settles_zero(oracle: OpenAIOracle, port: FakeBudgetPort,
                                           httpx_mock: HTTPXMock) -> None:
    httpx_mock.add_exception(httpx.ConnectError("connection refused"), url=COMPLETIONS)
    with pytest.raises(OracleUnavailable, match="could not be reached"):
        ask(oracle)
    assert settled_only(port) == (0, 0, 0, None)


@pytest.mark.parametrize("error", [httpx.ReadTimeout("read timed out"),
                                   httpx.RemoteProtocolError("server disconnected")])
def test_no_answer_after_sending_leaves_the_reservation_to_expire(
        oracle: OpenAIOracle, port: FakeBudgetPort, events: list[tuple[Any, ...]],
        httpx_mock: HTTPXMock, error: Exception) -> None:
    httpx_mock.add_exception(error, url=COMPLETIONS)
    with pytest.raises(OracleUnavailable, match="expires unsettled"):
        ask(oracle)
    assert len(httpx_mock.get_requests()) == 1
    assert port.settled == {}  # unknown whether billed: nothing recorded, nothing released
    assert [e[0] for e in events] == ["reserved"]


# -- never without a reservation ------------------------------------------------------------------
def test_a_denied_reservation_sends_no_request(events: list[tuple[Any, ...]],
                                               httpx_mock: HTTPXMock) -> None:
    port = FakeBudgetPort(events, allowed=False)
    answer = ask(OpenAIOracle(SETTINGS, GptBudget(port)))
    assert isinstance(answer, BudgetDenied) and answer.reason == "hourly_budget_exceeded"
    assert httpx_mock.get_requests() == []
    assert events == [("denied",)] and port.settled == {}


def test_no_time_left_in_the_tick_means_no_reservation_and_no_request(
        oracle: OpenAIOracle, events: list[tuple[Any, ...]], httpx_mock: HTTPXMock) -> None:
    request = OracleRequest(job_id="j", user_id=str(uuid.uuid4()), market="BTC-EUR",
                            snapshot=snapshot(UPTREND), room=OrderRoom(Decimal(50), "50"),
                            log=StepLog(logger=logging.getLogger("test")),
                            time_left=lambda: SETTINGS.openai_timeout_seconds - 1)
    with pytest.raises(OracleUnavailable, match="not enough time"):
        oracle.decide(request)
    assert events == [] and httpx_mock.get_requests() == []


def test_every_request_of_many_calls_carries_its_own_granted_reservation(
        oracle: OpenAIOracle, port: FakeBudgetPort, events: list[tuple[Any, ...]],
        httpx_mock: HTTPXMock) -> None:
    bodies = [VALID, MALFORMED, REFUSAL, HOLD, VALID]
    for body in bodies:
        httpx_mock.add_callback(guarded(events, 200, body), url=COMPLETIONS)
    for _ in bodies:
        ask(oracle)
    requests = [e for e in events if e[0] == "request"]
    reserved = [e[1] for e in events if e[0] == "reserved"]
    assert [r[1] for r in requests] == reserved and len(set(reserved)) == len(bodies)
    assert sorted(port.settled) == sorted(reserved)


# -- the schema and the prompt bound --------------------------------------------------------------
def test_the_pydantic_model_and_the_json_schema_agree() -> None:
    assert set(SIGNAL_SCHEMA["required"]) == set(ModelSignal.model_fields)
    assert SIGNAL_SCHEMA["properties"]["action"]["enum"] == ["buy", "sell", "hold"]
    ok = ModelSignal.model_validate_json('{"action":"sell","confidence":0.1,"rationale":"x"}')
    assert ok.confidence == Decimal("0.1")
    for bad in ('{"action":"sell","confidence":1.1,"rationale":"x"}',
                '{"action":"sell","confidence":0.5,"rationale":"x","extra":1}',
                '{"action":"sell","confidence":0.5}'):
        with pytest.raises(ValueError):
            ModelSignal.model_validate_json(bad)


def test_the_prompt_bound_counts_bytes_not_characters() -> None:
    ascii_msgs = [{"role": "user", "content": "a" * 100}]
    euro_msgs = [{"role": "user", "content": "€" * 100}]  # 3 bytes each in UTF-8
    assert prompt_token_bound(euro_msgs) - prompt_token_bound(ascii_msgs) == 200
    request = OracleRequest(job_id="j", user_id="u", market="BTC-EUR",
                            snapshot=snapshot(UPTREND), room=OrderRoom(Decimal(50), "50"),
                            log=StepLog(logger=logging.getLogger("test")))
    messages = build_messages(request, SETTINGS)
    total_bytes = sum(len(m["content"].encode()) + len(m["role"].encode()) for m in messages)
    assert prompt_token_bound(messages) > total_bytes
