"""The tick's leases on its claimed jobs, and the heartbeat that keeps them (G2).

Every job a tick claims is leased to the tick's worker id for JOB_LEASE_SECONDS. From the claim to
its batch's release — while the job runs, and after it finished but is not yet released — a
background thread extends the leases of all of them every HEARTBEAT_SECONDS with one
heartbeat_scan_jobs call per thousand jobs, which extends a lease only while this worker still
holds it.

A lease is *lost* when
- heartbeat_scan_jobs leaves it out of its answer: the lease was freed (cleanup_expired_locks) or
  taken over by another worker after it expired — e.g. this process stalled past it; or
- the last confirmed extension is older than the lease (minus a safety margin), measured with the
  monotonic clock from when that heartbeat (or the claim) was *sent*: a heartbeat that fails (the
  database unreachable) confirms nothing, and we cannot know the lease is still ours.

A job's lease is checked before its proposal is written, and a job that lost it writes nothing.
That is the cheap half; the other half is in the database: create_scan_proposals writes only for
the lease holder, under the job's row lock, so a job that lost its lease between the check and the
write still writes nothing.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from shared.api.steplog import StepLog
from shared.rpc.errors import RpcError
from shared.rpc.port import RpcPort

# Treat a lease as gone this long before it would expire by our own clock.
SAFETY_MARGIN_SECONDS = 2.0
# heartbeat_scan_jobs takes at most this many job ids per call.
BEAT_BATCH = 1000


class LeaseLost(Exception):
    """This worker no longer holds the job's lease: the job must stop and write nothing more."""


@dataclass
class Lease:
    job_id: str
    lease_seconds: float
    confirmed_at: float  # monotonic time the claim / last successful heartbeat was sent
    clock: Callable[[], float] = time.monotonic
    lost: threading.Event = field(default_factory=threading.Event)
    reason: str | None = None

    @property
    def valid_until(self) -> float:
        return self.confirmed_at + self.lease_seconds - SAFETY_MARGIN_SECONDS

    def check(self) -> None:
        if self.lost.is_set():
            raise LeaseLost(self.reason or "the lease was lost")
        if self.clock() >= self.valid_until:
            raise LeaseLost("the lease may have expired: no heartbeat was confirmed within it")

    def lose(self, reason: str) -> None:
        if not self.lost.is_set():
            self.reason = reason
            self.lost.set()


class Heartbeat:
    """Extends the leases of a tick's unreleased jobs every `interval` seconds, in one thread."""

    def __init__(self, rpc: RpcPort, worker_id: str, lease_seconds: int, interval: float,
                 log: StepLog, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._rpc = rpc
        self._worker_id = worker_id
        self._lease_seconds = lease_seconds
        self._interval = interval
        self._log = log
        self._clock = clock
        self._leases: dict[str, Lease] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"heartbeat-{worker_id}",
                                        daemon=True)

    def track(self, job_id: str, claim_sent_at: float) -> Lease:
        lease = Lease(job_id, self._lease_seconds, claim_sent_at, self._clock)
        with self._lock:
            self._leases[job_id] = lease
        return lease

    def forget(self, job_ids: list[str]) -> None:
        """Released jobs: no longer ours to extend."""
        with self._lock:
            for job_id in job_ids:
                self._leases.pop(job_id, None)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=30)

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            with self._lock:
                leases = [lease for lease in self._leases.values() if not lease.lost.is_set()]
            for start in range(0, len(leases), BEAT_BATCH):
                if self._stop.is_set():
                    return
                self._beat(leases[start:start + BEAT_BATCH])

    def _beat(self, leases: list[Lease]) -> None:
        sent = self._clock()
        try:
            held = self._rpc.call("heartbeat_scan_jobs", {
                "p_worker_id": self._worker_id, "p_job_ids": [lease.job_id for lease in leases],
                "p_lock_seconds": self._lease_seconds})
        except RpcError as exc:
            # Confirms nothing; Lease.check notices when the last confirmation grows too old.
            self._log.event("heartbeat", "error", severity="WARNING", jobs=len(leases),
                            error=type(exc).__name__, error_code=exc.code)
            return
        extended = {str(job_id) for job_id in held}
        lost = [lease.job_id for lease in leases if lease.job_id not in extended]
        for lease in leases:
            if lease.job_id in extended:
                lease.confirmed_at = sent
            else:
                lease.lose("heartbeat_scan_jobs: another worker holds the lease, or it was freed")
        if lost:
            self._log.event("heartbeat", "lease_lost", severity="WARNING", job_ids=lost)
