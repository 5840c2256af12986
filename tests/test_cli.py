"""The ``wslb`` command, run as a real process against a real admin Site on 127.0.0.1."""

import os
import sys
import tomllib

import pytest
import pytest_twisted
from _admin_helpers import T0, AdminServer
from conftest import free_port
from twisted.internet import utils

from wslb.admin.api import PAGE
from wslb.config import describe, load_config
from wslb.registry import AssignRequest, Queued

TOKEN = "cli-s3cret"


async def wslb(*argv, token=None):
    """Run ``python -m wslb.cli ARGV``; fire with (exit code, stdout, stderr) as text."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WSLB_")}
    if token is not None:
        env["WSLB_ADMIN_TOKEN"] = token
    out, err, code = await utils.getProcessOutputAndValue(
        sys.executable, ["-m", "wslb.cli", *argv], env=env)
    return code, out.decode(), err.decode()


@pytest_twisted.async_yield_fixture()
async def admin():
    admin = AdminServer()
    yield admin
    await admin.close()


# --- check-config -----------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_check_config_prints_the_effective_config_with_secrets_masked(tmp_path):
    path = tmp_path / "wslb.toml"
    path.write_text(
        '[admin]\ntoken = "hunter2-admin"\n'
        '[registry]\nbackend = "redis"\nurl = "redis://:hunter2-redis@10.0.0.5:6379/1"\n'
        '[pool]\nmin_spare = 1\ncapacity = 4\n'
        '[cost.classes]\npremium = 4\n"odd.name" = 2\n'
    )
    code, out, err = await wslb("check-config", str(path))
    assert (code, err) == (0, "")
    assert "hunter2" not in out

    printed = tomllib.loads(out)
    assert printed == describe(load_config(str(path)))
    assert printed["admin"]["token"] == "***"
    assert printed["pool"]["min_spare"] == 1
    assert printed["cost"]["classes"] == {"premium": 4, "odd.name": 2}
    # What it prints is itself a valid config, equal but for the masked secrets.
    again = tmp_path / "again.toml"
    again.write_text(out)
    assert describe(load_config(str(again))) == printed


@pytest_twisted.ensureDeferred
async def test_check_config_names_each_bad_key_and_exits_2(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text('[pool]\nmin_spare = -1\n[listen]\nmax_conections = 5\n')
    code, out, err = await wslb("check-config", str(path))
    assert (code, out) == (2, "")
    lines = err.splitlines()
    assert len(lines) == 2
    assert any(line.startswith("pool.min_spare") for line in lines)
    assert any("listen.max_conections" in line and "max_connections" in line for line in lines)

    code, out, err = await wslb("check-config", str(tmp_path / "missing.toml"))
    assert (code, out) == (2, "")
    assert "missing.toml" in err and "Traceback" not in err


# --- against the admin API ------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_status_shows_workers_sessions_and_queue(admin):
    await admin.addHealthyWorker("10.0.2.110:9000", capacity=3)
    await admin.registry.addWorker("10.0.2.111:9000", "ws://10.0.2.111:9000", "registered", 1, T0)
    await admin.registry.setDraining("10.0.2.111:9000", True)
    for key in ("alice", "bob"):
        await admin.registry.assign(AssignRequest(key, 1, "i1"), T0)
    await admin.registry.release("bob", "i1", T0)
    await admin.registry.assign(AssignRequest("carol", 1, "i1"), T0)
    assert isinstance(await admin.registry.assign(AssignRequest("dave", 1, "i1"), T0), Queued)
    admin.clock.advance(2.5)

    code, out, err = await wslb("status", "--admin", admin.url)
    assert (code, err) == (0, "")
    rows = [line.split() for line in out.splitlines()]
    assert ["10.0.2.110:9000", "healthy", "no", "3/3", "3", "2022-02-08T15:27:00Z"] in rows
    assert ["10.0.2.111:9000", "starting", "yes", "0/1", "0", "-"] in rows
    assert ["alice", "10.0.2.110:9000", "1", "yes", "2022-02-08T15:27:00Z"] in rows
    assert ["bob", "10.0.2.110:9000", "1", "no", "2022-02-08T15:27:00Z"] in rows
    assert "queue: 1 waiting, the oldest for 2.5 s" in out.splitlines()


@pytest_twisted.ensureDeferred
async def test_status_follows_the_pages(admin):
    """More sessions than one page of the API holds: every one is listed."""
    await admin.addHealthyWorker("10.0.2.110:9000", capacity=PAGE + 1)
    keys = [f"user{i:04}" for i in range(PAGE + 1)]
    for key in keys:
        await admin.registry.assign(AssignRequest(key, 1, "i1"), T0)
    code, out, err = await wslb("status", "--admin", admin.url)
    assert (code, err) == (0, "")
    listed = [line.split()[0] for line in out.splitlines() if line.startswith("user")]
    assert listed == keys


@pytest_twisted.ensureDeferred
async def test_status_of_an_empty_instance(admin):
    code, out, _ = await wslb("--admin", admin.url, "status")
    assert code == 0
    assert "(no workers)" in out and "(no sessions)" in out
    assert "queue: 0 waiting" in out


@pytest_twisted.ensureDeferred
async def test_drain_with_admin_before_or_after_the_command(admin):
    for worker in ("10.0.0.1:9000", "10.0.0.2:9000"):
        await admin.addHealthyWorker(worker)

    code, out, err = await wslb("--admin", admin.url, "drain", "10.0.0.1:9000")
    assert (code, err) == (0, "")
    assert "draining 10.0.0.1:9000" in out
    code, _, _ = await wslb("drain", "10.0.0.2:9000", "--admin", admin.url)
    assert code == 0
    assert [w.draining for w in await admin.registry.listWorkers()] == [True, True]

    code, out, err = await wslb("drain", "nope:1", "--admin", admin.url)
    assert (code, out) == (1, "")
    assert err.startswith("wslb: ") and "404" in err and "no worker 'nope:1'" in err
    assert len(err.splitlines()) == 1


@pytest_twisted.ensureDeferred
async def test_end_session_closes_it_and_frees_its_slot(admin):
    await admin.addHealthyWorker("w1")
    await admin.registry.assign(AssignRequest("user/1", 1, "i1"), T0)

    code, out, err = await wslb("end-session", "user/1", "--admin", admin.url)
    assert (code, err) == (0, "")
    assert out.strip() == "ended session user/1"
    admin.clock.advance(0)
    assert admin.ended == ["user/1"]
    assert (await admin.registry.getWorker("w1")).load == 0

    code, out, err = await wslb("end-session", "user/1", "--admin", admin.url)
    assert code == 1
    assert "404" in err and "no session 'user/1'" in err


@pytest_twisted.ensureDeferred
async def test_the_token_comes_from_the_environment():
    admin = AdminServer(token=TOKEN)
    try:
        await admin.addHealthyWorker("w1")
        code, _, err = await wslb("drain", "w1", "--admin", admin.url)
        assert code == 1
        assert "401" in err and "Bearer" in err
        code, _, err = await wslb("drain", "w1", "--admin", admin.url, token="wrong-guess")
        assert code == 1
        assert "403" in err and "wrong bearer token" in err and "wrong-guess" not in err
        assert not (await admin.registry.getWorker("w1")).draining

        code, _, err = await wslb("drain", "w1", "--admin", admin.url, token=TOKEN)
        assert (code, err) == (0, "")
        assert (await admin.registry.getWorker("w1")).draining

        # Reads need the token too: status sends it.
        code, out, err = await wslb("status", "--admin", admin.url)
        assert code == 1 and "401" in err
        code, out, err = await wslb("status", "--admin", admin.url, token=TOKEN)
        assert (code, err) == (0, "") and "w1" in out
    finally:
        await admin.close()


@pytest.mark.parametrize("command", [["status"], ["drain", "w1"], ["end-session", "k"]])
@pytest_twisted.ensureDeferred
async def test_an_unreachable_admin_api_is_one_clear_line(command):
    url = f"http://127.0.0.1:{free_port()}"
    code, out, err = await wslb(*command, "--admin", url)
    assert (code, out) == (1, "")
    assert err == f"wslb: cannot reach the admin API at {url}: Connection refused\n"


@pytest_twisted.ensureDeferred
async def test_a_bad_admin_url_is_a_usage_error():
    code, _, err = await wslb("--admin", "127.0.0.1:8081", "status")
    assert code == 2
    assert "--admin" in err and "http" in err


@pytest.mark.workers(1)
@pytest_twisted.ensureDeferred
async def test_allocate_binds_a_worker_or_queues(echo_workers, start_wslb):
    [worker] = echo_workers
    wslb = await start_wslb(echo_workers)
    code, out, err = await allocateWith(wslb, "first", "--cost", "1")
    assert (code, err) == (0, "")
    assert out == f"allocated first on 127.0.0.1:{worker.port} ({worker.url})\n"
    code, out, err = await allocateWith(wslb, "second", "--wait", "0.5")
    assert (code, out, err) == (0, "queued second at position 0\n", "")
    code, out, err = await allocateWith(wslb, "third", "--cost", "2")
    assert code == 1 and "400" in err and "larger than any worker's capacity" in err
    code, out, err = await allocateWith(wslb, "fourth", "--wait", "soon")
    assert code == 2 and "not a number of seconds" in err


def allocateWith(instance, key, *options):
    return wslb("allocate", key, *options, "--admin", instance.admin)
