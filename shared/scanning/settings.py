"""scan_scheduler's configuration (SPEC §6): five pydantic-settings models, loaded at import by
the one loader (shared.settings).

    ScanSettings.load() -> ScanSettings(rpc, auth, exchange, scanner, http)

- `rpc` (RpcSettings): DATABASE_URL, or SUPABASE_URL + SUPABASE_SERVICE_ROLE_KEY.
- `auth` (AuthSettings): who may call the tick — the service-role key (and/or SUPABASE_JWT_SECRET,
  which verifies a legacy service_role JWT); user tokens are refused by the tick.
- `exchange` (ReadonlyExchangeSettings): BITVAVO_REST_URL and the optional read-only key pair.
  It has no field for the trade key (G3): the scanner cannot be configured with one.
- `scanner` (ScannerSettings, below): the oracle, the OpenAI connection, the tick's timing.
- `http` (HttpSettings): the edge's read deadline (shared.api.edge).

Key separation (G3) at start-up: BITVAVO_TRADE_API_KEY or BITVAVO_TRADE_API_SECRET set (non-empty,
in any letter case, as pydantic-settings would read it) in the scanner's environment refuses the
start, naming the variable. The trade key belongs in trading_execute's environment only; a scanner
that merely carries it would leak it to everything the scanner runs or logs.

All their problems are reported together in one ConfigurationError that names variables, never
values. Cross-field rules that span the models (the service key the auto-execute path needs) are
checked last.

Timing, one rule: a tick claims no batch after TICK_TIME_BUDGET_SECONDS; a claimed batch is bounded
by its I/O timeouts (a market-data request per market it has not read yet, at most one model call
of OPENAI_TIMEOUT_SECONDS per snapshot with no retry, a few RPCs), and a model call starts only
while its timeout still fits before the tick's hard deadline (FUNCTION_TIMEOUT_SECONDS minus a
reserve for the release and the answer; a call that does not fit gives its jobs back unrun). After
every batch is released, the auto-execute dispatch (shared.scanning.dispatch) starts an execute
request (EXECUTE_TIMEOUT_SECONDS) or waits out a 429 only while that still fits before the same
deadline. So a tick ends — every batch released — before the function's own timeout, and every
lease outlives it (TICK_TIME_BUDGET_SECONDS < JOB_LEASE_SECONDS; the heartbeat extends leases while
jobs run). FUNCTION_TIMEOUT_SECONDS is at most 540 s: run_maintenance settles a shared model bill
that no tick settled 10 minutes after its call, when its tick is certainly over.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import ClassVar, Literal, Self

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.api.edge import HttpSettings
from shared.auth import AuthSettings
from shared.exchange.readonly import CANDLE_INTERVALS
from shared.exchange.settings import ReadonlyExchangeSettings
from shared.rpc.settings import RpcSettings
from shared.settings import FunctionSettings

# gpt_model_prices.model's check: a model name we can reserve budget for.
_MODEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/-]{0,99}")
_PLACEHOLDERS = frozenset({"changeme", "changethis", "xxx", "your-api-key", "sk-..."})

# The reservation lifetime (private.gpt_reservation_lifetime, 15 min): a model call must end well
# before run_maintenance may release its reservation as stale.
RESERVATION_LIFETIME_SECONDS = 900
# What a tick keeps back at its end for release_job_locks and the response.
RELEASE_RESERVE_SECONDS = 10.0
# A generous allowance for a job's market-data requests and RPCs in the timing check below.
JOB_IO_ALLOWANCE_SECONDS = 30.0


# G3: the variables trading_execute reads its trade key from; never present in the scanner's
# environment.
TRADE_CREDENTIALS = ("BITVAVO_TRADE_API_KEY", "BITVAVO_TRADE_API_SECRET")


def trade_credentials_in(environ: Mapping[str, str]) -> list[str]:
    """The trade-credential variables set to a non-empty value in `environ`, spelled as found
    (names only: the values are never read into a message)."""
    return sorted(name for name, value in environ.items()
                  if name.upper() in TRADE_CREDENTIALS and value != "")


def _http_url(value: str | None, name: str) -> str | None:
    if value is None or not value.strip():
        return None
    value = value.strip().rstrip("/")
    if not value.startswith(("https://", "http://")):
        raise ValueError(f"{name} must be an http(s) URL")
    return value


class ScannerSettings(BaseSettings):
    """scan_scheduler's own settings. Names are the environment variables, upper-cased."""

    model_config = SettingsConfigDict(
        extra="ignore", frozen=True, case_sensitive=False, hide_input_in_errors=True
    )

    # -- the oracle ------------------------------------------------------------------------------
    oracle: Literal["rules", "openai"] = "rules"
    openai_api_key: SecretStr | None = None
    openai_base_url: str = "https://api.openai.com/v1"
    openai_model: str = "gpt-4o-mini"
    # Per request; the SDK never retries (max_retries=0). Well below the job lease and the 15-minute
    # reservation lifetime.
    openai_timeout_seconds: float = Field(default=30.0, gt=0, le=300)
    # Sent as max_completion_tokens and reserved as the completion's worst case (G7).
    openai_max_completion_tokens: int = Field(default=500, ge=16, le=32768)

    # -- auto-execute ----------------------------------------------------------------------------
    execute_function_url: str | None = None
    execute_timeout_seconds: float = Field(default=20.0, gt=0, le=120)
    # Execute requests in flight at once, and how long in all a tick may wait for the trade key's
    # order budget to have room again after 429s (shared.scanning.dispatch).
    dispatch_concurrency: int = Field(default=4, ge=1, le=32)
    dispatch_max_wait_seconds: float = Field(default=30.0, ge=0, le=300)
    trading_mode: Literal["paper", "live"] = "paper"

    # -- the tick --------------------------------------------------------------------------------
    # The deployed schedule's (invoke-scan-scheduler: two ticks a minute, 150 s timeout).
    tick_time_budget_seconds: float = Field(default=45.0, gt=0, le=3000)
    function_timeout_seconds: float = Field(default=150.0, gt=0, le=540)
    job_lease_seconds: int = Field(default=300, ge=10, le=3600)  # claim_due_scan_jobs' bounds
    heartbeat_seconds: float | None = Field(default=None, gt=0)  # default: a third of the lease
    scan_concurrency: int = Field(default=4, ge=1, le=32)
    # Jobs claimed, read, proposed and released per database call (the batch RPCs take ≤ 1000).
    scan_batch_size: int = Field(default=1000, ge=1, le=1000)
    # The largest max_jobs a body may ask (no max_jobs: the tick drains what is due).
    max_jobs_limit: int = Field(default=1_000_000, ge=1, le=10_000_000)
    proposal_ttl_seconds: int = Field(default=900, ge=60, le=86400)

    # -- market data and the rules oracle ---------------------------------------------------------
    candle_interval: str = "1h"
    candle_limit: int = Field(default=100, ge=30, le=1440)
    # Past this share of candles without trades (filled forward) a snapshot is too thin: no signal.
    candle_max_gap_pct: Decimal = Field(default=Decimal(20), ge=0, le=100)
    rules_fast_ema: int = Field(default=12, ge=2, le=200)
    rules_slow_ema: int = Field(default=26, ge=3, le=400)
    rules_rsi_period: int = Field(default=14, ge=2, le=100)
    rules_min_trend_pct: Decimal = Field(default=Decimal("0.10"), ge=0, le=100)
    rules_rsi_overbought: Decimal = Field(default=Decimal(70), gt=0, le=100)
    rules_rsi_oversold: Decimal = Field(default=Decimal(30), ge=0, lt=100)

    @field_validator("openai_api_key", mode="after")
    @classmethod
    def _real_key(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or not value.get_secret_value().strip():
            return None
        text = value.get_secret_value()
        if any(c.isspace() for c in text):
            raise ValueError("must not contain whitespace")
        if text.lower() in _PLACEHOLDERS:
            raise ValueError("is a placeholder, not a key")
        return value

    @field_validator("openai_base_url", mode="after")
    @classmethod
    def _base_url(cls, value: str) -> str:
        url = _http_url(value, "OPENAI_BASE_URL")
        if url is None:
            raise ValueError("OPENAI_BASE_URL must be an http(s) URL")
        return url

    @field_validator("execute_function_url", mode="after")
    @classmethod
    def _execute_url(cls, value: str | None) -> str | None:
        return _http_url(value, "EXECUTE_FUNCTION_URL")

    @field_validator("openai_model", mode="after")
    @classmethod
    def _model(cls, value: str) -> str:
        if not _MODEL.fullmatch(value):
            raise ValueError("must be a model name like gpt-4o-mini (a gpt_model_prices.model)")
        return value

    @field_validator("candle_interval", mode="after")
    @classmethod
    def _interval(cls, value: str) -> str:
        if value not in CANDLE_INTERVALS:
            raise ValueError(f"must be one of {', '.join(sorted(CANDLE_INTERVALS))}")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.oracle == "openai" and self.openai_api_key is None:
            raise ValueError("OPENAI_API_KEY is not set: ORACLE=openai needs it")
        if self.rules_fast_ema >= self.rules_slow_ema:
            raise ValueError("RULES_FAST_EMA must be shorter than RULES_SLOW_EMA")
        if self.candle_limit < self.rules_slow_ema + self.rules_rsi_period:
            raise ValueError("CANDLE_LIMIT must cover RULES_SLOW_EMA + RULES_RSI_PERIOD candles")
        if self.rules_rsi_oversold >= self.rules_rsi_overbought:
            raise ValueError("RULES_RSI_OVERSOLD must be below RULES_RSI_OVERBOUGHT")
        if self.heartbeat > self.job_lease_seconds / 2:
            raise ValueError("HEARTBEAT_SECONDS must be at most half of JOB_LEASE_SECONDS, so a "
                             "missed heartbeat does not lose the lease")
        if self.tick_time_budget_seconds >= self.job_lease_seconds:
            raise ValueError("TICK_TIME_BUDGET_SECONDS must be below JOB_LEASE_SECONDS")
        if self.oracle == "openai" and self.openai_timeout_seconds >= min(
                self.job_lease_seconds, RESERVATION_LIFETIME_SECONDS / 3):
            raise ValueError("OPENAI_TIMEOUT_SECONDS must be below JOB_LEASE_SECONDS and a third "
                             "of the 15-minute GPT reservation lifetime")
        model_call = self.openai_timeout_seconds if self.oracle == "openai" else 0.0
        worst_tick = (self.tick_time_budget_seconds + JOB_IO_ALLOWANCE_SECONDS + model_call
                      + self.execute_timeout_seconds + RELEASE_RESERVE_SECONDS)
        if worst_tick > self.function_timeout_seconds:
            raise ValueError(
                "FUNCTION_TIMEOUT_SECONDS is too short for TICK_TIME_BUDGET_SECONDS plus one batch "
                f"(market data and RPCs {JOB_IO_ALLOWANCE_SECONDS:.0f} s, OPENAI_TIMEOUT_SECONDS "
                f"when ORACLE=openai, EXECUTE_TIMEOUT_SECONDS) plus "
                f"{RELEASE_RESERVE_SECONDS:.0f} s for the release: it needs at least "
                f"{worst_tick:.0f} s")
        return self

    @property
    def heartbeat(self) -> float:
        """Seconds between heartbeats of the running jobs' leases."""
        return self.heartbeat_seconds or self.job_lease_seconds / 3


@dataclass(frozen=True)
class ScanSettings(FunctionSettings):
    """Everything scan_scheduler reads from its environment, by concern."""

    function: ClassVar[str] = "scan_scheduler"

    rpc: RpcSettings
    auth: AuthSettings
    exchange: ReadonlyExchangeSettings
    scanner: ScannerSettings
    http: HttpSettings = field(default_factory=HttpSettings)

    @classmethod
    def refuse(cls, environ: Mapping[str, str]) -> list[str]:
        return [f"ScanSettings: invalid configuration\n  {name} is set: the trade key belongs in "
                "trading_execute's environment only (G3, key separation); remove it from "
                "scan_scheduler's" for name in trade_credentials_in(environ)]

    def problems(self) -> list[str]:
        problems = []
        if self.scanner.execute_function_url and self.service_key is None:
            problems.append(
                "ScanSettings: invalid configuration\n  SUPABASE_SERVICE_ROLE_KEY is not set: "
                "EXECUTE_FUNCTION_URL needs it (the scanner authenticates to trading_execute "
                "with the service-role key)")
        if self.auth.supabase_service_role_key is None and self.auth.supabase_jwt_secret is None:
            problems.append(
                "ScanSettings: invalid configuration\n  SUPABASE_SERVICE_ROLE_KEY is not set: the "
                "tick accepts only the service role (set it, or SUPABASE_JWT_SECRET for a legacy "
                "service_role JWT)")
        return problems

    @property
    def service_key(self) -> SecretStr | None:
        return self.auth.supabase_service_role_key or self.rpc.supabase_service_role_key
