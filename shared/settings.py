"""How every deployable reads its configuration (SPEC §6): one loader for both functions.

A function's settings are a frozen dataclass of pydantic-settings models, one per concern
(`RpcSettings`, `AuthSettings`, the exchange's, the edge's `HttpSettings`, its own), each with
`hide_input_in_errors=True` and its secrets as `SecretStr`:

    @dataclass(frozen=True)
    class ExecuteSettings(FunctionSettings):
        function: ClassVar[str] = "trading_execute"
        rpc: RpcSettings
        …

    settings = ExecuteSettings.load()      # or a ConfigurationError; nothing has been served

`load()` reads every model from the environment and reports every problem at once, each naming
the environment variable in the spelling an operator sets it, never its value:

    trading_execute cannot start:
    RpcSettings: invalid configuration
      RPC_TIMEOUT_SECONDS: Input should be a valid number, unable to parse string as a number
      no database configured: set DATABASE_URL (direct connection) or SUPABASE_URL and …

A function adds what no single model can say: `refuse(environ)` names variables that must not be
set at all (the scanner's trade key, G3) and `problems()` the rules across its models. Last,
`load()` registers every secret with the log redaction (shared.redaction): every SecretStr of
every model, and the password inside a URL on its own. No function lists its secrets by hand, so
a secret added to a model is scrubbed from every log line without another line of code.

Call it at import time of `functions/<name>/main.py`, so a misconfigured function never serves.
"""

from __future__ import annotations

import dataclasses
import os
import typing
from collections.abc import Iterator, Mapping
from typing import Any, ClassVar, Self, TypeVar
from urllib.parse import unquote, urlsplit

from pydantic import SecretStr, ValidationError
from pydantic_settings import BaseSettings

from shared.redaction import register_secret

S = TypeVar("S", bound=BaseSettings)


class ConfigurationError(RuntimeError):
    """A setting is missing or malformed. The message names variables, never values."""


class FunctionSettings:
    """The base of a function's settings dataclass (see the module docstring)."""

    function: ClassVar[str]

    @classmethod
    def load(cls) -> Self:
        """Every model from the environment, checked together, secrets registered."""
        problems = cls.refuse(os.environ)
        parts: dict[str, BaseSettings] = {}
        for name, model in cls.models().items():
            try:
                parts[name] = load_settings(model)
            except ConfigurationError as error:
                problems.append(str(error))
        if not problems:
            settings = cls(**parts)  # type: ignore[call-arg] # the subclass's dataclass fields
            problems = settings.problems()
        if problems:
            raise ConfigurationError(f"{cls.function} cannot start:\n" + "\n".join(problems))
        for secret in settings.secrets():
            register_secret(secret)
        return settings

    @classmethod
    def models(cls) -> dict[str, type[BaseSettings]]:
        """The dataclass's fields: name → the pydantic-settings model it holds."""
        hints = typing.get_type_hints(cls)
        return {field.name: hints[field.name]
                for field in dataclasses.fields(cls)}  # type: ignore[arg-type]

    @classmethod
    def refuse(cls, environ: Mapping[str, str]) -> list[str]:
        """Problems with variables that must not be set at all (none by default)."""
        return []

    def problems(self) -> list[str]:
        """Problems across the models (none by default)."""
        return []

    def secrets(self) -> Iterator[str]:
        """Every configured secret: each SecretStr of each model, and a URL's password alone."""
        for field in dataclasses.fields(self):  # type: ignore[arg-type]
            model = getattr(self, field.name)
            for name in type(model).model_fields:
                value = getattr(model, name)
                if isinstance(value, SecretStr) and value.get_secret_value():
                    text = value.get_secret_value()
                    yield text
                    password = _url_password(text)
                    if password:
                        yield password


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


def _url_password(text: str) -> str | None:
    if "://" not in text:
        return None
    try:
        password = urlsplit(text).password
    except ValueError:
        return None
    return unquote(password) if password else None
