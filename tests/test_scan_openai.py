"""The openai oracle (shared/scanning/gpt.py) and its sharing (answers.py) on recorded response
bodies, with pytest-httpx.

Every case goes through the official SDK over httpx: every user reserves → one request → the bill
recorded on the shared answer. Checked:
- a valid answer → a Signal (or NoSignal for hold), the bill as reported (prompt incl. cached,
  cached, completion) with the provider's request id;
- malformed output, a refusal, an answer cut off by the cap → Unusable, the bill still recorded;
- an HTTP error answer → no answer, a zero bill (nothing billed) unless its body reports usage;
  the SDK never retries (max_retries=0: exactly one request);
- a connection refused → zero; a timeout → no bill (the reservations expire);
- no usage in a 200 → the call's worst case;
- never a request without a granted reservation: all users denied → no request at all; some
  granted → one request for all of them, carrying the answer's id, after the grants and before the
  bill is recorded; a denied user gets BudgetDenied, the others the answer;
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
from shared.scanning.answers import AnswerBook, Asker, NoTimeLeft
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
    OracleUnavailable,
    Signal,
    Unusable,
)
from shared.scanning.settings import ScannerSettings
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


class FakeAnswerPort:
    """The RPC port's claim / reserve / record / settle as the database answers them for one
    tick that owns its calls; `denied` users are refused. Records the order of events."""

    def __init__(self, events: list[tuple[Any, ...]], *, denied: set[str] = frozenset()) -> None:
        self.events = events
        self.denied = denied
        self.recorded: dict[str, dict[str, Any]] = {}
        self.reserved: dict[str, list[str]] = {}

    def call(self, fn: str, args: Mapping[str, Any] | None = None) -> Any:
        args = dict(args or {})
        if fn == "claim_oracle_answer":
            answer_id = str(uuid.uuid4())
            self.events.append(("claimed", answer_id, args["p_max_prompt_tokens"],
                                args["p_max_completion_tokens"]))
            return {"outcome": "claimed", "answer_id": answer_id}
        if fn == "reserve_gpt_budgets":
            answer_id = args["p_oracle_answer_id"]
            results = []
            for request in args["p_requests"]:
                user = request["user_id"]
                if user in self.denied:
                    results.append({"user_id": user, "allowed": False,
                                    "reason": "hourly_budget_exceeded"})
                else:
                    self.reserved.setdefault(answer_id, []).append(user)
                    results.append({"user_id": user, "allowed": True,
                                    "reservation_id": str(uuid.uuid4()),
                                    "reserved_usd": Decimal("0.0008")})
            self.events.append(("reserved", answer_id, len(self.reserved.get(answer_id, []))))
            return {"answer_status": "pending", "results": results}
        if fn == "record_oracle_answer":
            self.recorded[args["p_answer_id"]] = args
            self.events.append(("recorded", args["p_answer_id"]))
            return {"recorded": True}
        if fn == "settle_oracle_answers":
            self.events.append(("settled", *args["p_answer_ids"]))
            return {"results": [{"answer_id": a, "status": "settled"}
                                for a in args["p_answer_ids"]]}
        raise AssertionError(f"unexpected rpc {fn}")

    def rows(self, fn: str, args: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
        raise AssertionError(fn)

    def close(self) -> None:
        pass

    def bill(self) -> tuple[Any, ...]:
        (recorded,) = self.recorded.values()
        return (recorded["p_prompt_tokens"], recorded["p_cached_prompt_tokens"],
                recorded["p_completion_tokens"], recorded["p_request_id"])


@pytest.fixture
def events() -> list[tuple[Any, ...]]:
    return []


@pytest.fixture
def port(events: list[tuple[Any, ...]]) -> FakeAnswerPort:
    return FakeAnswerPort(events)


@pytest.fixture
def oracle() -> OpenAIOracle:
    return OpenAIOracle(SETTINGS)


USERS = [str(uuid.UUID(int=n + 1)) for n in range(3)]


def book(port: FakeAnswerPort, oracle: OpenAIOracle, time_left: float = 1e9) -> AnswerBook:
    return AnswerBook(port, oracle, "worker-1", StepLog(logger=logging.getLogger("test")),
                      lambda: time_left)


def ask(port: FakeAnswerPort, oracle: OpenAIOracle, users: list[str] = USERS) -> Any:
    """Every user's answer for one BTC-EUR snapshot; the answer of the first user."""
    shared = book(port, oracle).answers(snapshot(UPTREND), [Asker(f"job-{u}", u) for u in users])
    return shared[f"job-{users[0]}"].answer


def guarded(events: list[tuple[Any, ...]], status: int, body: Any,
            headers: Mapping[str, str] | None = None) -> Any:
    """An httpx_mock callback that refuses any request not covered by granted reservations for
    the answer whose id it carries — and records the request among the events."""

    def callback(request: httpx.Request) -> httpx.Response:
        answer_id = request.headers.get("X-Client-Request-Id")
        granted = [e for e in events if e[0] == "reserved" and e[1] == answer_id]
        assert granted and granted[-1][2] > 0, "a model request without a reservation"
        assert not any(e[0] == "recorded" for e in events), "recorded before the call"
        events.append(("request", answer_id, json.loads(request.content)))
        return httpx.Response(status, json=body,
                              headers={"x-request-id": "req_abc123", **(headers or {})})

    return callback


# -- answers --------------------------------------------------------------------------------------
def test_a_valid_answer_is_a_signal_for_every_user_and_its_bill_is_recorded(
        oracle: OpenAIOracle, port: FakeAnswerPort, events: list[tuple[Any, ...]],
        httpx_mock: HTTPXMock) -> None:
    httpx_mock.add_callback(guarded(events, 200, VALID), url=COMPLETIONS, method="POST")
    shared = book(port, oracle).answers(snapshot(UPTREND), [Asker(f"job-{u}", u) for u in USERS])
    answers = {s.answer for s in shared.values()}
    assert len(shared) == 3 and len(answers) == 1
    (answer,) = answers
    assert isinstance(answer, Signal)
    assert (answer.side, answer.confidence) == ("buy", Decimal("0.82"))
    assert answer.rationale.startswith("gpt-4o-mini: EMA12 is above EMA26")
    assert port.bill() == (1234, 1024, 41, "req_abc123")
    assert [e[0] for e in events] == ["claimed", "reserved", "request", "recorded"]

    # The request: model, strict schema, the reserved completion cap, the answer's id.
    _, answer_id, max_prompt, max_completion = events[0]
    (request,) = httpx_mock.get_requests()
    sent = json.loads(request.content)
    assert sent["model"] == "gpt-4o-mini"
    assert sent["response_format"] == RESPONSE_FORMAT
    assert sent["response_format"]["json_schema"]["strict"] is True
    assert sent["max_completion_tokens"] == max_completion == 300
    assert request.headers["X-Client-Request-Id"] == answer_id
    assert request.headers["Authorization"] == "Bearer sk-test-key-0123456789"
    assert {s.answer_id for s in shared.values()} == {answer_id}
    # The prompt bound covers every byte sent as prompt (messages and schema).
    prompt_bytes = sum(len(str(v).encode()) for m in sent["messages"] for v in m.values())
    schema_bytes = len(json.dumps(sent["response_format"]).encode())
    assert max_prompt >= prompt_bytes + schema_bytes
    assert max_prompt == prompt_token_bound(sent["messages"])


def test_control_characters_in_the_rationale_are_dropped_not_fatal(
        oracle: OpenAIOracle, port: FakeAnswerPort, events: list[tuple[Any, ...]],
        httpx_mock: HTTPXMock) -> None:
    # NUL cannot be stored in PostgreSQL text: kept, it would fail every job at
    # create_scan_proposals and their retries would spend the budget again.
    content = json.dumps({"action": "sell", "confidence": 0.9,
                          "rationale": "Down\u0000trend\u0007 below EMA26.\nSell."})
    httpx_mock.add_callback(guarded(events, 200, variant(content)), url=COMPLETIONS)
    answer = ask(port, oracle)
    assert isinstance(answer, Signal) and answer.side == "sell"
    assert answer.rationale == "gpt-4o-mini: Downtrend below EMA26.\nSell."
    assert port.bill()[:3] == (1234, 1024, 41)


def test_hold_is_no_signal_and_still_billed(oracle: OpenAIOracle, port: FakeAnswerPort,
                                            events: list[tuple[Any, ...]],
                                            httpx_mock: HTTPXMock) -> None:
    httpx_mock.add_callback(guarded(events, 200, HOLD), url=COMPLETIONS)
    answer = ask(port, oracle)
    assert isinstance(answer, NoSignal) and "No clear trend." in answer.reason
    assert port.bill()[:3] == (1234, 1024, 41)


@pytest.mark.parametrize(("body", "kind"), [
    (MALFORMED, "malformed"), (NOT_JSON, "malformed"), (REFUSAL, "refusal"),
    (TRUNCATED, "truncated"),
])
def test_an_unusable_answer_makes_no_proposal_but_its_bill_is_recorded(
        oracle: OpenAIOracle, port: FakeAnswerPort, events: list[tuple[Any, ...]],
        httpx_mock: HTTPXMock, body: dict[str, Any], kind: str) -> None:
    httpx_mock.add_callback(guarded(events, 200, body), url=COMPLETIONS)
    answer = ask(port, oracle)
    assert isinstance(answer, Unusable) and answer.kind == kind
    assert port.bill() == (1234, 1024, 41, "req_abc123")


def test_an_answer_without_usage_records_the_calls_worst_case(
        oracle: OpenAIOracle, port: FakeAnswerPort, events: list[tuple[Any, ...]],
        httpx_mock: HTTPXMock) -> None:
    httpx_mock.add_callback(guarded(events, 200, NO_USAGE), url=COMPLETIONS)
    assert isinstance(ask(port, oracle), Signal)
    _, _, max_prompt, max_completion = events[0]
    assert port.bill() == (max_prompt, 0, max_completion, "req_abc123")


@pytest.mark.parametrize(("status", "body"), [(500, SERVER_ERROR), (429, RATE_LIMITED),
                                              (400, SERVER_ERROR)])
def test_an_http_error_answer_records_zero_and_is_never_retried(
        oracle: OpenAIOracle, port: FakeAnswerPort, events: list[tuple[Any, ...]],
        httpx_mock: HTTPXMock, status: int, body: dict[str, Any]) -> None:
    httpx_mock.add_callback(guarded(events, status, body), url=COMPLETIONS)
    answers = book(port, oracle)
    with pytest.raises(OracleUnavailable, match=f"HTTP {status}"):
        answers.answers(snapshot(UPTREND), [Asker("j", USERS[0])])
    assert len(httpx_mock.get_requests()) == 1  # max_retries=0: one billed call at most
    assert port.bill() == (0, 0, 0, "req_abc123")  # zero releases the reservations
    assert next(iter(port.recorded.values()))["p_status"] == "failed"
    # The tick does not call again for that snapshot: its later batches fail at once.
    with pytest.raises(OracleUnavailable):
        answers.answers(snapshot(UPTREND), [Asker("k", USERS[1])])
    assert len(httpx_mock.get_requests()) == 1


def test_an_error_answer_that_reports_usage_records_it(
        oracle: OpenAIOracle, port: FakeAnswerPort, events: list[tuple[Any, ...]],
        httpx_mock: HTTPXMock) -> None:
    billed = {**SERVER_ERROR, "usage": {"prompt_tokens": 900, "completion_tokens": 12,
                                        "prompt_tokens_details": {"cached_tokens": 0}}}
    httpx_mock.add_callback(guarded(events, 502, billed), url=COMPLETIONS)
    with pytest.raises(OracleUnavailable):
        ask(port, oracle)
    assert port.bill()[:3] == (900, 0, 12)


def test_a_refused_connection_records_zero(oracle: OpenAIOracle, port: FakeAnswerPort,
                                           httpx_mock: HTTPXMock) -> None:
    httpx_mock.add_exception(httpx.ConnectError("connection refused"), url=COMPLETIONS)
    with pytest.raises(OracleUnavailable, match="could not be reached"):
        ask(port, oracle)
    assert port.bill() == (0, 0, 0, None)


@pytest.mark.parametrize("error", [httpx.ReadTimeout("read timed out"),
                                   httpx.RemoteProtocolError("server disconnected")])
def test_no_answer_after_sending_records_no_bill(
        oracle: OpenAIOracle, port: FakeAnswerPort, events: list[tuple[Any, ...]],
        httpx_mock: HTTPXMock, error: Exception) -> None:
    httpx_mock.add_exception(error, url=COMPLETIONS)
    with pytest.raises(OracleUnavailable, match="expire unsettled"):
        ask(port, oracle)
    assert len(httpx_mock.get_requests()) == 1
    # Unknown whether billed: no bill recorded, the reservations stay until maintenance.
    assert port.bill() == (None, None, None, None)


# -- never without a reservation ------------------------------------------------------------------
def test_a_denied_user_gets_no_answer_and_nobody_granted_means_no_request(
        events: list[tuple[Any, ...]], oracle: OpenAIOracle, httpx_mock: HTTPXMock) -> None:
    port = FakeAnswerPort(events, denied=set(USERS))
    answer = ask(port, oracle)
    assert isinstance(answer, BudgetDenied) and answer.reason == "hourly_budget_exceeded"
    assert httpx_mock.get_requests() == []
    assert [e[0] for e in events] == ["claimed", "reserved", "recorded"]  # the claim given up
    assert next(iter(port.recorded.values()))["p_status"] == "failed"


def test_one_call_serves_the_granted_users_and_the_denied_get_budget_denied(
        events: list[tuple[Any, ...]], oracle: OpenAIOracle, httpx_mock: HTTPXMock) -> None:
    port = FakeAnswerPort(events, denied={USERS[1]})
    httpx_mock.add_callback(guarded(events, 200, VALID), url=COMPLETIONS)
    shared = book(port, oracle).answers(snapshot(UPTREND), [Asker(f"job-{u}", u) for u in USERS])
    assert isinstance(shared[f"job-{USERS[1]}"].answer, BudgetDenied)
    assert {type(shared[f"job-{u}"].answer) for u in (USERS[0], USERS[2])} == {Signal}
    assert len(httpx_mock.get_requests()) == 1


def test_later_batches_reserve_for_the_same_answer_and_the_tick_settles_it_once(
        events: list[tuple[Any, ...]], oracle: OpenAIOracle, port: FakeAnswerPort,
        httpx_mock: HTTPXMock) -> None:
    httpx_mock.add_callback(guarded(events, 200, VALID), url=COMPLETIONS)
    answers = book(port, oracle)
    first = answers.answers(snapshot(UPTREND), [Asker("a", USERS[0])])
    later = answers.answers(snapshot(UPTREND), [Asker("b", USERS[1]), Asker("c", USERS[2])])
    assert len(httpx_mock.get_requests()) == 1
    assert first["a"].answer == later["b"].answer == later["c"].answer
    answer_id = first["a"].answer_id
    assert port.reserved[answer_id] == USERS
    answers.settle()
    assert events[-1] == ("settled", answer_id)


def test_no_time_left_in_the_tick_means_no_reservation_and_no_request(
        oracle: OpenAIOracle, port: FakeAnswerPort, events: list[tuple[Any, ...]],
        httpx_mock: HTTPXMock) -> None:
    with pytest.raises(NoTimeLeft):
        book(port, oracle, time_left=SETTINGS.openai_timeout_seconds - 1).answers(
            snapshot(UPTREND), [Asker("j", USERS[0])])
    assert events == [] and httpx_mock.get_requests() == []


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
    messages = build_messages(snapshot(UPTREND), SETTINGS)
    total_bytes = sum(len(m["content"].encode()) + len(m["role"].encode()) for m in messages)
    assert prompt_token_bound(messages) > total_bytes


def test_the_prompt_holds_nothing_about_a_user_so_its_key_is_the_snapshots(
        oracle: OpenAIOracle) -> None:
    key = oracle.key(snapshot(UPTREND))
    assert key == oracle.key(snapshot(UPTREND))
    assert key.digest != oracle.key(snapshot(UPTREND, market="ETH-EUR")).digest
    assert key.digest != oracle.key(snapshot(UPTREND[:-1] + [UPTREND[-1] + 1])).digest
    other_cap = OpenAIOracle(ScannerSettings(**{**SETTINGS.model_dump(),
                                                "openai_max_completion_tokens": 301}))
    assert other_cap.key(snapshot(UPTREND)).max_completion_tokens == 301
    assert other_cap.key(snapshot(UPTREND)).digest != key.digest
