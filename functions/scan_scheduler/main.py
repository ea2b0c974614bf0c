"""scan_scheduler — Supabase Cron's tick (SPEC §4): drain due scan jobs, scan, propose, release.

    POST /        Authorization: Bearer <service-role key>   body {"max_jobs": n} (optional:
                  without it the tick drains what is due within its time budget)
    GET  /health  liveness: 200 {"status": "ok"} (no authentication)

    200      {"claimed", "succeeded", "failed", "proposals", "budget_denied",
              "executions_requested", "proposals_replayed", "unchanged", "no_signal", "no_room",
              "oracle_unusable", "lease_lost", "not_run", "released", "batches",
              "exchange_weight", "model_calls", "oracle_answers", "rpc_calls", "rate_limited",
              "lag_p50_ms", "lag_p99_ms", "lag_max_ms", "stopped", "worker_id", "elapsed_ms",
              "dispatch"}
    400 bad body · 401 no / a user's / an invalid bearer · 413 body over 1 KiB
    503 the database could not be reached to claim, or the tick's jobs could not be released

The edge (shared.api.edge) routes, authenticates and reads the body; then tick
(shared/scanning/tick.py) → respond. Settings are loaded at import: a misconfigured function never
serves, it exits naming the variables (never their values), e.g. a trade key in its environment
(G3). This module imports nothing that can trade: no shared.exchange.trade, no shared.execution
(G3; tests/test_scan_imports.py checks it).
"""

from __future__ import annotations

import json

import flask
import functions_framework

from shared.api import steplog
from shared.api.edge import Call, Edge, Reply, Route, service_only
from shared.api.problems import problem_response
from shared.api.steplog import StepLog
from shared.auth import Verifier
from shared.scanning.settings import ScanSettings
from shared.scanning.tick import MAX_BODY_BYTES, Scanner, TickReport, max_jobs_from_body
from shared.settings import ConfigurationError

try:
    SETTINGS = ScanSettings.load()
except ConfigurationError as error:  # named variables, never values; no traceback
    raise SystemExit(str(error)) from None
steplog.configure()
SCANNER = Scanner.from_settings(SETTINGS)
StepLog(function="scan_scheduler").event("start", **SCANNER.market.signing())


def tick(call: Call) -> Reply:
    max_jobs = max_jobs_from_body(call.request.body, SETTINGS.scanner.max_jobs_limit)
    return respond(SCANNER.tick(max_jobs, request_id=call.log.request_id))


EDGE = Edge("scan_scheduler", {
    "/": Route(tick, max_body=MAX_BODY_BYTES, admit=service_only(
        401, "a tick needs the service-role key; user tokens are not accepted")),
}, verifier=Verifier(SETTINGS.auth), settings=SETTINGS.http)


@functions_framework.http
def scan_scheduler(request: flask.Request) -> Reply:
    return EDGE.serve(request)


def respond(report: TickReport) -> Reply:
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
    return json.dumps(counts).encode(), 200, {"Content-Type": "application/json"}
