"""Bitvavo's rate limit: weight points per minute per API key (per IP when unauthenticated).

Every answer carries `bitvavo-ratelimit-limit`, `-remaining` and `-resetat` (ms of the next
window). A request that would exceed the limit is answered HTTP 429 with errorCode 110 (Bitvavo's
rate-limit page; `SANDBOX_RATE_LIMIT_ERROR_CODE=105` answers the code the SDKs and ccxt know) and
bans its identity for the documented length: a key until its window ends plus one minute (over
the limit at 12:00:15, allowed again at 12:02:00), an IP for 15 minutes. Signed requests count
against their key, unsigned ones against the IP. Windows and bans run on the time the caller
passes in: the sandbox passes its market clock, so a test can cross a minute boundary with
`POST /_sandbox/clock` instead of waiting.
`refused` counts those answers (GET /_sandbox/limits), so a test can show that a client never met
one. Tests may shorten the window (SANDBOX_RATE_WINDOW_MS) and give a key its own limit
(SANDBOX_KEYS' `rate_limit`), e.g. a small trade-key budget next to a large one for market data.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from sandbox.errors import ApiError

WINDOW_MS = 60_000
KEY_BAN_AFTER_WINDOW_MS = 60_000
IP_BAN_MS = 15 * 60_000
BAN_ERROR_CODES = (110, 105)


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
    def __init__(self, code: int, until_ms: int, quota: Quota) -> None:
        super().__init__(
            code,
            "Your IP or API key has been banned for not respecting the rate limit. "
            f"The ban expires at {until_ms}.",
            429,
        )
        self.quota = quota


class RateLimiter:
    def __init__(self, limit: int, error_code: int = 110, window_ms: int = WINDOW_MS,
                 limits: dict[str, int] | None = None) -> None:
        if error_code not in BAN_ERROR_CODES:
            raise ValueError(f"the rate-limit error code must be one of {BAN_ERROR_CODES}")
        self.limit = limit
        self.error_code = error_code
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
                raise self._ban(limit, usage.banned_until)
            if usage.used + weight > limit:
                usage.banned_until = (window_start + self.window_ms + KEY_BAN_AFTER_WINDOW_MS
                                      if is_key else now_ms + IP_BAN_MS)
                usage.used = limit
                self.refused += 1
                raise self._ban(limit, usage.banned_until)
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

    def _ban(self, limit: int, until_ms: int) -> RateLimitBan:
        return RateLimitBan(self.error_code, until_ms, Quota(limit, 0, until_ms))
