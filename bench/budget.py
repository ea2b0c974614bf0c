"""Budget: reservations per second and overshoot under 32 concurrent reservers (G7).

Each reserver is a client process with one connection (shared.rpc.direct.DirectRpc) that, for
`--attempts` rounds, reserves the worst case of one GPT call (reserve_gpt_budget: gpt-4o-mini,
1,000 prompt + 500 completion tokens = 0.00045 USD) and, when allowed, settles it
(settle_gpt_usage) with exactly those tokens — the provider billed the whole reservation, so
settling never lowers the spend and the final spend is the highest it ever was. Two cases:

  one user   all 32 reservers spend one user's budget: every decision queues on that user's lock
             (G7's serialisation); the hourly limit is set to 90 % of what they ask for
  32 users   one reserver per user: nothing is shared; each user's daily limit is set to 90 % of
             what their reserver asks for

So about a tenth of the attempts must be denied, and exactly limit / 0.00045 (rounded down) per
user allowed. Overshoot is counted from the rows, after the run: settled cost + outstanding
reservations of each user in the last hour and in the UTC day, against that user's limits — it
must be 0 — and a denial while budget was left is counted too (it must be 0 as well).

The floor is measured by the same processes over the same connections just before: two
`bench_floor` calls (bench/rpc.py) per round, as a round of reserve + settle is two RPCs.

    .bench-venv/bin/python bench/budget.py [--reservers 32] [--attempts 100] [--repeat 3]
                                           [--durable]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script: make `scripts`, `shared` and `bench` importable
    sys.path.insert(0, str(ROOT))

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
from stack.cluster import LOCAL_SQL, MIGRATIONS, Cluster, sql_files  # noqa: E402

DATABASE = "budget"
MODEL = "gpt-4o-mini"
PROMPT_TOKENS = 1000
COMPLETION_TOKENS = 500
# gpt-4o-mini: 0.15 USD per million input tokens, 0.60 per million output tokens.
COST = (PROMPT_TOKENS * Decimal("0.15") + COMPLETION_TOKENS * Decimal("0.60")) * Decimal("0.000001")
ALLOWED_SHARE = Decimal("0.9")
ONE_USER, MANY_USERS = "one user", "32 users"


# -- the reserver (one process: connect, floor phase, budget phase) --------------------------------
def _reserver(url: str, user_id: str, attempts: int, start: Any, out: Any) -> None:
    port = open_port(url)
    port.call(FLOOR, {"p_user_id": user_id})                 # connect and warm up, untimed
    port.call("check_gpt_budget", {"p_user_id": user_id})

    start.wait()
    t0 = time.monotonic()
    floor_ns: list[int] = []
    for _ in range(attempts):
        for _ in range(2):
            a = time.perf_counter_ns()
            port.call(FLOOR, {"p_user_id": user_id})
            floor_ns.append(time.perf_counter_ns() - a)
    out.put({"t0": t0, "t1": time.monotonic(), "calls": floor_ns})

    start.wait()
    t0 = time.monotonic()
    reserve_ns: list[int] = []
    settle_ns: list[int] = []
    allowed = denied = 0
    problems: list[str] = []
    for _ in range(attempts):
        a = time.perf_counter_ns()
        answer = port.call("reserve_gpt_budget", {
            "p_user_id": user_id, "p_model": MODEL, "p_max_prompt_tokens": PROMPT_TOKENS,
            "p_max_completion_tokens": COMPLETION_TOKENS})
        reserve_ns.append(time.perf_counter_ns() - a)
        if not answer["allowed"]:
            denied += 1
            if answer["reason"] not in ("hourly_budget_exceeded", "daily_budget_exceeded"):
                problems.append(f"denied: {answer['reason']}")
            continue
        allowed += 1
        a = time.perf_counter_ns()
        settled = port.call("settle_gpt_usage", {
            "p_reservation_id": answer["reservation_id"], "p_prompt_tokens": PROMPT_TOKENS,
            "p_cached_prompt_tokens": 0, "p_completion_tokens": COMPLETION_TOKENS})
        settle_ns.append(time.perf_counter_ns() - a)
        if settled["status"] != "settled" or settled["cost_usd"] != COST:
            problems.append(f"settled: {settled}")
    out.put({"t0": t0, "t1": time.monotonic(), "reserve": reserve_ns, "settle": settle_ns,
             "allowed": allowed, "denied": denied, "problems": problems[:5]})
    port.close()


# -- one run's measurements ---------------------------------------------------------------------
@dataclass
class Cell:
    case: str
    reservers: int
    users: int
    rate: float                 # reserve decisions (allowed or denied) per second
    allowed: int
    denied: int
    reserve_p50: float          # ms
    reserve_p99: float
    settle_p50: float
    settle_p99: float
    floor_rate: float           # floor rounds (two calls) per second
    floor_p50: float            # ms per call
    floor_p99: float
    reserve_server: float       # ms the server spent executing one reserve (mean)
    settle_server: float        # … one settle
    floor_server: float         # … one floor call
    overshoot_hour: Decimal     # USD above the hourly limits, summed over the users
    overshoot_day: Decimal
    denied_with_budget_left: int
    lock_waits: float
    problems: list[str] = field(default_factory=list)


def _ms(values: Sequence[int], q: float) -> float:
    return percentile(values, q) / 1e6


class BudgetBench:
    def __init__(self, cluster: Cluster, reservers: int, attempts: int) -> None:
        self.cluster = cluster
        self.reservers = reservers
        self.attempts = attempts

    def install(self) -> None:
        c = self.cluster
        c.create_database(DATABASE)
        c.apply(DATABASE, sql_files(LOCAL_SQL, MIGRATIONS))
        c.psql(DATABASE, sql=FLOOR_SQL)
        c.psql(DATABASE, sql="create extension pg_stat_statements with schema extensions")
        # pg_cron runs the maintenance job only in its cron database: not during the runs.
        c.restart(cron_database="postgres")

    def new_users(self, count: int, hourly: Decimal, daily: Decimal) -> list[str]:
        """Fresh users (so a run never sees an earlier run's spend) with the given limits."""
        rows = sql(self.cluster, DATABASE,
                   "insert into auth.users (id, email, aud, role) "
                   "select gen_random_uuid(), 'budget-' || gen_random_uuid() || '@example.test', "
                   "'authenticated', 'authenticated' from generate_series(1, %s) "
                   "returning id", (count,))
        ids = [str(r[0]) for r in rows]
        sql(self.cluster, DATABASE,
            "update public.trading_settings set gpt_hourly_budget_usd = %s, "
            "gpt_daily_budget_usd = %s where user_id = any(%s::uuid[])", (hourly, daily, ids))
        return ids

    def measure(self, case: str) -> Cell:
        asked = COST * self.attempts * (self.reservers if case == ONE_USER else 1)
        limit = COST * int(asked / COST * ALLOWED_SHARE)
        if case == ONE_USER:   # the hourly limit decides, the daily one is far away
            hourly, daily = limit, limit * 10
            users = self.new_users(1, hourly, daily) * self.reservers
        else:                  # each user's daily limit decides
            hourly, daily = limit * 10, limit
            users = self.new_users(self.reservers, hourly, daily)
        url = self.cluster.url(DATABASE, user="authenticator")
        waits = WaitSampler(self.cluster.url(DATABASE), DATABASE)
        floor_server = ServerTime(self.cluster.url(DATABASE), DATABASE)
        server = ServerTime(self.cluster.url(DATABASE), DATABASE)
        floors, reports = run_clients(_reserver, [(url, u, self.attempts) for u in users],
                                      phases=2, samplers=[[floor_server], [waits, server]])
        floor_calls = [ns for r in floors for ns in r["calls"]]
        floor_seconds = max(r["t1"] for r in floors) - min(r["t0"] for r in floors)
        seconds = max(r["t1"] for r in reports) - min(r["t0"] for r in reports)
        reserve = [ns for r in reports for ns in r["reserve"]]
        settle = [ns for r in reports for ns in r["settle"]]
        problems = [p for r in reports for p in r["problems"]]

        distinct = sorted(set(users))
        spend = sql(self.cluster, DATABASE, """
            select l.user_id,
                   coalesce(sum(case l.status when 'settled' then l.cost_usd
                                              when 'reserved' then l.reserved_usd end)
                              filter (where l.created_at > now() - interval '1 hour'), 0),
                   coalesce(sum(case l.status when 'settled' then l.cost_usd
                                              when 'reserved' then l.reserved_usd end)
                              filter (where l.created_at >= date_trunc('day', now(), 'UTC')), 0),
                   count(*) filter (where l.status <> 'released')
            from public.gpt_usage_log l where l.user_id = any(%s::uuid[])
            group by l.user_id""", (distinct,))
        over_hour = sum((max(h - hourly, Decimal(0)) for _, h, _, _ in spend), Decimal(0))
        over_day = sum((max(d - daily, Decimal(0)) for _, _, d, _ in spend), Decimal(0))
        allowed = sum(r["allowed"] for r in reports)
        counted = sum(n for *_, n in spend)
        if counted != allowed:
            problems.append(f"{allowed} reservations allowed, {counted} rows spend budget")
        fits = int(min(hourly, daily) / COST) * len(distinct)
        expected = min(fits, self.attempts * self.reservers)
        return Cell(case, self.reservers, len(distinct), len(reserve) / seconds, allowed,
                    sum(r["denied"] for r in reports), _ms(reserve, 50), _ms(reserve, 99),
                    _ms(settle, 50), _ms(settle, 99), len(floor_calls) / 2 / floor_seconds,
                    _ms(floor_calls, 50), _ms(floor_calls, 99),
                    server.ms.get("reserve_gpt_budget", 0.0),
                    server.ms.get("settle_gpt_usage", 0.0),
                    floor_server.ms.get(FLOOR, 0.0), over_hour, over_day,
                    max(expected - allowed, 0), waits.share("Lock"), problems)


# -- the report -------------------------------------------------------------------------------
def _usd(amount: Decimal) -> str:
    return "0" if amount == 0 else f"{amount:f}"


def report(runs: Sequence[list[Cell]], header: str) -> bool:
    print()
    print(header)
    print()
    print(f"{'':>9} {'reserve decisions':^30} | {'latency ms p50 / p99':^35} | "
          f"{'server ms (mean)':^20} | {'ratio to floor':^13} | {'overshoot USD':^11} "
          f"{'denied':>7} {'Lock':>6}")
    print(f"{'case':>9} {'per s':>7} {'allowed':>7} {'denied':>6} {'×floor':>6} | "
          f"{'reserve':>11} {'settle':>11} {'floor':>11} | "
          f"{'reserve':>7} {'settle':>6} {'floor':>5} | {'p50':>6} {'p99':>6} | "
          f"{'hour':>5} {'day':>5} {'w/budget':>8} {'waits':>6}")
    ok = True
    for case in (ONE_USER, MANY_USERS):
        cells = [c for run in runs for c in run if c.case == case]
        if not cells:
            continue

        def med(value: Callable[[Cell], float], cells: list[Cell] = cells) -> float:
            return median([value(c) for c in cells])
        over_hour = sum((c.overshoot_hour for c in cells), Decimal(0))
        over_day = sum((c.overshoot_day for c in cells), Decimal(0))
        left = sum(c.denied_with_budget_left for c in cells)
        ok = ok and over_hour == 0 and over_day == 0 and left == 0
        print(f"{case:>9} {med(lambda c: c.rate):>7,.0f} {med(lambda c: c.allowed):>7,.0f} "
              f"{med(lambda c: c.denied):>6,.0f} {med(lambda c: c.rate / c.floor_rate):>5.2f}x | "
              f"{med(lambda c: c.reserve_p50):>5.2f}/{med(lambda c: c.reserve_p99):<5.2f} "
              f"{med(lambda c: c.settle_p50):>5.2f}/{med(lambda c: c.settle_p99):<5.2f} "
              f"{med(lambda c: c.floor_p50):>5.2f}/{med(lambda c: c.floor_p99):<5.2f} | "
              f"{med(lambda c: c.reserve_server):>7.3f} {med(lambda c: c.settle_server):>6.3f} "
              f"{med(lambda c: c.floor_server):>5.3f} | "
              f"{med(lambda c: c.reserve_p50 / c.floor_p50):>5.2f}x "
              f"{med(lambda c: c.reserve_p99 / c.floor_p99):>5.2f}x | "
              f"{_usd(over_hour):>5} {_usd(over_day):>5} {left:>8} "
              f"{med(lambda c: c.lock_waits):>6.1%}")
    print()
    print("per s: reserve_gpt_budget calls per second (each allowed one followed by its "
          "settle_gpt_usage); ×floor: against the same clients' rounds of two bench_floor calls "
          "per second; server ms: mean execution time inside PostgreSQL (pg_stat_statements), "
          "lock waits included; overshoot and denials with budget left: summed over every run")
    problems = [f"{c.case}: {p}" for run in runs for c in run for p in c.problems]
    for p in problems:
        print(f"PROBLEM {p}")
    print(f"target {'met' if ok else 'NOT met'}: overshoot 0 (settled + reserved never above the "
          f"hourly or daily limit) and no denial while budget was left")
    return ok and not problems


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench/budget.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reservers", type=int, default=32)
    parser.add_argument("--attempts", type=int, default=100, help="reserve calls per reserver")
    parser.add_argument("--repeat", type=int, default=3, help="runs; medians shown")
    parser.add_argument("--durable", action="store_true",
                        help="PostgreSQL's default durability (fsync, synchronous_commit on) "
                             "instead of the test cluster's fsync=off settings")
    args = parser.parse_args(argv)

    with throwaway_cluster(durable=args.durable, cron_database=DATABASE,
                           statements=True) as cluster:
        bench = BudgetBench(cluster, args.reservers, args.attempts)
        bench.install()
        header = (f"Budget: reserve_gpt_budget (+ settle_gpt_usage when allowed) by "
                  f"{args.reservers} concurrent reservers, {args.attempts} attempts each, "
                  f"through DirectRpc; median of {args.repeat} runs, fresh users each\n"
                  f"{machine(cluster)}\ncluster settings: {durability(args.durable)}\n"
                  f"floor: public.{FLOOR} through the same adapter, same processes and "
                  f"connections, same run")
        runs: list[list[Cell]] = []
        for rep in range(args.repeat):
            cases = [ONE_USER, MANY_USERS] if rep % 2 == 0 else [MANY_USERS, ONE_USER]
            run = []
            for case in cases:
                cell = bench.measure(case)
                run.append(cell)
                print(f"  run {rep + 1} {case:>9}: {cell.rate:>6,.0f} reserves/s "
                      f"({cell.allowed} allowed, {cell.denied} denied) reserve p50 "
                      f"{cell.reserve_p50:.2f} p99 {cell.reserve_p99:.2f} ms | floor "
                      f"{cell.floor_rate:>6,.0f} rounds/s p50 {cell.floor_p50:.2f} "
                      f"p99 {cell.floor_p99:.2f} ms | overshoot {_usd(cell.overshoot_hour)} / "
                      f"{_usd(cell.overshoot_day)}"
                      + (f" | PROBLEM {cell.problems[0]}" if cell.problems else ""), flush=True)
            runs.append(run)
        return 0 if report(runs, header) else 1


if __name__ == "__main__":
    sys.exit(main())
