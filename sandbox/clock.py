"""Two clocks, on purpose.

- `wall_ms()` is real time. Authentication (the access window) and `/time` use it, because real
  clients sign with their own wall clock.
- `MarketClock.now_ms()` is wall time plus an offset that tests move forward with
  `POST /_sandbox/clock`. The price path, candles, tickers, order timestamps, the lazy matching
  of resting limit orders and the rate-limit windows and bans use it, so a test can let "an hour
  pass" (or cross a minute's rate-limit window) in a millisecond.
"""

from __future__ import annotations

import threading
import time


def wall_ms() -> int:
    return time.time_ns() // 1_000_000


class MarketClock:
    def __init__(self, offset_ms: int = 0) -> None:
        self._lock = threading.Lock()
        self._offset_ms = offset_ms

    @property
    def offset_ms(self) -> int:
        with self._lock:
            return self._offset_ms

    def now_ms(self) -> int:
        return wall_ms() + self.offset_ms

    def advance(self, ms: int) -> None:
        if ms < 0:
            raise ValueError("the market clock only moves forward")
        with self._lock:
            self._offset_ms += ms

    def reset(self, offset_ms: int = 0) -> None:
        with self._lock:
            self._offset_ms = offset_ms
