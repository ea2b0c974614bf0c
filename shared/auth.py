"""Who is calling: Supabase JWTs and the service key, verified with PyJWT.

    Verifier(AuthSettings()).verify(request.headers.get("Authorization")) -> Principal

A caller is one of two principals, anything else is `AuthError` (→ 401):
- **a user**: a Supabase access token — `role` = `authenticated`, `aud` = `authenticated`, `sub` a
  uuid (→ `Principal.user_id`), unexpired, and from `SUPABASE_JWT_ISSUER` when that is set. Signed
  either with the project's shared secret (HS256, `SUPABASE_JWT_SECRET`) or with one of its
  asymmetric signing keys (ES256/RS256, published at `SUPABASE_JWKS_URL`, cached).
- **the service**: a bearer equal to `SUPABASE_SERVICE_ROLE_KEY` (constant-time compare; covers
  the new `sb_secret_…` keys and whatever pg_cron sends from Vault), or an HS256 JWT with `role` =
  `service_role` verified with the shared secret (the legacy service key, which has no `aud`).

Algorithms come from the configuration, never from the token: the token's `alg` header only picks
which configured verifier looks at it, and each verifier passes PyJWT a fixed list — HS256 for the
secret; for JWKS keys, the algorithm that key's type allows (EC P-256 → ES256, RSA → RS256), so an
HS256 token naming a JWKS key, an `alg: none` token, or an RS256 token "signed" with the public key
as an HMAC secret never verifies. A service_role claim is honoured only under the shared secret.

`AuthError` messages say what was wrong (missing, expired, wrong audience…), never the token.
`SigningKeysUnavailable` (a subclass, status 503) means the JWKS could not be fetched: the token
may be fine, we could not check it.
"""

from __future__ import annotations

import hmac
import re
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar, Final, Literal, Self

import httpx
import jwt
from jwt import PyJWK, PyJWKClient
from jwt.exceptions import PyJWKClientConnectionError, PyJWKClientError
from pydantic import SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

AUDIENCE = "authenticated"
USER_ROLE: Final = "authenticated"
SERVICE_ROLE: Final = "service_role"
LEEWAY_SECONDS = 5           # clock skew between Supabase Auth and us
JWKS_CACHE_SECONDS = 600     # how long a fetched key set is used before it is fetched again
JWKS_TIMEOUT = httpx.Timeout(5.0, connect=3.0)
MAX_TOKEN_LENGTH = 8192

_JWKS_ALGORITHM = {"EC": "ES256", "RSA": "RS256"}  # key type → the one algorithm it may verify
_BEARER = re.compile(r"Bearer[ \t]+([A-Za-z0-9._~+/=-]+)[ \t]*", re.IGNORECASE)
_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")


class AuthError(Exception):
    """The caller is not authenticated. `str()` is safe to return to the caller."""

    status: ClassVar[int] = 401

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)

    @property
    def www_authenticate(self) -> str:
        """The `WWW-Authenticate` header for the 401 (RFC 6750)."""
        return 'Bearer error="invalid_token"'


class SigningKeysUnavailable(AuthError):
    """The JWKS endpoint could not be read, so an asymmetric token could not be checked."""

    status: ClassVar[int] = 503


@dataclass(frozen=True)
class Principal:
    """An authenticated caller: a user (role `authenticated`, `user_id`) or the service."""

    role: Literal["authenticated", "service_role"]
    user_id: uuid.UUID | None = None
    email: str | None = None

    @property
    def is_service(self) -> bool:
        return self.role == SERVICE_ROLE

    @classmethod
    def service(cls) -> Principal:
        return cls(role=SERVICE_ROLE)


class AuthSettings(BaseSettings):
    """SUPABASE_JWT_SECRET and/or SUPABASE_JWKS_URL verify user tokens; SUPABASE_SERVICE_ROLE_KEY
    recognises the service. At least one must be set."""

    model_config = SettingsConfigDict(
        extra="ignore", frozen=True, case_sensitive=False, hide_input_in_errors=True
    )

    supabase_jwt_secret: SecretStr | None = None
    supabase_jwks_url: str | None = None
    supabase_jwt_issuer: str | None = None
    supabase_service_role_key: SecretStr | None = None

    @field_validator("supabase_jwt_secret", "supabase_service_role_key", mode="after")
    @classmethod
    def _blank_secret_is_unset(cls, value: SecretStr | None) -> SecretStr | None:
        return None if value is None or not value.get_secret_value().strip() else value

    @field_validator("supabase_jwt_secret", mode="after")
    @classmethod
    def _long_enough(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value()) < 32:
            raise ValueError("SUPABASE_JWT_SECRET must be at least 32 characters (HS256)")
        return value

    @field_validator("supabase_jwks_url", "supabase_jwt_issuer", mode="after")
    @classmethod
    def _blank_is_unset(cls, value: str | None) -> str | None:
        return None if value is None or not value.strip() else value.strip()

    @field_validator("supabase_jwks_url", mode="after")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("https://", "http://")):
            raise ValueError("SUPABASE_JWKS_URL must be an http(s) URL")
        return value

    @model_validator(mode="after")
    def _something_to_verify_with(self) -> Self:
        if (self.supabase_jwt_secret is None and self.supabase_jwks_url is None
                and self.supabase_service_role_key is None):
            raise ValueError("no way to authenticate callers: set SUPABASE_JWT_SECRET and/or "
                             "SUPABASE_JWKS_URL (user tokens), SUPABASE_SERVICE_ROLE_KEY (service)")
        return self


class _JwksClient(PyJWKClient):
    """PyJWKClient — its key-set cache, kid lookup and rate-limited refresh on an unknown kid — but
    fetching with httpx (explicit timeouts, no redirects, one HTTP stack in the process, fakeable
    with pytest-httpx) instead of urllib. Only `fetch_data` is replaced; it keeps the base class's
    contract (validate, cache, note the fetch time that the refresh cooldown reads)."""

    def __init__(self, url: str, http: httpx.Client) -> None:
        super().__init__(url, cache_jwk_set=True, lifespan=JWKS_CACHE_SECONDS)
        self._http = http

    def fetch_data(self) -> Any:
        try:
            response = self._http.get(self.uri, headers={"Accept": "application/json"})
            response.raise_for_status()
            data = response.json()
        except (httpx.HTTPError, ValueError) as exc:
            raise PyJWKClientConnectionError(
                f"could not fetch the signing keys ({type(exc).__name__})") from exc
        data = self._as_jwk_set_payload(data)
        if self.jwk_set_cache is not None:
            self.jwk_set_cache.put(data)
        self._last_successful_fetch = time.monotonic()
        return data


class Verifier:
    """Verifies `Authorization` headers. Thread-safe; keep one per process (the JWKS is cached)."""

    def __init__(self, settings: AuthSettings, *, http: httpx.Client | None = None) -> None:
        secret = settings.supabase_jwt_secret
        self._secret = secret.get_secret_value() if secret else None
        key = settings.supabase_service_role_key
        self._service_key = key.get_secret_value().encode() if key else None
        self._issuer = settings.supabase_jwt_issuer
        self._own_http = http is None and settings.supabase_jwks_url is not None
        self._http = http or (httpx.Client(timeout=JWKS_TIMEOUT, follow_redirects=False)
                              if settings.supabase_jwks_url else None)
        self._jwks = (_JwksClient(settings.supabase_jwks_url, self._http)
                      if settings.supabase_jwks_url and self._http else None)

    def __repr__(self) -> str:
        kinds = [name for name, on in (("HS256", self._secret), ("JWKS", self._jwks),
                                        ("service-key", self._service_key)) if on]
        return f"Verifier({', '.join(kinds)})"

    def close(self) -> None:
        if self._own_http and self._http is not None:
            self._http.close()

    def verify(self, authorization: str | None) -> Principal:
        token = _bearer_token(authorization)
        if self._service_key is not None and hmac.compare_digest(token.encode(),
                                                                 self._service_key):
            return Principal.service()
        try:
            header = jwt.get_unverified_header(token)
            unverified = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError:
            raise AuthError("the bearer token is not a valid JWT") from None
        algorithm = header.get("alg")
        role = unverified.get("role")

        if algorithm == "HS256" and self._secret is not None:
            key: Any = self._secret
            algorithms = ["HS256"]
            if role == SERVICE_ROLE:
                return self._service_jwt(token)
        elif algorithm in ("ES256", "RS256") and self._jwks is not None:
            jwk = self._jwks_key(header)
            key, algorithms = jwk.key, [_JWKS_ALGORITHM[str(jwk.key_type)]]
        else:
            raise AuthError("the token's signing algorithm is not accepted")

        if role != USER_ROLE:
            raise AuthError("the token's role is not accepted")
        claims = self._decode(token, key, algorithms, user=True)
        if claims.get("role") != USER_ROLE:
            raise AuthError("the token's role is not accepted")
        subject = claims.get("sub")
        if not isinstance(subject, str) or not _UUID.fullmatch(subject):
            raise AuthError("the token's subject is not a user id")
        email = claims.get("email")
        return Principal(role=USER_ROLE, user_id=uuid.UUID(subject),
                         email=email if isinstance(email, str) and email else None)

    # -- helpers ------------------------------------------------------------------------------
    def _service_jwt(self, token: str) -> Principal:
        """The legacy service key: HS256 with the shared secret, role service_role, no aud."""
        claims = self._decode(token, self._secret, ["HS256"], user=False)
        if claims.get("role") != SERVICE_ROLE:
            raise AuthError("the token's role is not accepted")
        return Principal.service()

    def _jwks_key(self, header: dict[str, Any]) -> PyJWK:
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise AuthError("the token names no signing key (kid)")
        assert self._jwks is not None
        try:
            jwk = self._jwks.get_signing_key(kid)
        except PyJWKClientConnectionError:
            raise SigningKeysUnavailable("the signing keys could not be fetched") from None
        except PyJWKClientError:
            raise AuthError("the token's signing key is unknown") from None
        if jwk.key_type not in _JWKS_ALGORITHM or jwk.algorithm_name != \
                _JWKS_ALGORITHM[str(jwk.key_type)]:
            raise AuthError("the token's signing key is not usable")  # e.g. a symmetric JWK
        return jwk

    def _decode(self, token: str, key: Any, algorithms: list[str], *,
                user: bool) -> dict[str, Any]:
        required = ["exp", "role"]
        if user:
            required += ["sub", "aud"] + (["iss"] if self._issuer else [])
        try:
            claims: dict[str, Any] = jwt.decode(
                token, key, algorithms=algorithms,
                audience=AUDIENCE if user else None,
                issuer=self._issuer if user else None,
                leeway=LEEWAY_SECONDS,
                options={"require": required, "verify_aud": user},
            )
        except jwt.ExpiredSignatureError:
            raise AuthError("the token has expired") from None
        except jwt.ImmatureSignatureError:
            raise AuthError("the token is not valid yet") from None
        except jwt.InvalidAudienceError:
            raise AuthError("the token is not for this audience") from None
        except jwt.InvalidIssuerError:
            raise AuthError("the token is from another issuer") from None
        except jwt.MissingRequiredClaimError as exc:
            raise AuthError(f"the token lacks the {exc.claim!r} claim") from None
        except jwt.InvalidAlgorithmError:
            raise AuthError("the token's signing algorithm is not accepted") from None
        except jwt.InvalidSignatureError:
            raise AuthError("the token's signature is invalid") from None
        except jwt.PyJWTError:
            raise AuthError("the token is invalid") from None
        return claims


def _bearer_token(authorization: str | None) -> str:
    if not authorization or not authorization.strip():
        raise AuthError("missing bearer token")
    if len(authorization) > MAX_TOKEN_LENGTH:
        raise AuthError("the bearer token is too long")
    match = _BEARER.fullmatch(authorization.strip())
    if match is None:
        raise AuthError("the Authorization header must be 'Bearer <token>'")
    return match.group(1)


def dev_token(secret: str, user_id: uuid.UUID | str, email: str | None = None,
              ttl: timedelta | int = 3600, *, issuer: str | None = None) -> str:
    """A local-development user access token shaped like Supabase Auth's, HS256 with `secret`
    (the operator CLI's `oracle token`). Never for production: Supabase Auth issues real ones."""
    now = datetime.now(UTC)
    lifetime = ttl if isinstance(ttl, timedelta) else timedelta(seconds=ttl)
    claims: dict[str, Any] = {
        "sub": str(uuid.UUID(str(user_id))),
        "role": USER_ROLE,
        "aud": AUDIENCE,
        "iat": int(now.timestamp()),
        "exp": int((now + lifetime).timestamp()),
        "session_id": str(uuid.uuid4()),
        "aal": "aal1",
    }
    if email:
        claims["email"] = email
    if issuer:
        claims["iss"] = issuer
    return jwt.encode(claims, secret, algorithm="HS256")
