"""Exchange credentials and endpoint, read from the environment names SPEC §6 gives.

One model per role (G3): the scanner loads `ReadonlyExchangeSettings`, which has no field for the
trade key; `trading_execute` loads `TradeExchangeSettings`. Secrets are SecretStr, so neither a
repr, a log line nor a validation error ever shows them. Trade credentials are optional here
because paper mode runs without them; `BitvavoTrade.from_settings` refuses when they are missing.
"""

from __future__ import annotations

from typing import Self

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.exchange.errors import KeySeparationError

DEFAULT_REST_URL = "https://api.bitvavo.com/v2"

_PLACEHOLDERS = frozenset({"changeme", "changethis", "xxx", "your-api-key", "your-api-secret"})


def _rest_url(value: str) -> str:
    value = value.strip().rstrip("/")
    if not value.startswith(("https://", "http://")):
        raise ValueError("BITVAVO_REST_URL must be an http(s) URL")
    return value


def _credential(value: SecretStr | None) -> SecretStr | None:
    if value is None:
        return None
    text = value.get_secret_value()
    if text == "":
        return None  # an empty env var means "not configured"
    if text != text.strip() or any(c.isspace() for c in text):
        raise ValueError("must not contain whitespace")
    if text.lower() in _PLACEHOLDERS:
        raise ValueError("is a placeholder, not a credential")
    return value


class _ExchangeSettings(BaseSettings):
    model_config = SettingsConfigDict(
        extra="ignore", frozen=True, case_sensitive=False, hide_input_in_errors=True
    )

    bitvavo_rest_url: str = DEFAULT_REST_URL

    _check_url = field_validator("bitvavo_rest_url")(_rest_url)


class ReadonlyExchangeSettings(_ExchangeSettings):
    """scan_scheduler: market data (no key needed) and balance (read-only key)."""

    bitvavo_readonly_api_key: SecretStr | None = None
    bitvavo_readonly_api_secret: SecretStr | None = None

    _check_credentials = field_validator("bitvavo_readonly_api_key", "bitvavo_readonly_api_secret")(
        _credential
    )

    @model_validator(mode="after")
    def _key_and_secret_together(self) -> Self:
        if (self.bitvavo_readonly_api_key is None) != (self.bitvavo_readonly_api_secret is None):
            raise ValueError(
                "set both BITVAVO_READONLY_API_KEY and BITVAVO_READONLY_API_SECRET, or neither"
            )
        return self


class TradeExchangeSettings(_ExchangeSettings):
    """trading_execute: the trade key. BITVAVO_READONLY_API_KEY is read only to refuse a trade
    key that is the read-only key (G3)."""

    bitvavo_trade_api_key: SecretStr | None = None
    bitvavo_trade_api_secret: SecretStr | None = None
    bitvavo_operator_id: int | None = Field(default=None, ge=0, le=2**63 - 1)
    bitvavo_readonly_api_key: SecretStr | None = None

    _check_credentials = field_validator(
        "bitvavo_trade_api_key", "bitvavo_trade_api_secret", "bitvavo_readonly_api_key"
    )(_credential)

    @model_validator(mode="after")
    def _trade_key_is_not_the_readonly_key(self) -> Self:
        # G3, enforced here at start-up and again in BitvavoTrade.__init__.
        trade, readonly = self.bitvavo_trade_api_key, self.bitvavo_readonly_api_key
        if trade is not None and readonly is not None:
            if trade.get_secret_value() == readonly.get_secret_value():
                raise KeySeparationError(
                    "BITVAVO_TRADE_API_KEY equals BITVAVO_READONLY_API_KEY: "
                    "the trade client needs its own key"
                )
        return self
