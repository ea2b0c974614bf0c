"""Redaction: the safety net under every log line and problem document.

`redact(text)` replaces what looks like a credential — Bearer credentials (16 characters or more),
JWT-shaped strings, runs of 64+ hex digits (Bitvavo keys, secrets, signatures), Supabase
`sb_secret_…`/`sb_publishable_…` keys, passwords in URLs — and every exact secret registered with
`register_secret` (the settings loader, shared.settings, registers each configured secret at
start-up).
Code should not log secrets in the first place; this catches the mistake when it does.

It sits on the ground floor of `shared` (it imports nothing of the project), so the settings loader
and the HTTP edge can both use it without importing each other.
"""

from __future__ import annotations

import re
import threading

from pydantic import SecretStr

# A bearer credential is a token68 of 16 characters or more (every real one is far longer: keys,
# JWTs, opaque tokens). Shorter words after "bearer" are prose — "missing bearer token", "the bearer
# token is not a valid JWT" — which a 401 must be able to say.
_PATTERNS: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"(?i)\bbearer\s+[A-Za-z0-9._~+/=-]{16,}"), "Bearer [redacted]"),
    (re.compile(r"\beyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*"), "[redacted-jwt]"),
    (re.compile(r"\bsb_(?:secret|publishable)_[A-Za-z0-9_-]+"), "[redacted-key]"),
    (re.compile(r"(?<![0-9A-Za-z])[0-9a-fA-F]{64,}(?![0-9A-Za-z])"), "[redacted-hex]"),
    (re.compile(r"\b([a-zA-Z][a-zA-Z0-9+.-]*://[^\s:/?#@]*:)[^\s@]+@"), r"\1[redacted]@"),
]
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")
_secrets: set[str] = set()
_secrets_lock = threading.Lock()


def register_secret(value: str | SecretStr | None) -> None:
    """Scrub this exact value from every later line (call at start-up with each configured
    secret). Values shorter than 8 characters are ignored: they would mangle ordinary text."""
    text = value.get_secret_value() if isinstance(value, SecretStr) else value
    if text and len(text) >= 8:
        with _secrets_lock:
            _secrets.add(text)


def redact(text: str) -> str:
    """`text` with everything that looks like a credential replaced, and safe to encode: a lone
    surrogate (what `json.loads` makes of a "\\ud800" escape or of an invalid UTF-8 byte in a
    request body, echoed in a problem's detail) becomes U+FFFD. Unreplaced, no UTF-8 writer can
    encode the text: the problem document was a 500 and the log line a "Logging error" traceback."""
    text = _LONE_SURROGATE.sub("\ufffd", text)
    with _secrets_lock:
        secrets = sorted(_secrets, key=len, reverse=True)
    for secret in secrets:
        text = text.replace(secret, "[redacted]")
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text
