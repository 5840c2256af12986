"""Parsing Redis URLs: what each part means, and errors that name the problem."""

import pytest

from wslb.redis_url import RedisAddress, parseRedisURL


@pytest.mark.parametrize("url, expected", [
    ("redis://127.0.0.1:6379/0", RedisAddress("127.0.0.1", 6379)),
    ("redis://cache.internal", RedisAddress("cache.internal", 6379)),
    ("redis://cache.internal/", RedisAddress("cache.internal")),
    ("redis://h:7000/3", RedisAddress("h", 7000, db=3)),
    ("redis://[::1]:6380/1", RedisAddress("::1", 6380, db=1)),
    ("rediss://h", RedisAddress("h", tls=True)),
    ("redis://:s3cret@h", RedisAddress("h", password="s3cret")),
    ("redis://alice:s3cret@h/2", RedisAddress("h", username="alice", password="s3cret", db=2)),
    ("redis://al%40ce:p%3Ass%2Fw@h", RedisAddress("h", username="al@ce", password="p:ss/w")),
    ("rediss://h?ssl_ca_certs=/etc/ca.pem",
     RedisAddress("h", tls=True, ca_file="/etc/ca.pem")),
])
def test_parses(url, expected):
    assert parseRedisURL(url) == expected


def test_caFileArgumentStandsInForTheParameter():
    assert parseRedisURL("rediss://h", ca_file="/ca.pem").ca_file == "/ca.pem"
    assert parseRedisURL("rediss://h?ssl_ca_certs=/url.pem", ca_file="/arg.pem").ca_file == (
        "/url.pem")


@pytest.mark.parametrize("url, problem", [
    ("http://h:6379", "scheme must be redis:// or rediss://"),
    ("h:6379", "scheme must be redis:// or rediss://"),
    ("redis://:6379/0", "no host"),
    ("redis://h:port/0", "the port is not a number from 0 to 65535"),
    ("redis://h:99999/0", "the port is not a number from 0 to 65535"),
    ("redis://h/zero", "database number like /0"),
    ("redis://h/1/2", "database number"),
    ("redis://h/-1", "database number"),
    ("redis://alice@h", "a user name needs a password"),
    ("redis://h?timeout=3", "unknown parameter 'timeout'"),
    ("redis://h?ssl_ca_certs=/ca.pem", "ssl_ca_certs needs rediss://"),
    ("rediss://h?ssl_ca_certs=", "ssl_ca_certs must name one CA file"),
    ("redis://h#frag", 'a "#" ends the address part'),
])
def test_errorsNameTheProblem(url, problem):
    with pytest.raises(ValueError, match="Redis URL") as raised:
        parseRedisURL(url)
    assert problem in str(raised.value)


def test_errorsAndLogsNeverShowThePassword():
    with pytest.raises(ValueError) as raised:
        parseRedisURL("redis://alice:hunter2@h/x")
    assert "hunter2" not in str(raised.value) and "alice:***@h" in str(raised.value)
    with pytest.raises(ValueError) as raised:
        parseRedisURL("redis://alice:hunter2@h:bad/0")
    assert "hunter2" not in str(raised.value)
    address = parseRedisURL("rediss://alice:hunter2@h:7000/2")
    assert address.redacted() == "rediss://alice:***@h:7000/2"
    assert parseRedisURL("redis://[::1]").redacted() == "redis://[::1]:6379/0"
