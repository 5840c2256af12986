"""With [session] secret: only signed keys reach a worker (end to end)."""

import jwt
import pytest_twisted
from _echo_helpers import closeAll, getJSON
from _wslb_helpers import rawHandshake, staticWslb

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
        token = jwt.encode({"sub": "bob", "cost": 3}, OLD, algorithm="HS256")
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
