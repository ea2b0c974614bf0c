"""Fuzzing both HTTP functions over real HTTP (README → Reliability → Fuzzing).

trading_execute (live mode against the sandbox) and scan_scheduler each run under the real
functions-framework server with the real database (one of this module's own) and the sandbox; a
JWKS server publishes one ES256 key, so both verifiers' asymmetric paths are exercised too.
Hypothesis sends bodies, headers and bearer tokens; for every example:

- the answer is never a 5xx, a 4xx is an RFC 9457 problem document (type/title/status/detail,
  `application/problem+json`), and no answer carries a stack trace, an SQL error or a secret
  (tests/fuzz_support.check_answer) — except the HTTP server's own fixed 400 page for raw requests
  it cannot parse, which no code of ours sees;
- an independent oracle (written from SPEC §4, not from the parser) says whether the
  request was a valid, authorised one. If it was not: a 4xx, NO row changed in any table of public
  or private (fingerprints before/after) and NO order reached the sandbox. If it was: one of the
  contract's answers, and an order only with a 201/202.

Budgets: see tests/fuzz_support.py (CI: fixed and derandomized; FUZZ_EXAMPLES for long runs).
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import httpx
import jwt
import pytest
from hypothesis import given
from hypothesis import strategies as st

from sandbox.auth import DEFAULT_VIEW_SECRET
from shared.auth import dev_token
from tests.execute_harness import (
    JWT_SECRET,
    SECRETS,
    SERVICE_KEY,
    Stack,
    proposal,
    served,
    trader,
)
from tests.function_server import FunctionServer, start_function
from tests.fuzz_support import (
    UUID_SHAPES,
    Answer,
    Fingerprint,
    changed_tables,
    check_answer,
    deep_json_text,
    from_httpx,
    fuzz_settings,
    json_values,
    note,
    odd_text,
    printable_ascii,
    raw_request,
    server_refusal,
)
from tests.fuzz_tokens import Keys, Token, authorization_garbage, tokens
from tests.pg import Database, SessionCluster
from tests.sandbox_server import SandboxServer
from tests.scan_support import RecordingServer, scan_env
from tests.test_execution_support import set_controls

MAX_BODY = 4096        # trading_execute (shared.api.edge.MAX_BODY_BYTES)
MAX_SCAN_BODY = 1024   # scan_scheduler (tick.MAX_BODY_BYTES)
MAX_JOBS_LIMIT = 1_000_000
CANONICAL_UUID = re.compile(
    r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
IDEMPOTENCY_KEY = re.compile(r"[\x21-\x7e](?:[\x20-\x7e]{0,253}[\x21-\x7e])?")
EXECUTE_ANSWERS = {200, 201, 202, 404, 409, 422}  # what a valid request may get (SPEC §4)
ALL_SECRETS = (*SECRETS.values(), DEFAULT_VIEW_SECRET)


@dataclass(repr=False)
class World:
    db: Database
    fingerprint: Fingerprint
    sandbox: SandboxServer
    execute: Stack
    scan: FunctionServer
    keys: Keys
    jwks: RecordingServer
    user: uuid.UUID
    other: uuid.UUID
    approved: list[str]          # the user's approved proposals (a valid request executes one)
    others_proposal: str         # another user's approved proposal

    def __repr__(self) -> str:
        return f"World(db={self.db.name}, user={self.user})"

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:  # hypothesis' failure report
        printer.text(repr(self))

    def token(self, user: uuid.UUID | None = None) -> str:
        return dev_token(JWT_SECRET, user or self.user)

    def snapshot(self) -> tuple[dict[str, tuple[int, str]], int]:
        return self.fingerprint.take(), len(self.sandbox.orders())

    def assert_unchanged(self, before: tuple[dict[str, tuple[int, str]], int],
                         why: str) -> None:
        rows, orders = self.snapshot()
        assert changed_tables(before[0], rows) == [], f"rows changed by a refused request: {why}"
        assert orders == before[1], f"an order reached the sandbox for a refused request: {why}"


@pytest.fixture(scope="module")
def world(pg_session: SessionCluster, bitvavo_sandbox_session: SandboxServer) -> Iterator[World]:
    db = pg_session.new_database()
    keys = Keys.make(JWT_SECRET)
    jwks = RecordingServer(lambda _request: (200, {}, keys.jwks()))
    try:
        set_controls(db, live_trading_allowed=True)
        user = trader(db, live=True, max_order_quote=Decimal(100))
        other = trader(db, live=True)
        approved = [str(proposal(db, user, amount="10")) for _ in range(4)]
        others_proposal = str(proposal(db, other, amount="10"))
        # Scan jobs that are not due: a valid tick claims nothing and so changes nothing.
        db.query("insert into public.scan_jobs (user_id, market, interval_seconds, next_run_at) "
                 "values (%s, 'BTC-EUR', 600, now() + interval '1 day')", (user,))
        with jwks:
            auth_env = {"SUPABASE_JWT_SECRET": JWT_SECRET, "SUPABASE_SERVICE_ROLE_KEY": SERVICE_KEY,
                        "SUPABASE_JWKS_URL": jwks.url + "/auth/v1/.well-known/jwks.json"}
            with served(db, bitvavo_sandbox_session, "live", **auth_env) as execute, \
                    start_function("scan_scheduler",
                                   env=scan_env(db, bitvavo_sandbox_session, **auth_env)) as scan:
                fingerprint = Fingerprint(db)
                try:
                    yield World(db, fingerprint, bitvavo_sandbox_session, execute, scan, keys,
                                jwks, user, other, approved, others_proposal)
                finally:
                    fingerprint.close()
    finally:
        pg_session.drop(db)


# -- the oracle ----------------------------------------------------------------------------------
class _Duplicate(ValueError):
    pass


def _strict_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    document: dict[str, Any] = {}
    for name, value in pairs:
        if name in document:
            raise _Duplicate(name)  # an ambiguous body is not a valid request
        document[name] = value
    return document


def _refuse_constant(name: str) -> Any:
    raise ValueError(name)


def json_document(body: bytes, limit: int = MAX_BODY) -> Any:
    """The body as the contract reads it, or a ValueError: JSON (RFC 8259: UTF-8 without a byte
    order mark, no NaN/Infinity, no duplicate member names), at most MAX_BODY bytes; an empty body
    is an empty object."""
    if len(body) > limit:
        raise ValueError("too large")
    text = body.decode("utf-8")  # strict: UTF-16/32 and invalid bytes are refused (ValueError)
    if text.startswith("\ufeff"):
        raise ValueError("a byte order mark")
    if not text.strip():
        return {}
    try:
        return json.loads(text, object_pairs_hook=_strict_object, parse_constant=_refuse_constant)
    except RecursionError:
        raise ValueError("too deep") from None


def valid_execute_body(body: bytes, *, service: bool = False) -> bool:
    try:
        document = json_document(body)
    except ValueError:
        return False
    fields = {"proposal_id", "user_id"} if service else {"proposal_id"}
    return (isinstance(document, dict) and set(document) == fields
            and all(isinstance(document[f], str) and CANONICAL_UUID.fullmatch(document[f])
                    for f in fields))


def valid_scan_body(body: bytes) -> bool:
    try:
        document = json_document(body, MAX_SCAN_BODY)
    except ValueError:
        return False
    if not isinstance(document, dict) or set(document) - {"max_jobs"}:
        return False
    if "max_jobs" not in document:
        return True  # no max_jobs: the tick drains what is due
    value = document["max_jobs"]
    return type(value) is int and 1 <= value <= MAX_JOBS_LIMIT


# -- strategies ----------------------------------------------------------------------------------
def id_values(world: World) -> st.SearchStrategy[Any]:
    return st.one_of(
        st.sampled_from(world.approved), st.just(world.others_proposal),
        st.sampled_from(world.approved).map(str.upper), st.uuids().map(str),
        st.sampled_from(UUID_SHAPES), json_values(floats=True, max_leaves=4))


def encoded(document: st.SearchStrategy[Any]) -> st.SearchStrategy[bytes]:
    """JSON text of `document` in an encoding JSON readers detect (with and without escapes); only
    UTF-8 without a byte order mark is JSON between systems (RFC 8259 §8.1)."""
    return st.builds(
        lambda doc, ascii_only, encoding: json.dumps(doc, ensure_ascii=ascii_only).encode(
            encoding, errors="surrogatepass"),
        document, st.booleans(), st.sampled_from(["utf-8", "utf-8", "utf-8-sig", "utf-16",
                                                  "utf-32"]))


def execute_bodies(world: World) -> st.SearchStrategy[bytes]:
    ids = id_values(world)
    member = st.sampled_from(["proposal_id", "user_id", "Proposal_id", "proposal_id ", "",
                              "proposal\u0000id", "__proto__", "proposalId"])
    objects = st.fixed_dictionaries({"proposal_id": ids},
                                    optional={"user_id": ids, "extra": json_values(floats=True)})
    duplicate = st.builds(lambda a, b, name: (f'{{"{name}": {json.dumps(a)}, '
                                              f'"{name}": {json.dumps(b)}}}').encode(),
                          ids, ids, st.sampled_from(["proposal_id", "user_id"]))
    literal = st.sampled_from([
        b'{"proposal_id": NaN}', b'{"proposal_id": Infinity}', b'{"proposal_id": -Infinity}',
        b'{"proposal_id": 1e999}', b'{"proposal_id": ' + b"9" * 5000 + b"}",
        b'{"proposal_id": "\\ud800"}', b'{"proposal_id": "\\u0000"}', b"null", b"[]", b'""',
        b"{", b"}", b"\xef\xbb\xbf{}", b"\x00", b" \t\r\n ", b'{"proposal_id": true}',
        (f'{{"proposal_id": "{world.approved[0]}"}}' + "\x00").encode(),
        (f'{{"proposal_id": "{world.approved[0]}"}} trailing').encode(),
        (f'{{"proposal_id": "{world.approved[0]}",}}').encode(),
        (f"{{'proposal_id': '{world.approved[0]}'}}").encode(),
    ])
    some_id = st.one_of(st.sampled_from(world.approved), st.just(world.others_proposal),
                        st.uuids().map(str))
    exact = st.builds(lambda i: {"proposal_id": i}, some_id)
    # a user naming another user (the service's field): must never choose whose proposal runs
    forged = st.builds(lambda i, u: {"proposal_id": i, "user_id": u}, some_id, st.sampled_from(
        [str(world.other), str(world.user), str(uuid.uuid4())]))
    return st.one_of(
        encoded(exact), encoded(forged), encoded(objects),
        encoded(st.dictionaries(member, ids, max_size=3)),
        encoded(json_values(floats=True)), duplicate, literal,
        odd_text().map(lambda s: s.encode("utf-8", errors="surrogatepass")),
        st.binary(max_size=6000), deep_json_text().map(str.encode),
        st.integers(MAX_BODY - 40, MAX_BODY + 40).map(
            lambda n: json.dumps({"proposal_id": world.approved[0], "pad": ""}).encode()[:-2]
            + b'"' + b"x" * n + b'"}'),
    )


# -- the checks ----------------------------------------------------------------------------------
def execute_once(world: World, *, body: bytes, headers: dict[str, str], valid: bool,
                 why: str = "") -> Answer:
    """POST / to trading_execute and check the properties against the oracle's verdict."""
    before = world.snapshot()
    answer = from_httpx(world.execute.fn.post("/", content=body, headers=headers))
    check_answer(answer, ALL_SECRETS)
    settle(world, before, answer, valid=valid, why=f"{why} → {answer.status} {answer.text[:300]}")
    return answer


def settle(world: World, before: tuple[dict[str, tuple[int, str]], int], answer: Answer, *,
           valid: bool | None, why: str) -> None:
    """Only a valid request gets past parsing and authentication to the claim (a claim outcome:
    2xx, 404, 409, 422 — which may write audit rows, and with 201/202 place one order). Anything
    else is a 4xx that changed nothing. `valid` None: the oracle cannot tell (either is right)."""
    verdict = {True: "valid", False: "invalid", None: "either"}[valid]
    note(f"{verdict} → {answer.status}")
    if answer.status < 300 or answer.status in (404, 409, 422):
        assert valid is not False, f"an invalid request reached the claim: {why}"
        assert answer.status in EXECUTE_ANSWERS, why
        placed = len(world.sandbox.orders()) - before[1]
        assert placed in ((0, 1) if answer.status in (201, 202) else (0,)), why
        return
    assert 400 <= answer.status < 500, why
    world.assert_unchanged(before, why)
    # a valid request refused before the claim: only the HTTP server may do that (a header line
    # it cannot parse), never our own parser or verifier
    assert valid is not True or server_refusal(answer), f"a valid request was refused: {why}"


@given(data=st.data())
@fuzz_settings(150)
def test_execute_bodies(world: World, data: st.DataObject) -> None:
    """Arbitrary bodies from a valid user: 4xx + nothing changed, unless the body is exactly
    {"proposal_id": <uuid>} (then a claim outcome; an approved proposal of the user is executed)."""
    body = data.draw(execute_bodies(world), label="body")
    content_type = data.draw(st.sampled_from([
        "application/json", "application/json; charset=utf-16", "text/plain",
        "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", "",
        "application/problem+json", "*/*"]), label="content-type")
    headers = {"Authorization": f"Bearer {world.token()}",
               "Idempotency-Key": f"fuzz-{uuid.uuid4()}", "Content-Type": content_type}
    answer = execute_once(world, body=body, headers=headers, valid=valid_execute_body(body),
                          why=f"body={body[:200]!r}")
    if answer.status == 201:
        document = answer.json()
        assert document["execution"]["proposal_id"] in world.approved, document


@given(body=st.one_of(st.just(b""), st.sampled_from([b"{}", b'{"limit": 5}']),
                      json_values(floats=True).map(lambda d: json.dumps(d).encode()),
                      st.binary(max_size=300), deep_json_text().map(str.encode)),
       as_service=st.booleans())
@fuzz_settings(40)
def test_reconcile_bodies_and_callers(world: World, body: bytes, as_service: bool) -> None:
    """POST /reconcile: a user is refused (403) whatever the body (the caller is checked before the
    body is read); the service gets counts for a valid body — with nothing to reconcile here,
    nothing changes either way."""
    token = SERVICE_KEY if as_service else world.token()
    before = world.snapshot()
    answer = from_httpx(world.execute.fn.post("/reconcile", content=body,
                                              headers={"Authorization": f"Bearer {token}"}))
    document = check_answer(answer, ALL_SECRETS)
    note(f"{'service' if as_service else 'user'} → {answer.status}")
    world.assert_unchanged(before, f"/reconcile {body[:100]!r} → {answer.status}")
    if not as_service:
        assert answer.status == 403, answer.text
    elif answer.status == 200:
        assert set(document) >= {"examined", "settled", "failed"}, document
    else:
        assert answer.status in (400, 413), answer.text


# -- headers, sent as raw bytes (no client-side validation) ----------------------------------------
def header_bytes() -> st.SearchStrategy[bytes]:
    """Header values with every byte but CR and LF (which would end the header line)."""
    return st.one_of(
        st.binary(max_size=40).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b"")),
        odd_text(4, long=False).map(
            lambda s: s.encode("utf-8", errors="surrogatepass").replace(b"\r", b"")
            .replace(b"\n", b"")))


def idempotency_keys() -> st.SearchStrategy[list[bytes]]:
    """0, 1 or 2 Idempotency-Key header lines: valid keys, the length limits, spaces at the ends,
    control characters, non-ASCII."""
    one = st.one_of(
        printable_ascii(1, 60).map(str.encode),
        st.sampled_from([b"", b"a" * 255, b"a" * 256, b"a" * 254 + b" b", b" padded", b"padded ",
                         b"\tpadded\t", b"in side", b"tab\there", b"nul\x00", b"del\x7f",
                         b"esc\x1b[0m", "caf\u00e9".encode(), "caf\u00e9".encode("latin-1"),
                         "\U0001f4a9".encode(), b"\xff\xfe", b"%00", b"k" * 9000]),
        header_bytes())
    return st.lists(one, min_size=0, max_size=2)


def valid_key(values: list[bytes]) -> bool | None:
    """Whether the Idempotency-Key the function sees is valid. HTTP strips optional whitespace at
    the ends of a field line (RFC 9110 §5.5) and WSGI decodes latin-1. A repeated field reaches
    the function as ONE comma-joined value (§5.3) — the server's joiner decides whether "a" and ""
    become the valid "a," — so two key lines are undecided here: a refusal or a claim are both
    right, and the function cannot tell a repeated key from one that contains a comma."""
    if len(values) != 1:
        return None if values else False
    key = values[0].strip(b" \t").decode("latin-1")
    return len(key) <= 255 and bool(IDEMPOTENCY_KEY.fullmatch(key))


def header_line(name: bytes, value: bytes) -> bytes:
    return name + b": " + value + b"\r\n"


@given(data=st.data())
@fuzz_settings(150)
def test_execute_headers(world: World, data: st.DataObject) -> None:
    """Idempotency-Key edge cases, Authorization garbage, odd Content-Types, repeated and random
    headers, as raw bytes: a 4xx and nothing changed unless the key and the bearer are valid."""
    token = world.token()
    auth, auth_ok = data.draw(st.one_of(
        st.just((f"Bearer {token}", True)),
        authorization_garbage(token),
        st.just((f"Bearer {SERVICE_KEY}", False)),  # the service: valid, but user_id missing
        header_bytes().map(lambda b: (b.decode("latin-1"), False))), label="authorization")
    keys = data.draw(st.one_of(st.builds(lambda: [f"fuzz-{uuid.uuid4()}".encode()]),
                               idempotency_keys()), label="idempotency keys")
    proposal_id = data.draw(st.one_of(st.uuids().map(str), st.sampled_from(world.approved)),
                            label="proposal")
    body = json.dumps({"proposal_id": proposal_id}).encode()
    extra = data.draw(st.one_of(st.just([]), st.lists(st.tuples(
        st.one_of(st.sampled_from([b"Content-Type", b"X-Request-Id", b"Accept", b"Accept-Charset",
                                   b"X-Forwarded-For", b"Content-Encoding", b"Cookie",
                                   b"X-HTTP-Method-Override", b"X-Idempotency-Key", b"Prefer"]),
                  st.text(st.sampled_from("abcxyzXYZ-_0123456789!#$%&'*+.^`|~"), min_size=1,
                          max_size=20).map(str.encode)),
        header_bytes()), max_size=4)), label="extra headers")
    head = (b"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
            + header_line(b"Content-Length", str(len(body)).encode())
            + header_line(b"Authorization", auth.encode("latin-1", errors="replace"))
            + b"".join(header_line(b"Idempotency-Key", k) for k in keys)
            + b"".join(header_line(name, value) for name, value in extra))
    named = {name.lower() for name, _ in extra}
    key_ok = valid_key(keys)
    valid = (False if not auth_ok or key_ok is False
             or named & {b"idempotency-key", b"authorization", b"content-length"} else key_ok)
    before = world.snapshot()
    answer = raw_request(world.execute.fn.url, head, body)
    check_answer(answer, ALL_SECRETS, raw=True)
    settle(world, before, answer, valid=valid,
           why=f"auth={auth[:80]!r} keys={[k[:40] for k in keys]} extra={extra} → "
               f"{answer.status} {answer.text[:300]}")


@pytest.mark.parametrize(("key", "valid"), [
    (b"", False), (b"a", True), (b"a" * 255, True), (b"a" * 256, False), (b"!" * 255, True),
    (b"~", True), (b"in side", True), (b" padded", True), (b"padded\t", True),  # OWS stripped
    (b"tab\there", False), (b"nul\x00", False), (b"bell\x07", False), (b"del\x7f", False),
    (b"esc\x1b[0m", False), ("caf\u00e9".encode(), False), ("caf\u00e9".encode("latin-1"), False),
    ("\U0001f4a9".encode(), False), (b"\xff", False), (b"k" * 9000, False),
], ids=lambda v: repr(v)[:24] if isinstance(v, bytes) else str(v))
def test_idempotency_key_edges(world: World, key: bytes, valid: bool) -> None:
    """The Idempotency-Key edges one by one (raw bytes, a valid bearer, an unknown proposal): a
    valid key reaches the claim (404), anything else is a 4xx that changed nothing. Spaces and tabs
    at the ends are not part of a field value in HTTP, so they never reach the function."""
    body = json.dumps({"proposal_id": str(uuid.uuid4())}).encode()
    head = (b"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
            + header_line(b"Content-Length", str(len(body)).encode())
            + header_line(b"Authorization", f"Bearer {world.token()}".encode())
            + header_line(b"Idempotency-Key", key))
    before = world.snapshot()
    answer = raw_request(world.execute.fn.url, head, body)
    check_answer(answer, ALL_SECRETS, raw=True)
    settle(world, before, answer, valid=valid, why=f"key={key[:40]!r} → {answer.status}")
    assert answer.status == 404 if valid else 400 <= answer.status < 500


@pytest.mark.parametrize(("head", "body"), [
    (b"Content-Length: 5", b"{}"),                   # promises more than it sends (EOF)
    (b"Content-Length: 1", b"{}"),                   # sends more than it promises
    (b"Content-Length: -1", b"{}"),
    (b"Content-Length: abc", b"{}"),
    (b"Content-Length: 2\r\nContent-Length: 3", b"{}"),
    (b"Content-Length: 99999999999999999999", b"{}"),
    (b"Content-Length: 5000", b"{" * 5000),          # over the body limit: 413
    (b"Transfer-Encoding: chunked", b"2\r\n{}\r\n0\r\n\r\n"),
    (b"Transfer-Encoding: chunked", b"zz\r\n{}\r\n0\r\n\r\n"),
    (b"Transfer-Encoding: chunked", b"1001\r\n" + b"[" * 4097 + b"\r\n0\r\n\r\n"),
    (b"Transfer-Encoding: chunked\r\nContent-Length: 2", b"2\r\n{}\r\n0\r\n\r\n"),
    (b"", b""),                                       # no length, no body
])
def test_execute_framing(world: World, head: bytes, body: bytes) -> None:
    """Odd Content-Length / Transfer-Encoding framing: never a 5xx, nothing changed."""
    request = (b"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
               + header_line(b"Authorization", f"Bearer {world.token()}".encode())
               + header_line(b"Idempotency-Key", f"fuzz-{uuid.uuid4()}".encode())
               + (head + b"\r\n" if head else b""))
    before = world.snapshot()
    answer = raw_request(world.execute.fn.url, request, body)
    check_answer(answer, ALL_SECRETS, raw=True)
    assert 400 <= answer.status < 500, answer.text
    world.assert_unchanged(before, f"{head!r} {body[:40]!r}")


@pytest.mark.parametrize(("head", "body", "status"), [
    (b"Transfer-Encoding: chunked", b"2\r\n{}\r\n0\r\n\r\n", 200),
    (b"Transfer-Encoding: chunked", b"zz\r\n{}\r\n0\r\n\r\n", 400),
    (b"Transfer-Encoding: chunked", b"5\r\n{}\r\n", 400),          # chunk shorter than said
    (b"Transfer-Encoding: chunked", b"401\r\n" + b" " * 1025 + b"\r\n0\r\n\r\n", 413),
    (b"Content-Length: 2000", b" " * 2000, 413),                    # over the 1 KiB limit
    (b"Content-Length: 10", b"{}", 400),                            # EOF before the length
    (b"", b"", 200),
])
def test_scan_framing(world: World, head: bytes, body: bytes, status: int) -> None:
    """scan_scheduler's body through the edge: odd framing or a body cut short is a 400 (never
    Flask's 500), one over the limit a 413."""
    request = (b"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
               + header_line(b"Authorization", f"Bearer {SERVICE_KEY}".encode())
               + (head + b"\r\n" if head else b""))
    before = world.snapshot()
    answer = raw_request(world.scan.url, request, body)
    check_answer(answer, ALL_SECRETS, raw=True)
    assert answer.status == status, answer.text
    world.assert_unchanged(before, f"{head!r} {body[:40]!r}")


@given(method=st.sampled_from(["GET", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "FOO"]),
       path=st.one_of(st.sampled_from(["/", "/reconcile", "//", "/reconcile/", "/x", "/%00",
                                       "/..%2f", "/reconcile?x=1", "/?a=%ff"]),
                      st.text(st.sampled_from("abc/%.-_~"), max_size=12).map(lambda p: "/" + p)),
       target=st.sampled_from(["execute", "scan"]))
@fuzz_settings(40)
def test_methods_and_paths(world: World, method: str, path: str, target: str) -> None:
    """Other methods and paths (sent raw: `//x` is a path here, not a host): a problem document
    (404/405), nothing changed."""
    url = world.execute.fn.url if target == "execute" else world.scan.url
    before = world.snapshot()
    answer = raw_request(url, f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                              "Connection: close\r\nContent-Length: 0\r\n"
                              f"Authorization: Bearer {SERVICE_KEY}\r\n".encode())
    check_answer(answer, ALL_SECRETS, raw=True)
    note(f"{target} {method} → {answer.status}")
    assert answer.status in (404, 405) or server_refusal(answer), answer.text
    world.assert_unchanged(before, f"{method} {path}")


# -- tokens ----------------------------------------------------------------------------------------
@given(data=st.data())
@fuzz_settings(200)
def test_tokens(world: World, data: st.DataObject) -> None:
    """Mutated JWTs (header, claims, signature, alg none, wrong kid, huge claims, forged role, odd
    sub and exp) against both functions: a refused token is a 401 with nothing changed; a valid
    user token reaches the claim (trading_execute) or is refused as not the service
    (scan_scheduler); a valid service token is the service."""
    token: Token = data.draw(tokens(world.keys, world.user, world.other), label="token")
    target = data.draw(st.sampled_from(["execute", "scan"]), label="function")
    before = world.snapshot()
    headers = {"Authorization": f"Bearer {token.value}", "Idempotency-Key": f"fuzz-{uuid.uuid4()}"}
    if target == "execute":
        body = json.dumps({"proposal_id": str(uuid.uuid4())}).encode()
        response = world.execute.fn.post("/", content=body, headers=headers)
    else:
        response = world.scan.post("/", content=b"{}", headers=headers)
    answer = from_httpx(response)
    check_answer(answer, ALL_SECRETS, raw=True)
    why = f"{target} {token.expected}: {token.why} → {answer.status} {answer.text[:300]}"
    note(f"{target}: {token.expected} → {answer.status}")
    refused = answer.status == 401 or server_refusal(answer)
    if refused:
        assert answer.status != 401 or answer.header("www-authenticate"), why
    user_answer = 404 if target == "execute" else 401   # unknown proposal / not the service
    service_answer = 400 if target == "execute" else 200  # user_id missing / a tick
    if token.expected == "refused":
        assert refused, why
    elif token.expected == "user":
        assert answer.status == user_answer, why
    elif token.expected == "service":
        assert answer.status == service_answer, why
    else:
        assert refused or answer.status in (user_answer, service_answer), why
    if answer.status != 404:  # only the claim (of a valid user token) may write: its audit row
        world.assert_unchanged(before, why)


def test_unknown_kids_do_not_make_us_hammer_the_jwks(world: World) -> None:
    """60 ES256 tokens naming kids nobody published: each is a 401, and the verifiers fetch the
    key set at most once more per function (PyJWKClient's refresh cooldown), not once a token."""
    fetched = len(world.jwks.snapshot())
    for n in range(60):
        token = data_token(world, kid=f"rotated-{n}")
        body = json.dumps({"proposal_id": str(uuid.uuid4())}).encode()
        for fn in (world.execute.fn, world.scan):
            answer = from_httpx(fn.post("/", content=body if fn is world.execute.fn else b"{}",
                                        headers={
                "Authorization": f"Bearer {token}",
                "Idempotency-Key": f"fuzz-{uuid.uuid4()}"}))
            assert answer.status == 401, answer.text
    assert len(world.jwks.snapshot()) - fetched <= 2


def data_token(world: World, *, kid: str) -> str:
    return jwt.encode({"sub": str(world.user), "role": "authenticated", "aud": "authenticated",
                       "exp": int(time.time()) + 600}, world.keys.ec_private, algorithm="ES256",
                      headers={"kid": kid})


# -- scan_scheduler's body -------------------------------------------------------------------------
@given(body=st.one_of(
    encoded(st.fixed_dictionaries({}, optional={"max_jobs": st.one_of(
        st.integers(-5, 2000), st.sampled_from([0, 1, 100, 101, 1_000_000, 1_000_001, 2**31,
                                                2**63, -1, True, False]),
        json_values(floats=True, max_leaves=3))})),
    encoded(st.dictionaries(odd_text(2, long=False), json_values(floats=True), max_size=3)),
    encoded(json_values(floats=True)),
    st.sampled_from([b'{"max_jobs": 1, "max_jobs": 2}', b'{"max_jobs": NaN}',
                     b'{"max_jobs": 1e999}', b'{"max_jobs": 1.0}', b'{"max_jobs": "1"}',
                     b'{"max_jobs": ' + b"9" * 5000 + b"}", b"\xef\xbb\xbf{}", b"null"]),
    odd_text().map(lambda s: s.encode("utf-8", errors="surrogatepass")),
    st.binary(max_size=5000), deep_json_text().map(str.encode)))
@fuzz_settings(120)
def test_scan_bodies(world: World, body: bytes) -> None:
    """Arbitrary tick bodies from the service: 400 (413 over the 1 KiB limit) unless `{}`/empty or
    {"max_jobs": 1..10^6}; with no job due, even a valid tick changes nothing."""
    before = world.snapshot()
    answer = from_httpx(world.scan.post("/", content=body,
                                        headers={"Authorization": f"Bearer {SERVICE_KEY}"}))
    document = check_answer(answer, ALL_SECRETS)
    why = f"body={body[:200]!r} → {answer.status} {answer.text[:300]}"
    note(f"{'valid' if valid_scan_body(body) else 'invalid'} → {answer.status}")
    world.assert_unchanged(before, why)
    if valid_scan_body(body):
        assert answer.status == 200 and document["claimed"] == 0, why
    else:
        assert answer.status == (413 if len(body) > MAX_SCAN_BODY else 400), why


def test_the_fuzzed_world_is_live(world: World) -> None:
    """Control: the oracle's 'valid' really succeeds here — a valid user request executes an
    approved proposal (201, one order at the sandbox), a valid tick answers 200 — so the
    refusals above are refusals of the input, not of a broken stack."""
    target = str(proposal(world.db, world.user, amount="10"))
    orders = len(world.sandbox.orders())
    response = world.execute.fn.post("/", json={"proposal_id": target}, headers={
        "Authorization": f"Bearer {world.token()}", "Idempotency-Key": f"fuzz-{uuid.uuid4()}"})
    assert response.status_code == 201, response.text
    assert len(world.sandbox.orders()) == orders + 1
    tick = world.scan.post("/", json={"max_jobs": 3},
                           headers={"Authorization": f"Bearer {SERVICE_KEY}"})
    assert tick.status_code == 200, tick.text
    assert httpx.get(world.execute.fn.url + "/").status_code == 405
