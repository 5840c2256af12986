"""
wslb's configuration: one TOML file, environment secrets, ``--set`` overrides.

The schema below reads like DESIGN §4: every key is declared with its
documented default (as written in TOML) and the function that reads it. A
bad config is rejected as a whole with one line per problem, each naming the
dotted key, the bad value and what is allowed, so an operator fixes
everything in one go instead of one error per restart.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import os
import re
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from wslb._units import parse_duration, parse_size
from wslb.redis_url import RedisURLError, parseRedisURL

__all__ = [
    "AdminConfig",
    "Config",
    "ConfigError",
    "CostConfig",
    "Ec2Config",
    "HealthConfig",
    "ListenConfig",
    "LocalConfig",
    "LogConfig",
    "PoolConfig",
    "QueueConfig",
    "RegistryConfig",
    "SessionConfig",
    "Source",
    "StaticConfig",
    "describe",
    "load_config",
    "parseEndpoints",
]

# Secrets that may come from the environment; they win over the file.
_ENVIRONMENT = {
    "WSLB_ADMIN_TOKEN": ("admin", "token"),
    "WSLB_REDIS_URL": ("registry", "url"),
    "WSLB_SESSION_SECRET": ("session", "secret"),
}
_REGION = ("pool", "ec2", "region")
# [pool] placement: the registry's PACK and SPREAD (tests/test_config.py checks they agree).
PLACEMENTS = ("pack", "spread")
_ENDPOINT = ('a Twisted server endpoint such as "tcp:8080", "reuseport:8080"'
             ' or "unix:/run/wslb.sock"')
_MASK = "***"


class ConfigError(Exception):
    """The config is unusable; ``problems`` has one line per mistake."""

    def __init__(self, problems):
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


@dataclass(frozen=True)
class Source:
    """Where to look for a value on the upgrade request: ``kind:name``."""

    kind: str  # "cookie", "query", "header" or "claim" (a verified JWT's claim)
    name: str

    def __str__(self):
        return f"{self.kind}:{self.name}"


# --- Reading single values ----------------------------------------------------


class _Invalid(Exception):
    """Bad value(s) for one key: (where, expected, value, reason) each.

    ``where`` locates an item inside the key's value ("[2]", ".simple").
    """

    def __init__(self, *details):
        super().__init__(details)
        self.details = details


def _bad(expected, value, reason=""):
    return _Invalid(("", expected, value, reason))


def _show(value):
    """A value spelled roughly as in TOML, so a problem quotes what was written."""
    return json.dumps(value, ensure_ascii=False, default=str)


def _parse_each(items, parse):
    """Parse (where, raw) pairs, reporting every bad one rather than the first."""
    parsed, details = [], []
    for where, raw in items:
        try:
            parsed.append(parse(raw))
        except _Invalid as invalid:
            details += [(where + at, *rest) for at, *rest in invalid.details]
    if details:
        raise _Invalid(*details)
    return parsed


def _url(value):
    """``urlsplit`` with the port checked, or None for anything else."""
    if not isinstance(value, str):
        return None
    try:
        split = urlsplit(value)
        split.port  # noqa: B018 -- raises ValueError for a bad port
    except ValueError:
        return None
    return split


def _string(value):
    if not isinstance(value, str):
        raise _bad("a string", value)
    return value


def _nonempty(value):
    if not isinstance(value, str) or not value:
        raise _bad("a non-empty string", value)
    return value


def _boolean(value):
    if not isinstance(value, bool):
        raise _bad("true or false", value)
    return value


def _integer(low, high=None):
    expected = f"an integer >= {low}" if high is None else f"an integer from {low} to {high}"

    def parse(value):
        # bool is an int subclass: `true` must not pass for 1.
        if isinstance(value, bool) or not isinstance(value, int):
            raise _bad(expected, value)
        if value < low or (high is not None and value > high):
            raise _bad(expected, value)
        return value

    return parse


def _number(low):
    def parse(value):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= low:
            raise _bad(f"a number >= {low}", value)
        return float(value)

    return parse


def _measured(parse_unit, expected, positive):
    if positive:
        expected += ", greater than 0"

    def parse(value):
        try:
            amount = parse_unit(value)
        except ValueError:
            raise _bad(expected, value) from None
        if positive and amount == 0:
            raise _bad(expected, value)
        return amount

    return parse


def _duration(positive=False):
    return _measured(parse_duration, 'a duration such as "30s" or a number of seconds', positive)


_size = _measured(parse_size, 'a size such as "16MiB" or a number of bytes', positive=True)


def _one_of(*choices):
    expected = "one of " + ", ".join(_show(choice) for choice in choices)

    def parse(value):
        # Compare types too: 1 == true in Python, not in TOML.
        if any(type(value) is type(choice) and value == choice for choice in choices):
            return value
        raise _bad(expected, value)

    return parse


def _list_of(item, expected):
    def parse(value):
        if not isinstance(value, list):
            raise _bad(expected, value)
        return tuple(_parse_each(((f"[{i}]", raw) for i, raw in enumerate(value)), item))

    return parse


_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # RFC 7230 token: cookie and header names


def _source_name_ok(kind, name):
    if kind in ("cookie", "header"):
        return _TOKEN.fullmatch(name) is not None
    return name != "" and not re.search(r"\s", name)


def _source(*kinds):
    expected = ", ".join(f'"{kind}:NAME"' for kind in kinds[:-1]) + f' or "{kinds[-1]}:NAME"'

    def parse(value):
        if isinstance(value, str):
            kind, colon, name = value.partition(":")
            if colon and kind in kinds and _source_name_ok(kind, name):
                return Source(kind, name)
        raise _bad(expected, value)

    return _list_of(parse, f"a list of {expected}")


def _public_key_file(value):
    """A PEM public key that can verify RS256/ES256 tokens, read now: not at the first user."""
    if not _string(value):
        return value
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    expected = "a PEM public key file (RS256/ES256)"
    try:
        with open(value, "rb") as f:
            load_pem_public_key(f.read())
    except OSError as e:
        raise _bad(expected, value, reason=e.strerror or str(e)) from None
    except (ValueError, TypeError) as e:
        raise _bad(expected, value, reason=str(e) or type(e).__name__) from None
    return value


def _origin(value):
    split = _url(value)
    if split and split.scheme and split.netloc and not (
            split.path or split.query or split.fragment):
        return value
    raise _bad('an origin such as "https://app.example.com" or "https://*.example.com"', value)


def _redis_url(value):
    expected = '"redis://[user:password@]host[:port][/db]" or "rediss://..." for TLS'
    if not isinstance(value, str):
        raise _bad(expected, value)
    try:
        parseRedisURL(value)  # the registry's and the Lambda handlers' own parser
    except RedisURLError as e:
        raise _bad(expected, value, reason=e.reason) from None
    return value


def _worker_url(value):
    split = _url(value)
    if split and split.scheme in ("ws", "wss") and split.hostname and split.port:
        return value
    raise _bad('a worker URL "ws://HOST:PORT" or "wss://HOST:PORT"', value)


def _http_url_or_empty(value):
    split = _url(value)
    if value == "" or (split and split.scheme in ("http", "https") and split.hostname):
        return value
    raise _bad('"" or an "https://..." URL', value)


def _http_path(value):
    if (isinstance(value, str) and value.startswith("/") and value.isascii()
            and value.isprintable() and not any(c in value for c in " ?#")):
        return value
    raise _bad('a path prefix such as "/session/"', value)


def _health_path(value):
    if isinstance(value, str) and value.startswith("/"):
        return value
    raise _bad('a path starting with "/"', value)


_LISTENER_PATH = re.compile(r"(/[A-Za-z0-9._~!$&'()*+,;=:@%-]+)+")


def _listener_path(value):
    """A path the listener answers itself (not upgraded), or "" for none."""
    if value == "" or (isinstance(value, str) and _LISTENER_PATH.fullmatch(value)):
        return value
    raise _bad('"" (off) or a path such as "/wslb/queue": segments of URL path characters,'
               ' no query, no trailing "/"', value)


def _port_range(value):
    match = isinstance(value, str) and re.fullmatch(r"\s*(\d+)\s*-\s*(\d+)\s*", value)
    if match and 1 <= int(match[1]) <= int(match[2]) <= 65535:
        return int(match[1]), int(match[2])
    raise _bad('a port range "FIRST-LAST" with 1 <= FIRST <= LAST <= 65535', value)


def _command(value):
    if (
        isinstance(value, list)
        and all(isinstance(arg, str) for arg in value)
        and any("{port}" in arg for arg in value)
    ):
        return tuple(value)
    raise _bad('a non-empty list of strings, one of them containing "{port}"', value)


def _ec2_address(value):
    if value in ("private_ip", "private_dns") or (
        isinstance(value, str) and value.startswith("tag:") and value[4:]
    ):
        return value
    raise _bad('"private_ip", "private_dns" or "tag:<TagKey>"', value)


def _tag_value(value):
    """An EC2 tag value: up to 256 letters, digits, spaces and + - = . _ : / @."""
    if isinstance(value, str) and re.fullmatch(r"[\w .:/=+\-@]{0,256}", value, re.ASCII):
        return value
    raise _bad("an EC2 tag value: up to 256 of A-Za-z0-9, spaces and + - = . _ : / @", value)


def _cost_classes(value):
    if not isinstance(value, dict):
        raise _bad("a table of class names to costs such as { simple = 100 }", value)
    costs = _parse_each(((f".{name}", cost) for name, cost in value.items()), _integer(1))
    return dict(zip(value, costs))


# --- Showing values back ----------------------------------------------------------


def _plain(value):
    """Tuples, Sources and dicts as the TOML that would produce them."""
    if isinstance(value, tuple):
        return [_plain(item) for item in value]
    if isinstance(value, Source):
        return str(value)
    if isinstance(value, dict):
        return {name: _plain(item) for name, item in value.items()}
    return value


def _unmasked(value):
    return value


def _mask_secret(value):
    """A set secret becomes "***"; an unset one stays visibly empty."""
    if isinstance(value, (list, tuple)):
        return [_mask_secret(item) for item in value]
    return _MASK if value else value


def _mask_url_password(value):
    """redis://user:***@host -- works on malformed URLs too, as problems show those."""
    if not isinstance(value, str) or "@" not in value:
        return value
    head, _, host = value.rpartition("@")
    scheme, slashes, userinfo = head.partition("//") if "//" in head else ("", "", head)
    user, colon, _ = userinfo.partition(":")
    # No colon: some clients read "redis://secret@host" as a password.
    return f"{scheme}{slashes}{user + ':' if colon else ''}{_MASK}@{host}"


# --- The schema -----------------------------------------------------------------


@dataclass(frozen=True)
class _Key:
    """How one key is read from TOML, and how it is shown back."""

    parse: Callable
    dump: Callable = _plain
    mask: Callable = _unmasked

    def read(self, raw):
        return self.parse(raw)

    def show(self, value):
        return self.mask(self.dump(value))

    def problem(self, dotted, detail):
        where, expected, value, reason = detail
        line = f"{dotted}{where}: expected {expected}, got {_show(self.mask(value))}"
        return f"{line} ({reason})" if reason else line


def _key(default, parse, **how):
    """A key with its documented default, written as in the TOML file."""
    key = _Key(parse, **how)
    value = parse(default)
    if isinstance(value, dict):
        return field(default_factory=lambda: dict(value), metadata={"key": key})
    return field(default=value, metadata={"key": key})


def _section(cls):
    return field(default_factory=cls, metadata={"section": cls})


@dataclass(frozen=True)
class ListenConfig:
    endpoint: str = _key("tcp:8080", _nonempty)
    allowed_origins: tuple[str, ...] = _key([], _list_of(_origin, "a list of origins"))
    max_connections: int = _key(10000, _integer(1))
    open_handshake_timeout: float = _key("10s", _duration(positive=True))
    max_message_size: int = _key("16MiB", _size)
    idle_timeout: float = _key("0", _duration())
    auto_ping: float = _key("30s", _duration())
    per_ip_connections: int = _key(0, _integer(0))
    per_ip_rate: float = _key(0, _number(0))
    drain_period: float = _key("10s", _duration())
    forwarded_proto: str = _key("auto", _one_of("auto", "https", "http"))


@dataclass(frozen=True)
class AdminConfig:
    endpoint: str = _key("tcp:8081:interface=127.0.0.1", _nonempty)
    token: str = _key("", _string, mask=_mask_secret)


@dataclass(frozen=True)
class RegistryConfig:
    backend: str = _key("memory", _one_of("memory", "redis"))
    url: str = _key("redis://127.0.0.1:6379/0", _redis_url, mask=_mask_url_password)
    namespace: str = _key("wslb", _nonempty)


@dataclass(frozen=True)
class SessionConfig:
    sources: tuple[Source, ...] = _key(
        ["cookie:wslb_session", "query:session", "header:X-WSLB-Session"],
        _source("cookie", "query", "header"),
    )
    issue_cookie: bool = _key(True, _boolean)
    secret: str = _key("", _string, mask=_mask_secret)
    previous_secrets: tuple[str, ...] = _key(
        [], _list_of(_nonempty, "a list of strings"), mask=_mask_secret
    )
    jwt_algorithms: tuple[str, ...] = _key(
        ["HS256"], _list_of(_one_of("HS256", "RS256", "ES256"), "a list of JWT algorithms")
    )
    jwt_public_key_file: str = _key("", _public_key_file)
    jwt_require_exp: bool = _key(True, _boolean)
    max_age: float = _key("30d", _duration(positive=True))
    jwt_audience: str = _key("", _string)
    jwt_issuer: str = _key("", _string)
    cookie_secure: str | bool = _key("auto", _one_of("auto", True, False))
    cookie_samesite: str = _key("Lax", _one_of("Strict", "Lax", "None"))
    reconnect_grace: float = _key("15m", _duration())
    end_close_code: int = _key(4000, _integer(4000, 4999))


@dataclass(frozen=True)
class QueueConfig:
    max_length: int = _key(1000, _integer(0))
    timeout: float = _key("60s", _duration(positive=True))
    allow_overtake: bool = _key(False, _boolean)
    status_path: str = _key("", _listener_path)
    rejoin_grace: float = _key("20s", _duration())
    client_path: str = _key("", _listener_path)


@dataclass(frozen=True)
class HttpConfig:
    paths: tuple[str, ...] = _key([], _list_of(_http_path, "a list of path prefixes"))
    strip_prefix: bool = _key(False, _boolean)
    max_body: int = _key("1GiB", _size)
    timeout: float = _key("60s", _duration(positive=True))


@dataclass(frozen=True)
class LogConfig:
    format: str = _key("text", _one_of("text", "json"))
    session_keys: str = _key("fingerprint", _one_of("fingerprint", "plain"))


@dataclass(frozen=True)
class GcConfig:
    freeze: bool = _key(True, _boolean)
    thaw_interval: float = _key("1h", _duration())


@dataclass(frozen=True)
class HealthConfig:
    path: str = _key("/health", _health_path)
    interval: float = _key("5s", _duration(positive=True))
    timeout: float = _key("2s", _duration(positive=True))
    failures: int = _key(3, _integer(1))


@dataclass(frozen=True)
class LocalConfig:
    command: tuple[str, ...] = _key(
        ["{python}", "-m", "wslb.worker.echo", "--port", "{port}"], _command
    )
    host: str = _key("127.0.0.1", _nonempty)
    ports: tuple[int, int] = _key(
        "9100-9199", _port_range, dump=lambda ports: "{}-{}".format(*ports)
    )


@dataclass(frozen=True)
class StaticConfig:
    workers: tuple[str, ...] = _key([], _list_of(_worker_url, "a list of worker URLs"))


@dataclass(frozen=True)
class Ec2Config:
    region: str = _key("", _string)
    launch_template: str = _key("", _string)
    pool_id: str = _key("", _tag_value)
    port: int = _key(9000, _integer(1, 65535))
    address: str = _key("private_ip", _ec2_address)
    endpoint_url: str = _key("", _http_url_or_empty)


@dataclass(frozen=True)
class PoolConfig:
    provider: str = _key("local", _one_of("local", "static", "ec2"))
    capacity: int = _key(1, _integer(1))
    default_cost: int = _key(1, _integer(1))
    placement: str = _key("pack", _one_of(*PLACEMENTS))
    min_spare: int = _key(2, _integer(0))
    max_spare: int = _key(5, _integer(0))
    min_workers: int = _key(0, _integer(0))
    max_workers: int = _key(20, _integer(0))
    scale_interval: float = _key("5s", _duration(positive=True))
    start_timeout: float = _key("3m", _duration(positive=True))
    leader_ttl: float = _key("15s", _duration(positive=True))
    unhealthy_timeout: float = _key("30s", _duration(positive=True))
    health: HealthConfig = _section(HealthConfig)
    local: LocalConfig = _section(LocalConfig)
    static: StaticConfig = _section(StaticConfig)
    ec2: Ec2Config = _section(Ec2Config)


@dataclass(frozen=True)
class CostConfig:
    sources: tuple[Source, ...] = _key(
        ["claim:cost", "query:cost", "header:X-WSLB-Cost"],
        _source("cookie", "query", "header", "claim"),
    )
    classes: dict[str, int] = _key({}, _cost_classes)


@dataclass(frozen=True)
class Config:
    listen: ListenConfig = _section(ListenConfig)
    admin: AdminConfig = _section(AdminConfig)
    registry: RegistryConfig = _section(RegistryConfig)
    session: SessionConfig = _section(SessionConfig)
    queue: QueueConfig = _section(QueueConfig)
    http: HttpConfig = _section(HttpConfig)
    log: LogConfig = _section(LogConfig)
    gc: GcConfig = _section(GcConfig)
    pool: PoolConfig = _section(PoolConfig)
    cost: CostConfig = _section(CostConfig)


# --- Checks across keys -------------------------------------------------------------


def _relations(config):
    """Yield (keys involved, problem) for every rule spanning several keys."""
    from wslb.reuseport import isReusePort  # imports Twisted: only when validating

    pool, session = config.pool, config.session
    for low, high in [
        ("min_spare", "max_spare"),
        ("min_workers", "max_workers"),
        ("min_spare", "max_workers"),
        ("default_cost", "capacity"),
    ]:
        if getattr(pool, low) > getattr(pool, high):
            yield (
                (f"pool.{low}", f"pool.{high}"),
                f"pool.{low}: expected at most pool.{high} ({getattr(pool, high)}),"
                f" got {getattr(pool, low)}",
            )
    for name, cost in config.cost.classes.items():
        if cost > pool.capacity:
            yield (
                ("cost.classes", "pool.capacity"),
                f"cost.classes.{name}: expected at most pool.capacity ({pool.capacity}),"
                f" got {cost} (a session of this class would fit on no worker)",
            )
    if session.issue_cookie and not any(s.kind == "cookie" for s in session.sources):
        yield (
            ("session.issue_cookie", "session.sources"),
            'session.issue_cookie: true requires a "cookie:NAME" entry in session.sources,'
            f" got {_show(_plain(session.sources))}",
        )
    if session.cookie_samesite == "None" and session.cookie_secure is False:
        yield (
            ("session.cookie_samesite", "session.cookie_secure"),
            'session.cookie_samesite: "None" requires session.cookie_secure = true or "auto"'
            " (browsers drop SameSite=None cookies without Secure), got cookie_secure = false",
        )
    queue = config.queue
    if queue.status_path and queue.status_path in (queue.client_path,
                                                   queue.client_path.rpartition("/")[0]):
        yield (
            ("queue.status_path", "queue.client_path"),
            f"queue.client_path: expected a path apart from queue.status_path and its "
            f"events ({_show(queue.status_path)}), got {_show(queue.client_path)}",
        )
    yield from _signing(session)
    if isReusePort(config.listen.endpoint) and config.registry.backend == "memory":
        yield (
            ("listen.endpoint", "registry.backend"),
            f"listen.endpoint: {_show(config.listen.endpoint)} shares its port with other"
            ' processes, which must share the registry: set registry.backend = "redis"'
            " (with the memory registry each process would hand out the same workers)",
        )
    if pool.provider == "ec2" and not pool.ec2.launch_template:
        yield (
            ("pool.ec2.launch_template", "pool.provider"),
            'pool.ec2.launch_template: required when pool.provider = "ec2", got ""',
        )
    if pool.provider == "ec2" and not pool.ec2.pool_id:
        yield (
            ("pool.ec2.pool_id", "pool.provider"),
            'pool.ec2.pool_id: required when pool.provider = "ec2", got "" (the wslb:pool tag'
            " of this deployment's instances: unique in the AWS account and region; a"
            " deployment from before this key keeps its instances with pool_id ="
            f" {_show(config.registry.namespace)}, its registry.namespace)",
        )


def _signing(session):
    """
    Signed keys are on whenever a secret or a public key is set; every
    algorithm accepted then needs its material, and minted cookies a secret.
    """
    asymmetric = {"RS256", "ES256"} & set(session.jwt_algorithms)
    if asymmetric and not session.jwt_public_key_file:
        yield (
            ("session.jwt_public_key_file", "session.jwt_algorithms"),
            "session.jwt_public_key_file: required when session.jwt_algorithms has RS256"
            ' or ES256, got ""',
        )
    if session.secret:
        return
    if session.previous_secrets:
        yield (
            ("session.secret", "session.previous_secrets"),
            "session.secret: required when session.previous_secrets is set (old secrets"
            ' only verify; the current one signs), got ""',
        )
    if not session.jwt_public_key_file:
        return
    if "HS256" in session.jwt_algorithms:
        yield (
            ("session.secret", "session.jwt_algorithms", "session.jwt_public_key_file"),
            'session.secret: required when session.jwt_algorithms has HS256, got ""'
            ' (with only a public key, set session.jwt_algorithms = ["RS256"] or ["ES256"])',
        )
    elif session.issue_cookie:
        yield (
            ("session.secret", "session.issue_cookie", "session.jwt_public_key_file"),
            'session.secret: required to sign the cookies session.issue_cookie mints, got ""'
            " (keys are verified: session.jwt_public_key_file is set); or set"
            " session.issue_cookie = false",
        )


def _involves(keys, failed):
    return any(key == bad or key.startswith(bad + ".") for key in keys for bad in failed)


# --- Loading ------------------------------------------------------------------------


def _build(cls, raw, prefix, problems, failed):
    """One section: read the keys present, default the rest, report every bad one."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    values = {}
    for name, value in raw.items():
        dotted = f"{prefix}.{name}" if prefix else name
        if name not in fields:
            problems.append(_unknown(dotted, name, fields, "key" if prefix else "section"))
            continue
        metadata = fields[name].metadata
        if "section" in metadata:
            if isinstance(value, dict):
                values[name] = _build(metadata["section"], value, dotted, problems, failed)
            else:
                problems.append(f"{dotted}: expected a table, got {_show(value)}")
                failed.add(dotted)
            continue
        key = metadata["key"]
        try:
            values[name] = key.read(value)
        except _Invalid as invalid:
            problems += [key.problem(dotted, detail) for detail in invalid.details]
            failed.add(dotted)
    return cls(**values)


def _unknown(dotted, name, allowed, what):
    close = difflib.get_close_matches(name, allowed, n=1)
    hint = f"did you mean {close[0]}?" if close else "allowed: " + ", ".join(allowed)
    return f"{dotted}: unknown {what} ({hint})"


def _read_toml(path):
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except OSError as e:
        raise ConfigError([f"{path}: cannot read the config file: {e.strerror or e}"]) from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError([f"{path}: not valid TOML: {e}"]) from None


def _get(raw, path):
    for part in path:
        if not isinstance(raw, dict) or part not in raw:
            return None
        raw = raw[part]
    return raw


def _set(raw, path, value):
    """Set a nested key; returns the dotted prefix that is not a table, if any."""
    for depth, part in enumerate(path[:-1], 1):
        raw = raw.setdefault(part, {})
        if not isinstance(raw, dict):
            return ".".join(path[:depth])
    raw[path[-1]] = value
    return None


def _apply_override(raw, override):
    """``dotted.key=VALUE``; VALUE is TOML, or else a bare string (tcp:0, 30s)."""
    dotted, equals, text = override.partition("=")
    path = tuple(part.strip() for part in dotted.split("."))
    if not equals or not all(path):
        return f"override {_show(override)}: expected dotted.key=VALUE such as pool.min_spare=1"
    try:
        value = tomllib.loads(f"value = {text.strip()}")["value"]
    except tomllib.TOMLDecodeError:
        value = text.strip()
    blocked = _set(raw, path, value)
    if blocked:
        return f"override {_show(override)}: {blocked} is not a table"
    return None


def load_config(path=None, environ=None, overrides=()) -> Config:
    """Read, override and validate a config; ``path=None`` is the embedded default.

    Precedence, lowest first: defaults, the file, environment secrets,
    ``overrides``. Raises ConfigError listing every problem found.
    """
    environ = os.environ if environ is None else environ
    raw = {} if path is None else _read_toml(path)
    for variable, key in _ENVIRONMENT.items():
        if environ.get(variable):
            _set(raw, key, environ[variable])  # a non-table section is reported below
    problems = [p for p in (_apply_override(raw, o) for o in overrides) if p]
    if environ.get("AWS_REGION") and not _get(raw, _REGION):
        _set(raw, _REGION, environ["AWS_REGION"])
    failed = set()
    config = _build(Config, raw, "", problems, failed)
    problems += [line for keys, line in _relations(config) if not _involves(keys, failed)]
    if problems:
        raise ConfigError(problems)
    return config


def parseEndpoints(config, parse):
    """
    The server endpoints the config names, by section ("listen", "admin"),
    each parsed with ``parse`` (Twisted's ``serverFromString`` bound to the
    reactor; it also loads TLS files). Parsing needs the reactor twistd
    installs, so it runs when the service is built rather than while the
    config is read. Raises ConfigError with a line for each bad endpoint.
    """
    endpoints, problems = {}, []
    for section in ("listen", "admin"):
        value = getattr(config, section).endpoint
        try:
            endpoints[section] = parse(value)
        except Exception as e:
            problems.append(f"{section}.endpoint: expected {_ENDPOINT}, got {_show(value)}"
                            f" ({str(e) or type(e).__name__})")
    if problems:
        raise ConfigError(problems)
    return endpoints


def describe(config) -> dict:
    """The effective config as nested plain dicts, secrets masked, for printing.

    Values are spelled as TOML input (durations in seconds, sizes in bytes),
    so the output, once secrets are filled back in, loads to the same config.
    """
    shown = {}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if "section" in f.metadata:
            shown[f.name] = describe(value)
        else:
            shown[f.name] = f.metadata["key"].show(value)
    return shown
