"""Client-side view of Bitvavo's rate-limit budget (reference/bitvavo-api.md, "Rate limits").

Bitvavo gives every key (or IP) 1000 weight points per minute and reports what is left in
`bitvavo-ratelimit-remaining` and when the window resets in `bitvavo-ratelimit-resetat` (ms).
Signed requests count against their key, unsigned ones against the IP they come from. Going over
earns HTTP 429 with errorCode 110 (105 in the SDKs and ccxt, and in older answers). Bitvavo's
rate-limit page gives the ban's length: a key is blocked until its window ends plus one minute
(over the limit at 12:00:15, allowed again at 12:02:00), an IP for 15 minutes. So we:
  - stop *before* the limit: a request whose weight would take the budget below a safety margin
    waits for the reset when that is short enough, and is refused (RateLimitWouldExceed) when not;
  - respect a ban: after a ban answer every request is refused locally until it expires — the
    time stated in the answer, else the documented length: for a key the window's end (its
    `resetat`, else the next minute boundary of the clock) plus a minute, for an IP 15 minutes.
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
WINDOW_SECONDS = 60  # Bitvavo counts weight per minute
KEY_BAN_AFTER_WINDOW_SECONDS = 60.0  # a banned key waits out its window, then one more minute
IP_BAN_SECONDS = 15 * 60.0

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

    def ban(self, until: datetime | None, *, by_ip: bool = False) -> datetime:
        """After a ban answer: refuse everything until `until` (the expiry the answer states),
        or, without one, for the documented length (an IP's ban when `by_ip`: the requests were
        unsigned). Returns when the ban ends."""
        with self._lock:
            now = self._clock()
            expiry = until.timestamp() if until is not None else None
            if expiry is None or expiry <= now:
                expiry = self._documented_ban_end(now, by_ip=by_ip)
            self.banned_until = max(expiry, self.banned_until or expiry)
            return _utc(self.banned_until)

    def _documented_ban_end(self, now: float, *, by_ip: bool) -> float:
        if by_ip:
            return now + IP_BAN_SECONDS
        window_end = self.resets_at
        if window_end is None or window_end <= now:  # unknown or stale: the next minute
            window_end = (now // WINDOW_SECONDS + 1) * WINDOW_SECONDS
        return window_end + KEY_BAN_AFTER_WINDOW_SECONDS
