"""trading_execute's GET /health: a liveness probe that answers while the database and the exchange
are both unreachable (it touches neither), needs no token, and is only GET/HEAD.

The function is served by the real functions-framework CLI with a DATABASE_URL and a
BITVAVO_REST_URL on ports where nothing listens: POST / then answers 503 (the database is really
unreachable), and /health still answers 200 {"status": "ok"}.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from shared.auth import dev_token
from stack.cluster import free_port
from tests.function_server import FunctionServer, start_function

JWT_SECRET = "health-jwt-secret-" + "h" * 24
SERVICE_KEY = "sb_secret_health-" + "k" * 24


@pytest.fixture(scope="module")
def isolated() -> Iterator[FunctionServer]:
    nowhere = free_port()
    env = {"DATABASE_URL": f"postgresql://authenticator@127.0.0.1:{nowhere}/postgres",
           "RPC_CONNECT_TIMEOUT_SECONDS": "1", "RPC_POOL_TIMEOUT_SECONDS": "2",
           "SUPABASE_JWT_SECRET": JWT_SECRET, "SUPABASE_SERVICE_ROLE_KEY": SERVICE_KEY,
           "BITVAVO_REST_URL": f"http://127.0.0.1:{free_port()}/v2", "TRADING_MODE": "paper"}
    with start_function("trading_execute", env=env) as fn:
        yield fn


def test_health_is_200_ok_while_the_database_and_the_exchange_are_unreachable(
        isolated: FunctionServer) -> None:
    for _ in range(3):
        answer = isolated.request("GET", "/health")
        assert answer.status_code == 200, answer.text
        assert answer.json() == {"status": "ok"}
        assert answer.headers["content-type"] == "application/json"
        assert answer.headers["cache-control"] == "no-store"
    assert isolated.request("GET", "/health/").status_code == 200
    head = isolated.request("HEAD", "/health")
    assert head.status_code == 200 and head.content == b""
    # The same process cannot reach its database: the execute path says so.
    user = uuid.uuid4()
    execute = isolated.post("/", json={"proposal_id": str(uuid.uuid4())}, headers={
        "Authorization": f"Bearer {dev_token(JWT_SECRET, user)}", "Idempotency-Key": "k-1"})
    assert execute.status_code == 503, execute.text
    assert execute.json()["type"] == "/problems/database-unavailable"
    # Still alive afterwards, and no database or exchange detail in the probe's answer.
    assert isolated.request("GET", "/health").json() == {"status": "ok"}


def test_health_accepts_get_and_head_only(isolated: FunctionServer) -> None:
    for method in ("POST", "PUT", "DELETE", "PATCH"):
        answer = isolated.request(method, "/health")
        assert answer.status_code == 405, (method, answer.text)
        assert answer.headers["allow"] == "GET, HEAD"
        assert answer.json()["type"] == "/problems/method-not-allowed"
    unknown = isolated.request("GET", "/healthz")
    assert unknown.status_code == 404 and "GET /health" in unknown.json()["detail"]
