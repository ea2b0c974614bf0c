"""trading_execute end to end in live mode: the real functions-framework server, the real database
(through a counting proxy), the sandbox exchange over real HTTP. G1 and G10 as a client sees them.

One server for the module (its database is the module's; every test has its own users); the tests
that kill or misconfigure a server start their own.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from typing import Any

import httpx
import jwt
import pytest

from shared.auth import dev_token
from tests.execute_harness import (
    JWT_SECRET,
    SECRETS,
    SERVICE_KEY,
    Stack,
    measure_executions,
    proposal,
    served,
    trader,
)
from tests.execute_harness import fingerprint as table_fingerprint
from tests.function_server import start_function
from tests.pg import Database
from tests.sandbox_server import SandboxServer
from tests.test_execution_support import (
    _module_db_fixture,  # noqa: F401 - one database per module
    allow_market,
    backdate,
    claim,
    set_controls,
)

READ_TIMEOUT_S = 1.5  # the function's exchange read timeout in this module
FAILED_AFTER_S = 135  # not found → failed: MAX_CLAIM_AGE 5 + access window 10 + margin 120


@pytest.fixture(scope="module")
def stack(module_db: Database, bitvavo_sandbox_session: SandboxServer) -> Iterator[Stack]:
    set_controls(module_db, live_trading_allowed=True)
    # BALANCE_CACHE_SECONDS=0: tests reset the sandbox's balances, which a balance read for one
    # test's buy would otherwise carry into the next test's.
    with served(module_db, bitvavo_sandbox_session, "live",
                EXCHANGE_TIMEOUT_SECONDS=str(READ_TIMEOUT_S),
                BALANCE_CACHE_SECONDS="0") as served_stack:
        yield served_stack


@pytest.fixture(autouse=True)
def fresh_sandbox(bitvavo_sandbox: SandboxServer) -> SandboxServer:
    """Every test starts with an empty order book, default balances and no fault."""
    return bitvavo_sandbox


def live_trader(stack: Stack, **settings: Any) -> uuid.UUID:
    return trader(stack.db, live=True, **settings)


def problem_type(response: httpx.Response) -> str:
    assert response.headers["content-type"] == "application/problem+json", response.text
    return str(response.json()["type"])


def wait_for(condition: Any, timeout: float = 5.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


# -- the happy path --------------------------------------------------------------------------------
def test_a_proposal_of_10_123456789_eur_is_placed_quantized_and_recorded_filled(
        stack: Stack) -> None:
    user = live_trader(stack)
    proposal_id = proposal(stack.db, user, amount="10.123456789")
    response = stack.execute(proposal_id, user_id=user)
    assert response.status_code == 201, response.text
    execution = response.json()["execution"]
    assert execution["status"] == "filled" and execution["mode"] == "live"
    assert execution["amount_quote"] == "10.123456789"  # money is a string on the wire
    [order] = stack.orders_for(execution["client_order_id"])
    assert order["amountQuote"] == "10.12"  # BTC-EUR's notionalDecimals is 2, rounded down
    assert order["operatorId"] == 424242 and order["status"] == "filled"
    assert execution["exchange_order_id"] == order["orderId"]
    assert Decimal(execution["filled_amount"]) == Decimal(order["filledAmount"])
    [ledger] = stack.history(execution["id"])
    assert ledger["amount_quote"] == Decimal(order["filledAmountQuote"])
    assert stack.proposal_status(proposal_id) == "executed"
    assert response.headers["x-request-id"]


def test_an_order_below_the_minimum_after_quantizing_is_failed_and_never_sent(
        stack: Stack) -> None:
    # The database allows 1 EUR on SOL-EUR; the exchange's minimum is 5 EUR.
    user = trader(stack.db, market="SOL-EUR", live=True)
    allow_market(stack.db, "SOL-EUR", min_order_quote="1")
    proposal_id = proposal(stack.db, user, market="SOL-EUR", amount="4.999")
    response = stack.execute(proposal_id, user_id=user)
    assert response.status_code == 201, response.text
    execution = response.json()["execution"]
    assert execution["status"] == "failed"
    assert execution["error_code"] == "order_below_minimum"
    assert execution["submitted_at"] is None  # certainly not placed
    assert stack.sandbox.orders() == []
    assert stack.proposal_status(proposal_id) == "failed"


# -- G1: 64 concurrent requests, one order ---------------------------------------------------------
def test_64_concurrent_requests_for_one_proposal_place_exactly_one_order(stack: Stack) -> None:
    user = live_trader(stack)
    proposal_id = proposal(stack.db, user)
    keys = ["shared-key-1"] * 32 + ["shared-key-2"] * 16 + [f"own-{i}" for i in range(16)]
    barrier = threading.Barrier(len(keys))
    token = dev_token(JWT_SECRET, user)

    def one(key: str) -> tuple[str, httpx.Response]:
        barrier.wait(timeout=30)
        return key, stack.execute(proposal_id, token=token, key=key)

    with ThreadPoolExecutor(max_workers=len(keys)) as pool:
        answers = list(pool.map(one, keys))

    statuses = Counter(response.status_code for _, response in answers)
    assert not [r for _, r in answers if r.status_code >= 500], statuses
    created = [(key, r) for key, r in answers if r.status_code == 201]
    assert len(created) == 1, statuses
    winner_key, winner = created[0]
    execution = winner.json()["execution"]
    for key, response in answers:
        if response is winner:
            continue
        if key == winner_key:  # the same key again: the stored result, or "still running"
            if response.status_code == 200:
                assert response.headers["idempotent-replayed"] == "true"
                assert response.json()["execution"]["id"] == execution["id"]
            else:
                assert response.status_code == 409, response.text
                assert problem_type(response) == "/problems/in-flight"
                assert response.headers["retry-after"] == "1"
        else:
            assert response.status_code == 409, response.text
            assert problem_type(response) == "/problems/already-executed"
    orders = stack.sandbox.orders()
    assert len(orders) == 1 and orders[0]["clientOrderId"] == execution["client_order_id"]
    assert len(stack.history(execution["id"])) == 1
    print(f"\n64 concurrent requests: {dict(sorted(statuses.items()))}")


# -- G10: outcome unknown → 202 → reconciled, never re-sent ----------------------------------------
UNKNOWN_FAULTS = {
    "drop_after_accept": {"fault": "drop_after_accept"},
    "error_101": {"fault": "error", "http_status": 500, "error_code": 101, "place": True},
    "error_109": {"fault": "error", "http_status": 503, "error_code": 109, "place": True},
    "http_400_code_400": {"fault": "error", "http_status": 400, "error_code": 400, "place": True},
    "read_timeout": {"fault": "latency", "latency_ms": int(READ_TIMEOUT_S * 1000) + 1000},
}


@pytest.mark.parametrize("fault", list(UNKNOWN_FAULTS), ids=list(UNKNOWN_FAULTS))
def test_an_unknown_outcome_answers_202_and_reconcile_settles_it_without_resending(
        stack: Stack, fault: str) -> None:
    user = live_trader(stack)
    proposal_id = proposal(stack.db, user)
    stack.sandbox.set_fault(times=1, **UNKNOWN_FAULTS[fault])
    response = stack.execute(proposal_id, user_id=user, key="unknown-1")
    assert response.status_code == 202, response.text
    execution = response.json()["execution"]
    assert execution["status"] == "unknown"
    coid = execution["client_order_id"]
    # The exchange placed it (the latency fault places it after our read timeout).
    wait_for(lambda: stack.orders_for(coid), what="the order at the sandbox")
    # A retry with the same key replays the unknown result: nothing is sent again.
    replay = stack.execute(proposal_id, user_id=user, key="unknown-1")
    assert replay.status_code == 202 and replay.headers["idempotent-replayed"] == "true"

    counts = stack.reconcile()
    assert counts["settled"] >= 1 and counts["errors"] == 0, counts
    settled = stack.execution(proposal_id)
    assert settled is not None and settled["status"] == "filled", settled
    assert len(stack.history(settled["id"])) == 1
    assert stack.proposal_status(proposal_id) == "executed"
    assert len(stack.orders_for(coid)) == 1
    assert stack.reconcile()["settled"] == 0  # nothing left to do, nothing re-sent
    assert len(stack.orders_for(coid)) == 1 and len(stack.sandbox.orders()) == 1
    after = stack.execute(proposal_id, user_id=user, key="unknown-1")
    assert after.status_code == 200 and after.json()["execution"]["status"] == "filled"


def test_an_unknown_outcome_that_never_reached_the_book_becomes_failed_only_when_old_enough(
        stack: Stack) -> None:
    user = live_trader(stack)
    proposal_id = proposal(stack.db, user)
    stack.sandbox.set_fault(fault="error", http_status=500, error_code=101, place=False)
    response = stack.execute(proposal_id, user_id=user)
    assert response.status_code == 202, response.text
    execution = stack.execution(proposal_id)
    assert execution is not None and execution["status"] == "unknown"
    assert stack.reconcile()["still_open"] >= 1  # not found, but too young to call it
    assert stack.execution(proposal_id)["status"] == "unknown"  # type: ignore[index]
    backdate(stack.db, execution["id"], FAILED_AFTER_S + 1)
    counts = stack.reconcile()
    assert counts["failed"] >= 1, counts
    failed = stack.execution(proposal_id)
    assert failed is not None and failed["status"] == "failed"
    assert failed["error_code"] == "not_found_at_exchange"
    assert stack.proposal_status(proposal_id) == "failed"
    assert stack.sandbox.orders() == []


def test_a_paper_execution_seen_by_a_live_process_is_failed_once_old_enough(stack: Stack) -> None:
    # Left by a paper-mode instance before the switch to live: its order lived in that memory.
    user = live_trader(stack)
    proposal_id = proposal(stack.db, user)
    orphan = claim(stack.db, user, proposal_id, mode="paper")["execution"]
    assert stack.reconcile()["still_open"] >= 1
    backdate(stack.db, orphan["id"], FAILED_AFTER_S + 1)
    assert stack.reconcile()["failed"] >= 1
    assert stack.execution(proposal_id)["status"] == "failed"  # type: ignore[index]
    assert stack.sandbox.orders() == []


# -- the exchange's own answers --------------------------------------------------------------------
UNFILLED = {
    "expired": ({"status": "expired", "fill_fraction": "0"}, "canceled", "failed"),
    "canceledMarketProtection": ({"status": "canceledMarketProtection", "fill_fraction": "0.4"},
                                 "partially_filled", "executed"),
    "partiallyFilled": ({"status": "partiallyFilled", "fill_fraction": "0.5"}, "submitted",
                        "executing"),
}


@pytest.mark.parametrize("variant", list(UNFILLED), ids=list(UNFILLED))
def test_unfilled_market_orders_end_in_the_matching_state(stack: Stack, variant: str) -> None:
    spec, status, proposal_status = UNFILLED[variant]
    user = live_trader(stack)
    proposal_id = proposal(stack.db, user)
    stack.sandbox.set_fault(fault="unfilled", times=1, **spec)
    response = stack.execute(proposal_id, user_id=user)
    assert response.status_code == 201, response.text
    execution = response.json()["execution"]
    assert execution["status"] == status
    assert stack.proposal_status(proposal_id) == proposal_status
    filled = Decimal(execution["filled_amount"])
    assert (filled > 0) == (variant != "expired")
    assert len(stack.history(execution["id"])) == (1 if status == "partially_filled" else 0)
    if variant == "partiallyFilled":
        # Still open: the reconciler leaves a young one alone and cancels the rest of a stuck one.
        assert stack.reconcile()["still_open"] >= 1
        assert stack.execution(proposal_id)["status"] == "submitted"  # type: ignore[index]
        backdate(stack.db, execution["id"], 121)
        counts = stack.reconcile()
        assert counts["settled"] >= 1, counts
        done = stack.execution(proposal_id)
        assert done is not None and done["status"] == "partially_filled"
        assert done["filled_amount"] == filled
        assert len(stack.history(execution["id"])) == 1
        assert stack.proposal_status(proposal_id) == "executed"
    assert len(stack.sandbox.orders()) == 1


@pytest.mark.parametrize("code", [216, 217])
def test_an_exchange_rejection_is_recorded_with_its_code_and_fails_the_proposal(
        stack: Stack, code: int) -> None:
    user = live_trader(stack)
    proposal_id = proposal(stack.db, user)
    if code == 216:
        stack.sandbox.reset(balances={"EUR": "1"})  # the real thing: not enough balance
    else:
        stack.sandbox.set_fault(fault="error", http_status=400, error_code=217)
    response = stack.execute(proposal_id, user_id=user)
    assert response.status_code == 201, response.text
    execution = response.json()["execution"]
    assert execution["status"] == "rejected" and execution["error_code"] == str(code)
    assert stack.proposal_status(proposal_id) == "failed"
    assert stack.sandbox.orders() == []
    assert stack.history(execution["id"]) == []


def test_the_halt_switch_refuses_with_422_and_sends_nothing(stack: Stack) -> None:
    user = live_trader(stack)
    proposal_id = proposal(stack.db, user)
    set_controls(stack.db, trading_halted=True)
    try:
        response = stack.execute(proposal_id, user_id=user)
    finally:
        set_controls(stack.db, trading_halted=False)
    assert response.status_code == 422, response.text
    assert problem_type(response) == "/problems/rejected"
    checks = {c["check"]: c["reason"] for c in response.json()["failed_checks"]}
    assert "trading is halted system-wide" in checks["trading_enabled"]
    assert stack.execution(proposal_id) is None and stack.sandbox.orders() == []


# -- bad input: refused before anything changes ----------------------------------------------------
def _forged_service_token() -> str:
    claims = {"role": "service_role", "iss": "supabase", "exp": int(time.time()) + 600}
    return jwt.encode(claims, "not-the-project-secret-" + "x" * 20, algorithm="HS256")


def _alg_none(user: uuid.UUID) -> str:
    header = {"alg": "none", "typ": "JWT"}
    claims = {"sub": str(user), "role": "authenticated", "aud": "authenticated",
              "exp": int(time.time()) + 600}

    def part(value: dict[str, Any]) -> str:
        import base64
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()

    return f"{part(header)}.{part(claims)}."


def _token(kind: str, user: uuid.UUID) -> str | None:
    now = int(time.time())
    base = {"sub": str(user), "role": "authenticated", "aud": "authenticated", "iat": now,
            "exp": now + 600}
    return {
        "none": None,
        "garbage": "not.a.jwt",
        "expired": jwt.encode({**base, "exp": now - 60}, JWT_SECRET, algorithm="HS256"),
        "wrong_audience": jwt.encode({**base, "aud": "anon"}, JWT_SECRET, algorithm="HS256"),
        "alg_none": _alg_none(user),
        "wrong_key": jwt.encode(base, "another-secret-of-at-least-32-chars!!", algorithm="HS256"),
        "forged_role": _forged_service_token(),
        "role_anon": jwt.encode({**base, "role": "anon"}, JWT_SECRET, algorithm="HS256"),
    }[kind]


TOKEN_CASES = ["none", "garbage", "expired", "wrong_audience", "alg_none", "wrong_key",
               "forged_role", "role_anon"]
BODY_CASES: dict[str, tuple[dict[str, Any], int, str]] = {
    # case: (request overrides, status, problem type)
    "missing_key": ({"headers": {"Idempotency-Key": ""}}, 400, "invalid-idempotency-key"),
    "oversized_key": ({"key": "k" * 256}, 400, "invalid-idempotency-key"),
    "non_printable_key": ({"key": "tab\tinside"}, 400, "invalid-idempotency-key"),
    "non_json": ({"body": b"proposal_id=1"}, 400, "invalid-body"),
    "json_array": ({"body": [1, 2]}, 400, "invalid-body"),
    "wrong_type": ({"body": {"proposal_id": 12345}}, 400, "invalid-body"),
    "unknown_field": ({"body": {"proposal_id": "PROPOSAL", "amount": "1000"}}, 400,
                      "invalid-body"),
    "user_id_from_a_user": ({"body": {"proposal_id": "PROPOSAL", "user_id": "USER"}}, 400,
                            "invalid-body"),
    "non_uuid": ({"body": {"proposal_id": "not-a-uuid"}}, 400, "invalid-body"),
    "missing_proposal_id": ({"body": {}}, 400, "invalid-body"),
    "oversized_body": ({"body": {"proposal_id": "PROPOSAL", "x": "y" * 5000}}, 413,
                       "body-too-large"),
}


def _fill(value: Any, proposal_id: uuid.UUID, user: uuid.UUID) -> Any:
    if isinstance(value, dict):
        return {k: _fill(v, proposal_id, user) for k, v in value.items()}
    if value == "PROPOSAL":
        return str(proposal_id)
    if value == "USER":
        return str(user)
    return value


def test_bad_input_is_refused_and_changes_nothing(stack: Stack) -> None:
    user = live_trader(stack)
    proposal_id = proposal(stack.db, user)
    stranger = live_trader(stack)
    seen: dict[str, int] = {}
    before = table_fingerprint(stack.db)
    for kind in TOKEN_CASES:
        response = stack.execute(proposal_id, token=_token(kind, user))
        seen[f"token:{kind}"] = response.status_code
        assert response.status_code == 401, (kind, response.text)
        assert problem_type(response) == "/problems/unauthorized"
        assert response.headers["www-authenticate"].startswith("Bearer")
    for case, (overrides, status, slug) in BODY_CASES.items():
        response = stack.execute(proposal_id, user_id=user, **_fill(overrides, proposal_id, user))
        seen[f"body:{case}"] = response.status_code
        assert response.status_code == status, (case, response.text)
        assert problem_type(response) == f"/problems/{slug}", case
    assert table_fingerprint(stack.db) == before  # not even an audit row: nothing reached the RPC
    # Another user's proposal: 404, like a missing one; only the refusal is audited.
    response = stack.execute(proposal_id, user_id=stranger)
    seen["another_users_proposal"] = response.status_code
    assert response.status_code == 404 and problem_type(response) == "/problems/not-found"
    after = table_fingerprint(stack.db)
    assert {k: v for k, v in after.items() if k != "execution_audit_log"} == \
        {k: v for k, v in before.items() if k != "execution_audit_log"}
    audit = stack.rows("select event, user_id from public.execution_audit_log "
                       "where proposal_id = %s and event like 'claim.%%'", (proposal_id,))
    assert audit == [{"event": "claim.not_found", "user_id": stranger}]
    assert stack.sandbox.orders() == []
    assert stack.proposal_status(proposal_id) == "approved"
    # And the proposal is still executable by its owner.
    assert stack.execute(proposal_id, user_id=user).status_code == 201
    print(f"\nbad input table: {seen}")


def test_the_service_role_executes_for_a_user_with_the_scanners_key(stack: Stack) -> None:
    user = live_trader(stack, auto_execute=True)
    proposal_id = proposal(stack.db, user)  # confidence 0.9 ≥ min_confidence: approved by 'auto'
    service = {"proposal_id": str(proposal_id), "user_id": str(user)}
    missing_user = stack.execute(proposal_id, token=SERVICE_KEY, key=f"auto:{proposal_id}",
                                 body={"proposal_id": str(proposal_id)})
    assert missing_user.status_code == 400 and "user_id" in missing_user.json()["detail"]
    response = stack.execute(proposal_id, token=SERVICE_KEY, key=f"auto:{proposal_id}",
                             body=service)
    assert response.status_code == 201, response.text
    assert response.json()["execution"]["user_id"] == str(user)
    replay = stack.execute(proposal_id, token=SERVICE_KEY, key=f"auto:{proposal_id}",
                           body=service)
    assert replay.status_code == 200 and replay.headers["idempotent-replayed"] == "true"
    reused = stack.execute(proposal(stack.db, user), token=SERVICE_KEY,
                           key=f"auto:{proposal_id}",
                           body={**service, "proposal_id": str(proposal(stack.db, user))})
    assert reused.status_code == 422
    assert problem_type(reused) == "/problems/idempotency-key-reused"
    assert len(stack.sandbox.orders()) == 1


def test_the_service_role_may_not_execute_a_proposal_its_user_approved(stack: Stack) -> None:
    """SPEC §4: the service executes auto-approved proposals only; one the user approved by hand
    (or one still pending) is 422 proposal_state, nothing claimed, nothing sent — and stays the
    user's to execute."""
    user = live_trader(stack)  # auto_execute off: proposals wait for the user's decision
    approved = proposal(stack.db, user)
    pending = proposal(stack.db, user, approve=False)
    for proposal_id in (approved, pending):
        response = stack.execute(proposal_id, token=SERVICE_KEY, key=f"auto:{proposal_id}",
                                 body={"proposal_id": str(proposal_id), "user_id": str(user)})
        assert response.status_code == 422, response.text
        assert problem_type(response) == "/problems/rejected"
        [failed] = response.json()["failed_checks"]
        assert failed["check"] == "proposal_state"
        assert "not auto-approved" in failed["reason"]
        assert stack.execution(proposal_id) is None
    assert stack.sandbox.orders() == []
    assert stack.proposal_status(approved) == "approved"
    by_user = stack.execute(approved, user_id=user)
    assert by_user.status_code == 201, by_user.text
    assert len(stack.sandbox.orders()) == 1


def test_routes_methods_and_the_reconcile_role(stack: Stack) -> None:
    user = live_trader(stack)
    assert stack.fn.request("GET", "/").status_code == 405
    assert stack.fn.request("PUT", "/reconcile").status_code == 405
    missing = stack.fn.post("/nope", json={})
    assert missing.status_code == 404 and problem_type(missing) == "/problems/no-such-route"
    as_user = stack.fn.post("/reconcile", json={},
                            headers={"Authorization": f"Bearer {dev_token(JWT_SECRET, user)}"})
    assert as_user.status_code == 403 and problem_type(as_user) == "/problems/forbidden"
    assert stack.fn.post("/reconcile", json={}).status_code == 401
    bad_limit = stack.fn.post("/reconcile", json={"limit": 0},
                              headers={"Authorization": f"Bearer {SERVICE_KEY}"})
    assert bad_limit.status_code == 400


# -- the database failing around the order ---------------------------------------------------------
def test_the_database_dropping_the_claims_answer_is_503_and_nothing_is_sent(stack: Stack) -> None:
    user = live_trader(stack)
    proposal_id = proposal(stack.db, user)
    stack.proxy.cut_next_response()  # the claim commits; its answer never arrives
    response = stack.execute(proposal_id, user_id=user, key="cut-claim")
    assert response.status_code == 503, response.text
    assert problem_type(response) == "/problems/database-unavailable"
    assert response.headers["retry-after"] == "1"
    assert stack.sandbox.orders() == []
    # The claim did commit: the same key finds it in flight, and still nothing is sent.
    execution = stack.execution(proposal_id)
    assert execution is not None and execution["status"] == "claimed"
    retry = stack.execute(proposal_id, user_id=user, key="cut-claim")
    assert retry.status_code == 409 and problem_type(retry) == "/problems/in-flight"
    # Once no process can still send it, the reconciler declares it not placed.
    backdate(stack.db, execution["id"], FAILED_AFTER_S + 1)
    assert stack.reconcile()["failed"] >= 1
    final = stack.execute(proposal_id, user_id=user, key="cut-claim")
    assert final.status_code == 200 and final.json()["execution"]["status"] == "failed"
    assert stack.sandbox.orders() == []


def test_the_database_dropping_the_records_answer_is_202_and_the_order_is_not_resent(
        stack: Stack) -> None:
    user = live_trader(stack)
    proposal_id = proposal(stack.db, user)
    stack.sandbox.set_fault(fault="latency", latency_ms=700)
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(stack.execute, proposal_id, user_id=user, key="cut-record")
        stack.logged("claim", proposal_id)  # the claim's answer is through; the order is out
        stack.proxy.cut_next_response()  # the next answer from the database is the record's
        response = pending.result(timeout=30)
    assert response.status_code == 202, response.text
    body = response.json()
    assert body["recorded"] is False and body["exchange_result"]["status"] == "filled"
    coid = body["execution"]["client_order_id"]
    assert len(stack.orders_for(coid)) == 1
    # The record committed before its answer was lost; the reconciler has nothing to re-send.
    stored = stack.execution(proposal_id)
    assert stored is not None and stored["status"] == "filled"
    stack.reconcile()
    assert len(stack.orders_for(coid)) == 1 and len(stack.history(stored["id"])) == 1
    replay = stack.execute(proposal_id, user_id=user, key="cut-record")
    assert replay.status_code == 200 and replay.json()["execution"]["status"] == "filled"


# -- two reconcilers at once -----------------------------------------------------------------------
def test_two_concurrent_reconciles_record_each_execution_once(stack: Stack) -> None:
    count = 6
    users = [live_trader(stack) for _ in range(count)]
    proposals = [proposal(stack.db, user) for user in users]
    stack.sandbox.set_fault(fault="drop_after_accept", times=count)
    for user, proposal_id in zip(users, proposals, strict=True):
        assert stack.execute(proposal_id, user_id=user).status_code == 202
    barrier = threading.Barrier(2)

    def run(_: int) -> dict[str, int]:
        barrier.wait(timeout=30)
        return stack.reconcile()

    with ThreadPoolExecutor(max_workers=2) as pool:
        first, second = pool.map(run, range(2))
    ids = [stack.execution(p)["id"] for p in proposals]  # type: ignore[index]
    mine = stack.rows("select e.id, e.status, count(h.id) as ledger, "
                      "(select count(*) from public.execution_audit_log a where a.execution_id = "
                      "e.id and a.event = 'execution.status_changed' "
                      "and a.detail ->> 'to' = 'filled') as transitions "
                      "from public.trade_executions e left join public.trade_history h "
                      "on h.execution_id = e.id where e.id = any(%s) group by e.id", (ids,))
    assert [row["status"] for row in mine] == ["filled"] * count
    assert [row["ledger"] for row in mine] == [1] * count
    assert [row["transitions"] for row in mine] == [1] * count  # → filled, once
    assert first["settled"] + second["settled"] == count, (first, second)
    assert first["errors"] == second["errors"] == 0
    assert len(stack.sandbox.orders()) == count
    print(f"\ntwo reconcilers: {first} / {second}")


# -- a crash between claim and record --------------------------------------------------------------
def test_a_process_killed_between_claim_and_record_is_settled_after_restart_never_twice(
        module_db: Database, bitvavo_sandbox: SandboxServer) -> None:
    user = trader(module_db, live=True)
    proposal_id = proposal(module_db, user)
    bitvavo_sandbox.set_fault(fault="latency", latency_ms=1500)
    with served(module_db, bitvavo_sandbox, "live") as doomed:
        with ThreadPoolExecutor(max_workers=1) as pool:
            pending = pool.submit(doomed.execute, proposal_id, user_id=user, key="crash")
            doomed.logged("claim", proposal_id)
            time.sleep(0.3)  # the order is at the exchange, which has not answered yet
            doomed.fn.kill()
            with pytest.raises(httpx.TransportError):
                pending.result(timeout=30)
        assert doomed.execution(proposal_id)["status"] == "claimed"  # type: ignore[index]
    execution = wait_for(lambda: bitvavo_sandbox.orders(), what="the order")[0]
    with served(module_db, bitvavo_sandbox, "live") as restarted:
        counts = restarted.reconcile()
        assert counts["settled"] >= 1, counts
        settled = restarted.execution(proposal_id)
        assert settled is not None and settled["status"] == "filled"
        assert str(settled["client_order_id"]) == execution["clientOrderId"]
        assert len(restarted.history(settled["id"])) == 1
        replay = restarted.execute(proposal_id, user_id=user, key="crash")
        assert replay.status_code == 200 and replay.json()["execution"]["status"] == "filled"
    assert len(bitvavo_sandbox.orders()) == 1


# -- configuration ---------------------------------------------------------------------------------
@pytest.mark.parametrize("missing", ["BITVAVO_TRADE_API_KEY", "BITVAVO_OPERATOR_ID"])
def test_live_mode_refuses_to_start_without_the_trade_credentials(
        module_db: Database, bitvavo_sandbox: SandboxServer, missing: str) -> None:
    env = {"DATABASE_URL": module_db.authenticator_url, "SUPABASE_JWT_SECRET": JWT_SECRET,
           "TRADING_MODE": "live", "BITVAVO_REST_URL": bitvavo_sandbox.rest_url,
           "BITVAVO_TRADE_API_KEY": SECRETS["BITVAVO_TRADE_API_KEY"],
           "BITVAVO_TRADE_API_SECRET": SECRETS["BITVAVO_TRADE_API_SECRET"],
           "BITVAVO_OPERATOR_ID": "1"}
    del env[missing]
    with pytest.raises(RuntimeError) as caught, start_function("trading_execute", env=env):
        pass
    message = str(caught.value)
    assert "exited with 1 before serving" in message
    assert f"TRADING_MODE=live needs {missing} (not set)" in message
    for value in (JWT_SECRET, SECRETS["BITVAVO_TRADE_API_SECRET"],
                  SECRETS["BITVAVO_TRADE_API_KEY"]):
        assert value not in message
    assert "Traceback" not in message


# -- numbers ---------------------------------------------------------------------------------------
def test_latency_and_database_round_trips_of_one_live_execution(stack: Stack) -> None:
    user = live_trader(stack)
    latency = measure_executions(stack, user)
    print(f"\nlive (sandbox) execution: {latency}")
    assert latency.round_trips == 2  # claim_trade_execution + record_execution_result
    assert stack.proxy.unparsed_connections == 0  # counted from the PostgreSQL protocol


# -- secrets ---------------------------------------------------------------------------------------
def test_no_secret_in_any_log_line_or_response_of_this_module(stack: Stack) -> None:
    # One more of each kind of request, so this test shows it even when run alone.
    user = live_trader(stack)
    assert stack.execute(proposal(stack.db, user), user_id=user).status_code == 201
    stack.sandbox.set_fault(fault="drop_after_accept")
    assert stack.execute(proposal(stack.db, user), user_id=user).status_code == 202
    stack.execute(proposal(stack.db, user), token=_token("wrong_key", user))
    stack.reconcile()
    logs = stack.fn.logs()
    assert '"step":"exchange"' in logs and '"step":"claim"' in logs
    for name, value in SECRETS.items():
        assert value not in logs, f"{name} leaked into the function's log"
        for answer in stack.answers:
            assert value not in answer, f"{name} leaked into a response"
    assert "Traceback" not in logs
