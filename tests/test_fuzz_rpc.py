"""Fuzzing every RPC in `public` through the RPC port against the real database (README →
Reliability → Fuzzing).

Every function the migrations put in `public` is called through shared.rpc.direct.DirectRpc as
service_role (what both functions do), and the two that signed-in users may call
(decide_trade_proposal, get_budget_analytics) also as a user, exactly as PostgREST would. Each
parameter gets a strategy for its type — uuids that are known rows, random, or only look like one;
numbers spelled as text (NaN, ±Infinity, 1e131072, 20,000 decimals, 140,000 digits, Arabic-Indic
digits…); integers far outside int4; text with NUL, lone surrogates, RTL marks, emoji, SQL and
format strings, 70,000 characters; booleans spelled every way; wrong JSON shapes for p_result /
p_results — and the domain values the RPC expects, so its business paths run as well. Two runs:
- random (hypothesis): up to three parameters fuzzed per call, the others valid;
- a deterministic sweep: each parameter through its type's edge values (every length limit the
  RPCs state and one more, NaN/±Infinity/131,073 digits/16,384 decimals, int4's edges, uuid
  look-alikes, odd p_result/p_results shapes), the others valid — a missing or late check is hit
  for sure, not by chance.

The property, per call:
- it returns (a business outcome, in jsonb / rows / a scalar), or
- it raises RpcInvalidArgument with one of ALLOWED_DATA_ERRORS — and then NO row changed in any
  table of public or private (fingerprints before/after);
- never any other error: no 23xxx constraint violation, no 42xxx, no XX000, no P0001, no Python
  exception from the port.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import psycopg
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.strategies import SearchStrategy

from shared.rpc.direct import DirectRpc, _call_sql, _param, _translate
from shared.rpc.errors import RpcError, RpcInvalidArgument
from shared.rpc.port import decode_json, encode_args
from tests.fuzz_support import (
    NUMBER_WORDS,
    UUID_SHAPES,
    Fingerprint,
    bool_values,
    changed_tables,
    fuzz_settings,
    int_values,
    json_values,
    note,
    numeric_text,
    odd_text,
    printable_ascii,
    uuid_text,
)
from tests.pg import Database, SessionCluster
from tests.test_execution_support import (
    allow_market,
    allow_user_market,
    api,
    claim,
    new_user,
    propose,
    set_settings,
)

# Class 22 (data exception) codes an RPC may answer invalid input with, and why each is allowed:
ALLOWED_DATA_ERRORS = {
    "22023": "invalid_parameter_value — our RPCs' own argument checks (SPEC §3)",
    "22P02": "invalid_text_representation — the parameter type's input function refused the text "
             "(a uuid, integer, numeric, boolean or JSON that is not one), before the body ran",
    "22003": "numeric_value_out_of_range — an integer outside int4, or a numeric beyond "
             "131,072 digits, refused by the input function",
    "22P05": "untranslatable_character — NUL, refused by the port before sending (text cannot "
             "hold it), or \\u0000 inside JSON text, refused by jsonb's input function",
    "22021": "character_not_in_repertoire — a lone surrogate, refused by the port before sending",
}

WORKER = "fuzz-worker-1"
OTHER_WORKER = "fuzz-worker-2"
MARKETS = ("BTC-EUR", "ETH-EUR")


@dataclass
class World:
    db: Database
    rpc: DirectRpc
    fingerprint: Fingerprint
    users: list[str]
    ids: dict[str, list[str]] = field(default_factory=dict)   # kind → known row ids
    optional: dict[str, set[str]] = field(default_factory=dict)  # fn → parameters with a default
    last: dict[str, tuple[int, str]] | None = None  # the fingerprint after the last call
    params: dict[str, dict[str, Param]] = field(default_factory=dict)  # built once: strategies()

    def __repr__(self) -> str:
        return f"World(db={self.db.name})"

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(repr(self))


class UserRpc:
    """A user's request as PostgREST runs it (role authenticated + the user's claims, one
    transaction), through the port's own argument encoding and error mapping."""

    def __init__(self, db: Database, user_id: str) -> None:
        self.conn = psycopg.connect(db.authenticator_url, autocommit=True, prepare_threshold=None)
        self.claims = json.dumps({"role": "authenticated", "sub": user_id,
                                  "aud": "authenticated"})

    def call(self, fn: str, args: Mapping[str, Any]) -> Any:
        payload = encode_args(fn, args)
        query = _call_sql(fn, tuple(payload), False)
        try:
            with self.conn.transaction():
                self.conn.execute("select set_config('role', 'authenticated', true), "
                                  "set_config('request.jwt.claims', %s, true)", (self.claims,))
                row = self.conn.execute(query, {k: _param(v) for k, v in payload.items()}
                                        ).fetchone()
        except psycopg.Error as exc:
            raise _translate(exc, fn) from exc
        return None if not row or row[0] is None else decode_json(row[0])

    def close(self) -> None:
        self.conn.close()


@pytest.fixture(scope="module")
def world(pg_session: SessionCluster) -> Iterator[World]:
    db = pg_session.new_database()
    rpc = DirectRpc(db.authenticator_url, max_size=2)
    fingerprint = Fingerprint(db)
    try:
        owner, other = new_user(db), new_user(db)
        for market in MARKETS:
            allow_market(db, market)
            allow_user_market(db, owner, market)
        allow_user_market(db, other, MARKETS[0])
        set_settings(db, owner, trading_enabled=True, cooldown_seconds=0, anti_flip_seconds=0,
                     max_trades_per_day=1000, max_daily_quote=Decimal(100000), auto_execute=True)
        jobs = [db.scalar("insert into public.scan_jobs (user_id, market, interval_seconds, "
                          "locked_by, locked_at, lock_expires_at) values (%s, %s, 600, %s, now(), "
                          "now() + interval '1 hour') returning id::text", (owner, m, WORKER))
                for m in MARKETS]
        jobs.append(db.scalar("insert into public.scan_jobs (user_id, market, interval_seconds) "
                              "values (%s, %s, 600) returning id::text", (other, MARKETS[0])))
        proposals = [str(propose(db, owner, market=MARKETS[0])) for _ in range(6)]
        pending = [str(propose(db, owner, market=MARKETS[1], approve=False, confidence="0.1"))
                   for _ in range(3)]
        executions = [str(claim(db, owner, uuid.UUID(p))["execution"]["id"]) for p in proposals[:4]]
        reservations = [str(db.rpc("reserve_gpt_budget", conn=api(db), p_user_id=owner,
                                   p_model="gpt-4o-mini", p_max_prompt_tokens=100,
                                   p_max_completion_tokens=50)["reservation_id"])
                        for _ in range(3)]
        users = [str(owner), str(other)]
        answers = [str(db.rpc("claim_oracle_answer", p_worker_id=WORKER, p_market=MARKETS[0],
                              p_candle_interval="1h", p_input_digest=f"{n:064x}",
                              p_oracle="openai", p_model="gpt-4o-mini", p_prompt_version="p",
                              p_schema_version="s", p_max_prompt_tokens=100,
                              p_max_completion_tokens=50, p_claim_seconds=3600,
                              p_answer=None)["answer_id"]) for n in range(3)]
        optional = {fn: set(names[len(names) - defaults:]) if defaults else set()
                    for fn, names, defaults in db.query(
                        "select p.proname, coalesce(p.proargnames, '{}'), p.pronargdefaults "
                        "from pg_proc p join pg_namespace n on n.oid = p.pronamespace "
                        "where n.nspname = 'public'")}
        built = World(db, rpc, fingerprint, users, {
            "user": users, "proposal": proposals + pending + [str(propose(db, other))],
            "execution": executions, "job": jobs, "reservation": reservations,
            "answer": answers}, optional)
        built.params = strategies(built)
        yield built
    finally:
        fingerprint.close()
        rpc.close()
        pg_session.drop(db)


# -- strategies per parameter ----------------------------------------------------------------------
@dataclass(frozen=True)
class Param:
    """What a parameter gets: `valid` values (the RPC's business paths) and `fuzz` ones for the
    random examples; a valid `default` and the `edges` for the deterministic sweep."""

    valid: SearchStrategy[Any]
    fuzz: SearchStrategy[Any]
    default: Any
    edges: tuple[Any, ...]


# The sweep's values per type: every limit the RPCs state (lengths 100, 200, 255, 500, 2000, 10000
# and one more), every spelling of a number PostgreSQL or Python might read, int4's edges.
LENGTHS = (1, 100, 101, 200, 201, 255, 256, 500, 501, 2000, 2001, 10000, 10001, 70000)
TEXT_EDGES = ("", " ", "\t", " padded ", "nul\x00", "\ud800", "\u202e\u200f", "\U0001f4a9",
              "' or '1'='1", "%s", "\\x00", None, 7, True,
              *("x" * n for n in LENGTHS), *(" " * n for n in (200, 10001)))
NUMERIC_EDGES = (*NUMBER_WORDS, "0." + "0" * 16382 + "1", "0." + "0" * 16383 + "1",
                 "9" * 131072, "9" * 131073, 10**30, -1, 0, True, None)
INT_EDGES = (None, 0, -1, 1, 9, 10, 59, 60, 299, 300, 366, 367, 500, 501, 1000, 1001, 3600, 3601,
             86400, 86401, 10_000_000, 10_000_001, 2**31 - 1, 2**31, -(2**31), -(2**31) - 1,
             "1.5", "", " 7 ", "x", "NaN", True)
UUID_EDGES = (*UUID_SHAPES, None, 0, True, str(uuid.UUID(int=0)), str(uuid.UUID(int=2**128 - 1)))
BOOL_EDGES = (None, "t", "maybe", "", 1, "yes", " true ")


PLAIN_TEXT = st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\x00"),
                     max_size=30)


def text_param(*valid: str, plain: bool = False) -> Param:
    """Domain words (or any ordinary text when `plain`), against odd text and wrong JSON types."""
    good = st.sampled_from(valid) if valid else PLAIN_TEXT
    if plain and valid:
        good = st.one_of(good, PLAIN_TEXT)
    return Param(good, st.one_of(odd_text(), st.none(), st.integers(-10, 10), st.booleans()),
                 valid[0] if valid else "fuzz", TEXT_EDGES)


def numeric_param(*valid: str) -> Param:
    return Param(st.sampled_from(valid), st.one_of(numeric_text(), st.none(),
                                                   st.integers(-10**20, 10**20), st.booleans()),
                 valid[0], NUMERIC_EDGES)


def int_param(*valid: int) -> Param:
    return Param(st.sampled_from(valid), st.one_of(int_values(), st.booleans()), valid[0],
                 INT_EDGES)


def uuid_param(world: World, kind: str) -> Param:
    return Param(st.sampled_from(world.ids[kind]),
                 st.one_of(uuid_text(world.ids[kind]), st.integers(0, 10), st.booleans()),
                 world.ids[kind][0], UUID_EDGES)


def bool_param() -> Param:
    return Param(st.booleans(), bool_values(), True, BOOL_EDGES)


def timestamps() -> SearchStrategy[Any]:
    return st.one_of(
        st.sampled_from(["2026-01-01T00:00:00Z", "infinity", "-infinity", "0044-03-15 BC",
                         "2026-13-45T00:00:00Z", "2026-01-01T00:00:00+99:00", "today",
                         "2026-02-30 12:00", "99999-01-01T00:00:00Z", "epoch", ""]),
        st.datetimes(timezones=st.none()).map(lambda d: d.isoformat() + "Z"),
        odd_text(3, long=False), st.integers(), st.none())


STATUSES = ("submitted", "filled", "partially_filled", "canceled", "rejected", "failed",
            "unknown")


def execution_result_param() -> Param:
    """record_execution_result's p_result: a plausible exchange result, or one with every key
    fuzzed, unknown keys, or another JSON shape altogether."""
    valid = st.fixed_dictionaries({"status": st.sampled_from(STATUSES)}, optional={
        "exchange_order_id": st.uuids().map(str), "filled_amount": st.sampled_from(
            ["0.0002", "0", "0.0001", 2]), "filled_amount_quote": st.sampled_from(["10", "9.5"]),
        "price": st.sampled_from(["50000", 50000, "0"]), "fee_paid": st.sampled_from(
            ["0.025", "0"]), "fee_currency": st.sampled_from(["EUR", "BTC"]),
        "error_code": st.sampled_from(["205", 216, "timeout"]), "error_message": PLAIN_TEXT})
    money = st.one_of(st.integers(-10**45, 10**45), numeric_text(), st.none(),
                      json_values(floats=False, max_leaves=3))
    text = st.one_of(odd_text(), st.integers(), st.none(), json_values(floats=False, max_leaves=3))
    shaped = st.fixed_dictionaries({}, optional={
        "status": st.one_of(st.sampled_from([*STATUSES, "claimed", "FILLED", ""]), text),
        "exchange_order_id": text, "filled_amount": money, "filled_amount_quote": money,
        "price": money, "fee_paid": money, "fee_currency": text, "error_code": text,
        "error_message": text, "submitted_at": timestamps(), "completed_at": timestamps(),
    })
    extra = st.dictionaries(odd_text(2, long=False), json_values(floats=False, max_leaves=3),
                            min_size=1, max_size=2)
    edges = (None, {}, [], "x", 1, True, "{", {"status": None}, {"status": "x" * 100_000},
             {"status": "filled"}, {"status": "filled", "filled_amount": "0.0002"},
             {"status": "filled", "filled_amount": "1", "price": "0"},
             {"status": "filled", "filled_amount": 10**39, "filled_amount_quote": "1"},
             {"status": "filled", "filled_amount": "1",
              "filled_amount_quote": "0." + "0" * 29 + "1"},
             {"status": "partially_filled", "filled_amount": "-1"},
             {"status": "rejected", "filled_amount": "1"}, {"status": "canceled", "price": "1"},
             {"status": "submitted", "exchange_order_id": "x" * 129},
             {"status": "submitted", "submitted_at": "0044-03-15 BC"},
             {"status": "failed", "completed_at": "infinity"},
             {"status": "failed", "error_message": "x" * 100_000, "error_code": 10**70},
             {"status": "unknown", "fee_currency": ["EUR"]}, {"status": "unknown", "": 1})
    return Param(valid, st.one_of(
        shaped, shaped, st.builds(lambda a, b: {**a, **b}, valid, extra),
        json_values(floats=False), odd_text(),
        st.sampled_from(['{"status": "filled"', "[]", "null", '"filled"', "{}", "1e400"])),
        {"status": "submitted"}, edges)


def release_results_param(world: World) -> Param:
    """release_job_locks's p_results: distinct known jobs with outcomes, or entries with every
    member fuzzed, wrong shapes, one entry past the 1,000 limit, duplicates."""
    jobs = world.ids["job"]
    valid = st.lists(st.fixed_dictionaries(
        {"job_id": st.sampled_from(jobs), "succeeded": st.booleans()},
        optional={"error": st.one_of(st.none(), PLAIN_TEXT)}),
        max_size=len(jobs), unique_by=lambda entry: entry["job_id"])
    entry = st.fixed_dictionaries({}, optional={
        "job_id": uuid_param(world, "job").fuzz, "succeeded": bool_values(),
        "error": st.one_of(odd_text(), st.none(), st.integers())})
    extra = st.dictionaries(odd_text(2, long=False), json_values(floats=False, max_leaves=2),
                            max_size=2)
    entries = st.lists(st.one_of(entry, entry, st.builds(lambda a, b: {**a, **b}, entry, extra),
                                 json_values(floats=False, max_leaves=3)), max_size=5)
    many = [{"job_id": str(uuid.uuid4()), "succeeded": False} for _ in range(1001)]
    edges = (None, [], {}, "[]", "[", [None], [{}], [[]], many[:1000], many,
             [{"job_id": jobs[2], "succeeded": True}] * 2,
             [{"job_id": jobs[2], "succeeded": "true"}], [{"job_id": jobs[2], "succeeded": None}],
             [{"job_id": jobs[2].upper(), "succeeded": True}],
             [{"job_id": jobs[2], "succeeded": False, "error": "x" * 100_000}],
             [{"job_id": jobs[2], "succeeded": False, "error": 5}],
             [{"job_id": jobs[2], "succeeded": True, "extra": 1}],
             [{"job_id": "g" * 36, "succeeded": True}])
    return Param(valid, st.one_of(
        entries, entries, json_values(floats=False), odd_text(),
        st.just([{"job_id": jobs[0], "succeeded": True}] * 2),
        st.integers(999, 1001).map(
            lambda n: [{"job_id": str(uuid.uuid4()), "succeeded": False} for _ in range(n)]),
        st.sampled_from(["[", "[{}]", '[{"job_id": null, "succeeded": true}]'])),
        [{"job_id": jobs[2], "succeeded": True}], edges)


def id_list_param(world: World, kind: str) -> Param:
    """A JSON array of known ids, or of anything else, or not an array; past 1,000 entries."""
    known = world.ids[kind]
    many = [str(uuid.uuid4()) for _ in range(1001)]
    return Param(st.lists(st.sampled_from(known), max_size=len(known), unique=True),
                 st.one_of(st.lists(st.one_of(uuid_text(known), st.integers(), st.none(),
                                              json_values(floats=False, max_leaves=2)),
                                    max_size=4),
                           json_values(floats=False), odd_text()),
                 known[:1],
                 (None, [], {}, "[]", "[", [None], [""], ["x"], [known[0].upper()],
                  [known[0], known[0]], many[:1000], many, [1], [[known[0]]]))


def json_object_param() -> Param:
    """Any JSON document where an object is expected."""
    return Param(st.just({"kind": "no_signal", "reason": "fuzz"}),
                 st.one_of(json_values(floats=False), odd_text()),
                 {"kind": "no_signal", "reason": "fuzz"},
                 (None, {}, [], "x", 1, "{", {"kind": "x" * 100_000}))


def scan_proposals_param(world: World) -> Param:
    """create_scan_proposals' p_proposals: plausible entries for known jobs, or entries with
    every member fuzzed, other shapes, one past the 1,000 limit, a job named twice."""
    jobs = world.ids["job"]
    valid_entry = st.fixed_dictionaries(
        {"job_id": st.sampled_from(jobs), "side": st.sampled_from(["buy", "sell"]),
         "amount_quote": st.sampled_from(["10", 7, "5"]),
         "confidence": st.sampled_from(["0.9", 1, "0.5"]),
         "source": st.sampled_from(["rules", "openai", "manual"])},
        optional={"rationale": PLAIN_TEXT, "model": st.sampled_from(["gpt-4o-mini", None]),
                  "reference_price": st.sampled_from(["50000", None]),
                  "oracle_answer_id": st.sampled_from([*world.ids["answer"], None])})
    valid = st.lists(valid_entry, max_size=len(jobs), unique_by=lambda e: e["job_id"])
    money = st.one_of(numeric_text(), st.integers(-10**45, 10**45), st.none(),
                      json_values(floats=False, max_leaves=2))
    text = st.one_of(odd_text(), st.integers(), st.none())
    entry = st.fixed_dictionaries({}, optional={
        "job_id": uuid_param(world, "job").fuzz, "side": text, "amount_quote": money,
        "confidence": money, "rationale": text, "source": text, "model": text,
        "reference_price": money, "oracle_answer_id": uuid_text(world.ids["answer"])})
    good = {"job_id": jobs[0], "side": "buy", "amount_quote": "10", "confidence": "0.9",
            "source": "rules"}
    edges = (None, [], {}, "[]", [None], [{}], [good, good], [{**good, "extra": 1}],
             [{**good, "amount_quote": "NaN"}], [{**good, "amount_quote": "1e400000"}],
             [{**good, "amount_quote": "0." + "0" * 16383 + "1"}],
             [{**good, "confidence": "-0"}], [{**good, "rationale": "x" * 10001}],
             [{**good, "rationale": "nul\u0000"}], [{**good, "model": "x" * 101}],
             [{**good, "oracle_answer_id": str(uuid.uuid4())}],
             [{**good, "job_id": str(uuid.uuid4())} for _ in range(1001)])
    return Param(valid, st.one_of(st.lists(st.one_of(entry, valid_entry), max_size=4),
                                  json_values(floats=False), odd_text()),
                 [good], edges)


def gpt_requests_param(world: World) -> Param:
    """reserve_gpt_budgets' p_requests: known users (with a job or none), or anything else."""
    users, jobs = world.ids["user"], world.ids["job"]
    valid = st.lists(st.fixed_dictionaries({"user_id": st.sampled_from(users)},
                                           optional={"scan_job_id": st.sampled_from(
                                               [*jobs, None])}),
                     max_size=len(users), unique_by=lambda e: e["user_id"])
    entry = st.fixed_dictionaries({}, optional={
        "user_id": uuid_text(users), "scan_job_id": uuid_text(jobs),
        "extra": json_values(floats=False, max_leaves=2)})
    edges = (None, [], {}, [None], [{}], [{"user_id": users[0]}] * 2,
             [{"user_id": users[0], "scan_job_id": jobs[-1]}],  # another user's job
             [{"user_id": str(uuid.uuid4())}],
             [{"user_id": str(uuid.uuid4())} for _ in range(1001)])
    return Param(valid, st.one_of(st.lists(entry, max_size=3), json_values(floats=False),
                                  odd_text()),
                 [{"user_id": users[0]}], edges)


def exchange_orders_param() -> Param:
    """record_exchange_orders's p_orders: orders as the sweep lists them (unknown clientOrderIds:
    orphans), or entries with every member fuzzed, wrong shapes, one past the 10,000 limit."""
    results = st.sampled_from([
        {"status": "filled", "filled_amount": "0.0002", "filled_amount_quote": "10",
         "fee_paid": "0.025", "fee_currency": "EUR"},
        {"status": "partially_filled", "filled_amount": "0.0001", "price": "50000"},
        {"status": "canceled", "filled_amount": "0", "error_code": "expired"},
        {"status": "rejected"}, {"status": "submitted"},
        {"status": "unknown", "error_code": "contradictory_answer"}])
    order = st.fixed_dictionaries({
        "market": st.sampled_from(MARKETS), "exchange_order_id": st.uuids().map(str),
        "client_order_id": st.one_of(st.none(), st.uuids().map(str)),
        "side": st.sampled_from(["buy", "sell"]),
        "exchange_status": st.sampled_from([None, "filled", "expired", "new"]),
        "result": results})
    text = st.one_of(odd_text(), st.integers(), st.none(), json_values(floats=False, max_leaves=3))
    fuzzed = st.fixed_dictionaries({}, optional={
        "market": text, "exchange_order_id": text, "client_order_id": text, "side": text,
        "exchange_status": text,
        "result": st.one_of(execution_result_param().fuzz, json_values(floats=False))})
    extra = st.dictionaries(odd_text(2, long=False), json_values(floats=False, max_leaves=2),
                            min_size=1, max_size=2)
    entries = st.lists(st.one_of(fuzzed, fuzzed, st.builds(lambda a, b: {**a, **b}, order, extra),
                                 json_values(floats=False, max_leaves=3)), max_size=4)
    one = {"market": "BTC-EUR", "exchange_order_id": "edge-1", "client_order_id": None,
           "side": "buy", "exchange_status": "expired",
           "result": {"status": "canceled", "filled_amount": "0"}}
    edges = (None, [], {}, "[]", "[", [None], [{}], [[]], [one] * 10_001,
             [{**one, "market": "btc-eur"}], [{**one, "exchange_order_id": "x" * 129}],
             [{**one, "client_order_id": "x" * 65}], [{**one, "side": "long"}],
             [{**one, "result": {"status": "filled", "filled_amount": "1"}}],
             [{**one, "result": {"status": "failed"}}], [{**one, "result": []}],
             [{**one, "extra": 1}], [{**one, "result": {**one["result"], "extra": 1}}])
    return Param(st.lists(order, max_size=4), st.one_of(
        entries, entries, json_values(floats=False), odd_text(),
        st.sampled_from(["[", "[{}]", '[{"market": null}]'])), [one], edges)


def strategies(world: World) -> dict[str, dict[str, Param]]:
    """Every RPC in public → its parameters (the optional ones may also be left out)."""
    user, job, proposal = (uuid_param(world, k) for k in ("user", "job", "proposal"))
    execution, reservation = uuid_param(world, "execution"), uuid_param(world, "reservation")
    worker = text_param(WORKER, OTHER_WORKER)
    side, source = text_param("buy", "sell"), text_param("rules", "openai", "manual")
    market, mode = text_param(*MARKETS), text_param("paper", "live")
    model = text_param("gpt-4o-mini", "gpt-4o", "unknown-model")
    amount, confidence = numeric_param("10", "5", "7.5"), numeric_param("0.9", "0.5", "1")
    rationale = text_param(plain=True)
    key_edges = ("", "a" * 255, "a" * 256, " a", "a ", "caf\u00e9", "tab\t", "new\nline", "\x7f",
                 "~" * 255, "!", *TEXT_EDGES)
    key = Param(st.builds(lambda: f"fuzz-{uuid.uuid4()}"), st.one_of(
        printable_ascii(1, 40), st.sampled_from(key_edges), text_param().fuzz),
        "fuzz-key-default", key_edges)
    return {
        "check_gpt_budget": {"p_user_id": user},
        "claim_oracle_answer": {
            "p_worker_id": worker, "p_market": market, "p_candle_interval": text_param("1h", "1m"),
            "p_input_digest": text_param("a" * 64, "0" * 64),
            "p_oracle": text_param("openai", "rules"), "p_model": model,
            "p_prompt_version": text_param("p1"), "p_schema_version": text_param("s1"),
            "p_max_prompt_tokens": int_param(100, 0, 10_000_000),
            "p_max_completion_tokens": int_param(50, 0, 10_000_000),
            "p_claim_seconds": int_param(60, 1, 3600), "p_answer": json_object_param()},
        "claim_due_scan_jobs": {"p_worker_id": worker, "p_limit": int_param(1, 10, 1000),
                                "p_lock_seconds": int_param(10, 300, 3600)},
        "claim_trade_execution": {"p_user_id": user, "p_proposal_id": proposal,
                                  "p_idempotency_key": key, "p_mode": mode,
                                  # default false: the sweep's claims of these user-approved
                                  # proposals may succeed
                                  "p_require_auto_approval": Param(st.booleans(), bool_values(),
                                                                   False, BOOL_EDGES),
                                  "p_order_budget": int_param(800, 1, 1000),
                                  "p_order_budget_window_seconds": int_param(77, 1, 86400)},
        "cleanup_expired_locks": {},
        "clear_todays_budget": {"p_user_id": user},
        "create_scan_proposal": {
            "p_job_id": job, "p_worker_id": worker, "p_side": side, "p_amount_quote": amount,
            "p_confidence": confidence, "p_rationale": rationale, "p_source": source,
            "p_model": model, "p_reference_price": numeric_param("50000", "0.0001"),
            "p_ttl_seconds": int_param(1, 900, 86400)},
        "create_scan_proposals": {"p_worker_id": worker,
                                  "p_proposals": scan_proposals_param(world),
                                  "p_ttl_seconds": int_param(1, 900, 86400)},
        "create_trade_proposal": {
            "p_user_id": user, "p_market": market, "p_side": side, "p_amount_quote": amount,
            "p_confidence": confidence, "p_rationale": rationale, "p_source": source,
            "p_model": model, "p_reference_price": numeric_param("50000", "0.0001"),
            "p_scan_job_id": job, "p_ttl_seconds": int_param(1, 900, 86400)},
        "debug_check_locks": {},
        "decide_trade_proposal": {"p_proposal_id": proposal,
                                  "p_decision": text_param("approve", "reject")},
        "get_budget_analytics": {"p_user_id": user, "p_days": int_param(1, 7, 366)},
        "get_scan_context": {"p_job_id": job, "p_worker_id": worker, "p_mode": mode},
        "get_scan_contexts": {"p_worker_id": worker, "p_job_ids": id_list_param(world, "job"),
                              "p_mode": mode},
        "heartbeat_scan_job": {"p_job_id": job, "p_worker_id": worker,
                               "p_lock_seconds": int_param(10, 300, 3600)},
        "heartbeat_scan_jobs": {"p_worker_id": worker, "p_job_ids": id_list_param(world, "job"),
                                "p_lock_seconds": int_param(10, 300, 3600)},
        "lease_auto_approved_proposals": {"p_dispatcher": worker,
                                          "p_limit": int_param(1, 100, 1000),
                                          "p_lease_seconds": int_param(30, 1, 3600)},
        "list_unsettled_executions": {"p_older_than_seconds": int_param(0, 30),
                                      "p_limit": int_param(1, 50, 500)},
        "list_sweep_markets": {"p_window_seconds": int_param(60, 3600, 604800)},
        "record_exchange_orders": {"p_orders": exchange_orders_param()},
        "acknowledge_exchange_discrepancy": {
            "p_discrepancy_id": Param(st.uuids().map(str), st.one_of(
                uuid_text([str(uuid.UUID(int=1))]), st.integers(0, 10), st.booleans()),
                str(uuid.UUID(int=1)), UUID_EDGES),
            "p_note": text_param("handled by the operator", plain=True)},
        "release_auto_execution_leases": {"p_dispatcher": worker},
        "record_execution_result": {"p_execution_id": execution,
                                    "p_result": execution_result_param()},
        "record_oracle_answer": {
            "p_answer_id": uuid_param(world, "answer"), "p_worker_id": worker,
            "p_status": text_param("answered", "failed"), "p_answer": json_object_param(),
            "p_prompt_tokens": int_param(100, 0, 2**31 - 1),
            "p_cached_prompt_tokens": int_param(0, 10), "p_completion_tokens": int_param(50, 0),
            "p_request_id": text_param("req-1", plain=True),
            "p_failure": text_param("timeout", plain=True)},
        "release_job_lock": {"p_job_id": job, "p_worker_id": worker, "p_succeeded": bool_param(),
                             "p_error": text_param(plain=True)},
        "release_job_locks": {"p_worker_id": worker, "p_results": release_results_param(world)},
        "reserve_gpt_budget": {"p_user_id": user, "p_model": model,
                               "p_max_prompt_tokens": int_param(0, 100, 10_000_000),
                               "p_max_completion_tokens": int_param(0, 50, 10_000_000),
                               "p_scan_job_id": job},
        "reserve_gpt_budgets": {"p_oracle_answer_id": uuid_param(world, "answer"),
                                "p_requests": gpt_requests_param(world)},
        "run_maintenance": {},
        "set_trading_halted": {"p_halted": bool_param(), "p_reason": text_param(plain=True)},
        "settle_gpt_usage": {"p_reservation_id": reservation,
                             "p_prompt_tokens": int_param(0, 100, 2**31 - 1),
                             "p_cached_prompt_tokens": int_param(0, 10),
                             "p_completion_tokens": int_param(0, 50),
                             "p_request_id": text_param("req-1", plain=True)},
        "settle_oracle_answers": {"p_answer_ids": id_list_param(world, "answer")},
    }


def draw_args(data: st.DataObject, world: World, fn: str) -> dict[str, Any]:
    """Up to three parameters fuzzed (none: the RPC's business path), the others valid; an
    optional parameter may be left out."""
    params = world.params[fn]
    if not params:
        return {}
    fuzzed = data.draw(st.sets(st.sampled_from(sorted(params)), max_size=3), label="fuzzed")
    args = {}
    for name, param in params.items():
        if name in world.optional[fn] and data.draw(st.booleans(), label=f"omit {name}"):
            continue
        args[name] = data.draw(param.fuzz if name in fuzzed else param.valid, label=name)
    return args


# The examples each RPC gets in CI: more for the ones with many parameters or a JSON document.
BUDGET = {"record_execution_result": 300, "release_job_locks": 200, "create_trade_proposal": 200,
          "create_scan_proposal": 200, "claim_trade_execution": 200, "create_scan_proposals": 200,
          "claim_oracle_answer": 200, "record_oracle_answer": 200, "reserve_gpt_budgets": 200,
          "record_exchange_orders": 200}
# As service_role: every RPC in public but decide_trade_proposal, which acts for auth.uid() only
# (SPEC §3) and refuses any caller without one — service_role included — with 42501 before it
# reads its arguments (test_decide_trade_proposal_is_for_a_signed_in_user_only).
SERVICE_RPCS = ("acknowledge_exchange_discrepancy", "check_gpt_budget", "claim_due_scan_jobs",
                "claim_oracle_answer", "claim_trade_execution", "cleanup_expired_locks",
                "clear_todays_budget", "create_scan_proposal", "create_scan_proposals",
                "create_trade_proposal", "debug_check_locks", "get_budget_analytics",
                "get_scan_context", "get_scan_contexts", "heartbeat_scan_job",
                "heartbeat_scan_jobs", "lease_auto_approved_proposals", "list_sweep_markets",
                "list_unsettled_executions", "record_exchange_orders", "record_execution_result",
                "record_oracle_answer", "release_auto_execution_leases", "release_job_lock",
                "release_job_locks", "reserve_gpt_budget", "reserve_gpt_budgets",
                "run_maintenance", "set_trading_halted", "settle_gpt_usage",
                "settle_oracle_answers")
USER_RPCS = ("decide_trade_proposal", "get_budget_analytics")
SETOF = {"claim_due_scan_jobs", "debug_check_locks", "lease_auto_approved_proposals",
         "list_unsettled_executions"}


def call_and_check(world: World, fn: str, args: dict[str, Any], *,
                   user: UserRpc | None = None) -> None:
    # Nothing else writes this module's database, so the fingerprint after the previous call is
    # the one before this call: one fingerprint per call.
    before = world.last or world.fingerprint.take()
    world.last = None
    where = f"{fn}({', '.join(f'{k}={v!r:.80}' for k, v in args.items())})"
    try:
        if user is not None:
            result = user.call(fn, args)
        elif fn in SETOF:
            result = world.rpc.rows(fn, args)
        else:
            result = world.rpc.call(fn, args)
    except RpcInvalidArgument as error:
        note(f"{fn}: refused {error.code}")
        assert error.code in ALLOWED_DATA_ERRORS, f"{where}: {error.code} {error.message}"
        world.last = world.fingerprint.take()
        assert changed_tables(before, world.last) == [], f"{where} was refused but changed rows"
        return
    except RpcError as error:
        raise AssertionError(f"{where}: {type(error).__name__} [{error.code}] {error.message}"
                             ) from error
    world.last = world.fingerprint.take()
    outcome = (result.get("outcome") or result.get("status") or result.get("reason")
               if isinstance(result, dict) else type(result).__name__)
    note(f"{fn}: {outcome}")


def sweep(world: World, fn: str, *, user: UserRpc | None = None) -> int:
    """Each parameter through each of its edge values, the other parameters valid."""
    params = world.params[fn]
    calls = 0
    for name, param in params.items():
        for edge in param.edges:
            args = {other: p.default for other, p in params.items()}
            args[name] = edge
            call_and_check(world, fn, args, user=user)
            calls += 1
    return calls


@pytest.mark.parametrize("fn", SERVICE_RPCS)
def test_rpc_arguments(world: World, fn: str) -> None:
    """Every RPC in public, as service_role: a business outcome, or an allowed class-22 refusal
    that changed nothing."""

    @given(data=st.data())
    @fuzz_settings(BUDGET.get(fn, 100) if world.params[fn] else 1)
    def run(data: st.DataObject) -> None:
        call_and_check(world, fn, draw_args(data, world, fn))

    run()


@pytest.mark.parametrize("fn", USER_RPCS)
def test_user_rpc_arguments(world: World, fn: str) -> None:
    """The RPCs a signed-in user may call, as that user (role authenticated + claims)."""
    user = UserRpc(world.db, world.users[0])
    try:
        @given(data=st.data())
        @fuzz_settings(100)
        def run(data: st.DataObject) -> None:
            call_and_check(world, fn, draw_args(data, world, fn), user=user)

        run()
    finally:
        user.close()


@pytest.mark.parametrize("fn", SERVICE_RPCS)
def test_rpc_edges(world: World, fn: str) -> None:
    """The deterministic sweep: every parameter of every RPC through its type's edge values (the
    lengths the RPCs limit and one more, NaN/±Infinity/131,073 digits/16,384 decimals, int4's
    edges, uuid look-alikes, odd JSON shapes) with the other parameters valid — so a check that is
    missing or too late is hit for sure, not by chance."""
    assert sweep(world, fn) == sum(len(p.edges) for p in world.params[fn].values())


@pytest.mark.parametrize("fn", USER_RPCS)
def test_user_rpc_edges(world: World, fn: str) -> None:
    user = UserRpc(world.db, world.users[0])
    try:
        sweep(world, fn, user=user)
    finally:
        user.close()


def test_every_rpc_in_public_is_fuzzed(world: World) -> None:
    """The list above is the catalog's: a new RPC cannot slip past the fuzzer, and every
    parameter of every RPC has a strategy."""
    rows = world.db.query(
        "select p.proname, coalesce(p.proargnames, '{}') from pg_proc p "
        "join pg_namespace n on n.oid = p.pronamespace where n.nspname = 'public' "
        "and not exists (select 1 from pg_depend d where d.objid = p.oid and d.deptype = 'e') "
        "order by 1")
    assert tuple(name for name, _ in rows) == tuple(sorted({*SERVICE_RPCS, *USER_RPCS}))
    table = world.params
    for name, arguments in rows:
        inputs = [a for a in arguments if a.startswith("p_")]
        assert sorted(table[name]) == sorted(inputs), name


def test_decide_trade_proposal_is_for_a_signed_in_user_only(world: World) -> None:
    before = world.fingerprint.take()
    with pytest.raises(RpcError) as refused:
        world.rpc.call("decide_trade_proposal", {"p_proposal_id": world.ids["proposal"][6],
                                                 "p_decision": "approve"})
    assert refused.value.code == "42501"
    assert changed_tables(before, world.fingerprint.take()) == []
