"""With [session] secret: only signed keys reach a worker (end to end)."""

import jwt
import pytest_twisted
from _certs import makeJwtKey
from _echo_helpers import closeAll, getJSON
from _wslb_helpers import rawHandshake, staticWslb
from twisted.internet import reactor
from twisted.logger import globalLogPublisher

from wslb.proxy.signing import Signer

OLD = "old-secret-" + "o" * 32
NEW = "new-secret-" + "n" * 32


def signedWslb(worker, secret, previous=()):
    prev = ", ".join(f'"{p}"' for p in previous)
    return staticWslb(
        [worker], "pool.capacity=10", f'session.secret="{secret}"',
        f"session.previous_secrets=[{prev}]",
        'cost.sources=["claim:cost", "header:X-WSLB-Cost"]',
        'session.sources=["cookie:wslb_session", "header:Authorization", '
        '"header:X-WSLB-Session"]',
    )


@pytest_twisted.ensureDeferred
async def test_unsigned_forged_and_expired_keys_get_401_and_reach_no_worker(echo_worker):
    wslb = await signedWslb(echo_worker, NEW).start()
    try:
        await wslb.waitHealthy(1)
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
    finally:
        await wslb.stop()


@pytest_twisted.ensureDeferred
async def test_jwt_and_minted_cookie_pass_and_rotation_keeps_sessions(echo_worker):
    clients = []
    wslb = await signedWslb(echo_worker, OLD).start()
    try:
        await wslb.waitHealthy(1)
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
    finally:
        closeAll(clients)
        await wslb.stop()

    rotated = await signedWslb(echo_worker, NEW, previous=[OLD]).start()
    try:
        await rotated.waitHealthy(1)
        client = await rotated.connect(headers={"Cookie": cookie})
        clients.append(client)
        seen = await client.ask("whoami")
        assert seen["session"] == minted and seen["count"] == 1  # state kept
    finally:
        closeAll(clients)
        await rotated.stop()


@pytest_twisted.ensureDeferred
async def test_a_public_key_alone_turns_verification_on(echo_worker, tmp_path):
    """RS256 with a public key and no secret: unsigned keys are 401, RS256 JWTs served."""
    private, publicFile = makeJwtKey(tmp_path)
    wslb = await staticWslb(
        [echo_worker], 'session.jwt_algorithms=["RS256"]',
        f"session.jwt_public_key_file={publicFile}", "session.issue_cookie=false",
        'session.sources=["header:Authorization", "query:session"]',
    ).start()
    clients = []
    try:
        await wslb.waitHealthy(1)
        for path in ("/?session=alice", "/?session=alice.1.AAAA"):
            status, _ = await rawHandshake(wslb.port, path=path)
            assert status == 401, path
        token = jwt.encode({"sub": "carol", "exp": reactor.seconds() + 600}, private,
                           algorithm="RS256")
        clients.append(await wslb.connect(headers={"Authorization": f"Bearer {token}"}))
        assert (await clients[0].ask("whoami"))["session"] == "carol"
    finally:
        closeAll(clients)
        await wslb.stop()


@pytest_twisted.ensureDeferred
async def test_a_jwt_without_exp_is_401_by_default(echo_worker):
    wslb = await signedWslb(echo_worker, NEW).start()
    try:
        await wslb.waitHealthy(1)
        noExp = jwt.encode({"sub": "alice"}, NEW, algorithm="HS256")
        status, _ = await rawHandshake(wslb.port, headers={"Authorization": f"Bearer {noExp}"})
        assert status == 401
    finally:
        await wslb.stop()


@pytest_twisted.ensureDeferred
async def test_a_non_ascii_signed_key_is_401_without_a_traceback(echo_worker):
    failures = []

    def observe(event):
        if "log_failure" in event:
            failures.append(event)

    wslb = await staticWslb([echo_worker], f'session.secret="{NEW}"').start()
    globalLogPublisher.addObserver(observe)
    try:
        await wslb.waitHealthy(1)
        status, _ = await rawHandshake(wslb.port, path="/?session=a.1.%C3%A9")
        assert status == 401
        assert failures == []
    finally:
        globalLogPublisher.removeObserver(observe)
        await wslb.stop()


@pytest_twisted.ensureDeferred
async def test_with_a_secret_only_a_verified_claim_sets_the_cost(echo_worker):
    wslb = await staticWslb([echo_worker], "pool.capacity=10", f'session.secret="{NEW}"').start()
    clients = []
    try:
        await wslb.waitHealthy(1)
        cookie = "wslb_session=" + Signer(NEW, (), reactor).mintCookie("erin")
        clients.append(await wslb.connect(path="/?cost=10", headers={"Cookie": cookie}))
        _, session = await getJSON(wslb.admin + "/api/v1/sessions/erin")
        assert session["cost"] == 1  # the default: ?cost=10 is not vouched for
        token = jwt.encode({"sub": "dave", "cost": 7, "exp": reactor.seconds() + 600}, NEW,
                           algorithm="HS256")
        clients.append(await wslb.connect(path=f"/?session={token}&cost=10"))
        _, session = await getJSON(wslb.admin + "/api/v1/sessions/dave")
        assert session["cost"] == 7
    finally:
        closeAll(clients)
        await wslb.stop()
