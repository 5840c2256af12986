"""
The ``wslb`` command: check a config file, and look at or steer a running
instance through its admin API (DESIGN section 7).

A short-lived process of its own, so plain blocking urllib (with a timeout)
is right here; nothing in it runs on the reactor.
"""

import argparse
import http.client
import json
import os
import re
import sys
import urllib.error
from functools import partial
from urllib.parse import quote, urlsplit
from urllib.request import ProxyHandler, Request, build_opener  # reactor-safe: CLI process

from wslb.config import ConfigError, describe, load_config, parseEndpoints

DEFAULT_ADMIN = "http://127.0.0.1:8081"
TIMEOUT = 10.0  # seconds for one admin request
USAGE, FAILED = 2, 1  # exit codes: bad usage or config; the admin API refused or is away


class AdminError(Exception):
    """The admin API is unreachable or refused; the message is one line for the user."""


class AdminClient:
    """JSON over HTTP to one admin API, with the bearer token when there is one."""

    def __init__(self, base, token):
        self._base = base.rstrip("/")
        self._token = token
        # No proxy from the environment: the admin API is this host's or the VPC's.
        self._opener = build_opener(ProxyHandler({}))  # reactor-safe: CLI process

    def call(self, method, path, body=None, timeout=TIMEOUT):
        """The decoded JSON answer of a 2xx; L{AdminError} for anything else."""
        headers = {"Accept": "application/json"}
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        data = None
        if body is not None:
            data = json.dumps(body).encode("utf-8")
            headers["Content-Type"] = "application/json"
        request = Request(self._base + path, data=data, headers=headers, method=method)
        try:
            # reactor-safe: CLI process
            with self._opener.open(request, timeout=timeout) as response:  # reactor-safe
                return json.load(response)
        except urllib.error.HTTPError as e:
            raise AdminError(f"{method} {path}: {e.code} {e.reason}: {_errorOf(e)}") from None
        except urllib.error.URLError as e:
            reason = getattr(e.reason, "strerror", None) or e.reason
            raise AdminError(f"cannot reach the admin API at {self._base}: {reason}") from None
        except TimeoutError:
            raise AdminError(f"no answer from the admin API at {self._base} "
                             f"within {timeout:g} s") from None
        except (OSError, http.client.HTTPException, ValueError) as e:
            raise AdminError(f"no admin API answer from {self._base}: "
                             f"{e.__class__.__name__}: {e}") from None


    def listed(self, path, name):
        """Every record of a paged list endpoint, following each page's ``next``."""
        records, query = [], ""
        while True:
            page = self.call("GET", path + query)
            records += page[name]
            if "next" not in page:
                return records
            query = "?cursor=" + quote(page["next"], safe="")


def _errorOf(response):
    """The ``error`` of a JSON error body, or the start of whatever came."""
    text = response.read(4096).decode("utf-8", "replace")
    try:
        return json.loads(text)["error"]
    except (ValueError, KeyError, TypeError):
        return text.strip().splitlines()[0] if text.strip() else "(no body)"


def _quoted(name):
    """A worker id or session key as one path segment (``host:port`` -> ``host%3Aport``)."""
    return quote(name, safe="")


def table(headers, rows):
    """Lines of left-aligned columns."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows)]
    return ["  ".join(str(cell).ljust(w) for cell, w in zip(row, widths)).rstrip()
            for row in (headers, *rows)]


def toml(tree, prefix=()):
    """Nested dicts (as L{describe} gives) as TOML lines: scalars, then one table per dict."""
    def key(name):
        return name if re.fullmatch(r"[A-Za-z0-9_-]+", name) else json.dumps(name)

    lines = [f"[{'.'.join(map(key, prefix))}]"] if prefix else []
    lines += [f"{key(name)} = {json.dumps(value, ensure_ascii=False)}"
              for name, value in tree.items() if not isinstance(value, dict)]
    for name, value in tree.items():
        if isinstance(value, dict):
            lines += ([""] if lines else []) + toml(value, prefix + (name,))
    return lines


# --- commands ---------------------------------------------------------------


def checkConfig(args):
    from twisted.internet import reactor  # parses endpoints; never runs
    from twisted.internet.endpoints import serverFromString

    try:
        config = load_config(args.file)
        parseEndpoints(config, partial(serverFromString, reactor))
    except ConfigError as e:
        print("\n".join(e.problems), file=sys.stderr)
        return USAGE
    print("\n".join(toml(describe(config))))
    return 0


def status(args):
    admin = _client(args)
    workers = admin.listed("/api/v1/workers", "workers")
    sessions = admin.listed("/api/v1/sessions", "sessions")
    queue = admin.call("GET", "/api/v1/queue")
    lines = table(
        ("WORKER", "STATE", "DRAINING", "LOAD/CAPACITY", "SESSIONS", "LAST SEEN"),
        [(w["id"], w["state"], _yesNo(w["draining"]), f"{w['load']}/{w['capacity']}",
          len(w["sessions"]), w["last_seen"] or "-") for w in workers],
    ) if workers else ["(no workers)"]
    lines.append("")
    lines += table(
        ("SESSION", "WORKER", "COST", "CONNECTED", "SINCE"),
        [(s["key"], s["worker"], s["cost"], _yesNo(s["connected"]), s["since"]) for s in sessions],
    ) if sessions else ["(no sessions)"]
    lines.append("")
    lines.append(f"queue: {queue['length']} waiting, "
                 f"the oldest for {queue['oldest_wait_seconds']:g} s")
    print("\n".join(lines))
    return 0


def drain(args):
    worker = _client(args).call(
        "POST", f"/api/v1/workers/{_quoted(args.worker)}/events", {"event": "drain"})
    print(f"draining {worker['id']} ({worker['state']}, "
          f"load {worker['load']}/{worker['capacity']}, {len(worker['sessions'])} sessions)")
    return 0


def allocate(args):
    body = {"key": args.key, "wait": args.wait}
    if args.cost is not None:
        body["cost"] = args.cost
    # The admin API holds the answer up to --wait seconds: wait for it that long too.
    answer = _client(args).call("POST", "/api/v1/sessions", body, timeout=TIMEOUT + args.wait)
    if "worker" in answer:
        print(f"allocated {answer['key']} on {answer['worker']['id']} ({answer['url']})")
    else:
        print(f"queued {answer['key']} at position {answer['queued']}")
    return 0


def endSession(args):
    ended = _client(args).call("DELETE", f"/api/v1/sessions/{_quoted(args.key)}")
    print(f"ended session {ended['ended']}")
    return 0


def _yesNo(flag):
    return "yes" if flag else "no"


def _client(args):
    return AdminClient(args.admin, os.environ.get("WSLB_ADMIN_TOKEN", ""))


# --- arguments --------------------------------------------------------------


def adminUrl(text):
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise argparse.ArgumentTypeError(f"not an http(s):// URL: {text!r}")
    return text


def _positive(text):
    if not (text.isascii() and text.isdigit() and int(text) > 0):
        raise argparse.ArgumentTypeError(f"not a positive integer: {text!r}")
    return int(text)


def _seconds(text):
    try:
        value = float(text)
    except ValueError:
        value = -1
    if not 0 <= value < 1e9:
        raise argparse.ArgumentTypeError(f"not a number of seconds >= 0: {text!r}")
    return value


def _addAdminOption(parser, default):
    parser.add_argument(
        "--admin", metavar="URL", type=adminUrl, default=default,
        help=f"the admin API of a wslb instance (default {DEFAULT_ADMIN}); "
             "the token comes from WSLB_ADMIN_TOKEN",
    )


def parser():
    top = argparse.ArgumentParser(prog="wslb", description="wslb, a WebSocket load balancer.")
    _addAdminOption(top, DEFAULT_ADMIN)
    commands = top.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name, run, help, overAdmin=True):
        sub = commands.add_parser(name, help=help, description=help)
        sub.set_defaults(run=run)
        if overAdmin:
            # --admin also after the command; SUPPRESS keeps a value given before it.
            _addAdminOption(sub, argparse.SUPPRESS)
        return sub

    command("check-config", checkConfig,
            "validate a config file and print the effective config, secrets masked",
            overAdmin=False).add_argument("file", metavar="FILE")
    command("status", status, "workers, sessions and the queue")
    command("drain", drain, "stop sending new sessions to a worker").add_argument(
        "worker", metavar="WORKER", help="the worker id")
    allocating = command(
        "allocate", allocate,
        "bind a worker to a session key before its user connects (or queue it)")
    allocating.add_argument("key", metavar="KEY", help="the session key")
    allocating.add_argument("--cost", type=_positive, help="its cost ([pool] default_cost)")
    allocating.add_argument("--wait", type=_seconds, default=0, metavar="S",
                            help="wait up to S seconds for a worker when queued (0)")
    command("end-session", endSession, "end a session: free its slot, close its connection",
            ).add_argument("key", metavar="KEY", help="the session key")
    return top


def main(argv=None):
    args = parser().parse_args(argv)
    try:
        return args.run(args)
    except AdminError as e:
        print(f"wslb: {e}", file=sys.stderr)
        return FAILED
    except BrokenPipeError:
        # The reader left (``wslb status | head``): no traceback at exit either.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return FAILED


if __name__ == "__main__":
    sys.exit(main())
