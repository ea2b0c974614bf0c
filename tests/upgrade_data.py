"""The data an upgrade must keep and the guarantees it must leave standing (tests/test_upgrade.py;
no tests of its own).

`fill(db)` gives a migrated database what a deployment holds after a while, written the way
production writes it: the service's RPCs as PostgREST calls them, a user's own changes with the
user's JWT claims, the operator's columns and allowlists as the database owner. Every case trades
on a market of its own, so no validator of one case (cooldown, anti-flip, an open proposal per
market and side) touches another:

    users           alice (settings and GPT budgets changed from the defaults), bob (another
                    trader), carol (never touched: the safe defaults)
    operator        system_controls changed, the system halted and resumed, a model price added
                    and one changed, markets allowed and one disabled
    proposals       pending, approved (by the user and automatically), rejected, expired,
                    executing, executed, failed
    executions      claimed, submitted, unknown, filled, partially_filled, canceled with and
                    without a fill, rejected, failed, and a failed one the exchange corrected —
                    with their ledger rows
    exchange        an orphan order open and one acknowledged, a contradicted execution
    scan jobs       two leased to a worker (one with this period's proposal, made from a shared
                    rules answer), one released after a success, one after a failure, one due and
                    free, one not due, one disabled
    oracle answers  a rules answer, a model answer shared by two users (their reservations, its
                    bill recorded and split), a model call that failed
    GPT budget      reserved, settled and released rows
    audit log       what all of the above wrote

`snapshot(db)` reads every row of every table in auth, public and private; `lost(before, after)`
names what an upgrade lost: a table, a column, or a row (compared on the columns it had before, so
a column added with a default changes nothing). Rows may be added (a backfill), never lost or
changed. `check_guarantees(db, world)` runs one representative check per guarantee against the
database as it is now.
"""

from __future__ import annotations

import uuid
from collections import Counter
from dataclasses import dataclass, field
from decimal import ROUND_FLOOR, Decimal
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from console import verify
from tests.pg import Database, connect
from tests.test_execution_support import (
    allow_market,
    allow_user_market,
    api,
    claim,
    new_user,
    record,
    scalar,
    set_settings,
    sql,
)

SCHEMAS = ("auth", "public", "private")
WORKER = "upgrade-worker-before"
DISPATCHER = "upgrade-dispatcher-before"
LATER_WORKER = "upgrade-worker-after"
MODEL = "gpt-4o-mini"  # output USD 0.60 per million tokens (the foundation of the budget figures)
OUTPUT_USD_PER_TOKEN = Decimal("0.60") * Decimal("0.000001")

FILL = {"exchange_order_id": "ord-filled", "filled_amount": "0.0002", "filled_amount_quote": "10",
        "fee_paid": "0.025", "fee_currency": "EUR"}
RESULTS: dict[str, dict[str, Any]] = {
    "claimed": {},
    "submitted": {"status": "submitted", "exchange_order_id": "ord-submitted"},
    "unknown": {"status": "unknown", "error_code": "timeout", "error_message": "read timed out"},
    "filled": {"status": "filled", **FILL},
    "partially_filled": {"status": "partially_filled", "exchange_order_id": "ord-partial",
                         "filled_amount": "0.0001", "filled_amount_quote": "5",
                         "fee_paid": "0.0125", "fee_currency": "EUR"},
    "canceled_after_a_fill": {"status": "canceled", "exchange_order_id": "ord-canceled",
                              "filled_amount": "0.0001", "filled_amount_quote": "5",
                              "fee_paid": "0.0125", "fee_currency": "EUR"},
    "canceled": {"status": "canceled", "exchange_order_id": "ord-canceled-empty"},
    "rejected": {"status": "rejected", "error_code": "216",
                 "error_message": "Insufficient balance"},
    "failed": {"status": "failed", "error_message": "certainly not placed"},
}


@dataclass
class World:
    """What fill() made that the guarantee checks need."""

    alice: uuid.UUID
    bob: uuid.UUID
    carol: uuid.UUID
    executions: dict[str, dict[str, Any]] = field(default_factory=dict)  # case → execution
    keys: dict[str, str] = field(default_factory=dict)                   # case → Idempotency-Key
    leased_jobs: list[uuid.UUID] = field(default_factory=list)           # leased to WORKER
    free_job: uuid.UUID | None = None                                    # due, leased to nobody
    budget: dict[str, Any] = field(default_factory=dict)                 # alice's, as checked
    auto_leased: str | None = None  # an auto-approved proposal leased to DISPATCHER


# -- filling --------------------------------------------------------------------------------------
class Markets:
    """A market of its own per case, allowed globally and for the user."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.count = 0

    def new(self, *users: uuid.UUID) -> str:
        self.count += 1
        market = f"UPG{self.count:03d}-EUR"
        allow_market(self.db, market)
        for user in users:
            allow_user_market(self.db, user, market)
        return market


def as_user(db: Database, user: uuid.UUID, statement: str, params: Any = None) -> int:
    """One request of the user through PostgREST; the number of rows it touched."""
    with db.as_user(user) as cur:
        cur.execute(statement, params)
        return cur.rowcount


def propose(db: Database, user: uuid.UUID, market: str, *, confidence: str = "0.9",
            side: str = "buy", amount: str = "10") -> dict[str, Any]:
    return dict(db.rpc("create_trade_proposal", conn=api(db), p_user_id=user, p_market=market,
                       p_side=side, p_amount_quote=Decimal(amount),
                       p_confidence=Decimal(confidence), p_rationale="upgrade test",
                       p_source="rules"))


def decide(db: Database, user: uuid.UUID, proposal_id: str, decision: str) -> None:
    answer = db.rpc("decide_trade_proposal", conn=api(db), role="authenticated", user_id=user,
                    p_proposal_id=proposal_id, p_decision=decision)
    assert answer["outcome"] == "decided", answer


def sweep(db: Database, *orders: dict[str, Any]) -> dict[str, Any]:
    return dict(db.rpc("record_exchange_orders", conn=api(db), p_orders=Jsonb(list(orders))))


def exchange_order(market: str, client_order_id: str, order_id: str) -> dict[str, Any]:
    result = {"status": "filled", "exchange_order_id": order_id, **{
        k: v for k, v in FILL.items() if k != "exchange_order_id"}}
    return {"market": market, "exchange_order_id": order_id, "client_order_id": client_order_id,
            "side": "buy", "exchange_status": "filled", "result": result}


def fill(db: Database) -> World:
    world = World(alice=new_user(db), bob=new_user(db), carol=new_user(db))
    alice, bob = world.alice, world.bob
    markets = Markets(db)

    # The operator: the global cap, a halt and a resume (audited with their reasons), prices.
    sql(db, "update public.system_controls set max_order_quote = 250")
    for halted, reason in ((True, "upgrade test: halt"), (False, "upgrade test: resume")):
        assert db.rpc("set_trading_halted", conn=api(db), p_halted=halted,
                      p_reason=reason)["trading_halted"] is halted
    sql(db, "insert into public.gpt_model_prices (model, input_usd_per_mtok, "
            "cached_input_usd_per_mtok, output_usd_per_mtok) values ('upgrade-model', 1, 0.5, 2)")
    sql(db, "update public.gpt_model_prices set output_usd_per_mtok = 10.5 where model = 'gpt-4o'")
    allow_market(db, "UPGOFF-EUR", enabled=False)

    # The users' own settings (their JWT), the operator's columns (the owner).
    as_user(db, alice, "update public.trading_settings set trading_enabled = true, "
                       "auto_execute = true, min_confidence = 0.8, cooldown_seconds = 600, "
                       "anti_flip_seconds = 3600, max_trades_per_day = 50, "
                       "max_daily_quote = 5000 where user_id = auth.uid()")
    as_user(db, bob, "update public.trading_settings set trading_enabled = true, "
                     "cooldown_seconds = 0, anti_flip_seconds = 0 where user_id = auth.uid()")
    set_settings(db, alice, gpt_hourly_budget_usd=Decimal("0.01"),
                 gpt_daily_budget_usd=Decimal("0.10"))
    as_user(db, alice, "insert into public.trading_allowlist (user_id, market, enabled) "
                       "values (auth.uid(), 'UPGOFF-EUR', false)")

    # Proposals that never reached a claim.
    for case in ("pending", "approved", "rejected", "expired"):
        proposal = propose(db, alice, markets.new(alice), confidence="0.5")
        assert proposal["status"] == "pending", proposal
        if case in ("approved", "rejected"):
            decide(db, alice, proposal["proposal_id"], {"approved": "approve",
                                                        "rejected": "reject"}[case])
        if case == "expired":
            sql(db, "update public.trade_proposals set expires_at = now() - interval '1 second' "
                    "where id = %s", (proposal["proposal_id"],))
    assert db.rpc("run_maintenance", conn=api(db))["expired_proposals"] == 1
    auto = propose(db, alice, markets.new(alice))
    assert auto["status"] == "approved"  # by auto_execute
    # The auto-execute queue: the scanner's dispatcher leases it (for the longest lease).
    leased = db.rpc_rows("lease_auto_approved_proposals", p_dispatcher=DISPATCHER, p_limit=10,
                         p_lease_seconds=3600)
    assert [str(row["proposal_id"]) for row in leased] == [auto["proposal_id"]], leased
    world.auto_leased = auto["proposal_id"]

    # Executions in every state, each with the ledger row its result writes.
    for case, result in RESULTS.items():
        proposal = propose(db, alice, markets.new(alice))
        key = f"upgrade-{case}"
        # As trading_execute claims: a slot of the trade key's order budget each.
        claimed = db.rpc("claim_trade_execution", conn=api(db), p_user_id=alice,
                         p_proposal_id=proposal["proposal_id"], p_idempotency_key=key,
                         p_mode="paper", p_order_budget=800,
                         p_order_budget_window_seconds=3600)
        assert claimed["outcome"] == "claimed", claimed
        execution = claimed["execution"]
        if result:
            assert record(db, execution["id"], **result)["outcome"] == "updated", case
        world.executions[case], world.keys[case] = execution, key

    # What the reconciler's sweep found: a failed execution the exchange filled (corrected), an
    # orphan order acknowledged, one still open.
    market = markets.new(alice)
    contradicted = claim(db, alice, propose(db, alice, market)["proposal_id"], "upgrade-corrected")
    execution = contradicted["execution"]
    assert record(db, execution["id"], status="failed",
                  error_code="not_found_at_exchange")["outcome"] == "updated"
    orphans = [exchange_order(market, str(uuid.uuid4()), f"ord-orphan-{i}") for i in (1, 2)]
    answer = sweep(db, exchange_order(market, execution["client_order_id"], "ord-corrected"),
                   *orphans)
    assert (answer["corrected"], answer["discrepancies"]) == (1, 3), answer
    world.executions["corrected"] = execution
    first_orphan = scalar(db, "select id from private.exchange_discrepancies "
                              "where exchange_order_id = 'ord-orphan-1'")
    assert db.rpc("acknowledge_exchange_discrepancy", conn=api(db), p_discrepancy_id=first_orphan,
                  p_note="upgrade test: placed by hand")["outcome"] == "acknowledged"

    # Bob trades too (the other user of the RLS check).
    proposal = propose(db, bob, markets.new(bob))
    decide(db, bob, proposal["proposal_id"], "approve")
    bobs = claim(db, bob, proposal["proposal_id"], "upgrade-bob")
    assert record(db, bobs["execution"]["id"], **RESULTS["filled"])["outcome"] == "updated"
    propose(db, bob, markets.new(bob), confidence="0.5")

    fill_scan_jobs(db, world, markets)
    fill_oracle_answers(db, world)
    fill_budget(db, world)
    return world


def fill_scan_jobs(db: Database, world: World, markets: Markets) -> None:
    """Jobs created by their users; the first two due ones run and are released (one succeeded,
    one failed), the next two are leased to WORKER, one stays due, one is not due, one is off."""
    alice, bob = world.alice, world.bob
    jobs = []
    for minutes_ago in (50, 40, 30, 20, 10, -1440, 5):
        market = markets.new(alice)
        as_user(db, alice, "insert into public.scan_jobs (user_id, market, interval_seconds) "
                           "values (auth.uid(), %s, 300)", (market,))
        job = scalar(db, "update public.scan_jobs set next_run_at = now() - make_interval("
                         "mins => %s) where user_id = %s and market = %s returning id",
                     (minutes_ago, alice, market))
        jobs.append(job)
    ran_ok, ran_failed, leased_a, leased_b, free, not_due, off = jobs
    as_user(db, alice, "update public.scan_jobs set enabled = false where id = %s", (off,))
    as_user(db, bob, "insert into public.scan_jobs (user_id, market) values (auth.uid(), %s)",
            (markets.new(bob),))
    sql(db, "update public.scan_jobs set next_run_at = now() + interval '1 hour' "
            "where user_id = %s", (bob,))

    earlier = db.rpc_rows("claim_due_scan_jobs", p_worker_id="upgrade-worker-earlier",
                          p_limit=2, p_lock_seconds=600)
    assert {row["id"] for row in earlier} == {ran_ok, ran_failed}
    for job, succeeded in ((ran_ok, True), (ran_failed, False)):
        answer = db.rpc("release_job_lock", conn=api(db), p_job_id=job,
                        p_worker_id="upgrade-worker-earlier", p_succeeded=succeeded,
                        p_error=None if succeeded else "upgrade test: the oracle failed")
        assert answer["released"] is True, answer
    leased = db.rpc_rows("claim_due_scan_jobs", p_worker_id=WORKER, p_limit=2,
                         p_lock_seconds=3600)
    assert {row["id"] for row in leased} == {leased_a, leased_b}, leased
    # As a tick writes them: the batch's contexts, the market's one rules answer, its proposals.
    contexts = db.rpc("get_scan_contexts", conn=api(db), p_worker_id=WORKER,
                      p_job_ids=Jsonb([str(leased_a)]), p_mode="paper")["contexts"]
    assert contexts[0]["lease_held"] is True, contexts
    market = scalar(db, "select market from public.scan_jobs where id = %s", (leased_a,))
    signal = {"kind": "signal", "side": "buy", "confidence": "0.5", "rationale": "upgrade test"}
    rules = oracle_answer(db, market, "rules", "", answer=signal)
    assert rules["outcome"] == "answered", rules
    answer = db.rpc("create_scan_proposals", conn=api(db), p_worker_id=WORKER, p_proposals=Jsonb([
        {"job_id": str(leased_a), "side": "buy", "amount_quote": "10", "confidence": "0.5",
         "rationale": "upgrade test", "source": "rules", "model": None,
         "reference_price": "50000", "oracle_answer_id": str(rules["answer_id"])}]))
    assert [r["outcome"] for r in answer["results"]] == ["created"], answer
    world.leased_jobs, world.free_job = [leased_a, leased_b], free
    assert not_due not in {row["id"] for row in leased}


def oracle_answer(db: Database, market: str, oracle: str, model: str,
                  answer: dict[str, Any] | None = None, digest: str = "a" * 64) -> dict[str, Any]:
    """claim_oracle_answer as the tick asks it: the rules answer stored at once, or the right to
    make the model's call."""
    return dict(db.rpc("claim_oracle_answer", conn=api(db), p_worker_id=WORKER, p_market=market,
                       p_candle_interval="1h", p_input_digest=digest, p_oracle=oracle,
                       p_model=model, p_prompt_version="upgrade-1", p_schema_version="upgrade-1",
                       p_max_prompt_tokens=0 if oracle == "rules" else 1000,
                       p_max_completion_tokens=0 if oracle == "rules" else 500,
                       p_claim_seconds=60, p_answer=None if answer is None else Jsonb(answer)))


def fill_oracle_answers(db: Database, world: World) -> None:
    """A model answer shared by alice and bob: both reserve for it, the call's bill is recorded
    and split between them (settled rows naming the answer); and a model call that failed."""
    market = "UPGORC-EUR"
    claimed = oracle_answer(db, market, "openai", MODEL)
    assert claimed["outcome"] == "claimed", claimed
    answer_id = claimed["answer_id"]
    reserved = db.rpc("reserve_gpt_budgets", conn=api(db), p_oracle_answer_id=answer_id,
                      p_requests=Jsonb([{"user_id": str(world.alice)},
                                        {"user_id": str(world.bob)}]))
    assert [r["allowed"] for r in reserved["results"]] == [True, True], reserved
    recorded = db.rpc("record_oracle_answer", conn=api(db), p_answer_id=answer_id,
                      p_worker_id=WORKER, p_status="answered",
                      p_answer=Jsonb({"kind": "no_signal", "reason": "upgrade test"}),
                      p_prompt_tokens=900, p_cached_prompt_tokens=100, p_completion_tokens=120,
                      p_request_id="req-upgrade-shared")
    assert recorded["recorded"] is True, recorded
    settled = db.rpc("settle_oracle_answers", conn=api(db), p_answer_ids=Jsonb([str(answer_id)]))
    assert settled["results"][0]["shared_by"] == 2, settled
    failed = oracle_answer(db, market, "openai", MODEL, digest="b" * 64)
    answer = db.rpc("record_oracle_answer", conn=api(db), p_answer_id=failed["answer_id"],
                    p_worker_id=WORKER, p_status="failed", p_answer=None, p_prompt_tokens=None,
                    p_cached_prompt_tokens=None, p_completion_tokens=None,
                    p_failure="upgrade test: the model timed out")
    assert answer["recorded"] is True, answer


def fill_budget(db: Database, world: World) -> None:
    """alice: one reservation outstanding, one settled, one released (no tokens used); bob: one
    settled. Then alice's spend as check_gpt_budget sees it."""
    def reserve(user: uuid.UUID, completion: int) -> str:
        answer = db.rpc("reserve_gpt_budget", conn=api(db), p_user_id=user, p_model=MODEL,
                        p_max_prompt_tokens=1000, p_max_completion_tokens=completion)
        assert answer["allowed"] is True, answer
        return str(answer["reservation_id"])

    def settle(reservation: str, prompt: int, cached: int, completion: int) -> str:
        answer = db.rpc("settle_gpt_usage", conn=api(db), p_reservation_id=reservation,
                        p_prompt_tokens=prompt, p_cached_prompt_tokens=cached,
                        p_completion_tokens=completion, p_request_id=f"req-{reservation[:8]}")
        return str(answer["status"])

    reserve(world.alice, 4000)
    assert settle(reserve(world.alice, 4000), 900, 300, 2500) == "settled"
    assert settle(reserve(world.alice, 4000), 0, 0, 0) == "released"
    assert settle(reserve(world.bob, 2000), 800, 0, 1500) == "settled"
    world.budget = dict(db.rpc("check_gpt_budget", conn=api(db), p_user_id=world.alice))
    assert Decimal(world.budget["spent_hour_usd"]) > 0, world.budget


# -- what an upgrade must keep --------------------------------------------------------------------
@dataclass(frozen=True)
class Table:
    columns: tuple[str, ...]
    rows: Counter[str]  # each row as jsonb text, counted


def snapshot(db: Database, only: dict[str, Table] | None = None) -> dict[str, Table]:
    """Every row of every table in SCHEMAS; with `only`, on the columns those tables had."""
    with db.connect() as conn:
        tables = conn.execute(
            "select format('%%I.%%I', n.nspname, c.relname), array_agg(a.attname::text "
            "order by a.attnum) from pg_class c join pg_namespace n on n.oid = c.relnamespace "
            "join pg_attribute a on a.attrelid = c.oid and a.attnum > 0 and not a.attisdropped "
            "where n.nspname = any(%s) and c.relkind in ('r', 'p') group by 1 order by 1",
            (list(SCHEMAS),)).fetchall()
        found = {}
        for name, columns in tables:
            before = only.get(name) if only is not None else None
            kept = tuple(c for c in columns if before is None or c in before.columns)
            added = [c for c in columns if c not in kept]
            rows = conn.execute(f"select (to_jsonb(t) - %s::text[])::text from {name} t",  # noqa: S608
                                (added,)).fetchall()
            found[name] = Table(kept, Counter(row[0] for row in rows))
    return found


def empty_tables(tables: dict[str, Table]) -> list[str]:
    return sorted(name for name, table in tables.items() if not table.rows)


def lost(before: dict[str, Table], after: dict[str, Table]) -> list[str]:
    """What is in `before` and not in `after`: tables, columns, rows (on the old columns)."""
    problems = []
    for name, table in before.items():
        now = after.get(name)
        if now is None:
            problems.append(f"{name}: the table is gone ({sum(table.rows.values())} rows)")
            continue
        gone = [c for c in table.columns if c not in now.columns]
        if gone:
            problems.append(f"{name}: columns {', '.join(gone)} are gone")
            continue
        missing = table.rows - now.rows
        if missing:
            example = next(iter(missing))[:600]
            problems.append(f"{name}: {sum(missing.values())} of {sum(table.rows.values())} rows "
                            f"lost or changed, e.g. {example}")
    return problems


# -- the guarantees -------------------------------------------------------------------------------
def check_guarantees(db: Database, world: World) -> None:
    """One representative check per guarantee on the database as it is now."""
    check_claims(db, world)
    check_scan_jobs(db, world)
    check_budget(db, world)
    check_rls(db, world)
    check_audit_log(db)
    with db.connect(autocommit=False) as conn:
        conn.execute("set local search_path = ''")
        results = verify.run_checks(conn, only=("rls", "function_privileges", "audit_triggers",
                                                "cron_jobs"))
    assert all(r.status == "pass" for r in results), [r.as_json() for r in results]


def check_claims(db: Database, world: World) -> None:
    """G1 a repeated request replays its execution, a key is one proposal's; G4-G6 the
    validators read the executions from before (cooldown); a valid claim is claimed."""
    alice = world.alice
    filled = world.executions["filled"]
    again = claim(db, alice, filled["proposal_id"], world.keys["filled"])
    assert (again["outcome"], again["execution"]["id"]) == ("replayed", filled["id"]), again
    other = propose(db, alice, f"UPGNEW{uuid.uuid4().hex[:6].upper()}-EUR")
    # (a proposal for a market nobody allowed is made, and refused at the claim: G4)
    refused = claim(db, alice, other["proposal_id"], world.keys["filled"])
    assert (refused["outcome"], refused["reason"]) == ("conflict", "idempotency_key_reused")
    refused = claim(db, alice, other["proposal_id"], f"upgrade-after-{uuid.uuid4()}")
    assert refused["outcome"] == "rejected", refused
    assert "allowlist" in [c["check"] for c in refused["failed_checks"]], refused

    cooled = propose(db, alice, filled["market"])
    refused = claim(db, alice, cooled["proposal_id"], f"upgrade-after-{uuid.uuid4()}")
    assert refused["outcome"] == "rejected", refused
    assert [c["check"] for c in refused["failed_checks"]] == ["cooldown"], refused

    market = f"UPGNEW{uuid.uuid4().hex[:6].upper()}-EUR"
    allow_market(db, market)
    allow_user_market(db, alice, market)
    fresh = claim(db, alice, propose(db, alice, market)["proposal_id"],
                  f"upgrade-after-{uuid.uuid4()}")
    assert fresh["outcome"] == "claimed", fresh

    # The auto-execute queue: a lease from before still keeps the proposal from others.
    others = db.rpc_rows("lease_auto_approved_proposals", p_dispatcher="upgrade-dispatcher-after",
                         p_limit=1000, p_lease_seconds=30)
    assert world.auto_leased not in {str(row["proposal_id"]) for row in others}, others

    # G10: the reconciler still finds every execution left open before the upgrade.
    open_ids = {str(e["id"]) for e in db.rpc_rows("list_unsettled_executions",
                                                  p_older_than_seconds=0, p_limit=500)}
    assert {str(world.executions[c]["id"]) for c in ("claimed", "submitted", "unknown")} <= open_ids


def check_scan_jobs(db: Database, world: World) -> None:
    """G2: a lease from before is still held by its worker alone."""
    got = {row["id"] for row in db.rpc_rows("claim_due_scan_jobs", p_worker_id=LATER_WORKER,
                                            p_limit=100, p_lock_seconds=60)}
    assert world.free_job in got, got
    assert not got & set(world.leased_jobs), got
    job = world.leased_jobs[1]
    answer = db.rpc("release_job_lock", conn=api(db), p_job_id=job, p_worker_id=LATER_WORKER,
                    p_succeeded=True)
    assert answer["released"] is False, answer
    answer = db.rpc("release_job_lock", conn=api(db), p_job_id=job, p_worker_id=WORKER,
                    p_succeeded=True)
    assert answer["released"] is True, answer


def check_budget(db: Database, world: World) -> None:
    """G7: the spend from before counts: what fits in the hour beside it is reserved, what would
    fit alone but not beside it is denied."""
    budget = db.rpc("check_gpt_budget", conn=api(db), p_user_id=world.alice)
    assert budget == world.budget, (budget, world.budget)
    remaining = Decimal(budget["remaining_hour_usd"])
    limit = Decimal(budget["hourly_limit_usd"])
    fits = int((remaining / OUTPUT_USD_PER_TOKEN / 2).to_integral_value(ROUND_FLOOR))
    alone = int((limit / OUTPUT_USD_PER_TOKEN).to_integral_value(ROUND_FLOOR))

    def reserve(completion: int) -> dict[str, Any]:
        return dict(db.rpc("reserve_gpt_budget", conn=api(db), p_user_id=world.alice,
                           p_model=MODEL, p_max_prompt_tokens=0,
                           p_max_completion_tokens=completion))

    denied = reserve(alone)
    assert (denied["allowed"], denied["reason"]) == (False, "hourly_budget_exceeded"), denied
    allowed = reserve(fits)
    assert allowed["allowed"] is True, allowed


def check_rls(db: Database, world: World) -> None:
    """G8: each user sees exactly their own rows, and cannot change another's."""
    for table in ("trade_proposals", "trade_executions", "trade_history", "trading_settings",
                  "trading_allowlist", "scan_jobs", "gpt_usage_log", "execution_audit_log"):
        for user in (world.alice, world.bob):
            own = scalar(db, f"select count(*) from public.{table} "  # noqa: S608
                             "where user_id = %s", (user,))
            with db.as_user(user) as cur:
                cur.execute(f"select count(*), count(*) filter (where user_id = %s) "  # noqa: S608
                            f"from public.{table}", (user,))
                seen = cur.fetchone()
            assert seen == (own, own), (table, user, seen, own)
            assert own > 0, (table, user)
    assert as_user(db, world.alice, "update public.trading_settings set min_confidence = 0.99 "
                                    "where user_id = %s", (world.bob,)) == 0
    try:
        as_user(db, world.alice, "update public.trading_settings set live_trading_enabled = true "
                                 "where user_id = auth.uid()")
    except psycopg.errors.InsufficientPrivilege:
        pass
    else:
        raise AssertionError("a user could switch on their own live trading")


def check_audit_log(db: Database) -> None:
    """G9: the audit log refuses UPDATE, DELETE and TRUNCATE, to the owner too."""
    for statement in ("update public.execution_audit_log set event = 'tampered' "
                      "where id = (select min(id) from public.execution_audit_log)",
                      "delete from public.execution_audit_log "
                      "where id = (select min(id) from public.execution_audit_log)",
                      "truncate public.execution_audit_log"):
        with connect(db.url, autocommit=True) as conn:
            try:
                conn.execute(statement)
            except psycopg.errors.InsufficientPrivilege as exc:
                assert "append-only" in str(exc), exc
            else:
                raise AssertionError(f"the audit log allowed: {statement}")
