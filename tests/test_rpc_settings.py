"""RpcSettings / connect_rpc: DATABASE_URL wins, SUPABASE_URL + SUPABASE_SERVICE_ROLE_KEY otherwise,
neither (or half of the pair) stops start-up with a message that names the variables and never
shows a value."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from shared.rpc.direct import DirectRpc
from shared.rpc.postgrest import PostgrestRpc
from shared.rpc.settings import RpcSettings, connect_rpc
from tests.pg import Database

VARIABLES = ("DATABASE_URL", "SUPABASE_URL", "SUPABASE_SERVICE_ROLE_KEY", "RPC_TIMEOUT_SECONDS",
             "RPC_CONNECT_TIMEOUT_SECONDS", "RPC_POOL_MIN_SIZE", "RPC_POOL_MAX_SIZE",
             "RPC_POOL_TIMEOUT_SECONDS", "RPC_POOL_MAX_IDLE_SECONDS",
             "RPC_POOL_MAX_LIFETIME_SECONDS")
SECRET = "very-secret-value-7f3a"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in VARIABLES:
        monkeypatch.delenv(name, raising=False)


def refused(monkeypatch: pytest.MonkeyPatch, **env: str) -> str:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError) as caught:
        RpcSettings()
    message = str(caught.value)
    assert SECRET not in message
    return message


def test_neither_road_names_both_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    message = refused(monkeypatch)
    assert "DATABASE_URL" in message
    assert "SUPABASE_URL and SUPABASE_SERVICE_ROLE_KEY" in message


@pytest.mark.parametrize(("env", "missing"), [
    ({"SUPABASE_URL": "https://x.supabase.co"}, "SUPABASE_SERVICE_ROLE_KEY is not set"),
    ({"SUPABASE_SERVICE_ROLE_KEY": SECRET}, "SUPABASE_URL is not set"),
    ({"SUPABASE_SERVICE_ROLE_KEY": SECRET, "SUPABASE_URL": "  "}, "SUPABASE_URL is not set"),
    ({"DATABASE_URL": "", "SUPABASE_SERVICE_ROLE_KEY": SECRET}, "SUPABASE_URL is not set"),
])
def test_half_of_the_postgrest_pair_names_the_missing_one(
        monkeypatch: pytest.MonkeyPatch, env: dict[str, str], missing: str) -> None:
    assert missing in refused(monkeypatch, **env)


@pytest.mark.parametrize(("env", "says"), [
    ({"DATABASE_URL": f"mysql://user:{SECRET}@host/db"}, "DATABASE_URL must be a postgresql://"),
    ({"SUPABASE_URL": f"ftp://{SECRET}", "SUPABASE_SERVICE_ROLE_KEY": "k"},
     "SUPABASE_URL must be an http(s) URL"),
    ({"SUPABASE_URL": "https://x.supabase.co", "SUPABASE_SERVICE_ROLE_KEY": f"{SECRET} x"},
     "must not contain whitespace"),
    ({"SUPABASE_URL": "https://x.supabase.co", "SUPABASE_SERVICE_ROLE_KEY": "changeme"},
     "placeholder"),
    ({"DATABASE_URL": f"postgresql://u:{SECRET}@h/db", "RPC_POOL_MIN_SIZE": "5",
      "RPC_POOL_MAX_SIZE": "2"}, "RPC_POOL_MAX_SIZE must be at least RPC_POOL_MIN_SIZE"),
    ({"DATABASE_URL": f"postgresql://u:{SECRET}@h/db", "RPC_TIMEOUT_SECONDS": "0"},
     "rpc_timeout_seconds"),
])
def test_malformed_values_are_refused_without_showing_them(
        monkeypatch: pytest.MonkeyPatch, env: dict[str, str], says: str) -> None:
    assert says in refused(monkeypatch, **env)


def test_database_url_wins_and_values_stay_hidden(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", f"postgresql://u:{SECRET}@127.0.0.1:1/db")
    monkeypatch.setenv("SUPABASE_URL", "https://x.supabase.co")
    monkeypatch.setenv("SUPABASE_SERVICE_ROLE_KEY", SECRET)
    settings = RpcSettings()
    assert settings.adapter == "direct"
    assert SECRET not in repr(settings) and SECRET not in str(settings.model_dump())


def test_connect_rpc_builds_the_direct_adapter(monkeypatch: pytest.MonkeyPatch,
                                               db: Database) -> None:
    monkeypatch.setenv("DATABASE_URL", db.authenticator_url)
    monkeypatch.setenv("RPC_POOL_MAX_SIZE", "2")
    monkeypatch.setenv("RPC_TIMEOUT_SECONDS", "2.5")
    rpc = connect_rpc(RpcSettings())
    try:
        assert isinstance(rpc, DirectRpc)
        assert rpc.call("run_maintenance")["expired_locks"] == 0
        assert rpc._pool.max_size == 2 and rpc._statement_timeout_ms == "2500"
    finally:
        rpc.close()


def test_connect_rpc_builds_the_postgrest_adapter(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SUPABASE_URL", "https://x.supabase.co/")
    monkeypatch.setenv("SUPABASE_SERVICE_ROLE_KEY", SECRET)
    settings = RpcSettings()
    assert settings.adapter == "postgrest" and settings.supabase_url == "https://x.supabase.co"
    rpc = connect_rpc(settings)
    try:
        assert isinstance(rpc, PostgrestRpc)
        assert SECRET not in repr(rpc)
    finally:
        rpc.close()
