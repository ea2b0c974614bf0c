"""Bitvavo's rate limit: weight points per minute per API key (per IP when unauthenticated).

Every answer carries `bitvavo-ratelimit-limit`, `-remaining` and `-resetat` (ms of the next
window). A request that would exceed the limit is answered 429/105 and bans its identity:
~1 minute for a key, ~15 minutes for an IP, as the reference records. `refused` counts those
answers (GET /_sandbox/limits), so a test can show that a client never met one.

Tests may shorten the window (SANDBOX_RATE_WINDOW_MS) and give a key its own limit (SANDBOX_KEYS'
`rate_limit`), e.g. a small trade-key budget next to a large one for market data.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from sandbox.errors import ApiError

KEY_BAN_MS = 60_000
IP_BAN_MS = 15 * 60_000
WINDOW_MS = 60_000


@dataclass
class _Usage:
    window_start: int = 0
    used: int = 0
    banned_until: int = 0


@dataclass(frozen=True)
class Quota:
    limit: int
    remaining: int
    reset_at: int

    def headers(self) -> dict[str, str]:
        return {
            "bitvavo-ratelimit-limit": str(self.limit),
            "bitvavo-ratelimit-remaining": str(self.remaining),
            "bitvavo-ratelimit-resetat": str(self.reset_at),
        }


class RateLimitBan(ApiError):
    def __init__(self, until_ms: int, quota: Quota) -> None:
        super().__init__(
            105,
            "Your IP or API key has been banned for not respecting the rate limit. "
            f"The ban expires at {until_ms}.",
        )
        self.quota = quota


class RateLimiter:
    def __init__(self, limit: int, window_ms: int = WINDOW_MS,
                 limits: dict[str, int] | None = None) -> None:
        self.limit = limit
        self.window_ms = window_ms
        self._limits = dict(limits or {})  # identity → its own limit
        self._lock = threading.Lock()
        self._usage: dict[str, _Usage] = {}
        self.refused = 0

    def reset(self) -> None:
        with self._lock:
            self._usage.clear()
            self.refused = 0

    def charge(self, identity: str, weight: int, now_ms: int, *, is_key: bool) -> Quota:
        """Count `weight` against `identity` (e.g. "key:…" or "ip:…"); raise on a ban."""
        limit = self._limits.get(identity, self.limit)
        with self._lock:
            usage = self._usage.setdefault(identity, _Usage())
            window_start = now_ms - now_ms % self.window_ms
            if usage.window_start != window_start:
                usage.window_start, usage.used = window_start, 0
            if usage.banned_until > now_ms:
                self.refused += 1
                raise RateLimitBan(usage.banned_until, Quota(limit, 0, usage.banned_until))
            if usage.used + weight > limit:
                usage.banned_until = now_ms + (KEY_BAN_MS if is_key else IP_BAN_MS)
                usage.used = limit
                self.refused += 1
                raise RateLimitBan(usage.banned_until, Quota(limit, 0, usage.banned_until))
            usage.used += weight
            return Quota(limit, limit - usage.used, window_start + self.window_ms)

    def peek(self, identity: str, now_ms: int) -> Quota:
        limit = self._limits.get(identity, self.limit)
        with self._lock:
            usage = self._usage.get(identity)
            window_start = now_ms - now_ms % self.window_ms
            if usage is not None and usage.banned_until > now_ms:
                return Quota(limit, 0, usage.banned_until)
            used = usage.used if usage and usage.window_start == window_start else 0
            return Quota(limit, limit - used, window_start + self.window_ms)

    def describe(self) -> dict[str, int]:
        """The default limit, the window and how many requests were refused (429) so far."""
        with self._lock:
            return {"limit": self.limit, "window_ms": self.window_ms, "refused": self.refused}
