"""Burst of auto-execution: 1,000 auto-approved proposals on one market against the trade key's
budget: paced, never banned, exactly one order per proposal.

One market's signal has just made every user's proposal auto-approved: the proposals are written
as a tick writes them (status `approved`, decided_by `auto`, one per user, BTC-EUR, 10 EUR; the
market data and the oracle are not what is measured here). Then Supabase Cron is played: every
`--cron-seconds` (60, as deployed) it starts a tick on each of `--scanners` scan_scheduler
instances at once (served as `make run` serves them, shared.api.server), each handing on to its own
trading_execute instance (live mode against the sandbox: one trade key, shared by both), until no
proposal is left waiting. The sandbox enforces Bitvavo's limit on the key: 1,000 weight a minute
(POST /order weighs 1), a 429 and a ban past it.

Two settings, each on a fresh database from the same template, in the same run:
  order budget   the deployed settings: ORDER_BUDGET 800 per RATE_LIMIT_WINDOW_SECONDS 60 (a slot
                 counts 77 s), DISPATCH_CONCURRENCY 4, DISPATCH_MAX_WAIT_SECONDS 20
  no budget      ORDER_BUDGET so large it never binds: the dispatch sends as fast as trading_execute
                 answers, and only the transport's local view of the rate-limit headers (per
                 process) stands between the burst and the exchange's limit — the peer

Reported per setting: time to drain (the first tick's start to the last proposal leaving the
queue), cron ticks, proposals executed / lost (`failed`) / left waiting, orders at the exchange and
orders per executed proposal (target exactly 1; the most orders one clientOrderId got), the most
orders in any 60 s at the exchange, 429s (bans) at the exchange (target 0), requests the scanners
sent to trading_execute and the 429s trading_execute answered.

    .bench-venv/bin/python bench/scan_burst.py [--proposals 1000] [--scanners 2] [--cron-seconds 60]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script: make `stack`, `sandbox`, `shared` importable
    sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
import psycopg  # noqa: E402

from bench.measure import TEST_CLUSTER_SETTINGS, machine  # noqa: E402
from sandbox.auth import DEFAULT_TRADE_KEY, DEFAULT_TRADE_SECRET  # noqa: E402
from stack.cluster import LOCAL_SQL, MIGRATIONS, Cluster, free_port, sql_files  # noqa: E402
from stack.services import Service, stop_all  # noqa: E402

TEMPLATE = "burst_template"
MARKET = "BTC-EUR"
JWT_SECRET = "bench-burst-jwt-secret-" + "b" * 24
SERVICE_KEY = "sb_secret_bench-burst-" + "k" * 24
OPERATOR_ID = "4242"
KEY_LIMIT = 1000  # the sandbox's default: Bitvavo's weight a minute per key
START_TIMEOUT = 60.0
SETTINGS = {"order budget": {}, "no budget": {"ORDER_BUDGET": "1000000"}}


# -- the world ------------------------------------------------------------------------------------
def build_template(cluster: Cluster, users: int) -> None:
    """The schema, `users` users who auto-execute live on MARKET, and one auto-approved
    proposal each (written as a tick writes them)."""
    cluster.create_database(TEMPLATE)
    cluster.apply(TEMPLATE, sql_files(LOCAL_SQL, MIGRATIONS))
    ids = [uuid.uuid4() for _ in range(users)]
    with psycopg.connect(cluster.url(TEMPLATE), autocommit=True) as conn, conn.cursor() as cur:
        cur.executemany("insert into auth.users (id, email, aud, role) values "
                        "(%s, %s, 'authenticated', 'authenticated')",
                        [(u, f"{u.hex[:12]}@burst.test") for u in ids])
        cur.execute("insert into public.market_allowlist (market, enabled) values (%s, true)",
                    (MARKET,))
        cur.execute("insert into public.trading_allowlist (user_id, market) "
                    "select u, %s from unnest(%s::uuid[]) u", (MARKET, ids))
        cur.execute("update public.trading_settings set trading_enabled = true, "
                    "live_trading_enabled = true, auto_execute = true where user_id = any(%s)",
                    (ids,))
        cur.execute("update public.system_controls set live_trading_allowed = true")


def fresh_database(cluster: Cluster, name: str) -> str:
    """A copy of the template whose proposals are made now (so they expire 15 minutes on)."""
    cluster.create_database(name, template=TEMPLATE)
    url = cluster.url(name)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("""
            insert into public.trade_proposals (user_id, market, side, amount_quote, confidence,
                rationale, source, status, expires_at, decided_at, decided_by)
            select user_id, market, 'buy', 10, 0.9, 'bench: one signal for every user', 'rules',
                   'approved', now() + interval '15 minutes', now(), 'auto'
            from public.trading_allowlist order by user_id""")
    return url


# -- the services ---------------------------------------------------------------------------------
def base_env(extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR")}
    return {**env, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT), **extra}


def start(service: Service) -> Service:
    service.start()
    service.wait_ready(START_TIMEOUT)
    return service


def sandbox_service(logs: Path) -> Service:
    port = free_port()
    return start(Service("sandbox", [sys.executable, "-m", "sandbox.bitvavo", "--host",
                                     "127.0.0.1", "--port", str(port), "--seed", "42"],
                         env=base_env({"SANDBOX_BALANCES": json.dumps({"EUR": "100000000"})}),
                         port=port, log_path=logs / "sandbox.log", cwd=ROOT,
                         ready_path="/v2/time"))


def function_service(name: str, env: dict[str, str], logs: Path, tag: str) -> Service:
    port = free_port()
    source = ROOT / "functions" / name / "main.py"
    return start(Service(f"{name} {tag}", [
        sys.executable, "-m", "shared.api.server", "--target", name, "--source", str(source),
        "--host", "127.0.0.1", "--port", str(port)], env=base_env(env), port=port,
        log_path=logs / f"{name}-{tag}.log", cwd=ROOT, ready_path="/health"))


# -- one setting ----------------------------------------------------------------------------------
@dataclass
class Outcome:
    setting: str
    drain_seconds: float = 0.0
    ticks: int = 0
    executed: int = 0
    lost: int = 0
    waiting: int = 0
    orders: int = 0
    most_per_order_id: int = 0
    most_in_60s: int = 0
    exchange_429s: int = 0
    requests: int = 0
    execute_429s: int = 0
    tick_answers: list[dict[str, Any]] = field(default_factory=list)

    @property
    def orders_per_proposal(self) -> float:
        return self.orders / self.executed if self.executed else 0.0


def run_setting(setting: str, cluster: Cluster, sandbox: Service, logs: Path,
                args: argparse.Namespace) -> Outcome:
    db_url = fresh_database(cluster, f"burst_{setting.replace(' ', '_')}")
    authenticator = db_url.replace("postgres@", "authenticator@", 1)
    services: list[Service] = []
    outcome = Outcome(setting)
    try:
        execute_env = {"DATABASE_URL": authenticator, "SUPABASE_JWT_SECRET": JWT_SECRET,
                       "SUPABASE_SERVICE_ROLE_KEY": SERVICE_KEY,
                       "BITVAVO_REST_URL": f"{sandbox.url}/v2", "TRADING_MODE": "live",
                       "BITVAVO_TRADE_API_KEY": DEFAULT_TRADE_KEY,
                       "BITVAVO_TRADE_API_SECRET": DEFAULT_TRADE_SECRET,
                       "BITVAVO_OPERATOR_ID": OPERATOR_ID, **SETTINGS[setting]}
        scanners = []
        for i in range(args.scanners):
            executor = function_service("trading_execute", execute_env, logs, f"{setting} {i}")
            services.append(executor)
            scanners.append(function_service("scan_scheduler", {
                "DATABASE_URL": authenticator, "SUPABASE_JWT_SECRET": JWT_SECRET,
                "SUPABASE_SERVICE_ROLE_KEY": SERVICE_KEY, "BITVAVO_REST_URL": f"{sandbox.url}/v2",
                "TRADING_MODE": "live", "EXECUTE_FUNCTION_URL": executor.url + "/"},
                logs, f"{setting} {i}"))
            services.append(scanners[-1])
        httpx.post(f"{sandbox.url}/_sandbox/reset", json={}, timeout=10).raise_for_status()
        # Start at the top of the sandbox's minute, as a cron job does: both settings meet the
        # exchange's windows alike (a burst across a window boundary meets two budgets).
        time.sleep(60 - time.time() % 60 + 0.5)
        with psycopg.connect(db_url, autocommit=True) as conn:
            started = conn.execute("select now()").fetchone()[0]  # type: ignore[index]
            began = time.monotonic()
            while True:
                outcome.ticks += 1
                outcome.tick_answers += cron_tick(scanners)
                left = conn.execute("select count(*) from public.trade_proposals "
                                    "where status = 'approved'").fetchone()[0]  # type: ignore[index]
                if left == 0 or outcome.ticks >= args.max_ticks:
                    break
                time.sleep(max(0.0, began + outcome.ticks * args.cron_seconds - time.monotonic()))
            counts: dict[str, int] = dict(conn.execute(
                "select status, count(*) from public.trade_proposals group by status").fetchall())
            last = conn.execute("select max(coalesce(e.completed_at, e.claimed_at)) "
                                "from public.trade_executions e").fetchone()[0]  # type: ignore[index]
        outcome.executed = counts.get("executed", 0)
        outcome.lost = counts.get("failed", 0)
        outcome.waiting = counts.get("approved", 0) + counts.get("executing", 0)
        outcome.drain_seconds = (last - started).total_seconds() if last else 0.0
        orders = httpx.get(f"{sandbox.url}/_sandbox/orders", timeout=30).json()
        outcome.orders = len(orders)
        per_id = Counter(o["clientOrderId"] for o in orders)
        outcome.most_per_order_id = max(per_id.values(), default=0)
        created = sorted(int(o["created"]) for o in orders)
        outcome.most_in_60s = max((sum(1 for t in created[i:] if t < c + 60_000)
                                   for i, c in enumerate(created)), default=0)
        outcome.exchange_429s = httpx.get(f"{sandbox.url}/_sandbox/limits",
                                          timeout=10).json()["refused"]
        for answer in outcome.tick_answers:
            dispatch = answer.get("dispatch") or {}
            outcome.requests += int(dispatch.get("requested", 0))
            outcome.execute_429s += int(dispatch.get("rate_limited", 0))
    finally:
        stop_all(services, grace=5)
    return outcome


def cron_tick(scanners: Sequence[Service]) -> list[dict[str, Any]]:
    """One minute of Supabase Cron: a tick on every scanner at once; their answers."""
    answers: list[dict[str, Any]] = []
    lock = threading.Lock()

    def one(scanner: Service) -> None:
        response = httpx.post(scanner.url + "/", json={}, timeout=180,
                              headers={"Authorization": f"Bearer {SERVICE_KEY}"})
        with lock:
            answers.append(response.json())

    threads = [threading.Thread(target=one, args=(s,)) for s in scanners]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return answers


# -- the report -----------------------------------------------------------------------------------
def print_report(outcomes: Sequence[Outcome], header: str) -> bool:
    print()
    print(header)
    print()
    columns = ("setting", "drain s", "ticks", "executed", "lost", "waiting", "orders",
               "orders/proposal", "max per id", "max in 60 s", "429 at exchange",
               "requests", "429 from execute")
    print(" | ".join(columns))
    ok = True
    for o in outcomes:
        print(" | ".join(str(v) for v in (
            o.setting, f"{o.drain_seconds:.1f}", o.ticks, o.executed, o.lost, o.waiting, o.orders,
            f"{o.orders_per_proposal:.2f}", o.most_per_order_id, o.most_in_60s, o.exchange_429s,
            o.requests, o.execute_429s)))
    budget = outcomes[0]
    targets = [("bans (429 at the exchange) = 0", budget.exchange_429s == 0),
               ("orders per proposal exactly 1", budget.most_per_order_id == 1
                and budget.orders == budget.executed),
               ("every proposal executed, none lost", budget.waiting == 0 and budget.lost == 0)]
    print()
    for name, met in targets:
        ok &= met
        print(f"target ({budget.setting}): {name}: {'met' if met else 'NOT MET'}")
    print()
    return ok


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench/scan_burst.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--proposals", type=int, default=1000, help="users, one proposal each")
    parser.add_argument("--scanners", type=int, default=2,
                        help="scan_scheduler instances ticking at once, each with its own "
                             "trading_execute instance")
    parser.add_argument("--cron-seconds", type=float, default=60.0)
    parser.add_argument("--max-ticks", type=int, default=10)
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    args = parser.parse_args(argv)

    tmp = Path(tempfile.mkdtemp(prefix="aio-bench-burst-"))
    tmp.chmod(0o755)
    cluster = Cluster(data_dir=tmp / "cluster", port=free_port(), cron_database=TEMPLATE,
                      settings=dict(TEST_CLUSTER_SETTINGS))
    sandbox: Service | None = None
    try:
        cluster.init()
        cluster.start()
        build_template(cluster, args.proposals)
        cluster.restart(cron_database="postgres")  # no pg_cron job in the measured databases
        sandbox = sandbox_service(tmp / "logs")
        header = (f"Burst: {args.proposals:,} auto-approved proposals on {MARKET}; "
                  f"{args.scanners} scan_scheduler + {args.scanners} trading_execute instances "
                  f"(live) on one trade key of {KEY_LIMIT:,} weight a minute at the sandbox; a "
                  f"cron tick on every scanner each {args.cron_seconds:g} s; "
                  f"{datetime.now(UTC).date()}\n{machine(cluster)}")
        outcomes = []
        for setting in args.settings:
            outcome = run_setting(setting, cluster, sandbox, tmp / "logs", args)
            print(f"  {setting}: {outcome}", file=sys.stderr, flush=True)
            outcomes.append(outcome)
        return 0 if print_report(outcomes, header) else 1
    finally:
        if sandbox is not None:
            stop_all([sandbox], grace=5)
        cluster.destroy()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
