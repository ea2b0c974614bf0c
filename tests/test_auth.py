"""shared.auth: Supabase user JWTs (HS256 secret, ES256/RS256 through a faked JWKS endpoint) and the
service caller (service key bearer, legacy service_role JWT) are recognised; everything in the
refusal table is a 401 whose message never contains the token."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm
from pydantic import ValidationError
from pytest_httpx import HTTPXMock

from shared.auth import (
    AuthError,
    AuthSettings,
    Principal,
    SigningKeysUnavailable,
    Verifier,
    dev_token,
)

SECRET = "super-secret-jwt-token-with-at-least-32-characters-long"
OTHER_SECRET = "another-secret-that-is-also-at-least-32-characters"
SERVICE_KEY = "sb_secret_" + "Zx9" * 10
ISSUER = "https://abcdefghijklmnop.supabase.co/auth/v1"
JWKS_URL = f"{ISSUER}/.well-known/jwks.json"
USER = uuid.UUID("6f1c1e7e-3b7a-4c52-9d55-0b6f2c4b8a11")


@dataclass
class Keys:
    ec_private: ec.EllipticCurvePrivateKey
    rsa_private: rsa.RSAPrivateKey
    stranger: ec.EllipticCurvePrivateKey  # a key that is not in the JWKS

    @property
    def jwks(self) -> dict[str, Any]:
        ec_jwk = ECAlgorithm.to_jwk(self.ec_private.public_key(), as_dict=True)
        rsa_jwk = RSAAlgorithm.to_jwk(self.rsa_private.public_key(), as_dict=True)
        return {"keys": [{**ec_jwk, "kid": "ec-1", "alg": "ES256", "use": "sig"},
                         {**rsa_jwk, "kid": "rsa-1", "alg": "RS256", "use": "sig"}]}

    def rsa_public_pem(self) -> bytes:
        return self.rsa_private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


@pytest.fixture(scope="module")
def keys() -> Keys:
    return Keys(ec.generate_private_key(ec.SECP256R1()),
                rsa.generate_private_key(public_exponent=65537, key_size=2048),
                ec.generate_private_key(ec.SECP256R1()))


def claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    base = {"sub": str(USER), "role": "authenticated", "aud": "authenticated", "iat": now,
            "exp": now + 3600, "iss": ISSUER, "email": "user@example.test",
            "session_id": str(uuid.uuid4()), "aal": "aal1"}
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def hs256(secret: str = SECRET, **overrides: Any) -> str:
    return jwt.encode(claims(**overrides), secret, algorithm="HS256")


def es256(keys: Keys, kid: str = "ec-1", key: Any = None, **overrides: Any) -> str:
    return jwt.encode(claims(**overrides), key or keys.ec_private, algorithm="ES256",
                      headers={"kid": kid})


def rs256(keys: Keys, kid: str = "rsa-1", **overrides: Any) -> str:
    return jwt.encode(claims(**overrides), keys.rsa_private, algorithm="RS256",
                      headers={"kid": kid})


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def handmade(header: dict[str, Any], payload: dict[str, Any], hmac_key: bytes | None) -> str:
    """A token assembled by hand, as an attacker would (PyJWT refuses to make these)."""
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(payload).encode())}"
    if hmac_key is None:
        return signing_input + "."
    signature = hmac.new(hmac_key, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(signature)}"


def legacy_service_key(secret: str = SECRET, role: str = "service_role") -> str:
    """What Supabase's legacy service_role key is: HS256, no aud, ten years."""
    now = int(time.time())
    return jwt.encode({"iss": "supabase", "ref": "abcdefghijklmnop", "role": role, "iat": now,
                       "exp": now + 10 * 365 * 86400}, secret, algorithm="HS256")


def settings(**env: Any) -> AuthSettings:
    return AuthSettings(_env_file=None, **env)  # type: ignore[call-arg]


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("SUPABASE_JWT_SECRET", "SUPABASE_JWKS_URL", "SUPABASE_JWT_ISSUER",
                 "SUPABASE_SERVICE_ROLE_KEY"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def jwks(keys: Keys, httpx_mock: HTTPXMock) -> HTTPXMock:
    httpx_mock.add_response(url=JWKS_URL, json=keys.jwks, is_reusable=True,
                            is_optional=True)
    return httpx_mock


@pytest.fixture
def verifier(jwks: HTTPXMock) -> Iterator[Verifier]:
    """Everything configured: shared secret, JWKS, issuer, service key."""
    v = Verifier(settings(supabase_jwt_secret=SECRET, supabase_jwks_url=JWKS_URL,
                          supabase_jwt_issuer=ISSUER, supabase_service_role_key=SERVICE_KEY))
    yield v
    v.close()


@pytest.fixture
def jwks_only(jwks: HTTPXMock) -> Iterator[Verifier]:
    v = Verifier(settings(supabase_jwks_url=JWKS_URL))
    yield v
    v.close()


def bearer(token: str) -> str:
    return f"Bearer {token}"


# -- accepted ------------------------------------------------------------------------------------
def test_hs256_user_token(verifier: Verifier) -> None:
    assert verifier.verify(bearer(hs256())) == \
        Principal(role="authenticated", user_id=USER, email="user@example.test")


def test_es256_and_rs256_user_tokens_through_one_cached_jwks_fetch(
        verifier: Verifier, keys: Keys, jwks: HTTPXMock) -> None:
    for _ in range(3):
        assert verifier.verify(bearer(es256(keys))).user_id == USER
        assert verifier.verify(bearer(rs256(keys))).user_id == USER
    assert len(jwks.get_requests(url=JWKS_URL)) == 1


def test_the_scheme_is_case_insensitive(verifier: Verifier) -> None:
    assert verifier.verify(f"bearer  {hs256()} ").user_id == USER


def test_the_service_key_bearer_is_the_service(verifier: Verifier) -> None:
    principal = verifier.verify(bearer(SERVICE_KEY))
    assert principal == Principal.service() and principal.is_service
    assert principal.user_id is None


def test_a_legacy_service_role_jwt_signed_with_the_secret_is_the_service(
        verifier: Verifier) -> None:
    assert verifier.verify(bearer(legacy_service_key())).is_service


def test_a_configured_legacy_jwt_service_key_matches_by_equality(jwks: HTTPXMock) -> None:
    key = legacy_service_key(OTHER_SECRET)  # pg_cron sends exactly the configured key
    v = Verifier(settings(supabase_jwks_url=JWKS_URL, supabase_service_role_key=key))
    assert v.verify(bearer(key)).is_service
    v.close()


def test_dev_token_is_a_valid_user_token(verifier: Verifier) -> None:
    user = uuid.uuid4()
    token = dev_token(SECRET, user, "dev@example.test", ttl=60, issuer=ISSUER)
    assert verifier.verify(bearer(token)) == \
        Principal(role="authenticated", user_id=user, email="dev@example.test")
    plain = Verifier(settings(supabase_jwt_secret=SECRET))  # no issuer configured
    assert plain.verify(bearer(dev_token(SECRET, str(user)))).user_id == user
    with pytest.raises(AuthError, match="expired"):
        plain.verify(bearer(dev_token(SECRET, user, ttl=-60)))


# -- refused -------------------------------------------------------------------------------------
def refusals(keys: Keys) -> dict[str, str | None]:
    now = int(time.time())
    user_claims = claims()
    tampered = hs256().split(".")
    forged_payload = b64(json.dumps({**user_claims, "role": "service_role"}).encode())
    return {
        "missing header": None,
        "empty header": "",
        "basic scheme": "Basic dXNlcjpwYXNz",
        "bearer without token": "Bearer ",
        "garbage": "Bearer not-a-jwt",
        "three garbage segments": "Bearer aaa.bbb.ccc",
        "two tokens": f"Bearer {hs256()} {hs256()}",
        "expired": bearer(hs256(exp=now - 120, iat=now - 3720)),
        "not yet valid": bearer(hs256(iat=now + 600)),
        "no exp": bearer(hs256(exp=None)),
        "wrong audience": bearer(hs256(aud="anon")),
        "no audience": bearer(hs256(aud=None)),
        "wrong issuer": bearer(hs256(iss="https://evil.example/auth/v1")),
        "no issuer": bearer(hs256(iss=None)),
        "sub not a uuid": bearer(hs256(sub="admin")),
        "no sub": bearer(hs256(sub=None)),
        "anon role": bearer(hs256(role="anon")),
        "anon key": bearer(legacy_service_key(role="anon")),
        "alg none": bearer(handmade({"alg": "none", "typ": "JWT"}, user_claims, None)),
        "alg None user-cased": bearer(handmade({"alg": "None", "typ": "JWT"}, user_claims, None)),
        "wrong key": bearer(hs256(OTHER_SECRET)),
        "forged role, re-signed": bearer(legacy_service_key(OTHER_SECRET)),
        "forged role, old signature": bearer(f"{tampered[0]}.{forged_payload}.{tampered[2]}"),
        "service role via jwks key": bearer(es256(keys, role="service_role", aud=None)),
        "service key with a typo": bearer(SERVICE_KEY[:-1] + "x"),
        "rs256 public key as hmac secret": bearer(handmade(
            {"alg": "HS256", "typ": "JWT", "kid": "rsa-1"}, user_claims, keys.rsa_public_pem())),
        "es256 by a key not in the jwks": bearer(es256(keys, key=keys.stranger)),
        "es256 claiming the rsa key": bearer(es256(keys, kid="rsa-1")),
        "rs256 token naming the ec key": bearer(rs256(keys, kid="ec-1")),
        "es256 without kid": bearer(jwt.encode(user_claims, keys.ec_private, algorithm="ES256")),
        "hs512": bearer(jwt.encode(user_claims, SECRET + SECRET, algorithm="HS512")),
        "too long": "Bearer " + "a" * 9000,
    }


REFUSAL_CASES = [
    "missing header", "empty header", "basic scheme", "bearer without token", "garbage",
    "three garbage segments", "two tokens", "expired", "not yet valid", "no exp",
    "wrong audience", "no audience", "wrong issuer", "no issuer", "sub not a uuid", "no sub",
    "anon role", "anon key", "alg none", "alg None user-cased", "wrong key",
    "forged role, re-signed", "forged role, old signature", "service role via jwks key",
    "service key with a typo", "rs256 public key as hmac secret",
    "es256 by a key not in the jwks", "es256 claiming the rsa key",
    "rs256 token naming the ec key", "es256 without kid", "hs512", "too long",
]


def test_the_refusal_table_is_complete(keys: Keys) -> None:
    assert list(refusals(keys)) == REFUSAL_CASES


@pytest.mark.parametrize("case", REFUSAL_CASES)
def test_refused_with_401_and_no_token_in_the_message(verifier: Verifier, keys: Keys,
                                                      case: str) -> None:
    header = refusals(keys)[case]
    with pytest.raises(AuthError) as caught:
        verifier.verify(header)
    assert type(caught.value) is AuthError and caught.value.status == 401
    token = (header or "").removeprefix("Bearer ").strip()
    if token:
        assert token not in str(caught.value) and token not in repr(caught.value)
    assert SECRET not in str(caught.value)


def test_hs256_tokens_are_refused_when_only_jwks_is_configured(jwks_only: Verifier,
                                                               keys: Keys) -> None:
    # Key confusion: an HS256 token naming a JWKS key, signed with anything at all.
    for token in (hs256(), handmade({"alg": "HS256", "kid": "ec-1"}, claims(),
                                    keys.rsa_public_pem())):
        with pytest.raises(AuthError, match="algorithm"):
            jwks_only.verify(bearer(token))
    assert jwks_only.verify(bearer(es256(keys))).user_id == USER


def test_a_symmetric_key_published_in_the_jwks_is_never_used(httpx_mock: HTTPXMock,
                                                             keys: Keys) -> None:
    oct_secret = b"a-symmetric-key-that-must-never-verify-anything"
    httpx_mock.add_response(url=JWKS_URL, json={"keys": [
        {"kty": "oct", "kid": "oct-1", "k": b64(oct_secret), "use": "sig"},
        *keys.jwks["keys"]]})
    v = Verifier(settings(supabase_jwks_url=JWKS_URL))
    token = handmade({"alg": "ES256", "kid": "oct-1"}, claims(), oct_secret)
    with pytest.raises(AuthError):
        v.verify(bearer(token))
    v.close()


def test_unknown_kids_do_not_hammer_the_jwks_endpoint(verifier: Verifier, keys: Keys,
                                                      jwks: HTTPXMock) -> None:
    for i in range(5):
        with pytest.raises(AuthError, match="unknown"):
            verifier.verify(bearer(es256(keys, kid=f"made-up-{i}", key=keys.stranger)))
    assert len(jwks.get_requests(url=JWKS_URL)) == 1  # PyJWKClient's refresh cooldown


def test_an_unreachable_jwks_is_503_not_401(httpx_mock: HTTPXMock, keys: Keys) -> None:
    httpx_mock.add_exception(httpx.ConnectError("refused"), url=JWKS_URL)
    v = Verifier(settings(supabase_jwks_url=JWKS_URL))
    with pytest.raises(SigningKeysUnavailable) as caught:
        v.verify(bearer(es256(keys)))
    assert caught.value.status == 503
    v.close()


def test_a_jwks_answering_500_is_503(httpx_mock: HTTPXMock, keys: Keys) -> None:
    httpx_mock.add_response(url=JWKS_URL, status_code=500)
    v = Verifier(settings(supabase_jwks_url=JWKS_URL))
    with pytest.raises(SigningKeysUnavailable):
        v.verify(bearer(rs256(keys)))
    v.close()


def test_without_a_service_key_the_service_needs_the_legacy_jwt(jwks: HTTPXMock) -> None:
    v = Verifier(settings(supabase_jwt_secret=SECRET))
    assert v.verify(bearer(legacy_service_key())).is_service
    with pytest.raises(AuthError):
        v.verify(bearer(SERVICE_KEY))
    v.close()


# -- settings ------------------------------------------------------------------------------------
def test_settings_need_something_to_verify_with() -> None:
    with pytest.raises(ValidationError) as caught:
        settings()
    message = str(caught.value)
    for name in ("SUPABASE_JWT_SECRET", "SUPABASE_JWKS_URL", "SUPABASE_SERVICE_ROLE_KEY"):
        assert name in message


def test_settings_refuse_a_short_secret_or_a_bad_url_without_showing_them() -> None:
    with pytest.raises(ValidationError) as short:
        settings(supabase_jwt_secret="short-secret-value")
    assert "at least 32" in str(short.value) and "short-secret-value" not in str(short.value)
    with pytest.raises(ValidationError) as url:
        settings(supabase_jwks_url="file:///etc/passwd")
    assert "http(s)" in str(url.value) and "/etc/passwd" not in str(url.value)


def test_settings_read_the_environment_and_hide_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SUPABASE_JWT_SECRET", SECRET)
    monkeypatch.setenv("SUPABASE_SERVICE_ROLE_KEY", SERVICE_KEY)
    monkeypatch.setenv("SUPABASE_JWT_ISSUER", ISSUER)
    loaded = AuthSettings()
    assert loaded.supabase_jwt_issuer == ISSUER
    verifier = Verifier(loaded)
    for text in (repr(loaded), repr(verifier)):
        assert SECRET not in text and SERVICE_KEY not in text
    assert verifier.verify(bearer(SERVICE_KEY)).is_service
