"""A loopback TCP proxy that counts request/response turns on the wire (tests and benchmarks).

A *turn* is one burst of bytes from the client that starts after the server last spoke (or at the
start of the connection): the client asks, the server answers. N round trips of any protocol are N
turns, however many TCP segments or protocol messages each burst holds; a pipelined batch of
statements sent together and answered together is one turn. That is what "one database round trip
per RPC" means, and what this proxy lets a test count without trusting the client library.

It can also drop a connection mid-call: `cut_next_response()` lets the next request through to the
server and then closes both sides instead of relaying the answer — the server did the work, the
client never hears about it (an outcome-unknown failure, on demand).

Written here because no maintained package counts protocol turns; it is a plain thread-per-
connection relay over `socket`/`selectors`, loopback only.

    with WireTurns("127.0.0.1", 5432) as proxy:     # proxy.port is the local port to connect to
        before = proxy.turns
        ...                                          # talk to 127.0.0.1:proxy.port
        proxy.settle()
        print(proxy.turns - before)

    python -m scripts.wireturns --target 127.0.0.1:5432 [--port N]   # prints turns on Ctrl+C
"""

from __future__ import annotations

import argparse
import selectors
import socket
import threading
import time
from collections.abc import Sequence
from types import TracebackType

_CHUNK = 65536


class WireTurns:
    """Relay 127.0.0.1:<port> → target and count the client's request bursts (turns)."""

    def __init__(self, target_host: str, target_port: int, *, port: int = 0) -> None:
        self.target = (target_host, target_port)
        self._listener = socket.create_server(("127.0.0.1", port))
        self._listener.settimeout(0.1)  # accept() wakes up to notice close()
        self.port: int = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._turns = 0
        self._connections = 0
        self._last_activity = time.monotonic()
        self._cut_armed = False
        self._closed = threading.Event()
        self._sockets: set[socket.socket] = set()
        self._threads: list[threading.Thread] = []
        self._acceptor = threading.Thread(target=self._accept, name="wireturns-accept",
                                          daemon=True)

    # -- public -------------------------------------------------------------------------------
    def start(self) -> WireTurns:
        self._acceptor.start()
        return self

    def __enter__(self) -> WireTurns:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    @property
    def turns(self) -> int:
        """Client bursts so far, over every connection."""
        with self._lock:
            return self._turns

    @property
    def connections(self) -> int:
        """Connections accepted so far."""
        with self._lock:
            return self._connections

    def cut_next_response(self) -> None:
        """The next burst from the server is not relayed: both sides are closed instead."""
        with self._lock:
            self._cut_armed = True

    def settle(self, quiet: float = 0.05, timeout: float = 5.0) -> None:
        """Wait until no byte has moved for `quiet` seconds, so the counters are final."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                idle = time.monotonic() - self._last_activity
            if idle >= quiet:
                return
            time.sleep(quiet / 2)
        raise TimeoutError("the proxied connections did not go quiet")

    def close(self) -> None:
        self._closed.set()
        self._listener.close()
        with self._lock:
            sockets = list(self._sockets)
        for sock in sockets:
            _close(sock)
        for thread in [self._acceptor, *self._threads]:
            if thread.is_alive() and thread is not threading.current_thread():
                thread.join(timeout=5)

    # -- relay --------------------------------------------------------------------------------
    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            client.settimeout(None)
            try:
                server = socket.create_connection(self.target, timeout=10)
            except OSError:
                _close(client)
                continue
            server.settimeout(None)
            # Relay each burst at once: with Nagle's algorithm a relayed small write waits for
            # the peer's delayed ACK (~40 ms a hop), which would distort every timing taken
            # through the proxy. Turns are counted by who speaks, not by segments.
            for sock in (client, server):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                self._connections += 1
                self._sockets.update((client, server))
            thread = threading.Thread(target=self._relay, args=(client, server),
                                      name="wireturns-relay", daemon=True)
            self._threads.append(thread)
            thread.start()

    def _relay(self, client: socket.socket, server: socket.socket) -> None:
        last_speaker: socket.socket | None = None
        with selectors.DefaultSelector() as sel:
            sel.register(client, selectors.EVENT_READ, server)
            sel.register(server, selectors.EVENT_READ, client)
            try:
                while not self._closed.is_set():
                    for key, _ in sel.select(timeout=0.2):
                        source: socket.socket = key.fileobj  # type: ignore[assignment]
                        sink: socket.socket = key.data
                        data = source.recv(_CHUNK)
                        if not data:
                            return
                        with self._lock:
                            self._last_activity = time.monotonic()
                            if source is client and last_speaker is not client:
                                self._turns += 1
                            cut = source is server and self._cut_armed
                            if cut:
                                self._cut_armed = False
                        if cut:
                            return
                        last_speaker = source
                        sink.sendall(data)
            except OSError:
                return
            finally:
                for sock in (client, server):
                    _close(sock)
                with self._lock:
                    self._sockets.difference_update((client, server))
                    self._last_activity = time.monotonic()


def _close(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scripts.wireturns")
    parser.add_argument("--target", required=True, help="host:port to relay to")
    parser.add_argument("--port", type=int, default=0, help="local port (default: any free one)")
    args = parser.parse_args(argv)
    host, _, port = args.target.rpartition(":")
    with WireTurns(host or "127.0.0.1", int(port), port=args.port) as proxy:
        print(f"relaying 127.0.0.1:{proxy.port} -> {args.target}; Ctrl+C prints the counts",
              flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
        print(f"connections={proxy.connections} turns={proxy.turns}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
