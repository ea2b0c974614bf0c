"""trading_execute and the trade key's order budget, end to end: two instances of the real function
(functions-framework on 127.0.0.1, live mode) share one database and the sandbox's trade key.

Requests racing for the last slots — from users (their JWT) and from the scanner (the service
key), sent to both instances at once — get exactly the slots the budget has: 201 and one order
each; every other request is 429 with Retry-After, having claimed and sent nothing; repeated with
the same Idempotency-Key once the budget has room, each is executed once.
"""

from __future__ import annotations

import threading
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from urllib.parse import urlsplit

import httpx
import pytest

from scripts.wireturns import WireTurns
from shared.auth import dev_token
from tests.execute_harness import JWT_SECRET, SERVICE_KEY, function_env, proposal, trader
from tests.function_server import FunctionServer, start_function
from tests.pg import Database
from tests.sandbox_server import SandboxServer
from tests.test_execution_support import set_controls

BUDGET = 5


@pytest.fixture
def instances(db: Database, bitvavo_sandbox: SandboxServer) -> Iterator[list[FunctionServer]]:
    set_controls(db, live_trading_allowed=True)
    port = int(urlsplit(db.url).port or 5432)
    with WireTurns("127.0.0.1", port) as proxy:
        env = function_env(db, proxy, bitvavo_sandbox, "live", ORDER_BUDGET=str(BUDGET))
        with start_function("trading_execute", env=env) as a, \
                start_function("trading_execute", env=env) as b:
            yield [a, b]


def test_requests_racing_for_the_last_slots_get_exactly_the_slots_available(
        db: Database, bitvavo_sandbox: SandboxServer, instances: list[FunctionServer]) -> None:
    auto = {"auto_execute": True, "min_confidence": Decimal("0.5")}
    work: list[tuple[uuid.UUID, dict[str, str], dict[str, str]]] = []  # proposal, headers, body
    for i in range(24):
        user = trader(db, live=True, **(auto if i % 2 else {}))
        pid = proposal(db, user)
        if i % 2:  # the scanner's request for an auto-approved proposal
            work.append((pid, {"Authorization": f"Bearer {SERVICE_KEY}",
                               "Idempotency-Key": f"auto:{pid}"},
                         {"proposal_id": str(pid), "user_id": str(user)}))
        else:  # the user's own request
            work.append((pid, {"Authorization": f"Bearer {dev_token(JWT_SECRET, user)}",
                               "Idempotency-Key": f"user-{uuid.uuid4()}"},
                         {"proposal_id": str(pid)}))
    barrier = threading.Barrier(len(work))

    def send(i: int) -> httpx.Response:
        _, headers, body = work[i]
        barrier.wait(timeout=30)
        return instances[i % 2].post("/", json=body, headers=headers)

    with ThreadPoolExecutor(max_workers=len(work)) as pool:
        answers = list(pool.map(send, range(len(work))))

    assert Counter(a.status_code for a in answers) == {201: BUDGET, 429: len(work) - BUDGET}
    orders = bitvavo_sandbox.orders()
    assert len(orders) == BUDGET
    executed = {a.json()["execution"]["client_order_id"] for a in answers if a.status_code == 201}
    assert executed == {o["clientOrderId"] for o in orders}
    waiting = []
    for item, answer in zip(work, answers, strict=True):
        if answer.status_code != 429:
            continue
        waiting.append(item)
        assert answer.headers["content-type"] == "application/problem+json"
        problem = answer.json()
        assert problem["type"] == "/problems/order-budget-exhausted"
        # The slots were all taken a moment ago: they free a whole window (77 s) later.
        seconds = int(answer.headers["retry-after"])
        assert seconds == problem["retry_after_seconds"] and 60 <= seconds <= 77
        # Nothing claimed, nothing sent: the proposal is as it was.
        assert db.scalar("select status from public.trade_proposals where id = %s",
                         (item[0],)) == "approved"
        assert db.scalar("select count(*) from public.trade_executions where proposal_id = %s",
                         (item[0],)) == 0
    assert bitvavo_sandbox.limits()["refused"] == 0

    # Each time the budget has room again (its slots made older than its window), the waiting
    # requests are repeated with their own keys: BUDGET more are executed, once each.
    while waiting:
        db.query("update private.order_budget_seconds "
                 "set second = second - interval '90 seconds'")
        retried = [(item, instances[len(waiting) % 2].post("/", json=item[2], headers=item[1]))
                   for item in waiting]
        placed = min(BUDGET, len(waiting))
        assert Counter(answer.status_code for _, answer in retried) == Counter(
            {201: placed, 429: len(waiting) - placed})  # missing counts are zero
        waiting = [item for item, answer in retried if answer.status_code == 429]
    orders = bitvavo_sandbox.orders()
    assert len(orders) == len(work)
    assert set(Counter(o["clientOrderId"] for o in orders).values()) == {1}
    assert db.scalar("select count(*) from public.trade_executions where status = 'filled'") == \
        len(work)
    assert bitvavo_sandbox.limits()["refused"] == 0
