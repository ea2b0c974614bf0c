"""The `openai` oracle (ORACLE=openai): one chat completion per scan, within the user's GPT budget.

    reserve (worst case) → one model call (no retry) → settle (reported usage) → answer

G7 is kept by three numbers that make the reservation an upper bound on the bill:
- the prompt bound (`prompt_token_bound`): UTF-8 bytes of everything sent as prompt — every
  message's role and content, and the response schema — plus fixed overheads. A byte-level BPE
  tokenizer (OpenAI's cl100k/o200k, and any byte-fallback SentencePiece of a compatible server)
  splits a text into tokens that each cover at least one byte, so a text never has more tokens than
  bytes; that holds for any encoding of the text, counted by any such tokenizer. The chat format
  adds a few special tokens per message and for the reply (3 + 3 in OpenAI's own counting; we
  allow 8 per message and 8 for the reply), and structured output renders the JSON schema into
  the prompt (its bytes are counted, plus SCHEMA_WRAPPER_TOKENS for the provider's wrapping text,
  which is not published). The bound is typically 3-4× the real count: the price of certainty.
- `max_completion_tokens` = the completion tokens reserved (OPENAI_MAX_COMPLETION_TOKENS): the
  provider cannot bill more output than that (reasoning tokens included).
- `max_retries=0`: the SDK's retry would be a second billed call on one reservation. One call, one
  request; its timeout (OPENAI_TIMEOUT_SECONDS, ≤ 300 s) is far below the 15-minute reservation
  lifetime and below the job lease, and the call is not started unless it fits before the tick's
  hard deadline.

The reservation id travels as the `X-Client-Request-Id` header, so each provider-side request can
be matched to its gpt_usage_log row (and a test's fake server checks that a reservation exists for
every request it sees). What is settled when the call goes wrong is listed in budget.py.

The answer is structured output (a strict JSON schema) validated by `ModelSignal`; a malformed
answer, a refusal or an answer cut off by the completion cap is `Unusable` — no proposal, usage
settled all the same.
"""

from __future__ import annotations

import json
import time
from decimal import Decimal
from typing import Any, Literal, cast

import httpx
import openai
from openai import OpenAI
from openai.types.chat import ChatCompletionMessageParam
from openai.types.shared_params import ResponseFormatJSONSchema
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from shared.scanning.budget import NO_TOKENS, Denial, GptBudget, Reservation, Usage
from shared.scanning.oracle import (
    BudgetDenied,
    NoSignal,
    OracleAnswer,
    OracleRequest,
    OracleUnavailable,
    Signal,
    Unusable,
)
from shared.scanning.rules import ema, rsi
from shared.scanning.settings import RESERVATION_LIFETIME_SECONDS, ScannerSettings

PER_MESSAGE_TOKENS = 8
REPLY_PRIMING_TOKENS = 8
SCHEMA_WRAPPER_TOKENS = 256
PROMPT_CANDLES = 48
# A call must end this long before its reservation could be released as stale.
RESERVATION_MARGIN_SECONDS = 120.0

SIGNAL_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "action": {"type": "string", "enum": ["buy", "sell", "hold"]},
        "confidence": {"type": "number",
                       "description": "How sure you are, from 0 (not at all) to 1 (certain)."},
        "rationale": {"type": "string",
                      "description": "At most three sentences a person can check against the "
                                     "data."},
    },
    "required": ["action", "confidence", "rationale"],
    "additionalProperties": False,
}
RESPONSE_FORMAT: dict[str, Any] = {
    "type": "json_schema",
    "json_schema": {"name": "trade_signal", "strict": True, "schema": SIGNAL_SCHEMA},
}

SYSTEM_PROMPT = (
    "You are a cautious crypto market analyst for a trading assistant. You receive recent candles "
    "and indicators for one Bitvavo market. Answer with one action: buy, sell or hold; a "
    "confidence between 0 and 1; and a rationale of at most three sentences that a person can "
    "check against the data. Recommend buy or sell only when the data clearly supports it, "
    "otherwise hold. The order size is fixed by the user's limits; do not discuss it."
)


class ModelSignal(BaseModel):
    """The model's answer, exactly as SIGNAL_SCHEMA describes it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    action: Literal["buy", "sell", "hold"]
    confidence: Decimal = Field(ge=0, le=1)
    rationale: str = Field(min_length=1, max_length=2000)

    @field_validator("rationale")
    @classmethod
    def _printable(cls, text: str) -> str:
        """Model text is untrusted: control characters (NUL above all, which PostgreSQL text
        cannot hold) and unpaired surrogates are dropped here, so a strange answer still becomes
        a proposal instead of failing the job and spending the budget again on its retry."""
        kept = "".join(c for c in text if _printable(c))
        if not kept.strip():
            raise ValueError("the rationale has no printable text")
        return kept


def _printable(char: str) -> bool:
    return char in "\n\t" or (char >= " " and char != "\x7f" and not "\ud800" <= char <= "\udfff")


def build_messages(request: OracleRequest, settings: ScannerSettings) -> list[dict[str, str]]:
    snapshot = request.snapshot
    closes = snapshot.closes
    lines = [
        f"Market: {snapshot.market}",
        f"Last price: {snapshot.price}",
        f"Candle interval: {snapshot.interval}",
    ]
    if len(closes) >= max(settings.rules_slow_ema, settings.rules_rsi_period + 1):
        lines.append(
            f"EMA{settings.rules_fast_ema}: {ema(closes, settings.rules_fast_ema):.6g}; "
            f"EMA{settings.rules_slow_ema}: {ema(closes, settings.rules_slow_ema):.6g}; "
            f"RSI{settings.rules_rsi_period}: {rsi(closes, settings.rules_rsi_period):.4g}")
    lines.append("Candles, oldest first (time UTC, open, high, low, close, volume):")
    for c in snapshot.candles[-PROMPT_CANDLES:]:
        lines.append(f"{c.timestamp:%Y-%m-%dT%H:%MZ},{c.open},{c.high},{c.low},{c.close},"
                     f"{c.volume}")
    return [{"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": "\n".join(lines)}]


def prompt_token_bound(messages: list[dict[str, str]],
                       response_format: dict[str, Any] = RESPONSE_FORMAT) -> int:
    """An upper bound on the prompt tokens any byte-level tokenizer bills for this request (see the
    module docstring): bytes ≥ tokens for every text, plus the chat format's special tokens."""
    total = REPLY_PRIMING_TOKENS + SCHEMA_WRAPPER_TOKENS
    total += len(json.dumps(response_format, ensure_ascii=False).encode("utf-8"))
    for message in messages:
        total += PER_MESSAGE_TOKENS
        total += sum(len(str(value).encode("utf-8")) for value in message.values())
    return total


def reported_usage(completion: Any) -> Usage | None:
    """The usage a completion reports, or None when it reports none (or nonsense)."""
    usage = getattr(completion, "usage", None)
    if usage is None:
        return None
    try:
        details = getattr(usage, "prompt_tokens_details", None)
        cached = getattr(details, "cached_tokens", None) or 0
        return Usage(int(usage.prompt_tokens), int(cached), int(usage.completion_tokens))
    except (TypeError, ValueError):
        return None


def _usage_in_error(exc: openai.APIStatusError) -> Usage | None:
    try:
        body = exc.response.json()
    except ValueError:
        return None
    if not isinstance(body, dict) or not isinstance(body.get("usage"), dict):
        return None
    usage = body["usage"]
    try:
        cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0
        return Usage(int(usage["prompt_tokens"]), int(cached), int(usage["completion_tokens"]))
    except (KeyError, TypeError, ValueError):
        return None


def _never_sent(exc: openai.APIConnectionError) -> bool:
    """True when the request certainly did not reach the provider (nothing can be billed)."""
    return isinstance(exc.__cause__, httpx.ConnectError | httpx.ConnectTimeout | httpx.PoolTimeout)


class OpenAIOracle:
    source: Literal["openai"] = "openai"

    def __init__(self, settings: ScannerSettings, budget: GptBudget, *,
                 http_client: httpx.Client | None = None) -> None:
        if settings.openai_api_key is None:
            raise ValueError("OPENAI_API_KEY is not set: ORACLE=openai needs it")
        self.settings = settings
        self.model: str = settings.openai_model
        self.budget = budget
        self.client = OpenAI(
            api_key=settings.openai_api_key.get_secret_value(),
            base_url=settings.openai_base_url,
            timeout=settings.openai_timeout_seconds,
            max_retries=0,  # a retry would be a second billed call on one reservation
            http_client=http_client,
        )

    def close(self) -> None:
        self.client.close()

    def decide(self, request: OracleRequest) -> OracleAnswer:
        log = request.log
        timeout = self.settings.openai_timeout_seconds
        if request.time_left() < timeout:
            raise OracleUnavailable("not enough time left in this tick for a model call; the job "
                                    "runs again after its backoff")
        messages = build_messages(request, self.settings)
        max_prompt = prompt_token_bound(messages)
        max_completion = self.settings.openai_max_completion_tokens

        with log.step("reserve", model=self.model, max_prompt_tokens=max_prompt,
                      max_completion_tokens=max_completion) as step:
            reservation = self.budget.reserve(request.user_id, self.model, max_prompt,
                                              max_completion, request.job_id)
            if isinstance(reservation, Denial):
                step.set("denied", reason=reservation.reason,
                         worst_case_usd=reservation.worst_case_usd,
                         spent_hour_usd=reservation.spent_hour_usd,
                         spent_day_usd=reservation.spent_day_usd,
                         hourly_limit_usd=reservation.hourly_limit_usd,
                         daily_limit_usd=reservation.daily_limit_usd)
                return BudgetDenied(reservation.reason)
            step.set("reserved", reservation_id=reservation.id,
                     reserved_usd=reservation.reserved_usd, expires_at=reservation.expires_at)

        age = time.monotonic() - reservation.reserved_at
        if age + timeout > RESERVATION_LIFETIME_SECONDS - RESERVATION_MARGIN_SECONDS:
            self._settle(request, reservation, NO_TOKENS, None, "not_called")
            raise OracleUnavailable("the reservation is too old to cover a model call")

        # How the call ended decides what is settled (budget.py): `settle` is the usage to
        # record, or None to leave the reservation to expire; `failure` ends the job.
        completion: Any = None
        settle: Usage | None = None
        request_id: str | None = None
        failure: OracleUnavailable | None = None
        unusable: Unusable | None = None
        with log.step("model_call", model=self.model, reservation_id=reservation.id) as step:
            try:
                completion = self.client.chat.completions.create(
                    model=self.model,
                    messages=cast("list[ChatCompletionMessageParam]", messages),
                    response_format=cast("ResponseFormatJSONSchema", RESPONSE_FORMAT),
                    max_completion_tokens=max_completion,
                    extra_headers={"X-Client-Request-Id": reservation.id},
                    timeout=timeout,
                )
            except openai.APIStatusError as exc:
                # An error answer is not billed, unless its body says it was.
                settle, request_id = _usage_in_error(exc) or NO_TOKENS, exc.request_id
                failure = OracleUnavailable(f"the model answered HTTP {exc.status_code}")
                step.set("http_error", severity="WARNING", http_status=exc.status_code,
                         request_id=request_id, billed=settle != NO_TOKENS)
            except openai.APIResponseValidationError as exc:
                # A 200 whose body is not a completion: billed, amount unknown → the worst case.
                settle = reservation.worst_case
                unusable = Unusable("malformed", "the answer was not a chat completion")
                step.set("invalid_response", severity="WARNING", http_status=exc.status_code)
            except openai.APIConnectionError as exc:
                cause = type(exc.__cause__).__name__
                if _never_sent(exc):
                    settle = NO_TOKENS
                    failure = OracleUnavailable("the model could not be reached")
                    step.set("not_sent", severity="WARNING", error_type=cause)
                else:
                    # Sent, no answer: unknown whether billed. Nothing is settled; the reservation
                    # keeps its worst case until run_maintenance releases it (budget.py).
                    failure = OracleUnavailable("no answer from the model; its reservation "
                                                "expires unsettled")
                    step.set("timeout" if isinstance(exc, openai.APITimeoutError) else "no_answer",
                             severity="WARNING", error_type=cause, settled=False)
            else:
                request_id = getattr(completion, "_request_id", None)
                reported = reported_usage(completion)
                # Billed but not reported: record the most it can have cost.
                settle = reported or reservation.worst_case
                step.set("answered", request_id=request_id, usage_reported=reported is not None)

        if settle is not None:
            self._settle(request, reservation, settle, request_id,
                         "answered" if failure is None and unusable is None else "failed_call")
        if failure is not None:
            raise failure
        if unusable is not None:
            return unusable
        return self._answer(completion)

    def _settle(self, request: OracleRequest, reservation: Reservation, usage: Usage,
                request_id: str | None, why: str) -> None:
        with request.log.step("settle", reservation_id=reservation.id, why=why,
                              prompt_tokens=usage.prompt_tokens,
                              cached_prompt_tokens=usage.cached_prompt_tokens,
                              completion_tokens=usage.completion_tokens) as step:
            answer = self.budget.settle(reservation, usage, request_id)
            step.set(str(answer.get("status")), cost_usd=answer.get("cost_usd"),
                     overshoot_usd=answer.get("overshoot_usd"))

    def _answer(self, completion: Any) -> OracleAnswer:
        try:
            choice = completion.choices[0]
            message = choice.message
        except (AttributeError, IndexError, TypeError):
            return Unusable("malformed", "the answer has no choice")
        refusal = getattr(message, "refusal", None)
        if refusal:
            return Unusable("refusal", str(refusal)[:300])
        if getattr(choice, "finish_reason", None) == "length":
            return Unusable("truncated", "the answer was cut off by max_completion_tokens")
        content = getattr(message, "content", None)
        if not isinstance(content, str) or not content.strip():
            return Unusable("malformed", "the answer is empty")
        try:
            signal = ModelSignal.model_validate_json(content)
        except ValidationError as exc:
            return Unusable("malformed", f"the answer does not fit the schema "
                                         f"({exc.error_count()} errors)")
        rationale = f"{self.model}: {signal.rationale}"
        if signal.action == "hold":
            return NoSignal(rationale)
        return Signal(side=signal.action, confidence=signal.confidence, rationale=rationale)
