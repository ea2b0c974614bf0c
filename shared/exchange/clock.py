"""ServerClock: Bitvavo's time as seen from this host, for signing (and the rate-limit budget).

Bitvavo refuses a signed request whose `Bitvavo-Access-Timestamp` is older than the access window
(304) or ahead of its clock; a host clock that drifted 30 s would turn every order into a 304.
So the trade transport signs with this clock: the host clock plus an offset measured against
`GET /time` with the read-only client (unsigned — trading_execute's BitvavoReadonly has no key):

    clock = ServerClock()
    clock.measure(readonly.time)                      # offset = server − midpoint of the call
    trade = BitvavoTrade.from_settings(settings, markets=catalog, clock=clock)

The offset's error is at most half the round trip. `measure` may be called again at any time
(e.g. after an AccessWindowError); the offset changes atomically. The rate-limit budget reads the
same clock, which is right: `resetat` and ban expiries are the server's times.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import datetime

from shared.exchange.ratelimit import Clock


class ServerClock:
    def __init__(self, local: Clock = time.time, *, offset_seconds: float = 0.0) -> None:
        self._local = local
        self._offset = offset_seconds
        self._round_trip: float | None = None
        self._lock = threading.Lock()

    def __call__(self) -> float:
        """Seconds since the epoch on the server's clock (a Clock, like time.time)."""
        return self._local() + self.offset_seconds

    @property
    def offset_seconds(self) -> float:
        """Server minus host; 0.0 until measured."""
        with self._lock:
            return self._offset

    @property
    def round_trip_seconds(self) -> float | None:
        """How long the last measurement's request took (None: never measured)."""
        with self._lock:
            return self._round_trip

    def measure(self, server_time: Callable[[], datetime]) -> float:
        """Ask the server for its time (e.g. `BitvavoReadonly.time`) and keep the offset to the
        midpoint of the call. Returns the new offset; on an error the old one stays."""
        before = self._local()
        server = server_time()
        after = self._local()
        if server.tzinfo is None:
            raise ValueError("server_time must return a timezone-aware datetime")
        offset = server.timestamp() - (before + after) / 2
        with self._lock:
            self._offset = offset
            self._round_trip = after - before
        return offset
