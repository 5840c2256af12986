"""
How the registry URL's secret reaches Redis, for wslb and for the Lambda
handlers: passwords with the characters ElastiCache allows in AUTH tokens
("#" ends a URL's address part unless percent-encoded), the password read
from Secrets Manager (moto's server), and a TLS Redis whose certificate
names another host (refused: the aws extra's redis-py checks host names).
"""

import tomllib
import uuid
from pathlib import Path
from urllib.parse import quote

import boto3
import pytest
import pytest_twisted
import redis
from _ec2_helpers import CREDENTIALS, REGION
from conftest import RedisServer
from packaging.requirements import Requirement
from twisted.internet import reactor

from wslb.aws import lambdas
from wslb.config import ConfigError, load_config
from wslb.registry.redis import RedisRegistry

# 16-128 printable characters; of the others only ! & # $ ^ < > - (ElastiCache's AUTH rules).
TOKEN = "Ab3!&#$^<>-wslb-token"
HEARTBEAT = {"worker": "i-unknown", "event": "heartbeat"}


@pytest.fixture
def cold_start(monkeypatch):
    """A Lambda cold start whose configuration the test sets; its client closed after."""
    for name in ("WSLB_REDIS_URL", "WSLB_REDIS_URL_SECRET_ARN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("WSLB_NAMESPACE", "creds-" + uuid.uuid4().hex[:8])
    monkeypatch.setattr(lambdas, "_handlers", None)
    yield monkeypatch
    if lambdas._handlers is not None:
        lambdas._handlers.client.close()


@pytest.fixture
def guarded_redis(tmp_path):
    server = RedisServer(tmp_path, "--requirepass", TOKEN)
    server.start()
    yield server
    server.stop()


def urlWith(server, password):
    return f"redis://:{password}@127.0.0.1:{server.port}/0"


# --- "#" and its friends in the password ----------------------------------------------


def test_an_unencoded_hash_in_the_password_is_a_config_error_naming_the_key(guarded_redis):
    with pytest.raises(ConfigError) as raised:
        load_config(environ={"WSLB_REDIS_URL": urlWith(guarded_redis, TOKEN)},
                    overrides=["registry.backend=redis"])
    [problem] = raised.value.problems
    assert problem.startswith("registry.url: ")
    assert '"#" as %23' in problem and "percent-encode the password" in problem
    assert TOKEN not in problem and "wslb-token" not in problem


@pytest.mark.timeout(15)
def test_an_unencoded_hash_stops_the_lambda_handler_with_the_same_answer(
        guarded_redis, cold_start):
    cold_start.setenv("WSLB_REDIS_URL", urlWith(guarded_redis, TOKEN))
    with pytest.raises(ValueError, match='WSLB_REDIS_URL: .*"#" as %23') as raised:
        lambdas.worker_event(HEARTBEAT, None)
    assert "wslb-token" not in str(raised.value)


@pytest_twisted.inlineCallbacks
def test_a_percent_encoded_password_connects_wslb(guarded_redis):
    config = load_config(environ={"WSLB_REDIS_URL": urlWith(guarded_redis, quote(TOKEN, safe=""))},
                         overrides=["registry.backend=redis"])
    registry = RedisRegistry(reactor, config.registry.url, "creds", timeout=2.0)
    registry.startService()
    try:
        yield registry.addWorker("w1", "ws://h:1", "static", 1, 0)
        assert [w.id for w in (yield registry.listWorkers())] == ["w1"]
    finally:
        yield registry.stopService()


@pytest.mark.timeout(15)
def test_a_percent_encoded_password_connects_the_lambda_handler(guarded_redis, cold_start):
    cold_start.setenv("WSLB_REDIS_URL", urlWith(guarded_redis, quote(TOKEN, safe="")))
    assert lambdas.worker_event(HEARTBEAT, None)["outcome"] == "unknown worker"


# --- the URL from Secrets Manager -------------------------------------------------------


@pytest.mark.timeout(30)
def test_the_url_from_moto_server_is_read_once_and_again_after_a_rotation(
        guarded_redis, cold_start, moto_server):
    secrets = boto3.client("secretsmanager", endpoint_url=moto_server,
                           region_name=REGION, **CREDENTIALS)
    arn = secrets.create_secret(Name="wslb-redis-" + uuid.uuid4().hex[:8],
                                SecretString=urlWith(guarded_redis, quote(TOKEN, safe="")))["ARN"]
    cold_start.setenv("WSLB_REDIS_URL_SECRET_ARN", arn)
    cold_start.setenv("AWS_ENDPOINT_URL_SECRETS_MANAGER", moto_server)
    cold_start.setenv("AWS_DEFAULT_REGION", REGION)
    cold_start.setenv("AWS_ACCESS_KEY_ID", CREDENTIALS["aws_access_key_id"])
    cold_start.setenv("AWS_SECRET_ACCESS_KEY", CREDENTIALS["aws_secret_access_key"])
    assert lambdas.worker_event(HEARTBEAT, None)["outcome"] == "unknown worker"
    first = lambdas._handlers
    assert lambdas.worker_event(HEARTBEAT, None)["outcome"] == "unknown worker"
    assert lambdas._handlers is first  # once per cold start

    rotated = "Zz9-rotated-token-16"
    admin = redis.Redis(port=guarded_redis.port, password=TOKEN)
    admin.config_set("requirepass", rotated)
    admin.execute_command("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes")
    admin.close()
    secrets.put_secret_value(SecretId=arn, SecretString=urlWith(guarded_redis, rotated))
    with pytest.raises(redis.AuthenticationError):
        lambdas.worker_event(HEARTBEAT, None)  # the old password, until the next event
    assert lambdas.worker_event(HEARTBEAT, None)["outcome"] == "unknown worker"
    first.client.close()


def test_the_url_and_the_secret_are_not_both_set(cold_start):
    cold_start.setenv("WSLB_REDIS_URL", "redis://127.0.0.1:1/0")
    cold_start.setenv("WSLB_REDIS_URL_SECRET_ARN", "arn:aws:secretsmanager:eu-central-1:1:secret:x")
    with pytest.raises(RuntimeError, match="set one of WSLB_REDIS_URL and WSLB_REDIS_URL_SECRET_ARN"):
        lambdas.worker_event(HEARTBEAT, None)


# --- TLS: the host name is checked ------------------------------------------------------


def test_the_aws_extra_requires_a_redis_py_that_checks_host_names():
    """redis-py checks a rediss:// server's host name by default from 6.0 on."""
    project = tomllib.loads((Path(__file__).parent.parent / "pyproject.toml").read_text())
    [required] = [Requirement(r) for r in project["project"]["optional-dependencies"]["aws"]
                  if Requirement(r).name == "redis"]
    assert not required.specifier.contains("5.3.1") and required.specifier.contains("6.0.0")


@pytest.mark.timeout(20)
def test_the_lambda_handler_refuses_a_tls_redis_whose_certificate_names_another_host(
        tls_redis, cold_start):
    cold_start.setenv("WSLB_REDIS_URL", tls_redis.url(tls_redis.ca, host="localhost"))
    with pytest.raises(redis.ConnectionError, match="certificate verify failed"):
        lambdas.worker_event(HEARTBEAT, None)

    lambdas._handlers.client.close()
    cold_start.setattr(lambdas, "_handlers", None)
    cold_start.setenv("WSLB_REDIS_URL", tls_redis.url(tls_redis.ca))  # the name it has
    assert lambdas.worker_event(HEARTBEAT, None)["outcome"] == "unknown worker"
