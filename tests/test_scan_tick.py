"""The tick's own rules, with fakes for the database and the exchange (the end-to-end tests in
test_scan_e2e.py run the same code over real HTTP, the real database and the sandbox):

- the body: {"max_jobs": n}, optional (without it the tick drains what is due), validated;
- claims in batches, stops claiming after the time budget, and per batch reads every context in
  ONE get_scan_contexts call, writes every proposal in ONE create_scan_proposals call and releases
  every job — succeeded, failed with its error, or given back unrun — in ONE release_job_locks
  call: RPCs per job fall as the batch grows;
- one market's failure never stops the others;
- a lost lease stops the job before it writes;
- settings: refuse to start without what they need (naming the variable, never a value); the
  scanner's settings have no trade-credential field, and a trade key in its environment refuses
  the start, in the settings and in a real process (G3);
- the execute request: headers, body, Idempotency-Key, and what each answer means.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import httpx
import pytest
from pydantic import SecretStr
from pytest_httpx import HTTPXMock

from shared.api.problems import ProblemError
from shared.exchange.errors import InvalidParameter
from shared.exchange.models import Candle, TickerPrice
from shared.redaction import redact
from shared.rpc.errors import RpcUnavailable
from shared.scanning.autoexecute import ExecuteClient, ExecuteUnavailable
from shared.scanning.lease import Heartbeat, Lease, LeaseLost
from shared.scanning.rules import RulesOracle
from shared.scanning.settings import ScannerSettings, ScanSettings
from shared.scanning.tick import Scanner, max_jobs_from_body
from shared.settings import ConfigurationError
from tests.function_server import start_function
from tests.test_scan_rules import UPTREND

# -- the body -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("body", "expected"), [(b"", None), (b"  ", None), (b"{}", None),
                                                (b'{"max_jobs": 1}', 1),
                                                (b'{"max_jobs": 100}', 100)])
def test_max_jobs_is_optional(body: bytes, expected: int | None) -> None:
    assert max_jobs_from_body(body, 100) == expected


@pytest.mark.parametrize("body", [b"{", b"[]", b'"x"', b'{"max_jobs": 0}', b'{"max_jobs": 101}',
                                  b'{"max_jobs": true}', b'{"max_jobs": 2.5}',
                                  b'{"max_jobs": "5"}', b'{"max_jobs": 5, "x": 1}',
                                  b"\xff\xfe", b"{" + b" " * 2000 + b"}"])
def test_a_bad_body_is_a_400_problem(body: bytes) -> None:
    with pytest.raises(ProblemError) as exc:
        max_jobs_from_body(body, 100)
    assert exc.value.problem.status == 400 and exc.value.problem.slug == "invalid-body"


# -- settings -------------------------------------------------------------------------------------
BASE_ENV = {"DATABASE_URL": "postgresql://u:hunter2-password@127.0.0.1:5/db",
            "SUPABASE_SERVICE_ROLE_KEY": "sb_secret_unit-test-service-key-000"}


def load(monkeypatch: pytest.MonkeyPatch, **env: str) -> ScanSettings:
    for key in list(__import__("os").environ):
        if key.startswith(("OPENAI_", "ORACLE", "SUPABASE_", "DATABASE_", "BITVAVO_", "EXECUTE_",
                           "TICK_", "JOB_", "HEARTBEAT_", "FUNCTION_", "RULES_", "CANDLE_")):
            monkeypatch.delenv(key)
    for key, value in {**BASE_ENV, **env}.items():
        monkeypatch.setenv(key, value)
    return ScanSettings.load()


def test_oracle_openai_without_its_key_refuses_to_start(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigurationError) as exc:
        load(monkeypatch, ORACLE="openai")
    assert "OPENAI_API_KEY" in str(exc.value)
    settings = load(monkeypatch, ORACLE="openai", OPENAI_API_KEY="sk-real-looking-key-123")
    assert settings.scanner.oracle == "openai"


@pytest.mark.parametrize(("env", "names"), [
    ({"TICK_TIME_BUDGET_SECONDS": "400"}, "JOB_LEASE_SECONDS"),
    ({"HEARTBEAT_SECONDS": "200"}, "HEARTBEAT_SECONDS"),
    ({"FUNCTION_TIMEOUT_SECONDS": "60"}, "FUNCTION_TIMEOUT_SECONDS"),
    ({"OPENAI_TIMEOUT_SECONDS": "300", "ORACLE": "openai", "OPENAI_API_KEY": "sk-abc-123456",
      "FUNCTION_TIMEOUT_SECONDS": "540"}, "OPENAI_TIMEOUT_SECONDS"),
    # run_maintenance splits a bill no tick settled after 10 minutes: a tick must be over by then.
    ({"FUNCTION_TIMEOUT_SECONDS": "541"}, "FUNCTION_TIMEOUT_SECONDS"),
    ({"SCAN_BATCH_SIZE": "1001"}, "SCAN_BATCH_SIZE"),
    ({"ORACLE": "magic"}, "ORACLE"),
    ({"CANDLE_INTERVAL": "7m"}, "CANDLE_INTERVAL"),
    ({"EXECUTE_FUNCTION_URL": "ftp://x"}, "EXECUTE_FUNCTION_URL"),
])
def test_unsafe_timing_and_bad_values_refuse_to_start(monkeypatch: pytest.MonkeyPatch,
                                                      env: dict[str, str], names: str) -> None:
    with pytest.raises(ConfigurationError) as exc:
        load(monkeypatch, **env)
    assert names in str(exc.value)
    assert "hunter2" not in str(exc.value) and "unit-test-service-key" not in str(exc.value)


def test_every_problem_is_reported_at_once_without_values(
        monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigurationError) as exc:
        load(monkeypatch, DATABASE_URL="mysql://secret-password@x", ORACLE="openai",
             BITVAVO_READONLY_API_KEY="k" * 64)
    message = str(exc.value)
    for name in ("DATABASE_URL", "OPENAI_API_KEY", "BITVAVO_READONLY_API_SECRET"):
        assert name in message
    assert "secret-password" not in message and "k" * 64 not in message


def test_execute_url_needs_the_service_key(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigurationError) as exc:
        load(monkeypatch, SUPABASE_SERVICE_ROLE_KEY="", SUPABASE_JWT_SECRET="j" * 40,
             EXECUTE_FUNCTION_URL="http://127.0.0.1:1/")
    assert "SUPABASE_SERVICE_ROLE_KEY" in str(exc.value)


def test_g3_the_scanner_settings_have_no_trade_credentials(monkeypatch: pytest.MonkeyPatch
                                                           ) -> None:
    settings = load(monkeypatch, BITVAVO_OPERATOR_ID="42")
    fields = [name for part in (settings.rpc, settings.auth, settings.exchange, settings.scanner)
              for name in type(part).model_fields]
    assert not [f for f in fields if "trade" in f or "operator" in f]


TRADE_KEY_VALUE = "t" * 64
TRADE_SECRET_VALUE = "trade-secret-value-0123456789"


@pytest.mark.parametrize("env", [
    {"BITVAVO_TRADE_API_KEY": TRADE_KEY_VALUE},
    {"BITVAVO_TRADE_API_SECRET": TRADE_SECRET_VALUE},
    {"BITVAVO_TRADE_API_KEY": TRADE_KEY_VALUE, "BITVAVO_TRADE_API_SECRET": TRADE_SECRET_VALUE},
    {"bitvavo_trade_api_key": TRADE_KEY_VALUE},  # pydantic-settings reads names in any case
    {"BITVAVO_TRADE_API_SECRET": " "},  # set, even if blank
], ids=["key", "secret", "both", "lower-case", "blank"])
def test_g3_a_trade_key_in_the_scanners_environment_refuses_to_start(
        monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> None:
    with pytest.raises(ConfigurationError) as exc:
        load(monkeypatch, **env)
    message = str(exc.value)
    for name in env:
        assert f"{name} is set: the trade key belongs in trading_execute's environment only" \
            in message
    assert TRADE_KEY_VALUE not in message and TRADE_SECRET_VALUE not in message


def test_g3_an_empty_trade_variable_is_not_a_key(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = load(monkeypatch, BITVAVO_TRADE_API_KEY="", BITVAVO_TRADE_API_SECRET="")
    assert settings.scanner.oracle == "rules"


def test_g3_the_scheduler_process_exits_before_serving_with_a_trade_key() -> None:
    """The real entry point under functions-framework: it exits with the variable's name, no
    value and no traceback, and never serves (start_function raises)."""
    env = {**BASE_ENV, "BITVAVO_TRADE_API_SECRET": TRADE_SECRET_VALUE}
    with pytest.raises(RuntimeError) as caught, start_function("scan_scheduler", env=env):
        pass
    message = str(caught.value)
    assert "scan_scheduler exited with 1 before serving" in message
    assert "BITVAVO_TRADE_API_SECRET is set: the trade key belongs in trading_execute's " \
        "environment only" in message
    assert "BITVAVO_TRADE_API_KEY" not in message  # only what is set is named
    for value in (TRADE_SECRET_VALUE, "hunter2-password", "unit-test-service-key"):
        assert value not in message
    assert "Traceback" not in message


def test_every_configured_secret_is_scrubbed_from_logs(monkeypatch: pytest.MonkeyPatch) -> None:
    """Loading the settings registers them (the database password too), nothing else to call."""
    load(monkeypatch, ORACLE="openai", OPENAI_API_KEY="sk-unit-scrub-me-4242",
         BITVAVO_READONLY_API_KEY="v" * 64, BITVAVO_READONLY_API_SECRET="ro-secret-99")
    line = redact("sk-unit-scrub-me-4242 ro-secret-99 sb_secret_unit-test-service-key-000 "
                  "hunter2-password")
    assert "scrub-me" not in line and "ro-secret" not in line and "unit-test" not in line
    assert "hunter2" not in line


# -- leases ---------------------------------------------------------------------------------------
class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_lease_is_trusted_only_within_its_last_confirmation() -> None:
    clock = Clock()
    lease = Lease("j", 10, confirmed_at=clock.now, clock=clock)
    clock.now += 7.9
    lease.check()
    clock.now += 0.2  # 8.1 s > 10 s − 2 s margin: no longer sure
    with pytest.raises(LeaseLost, match="may have expired"):
        lease.check()
    lease.confirmed_at = clock.now
    lease.check()
    lease.lose("taken over")
    with pytest.raises(LeaseLost, match="taken over"):
        lease.check()


class BeatPort:
    def __init__(self, answers: list[Any]) -> None:
        self.answers = answers
        self.calls: list[dict[str, Any]] = []
        self.done = threading.Event()

    def call(self, fn: str, args: Mapping[str, Any] | None = None) -> Any:
        assert fn == "heartbeat_scan_jobs"
        self.calls.append(dict(args or {}))
        answer = self.answers.pop(0) if self.answers else list(args["p_job_ids"] if args else [])
        if not self.answers:
            self.done.set()
        if isinstance(answer, Exception):
            raise answer
        return answer

    def rows(self, fn: str, args: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
        raise AssertionError

    def close(self) -> None:
        pass


def test_the_heartbeat_confirms_extends_and_notices_a_lost_lease_in_one_call_per_beat() -> None:
    import logging

    from shared.api.steplog import StepLog

    port = BeatPort([["job-1", "job-2"], RpcUnavailable("down"), ["job-2"], []])
    clock = Clock()
    beat = Heartbeat(port, "w", 30, 0.01, StepLog(logger=logging.getLogger("t")), clock=clock)
    one, two = beat.track("job-1", clock.now), beat.track("job-2", clock.now)
    beat.start()
    assert port.done.wait(5)
    beat.stop()
    assert port.calls[0] == {"p_worker_id": "w", "p_job_ids": ["job-1", "job-2"],
                             "p_lock_seconds": 30}
    assert one.lost.is_set() and two.lost.is_set()
    with pytest.raises(LeaseLost):
        one.check()
    # A lost lease is not beaten again: job-1 drops out after the third beat, job-2 after the
    # fourth, and then there is nothing left to beat.
    assert [call["p_job_ids"] for call in port.calls] == [["job-1", "job-2"]] * 3 + [["job-2"]]
    beat.forget(["job-2"])
    assert beat._leases == {"job-1": one}


# -- the tick with fakes --------------------------------------------------------------------------
CANDLES_FROM = datetime(2026, 11, 1, tzinfo=UTC)
LAST_CANDLE = CANDLES_FROM + timedelta(hours=len(UPTREND) - 1)


class FakeWorld:
    """claim_due_scan_jobs / get_scan_contexts / claim_oracle_answer / create_scan_proposals /
    heartbeat_scan_jobs / release_job_locks over an in-memory queue, counting every call; the
    clock advances one second per claim."""

    def __init__(self, jobs: int, clock: Clock, markets: tuple[str, ...] = ("BTC-EUR",)) -> None:
        self.queue = [{"id": str(uuid.uuid4()), "user_id": str(uuid.uuid4()),
                       "market": markets[i % len(markets)], "attempts": 1,
                       "last_claim_lag_seconds": Decimal(i), "next_run_at": "2026-11-28T12:00:00Z"}
                      for i in range(jobs)]
        self.market_of = {j["id"]: j["market"] for j in self.queue}
        self.clock = clock
        self.claims: list[int] = []
        self.calls: dict[str, int] = {}
        self.releases: list[list[dict[str, Any]]] = []
        self.proposals: list[str] = []
        self.lock = threading.Lock()
        self.lose: set[str] = set()

    def call(self, fn: str, args: Mapping[str, Any] | None = None) -> Any:
        args = dict(args or {})
        with self.lock:
            self.calls[fn] = self.calls.get(fn, 0) + 1
        if fn == "get_scan_contexts":
            return {"contexts": [{"found": True, "job_id": job, "lease_held": job not in self.lose,
                                  "market": self.market_of[job], "proposal": None,
                                  "open_sides": [],
                                  "sizing": {"min_order_quote": Decimal(5),
                                             "max_order_quote": Decimal(50),
                                             "daily_remaining_quote": Decimal(200),
                                             "trades_left_today": 10}}
                                 for job in args["p_job_ids"]]}
        if fn == "claim_oracle_answer":
            return {"outcome": "answered", "answer_id": str(uuid.uuid4()),
                    "answer": args["p_answer"]}
        if fn == "create_scan_proposals":
            with self.lock:
                self.proposals += [p["job_id"] for p in args["p_proposals"]]
            return {"results": [{"job_id": p["job_id"], "outcome": "created",
                                 "proposal_id": str(uuid.uuid4()), "status": "pending",
                                 "decided_by": None} for p in args["p_proposals"]]}
        if fn == "heartbeat_scan_jobs":
            return list(args["p_job_ids"])
        if fn == "release_job_locks":
            self.releases.append(args["p_results"])
            return {"released_count": len(args["p_results"]),
                    "results": [{"job_id": r["job_id"], "released": True}
                                for r in args["p_results"]]}
        raise AssertionError(fn)

    def rows(self, fn: str, args: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
        assert fn == "claim_due_scan_jobs"
        args = dict(args or {})
        with self.lock:
            self.calls[fn] = self.calls.get(fn, 0) + 1
            self.claims.append(args["p_limit"])
            taken, self.queue = self.queue[:args["p_limit"]], self.queue[args["p_limit"]:]
            self.clock.now += 1.0
        return taken

    def close(self) -> None:
        pass


class FakeMarket:
    def __init__(self) -> None:
        self.requests: list[str] = []

    def candles(self, market: str, interval: str, *, limit: int) -> list[Candle]:
        self.requests.append(f"candles {market}")
        if market == "DOGE-EUR":
            raise InvalidParameter("market parameter is invalid.", http_status=400, error_code=205)
        return [Candle(timestamp=CANDLES_FROM + timedelta(hours=i), open=c, high=c, low=c,
                       close=c, volume=Decimal(1)) for i, c in enumerate(UPTREND)][::-1]

    def ticker_price(self, market: None = None) -> list[TickerPrice]:
        self.requests.append("prices")
        return [TickerPrice(market=m, price=UPTREND[-1]) for m in ("BTC-EUR", "ETH-EUR")]


def scanner(world: FakeWorld, market: FakeMarket | None = None, **settings: Any) -> Scanner:
    options = ScannerSettings(**{"scan_concurrency": 3, "candle_limit": 60, **settings})
    return Scanner(options, world, market or FakeMarket(), RulesOracle(options),  # type: ignore[arg-type]
                   None, clock=world.clock, wall_clock=LAST_CANDLE.timestamp)


def test_batches_read_write_and_release_each_in_one_call_and_one_market_failing_spares_others(
        ) -> None:
    clock = Clock()
    world = FakeWorld(20, clock, markets=("BTC-EUR", "DOGE-EUR", "ETH-EUR", "BTC-EUR"))
    market = FakeMarket()
    report = scanner(world, market, scan_batch_size=8).tick()
    assert world.claims == [8, 8, 8] and report.claimed == 20 and report.batches == 3
    assert report.stopped == "no_due_jobs"
    assert world.calls == {"claim_due_scan_jobs": 3, "get_scan_contexts": 3,
                           "claim_oracle_answer": 2, "create_scan_proposals": 3,
                           "release_job_locks": 3}
    assert report.rpc_calls == sum(world.calls.values())
    assert [len(r) for r in world.releases] == [8, 8, 4]
    failed = [r for batch in world.releases for r in batch if not r["succeeded"]]
    # One market's failure never stops the others: every DOGE job failed with its error (read
    # once in the tick), every other job proposed.
    assert len(failed) == 5 and all("205" in r["error"] for r in failed)
    assert report.failed == 5 and report.succeeded == 15 and report.proposals == 15
    assert sorted(market.requests) == ["candles BTC-EUR", "candles DOGE-EUR", "candles ETH-EUR",
                                       "prices"]
    assert report.exchange_weight == 4
    assert (report.as_json()["lag_p50_ms"], report.as_json()["lag_max_ms"]) == (9000, 19000)


def test_max_jobs_caps_the_tick() -> None:
    clock = Clock()
    world = FakeWorld(20, clock)
    report = scanner(world, scan_batch_size=8).tick(11)
    assert world.claims == [8, 3] and report.claimed == 11 and report.stopped == "max_jobs"


def test_no_batch_is_claimed_after_the_time_budget() -> None:
    clock = Clock()
    world = FakeWorld(50, clock)
    report = scanner(world, tick_time_budget_seconds=2.5, scan_batch_size=5).tick()
    # The clock moves a second per claim: claims at t=0, 1, 2; none at t ≥ 2.5.
    assert report.stopped == "time_budget" and len(world.claims) == 3
    assert report.claimed == sum(world.claims) == 15 and len(world.releases) == 3
    assert sum(len(r) for r in world.releases) == report.claimed == report.succeeded


def test_a_job_whose_lease_is_gone_writes_nothing() -> None:
    clock = Clock()
    world = FakeWorld(3, clock)
    world.lose.add(world.queue[1]["id"])
    report = scanner(world).tick(3)
    assert report.lease_lost == 1 and report.proposals == 2
    assert world.queue == [] and world.releases[0][1]["succeeded"] is False
    assert "lease" in world.releases[0][1]["error"]
    assert world.queue == [] and world.releases[0][1]["job_id"] not in world.proposals


# -- the execute request --------------------------------------------------------------------------
URL = "http://execute.test/"
KEY = SecretStr("sb_secret_execute-test-key-0001")


@pytest.mark.parametrize(("status", "headers", "body", "outcome"), [
    (201, {}, {"execution": {"status": "filled"}}, "created"),
    (200, {"Idempotent-Replayed": "true"}, {"execution": {"status": "filled"}}, "replayed"),
    (202, {}, {"execution": {"status": "unknown"}}, "accepted"),
    (409, {"Retry-After": "1"}, {"type": "/problems/in-flight"}, "in_flight"),
    (409, {}, {"type": "/problems/conflict"}, "conflict"),
    (422, {}, {"type": "/problems/rejected", "failed_checks": []}, "rejected"),
    (404, {}, {"type": "/problems/not-found"}, "not_found"),
])
def test_definite_answers(httpx_mock: HTTPXMock, status: int, headers: dict[str, str],
                          body: dict[str, Any], outcome: str) -> None:
    httpx_mock.add_response(url=URL, method="POST", status_code=status, json=body,
                            headers=headers)
    pid, uid = str(uuid.uuid4()), str(uuid.uuid4())
    answer = ExecuteClient(URL, KEY, 5).request(pid, uid)
    assert answer.outcome == outcome and answer.http_status == status
    (request,) = httpx_mock.get_requests()
    assert request.headers["Authorization"] == f"Bearer {KEY.get_secret_value()}"
    assert request.headers["Idempotency-Key"] == f"auto:{pid}"
    assert request.headers["Content-Type"] == "application/json"
    assert httpx.Response(200, content=request.content).json() == {"proposal_id": pid,
                                                                   "user_id": uid}


@pytest.mark.parametrize("status", [500, 502, 503, 401, 403])
def test_no_definite_answer_is_unavailable(httpx_mock: HTTPXMock, status: int) -> None:
    httpx_mock.add_response(url=URL, status_code=status, json={})
    with pytest.raises(ExecuteUnavailable):
        ExecuteClient(URL, KEY, 5).request(str(uuid.uuid4()), str(uuid.uuid4()))


@pytest.mark.parametrize(("header", "seconds"), [("17", 17), ("0", 1), ("soon", 1), (None, 1)])
def test_a_429_is_the_order_budget_with_its_retry_after(httpx_mock: HTTPXMock,
                                                        header: str | None, seconds: int) -> None:
    httpx_mock.add_response(url=URL, status_code=429,
                            json={"type": "/problems/order-budget-exhausted"},
                            headers={"Retry-After": header} if header is not None else {})
    answer = ExecuteClient(URL, KEY, 5).request(str(uuid.uuid4()), str(uuid.uuid4()))
    assert (answer.outcome, answer.http_status, answer.retry_after) == (
        "rate_limited", 429, seconds)


def test_a_timeout_is_unavailable(httpx_mock: HTTPXMock) -> None:
    httpx_mock.add_exception(httpx.ReadTimeout("slow"), url=URL)
    with pytest.raises(ExecuteUnavailable):
        ExecuteClient(URL, KEY, 5).request(str(uuid.uuid4()), str(uuid.uuid4()))
