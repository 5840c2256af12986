"""
wslb's keep-alive benchmark: does pinging many idle users stall everyone
else? One wslb instance holds thousands of idle users (each one relayed: two
connections) while a separate user's single connection ping-pongs through
it; the same with ``auto_ping`` on and off, interleaved in each round.

    python bench/keepalive.py                       # 8,000 idle users, 10s vs off, 2 rounds
    python bench/keepalive.py --baseline DIR        # also DIR's wslb, pings on

Run it with the project's venv Python (its twistd is used). The idle users
and the probe are node processes (bench/loadgen.js), the workers two node
echo workers (bench/echo.js): wslb alone holds two descriptors a user, within
the 20,000 one process may open. Everything listens on 127.0.0.1 and is
stopped at the end, also on failure or Ctrl-C. Results go to
bench/RESULTS.md (unless --no-record); see bench/README.md.
"""

import argparse
import datetime
import shutil
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import _report
from _procs import CpuMeter, raiseOpenFileLimit, runWithChildren, waitQuiet
from _scenarios import Loadgen, LoadgenFailed
from _targets import EchoWorkers, Wslb
from run import ensureWs, nodeModuleVersions, stopOnSignals

SETTLE = 2.0  # seconds between holding every idle user and the probe
HANDSHAKES_AT_ONCE = 100
MAX_BOUND_MS = 50.0  # the bounds: a stall of at most this ...
P50_BOUND = 1.3  # ... and a p50 within this factor of pings off


def parseArgs(argv):
    parser = argparse.ArgumentParser(prog="python bench/keepalive.py",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=8000, help="idle users held (8,000)")
    parser.add_argument("--ping", default="10s", help="auto_ping when on (10s)")
    parser.add_argument("--duration", type=float, default=25.0,
                        help="seconds of the probe's ping-pong (25)")
    parser.add_argument("--rounds", type=int, default=2, help="rounds, variants interleaved (2)")
    parser.add_argument("--redis", action="store_true",
                        help="the Redis registry (its own redis-server) instead of memory")
    parser.add_argument("--baseline", metavar="DIR", type=Path,
                        help="also DIR/.venv/bin/twistd (another checkout), pings on")
    parser.add_argument("--no-record", action="store_true", help="do not write bench/RESULTS.md")
    return parser.parse_args(argv)


def variants(args):
    """(label, twistd or None for ours, auto_ping), in the order of the first round."""
    out = [(f"auto_ping {args.ping}", None, args.ping), ("auto_ping off", None, "0")]
    if args.baseline is not None:
        twistd = args.baseline / ".venv" / "bin" / "twistd"
        if not twistd.exists():
            sys.exit(f"--baseline: {twistd} not found")
        revision = subprocess.run(
            ["git", "-C", str(args.baseline), "rev-parse", "--short", "HEAD"],
            capture_output=True, text=True, timeout=10).stdout.strip() or "?"
        out.append((f"baseline {revision}, auto_ping {args.ping}", str(twistd), args.ping))
    return out


def fullCollections(wslb):
    """
    (count, seconds) of the full GC passes wslb made so far, from its
    wslb_gc_pause_seconds; (nan, nan) from a wslb without that metric.
    """
    url = f"http://127.0.0.1:{wslb.adminPorts[0]}/metrics"
    with urllib.request.urlopen(url, timeout=10) as answer:
        text = answer.read().decode()
    found = {}
    for line in text.splitlines():
        for part in ("count", "sum"):
            if line.startswith(f'wslb_gc_pause_seconds_{part}{{generation="2"}} '):
                found[part] = float(line.split()[-1])
    return found.get("count", float("nan")), found.get("sum", float("nan"))


def measure(children, node, workers, logDir, args, twistd, ping, redisServer):
    """Hold the idle users, ping-pong the probe through the same instance."""
    # A label marks another checkout's wslb, which may predate [http].
    wslb = Wslb(children, workers, logDir, backend="redis" if args.redis else "memory",
                redisServer=redisServer, twistd=twistd,
                label=None if twistd is None else "baseline",
                overrides=[f"listen.auto_ping={ping}"])
    try:
        idle = Loadgen(children, node, {
            "mode": "idle", "urls": wslb.urls, "connections": args.users,
            "concurrency": HANDSHAKES_AT_ONCE,
            "limit": args.users / 20 + args.duration + 120,
        })
        try:
            kind, name, held = idle.next()
            if (kind, name) != ("EVENT", "held") or held["failures"]:
                raise LoadgenFailed(f"holding {args.users} idle users: {kind} {name} {held}")
            time.sleep(SETTLE)
            load = waitQuiet()
            probe = Loadgen(children, node, {
                "mode": "pingpong", "urls": wslb.urls, "connections": 1, "inflight": 1,
                "size": 32, "warmup": 1.0, "duration": args.duration,
                "limit": args.duration + 60,
            })
            meter = CpuMeter({"wslb": wslb.pids})
            cpu = {"wslb": float("nan"), "other": float("nan")}
            try:
                while True:
                    kind, name, result = probe.next()
                    if (kind, name) == ("EVENT", "measure-start"):
                        meter.start()
                        collectedBefore = fullCollections(wslb)
                    elif (kind, name) == ("EVENT", "measure-end"):
                        cpu = meter.stop()
                        collectedAfter = fullCollections(wslb)
                    elif kind == "RESULT":
                        break
            finally:
                probe.stop()
            if result.get("error") or result.get("errors"):
                raise LoadgenFailed(f"the probe: {result}")
            idle.send("release")
            while True:
                kind, name, released = idle.next()
                if kind == "RESULT":
                    break
        finally:
            idle.stop()
    finally:
        wslb.stop()
    return {"p50_us": result["p50_us"], "p99_us": result["p99_us"], "max_us": result["max_us"],
            "round_trips": result["messages"], "wslb_cpu": cpu["wslb"], "other_cpu": cpu["other"],
            "busy_before": load, "held": held["held"], "open_s": released["open_seconds"],
            "pings": released["pings"], "dropped": released["dropped"],
            "gc2": collectedAfter[0] - collectedBefore[0],
            "gc2_ms": (collectedAfter[1] - collectedBefore[1]) * 1000}


def render(args, runs, labels, load):
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    registry = "Redis (its own redis-server)" if args.redis else "memory"
    lines = [
        f"## {now}: keep-alive under {args.users:,} idle users (`bench/keepalive.py`)\n",
        f"- command: `{_report.command()}`",
        f"- machine: {_report.machine()}; load average before the run: {load[0]}, after: "
        f"{load[1]}",
        f"- wslb: {_report.revision()}; registry: {registry}",
        f"- software: node modules {nodeModuleVersions()}",
        f"- setup: one wslb instance (twistd, static pool of 2 node echo workers, spread) "
        f"holding {args.users:,} idle users (one node process, {HANDSHAKES_AT_ONCE} handshakes "
        f"at a time, one echo each; node `ws` answers each ping with a pong), then a separate "
        f"user's one connection ping-pongs 32 B through it for {args.duration:g} s (1 s "
        f"warm-up); {args.rounds} round(s), the variants interleaved in each, a fresh wslb "
        "for every run",
        "",
        "| variant | p50 round trip (us) | p99 (us) | max (us) | round trips | pings the idle "
        "users got | wslb CPU | other CPU |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    medians = {}
    for label in labels:
        rows = runs[label]
        med = {k: statistics.median(r[k] for r in rows) for k in
               ("p50_us", "p99_us", "max_us", "round_trips", "pings", "wslb_cpu", "other_cpu")}
        medians[label] = med
        lines.append(
            f"| {label} | {med['p50_us']:,.0f} | {med['p99_us']:,.0f} | {med['max_us']:,.0f} | "
            f"{med['round_trips']:,.0f} | {med['pings']:,.0f} | {med['wslb_cpu']:.0f} % | "
            f"{med['other_cpu']:.0f} % |")
    on, off = labels[0], labels[1]
    worst = max(r["max_us"] for r in runs[on]) / 1000
    ratios = [a["p50_us"] / b["p50_us"] for a, b in zip(runs[on], runs[off])]
    quiet = [r["max_us"] / 1000 for r in runs[on] if r["gc2"] == 0]
    lines += [
        "",
        f"- {on}: the largest round trip of any round {worst:,.1f} ms (bound: below "
        f"{MAX_BOUND_MS:g} ms): {'held' if worst < MAX_BOUND_MS else 'NOT held'}",
        f"- {on}: full GC passes during the probe, each round: "
        + ", ".join(f"{r['gc2']:.0f} ({r['gc2_ms']:,.0f} ms)" for r in runs[on])
        + "; the largest round trip of the rounds without one: "
        + (f"{max(quiet):,.1f} ms" if quiet else "none was without one"),
        "- p50 with pings on / off, each round's pair: "
        + ", ".join(f"{r:.2f}" for r in ratios)
        + f"; median {statistics.median(ratios):.2f} (bound: at most {P50_BOUND}): "
        + ("held" if statistics.median(ratios) <= P50_BOUND else "NOT held"),
        "",
        "<details><summary>Every round</summary>\n",
        "| round | variant | p50 (us) | p99 (us) | max (us) | pings | dropped | idle users "
        "opened in (s) | machine busy before the probe (% of a core) | full GC passes in "
        "the probe (ms) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for label in labels:
        for number, r in enumerate(runs[label], 1):
            lines.append(
                f"| {number} | {label} | {r['p50_us']:,} | {r['p99_us']:,} | {r['max_us']:,} | "
                f"{r['pings']:,} | {r['dropped']} | {r['open_s']:.1f} | {r['busy_before']:.0f} | "
                f"{r['gc2']:.0f} ({r['gc2_ms']:,.0f}) |")
    lines += ["", "</details>", ""]
    return lines


def loadAverage():
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def main(argv=None):
    args = parseArgs(argv)
    stopOnSignals()
    raiseOpenFileLimit()
    node = shutil.which("node") or sys.exit("node not found: install nodejs")
    redisServer = None
    if args.redis:
        redisServer = shutil.which("redis-server") or sys.exit("redis-server not found")
    ensureWs(node)
    chosen = variants(args)
    labels = [label for label, _, _ in chosen]

    def work(children, logDir):
        began = time.monotonic()
        before = loadAverage()
        workers = EchoWorkers(children, node, 2, logDir)
        runs = {label: [] for label in labels}
        for number in range(args.rounds):
            order = chosen[number % len(chosen):] + chosen[:number % len(chosen)]
            for label, twistd, ping in order:
                print(f"round {number + 1}: {label} ...", flush=True)
                runs[label].append(
                    measure(children, node, workers, logDir, args, twistd, ping, redisServer))
                print(f"  {runs[label][-1]}", flush=True)
        section = "\n".join(render(args, runs, labels, (before, loadAverage())))
        _report.publish(section, not args.no_record)
        print(f"({time.monotonic() - began:.0f} s)")

    return runWithChildren("wslb-keepalive-", work)


if __name__ == "__main__":
    sys.exit(main())
