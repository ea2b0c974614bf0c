"""The `openai` oracle (ORACLE=openai): one chat completion per market snapshot, shared by every
user who scans it, each within their own GPT budget.

    every user reserves the call's worst case (answers.py, reserve_gpt_budgets) → one model call
      (no retry) → its bill recorded on the answer → split among the users (settle_oracle_answers)

The prompt holds nothing about a user — the market, its candles and indicators — so one answer
serves all of them; `key` names it by a digest of exactly what is sent (the messages, the response
schema, the model and the completion cap) with PROMPT_VERSION and SCHEMA_VERSION.

G7 is kept by three numbers that make each reservation an upper bound on the bill:
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
- `max_retries=0`: the SDK's retry would be a second billed call on the same reservations. One
  call, one request; its timeout (OPENAI_TIMEOUT_SECONDS, ≤ 300 s) is far below the 15-minute
  reservation lifetime and below the job lease, and the call is not started unless it fits before
  the tick's hard deadline.
Every user reserves the whole call's worst case (alone, they would pay all of it); the bill is then
split, so each user's share is at most the bill, hence at most their reservation.

The answer's id (private.oracle_answers) travels as the `X-Client-Request-Id` header, so each
provider-side request can be matched to the answer and the reservations that paid for it (a test's
fake server checks that live reservations exist for every request it sees). What is recorded as the
bill when the call goes wrong is listed in budget.py.

The answer is structured output (a strict JSON schema) validated by `ModelSignal`; a malformed
answer, a refusal or an answer cut off by the completion cap is `Unusable` — no proposal, the bill
recorded all the same.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Literal, cast

import httpx
import openai
from openai import OpenAI
from openai.types.chat import ChatCompletionMessageParam
from openai.types.shared_params import ResponseFormatJSONSchema
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from shared.api.steplog import StepLog
from shared.scanning.budget import NO_TOKENS, Usage
from shared.scanning.marketdata import MarketSnapshot
from shared.scanning.oracle import Answer, AnswerKey, NoSignal, Signal, Unusable, digest
from shared.scanning.rules import ema, rsi
from shared.scanning.settings import ScannerSettings

PER_MESSAGE_TOKENS = 8
REPLY_PRIMING_TOKENS = 8
SCHEMA_WRAPPER_TOKENS = 256
PROMPT_CANDLES = 48
# Parts of every answer's key: bump them when the prompt's wording or the response schema change.
PROMPT_VERSION = "prompt-2"
SCHEMA_VERSION = "trade_signal-1"
GAP_MARK = "no trades"

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
    f"check against the data. A candle marked '{GAP_MARK}' is an interval in which nothing "
    "traded: its prices repeat the previous close and its volume is 0; do not read it as a "
    "price that held. Recommend buy or sell only when the data clearly supports it, "
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


def build_messages(snapshot: MarketSnapshot, settings: ScannerSettings) -> list[dict[str, str]]:
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
    if snapshot.gaps:
        lines.append(f"Intervals without trades: {snapshot.gaps} of the last "
                     f"{len(snapshot.candles)} (filled forward from the previous close, "
                     f"volume 0, marked '{GAP_MARK}')")
    lines.append("Candles, oldest first (time UTC, open, high, low, close, volume):")
    first = max(0, len(snapshot.candles) - PROMPT_CANDLES)
    for index in range(first, len(snapshot.candles)):
        c = snapshot.candles[index]
        mark = f",{GAP_MARK}" if snapshot.is_filled(index) else ""
        lines.append(f"{c.timestamp:%Y-%m-%dT%H:%MZ},{c.open},{c.high},{c.low},{c.close},"
                     f"{c.volume}{mark}")
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


@dataclass(frozen=True)
class ModelCall:
    """How one model call ended: its answer (None: none was obtained, `failure` says why) and its
    bill — the usage to record, or None when it is unknown whether the call was billed."""

    answer: Answer | None
    bill: Usage | None
    request_id: str | None = None
    failure: str | None = None


class OpenAIOracle:
    source: Literal["openai"] = "openai"

    def __init__(self, settings: ScannerSettings, *,
                 http_client: httpx.Client | None = None) -> None:
        if settings.openai_api_key is None:
            raise ValueError("OPENAI_API_KEY is not set: ORACLE=openai needs it")
        self.settings = settings
        self.model: str = settings.openai_model
        self.timeout = settings.openai_timeout_seconds
        self.client = OpenAI(
            api_key=settings.openai_api_key.get_secret_value(),
            base_url=settings.openai_base_url,
            timeout=settings.openai_timeout_seconds,
            max_retries=0,  # a retry would be a second billed call on the same reservations
            http_client=http_client,
        )

    def close(self) -> None:
        self.client.close()

    def messages(self, snapshot: MarketSnapshot) -> list[dict[str, str]]:
        return build_messages(snapshot, self.settings)

    def key(self, snapshot: MarketSnapshot) -> AnswerKey:
        messages = self.messages(snapshot)
        cap = self.settings.openai_max_completion_tokens
        sent = {"model": self.model, "messages": messages, "response_format": RESPONSE_FORMAT,
                "max_completion_tokens": cap}
        return AnswerKey(oracle="openai", model=self.model, prompt_version=PROMPT_VERSION,
                         schema_version=SCHEMA_VERSION,
                         max_prompt_tokens=prompt_token_bound(messages),
                         max_completion_tokens=cap, digest=digest(sent))

    def call(self, snapshot: MarketSnapshot, key: AnswerKey, answer_id: str,
             log: StepLog) -> ModelCall:
        """One request, never retried, for the answer `answer_id` whose reservations exist."""
        worst_case = Usage(key.max_prompt_tokens, 0, key.max_completion_tokens)
        with log.step("model_call", model=self.model, answer_id=answer_id,
                      market=snapshot.market) as step:
            try:
                completion = self.client.chat.completions.create(
                    model=self.model,
                    messages=cast("list[ChatCompletionMessageParam]", self.messages(snapshot)),
                    response_format=cast("ResponseFormatJSONSchema", RESPONSE_FORMAT),
                    max_completion_tokens=key.max_completion_tokens,
                    extra_headers={"X-Client-Request-Id": answer_id},
                    timeout=self.timeout,
                )
            except openai.APIStatusError as exc:
                # An error answer is not billed, unless its body says it was.
                bill = _usage_in_error(exc) or NO_TOKENS
                step.set("http_error", severity="WARNING", http_status=exc.status_code,
                         request_id=exc.request_id, billed=bill != NO_TOKENS)
                return ModelCall(None, bill, exc.request_id,
                                 f"the model answered HTTP {exc.status_code}")
            except openai.APIResponseValidationError as exc:
                # A 200 whose body is not a completion: billed, amount unknown → the worst case.
                step.set("invalid_response", severity="WARNING", http_status=exc.status_code)
                return ModelCall(Unusable("malformed", "the answer was not a chat completion"),
                                 worst_case)
            except openai.APIConnectionError as exc:
                cause = type(exc.__cause__).__name__
                if _never_sent(exc):
                    step.set("not_sent", severity="WARNING", error_type=cause)
                    return ModelCall(None, NO_TOKENS, None, "the model could not be reached")
                # Sent, no answer: unknown whether billed. Nothing is recorded; the reservations
                # keep their worst case until run_maintenance releases them (budget.py).
                step.set("timeout" if isinstance(exc, openai.APITimeoutError) else "no_answer",
                         severity="WARNING", error_type=cause, settled=False)
                return ModelCall(None, None, None,
                                 "no answer from the model; its reservations expire unsettled")
            request_id = getattr(completion, "_request_id", None)
            reported = reported_usage(completion)
            step.set("answered", request_id=request_id, usage_reported=reported is not None)
        # Billed but not reported: record the most it can have cost.
        return ModelCall(self._answer(completion), reported or worst_case, request_id)

    def _answer(self, completion: Any) -> Answer:
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
