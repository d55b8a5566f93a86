"""API keys, secrets and bearer tokens.

Secrets are kept only as salted scrypt hashes. Tokens are JWTs (HS256) naming
the API key and account they were issued to, so checking one costs no
database read.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

import jwt

from server.domain.errors import ApiError, Reason
from server.domain.models import Caller

_SCRYPT_N, _SCRYPT_R, _SCRYPT_P = 2**14, 8, 1


def new_api_key() -> str:
    return "ak_" + secrets.token_hex(16)


def new_api_secret() -> str:
    return "sk_" + secrets.token_urlsafe(32)


def hash_secret(secret: str) -> str:
    salt = secrets.token_bytes(16)
    return f"scrypt${salt.hex()}${_scrypt(secret, salt).hex()}"


def verify_secret(secret: str, stored_hash: str) -> bool:
    """Compares in constant time; a malformed stored hash never matches."""
    try:
        scheme, salt_hex, digest_hex = stored_hash.split("$")
        salt, digest = bytes.fromhex(salt_hex), bytes.fromhex(digest_hex)
    except ValueError:
        return False
    return scheme == "scrypt" and hmac.compare_digest(_scrypt(secret, salt), digest)


#: Compared against when the API key is unknown, so that a wrong key costs as
#: long as a wrong secret and timing does not tell which was wrong.
DUMMY_SECRET_HASH = f"scrypt${'00' * 16}${'00' * 32}"


def _scrypt(secret: str, salt: bytes) -> bytes:
    return hashlib.scrypt(
        secret.encode(), salt=salt, n=_SCRYPT_N, r=_SCRYPT_R, p=_SCRYPT_P, dklen=32
    )


@dataclass(frozen=True)
class IssuedToken:
    access_token: str
    expires_in: int


def credentials_of(api_keys: Sequence[str], authorizations: Sequence[str]) -> tuple[str, str]:
    """A call's API key and Authorization value: each given exactly once, or the call
    is UNAUTHENTICATED. The REST gateway applies this rule itself too, to answer 401
    without a call when it refuses a request that lacks them."""
    if len(api_keys) != 1 or len(authorizations) != 1:
        raise ApiError(Reason.UNAUTHENTICATED)
    return api_keys[0], authorizations[0]


#: How far ahead of this process's clock a token's `iat` (and `nbf`) may be. The
#: clocks of replicas differ a little, and a token just issued by a replica whose
#: clock is ahead must work here too. `exp` gets none: a token is refused once
#: expired by this process's clock.
CLOCK_LEEWAY = timedelta(seconds=30)


class TokenSigner:
    """Issues and verifies tokens. A verified token's claims are remembered, so a
    client reusing its token (as OAuth clients do for its whole life) costs a
    dictionary lookup per call rather than a JWT decode: about a sixth of an
    order's CPU when measured (see the README's Performance section). The
    expiry (by this process's clock) and the API key are still checked on every
    call, and a remembered token is forgotten once expired."""

    #: Tokens remembered; the oldest half is forgotten when full.
    CACHE_SIZE = 4096

    def __init__(self, key: bytes, lifetime: timedelta) -> None:
        self._key = key
        self._lifetime = lifetime
        self._verified: dict[str, _Claims] = {}

    def issue(self, caller: Caller, now: datetime) -> IssuedToken:
        claims = {
            "sub": caller.api_key,
            "acc": caller.account_id,
            "iat": int(now.timestamp()),
            "exp": int((now + self._lifetime).timestamp()),
        }
        token = jwt.encode(claims, self._key, algorithm="HS256")
        return IssuedToken(token, int(self._lifetime.total_seconds()))

    def verify(self, api_key: str, authorization: str, now: datetime) -> Caller:
        """The caller of a request bearing `authorization` for `api_key`.

        Raises UNAUTHENTICATED unless the header is "Bearer <token>" with a
        valid, unexpired token issued to that same API key.
        """
        scheme, _, token = authorization.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token or not api_key:
            raise ApiError(Reason.UNAUTHENTICATED)
        claims = self._verified.get(token) or self._decode(token, now)
        if claims.expires_at <= now.timestamp():
            self._verified.pop(token, None)
            raise ApiError(Reason.UNAUTHENTICATED)
        self._remember(token, claims)
        if not hmac.compare_digest(claims.api_key.encode(), api_key.encode()):
            raise ApiError(Reason.UNAUTHENTICATED)
        return Caller(account_id=claims.account_id, api_key=api_key)

    def _decode(self, token: str, now: datetime) -> _Claims:
        # The times are checked here against `now` (PyJWT would use the system
        # clock), `iat`/`nbf` with CLOCK_LEEWAY; `exp` is checked by verify().
        try:
            decoded = jwt.decode(
                token,
                self._key,
                algorithms=["HS256"],
                options={
                    "require": ["sub", "acc", "iat", "exp"],
                    "verify_exp": False,
                    "verify_iat": False,
                    "verify_nbf": False,
                },
            )
            claims = _Claims(str(decoded["sub"]), int(decoded["acc"]), float(decoded["exp"]))
            valid_from = max(float(decoded["iat"]), float(decoded.get("nbf", 0)))
        except (jwt.InvalidTokenError, TypeError, ValueError):
            raise ApiError(Reason.UNAUTHENTICATED) from None
        if valid_from > (now + CLOCK_LEEWAY).timestamp():
            raise ApiError(Reason.UNAUTHENTICATED)
        return claims

    def _remember(self, token: str, claims: _Claims) -> None:
        if token in self._verified:
            return
        if len(self._verified) >= self.CACHE_SIZE:
            for old in list(self._verified)[: self.CACHE_SIZE // 2]:
                del self._verified[old]
        self._verified[token] = claims


@dataclass(frozen=True)
class _Claims:
    api_key: str
    account_id: int
    expires_at: float
