"""How a function is served here — by `make run` and `make demo`, the tests and the benchmarks:
functions-framework's own app and its gunicorn server, as in production, with settings that keep
slow clients from stalling a worker.

    python -m shared.api.server --target trading_execute \
        --source functions/trading_execute/main.py --host 127.0.0.1 --port 54331

The settings (`server_settings`) and why:
- worker class: gthread, as functions-framework runs it (one process, a pool of threads: a
  request is almost all waiting on the database and the exchange), with a deadline on reading
  each request's head (`HeadDeadlineWorker`). gunicorn's thread reads the head from a blocking
  socket with no timeout: eight clients that sent half a head held eight threads for good, and
  the function stopped answering, GET /health included. The head now has
  REQUEST_READ_TIMEOUT_SECONDS (shared.api.deadlines), and the body has it again (the edge);
- WORKERS (1) and THREADS (4 per core): functions-framework's own knobs, with its defaults;
- timeout 30 s: the arbiter replaces a worker whose main loop has not checked in for 30 s
  (functions-framework: never). The main loop only polls; a request's thread does not count;
- keepalive 2 s (gunicorn's default, as in production): an idle kept-alive connection waits in
  the poller, not in a thread, and is closed after 2 s. Before a connection is reused, gunicorn
  discards what is left of an unread body — at most 64 KiB within 5 s, or the connection closes;
- limit_request_line 4094 and limit_request_field_size 8190 (gunicorn's defaults; functions-
  framework lifts the request-line limit); limit_request_fields 50 (our callers send fewer than
  15 header fields, Google's front end adds a handful).

In production (Cloud Functions gen2) the buildpack starts `functions-framework` itself: a gunicorn
application that reads no configuration file and no GUNICORN_CMD_ARGS, only WORKERS, THREADS and
CLOUD_RUN_TIMEOUT_SECONDS. There Google's front end reads every request's head before it forwards
it (the head deadline is its job), and what the function enforces itself — the body's bounds and
deadline, nothing read after the answer — holds under either server (README, Deployment).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from typing import Any, ClassVar

import functions_framework
from functions_framework._http import create_server
from gunicorn.workers.gthread import TConn, ThreadWorker

from shared.api.deadlines import DEADLINES
from shared.api.edge import HttpSettings
from shared.settings import ConfigurationError, load_settings


class HeadDeadlineWorker(ThreadWorker):
    """gunicorn's gthread worker, with a deadline on reading each request's head."""

    head_seconds: ClassVar[float] = HttpSettings.model_fields[
        "request_read_timeout_seconds"].default

    def handle(self, conn: TConn) -> Any:
        conn.head_watch = DEADLINES.arm(conn.sock, self.head_seconds)
        try:
            return super().handle(conn)
        finally:
            DEADLINES.disarm(conn.head_watch)

    def handle_request(self, req: Any, conn: TConn) -> Any:
        # The head is in: from here the body has the edge's deadline, the function its own time.
        DEADLINES.disarm(conn.head_watch)
        return super().handle_request(req, conn)


def server_settings(read_timeout_seconds: float) -> dict[str, Any]:
    """gunicorn's settings for one function (see the module docstring)."""
    HeadDeadlineWorker.head_seconds = read_timeout_seconds
    return {
        "worker_class": HeadDeadlineWorker,
        "workers": int(os.environ.get("WORKERS", 1)),
        "threads": int(os.environ.get("THREADS", (os.cpu_count() or 1) * 4)),
        "timeout": 30,
        "keepalive": 2,
        "limit_request_line": 4094,
        "limit_request_fields": 50,
        "limit_request_field_size": 8190,
    }


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m shared.api.server", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", required=True, help="the function's entry point")
    parser.add_argument("--source", required=True, help="its main.py")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    try:
        http = load_settings(HttpSettings)
    except ConfigurationError as error:
        raise SystemExit(str(error)) from None
    app = functions_framework.create_app(args.target, args.source, "http")
    create_server(app, False, **server_settings(http.request_read_timeout_seconds)).run(
        args.host, args.port)


if __name__ == "__main__":
    main()
