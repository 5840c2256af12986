"""Signed session keys: HMAC cookies and JWTs, verified against an injected clock."""

import base64
import hashlib
import hmac

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from twisted.internet.task import Clock

from wslb.proxy.signing import LEEWAY_SECONDS, MAX_SIGNED_VALUE, InvalidKey, Signer

NOW = 1_800_000_000
SECRET = "s3cret-" + "x" * 32
OLD = "old-" + "o" * 32
NEW = "new-" + "n" * 32


@pytest.fixture
def clock():
    c = Clock()
    c.advance(NOW)
    return c


def signer(clock, secret=SECRET, previous=(), **kw):
    return Signer(secret, previous, clock, **kw)


def token(claims, key=SECRET, algorithm="HS256", **headers):
    """A JWT of ``claims``; an hour's ``exp`` unless they say (None: no exp)."""
    claims = {"exp": NOW + 3600, **claims}
    if claims["exp"] is None:
        del claims["exp"]
    return jwt.encode(claims, key, algorithm=algorithm, headers=headers or None)


def test_minted_cookie_round_trips(clock):
    s = signer(clock)
    value = s.mintCookie("user.1")
    assert value.startswith(f"user.1.{NOW}.")
    assert s.verify(value) == ("user.1", {})


@pytest.mark.parametrize("forge", [
    lambda v: v[:-1] + ("A" if v[-1] != "A" else "B"),  # one character of the MAC
    lambda v: "other" + v[v.index("."):],  # another key, same MAC
    lambda v: v.rsplit(".", 1)[0],  # no MAC
    lambda v: "plainkey",
])
def test_forged_cookies_are_refused(clock, forge):
    s = signer(clock)
    with pytest.raises(InvalidKey):
        s.verify(forge(s.mintCookie("alice")))


def test_rotation_keeps_old_cookies_but_signs_with_the_new_secret(clock):
    old = signer(clock, OLD).mintCookie("alice")
    rotated = signer(clock, NEW, previous=(OLD,))
    assert rotated.verify(old)[0] == "alice"
    assert signer(clock, NEW).verify(rotated.mintCookie("bob"))[0] == "bob"
    with pytest.raises(InvalidKey):
        signer(clock, NEW).verify(old)  # OLD rotated out entirely


def test_jwt_sub_is_the_key_and_claims_come_along(clock):
    key, claims = signer(clock).verify(token({"sub": "alice", "cost": 300}))
    assert key == "alice" and claims["cost"] == 300


@pytest.mark.parametrize("claims, kw, why", [
    ({"sub": "a", "exp": NOW - LEEWAY_SECONDS - 1}, {}, "expired"),
    ({"sub": "a", "nbf": NOW + LEEWAY_SECONDS + 60}, {}, "not valid yet"),
    ({"sub": "a", "aud": "other"}, {"audience": "scenes"}, "aud"),
    ({"sub": "a"}, {"audience": "scenes"}, "aud"),
    ({"sub": "a", "iss": "mallory"}, {"issuer": "auth.example.com"}, "issuer"),
    ({"exp": NOW + 60}, {}, "sub"),
    ({"sub": "a", "exp": None}, {}, "exp"),  # [session] jwt_require_exp is on by default
    ({"sub": "a", "exp": 10**400}, {}, "exp"),  # a float would overflow
])
def test_bad_jwts_are_refused(clock, claims, kw, why):
    with pytest.raises(InvalidKey, match="(?i)" + why.split()[0]):
        signer(clock, **kw).verify(token(claims))


def test_jwt_within_leeway_and_valid_audience_pass(clock):
    s = signer(clock, audience="scenes", issuer="auth.example.com")
    claims = {"sub": "a", "exp": NOW - LEEWAY_SECONDS + 5, "aud": "scenes",
              "iss": "auth.example.com"}
    assert s.verify(token(claims))[0] == "a"


def test_forged_and_unsigned_jwts_are_refused(clock):
    s = signer(clock)
    with pytest.raises(InvalidKey):
        s.verify(token({"sub": "a"}, key="not-the-secret"))
    unsigned = jwt.encode({"sub": "a"}, None, algorithm="none")
    with pytest.raises(InvalidKey, match="none"):
        s.verify(unsigned)
    with pytest.raises(InvalidKey):
        s.verify("eyJhbGciOiJIUzI1NiJ9.garbage.garbage")


def test_jwt_signed_with_a_rotated_out_secret_is_refused(clock):
    assert signer(clock, NEW, previous=(OLD,)).verify(token({"sub": "a"}, OLD))[0] == "a"
    with pytest.raises(InvalidKey):
        signer(clock, NEW).verify(token({"sub": "a"}, OLD))


def test_es256_with_a_public_key(clock):
    private = ec.generate_private_key(ec.SECP256R1())
    public = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    s = signer(clock, algorithms=("ES256",), publicKey=public)
    assert s.verify(token({"sub": "a"}, private, "ES256"))[0] == "a"
    with pytest.raises(InvalidKey):  # an HS256 token is not accepted when only ES256 is
        s.verify(token({"sub": "a"}))
    other = ec.generate_private_key(ec.SECP256R1())
    with pytest.raises(InvalidKey):
        s.verify(token({"sub": "a"}, other, "ES256"))


def test_a_jwt_without_exp_passes_only_when_not_required(clock):
    assert signer(clock, requireExp=False).verify(token({"sub": "a", "exp": None}))[0] == "a"


def test_minted_cookies_expire_after_max_age(clock):
    s = signer(clock, maxAge=3600)
    value = s.mintCookie("alice")
    clock.advance(3600)
    assert s.verify(value)[0] == "alice"
    clock.advance(1)
    with pytest.raises(InvalidKey, match="max_age"):
        s.verify(value)


@pytest.mark.parametrize("value", [
    "a.1.\u00e9",  # ?session=a.1.%C3%A9: hmac.compare_digest raised TypeError (500)
    "a\u00e9.1.AAAA",
    "eyJ\u00e9.e30.x",
])
def test_non_ascii_values_are_invalid_keys(clock, value):
    with pytest.raises(InvalidKey):
        signer(clock).verify(value)


def test_values_longer_than_any_signed_value_are_not_looked_at(clock):
    s = signer(clock)
    with pytest.raises(InvalidKey, match=str(MAX_SIGNED_VALUE)):
        s.verify(s.mintCookie("a" * 128) + "A" * MAX_SIGNED_VALUE)


def test_a_minted_key_that_looks_like_a_jwt_still_verifies(clock):
    # Minted by an older wslb (which could draw such keys): not locked out.
    s = signer(clock)
    assert s.verify(s.mintCookie("eyJhbGciOi"))[0] == "eyJhbGciOi"


def test_without_a_secret_no_hmac_verifies(clock):
    """A signer with only a public key: a cookie MACed with the empty secret is forged."""
    private = ec.generate_private_key(ec.SECP256R1())
    public = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    s = signer(clock, "", algorithms=("ES256",), publicKey=public)
    with pytest.raises(InvalidKey):
        s.verify(_emptyMac("alice"))
    with pytest.raises(ValueError):
        s.mintCookie("alice")


def _emptyMac(key):
    message = f"{key}.{NOW}"
    digest = hmac.new(b"", message.encode(), hashlib.sha256).digest()
    return message + "." + base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
