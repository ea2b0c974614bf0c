"""trading_execute's configuration (SPEC §6): four models, loaded and checked together at start-up.

    settings = load_execute_settings()     # ConfigurationError naming every bad variable

    RpcSettings            DATABASE_URL | SUPABASE_URL + SUPABASE_SERVICE_ROLE_KEY (shared.rpc)
    AuthSettings           SUPABASE_JWT_SECRET / SUPABASE_JWKS_URL / SUPABASE_JWT_ISSUER /
                           SUPABASE_SERVICE_ROLE_KEY (shared.auth)
    TradeExchangeSettings  BITVAVO_REST_URL, BITVAVO_TRADE_API_KEY / _SECRET, BITVAVO_OPERATOR_ID
                           (shared.exchange.settings)
    ExecutionSettings      TRADING_MODE and this function's own knobs (below)

`TRADING_MODE=live` without BITVAVO_TRADE_API_KEY, BITVAVO_TRADE_API_SECRET or BITVAVO_OPERATOR_ID
refuses to start, naming the missing variables; paper mode needs none of them. No message ever
shows a value: every model hides its input in errors, and secrets are SecretStr.

The timing knobs and why they relate (DESIGN.md, "Never send an order when more than MAX_CLAIM_AGE
has passed"):

    MAX_CLAIM_AGE_SECONDS (5)        an order is sent only within this many seconds (monotonic)
                                     of the claim RPC's answer; later → `failed`, never sent
    BITVAVO_ACCESS_WINDOW_MS (10000) Bitvavo refuses a signed request older than this (304)
    RECONCILE_MARGIN_SECONDS (15)    covers the claim RPC's own latency, the server-clock error
                                     and the exchange's order-lookup lag

    not_found_failed_after = MAX_CLAIM_AGE + access window + margin   (30 s with the defaults)

An order can reach the exchange's book no later than `claimed_at + MAX_CLAIM_AGE + window` (the
last moment it may be signed, plus the window within which Bitvavo still accepts that signature).
So /reconcile calls an order the exchange does not know `failed` (certainly not placed) only once
its claim is older than `not_found_failed_after`; a slow process can never place an order after
the reconciler called it not placed.

The trade key's order budget, shared by every instance through the database
(private.take_order_budget, taken by the claim):

    ORDER_BUDGET (800)                   orders all instances together may send per rate-limit
                                         window; below Bitvavo's 1,000 weight a minute so that
                                         /reconcile's reads and the transport's margin keep room
    RATE_LIMIT_WINDOW_SECONDS (60)       the exchange's rate-limit window (Bitvavo: a minute)

    order_budget_window = RATE_LIMIT_WINDOW + ceil(MAX_CLAIM_AGE + access window) + 2   (77 s)

A slot counts from its claim for order_budget_window seconds: an order reaches the exchange at most
MAX_CLAIM_AGE + access window after its claim, and the budget counts in whole seconds, so any span
of the exchange's window — wherever the exchange starts its window — sees at most ORDER_BUDGET
orders.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal, TypeVar
from urllib.parse import unquote, urlsplit

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.auth import AuthSettings
from shared.exchange.settings import TradeExchangeSettings
from shared.rpc.settings import RpcSettings
from shared.settings import ConfigurationError, load_settings

TradingMode = Literal["paper", "live"]
S = TypeVar("S", bound=BaseSettings)


class ExecutionSettings(BaseSettings):
    """trading_execute's own knobs (all optional)."""

    model_config = SettingsConfigDict(
        extra="ignore", frozen=True, case_sensitive=False, hide_input_in_errors=True
    )

    trading_mode: TradingMode = "paper"
    max_claim_age_seconds: float = Field(default=5.0, gt=0, le=30)
    # The read timeout of POST /order and GET /order: no answer by then → outcome unknown.
    exchange_timeout_seconds: float = Field(default=10.0, gt=0, le=60)
    exchange_connect_timeout_seconds: float = Field(default=3.0, gt=0, le=30)
    bitvavo_access_window_ms: int = Field(default=10_000, ge=100, le=60_000)
    reconcile_margin_seconds: float = Field(default=15.0, ge=0, le=3600)
    # /reconcile looks at open executions claimed at least this long ago (in-flight requests of
    # the last seconds are left to themselves).
    reconcile_min_age_seconds: int = Field(default=10, ge=0, le=86_400)
    reconcile_batch_size: int = Field(default=50, ge=1, le=500)
    # A market order still open this long after its claim is stuck: /reconcile cancels the rest.
    reconcile_cancel_open_after_seconds: int = Field(default=120, ge=1, le=86_400)
    market_catalog_ttl_seconds: float = Field(default=300.0, gt=0, le=86_400)
    # The trade key's order budget (see the module docstring).
    order_budget: int = Field(default=800, ge=1, le=1_000_000)
    rate_limit_window_seconds: int = Field(default=60, ge=1, le=3600)

    @property
    def not_found_failed_after_seconds(self) -> int:
        """How old a claim must be before an order the exchange does not know is `failed`."""
        return math.ceil(self.max_claim_age_seconds + self.bitvavo_access_window_ms / 1000
                         + self.reconcile_margin_seconds)

    @property
    def order_budget_window_seconds(self) -> int:
        """How long a slot of the order budget counts (see the module docstring)."""
        return (self.rate_limit_window_seconds
                + math.ceil(self.max_claim_age_seconds + self.bitvavo_access_window_ms / 1000)
                + 2)


@dataclass(frozen=True)
class ExecuteSettings:
    rpc: RpcSettings
    auth: AuthSettings
    exchange: TradeExchangeSettings
    execution: ExecutionSettings

    @property
    def mode(self) -> TradingMode:
        return self.execution.trading_mode

    def secrets(self) -> Iterator[str]:
        """Every configured secret value (for steplog.register_secret), the DB password too."""
        values = (self.rpc.database_url, self.rpc.supabase_service_role_key,
                  self.auth.supabase_jwt_secret, self.auth.supabase_service_role_key,
                  self.exchange.bitvavo_trade_api_key, self.exchange.bitvavo_trade_api_secret,
                  self.exchange.bitvavo_readonly_api_key)
        for value in values:
            if value is not None and value.get_secret_value():
                yield value.get_secret_value()
        if self.rpc.database_url is not None:
            password = _url_password(self.rpc.database_url.get_secret_value())
            if password:
                yield password


def load_execute_settings() -> ExecuteSettings:
    """All four models from the environment; one ConfigurationError listing every problem, each
    naming its variable and never its value."""
    problems: list[str] = []

    def load(model: type[S]) -> S | None:
        try:
            return load_settings(model)
        except ConfigurationError as error:
            problems.append(str(error))
            return None

    rpc, auth = load(RpcSettings), load(AuthSettings)
    exchange, execution = load(TradeExchangeSettings), load(ExecutionSettings)
    if exchange is not None and execution is not None and execution.trading_mode == "live":
        missing = [name for name, value in (
            ("BITVAVO_TRADE_API_KEY", exchange.bitvavo_trade_api_key),
            ("BITVAVO_TRADE_API_SECRET", exchange.bitvavo_trade_api_secret),
            ("BITVAVO_OPERATOR_ID", exchange.bitvavo_operator_id)) if value is None]
        if missing:
            problems.append(f"TRADING_MODE=live needs {', '.join(missing)} (not set); "
                            "paper mode needs none of them")
    if problems:
        raise ConfigurationError("trading_execute cannot start:\n" + "\n".join(problems))
    assert rpc is not None and auth is not None and exchange is not None
    assert execution is not None
    return ExecuteSettings(rpc=rpc, auth=auth, exchange=exchange, execution=execution)


def _url_password(url: str) -> str | None:
    try:
        password = urlsplit(url).password
    except ValueError:
        return None
    return unquote(password) if password else None
