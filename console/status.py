"""`oracle status`: what the system is doing right now, read in one READ ONLY transaction.

    controls       system_controls (halted? live allowed? global cap) and the last halt/resume
    proposals      trade_proposals by status, created in the window
    executions     trade_executions by status, claimed in the window; the open ones of any age
    discrepancies  what the exchange did that no execution says, not yet acknowledged (the
                   reconciler's sweep: orders with no execution, executions it contradicted)
    claims         claim outcomes in the window (audit log: claim.*)
    rejections     rejected claims by validator in the window (each failed check of claim.rejected)
    cooldowns      (user, market, mode) inside cooldown_seconds of their last counting order (G5)
    anti_flip      (user, market, mode) whose opposite side is blocked (G6)
    gpt            GPT spend vs the hourly and daily limits, top N users (private.gpt_spend: the
                   same figures reserve_gpt_budget decides on)
    leases         scan jobs: leases held / expired-but-held / due / enabled / failing (G2)
    scheduling     scheduling lag (a job's claim − its next_run_at) of the jobs claimed in the
                   window, p50 / p99 / max, and how late the oldest job due right now is

Every value is JSON-able after `views.jsonable` (Decimal money, UTC datetimes).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import psycopg
from psycopg.rows import dict_row

OPEN_STATUSES = ("claimed", "submitted", "unknown")
LISTED = 50  # rows of the cooldown / anti-flip lists


def _rows(conn: psycopg.Connection[Any], query: str, params: Any = None) -> list[dict[str, Any]]:
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(query, params)
        return cur.fetchall()


def snapshot(conn: psycopg.Connection[Any], *, window: timedelta, top: int) -> dict[str, Any]:
    controls = _rows(conn, """
        select c.trading_halted, c.live_trading_allowed, c.max_order_quote, c.updated_at
        from public.system_controls c""")
    last_switch = _rows(conn, """
        select l.event, l.detail ->> 'reason' as reason, l.detail ->> 'db_user' as db_user,
               l.created_at
        from public.execution_audit_log l
        where l.event in ('system_controls.halt', 'system_controls.resume')
        order by l.id desc limit 1""")
    return {
        "now": _rows(conn, "select now() as now")[0]["now"],
        "window_hours": window.total_seconds() / 3600,
        "controls": {**(controls[0] if controls else {}),
                     "last_switch": last_switch[0] if last_switch else None},
        "proposals": _counts(conn, """
            select p.status, count(*) as count from public.trade_proposals p
            where p.created_at >= now() - %s::interval group by 1 order by 1""", window),
        "executions": {
            "by_status": _counts(conn, """
                select e.status, count(*) as count from public.trade_executions e
                where e.claimed_at >= now() - %s::interval group by 1 order by 1""", window),
            "open": _rows(conn, """
                select e.status, count(*) as count, min(e.claimed_at) as oldest_claimed_at
                from public.trade_executions e
                where e.status in ('claimed', 'submitted', 'unknown')
                group by 1 order by 1"""),
        },
        "discrepancies": _rows(conn, """
            select d.id, d.kind, d.market, d.exchange_order_id, d.client_order_id,
                   d.execution_id, d.exchange_status, d.execution_status, d.recorded_status,
                   d.facts -> 'result' ->> 'filled_amount' as filled_amount, d.detected_at
            from private.exchange_discrepancies d
            where d.acknowledged_at is null
            order by d.detected_at, d.id limit %s""", (LISTED,)),
        "claims": _counts(conn, """
            select substr(l.event, 7) as status, count(*) as count
            from public.execution_audit_log l
            where l.event like 'claim.%%' and l.created_at >= now() - %s::interval
            group by 1 order by 1""", window),
        "rejections": _rows(conn, """
            select f ->> 'check' as "check", count(*) as count, max(l.created_at) as last_at
            from public.execution_audit_log l
            cross join lateral jsonb_array_elements(
              case when jsonb_typeof(l.detail -> 'failed_checks') = 'array'
                   then l.detail -> 'failed_checks' else '[]'::jsonb end) f
            where l.event = 'claim.rejected' and l.created_at >= now() - %s::interval
            group by 1 order by 2 desc, 1""", (window,)),
        "cooldowns": _rows(conn, """
            select * from (
              select distinct on (e.user_id, e.market, e.mode)
                     e.user_id, u.email, e.market, e.mode, e.side, e.claimed_at,
                     e.claimed_at + make_interval(secs => s.cooldown_seconds) as until
              from public.trade_executions e
              join public.trading_settings s on s.user_id = e.user_id
              left join auth.users u on u.id = e.user_id
              where e.counts_toward_limits and s.cooldown_seconds > 0
                and e.claimed_at > now() - make_interval(secs => s.cooldown_seconds)
              order by e.user_id, e.market, e.mode, e.claimed_at desc) c
            order by c.until desc, c.user_id, c.market limit %s""", (LISTED,)),
        "anti_flip": _rows(conn, """
            select * from (
              select distinct on (e.user_id, e.market, e.mode, e.side)
                     e.user_id, u.email, e.market, e.mode,
                     case e.side when 'buy' then 'sell' else 'buy' end as blocked_side,
                     e.claimed_at + make_interval(secs => s.anti_flip_seconds) as until
              from public.trade_executions e
              join public.trading_settings s on s.user_id = e.user_id
              left join auth.users u on u.id = e.user_id
              where e.counts_toward_limits and s.anti_flip_seconds > 0
                and e.claimed_at > now() - make_interval(secs => s.anti_flip_seconds)
              order by e.user_id, e.market, e.mode, e.side, e.claimed_at desc) a
            order by a.until desc, a.user_id, a.market limit %s""", (LISTED,)),
        "gpt": {
            "top": top,
            "users": _rows(conn, """
                with spenders as (
                  select distinct l.user_id from public.gpt_usage_log l
                  where l.status <> 'released'
                    and l.created_at >= least(now() - interval '1 hour',
                          date_trunc('day', now() at time zone 'utc') at time zone 'utc'))
                select sp.user_id, u.email,
                       g.spent_hour_usd, t.gpt_hourly_budget_usd as hourly_limit_usd,
                       g.spent_day_usd, t.gpt_daily_budget_usd as daily_limit_usd
                from spenders sp
                cross join lateral private.gpt_spend(sp.user_id) g
                join public.trading_settings t on t.user_id = sp.user_id
                left join auth.users u on u.id = sp.user_id
                order by g.spent_day_usd desc, g.spent_hour_usd desc, sp.user_id
                limit %s""", (top,)),
        },
        "leases": _rows(conn, """
            select count(*) filter (where j.locked_by is not null
                                      and j.lock_expires_at > now()) as held,
                   count(*) filter (where j.locked_by is not null
                                      and j.lock_expires_at <= now()) as expired_held,
                   count(*) filter (where j.enabled and j.next_run_at <= now()
                                      and (j.locked_by is null or j.lock_expires_at <= now()))
                     as due,
                   count(*) filter (where j.enabled) as enabled,
                   count(*) filter (where not j.enabled) as disabled,
                   count(*) filter (where j.consecutive_failures > 0) as failing,
                   min(j.next_run_at) filter (where j.enabled and j.locked_by is null)
                     as next_run_at
            from public.scan_jobs j""")[0],
        "scheduling": _rows(conn, """
            with claimed as (
              select j.last_claim_lag_seconds as lag from public.scan_jobs j
              where j.last_claim_lag_seconds is not null
                and greatest(j.locked_at, j.last_run_at) >= now() - %(w)s::interval)
            select (select count(*) from claimed) as claimed,
                   (select percentile_disc(0.5) within group (order by c.lag) from claimed c)
                     as lag_p50_seconds,
                   (select percentile_disc(0.99) within group (order by c.lag) from claimed c)
                     as lag_p99_seconds,
                   (select max(c.lag) from claimed c) as lag_max_seconds,
                   (select round(max(extract(epoch from now() - j.next_run_at)), 3)
                      from public.scan_jobs j
                     where j.enabled and j.next_run_at <= now()
                       and (j.locked_by is null or j.lock_expires_at <= now()))
                     as oldest_due_seconds""", {"w": window})[0],
    }


def _counts(conn: psycopg.Connection[Any], query: str, window: timedelta) -> dict[str, int]:
    return {row["status"]: int(row["count"]) for row in _rows(conn, query, (window,))}


def recent(conn: psycopg.Connection[Any], *, limit: int) -> dict[str, list[dict[str, Any]]]:
    """The latest proposals and executions with their states (the live view of `make run`)."""
    return {
        "proposals": _rows(conn, """
            select p.created_at, u.email, p.user_id, p.market, p.side, p.amount_quote,
                   p.confidence, p.source, p.status, p.decided_by
            from public.trade_proposals p left join auth.users u on u.id = p.user_id
            order by p.created_at desc, p.id limit %s""", (limit,)),
        "executions": _rows(conn, """
            select e.claimed_at, u.email, e.user_id, e.market, e.side, e.amount_quote, e.mode,
                   e.status, e.filled_amount, e.filled_amount_quote, e.idempotency_key,
                   e.error_code
            from public.trade_executions e left join auth.users u on u.id = e.user_id
            order by e.claimed_at desc, e.id limit %s""", (limit,)),
    }
