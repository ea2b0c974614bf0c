"""`oracle token --user EMAIL`: a local-development user access token (shared.auth.dev_token),
shaped like Supabase Auth's and signed HS256.

The secret is SUPABASE_JWT_SECRET; without it, and only for a database on this machine, the local
stack's documented development secret (console.local.JWT_SECRET). A token signed with that public
secret is refused for any other database, whichever way the secret was given: it would be a
credential anyone can forge. Real deployments get their tokens from Supabase Auth.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta

from console import local
from console.database import Target, UsageError
from console.users import User
from shared.auth import dev_token

MIN_SECRET_LENGTH = 32
MAX_TTL = timedelta(days=1)


@dataclass(frozen=True)
class Signing:
    secret: str = field(repr=False)
    source: str
    issuer: str | None


def signing_for(target: Target, environ: Mapping[str, str], issuer: str | None) -> Signing:
    secret = environ.get("SUPABASE_JWT_SECRET", "").strip()
    source = "SUPABASE_JWT_SECRET"
    if not secret:
        if not target.is_local:
            raise UsageError(f"SUPABASE_JWT_SECRET is not set, and the local development secret "
                             f"is only for a database on this machine (not {target.display})")
        secret, source = local.JWT_SECRET, "the local development secret"
    if hmac.compare_digest(secret.encode(), local.JWT_SECRET.encode()) and not target.is_local:
        raise UsageError(f"refusing to sign a token with the public local development secret for "
                         f"{target.display}, which is not on this machine: set "
                         f"SUPABASE_JWT_SECRET to that project's JWT secret")
    if len(secret) < MIN_SECRET_LENGTH:
        raise UsageError(f"SUPABASE_JWT_SECRET must be at least {MIN_SECRET_LENGTH} characters")
    issuer = (issuer or environ.get("SUPABASE_JWT_ISSUER", "").strip()
              or (local.JWT_ISSUER if target.is_local else None))
    return Signing(secret=secret, source=source, issuer=issuer)


def check_ttl(ttl: timedelta) -> timedelta:
    if not timedelta(seconds=1) <= ttl <= MAX_TTL:
        raise UsageError(f"--ttl must be between 1 and {int(MAX_TTL.total_seconds())} seconds")
    return ttl


def mint(signing: Signing, user: User, ttl: timedelta) -> str:
    return dev_token(signing.secret, user.id, user.email, ttl, issuer=signing.issuer)
