"""The scanner's market data and Bitvavo's rate-limit budgets, end to end: with the read-only key
its requests are signed and spend the key's budget, not the IP's; without it they are unsigned,
spend the IP's budget (shared with everything else on that address), and the function says so
once at start. Read from the sandbox's own rate-limit headers (separate key and IP budgets)."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from shared.exchange.readonly import BitvavoReadonly
from tests.function_server import start_function
from tests.pg import Database
from tests.sandbox_server import SandboxServer
from tests.scan_support import build_world, scan_env, service_headers, step_lines


def start_of_a_window(sandbox: SandboxServer) -> None:
    """Move the market clock, which the sandbox's rate-limit windows follow, just past a minute
    boundary: the budgets read at the end of the test are the ones the tick spent."""
    now = sandbox.clock()["market_time"]
    sandbox.advance_clock(60_000 - now % 60_000 + 100)


def ip_points_left(sandbox: SandboxServer) -> int:
    response = httpx.get(sandbox.rest_url + "/time", timeout=5)  # unsigned: weight 1
    return int(response.headers["bitvavo-ratelimit-remaining"]) + 1


def key_points_left(sandbox: SandboxServer) -> int:
    with BitvavoReadonly(sandbox.rest_url, api_key=sandbox.view_key,
                         api_secret=sandbox.view_secret) as signed:
        signed.time()  # weight 1
        remaining = signed.transport.rate_limit.remaining
    assert remaining is not None
    return remaining + 1


@pytest.mark.parametrize("signed", [True, False], ids=["readonly-key", "no-key"])
def test_the_scanner_signs_with_the_readonly_key_and_says_at_start_when_it_cannot(
        db: Database, bitvavo_sandbox: SandboxServer, signed: bool) -> None:
    build_world(db, users=2, markets=("BTC-EUR", "ETH-EUR"))
    no_key = {} if signed else {"BITVAVO_READONLY_API_KEY": "", "BITVAVO_READONLY_API_SECRET": ""}
    start_of_a_window(bitvavo_sandbox)
    with start_function("scan_scheduler", env=scan_env(db, bitvavo_sandbox, **no_key)) as fn:
        response = fn.post("/", json={"max_jobs": 10}, headers=service_headers())
        assert response.status_code == 200, response.text
        report: dict[str, Any] = response.json()
        logs = fn.logs()
    assert (report["claimed"], report["succeeded"]) == (4, 4)

    spent_by_ip, spent_by_key = 1000 - ip_points_left(bitvavo_sandbox), \
        1000 - key_points_left(bitvavo_sandbox)
    starts = [line for line in step_lines(logs) if line["step"] == "start"]
    assert len(starts) == 1, starts
    if signed:
        assert spent_by_ip == 0 and spent_by_key > 0  # the market data went on the key
        assert (starts[0]["outcome"], starts[0]["severity"]) == ("signed", "INFO")
        assert starts[0]["rate_limit"] == "api_key"
    else:
        assert spent_by_ip > 0 and spent_by_key == 0
        assert (starts[0]["outcome"], starts[0]["severity"]) == ("unsigned", "WARNING")
        assert starts[0]["rate_limit"] == "ip" and "IP budget" in starts[0]["detail"]
    assert bitvavo_sandbox.view_secret not in logs
