"""Signed session keys: HMAC cookies and JWTs, verified against an injected clock."""

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from twisted.internet.task import Clock

from wslb.proxy.signing import LEEWAY_SECONDS, InvalidKey, Signer

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
