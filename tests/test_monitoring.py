"""
The monitoring examples plug in: examples/prometheus-rules.yml passes
promtool's checks and unit tests (each alert fires); the queries of
examples/grafana-dashboard.json parse, and its panels fit a Grafana 10
dashboard; every metric an expression names is one a running wslb serves
at /metrics.
"""

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import pytest_twisted
import treq
import yaml
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).parent.parent
RULES = ROOT / "examples" / "prometheus-rules.yml"
RULE_TESTS = ROOT / "tests" / "prometheus-rules.test.yml"
DASHBOARD = ROOT / "examples" / "grafana-dashboard.json"
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


def panels():
    return json.loads(DASHBOARD.read_text())["panels"]


def expressions():
    """(where, PromQL) of every rule and every dashboard query."""
    return [(rule["alert"], rule["expr"]) for rule in alerts()] + [
        (panel["title"], target["expr"])
        for panel in panels() for target in panel.get("targets", ())]


# Grafana's variables, as a query would have them filled in.
FILLED = {"$__rate_interval": "1m", "$job": "wslb", "$instance": ".*"}


def test_the_dashboards_queries_parse(tmp_path):
    """Each query, its variables filled in, as a recording rule: promtool parses them all."""
    rules = []
    for i, (where, expr) in enumerate(expressions()[len(alerts()):]):
        for variable, value in FILLED.items():
            expr = expr.replace(variable, value)
        assert "$" not in expr, (where, expr)
        rules.append({"record": f"dashboard:query_{i}", "expr": expr})
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    assert f"SUCCESS: {len(rules)} rules found" in promtool("check", "rules", str(path))


def test_the_dashboard_is_a_grafana_10_dashboard_with_the_status_pages_charts():
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["schemaVersion"] >= 36  # Grafana 9.1+; 38 is Grafana 10's
    assert dashboard["uid"] == "wslb-pool" and dashboard["title"] == "wslb"
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert variables["instance"]["multi"] and variables["instance"]["includeAll"]
    assert "$job" in variables["instance"]["definition"]

    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    cells = set()
    for panel in dashboard["panels"]:
        box = panel["gridPos"]
        assert box["x"] >= 0 and box["w"] > 0 and box["x"] + box["w"] <= 24, panel["title"]
        covered = {(x, y) for x in range(box["x"], box["x"] + box["w"])
                   for y in range(box["y"], box["y"] + box["h"])}
        assert not covered & cells, f"{panel['title']} overlaps another panel"
        cells |= covered
        for target in panel.get("targets", ()):
            assert target["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
            assert target["refId"] and target["expr"]

    titles = [panel["title"] for panel in dashboard["panels"]]
    for chart in ("Sessions", "Queue", "Workers by state", "Load vs capacity",
                  "Handshakes per second by outcome"):
        assert chart in titles
    [perInstance] = [p for p in dashboard["panels"] if p["type"] == "row" and p.get("repeat")]
    assert perInstance["repeat"] == "instance" and "$instance" in perInstance["title"]


@pytest.mark.timeout(30)
@pytest_twisted.ensureDeferred
async def test_every_metric_an_expression_names_is_served(start_wslb):
    wslb = await start_wslb([])
    response = await treq.get(wslb.admin + "/metrics", timeout=5)
    text = (await response.content()).decode()
    served = {sample.name for family in text_string_to_metric_families(text)
              for sample in family.samples}
    missing = {(where, name) for where, expr in expressions()
               for name in METRIC_NAME.findall(expr) if name not in served}
    assert not missing, f"named but not in /metrics: {sorted(missing)}"
