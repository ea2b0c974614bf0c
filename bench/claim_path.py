"""Claim path: claim_trade_execution + record_execution_result per execution.

One execution is what trading_execute does with the database: `claim_trade_execution` (the seven
validators and the claim), then `record_execution_result` with a fill (the state machine, the
trade_history row, the proposal marked executed) — two RPCs through shared.rpc.direct.DirectRpc,
the adapter the functions use. Measured with 1, 4 and 8 concurrent connections (one client process
each, every client on its own users), 10,000 users, and 10k, 100k and 1,000,000 earlier
executions (proposal, execution, ledger row and three audit rows each) already in the database.

Every figure comes with its floor, measured in the same run just before, with the same number of
connections: `bench_floor` (bench/rpc.py), a trivial RPC called the same way. The round trips per
execution are counted on the wire (scripts/wireturns.py between the client and the server) on a
separate sample, so the proxy never slows the timed runs.

Set-up, never measured: the users (trading on, the default risk settings), 100 markets, five
allowlisted markets per user; each level's earlier executions generated in SQL (claimed 25 hours
to 180 days ago, so no validator refuses today's claims, and spread over every user and market),
then VACUUM ANALYZE and a CHECKPOINT. Each run works on a fresh copy of the loaded level
(CREATE DATABASE … TEMPLATE), with approved proposals prepared for it — one per measured
execution, each for a different user — so a run never measures what an earlier run added.

    .bench-venv/bin/python bench/claim_path.py [--rows 10000 100000 1000000]
        [--connections 1 4 8] [--executions 2000] [--repeat 3] [--durable]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script: make `scripts`, `shared` and `bench` importable
    sys.path.insert(0, str(ROOT))

from psycopg.sql import SQL, Composed, Literal  # noqa: E402

from bench.measure import (  # noqa: E402
    ServerTime,
    WaitSampler,
    durability,
    machine,
    median,
    percentile,
    run_clients,
    sql,
    throwaway_cluster,
)
from bench.rpc import FLOOR, FLOOR_SQL, open_port  # noqa: E402
from scripts.wireturns import WireTurns  # noqa: E402
from stack.cluster import LOCAL_SQL, MIGRATIONS, Cluster, sql_files  # noqa: E402

BASE = "claims"
USERS = 10_000
MARKETS = 100
MARKETS_PER_USER = 5
WIRE_SAMPLE = 100
# What the exchange answered for a market order of 10 EUR: filled at once.
FILL = {"status": "filled", "filled_amount": "0.00020000", "filled_amount_quote": "10.00",
        "price": "50000", "fee_paid": "0.025", "fee_currency": "EUR"}

BASE_SQL = """
insert into public.market_allowlist (market, enabled)
select 'C' || g || '-EUR', true from generate_series(1, {markets}) g;

insert into auth.users (id, email, aud, role)
select gen_random_uuid(), 'bench' || g || '@example.test', 'authenticated', 'authenticated'
from generate_series(1, {users}) g;

-- The trigger gave every user the safe defaults; the bench users trade (paper), with the default
-- limits: 50 EUR per order, 10 trades and 200 EUR a day, 1 h cooldown, 24 h anti-flip.
update public.trading_settings set trading_enabled = true;

-- Users numbered in a stable order; user n allowlists markets n, n+20, …, n+80 (mod 100).
create table public.bench_users as
select row_number() over (order by u.id)::int as n, u.id as user_id from auth.users u;
alter table public.bench_users add primary key (n);

insert into public.trading_allowlist (user_id, market)
select b.user_id, 'C' || (1 + (b.n + k * 20) % {markets}) || '-EUR'
from public.bench_users b cross join generate_series(0, {last_k}) k;
"""

# Earlier executions, oldest first (the heap in time order, as in production): execution g is user
# 1 + g % USERS's, on one of that user's markets, claimed between 180 days and 25 hours ago, filled,
# with its proposal, its ledger row and the three audit rows a real one leaves. Ids are made by
# the tables' own column defaults, as the RPCs' inserts make them.
HISTORY_SQL = """
do $load$
declare
  v_proposal_id text;
  v_execution_id text;
begin
  select pg_get_expr(d.adbin, d.adrelid) into v_proposal_id
    from pg_attrdef d join pg_attribute a on a.attrelid = d.adrelid and a.attnum = d.adnum
   where d.adrelid = 'public.trade_proposals'::regclass and a.attname = 'id';
  select pg_get_expr(d.adbin, d.adrelid) into v_execution_id
    from pg_attrdef d join pg_attribute a on a.attrelid = d.adrelid and a.attnum = d.adnum
   where d.adrelid = 'public.trade_executions'::regclass and a.attname = 'id';
  execute format($seed$
    create temporary table bench_seed as
    select g,
           %s as proposal_id,
           %s as execution_id,
           b.user_id,
           'C' || (1 + (b.n + ((g / {users}) %% {markets_per_user}) * 20) %% {markets}) || '-EUR'
             as market,
           case when g %% 2 = 0 then 'buy' else 'sell' end as side,
           now() - interval '25 hours' - ({rows} - g) * (interval '180 days' / {rows})
             as claimed_at
    from generate_series(1, {rows}) g
    join public.bench_users b on b.n = 1 + g %% {users}
    order by g
  $seed$, v_proposal_id, v_execution_id);
end
$load$;

insert into public.trade_proposals (id, user_id, market, side, amount_quote, confidence, rationale,
                                    source, status, expires_at, decided_at, decided_by, created_at,
                                    updated_at)
select proposal_id, user_id, market, side, 10, 0.8, 'bench history', 'rules', 'executed',
       claimed_at + interval '15 minutes', claimed_at - interval '1 second', 'auto',
       claimed_at - interval '2 seconds', claimed_at + interval '1 second'
from bench_seed order by g;

insert into public.trade_executions (id, proposal_id, user_id, idempotency_key, mode, market, side,
                                     amount_quote, status, exchange_order_id, filled_amount,
                                     filled_amount_quote, price, fee_paid, fee_currency,
                                     claimed_at, submitted_at, completed_at, updated_at)
select execution_id, proposal_id, user_id, 'auto:' || proposal_id, 'paper', market, side, 10,
       'filled', 'history-' || g, 0.0002, 10, 50000, 0.025, 'EUR', claimed_at,
       claimed_at + interval '200 milliseconds', claimed_at + interval '300 milliseconds',
       claimed_at + interval '300 milliseconds'
from bench_seed order by g;

insert into public.trade_history (execution_id, proposal_id, user_id, market, side, amount,
                                  amount_quote, price, fee_paid, fee_currency, mode, executed_at,
                                  created_at)
select execution_id, proposal_id, user_id, market, side, 0.0002, 10, 50000, 0.025, 'EUR', 'paper',
       claimed_at + interval '300 milliseconds', claimed_at + interval '300 milliseconds'
from bench_seed order by g;

insert into public.execution_audit_log (user_id, proposal_id, execution_id, event, detail,
                                        created_at)
select s.user_id, s.proposal_id, case when e.event <> 'proposal.created' then s.execution_id end,
       e.event,
       jsonb_build_object('market', s.market, 'side', s.side, 'amount_quote', 10, 'mode', 'paper',
                          'idempotency_key', 'auto:' || s.proposal_id,
                          'status', 'filled', 'trade_history_written', true),
       s.claimed_at + e.after
from bench_seed s
cross join (values ('proposal.created', interval '-2 seconds'),
                   ('claim.claimed', interval '0 seconds'),
                   ('execution.status_changed', interval '300 milliseconds')) e(event, after)
order by s.g, e.after;
"""

# Approved proposals for one run's executions, execution slot s for user s + 1 on their first
# market: no two measured executions share a user, so no validator refuses one because of another.
PREPARE_SQL = """
insert into public.trade_proposals (user_id, market, side, amount_quote, confidence, rationale,
                                    source, status, expires_at, decided_at, decided_by)
select b.user_id, 'C' || (1 + b.n %% 100) || '-EUR', 'buy', 10, 0.8, 'bench', 'rules', 'approved',
       now() + interval '1 day', now(), 'auto'
from public.bench_users b
where b.n <= %(count)s
order by b.n
returning user_id, id
"""


def compose(text: str, **values: int) -> Composed:
    """The set-up SQL with the bench's sizes in it (as literals; the text is ours)."""
    sizes = {"users": USERS, "markets": MARKETS, "markets_per_user": MARKETS_PER_USER,
             "last_k": MARKETS_PER_USER - 1, **values}
    return SQL(text).format(**{k: Literal(v) for k, v in sizes.items()})  # type: ignore[arg-type]


# -- clients (one process each: connect and warm up, wait for the start, work, report) ---------
def _warm_up(port: Any) -> None:
    """Connect, and compile the functions in this connection (outcome not_found: nothing but an
    audit row is written), so no measured call pays for either."""
    nobody = "00000000-0000-4000-8000-000000000000"
    port.call(FLOOR, {"p_user_id": nobody})
    port.call("claim_trade_execution", {"p_user_id": nobody, "p_proposal_id": nobody,
                                        "p_idempotency_key": "bench:warm-up", "p_mode": "paper"})
    port.call("record_execution_result", {"p_execution_id": nobody,
                                          "p_result": {"status": "failed"}})


def _client(url: str, tasks: list[tuple[str, str]], start: Any, out: Any) -> None:
    """Phase 1, the floor: one bench_floor call per task. Phase 2: the executions."""
    port = open_port(url)
    _warm_up(port)

    start.wait()
    t0 = time.monotonic()
    floor_ns: list[int] = []
    floor_problems = 0
    for user_id, _ in tasks:
        a = time.perf_counter_ns()
        answer = port.call(FLOOR, {"p_user_id": user_id})
        floor_ns.append(time.perf_counter_ns() - a)
        floor_problems += answer != {"outcome": "ok"}
    out.put({"t0": t0, "t1": time.monotonic(), "calls": floor_ns, "problem_count": floor_problems})

    start.wait()
    t0 = time.monotonic()
    claim_ns: list[int] = []
    record_ns: list[int] = []
    total_ns: list[int] = []
    problems: list[str] = []
    for i, (user_id, proposal_id) in enumerate(tasks):
        a = time.perf_counter_ns()
        claim = port.call("claim_trade_execution", {
            "p_user_id": user_id, "p_proposal_id": proposal_id,
            "p_idempotency_key": f"auto:{proposal_id}", "p_mode": "paper"})
        b = time.perf_counter_ns()
        if claim["outcome"] != "claimed":
            problems.append(f"claim {proposal_id}: {claim['outcome']} {claim['failed_checks']}")
            continue
        recorded = port.call("record_execution_result", {
            "p_execution_id": claim["execution"]["id"],
            "p_result": {**FILL, "exchange_order_id": f"bench-{proposal_id}-{i}"}})
        c = time.perf_counter_ns()
        if recorded["outcome"] != "updated":
            problems.append(f"record {proposal_id}: {recorded['outcome']}")
        claim_ns.append(b - a)
        record_ns.append(c - b)
        total_ns.append(c - a)
    out.put({"t0": t0, "t1": time.monotonic(), "claim": claim_ns, "record": record_ns,
             "total": total_ns, "problems": problems[:5], "problem_count": len(problems)})
    port.close()


# -- one run's measurements ---------------------------------------------------------------------
@dataclass
class Cell:
    """One (rows, connections) measurement of one run: the executions and their floor."""
    rows: int
    connections: int
    executions: int
    rate: float                   # executions per second
    p50: float                    # claim + record, ms
    p99: float
    claim_p99: float
    record_p99: float
    floor_rate: float             # floor calls per second
    floor_p50: float
    floor_p99: float
    server: float                 # ms the server spent executing claim + record (mean)
    floor_server: float           # … executing one floor call (mean)
    lock_waits: float             # share of active-backend samples waiting on a heavyweight lock
    lwlock_waits: float           # … on a lightweight lock (buffer content, WAL insertion, …)
    waits: dict[str, float] = field(default_factory=dict)  # "<type>:<event>" → share
    problems: list[str] = field(default_factory=list)


def _ms(values: Sequence[int], q: float) -> float:
    return percentile(values, q) / 1e6


def measure_cell(cluster: Cluster, database: str, rows: int, tasks: list[tuple[str, str]],
                 connections: int) -> Cell:
    """The floor, then the executions, by the same client processes over the same connections;
    what the executions' backends waited on is sampled meanwhile."""
    url = cluster.url(database, user="authenticator")
    split = [tasks[i::connections] for i in range(connections)]
    waits = WaitSampler(cluster.url(database), database)
    floor_server, server = ServerTime(cluster.url(database), database), \
        ServerTime(cluster.url(database), database)
    floors, reports = run_clients(_client, [(url, part) for part in split], phases=2,
                                  samplers=[[floor_server], [waits, server]])
    floor_calls = [ns for r in floors for ns in r["calls"]]
    floor_seconds = max(r["t1"] for r in floors) - min(r["t0"] for r in floors)
    seconds = max(r["t1"] for r in reports) - min(r["t0"] for r in reports)
    total = [ns for r in reports for ns in r["total"]]
    problems = [p for r in reports for p in r["problems"]]
    missing = sum(r["problem_count"] for r in reports)
    if missing:
        problems.insert(0, f"{missing} executions did not claim and record")
    if sum(r["problem_count"] for r in floors):
        problems.append("the floor answered something else")
    return Cell(rows, connections, len(total), len(total) / seconds, _ms(total, 50),
                _ms(total, 99), _ms([ns for r in reports for ns in r["claim"]], 99),
                _ms([ns for r in reports for ns in r["record"]], 99),
                len(floor_calls) / floor_seconds, _ms(floor_calls, 50), _ms(floor_calls, 99),
                server.ms.get("claim_trade_execution", 0.0)
                + server.ms.get("record_execution_result", 0.0),
                floor_server.ms.get(FLOOR, 0.0), waits.share("Lock"), waits.share("LWLock"),
                {k: n / waits.samples for k, n in waits.waits.most_common(4)}, problems)


def count_round_trips(cluster: Cluster, database: str,
                      tasks: list[tuple[str, str]]) -> tuple[float, float]:
    """Round trips per execution and per floor call, counted on the wire by a proxy between one
    client and the server (after the connection is made and warmed up), read from the PostgreSQL
    protocol (WireTurns.round_trips), so a split write is never counted twice."""
    with WireTurns("127.0.0.1", cluster.port) as proxy:
        url = f"postgresql://authenticator@127.0.0.1:{proxy.port}/{database}"
        port = open_port(url)
        try:
            _warm_up(port)
            proxy.settle()
            before = proxy.round_trips
            for user_id, _ in tasks:
                port.call(FLOOR, {"p_user_id": user_id})
            proxy.settle()
            floor_turns = proxy.round_trips - before
            before = proxy.round_trips
            for i, (user_id, proposal_id) in enumerate(tasks):
                claim = port.call("claim_trade_execution", {
                    "p_user_id": user_id, "p_proposal_id": proposal_id,
                    "p_idempotency_key": f"auto:{proposal_id}", "p_mode": "paper"})
                port.call("record_execution_result", {
                    "p_execution_id": claim["execution"]["id"],
                    "p_result": {**FILL, "exchange_order_id": f"wire-{i}"}})
            proxy.settle()
            execution_turns = proxy.round_trips - before
        finally:
            port.close()
    return execution_turns / len(tasks), floor_turns / len(tasks)


@dataclass
class Run:
    cells: list[Cell]
    round_trips: dict[int, tuple[float, float]]  # rows → (per execution, per floor call)


class ClaimBench:
    def __init__(self, cluster: Cluster, levels: Sequence[int], connections: Sequence[int],
                 executions: int) -> None:
        self.cluster = cluster
        self.levels = levels
        self.connections = connections
        self.executions = executions

    def install(self) -> None:
        """The base database (schema, users, markets, allowlists) and one template per level."""
        c = self.cluster
        c.create_database(BASE)
        c.apply(BASE, sql_files(LOCAL_SQL, MIGRATIONS))
        c.psql(BASE, sql=FLOOR_SQL)
        c.psql(BASE, sql="create extension pg_stat_statements with schema extensions")
        sql(c, BASE, compose(BASE_SQL))
        # pg_cron runs the maintenance job only in its cron database, and its launcher's
        # connection would keep the base from being copied: point it elsewhere.
        c.restart(cron_database="postgres")
        for rows in self.levels:
            started = time.monotonic()
            c.create_database(self.template(rows), template=BASE)
            sql(c, self.template(rows), compose(HISTORY_SQL, rows=rows))
            sql(c, self.template(rows), "vacuum (analyze)")
            sql(c, self.template(rows), "checkpoint")
            size = sql(c, self.template(rows),
                       "select pg_size_pretty(pg_database_size(current_database()))")[0][0]
            print(f"  loaded {rows:>9,} earlier executions in {time.monotonic() - started:.0f} s "
                  f"({size})", flush=True)

    @staticmethod
    def template(rows: int) -> str:
        return f"{BASE}_{rows}"

    def run(self, rep: int) -> Run:
        cells: list[Cell] = []
        trips: dict[int, tuple[float, float]] = {}
        order = list(self.levels)
        order = order[rep % len(order):] + order[:rep % len(order)]  # rotated per run
        for rows in order:
            database = f"run_{rows}_{rep}"
            self.cluster.create_database(database, template=self.template(rows))
            try:
                needed = self.executions * len(self.connections) + WIRE_SAMPLE
                prepared = sql(self.cluster, database, PREPARE_SQL, {"count": needed})
                tasks = [(str(u), str(p)) for u, p in prepared]
                sql(self.cluster, database, "vacuum (analyze) public.trade_proposals")
                sql(self.cluster, database, "checkpoint")
                for i, connections in enumerate(self.connections):
                    part = tasks[i * self.executions:(i + 1) * self.executions]
                    cell = measure_cell(self.cluster, database, rows, part, connections)
                    cells.append(cell)
                    print(f"  run {rep + 1} {rows:>9,} rows {connections} conn: "
                          f"{cell.rate:>6,.0f} exec/s p50 {cell.p50:.2f} p99 {cell.p99:.2f} ms | "
                          f"floor {cell.floor_rate:>6,.0f}/s p50 {cell.floor_p50:.2f} "
                          f"p99 {cell.floor_p99:.2f} ms | waits: lock {cell.lock_waits:.1%} "
                          f"lwlock {cell.lwlock_waits:.1%}"
                          + (f" | PROBLEM {cell.problems[0]}" if cell.problems else ""),
                          flush=True)
                trips[rows] = count_round_trips(self.cluster, database, tasks[-WIRE_SAMPLE:])
            finally:
                sql(self.cluster, "postgres", f'drop database "{database}" with (force)')
        return Run(cells, trips)


# -- the report -------------------------------------------------------------------------------
def _med(runs: Sequence[Run], rows: int, connections: int, value: Any) -> float:
    return median([value(c) for r in runs for c in r.cells
                   if c.rows == rows and c.connections == connections])


def _cell(run: Run, rows: int, connections: int) -> Cell | None:
    return next((c for c in run.cells if c.rows == rows and c.connections == connections), None)


def _ratio(runs: Sequence[Run], rows: int, n: int, base_rows: int, base_n: int,
           value: Callable[[Cell], float]) -> float:
    """The median over runs of value(cell) / value(base cell), both from the same run."""
    return median([value(c) / value(b) for r in runs
                   if (c := _cell(r, rows, n)) and (b := _cell(r, base_rows, base_n))])


def report(runs: Sequence[Run], levels: Sequence[int], connections: Sequence[int],
           header: str) -> bool:
    print()
    print(header)
    print()
    cores = os.cpu_count() or 1
    one, most = min(connections), max(connections)
    print(f"{'':>15} {'executions (claim + record)':^38} | {'floor calls':^27} | "
          f"{'ratio to the floor':^27} | {'Lock':>5}")
    print(f"{'rows':>9} {'conn':>5} {'per s':>6} {'×1conn':>6} {'p50 ms':>6} {'p99 ms':>6} "
          f"{'server':>6} | {'per s':>6} {'×1conn':>6} {'p50':>4} {'p99':>4} {'server':>6} | "
          f"{'p50':>6} {'p99':>6} {'claim':>6} {'record':>6} | {'waits':>5}")
    print(f"{'':>9} {'':>5} {'':>6} {'':>6} {'':>6} {'':>6} {'ms':>6} | {'':>6} {'':>6} {'':>4} "
          f"{'':>4} {'ms':>6} | {'':>6} {'':>6} {'p99':>6} {'p99':>6} |")
    for rows in levels:
        for n in connections:
            def med(value: Callable[[Cell], float], rows: int = rows, n: int = n) -> float:
                return _med(runs, rows, n, value)
            print(f"{rows:>9,} {n:>5} {med(lambda c: c.rate):>6,.0f} "
                  f"{_ratio(runs, rows, n, rows, one, lambda c: c.rate):>5.2f}x "
                  f"{med(lambda c: c.p50):>6.2f} {med(lambda c: c.p99):>6.2f} "
                  f"{med(lambda c: c.server):>6.3f} | "
                  f"{med(lambda c: c.floor_rate):>6,.0f} "
                  f"{_ratio(runs, rows, n, rows, one, lambda c: c.floor_rate):>5.2f}x "
                  f"{med(lambda c: c.floor_p50):>4.2f} {med(lambda c: c.floor_p99):>4.2f} "
                  f"{med(lambda c: c.floor_server):>6.3f} | "
                  f"{med(lambda c: c.p50 / c.floor_p50):>5.2f}x "
                  f"{med(lambda c: c.p99 / c.floor_p99):>5.2f}x "
                  f"{med(lambda c: c.claim_p99 / c.floor_p99):>5.2f}x "
                  f"{med(lambda c: c.record_p99 / c.floor_p99):>5.2f}x | "
                  f"{med(lambda c: c.lock_waits):>5.1%}")
    print()
    print("ms: per execution (claim, then record) or per floor call, measured by the client; "
          "server: mean time PostgreSQL spent executing the statements (pg_stat_statements), the "
          "rest is the client, the adapter and the wire; Lock waits: share of the active "
          "backends' samples waiting on a heavyweight lock")
    print()
    trips = median([t[0] for r in runs for t in r.round_trips.values()])
    floor_trips = median([t[1] for r in runs for t in r.round_trips.values()])
    print(f"database round trips per execution, counted on the wire (scripts/wireturns.py, "
          f"{WIRE_SAMPLE} executions per level and run): {trips:.2f}; floor: {floor_trips:.2f} "
          f"per call")
    print()
    base_rows, top = min(levels), max(levels)
    print(f"Cost growth ({one} connection): p99 against the {base_rows:,}-row database's p99 "
          f"in the same run")
    print(f"{'rows':>9} {'claim p99 ms':>13} {'×':>6} {'claim + record p99 ms':>21} {'×':>6}")
    growth: dict[int, float] = {}
    for rows in levels:
        growth[rows] = _ratio(runs, rows, one, base_rows, one, lambda c: c.p99)
        print(f"{rows:>9,} {_med(runs, rows, one, lambda c: c.claim_p99):>13.2f} "
              f"{_ratio(runs, rows, one, base_rows, one, lambda c: c.claim_p99):>5.2f}x "
              f"{_med(runs, rows, one, lambda c: c.p99):>21.2f} {growth[rows]:>5.2f}x")
    print()
    problems = [f"{c.rows:,} rows, {c.connections} conn: {p}"
                for r in runs for c in r.cells for p in c.problems]
    for p in problems:
        print(f"PROBLEM {p}")
    worst_p99 = max(_med(runs, rows, n, lambda c: c.p99 / c.floor_p99)
                    for rows in levels for n in connections)
    want = 0.7 * min(most, cores)
    scaling = min(_ratio(runs, rows, most, rows, one, lambda c: c.rate) for rows in levels)
    floor_scaling = max(_ratio(runs, rows, most, rows, one, lambda c: c.floor_rate)
                        for rows in levels)
    lock_waits = max(_med(runs, rows, most, lambda c: c.lock_waits) for rows in levels)
    targets = [
        (f"2 round trips per execution (counted: {trips:.2f})", trips <= 2),
        (f"claim + record p99 <= 4x the floor's p99 (worst cell: {worst_p99:.2f}x)",
         worst_p99 <= 4),
        (f"p99 at {top:,} rows <= 1.2x p99 at {base_rows:,} rows ({growth[top]:.2f}x)",
         growth[top] <= 1.2),
        (f"throughput at {most} connections >= 0.7 x min({most}, {cores} cores) = {want:.2f}x "
         f"one connection's (worst level: {scaling:.2f}x; the floor itself reached "
         f"{floor_scaling:.2f}x on this machine in the same run)", scaling >= want),
    ]
    for text, ok in targets:
        print(f"target {'met' if ok else 'NOT met'}: {text}")
    print(f"different users never queue on one lock: at {most} connections at most "
          f"{lock_waits:.1%} of the active backends' samples wait on a heavyweight lock")
    for rows in levels:
        cells = [c for r in runs if (c := _cell(r, rows, most))]
        keys = {k for c in cells for k in c.waits}
        shares = {k: median([c.waits.get(k, 0.0) for c in cells]) for k in keys}
        listed = ", ".join(f"{k} {v:.1%}" for k, v in
                           sorted(shares.items(), key=lambda kv: -kv[1])[:4])
        print(f"  waits at {rows:,} rows, {most} connections: {listed or 'none sampled'}")
    return not problems


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench/claim_path.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, nargs="+", default=[10_000, 100_000, 1_000_000],
                        help="earlier executions in the database, one level each")
    parser.add_argument("--connections", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--executions", type=int, default=2000,
                        help="measured executions (and floor calls) per cell")
    parser.add_argument("--repeat", type=int, default=3,
                        help="runs, each on fresh copies of the loaded levels; medians shown")
    parser.add_argument("--durable", action="store_true",
                        help="PostgreSQL's default durability (fsync, synchronous_commit on) "
                             "instead of the test cluster's fsync=off settings")
    args = parser.parse_args(argv)
    levels = sorted(args.rows)
    connections = sorted(args.connections)
    if args.executions * len(connections) + WIRE_SAMPLE > USERS:
        parser.error(f"at most {USERS:,} executions per level and run (one per user)")

    with throwaway_cluster(durable=args.durable, cron_database=BASE,
                           statements=True) as cluster:
        bench = ClaimBench(cluster, levels, connections, args.executions)
        bench.install()
        header = (f"Claim path: claim_trade_execution + record_execution_result (a fill) per "
                  f"execution through DirectRpc; {USERS:,} users; {args.executions:,} executions "
                  f"per cell; median of {args.repeat} runs, each on a fresh copy of every level\n"
                  f"{machine(cluster)}\ncluster settings: {durability(args.durable)}\n"
                  f"floor: public.{FLOOR} through the same adapter, same connections, same run; "
                  f"ms per execution (claim + record) or per floor call")
        runs = [bench.run(rep) for rep in range(args.repeat)]
        return 0 if report(runs, levels, connections, header) else 1


if __name__ == "__main__":
    sys.exit(main())
