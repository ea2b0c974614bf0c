"""Client-side view of Bitvavo's rate-limit budget (reference/bitvavo-api.md, "Rate limits").

Bitvavo gives every key (or IP) 1000 weight points per minute and reports what is left in
`bitvavo-ratelimit-remaining` and when the window resets in `bitvavo-ratelimit-resetat` (ms).
Going over earns a 105 ban (a minute for a key, fifteen for an IP). So we:
  - stop *before* the limit: a request whose weight would take the budget below a safety margin
    waits for the reset when that is short enough, and is refused (RateLimitWouldExceed) when not;
  - respect a ban: after a 105 answer every request is refused locally until it expires — the
    time in the message, else a minute after the window's `resetat`, else a minute from now.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from datetime import UTC, datetime

from shared.exchange.errors import RateLimitBanned, RateLimitWouldExceed

Clock = Callable[[], float]
"""Seconds since the epoch, like time.time."""
Sleep = Callable[[float], None]

DEFAULT_SAFETY_MARGIN = 25  # the heaviest single call we make (ticker/24h for all markets)
DEFAULT_MAX_WAIT_SECONDS = 10.0
DEFAULT_BAN_SECONDS = 60.0  # when neither the 105 answer nor a resetat header says more

REMAINING_HEADER = "bitvavo-ratelimit-remaining"
RESET_AT_HEADER = "bitvavo-ratelimit-resetat"


def _utc(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


class RateLimitBudget:
    def __init__(
        self,
        *,
        clock: Clock,
        sleep: Sleep,
        safety_margin: int = DEFAULT_SAFETY_MARGIN,
        max_wait_seconds: float = DEFAULT_MAX_WAIT_SECONDS,
    ) -> None:
        if safety_margin < 0 or max_wait_seconds < 0:
            raise ValueError("safety_margin and max_wait_seconds must not be negative")
        self._clock = clock
        self._sleep = sleep
        self.safety_margin = safety_margin
        self.max_wait_seconds = max_wait_seconds
        self.remaining: int | None = None
        self.resets_at: float | None = None  # epoch seconds
        self.banned_until: float | None = None  # epoch seconds
        self._lock = threading.Lock()

    def acquire(self, weight: int, endpoint: str) -> None:
        """Called before sending. Returns when the request may go; sleeps if it must wait;
        raises RateLimitBanned / RateLimitWouldExceed when it must not be sent at all."""
        with self._lock:
            now = self._clock()
            if self.banned_until is not None:
                if now < self.banned_until:
                    raise RateLimitBanned(
                        "refused locally: the rate-limit ban has not expired yet",
                        ban_expires_at=_utc(self.banned_until),
                        endpoint=endpoint,
                    )
                self.banned_until = None
            if self.remaining is None or self.resets_at is None:
                return
            if now >= self.resets_at:
                self.remaining = None  # a new window: budget unknown until the next answer
                return
            if self.remaining - weight >= self.safety_margin:
                self.remaining -= weight  # corrected by the next answer's header
                return
            wait = self.resets_at - now
            if wait > self.max_wait_seconds:
                raise RateLimitWouldExceed(
                    f"refused locally: {self.remaining} rate-limit points left, this call needs "
                    f"{weight} plus a margin of {self.safety_margin}, and the window resets in "
                    f"{wait:.1f}s (more than the {self.max_wait_seconds:.1f}s we may wait)",
                    resets_at=_utc(self.resets_at),
                    endpoint=endpoint,
                )
            self._sleep(wait)
            self.remaining = None

    def observe(self, headers: Mapping[str, str]) -> None:
        """Called with every answer's headers (error answers included)."""
        remaining = headers.get(REMAINING_HEADER)
        resets_at = headers.get(RESET_AT_HEADER)
        with self._lock:
            if remaining is not None and remaining.strip().lstrip("-").isdigit():
                self.remaining = int(remaining)
            if resets_at is not None and resets_at.strip().isdigit():
                self.resets_at = int(resets_at) / 1000

    def reset_at_datetime(self) -> datetime | None:
        """When the current window resets, if that is still ahead (a reset time in the past is
        a stale header of an earlier answer and says nothing about now)."""
        with self._lock:
            if self.resets_at is None or self.resets_at <= self._clock():
                return None
            return _utc(self.resets_at)

    def ban(self, until: datetime | None) -> None:
        """After a 105: refuse everything until `until` (or DEFAULT_BAN_SECONDS from now)."""
        with self._lock:
            now = self._clock()
            expiry = until.timestamp() if until is not None else now + DEFAULT_BAN_SECONDS
            if expiry <= now:
                expiry = now + DEFAULT_BAN_SECONDS
            self.banned_until = max(expiry, self.banned_until or expiry)
