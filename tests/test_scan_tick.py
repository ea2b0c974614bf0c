"""The tick's own rules, with fakes for the database and the exchange (the end-to-end tests in
test_scan_e2e.py run the same code over real HTTP, the real database and the sandbox):

- the body: {"max_jobs": n}, optional, validated;
- claims only as many jobs as it has free threads, stops claiming after the time budget, and
  releases every claimed job — succeeded or failed with its error — in ONE release_job_locks call;
- one job's failure never stops the others;
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


@pytest.mark.parametrize(("body", "expected"), [(b"", 10), (b"  ", 10), (b"{}", 10),
                                                (b'{"max_jobs": 1}', 1),
                                                (b'{"max_jobs": 100}', 100)])
def test_max_jobs_is_optional(body: bytes, expected: int) -> None:
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
      "FUNCTION_TIMEOUT_SECONDS": "900"}, "OPENAI_TIMEOUT_SECONDS"),
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
        assert fn == "heartbeat_scan_job"
        self.calls.append(dict(args or {}))
        answer = self.answers.pop(0) if self.answers else True
        if not self.answers:
            self.done.set()
        if isinstance(answer, Exception):
            raise answer
        return answer

    def rows(self, fn: str, args: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
        raise AssertionError

    def close(self) -> None:
        pass


def test_the_heartbeat_confirms_extends_and_notices_a_lost_lease() -> None:
    import logging

    from shared.api.steplog import StepLog

    port = BeatPort([True, RpcUnavailable("down"), False])
    clock = Clock()
    beat = Heartbeat(port, "w", 30, 0.01, StepLog(logger=logging.getLogger("t")), clock=clock)
    lease = beat.track("job-1", clock.now)
    beat.start()
    assert port.done.wait(5)
    beat.stop()
    assert port.calls[0] == {"p_job_id": "job-1", "p_worker_id": "w", "p_lock_seconds": 30}
    assert lease.lost.is_set()
    with pytest.raises(LeaseLost):
        lease.check()
    assert len(port.calls) == 3  # a lost lease is not beaten again


# -- the tick with fakes --------------------------------------------------------------------------
class FakeWorld:
    """claim_due_scan_jobs / get_scan_context / create_scan_proposal / heartbeat /
    release_job_locks over an in-memory queue; the clock advances one second per claim."""

    def __init__(self, jobs: int, clock: Clock, markets: tuple[str, ...] = ("BTC-EUR",)) -> None:
        self.queue = [{"id": str(uuid.uuid4()), "user_id": str(uuid.uuid4()),
                       "market": markets[i % len(markets)], "attempts": 1,
                       "next_run_at": "2026-11-28T12:00:00Z"} for i in range(jobs)]
        self.clock = clock
        self.claims: list[int] = []
        self.releases: list[list[dict[str, Any]]] = []
        self.proposals: list[str] = []
        self.lock = threading.Lock()
        self.lose: set[str] = set()

    def call(self, fn: str, args: Mapping[str, Any] | None = None) -> Any:
        args = dict(args or {})
        if fn == "get_scan_context":
            return {"found": True, "lease_held": args["p_job_id"] not in self.lose,
                    "proposal": None, "sizing": {"min_order_quote": Decimal(5),
                                                 "max_order_quote": Decimal(50),
                                                 "daily_remaining_quote": Decimal(200),
                                                 "trades_left_today": 10}}
        if fn == "create_scan_proposal":
            with self.lock:
                self.proposals.append(args["p_job_id"])
            return {"outcome": "created", "proposal_id": str(uuid.uuid4()), "status": "pending",
                    "decided_by": None}
        if fn == "heartbeat_scan_job":
            return True
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
            self.claims.append(args["p_limit"])
            taken, self.queue = self.queue[:args["p_limit"]], self.queue[args["p_limit"]:]
            self.clock.now += 1.0
        return taken

    def close(self) -> None:
        pass


class FakeMarket:
    def candles(self, market: str, interval: str, *, limit: int) -> list[Candle]:
        if market == "DOGE-EUR":
            raise InvalidParameter("market parameter is invalid.", http_status=400, error_code=205)
        start = datetime(2026, 11, 1, tzinfo=UTC)
        return [Candle(timestamp=start + timedelta(hours=i), open=c, high=c, low=c, close=c,
                       volume=Decimal(1)) for i, c in enumerate(UPTREND)][::-1]

    def ticker_price(self, market: str) -> TickerPrice:
        return TickerPrice(market=market, price=UPTREND[-1])


def scanner(world: FakeWorld, **settings: Any) -> Scanner:
    options = ScannerSettings(**{"scan_concurrency": 3, **settings})
    return Scanner(options, world, FakeMarket(), RulesOracle(options), None,  # type: ignore[arg-type]
                   clock=world.clock)


def test_claims_only_free_threads_and_releases_every_job_in_one_call() -> None:
    clock = Clock()
    world = FakeWorld(8, clock, markets=("BTC-EUR", "DOGE-EUR"))
    report = scanner(world).tick(7)
    assert world.claims[0] == 3 and all(n <= 3 for n in world.claims)
    assert report.claimed == 7 and report.stopped == "max_jobs"
    assert len(world.releases) == 1 and len(world.releases[0]) == 7
    by_id = {r["job_id"]: r for r in world.releases[0]}
    failed = [r for r in by_id.values() if not r["succeeded"]]
    # One job's failure never stops the others: every DOGE job failed with its error, every
    # BTC job proposed.
    assert len(failed) == 3 and all("205" in r["error"] or "invalid" in r["error"]
                                    for r in failed)
    assert report.failed == 3 and report.succeeded == 4 and report.proposals == 4
    assert len(world.proposals) == 4 and len(world.queue) == 1


def test_no_job_is_claimed_after_the_time_budget() -> None:
    clock = Clock()
    world = FakeWorld(50, clock)
    report = scanner(world, tick_time_budget_seconds=2.5).tick(50)
    # The clock moves a second per claim: claims at t=0, 1, 2; none at t ≥ 2.5.
    assert report.stopped == "time_budget" and len(world.claims) == 3
    assert report.claimed == sum(world.claims) and len(world.releases) == 1
    assert len(world.releases[0]) == report.claimed == report.succeeded


def test_a_job_whose_lease_is_gone_writes_nothing() -> None:
    clock = Clock()
    world = FakeWorld(3, clock)
    world.lose.add(world.queue[1]["id"])
    report = scanner(world).tick(3)
    assert report.lease_lost == 1 and report.proposals == 2
    assert world.queue == [] and world.releases[0][1]["succeeded"] is False
    assert "lease" in world.releases[0][1]["error"]


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
