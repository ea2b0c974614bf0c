"""PostgrestRpc: the RPC port over Supabase's REST API (SUPABASE_URL + SUPABASE_SERVICE_ROLE_KEY).

`POST <SUPABASE_URL>/rest/v1/rpc/<fn>` with the named arguments as a JSON object and the headers
supabase-py sets for the service key (`apikey`, `Authorization: Bearer <key>`, `Content-Profile:
public`): PostgREST runs it as service_role in one transaction, exactly what DirectRpc reproduces.

supabase-py (`create_client`) builds the request: URL, headers, and the httpx session we hand it
(explicit timeouts, no redirects followed). We send it with the request builder's own
`RequestConfig.send` but do not call `.execute()`, for two reasons:
- `.execute()` parses the body with floats (`APIResponse` → `json.loads`), and a float is not
  money; we parse the raw bytes with `parse_float=Decimal` (port.decode_json), like DirectRpc;
- `.execute()` reduces failures to `APIError` without the HTTP status, which we need to map a
  401/403 or a gateway 5xx that carries no SQLSTATE.
Nothing is retried: `send` is a single POST (supabase-py's retry policy is for GET/HEAD and lives
in `.execute()`, which we bypass), so a write is never sent twice.

Errors map through errors.error_for exactly like DirectRpc's: PostgREST's body
`{"code", "message", "details", "hint"}` decides by its code; without a code, 401/403 →
RpcPermissionDenied and 5xx → RpcUnavailable; transport errors and timeouts → RpcUnavailable
(outcome unknown). PostgREST's own answers when the database or a pooler in front of it fails —
503 PGRST000 (could not connect) and PGRST001 (the connection failed mid-request; libpq's text,
a pooler's FATAL included, in `details`), 504 PGRST003 (its pool had no connection in time), a
pooler's FATAL XX000 passed on as a 500 — are RpcUnavailable with the cause they name. The service
key is never part of a message or a repr.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from types import TracebackType
from typing import Any

import httpx
from supabase import create_client
from supabase.lib.client_options import SyncClientOptions

from shared.rpc.errors import Cause, RpcError, RpcUnavailable, error_for
from shared.rpc.port import as_rows, decode_json, encode_args

DEFAULT_TIMEOUT = 15.0
DEFAULT_CONNECT_TIMEOUT = 5.0


class PostgrestRpc:
    """The RPC port over supabase-py's PostgREST client, acting with the service-role key."""

    def __init__(
        self,
        supabase_url: str,
        service_role_key: str,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
    ) -> None:
        if not service_role_key:
            raise ValueError("the service role key is empty")
        self._url = supabase_url.rstrip("/")
        self._key = service_role_key
        self._http = httpx.Client(
            timeout=httpx.Timeout(timeout, connect=connect_timeout),
            follow_redirects=False,  # a redirected POST could run twice; PostgREST never redirects
        )
        options = SyncClientOptions(
            headers={"Accept": "application/json"},
            auto_refresh_token=False,
            persist_session=False,
            postgrest_client_retry=False,
            httpx_client=self._http,
        )
        self._client = create_client(self._url, service_role_key, options)

    def __repr__(self) -> str:
        return f"PostgrestRpc({self._url})"

    # -- the port -----------------------------------------------------------------------------
    def call(self, fn: str, args: Mapping[str, Any] | None = None) -> Any:
        return self._run(fn, args)

    def rows(self, fn: str, args: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
        return as_rows(fn, self._run(fn, args))

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> PostgrestRpc:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # -- one request --------------------------------------------------------------------------
    def _run(self, fn: str, args: Mapping[str, Any] | None) -> Any:
        payload = encode_args(fn, args)
        request = self._client.postgrest.rpc(fn, payload).request
        try:
            response = request.send(httpx.Headers())
        except httpx.TimeoutException as exc:
            raise RpcUnavailable(f"no answer in time ({type(exc).__name__})", fn=fn,
                                 cause="timeout") from exc
        except httpx.TransportError as exc:
            cause: Cause = "connect_failed" if isinstance(exc, httpx.ConnectError) \
                else "connection_lost"
            raise RpcUnavailable(self._scrub(f"{type(exc).__name__}: {exc}"), fn=fn,
                                 cause=cause) from exc
        if response.is_success:
            if response.status_code == 204 or not response.content:
                return None
            try:
                return decode_json(response.content)
            except ValueError as exc:
                # PostgREST had already committed when it answered 2xx: the outcome is unknown.
                raise RpcUnavailable(f"HTTP {response.status_code} with a body that is not JSON",
                                     fn=fn, http_status=response.status_code) from exc
        raise self._error(fn, response)

    def _error(self, fn: str, response: httpx.Response) -> RpcError:
        status = response.status_code
        body: Any = None
        try:
            body = json.loads(response.content) if response.content else None
        except ValueError:
            body = None
        if not isinstance(body, dict):
            body = {}
        code = _text(body.get("code"))
        message = _text(body.get("message")) or f"HTTP {status} {response.reason_phrase}".strip()
        return error_for(self._scrub(message), code=code,
                         details=self._scrub_opt(_text(body.get("details"))),
                         hint=self._scrub_opt(_text(body.get("hint"))), fn=fn, http_status=status)

    def _scrub(self, text: str) -> str:
        return text.replace(self._key, "[redacted]")

    def _scrub_opt(self, text: str | None) -> str | None:
        return None if text is None else self._scrub(text)


def _text(value: Any) -> str | None:
    if value is None:
        return None
    return value if isinstance(value, str) else str(value)
