"""The HTTP edge of both functions, tried as an attacker would: slow clients, huge and short
bodies, other encodings, bad tokens, unknown routes. None of it needs a valid token.

Each function is served as `make run` serves it (tests/function_server.py) with a database and an
exchange on ports where nothing listens: what is tested here is decided before either is needed, and
a request that gets past the edge says so with a 503. THREADS=4 (functions-framework's knob, which
the local server honours too) makes "more slow clients than threads" the same on every machine;
REQUEST_READ_TIMEOUT_SECONDS=2 keeps the deadlines short.
"""

from __future__ import annotations

import json
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import httpx
import pytest

from shared.auth import dev_token
from stack.cluster import free_port
from tests.function_server import FunctionServer, start_function
from tests.fuzz_support import Answer, parse_response

JWT_SECRET = "edge-tests-jwt-secret-" + "e" * 24
SERVICE_KEY = "sb_secret_edge-tests-" + "k" * 24
READ_TIMEOUT_SECONDS = 2
MiB = 1024 * 1024
FUNCTIONS = ("trading_execute", "scan_scheduler")


def environment(name: str) -> dict[str, str]:
    nowhere = f"127.0.0.1:{free_port()}"
    env = {"DATABASE_URL": f"postgresql://authenticator@{nowhere}/postgres",
           "RPC_CONNECT_TIMEOUT_SECONDS": "1", "RPC_POOL_TIMEOUT_SECONDS": "2",
           "SUPABASE_JWT_SECRET": JWT_SECRET, "SUPABASE_SERVICE_ROLE_KEY": SERVICE_KEY,
           "BITVAVO_REST_URL": f"http://127.0.0.1:{free_port()}/v2",
           "THREADS": "4", "REQUEST_READ_TIMEOUT_SECONDS": str(READ_TIMEOUT_SECONDS)}
    if name == "scan_scheduler":
        env["CANDLE_LIMIT"] = "60"
    return env


@contextmanager
def served(name: str) -> Iterator[FunctionServer]:
    with start_function(name, env=environment(name)) as fn:
        yield fn


@pytest.fixture(scope="module")
def functions() -> Iterator[dict[str, FunctionServer]]:
    with ExitStack() as stack:
        yield {name: stack.enter_context(served(name)) for name in FUNCTIONS}


def user_headers(**extra: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {dev_token(JWT_SECRET, uuid.uuid4())}",
            "Idempotency-Key": f"edge-{uuid.uuid4()}", **extra}


def service_headers(**extra: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {SERVICE_KEY}", **extra}


def valid_body(name: str) -> dict[str, object]:
    return {"proposal_id": str(uuid.uuid4())} if name == "trading_execute" else {"max_jobs": 1}


# -- raw HTTP ------------------------------------------------------------------------------------
def connect(fn: FunctionServer, timeout: float = 30.0) -> socket.socket:
    host, port = fn.url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=timeout)


def head(name: str, path: str = "/", *, length: int | None = None, auth: str | None = None,
         extra: bytes = b"") -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1", "Content-Type: application/json"]
    if length is not None:
        lines.append(f"Content-Length: {length}")
    if auth is not None:
        lines.append(f"Authorization: Bearer {auth}")
    if name == "trading_execute":
        lines.append(f"Idempotency-Key: edge-{uuid.uuid4()}")
    return ("\r\n".join(lines) + "\r\n").encode() + extra + b"\r\n"


def read_answer(sock: socket.socket) -> Answer:
    """One HTTP answer: the head, then as many body bytes as its Content-Length says (or until
    the server closes)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    head_part, _, body = data.partition(b"\r\n\r\n")
    length = next((int(line.split(b":", 1)[1]) for line in head_part.split(b"\r\n")
                   if line.lower().startswith(b"content-length:")), None)
    while length is not None and len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return parse_response(data if length is None else head_part + b"\r\n\r\n" + body)


def worker_pid(fn: FunctionServer) -> int:
    """The worker that serves requests: the one child of the server's master process."""
    children = [int(pid) for task in Path(f"/proc/{fn.process.pid}/task").iterdir()
                for pid in (task / "children").read_text().split()]
    assert len(children) == 1, children
    return children[0]


def peak_rss_mib(pid: int) -> float:
    """The process's resident-set high-water mark (VmHWM): what it ever held, not what it holds."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


def lines_of(fn: FunctionServer, request_id: str) -> list[dict[str, object]]:
    found = []
    for raw in fn.logs().splitlines():
        if raw.startswith("{") and request_id in raw:
            found.append(json.loads(raw))
    return found


# -- D1: slow clients ----------------------------------------------------------------------------
@pytest.mark.parametrize("name", FUNCTIONS)
@pytest.mark.parametrize("kind", ["half a body", "unfinished head"])
def test_d1_slow_clients_do_not_stop_the_function(name: str, kind: str) -> None:
    """Eight connections (twice the threads) that send a head and half their body, or half a head,
    and then nothing: every one is cut at its read deadline, and GET /health still answers."""
    with served(name) as fn, ExitStack() as stack:
        for _ in range(8):
            sock = stack.enter_context(connect(fn))
            if kind == "half a body":
                sock.sendall(head(name, length=100, auth=SERVICE_KEY) + b"{" + b" " * 49)
            else:
                sock.sendall(b"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bea")
        time.sleep(0.5)  # every slow connection has been taken up by a thread
        health = httpx.get(fn.url + "/health", timeout=30.0)
        assert health.status_code == 200, health.text
        assert health.json() == {"status": "ok"}


# -- D2: bodies bounded in bytes and in time -----------------------------------------------------
def send_huge_body(fn: FunctionServer, request_head: bytes, size: int, *,
                   chunked: bool) -> Answer | None:
    """Send `size` bytes of body as fast as the server takes them, while another thread reads the
    answer; stop when the server closes. The answer, or None if none came."""
    answers: list[Answer] = []
    with connect(fn) as sock:
        reader = threading.Thread(target=lambda: answers.append(read_answer(sock)), daemon=True)
        reader.start()
        block = b" " * MiB
        try:
            sock.sendall(request_head)
            for _ in range(size // MiB):
                sock.sendall(b"%x\r\n%s\r\n" % (len(block), block) if chunked else block)
            if chunked:
                sock.sendall(b"0\r\n\r\n")
        except OSError:
            pass  # the server stopped reading and closed: what it should do
        reader.join(timeout=60)
    return answers[0] if answers else None


@pytest.mark.parametrize("name", FUNCTIONS)
def test_d2_a_300_mib_body_never_enters_the_worker_s_memory(name: str) -> None:
    """300 MiB announced by Content-Length (with a valid token: 413 at once) and 300 MiB chunked
    (without a token: 401): the worker's peak memory does not grow by the body."""
    with served(name) as fn:
        httpx.get(fn.url + "/health", timeout=10)  # the worker has served a request
        pid = worker_pid(fn)
        before = peak_rss_mib(pid)
        announced = send_huge_body(
            fn, head(name, length=300 * MiB, auth=SERVICE_KEY), 300 * MiB, chunked=False)
        chunked = send_huge_body(
            fn, head(name, extra=b"Transfer-Encoding: chunked\r\n"), 300 * MiB, chunked=True)
        after = peak_rss_mib(pid)
        assert after - before < 64, f"the worker's peak memory: {before:.0f} → {after:.0f} MiB"
        assert announced is not None and announced.status == 413, announced
        assert chunked is not None and chunked.status == 401, chunked
        assert httpx.get(fn.url + "/health", timeout=10).status_code == 200


@pytest.mark.parametrize("name", FUNCTIONS)
def test_d2_a_content_length_over_the_limit_is_answered_at_once(
        functions: dict[str, FunctionServer], name: str) -> None:
    """`Content-Length: 5000` and 55 bytes sent, the connection left open: 413 without waiting
    for the rest (before, the function answered 413 and then waited for 4945 bytes forever)."""
    with connect(functions[name], timeout=10.0) as sock:
        sock.sendall(head(name, length=5000, auth=SERVICE_KEY) + b"{" + b" " * 54)
        answer = read_answer(sock)
    assert answer.status == 413, answer
    assert answer.json()["type"] == "/problems/body-too-large"


@pytest.mark.parametrize("name", FUNCTIONS)
def test_d2_a_body_shorter_than_its_content_length_is_refused_after_the_deadline(
        functions: dict[str, FunctionServer], name: str) -> None:
    """`Content-Length: 100` and 55 bytes, then nothing: a 408 problem once the read deadline has
    passed, never a worker thread waiting forever."""
    started = time.monotonic()
    with connect(functions[name], timeout=READ_TIMEOUT_SECONDS + 13.0) as sock:
        sock.sendall(head(name, length=100, auth=SERVICE_KEY) + b"{" + b" " * 54)
        answer = read_answer(sock)
    assert answer.status == 408, answer
    assert answer.json()["type"] == "/problems/request-timeout"
    assert time.monotonic() - started >= READ_TIMEOUT_SECONDS - 0.5  # it did wait for the body


# -- D4: UTF-8 only ------------------------------------------------------------------------------
@pytest.mark.parametrize("name", FUNCTIONS)
@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le", "utf-16-be", "utf-32", "utf-32-le",
                                      "utf-32-be", "utf-8-sig"])
def test_d4_a_body_in_another_encoding_is_refused(functions: dict[str, FunctionServer],
                                                  name: str, encoding: str) -> None:
    """RFC 8259 §8.1: JSON between systems is UTF-8 (without a byte order mark). A body in UTF-16
    or UTF-32 was executed (Python's json guesses the encoding of bytes); a proxy or a WAF in
    front of us would have read something else."""
    body = json.dumps(valid_body(name)).encode(encoding)
    headers = user_headers() if name == "trading_execute" else service_headers()
    answer = functions[name].post("/", content=body, headers=headers)
    assert answer.status_code == 400, answer.text
    assert answer.json()["type"] == "/problems/invalid-body"
    assert "UTF-8" in answer.json()["detail"]


# -- D5, D6: refused tokens ----------------------------------------------------------------------
@pytest.mark.parametrize("name", FUNCTIONS)
@pytest.mark.parametrize(("authorization", "detail"), [
    (None, "missing bearer token"),
    ("Bearer not-a-jwt", "the bearer token is not a valid JWT"),
    ("Basic dXNlcjpwYXNz", "the Authorization header must be 'Bearer <token>'"),
])
def test_d5_a_401_says_what_was_wrong_in_plain_words(
        functions: dict[str, FunctionServer], name: str, authorization: str | None,
        detail: str) -> None:
    """The log redactor took our own words for a credential: "missing Bearer [redacted]"."""
    headers = {"Authorization": authorization} if authorization else {}
    answer = functions[name].post("/", json=valid_body(name), headers=headers)
    assert answer.status_code == 401, answer.text
    assert answer.json()["detail"] == detail
    assert answer.headers["www-authenticate"].startswith("Bearer")


@pytest.mark.parametrize("name", FUNCTIONS)
def test_d6_a_bad_token_is_a_warning_never_an_error(functions: dict[str, FunctionServer],
                                                    name: str) -> None:
    """Anyone can send a bad token: logging it at ERROR let anyone fill the error log."""
    fn = functions[name]
    for token in ("not-a-jwt", dev_token("another-secret-" + "x" * 24, uuid.uuid4()),
                  "eyJhbGciOiJub25lIn0.e30."):
        request_id = f"d6-{uuid.uuid4()}"
        answer = fn.post("/", json=valid_body(name),
                         headers={"Authorization": f"Bearer {token}", "X-Request-Id": request_id})
        assert answer.status_code == 401, answer.text
        deadline = time.monotonic() + 5
        while not lines_of(fn, request_id) and time.monotonic() < deadline:
            time.sleep(0.05)
        lines = lines_of(fn, request_id)
        assert lines, f"nothing logged for {request_id}"
        assert {line["severity"] for line in lines} <= {"INFO", "WARNING"}, lines
        assert any(line["severity"] == "WARNING" for line in lines), lines


# -- D7: the order of checks, the request id, the routes -----------------------------------------
@pytest.mark.parametrize("name", FUNCTIONS)
@pytest.mark.parametrize("body", [b"{", b"[]", b'{"x": 1}', "é".encode("latin-1")])
def test_d7_the_token_is_checked_before_the_body(functions: dict[str, FunctionServer],
                                                 name: str, body: bytes) -> None:
    """No token and a bad body: 401 (the README's promise), not 400."""
    answer = functions[name].post("/", content=body, headers={"Content-Type": "application/json"})
    assert answer.status_code == 401, answer.text
    assert answer.json()["type"] == "/problems/unauthorized"


@pytest.mark.parametrize("name", FUNCTIONS)
@pytest.mark.parametrize(("method", "path", "status"), [
    ("GET", "/health", 200), ("HEAD", "/health", 200), ("GET", "/nowhere", 404),
    ("POST", "/nowhere", 404), ("PUT", "/", 405), ("GET", "/", 405), ("DELETE", "/health", 405),
    ("POST", "/", 401),
])
def test_d7_every_answer_carries_the_request_id(functions: dict[str, FunctionServer], name: str,
                                                method: str, path: str, status: int) -> None:
    """The caller's X-Request-Id comes back on every answer (one rule for both functions: up to
    128 of A-Z a-z 0-9 . _ : -); without one, or with one that breaks the rule, a fresh id does."""
    fn = functions[name]
    given = "edge:" + uuid.uuid4().hex + "." + "r" * 80
    answer = fn.request(method, path, headers={"X-Request-Id": given})
    assert answer.status_code == status, answer.text
    assert answer.headers.get("x-request-id") == given
    for bad in (None, "has space", "x" * 129, "é"):
        headers = {} if bad is None else {"X-Request-Id": bad.encode()}
        fresh = fn.request(method, path, headers=headers)
        assert fresh.status_code == status
        assert fresh.headers.get("x-request-id") not in (None, "", bad)
    if status >= 400:
        document = answer.json()
        assert answer.headers["content-type"] == "application/problem+json"
        assert document["status"] == status and document["type"].startswith("/problems/")
    if status == 405:
        assert answer.headers["allow"] in ("POST", "GET, HEAD")


def test_d7_scan_scheduler_runs_a_tick_on_its_own_route_only(
        functions: dict[str, FunctionServer]) -> None:
    """Any path ran a tick (POST /whatever → 200); now it is a 404 and no tick runs."""
    fn = functions["scan_scheduler"]
    for path in ("/whatever", "/reconcile", "/tick/extra"):
        answer = fn.post(path, json={"max_jobs": 1}, headers=service_headers())
        assert answer.status_code == 404, (path, answer.text)
        assert answer.json()["type"] == "/problems/no-such-route"
    health = fn.request("GET", "/health")
    assert health.status_code == 200 and health.json() == {"status": "ok"}


# -- the drift between the two functions ---------------------------------------------------------
@pytest.mark.parametrize("name", FUNCTIONS)
def test_an_oversized_body_is_413_in_both_functions(functions: dict[str, FunctionServer],
                                                   name: str) -> None:
    limit = 4096 if name == "trading_execute" else 1024
    headers = user_headers() if name == "trading_execute" else service_headers()
    body = b"{" + b" " * limit + b"}"
    announced = functions[name].post("/", content=body, headers=headers)
    streamed = functions[name].post("/", content=iter([body]), headers=headers)  # chunked
    for answer in (announced, streamed):
        assert answer.status_code == 413, answer.text
        assert answer.json()["type"] == "/problems/body-too-large"
        assert str(limit) in answer.json()["detail"]


def test_a_request_line_over_the_server_s_limit_is_refused_by_the_server(
        functions: dict[str, FunctionServer]) -> None:
    """The local server keeps gunicorn's request-line limit (functions-framework lifts it)."""
    for fn in functions.values():
        answer = fn.request("GET", "/" + "a" * 5000)
        assert answer.status_code == 414, answer.text
