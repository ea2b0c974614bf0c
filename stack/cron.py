"""The local stand-in for Supabase Cron: it calls the functions as the hosted schedule would.

    scan_scheduler tick   POST <scan_scheduler>/            every TICK seconds (hosted: every
                                                            minute, pg_cron + pg_net, 000500)
    reconcile             POST <trading_execute>/reconcile  every RECONCILE seconds
    run_maintenance       pg_cron inside the cluster itself (migration 000500), every minute: not
                          called from here, only reported (`last_maintenance`)

Both calls carry `Authorization: Bearer <service-role key>` and a JSON body, as the cron job sends
them. A call's answer is kept as a `CallResult` (HTTP status, the counts it returned or the error);
a failing call is shown, never retried early: the next one comes at its time.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx
import psycopg

# The tick's own bound is the function's timeout (FUNCTION_TIMEOUT_SECONDS, 120 s); pg_net waits
# as long. Reconcile settles at most a batch of executions, each a GET /order.
CALL_TIMEOUT = httpx.Timeout(130.0, connect=5.0)
KEPT = 6  # results kept per job for the view


@dataclass(frozen=True)
class CallResult:
    job: str
    at: datetime
    duration_ms: int
    status: int | None                   # None: no HTTP answer
    counts: Mapping[str, Any]            # the JSON object it answered (empty on failure)
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass
class Job:
    name: str
    url: str
    every: float
    body: Mapping[str, Any] = field(default_factory=dict)
    next_at: float = 0.0
    results: deque[CallResult] = field(default_factory=lambda: deque(maxlen=KEPT))
    calls: int = 0
    failures: int = 0

    @property
    def last(self) -> CallResult | None:
        return self.results[-1] if self.results else None


class LocalCron:
    def __init__(self, *, service_key: str, jobs: list[Job]) -> None:
        self.jobs = {job.name: job for job in jobs}
        self._client = httpx.Client(timeout=CALL_TIMEOUT,
                                    headers={"Authorization": f"Bearer {service_key}"})

    def close(self) -> None:
        self._client.close()

    def start(self, now: float, *, first_in: Mapping[str, float] | None = None) -> None:
        """Schedule every job's first call (`first_in` seconds from now; default: right away)."""
        for job in self.jobs.values():
            job.next_at = now + (first_in or {}).get(job.name, 0.0)

    def next_due(self) -> float:
        return min(job.next_at for job in self.jobs.values())

    def run_due(self, now: float) -> list[CallResult]:
        done = []
        for job in self.jobs.values():
            if job.next_at <= now:
                done.append(self.call(job.name))
                job.next_at = max(job.next_at + job.every, time.monotonic())
        return done

    def call(self, name: str, body: Mapping[str, Any] | None = None) -> CallResult:
        job = self.jobs[name]
        started = time.monotonic()
        at = datetime.now(UTC)
        status: int | None = None
        counts: dict[str, Any] = {}
        error: str | None = None
        try:
            response = self._client.post(job.url, json=dict(body if body is not None else job.body))
            status = response.status_code
            document = _json(response)
            if response.status_code == 200 and isinstance(document, dict):
                counts = document
            else:
                detail = document.get("detail") if isinstance(document, dict) else None
                error = f"HTTP {response.status_code}" + (f": {detail}" if detail else "")
                if isinstance(document, dict):  # a 503 tick still reports its counts
                    counts = {k: v for k, v in document.items() if isinstance(v, int)}
        except httpx.HTTPError as exc:
            error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        result = CallResult(job=name, at=at, status=status, counts=counts, error=error,
                            duration_ms=round((time.monotonic() - started) * 1000))
        job.results.append(result)
        job.calls += 1
        job.failures += error is not None
        return result


def _json(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None


def last_maintenance(conn: psycopg.Connection[Any]) -> dict[str, Any] | None:
    """pg_cron's last run of `run-maintenance` (cron.job_run_details), or None before the first:
    the proof that the cluster's own scheduler is running the maintenance every minute."""
    row = conn.execute("""
        select d.status, d.start_time, d.end_time, d.return_message,
               (select count(*) from cron.job_run_details r where r.jobid = j.jobid) as runs,
               j.active
        from cron.job j
        left join lateral (select * from cron.job_run_details r where r.jobid = j.jobid
                           order by r.runid desc limit 1) d on true
        where j.jobname = 'run-maintenance'""").fetchone()
    if row is None:
        return None
    status, start, end, message, runs, active = row
    return {"status": status, "start_time": start, "end_time": end, "message": message,
            "runs": int(runs), "active": active}
