"""
docs/aws.md, run: every block marked ``<!-- tested: NAME -->`` is checked
here as far as it can be offline (the TLS listener's block end to end in
test_listeners_e2e.py). The TOML loads as a wslb config; the JSON parses;
the IAM policies are policy documents; the EventBridge pattern routes the
sample EC2 event and no other (moto's EventBridge, to an SQS queue); every
``aws`` command names an operation with all its required options and no
unknown ones (botocore's service models, the CLI's own source of truth); the
token encoding command prints what the guide says; and the Lambda package is
built by the guide's commands and imported from the zip alone.
"""

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import uuid
import zipfile
from pathlib import Path
from urllib.parse import unquote

import _guide as guide
import boto3
import botocore.session
import pytest
from _ec2_helpers import CREDENTIALS, REGION
from botocore import xform_name

from wslb.aws import lambdas
from wslb.config import load_config
from wslb.redis_url import parseRedisURL

PROJECT = Path(__file__).resolve().parent.parent
FENCE = re.compile(r"^ *```", re.MULTILINE)


def test_every_block_of_the_guide_is_tested_but_the_drawing():
    fences = len(FENCE.findall(guide.GUIDE.read_text()))
    assert fences % 2 == 0
    drawings = 1  # the layout at the top
    assert len(guide.blocks()) == fences // 2 - drawings


# --- TOML: wslb configs ----------------------------------------------------------------


@pytest.mark.parametrize("name", ["listen-tls-at-nlb", "listen-tls-behind-nlb", "registry",
                                  "pool-ec2"])
def test_the_config_blocks_load(tmp_path, name):
    path = tmp_path / "wslb.toml"
    path.write_text(guide.block(name))
    load_config(path, environ={"AWS_REGION": "eu-central-1"})


def test_tls_at_the_nlb_tells_wslb_the_client_used_tls(tmp_path):
    path = tmp_path / "wslb.toml"
    path.write_text(guide.block("listen-tls-at-nlb"))
    config = load_config(path, environ={})
    assert config.listen.endpoint.startswith("haproxy:tcp:")
    assert (config.listen.forwarded_proto, config.session.cookie_secure) == ("https", "auto")


# --- JSON: policies, events, environments -----------------------------------------------


@pytest.mark.parametrize("name", ["iam-wslb-instances", "iam-volume-key", "iam-lambda-secret"])
def test_the_iam_policies_are_policy_documents(name):
    policy = json.loads(guide.block(name))
    assert policy["Version"] == "2012-10-17"
    sids = [s["Sid"] for s in policy["Statement"]]
    assert len(set(sids)) == len(sids)
    for statement in policy["Statement"]:
        assert set(statement) <= {"Sid", "Effect", "Action", "Resource", "Condition"}
        assert statement["Effect"] == "Allow"
        actions = statement["Action"] if isinstance(statement["Action"], list) else [
            statement["Action"]]
        assert all(re.fullmatch(r"[a-z0-9-]+:[A-Za-z*]+", a) for a in actions), actions
        resources = statement["Resource"]
        resources = resources if isinstance(resources, list) else [resources]
        assert all(r == "*" or r.startswith("arn:aws:") for r in resources), resources


def test_the_volume_key_policy_has_all_five_permissions_ec2_needs():
    policy = json.loads(guide.block("iam-volume-key"))
    allowed = {a for s in policy["Statement"] for a in (
        s["Action"] if isinstance(s["Action"], list) else [s["Action"]])}
    assert allowed == {"kms:CreateGrant", "kms:Decrypt", "kms:DescribeKey",
                       "kms:GenerateDataKeyWithoutPlainText", "kms:ReEncrypt*"}
    [grant] = [s for s in policy["Statement"] if s["Action"] == "kms:CreateGrant"]
    assert grant["Condition"] == {"Bool": {"kms:GrantIsForAWSResource": "true"}}


def test_the_encode_command_prints_what_the_guide_says_and_decodes_to_the_token():
    command = guide.block("encode-token")
    printed = subprocess.run(["bash", "-c", command], capture_output=True, text=True,
                             check=True, timeout=30).stdout.strip()
    token = shlex.split(command)[-1]
    assert unquote(printed) == token and "#" not in printed
    assert f"prints `{printed}`" in guide.GUIDE.read_text()
    url = json.loads(guide.block("lambda-env"))["Variables"]["WSLB_REDIS_URL"]
    assert parseRedisURL(url).password == token and parseRedisURL(url).tls


def test_the_lambda_environments_are_what_the_handlers_read():
    for name in ("lambda-env", "lambda-env-secret"):
        variables = json.loads(guide.block(name))["Variables"]
        assert set(variables) in ({"WSLB_REDIS_URL", "WSLB_NAMESPACE"},
                                  {"WSLB_REDIS_URL_SECRET_ARN", "WSLB_NAMESPACE"}), variables
    arn = json.loads(guide.block("lambda-env-secret"))["Variables"]["WSLB_REDIS_URL_SECRET_ARN"]
    assert json.loads(guide.block("iam-lambda-secret"))["Statement"][0]["Resource"] == arn


@pytest.fixture
def cold_start(redis_server, monkeypatch):
    monkeypatch.setenv("WSLB_REDIS_URL", redis_server.url)
    monkeypatch.delenv("WSLB_REDIS_URL_SECRET_ARN", raising=False)
    monkeypatch.setenv("WSLB_NAMESPACE", "guide-" + uuid.uuid4().hex[:8])
    monkeypatch.setattr(lambdas, "_handlers", None)
    yield
    if lambdas._handlers is not None:
        lambdas._handlers.client.close()


def test_the_sample_events_are_what_the_handlers_take(cold_start):
    ec2 = lambdas.ec2_state_change(json.loads(guide.block("ec2-event")), None)
    assert (ec2["ec2_state"], ec2["outcome"]) == ("terminated", "unknown worker")
    worker = lambdas.worker_event(json.loads(guide.block("worker-event")), None)
    assert worker["outcome"] == "unknown session"


@pytest.mark.timeout(30)
def test_the_event_pattern_routes_the_ec2_event_and_no_other(moto_server):
    def client(service):
        return boto3.client(service, endpoint_url=moto_server, region_name=REGION, **CREDENTIALS)

    events, sqs = client("events"), client("sqs")
    queue = sqs.create_queue(QueueName="guide-" + uuid.uuid4().hex[:8])["QueueUrl"]
    queueArn = sqs.get_queue_attributes(
        QueueUrl=queue, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    rule = "guide-" + uuid.uuid4().hex[:8]
    events.put_rule(Name=rule, EventPattern=guide.block("event-pattern"))
    events.put_targets(Rule=rule, Targets=[{"Id": "queue", "Arn": queueArn}])

    sample = json.loads(guide.block("ec2-event"))

    def delivered(**changes):
        event = {**sample, **changes}
        answer = events.put_events(Entries=[{
            "Source": event["source"], "DetailType": event["detail-type"],
            "Detail": json.dumps(event["detail"]), "Resources": event["resources"]}])
        assert answer["FailedEntryCount"] == 0
        messages = sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=10,
                                       WaitTimeSeconds=0).get("Messages", [])
        for message in messages:
            sqs.delete_message(QueueUrl=queue, ReceiptHandle=message["ReceiptHandle"])
        return [json.loads(m["Body"]) for m in messages]

    [routed] = delivered()
    assert routed["detail"] == sample["detail"] and routed["source"] == "aws.ec2"
    assert delivered(source="aws.autoscaling") == []  # not an EC2 event
    assert delivered(**{"detail-type": "EC2 Spot Instance Interruption Warning"}) == []
    assert delivered(detail={**sample["detail"], "state": "running"}) == []
    for state in ("stopping", "stopped", "shutting-down"):
        assert len(delivered(detail={**sample["detail"], "state": state})) == 1, state


# --- aws commands: the operations and options of the APIs they call ----------------------

# Options of the aws CLI that are no API parameter: global ones, and the CLI's
# own spellings of a parameter (lambda's --zip-file fills Code; ec2's
# --protocol/--port/--source-group fill IpPermissions).
CLI_OPTIONS = {"region", "profile", "output", "query", "cli-binary-format"}
CLI_PARAMETERS = {
    ("lambda", "create-function", "zip-file"): "Code",
    **{("ec2", "authorize-security-group-ingress", option): "IpPermissions"
       for option in ("protocol", "port", "source-group")},
}


def awsCommands(block):
    """Each ``aws`` command of a shell block: (service, command, {option: [values]})."""
    for line in block.replace("\\\n", " ").splitlines():
        words = shlex.split(line, comments=True)
        if not words or words[0] != "aws":
            continue
        service, command, rest = words[1], words[2], words[3:]
        options, current = {}, None
        for word in rest:
            if word.startswith("--"):
                current = word[2:]
                assert current not in options, f"--{current} twice: {line}"
                options[current] = []
            else:
                assert current is not None, f"a value before any option: {line}"
                options[current].append(word)
        yield service, command, options


@pytest.mark.parametrize("name", ["nlb-commands", "lambda-commands"])
def test_every_aws_command_has_the_required_options_and_no_unknown_one(name):
    session = botocore.session.get_session()
    commands = list(awsCommands(guide.block(name)))
    assert commands
    for service, command, options in commands:
        model = session.get_service_model(service)
        [operation] = [model.operation_model(op) for op in model.operation_names
                       if xform_name(op, "-") == command]
        members = {xform_name(m, "-"): m for m in operation.input_shape.members}
        given = set()
        for option, values in options.items():
            assert values, f"aws {service} {command} --{option} has no value"
            if option in CLI_OPTIONS:
                continue
            member = CLI_PARAMETERS.get((service, command, option)) or members.get(option)
            assert member, f"aws {service} {command}: no option --{option}"
            given.add(member)
        missing = set(operation.input_shape.required_members) - given
        assert not missing, f"aws {service} {command} lacks {sorted(missing)}"


def test_the_rule_may_invoke_only_its_function():
    [permission] = [o for s, c, o in awsCommands(guide.block("lambda-commands"))
                    if c == "add-permission"]
    assert permission["action"] == ["lambda:InvokeFunction"]
    assert permission["principal"] == ["events.amazonaws.com"]
    [rule] = [o for s, c, o in awsCommands(guide.block("lambda-commands")) if c == "put-rule"]
    assert permission["source-arn"][0].endswith(":rule/" + rule["name"][0])


def test_the_functions_outlast_their_redis_timeouts():
    creates = [o for s, c, o in awsCommands(guide.block("lambda-commands"))
               if c == "create-function"]
    assert {o["handler"][0] for o in creates} == {
        "wslb.aws.lambdas.ec2_state_change", "wslb.aws.lambdas.worker_event"}
    worst = lambdas.SECRETS_TIMEOUT + 3 * lambdas.REDIS_TIMEOUT  # connect, load, run
    assert all(int(o["timeout"][0]) > worst for o in creates)


# --- the Lambda package ----------------------------------------------------------------


def runtimeLine(block):
    """The guide's first line names the runtime; here, this interpreter's, on this machine."""
    first, _, rest = block.partition("\n")
    assert first.startswith("PYTHON=3.12 PLATFORM=manylinux2014_x86_64 "), first
    assert os.uname().machine == "x86_64"
    return f"PYTHON={sys.version_info.major}.{sys.version_info.minor} " \
           f"PLATFORM=manylinux2014_x86_64\n{rest}"


@pytest.fixture(scope="module")
def lambda_zip(tmp_path_factory):
    """The guide's packaging commands, run in a copy of the project (pip from this venv)."""
    work = tmp_path_factory.mktemp("lambda") / "wslb"
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "pyproject.toml",
                            "README.md", "src"], cwd=PROJECT, capture_output=True, text=True,
                           check=True, timeout=30).stdout.split()
    for name in files:
        if (PROJECT / name).is_file():
            (work / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(PROJECT / name, work / name)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    subprocess.run(["bash", "-euo", "pipefail", "-c", runtimeLine(guide.block("lambda-package"))],
                   cwd=work, env=env, check=True, timeout=540,
                   stdout=subprocess.DEVNULL)
    return work / "wslb-lambda.zip"


def clean(code, path, **environ):
    """``python -S -s -c code`` with only ``path`` to import from: no site-packages."""
    return subprocess.run([sys.executable, "-S", "-s", "-c", code],
                          env={"PYTHONPATH": str(path), **environ}, cwd=path.parent,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.timeout(600)
def test_the_handlers_import_from_the_zip_alone(lambda_zip):
    done = clean("import wslb.aws.lambdas, redis, sys; "
                 "print(redis.__file__); print([p for p in sys.path if 'site-packages' in p])",
                 lambda_zip)
    assert done.returncode == 0, done.stderr
    [origin, sitePackages] = done.stdout.splitlines()
    assert origin.startswith(str(lambda_zip)) and sitePackages == "[]"
    with zipfile.ZipFile(lambda_zip) as z:
        assert any(n.startswith("redis/") for n in z.namelist())


@pytest.mark.timeout(600)
def test_a_handler_runs_from_the_unpacked_zip_as_lambda_runs_it(lambda_zip, redis_server):
    task = lambda_zip.parent / "task"  # Lambda unpacks the zip into /var/task
    with zipfile.ZipFile(lambda_zip) as z:
        z.extractall(task)
    done = clean("from wslb.aws.lambdas import worker_event; "
                 "print(worker_event({'worker': 'i-0', 'event': 'heartbeat'}, None)['outcome'])",
                 task, WSLB_REDIS_URL=redis_server.url, WSLB_NAMESPACE="guide-zip")
    assert (done.returncode, done.stdout.strip()) == (0, "unknown worker"), done.stderr


# --- where TLS ends: the numbers the guide cites are recorded -----------------------------


def test_the_tls_recommendation_cites_a_recorded_run_of_the_tls_rows():
    text = " ".join(guide.GUIDE.read_text().split())
    cited = re.search(r"the TLS rows of the run of (\d{4}-\d\d-\d\d \d\d:\d\d)", text)
    assert cited, "the guide cites no run of bench/RESULTS.md"
    results = (PROJECT / "bench" / "RESULTS.md").read_text()
    start = results.index(f"## {cited[1]} UTC")
    section = results[start:results.find("\n## ", start + 1)]
    [pingpong] = [line for line in section.splitlines()
                  if line.startswith("| 50 connections ping-pong, 32 B | msg/s |")]
    [connect] = [line for line in section.splitlines()
                 if line.startswith("| new connections") and "| conn/s |" in line]
    header = next(line for line in section.splitlines() if line.startswith("| scenario | unit"))
    assert header.split(" | ")[-1].startswith("wslb TLS (ssl:) / HAProxy")
    for line, ratio in ((pingpong, "0.80"), (connect, "0.91")):
        assert line.rstrip(" |").split(" | ")[-1] == ratio
        assert f"{ratio}x" in text
