"""Scanning that scales with users, end to end: the real scan_scheduler (functions-framework), the
real database and the Bitvavo sandbox over real HTTP.

- market data once per market per tick: the exchange weight a tick spends, read from the sandbox's
  own rate-limit headers, is at most markets + 1, and stays the same with twice the users;
- one model call per market snapshot: 60 `openai` jobs over 4 markets make exactly 4 requests;
  each call's bill is split among its users and the rows sum to the fake provider's bill; a user
  whose reservation is denied gets no proposal;
- sharing changes nobody's proposal: on a pinned market, the tick's proposals equal, user by user
  (side, size, confidence, auto-approval), what each user's own scan computes (the per-user path:
  get_scan_context, that user's own market data read, the rules oracle, sizing);
- a rate limit is not a failure: the jobs a tick could not start keep their failure count, their
  attempts and their schedule, and the tick stops claiming (budget exhausted, and a ban);
- a market too thin to read (the sandbox's illiquid THIN-EUR) gives no signal and no model call.
"""

from __future__ import annotations

import time
import uuid
from decimal import Decimal
from typing import Any

from shared.exchange.readonly import BitvavoReadonly
from shared.rpc.direct import DirectRpc
from shared.scanning.marketdata import MarketData
from shared.scanning.oracle import Signal
from shared.scanning.rules import RulesOracle
from shared.scanning.settings import ScannerSettings
from shared.scanning.sizing import order_room
from shared.scanning.tick import Scanner
from tests.function_server import FunctionServer, start_function
from tests.pg import Database
from tests.sandbox_server import SandboxServer
from tests.scan_support import (
    ALWAYS_SIGNAL,
    SANDBOX_MARKETS,
    SandboxProxy,
    build_world,
    scan_env,
    service_headers,
)
from tests.test_scan_e2e import FakeModel, openai_env

HOUR_MS = 3_600_000


def tick(fn: FunctionServer, **body: Any) -> dict[str, Any]:
    answer = fn.post("/", json=body, headers=service_headers())
    assert answer.status_code == 200, answer.text
    return answer.json()


def all_due(db: Database) -> None:
    db.query("update public.scan_jobs set next_run_at = now() - interval '1 second'")


# -- market data once per market per tick ---------------------------------------------------------
def test_a_tick_spends_at_most_markets_plus_one_weight_whatever_the_number_of_users(
        db: Database, bitvavo_sandbox: SandboxServer) -> None:
    build_world(db, users=50)  # 200 jobs over 4 markets
    spent = []
    with SandboxProxy(bitvavo_sandbox) as proxy:
        env = scan_env(db, bitvavo_sandbox, BITVAVO_REST_URL=proxy.rest_url, **ALWAYS_SIGNAL)
        with start_function("scan_scheduler", env=env) as fn:
            for jobs in (200, 400):  # then twice the users
                before = len(proxy.snapshot())
                bitvavo_sandbox.reset()
                answer = tick(fn)
                assert answer["claimed"] == jobs == answer["succeeded"]
                assert len(proxy.snapshot()) - before == answer["exchange_weight"]
                spent.append(proxy.weight())
                proxy.answers.clear()
                build_world(db, users=50)
                all_due(db)
    assert spent[0] <= len(SANDBOX_MARKETS) + 1
    assert spent[1] == spent[0]  # 400 jobs spend what 200 did


# -- one model call per market snapshot -----------------------------------------------------------
def test_sixty_openai_jobs_over_four_markets_make_four_calls_and_split_each_bill(
        db: Database, bitvavo_sandbox: SandboxServer) -> None:
    users = build_world(db, users=15)  # 60 jobs
    broke = users[0]
    db.query("update public.trading_settings set gpt_daily_budget_usd = 0 where user_id = %s",
             (broke,))
    fake = FakeModel(db, delay=0.05)
    with fake.server:
        with start_function("scan_scheduler", env=openai_env(db, bitvavo_sandbox, fake)) as fn:
            answer = tick(fn)
    requests = fake.server.snapshot()

    assert fake.violations == []
    assert len(requests) == 4 == answer["model_calls"]  # one per market snapshot
    assert answer["claimed"] == 60 and answer["budget_denied"] == 4
    # Every call's bill split among the 14 users who reserved for it: exactly the bill.
    bill = fake.billed(db)
    rows = db.query("select oracle_answer_id, sum(cost_usd), count(*), min(shared_by), "
                    "bool_and(status = 'settled'), bool_and(cost_usd <= reserved_usd) "
                    "from public.gpt_usage_log group by 1")
    assert len(rows) == 4
    for _, cost, n, shared_by, settled, within in rows:
        assert (cost, n, shared_by, settled, within) == (bill, 14, 14, True, True)
    # The denied user: no reservation, no proposal; the others a proposal on each buy answer.
    assert db.scalar("select count(*) from public.gpt_usage_log where user_id = %s",
                     (broke,)) == 0
    assert db.scalar("select count(*) from public.trade_proposals where user_id = %s",
                     (broke,)) == 0
    buys = sum(kind == "buy" for kind in fake.served.values())
    assert answer["proposals"] == 14 * buys
    assert db.scalar("select count(distinct oracle_answer_id) from public.trade_proposals") == buys


# -- sharing changes nobody's proposal -------------------------------------------------------
def test_the_shared_tick_proposes_to_each_user_what_their_own_scan_would(
        db: Database, bitvavo_sandbox: SandboxServer) -> None:
    """On a pinned market (the proxy serves the sandbox as it stood at an hour boundary), the
    proposals of one shared tick equal, user by user, the per-user computation."""
    users = build_world(db, users=12, settings={"trading_enabled": True})
    # Users differ in everything a proposal depends on.
    for n, user in enumerate(users):
        db.query("update public.trading_settings set max_order_quote = %s, max_daily_quote = %s, "
                 "auto_execute = %s, min_confidence = %s where user_id = %s",
                 (Decimal(6 + 7 * n), Decimal(200 if n % 3 else 9 + n), n % 2 == 0,
                  Decimal("0.5") + Decimal(n) / 25, user))
    db.query("update public.trading_allowlist set max_order_quote = 8 where user_id = %s "
             "and market = 'ETH-EUR'", (users[1],))
    db.query("update public.trading_allowlist set max_order_quote = 3 where user_id = %s "
             "and market = 'SOL-EUR'", (users[2],))  # below the market minimum: no room
    pin_s = (int(time.time() * 1000) // HOUR_MS - 1) * HOUR_MS / 1000
    settings = ScannerSettings(candle_limit=60, **{k.lower(): v for k, v in ALWAYS_SIGNAL.items()})
    jobs = db.query("select id, user_id, market from public.scan_jobs order by id")

    with SandboxProxy(bitvavo_sandbox, pin_ms=int(pin_s * 1000)) as proxy:
        # Each user's own scan, as the per-user path computed it: their context, their own
        # market data read, the rules oracle, their sizing.
        expected: dict[uuid.UUID, tuple[Any, ...] | None] = {}
        for job_id, _, market in jobs:
            context = db.rpc("get_scan_context", p_job_id=job_id, p_worker_id="reference",
                             p_mode="paper")
            room = order_room(context["sizing"])
            client = BitvavoReadonly(proxy.rest_url)
            try:
                snapshot = MarketData(client, "1h", 60, clock=lambda: pin_s).snapshot(market)
            finally:
                client.close()
            answer = RulesOracle(settings).decide(snapshot)
            if not room.has_room or not isinstance(answer, Signal):
                expected[job_id] = None
                continue
            auto = context["auto_execute"] and answer.confidence >= context["min_confidence"]
            expected[job_id] = (answer.side, room.amount_quote, answer.confidence,
                                "approved" if auto else "pending")

        rpc = DirectRpc(db.authenticator_url)
        market_client = BitvavoReadonly(proxy.rest_url)
        try:
            report = Scanner(settings, rpc, market_client, RulesOracle(settings), None,
                             wall_clock=lambda: pin_s).tick()
        finally:
            market_client.close()
            rpc.close()

    assert report.claimed == 48 and report.exchange_weight == 5 and report.oracle_answers == 4
    proposed = {job_id: (side, amount, confidence, status) for job_id, side, amount, confidence,
                status in db.query("select scan_job_id, side, amount_quote, confidence, status "
                                   "from public.trade_proposals")}
    assert {j: proposed.get(j) for j in expected} == expected
    assert sum(v is not None for v in expected.values()) == report.proposals > 0
    assert None in expected.values()  # someone had no room


# -- a rate limit is not a failure -----------------------------------------------------------
def rate_limit_world(db: Database) -> dict[str, list[uuid.UUID]]:
    """3 users × 4 markets; BTC-EUR's jobs fall due first, then ETH-EUR's, SOL-EUR's, XRP-EUR's;
    ETH-EUR's jobs have failed twice before."""
    build_world(db, users=3)
    for age, market in ((40, "BTC-EUR"), (30, "ETH-EUR"), (20, "SOL-EUR"), (10, "XRP-EUR")):
        db.query("update public.scan_jobs set next_run_at = now() - make_interval(secs => %s) "
                 "where market = %s", (age, market))
    db.query("update public.scan_jobs set consecutive_failures = 2, last_error = 'earlier' "
             "where market = 'ETH-EUR'")
    return {m: [j for (j,) in db.query("select id from public.scan_jobs where market = %s", (m,))]
            for m in SANDBOX_MARKETS}


def jobs_state(db: Database, ids: list[uuid.UUID]) -> list[tuple[Any, ...]]:
    return db.query("select id, attempts, consecutive_failures, next_run_at, last_run_at, "
                    "last_error, locked_by from public.scan_jobs where id = any(%s) order by id",
                    (ids,))


def test_a_tick_that_meets_the_rate_limit_gives_its_unstarted_jobs_back_unchanged(
        db: Database, bitvavo_sandbox: SandboxServer) -> None:
    jobs = rate_limit_world(db)
    untouched = jobs["ETH-EUR"] + jobs["SOL-EUR"] + jobs["XRP-EUR"]
    before = jobs_state(db, untouched)
    # The second answer of the tick (its prices) says the budget is spent for 55 s: the client
    # refuses the next request itself (RateLimitWouldExceed), as it would near Bitvavo's limit.
    with SandboxProxy(bitvavo_sandbox, exhaust_after=2) as proxy:
        env = scan_env(db, bitvavo_sandbox, BITVAVO_REST_URL=proxy.rest_url, SCAN_BATCH_SIZE="3",
                       **ALWAYS_SIGNAL)
        with start_function("scan_scheduler", env=env) as fn:
            answer = tick(fn)
        sent = [path for path, _ in proxy.snapshot()]

    assert (answer["stopped"], answer["rate_limited"]) == ("rate_limited", True)
    assert (answer["claimed"], answer["succeeded"], answer["failed"]) == (6, 3, 0)
    assert (answer["not_run"], answer["released"]) == (3, 6)
    assert not any("ETH-EUR" in path for path in sent)  # refused before sending
    assert jobs_state(db, untouched) == before  # ETH-EUR's given back, the others never claimed
    assert db.scalar("select count(*) from public.scan_jobs where market = 'BTC-EUR' "
                     "and consecutive_failures = 0 and last_success_at is not null") == 3


def test_a_ban_stops_the_tick_at_once_and_counts_no_failure(
        db: Database, bitvavo_sandbox: SandboxServer) -> None:
    jobs = rate_limit_world(db)
    untouched = jobs["ETH-EUR"] + jobs["SOL-EUR"] + jobs["XRP-EUR"]
    before = jobs_state(db, untouched)
    with SandboxProxy(bitvavo_sandbox, ban="/v2/ETH-EUR/") as proxy:
        env = scan_env(db, bitvavo_sandbox, BITVAVO_REST_URL=proxy.rest_url, SCAN_BATCH_SIZE="3",
                       **ALWAYS_SIGNAL)
        with start_function("scan_scheduler", env=env) as fn:
            answer = tick(fn)
            again = tick(fn)  # still banned: nothing is sent, nothing counted

    assert (answer["stopped"], answer["not_run"], answer["failed"]) == ("rate_limited", 3, 0)
    assert jobs_state(db, untouched) == before
    assert (again["stopped"], again["claimed"], again["not_run"]) == ("rate_limited", 3, 3)
    assert jobs_state(db, untouched) == before


# -- a thin market --------------------------------------------------------------------------------
def test_a_market_without_enough_trades_gives_no_signal_and_no_model_call(
        db: Database, bitvavo_sandbox: SandboxServer) -> None:
    build_world(db, users=3, markets=("THIN-EUR",))
    fake = FakeModel(db, delay=0)
    with fake.server:
        # 1-minute candles of THIN-EUR: 40 % of its hours, and 40 % of the other minutes, trade
        # nothing — far past the 20 % the scanner accepts.
        env = openai_env(db, bitvavo_sandbox, fake, CANDLE_INTERVAL="1m")
        with start_function("scan_scheduler", env=env) as fn:
            answer = tick(fn)
            logs = fn.logs()
    assert (answer["claimed"], answer["no_signal"], answer["model_calls"]) == (3, 3, 0)
    assert fake.server.snapshot() == [] and "insufficient data" in logs
    assert db.scalar("select count(*) from public.gpt_usage_log") == 0
