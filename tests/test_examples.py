"""
Every file under examples/ is started here the way its README says, with
only its ports (and, for EC2, the API endpoint) moved onto loopback.
"""

import dataclasses
import functools
import tomllib

import boto3
import pytest
import pytest_twisted
from _ec2_helpers import CREDENTIALS, LoopbackWorkers, MotoEc2
from _echo_helpers import EchoWorkerProcess, closeAll, connectWebSocket, connectWhenServing, getJSON
from _examples_helpers import EXAMPLES, ClusterScript, running
from _polling import waitFor
from _twistd_helpers import TwistdWslb
from conftest import free_port
from twisted.internet import threads

from wslb.config import Config, load_config
from wslb.pool import service as pool_service
from wslb.pool.ec2 import POOL_TAG
from wslb.service import makeService

LOOPBACK_ANY_PORT = "tcp:0:interface=127.0.0.1"


def dottedKeys(section, prefix=""):
    """Every key of the config schema, as "pool.health.path"."""
    for f in dataclasses.fields(section):
        if "section" in f.metadata:
            yield from dottedKeys(f.metadata["section"], f"{prefix}{f.name}.")
        else:
            yield prefix + f.name


def written(raw, dotted):
    for part in dotted.split("."):
        if not isinstance(raw, dict) or part not in raw:
            return False
        raw = raw[part]
    return True


@pytest.fixture
def echo_workers():
    """start(n) -> n healthy echo worker processes, killed after the test."""
    started = []

    def start(n):
        workers = [EchoWorkerProcess() for _ in range(n)]
        started.extend(workers)
        return [worker.waitHealthy() for worker in workers]

    yield start
    for worker in started:
        worker.kill()


@pytest.fixture
def twistd(tmp_path):
    """run(example, *overrides) -> a listening ``twistd -n wslb --config examples/<example>``."""
    started = []

    def run(example, *overrides):
        wslb = TwistdWslb(tmp_path, *overrides, config=EXAMPLES / example)
        started.append(wslb)
        return wslb.waitListening()

    yield run
    for wslb in started:
        wslb.stop()


async def echoes(client):
    """Check an echo through ``client``; return who answered ``whoami``."""
    client.sendMessage(b"through the example")
    assert await client.nextMessage() == (b"through the example", False)
    return await client.ask("whoami")


async def leave(*clients):
    """Close cleanly: a test that stops twistd at once blocks its own reactor, so an
    aborted connection would stay open and hold twistd's drain period."""
    for client in clients:
        client.sendClose(1000)
        await client.waitClosed()


async def echoThrough(url):
    """Connect, check an echo, and return who answered ``whoami``."""
    client = await connectWhenServing(url)
    try:
        seen = await echoes(client)
        await leave(client)
        return seen
    finally:
        closeAll([client])


# -- local.toml --------------------------------------------------------------------


def test_local_example_is_the_embedded_default_written_out_in_full():
    path = EXAMPLES / "local.toml"
    assert load_config(path, environ={}) == load_config(None, environ={})
    with open(path, "rb") as f:
        raw = tomllib.load(f)
    assert [key for key in dottedKeys(Config) if not written(raw, key)] == []


@pytest_twisted.ensureDeferred
async def test_local_example_serves_an_echo(twistd):
    first = free_port()
    wslb = twistd("local.toml", f'pool.local.ports="{first}-{first + 40}"')
    seen = await echoThrough(wslb.url("/?session=local-example"))
    assert seen["session"] == "local-example"
    assert seen["worker"].startswith("echo-")


# -- static.toml -------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_static_example_sends_users_to_its_two_workers(twistd, echo_workers):
    workers = echo_workers(2)
    urls = ", ".join(f'"{worker.url}"' for worker in workers)
    wslb = twistd("static.toml", f"pool.static.workers=[{urls}]")
    clients = [await connectWhenServing(wslb.url("/?session=one"))]
    try:
        clients.append(await connectWebSocket(wslb.url("/?session=two")))
        seen = {(await echoes(client))["worker"] for client in clients}
        await leave(*clients)
    finally:
        closeAll(clients)
    # capacity = 1: one session on each worker of the list.
    assert seen == {f"echo-{worker.port}" for worker in workers}


# -- redis-cluster-of-3.sh ------------------------------------------------------------


@pytest.fixture
def cluster_script(tmp_path, own_redis_server):
    """start(*args, **sizes) -> the script running against the test's own Redis."""
    scripts = []

    def start(*args, **sizes):
        script = ClusterScript(tmp_path, own_redis_server, *args, **sizes)
        scripts.append(script)
        return script

    yield start
    for script in scripts:
        script.kill()


@pytest.mark.timeout(90)
@pytest_twisted.ensureDeferred
async def test_cluster_script_runs_three_sticky_instances_until_ctrl_c(cluster_script):
    # Extra arguments reach every instance: a 1 s scale interval lets the
    # leader adopt the workers sooner (its first tick waits one interval).
    script = cluster_script("--set", "pool.scale_interval=1s").waitReady()
    for n in (1, 2, 3):
        assert await getJSON(script.admin(n) + "/healthz") == (200, {"ok": True})

    seen = await echoThrough(script.url(1, "/?session=traveller"))
    again = await connectWebSocket(script.url(3, "/?session=traveller"))
    try:
        seenAgain = await again.ask("whoami")
        await leave(again)
    finally:
        closeAll([again])
    assert seen["worker"] in {f"echo-{port}" for port in script.workerPorts}
    assert (seenAgain["worker"], seenAgain["count"]) == (seen["worker"], 1)

    started = script.processes()
    assert len(started) >= 6, "the script, three twistd and two echo workers"
    assert script.interrupt() == 130
    assert [pid for pid in started if running(pid)] == [], script.text()


@pytest.mark.timeout(60)
def test_cluster_script_check_mode_exits_once_healthy_and_stops_all(cluster_script):
    # One instance and one worker (INSTANCE_PORTS, WORKER_PORTS) keep it cheap.
    script = cluster_script("--check", instances=1, workers=1)
    assert script.process.wait(45) == 0, script.text()
    assert "ready: 1 wslb instance(s)" in script.text()
    assert script.processes() == [], "--check stops all it started"


# -- ec2.toml ------------------------------------------------------------------------


def test_ec2_example_takes_its_secrets_from_the_environment():
    config = load_config(EXAMPLES / "ec2.toml", environ={
        "WSLB_REDIS_URL": "rediss://:auth@master.example.internal:6379/0",
        "WSLB_ADMIN_TOKEN": "admin-token",
    })
    assert (config.registry.backend, config.registry.url) == (
        "redis", "rediss://:auth@master.example.internal:6379/0")
    assert config.admin.token == "admin-token"
    assert config.listen.endpoint.startswith("haproxy:")
    assert (config.pool.provider, config.pool.ec2.address) == ("ec2", "private_ip")


@pytest.fixture
def moto(guard, monkeypatch):
    """Moto's EC2 on loopback; AWS settings from the environment only."""
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_CONFIG_FILE": "/nonexistent", "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent",
        "AWS_EC2_METADATA_DISABLED": "true",
    }.items():
        monkeypatch.setenv(name, value)
    server = MotoEc2()
    yield server
    server.stop()


def createLaunchTemplate(moto, region, name):
    """The example's launch template, in the example's region; its id."""
    ec2 = boto3.client("ec2", endpoint_url=moto.url, region_name=region, **CREDENTIALS)
    image = ec2.describe_images(
        Owners=["amazon"], Filters=[{"Name": "name", "Values": ["amzn2-ami-hvm-*"]}])["Images"][0]
    return ec2, ec2.create_launch_template(
        LaunchTemplateName=name,
        LaunchTemplateData={"ImageId": image["ImageId"], "InstanceType": "t3.micro"},
    )["LaunchTemplate"]["LaunchTemplateId"]


@pytest.mark.timeout(60)
@pytest_twisted.ensureDeferred
async def test_ec2_example_launches_min_spare_instances_from_its_template(
        moto, guard, echo_workers, monkeypatch):
    config = load_config(EXAMPLES / "ec2.toml", environ={}, overrides=[
        f"listen.endpoint={LOOPBACK_ANY_PORT}", f"admin.endpoint={LOOPBACK_ANY_PORT}",
        "registry.backend=memory", f'pool.ec2.endpoint_url="{moto.url}"',
    ])
    ec2, templateId = createLaunchTemplate(
        moto, config.pool.ec2.region, config.pool.ec2.launch_template)
    # The seam of the EC2 tests: the instances' invented addresses map to echo workers.
    workers = echo_workers(config.pool.min_spare)
    resolver = LoopbackWorkers([worker.port for worker in workers])
    monkeypatch.setattr(pool_service, "Ec2Provider",
                        functools.partial(pool_service.Ec2Provider, resolveAddress=resolver))

    wslb = makeService(config)
    wslb.startService()
    try:
        users = await wslb.getServiceNamed("listener").whenListening()
        admin = await wslb.getServiceNamed("admin").whenListening()
        listed = await waitFor(
            lambda: getJSON(f"http://127.0.0.1:{admin.getHost().port}/api/v1/workers"),
            lambda answer: sum(w["state"] == "healthy" for w in answer[1]["workers"])
            == config.pool.min_spare,
        )
        # What was launched for an empty pool (a session below takes a worker,
        # after which the scaler rightly launches another spare).
        reservations = (await threads.deferToThread(ec2.describe_instances, Filters=[
            {"Name": f"tag:{POOL_TAG}", "Values": [config.pool.ec2.pool_id]}]))["Reservations"]
        instances = {i["InstanceId"]: i for r in reservations for i in r["Instances"]}
        asked = dict(resolver.asked)
        seen = await echoThrough(f"ws://127.0.0.1:{users.getHost().port}/?session=cloud")
    finally:
        await wslb.stopService()

    assert len(instances) == config.pool.min_spare == 2
    for instance in instances.values():
        tags = {tag["Key"]: tag["Value"] for tag in instance["Tags"]}
        assert tags["aws:ec2launchtemplate:id"] == templateId
        assert instance["State"]["Name"] == "running"
    assert {w["id"]: w["state"] for w in listed[1]["workers"]} == dict.fromkeys(instances, "healthy")
    assert asked == {
        instance_id: f"{instance['PrivateIpAddress']}:{config.pool.ec2.port}"
        for instance_id, instance in instances.items()
    }
    assert seen["worker"] in {f"echo-{worker.port}" for worker in workers}
