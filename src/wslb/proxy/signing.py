"""
Signed session keys: wslb-minted cookies (HMAC-SHA256) and app-issued JWTs.

With ``[session] secret`` (or a JWT public key) set, whoever knows a bare
key can no longer reach that user's worker: a source must carry a value wslb
or the application signed. ``previous_secrets`` still verify (rotation) but
never sign. A value is checked for size and charset before any MAC or JWT
parsing, so a hostile one costs no more than a short one.
"""

from __future__ import annotations

import base64
import hashlib
import hmac

import jwt

# Clock skew tolerated on a JWT's exp/nbf/iat.
LEEWAY_SECONDS = 30

# The longest signed value looked at: browsers keep cookies up to 4 KiB, and
# a JWT carrying a session key and a few claims is well below.
MAX_SIGNED_VALUE = 4096

# A minted cookie older than this is refused (``[session] max_age``).
DEFAULT_MAX_AGE = 30 * 24 * 3600


class InvalidKey(Exception):
    """The value is not validly signed (the user gets 401)."""


def _mac(secret, message):
    digest = hmac.new(secret.encode(), message.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def looksLikeJwt(value):
    """
    Three parts, the first a JSON object in base64url; a wslb cookie's
    middle part is its issue time in digits, never a JWT's payload.
    """
    parts = value.split(".")
    return len(parts) == 3 and parts[0].startswith("eyJ") and not parts[1].isdigit()


class Signer:
    """Signs and verifies both kinds of value; ``clock`` gives ``now``."""

    def __init__(self, secret, previousSecrets, clock, *, algorithms=("HS256",),
                 publicKey=None, audience="", issuer="", requireExp=True,
                 maxAge=DEFAULT_MAX_AGE):
        self._secret = secret
        # An empty secret is no secret: anyone could MAC with it.
        self._verifying = tuple(s for s in (secret, *previousSecrets) if s)
        self._clock = clock
        self._required = ["sub", "exp"] if requireExp else ["sub"]
        self._maxAge = maxAge
        self._algorithms = list(algorithms)
        self._publicKey = publicKey
        self._audience = audience or None
        self._issuer = issuer or None

    def mintCookie(self, key):
        """``<key>.<issued-at>.<mac>``, the value of a wslb session cookie."""
        if not self._secret:
            raise ValueError("no [session] secret to sign a cookie with")
        message = f"{key}.{int(self._clock.seconds())}"
        return f"{message}.{_mac(self._secret, message)}"

    def verify(self, value):
        """Return (key, claims) for a validly signed value, or raise L{InvalidKey}."""
        if len(value) > MAX_SIGNED_VALUE:
            raise InvalidKey(f"a signed value is at most {MAX_SIGNED_VALUE} characters")
        if not value.isascii():
            raise InvalidKey("not a signed session value")
        if looksLikeJwt(value):
            return self._verifyJwt(value)
        return self._verifyCookie(value), {}

    def _verifyCookie(self, value):
        message, _, mac = value.rpartition(".")
        key, _, issuedAt = message.rpartition(".")
        if not key or not issuedAt.isdigit() or len(issuedAt) > 20:
            raise InvalidKey("not a signed session value")
        # Check every secret, so timing does not tell which one matched.
        matches = [hmac.compare_digest(_mac(s, message), mac) for s in self._verifying]
        if not any(matches):
            raise InvalidKey("bad signature")
        if int(issuedAt) + self._maxAge < self._clock.seconds():
            raise InvalidKey("the session cookie is older than [session] max_age")
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
        keys = [key for key in keys if key]
        error = None
        for key in keys:
            try:
                claims = jwt.decode(
                    token, key, algorithms=[algorithm], audience=self._audience,
                    issuer=self._issuer,
                    # Times are checked below against the injected clock.
                    options={"require": self._required, "verify_exp": False,
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
        except (TypeError, ValueError, OverflowError):
            raise InvalidKey("the token's exp/nbf is not a number") from None
