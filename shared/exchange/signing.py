"""Bitvavo request signing (reference/bitvavo-api.md, "Authentication").

signature = hex(HMAC-SHA256(secret, timestamp + METHOD + "/v2" + path_with_query + body))

`body` is the compact JSON text (separators "," and ":", key order kept) for POST/PUT and ""
for every other method. The transport signs exactly the bytes it sends: it serialises the body
once with `encode_body` and passes that same text both here and onto the wire.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

API_PREFIX = "/v2"
METHODS_WITH_BODY = frozenset({"POST", "PUT"})


def signature(
    secret: str,
    timestamp_ms: int,
    method: str,
    path_with_query: str,
    body: str = "",
) -> str:
    """Hex HMAC-SHA256 over timestamp + METHOD + "/v2" + path_with_query + body.

    `path_with_query` is relative to the API root, e.g. "/order" or "/order?market=BTC-EUR&…",
    exactly as it appears on the request line after "/v2".
    """
    method = method.upper()
    if method not in METHODS_WITH_BODY:
        body = ""
    if not path_with_query.startswith("/"):
        raise ValueError("path_with_query must start with '/'")
    message = f"{timestamp_ms}{method}{API_PREFIX}{path_with_query}{body}"
    return hmac.new(secret.encode(), message.encode(), hashlib.sha256).hexdigest()


def encode_body(body: Mapping[str, Any]) -> str:
    """The compact JSON text that is both signed and sent. Floats are refused (money is Decimal,
    strings on the wire); a Decimal that slipped through is refused too, so the caller decides
    its textual form."""
    _refuse_non_wire_values(body)
    return json.dumps(body, separators=(",", ":"))


def _refuse_non_wire_values(value: object) -> None:
    if isinstance(value, float | Decimal):
        raise TypeError(
            f"refusing to send {type(value).__name__} {value!r}: amounts go on the wire as strings"
        )
    if isinstance(value, Mapping):
        for item in value.values():
            _refuse_non_wire_values(item)
    elif isinstance(value, list | tuple):
        for item in value:
            _refuse_non_wire_values(item)
