"""
Signed session keys: wslb-minted cookies (HMAC-SHA256) and app-issued JWTs.

With ``[session] secret`` set, whoever knows a bare key can no longer reach
that user's worker: a source must carry a value wslb or the application
signed. ``previous_secrets`` still verify (rotation) but never sign.
"""

from __future__ import annotations

import base64
import hashlib
import hmac

import jwt

# Clock skew tolerated on a JWT's exp/nbf/iat.
LEEWAY_SECONDS = 30


class InvalidKey(Exception):
    """The value is not validly signed (the user gets 401)."""


def _mac(secret, message):
    digest = hmac.new(secret.encode(), message.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def looksLikeJwt(value):
    return value.count(".") == 2 and value.startswith("eyJ")


class Signer:
    """Signs and verifies both kinds of value; ``clock`` gives ``now``."""

    def __init__(self, secret, previousSecrets, clock, *, algorithms=("HS256",),
                 publicKey=None, audience="", issuer=""):
        self._secret = secret
        self._verifying = (secret, *previousSecrets)
        self._clock = clock
        self._algorithms = list(algorithms)
        self._publicKey = publicKey
        self._audience = audience or None
        self._issuer = issuer or None

    def mintCookie(self, key):
        """``<key>.<issued-at>.<mac>``, the value of a wslb session cookie."""
        message = f"{key}.{int(self._clock.seconds())}"
        return f"{message}.{_mac(self._secret, message)}"

    def verify(self, value):
        """Return (key, claims) for a validly signed value, or raise L{InvalidKey}."""
        if looksLikeJwt(value):
            return self._verifyJwt(value)
        return self._verifyCookie(value), {}

    def _verifyCookie(self, value):
        message, _, mac = value.rpartition(".")
        key, _, issuedAt = message.rpartition(".")
        if not key or not issuedAt.isdigit():
            raise InvalidKey("not a signed session value")
        # Check every secret, so timing does not tell which one matched.
        matches = [hmac.compare_digest(_mac(s, message), mac) for s in self._verifying]
        if not any(matches):
            raise InvalidKey("bad signature")
        return key

    def _verifyJwt(self, token):
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as e:
            raise InvalidKey(f"malformed token: {e}") from None
        algorithm = header.get("alg")
        if algorithm not in self._algorithms:
            raise InvalidKey(f"token algorithm {algorithm!r} is not accepted")
        keys = self._verifying if algorithm == "HS256" else (self._publicKey,)
        error = None
        for key in keys:
            try:
                claims = jwt.decode(
                    token, key, algorithms=[algorithm], audience=self._audience,
                    issuer=self._issuer,
                    # Times are checked below against the injected clock.
                    options={"require": ["sub"], "verify_exp": False,
                             "verify_nbf": False, "verify_iat": False},
                )
            except jwt.InvalidSignatureError as e:
                error = e
                continue
            except jwt.PyJWTError as e:
                raise InvalidKey(str(e)) from None
            self._checkTimes(claims)
            return str(claims["sub"]), claims
        raise InvalidKey(str(error or "no key to verify the token"))

    def _checkTimes(self, claims):
        now = self._clock.seconds()
        try:
            if "exp" in claims and float(claims["exp"]) <= now - LEEWAY_SECONDS:
                raise InvalidKey("the token has expired")
            if "nbf" in claims and float(claims["nbf"]) > now + LEEWAY_SECONDS:
                raise InvalidKey("the token is not valid yet")
        except (TypeError, ValueError):
            raise InvalidKey("the token's exp/nbf is not a number") from None
