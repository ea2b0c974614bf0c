"""What `make run` shows while it runs: the processes, the cron stand-in's calls, and the system's
state read from the database (`oracle status`'s snapshot and tables: console.status and views).

    frame = read_frame(target)                       # one READ ONLY transaction
    live.update(render(board, frame))                # rich Live on a terminal
    print(tick_line(result))                         # one plain line per call when piped
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from console import status, views
from console.database import OpsError, Target, reading
from stack.cron import CallResult, LocalCron, last_maintenance
from stack.localdb import LocalDatabase
from stack.services import Service

WINDOW = timedelta(hours=24)
RECENT = 5
TICK_FIELDS = ("claimed", "succeeded", "failed", "proposals", "budget_denied",
               "executions_requested")
RECONCILE_FIELDS = ("examined", "settled", "failed", "still_open", "errors")


@dataclass
class Frame:
    """The database's side of one refresh (or the reason it could not be read)."""

    at: datetime = field(default_factory=lambda: datetime.now(UTC))
    snapshot: dict[str, Any] | None = None
    recent: dict[str, list[dict[str, Any]]] | None = None
    maintenance: dict[str, Any] | None = None
    error: str | None = None


def read_frame(target: Target) -> Frame:
    try:
        with reading(target) as conn:
            return Frame(snapshot=status.snapshot(conn, window=WINDOW, top=5),
                         recent=status.recent(conn, limit=RECENT),
                         maintenance=last_maintenance(conn))
    except OpsError as exc:
        return Frame(error=str(exc))


@dataclass
class Board:
    """The stack's side: what runs where, and where its logs are."""

    title: str
    db: LocalDatabase
    services: Sequence[Service]
    cron: LocalCron
    logs: Path
    started_at: float = field(default_factory=time.monotonic)


def render(board: Board, frame: Frame) -> RenderableType:
    """One screen, most important first (a terminal shorter than this crops the bottom)."""
    up = timedelta(seconds=int(time.monotonic() - board.started_at))
    controls = (frame.snapshot or {}).get("controls") or {}
    halted = controls.get("trading_halted")
    header = Text.assemble((board.title, "bold"), " · ",
                           ("TRADING HALTED", "bold red") if halted else
                           ("trading running", "bold green"), f" · up {up} · ",
                           ("Ctrl+C stops everything it started", "bold yellow"))
    parts: list[RenderableType] = [header, processes(board), cron_table(board.cron, frame)]
    if frame.error is not None:
        parts.append(Text(f"database: {frame.error}", style="bold red"))
    if frame.snapshot is not None:
        parts.append(system(frame.snapshot))
    if frame.recent is not None:
        parts += recent_tables(frame.recent)
    parts.append(ticks_table(board.cron))
    parts.append(Text(f"logs: {board.logs}/<process>.log, cron.log · PostgreSQL: "
                      f"{board.db.log_file}", style="dim"))
    return Group(*parts)


def clock(value: Any) -> str:
    """A UTC time of the last day as HH:MM:SSZ, older ones in full."""
    if isinstance(value, datetime):
        value = value.astimezone(UTC)
        if abs(datetime.now(UTC) - value) < timedelta(hours=20):
            return value.strftime("%H:%M:%SZ")
    return views.cell(value)


def _table(*columns: str) -> Table:
    t = Table(show_edge=False, pad_edge=False, box=None, header_style="bold dim")
    for name in columns:
        t.add_column(name, overflow="fold")
    return t


def processes(board: Board) -> RenderableType:
    t = _table("process", "pid", "listens on", "state")
    pg_pid = board.db.running_pid()
    t.add_row("postgresql + pg_cron", views.cell(pg_pid), f"127.0.0.1:{board.db.port}",
              _state(pg_pid is not None,
                     "started by this run" if board.db.started else "was already running"))
    for s in board.services:
        t.add_row(s.name, views.cell(s.pid), f"127.0.0.1:{s.port}",
                  _state(s.alive, "" if s.alive else f"exited {s.exit_code}"))
    return t


def _state(alive: bool, note: str) -> Text:
    return Text.assemble(("running" if alive else "DOWN", "green" if alive else "bold red"),
                         f" ({note})" if note else "")


def cron_table(cron: LocalCron, frame: Frame) -> RenderableType:
    t = _table("schedule (local Supabase Cron)", "every", "calls", "failed", "last", "answer")
    now = time.monotonic()
    for job in cron.jobs.values():
        last = job.last
        due = max(0, round(job.next_at - now))
        t.add_row(job.name, f"{job.every:g} s", str(job.calls), str(job.failures),
                  f"{clock(last.at)}, next in {due} s" if last else f"first in {due} s",
                  result_text(last, compact=True) if last else "—")
    m = frame.maintenance
    if m is not None:
        answer = (f"{m['status']} {m['message'] or ''}".strip() if m["status"]
                  else "not run yet (pg_cron starts it each minute)")
        t.add_row("run_maintenance (pg_cron, in PostgreSQL)", "1 min", str(m["runs"]), "",
                  clock(m["start_time"]), answer if m["active"] else f"INACTIVE; {answer}")
    return t


def result_text(result: CallResult, *, compact: bool = False) -> Text:
    """The answer of a call: its status and counts (`compact`: only the non-zero ones)."""
    fields = TICK_FIELDS if "claimed" in result.counts else RECONCILE_FIELDS
    counts = " · ".join(f"{k} {result.counts[k]}" for k in fields
                        if k in result.counts and not (compact and not result.counts[k]))
    if result.ok:
        return Text(f"{result.status}" + (f" · {counts}" if counts else "")
                    + f" ({result.duration_ms} ms)")
    return Text.assemble((result.error or "failed", "bold red"),
                         f" · {counts}" if counts else "")


def _counts(counts: dict[str, int] | Sequence[dict[str, Any]], key: str = "status") -> str:
    if isinstance(counts, dict):
        return " · ".join(f"{k} {v}" for k, v in counts.items()) or "none"
    return " · ".join(f"{r[key]} {r['count']}" for r in counts) or "none"


def system(snap: dict[str, Any]) -> RenderableType:
    """oracle status's snapshot (console.status), one line per section."""
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column(overflow="fold")
    span = f"{snap['window_hours']:g} h"
    grid.add_row(f"proposals ({span})", _counts(snap["proposals"]))
    grid.add_row(f"executions ({span})", _counts(snap["executions"]["by_status"])
                 + f"; open now: {_counts(snap['executions']['open'])}")
    grid.add_row(f"claims ({span})", _counts(snap["claims"]))
    grid.add_row(f"rejections by validator ({span})", _counts(snap["rejections"], "check"))
    grid.add_row("cooldowns in force (G5)", "; ".join(
        f"{views.user_cell(r)} {r['market']} {r['mode']} (last {r['side']}) until "
        f"{clock(r['until'])}" for r in snap["cooldowns"][:4]) or "none")
    grid.add_row("anti-flip in force (G6)", "; ".join(
        f"{views.user_cell(r)} {r['market']} {r['mode']}: no {r['blocked_side']} until "
        f"{clock(r['until'])}" for r in snap["anti_flip"][:4]) or "none")
    grid.add_row("GPT budget (USD)", "; ".join(
        f"{views.user_cell(r)} hour {views.cell(r['spent_hour_usd'])}/"
        f"{views.cell(r['hourly_limit_usd'])}, day {views.cell(r['spent_day_usd'])}/"
        f"{views.cell(r['daily_limit_usd'])}" for r in snap["gpt"]["users"])
                 or "no GPT spend in the last hour or today (ORACLE=rules costs nothing)")
    leases = snap["leases"]
    grid.add_row("scan jobs and leases (G2)",
                  f"leases held {leases['held']} · expired but held {leases['expired_held']} · "
                  f"due {leases['due']} · enabled {leases['enabled']} · failing "
                  f"{leases['failing']} · next run {clock(leases['next_run_at'])}")
    return grid


def ticks_table(cron: LocalCron) -> RenderableType:
    job = cron.jobs.get("scan_scheduler tick")
    results = list(job.results)[-3:] if job else []
    t = _table("last ticks", *TICK_FIELDS, "ms", "answer")
    for r in reversed(results):
        t.add_row(clock(r.at), *(views.cell(r.counts.get(k)) for k in TICK_FIELDS),
                  str(r.duration_ms), r.error or str(r.status))
    return t if results else Text("last ticks: none yet", style="dim")


def recent_tables(recent: dict[str, list[dict[str, Any]]]) -> list[RenderableType]:
    executions = _table("latest executions", "user", "market", "side", "EUR", "status",
                        "filled", "idempotency key", "error")
    for r in recent["executions"]:
        executions.add_row(clock(r["claimed_at"]), views.user_cell(r), r["market"], r["side"],
                           views.cell(r["amount_quote"]), f"{r['status']} ({r['mode']})",
                           views.cell(r["filled_amount"]), r["idempotency_key"],
                           views.cell(r["error_code"]))
    proposals = _table("latest proposals", "user", "market", "side", "EUR", "confidence",
                       "source", "status")
    for r in recent["proposals"]:
        proposals.add_row(clock(r["created_at"]), views.user_cell(r), r["market"], r["side"],
                          views.cell(r["amount_quote"]), views.cell(r["confidence"]),
                          r["source"], r["status"] + (f" ({r['decided_by']})"
                                                      if r["decided_by"] else ""))
    return [executions if recent["executions"] else Text("latest executions: none", style="dim"),
            proposals if recent["proposals"] else Text("latest proposals: none", style="dim")]


def call_line(result: CallResult) -> str:
    """One plain line per cron call (the output when stdout is not a terminal)."""
    return f"{views.cell(result.at)} {result.job}: {result_text(result).plain}"
