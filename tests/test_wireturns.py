"""scripts/wireturns.py: round trips are read from the PostgreSQL protocol, not from the timing of
the client's writes.

The protocol-blind turn count (a client burst after the server spoke) over-counts when a client
writes one pipelined request in pieces and the server answers part of it before the rest arrives —
PostgreSQL flushes an ErrorResponse at once. That happened to psycopg's pipeline on a loaded
machine (tests/test_rpc_direct.py's 22023 test saw 2 turns). Here the same split is made on
purpose, byte by byte on a raw socket, so the difference between the two counts is shown every
time, not by chance; and every way of really waiting twice is still counted twice.
"""

from __future__ import annotations

import socket
import struct
import threading
from collections.abc import Iterator

import psycopg
import pytest

from scripts.wireturns import PgFrontend, WireTurns
from tests.pg import Database


@pytest.fixture
def proxy(db: Database) -> Iterator[WireTurns]:
    with WireTurns("127.0.0.1", db.cluster.port) as wire:
        yield wire


# -- a hand-written PostgreSQL client: every write is the test's choice ---------------------------
def message(kind: bytes, body: bytes = b"") -> bytes:
    return kind + struct.pack("!i", len(body) + 4) + body


def cstr(text: str) -> bytes:
    return text.encode() + b"\0"


def startup(user: str, database: str) -> bytes:
    body = struct.pack("!i", 196608) + cstr("user") + cstr(user) + cstr("database") + \
        cstr(database) + b"\0"
    return struct.pack("!i", len(body) + 4) + body


def extended(query: str) -> bytes:
    """Parse + Bind + Execute of an unnamed statement without parameters (no Sync)."""
    return (message(b"P", cstr("") + cstr(query) + struct.pack("!h", 0))
            + message(b"B", cstr("") + cstr("") + struct.pack("!hhh", 0, 0, 0))
            + message(b"E", cstr("") + struct.pack("!i", 0)))


class RawClient:
    def __init__(self, port: int, user: str, database: str) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._buffer = b""
        self.sock.sendall(startup(user, database))  # trust authentication: no password round
        self.read_until(b"Z")

    def read_message(self) -> tuple[bytes, bytes]:
        while len(self._buffer) < 5 or len(self._buffer) < 1 + struct.unpack(
                "!i", self._buffer[1:5])[0]:
            chunk = self.sock.recv(65536)
            assert chunk, "the server closed the connection"
            self._buffer += chunk
        size = 1 + struct.unpack("!i", self._buffer[1:5])[0]
        kind, body, self._buffer = self._buffer[:1], self._buffer[5:size], self._buffer[size:]
        return kind, body

    def read_until(self, kind: bytes) -> list[bytes]:
        seen = []
        while True:
            got, _ = self.read_message()
            seen.append(got)
            if got == kind:
                return seen

    def close(self) -> None:
        self.sock.sendall(message(b"X"))
        self.sock.close()


def counts(proxy: WireTurns) -> tuple[int, int]:
    proxy.settle()
    return proxy.round_trips, proxy.turns


def test_a_pipelined_request_written_in_pieces_is_one_round_trip_though_the_server_answers_early(
        db: Database, proxy: WireTurns) -> None:
    client = RawClient(proxy.port, "authenticator", db.name)
    rt0, turns0 = counts(proxy)
    # The statement fails: PostgreSQL sends its ErrorResponse at once, before the Sync arrives.
    client.sock.sendall(extended("select 1/0"))
    assert client.read_until(b"E") == [b"1", b"E"]  # ParseComplete, ErrorResponse
    client.sock.sendall(message(b"S"))  # the Sync, written after the server already spoke
    assert client.read_until(b"Z") == [b"Z"]
    # psycopg's Flush after its Sync, written after the whole answer came back: it asks nothing.
    client.sock.sendall(message(b"H"))
    rt1, turns1 = counts(proxy)
    assert turns1 - turns0 == 3  # what the timing-based count could see on a loaded machine
    assert rt1 - rt0 == 1        # one request, one Sync: one round trip
    client.close()


def test_each_request_the_client_waits_on_is_counted(db: Database, proxy: WireTurns) -> None:
    client = RawClient(proxy.port, "authenticator", db.name)
    rt0, turns0 = counts(proxy)
    for _ in range(3):  # simple protocol: Query → … ReadyForQuery, three times
        client.sock.sendall(message(b"Q", cstr("select 1")))
        client.read_until(b"Z")
    client.sock.sendall(extended("select 1") + message(b"S"))  # extended, one write
    client.read_until(b"Z")
    client.sock.sendall(extended("select 1") + message(b"H"))  # Flush: answers before the Sync…
    assert client.read_until(b"C") == [b"1", b"2", b"D", b"C"]
    client.sock.sendall(message(b"S"))                          # …then the Sync: two waits
    client.read_until(b"Z")
    rt1, turns1 = counts(proxy)
    assert rt1 - rt0 == 6 == turns1 - turns0
    assert proxy.unparsed_connections == 0
    client.close()


def test_two_syncs_are_two_round_trips_even_in_one_write(db: Database, proxy: WireTurns) -> None:
    """A Sync ends a transaction and asks for ReadyForQuery; two of them are two requests."""
    client = RawClient(proxy.port, "authenticator", db.name)
    rt0, _ = counts(proxy)
    client.sock.sendall(extended("select 1") + message(b"S") + extended("select 2")
                        + message(b"S"))
    client.read_until(b"Z")
    client.read_until(b"Z")
    assert counts(proxy)[0] - rt0 == 2
    client.close()


# -- psycopg, the client the functions use -------------------------------------------------------
ROLE_SQL = "select set_config('role', 'service_role', true)"
CALL_SQL = "select public.check_gpt_budget(p_user_id => null)"  # fails: its error is sent at once


def psycopg_round_trips(db: Database, proxy: WireTurns, shape: str) -> int:
    with psycopg.connect(f"postgresql://authenticator@127.0.0.1:{proxy.port}/{db.name}",
                         autocommit=True, prepare_threshold=None) as conn:
        before, _ = counts(proxy)
        with pytest.raises(psycopg.Error):
            if shape == "pipelined":            # DirectRpc's shape: one Sync
                with conn.pipeline():
                    conn.execute(ROLE_SQL)
                    conn.execute(CALL_SQL)
            elif shape == "role switch on its own":
                conn.execute(ROLE_SQL)
                with conn.pipeline():
                    conn.execute(CALL_SQL)
            elif shape == "transaction()":
                with conn.transaction():
                    conn.execute(ROLE_SQL)
                    conn.execute(CALL_SQL)
            elif shape == "transaction() in a pipeline":
                with conn.pipeline(), conn.transaction():
                    conn.execute(ROLE_SQL)
                    conn.execute(CALL_SQL)
            elif shape == "fetch inside the pipeline":
                with conn.pipeline():
                    conn.execute(ROLE_SQL).fetchone()   # a Flush, and a wait for its answer
                    conn.execute(CALL_SQL)
            elif shape == "fetch the call inside the pipeline":
                with conn.pipeline():
                    conn.execute(ROLE_SQL)
                    conn.execute(CALL_SQL).fetchone()   # a Flush, a wait, then the Sync
        after, _ = counts(proxy)
    assert proxy.unparsed_connections == 0
    return after - before


@pytest.mark.parametrize(("shape", "expected"), [
    ("pipelined", 1),
    ("role switch on its own", 2),
    ("transaction()", 4),                  # BEGIN, the role switch, the call, ROLLBACK
    ("transaction() in a pipeline", 3),    # BEGIN; the role switch + the call; ROLLBACK
    ("fetch inside the pipeline", 2),
    ("fetch the call inside the pipeline", 2),
])
def test_psycopg_shapes_are_counted_by_what_the_client_waits_for(
        db: Database, proxy: WireTurns, shape: str, expected: int) -> None:
    assert psycopg_round_trips(db, proxy, shape) == expected


def test_ssl_negotiation_refused_by_the_server_keeps_the_connection_readable(
        db: Database, proxy: WireTurns) -> None:
    url = f"postgresql://authenticator@127.0.0.1:{proxy.port}/{db.name}?sslmode=prefer"
    with psycopg.connect(url, autocommit=True) as conn:
        before, _ = counts(proxy)
        conn.execute("select 1").fetchone()
        assert counts(proxy)[0] - before == 1
    assert proxy.unparsed_connections == 0


# -- anything else is counted by turns ------------------------------------------------------------
def test_another_protocol_is_counted_by_its_turns() -> None:
    server = socket.create_server(("127.0.0.1", 0))

    def echo() -> None:
        conn, _ = server.accept()
        with conn:
            while data := conn.recv(1024):
                conn.sendall(data)

    thread = threading.Thread(target=echo, daemon=True)
    thread.start()
    with WireTurns("127.0.0.1", server.getsockname()[1]) as wire, \
            socket.create_connection(("127.0.0.1", wire.port)) as client:
        for word in (b"GET / HTTP/1.1\r\n\r\n", b"ping", b"pong"):
            client.sendall(word)
            assert client.recv(1024) == word
        wire.settle()
        assert (wire.round_trips, wire.turns, wire.unparsed_connections) == (3, 3, 1)
    server.close()
    thread.join(timeout=5)


def test_the_frontend_parser_reads_messages_split_at_any_byte() -> None:
    ssl_request = struct.pack("!ii", 8, 80877103)
    rest = startup("u", "d") + extended("select 1") + message(b"S") + \
        message(b"Q", cstr("select 1")) + message(b"X")
    for cut in range(1, len(rest) + 1):
        frontend = PgFrontend()
        for i in range(0, len(ssl_request), cut):
            frontend.client(ssl_request[i:i + cut])
        frontend.server(b"N")  # no TLS: the startup packet follows in the clear
        for i in range(0, len(rest), cut):
            frontend.client(rest[i:i + cut])
        assert (frontend.postgres, frontend.waits) == (True, 4), cut  # SSL, startup, S, Q
    encrypted = PgFrontend()
    encrypted.client(struct.pack("!ii", 8, 80877103))
    encrypted.server(b"S")  # the server agreed to TLS: the rest is opaque
    assert encrypted.postgres is False
    assert PgFrontend().postgres is True
    not_postgres = PgFrontend()
    not_postgres.client(b"GET / HTTP/1.1\r\n")
    assert not_postgres.postgres is False


def test_a_cut_after_given_bytes_loses_that_statements_answer_only(
        db: Database, proxy: WireTurns) -> None:
    """`cut_next_response(after=…)`: other connections' answers pass; the connection that sends
    the marked statement loses its answer, and the statement committed all the same."""
    url = db.url.replace(f":{db.cluster.port}/", f":{proxy.port}/")
    assert url != db.url
    marker = f"cut_marker_{threading.get_ident()}"
    with psycopg.connect(url, autocommit=True) as setup:
        setup.execute("create table if not exists wireturns_cut (note text)")
    proxy.cut_next_response(after=marker.encode())
    with psycopg.connect(url, autocommit=True) as bystander, \
            psycopg.connect(url, autocommit=True) as victim:
        assert bystander.execute("select 1").fetchone() == (1,)
        with pytest.raises(psycopg.OperationalError):
            victim.execute("insert into wireturns_cut values (%s)", (marker,))
        assert bystander.execute("select 2").fetchone() == (2,)
    assert proxy.cuts == 1 and proxy.cuts_by_trigger == {marker: 1}
    assert db.scalar("select count(*) from wireturns_cut where note = %s", (marker,)) == 1
    proxy.cut_next_response(after=b"never sent")
    assert proxy.cancel_cut() is True and proxy.cancel_cut() is False
    with psycopg.connect(url, autocommit=True) as after:
        assert after.execute("select 3").fetchone() == (3,)
    assert proxy.cuts == 1
