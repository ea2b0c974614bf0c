"""scan_scheduler — Supabase Cron's tick (SPEC §4): claim due scan jobs, scan, propose, release.

    POST /   Authorization: Bearer <service-role key>   body {"max_jobs": n} (optional, default 10)
    200      {"claimed", "succeeded", "failed", "proposals", "budget_denied",
              "executions_requested", "proposals_replayed", "no_signal", "no_room",
              "oracle_unusable", "lease_lost", "released", "stopped", "worker_id", "elapsed_ms"}
    400 bad body · 401 no / a user's / an invalid bearer · 405 not POST
    503 the database could not be reached to claim, or the tick's jobs could not be released

The request path: authenticate → parse → tick (shared/scanning/tick.py) → respond. Settings are
loaded at import: a misconfigured function never serves, it exits naming the variables (never
their values), e.g. a trade key in its environment (G3). This module imports nothing that can
trade: no shared.exchange.trade, no shared.execution (G3; tests/test_scan_imports.py checks it).
"""

from __future__ import annotations

import json
import re

import flask
import functions_framework

from shared.api import steplog
from shared.api.body import UnreadableBody, read_body
from shared.api.problems import ProblemError, problem_response
from shared.api.steplog import StepLog
from shared.auth import AuthError, Verifier
from shared.scanning.settings import ScanSettings
from shared.scanning.tick import MAX_BODY_BYTES, Scanner, TickReport, max_jobs_from_body
from shared.settings import ConfigurationError

try:
    SETTINGS = ScanSettings.load()
except ConfigurationError as error:  # named variables, never values; no traceback
    raise SystemExit(str(error)) from None
SETTINGS.register_secrets()
steplog.configure()
VERIFIER = Verifier(SETTINGS.auth)
SCANNER = Scanner.from_settings(SETTINGS)
StepLog(function="scan_scheduler").event("start", **SCANNER.market.signing())

_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
Response = tuple[bytes | str, int, dict[str, str]]


@functions_framework.http
def scan_scheduler(request: flask.Request) -> Response:
    supplied = request.headers.get("X-Request-Id", "")
    log = StepLog(request_id=supplied if _REQUEST_ID.fullmatch(supplied) else None,
                  function="scan_scheduler")
    try:
        if request.method != "POST":
            raise ProblemError(405, "method-not-allowed", "a tick is POST /",
                               headers={"Allow": "POST"})
        with log.step("auth") as step:
            principal = VERIFIER.verify(request.headers.get("Authorization"))
            if not principal.is_service:
                raise AuthError("a tick needs the service-role key; user tokens are not accepted")
            step.set(role=principal.role)
        try:
            body = read_body(request.stream, MAX_BODY_BYTES)
        except UnreadableBody as error:
            raise ProblemError(400, "unreadable-body", str(error)) from None
        max_jobs = max_jobs_from_body(body, SETTINGS.scanner.max_jobs_limit)
    except AuthError as exc:
        return problem_response(exc.status, "unauthorized", str(exc),
                                headers={"WWW-Authenticate": exc.www_authenticate})
    except ProblemError as problem:
        return problem.response()

    report = SCANNER.tick(max_jobs, request_id=log.request_id)
    return respond(report)


def respond(report: TickReport) -> Response:
    counts = report.as_json()
    if report.claim_error is not None and report.claimed == 0:
        return problem_response(503, "database-unavailable",
                                "no job could be claimed: the database did not answer",
                                headers={"Retry-After": "60"}, **counts)
    if report.release_error is not None:
        return problem_response(
            503, "release-failed",
            "the tick ran its jobs but could not release them; their leases expire and they run "
            "again (a proposal already made is handed on again, never made twice)", **counts)
    return json.dumps(counts), 200, {"Content-Type": "application/json"}
