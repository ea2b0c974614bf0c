"""The settings pattern of every deployable (SPEC §6).

Each function has pydantic-settings models (`RpcSettings`, `AuthSettings`, the exchange settings,
its own) with `hide_input_in_errors=True` and secrets as `SecretStr`. `load_settings` builds one at
start-up and turns a validation failure into a `ConfigurationError` whose message names each
offending environment variable — in the spelling an operator sets it — and never its value:

    RpcSettings: invalid configuration
      RPC_TIMEOUT_SECONDS: Input should be a valid number, unable to parse string as a number
      no database configured: set DATABASE_URL (direct connection) or SUPABASE_URL and …

Raise it at import time of `functions/<name>/main.py` so a misconfigured function never serves a
request.
"""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import ValidationError
from pydantic_settings import BaseSettings

S = TypeVar("S", bound=BaseSettings)


class ConfigurationError(RuntimeError):
    """A setting is missing or malformed. The message names variables, never values."""


def load_settings(model: type[S], **values: Any) -> S:
    """`model()` read from the environment (plus `values`), or a ConfigurationError."""
    try:
        return model(**values)
    except ValidationError as exc:
        raise ConfigurationError(describe(exc, model)) from None


def describe(exc: ValidationError, model: type[BaseSettings]) -> str:
    prefix = str(model.model_config.get("env_prefix") or "")
    lines = []
    for error in exc.errors(include_input=False, include_url=False, include_context=False):
        message = error["msg"].removeprefix("Value error, ")
        field = error["loc"][0] if error["loc"] else None
        lines.append(f"{(prefix + str(field)).upper()}: {message}" if field else message)
    return f"{model.__name__}: invalid configuration\n  " + "\n  ".join(lines)
