"""API keys, request signatures, the access window and per-key permissions.

Signature (reference/bitvavo-api.md): hex(HMAC-SHA256(secret, timestamp + METHOD + "/v2" +
path_with_query + body)). The check is deliberately as tolerant as Bitvavo has to be with the
clients in the field, and no more:
- the path is taken from the raw request target (the SDK does not URL-encode the query, ccxt
  does; both sign exactly what they send);
- the body is the raw body, or the compact re-serialisation of the parsed body with key order
  kept (the SDK signs compact JSON but sends `{"a": 1, "b": 2}`), or empty (the SDK sends `{}`
  on GET/DELETE but signs no body).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass

from sandbox.errors import ApiError

# Documented default keys (clearly fake; 64 characters each). Override with SANDBOX_KEYS.
DEFAULT_VIEW_KEY = "view" + "0" * 60
DEFAULT_VIEW_SECRET = "sandbox-view-secret-" + "v" * 44
DEFAULT_TRADE_KEY = "trade" + "0" * 59
DEFAULT_TRADE_SECRET = "sandbox-trade-secret-" + "t" * 43

DEFAULT_WINDOW_MS = 10_000
MIN_WINDOW_MS, MAX_WINDOW_MS = 100, 60_000
FUTURE_TOLERANCE_MS = 1_000  # a timestamp this far ahead of the server clock is still accepted

VIEW, TRADE = "view", "trade"
_PERMISSIONS = {VIEW, TRADE, "withdraw"}


@dataclass(frozen=True)
class ApiKey:
    key: str
    secret: str
    permissions: frozenset[str]
    rate_limit: int | None = None  # weight per window for this key; None: SANDBOX_RATE_LIMIT


def load_keys(env: Mapping[str, str] | None = None) -> dict[str, ApiKey]:
    """Keys from `SANDBOX_KEYS` (JSON list of {key, secret, permissions, rate_limit?}) or the
    defaults."""
    raw = (os.environ if env is None else env).get("SANDBOX_KEYS")
    if not raw:
        return {
            DEFAULT_VIEW_KEY: ApiKey(DEFAULT_VIEW_KEY, DEFAULT_VIEW_SECRET, frozenset({VIEW})),
            DEFAULT_TRADE_KEY: ApiKey(
                DEFAULT_TRADE_KEY, DEFAULT_TRADE_SECRET, frozenset({VIEW, TRADE})
            ),
        }
    entries = json.loads(raw)
    if not isinstance(entries, list) or not entries:
        raise ValueError("SANDBOX_KEYS must be a non-empty JSON list")
    keys: dict[str, ApiKey] = {}
    for entry in entries:
        key, secret = entry.get("key"), entry.get("secret")
        permissions = frozenset(entry.get("permissions", []))
        if not isinstance(key, str) or len(key) != 64:
            raise ValueError("every SANDBOX_KEYS key must be a 64-character string")
        if not isinstance(secret, str) or not secret:
            raise ValueError(f"SANDBOX_KEYS entry {key[:6]}… has no secret")
        if not permissions <= _PERMISSIONS:
            raise ValueError(f"SANDBOX_KEYS permissions must be among {sorted(_PERMISSIONS)}")
        rate_limit = entry.get("rate_limit")
        if rate_limit is not None and (isinstance(rate_limit, bool)
                                       or not isinstance(rate_limit, int) or rate_limit < 1):
            raise ValueError(f"SANDBOX_KEYS entry {key[:6]}… has a rate_limit that is not a "
                             "positive integer")
        keys[key] = ApiKey(key, secret, permissions, rate_limit)
    return keys


def sign(secret: str, timestamp: int | str, method: str, target: str, body: str = "") -> str:
    """The Bitvavo signature; `target` is the path after `/v2`, query included."""
    message = f"{timestamp}{method}/v2{target}{body}"
    return hmac.new(secret.encode(), message.encode(), hashlib.sha256).hexdigest()


def _body_candidates(raw_body: bytes) -> list[str]:
    candidates = [""]
    if raw_body:
        text = raw_body.decode("utf-8", errors="replace")
        candidates.append(text)
        try:
            parsed = json.loads(text)
        except ValueError:
            return candidates
        if isinstance(parsed, dict) and not parsed:
            return candidates  # `{}`: the SDK signs no body
        candidates.append(json.dumps(parsed, separators=(",", ":")))
        candidates.append(json.dumps(parsed, separators=(",", ":"), ensure_ascii=False))
    return candidates


class Authenticator:
    def __init__(self, keys: dict[str, ApiKey]) -> None:
        self.keys = keys

    def authenticate(self, *, method: str, target: str, headers: dict[str, str],
                     raw_body: bytes, now_ms: int) -> ApiKey:
        """Verify a signed request; `headers` has lower-case names, `target` is after /v2."""
        key = headers.get("bitvavo-access-key")
        signature = headers.get("bitvavo-access-signature")
        timestamp = headers.get("bitvavo-access-timestamp")
        if not key or not signature or not timestamp:
            raise ApiError(300)
        if len(key) != 64:
            raise ApiError(301)
        if not timestamp.isdigit():
            raise ApiError(302)
        window_text = headers.get("bitvavo-access-window", str(DEFAULT_WINDOW_MS))
        try:
            window = int(window_text)
        except ValueError:
            raise ApiError(303) from None
        if not MIN_WINDOW_MS <= window <= MAX_WINDOW_MS:
            raise ApiError(303)
        sent_at = int(timestamp)
        if now_ms - sent_at > window or sent_at - now_ms > FUTURE_TOLERANCE_MS:
            raise ApiError(304)
        api_key = self.keys.get(key)
        if api_key is None:
            raise ApiError(305)
        if len(signature) != 64:
            raise ApiError(308)
        for body in _body_candidates(raw_body):
            expected = sign(api_key.secret, timestamp, method, target, body)
            if hmac.compare_digest(expected, signature.lower()):
                return api_key
        raise ApiError(309)

    @staticmethod
    def require(api_key: ApiKey, permission: str) -> None:
        if permission not in api_key.permissions:
            raise ApiError(310 if permission == TRADE else 311)
