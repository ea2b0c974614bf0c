"""The operator console `oracle` (SPEC §7) on a real migrated database: every command's
output and exit status, bad arguments → a clear message and exit 2, an unreachable database →
exit 1 without the password, the kill switch end to end (audited, then a claim refused by the
trading_enabled validator), and development tokens the functions' own Verifier accepts.

The entry point runs in-process (`console.cli.main`, captured output) and, once, as a process
(`python -m console`). `oracle verify` has its own module (test_cli_verify.py).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
import uuid
from decimal import Decimal
from pathlib import Path

import pytest

from console import local
from shared.auth import AuthError, AuthSettings, Verifier
from stack.cluster import free_port
from tests.oracle_console import ROOT, oracle, oracle_process
from tests.pg import Database
from tests.test_execution_support import (  # the module's shared database: db, module_db
    _fresh_db_fixture,  # noqa: F401
    _module_db_fixture,  # noqa: F401
    _shared_db_fixture,  # noqa: F401
    allow_market,
    allow_user_market,
    claim,
    claimed,
    failed_checks,
    market_of,
    new_market,
    new_user,
    propose,
    record,
    sql,
    trader,
)

Capsys = pytest.CaptureFixture[str]
COMMANDS = ("status", "locks", "budget", "audit", "halt", "resume", "token", "verify")


def email_of(db: Database, user_id: uuid.UUID) -> str:
    return str(db.scalar("select email from auth.users where id = %s", (user_id,)))


def gpt_model(db: Database) -> str:
    """A priced model: 1 USD per 1M input tokens, 0.5 cached, 2 output."""
    model = f"test-{uuid.uuid4().hex[:8]}"
    sql(db, "insert into public.gpt_model_prices (model, input_usd_per_mtok, "
            "cached_input_usd_per_mtok, output_usd_per_mtok) values (%s, 1, 0.5, 2)", (model,))
    return model


# -- arguments ------------------------------------------------------------------------------------
def test_help_names_every_command(capsys: Capsys) -> None:
    run = oracle(capsys, "--help")
    assert run.code == 0
    for command in COMMANDS:
        assert command in run.out
    assert "DATABASE_URL" in run.out


BAD_ARGUMENTS = [
    ([], "the following arguments are required: COMMAND"),
    (["frobnicate"], "invalid choice: 'frobnicate'"),
    (["status", "--hours", "0"], "argument --hours: 0 must be at least 1"),
    (["status", "--top", "ten"], "argument --top: 'ten' is not a whole number"),
    (["audit"], "the following arguments are required: --proposal"),
    (["audit", "--proposal", "42"], "argument --proposal: '42' is not a uuid"),
    (["budget"], "the following arguments are required: USER"),
    (["budget", "not-a-user"], "'not-a-user' is neither a user id (uuid) nor an email address"),
    (["budget", "someone@example.test", "--days", "400"], "--days must be at most 366"),
    (["halt"], "the following arguments are required: --reason"),
    (["resume", "--reason", "   "], "--reason must say why"),
    (["halt", "--reason", "x" * 501], "--reason is 501 characters; at most 500"),
    (["token"], "the following arguments are required: --user"),
    (["token", "--user", "a@b.test", "--ttl", "90000"], "--ttl must be between 1 and 86400"),
    (["verify", "--check", "everything"], "argument --check: invalid choice: 'everything'"),
    (["verify", "--reconcile-window", "-1"], "argument --reconcile-window: -1 must be at least 1"),
    (["--db-url", "mysql://root@127.0.0.1/x", "status"], "--db-url must be a postgresql:// URL"),
    (["status", "--db-url", "postgresql://u@h/db?sslmode"], "--db-url is not a valid PostgreSQL"),
]


@pytest.mark.parametrize(("argv", "message"), BAD_ARGUMENTS,
                         ids=[" ".join(a)[:40] or "nothing" for a, _ in BAD_ARGUMENTS])
def test_bad_arguments_exit_2_with_a_clear_message(capsys: Capsys, argv: list[str],
                                                   message: str) -> None:
    # DATABASE_URL points at a closed port: a command that connected anyway would exit 1, not 2.
    run = oracle(capsys, *argv,
                 env={"DATABASE_URL": f"postgresql://postgres@127.0.0.1:{free_port()}/postgres"})
    assert run.code == 2, run
    assert message in run.err, run.err
    assert "error:" in run.err and run.out == ""


@pytest.mark.parametrize("argv", [
    ["status"], ["locks"], ["budget", "someone@example.test"],
    ["audit", "--proposal", str(uuid.uuid4())], ["halt", "--reason", "test"],
    ["resume", "--reason", "test"], ["token", "--user", "someone@example.test"], ["verify"],
], ids=lambda argv: argv[0])
def test_an_unreachable_database_exits_1_and_never_shows_the_password(capsys: Capsys,
                                                                      argv: list[str]) -> None:
    port = free_port()
    run = oracle(capsys, *argv,
                 env={"DATABASE_URL": f"postgresql://postgres:s3cret-pw@127.0.0.1:{port}/postgres"})
    assert run.code == 1, run
    assert f"cannot connect to postgres@127.0.0.1:{port}/postgres (DATABASE_URL)" in run.err
    assert "s3cret-pw" not in run.out + run.err


@pytest.mark.parametrize(("url", "is_local"), [
    ("postgresql://postgres@127.0.0.1:54322/postgres", True),
    ("postgresql://postgres@localhost/postgres", True),
    ("postgresql://postgres@[::1]:5432/postgres", True),
    ("postgresql:///postgres", True),
    ("postgresql://postgres@/postgres?host=/var/run/postgresql", True),
    ("postgresql://postgres:pw@db.abcdefgh.supabase.co:5432/postgres", False),
    ("postgresql://postgres.ref:pw@aws-0-eu-central-1.pooler.supabase.com:6543/postgres", False),
    ("postgresql://postgres@127.0.0.1,db.example.com/postgres", False),
    ("postgresql://postgres@localhost/postgres?hostaddr=10.0.0.5", False),
])
def test_which_databases_count_as_local(url: str, is_local: bool) -> None:
    assert local.is_local_database(url) is is_local


# -- status ---------------------------------------------------------------------------------------
def test_status_shows_switches_counts_rejections_cooldowns_budget_and_leases(
        capsys: Capsys, fresh_db: Database) -> None:
    db = fresh_db
    user = trader(db)
    email, market = email_of(db, user), market_of(user)
    claimed(db, user)                                        # buy: cooldown and anti-flip start
    again = claim(db, user, propose(db, user))               # same side: cooldown
    flip = claim(db, user, propose(db, user, side="sell"))   # other side: cooldown + anti-flip
    assert failed_checks(again) == ["cooldown"]
    assert failed_checks(flip) == ["cooldown", "anti_flip"]
    reserved = db.rpc("reserve_gpt_budget", p_user_id=user, p_model=gpt_model(db),
                      p_max_prompt_tokens=1000, p_max_completion_tokens=1000)
    assert reserved["allowed"] is True
    sql(db, "insert into public.scan_jobs (user_id, market, interval_seconds) values (%s, %s, 60)",
        (user, market))
    assert len(db.rpc_rows("claim_due_scan_jobs", p_worker_id="worker-held", p_limit=5)) == 1
    other = new_market()
    allow_market(db, other)
    allow_user_market(db, user, other)
    sql(db, "insert into public.scan_jobs (user_id, market, interval_seconds, locked_by, "
            "locked_at, lock_expires_at) values (%s, %s, 60, 'worker-crashed', "
            "now() - interval '10 minutes', now() - interval '5 minutes')", (user, other))
    assert oracle(capsys, "--db-url", db.url, "halt", "--reason", "status test").code == 0

    run = oracle(capsys, "--db-url", db.url, "status", "--json")
    assert run.code == 0, run.err
    data = run.json
    assert data["controls"]["trading_halted"] is True
    assert data["controls"]["live_trading_allowed"] is False
    assert Decimal(data["controls"]["max_order_quote"]) == 100
    assert data["controls"]["last_switch"]["event"] == "system_controls.halt"
    assert data["controls"]["last_switch"]["reason"] == "status test"
    assert data["proposals"] == {"approved": 2, "executing": 1}
    assert data["executions"]["by_status"] == {"claimed": 1}
    assert [(o["status"], o["count"]) for o in data["executions"]["open"]] == [("claimed", 1)]
    assert data["claims"] == {"claimed": 1, "rejected": 2}
    assert {r["check"]: r["count"] for r in data["rejections"]} == {"cooldown": 2, "anti_flip": 1}
    assert [(c["user_id"], c["email"], c["market"], c["mode"], c["side"])
            for c in data["cooldowns"]] == [(str(user), email, market, "paper", "buy")]
    assert [(a["user_id"], a["market"], a["blocked_side"]) for a in data["anti_flip"]] == [
        (str(user), market, "sell")]
    [gpt] = data["gpt"]["users"]
    assert (gpt["user_id"], gpt["email"]) == (str(user), email)
    assert Decimal(gpt["spent_hour_usd"]) == Decimal(gpt["spent_day_usd"]) == reserved[
        "reserved_usd"] > 0
    assert (Decimal(gpt["hourly_limit_usd"]), Decimal(gpt["daily_limit_usd"])) == (
        Decimal("0.25"), Decimal("1.00"))
    leases = data["leases"]
    assert (leases["held"], leases["expired_held"], leases["due"], leases["enabled"]) == (
        1, 1, 1, 2)
    # Scheduling lag: the claimed job fell due at its creation and was claimed just after.
    lag = data["scheduling"]
    assert lag["claimed"] == 1 and Decimal(lag["lag_max_seconds"]) == Decimal(
        lag["lag_p50_seconds"]) >= 0
    assert Decimal(lag["oldest_due_seconds"]) > 0  # the crashed worker's job is due

    text = oracle(capsys, "--db-url", db.url, "status")
    assert text.code == 0, text.err
    for expected in ("TRADING HALTED", "status test", "rejections by validator", "anti_flip",
                     "cooldowns in force", email, market, "GPT spend vs limits",
                     "expired, still held", "scheduling lag"):
        assert expected in text.out, expected


# -- locks ----------------------------------------------------------------------------------------
def test_locks_lists_every_lease_with_its_holder_and_whether_it_expired(capsys: Capsys,
                                                                        db: Database) -> None:
    user = trader(db)
    held = sql(db, "insert into public.scan_jobs (user_id, market, interval_seconds, locked_by, "
                   "locked_at, lock_expires_at) values (%s, %s, 60, 'worker-a', now(), "
                   "now() + interval '5 minutes') returning id", (user, market_of(user)))[0][0]
    other = new_market()
    allow_market(db, other)
    allow_user_market(db, user, other)
    stale = sql(db, "insert into public.scan_jobs (user_id, market, interval_seconds, locked_by, "
                    "locked_at, lock_expires_at) values (%s, %s, 60, 'worker-b', "
                    "now() - interval '1 hour', now() - interval '55 minutes') returning id",
                (user, other))[0][0]
    run = oracle(capsys, "--db-url", db.url, "locks", "--json")
    assert run.code == 0, run.err
    mine = {row["job_id"]: (row["locked_by"], row["expired"]) for row in run.json
            if row["user_id"] == str(user)}
    assert mine == {str(held): ("worker-a", False), str(stale): ("worker-b", True)}

    text = oracle(capsys, "--db-url", db.url, "locks")
    assert text.code == 0
    assert str(held) in text.out and "worker-b" in text.out


# -- budget ---------------------------------------------------------------------------------------
def test_budget_by_email_and_by_id_shows_spend_limits_and_history(capsys: Capsys,
                                                                  db: Database) -> None:
    user = new_user(db)
    email, model = email_of(db, user), gpt_model(db)
    reservation = db.rpc("reserve_gpt_budget", p_user_id=user, p_model=model,
                         p_max_prompt_tokens=2000, p_max_completion_tokens=1000)
    settled = db.rpc("settle_gpt_usage", p_reservation_id=reservation["reservation_id"],
                     p_prompt_tokens=1000, p_cached_prompt_tokens=0, p_completion_tokens=500)
    assert settled["cost_usd"] == Decimal("0.002")  # 1000 × 1 + 500 × 2 per 1M tokens

    by_email = oracle(capsys, "--db-url", db.url, "budget", email.upper(), "--json")
    assert by_email.code == 0, by_email.err
    data = by_email.json
    assert (data["user_id"], data["email"]) == (str(user), email)
    assert data["check"]["allowed"] is True
    assert Decimal(data["check"]["spent_day_usd"]) == Decimal("0.002")
    assert Decimal(data["check"]["daily_limit_usd"]) == Decimal("1.00")
    assert data["analytics"]["days"] == "7"  # JSON numbers from an RPC are Decimals → strings
    [per_model] = data["analytics"]["by_model"]
    assert per_model["model"] == model and per_model["calls"] == "1"
    assert len(data["analytics"]["by_day"]) == 7

    by_id = oracle(capsys, "--db-url", db.url, "budget", str(user), "--days", "2")
    assert by_id.code == 0, by_id.err
    for expected in (email, model, "check_gpt_budget", "0.002"):
        assert expected in by_id.out, expected

    missing = oracle(capsys, "--db-url", db.url, "budget", "nobody-here@example.test")
    assert missing.code == 1
    assert "no user nobody-here@example.test in auth.users" in missing.err


# -- audit ----------------------------------------------------------------------------------------
def test_audit_shows_a_proposals_trail_in_order_with_its_execution(capsys: Capsys,
                                                                   db: Database) -> None:
    user = trader(db)
    proposal = propose(db, user)
    execution = claim(db, user, proposal, key="audit-key")["execution"]
    recorded = record(db, execution["id"], status="filled", exchange_order_id="ex-1",
                      filled_amount="0.0001", filled_amount_quote="10", price="100000",
                      fee_paid="0.025", fee_currency="EUR")
    assert recorded["outcome"] == "updated", recorded

    run = oracle(capsys, "--db-url", db.url, "audit", "--proposal", str(proposal), "--json")
    assert run.code == 0, run.err
    data = run.json
    assert data["proposal"]["status"] == "executed"
    assert data["execution"]["id"] == execution["id"]
    assert data["execution"]["status"] == "filled"
    assert data["trade"]["execution_id"] == execution["id"]
    events = data["events"]
    assert [e["event"] for e in events] == ["proposal.created", "proposal.decided",
                                            "claim.claimed", "execution.status_changed"]
    assert [e["id"] for e in events] == sorted(e["id"] for e in events)
    assert events[2]["detail"]["idempotency_key"] == "audit-key"

    text = oracle(capsys, "--db-url", db.url, "audit", "--proposal", str(proposal))
    assert text.code == 0
    for expected in (str(proposal), execution["id"], "claim.claimed",
                     "execution.status_changed", "ledger (trade_history)", "ex-1"):
        assert expected in text.out, expected


def test_audit_of_an_unknown_proposal(capsys: Capsys, db: Database) -> None:
    user = trader(db)
    ghost = uuid.uuid4()
    assert claim(db, user, ghost)["outcome"] == "not_found"  # audited as claim.not_found

    run = oracle(capsys, "--db-url", db.url, "audit", "--proposal", str(ghost), "--json")
    assert run.code == 0, run.err
    assert run.json["proposal"] is None and run.json["execution"] is None
    assert [e["event"] for e in run.json["events"]] == ["claim.not_found"]

    nothing = uuid.uuid4()
    missing = oracle(capsys, "--db-url", db.url, "audit", "--proposal", str(nothing))
    assert missing.code == 1
    assert f"no proposal {nothing}" in missing.err


# -- halt / resume --------------------------------------------------------------------------------
def test_halt_and_resume_flip_the_switch_audited_and_a_halt_refuses_claims(
        capsys: Capsys, fresh_db: Database) -> None:
    db = fresh_db
    user = trader(db)
    proposal = propose(db, user)

    halt = oracle(capsys, "--db-url", db.url, "halt", "--reason", "exchange maintenance")
    assert halt.code == 0, halt.err
    assert "trading is now HALTED" in halt.out
    assert db.scalar("select trading_halted from public.system_controls") is True
    again = oracle(capsys, "--db-url", db.url, "halt", "--reason", "still halted?", "--json")
    assert again.code == 0
    assert (again.json["trading_halted"], again.json["changed"]) == (True, False)

    refused = claim(db, user, proposal)
    assert refused["outcome"] == "rejected"
    assert failed_checks(refused) == ["trading_enabled"]
    assert refused["failed_checks"][0]["reason"] == "trading is halted system-wide"

    resume = oracle(capsys, "--db-url", db.url, "resume", "--reason", "maintenance over")
    assert resume.code == 0, resume.err
    assert "trading is now running" in resume.out
    assert db.scalar("select trading_halted from public.system_controls") is False
    assert claim(db, user, proposal)["outcome"] == "claimed"

    switch = [(event, detail.get("reason"), detail.get("changes")) for event, detail in db.query(
        "select event, detail from public.execution_audit_log "
        "where event like 'system_controls.%%' order by id")]
    assert switch == [
        ("system_controls.halt", "exchange maintenance", None),
        ("system_controls.changed", None, {"trading_halted": {"from": False, "to": True}}),
        ("system_controls.halt", "still halted?", None),
        ("system_controls.resume", "maintenance over", None),
        ("system_controls.changed", None, {"trading_halted": {"from": True, "to": False}}),
    ]


def test_halt_on_a_database_without_the_operator_migration_says_what_to_apply(
        capsys: Capsys, fresh_db: Database) -> None:
    fresh_db.query("drop function public.set_trading_halted(boolean, text)")
    run = oracle(capsys, "--db-url", fresh_db.url, "halt", "--reason", "incident")
    assert run.code == 1
    assert "no set_trading_halted(): apply the migrations" in run.err
    assert fresh_db.scalar("select trading_halted from public.system_controls") is False


# -- token ----------------------------------------------------------------------------------------
def test_token_is_a_jwt_the_functions_verifier_accepts_for_that_user(capsys: Capsys,
                                                                     db: Database) -> None:
    user = new_user(db)
    email = email_of(db, user)
    run = oracle(capsys, "--db-url", db.url, "token", "--user", email, "--ttl", "600")
    assert run.code == 0, run.err
    token = run.out.strip()
    assert run.out == token + "\n" and token.count(".") == 2
    assert "the local development secret" in run.err and token not in run.err
    for settings in (AuthSettings(supabase_jwt_secret=local.JWT_SECRET),
                     AuthSettings(supabase_jwt_secret=local.JWT_SECRET,
                                  supabase_jwt_issuer=local.JWT_ISSUER)):
        principal = Verifier(settings).verify(f"Bearer {token}")
        assert (principal.role, principal.user_id, principal.email) == (
            "authenticated", user, email)
    with pytest.raises(AuthError):  # signed with that secret, and only that one
        Verifier(AuthSettings(supabase_jwt_secret="another-secret-" + "x" * 32)).verify(
            f"Bearer {token}")


def test_token_signs_with_supabase_jwt_secret_when_it_is_set(capsys: Capsys,
                                                             db: Database) -> None:
    user = new_user(db)
    secret = "project-secret-" + "k" * 40
    run = oracle(capsys, "--db-url", db.url, "token", "--user", str(user),
                 env={"SUPABASE_JWT_SECRET": secret})
    assert run.code == 0, run.err
    assert "signed with SUPABASE_JWT_SECRET" in run.err and secret not in run.out + run.err
    principal = Verifier(AuthSettings(supabase_jwt_secret=secret)).verify(
        f"Bearer {run.out.strip()}")
    assert principal.user_id == user
    with pytest.raises(AuthError):
        Verifier(AuthSettings(supabase_jwt_secret=local.JWT_SECRET)).verify(
            f"Bearer {run.out.strip()}")


@pytest.mark.parametrize("env", [{}, {"SUPABASE_JWT_SECRET": local.JWT_SECRET}],
                         ids=["no secret", "the local secret given"])
def test_token_refuses_the_local_secret_for_a_database_elsewhere(capsys: Capsys,
                                                                 env: dict[str, str]) -> None:
    # The host does not resolve: a refusal after connecting would exit 1, not 2.
    url = "postgresql://postgres:pw-hosted-1@db.abcdefgh.supabase.invalid:5432/postgres"
    run = oracle(capsys, "--db-url", url, "token", "--user", "someone@example.test", env=env)
    assert run.code == 2, run
    assert run.out == ""
    assert ("SUPABASE_JWT_SECRET is not set" in run.err if not env
            else "refusing to sign a token with the public local development secret" in run.err)
    assert "pw-hosted-1" not in run.err


def test_token_for_an_unknown_user_exits_1(capsys: Capsys, db: Database) -> None:
    run = oracle(capsys, "--db-url", db.url, "token", "--user", "ghost@example.test")
    assert run.code == 1
    assert "no user ghost@example.test" in run.err and run.out == ""


# -- the installed entry point --------------------------------------------------------------------
def test_the_console_runs_as_a_process(db: Database) -> None:
    run = oracle_process("verify", "--check", "rls", env={"DATABASE_URL": db.url})
    assert run.code == 0, run.err
    assert run.out.splitlines()[1].startswith("PASS  rls")
    bad = oracle_process("status", "--hours", "many", env={"DATABASE_URL": db.url})
    assert bad.code == 2
    assert "argument --hours: 'many' is not a whole number" in bad.err


# What the install gives, run from outside the checkout (nothing of it on sys.path): every module
# of the installed packages imports, and none brings a package the install does not have.
WALK_INSTALLED = """
import importlib, pkgutil, sys
import console, shared
for package in (console, shared):
    for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
        if not info.name.endswith(".__main__"):
            importlib.import_module(info.name)
print(sorted({name.split(".")[0] for name in sys.modules}
             & {"stack", "sandbox", "scripts", "tests", "bench", "functions"}))
"""


def test_the_installed_console_runs_outside_the_checkout(db: Database, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "DATABASE_URL")}
    installed = Path(sys.executable).parent / "oracle"  # what `make setup` installs into .venv
    run = subprocess.run([str(installed), "--db-url", db.url, "verify", "--check", "rls"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
                         check=False)
    assert run.returncode == 0, run.stdout + run.stderr
    walk = subprocess.run([sys.executable, "-c", WALK_INSTALLED], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120, check=False)
    assert walk.returncode == 0, walk.stderr
    assert walk.stdout.strip() == "[]"


def test_pyproject_installs_the_oracle_console_script() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert project["project"]["scripts"] == {"oracle": "console.cli:main"}
    assert project["build-system"]["build-backend"] == "setuptools.build_meta"
    include = project["tool"]["setuptools"]["packages"]["find"]["include"]
    assert set(include) == {"console", "console.*", "shared", "shared.*"}
