"""Reading session keys and costs from a handshake: RFC 6265 cookies, bounded work."""

import time

import jwt
import pytest
from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher

from wslb.config import Source, load_config
from wslb.proxy import identity
from wslb.proxy.errors import HandshakeRefused
from wslb.proxy.identity import HandshakeFields, Identifier, cookieValue, mintKey, queryValue
from wslb.proxy.signing import Signer

SECRET = "s" * 40


@pytest.mark.parametrize("header, name, value", [
    ("wslb_session=abc", "wslb_session", "abc"),
    ("a=1; wslb_session=abc; b=2", "wslb_session", "abc"),
    ("a=1;wslb_session = abc ;b=2", "wslb_session", "abc"),
    ('wslb_session="abc"', "wslb_session", "abc"),  # DQUOTEs go, nothing else
    ('wslb_session="a\\"b"', "wslb_session", 'a\\"b'),
    ('wslb_session="', "wslb_session", '"'),
    ("wslb_session=a=b", "wslb_session", "a=b"),
    ("wslb_session=", "wslb_session", ""),
    ("wslb_session=first; wslb_session=second", "wslb_session", "first"),
    ("wslb_session", "wslb_session", None),  # no "=": no cookie pair
    ("xwslb_session=abc", "wslb_session", None),
    ("", "wslb_session", None),
])
def test_cookie_value(header, name, value):
    assert cookieValue(header, name) == value


@pytest.mark.parametrize("query, name, value", [
    ("session=abc", "session", "abc"),
    ("a=1&session=abc&session=def", "session", "abc"),
    ("se%73sion=a%2Bb+c", "session", "a+b c"),
    ("session", "session", ""),
    ("sessions=x", "session", None),
    ("", "session", None),
])
def test_query_value(query, name, value):
    assert queryValue(query, name) == value


def test_reading_a_hostile_head_costs_linear_time():
    """
    14,000 backslashes in a quoted cookie value cost SimpleCookie (Python <
    3.11.10) about half a second; the same work on a head a tenth that size
    must not be a hundredth of it, or the cost is not linear.
    """
    def cost(n):
        fields = HandshakeFields(
            {"cookie": 'a="' + "\\" * n + '"; wslb_session="' + "\\" * n + '"'},
            "&".join(["x=%25"] * (n // 8)) + "&session=k")
        started = time.perf_counter()
        for _ in range(20):
            for source in (Source("cookie", "wslb_session"), Source("cookie", "zzz"),
                           Source("query", "session")):
                fields.read(source)
        return time.perf_counter() - started

    cost(100)  # warm up
    small, large = min(cost(700) for _ in range(3)), min(cost(7000) for _ in range(3))
    assert large < small * 30, (small, large)


def test_minted_keys_never_start_like_a_jwt(monkeypatch):
    drawn = iter(["eyJhbGciOiJIUzI1NiJ9xxxxxxxxxxxxx", "eyJzdWIiOiJ4In0xxxxxxxxxxxxxxxxx", "fine"])
    monkeypatch.setattr(identity.secrets, "token_urlsafe", lambda n: next(drawn))
    assert mintKey() == "fine"


def identifier(*overrides, signer=None, capacity=1000):
    config = load_config(environ={}, overrides=["pool.capacity=1000", *overrides])
    return Identifier(config.session, config.cost, config.pool.default_cost,
                      lambda: capacity, signer=signer)


def fields(query="", **headers):
    return HandshakeFields({k.lower().replace("_", "-"): v for k, v in headers.items()}, query)


@pytest.mark.parametrize("query", [
    "session=k&cost=%C2%B2",  # "²" is a digit to str.isdigit, not to int()
    "session=k&cost=" + "9" * 5000,  # int() refuses more than 4300 digits
])
def test_odd_costs_are_400_not_500(query):
    with pytest.raises(HandshakeRefused) as refused:
        identifier().identify(fields(query))
    assert refused.value.code == 400


def test_with_signing_only_claims_set_the_cost():
    events = []
    globalLogPublisher.addObserver(events.append)
    try:
        signed = identifier(signer=Signer(SECRET, (), Clock()))
    finally:
        globalLogPublisher.removeObserver(events.append)
    [warning] = [e for e in events if "ignored" in e.get("log_format", "")]
    assert warning["ignored"] == "query:cost, header:X-WSLB-Cost"

    cookie = "wslb_session=" + Signer(SECRET, (), Clock()).mintCookie("alice")
    seen = signed.identify(fields("cost=10", cookie=cookie, x_wslb_cost="20"))
    assert (seen.key, seen.cost) == ("alice", 1)
    bearer = jwt.encode({"sub": "bob", "exp": 3600, "cost": 7}, SECRET, algorithm="HS256")
    seen = identifier('session.sources=["header:Authorization"]', "session.issue_cookie=false",
                      signer=Signer(SECRET, (), Clock())).identify(
        fields("cost=10", authorization="Bearer " + bearer))
    assert (seen.key, seen.cost) == ("bob", 7)


def test_a_minted_signed_cookie_carries_max_age():
    signed = identifier("session.max_age=1h", signer=Signer(SECRET, (), Clock()))
    assert "; Max-Age=3600" in signed.identify(fields()).setCookie
