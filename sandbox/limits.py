"""Bitvavo's rate limit: weight points per minute per API key (per IP when unauthenticated).

Every answer carries `bitvavo-ratelimit-limit`, `-remaining` and `-resetat` (ms of the next
window). A request that would exceed the limit is answered HTTP 429 with errorCode 110 (Bitvavo's
rate-limit page; `SANDBOX_RATE_LIMIT_ERROR_CODE=105` answers the code the SDKs and ccxt know) and
bans its identity for the documented length: a key until its window ends plus one minute (over
the limit at 12:00:15, allowed again at 12:02:00), an IP for 15 minutes. Signed requests count
against their key, unsigned ones against the IP. Windows and bans run on the time the caller
passes in: the sandbox passes its market clock, so a test can cross a minute boundary with
`POST /_sandbox/clock` instead of waiting.
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
    def __init__(self, limit: int, error_code: int = 110) -> None:
        if error_code not in BAN_ERROR_CODES:
            raise ValueError(f"the rate-limit error code must be one of {BAN_ERROR_CODES}")
        self.limit = limit
        self.error_code = error_code
        self._lock = threading.Lock()
        self._usage: dict[str, _Usage] = {}

    def reset(self) -> None:
        with self._lock:
            self._usage.clear()

    def charge(self, identity: str, weight: int, now_ms: int, *, is_key: bool) -> Quota:
        """Count `weight` against `identity` (e.g. "key:…" or "ip:…"); raise on a ban."""
        with self._lock:
            usage = self._usage.setdefault(identity, _Usage())
            window_start = now_ms - now_ms % WINDOW_MS
            if usage.window_start != window_start:
                usage.window_start, usage.used = window_start, 0
            if usage.banned_until > now_ms:
                raise self._ban(usage.banned_until)
            if usage.used + weight > self.limit:
                usage.banned_until = (window_start + WINDOW_MS + KEY_BAN_AFTER_WINDOW_MS
                                      if is_key else now_ms + IP_BAN_MS)
                usage.used = self.limit
                raise self._ban(usage.banned_until)
            usage.used += weight
            return Quota(self.limit, self.limit - usage.used, window_start + WINDOW_MS)

    def peek(self, identity: str, now_ms: int) -> Quota:
        with self._lock:
            usage = self._usage.get(identity)
            window_start = now_ms - now_ms % WINDOW_MS
            if usage is not None and usage.banned_until > now_ms:
                return Quota(self.limit, 0, usage.banned_until)
            used = usage.used if usage and usage.window_start == window_start else 0
            return Quota(self.limit, self.limit - used, window_start + WINDOW_MS)

    def _ban(self, until_ms: int) -> RateLimitBan:
        return RateLimitBan(self.error_code, until_ms, Quota(self.limit, 0, until_ms))
