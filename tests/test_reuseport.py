"""
Several wslb processes on one port (``listen.endpoint = "reuseport:..."``):
the endpoint string, the config guard, and two real twistd processes on one
real Redis sharing a port, one of them killed with -9.
"""

import os
import signal
import socket
from functools import partial

import pytest
import pytest_twisted
import treq
from _cluster_helpers import POLL, fleet, healthyWorkers
from _echo_helpers import TIMEOUT, closeAll, connectWhenServing
from _polling import waitFor
from _twistd_helpers import TWISTD, TwistdWslb
from conftest import free_port
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import defer, error, reactor
from twisted.internet.endpoints import TCP4ServerEndpoint, serverFromString
from twisted.internet.protocol import Factory, Protocol

from wslb.config import ConfigError, load_config, parseEndpoints
from wslb.reuseport import ReusePortEndpoint

USERS = 24  # P(all on one of two processes) = 2 ** -23


# --- The endpoint string ------------------------------------------------------------


@pytest.mark.timeout(10)
@pytest.mark.parametrize("description, reason", [
    ("reuseport", "expected one port"),
    ("reuseport:http", "port 'http' is not an integer"),
    ("reuseport:70000", "port '70000' is not an integer from 0 to 65535"),
    ("reuseport:8080:9090", "got 2 positional arguments"),
    ("reuseport:8080:backlog=0", "backlog '0' is not an integer from 1"),
    ("reuseport:8080:backlog=many", "backlog 'many'"),
    ("reuseport:8080:interface=localhost", "'localhost' is not an IPv4 or IPv6 address"),
    ("reuseport:8080:reuse=yes", "unknown option reuse; allowed: interface, backlog"),
])
def test_bad_endpoint_strings_say_what_is_wrong(description, reason):
    with pytest.raises(ValueError, match=reason):
        serverFromString(reactor, description)


@pytest.mark.timeout(10)
@pytest.mark.parametrize("description", [
    "reuseport:8080", "REUSEPORT:8080:interface=127.0.0.1:backlog=1024",
    r"reuseport:0:interface=\:\:1",
])
def test_good_endpoint_strings_make_the_endpoint(description):
    assert isinstance(serverFromString(reactor, description), ReusePortEndpoint)


def openSockets():
    """How many sockets this process holds open (Twisted's ports also reserve /dev/null)."""
    sockets = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            sockets += os.readlink(f"/proc/self/fd/{fd}").startswith("socket:")
        except OSError:  # the descriptor listdir itself used
            pass
    return sockets


@pytest.mark.timeout(10)
@pytest_twisted.ensureDeferred
async def test_two_listeners_share_a_port_and_a_plain_one_is_refused():
    port = free_port()
    factory = Factory.forProtocol(Protocol)
    before = openSockets()
    listening = []
    try:
        for _ in range(2):
            listening.append(await serverFromString(
                reactor, f"reuseport:{port}:interface=127.0.0.1").listen(factory))
        assert [p.getHost().port for p in listening] == [port, port]
        # One socket per listener: the one we bound was closed after adopting.
        assert openSockets() == before + 2
        with pytest.raises(error.CannotListenError):
            await TCP4ServerEndpoint(reactor, port, interface="127.0.0.1").listen(factory)
    finally:
        await defer.gatherResults([defer.maybeDeferred(p.stopListening) for p in listening])
    assert openSockets() == before


@pytest.mark.timeout(10)
@pytest_twisted.ensureDeferred
async def test_an_ipv6_interface_listens_on_ipv6():
    try:
        socket.create_server(("::1", 0), family=socket.AF_INET6).close()
    except OSError:
        pytest.skip("no IPv6 loopback here")
    factory = Factory.forProtocol(Protocol)
    port = await serverFromString(reactor, r"reuseport:0:interface=\:\:1").listen(factory)
    try:
        host = port.getHost()
        assert (host.type, host.host) == ("TCP", "::1")
        socket.create_connection(("::1", host.port), TIMEOUT).close()
    finally:
        await port.stopListening()


# --- The config --------------------------------------------------------------------


@pytest.mark.timeout(10)
def test_reuseport_with_the_memory_registry_is_a_config_error():
    with pytest.raises(ConfigError) as raised:
        load_config(environ={}, overrides=["listen.endpoint=reuseport:8080"])
    [problem] = raised.value.problems
    assert problem.startswith('listen.endpoint: "reuseport:8080" shares its port')
    assert 'registry.backend = "redis"' in problem


@pytest.mark.timeout(10)
def test_reuseport_with_the_redis_registry_is_accepted():
    config = load_config(environ={}, overrides=[
        "listen.endpoint=reuseport:8080:backlog=1024", "registry.backend=redis"])
    assert config.listen.endpoint == "reuseport:8080:backlog=1024"


@pytest.mark.timeout(10)
def test_a_malformed_reuseport_string_names_the_key():
    config = load_config(environ={}, overrides=[
        "listen.endpoint=reuseport:8080:backlog=lots", "registry.backend=redis"])
    with pytest.raises(ConfigError) as raised:
        parseEndpoints(config, partial(serverFromString, reactor))
    [problem] = raised.value.problems
    assert problem.startswith("listen.endpoint: expected a Twisted server endpoint")
    assert "backlog 'lots'" in problem


@pytest.mark.timeout(40)
def test_twistd_refuses_reuseport_with_the_memory_registry(tmp_path):
    import subprocess

    port = free_port()
    result = subprocess.run(  # reactor-safe: test
        [TWISTD, "-n", "--pidfile=", "wslb",
         "--set", f"listen.endpoint=reuseport:{port}:interface=127.0.0.1"],
        capture_output=True, text=True, timeout=30, cwd=tmp_path,
    )
    assert result.returncode != 0
    assert "listen.endpoint" in result.stdout + result.stderr
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), 0.2).close()


# --- Two real processes on one port ------------------------------------------------


@pytest.fixture
def pair(tmp_path, own_redis_server, stop_after):
    """Two ``twistd -n wslb`` on one reuseport port and one Redis, over three echo workers."""
    workers = fleet(stop_after, 3)
    port = free_port()
    urls = ", ".join(f'"{w.url}"' for w in workers)
    instances = [stop_after(TwistdWslb(
        tmp_path, "registry.backend=redis", f'registry.url="{own_redis_server.url}"',
        "pool.provider=static", f"pool.static.workers=[{urls}]",
        "pool.capacity=100", "pool.min_spare=0", "pool.max_spare=0",
        "pool.scale_interval=1", "pool.health.interval=1", "listen.drain_period=0",
        f"listen.endpoint=reuseport:{port}:interface=127.0.0.1",  # wins over tcp:
    )) for _ in range(2)]
    for instance in instances:
        instance.port = port
    return instances, workers


async def handshakes(instance):
    """Successful handshakes this process served, from its own /metrics."""
    response = await treq.get(instance.admin + "/metrics", timeout=TIMEOUT)
    text = await response.text()
    return sum(
        sample.value for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "wslb_handshakes_total" and sample.labels == {"outcome": "ok"}
    )


async def echoing(instances, keys):
    """Open one connection per key (retrying while workers are adopted); each echoes."""
    clients = {}
    for key in keys:
        clients[key] = await connectWhenServing(instances[0].url(f"/?session={key}"))
    for key, client in clients.items():
        client.sendMessage(key.encode())
        assert await client.nextMessage() == (key.encode(), False)
    return clients


@pytest.mark.timeout(120)
@pytest_twisted.ensureDeferred
async def test_two_processes_share_the_port_and_one_survives_the_other(pair):
    instances, workers = pair
    for instance in instances:
        await waitFor(lambda instance=instance: healthyWorkers(instance), timeout=30,
                      interval=POLL)
    clients = {}
    try:
        clients.update(await echoing(instances, [f"u{i:02d}" for i in range(USERS)]))
        served = [await handshakes(instance) for instance in instances]
        assert sum(served) == USERS
        assert min(served) > 0, f"the kernel gave one process every connection: {served}"
        placed = {key: (await client.ask("whoami"))["worker"] for key, client in clients.items()}

        victim, survivor = instances[1], instances[0]
        victim.process.send_signal(signal.SIGKILL)
        victim.process.wait(TIMEOUT)

        async def orphaned():
            closed = [key for key, client in clients.items() if client.closed.called]
            return closed if len(closed) == served[1] else None
        orphans = await waitFor(orphaned, timeout=TIMEOUT)
        before = await handshakes(survivor)

        # New users, and the users the dead process relayed, all come through the
        # survivor; the latter reach the same worker as before.
        fresh = await echoing(instances, [f"n{i:02d}" for i in range(USERS)])
        clients.update(fresh)
        back = await echoing(instances, orphans)
        clients.update({f"back-{key}": client for key, client in back.items()})
        for key, client in back.items():
            assert (await client.ask("whoami"))["worker"] == placed[key]
        assert await handshakes(survivor) - before == USERS + len(orphans)
    finally:
        closeAll(clients.values())
