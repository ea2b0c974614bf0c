"""Scheduler vs its peers: jobs/second for claim + release (the target: twice the better peer).

Every number below is measured in the same run, on the same throwaway PostgreSQL 15 cluster
(stack/cluster.py's Cluster, the test cluster's settings unless --durable), each system in its
own database, each drained by N workers from a queue of due jobs; the machine is shared, so only
the ratios printed next to the numbers mean anything.

  ours            claim_due_scan_jobs(p_limit = batch) + release_job_locks (one call per batch),
                  each RPC one PostgREST-style transaction as service_role (role and
                  request.jwt.claims set with set_config(…, true) in that transaction) over one
                  round trip, through shared.rpc.direct.DirectRpc (bench/rpc.py), the adapter
                  the functions use.
                  With the 5,000-job run also "ours, release per job": the same claim, then
                  release_job_lock once per job, as before the batch form existed.
  procrastinate   Procrastinate's own schema and SQL functions (from the installed package):
                  procrastinate_fetch_job_v2 then procrastinate_finish_job_v1 per job, its
                  fetch_job / finish_job queries, autocommit, the same psycopg connections.
  graphile        graphile-worker's own runner (bench/graphile_worker.mjs), a no-op task with
                  concurrency N; default fetch, and batched (local queue of `batch` jobs,
                  completions batched).

N workers = N processes with one connection each (ours, procrastinate) or one graphile-worker
runner with concurrency N. A job handled twice is a duplicate; every job must be handled once
(checked in each system's own tables afterwards).

    .bench-venv/bin/python bench/scheduler.py [--jobs 20000 5000] [--workers 1 4 8]
                                              [--batch 100] [--repeat 1] [--durable]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script: make `scripts` and `bench` importable
    sys.path.insert(0, str(ROOT))

import psycopg  # noqa: E402

from bench.measure import TEST_CLUSTER_SETTINGS, machine  # noqa: E402
from bench.rpc import FLOOR_SQL, open_port  # noqa: E402
from stack.cluster import LOCAL_SQL, MIGRATIONS, Cluster, free_port, sql_files  # noqa: E402

GRAPHILE_SCRIPT = ROOT / "bench" / "graphile_worker.mjs"
MARKETS = 100
OURS, OURS_SINGLE, PROCRASTINATE = "ours", "ours, release per job", "procrastinate"
GRAPHILE, GRAPHILE_BATCHED = "graphile", "graphile batched"
ALL_SYSTEMS = (OURS, OURS_SINGLE, PROCRASTINATE, GRAPHILE, GRAPHILE_BATCHED)


@dataclass
class Result:
    system: str
    jobs: int
    workers: int
    seconds: float
    handled: int
    duplicates: int
    round_trips: int | None = None
    problems: list[str] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.handled / self.seconds if self.seconds > 0 else 0.0


# -- workers (one process each; they connect, wait for the start, drain, report) -------------
def _ours_worker(url: str, name: str, batch: int, per_job: bool, start: Any, out: Any) -> None:
    port = open_port(url)
    port.call("bench_floor", {"p_user_id": None})  # connected before the start, like the peers
    ids: list[str] = []
    calls = 0  # DirectRpc: one round trip per call
    start.wait()
    t0 = time.monotonic()
    while True:
        rows = port.rows("claim_due_scan_jobs",
                         {"p_worker_id": name, "p_limit": batch, "p_lock_seconds": 300})
        calls += 1
        if not rows:
            break
        claimed = [str(r["id"]) for r in rows]
        ids.extend(claimed)
        if per_job:
            for job_id in claimed:
                answer = port.call("release_job_lock", {"p_job_id": job_id, "p_worker_id": name,
                                                        "p_succeeded": True})
                assert answer["released"], answer
            calls += len(claimed)
        else:
            answer = port.call("release_job_locks", {
                "p_worker_id": name,
                "p_results": [{"job_id": j, "succeeded": True} for j in claimed]})
            assert answer["released_count"] == len(claimed), answer
            calls += 1
    t1 = time.monotonic()
    out.put((t0, t1, ids, calls))
    port.close()


def _procrastinate_worker(url: str, name: str, batch: int, per_job: bool, start: Any,
                          out: Any) -> None:
    from procrastinate.sql import queries  # the installed package's own SQL, not a copy

    ids: list[int] = []
    round_trips = 0
    with psycopg.connect(url, autocommit=True) as conn:
        worker_id = conn.execute("select procrastinate_register_worker_v1()").fetchone()[0]  # type: ignore[index]
        start.wait()
        t0 = time.monotonic()
        while True:
            row = conn.execute(queries["fetch_job"],
                               {"queues": None, "worker_id": worker_id}).fetchone()
            round_trips += 1
            if row is None or row[0] is None:
                break
            ids.append(row[0])
            conn.execute(queries["finish_job"],
                         {"job_id": row[0], "status": "succeeded", "delete_job": False})
            round_trips += 1
        t1 = time.monotonic()
    out.put((t0, t1, ids, round_trips))


def _drain_with_processes(system: str, url: str, jobs: int, workers: int, batch: int,
                          target: Callable[..., None], per_job: bool = False) -> Result:
    ctx = mp.get_context("spawn")
    start = ctx.Barrier(workers + 1)
    out = ctx.Queue()
    procs = [ctx.Process(target=target, args=(url, f"bench-{system}-{i}-{os.getpid()}", batch,
                                             per_job, start, out))
             for i in range(workers)]
    for p in procs:
        p.start()
    start.wait(timeout=120)
    reports = [out.get(timeout=900) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    failed = [p.exitcode for p in procs if p.exitcode != 0]
    if failed:
        raise RuntimeError(f"{system}: a worker process failed (exit codes {failed})")
    every = [j for _, _, ids, _ in reports for j in ids]
    seconds = max(r[1] for r in reports) - min(r[0] for r in reports)
    unique = len(set(every))
    result = Result(system, jobs, workers, seconds, len(every), len(every) - unique,
                    sum(r[3] for r in reports))
    if unique != jobs:
        result.problems.append(f"{jobs - unique} jobs never handled")
    return result


# -- the three systems ------------------------------------------------------------------------
class Bench:
    def __init__(self, cluster: Cluster, max_jobs: int, batch: int) -> None:
        self.cluster = cluster
        self.batch = batch
        self.max_jobs = max_jobs

    def sql(self, database: str, query: str, params: Any = None) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.cluster.url(database), autocommit=True) as conn:
            cur = conn.execute(query, params)
            return cur.fetchall() if cur.description else []

    def settle(self, database: str, table: str) -> None:
        """Same starting line for everyone: fresh statistics, no dead rows, a checkpoint."""
        self.sql(database, f"vacuum (analyze) {table}")
        self.sql(database, "checkpoint")

    # -- set-up ---------------------------------------------------------------------------
    def install(self) -> None:
        c = self.cluster
        c.create_database("ours")
        c.apply("ours", sql_files(LOCAL_SQL, MIGRATIONS))
        c.psql("ours", sql=FLOOR_SQL)
        users = -(-self.max_jobs // MARKETS)
        self.sql("ours", "insert into public.market_allowlist (market, enabled) "
                         "select 'M' || g || '-EUR', true from generate_series(1, %s) g",
                 (MARKETS,))
        self.sql("ours", "insert into auth.users (id, email) select gen_random_uuid(), "
                         "'bench' || g || '@example.test' from generate_series(1, %s) g", (users,))
        self.sql("ours", "insert into public.trading_allowlist (user_id, market) "
                         "select u.id, m.market "
                         "from auth.users u cross join public.market_allowlist m")

        from procrastinate.schema import SchemaManager

        c.create_database("procrastinate")
        with tempfile.NamedTemporaryFile("w", suffix=".sql", delete=False) as f:
            f.write(SchemaManager.get_schema())
        try:
            Path(f.name).chmod(0o644)
            c.psql("procrastinate", file=Path(f.name))
        finally:
            os.unlink(f.name)

        c.create_database("graphile")
        subprocess.run(["node", str(GRAPHILE_SCRIPT), "migrate",
                        json.dumps({"url": c.url("graphile")})], check=True, cwd=ROOT)

    # -- ours -----------------------------------------------------------------------------
    def seed_ours(self, jobs: int) -> None:
        self.sql("ours", "delete from public.scan_jobs")
        self.sql("ours", "insert into public.scan_jobs "
                         "(user_id, market, interval_seconds, next_run_at) "
                         "select user_id, market, 600, now() - random() * interval '1 hour' "
                         "from public.trading_allowlist order by user_id, market limit %s", (jobs,))
        self.settle("ours", "public.scan_jobs")

    def run_ours(self, jobs: int, workers: int, *, per_job: bool = False) -> Result:
        self.seed_ours(jobs)
        url = self.cluster.url("ours", user="authenticator")
        result = _drain_with_processes(OURS_SINGLE if per_job else OURS, url, jobs, workers,
                                       self.batch, _ours_worker, per_job)
        (total, lo, hi, locked, unreleased), = self.sql(
            "ours", "select count(*), min(attempts), max(attempts), count(locked_by), "
                    "count(*) filter (where last_success_at is null) from public.scan_jobs")
        if (total, lo, hi, locked, unreleased) != (jobs, 1, 1, 0, 0):
            result.problems.append(f"scan_jobs: {total} jobs, attempts {lo}..{hi}, "
                                   f"{locked} still leased, {unreleased} not released")
        return result

    # -- procrastinate --------------------------------------------------------------------
    def seed_procrastinate(self, jobs: int) -> None:
        self.sql("procrastinate", "truncate procrastinate_jobs, procrastinate_workers "
                                  "restart identity cascade")
        self.sql("procrastinate",
                 "select procrastinate_defer_jobs_v1(array(select row('default', 'noop', 0, null, "
                 "null, '{}'::jsonb, null)::procrastinate_job_to_defer_v1 "
                 "from generate_series(1, %s)))", (jobs,))
        self.settle("procrastinate", "procrastinate_jobs")

    def run_procrastinate(self, jobs: int, workers: int) -> Result:
        self.seed_procrastinate(jobs)
        result = _drain_with_processes(PROCRASTINATE, self.cluster.url("procrastinate"), jobs,
                                       workers, 1, _procrastinate_worker)
        (done, hi), = self.sql("procrastinate",
                               "select count(*) filter (where status = 'succeeded'), "
                               "max(attempts) from procrastinate_jobs")
        if (done, hi) != (jobs, 1):
            result.problems.append(f"procrastinate_jobs: {done} succeeded, max attempts {hi}")
        return result

    # -- graphile-worker ------------------------------------------------------------------
    def seed_graphile(self, jobs: int) -> None:
        self.sql("graphile", "truncate graphile_worker._private_jobs, "
                             "graphile_worker._private_job_queues cascade")
        self.sql("graphile",
                 "select count(*) from graphile_worker.add_jobs(array(select row('noop', "
                 "'{}'::json, null, null, null, null, null, null)::graphile_worker.job_spec "
                 "from generate_series(1, %s)))", (jobs,))
        self.settle("graphile", "graphile_worker._private_jobs")

    def run_graphile(self, jobs: int, workers: int, *, batched: bool) -> Result:
        self.seed_graphile(jobs)
        options = {"url": self.cluster.url("graphile"), "concurrency": workers,
                   "batch": self.batch if batched else None}
        proc = subprocess.run(["node", str(GRAPHILE_SCRIPT), "drain", json.dumps(options)],
                              capture_output=True, text=True, cwd=ROOT, timeout=900, check=False)
        if proc.returncode != 0 or proc.stderr.strip():
            raise RuntimeError(f"graphile-worker failed ({proc.returncode}): {proc.stderr[-2000:]}")
        report = json.loads(proc.stdout.strip().splitlines()[-1])
        result = Result(GRAPHILE_BATCHED if batched else GRAPHILE, jobs, workers,
                        report["seconds"], report["handled"], report["duplicates"])
        if report["unique"] != jobs:
            result.problems.append(f"{jobs - report['unique']} jobs never handled")
        left = self.sql("graphile", "select count(*) from graphile_worker._private_jobs")[0][0]
        if left:
            result.problems.append(f"{left} jobs left in graphile_worker._private_jobs")
        return result


# -- the report -------------------------------------------------------------------------------
def median_result(runs: Sequence[Result]) -> Result:
    """The run with the median rate; duplicates and problems summed over every repeat."""
    ordered = sorted(runs, key=lambda r: r.rate)
    pick = ordered[len(ordered) // 2]
    return Result(pick.system, pick.jobs, pick.workers, pick.seconds, pick.handled,
                  sum(r.duplicates for r in runs), pick.round_trips,
                  [p for r in runs for p in r.problems])


def print_report(results: dict[tuple[int, int, str], Result], jobs_list: Sequence[int],
                 workers_list: Sequence[int], header: str) -> bool:
    print()
    print(header)
    print()
    systems = [OURS, OURS_SINGLE, PROCRASTINATE, GRAPHILE, GRAPHILE_BATCHED]
    labels = ["ours (batch)", "ours 1-by-1", "procrastinate", "graphile", "graphile batch"]
    width = 16
    print(f"{'':>15}" + "".join(f"{label:>{width}}" for label in labels)
          + f"   {'ours/procr.':>11}   ours/best peer")
    print(f"{'jobs':>7} {'workers':>7}" + "".join(f"{'jobs/s dup':>{width}}" for _ in systems))
    ok = True
    for jobs in jobs_list:
        for workers in workers_list:
            cells = []
            for s in systems:
                r = results.get((jobs, workers, s))
                cells.append(f"{'-':>{width}}" if r is None
                             else f"{r.rate:>{width - 4},.0f} {r.duplicates:>3}")
            ours = results.get((jobs, workers, OURS))
            procr = results.get((jobs, workers, PROCRASTINATE))
            peers = [results[(jobs, workers, s)]
                     for s in (PROCRASTINATE, GRAPHILE, GRAPHILE_BATCHED)
                     if (jobs, workers, s) in results]
            best = max(peers, key=lambda r: r.rate) if peers else None
            vs_procr = ours.rate / procr.rate if ours and procr else None
            vs_best = ours.rate / best.rate if ours and best else None
            print(f"{jobs:>7,} {workers:>7} {''.join(cells)}   "
                  + (f"{vs_procr:>10.2f}x " if vs_procr else f"{'-':>11} ")
                  + (f"{vs_best:>6.2f}x ({best.system})" if vs_best and best else "-"))
            if workers in (4, 8) and (vs_procr is None or vs_best is None
                                      or vs_procr < 2 or vs_best < 2):
                ok = False
    print()
    trips = {r.system: r.round_trips / r.handled for r in results.values()
             if r.round_trips and r.handled}
    print("database round trips per job (counted by the client; DirectRpc and autocommit "
          "queries are one round trip each): "
          + ", ".join(f"{name} {value:.2f}" for name, value in trips.items()))
    dups = sum(r.duplicates for r in results.values())
    problems = [f"{k}: {p}" for k, r in results.items() for p in r.problems]
    print(f"duplicates over every system and run: {dups}")
    for p in problems:
        print(f"PROBLEM {p}")
    target = "met" if ok and not dups and not problems else "NOT met"
    print(f"target (ours >= 2x Procrastinate and >= 2x the best peer at 4 and 8 workers, "
          f"0 duplicates): {target}")
    return not dups and not problems


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench/scheduler.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, nargs="+", default=[20_000, 5_000])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--batch", type=int, default=100,
                        help="jobs per claim (ours) and graphile-worker's local queue size")
    parser.add_argument("--repeat", type=int, default=1, help="runs per cell; the median is shown")
    parser.add_argument("--systems", nargs="+", default=None, metavar="NAME",
                        help=f"only these (profiling); default all of: {', '.join(ALL_SYSTEMS)}")
    parser.add_argument("--durable", action="store_true",
                        help="PostgreSQL's default durability (fsync, synchronous_commit on) "
                             "instead of the test cluster's fsync=off settings")
    args = parser.parse_args(argv)

    tmp = Path(tempfile.mkdtemp(prefix="aio-bench-"))
    tmp.chmod(0o755)
    settings = {} if args.durable else dict(TEST_CLUSTER_SETTINGS)
    cluster = Cluster(data_dir=tmp / "cluster", port=free_port(), cron_database="ours",
                      settings=settings)
    results: dict[tuple[int, int, str], list[Result]] = {}
    try:
        cluster.init()
        cluster.start()
        bench = Bench(cluster, max(args.jobs), args.batch)
        bench.install()
        # pg_cron runs the maintenance job in `ours` only while it is the cron database.
        cluster.restart(cron_database="postgres")
        durability = ("PostgreSQL's defaults (durable)" if args.durable
                      else f"the test cluster's {TEST_CLUSTER_SETTINGS}")
        header = (f"Scheduler vs its peers: claim + release, due jobs drained by N workers, "
                  f"batch {args.batch}, median of {args.repeat}\n{machine(cluster)}\n"
                  f"cluster settings: {durability}")
        runs: list[tuple[int, int, str, Callable[[], Result]]] = []
        for jobs in args.jobs:
            for workers in args.workers:
                def cell(j: int = jobs, w: int = workers) -> list[tuple[str, Callable[[], Result]]]:
                    cells = [(OURS, lambda: bench.run_ours(j, w)),
                             (PROCRASTINATE, lambda: bench.run_procrastinate(j, w)),
                             (GRAPHILE, lambda: bench.run_graphile(j, w, batched=False)),
                             (GRAPHILE_BATCHED, lambda: bench.run_graphile(j, w, batched=True))]
                    if j == min(args.jobs):
                        cells.append((OURS_SINGLE, lambda: bench.run_ours(j, w, per_job=True)))
                    return cells
                for name, fn in cell():
                    if args.systems is None or name in args.systems:
                        runs.append((jobs, workers, name, fn))
        for rep in range(args.repeat):
            # Interleaved, and rotated per repeat, so a noisy minute does not hit one system only.
            order = runs[rep % len(runs):] + runs[:rep % len(runs)] if rep else runs
            for jobs, workers, name, fn in order:
                r = fn()
                results.setdefault((jobs, workers, name), []).append(r)
                print(f"  {name:<22} {jobs:>6,} jobs {workers} workers: {r.rate:>9,.0f} jobs/s "
                      f"({r.seconds:.2f} s, {r.duplicates} duplicates)", flush=True)
        medians = {k: median_result(v) for k, v in results.items()}
        return 0 if print_report(medians, args.jobs, args.workers, header) else 1
    finally:
        cluster.destroy()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
