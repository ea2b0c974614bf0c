"""The local stack's commands (SPEC §7), what the Makefile runs:

    python -m stack run       [--db-port 54322] [--sandbox-port 54330]      make run
                              [--trading-execute-port 54331] [--scan-scheduler-port 54332]
                              [--tick-seconds 5] [--reconcile-seconds 60]
    python -m stack demo      [--ticks 3]                                   make demo
    python -m stack db        [--port 54322] [--seed]                       make db
    python -m stack db-down   [--port 54322]                                make db-down
    python -m stack db-reset  [--port 54322] [--seed]                       make db-reset

`db` starts (or reuses) the project-local PostgreSQL and brings its schema up to date exactly as
`run` does (stack.localdb), then prints its URL; `db-down` stops it, its data kept; `db-reset`
deletes it first.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from console import local
from stack.cluster import ROOT, Cluster, ClusterError, project_data_dir
from stack.demo import DEMO_STATE_DIR, demo
from stack.localdb import DatabaseError, LocalDatabase
from stack.supervisor import STATE_DIR, Config, Ports, run


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{value} is not a port number (1-65535)")
    return value


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text} must be above 0")
    return value


def _env_port(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        return _port(raw)
    except argparse.ArgumentTypeError as exc:
        raise SystemExit(f"python -m stack: {name}: {exc}") from None
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m stack", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run_p = commands.add_parser("run", help="the live stack until Ctrl+C (make run)")
    for flag, env, default in (("--db-port", "DB_PORT", local.DB_PORT),
                               ("--sandbox-port", "SANDBOX_PORT", local.SANDBOX_PORT),
                               ("--trading-execute-port", "TRADING_EXECUTE_PORT",
                                local.TRADING_EXECUTE_PORT),
                               ("--scan-scheduler-port", "SCAN_SCHEDULER_PORT",
                                local.SCAN_SCHEDULER_PORT)):
        run_p.add_argument(flag, type=_port, default=_env_port(env, default), metavar="PORT",
                           help=f"default ${env}, else {default}")
    run_p.add_argument("--data-dir", type=Path, default=None,
                       help="the PostgreSQL cluster's directory (default: make db's, per port)")
    run_p.add_argument("--state-dir", type=Path, default=STATE_DIR,
                       help=f"logs and stack.json (default {STATE_DIR.relative_to(ROOT)})")
    run_p.add_argument("--supabase-workdir", type=Path, default=ROOT,
                       help="the directory that holds supabase/ (migrations, seed.sql)")
    run_p.add_argument("--tick-seconds", type=_positive, default=5.0,
                       help="a scan_scheduler tick every N seconds (default 5)")
    run_p.add_argument("--reconcile-seconds", type=_positive, default=60.0,
                       help="trading_execute /reconcile every N seconds (default 60)")
    run_p.add_argument("--sandbox-seed", type=int, default=42)
    run_p.add_argument("--plain", action="store_true",
                       help="one line per call instead of the live view (automatic when stdout "
                            "is not a terminal)")
    demo_p = commands.add_parser("demo", help="a bounded run on a throwaway cluster (make demo)")
    demo_p.add_argument("--ticks", type=int, default=3, choices=range(1, 21), metavar="N",
                        help="scanner ticks (1-20, default 3)")
    demo_p.add_argument("--sandbox-seed", type=int, default=42)
    demo_p.add_argument("--state-dir", type=Path, default=DEMO_STATE_DIR,
                        help=f"logs (default {DEMO_STATE_DIR.relative_to(ROOT)})")
    for name, what in (("db", "start (or reuse) and migrate the project-local PostgreSQL, "
                               "print its URL (make db)"),
                       ("db-down", "stop the project-local PostgreSQL, data kept (make db-down)"),
                       ("db-reset", "delete the project-local PostgreSQL, then as db "
                                    "(make db-reset)")):
        db_p = commands.add_parser(name, help=what)
        db_p.add_argument("--port", type=_port, default=_env_port("DB_PORT", local.DB_PORT),
                          metavar="PORT", help=f"default $DB_PORT, else {local.DB_PORT}")
        db_p.add_argument("--data-dir", type=Path, default=None,
                          help="the cluster's directory (default: per port, as make run's)")
        if name != "db-down":
            db_p.add_argument("--seed", action="store_true", help="also apply supabase/seed.sql")
    return parser


def db(command: str, port: int, data_dir: Path, seed: bool) -> int:
    """`make db` / `db-down` / `db-reset`: the cluster `make run` keeps, without the rest."""
    cluster = Cluster(data_dir=data_dir, port=port, cron_database="postgres")
    if command == "db-down":
        cluster.stop()
        return 0
    started = time.monotonic()
    try:
        if command == "db-reset":
            cluster.destroy()
        database = LocalDatabase(cluster)
        database.start()
        report = database.migrate(seed=seed,
                                  on_progress=lambda m: print(f"# {m}", file=sys.stderr))
    except (ClusterError, DatabaseError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for name in report.applied:
        print(f"# applied {name}", file=sys.stderr)
    print(f"# PostgreSQL 15 + pg_cron ready in {time.monotonic() - started:.1f}s "
          f"(data {data_dir})", file=sys.stderr)
    print(cluster.url())
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "demo":
        return demo(args.ticks, args.sandbox_seed, args.state_dir.resolve(), sys.stdout,
                    sys.stderr)
    if args.command.startswith("db"):
        return db(args.command, args.port, (args.data_dir or project_data_dir(args.port)).resolve(),
                  getattr(args, "seed", False))
    ports = Ports(db=args.db_port, sandbox=args.sandbox_port,
                  trading_execute=args.trading_execute_port,
                  scan_scheduler=args.scan_scheduler_port)
    config = Config(ports=ports, data_dir=(args.data_dir or project_data_dir(ports.db)).resolve(),
                    state_dir=args.state_dir.resolve(), workdir=args.supabase_workdir.resolve(),
                    sandbox_seed=args.sandbox_seed, tick_seconds=args.tick_seconds,
                    reconcile_seconds=args.reconcile_seconds)
    return run(config, sys.stdout, sys.stderr, plain=args.plain or not sys.stdout.isatty())


if __name__ == "__main__":
    raise SystemExit(main())
