"""The auto-execute dispatch (shared.scanning.dispatch) against a queue held by a fake RPC port and
trading_execute answered by pytest-httpx: which requests it sends, when it stops, when it waits.

The queue behaves as lease_auto_approved_proposals does for a single dispatcher: a proposal leaves
it once it has been executed or rejected; after a 429 (nothing claimed) or no answer it stays.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Callable, Mapping
from typing import Any

import httpx
from pydantic import SecretStr
from pytest_httpx import HTTPXMock

from shared.api.steplog import StepLog
from shared.rpc.errors import RpcUnavailable
from shared.scanning.autoexecute import ExecuteClient
from shared.scanning.dispatch import Dispatcher

URL = "http://execute.test/"
KEY = SecretStr("sb_secret_dispatch-test-key-0001")
TIMEOUT = 5.0


class Queue:
    """lease_auto_approved_proposals over an in-memory queue, oldest first."""

    def __init__(self, size: int) -> None:
        self.waiting = [{"proposal_id": str(uuid.uuid4()), "user_id": str(uuid.uuid4())}
                     for _ in range(size)]
        self.lists: list[int] = []
        self.releases = 0
        self.fail = False
        self.lock = threading.Lock()

    def call(self, fn: str, args: Mapping[str, Any] | None = None) -> Any:
        assert fn == "release_auto_execution_leases" and (args or {})["p_dispatcher"]
        self.releases += 1
        return 0

    def rows(self, fn: str, args: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
        assert fn == "lease_auto_approved_proposals"
        assert (args or {})["p_lease_seconds"] == TIMEOUT + 10 and (args or {})["p_dispatcher"]
        if self.fail:
            raise RpcUnavailable("the database did not answer")
        limit = int((args or {})["p_limit"])
        self.lists.append(limit)
        with self.lock:
            return [dict(row) for row in self.waiting[:limit]]

    def leave(self, proposal_id: str) -> None:
        with self.lock:
            self.waiting = [r for r in self.waiting if r["proposal_id"] != proposal_id]

    def close(self) -> None:
        pass


Answer = Callable[[httpx.Request, int], httpx.Response]


def serve(httpx_mock: HTTPXMock, queue: Queue, answer: Answer) -> list[str]:
    """trading_execute: `answer(request, n)` for the n-th request (0-based); a 201 or a 422 takes
    the proposal out of the queue. Returns the proposal ids in the order they were sent."""
    sent: list[str] = []
    lock = threading.Lock()

    def respond(request: httpx.Request) -> httpx.Response:
        proposal_id = json.loads(request.content)["proposal_id"]
        assert request.headers["Idempotency-Key"] == f"auto:{proposal_id}"
        with lock:
            sent.append(proposal_id)
            n = len(sent) - 1
        response = answer(request, n)
        if response.status_code in (201, 422):
            queue.leave(proposal_id)
        return response

    httpx_mock.add_callback(respond, url=URL, method="POST", is_reusable=True,
                            is_optional=True)
    return sent


def created(request: httpx.Request, n: int) -> httpx.Response:
    return httpx.Response(201, json={"execution": {"status": "filled"}})


def budget_of(slots: int, retry_after: int = 30) -> Answer:
    """201 for the first `slots` requests, then 429 with Retry-After."""
    def answer(request: httpx.Request, n: int) -> httpx.Response:
        if n < slots:
            return created(request, n)
        return httpx.Response(429, headers={"Retry-After": str(retry_after)},
                              json={"type": "/problems/order-budget-exhausted"})
    return answer


def dispatcher(queue: Queue, *, concurrency: int = 1, max_wait: float = 0.0, batch: int = 100,
               slept: list[float] | None = None) -> Dispatcher:
    return Dispatcher(queue, ExecuteClient(URL, KEY, TIMEOUT), concurrency=concurrency,
                      max_wait_seconds=max_wait, batch=batch,
                      sleep=(slept.append if slept is not None else lambda s: None))


def plenty() -> float:
    return 100.0


def test_the_queue_is_drained_oldest_first_in_batches(httpx_mock: HTTPXMock) -> None:
    queue = Queue(250)
    order = [r["proposal_id"] for r in queue.waiting]
    sent = serve(httpx_mock, queue, created)
    report = dispatcher(queue, concurrency=1, batch=100).run(StepLog(), plenty)
    assert sent == order
    assert (report.requested, report.executed, report.stopped) == (250, 250, "drained")
    assert queue.lists == [100, 100, 100] and queue.waiting == []
    assert queue.releases == 1


def test_the_first_429_stops_new_requests_and_leaves_the_rest_queued(
        httpx_mock: HTTPXMock) -> None:
    queue = Queue(20)
    sent = serve(httpx_mock, queue, budget_of(7))
    report = dispatcher(queue, concurrency=1).run(StepLog(), plenty)
    assert (report.executed, report.rate_limited, report.requested) == (7, 1, 8)
    assert (report.stopped, report.retry_after_seconds) == ("rate_limited", 30)
    assert len(sent) == 8 and len(queue.waiting) == 13  # the refused one is still queued


def test_with_concurrency_only_requests_already_on_their_way_follow_a_429(
        httpx_mock: HTTPXMock) -> None:
    queue = Queue(40)
    sent = serve(httpx_mock, queue, budget_of(10))
    report = dispatcher(queue, concurrency=4).run(StepLog(), plenty)
    assert report.executed == 10 and report.stopped == "rate_limited"
    assert 1 <= report.rate_limited <= 4 and len(sent) == report.requested <= 14


def test_a_short_retry_after_is_waited_out_and_the_queue_finished(httpx_mock: HTTPXMock) -> None:
    queue = Queue(10)
    calls = {"n": 0}

    def every_fifth_meets_the_budget(request: httpx.Request, n: int) -> httpx.Response:
        calls["n"] += 1
        if calls["n"] % 5 == 0:
            return httpx.Response(429, headers={"Retry-After": "3"}, json={})
        return created(request, n)

    slept: list[float] = []
    sent = serve(httpx_mock, queue, every_fifth_meets_the_budget)
    report = dispatcher(queue, max_wait=5, slept=slept).run(StepLog(), plenty)
    assert report.stopped == "drained" and queue.waiting == []
    assert report.executed == 10 and report.rate_limited == len(slept) == 2
    assert slept == [3.0, 3.0] and len(sent) == 12


def test_a_long_retry_after_or_too_little_time_left_is_not_waited(httpx_mock: HTTPXMock) -> None:
    queue = Queue(5)
    serve(httpx_mock, queue, budget_of(1, retry_after=30))
    slept: list[float] = []
    report = dispatcher(queue, max_wait=20, slept=slept).run(StepLog(), plenty)
    assert (report.stopped, slept) == ("rate_limited", [])
    report = dispatcher(queue, max_wait=60, slept=slept).run(StepLog(), lambda: 30.0)
    assert (report.stopped, slept) == ("rate_limited", [])  # 30 s left: no request after a wait


def test_the_waits_of_a_run_stay_within_max_wait_seconds_in_all(httpx_mock: HTTPXMock) -> None:
    queue = Queue(50)
    calls = {"n": 0}

    def one_slot_at_a_time(request: httpx.Request, n: int) -> httpx.Response:
        calls["n"] += 1
        if calls["n"] % 2 == 0:
            return httpx.Response(429, headers={"Retry-After": "4"}, json={})
        return created(request, n)

    slept: list[float] = []
    clock = {"now": 0.0}

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        clock["now"] += seconds

    serve(httpx_mock, queue, one_slot_at_a_time)
    report = Dispatcher(queue, ExecuteClient(URL, KEY, TIMEOUT), concurrency=1,
                        max_wait_seconds=10, sleep=sleep, clock=lambda: clock["now"]
                        ).run(StepLog(), plenty)
    assert slept == [4.0, 4.0] and report.waited_ms == 8000  # a third wait would make 12 s
    assert (report.executed, report.rate_limited, report.stopped) == (3, 3, "rate_limited")


def test_no_request_starts_without_the_time_for_its_timeout(httpx_mock: HTTPXMock) -> None:
    queue = Queue(5)
    sent = serve(httpx_mock, queue, created)
    left = iter([100.0, 100.0, TIMEOUT - 0.1])
    report = dispatcher(queue).run(StepLog(), lambda: next(left, 0.0))
    assert (report.requested, report.stopped, len(sent)) == (2, "time_budget", 2)
    assert len(queue.waiting) == 3


def test_no_answer_stops_the_dispatch_and_the_proposal_stays_queued(
        httpx_mock: HTTPXMock) -> None:
    queue = Queue(5)

    def down(request: httpx.Request, n: int) -> httpx.Response:
        return created(request, n) if n == 0 else httpx.Response(503, json={})

    serve(httpx_mock, queue, down)
    report = dispatcher(queue).run(StepLog(), plenty)
    assert (report.executed, report.unavailable, report.stopped) == (1, 1, "unavailable")
    assert len(queue.waiting) == 4


def test_a_definite_answer_that_leaves_the_proposal_listed_is_not_repeated_in_a_run(
        httpx_mock: HTTPXMock) -> None:
    queue = Queue(3)

    def conflicted(request: httpx.Request, n: int) -> httpx.Response:
        return httpx.Response(409, json={"type": "/problems/in-flight"})  # stays listed here

    sent = serve(httpx_mock, queue, conflicted)
    report = dispatcher(queue).run(StepLog(), plenty)
    assert (report.conflicts, report.stopped, len(sent)) == (3, "drained", 3)


def test_a_lease_that_fails_is_reported(httpx_mock: HTTPXMock) -> None:
    queue = Queue(3)
    queue.fail = True
    report = dispatcher(queue).run(StepLog(), plenty)
    assert (report.stopped, report.requested) == ("lease_failed", 0)
    assert queue.releases == 1  # whatever happened, the run gives its leases back
