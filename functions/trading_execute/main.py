"""trading_execute: the HTTP function that places approved proposals as orders (SPEC §4).

    POST /            execute a proposal          (shared.execution.execute)
    POST /reconcile   settle open executions      (shared.execution.reconcile, service role only)
    GET  /health      liveness: 200 {"status": "ok"} (no authentication)

Deployed with `--entry-point trading_execute`. Everything is built once per process, here at
import: a bad configuration (e.g. TRADING_MODE=live without BITVAVO_TRADE_API_KEY) stops the
process with a message that names the variables, before it serves anything.
"""

from __future__ import annotations

import flask
import functions_framework

from shared.api.body import UnreadableBody, read_body
from shared.api.problems import problem_response
from shared.execution.execute import execute
from shared.execution.reconcile import reconcile
from shared.execution.replies import Reply
from shared.execution.runtime import Runtime
from shared.execution.submission import MAX_BODY_BYTES, HttpRequest, body_too_large
from shared.settings import ConfigurationError

try:
    RUNTIME = Runtime.start()
except ConfigurationError as error:
    raise SystemExit(str(error)) from None

ROUTES = {"/": execute, "/reconcile": reconcile}
HEALTH_PATH = "/health"


@functions_framework.http
def trading_execute(request: flask.Request) -> Reply:
    path = request.path.rstrip("/") or "/"
    if path == HEALTH_PATH:
        return health(request.method)
    route = ROUTES.get(path)
    if route is None:
        return problem_response(404, "no-such-route", "trading_execute serves POST /, "
                                "POST /reconcile and GET /health")
    if request.method != "POST":
        return problem_response(405, "method-not-allowed", f"{request.path} accepts POST only",
                                headers={"Allow": "POST"})
    if (request.content_length or 0) > MAX_BODY_BYTES:
        return body_too_large().response()
    try:
        body = read_body(request.stream, MAX_BODY_BYTES)
    except UnreadableBody as error:
        return problem_response(400, "unreadable-body", str(error))
    headers: dict[str, str] = {}
    for name, value in request.headers.items():
        key = name.lower()
        headers[key] = f"{headers[key]}, {value}" if key in headers else value
    return route(HttpRequest(request.method, request.path, headers, body), RUNTIME)


def health(method: str) -> Reply:
    """GET /health: the process is up and its worker answers HTTP — a liveness probe for the
    deploy (Cloud Run's startup/liveness probe, a load balancer) and the benchmarks' floor. It
    touches neither the database nor the exchange and needs no token: it says nothing about
    them (their failures show as 503 / 202 on POST /), and a probe can never open a connection,
    spend a rate-limit point or leak a thing. HEAD answers the same without the body."""
    if method not in ("GET", "HEAD"):
        return problem_response(405, "method-not-allowed", f"{HEALTH_PATH} accepts GET only",
                                headers={"Allow": "GET, HEAD"})
    return b'{"status":"ok"}', 200, {"Content-Type": "application/json",
                                     "Cache-Control": "no-store"}
