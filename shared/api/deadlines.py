"""Read deadlines on client sockets: when one passes, the socket's read side is shut down, so the
thread blocked reading from a client that stopped sending wakes up with end-of-file.

    watch = DEADLINES.arm(sock, seconds)
    data = reader.read(n)                  # returns short (or its reader raises) once time is up
    if DEADLINES.disarm(watch): …          # True: the deadline, not the client, ended the read

Why not the socket's own timeout: `settimeout` bounds each `recv`, not the whole read. gunicorn's
readers call `recv` as often as they need to fill a request, so a client that sends one byte just
before each timeout keeps a thread busy for as long as it likes. Shutting the read side bounds
the whole read, whatever reads it and however. It is final: the connection is not used again
(the server answers, if it can, and closes it).

One daemon thread per process keeps every deadline in a heap and sleeps until the next one; it is
started on first use in the process that serves (functions-framework imports main.py in gunicorn's
master and forks the worker: a thread does not survive a fork, so the child starts its own).
"""

from __future__ import annotations

import heapq
import itertools
import os
import socket
import threading
import time
from dataclasses import dataclass, field


@dataclass(eq=False)
class Watch:
    """One armed deadline. `expired`: the deadline passed before it was disarmed."""

    at: float
    sock: socket.socket
    expired: bool = False
    done: bool = field(default=False, repr=False)


class Deadlines:
    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int, Watch]] = []
        self._order = itertools.count()
        self._thread: threading.Thread | None = None

    def arm(self, sock: socket.socket, seconds: float) -> Watch:
        """Shut `sock`'s read side `seconds` from now, unless disarmed first."""
        watch = Watch(time.monotonic() + seconds, sock)
        with self._cond:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="read-deadlines",
                                                daemon=True)
                self._thread.start()
            heapq.heappush(self._heap, (watch.at, next(self._order), watch))
            self._cond.notify()
        return watch

    def disarm(self, watch: Watch) -> bool:
        """Stop watching; whether the deadline had already passed (and the read side is shut)."""
        with self._cond:
            watch.done = True
            return watch.expired

    def _run(self) -> None:
        with self._cond:
            while True:
                while self._heap and self._heap[0][2].done:
                    heapq.heappop(self._heap)
                if not self._heap:
                    self._cond.wait()
                    continue
                delay = self._heap[0][0] - time.monotonic()
                if delay > 0:
                    self._cond.wait(delay)
                    continue
                _, _, watch = heapq.heappop(self._heap)
                watch.expired = watch.done = True
                try:
                    watch.sock.shutdown(socket.SHUT_RD)
                except OSError:
                    pass  # the client has gone already


DEADLINES = Deadlines()
os.register_at_fork(after_in_child=DEADLINES._reset)
