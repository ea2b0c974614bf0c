"""shared.settings.load_settings: a bad configuration stops start-up with every offending variable
named in upper case and no value shown."""

from __future__ import annotations

import pytest

from shared.auth import AuthSettings
from shared.rpc.settings import RpcSettings
from shared.settings import ConfigurationError, load_settings

SECRET = "do-not-print-me-4b1d"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("DATABASE_URL", "SUPABASE_URL", "SUPABASE_SERVICE_ROLE_KEY", "SUPABASE_JWT_SECRET",
                 "SUPABASE_JWKS_URL", "SUPABASE_JWT_ISSUER", "RPC_TIMEOUT_SECONDS",
                 "RPC_POOL_MAX_SIZE"):
        monkeypatch.delenv(name, raising=False)


def test_field_errors_name_the_environment_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", f"mysql://root:{SECRET}@db/x")
    monkeypatch.setenv("RPC_TIMEOUT_SECONDS", f"{SECRET}")
    monkeypatch.setenv("RPC_POOL_MAX_SIZE", "0")
    with pytest.raises(ConfigurationError) as caught:
        load_settings(RpcSettings)
    message = str(caught.value)
    assert message.startswith("RpcSettings: invalid configuration")
    assert "DATABASE_URL: DATABASE_URL must be a postgresql:// URL" in message
    assert "RPC_TIMEOUT_SECONDS: Input should be a valid number" in message
    assert "RPC_POOL_MAX_SIZE: Input should be greater than or equal to 1" in message
    assert SECRET not in message and caught.value.__cause__ is None


def test_model_errors_are_reported_as_they_are() -> None:
    with pytest.raises(ConfigurationError) as caught:
        load_settings(AuthSettings)
    assert "no way to authenticate callers: set SUPABASE_JWT_SECRET" in str(caught.value)


def test_a_good_configuration_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SUPABASE_URL", "https://x.supabase.co")
    monkeypatch.setenv("SUPABASE_SERVICE_ROLE_KEY", SECRET)
    settings = load_settings(RpcSettings)
    assert settings.adapter == "postgrest"
    assert load_settings(AuthSettings, supabase_jwt_secret="x" * 32).supabase_jwt_secret
