"""Fault injection for the next `times` `POST /order` requests (SPEC §5).

- `error`: answer `http_status`/`error_code` (default 500/101) without placing; with
  `"place": true` the order is placed first, which is what a real 101/109 may mean. With
  `"error_code": null` the body is an HTML page (a proxy's 502) instead of Bitvavo's JSON.
- `latency`: sleep `latency_ms`, then process normally. With `"hold": true` the request waits
  until `release()` (POST /_sandbox/faults/release) instead, `latency_ms` at most: a late execution
  of a request received inside its access window, ended when the test chooses (no wall-clock wait).
- `drop_after_accept`: place (and fill) the order, then close the connection without a byte.
- `unfilled`: a market order is placed and answered 200, but fills only `fill_fraction` (default
  "0") of its size and ends with `status`: `expired` (default), `canceledMarketProtection` or
  `partiallyFilled` (which needs a fill). Balances, `GET /order`, `/orders`, `/trades` and
  `/ordersOpen` (a partiallyFilled order stays open until cancelled) agree with the answer.
  A limit order consumes the fault and is placed normally.
- `none`: clear the plan.

A fault is consumed by a `POST /order` that passed authentication and the rate limit.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

KINDS = ("none", "latency", "error", "drop_after_accept", "unfilled")
UNFILLED_STATUSES = ("expired", "canceledMarketProtection", "partiallyFilled")


@dataclass(frozen=True)
class Fault:
    kind: str
    http_status: int = 500
    error_code: int | None = 101
    latency_ms: int = 0
    place: bool = False
    hold: bool = False
    status: str = "expired"
    fill_fraction: Decimal = Decimal(0)

    def describe(self) -> dict[str, object]:
        description: dict[str, object] = {
            "fault": self.kind, "http_status": self.http_status, "error_code": self.error_code,
            "latency_ms": self.latency_ms, "place": self.place}
        if self.kind == "latency":
            description["hold"] = self.hold
        if self.kind == "unfilled":
            description.update(status=self.status, fill_fraction=str(self.fill_fraction))
        return description


class FaultPlan:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._fault: Fault | None = None
        self._remaining = 0
        # Held requests wait for the release generation to move on (release() or reset()).
        self._holds = threading.Condition()
        self._release_generation = 0
        self._held = 0

    def configure(self, spec: dict[str, object]) -> dict[str, object]:
        kind = spec.get("fault")
        if kind not in KINDS:
            raise ValueError(f"fault must be one of {', '.join(KINDS)}")
        times = spec.get("times", 1)
        if not isinstance(times, int) or isinstance(times, bool) or times < 0:
            raise ValueError("times must be a non-negative integer")
        http_status = spec.get("http_status", 500)
        error_code = spec.get("error_code", 101)
        latency_ms = spec.get("latency_ms", 0)
        place = spec.get("place", False)
        if not isinstance(http_status, int) or not 100 <= http_status <= 599:
            raise ValueError("http_status must be an HTTP status code")
        if error_code is not None and not isinstance(error_code, int):
            raise ValueError("error_code must be an integer or null")
        if not isinstance(latency_ms, int) or not 0 <= latency_ms <= 120_000:
            raise ValueError("latency_ms must be an integer between 0 and 120000")
        if not isinstance(place, bool):
            raise ValueError("place must be a boolean")
        hold = spec.get("hold", False)
        if not isinstance(hold, bool) or (hold and kind != "latency"):
            raise ValueError("hold must be a boolean, and only a latency fault holds")
        status = spec.get("status", "expired")
        if status not in UNFILLED_STATUSES:
            raise ValueError(f"status must be one of {', '.join(UNFILLED_STATUSES)}")
        fill_fraction = _fraction(spec.get("fill_fraction", "0"))
        if status == "partiallyFilled" and fill_fraction == 0:
            raise ValueError("a partiallyFilled order needs a fill_fraction above 0")
        with self._lock:
            if kind == "none" or times == 0:
                self._fault, self._remaining = None, 0
            else:
                self._fault = Fault(str(kind), http_status, error_code, latency_ms, place,
                                    hold, str(status), fill_fraction)
                self._remaining = times
            return self._describe_locked()

    def take(self) -> Fault | None:
        """The fault for this `POST /order`, if any; counts it down."""
        with self._lock:
            if self._fault is None:
                return None
            fault = self._fault
            self._remaining -= 1
            if self._remaining <= 0:
                self._fault, self._remaining = None, 0
            return fault

    def delay(self, fault: Fault) -> None:
        """A latency fault's wait: `latency_ms`, or until released when it holds."""
        seconds = fault.latency_ms / 1000
        if not fault.hold:
            time.sleep(seconds)
            return
        with self._holds:
            generation = self._release_generation
            self._held += 1
            try:
                self._holds.wait_for(lambda: self._release_generation != generation, seconds)
            finally:
                self._held -= 1

    def release(self) -> int:
        """Let every held request go on; how many there were."""
        with self._holds:
            held = self._held
            self._release_generation += 1
            self._holds.notify_all()
            return held

    def describe(self) -> dict[str, object]:
        with self._lock:
            description = self._describe_locked()
        with self._holds:
            return {**description, "held": self._held}

    def _describe_locked(self) -> dict[str, object]:
        if self._fault is None:
            return {"fault": "none", "remaining": 0}
        return {**self._fault.describe(), "remaining": self._remaining}

    def reset(self) -> None:
        with self._lock:
            self._fault, self._remaining = None, 0
        self.release()


def _fraction(value: object) -> Decimal:
    """A fill fraction in [0, 1): a string or integer (never a float), like Bitvavo's numbers."""
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise ValueError('fill_fraction must be a string like "0.5"')
    try:
        fraction = Decimal(value)
    except InvalidOperation:
        raise ValueError('fill_fraction must be a string like "0.5"') from None
    if not fraction.is_finite() or not 0 <= fraction < 1:
        raise ValueError("fill_fraction must be at least 0 and below 1")
    return fraction
