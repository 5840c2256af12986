"""
Who may use the admin port of a whole wslb instance (issue 12, item 3): with
a token every /api/v1 read needs it, /healthz and /metrics stay open;
without one, requests to a foreign Host name (DNS rebinding) and mutations
from a foreign Origin are refused.
"""

import pytest_twisted
import treq
from _echo_helpers import TIMEOUT

TOKEN = "e2e-admin-s3cret"


async def call(wslb, method, path, headers=None, json=None):
    response = await treq.request(method, wslb.admin + path, headers=headers, json=json,
                                  timeout=TIMEOUT)
    await response.content()
    return response.code


@pytest_twisted.ensureDeferred
async def test_with_a_token_reads_need_it_and_health_and_metrics_stay_open(start_wslb):
    wslb = await start_wslb([], f"admin.token={TOKEN}")
    for path in ("/api/v1/sessions", "/api/v1/workers"):
        assert await call(wslb, "GET", path) == 401, path
        assert await call(wslb, "GET", path, {"Authorization": f"Bearer {TOKEN}"}) == 200
    for path in ("/healthz", "/metrics"):
        assert await call(wslb, "GET", path) == 200, path


@pytest_twisted.ensureDeferred
async def test_without_a_token_rebinding_hosts_and_foreign_origins_are_refused(start_wslb):
    wslb = await start_wslb([])
    port = wslb.admin.rpartition(":")[2]
    register = {"url": "ws://10.9.9.9:9000", "capacity": 1}
    assert await call(wslb, "POST", "/api/v1/workers",
                      {"Host": f"rebind.example:{port}"}, register) == 403
    assert await call(wslb, "POST", "/api/v1/workers",
                      {"Origin": "http://rebind.example"}, register) == 403
    assert await call(wslb, "GET", "/api/v1/sessions", {"Host": f"rebind.example:{port}"}) == 403
    assert await call(wslb, "GET", "/healthz", {"Host": f"rebind.example:{port}"}) == 200
    assert await call(wslb, "POST", "/api/v1/workers",
                      {"Host": f"localhost:{port}"}, register) == 201
