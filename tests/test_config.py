"""wslb.config: DESIGN §4 defaults, where values come from, one clear line per mistake."""

import dataclasses
import functools
import json
import subprocess
import sys

import pytest
from _certs import makeJwtKey

from wslb.config import PLACEMENTS, ConfigError, Source, describe, load_config, parseEndpoints
from wslb.registry import PACK, SPREAD

NO_ENV = {}


def value_at(config, dotted):
    return functools.reduce(getattr, dotted.split("."), config)


def problems_for(overrides, environ=NO_ENV):
    with pytest.raises(ConfigError) as info:
        load_config(environ=environ, overrides=overrides)
    return info.value.problems


def write(tmp_path, text):
    path = tmp_path / "wslb.toml"
    path.write_text(text)
    return path


def to_toml(tables, prefix=()):
    """Just enough TOML writing for describe() output: scalars, lists and tables."""
    lines = [f"[{'.'.join(prefix)}]"] if prefix else []
    lines += [f"{json.dumps(k)} = {json.dumps(v)}" for k, v in tables.items() if not isinstance(v, dict)]
    lines += [to_toml(v, prefix + (k,)) for k, v in tables.items() if isinstance(v, dict)]
    return "\n".join(lines)


def leaf_keys(config, prefix=""):
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if dataclasses.is_dataclass(value):
            yield from leaf_keys(value, f"{prefix}{f.name}.")
        else:
            yield prefix + f.name


# Every key, with its DESIGN §4 default converted as the contract says.
DESIGN_DEFAULTS = [
    ("listen.endpoint", "tcp:8080"),
    ("listen.allowed_origins", ()),
    ("listen.max_connections", 10000),
    ("listen.open_handshake_timeout", 10.0),
    ("listen.max_message_size", 16 * 1024 * 1024),
    ("listen.idle_timeout", 0.0),
    ("listen.auto_ping", 30.0),
    ("listen.per_ip_connections", 0),
    ("listen.per_ip_rate", 0.0),
    ("listen.drain_period", 10.0),
    ("listen.forwarded_proto", "auto"),
    ("admin.endpoint", "tcp:8081:interface=127.0.0.1"),
    ("admin.token", ""),
    ("registry.backend", "memory"),
    ("registry.url", "redis://127.0.0.1:6379/0"),
    ("registry.namespace", "wslb"),
    (
        "session.sources",
        (Source("cookie", "wslb_session"), Source("query", "session"), Source("header", "X-WSLB-Session")),
    ),
    ("session.issue_cookie", True),
    ("session.secret", ""),
    ("session.previous_secrets", ()),
    ("session.jwt_algorithms", ("HS256",)),
    ("session.jwt_public_key_file", ""),
    ("session.jwt_require_exp", True),
    ("session.max_age", 30 * 86400.0),
    ("session.jwt_audience", ""),
    ("session.jwt_issuer", ""),
    ("session.cookie_secure", "auto"),
    ("session.cookie_samesite", "Lax"),
    ("session.reconnect_grace", 900.0),
    ("session.end_close_code", 4000),
    ("queue.max_length", 1000),
    ("queue.timeout", 60.0),
    ("queue.allow_overtake", False),
    ("queue.status_path", ""),
    ("queue.rejoin_grace", 20.0),
    ("queue.client_path", ""),
    ("http.paths", ()),
    ("http.strip_prefix", False),
    ("http.max_body", 1024 ** 3),
    ("http.timeout", 60.0),
    ("log.format", "text"),
    ("log.session_keys", "fingerprint"),
    ("gc.freeze", True),
    ("gc.thaw_interval", 3600.0),
    ("pool.provider", "local"),
    ("pool.capacity", 1),
    ("pool.default_cost", 1),
    ("pool.placement", "pack"),
    ("pool.min_spare", 2),
    ("pool.max_spare", 5),
    ("pool.min_workers", 0),
    ("pool.max_workers", 20),
    ("pool.scale_interval", 5.0),
    ("pool.start_timeout", 180.0),
    ("pool.leader_ttl", 15.0),
    ("pool.unhealthy_timeout", 30.0),
    ("pool.health.path", "/health"),
    ("pool.health.interval", 5.0),
    ("pool.health.timeout", 2.0),
    ("pool.health.failures", 3),
    ("pool.local.command", ("{python}", "-m", "wslb.worker.echo", "--port", "{port}")),
    ("pool.local.host", "127.0.0.1"),
    ("pool.local.ports", (9100, 9199)),
    ("pool.static.workers", ()),
    ("pool.ec2.region", ""),
    ("pool.ec2.launch_template", ""),
    ("pool.ec2.pool_id", ""),
    ("pool.ec2.port", 9000),
    ("pool.ec2.address", "private_ip"),
    ("pool.ec2.endpoint_url", ""),
    ("cost.sources", (Source("claim", "cost"), Source("query", "cost"), Source("header", "X-WSLB-Cost"))),
    ("cost.classes", {}),
]


@pytest.mark.parametrize("dotted, expected", DESIGN_DEFAULTS, ids=[d for d, _ in DESIGN_DEFAULTS])
def test_default_matches_design(dotted, expected):
    actual = value_at(load_config(environ=NO_ENV), dotted)
    assert actual == expected
    assert type(actual) is type(expected)


def test_defaults_table_covers_every_key():
    assert sorted(leaf_keys(load_config(environ=NO_ENV))) == sorted(d for d, _ in DESIGN_DEFAULTS)


def test_config_is_frozen():
    config = load_config(environ=NO_ENV)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.pool.min_spare = 3


FILE = """
[listen]
endpoint = "tcp:0:interface=127.0.0.1"
allowed_origins = ["https://app.example.com", "https://*.example.com"]
idle_timeout = "5m"
max_message_size = "64KiB"
per_ip_rate = 2.5

[registry]
backend = "redis"
url = "rediss://cache.internal:6380/2"

[session]
sources = ["header:Authorization", "cookie:sid"]
cookie_secure = true
issue_cookie = false
jwt_algorithms = ["RS256", "ES256"]
jwt_public_key_file = "{key}"
reconnect_grace = 90

[pool]
provider = "static"
capacity = 1000
default_cost = 100
placement = "spread"

[pool.local]
ports = "10000-10009"

[pool.static]
workers = ["ws://10.0.2.110:9000", "wss://worker.internal:443"]

[pool.ec2]
address = "tag:wslb-endpoint"

[cost]
classes = { simple = 100, complex = 1000 }
"""

FILE_VALUES = [
    ("listen.endpoint", "tcp:0:interface=127.0.0.1"),
    ("listen.allowed_origins", ("https://app.example.com", "https://*.example.com")),
    ("listen.idle_timeout", 300.0),
    ("listen.max_message_size", 65536),
    ("listen.per_ip_rate", 2.5),
    ("registry.backend", "redis"),
    ("registry.url", "rediss://cache.internal:6380/2"),
    ("session.sources", (Source("header", "Authorization"), Source("cookie", "sid"))),
    ("session.cookie_secure", True),
    ("session.jwt_algorithms", ("RS256", "ES256")),
    ("session.reconnect_grace", 90.0),
    ("pool.placement", "spread"),
    ("pool.local.ports", (10000, 10009)),
    ("pool.static.workers", ("ws://10.0.2.110:9000", "wss://worker.internal:443")),
    ("pool.ec2.address", "tag:wslb-endpoint"),
    ("cost.classes", {"simple": 100, "complex": 1000}),
    ("pool.min_spare", 2),  # untouched keys keep their defaults
]


def writeFile(tmp_path):
    return write(tmp_path, FILE.replace("{key}", str(makeJwtKey(tmp_path)[1])))


def test_file_values_are_read(tmp_path):
    config = load_config(writeFile(tmp_path), environ=NO_ENV)
    assert {d: value_at(config, d) for d, _ in FILE_VALUES} == dict(FILE_VALUES)


def test_describe_output_loads_back_to_the_same_config(tmp_path):
    config = load_config(writeFile(tmp_path), environ=NO_ENV)
    again = tmp_path / "again.toml"
    again.write_text(to_toml(describe(config)))
    assert load_config(again, environ=NO_ENV) == config


@pytest.mark.parametrize(
    "overrides, dotted, expected",
    [
        (["pool.min_spare=1"], "pool.min_spare", 1),
        (['listen.endpoint="tcp:0"'], "listen.endpoint", "tcp:0"),
        (["listen.endpoint=tcp:0"], "listen.endpoint", "tcp:0"),
        ([" log.format = json "], "log.format", "json"),
        (["queue.allow_overtake=true"], "queue.allow_overtake", True),
        (["session.cookie_secure=false"], "session.cookie_secure", False),
        (["pool.local.ports=9000-9001"], "pool.local.ports", (9000, 9001)),
        (["admin.token="], "admin.token", ""),
        (["pool.capacity=10", "cost.classes.big=10"], "cost.classes", {"big": 10}),
        (
            ['session.sources=["query:s"]', "session.issue_cookie=false"],
            "session.sources",
            (Source("query", "s"),),
        ),
    ],
)
def test_override(overrides, dotted, expected):
    assert value_at(load_config(environ=NO_ENV, overrides=overrides), dotted) == expected


@pytest.mark.parametrize(
    "written, seconds",
    [('"500ms"', 0.5), ('"30s"', 30.0), ('"5m"', 300.0), ('"1h"', 3600.0), ('"30d"', 2592000.0), ('"0"', 0.0),
     ('"1.5s"', 1.5), ("2", 2.0), ("0.25", 0.25)],
)
def test_duration(written, seconds):
    config = load_config(environ=NO_ENV, overrides=[f"listen.idle_timeout={written}"])
    assert config.listen.idle_timeout == seconds


@pytest.mark.parametrize(
    "written, size",
    [('"16MiB"', 16 * 2**20), ('"64KiB"', 65536), ('"1GiB"', 2**30), ('"100kB"', 100_000),
     ('"1MB"', 10**6), ('"1.5KiB"', 1536), ("1024", 1024)],
)
def test_size(written, size):
    config = load_config(environ=NO_ENV, overrides=[f"listen.max_message_size={written}"])
    assert config.listen.max_message_size == size


SECRETS_FILE = """
[admin]
token = "from-file"
[registry]
url = "redis://file:6379/0"
[session]
secret = "from-file"
"""


def test_environment_secrets_win_over_the_file(tmp_path):
    environ = {
        "WSLB_ADMIN_TOKEN": "env-token",
        "WSLB_REDIS_URL": "redis://env:6379/1",
        "WSLB_SESSION_SECRET": "env-secret",
    }
    config = load_config(write(tmp_path, SECRETS_FILE), environ=environ)
    assert (config.admin.token, config.registry.url, config.session.secret) == (
        "env-token",
        "redis://env:6379/1",
        "env-secret",
    )


def test_empty_environment_variable_leaves_the_file_value(tmp_path):
    config = load_config(write(tmp_path, SECRETS_FILE), environ={"WSLB_ADMIN_TOKEN": ""})
    assert config.admin.token == "from-file"


def test_override_wins_over_file_and_environment(tmp_path):
    config = load_config(
        write(tmp_path, SECRETS_FILE),
        environ={"WSLB_ADMIN_TOKEN": "env-token"},
        overrides=['admin.token="cli-token"'],
    )
    assert config.admin.token == "cli-token"


def test_process_environment_is_the_default(monkeypatch):
    monkeypatch.setenv("WSLB_SESSION_SECRET", "process-secret")
    assert load_config().session.secret == "process-secret"


@pytest.mark.parametrize(
    "overrides, region",
    [([], "eu-west-1"), (['pool.ec2.region=""'], "eu-west-1"), (["pool.ec2.region=us-east-2"], "us-east-2")],
)
def test_aws_region_fills_only_an_empty_region(overrides, region):
    config = load_config(environ={"AWS_REGION": "eu-west-1"}, overrides=overrides)
    assert config.pool.ec2.region == region


# (overrides, the key the single problem line must start with, text it must contain)
MISTAKES = [
    # unknown names
    (["listen.max_conections=5"], "listen.max_conections", "unknown key (did you mean max_connections?)"),
    (["listne.endpoint=tcp:0"], "listne", "unknown section (did you mean listen?)"),
    (["pool.helth.path=/h"], "pool.helth", "did you mean health?"),
    (["listen.zzz=1"], "listen.zzz", "allowed: endpoint, allowed_origins,"),
    (["listen=5"], "listen", "expected a table, got 5"),
    (["nonsense"], 'override "nonsense"', "expected dotted.key=VALUE"),
    # wrong types (true is not an integer, 1 is not a boolean)
    (["listen.max_connections=true"], "listen.max_connections", "expected an integer >= 1, got true"),
    (["listen.max_connections=many"], "listen.max_connections", 'got "many"'),
    (["queue.allow_overtake=1"], "queue.allow_overtake", "expected true or false, got 1"),
    (["session.cookie_secure=1"], "session.cookie_secure", 'one of "auto", true, false, got 1'),
    (["listen.forwarded_proto=tls"], "listen.forwarded_proto", 'one of "auto", "https", "http", got "tls"'),
    (["listen.allowed_origins=https://a.example"], "listen.allowed_origins", "expected a list"),
    (["pool.local.host=5"], "pool.local.host", "got 5"),
    # out of range
    (["listen.max_connections=0"], "listen.max_connections", "got 0"),
    (["listen.per_ip_rate=-1"], "listen.per_ip_rate", "a number >= 0, got -1"),
    (["pool.capacity=0"], "pool.capacity", "got 0"),
    (["pool.health.failures=0"], "pool.health.failures", "got 0"),
    (["session.end_close_code=1000"], "session.end_close_code", "from 4000 to 4999, got 1000"),
    (["pool.ec2.port=70000"], "pool.ec2.port", "got 70000"),
    # durations and sizes
    (["listen.idle_timeout=soon"], "listen.idle_timeout",
     'expected a duration such as "30s" or a number of seconds, got "soon"'),
    (["listen.idle_timeout=-1"], "listen.idle_timeout", "got -1"),
    (["listen.idle_timeout=true"], "listen.idle_timeout", "got true"),
    (["pool.scale_interval=0"], "pool.scale_interval", "greater than 0, got 0"),
    (["listen.max_message_size=huge"], "listen.max_message_size",
     'a size such as "16MiB" or a number of bytes, greater than 0, got "huge"'),
    (["listen.max_message_size=16Mbit"], "listen.max_message_size", 'got "16Mbit"'),
    (["listen.max_message_size=0"], "listen.max_message_size", "got 0"),
    # enums
    (["registry.backend=mysql"], "registry.backend", 'one of "memory", "redis", got "mysql"'),
    (["pool.provider=k8s"], "pool.provider", 'got "k8s"'),
    (["pool.placement=random"], "pool.placement", 'one of "pack", "spread"'),
    (["log.format=xml"], "log.format", 'one of "text", "json", got "xml"'),
    (["log.session_keys=hashed"], "log.session_keys", 'one of "fingerprint", "plain"'),
    (["session.cookie_samesite=lax"], "session.cookie_samesite", 'one of "Strict", "Lax", "None", got "lax"'),
    (['session.jwt_algorithms=["none"]'], "session.jwt_algorithms[0]", 'got "none"'),
    # relations between keys
    (["pool.min_spare=6"], "pool.min_spare", "at most pool.max_spare (5), got 6"),
    (["pool.min_workers=5", "pool.max_workers=4"], "pool.min_workers", "at most pool.max_workers (4), got 5"),
    (["pool.max_workers=1"], "pool.min_spare", "at most pool.max_workers (1), got 2"),
    (["pool.default_cost=2"], "pool.default_cost", "at most pool.capacity (1), got 2"),
    (["cost.classes.big=5"], "cost.classes.big", "at most pool.capacity (1), got 5"),
    (["cost.classes.small=0"], "cost.classes.small", "got 0"),
    (["cost.classes=5"], "cost.classes", "expected a table of class names"),
    (['session.sources=["query:s"]'], "session.issue_cookie", 'requires a "cookie:NAME" entry'),
    (["session.cookie_samesite=None", "session.cookie_secure=false"], "session.cookie_samesite", "Secure"),
    (["queue.status_path=wslb/queue"], "queue.status_path", 'got "wslb/queue"'),
    (["queue.status_path=/wslb/queue/"], "queue.status_path", 'no trailing "/"'),
    (["queue.status_path=/q?x=1"], "queue.status_path", "no query"),
    (["queue.client_path=/"], "queue.client_path", 'got "/"'),
    (["queue.rejoin_grace=-1"], "queue.rejoin_grace", "got -1"),
    (["queue.status_path=/q", "queue.client_path=/q/events"], "queue.client_path",
     "apart from queue.status_path"),
    (['session.jwt_algorithms=["ES256"]'], "session.jwt_public_key_file", "required when"),
    (["session.jwt_public_key_file=/nonexistent/jwt.pem", 'session.jwt_algorithms=["RS256"]'],
     "session.jwt_public_key_file", "No such file"),
    (['session.previous_secrets=["old"]'], "session.secret", "required when session.previous_secrets"),
    (["session.max_age=0"], "session.max_age", "greater than 0"),
    (["session.jwt_require_exp=1"], "session.jwt_require_exp", "true or false"),
    (["pool.provider=ec2", "pool.ec2.pool_id=prod"], "pool.ec2.launch_template", 'required when pool.provider = "ec2"'),
    (["pool.provider=ec2", "pool.ec2.launch_template=lt-1"], "pool.ec2.pool_id",
     'required when pool.provider = "ec2", got "" (the wslb:pool tag'),
    (["pool.ec2.pool_id=a,b"], "pool.ec2.pool_id", "an EC2 tag value"),
    # sources
    (['session.sources=["claim:sub"]', "session.issue_cookie=false"], "session.sources[0]", 'got "claim:sub"'),
    (['session.sources=["cookie:sid", "cookie:"]'], "session.sources[1]", 'got "cookie:"'),
    (['session.sources=["cookie:a;b"]'], "session.sources[0]", 'got "cookie:a;b"'),
    (['cost.sources=["body:cost"]'], "cost.sources[0]",
     '"cookie:NAME", "query:NAME", "header:NAME" or "claim:NAME", got "body:cost"'),
    # URLs
    (['registry.url="http://cache:6379"'], "registry.url", 'got "http://cache:6379"'),
    (['registry.url="redis://"'], "registry.url", 'got "redis://"'),
    (['registry.url="redis://cache:port/0"'], "registry.url", "rediss://"),
    (['pool.static.workers=["http://w:9000"]'], "pool.static.workers[0]", '"ws://HOST:PORT"'),
    (['pool.static.workers=["ws://w:9000", "ws://w"]'], "pool.static.workers[1]", 'got "ws://w"'),
    (["pool.ec2.endpoint_url=localhost:5000"], "pool.ec2.endpoint_url", 'got "localhost:5000"'),
    (['listen.allowed_origins=["app.example.com"]'], "listen.allowed_origins[0]", "expected an origin"),
    (['listen.allowed_origins=["https://app.example.com/"]'], "listen.allowed_origins[0]", "expected an origin"),
    # local workers
    (["pool.local.ports=9199-9100"], "pool.local.ports", 'got "9199-9100"'),
    (["pool.local.ports=0-10"], "pool.local.ports", "1 <= FIRST <= LAST <= 65535"),
    (["pool.local.ports=9100-70000"], "pool.local.ports", 'got "9100-70000"'),
    (["pool.local.ports=9100"], "pool.local.ports", "got 9100"),
    (["pool.local.command=[]"], "pool.local.command", "got []"),
    (['pool.local.command=["python", "-m", "w"]'], "pool.local.command", 'containing "{port}"'),
    (["pool.health.path=health"], "pool.health.path", 'starting with "/"'),
    # http
    (['http.paths=["session/"]'], "http.paths[0]", 'a path prefix such as "/session/"'),
    (['http.paths=["/a b/"]'], "http.paths[0]", 'got "/a b/"'),
    (['http.paths="/session/"'], "http.paths", "a list of path prefixes"),
    (["http.max_body=0"], "http.max_body", "a size"),
    (["http.timeout=0"], "http.timeout", "got 0"),
    # ec2
    (["pool.ec2.address=public_ip"], "pool.ec2.address", '"tag:<TagKey>", got "public_ip"'),
    (["pool.ec2.address=tag:"], "pool.ec2.address", 'got "tag:"'),
]


@pytest.mark.parametrize("overrides, key, text", MISTAKES, ids=[f"{m[1]}-{m[0][-1]}" for m in MISTAKES])
def test_mistake_is_one_line_naming_the_key(overrides, key, text):
    [line] = problems_for(overrides)
    assert line.startswith(key + ":"), line
    assert text in line, line


ENDPOINT_MISTAKES = [
    (["listen.endpoint=bogus:1"], "listen.endpoint", "Unknown endpoint type"),
    (["admin.endpoint=tcp:notaport"], "admin.endpoint", 'got "tcp:notaport"'),
    (["listen.endpoint=ssl:8443:privateKey=/nonexistent/k.pem"], "listen.endpoint", "No such file"),
]


@pytest.mark.parametrize("overrides, key, text", ENDPOINT_MISTAKES)
def test_a_bad_endpoint_is_one_line_naming_the_key_once_parsed(overrides, key, text):
    """Endpoints are parsed with the reactor (when the service is built), not while loading."""
    from twisted.internet import reactor
    from twisted.internet.endpoints import serverFromString

    config = load_config(environ=NO_ENV, overrides=overrides)
    with pytest.raises(ConfigError) as info:
        parseEndpoints(config, functools.partial(serverFromString, reactor))
    [line] = info.value.problems
    assert line.startswith(key + ":"), line
    assert text in line, line


def test_endpoints_parse_to_the_listener_and_the_admin_api():
    from twisted.internet import reactor
    from twisted.internet.endpoints import TCP4ServerEndpoint, serverFromString

    endpoints = parseEndpoints(load_config(environ=NO_ENV), functools.partial(serverFromString, reactor))
    assert set(endpoints) == {"listen", "admin"}
    assert all(isinstance(e, TCP4ServerEndpoint) for e in endpoints.values())


def test_loading_imports_neither_a_reactor_nor_the_registry():
    """config.py is plain parsing: twistd installs its reactor after reading it."""
    code = (
        "import sys; from wslb.config import load_config; "
        "load_config(environ={}, overrides=['listen.endpoint=tcp:0', 'admin.endpoint=tcp:0']); "
        "print(sorted(m for m in sys.modules if m == 'twisted.internet.reactor'"
        " or m.startswith('wslb.registry')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,  # reactor-safe: test
                         timeout=30, check=True).stdout
    assert out.strip() == "[]"


def test_placements_are_the_registrys():
    assert set(PLACEMENTS) == {PACK, SPREAD}


def test_every_problem_is_reported_at_once(tmp_path):
    path = write(
        tmp_path,
        """
        [listen]
        max_conections = 5
        idle_timeout = "soon"
        [registry]
        backend = "mysql"
        [pool]
        min_spare = 9
        [pool.local]
        ports = "1-0"
        [poool]
        """,
    )
    with pytest.raises(ConfigError) as info:
        load_config(path, environ=NO_ENV, overrides=["log.format=xml"])
    keys = [line.partition(":")[0] for line in info.value.problems]
    assert keys == [
        "listen.max_conections",
        "listen.idle_timeout",
        "registry.backend",
        "pool.local.ports",
        "poool",
        "log.format",
        "pool.min_spare",  # relations come after the keys they relate
    ]
    assert str(info.value) == "\n".join(info.value.problems)


def test_every_bad_item_of_a_list_is_reported():
    problems = problems_for(['pool.static.workers=["ws://ok:1", "ws://a", 5]'])
    assert [p.partition(":")[0] for p in problems] == ["pool.static.workers[1]", "pool.static.workers[2]"]


def test_a_bad_key_does_not_also_fail_the_rules_that_use_it():
    # max_spare falls back to its default internally; min_spare=9 must not be
    # blamed on a max_spare the user never chose.
    [line] = problems_for(["pool.min_spare=9", "pool.max_spare=lots"])
    assert line.startswith("pool.max_spare:")


@pytest.mark.parametrize(
    "text, expected",
    [(None, "cannot read the config file"), ("[listen\n", "not valid TOML")],
)
def test_unreadable_file(tmp_path, text, expected):
    path = tmp_path / "wslb.toml"
    if text is not None:
        path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path, environ=NO_ENV)
    [line] = info.value.problems
    assert line.startswith(str(path)) and expected in line


def test_describe_masks_secrets():
    config = load_config(
        environ={"WSLB_ADMIN_TOKEN": "tok-123", "WSLB_SESSION_SECRET": "sec-456"},
        overrides=[
            'session.previous_secrets=["old-789"]',
            'registry.url="redis://app:hunter2@cache:6379/0"',
        ],
    )
    shown = describe(config)
    assert shown["admin"]["token"] == "***"
    assert shown["session"]["secret"] == "***"
    assert shown["session"]["previous_secrets"] == ["***"]
    assert shown["registry"]["url"] == "redis://app:***@cache:6379/0"
    for secret in ("tok-123", "sec-456", "old-789", "hunter2"):
        assert secret not in json.dumps(shown)


def test_describe_shows_unset_secrets_as_empty():
    shown = describe(load_config(environ=NO_ENV))
    assert (shown["admin"]["token"], shown["session"]["secret"]) == ("", "")


@pytest.mark.parametrize(
    "override",
    ['registry.url="redis://app:hunter2@cache:port/0"', 'registry.url="hunter2@cache"', "admin.token=[\"hunter2\"]"],
)
def test_problem_lines_do_not_leak_secrets(override):
    [line] = problems_for([override])
    assert "hunter2" not in line and "***" in line


@pytest.mark.parametrize("overrides, key, text", [
    # A public key alone turns verification on: HS256 would then need a secret,
    ([], "session.secret", "required when session.jwt_algorithms has HS256"),
    # and minted cookies a secret to sign them.
    (['session.jwt_algorithms=["RS256"]'], "session.secret", "session.issue_cookie"),
])
def test_a_public_key_without_a_secret_needs_asymmetric_algorithms_only(tmp_path, overrides, key, text):
    keyFile = makeJwtKey(tmp_path)[1]
    [line] = problems_for([f"session.jwt_public_key_file={keyFile}", *overrides])
    assert line.startswith(key + ":") and text in line, line
    config = load_config(environ=NO_ENV, overrides=[
        f"session.jwt_public_key_file={keyFile}", 'session.jwt_algorithms=["RS256"]',
        "session.issue_cookie=false"])
    assert config.session.secret == ""


def test_a_file_that_is_no_public_key_names_the_key(tmp_path):
    bad = tmp_path / "not-a-key.pem"
    bad.write_text("hello")
    [line] = problems_for([f"session.jwt_public_key_file={bad}", 'session.jwt_algorithms=["RS256"]',
                           "session.issue_cookie=false"])
    assert line.startswith("session.jwt_public_key_file:") and "PEM public key" in line
