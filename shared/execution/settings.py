"""trading_execute's configuration (SPEC §6): five models, loaded and checked together at start-up
by the one loader (shared.settings).

    settings = load_execute_settings()     # ConfigurationError naming every bad variable

    RpcSettings            DATABASE_URL | SUPABASE_URL + SUPABASE_SERVICE_ROLE_KEY (shared.rpc)
    AuthSettings           SUPABASE_JWT_SECRET / SUPABASE_JWKS_URL / SUPABASE_JWT_ISSUER /
                           SUPABASE_SERVICE_ROLE_KEY (shared.auth)
    TradeExchangeSettings  BITVAVO_REST_URL, BITVAVO_TRADE_API_KEY / _SECRET, BITVAVO_OPERATOR_ID
                           (shared.exchange.settings)
    ExecutionSettings      TRADING_MODE and this function's own knobs (below)
    HttpSettings           REQUEST_READ_TIMEOUT_SECONDS (shared.api.edge)

`TRADING_MODE=live` without BITVAVO_TRADE_API_KEY, BITVAVO_TRADE_API_SECRET or BITVAVO_OPERATOR_ID
refuses to start, naming the missing variables; paper mode needs none of them. No message ever
shows a value: every model hides its input in errors, and secrets are SecretStr.

The timing knobs and why they relate (an order is never sent when more than MAX_CLAIM_AGE has
passed since the claim):

    MAX_CLAIM_AGE_SECONDS (5)        an order is sent only within this many seconds (monotonic)
                                     of the claim RPC's answer; later → `failed`, never sent
    BITVAVO_ACCESS_WINDOW_MS (10000) Bitvavo refuses a signed request older than this (304)
    RECONCILE_MARGIN_SECONDS (120)   covers how late the exchange may still execute a request it
                                     received inside its window (Bitvavo does not say; the
                                     sandbox's latency fault goes up to 120 s), the claim RPC's own
                                     latency, the server-clock error and the order-lookup lag

    not_found_failed_after = MAX_CLAIM_AGE + access window + margin   (135 s with the defaults)

The send time is not recorded (that would be a third database round trip per order); it is bounded
instead: an order leaves no later than `claimed_at + MAX_CLAIM_AGE` (plus the claim answer's way
back, inside the margin), and Bitvavo accepts it only inside its access window after that. So
/reconcile calls an order `failed` (certainly not placed) only when GET /order by clientOrderId, the
market's orders and fills around the claim (GET /orders, GET /trades) all come back without it AND
its claim is older than `not_found_failed_after`, judged by the database's clock; until then it
stays `unknown` and counts toward cooldown, anti-flip and limits. If the exchange executes it later
all the same, the sweep (RECONCILE_SWEEP_WINDOW_SECONDS, below) records what happened and the
discrepancy, and `oracle verify` fails until an operator has looked at it.

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
from dataclasses import dataclass, field
from decimal import Decimal
from typing import ClassVar, Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.api.edge import HttpSettings
from shared.auth import AuthSettings
from shared.exchange.settings import TradeExchangeSettings
from shared.rpc.settings import RpcSettings
from shared.settings import FunctionSettings

TradingMode = Literal["paper", "live"]


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
    reconcile_margin_seconds: float = Field(default=120.0, ge=0, le=3600)
    # /reconcile looks at open executions claimed at least this long ago (in-flight requests of
    # the last seconds are left to themselves).
    reconcile_min_age_seconds: int = Field(default=10, ge=0, le=86_400)
    reconcile_batch_size: int = Field(default=50, ge=1, le=500)
    # A market order still open this long after its claim is stuck: /reconcile cancels the rest.
    reconcile_cancel_open_after_seconds: int = Field(default=120, ge=1, le=86_400)
    # The orphan sweep: every order and fill of the account created this far back, on every market
    # of market_allowlist (and of the open executions), is matched to an execution by clientOrderId.
    reconcile_sweep_window_seconds: int = Field(default=3600, ge=60, le=604_800)
    market_catalog_ttl_seconds: float = Field(default=300.0, gt=0, le=86_400)
    # An order is sent only on a market whose status (`trading`) was read this recently.
    market_status_ttl_seconds: float = Field(default=3.0, gt=0, le=60)
    # A live buy is sized so that amountQuote with this fee on top fits the free balance; paper
    # fills charge it (shared.exchange.funds).
    taker_fee_rate: Decimal = Field(default=Decimal("0.0025"), ge=0, lt=Decimal("0.05"))
    # How long a free balance read with GET /balance (weight 5) is trusted for a buy that does
    # not fit what is left of it (shared.exchange.funds); 0 reads again for every such buy.
    balance_cache_seconds: float = Field(default=10.0, ge=0, le=3600)
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
class ExecuteSettings(FunctionSettings):
    function: ClassVar[str] = "trading_execute"

    rpc: RpcSettings
    auth: AuthSettings
    exchange: TradeExchangeSettings
    execution: ExecutionSettings
    http: HttpSettings = field(default_factory=HttpSettings)

    @property
    def mode(self) -> TradingMode:
        return self.execution.trading_mode

    def problems(self) -> list[str]:
        if self.execution.trading_mode != "live":
            return []
        missing = [name for name, value in (
            ("BITVAVO_TRADE_API_KEY", self.exchange.bitvavo_trade_api_key),
            ("BITVAVO_TRADE_API_SECRET", self.exchange.bitvavo_trade_api_secret),
            ("BITVAVO_OPERATOR_ID", self.exchange.bitvavo_operator_id)) if value is None]
        if not missing:
            return []
        return [f"TRADING_MODE=live needs {', '.join(missing)} (not set); paper mode needs none "
                "of them"]


def load_execute_settings() -> ExecuteSettings:
    """Every model from the environment; one ConfigurationError listing every problem, each
    naming its variable and never its value. Registers every secret with the log redaction."""
    return ExecuteSettings.load()
