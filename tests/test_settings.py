"""shared.settings.load_settings: a bad configuration stops start-up with every offending variable
named in upper case and no value shown."""

from __future__ import annotations

import uuid

import pytest

from shared.auth import AuthSettings
from shared.execution.settings import ExecuteSettings
from shared.redaction import redact
from shared.rpc.settings import RpcSettings
from shared.scanning.settings import ScanSettings
from shared.settings import ConfigurationError, FunctionSettings, load_settings

SECRET = "do-not-print-me-4b1d"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("DATABASE_URL", "SUPABASE_URL", "SUPABASE_SERVICE_ROLE_KEY", "SUPABASE_JWT_SECRET",
                 "SUPABASE_JWKS_URL", "SUPABASE_JWT_ISSUER", "RPC_TIMEOUT_SECONDS",
                 "RPC_POOL_MAX_SIZE", "TRADING_MODE", "ORACLE", "EXECUTE_FUNCTION_URL",
                 "BITVAVO_TRADE_API_KEY", "BITVAVO_TRADE_API_SECRET", "BITVAVO_READONLY_API_KEY",
                 "BITVAVO_READONLY_API_SECRET", "REQUEST_READ_TIMEOUT_SECONDS"):
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


# -- the one loader of both functions -------------------------------------------------------------
FUNCTION_SETTINGS: dict[str, type[FunctionSettings]] = {"trading_execute": ExecuteSettings,
                                                     "scan_scheduler": ScanSettings}


@pytest.mark.parametrize("function", sorted(FUNCTION_SETTINGS))
def test_both_functions_register_every_secret_when_they_load(
        monkeypatch: pytest.MonkeyPatch, function: str) -> None:
    """One loader registers every SecretStr of every model, and the database password alone (the
    scanner's own loader left the password out: a driver error quoting it was logged as is)."""
    unique = uuid.uuid4().hex[:12]
    values = {
        "DATABASE_URL": f"postgresql://authenticator:db-pass-{unique}@db:5432/postgres",
        "SUPABASE_SERVICE_ROLE_KEY": f"sb_secret_{unique}-service",
        "SUPABASE_JWT_SECRET": f"jwt-secret-{unique}-" + "j" * 20,
        "BITVAVO_READONLY_API_KEY": "ab" * 32,
        "BITVAVO_READONLY_API_SECRET": f"readonly-secret-{unique}",
    }
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    settings = FUNCTION_SETTINGS[function].load()
    secrets = [f"db-pass-{unique}", values["SUPABASE_SERVICE_ROLE_KEY"],
               values["SUPABASE_JWT_SECRET"], values["BITVAVO_READONLY_API_KEY"]]
    if function == "scan_scheduler":  # trading_execute reads the read-only key only to compare
        secrets.append(values["BITVAVO_READONLY_API_SECRET"])
    assert set(secrets) <= set(settings.secrets())
    line = redact(f"could not connect: password {secrets[0]} refused; " + " ".join(secrets))
    for secret in secrets:
        assert secret not in line, (secret, line)


@pytest.mark.parametrize("function", sorted(FUNCTION_SETTINGS))
def test_both_functions_name_every_problem_at_once(monkeypatch: pytest.MonkeyPatch,
                                                   function: str) -> None:
    monkeypatch.setenv("DATABASE_URL", f"mysql://root:{SECRET}@db/x")
    monkeypatch.setenv("RPC_POOL_MAX_SIZE", "0")
    monkeypatch.setenv("REQUEST_READ_TIMEOUT_SECONDS", "0")
    with pytest.raises(ConfigurationError) as caught:
        FUNCTION_SETTINGS[function].load()
    message = str(caught.value)
    assert message.startswith(f"{function} cannot start:")
    for name in ("DATABASE_URL", "RPC_POOL_MAX_SIZE", "REQUEST_READ_TIMEOUT_SECONDS"):
        assert f"{name}: " in message, name
    assert SECRET not in message and caught.value.__cause__ is None
