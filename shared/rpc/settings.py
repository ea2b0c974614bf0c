"""Which road the RPCs take, read from the environment (SPEC §6), and `connect_rpc`.

    DATABASE_URL                                  → DirectRpc (psycopg pool; wins when both are set)
    SUPABASE_URL + SUPABASE_SERVICE_ROLE_KEY      → PostgrestRpc (supabase-py)

Neither → a start-up error that names the variables. Secrets are SecretStr and validation errors
hide the input, so neither a repr nor an error message ever shows a value. Tuning (all optional):
RPC_TIMEOUT_SECONDS (statement timeout / HTTP read timeout), RPC_CONNECT_TIMEOUT_SECONDS,
RPC_POOL_MIN_SIZE, RPC_POOL_MAX_SIZE, RPC_POOL_TIMEOUT_SECONDS (wait for a free connection),
RPC_POOL_MAX_IDLE_SECONDS, RPC_POOL_MAX_LIFETIME_SECONDS.

For hosted Supabase through its pooler use the transaction-mode URL (port 6543), e.g.
`postgresql://postgres.<ref>:<password>@aws-0-<region>.pooler.supabase.com:6543/postgres`.
"""

from __future__ import annotations

from typing import Literal, Self

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.rpc import direct, postgrest
from shared.rpc.port import RpcPort

_PLACEHOLDERS = frozenset({"changeme", "changethis", "xxx", "your-service-role-key"})


class RpcSettings(BaseSettings):
    model_config = SettingsConfigDict(
        extra="ignore", frozen=True, case_sensitive=False, hide_input_in_errors=True
    )

    database_url: SecretStr | None = None
    supabase_url: str | None = None
    supabase_service_role_key: SecretStr | None = None

    rpc_timeout_seconds: float = Field(default=direct.DEFAULT_STATEMENT_TIMEOUT, gt=0, le=300)
    rpc_connect_timeout_seconds: float = Field(default=direct.DEFAULT_CONNECT_TIMEOUT, gt=0,
                                               le=60)
    rpc_pool_min_size: int = Field(default=direct.DEFAULT_MIN_SIZE, ge=0, le=100)
    rpc_pool_max_size: int = Field(default=direct.DEFAULT_MAX_SIZE, ge=1, le=100)
    rpc_pool_timeout_seconds: float = Field(default=direct.DEFAULT_POOL_TIMEOUT, gt=0, le=120)
    rpc_pool_max_idle_seconds: float = Field(default=direct.DEFAULT_MAX_IDLE, gt=0)
    rpc_pool_max_lifetime_seconds: float = Field(default=direct.DEFAULT_MAX_LIFETIME, gt=0)

    @field_validator("database_url", "supabase_service_role_key", mode="after")
    @classmethod
    def _blank_is_unset(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or value.get_secret_value().strip() == "":
            return None
        return value

    @field_validator("database_url", mode="after")
    @classmethod
    def _postgres_url(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not value.get_secret_value().startswith(
            ("postgresql://", "postgres://")
        ):
            raise ValueError("DATABASE_URL must be a postgresql:// URL")
        return value

    @field_validator("supabase_url", mode="after")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is None or value.strip() == "":
            return None
        value = value.strip().rstrip("/")
        if not value.startswith(("https://", "http://")):
            raise ValueError("SUPABASE_URL must be an http(s) URL")
        return value

    @field_validator("supabase_service_role_key", mode="after")
    @classmethod
    def _real_key(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            text = value.get_secret_value()
            if any(c.isspace() for c in text):
                raise ValueError("SUPABASE_SERVICE_ROLE_KEY must not contain whitespace")
            if text.lower() in _PLACEHOLDERS:
                raise ValueError("SUPABASE_SERVICE_ROLE_KEY is a placeholder, not a key")
        return value

    @model_validator(mode="after")
    def _one_road(self) -> Self:
        if self.rpc_pool_max_size < self.rpc_pool_min_size:
            raise ValueError("RPC_POOL_MAX_SIZE must be at least RPC_POOL_MIN_SIZE")
        if self.database_url is not None:
            return self
        has_url = self.supabase_url is not None
        has_key = self.supabase_service_role_key is not None
        if has_url and has_key:
            return self
        if has_url or has_key:
            missing = "SUPABASE_SERVICE_ROLE_KEY" if has_url else "SUPABASE_URL"
            raise ValueError(f"{missing} is not set: SUPABASE_URL and SUPABASE_SERVICE_ROLE_KEY "
                             "go together (or set DATABASE_URL)")
        raise ValueError("no database configured: set DATABASE_URL (direct connection) or "
                         "SUPABASE_URL and SUPABASE_SERVICE_ROLE_KEY (PostgREST)")

    @property
    def adapter(self) -> Literal["direct", "postgrest"]:
        return "direct" if self.database_url is not None else "postgrest"


def connect_rpc(settings: RpcSettings) -> RpcPort:
    """The configured adapter: DirectRpc when DATABASE_URL is set, else PostgrestRpc."""
    if settings.database_url is not None:
        return direct.DirectRpc(
            settings.database_url.get_secret_value(),
            min_size=settings.rpc_pool_min_size,
            max_size=settings.rpc_pool_max_size,
            connect_timeout=settings.rpc_connect_timeout_seconds,
            pool_timeout=settings.rpc_pool_timeout_seconds,
            statement_timeout=settings.rpc_timeout_seconds,
            max_idle=settings.rpc_pool_max_idle_seconds,
            max_lifetime=settings.rpc_pool_max_lifetime_seconds,
        )
    if settings.supabase_url is None or settings.supabase_service_role_key is None:
        raise ValueError("no database configured")  # unreachable: RpcSettings refuses this
    return postgrest.PostgrestRpc(
        settings.supabase_url,
        settings.supabase_service_role_key.get_secret_value(),
        timeout=settings.rpc_timeout_seconds,
        connect_timeout=settings.rpc_connect_timeout_seconds,
    )
