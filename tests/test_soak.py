"""The chaos soak (tests/soak.py): the whole system under random traffic, exchange faults and
SIGKILLed function processes, then every invariant checked (G1, G2, G5, G7, G9, G10, no 5xx).

In `make test`: a fixed seed and a fixed number of plan steps (SOAK_CI_STEPS), so the run is the
same plan every time; nothing is asserted about timing (waits are for windows to pass, each with a
hang guard). `make soak` runs the same test for SOAK_SECONDS with SOAK_SEED (a fresh random seed
by default) and prints the summary; a failure prints the line that replays it:

    SOAK_SEED=<seed> SOAK_SECONDS=<s> make soak        (or SOAK_STEPS=<n> for a step budget)
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from tests.pg import Database
from tests.sandbox_server import start_sandbox
from tests.soak import SANDBOX_BALANCES, SoakConfig, plan, plan_digest, run_soak

SOAK_CI_SEED = 20261193
SOAK_CI_STEPS = 110


def config_from_env(workdir: Path) -> SoakConfig:
    seed = int(os.environ.get("SOAK_SEED") or SOAK_CI_SEED)
    seconds = os.environ.get("SOAK_SECONDS")
    steps = os.environ.get("SOAK_STEPS")
    if seconds:
        return SoakConfig(seed=seed, seconds=float(seconds), workdir=workdir)
    return SoakConfig(seed=seed, steps=int(steps or SOAK_CI_STEPS), workdir=workdir)


def test_chaos_soak_keeps_every_invariant(db: Database, tmp_path: Path) -> None:
    config = config_from_env(tmp_path)
    env = {"SANDBOX_BALANCES": json.dumps(SANDBOX_BALANCES),
           "SANDBOX_RATE_LIMIT": "100000000"}
    with start_sandbox(env=env, seed=config.seed % 1_000_000) as sandbox:
        summary = run_soak(db, sandbox, config, report=lambda text: print("\n" + text))
    # The run did what a soak is for: faults, kills, both scanners, reconciles, orders.
    assert summary.kills and sum(summary.faults.values()) > 0
    assert any(name.startswith("db answer cut") for name in summary.faults), (
        "no PostgreSQL answer was cut")
    assert summary.steps["execute"] > 0 and summary.steps["tick"] > 0
    assert sum(summary.orders.values()) > 0
    assert summary.model_calls, "ORACLE=openai made no model call: G7 was not exercised"


def test_the_plan_is_a_function_of_the_seed() -> None:
    assert plan_digest(7, 6, 500) == plan_digest(7, 6, 500)
    assert plan_digest(7, 6, 500) != plan_digest(8, 6, 500)
    kinds = {step.kind for _, step in zip(range(SOAK_CI_STEPS), plan(SOAK_CI_SEED, 6),
                                          strict=False)}
    assert {"execute", "fault", "tick", "reconcile", "kill", "due", "maintenance",
            "budget", "db_cut"} <= kinds
