"""
The monitoring examples plug in: examples/prometheus-rules.yml passes
promtool's checks and unit tests (each alert fires), and every metric an
expression names is one a running wslb serves at /metrics.
"""

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import pytest_twisted
import treq
import yaml
from _wslb_helpers import InProcessWslb
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).parent.parent
RULES = ROOT / "examples" / "prometheus-rules.yml"
RULE_TESTS = ROOT / "tests" / "prometheus-rules.test.yml"
METRIC_NAME = re.compile(r"\bwslb_[a-z0-9_]+\b")


def promtool(*args):
    """Run promtool; the test fails (not skips) without it: .ci/run installs it."""
    executable = shutil.which("promtool")
    if executable is None:
        pytest.fail("promtool is required and not on PATH; it comes with Debian's prometheus "
                    "package: apt-get install -y prometheus", pytrace=False)
    result = subprocess.run([executable, *args], capture_output=True, text=True, timeout=60,
                            cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def alerts():
    """The alerting rules of examples/prometheus-rules.yml."""
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def test_the_rules_pass_promtool_check():
    assert "SUCCESS: 6 rules found" in promtool("check", "rules", str(RULES))


def test_each_alert_fires_in_the_promtool_unit_tests():
    names = {rule["alert"] for rule in alerts()}
    assert names == {"WslbNoHealthyWorkers", "WslbQueueWaitHigh", "WslbHandshakeFailures",
                     "WslbRegistryErrors", "WslbNoLeader", "WslbWorkerStuckStarting"}
    tests = yaml.safe_load(RULE_TESTS.read_text())["tests"]
    fired = {case["alertname"] for test in tests for case in test["alert_rule_test"]
             if case["exp_alerts"]}
    quiet = {case["alertname"] for test in tests for case in test["alert_rule_test"]
             if not case["exp_alerts"]}
    assert fired == names and quiet == names  # each fires, and each is seen not firing
    assert "SUCCESS" in promtool("test", "rules", str(RULE_TESTS))


def expressions():
    """(where, PromQL) of every rule."""
    return [(rule["alert"], rule["expr"]) for rule in alerts()]


@pytest.mark.timeout(30)
@pytest_twisted.ensureDeferred
async def test_every_metric_an_expression_names_is_served():
    wslb = await InProcessWslb("pool.provider=static", "pool.min_spare=0").start()
    try:
        response = await treq.get(wslb.admin + "/metrics", timeout=5)
        text = (await response.content()).decode()
    finally:
        await wslb.stop()
    served = {sample.name for family in text_string_to_metric_families(text)
              for sample in family.samples}
    missing = {(where, name) for where, expr in expressions()
               for name in METRIC_NAME.findall(expr) if name not in served}
    assert not missing, f"named but not in /metrics: {sorted(missing)}"
