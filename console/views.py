"""How the console shows things: rich tables for people, `--json` for machines.

Nothing here reads the database; each function renders what a command module returned. JSON keeps
money exact (Decimal → string), datetimes as ISO 8601 UTC, uuids as strings.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import IO, Any

from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from console.verify import Result

WIDTH_WHEN_PIPED = 400  # wide enough that ids and timestamps never fold in a log or a pipe


def console(out: IO[str]) -> Console:
    """A console on `out`: the terminal's width on a terminal, a fixed wide one when piped (so
    uuids are never folded), colours only on a terminal."""
    tty = out.isatty()
    return Console(file=out, width=None if tty else WIDTH_WHEN_PIPED, soft_wrap=False,
                   highlight=False, emoji=False, force_terminal=None if tty else False)


# -- JSON -----------------------------------------------------------------------------------------
def jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, uuid.UUID):
        return str(value)
    return value


def print_json(out: IO[str], value: Any) -> None:
    out.write(json.dumps(jsonable(value), indent=2, ensure_ascii=False) + "\n")


# -- cells ----------------------------------------------------------------------------------------
def cell(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, datetime):
        return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S") + "Z"
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, dict | list):
        return json.dumps(jsonable(value), ensure_ascii=False, separators=(", ", ": "))
    return str(value)


def table(title: str, columns: Sequence[str], rows: Iterable[Sequence[Any]],
          empty: str = "none") -> Group | Text:
    """A titled table (the title on its own line, so it never wraps to the table's width), or
    one line saying there is nothing."""
    rows = list(rows)
    if not rows:
        return Text.assemble((title, "bold"), f": {empty}")
    t = Table(show_edge=False, pad_edge=False)
    for name in columns:
        t.add_column(name, overflow="fold")
    for row in rows:
        t.add_row(*(cell(v) for v in row))
    return Group(Text(title, style="bold"), t)


def user_cell(row: Mapping[str, Any]) -> str:
    return str(row.get("email") or row.get("user_id"))


# -- status ---------------------------------------------------------------------------------------
def render_status(out: IO[str], snap: Mapping[str, Any], target: str) -> None:
    c = console(out)
    controls = snap["controls"]
    halted = controls.get("trading_halted")
    headline = Text("TRADING HALTED" if halted else "trading running",
                    style="bold red" if halted else "bold green")
    c.print(Text.assemble("oracle status — ", target, " at ", cell(snap["now"]), "\n", headline))
    last = controls.get("last_switch")
    c.print(table("system controls", ["trading halted", "live trading allowed",
                                      "max order (EUR, global)", "updated", "last halt/resume"],
                  [[halted, controls.get("live_trading_allowed"), controls.get("max_order_quote"),
                    controls.get("updated_at"),
                    f"{last['event'].split('.')[-1]} {cell(last['created_at'])} by "
                    f"{last['db_user']}: {last['reason']}" if last else None]]))
    hours = snap["window_hours"]
    span = f"last {hours:g} h"
    c.print(table(f"proposals by status ({span})", ["status", "count"],
                  snap["proposals"].items()))
    c.print(table(f"executions by status ({span})", ["status", "count"],
                  snap["executions"]["by_status"].items()))
    c.print(table("open executions (any age)", ["status", "count", "oldest claim"],
                  [[r["status"], r["count"], r["oldest_claimed_at"]]
                   for r in snap["executions"]["open"]]))
    c.print(table("exchange discrepancies (not acknowledged; `oracle verify` fails on them)",
                  ["kind", "market", "exchange order", "clientOrderId", "exchange status",
                   "filled", "execution", "was", "now", "detected", "id"],
                  [[r["kind"], r["market"], r["exchange_order_id"], r["client_order_id"],
                    r["exchange_status"], r["filled_amount"], r["execution_id"],
                    r["execution_status"], r["recorded_status"], r["detected_at"], r["id"]]
                   for r in snap.get("discrepancies", [])]))
    c.print(table(f"claims by outcome ({span})", ["outcome", "count"], snap["claims"].items()))
    c.print(table(f"rejections by validator ({span})", ["validator", "count", "last"],
                  [[r["check"], r["count"], r["last_at"]] for r in snap["rejections"]]))
    c.print(table("cooldowns in force (G5)", ["user", "market", "mode", "last side",
                                              "last order", "until"],
                  [[user_cell(r), r["market"], r["mode"], r["side"], r["claimed_at"], r["until"]]
                   for r in snap["cooldowns"]]))
    c.print(table("anti-flip in force (G6)", ["user", "market", "mode", "blocked side", "until"],
                  [[user_cell(r), r["market"], r["mode"], r["blocked_side"], r["until"]]
                   for r in snap["anti_flip"]]))
    gpt = snap["gpt"]
    c.print(table(f"GPT spend vs limits (USD, top {gpt['top']})",
                  ["user", "last hour", "hourly limit", "today (UTC)", "daily limit"],
                  [[user_cell(r), r["spent_hour_usd"], r["hourly_limit_usd"], r["spent_day_usd"],
                    r["daily_limit_usd"]] for r in gpt["users"]],
                  empty="no GPT spend in the last hour or today"))
    leases = snap["leases"]
    c.print(table("scan jobs", ["leases held", "expired, still held", "due", "enabled",
                                "disabled", "failing", "next run"],
                  [[leases["held"], leases["expired_held"], leases["due"], leases["enabled"],
                    leases["disabled"], leases["failing"], leases["next_run_at"]]]))
    lag = snap["scheduling"]
    c.print(table("scheduling lag (claim − next_run_at, s)",
                  ["jobs claimed", "p50", "p99", "max", "oldest due now"],
                  [[lag["claimed"], lag["lag_p50_seconds"], lag["lag_p99_seconds"],
                    lag["lag_max_seconds"], lag["oldest_due_seconds"]]]))


# -- locks ----------------------------------------------------------------------------------------
def render_locks(out: IO[str], rows: Sequence[Mapping[str, Any]]) -> None:
    console(out).print(table(
        "scan-job leases (debug_check_locks)",
        ["job", "user", "market", "locked by", "locked at", "expires", "expired"],
        [[r["job_id"], r["user_id"], r["market"], r["locked_by"], timestamp(r["locked_at"]),
          timestamp(r["lock_expires_at"]), r["expired"]] for r in rows],
        empty="no scan job is leased"))


def timestamp(value: Any) -> Any:
    """An RPC's ISO 8601 timestamp string as a datetime (shown like the others), else as is."""
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value).astimezone(UTC)
        except ValueError:
            return value
    return value


# -- budget ---------------------------------------------------------------------------------------
def render_budget(out: IO[str], data: Mapping[str, Any]) -> None:
    c = console(out)
    check, analytics = data["check"], data["analytics"]
    who = f"{data['email']} ({data['user_id']})" if data.get("email") else str(data["user_id"])
    c.print(Text.assemble("GPT budget of ", who))
    c.print(table("now (check_gpt_budget)",
                  ["allowed", "reason", "last hour", "hourly limit", "today (UTC)",
                   "daily limit"],
                  [[check.get("allowed"), check.get("reason"), check.get("spent_hour_usd"),
                    check.get("hourly_limit_usd"), check.get("spent_day_usd"),
                    check.get("daily_limit_usd")]]))
    columns = ["spend_usd", "reserved_usd", "calls", "reservations", "released",
               "prompt_tokens", "cached_prompt_tokens", "completion_tokens"]
    c.print(table(f"by day (get_budget_analytics, {analytics.get('days')} days)",
                  ["day", *columns],
                  [[d.get("day"), *(d.get(k) for k in columns)]
                   for d in analytics.get("by_day", [])]))
    c.print(table("by model", ["model", *columns],
                  [[m.get("model"), *(m.get(k) for k in columns)]
                   for m in analytics.get("by_model", [])],
                  empty="no GPT calls in the period"))
    totals = analytics.get("totals") or {}
    c.print(table("totals", columns, [[totals.get(k) for k in columns]]))


# -- audit ----------------------------------------------------------------------------------------
PROPOSAL_FIELDS = ("id", "user_id", "email", "market", "side", "amount_quote", "reference_price",
                   "confidence", "source", "model", "status", "decided_by", "decided_at",
                   "created_at", "expires_at", "scan_job_id", "rationale")
EXECUTION_FIELDS = ("id", "mode", "status", "idempotency_key", "client_order_id",
                    "exchange_order_id", "amount_quote", "filled_amount", "filled_amount_quote",
                    "price", "fee_paid", "fee_currency", "error_code", "error_message",
                    "claimed_at", "submitted_at", "completed_at")
TRADE_FIELDS = ("amount", "amount_quote", "price", "fee_paid", "fee_currency", "executed_at")


def record(title: str, row: Mapping[str, Any] | None, fields: Sequence[str],
           empty: str) -> Group | Text:
    """One row as a two-column field/value table."""
    if row is None:
        return Text.assemble((title, "bold"), f": {empty}")
    t = Table(show_edge=False, pad_edge=False, show_header=False)
    t.add_column("field", style="dim", no_wrap=True)
    t.add_column("value", overflow="fold")
    for name in fields:
        if name in row:
            t.add_row(name, cell(row[name]))
    return Group(Text(title, style="bold"), t)


def render_audit(out: IO[str], data: Mapping[str, Any]) -> None:
    c = console(out)
    c.print(Text.assemble("audit trail of proposal ", str(data["proposal_id"])))
    c.print(record("proposal", data["proposal"], PROPOSAL_FIELDS,
                   "not found (only audit rows name it)"))
    c.print(record("execution", data["execution"], EXECUTION_FIELDS, "none (never claimed)"))
    if data["trade"] is not None:
        c.print(record("ledger (trade_history)", data["trade"], TRADE_FIELDS, "none"))
    c.print(table(f"events ({len(data['events'])}, in the order written)",
                  ["#", "at", "event", "detail"],
                  [[e["id"], e["created_at"], e["event"], e["detail"]] for e in data["events"]]))


# -- halt / resume --------------------------------------------------------------------------------
def render_switch(out: IO[str], result: Mapping[str, Any], halted: bool) -> None:
    c = console(out)
    state = "HALTED" if result.get("trading_halted") else "running"
    if result.get("changed"):
        what = f"trading is now {state}"
    else:
        what = f"trading was already {state}; nothing changed"
    c.print(Text(what, style="bold red" if result.get("trading_halted") else "bold green"))
    c.print(f"(audited as system_controls.{'halt' if halted else 'resume'}, "
            f"audit row {cell(result.get('audit_id'))}; live trading allowed: "
            f"{cell(result.get('live_trading_allowed'))}; global max order: "
            f"{cell(result.get('max_order_quote'))} EUR)")


# -- verify ---------------------------------------------------------------------------------------
MARK = {"pass": "PASS", "fail": "FAIL", "skip": "SKIP"}


def render_verify(out: IO[str], results: Sequence[Result], target: str) -> None:
    """Plain lines (grep-able in a deploy log): one per check, then one per problem."""
    width = max((len(r.check) for r in results), default=0)
    out.write(f"oracle verify — {target}\n")
    for r in results:
        if r.status == "fail":
            out.write(f"{MARK[r.status]}  {r.check:<{width}}  {r.title}\n")
            for problem in r.problems:
                out.write(f"      {'':<{width}}  - {problem}\n")
        else:
            out.write(f"{MARK[r.status]}  {r.check:<{width}}  {r.summary or r.title}\n")
    failed = [r.check for r in results if r.status == "fail"]
    passed = sum(r.status == "pass" for r in results)
    skipped = sum(r.status == "skip" for r in results)
    if failed:
        out.write(f"verify FAILED: {', '.join(failed)} ({len(failed)} of {len(results)} checks "
                  f"failed, {passed} passed, {skipped} skipped)\n")
    else:
        out.write(f"verify passed: {passed} checks passed, {skipped} skipped\n")
