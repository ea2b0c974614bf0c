"""What the benchmarks share: the throwaway cluster, the machine line, percentiles, clients.

Every benchmark runs on its own throwaway PostgreSQL 15 cluster (stack.cluster.Cluster) with
the test cluster's settings (fsync, synchronous_commit and full_page_writes off) unless it is asked
for PostgreSQL's durable defaults, and prints the machine and the settings above its table. The
machine is shared with other work, so a benchmark prints no time without the ratio to a floor or a
peer measured in the same run.

Clients are processes, one connection each, started and connected before a barrier releases them
all at once: a Python client spends a good part of a call's time in Python, and threads would queue
on the GIL instead of on what is being measured.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import platform
import shutil
import statistics
import tempfile
import threading
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

import psycopg
from psycopg.sql import Composed

from stack.cluster import Cluster, free_port

TEST_CLUSTER_SETTINGS = {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}
SHOWN_SETTINGS = ("shared_buffers", "fsync", "synchronous_commit", "full_page_writes", "wal_level",
                  "max_wal_size", "autovacuum", "shared_preload_libraries")


@contextmanager
def throwaway_cluster(*, durable: bool, cron_database: str,
                      statements: bool = False) -> Iterator[Cluster]:
    """A started cluster in a temporary folder, destroyed (folder and all) on the way out;
    `statements` preloads pg_stat_statements (top-level statements only) for ServerTime."""
    tmp = Path(tempfile.mkdtemp(prefix="aio-bench-"))
    tmp.chmod(0o755)
    settings = {} if durable else dict(TEST_CLUSTER_SETTINGS)
    if statements:
        settings |= {"shared_preload_libraries": "pg_cron,pg_stat_statements",
                     "pg_stat_statements.track": "top"}
    cluster = Cluster(data_dir=tmp / "cluster", port=free_port(), cron_database=cron_database,
                      settings=settings)
    try:
        cluster.init()
        cluster.start()
        yield cluster
    finally:
        cluster.destroy()
        shutil.rmtree(tmp, ignore_errors=True)


def durability(durable: bool) -> str:
    return ("PostgreSQL's defaults (durable)" if durable
            else f"the test cluster's {TEST_CLUSTER_SETTINGS}")


def machine(cluster: Cluster) -> str:
    """nproc, CPU model, PostgreSQL version and the settings that move the numbers."""
    with psycopg.connect(cluster.url(), autocommit=True) as conn:
        version = conn.execute("show server_version").fetchone()[0]  # type: ignore[index]
        shown = {n: conn.execute(f"show {n}").fetchone()[0]  # type: ignore[index]
                 for n in SHOWN_SETTINGS}
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    settings = ", ".join(f"{k}={v}" for k, v in shown.items())
    return (f"nproc {os.cpu_count()} ({cpu}); PostgreSQL {version}; {settings}; "
            f"load average before the run {os.getloadavg()[0]:.2f}")


def sql(cluster: Cluster, database: str, query: str | Composed,
        params: Any = None) -> list[tuple[Any, ...]]:
    """One statement as the superuser, autocommit (set-up and inspection, never measured)."""
    with psycopg.connect(cluster.url(database), autocommit=True) as conn:
        cur = conn.execute(query, params)
        return cur.fetchall() if cur.description else []


# -- statistics -------------------------------------------------------------------------------
def percentile(values: Sequence[float], q: float) -> float:
    """The nearest-rank percentile (q in 0..100) of the values; 0 for none."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * q // 100))  # ceil(n·q/100), at least the first
    return ordered[int(rank) - 1]


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else 0.0


# -- client processes ---------------------------------------------------------------------------
class Sampler(Protocol):
    def start(self) -> None: ...

    def stop(self) -> None: ...


def run_clients(target: Callable[..., None], per_client: Sequence[tuple[Any, ...]], *,
                phases: int = 1, samplers: Sequence[Sequence[Sampler]] = (),
                timeout: float = 900) -> list[list[Any]]:
    """One process per argument tuple runs `target(*args, start, out)`: it connects, then for each
    phase waits on `start` (a barrier the parent joins, so every client begins the phase at the
    same moment), works, and puts one report on `out`. Returns each phase's reports; a phase's
    samplers run in the parent while that phase runs."""
    ctx = mp.get_context("spawn")
    start = ctx.Barrier(len(per_client) + 1)
    out = ctx.Queue()
    procs = [ctx.Process(target=target, args=(*args, start, out)) for args in per_client]
    for p in procs:
        p.start()
    results: list[list[Any]] = []
    try:
        for phase in range(phases):
            watching = samplers[phase] if phase < len(samplers) else ()
            start.wait(timeout=180)
            for sampler in watching:
                sampler.start()
            try:
                results.append([out.get(timeout=timeout) for _ in procs])
            finally:
                for sampler in watching:
                    sampler.stop()
    finally:
        for p in procs:
            p.join(timeout=60)
            if p.is_alive():
                p.kill()
                p.join()
    failed = [p.exitcode for p in procs if p.exitcode != 0]
    if failed:
        raise RuntimeError(f"a client process failed (exit codes {failed})")
    return results


class WaitSampler:
    """Samples what the database's active client backends wait on, every `interval` seconds, from
    its own connection, while a phase runs: the evidence that clients of different users do not
    queue on one lock (wait_event_type `Lock`: a heavyweight lock — row, advisory, transaction id;
    `LWLock`: a shared-memory latch such as a buffer's content lock or WAL insertion)."""

    def __init__(self, url: str, database: str, interval: float = 0.01) -> None:
        self.url = url
        self.database = database
        self.interval = interval
        self.samples = 0                      # active backends seen, over every poll
        self.waits: Counter[str] = Counter()  # "<type>:<event>" → backends seen waiting on it
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="wait-sampler", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def share(self, wait_type: str) -> float:
        """The fraction of active-backend samples waiting on a `wait_type` wait."""
        seen = sum(n for key, n in self.waits.items() if key.startswith(f"{wait_type}:"))
        return seen / self.samples if self.samples else 0.0

    def _run(self) -> None:
        with psycopg.connect(self.url, autocommit=True) as conn:
            while not self._stop.wait(self.interval):
                rows = conn.execute(
                    "select wait_event_type, wait_event from pg_stat_activity "
                    "where datname = %s and backend_type = 'client backend' and state = 'active' "
                    "and pid <> pg_backend_pid()", (self.database,)).fetchall()
                self.samples += len(rows)
                for wait_type, event in rows:
                    if wait_type is not None:
                        self.waits[f"{wait_type}:{event}"] += 1


class ServerTime:
    """The mean time the server spent executing each top-level RPC statement while a phase ran,
    from pg_stat_statements (the cluster preloads it; the database has the extension in schema
    `extensions`, where Supabase puts it): what the database itself costs, next to what the
    client measured end to end."""

    def __init__(self, url: str, database: str) -> None:
        self.url = url
        self.database = database
        self.ms: dict[str, float] = {}   # function name → mean execution time, ms

    def start(self) -> None:
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute("select extensions.pg_stat_statements_reset(0, d.oid, 0) "
                         "from pg_database d where d.datname = %s", (self.database,))

    def stop(self) -> None:
        with psycopg.connect(self.url, autocommit=True) as conn:
            rows = conn.execute(
                "select substring(s.query from '\"public\"\\.\"([a-z_0-9]+)\"'), "
                "sum(s.total_exec_time) / sum(s.calls) "
                "from extensions.pg_stat_statements s join pg_database d on d.oid = s.dbid "
                "where d.datname = %s and s.toplevel and s.query like '%%\"public\".%%' "
                "group by 1", (self.database,)).fetchall()
        self.ms = {name: float(ms) for name, ms in rows if name}
