"""A loopback TCP proxy that counts round trips on the wire (tests and benchmarks).

Two counts, both per proxy:

- `round_trips` — the requests the client waits on. On a PostgreSQL connection they are read from
  the frontend protocol (the client → server stream is parsed message by message), so they do not
  depend on how the client library splits its writes or on when the server answers:
    * the startup packet, an SSLRequest/GSSENCRequest, a password/SASL answer ('p'), a simple
      Query ('Q'), a FunctionCall ('F') and the end of COPY data ('c', 'f') — one each;
    * a Sync ('S') when a request message (Parse/Bind/Describe/Execute/Close) came since the last
      Sync: everything pipelined before one Sync is one round trip;
    * a Flush ('H') when a request message came since the last Sync or Flush: the client asks for
      answers before its Sync, to read them (psycopg's fetch inside a pipeline).
  A Sync or Flush that follows nothing new asks the server for nothing (psycopg sends a Flush after
  every Sync) and is not another round trip. A connection that is not PostgreSQL, or turns to
  TLS/GSS encryption, is counted by its turns instead (`unparsed_connections` says how many).
- `turns` — protocol-blind: a burst of bytes from the client that starts after the server last
  spoke. N strict request/response round trips of any protocol are N turns. A client that writes
  one request in pieces while the server already answers part of it (PostgreSQL flushes an
  ErrorResponse at once, before the Sync arrives) shows more turns than round trips — why
  PostgreSQL round trips are read from the protocol.

"One database round trip per RPC" is `round_trips` going up by one per call; this proxy lets a
test count it without trusting the client library.

It can also drop a connection mid-call: `cut_next_response()` lets the next request through to the
server and then closes both sides instead of relaying the answer — the server did the work, the
client never hears about it (an outcome-unknown failure, on demand). `cut_next_response(after=b"…")`
waits for a client burst that contains those bytes (a function's name in a statement) and cuts that
connection's next answer, so a test can choose which statement commits unheard.

Written here because no maintained package counts protocol turns; it is a plain thread-per-
connection relay over `socket`/`selectors`, loopback only.

    with WireTurns("127.0.0.1", 5432) as proxy:     # proxy.port is the local port to connect to
        proxy.settle()
        before = proxy.round_trips
        ...                                          # talk to 127.0.0.1:proxy.port
        proxy.settle()
        print(proxy.round_trips - before)

    python -m scripts.wireturns --target 127.0.0.1:5432 [--port N]   # prints counts on Ctrl+C
"""

from __future__ import annotations

import argparse
import selectors
import socket
import struct
import threading
import time
from collections import Counter
from collections.abc import Sequence
from types import TracebackType

_CHUNK = 65536

# Frontend messages (PostgreSQL protocol 3.0, "Message Formats") by what they mean for a count:
_SELF_CONTAINED = frozenset(b"QFpcf")   # a whole request each: Query, FunctionCall, password,
                                        # CopyDone, CopyFail
_SYNC, _FLUSH = ord("S"), ord("H")      # end the pipelined request messages since the last one
_NOT_REQUESTS = frozenset(b"dX")        # CopyData, Terminate: no answer asked
_PROTOCOL_3 = 196608            # StartupMessage: protocol 3.0
_SSL_REQUEST = 80877103
_GSSENC_REQUEST = 80877104
_CANCEL_REQUEST = 80877102
_MAX_STARTUP_PACKET = 10000     # PostgreSQL's own limit for the untyped startup packets


class PgFrontend:
    """The client → server half of one PostgreSQL connection, parsed just enough to count the
    requests the client waits on (`waits`). `postgres` turns False for good when the stream is not
    PostgreSQL or becomes encrypted; the connection is then counted by its turns."""

    def __init__(self) -> None:
        self.postgres = True
        self.waits = 0
        self._phase = "startup"    # startup → (answer → startup →) typed | done
        self._header = bytearray()
        self._skip = 0             # body bytes of the current message still to pass over
        self._since_sync = False   # a request message came since the last Sync
        self._since_wait = False   # … since the last Sync or Flush

    def client(self, data: bytes) -> None:
        view = memoryview(data)
        while view and self.postgres:
            if self._skip:
                step = min(self._skip, len(view))
                self._skip -= step
                view = view[step:]
                continue
            if self._phase in ("answer", "done"):   # bytes the protocol does not allow here
                self.postgres = False
                return
            size = 8 if self._phase == "startup" else 5
            need = size - len(self._header)
            self._header += view[:need]
            view = view[need:]
            if len(self._header) == size:
                self._message(bytes(self._header))
                self._header.clear()

    def server(self, data: bytes) -> None:
        """The server's one-byte answer to an SSLRequest/GSSENCRequest: 'N' keeps it plain."""
        if self._phase == "answer" and data:
            if data[:1] == b"N":
                self._phase = "startup"
                if len(data) > 1:   # a plain server sends nothing else before the startup packet
                    self.postgres = False
            else:
                self.postgres = False  # TLS or GSS: the rest cannot be read

    def _message(self, header: bytes) -> None:
        if self._phase == "startup":
            length, code = struct.unpack("!ii", header)
            if not 8 <= length <= _MAX_STARTUP_PACKET:
                self.postgres = False
            elif code == _PROTOCOL_3:
                self.waits += 1
                self._phase, self._skip = "typed", length - 8
            elif code in (_SSL_REQUEST, _GSSENC_REQUEST) and length == 8:
                self.waits += 1
                self._phase = "answer"
            elif code == _CANCEL_REQUEST and length == 16:
                self._phase, self._skip = "done", length - 8
            else:
                self.postgres = False
            return
        kind, length = header[0], struct.unpack("!i", header[1:])[0]
        if length < 4:
            self.postgres = False
            return
        self._skip = length - 4
        if kind in _SELF_CONTAINED:
            self.waits += 1
            self._since_sync = self._since_wait = False
        elif kind == _SYNC:
            self.waits += self._since_sync
            self._since_sync = self._since_wait = False
        elif kind == _FLUSH:
            self.waits += self._since_wait
            self._since_wait = False
        elif kind not in _NOT_REQUESTS:
            self._since_sync = self._since_wait = True


class _Connection:
    def __init__(self) -> None:
        self.turns = 0
        self.frontend = PgFrontend()
        self.cut_next: str | None = None   # this connection's next server burst is cut (`after`)

    @property
    def round_trips(self) -> int:
        return self.frontend.waits if self.frontend.postgres else self.turns


class WireTurns:
    """Relay 127.0.0.1:<port> → target; count round trips (protocol-aware) and turns."""

    def __init__(self, target_host: str, target_port: int, *, port: int = 0) -> None:
        self.target = (target_host, target_port)
        self._listener = socket.create_server(("127.0.0.1", port))
        self._listener.settimeout(0.1)  # accept() wakes up to notice close()
        self.port: int = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._relayed: list[_Connection] = []
        self._last_activity = time.monotonic()
        self._cut_armed = False
        self._cut_after: bytes | None = None
        self._cuts: Counter[str] = Counter()
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
    def round_trips(self) -> int:
        """Requests the client waited on, over every connection: PostgreSQL's from its messages,
        any other protocol's (or an encrypted connection's) as its turns."""
        with self._lock:
            return sum(c.round_trips for c in self._relayed)

    @property
    def turns(self) -> int:
        """Client bursts after the server spoke, over every connection (protocol-blind)."""
        with self._lock:
            return sum(c.turns for c in self._relayed)

    @property
    def connections(self) -> int:
        """Connections accepted so far."""
        with self._lock:
            return len(self._relayed)

    @property
    def unparsed_connections(self) -> int:
        """Connections counted by turns because they were not (readable) PostgreSQL."""
        with self._lock:
            return sum(1 for c in self._relayed if not c.frontend.postgres)

    def cut_next_response(self, after: bytes | None = None) -> None:
        """The next burst from the server is not relayed: both sides are closed instead. With
        `after`, the next burst on the first connection whose client sends a burst containing
        those bytes. Arming again replaces a cut that has not happened yet."""
        with self._lock:
            self._cut_armed, self._cut_after = True, after

    def cancel_cut(self) -> bool:
        """Disarm a cut that has not happened yet (a connection already chosen by `after` is
        cut all the same); True if one was armed."""
        with self._lock:
            armed, self._cut_armed, self._cut_after = self._cut_armed, False, None
            return armed

    @property
    def cuts(self) -> int:
        """Server answers cut so far (connections closed instead of relaying them)."""
        with self._lock:
            return sum(self._cuts.values())

    @property
    def cuts_by_trigger(self) -> dict[str, int]:
        """The cuts so far by what armed them: the `after` bytes (decoded), or "any"."""
        with self._lock:
            return dict(self._cuts)

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
            # through the proxy. Nothing is counted by segments.
            for sock in (client, server):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            relayed = _Connection()
            with self._lock:
                self._relayed.append(relayed)
                self._sockets.update((client, server))
            thread = threading.Thread(target=self._relay, args=(client, server, relayed),
                                      name="wireturns-relay", daemon=True)
            self._threads.append(thread)
            thread.start()

    def _relay(self, client: socket.socket, server: socket.socket, relayed: _Connection) -> None:
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
                            if source is client:
                                if last_speaker is not client:
                                    relayed.turns += 1
                                relayed.frontend.client(data)
                            else:
                                relayed.frontend.server(data)
                            if (source is client and self._cut_armed
                                    and self._cut_after is not None and self._cut_after in data):
                                relayed.cut_next = self._cut_after.decode(errors="replace")
                                self._cut_armed, self._cut_after = False, None
                            cut = source is server and (
                                relayed.cut_next is not None
                                or (self._cut_armed and self._cut_after is None))
                            if cut:
                                self._cuts[relayed.cut_next or "any"] += 1
                                if relayed.cut_next is None:
                                    self._cut_armed = False
                                relayed.cut_next = None
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
        print(f"connections={proxy.connections} round_trips={proxy.round_trips} "
              f"turns={proxy.turns} unparsed_connections={proxy.unparsed_connections}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
