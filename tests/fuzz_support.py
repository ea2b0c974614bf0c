"""What the fuzz tests share (no tests of their own): the example budget, the strategies, and the
properties every answer must have.

Budget. Each fuzz test names its CI budget with `fuzz_settings(n)`: CI runs exactly n examples,
derandomized (the same inputs on every run) and without hypothesis' example database, so CI is
deterministic and bounded. `FUZZ_EXAMPLES=<n>` (what `make fuzz` sets) runs n examples per test
instead, with a fresh random seed each run; a failure prints the seed and a blob to replay it
(`pytest --hypothesis-seed=<seed> …`).

Strategies. Inputs are built from pieces that have broken parsers before: NUL, lone surrogates,
RTL overrides, zero-width and byte-order marks, emoji and combining marks, control characters,
SQL- and format-string-looking text, numbers spelled every way PostgreSQL and Python read them
(NaN, ±Infinity, exponents, 100,000 digits, 20,000 decimals), uuids in every shape PostgreSQL
accepts and many it does not, and JSON nested deeper than any recursion limit.

Properties. `check_answer` is the HTTP one (never a 5xx; a 4xx is an RFC 9457 problem document;
no stack trace or secret anywhere in the answer); `Fingerprint` proves that no row changed.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from hypothesis import HealthCheck, Phase, event, settings
from hypothesis import strategies as st
from hypothesis.control import currently_in_test_context
from hypothesis.strategies import SearchStrategy

from tests.pg import Database

FUZZ_EXAMPLES_ENV = "FUZZ_EXAMPLES"


def fuzz_settings(ci_examples: int) -> settings:
    """`ci_examples` derandomized examples in CI; FUZZ_EXAMPLES random ones in a long local run."""
    wanted = os.environ.get(FUZZ_EXAMPLES_ENV, "").strip()
    long_run = bool(wanted)
    return settings(
        max_examples=int(wanted) if long_run else ci_examples,
        derandomize=not long_run,
        database=None,
        deadline=None,
        print_blob=long_run,
        phases=(Phase.explicit, Phase.generate, Phase.shrink),
        # The fixtures are module-scoped worlds that every example shares on purpose (each example
        # checks its own effect on them); examples are slow-ish because they cross real HTTP and
        # SQL, and some are large on purpose.
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                               HealthCheck.data_too_large, HealthCheck.large_base_example,
                               HealthCheck.filter_too_much],
    )


def note(text: str) -> None:
    """A hypothesis event (the statistics `make fuzz` prints), when inside a hypothesis example;
    nothing in the deterministic sweeps."""
    if currently_in_test_context():
        event(text)


# -- text --------------------------------------------------------------------------------------
ODD_PIECES = (
    "\x00", "\x01", "\x1b[31m", "\x7f", "\t", "\n", "\r\n", " ", "\u00a0",
    "\ud800", "\udfff", "\ud83d",                       # lone surrogates (not encodable)
    "\u202e", "\u200f", "\u200b", "\u2028", "\ufeff",   # RTL override, RLM, ZWSP, LS, BOM
    "\U0001f4a9", "\U0001f1f3\U0001f1f1", "e\u0301",   # emoji, flag, combining mark
    "\uffff", "\U0010ffff", "\u0130", "\u017f", "ß",   # noncharacters, case-folding oddities
    "é", "日本", "\u0661\u0662",                        # non-ASCII letters, Arabic-Indic digits
)
SQLISH = (
    "' or '1'='1", "'; drop table public.trade_executions; --", "1); delete from "
    "public.execution_audit_log; --", "$$; select pg_sleep(10); $$", "\\x00", "\\u0000", "%s",
    "%(p_user_id)s", "{0}", "${jndi:ldap://x}", "NULL", "null", "' || current_user || '",
    "E'\\\\'", "*/ select 1 /*", "\"quoted\"", "`rm -rf /`", "../../etc/passwd", "<script>",
)
LONG_UNITS = ("x", "é", "\U0001f4a9", "\u202e", " ", "'", "9", "\\")


def odd_text(max_pieces: int = 6, *, long: bool = True) -> SearchStrategy[str]:
    """Short mixes of odd pieces and arbitrary code points (surrogates included), or one unit
    repeated up to 70,000 times."""
    piece = st.one_of(st.sampled_from(ODD_PIECES + SQLISH),
                      st.text(st.characters(exclude_categories=()), max_size=8))
    short = st.lists(piece, max_size=max_pieces).map("".join)
    if not long:
        return short
    repeated = st.builds(lambda unit, n: unit * n, st.sampled_from(LONG_UNITS),
                         st.integers(200, 70_000))
    return st.one_of(short, short, short, repeated)


def printable_ascii(min_size: int = 1, max_size: int = 40) -> SearchStrategy[str]:
    return st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=min_size,
                   max_size=max_size)


# -- numbers spelled as text (floats are refused by the RPC port: money is never float) ----------
NUMBER_WORDS = (
    "NaN", "nan", "-NaN", "Infinity", "-Infinity", "+Infinity", "inf", "-inf", "infinity",
    "1e131072", "1e-16384", "1e400", "-1e400", "1e-400", "-0", "0", "0.0", "-0.0", "00001",
    "", " ", " 1 ", "1,5", "1.2.3", "0x10", "1_000", "+1", ".5", "5.", "1e", "e1", "--1",
    "\u0661\u0662", "½", "1\x00", "9" * 40, "0." + "0" * 29 + "1", "2147483647", "2147483648",
    "-2147483648", "-2147483649", "9223372036854775808",
)


def numeric_text() -> SearchStrategy[str]:
    return st.one_of(
        st.sampled_from(NUMBER_WORDS),
        st.integers(-10**40, 10**40).map(str),
        st.decimals(allow_nan=False, allow_infinity=False, places=None).map(lambda d: f"{d:f}"),
        st.decimals(min_value=-2, max_value=2, places=6).map(str),
        st.integers(1, 20_000).map(lambda n: "0." + "0" * n + "1"),         # many decimals
        st.integers(1, 140_000).map(lambda n: "9" * n),                    # huge (and overflowing)
        st.builds(lambda m, e: f"{m}e{e}", st.integers(-99, 99), st.integers(-200_000, 200_000)),
        odd_text(3, long=False),
    )


def int_values() -> SearchStrategy[int | str | None]:
    """Integers in and far out of int4's range, and text that is not one."""
    return st.one_of(
        st.none(),
        st.integers(-5, 5),
        st.sampled_from([0, 1, 9, 10, 59, 60, 299, 300, 1000, 1001, 3600, 3601, 86400, 86401,
                         10_000_000, 10_000_001, 2**31 - 1, 2**31, -(2**31), -(2**31) - 1,
                         2**63, 10**30]),
        st.integers(-(2**40), 2**40),
        st.sampled_from(["1.5", "1e3", "", " 7 ", "0x1f", "seven", "NaN", "Infinity", "١"]),
    )


# -- uuids -------------------------------------------------------------------------------------
UUID_SHAPES = (
    "", " ", "not-a-uuid", "00000000-0000-0000-0000-000000000000",
    "123e4567e89b12d3a456426614174000",              # PostgreSQL accepts: no hyphens
    "{123e4567-e89b-12d3-a456-426614174000}",         # PostgreSQL accepts: braces
    "123E4567-E89B-12D3-A456-426614174000",           # upper case
    "123e4567-e89b-12d3-a456-42661417400",            # one digit short
    "123e4567-e89b-12d3-a456-4266141740000",          # one digit long
    "g23e4567-e89b-12d3-a456-426614174000",           # not hex
    "123e4567-e89b-12d3-a456-426614174000 ",          # trailing space
    "123e4567-e89b-12d3-a456-426614174000\x00",       # NUL
    "１２３e4567-e89b-12d3-a456-426614174000",          # full-width digits
    "' or 1=1 --",
)


def uuid_text(known: Iterable[str] = ()) -> SearchStrategy[str | None]:
    """Known ids (so business paths run), random ids, and text that only looks like one."""
    options: list[SearchStrategy[Any]] = [st.none(), st.uuids().map(str),
                                          st.sampled_from(UUID_SHAPES), odd_text(3, long=False)]
    known = tuple(known)
    if known:
        options += [st.sampled_from(known)] * 3
    return st.one_of(*options)


def bool_values() -> SearchStrategy[bool | str | None]:
    return st.one_of(st.none(), st.booleans(),
                     st.sampled_from(["t", "f", "yes", "no", "on", "off", "1", "0", "maybe", "",
                                      " true ", "TRUE", "y", "nul\x00"]))


# -- JSON --------------------------------------------------------------------------------------
def json_values(*, floats: bool, max_leaves: int = 12) -> SearchStrategy[Any]:
    scalars: list[SearchStrategy[Any]] = [st.none(), st.booleans(),
                                          st.integers(-10**30, 10**30), odd_text(4, long=False)]
    if floats:
        scalars.append(st.floats(allow_nan=False, allow_infinity=False))
    return st.recursive(
        st.one_of(*scalars),
        lambda kids: st.one_of(st.lists(kids, max_size=4),
                               st.dictionaries(odd_text(3, long=False), kids, max_size=4)),
        max_leaves=max_leaves)


def deep_json_text() -> SearchStrategy[str]:
    """Nesting around and beyond Python's recursion limit (~1000) and PostgreSQL's stack depth;
    an unterminated `[[[…` of 1,000 levels fits a 1 KiB body and still recurses to the limit."""
    depth = st.one_of(st.integers(1, 20_000), st.integers(950, 1_100))
    return st.one_of(
        depth.map(lambda n: "[" * n),
        depth.map(lambda n: "[" * n + "]" * n),
        depth.map(lambda n: '{"a":' * n + "1" + "}" * n),
        depth.map(lambda n: '{"max_jobs":' + "[" * n),
    )


# -- the database ------------------------------------------------------------------------------
class Fingerprint:
    """Row count and a digest of every row of every table in public and private: two equal
    fingerprints mean no row was inserted, changed or deleted in between."""

    def __init__(self, db: Database) -> None:
        self._conn = db.connect()
        tables = self._conn.execute(
            "select format('%I.%I', n.nspname, c.relname) from pg_class c "
            "join pg_namespace n on n.oid = c.relnamespace "
            "where n.nspname in ('public', 'private') and c.relkind in ('r', 'p') "
            "order by 1").fetchall()
        self.tables = [t for (t,) in tables]
        self._sql = " union all ".join(
            f"select '{t}', count(*), md5(coalesce(string_agg(r::text, '|' order by r::text), ''))"  # noqa: S608
            f" from {t} r" for t in self.tables)

    def take(self) -> dict[str, tuple[int, str]]:
        rows = self._conn.execute(self._sql).fetchall()
        return {table: (int(count), digest) for table, count, digest in rows}

    def close(self) -> None:
        self._conn.close()


def changed_tables(before: Mapping[str, tuple[int, str]],
                   after: Mapping[str, tuple[int, str]]) -> list[str]:
    return sorted(t for t in set(before) | set(after) if before.get(t) != after.get(t))


# -- HTTP answers ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Answer:
    status: int
    headers: Mapping[str, str]   # names in lower case
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", errors="replace")

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())

    def json(self) -> Any:
        return json.loads(self.body)


# What a stack trace, a driver error or a connection string looks like in an answer.
LEAK_MARKERS = ("Traceback", 'File "/', "site-packages", "psycopg", "postgresql://", "SQLSTATE",
                "Werkzeug Debugger")


def server_refusal(answer: Answer) -> bool:
    """gunicorn's own answer to a request it could not parse (before any of our code ran): a fixed
    text/html page. Only raw requests with broken HTTP may get it."""
    return (answer.status in (400, 414, 431)
            and (answer.header("content-type") or "").startswith("text/html")
            and b"<h1><p>" in answer.body)


def check_answer(answer: Answer, secrets: Iterable[str], *, raw: bool = False) -> Any:
    """The properties of every answer: not a 5xx; a 4xx is a problem document (or, for a raw
    request the HTTP server refused to parse, the server's fixed page); no stack trace, SQL error
    or secret in the body or the headers. Returns the decoded JSON document (None for a server
    refusal)."""
    everything = answer.text + " " + " ".join(f"{k}: {v}" for k, v in answer.headers.items())
    for secret in secrets:
        assert secret not in everything, "a secret is in the answer"
    assert answer.status < 500, f"{answer.status}: {answer.text[:2000]}"
    if raw and server_refusal(answer):
        return None
    for marker in LEAK_MARKERS:
        assert marker not in answer.text, f"{marker!r} in the answer: {answer.text[:2000]}"
    document = answer.json()
    if answer.status >= 400:
        assert (answer.header("content-type") or "").startswith("application/problem+json"), \
            answer.headers
        assert isinstance(document, dict), document
        assert isinstance(document.get("type"), str) and document["type"].startswith("/problems/")
        assert isinstance(document.get("title"), str) and document["title"]
        assert isinstance(document.get("detail"), str) and document["detail"]
        assert document.get("status") == answer.status, document
    return document


def from_httpx(response: Any) -> Answer:
    return Answer(response.status_code,
                  {k.lower(): v for k, v in response.headers.items()}, response.content)


def raw_request(url: str, head: bytes, body: bytes = b"", *, timeout: float = 10.0,
                half_close: bool = True) -> Answer:
    """Send `head` (request line + header lines, each ending in CRLF, without the blank line) and
    `body` as they are — no client-side validation — and read the answer until the server closes
    (the request should say `Connection: close`). `half_close` signals end of input, so a server
    waiting for a promised body sees EOF instead of waiting forever."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=timeout) as sock:
        sock.sendall(head + b"\r\n" + body)
        if half_close:
            sock.shutdown(socket.SHUT_WR)
        chunks = []
        while True:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            chunks.append(chunk)
    return parse_response(b"".join(chunks))


def parse_response(data: bytes) -> Answer:
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    assert lines and lines[0].startswith(b"HTTP/1."), f"not an HTTP answer: {data[:200]!r}"
    status = int(lines[0].split(b" ")[1])
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers[name.decode("latin-1").strip().lower()] = value.decode("latin-1").strip()
    if headers.get("transfer-encoding", "").lower() == "chunked":
        body = _dechunk(body)
    elif "content-length" in headers:
        body = body[:int(headers["content-length"])]
    return Answer(status, headers, body)


def _dechunk(data: bytes) -> bytes:
    out = bytearray()
    while data:
        size_line, _, rest = data.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            break
        out += rest[:size]
        data = rest[size + 2:]
    return bytes(out)
