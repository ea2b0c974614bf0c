"""trading_execute: the HTTP function that places approved proposals as orders (SPEC §4).

    POST /            execute a proposal          (shared.execution.execute; a user or the service)
    POST /reconcile   settle open executions      (shared.execution.reconcile; the service only)
    GET  /health      liveness: 200 {"status": "ok"} (no authentication)

Deployed with `--entry-point trading_execute`. Everything is built once per process, here at
import: a bad configuration (e.g. TRADING_MODE=live without BITVAVO_TRADE_API_KEY) stops the
process with a message that names the variables, before it serves anything. The edge
(shared.api.edge) routes, authenticates, reads the body within its bounds and answers.
"""

from __future__ import annotations

from functools import partial

import flask
import functions_framework

from shared.api.edge import Edge, Reply, Route, service_only
from shared.execution.execute import execute
from shared.execution.reconcile import reconcile
from shared.execution.runtime import Runtime
from shared.settings import ConfigurationError

try:
    RUNTIME = Runtime.start()
except ConfigurationError as error:
    raise SystemExit(str(error)) from None

EDGE = Edge("trading_execute", {
    "/": Route(partial(execute, runtime=RUNTIME)),
    "/reconcile": Route(partial(reconcile, runtime=RUNTIME), admit=service_only(
        403, "only the service role may reconcile executions")),
}, verifier=RUNTIME.verifier, settings=RUNTIME.settings.http, mode=RUNTIME.mode)


@functions_framework.http
def trading_execute(request: flask.Request) -> Reply:
    return EDGE.serve(request)
