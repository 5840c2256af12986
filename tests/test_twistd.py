"""``twistd -n wslb`` as a real process: the embedded default, and bad configs."""

import json
import signal
import socket
import subprocess

import pytest
import pytest_twisted
from _echo_helpers import connectWhenServing
from _twistd_helpers import TWISTD, TwistdWslb, alive
from conftest import free_port
from twisted.internet import reactor
from twisted.internet.task import deferLater

from wslb.logs import fingerprint


def workerPids(parent):
    """Pids of the processes ``parent`` spawned (its local echo workers)."""
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(parent)],  # reactor-safe: test
                         capture_output=True, text=True).stdout
    return [int(pid) for pid in out.split()]


@pytest.fixture
def default_wslb(tmp_path):
    first = free_port()
    wslb = TwistdWslb(tmp_path, f'pool.local.ports="{first}-{first + 40}"')
    yield wslb
    wslb.stop()


@pytest.mark.timeout(60)
@pytest_twisted.ensureDeferred
async def test_embedded_default_serves_an_echo_within_seconds(default_wslb):
    default_wslb.waitListening()
    # The local workers are starting: 503/502 until healthy.
    client = await connectWhenServing(default_wslb.url("/?session=newcomer"))
    try:
        client.sendMessage(b"hello wslb")
        assert await client.nextMessage() == (b"hello wslb", False)
        seen = await client.ask("whoami")
        assert seen["session"] == "newcomer"
        assert seen["worker"].startswith("echo-")
    finally:
        client.transport.abortConnection()
    pids = workerPids(default_wslb.process.pid)
    assert len(pids) >= 2  # min_spare local workers were spawned
    # twistd re-raises the signal it stopped on, so a clean stop reports -SIGTERM.
    assert default_wslb.stop() in (0, -signal.SIGTERM)
    assert not [pid for pid in pids if alive(pid)], "local workers outlived wslb"


@pytest.mark.parametrize("toml, sets, key", [
    ("[listen]\nmax_connections = -1\n", [], "listen.max_connections"),
    ("[pool]\nmin_spare = 9\nmax_spare = 2\n", [], "pool.min_spare"),
    ("[admin]\nendpoint = \"tcpp:80\"\n", [], "admin.endpoint"),
    ("[pool]\nscale_intervall = \"5s\"\n", [], "pool.scale_intervall"),
    # parsed once the reactor is installed, with the listener's port kept free
    ("", ["admin.endpoint=ssl:{port}:privateKey=/nonexistent/k.pem"], "admin.endpoint"),
    ("", ["listen.endpoint=ssl:{port}:privateKey=/nonexistent/k.pem"], "listen.endpoint"),
])
def test_bad_config_exits_before_listening(tmp_path, toml, sets, key):
    path = tmp_path / "wslb.toml"
    path.write_text(toml)
    port = free_port()
    sets = [f"listen.endpoint=tcp:{port}:interface=127.0.0.1", *sets]
    result = subprocess.run(  # reactor-safe: test
        [TWISTD, "-n", "--pidfile=", "wslb", "--config", str(path),
         *(arg for s in sets for arg in ("--set", s.format(port=port)))],
        capture_output=True, text=True, timeout=30, cwd=tmp_path,
    )
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert key in output
    assert "Traceback" not in output
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), 0.2).close()


def test_sigterm_exits_promptly(tmp_path):
    wslb = TwistdWslb(tmp_path, "pool.provider=static", "pool.min_spare=0")
    wslb.waitListening()
    wslb.signal(signal.SIGTERM)
    assert wslb.process.wait(10) in (0, -signal.SIGTERM)
    assert "Traceback" not in wslb.output()
    wslb.stop()


@pytest.mark.timeout(60)
@pytest_twisted.ensureDeferred
async def test_json_logs_carry_a_connection_lifecycle(tmp_path):
    from _echo_helpers import EchoWorkerProcess

    worker = EchoWorkerProcess().waitHealthy()
    wslb = TwistdWslb(
        tmp_path, 'log.format="json"', "pool.provider=static",
        f'pool.static.workers=["{worker.url}"]', "pool.min_spare=0",
    )
    try:
        wslb.waitListening()
        client = await connectWhenServing(wslb.url("/?session=logged"), within=15)
        client.sendMessage(b"hello")
        await client.nextMessage()
        client.sendClose(4001, "done")
        await client.waitClosed()
        await deferLater(reactor, 0.3)  # the closed line logged (stdout is read once stopped)
    finally:
        wslb.stop()
        worker.kill()
    lines = [json.loads(line) for line in wslb.process_output.splitlines() if line.strip()]
    # Logs show the key as its fingerprint ([log] session_keys).
    events = {record.get("event"): record for record in lines
              if record.get("key") == fingerprint("logged")}
    assert events["opened"]["worker"] == f"127.0.0.1:{worker.port}"
    assert events["opened"]["fresh"] is True
    assert events["opened"]["worker_url"].startswith(worker.url)
    closed = events["closed"]
    assert closed["code"] == 4001 and closed["bytes_from_user"] > 5
    for record in lines:
        assert {"time", "level", "namespace", "message"} <= set(record)
