"""With [session] secret: only signed keys reach a worker (end to end)."""

import jwt
import pytest_twisted
from _certs import makeJwtKey
from _echo_helpers import getJSON
from _wslb_helpers import rawHandshake
from twisted.internet import reactor

from wslb.proxy.signing import Signer

OLD = "old-secret-" + "o" * 32
NEW = "new-secret-" + "n" * 32


def signed(secret, previous=()):
    """The overrides of a wslb that accepts only keys signed with ``secret`` (or ``previous``)."""
    prev = ", ".join(f'"{p}"' for p in previous)
    return (
        "pool.capacity=10", f'session.secret="{secret}"',
        f"session.previous_secrets=[{prev}]",
        'cost.sources=["claim:cost", "header:X-WSLB-Cost"]',
        'session.sources=["cookie:wslb_session", "header:Authorization", '
        '"header:X-WSLB-Session"]',
    )


@pytest_twisted.ensureDeferred
async def test_unsigned_forged_and_expired_keys_get_401_and_reach_no_worker(
        echo_worker, start_wslb):
    wslb = await start_wslb([echo_worker], *signed(NEW))
    port = wslb.port
    forged = jwt.encode({"sub": "alice"}, "x" * 40, algorithm="HS256")
    expired = jwt.encode({"sub": "alice", "exp": 1000}, NEW, algorithm="HS256")
    for headers in ({"X-WSLB-Session": "alice"},
                    {"Authorization": f"Bearer {forged}"},
                    {"Authorization": f"Bearer {expired}"},
                    {"Cookie": "wslb_session=alice.1.AAAA"}):
        status, _ = await rawHandshake(port, headers=headers)
        assert status == 401, headers
    _, stats = await getJSON(echo_worker.http + "/stats")
    assert stats["connections"] == []  # nothing reached the worker


@pytest_twisted.ensureDeferred
async def test_jwt_and_minted_cookie_pass_and_rotation_keeps_sessions(
        echo_worker, start_wslb, clients):
    wslb = await start_wslb([echo_worker], *signed(OLD))
    token = jwt.encode({"sub": "bob", "cost": 3, "exp": reactor.seconds() + 600}, OLD,
                       algorithm="HS256")
    client = await wslb.connect(headers={"Authorization": f"Bearer {token}"})
    clients.append(client)
    seen = await client.ask("whoami")
    assert seen["session"] == "bob"
    assert seen["headers"]["x-wslb-session"] == "bob"
    _, sessions = await getJSON(wslb.admin + "/api/v1/sessions/bob")
    assert sessions["cost"] == 3  # from the token's claim

    status, headers = await rawHandshake(wslb.port)
    assert status == 101
    cookie = headers["set-cookie"].split(";")[0]
    assert "HttpOnly" in headers["set-cookie"]
    client = await wslb.connect(headers={"Cookie": cookie})
    clients.append(client)
    client.sendMessage(b"one")
    await client.nextMessage()
    minted = (await client.ask("whoami"))["session"]
    assert minted in cookie and cookie != f"wslb_session={minted}"
    await wslb.stop()  # the secrets rotate: a new instance, the same worker

    rotated = await start_wslb([echo_worker], *signed(NEW, previous=[OLD]))
    client = await rotated.connect(headers={"Cookie": cookie})
    clients.append(client)
    seen = await client.ask("whoami")
    assert seen["session"] == minted and seen["count"] == 1  # state kept


@pytest_twisted.ensureDeferred
async def test_a_public_key_alone_turns_verification_on(echo_worker, start_wslb, tmp_path, clients):
    """RS256 with a public key and no secret: unsigned keys are 401, RS256 JWTs served."""
    private, publicFile = makeJwtKey(tmp_path)
    wslb = await start_wslb(
        [echo_worker], 'session.jwt_algorithms=["RS256"]',
        f"session.jwt_public_key_file={publicFile}", "session.issue_cookie=false",
        'session.sources=["header:Authorization", "query:session"]',
    )
    for path in ("/?session=alice", "/?session=alice.1.AAAA"):
        status, _ = await rawHandshake(wslb.port, path=path)
        assert status == 401, path
    token = jwt.encode({"sub": "carol", "exp": reactor.seconds() + 600}, private,
                       algorithm="RS256")
    clients.append(await wslb.connect(headers={"Authorization": f"Bearer {token}"}))
    assert (await clients[0].ask("whoami"))["session"] == "carol"


@pytest_twisted.ensureDeferred
async def test_a_jwt_without_exp_is_401_by_default(echo_worker, start_wslb):
    wslb = await start_wslb([echo_worker], *signed(NEW))
    noExp = jwt.encode({"sub": "alice"}, NEW, algorithm="HS256")
    status, _ = await rawHandshake(wslb.port, headers={"Authorization": f"Bearer {noExp}"})
    assert status == 401


@pytest_twisted.ensureDeferred
async def test_a_non_ascii_signed_key_is_401_without_a_traceback(
        echo_worker, start_wslb, log_events):
    wslb = await start_wslb([echo_worker], f'session.secret="{NEW}"')
    status, _ = await rawHandshake(wslb.port, path="/?session=a.1.%C3%A9")
    assert status == 401
    assert [e for e in log_events if "log_failure" in e] == []


@pytest_twisted.ensureDeferred
async def test_with_a_secret_only_a_verified_claim_sets_the_cost(echo_worker, start_wslb, clients):
    wslb = await start_wslb([echo_worker], "pool.capacity=10", f'session.secret="{NEW}"')
    cookie = "wslb_session=" + Signer(NEW, (), reactor).mintCookie("erin")
    clients.append(await wslb.connect(path="/?cost=10", headers={"Cookie": cookie}))
    _, session = await getJSON(wslb.admin + "/api/v1/sessions/erin")
    assert session["cost"] == 1  # the default: ?cost=10 is not vouched for
    token = jwt.encode({"sub": "dave", "cost": 7, "exp": reactor.seconds() + 600}, NEW,
                       algorithm="HS256")
    clients.append(await wslb.connect(path=f"/?session={token}&cost=10"))
    _, session = await getJSON(wslb.admin + "/api/v1/sessions/dave")
    assert session["cost"] == 7
