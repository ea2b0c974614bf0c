"""HTTP execute: executions/second and p50/p99 through the functions-framework server.

trading_execute is served as `make run` serves it — functions-framework's app and gunicorn server
with this project's settings (shared.api.server: one gthread worker, THREADS = 4 × CPU cores, read
deadlines) — against a throwaway
PostgreSQL 15 cluster (the test cluster's fsync=off settings) and the Bitvavo sandbox, in both
modes:

  paper   TRADING_MODE=paper: claim RPC → the sandbox's public ticker price → record RPC
  live    TRADING_MODE=live against the sandbox: claim RPC → signed POST /order → record RPC

Every figure is measured next to its floor, in the same run, on the same server and with the
same clients: GET /health on that server (it answers 200 without the database or the exchange),
so the ratio is what an execution costs on top of the HTTP stack itself. Clients are processes
(one keep-alive connection each; N = 1 and several at once), each request with its own user's
JWT and a fresh Idempotency-Key; executions/second = answers / wall time of the run. Runs are
interleaved (floor, execute, per client count) and repeated; the table shows the median run.

Memory: the resident set size of the gunicorn worker process (the one serving the function, not
its master) after the first 100 executions of a fresh server and after 10,000; target growth
≤ 10 %. The first 100 are sent by the most clients at once (every thread and pooled connection of
the worker exists before the first reading); every execution counts, whichever run made it.

Not measured: building the world — users with every sandbox market allowlisted, trading (and
live trading) enabled, bench-only limits (cooldown and anti-flip 0, daily limits out of reach),
and one approved proposal per execution, spread over the users and markets.

    .bench-venv/bin/python bench/http_execute.py [--clients 1 8] [--repeat 3] [--executions 300]
                                                 [--memory-executions 10000] [--modes paper live]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script: make `sandbox`, `shared`, `stack` importable
    sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
import psycopg  # noqa: E402

from sandbox.auth import DEFAULT_TRADE_KEY, DEFAULT_TRADE_SECRET  # noqa: E402
from shared.auth import dev_token  # noqa: E402
from stack.cluster import LOCAL_SQL, MIGRATIONS, Cluster, free_port, sql_files  # noqa: E402
from stack.services import Service, stop_all  # noqa: E402

DATABASE = "bench"
TEST_CLUSTER_SETTINGS = {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}
JWT_SECRET = "bench-http-jwt-secret-" + "b" * 24
SERVICE_KEY = "sb_secret_bench-http-" + "k" * 24
OPERATOR_ID = "4242"
MARKETS = ("BTC-EUR", "ETH-EUR", "SOL-EUR", "XRP-EUR")
USERS = 400
FLOOR, EXECUTE = "GET /health", "POST /"
MEMORY_FIRST = 100
MEMORY_TARGET = 0.10
START_TIMEOUT = 60.0


# -- the world (not measured) ---------------------------------------------------------------------
class World:
    """Users, allowlists, bench-only limits and a pool of approved proposals in one database."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.url = cluster.url(DATABASE)
        self.users: list[uuid.UUID] = []
        self.tokens: dict[uuid.UUID, str] = {}

    def build(self, users: int) -> None:
        self.users = [uuid.uuid4() for _ in range(users)]
        with psycopg.connect(self.url, autocommit=True) as conn, conn.cursor() as cur:
            cur.executemany("insert into auth.users (id, email, aud, role) values "
                            "(%s, %s, 'authenticated', 'authenticated')",
                            [(u, f"{u.hex[:12]}@bench.test") for u in self.users])
            cur.executemany("insert into public.market_allowlist (market, enabled) "
                            "values (%s, true) on conflict (market) do update set enabled = true",
                            [(m,) for m in MARKETS])
            cur.execute("insert into public.trading_allowlist (user_id, market) "
                        "select u, m from unnest(%s::uuid[]) u, unnest(%s::text[]) m",
                        (self.users, list(MARKETS)))
            # Bench-only limits: every proposal passes its validators.
            cur.execute("update public.trading_settings set trading_enabled = true, "
                        "live_trading_enabled = true, cooldown_seconds = 0, anti_flip_seconds = 0,"
                        " max_trades_per_day = 1000, max_daily_quote = 1000000000 "
                        "where user_id = any(%s)", (self.users,))
            cur.execute("update public.system_controls set live_trading_allowed = true")
        self.tokens = {u: dev_token(JWT_SECRET, u, ttl=6 * 3600) for u in self.users}

    def proposals(self, count: int) -> list[tuple[uuid.UUID, uuid.UUID]]:
        """`count` approved proposals, round-robin over users and markets, buys and sells,
        10–25 EUR each; (proposal id, user id), shuffled so consecutive requests hit different
        users."""
        with psycopg.connect(self.url, autocommit=True) as conn:
            rows = conn.execute("""
                insert into public.trade_proposals (user_id, market, side, amount_quote,
                    confidence, rationale, source, status, expires_at, decided_at, decided_by)
                select (%(users)s::uuid[])[1 + i %% cardinality(%(users)s::uuid[])],
                       (%(markets)s::text[])[1 + (i / cardinality(%(users)s::uuid[]))
                                                  %% cardinality(%(markets)s::text[])],
                       case when i %% 2 = 0 then 'buy' else 'sell' end,
                       10 + (i %% 16), 0.9, 'bench', 'manual', 'approved',
                       now() + interval '1 day', now(), 'user'
                from generate_series(0, %(count)s - 1) i
                returning id, user_id""",
                {"users": self.users, "markets": list(MARKETS), "count": count}).fetchall()
        return [(p, u) for p, u in rows]


# -- the servers (not measured) -------------------------------------------------------------------
def start_sandbox(logs: Path) -> Service:
    balances = {"EUR": "1000000000", "BTC": "100000", "ETH": "1000000", "SOL": "100000000",
                "XRP": "10000000000"}
    port = free_port()
    sandbox = Service("sandbox", [sys.executable, "-m", "sandbox.bitvavo", "--host", "127.0.0.1",
                                  "--port", str(port), "--seed", "42"],
                      env=_base_env({"SANDBOX_BALANCES": json.dumps(balances),
                                     "SANDBOX_RATE_LIMIT": "1000000000"}),
                      port=port, log_path=logs / "sandbox.log", cwd=ROOT, ready_path="/v2/time")
    sandbox.start()
    sandbox.wait_ready(START_TIMEOUT)
    return sandbox


def start_function(mode: str, cluster: Cluster, sandbox: Service, logs: Path) -> Service:
    port = free_port()
    # The trade key's order budget out of the way, like the sandbox's rate limit: this measures
    # the request path (bench/scan_burst.py measures the budget).
    env = {"DATABASE_URL": cluster.url(DATABASE, user="authenticator"),
           "SUPABASE_JWT_SECRET": JWT_SECRET, "SUPABASE_SERVICE_ROLE_KEY": SERVICE_KEY,
           "BITVAVO_REST_URL": f"{sandbox.url}/v2", "TRADING_MODE": mode,
           "ORDER_BUDGET": "1000000"}
    if mode == "live":
        env.update(BITVAVO_TRADE_API_KEY=DEFAULT_TRADE_KEY,
                   BITVAVO_TRADE_API_SECRET=DEFAULT_TRADE_SECRET, BITVAVO_OPERATOR_ID=OPERATOR_ID)
    source = ROOT / "functions" / "trading_execute" / "main.py"
    server = Service(f"trading_execute ({mode})",
                     [sys.executable, "-m", "shared.api.server", "--target", "trading_execute",
                      "--source", str(source), "--host", "127.0.0.1", "--port", str(port)],
                     env=_base_env(env), port=port, log_path=logs / f"trading_execute-{mode}.log",
                     cwd=ROOT, ready_path="/health")
    server.start()
    server.wait_ready(START_TIMEOUT)
    return server


def _base_env(extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR")}
    return {**env, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT), **extra}


def worker_pid(server: Service) -> int:
    """The gunicorn worker serving the function: the only child of the master process."""
    assert server.pid is not None
    children: list[int] = []
    for task in Path(f"/proc/{server.pid}/task").iterdir():
        text = (task / "children").read_text().split()
        children.extend(int(pid) for pid in text)
    if len(children) != 1:
        raise RuntimeError(f"expected one gunicorn worker under {server.pid}, found {children}")
    return children[0]


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


# -- the clients ----------------------------------------------------------------------------------
Request = tuple[str, str, dict[str, str], bytes | None]


def _client(url: str, requests: list[Request], start: Any, out: Any) -> None:
    """One client process: one keep-alive connection, its requests one after the other."""
    latencies: list[float] = []
    statuses: Counter[int] = Counter()
    with httpx.Client(base_url=url, timeout=60.0) as client:
        client.get("/health")  # connect before the start
        start.wait()
        for method, path, headers, body in requests:
            began = time.perf_counter()
            answer = client.request(method, path, headers=headers, content=body)
            latencies.append(time.perf_counter() - began)
            statuses[answer.status_code] += 1
    out.put((latencies, dict(statuses)))


@dataclass
class Run:
    endpoint: str
    clients: int
    seconds: float
    latencies: list[float]
    statuses: dict[int, int]

    @property
    def rate(self) -> float:
        return len(self.latencies) / self.seconds

    @property
    def p50(self) -> float:
        return percentile(self.latencies, 50)

    @property
    def p99(self) -> float:
        return percentile(self.latencies, 99)


def percentile(samples: Sequence[float], p: int) -> float:
    """The p-th percentile in milliseconds (inclusive method)."""
    cuts = statistics.quantiles(samples, n=100, method="inclusive")
    return cuts[p - 1] * 1000


def drive(url: str, endpoint: str, requests: list[Request], clients: int) -> Run:
    """Send `requests` from `clients` processes at once (round-robin split); wall time from the
    common start to the last answer."""
    ctx = mp.get_context("fork")
    start, out = ctx.Event(), ctx.Queue()
    shares = [requests[i::clients] for i in range(clients)]
    procs = [ctx.Process(target=_client, args=(url, share, start, out)) for share in shares]
    for proc in procs:
        proc.start()
    time.sleep(0.3)  # every client connected (each probes /health first)
    began = time.perf_counter()
    start.set()
    results = [out.get(timeout=600) for _ in procs]
    seconds = time.perf_counter() - began
    for proc in procs:
        proc.join(timeout=30)
    latencies = [x for lat, _ in results for x in lat]
    statuses: Counter[int] = Counter()
    for _, counted in results:
        statuses.update(counted)
    return Run(endpoint, clients, seconds, latencies, dict(statuses))


def floor_requests(count: int) -> list[Request]:
    return [("GET", "/health", {}, None)] * count


def execute_requests(world: World, pool: list[tuple[uuid.UUID, uuid.UUID]],
                     count: int) -> list[Request]:
    taken, pool[:] = pool[:count], pool[count:]
    if len(taken) < count:
        raise RuntimeError("the proposal pool ran out; raise --memory-executions")
    return [("POST", "/", {"Authorization": f"Bearer {world.tokens[user]}",
                           "Idempotency-Key": f"bench-{uuid.uuid4()}",
                           "Content-Type": "application/json"},
             json.dumps({"proposal_id": str(proposal)}).encode())
            for proposal, user in taken]


# -- one mode -------------------------------------------------------------------------------------
@dataclass
class ModeResult:
    mode: str
    runs: dict[tuple[str, int], list[Run]] = field(default_factory=dict)
    rss_first: int = 0
    rss_last: int = 0
    executions: int = 0
    problems: list[str] = field(default_factory=list)


def bench_mode(mode: str, world: World, cluster: Cluster, sandbox: Service, logs: Path,
               args: argparse.Namespace) -> ModeResult:
    result = ModeResult(mode)
    pool = world.proposals(args.memory_executions)
    server = start_function(mode, cluster, sandbox, logs)
    try:
        def run(endpoint: str, requests: list[Request], clients: int) -> Run:
            measured = drive(server.url, endpoint, requests, clients)
            wanted = 200 if endpoint == FLOOR else 201
            if set(measured.statuses) != {wanted}:
                result.problems.append(f"{mode} {endpoint} × {clients}: answers "
                                       f"{measured.statuses}, expected only {wanted}")
            if endpoint == EXECUTE:
                result.executions += len(measured.latencies)
            return measured

        # The first 100 with the most clients: every gunicorn thread and pooled connection exists
        # before the first reading, so the growth is what executions leave behind.
        run(EXECUTE, execute_requests(world, pool, MEMORY_FIRST), max(args.clients))
        result.rss_first = rss_kib(worker_pid(server))
        for rep in range(args.repeat):
            for clients in args.clients:
                for endpoint in (FLOOR, EXECUTE) if rep % 2 == 0 else (EXECUTE, FLOOR):
                    requests = (floor_requests(args.floor_requests * max(1, clients // 2))
                                if endpoint == FLOOR else
                                execute_requests(world, pool, args.executions * clients))
                    measured = run(endpoint, requests, clients)
                    result.runs.setdefault((endpoint, clients), []).append(measured)
                    print(f"  {mode:<5} {endpoint:<12} {clients} client(s): "
                          f"{measured.rate:8.1f} req/s, p50 {measured.p50:6.2f} ms, "
                          f"p99 {measured.p99:6.2f} ms", file=sys.stderr, flush=True)
        rest = args.memory_executions - result.executions
        if rest > 0:
            run(EXECUTE, execute_requests(world, pool, rest), max(args.clients))
        result.rss_last = rss_kib(worker_pid(server))
        print(f"  {mode:<5} worker RSS after {MEMORY_FIRST} executions {result.rss_first} KiB, "
              f"after {result.executions:,}: {result.rss_last} KiB", file=sys.stderr, flush=True)
    finally:
        stop_all([server], grace=5)
    return result


# -- the report -----------------------------------------------------------------------------------
def median_run(runs: Sequence[Run]) -> Run:
    return sorted(runs, key=lambda r: r.rate)[len(runs) // 2]


def machine(cluster: Cluster) -> str:
    with psycopg.connect(cluster.url(), autocommit=True) as conn:
        version = conn.execute("show server_version").fetchone()
    cpu = platform.machine()
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    threads = int(os.environ.get("THREADS", (os.cpu_count() or 1) * 4))
    return (f"nproc {os.cpu_count()} ({cpu}); PostgreSQL {version[0] if version else '?'} "
            f"(fsync=off); gunicorn 1 worker × {threads} threads (shared.api.server); "
            f"load average before the run {os.getloadavg()[0]:.2f}")


def print_report(results: Sequence[ModeResult], args: argparse.Namespace, header: str) -> bool:
    print()
    print(header)
    print()
    print(f"{'mode':<6}{'clients':>8}  {'endpoint':<12}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}"
          f"   {'req/s ÷ floor':>14}{'p50 ÷ floor':>13}{'p99 ÷ floor':>13}")
    ok = True
    for result in results:
        for clients in args.clients:
            floor = median_run(result.runs[(FLOOR, clients)])
            execute = median_run(result.runs[(EXECUTE, clients)])
            for run in (floor, execute):
                print(f"{result.mode:<6}{clients:>8}  {run.endpoint:<12}{run.rate:>9.1f}"
                      f"{run.p50:>9.2f}{run.p99:>9.2f}   {run.rate / floor.rate:>13.3f}×"
                      f"{run.p50 / floor.p50:>12.1f}×{run.p99 / floor.p99:>12.1f}×")
    print()
    print(f"{'mode':<6}{'worker RSS after 100':>22}{'after N executions':>22}{'N':>8}"
          f"{'growth':>9}{'ratio':>8}   target: growth ≤ {MEMORY_TARGET:.0%}")
    for result in results:
        growth = result.rss_last / result.rss_first - 1
        met = growth <= MEMORY_TARGET
        ok &= met
        print(f"{result.mode:<6}{f'{result.rss_first / 1024:.1f} MiB':>22}"
              f"{f'{result.rss_last / 1024:.1f} MiB':>22}{result.executions:>8,}"
              f"{growth:>+9.1%}{result.rss_last / result.rss_first:>7.3f}×   "
              f"{'met' if met else 'NOT MET'}")
    problems = [p for r in results for p in r.problems]
    for problem in problems:
        print(f"PROBLEM {problem}")
    print()
    return ok and not problems


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench/http_execute.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--repeat", type=int, default=3, help="runs per cell; the median is shown")
    parser.add_argument("--executions", type=int, default=150,
                        help="executions per client in one measured run")
    parser.add_argument("--floor-requests", type=int, default=600,
                        help="GET /health requests per measured floor run (× clients/2)")
    parser.add_argument("--memory-executions", type=int, default=10_000,
                        help="executions of one server before its RSS is read again")
    parser.add_argument("--modes", nargs="+", default=["paper", "live"],
                        choices=["paper", "live"])
    args = parser.parse_args(argv)
    needed = MEMORY_FIRST + args.repeat * args.executions * sum(args.clients)
    if args.memory_executions < needed:
        parser.error(f"--memory-executions must be at least {needed} (the measured runs)")

    tmp = Path(tempfile.mkdtemp(prefix="aio-bench-http-"))
    tmp.chmod(0o755)
    cluster = Cluster(data_dir=tmp / "cluster", port=free_port(), cron_database=DATABASE,
                      settings=dict(TEST_CLUSTER_SETTINGS))
    sandbox: Service | None = None
    try:
        cluster.init()
        cluster.start()
        cluster.create_database(DATABASE)
        cluster.apply(DATABASE, sql_files(LOCAL_SQL, MIGRATIONS))
        cluster.restart(cron_database="postgres")  # no pg_cron job in the measured database
        world = World(cluster)
        world.build(USERS)
        sandbox = start_sandbox(tmp / "logs")
        header = (f"HTTP execute: trading_execute through functions-framework, {USERS} users × "
                  f"{len(MARKETS)} markets, median of {args.repeat} runs; the floor is GET "
                  f"/health on the same server\n{machine(cluster)}")
        results = [bench_mode(mode, world, cluster, sandbox, tmp / "logs", args)
                   for mode in args.modes]
        return 0 if print_report(results, args, header) else 1
    finally:
        if sandbox is not None:
            stop_all([sandbox], grace=5)
        cluster.destroy()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
