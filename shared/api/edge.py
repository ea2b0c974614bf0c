"""The HTTP edge both functions stand behind: what every request goes through before a handler sees
it, and what every answer gets on its way out.

    EDGE = Edge("trading_execute", {"/": Route(partial(execute, runtime=RUNTIME)), …},
                verifier=RUNTIME.verifier, settings=RUNTIME.settings.http)

    @functions_framework.http
    def trading_execute(request: flask.Request) -> Reply:
        return EDGE.serve(request)

In this order, each refusal an RFC 9457 problem document:
1. the request id: the caller's `X-Request-Id` when it keeps the one rule (1..128 of A-Z a-z 0-9
   . _ : -), else a fresh one. Every answer carries it, and every log line of the request;
2. the route: `GET`/`HEAD /health` (no token, touches nothing), or a `POST` route of the table;
   another path is 404, another method 405 with `Allow`;
3. the caller, before a byte of the body is read: no or an invalid bearer is 401 (503 when the
   signing keys could not be fetched: the token may be fine); a route for the service alone
   refuses a user's token (401 or 403, as the route says);
4. the body (shared.api.body): at most the route's limit (413; a Content-Length over it is
   answered at once), within REQUEST_READ_TIMEOUT_SECONDS (408), well framed and as long as its
   Content-Length says (400). What is left of it is never read (BodyStream);
5. the handler gets a `Call` — the request with its body, the principal, the step log — and
   returns (body, status, headers) or raises ProblemError; anything else it raises is our bug:
   500 without detail (the step that raised logged its class, never a traceback).

Log levels say who erred: a refusal of the client's request (4xx) is a WARNING — anyone can send a
bad token or a broken body, and must not be able to fill the error log — while our faults and our
dependencies' (5xx) are ERRORs. Every request but a health probe ends with one `respond` line.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import flask
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.api.body import (
    BodyStream,
    BodyTimeout,
    BodyTooLarge,
    UnreadableBody,
    read_body,
)
from shared.api.problems import Problem, ProblemError
from shared.api.steplog import Step, StepLog
from shared.auth import AuthError, Principal, Verifier

Reply = tuple[bytes, int, dict[str, str]]
REQUEST_ID_HEADER = "X-Request-Id"
HEALTH_PATH = "/health"
MAX_BODY_BYTES = 4096
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
T = TypeVar("T")
_HEALTHY: Reply = (b'{"status":"ok"}', 200, {"Content-Type": "application/json",
                                              "Cache-Control": "no-store"})


class HttpSettings(BaseSettings):
    """The edge's own knob, the same in both functions."""

    model_config = SettingsConfigDict(
        extra="ignore", frozen=True, case_sensitive=False, hide_input_in_errors=True
    )

    # How long a client has to send a request's body (and, under the local server, its head):
    # a legitimate body of a few KiB arrives in milliseconds.
    request_read_timeout_seconds: float = Field(default=10.0, gt=0, le=60)


@dataclass(frozen=True)
class HttpRequest:
    """A request as the function received it; header names in lower case."""

    method: str
    path: str
    headers: Mapping[str, str]
    body: bytes

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())


@dataclass(frozen=True)
class Call:
    """What a route's handler gets: an authenticated request with its body read."""

    request: HttpRequest
    principal: Principal
    log: StepLog


Handler = Callable[[Call], Reply]
Admit = Callable[[Principal], None]


def anyone(principal: Principal) -> None:
    """Every authenticated caller: a user or the service."""


def service_only(status: Literal[401, 403], detail: str) -> Admit:
    """The service alone; a user's token is refused with `status` and `detail`."""
    def admit(principal: Principal) -> None:
        if principal.is_service:
            return
        if status == 401:
            raise AuthError(detail)
        raise ProblemError(403, "forbidden", detail)
    return admit


@dataclass(frozen=True)
class Route:
    """A `POST` route: its handler, who may call it, and how large its body may be."""

    handler: Handler
    admit: Admit = anyone
    max_body: int = MAX_BODY_BYTES


class Edge:
    def __init__(self, function: str, routes: Mapping[str, Route], *, verifier: Verifier,
                 settings: HttpSettings, **context: Any) -> None:
        self.function = function
        self.routes = dict(routes)
        self.verifier = verifier
        self.settings = settings
        self.context = context

    def serve(self, request: flask.Request) -> Reply:
        """The answer to a request as functions-framework hands it over: its body is read here,
        after the route and the caller have been checked, within its bounds."""
        environ = request.environ
        stream = BodyStream(environ["wsgi.input"])
        environ["wsgi.input"] = stream  # what functions-framework's after-request read finds
        environ["wsgi.input_terminated"] = True
        client = environ.get("gunicorn.socket")
        headers: dict[str, str] = {}
        for name, value in request.headers.items():
            key = name.lower()
            headers[key] = f"{headers[key]}, {value}" if key in headers else value

        def body(limit: int) -> bytes:
            return read_body(stream, limit, length=request.content_length,
                             sock=client if isinstance(client, socket.socket) else None,
                             seconds=self.settings.request_read_timeout_seconds)
        try:
            return self.answer(request.method, request.path, headers, body)
        finally:
            stream.close()

    def handle(self, request: HttpRequest) -> Reply:
        """The answer to a request whose body is already in memory (the same checks)."""
        def body(limit: int) -> bytes:
            if len(request.body) > limit:
                raise BodyTooLarge(f"the body must be at most {limit} bytes")
            return request.body
        return self.answer(request.method, request.path, request.headers, body)

    def answer(self, method: str, path: str, headers: Mapping[str, str],
               body: Callable[[int], bytes]) -> Reply:
        given = headers.get("x-request-id", "")
        log = StepLog(request_id=given if _REQUEST_ID.fullmatch(given) else None,
                      function=self.function, route=path, **self.context)
        target = path.rstrip("/") or "/"
        if target == HEALTH_PATH and method in ("GET", "HEAD"):
            return _with_request_id(_HEALTHY, log.request_id)  # a probe writes no log line

        def reply() -> Reply:
            route = self._route(target, method)
            principal = self._caller(log, route, headers)
            call = Call(HttpRequest(method, path, headers, _read(body, route.max_body)),
                        principal, log)
            return route.handler(call)
        return self._respond(log, reply)

    # -- the steps ------------------------------------------------------------------------------
    def _route(self, target: str, method: str) -> Route:
        if target == HEALTH_PATH:
            raise ProblemError(405, "method-not-allowed", f"{HEALTH_PATH} accepts GET only",
                               headers={"Allow": "GET, HEAD"})
        route = self.routes.get(target)
        if route is None:
            served = ", ".join(f"POST {p}" for p in self.routes)
            raise ProblemError(404, "no-such-route",
                               f"{self.function} serves {served} and GET {HEALTH_PATH}")
        if method != "POST":
            raise ProblemError(405, "method-not-allowed", f"{target} accepts POST only",
                               headers={"Allow": "POST"})
        return route

    def _caller(self, log: StepLog, route: Route, headers: Mapping[str, str]) -> Principal:
        with log.step("auth") as step:
            try:
                principal = self.verifier.verify(headers.get("authorization"))
                route.admit(principal)
            except AuthError as error:
                step.set(str(error.status), severity="WARNING" if error.status < 500 else "ERROR",
                         reason=error.reason)
                if error.status == 401:
                    raise ProblemError(401, "unauthorized", error.reason, headers={
                        "WWW-Authenticate": error.www_authenticate}) from None
                raise ProblemError(error.status, "signing-keys-unavailable", error.reason,
                                   headers={"Retry-After": "5"}) from None
            except ProblemError as problem:
                _refusal(step, problem.problem)
                raise
            step.set(caller=principal.role)
        return principal

    def _respond(self, log: StepLog, reply: Callable[[], Reply]) -> Reply:
        """Build the answer (a ProblemError raised on the way is the answer) and log it."""
        fields: dict[str, Any] = {}
        try:
            body, status, headers = reply()
        except ProblemError as error:
            body, status, headers = error.response()
            fields = {"problem": error.problem.type, "reason": error.problem.detail}
        except Exception as error:  # noqa: BLE001 - our bug: no detail leaves, the class is logged
            body, status, headers = internal_error().response()
            fields = {"error": type(error).__name__}
        log.event("respond", str(status), status=status,
                  severity="ERROR" if status >= 500 else "WARNING" if status >= 400 else "INFO",
                  **fields)
        return _with_request_id((body, status, headers), log.request_id)


# -- what handlers share --------------------------------------------------------------------------
def refused(step: Step, call: Callable[..., T], *args: Any) -> T:
    """`call(*args)`; a ProblemError it raises is a refusal of the client's request: logged as the
    step's outcome (its status) at WARNING, not as an error of ours."""
    try:
        return call(*args)
    except ProblemError as problem:
        _refusal(step, problem.problem)
        raise


def internal_error() -> ProblemError:
    return ProblemError(500, "internal-error", "an internal error occurred; nothing about it is "
                        "shown here, the logs have the request id")


def _refusal(step: Step, problem: Problem) -> None:
    step.set(str(problem.status), severity="WARNING", problem=problem.type, reason=problem.detail)


def _read(body: Callable[[int], bytes], limit: int) -> bytes:
    try:
        return body(limit)
    except BodyTooLarge as error:
        raise ProblemError(413, "body-too-large", str(error)) from None
    except BodyTimeout as error:
        raise ProblemError(408, "request-timeout", str(error)) from None
    except UnreadableBody as error:
        raise ProblemError(400, "unreadable-body", str(error)) from None


def _with_request_id(reply: Reply, request_id: str) -> Reply:
    body, status, headers = reply
    return body, status, {**headers, REQUEST_ID_HEADER: request_id}
