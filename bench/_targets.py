"""
What the load generator is pointed at: the echo workers directly, HAProxy in
front of them, and wslb in front of them (memory registry, Redis, and two
processes on one port with Redis).

Each target knows its WebSocket URLs and the pids whose CPU and memory count
as "the proxy". All listen on 127.0.0.1 only.
"""

import base64
import datetime
import ipaddress
import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from _procs import freePort, waitListening

BENCH = Path(__file__).resolve().parent
READY_TIMEOUT = 30.0

# HAProxy's global maxconn: 5,000 held users need 10,000 descriptors and
# HAProxy sizes its own limit as about twice this, under our hard 20,000.
HAPROXY_MAXCONN = 9000

HAPROXY_CONFIG = """\
global
    maxconn {maxconn}

defaults
    mode http
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    timeout http-request 10s
    # After the 101 the connection is a tunnel: keep idle WebSockets open.
    timeout tunnel 1h
    timeout client-fin 5s

frontend websocket
    bind 127.0.0.1:{port}{tls}
    maxconn {maxconn}
    default_backend echo

backend echo
    balance roundrobin
{servers}
"""


def twistdPath():
    """The twistd of the Python running us (the project's venv), else the one on PATH."""
    beside = Path(sys.executable).with_name("twistd")
    return str(beside) if beside.exists() else shutil.which("twistd")


@dataclass(frozen=True)
class Certificate:
    """A self-signed 2048-bit RSA certificate for 127.0.0.1, as PEM files."""

    ca: Path  # the certificate itself, which clients trust
    key: Path
    combined: Path  # certificate and key in one file, as HAProxy's crt wants


def makeCertificate(directory):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .sign(key, hashes.SHA256()))
    certPem = cert.public_bytes(serialization.Encoding.PEM)
    keyPem = key.private_bytes(serialization.Encoding.PEM,
                               serialization.PrivateFormat.TraditionalOpenSSL,
                               serialization.NoEncryption())
    paths = Certificate(directory / "tls-cert.pem", directory / "tls-key.pem",
                        directory / "tls-combined.pem")
    paths.ca.write_bytes(certPem)
    paths.key.write_bytes(keyPem)
    paths.combined.write_bytes(certPem + keyPem)
    return paths


def probeHandshake(port, session="bench-probe", timeout=5.0, tls=None):
    """One WebSocket handshake and a clean close; raises unless the answer is 101."""
    key = base64.b64encode(os.urandom(16)).decode()
    with socket.create_connection(("127.0.0.1", port), timeout) as plain:
        s = plain if tls is None else ssl.create_default_context(
            cafile=str(tls.ca)).wrap_socket(plain, server_hostname="127.0.0.1")
        s.sendall(
            f"GET /?session={session} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = s.recv(4096)
            if not chunk:
                break
            head += chunk
        status = head.split(b"\r\n", 1)[0].decode(errors="replace")
        if " 101 " not in status:
            raise RuntimeError(f"handshake answered {status!r}")
        mask = os.urandom(4)
        code = (1000).to_bytes(2, "big")
        s.sendall(bytes([0x88, 0x82]) + mask + bytes(c ^ mask[i] for i, c in enumerate(code)))


def redisCommand(port, *args):
    """One Redis command over RESP; returns the raw reply line."""
    request = f"*{len(args)}\r\n" + "".join(f"${len(a)}\r\n{a}\r\n" for a in args)
    with socket.create_connection(("127.0.0.1", port), 2.0) as s:
        s.sendall(request.encode())
        return s.recv(1024).split(b"\r\n", 1)[0].decode()


class EchoWorkers:
    """N node ``ws`` echo workers (bench/echo.js), for the whole run."""

    def __init__(self, children, node, count, logDir):
        self.ports = [freePort() for _ in range(count)]
        self.processes = [
            children.start([node, str(BENCH / "echo.js"), str(port)],
                           log=logDir / f"echo-{port}.log")
            for port in self.ports
        ]
        for port, process in zip(self.ports, self.processes):
            waitListening(port, process, what="echo worker")
        self.urls = [f"ws://127.0.0.1:{port}/" for port in self.ports]
        self.pids = [p.pid for p in self.processes]


class Target:
    """What the runner asks of every target."""

    proxied = True
    tls = None  # a Certificate: clients speak wss:// to it
    comparedWith = None  # the name of the target this one is a ratio of, besides the references
    scenarios = None  # the scenario names it runs; None: all


class Direct(Target):
    """The workers themselves: what a proxy costs is measured against this."""

    name = "direct"
    label = "direct"
    proxied = False

    def __init__(self, workers):
        self.urls = workers.urls
        self.pids = []

    def stop(self):
        pass


# What a --baseline checkout runs: everything but plain HTTP, which it may predate.
BASELINE_SCENARIOS = ("idle-memory", "pingpong-1", "pingpong-50", "pipelined-1k", "binary-64k",
                      "connect", "reconnect", "fresh")

# The TLS comparison: what terminating TLS costs each proxy (docs/aws.md cites it).
TLS_SCENARIOS = ("pingpong-50", "connect")


class HAProxy(Target):
    """
    HAProxy in ``mode http`` (WebSocket upgrades become tunnels), round robin;
    with ``tls``, terminating TLS (``bind ... ssl crt``).
    """

    def __init__(self, children, haproxy, workers, logDir, tls=None):
        self._children = children
        self.name = "haproxy" if tls is None else "haproxy-tls"
        port = freePort()
        servers = "\n".join(
            f"    server w{i} 127.0.0.1:{p}" for i, p in enumerate(workers.ports, 1)
        )
        config = logDir / f"{self.name}.cfg"
        config.write_text(HAPROXY_CONFIG.format(
            port=port, maxconn=HAPROXY_MAXCONN, servers=servers,
            tls="" if tls is None else f" ssl crt {tls.combined}"))
        self.process = children.start([haproxy, "-db", "-f", str(config)],
                                      log=logDir / f"{self.name}.log")
        waitListening(port, self.process, READY_TIMEOUT, "haproxy")
        probeHandshake(port, tls=tls)
        self.tls = tls
        self.urls = [f"{'ws' if tls is None else 'wss'}://127.0.0.1:{port}/"]
        self.pids = [self.process.pid]
        self.label = "HAProxy " + haproxyVersion(haproxy)
        if tls is not None:
            self.label += " TLS (bind ssl)"
            self.scenarios = TLS_SCENARIOS

    def stop(self):
        self._children.stop(self.process)


def haproxyVersion(haproxy):
    out = subprocess.run([haproxy, "-v"], capture_output=True, text=True, timeout=10).stdout
    return out.split()[2].split("-")[0] if out.startswith("HAProxy version") else "?"


class Wslb(Target):
    """
    ``twistd -n wslb`` with the static provider over the echo workers; with
    ``tls``, terminating TLS on an ``ssl:`` listener.

    ``pool.capacity`` is large and ``placement`` is spread: the benchmark
    creates tens of thousands of sessions (each kept for the reconnect grace)
    and must never queue; spread matches HAProxy's round robin.

    ``twistd`` runs another checkout's wslb (``--baseline``), labelled
    ``label``, to compare against in the same run. With ``processes`` > 1
    (Redis only), that many twistd processes share one ``reuseport:``
    listening port and the target's redis-server; the kernel spreads
    connections among them. Each has its own admin port. ``overrides`` are
    more ``--set`` options.
    """

    def __init__(self, children, workers, logDir, backend="memory", redisServer=None,
                 processes=1, twistd=None, label=None, tls=None, overrides=()):
        self._children = children
        self._processes = []
        self._twistd = twistd or twistdPath()
        self.name = "wslb" if backend == "memory" else f"wslb-{backend}"
        self.label = "wslb" if backend == "memory" else f"wslb ({backend})"
        if label is not None:
            self.name += "-baseline"
            self.label = label
        if processes > 1:
            self.name += f"-x{processes}"
            self.label += f" x{processes} processes"
            self.comparedWith = self.name.rpartition("-")[0]
        port = freePort()
        listen = f"reuseport:{port}" if processes > 1 else f"tcp:{port}"
        self.tls = tls
        if tls is not None:
            self.name += "-tls"
            self.label += " TLS (ssl:)"
            self.comparedWith = "haproxy-tls"
            self.scenarios = TLS_SCENARIOS
            listen = f"ssl:{port}:privateKey={tls.key}:certKey={tls.ca}"
        shared = [
            f"listen.endpoint={listen}:interface=127.0.0.1",
            "pool.provider=static",
            "pool.static.workers=" + json.dumps(workers.urls),
            "pool.capacity=100000",
            "pool.placement=spread",
            f"registry.backend={backend}",
            *overrides,
        ]
        if label is None:  # this checkout's: it serves plain HTTP (the http-50 row)
            shared.append('http.paths=["/session/"]')
        else:  # another checkout may predate [http]: it runs all but that row
            self.scenarios = BASELINE_SCENARIOS
        self._redisPort = None
        if backend == "redis":
            self._redisPort = freePort()
            redis = children.start(
                [redisServer, "--port", str(self._redisPort), "--bind", "127.0.0.1",
                 "--save", "", "--appendonly", "no"],
                log=logDir / f"redis-{self._redisPort}.log",
            )
            self._processes.append(redis)
            waitListening(self._redisPort, redis, READY_TIMEOUT, "redis-server")
            shared.append(f"registry.url=redis://127.0.0.1:{self._redisPort}/0")
        self.logs = []
        self.adminPorts = []
        twistds = []
        try:
            for number in range(processes):
                adminPort = freePort()
                self.adminPorts.append(adminPort)
                name = self.name if processes == 1 else f"{self.name}-{number + 1}"
                admin = f"admin.endpoint=tcp:{adminPort}:interface=127.0.0.1"
                process = self._startTwistd(logDir, name, [*shared, admin])
                twistds.append(process)
                waitListening(port, process, READY_TIMEOUT, name)
                self._waitHealthy(adminPort, len(workers.urls), process)
            probeHandshake(port, tls=tls)
            if backend == "redis":
                self._checkRedisUsed()
        except Exception as e:
            exited = any(process.poll() is not None for process in twistds)
            self.stop()
            if exited:
                raise RuntimeError(f"{e}; its output ends:\n{_tail(self.logs)}") from e
            raise
        self.urls = [f"{'ws' if tls is None else 'wss'}://127.0.0.1:{port}/"]
        # The Redis server works for wslb here: its CPU counts as the proxy's.
        self.pids = [p.pid for p in reversed(self._processes)]
        self.process = twistds[0]

    def _startTwistd(self, logDir, name, overrides):
        # Its log goes to stdout, as under systemd or in a container.
        args = [self._twistd, "-n", "--pidfile=", "wslb"]
        for override in overrides:
            args += ["--set", override]
        self.logs.append(logDir / f"{name}.out")
        process = self._children.start(args, log=self.logs[-1], cwd=logDir)
        self._processes.append(process)
        return process

    def _waitHealthy(self, adminPort, count, process):
        deadline = time.monotonic() + READY_TIMEOUT
        url = f"http://127.0.0.1:{adminPort}/api/v1/workers"
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {process.returncode}")
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    workers = json.load(response)["workers"]
                if sum(w["state"] == "healthy" for w in workers) == count:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"{self.name}: workers not healthy within {READY_TIMEOUT} s")

    def _checkRedisUsed(self):
        # A backend that is accepted but not wired would silently bench the memory one.
        reply = redisCommand(self._redisPort, "DBSIZE")
        if reply in (":0", ""):
            raise RuntimeError(
                "registry.backend=redis was accepted but Redis holds no keys after a "
                "handshake: the Redis registry is not in use yet")

    def stop(self):
        for process in self._processes:
            self._children.stop(process)
        self._processes = []


def _tail(paths, lines=8):
    text = "".join(p.read_text(errors="replace") for p in paths if p.exists())
    return "\n".join("    " + line for line in text.splitlines()[-lines:]) or "    (nothing)"
