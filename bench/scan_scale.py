"""Scanning at scale: one minute's due scan jobs of 1,000 and 10,000 users × 5 markets.

What runs, as deployed: scan_scheduler through the functions-framework CLI (gunicorn's defaults)
with ORACLE=openai against an OpenAI-compatible fake that answers each call in about a second
(usage reported), the Bitvavo sandbox (its real 1,000-weight budget, the read-only key), and a
throwaway PostgreSQL 15 cluster (the test cluster's fsync=off settings). Every job is due each
minute; a stand-in for Supabase Cron posts the deployed cron body to the function — as many
ticks at once as the deployed schedule starts (CRON_TICKS, the invoke-scan-scheduler job), each
to an instance of its own (a Cloud Functions gen2 instance serves one request at a time by
default: one functions-framework server per tick here) — at the start of each minute (second 1
of the wall-clock minute, as pg_cron fires) until the minute's jobs are drained. The markets: the
sandbox's four liquid ones and THIN-EUR, whose hourly candles have too many gaps to read (no
signal, no model call).

Per load, two minutes: the first (every job proposes: its users have no open proposal yet) and
the second (the market moved a minute; the signals are unchanged, so nothing stacks). Reported:

  drain s          from the first tick's POST until every job due at the minute's start ran
  weight/tick      exchange weight one tick spent (its answer's exchange_weight; ≤ markets + 1)
  snapshots        distinct market snapshots that needed a model answer (private.oracle_answers)
  model calls      requests the fake model received in the minute (target: one per snapshot)
  RPCs/job         database calls the ticks made ÷ jobs they ran (their answers' rpc_calls)
  lag p50/p99 s    scheduling lag, claim − next_run_at, over every job (scan_jobs)
  duplicates       scan jobs with more than one proposal in the minute (target 0), and users with
                   more than one open proposal per (market, side) (target 0)

and how each grows from 1,000 to 10,000 users (target: weight and model calls flat).

Not measured: building the world (users, allowlists, jobs), starting the servers.

    .bench-venv/bin/python bench/scan_scale.py [--users 1000 10000] [--ticks N] [--minutes 2]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script: make `stack`, `sandbox`, `shared` importable
    sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
import psycopg  # noqa: E402

from sandbox.auth import DEFAULT_VIEW_KEY, DEFAULT_VIEW_SECRET  # noqa: E402
from stack.cluster import LOCAL_SQL, MIGRATIONS, Cluster, free_port, sql_files  # noqa: E402
from stack.services import Service, stop_all  # noqa: E402

DATABASE = "bench"
TEST_CLUSTER_SETTINGS = {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}
SERVICE_KEY = "sb_secret_bench-scan-" + "k" * 24
OPENAI_KEY = "sk-bench-scan-" + "o" * 24
MARKETS = ("BTC-EUR", "ETH-EUR", "SOL-EUR", "XRP-EUR", "THIN-EUR")
START_TIMEOUT = 60.0
MINUTE = 60.0
MODEL_LATENCY = 1.0
# What the deployment runs (README, Deployment): the cron body, how many ticks each minute starts,
# and the scanner's own settings.
CRON_BODY: dict[str, Any] = {}
CRON_TICKS = 2
# The scanner's defaults are the deployed settings (TICK_TIME_BUDGET_SECONDS 45,
# FUNCTION_TIMEOUT_SECONDS 150, SCAN_BATCH_SIZE 1000); the model's timeout is named.
DEPLOYED = {"OPENAI_TIMEOUT_SECONDS": "30"}


# -- the fake model (not measured) ----------------------------------------------------------------
class FakeModel:
    """An OpenAI-compatible /v1/chat/completions answering a buy after MODEL_LATENCY seconds."""

    def __init__(self) -> None:
        self.requests = 0
        self._lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:  # noqa: N802
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                with outer._lock:
                    outer.requests += 1
                time.sleep(MODEL_LATENCY)
                answer = json.dumps({
                    "id": "chatcmpl-bench", "object": "chat.completion", "created": 1764331200,
                    "model": body.get("model"),
                    "choices": [{"index": 0, "finish_reason": "stop", "logprobs": None,
                                 "message": {"role": "assistant", "refusal": None, "content":
                                             '{"action":"buy","confidence":0.8,'
                                             '"rationale":"Bench."}'}}],
                    "usage": {"prompt_tokens": 1500, "completion_tokens": 40,
                              "total_tokens": 1540,
                              "prompt_tokens_details": {"cached_tokens": 1024}}}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# -- the world and the servers (not measured) -----------------------------------------------------
def build_world(url: str, users: int) -> None:
    """`users` users, each with the 5 markets allowlisted and one scan job per market, every
    minute, not yet due."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("insert into public.market_allowlist (market, enabled) "
                     "select m, true from unnest(%s::text[]) m on conflict do nothing",
                     (list(MARKETS),))
        conn.execute("insert into auth.users (id, email) select gen_random_uuid(), "
                     "'bench-' || n || '@scan.test' from generate_series(1, %s) n", (users,))
        conn.execute("insert into public.trading_allowlist (user_id, market) "
                     "select u.id, m from auth.users u, unnest(%s::text[]) m", (list(MARKETS),))
        conn.execute("insert into public.scan_jobs (user_id, market, interval_seconds, "
                     "next_run_at) select user_id, market, 60, now() + interval '1 hour' "
                     "from public.trading_allowlist")
        conn.execute("update public.trading_settings set trading_enabled = true")
        conn.execute("vacuum analyze")


def base_env(extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR")}
    return {**env, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT), **extra}


def start_sandbox(logs: Path) -> Service:
    port = free_port()
    sandbox = Service("sandbox", [sys.executable, "-m", "sandbox.bitvavo", "--host", "127.0.0.1",
                                  "--port", str(port), "--seed", "42"],
                      env=base_env({}), port=port, log_path=logs / "sandbox.log", cwd=ROOT,
                      ready_path="/v2/time")
    sandbox.start()
    sandbox.wait_ready(START_TIMEOUT)
    return sandbox


def start_scanner(cluster: Cluster, sandbox: Service, model: FakeModel, logs: Path,
                  n: int) -> Service:
    port = free_port()
    env = {"DATABASE_URL": cluster.url(DATABASE, user="authenticator"),
           "SUPABASE_SERVICE_ROLE_KEY": SERVICE_KEY, "BITVAVO_REST_URL": f"{sandbox.url}/v2",
           "BITVAVO_READONLY_API_KEY": DEFAULT_VIEW_KEY,
           "BITVAVO_READONLY_API_SECRET": DEFAULT_VIEW_SECRET, "ORACLE": "openai",
           "OPENAI_API_KEY": OPENAI_KEY, "OPENAI_BASE_URL": model.url,
           "OPENAI_MODEL": "gpt-4o-mini", **DEPLOYED}
    source = ROOT / "functions" / "scan_scheduler" / "main.py"
    server = Service(f"scan_scheduler {n}",
                     [sys.executable, "-m", "functions_framework", "--target", "scan_scheduler",
                      "--source", str(source), "--host", "127.0.0.1", "--port", str(port)],
                     env=base_env(env), port=port, log_path=logs / f"scan_scheduler-{n}.log",
                     cwd=ROOT)
    server.start()
    server.wait_ready(START_TIMEOUT)
    return server


# -- one minute -----------------------------------------------------------------------------------
@dataclass
class Minute:
    users: int
    number: int
    jobs: int
    drain_s: float = 0.0
    ticks: list[dict[str, Any]] = field(default_factory=list)
    model_calls: int = 0
    snapshots: int = 0
    lag_p50_s: float = 0.0
    lag_p99_s: float = 0.0
    duplicate_jobs: int = 0
    stacked: int = 0
    proposals: int = 0
    drained: bool = True

    @property
    def weight_per_tick(self) -> int:
        return max((t["exchange_weight"] for t in self.ticks), default=0)

    @property
    def rpcs_per_job(self) -> float:
        ran = sum(t["claimed"] for t in self.ticks)
        return sum(t["rpc_calls"] for t in self.ticks) / ran if ran else 0.0


def run_minute(url: str, scanners: list[Service], sandbox: Service, model: FakeModel, users: int,
               number: int) -> Minute:
    # pg_cron fires on the minute: start one second into a wall-clock minute (the sandbox's market
    # clock is ahead by whole minutes, so its minutes begin with the wall clock's).
    time.sleep((61 - time.time() % 60) % 60)
    with psycopg.connect(url, autocommit=True) as conn:
        # The market moved a minute (new snapshots), and every job falls due now.
        httpx.post(f"{sandbox.url}/_sandbox/clock", json={"advance_ms": 60_000}, timeout=10)
        conn.execute("update public.scan_jobs set next_run_at = now()")
        due_at = conn.execute("select now()").fetchone()[0]  # type: ignore[index]
        jobs = conn.execute("select count(*) from public.scan_jobs").fetchone()[0]  # type: ignore[index]
    minute = Minute(users, number, jobs)
    calls_before = model.requests
    answers: list[dict[str, Any]] = []
    lock = threading.Lock()

    def fire(scanner: Service) -> None:
        answer = httpx.post(f"{scanner.url}/", json=CRON_BODY, timeout=300,
                            headers={"Authorization": f"Bearer {SERVICE_KEY}"})
        with lock:
            answers.append(answer.json() | {"http_status": answer.status_code})

    started = time.perf_counter()
    threads: list[threading.Thread] = []
    next_cron = started
    with psycopg.connect(url, autocommit=True) as conn:
        while True:
            now = time.perf_counter()
            if now >= next_cron and now - started < 4 * MINUTE:
                for scanner in scanners:
                    thread = threading.Thread(target=fire, args=(scanner,))
                    thread.start()
                    threads.append(thread)
                next_cron += MINUTE
            left = conn.execute("select count(*) from public.scan_jobs "
                                "where last_run_at is null or last_run_at < %s",
                                (due_at,)).fetchone()[0]  # type: ignore[index]
            if left == 0:
                minute.drain_s = time.perf_counter() - started
                break
            if now - started > 5 * MINUTE:
                minute.drained, minute.drain_s = False, now - started
                break
            time.sleep(0.2)
        for thread in threads:
            thread.join(timeout=300)
        minute.ticks = [a for a in answers if a.get("claimed")]
        minute.model_calls = model.requests - calls_before
        minute.snapshots = conn.execute(
            "select count(*) from private.oracle_answers where oracle = 'openai' "
            "and created_at >= %s", (due_at,)).fetchone()[0]  # type: ignore[index]
        lag = conn.execute("select percentile_disc(0.5) within group (order by "
                           "last_claim_lag_seconds), percentile_disc(0.99) within group (order "
                           "by last_claim_lag_seconds) from public.scan_jobs").fetchone()
        assert lag is not None
        minute.lag_p50_s, minute.lag_p99_s = float(lag[0]), float(lag[1])
        minute.duplicate_jobs = conn.execute(
            "select count(*) from (select scan_job_id from public.trade_proposals "
            "where created_at >= %s group by 1 having count(*) > 1) d",
            (due_at,)).fetchone()[0]  # type: ignore[index]
        minute.stacked = conn.execute(
            "select count(*) from (select user_id, market, side from public.trade_proposals "
            "where status in ('pending', 'approved') group by 1, 2, 3 having count(*) > 1) s"
        ).fetchone()[0]  # type: ignore[index]
        minute.proposals = conn.execute(
            "select count(*) from public.trade_proposals where created_at >= %s",
            (due_at,)).fetchone()[0]  # type: ignore[index]
    problems = [a for a in answers if a["http_status"] != 200]
    if problems:
        raise RuntimeError(f"ticks answered {problems[:3]}")
    return minute


def run_load(users: int, minutes: int, tmp: Path) -> list[Minute]:
    cluster = Cluster(data_dir=tmp / f"cluster-{users}", port=free_port(), cron_database=DATABASE,
                      settings=dict(TEST_CLUSTER_SETTINGS))
    services: list[Service] = []
    model = FakeModel()
    try:
        cluster.init()
        cluster.start()
        cluster.create_database(DATABASE)
        cluster.apply(DATABASE, sql_files(LOCAL_SQL, MIGRATIONS))
        cluster.restart(cron_database="postgres")  # no pg_cron job in the measured database
        url = cluster.url(DATABASE)
        build_world(url, users)
        logs = tmp / f"logs-{users}"
        sandbox = start_sandbox(logs)
        services.append(sandbox)
        scanners = [start_scanner(cluster, sandbox, model, logs, n) for n in range(CRON_TICKS)]
        services.extend(scanners)
        result = []
        for number in range(1, minutes + 1):
            minute = run_minute(url, scanners, sandbox, model, users, number)
            print(f"  {users:>6} users, minute {number}: {minute.jobs:,} jobs drained in "
                  f"{minute.drain_s:.1f} s by {len(minute.ticks)} ticks, weight/tick "
                  f"{minute.weight_per_tick}, snapshots {minute.snapshots}, model calls "
                  f"{minute.model_calls}, RPCs/job "
                  f"{minute.rpcs_per_job:.4f}, lag p50 {minute.lag_p50_s:.1f} s p99 "
                  f"{minute.lag_p99_s:.1f} s, proposals {minute.proposals:,}",
                  file=sys.stderr, flush=True)
            result.append(minute)
        return result
    finally:
        stop_all(services, grace=5)
        model.stop()
        cluster.destroy()


# -- the report -----------------------------------------------------------------------------------
def machine() -> str:
    cpu = platform.machine()
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    return (f"nproc {os.cpu_count()} ({cpu}); PostgreSQL 15 (fsync=off); scan_scheduler: "
            f"functions-framework (gunicorn defaults), {CRON_TICKS} ticks per cron minute (an "
            f"instance each), "
            f"{', '.join(f'{k}={v}' for k, v in DEPLOYED.items())}; model latency "
            f"{MODEL_LATENCY:.0f} s; load average before the run {os.getloadavg()[0]:.2f}")


def print_report(results: dict[int, list[Minute]]) -> bool:
    print()
    print(f"Scanning at scale: one minute's due jobs, {len(MARKETS)} markets, ORACLE=openai, "
          "the sandbox\n" + machine())
    print()
    print(f"{'users':>7}{'min':>4}{'jobs':>8}{'drain s':>9}{'ticks':>6}{'weight/tick':>12}"
          f"{'snapshots':>10}{'model calls':>12}{'RPCs/job':>10}{'lag p50 s':>10}"
          f"{'lag p99 s':>10}{'proposals':>10}{'dup':>5}{'stacked':>8}")
    ok = True
    for users, minutes in results.items():
        for m in minutes:
            print(f"{users:>7}{m.number:>4}{m.jobs:>8,}{m.drain_s:>9.1f}{len(m.ticks):>6}"
                  f"{m.weight_per_tick:>12}{m.snapshots:>10}{m.model_calls:>12}"
                  f"{m.rpcs_per_job:>10.4f}"
                  f"{m.lag_p50_s:>10.1f}{m.lag_p99_s:>10.1f}{m.proposals:>10,}"
                  f"{m.duplicate_jobs:>5}{m.stacked:>8}")
            ok &= (m.drained and m.duplicate_jobs == 0 and m.stacked == 0
                   and m.weight_per_tick <= len(MARKETS) + 1 and m.rpcs_per_job <= 0.1
                   and m.model_calls == m.snapshots)
    loads = sorted(results)
    if len(loads) >= 2:
        small, large = results[loads[0]], results[loads[-1]]
        print()
        print(f"growth from {loads[0]:,} to {loads[-1]:,} users (×{loads[-1] / loads[0]:g}), "
              "per minute:")
        for n, (a, b) in enumerate(zip(small, large, strict=False), start=1):
            print(f"  minute {n}: drain ×{b.drain_s / a.drain_s:.2f}, weight/tick "
                  f"×{b.weight_per_tick / max(a.weight_per_tick, 1):.2f}, model calls "
                  f"×{b.model_calls / max(a.model_calls, 1):.2f}, RPCs/job "
                  f"×{b.rpcs_per_job / a.rpcs_per_job:.2f}, lag p99 "
                  f"×{b.lag_p99_s / max(a.lag_p99_s, 0.001):.2f}")
            ok &= b.weight_per_tick <= a.weight_per_tick and b.model_calls <= a.model_calls
    large = results[loads[-1]]
    target = all(m.drain_s <= MINUTE for m in large)
    print(f"\ntarget: every load drains one minute's jobs within the minute — "
          f"{'met' if target else 'NOT MET'} at {loads[-1]:,} users")
    print()
    return ok


def main(argv: Sequence[str] | None = None) -> int:
    global CRON_TICKS
    parser = argparse.ArgumentParser(prog="bench/scan_scale.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--minutes", type=int, default=2)
    parser.add_argument("--ticks", type=int, default=CRON_TICKS,
                        help="ticks each cron minute starts (the deployed schedule's)")
    args = parser.parse_args(argv)
    CRON_TICKS = args.ticks
    tmp = Path(tempfile.mkdtemp(prefix="aio-bench-scan-"))
    tmp.chmod(0o755)
    try:
        results = {users: run_load(users, args.minutes, tmp) for users in args.users}
        return 0 if print_report(results) else 1
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
