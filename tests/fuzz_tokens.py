"""Bearer tokens for the HTTP fuzzers, each with the verdict a correct verifier must reach
(no tests of its own).

A token is built from a user access token shaped like Supabase Auth's and then mutated: every
claim is drawn from a list of values, each labelled with what it does to a user token and to a
service-role token (`ok`, `bad` — must be refused —, or `unsure` — either answer is correct, e.g.
an expiry within the clock-skew leeway); the header (`alg`, `kid`, `typ`, extra members) and the
signature (the shared secret, another secret, none, a flipped byte, ES256 with the published key
or an unpublished one) likewise. The verdicts combine into what the function must answer: the
user, the service, a refusal (401), or unsure.

The labels restate the contract of shared/auth.py (SPEC §4, reference/supabase-local.md): HS256
with the shared secret or ES256 with a published key; `role` decides the principal; a user needs
`aud` = authenticated (or a list holding it), `sub` a canonical uuid, `exp`; a service-role token
must be HS256 with the secret and carry `exp`; `iat`/`nbf` must not be in the future.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import uuid
from dataclasses import dataclass
from typing import Any, Literal

from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import strategies as st
from hypothesis.strategies import SearchStrategy
from jwt.algorithms import ECAlgorithm

from tests.fuzz_support import odd_text

Verdict = Literal["ok", "bad", "unsure"]
Expected = Literal["user", "service", "refused", "unsure"]
MISSING = object()
KID = "fuzz-signing-key"
RESERVED_CLAIMS = frozenset({"sub", "role", "aud", "exp", "iat", "nbf", "iss", "email", "jti",
                             "pad"})
MAX_HEADER = 8190  # gunicorn's limit_request_field_size: longer header lines never reach us


@dataclass(frozen=True)
class Keys:
    secret: str
    ec_private: ec.EllipticCurvePrivateKey
    stranger: ec.EllipticCurvePrivateKey  # an EC key nobody published

    @classmethod
    def make(cls, secret: str) -> Keys:
        return cls(secret, ec.generate_private_key(ec.SECP256R1()),
                   ec.generate_private_key(ec.SECP256R1()))

    def jwks(self) -> dict[str, Any]:
        jwk = ECAlgorithm.to_jwk(self.ec_private.public_key(), as_dict=True)
        return {"keys": [{**jwk, "kid": KID, "alg": "ES256", "use": "sig"}]}


@dataclass(frozen=True)
class Token:
    value: str
    expected: Expected
    why: str


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _worst(verdicts: list[Verdict]) -> Verdict:
    return "bad" if "bad" in verdicts else "unsure" if "unsure" in verdicts else "ok"


# (value, verdict for a user token, verdict for a service-role token)
Option = tuple[Any, Verdict, Verdict]


def claim_options(user: uuid.UUID, other: uuid.UUID, now: int) -> dict[str, list[Option]]:
    return {
        "sub": [(str(user), "ok", "ok"), (str(other), "ok", "ok"),
                (str(uuid.uuid4()), "ok", "ok"), (str(user).upper(), "ok", "ok"),
                (MISSING, "bad", "ok"), ("not-a-uuid", "bad", "ok"),
                ("", "bad", "ok"), (f"{{{user}}}", "bad", "ok"), (f" {user}", "bad", "ok"),
                (user.hex, "bad", "ok"), (12345, "bad", "bad"), (None, "bad", "bad"),
                ([str(user)], "bad", "bad")],
        "role": [("authenticated", "ok", "ok"), ("service_role", "ok", "ok"),
                 ("anon", "bad", "bad"),
                 ("supabase_admin", "bad", "bad"), ("postgres", "bad", "bad"), ("", "bad", "bad"),
                 ("Authenticated", "bad", "bad"), ("service_role ", "bad", "bad"),
                 (["authenticated"], "bad", "bad"), (1, "bad", "bad"), (MISSING, "bad", "bad")],
        "aud": [("authenticated", "ok", "ok"), (["authenticated"], "ok", "ok"),
                (["anon", "authenticated"], "ok", "ok"), ("anon", "bad", "ok"), ("", "bad", "ok"),
                ([], "bad", "ok"), (5, "bad", "ok"), (MISSING, "bad", "ok"),
                ("authenticated ", "bad", "ok")],
        "exp": [(now + 3600, "ok", "ok"), (now + 301, "ok", "ok"), (2**31 - 1, "ok", "ok"),
                (2**62, "ok", "ok"), (10**30, "ok", "ok"), (1e308, "ok", "ok"),
                (now + 3600.5, "ok", "ok"), (now - 31, "bad", "bad"), (now - 3600, "bad", "bad"),
                (0, "bad", "bad"), (-1, "bad", "bad"), (-(2**63), "bad", "bad"),
                (float("inf"), "bad", "bad"), (float("-inf"), "bad", "bad"), (True, "bad", "bad"),
                (None, "bad", "bad"), (MISSING, "bad", "bad"), ("tomorrow", "bad", "bad"),
                ([now + 3600], "bad", "bad"), ({"at": now}, "bad", "bad"),
                # within the clock-skew leeway (5 s) of now, give or take the request's duration
                (now, "unsure", "unsure"), (now - 4, "unsure", "unsure"),
                (now + 2, "unsure", "unsure"), (str(now + 3600), "unsure", "unsure")],
        "iat": [(MISSING, "ok", "ok"), (now - 10, "ok", "ok"), (now + 3600, "bad", "bad"),
                ("yesterday", "bad", "bad"), (10**30, "bad", "bad"), (now + 3, "unsure", "unsure")],
        "nbf": [(MISSING, "ok", "ok"), (now - 10, "ok", "ok"), (now + 3600, "bad", "bad"),
                ("x", "bad", "bad"), (now + 3, "unsure", "unsure")],
        "iss": [(MISSING, "ok", "ok"), ("https://fuzz.supabase.co/auth/v1", "ok", "ok"),
                ("supabase", "ok", "ok")],  # no issuer is configured: not checked
        "email": [(MISSING, "ok", "ok"), ("a@example.test", "ok", "ok"), (None, "ok", "ok"),
                  (42, "ok", "ok"), ("\u202eevil@example.test", "ok", "ok")],
    }


SIGNATURES = ("secret", "other-secret", "none", "empty", "flipped", "es256", "es256-unknown-kid",
              "es256-stranger", "es256-as-rs256", "hs256-with-public-pem")


@st.composite
def tokens(draw: st.DrawFn, keys: Keys, user: uuid.UUID, other: uuid.UUID) -> Token:
    """A user or service-role token with up to three claims mutated (the first option of each
    claim is its valid value), a header mutation or none, and one of the signatures; a third of
    the examples carry an unmutated, correctly signed token, so the valid paths run too."""
    now = int(time.time())
    options = claim_options(user, other, now)
    base_role = draw(st.sampled_from(["authenticated", "service_role"]))
    options["role"][0] = (base_role, "ok", "ok")
    mutated = draw(st.sets(st.sampled_from(sorted(options)), max_size=3))
    claims: dict[str, Any] = {}
    user_verdicts: list[Verdict] = []
    service_verdicts: list[Verdict] = []
    notes = []
    for name, choices in options.items():
        value, for_user, for_service = (draw(st.sampled_from(choices)) if name in mutated
                                        else choices[0])
        if value is not MISSING:
            claims[name] = value
        user_verdicts.append(for_user)
        service_verdicts.append(for_service)
        notes.append(f"{name}={'missing' if value is MISSING else repr(value)[:40]}")
    extra = draw(st.one_of(st.just({}), st.dictionaries(
        odd_text(2, long=False), odd_text(3, long=False), max_size=3)))
    for name, value in extra.items():
        if name not in RESERVED_CLAIMS:
            claims[name] = value
    padding = draw(st.one_of(st.just(0), st.integers(0, 12_000)))
    if padding:
        claims["pad"] = "x" * padding

    signature = draw(st.one_of(st.just("secret"), st.just("es256"), st.sampled_from(SIGNATURES)))
    header: dict[str, Any] = {"alg": "ES256" if signature.startswith("es256") else "HS256",
                              "typ": "JWT"}
    if signature == "es256-as-rs256":
        header["alg"] = "RS256"
    if signature in ("es256", "es256-stranger", "es256-as-rs256"):
        header["kid"] = KID
    if signature == "es256-unknown-kid":
        header["kid"] = draw(st.sampled_from(["unknown", "", "../jwks", KID + " "]))
    if signature == "none":
        header["alg"] = draw(st.sampled_from(["none", "None", "NONE", "", "HS256"]))
    header_mutation = draw(st.one_of(st.just("same"), st.sampled_from(
        ["same", "typ", "kid", "alg-case", "alg-other", "x5u"])))
    header_verdict: Verdict = "ok"
    if header_mutation == "typ":
        header["typ"] = draw(st.sampled_from(["at+jwt", "", "JWS", 7]))
        header_verdict = "unsure"
    elif header_mutation == "kid" and header["alg"] == "HS256":
        header["kid"] = draw(st.sampled_from([KID, "other", 5, ""]))
        header_verdict = "unsure"  # ignored by the HS256 verifier, or refused as malformed
    elif header_mutation == "alg-case":
        header["alg"] = header["alg"].lower()
        header_verdict = "bad"
    elif header_mutation == "alg-other":
        header["alg"] = draw(st.sampled_from(["HS512", "HS384", "RS256", "PS256", "EdDSA",
                                              "none", None, ["HS256"]]))
        header_verdict = "bad"
    elif header_mutation == "x5u":
        header["x5u"] = "http://127.0.0.1:9/cert.pem"
        header["jku"] = "http://127.0.0.1:9/jwks.json"
        header_verdict = "unsure"  # must be ignored; a verifier that fetched them would hang

    signing_input = (_b64(json.dumps(header, separators=(",", ":")).encode()) + "."
                     + _b64(json.dumps(claims, separators=(",", ":")).encode()))
    hs = hmac.new(keys.secret.encode(), signing_input.encode(), hashlib.sha256).digest()
    ec_alg = ECAlgorithm(ECAlgorithm.SHA256)
    sig_verdict: Literal["hs", "es", "bad"]
    if signature == "secret":
        sig, sig_verdict = hs, "hs"
    elif signature == "other-secret":
        sig = hmac.new(b"x" * 40, signing_input.encode(), hashlib.sha256).digest()
        sig_verdict = "bad"
    elif signature == "none":
        sig, sig_verdict = b"", "bad"
    elif signature == "empty":
        sig, sig_verdict = b"", "bad"
        signing_input = signing_input.split(".")[0] + ".."
    elif signature == "flipped":
        position = draw(st.integers(0, len(hs) - 1))
        sig = hs[:position] + bytes([hs[position] ^ 0x01]) + hs[position + 1:]
        sig_verdict = "bad"
    elif signature == "es256":
        sig, sig_verdict = ec_alg.sign(signing_input.encode(), keys.ec_private), "es"
    elif signature == "hs256-with-public-pem":
        from cryptography.hazmat.primitives import serialization

        pem = keys.ec_private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        sig, sig_verdict = hmac.new(pem, signing_input.encode(), hashlib.sha256).digest(), "bad"
    else:  # es256-unknown-kid, es256-stranger, es256-as-rs256
        key = keys.stranger if signature == "es256-stranger" else keys.ec_private
        sig, sig_verdict = ec_alg.sign(signing_input.encode(), key), "bad"
    value = signing_input if signature == "empty" else f"{signing_input}.{_b64(sig)}"

    role = claims.get("role")
    why = f"{signature} header={header} {' '.join(notes)} pad={padding}"
    if header_verdict == "bad" or sig_verdict == "bad":
        expected: Expected = "refused"
    elif role == "authenticated":
        expected = _expect("user", _worst([*user_verdicts, header_verdict]))
    elif role == "service_role" and sig_verdict == "hs":
        expected = _expect("service", _worst([*service_verdicts, header_verdict]))
    else:
        expected = "refused"
    if len(value) + len("Bearer ") > MAX_HEADER - len("Authorization: "):
        expected = "refused"  # too long for us (8192) or for the HTTP server (8190)
    return Token(value, expected, why)


def _expect(principal: Literal["user", "service"], verdict: Verdict) -> Expected:
    return principal if verdict == "ok" else "refused" if verdict == "bad" else "unsure"


def authorization_garbage(token: str) -> SearchStrategy[tuple[str, bool]]:
    """(Authorization header value, whether it still carries `token` correctly)."""
    return st.one_of(
        st.sampled_from([
            (f"Bearer {token}", True), (f"bearer {token}", True), (f"BEARER {token}", True),
            (f"Bearer  {token}", True), (f"Bearer\t{token}", True), (f"Bearer {token} ", True),
            ("", False), ("Bearer", False), ("Bearer ", False), (token, False),
            (f"Basic {token}", False), (f"Bearer {token}x", False), (f"Bearer {token[:-1]}", False),
            (f"Bearer {token}, Bearer {token}", False), (f"Bearer {token} {token}", False),
            (f"Token {token}", False), (f"Bearer \"{token}\"", False), ("Bearer null", False),
            ("Bearer undefined", False), ("Bearer eyJ.eyJ.", False), ("Bearer ...", False),
            (f"Bearer {token.replace('.', '..', 1)}", False),
        ]),
        odd_text(4, long=False).map(lambda s: (s, False)),
        st.integers(8000, 9000).map(lambda n: ("Bearer " + "a" * n, False)),
    )
