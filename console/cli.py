"""`oracle`, the operator's console (SPEC §7): inspect, check and steer a running system.

    oracle status            the system at a glance (switches, proposals, executions, rejections by
                             validator, cooldowns, GPT spend, scan-job leases)
    oracle locks             the scan-job leases (debug_check_locks)
    oracle budget USER       a user's GPT budget and spend (check_gpt_budget, get_budget_analytics)
    oracle audit --proposal ID   a proposal's audit trail and its execution
    oracle halt --reason …   / oracle resume --reason …   the system kill switch, audited
    oracle token --user EMAIL    a local development JWT for that user
    oracle verify            the post-deployment gate: exit 0 only when every invariant holds

The database: `--db-url URL`, else DATABASE_URL, else the local stack (console.local). Exit
status: 0 done, 1 the command failed (a verify check failed, the database is unreachable, no such
user…), 2 the command line or the configuration is wrong.
"""

from __future__ import annotations

import argparse
import os
import sys
import uuid
from collections.abc import Callable, Mapping, Sequence
from datetime import timedelta
from pathlib import Path
from typing import IO, NoReturn

from console import audit, budget, controls, database, status, tokens, verify, views
from console.database import OpsError, Target, UsageError
from console.users import find_user, parse_user_ref
from shared.rpc.errors import RpcError

PROG = "oracle"
DESCRIPTION = "The operator's console of Auto Invest Oracle: inspect, check and steer a system."


class _Parser(argparse.ArgumentParser):
    """argparse, but `error` names the subcommand's usage and exits 2 through SystemExit as
    usual (main() turns every SystemExit into a return value)."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(2, f"{self.prog}: error: {message}\n")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
    return value


def _seconds(text: str) -> timedelta:
    return timedelta(seconds=_positive_int(text))


def _uuid(text: str) -> uuid.UUID:
    try:
        return uuid.UUID(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a uuid") from None


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description=DESCRIPTION,
                     formatter_class=argparse.RawDescriptionHelpFormatter,
                     epilog="Database: --db-url, else DATABASE_URL, else the local stack "
                            "(postgresql://postgres@127.0.0.1:54322/postgres).\n"
                            "Exit status: 0 ok, 1 failed, 2 bad arguments or configuration.")
    parser.add_argument("--db-url", metavar="URL", default=None,
                        help="PostgreSQL URL of the database (default: DATABASE_URL, else local)")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    commands.required = True

    def command(name: str, help_text: str, *, json: bool = True) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text, description=help_text)
        sub.add_argument("--db-url", metavar="URL", default=argparse.SUPPRESS,
                         help="PostgreSQL URL of the database")
        if json:
            sub.add_argument("--json", action="store_true", help="machine-readable output")
        return sub

    sub = command("status", "the system at a glance")
    sub.add_argument("--hours", type=_positive_int, default=24,
                     help="the window for counts and rejections (default 24)")
    sub.add_argument("--top", type=_positive_int, default=10,
                     help="how many users to list by GPT spend (default 10)")

    command("locks", "scan-job leases (debug_check_locks)")

    sub = command("budget", "a user's GPT budget and spend")
    sub.add_argument("user", metavar="USER", help="the user's id (uuid) or email address")
    sub.add_argument("--days", type=_positive_int, default=7,
                     help=f"days of history (default 7, at most {budget.MAX_DAYS})")

    sub = command("audit", "a proposal's audit trail and its execution")
    sub.add_argument("--proposal", type=_uuid, required=True, metavar="ID",
                     help="the proposal id")

    for name, verb in (("halt", "stop every new claim"), ("resume", "allow claims again")):
        sub = command(name, f"the system kill switch: {verb} (audited with the reason)")
        sub.add_argument("--reason", required=True,
                         help="why; written to the audit log (1..500 characters)")

    sub = command("token", "a local development JWT for a user", json=False)
    sub.add_argument("--user", required=True, metavar="EMAIL",
                     help="the user's email address (or id)")
    sub.add_argument("--ttl", type=_positive_int, default=3600, metavar="SECONDS",
                     help="lifetime in seconds (default 3600, at most 86400)")
    sub.add_argument("--issuer", default=None,
                     help="the iss claim (default SUPABASE_JWT_ISSUER, or the local stack's)")

    sub = command("verify", "the post-deployment gate: exit 1 when an invariant fails")
    sub.add_argument("--reconcile-window", type=_seconds, metavar="SECONDS",
                     default=verify.DEFAULT_RECONCILE_WINDOW,
                     help="an execution still claimed/submitted/unknown this long after its "
                          "claim is stuck (default "
                          f"{int(verify.DEFAULT_RECONCILE_WINDOW.total_seconds())})")
    sub.add_argument("--lease-grace", type=_seconds, metavar="SECONDS",
                     default=verify.DEFAULT_LEASE_GRACE,
                     help="how long past its expiry a lease may still be held before it counts "
                          "(run_maintenance frees them every minute; default "
                          f"{int(verify.DEFAULT_LEASE_GRACE.total_seconds())})")
    sub.add_argument("--migrations-dir", default=None, metavar="DIR",
                     help="the migration files to compare with supabase_migrations "
                          "(default: this checkout's supabase/migrations)")
    sub.add_argument("--check", action="append", choices=verify.CHECK_NAMES, default=None,
                     help="run only this check (repeatable)")
    return parser


# -- commands -------------------------------------------------------------------------------------
def _status(args: argparse.Namespace, target: Target, out: IO[str]) -> int:
    with database.reading(target) as conn:
        snap = status.snapshot(conn, window=timedelta(hours=args.hours), top=args.top)
    if args.json:
        views.print_json(out, snap)
    else:
        views.render_status(out, snap, target.display)
    return 0


def _locks(args: argparse.Namespace, target: Target, out: IO[str]) -> int:
    database.connect(target).close()  # a clear error now rather than a pool timeout later
    with database.rpc(target) as port:
        rows = port.rows("debug_check_locks")
    if args.json:
        views.print_json(out, rows)
    else:
        views.render_locks(out, rows)
    return 0


def _budget(args: argparse.Namespace, target: Target, out: IO[str]) -> int:
    if args.days > budget.MAX_DAYS:
        raise UsageError(f"--days must be at most {budget.MAX_DAYS}")
    ref = parse_user_ref(args.user)
    with database.reading(target) as conn:
        user = find_user(conn, ref)
    with database.rpc(target) as port:
        data = budget.budget(port, user, args.days)
    if args.json:
        views.print_json(out, data)
    else:
        views.render_budget(out, data)
    return 0


def _audit(args: argparse.Namespace, target: Target, out: IO[str]) -> int:
    with database.reading(target) as conn:
        data = audit.trail(conn, args.proposal)
    if args.json:
        views.print_json(out, data)
    else:
        views.render_audit(out, data)
    return 0


def _switch(halted: bool) -> Callable[[argparse.Namespace, Target, IO[str]], int]:
    def run(args: argparse.Namespace, target: Target, out: IO[str]) -> int:
        reason = controls.check_reason(args.reason)
        database.connect(target).close()
        with database.rpc(target) as port:
            result = controls.set_halted(port, halted, reason)
        if args.json:
            views.print_json(out, result)
        else:
            views.render_switch(out, result, halted)
        return 0
    return run


def _token(args: argparse.Namespace, target: Target, out: IO[str],
           environ: Mapping[str, str]) -> int:
    signing = tokens.signing_for(target, environ, args.issuer)
    ttl = tokens.check_ttl(timedelta(seconds=args.ttl))
    ref = parse_user_ref(args.user)
    with database.reading(target) as conn:
        user = find_user(conn, ref)
    token = tokens.mint(signing, user, ttl)
    print(f"# {PROG}: a development token for {user.label}, valid {args.ttl} s, signed with "
          f"{signing.source}", file=sys.stderr)
    out.write(token + "\n")
    return 0


def _verify(args: argparse.Namespace, target: Target, out: IO[str]) -> int:
    options = verify.Options(
        reconcile_window=args.reconcile_window, lease_grace=args.lease_grace,
        migrations_dir=Path(args.migrations_dir) if args.migrations_dir
        else verify.REPOSITORY_MIGRATIONS)
    with database.reading(target) as conn:
        results = verify.run_checks(conn, options, only=args.check)
    if args.json:
        views.print_json(out, {"database": target.display,
                               "passed": all(r.status != "fail" for r in results),
                               "checks": [r.as_json() for r in results]})
    else:
        views.render_verify(out, results, target.display)
    return 1 if any(r.status == "fail" for r in results) else 0


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    """The console entry point. Returns the exit status (the console script exits with it)."""
    env = os.environ if environ is None else environ
    out = sys.stdout
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # --help (0) and usage errors (2), already printed by argparse
        return exc.code if isinstance(exc.code, int) else 2
    target: Target | None = None
    try:
        target = database.resolve_target(args.db_url, env)
        if args.command == "token":
            return _token(args, target, out, env)
        handlers: dict[str, Callable[[argparse.Namespace, Target, IO[str]], int]] = {
            "status": _status, "locks": _locks, "budget": _budget, "audit": _audit,
            "halt": _switch(True), "resume": _switch(False), "verify": _verify,
        }
        return handlers[args.command](args, target, out)
    except OpsError as exc:
        return _fail(str(exc), exc.exit_code, target)
    except RpcError as exc:
        return _fail(str(exc), 1, target)
    except KeyboardInterrupt:
        return _fail("interrupted", 130, target)
    except BrokenPipeError:  # `oracle status --json | head`: the reader left; say nothing more
        devnull = os.open(os.devnull, os.O_WRONLY)  # (rich does the same for its own output)
        os.dup2(devnull, sys.stdout.fileno())
        return 1


def _fail(message: str, code: int, target: Target | None) -> int:
    if target is not None:
        message = target.scrub(message)
    print(f"{PROG}: error: {message}", file=sys.stderr)
    return code
