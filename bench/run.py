"""
wslb's benchmark: wslb against HAProxy and against no proxy at all, driven by
the same node load generator, interleaved over several rounds.

    python bench/run.py [--rounds 3] [--quick] [--workers 2] [--baseline DIR] [--no-x2]
                        [--no-record]
    python bench/run.py --profile [SCENARIO]   # py-spy of wslb (default pingpong-50)

Run it with the project's venv Python (its twistd is used). Everything listens
on 127.0.0.1, every load is bounded in time, and every process started is
stopped at the end, also on failure or Ctrl-C. See bench/README.md.
"""

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import _report
from _procs import QUIET_LIMIT, raiseOpenFileLimit, runWithChildren, waitQuiet
from _scenarios import LoadgenFailed, run, scenarios
from _targets import Direct, EchoWorkers, HAProxy, Wslb, makeCertificate

BENCH = Path(__file__).resolve().parent
IDLE_CONNECTIONS = 5000


@dataclass(frozen=True)
class Timing:
    warmup: float
    duration: float


def parseArgs(argv):
    parser = argparse.ArgumentParser(prog="python bench/run.py",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    parser.add_argument("--quick", action="store_true",
                        help="1 round, short windows, 1,000 idle connections (a smoke run)")
    parser.add_argument("--workers", type=int, default=2, help="echo workers (default 2)")
    parser.add_argument("--warmup", type=float, help="seconds before each measured window (1)")
    parser.add_argument("--duration", type=float, help="seconds measured per run (2.5)")
    parser.add_argument("--idle", type=int, help=f"idle connections held ({IDLE_CONNECTIONS})")
    parser.add_argument("--only", help="comma-separated scenario names to run")
    parser.add_argument("--no-redis", action="store_true", help="skip wslb with the Redis registry")
    parser.add_argument("--baseline", metavar="DIR",
                        help="also measure the wslb of another checkout (its DIR/.venv/bin/twistd),"
                             " interleaved, with a column wslb / baseline")
    parser.add_argument("--no-x2", action="store_true",
                        help="skip two wslb processes on one port (Redis registry)")
    parser.add_argument("--no-tls", action="store_true",
                        help="skip TLS terminated by HAProxy and by wslb (ssl:)")
    parser.add_argument("--no-record", action="store_true", help="do not write bench/RESULTS.md")
    parser.add_argument("--profile", nargs="?", const="pingpong-50", metavar="SCENARIO",
                        help="instead: py-spy wslb under one scenario (default pingpong-50), "
                             "writing bench/profile-50conn.svg and .txt (profile-SCENARIO.*)")
    parser.add_argument("--profile-seconds", type=int, default=10)
    parser.add_argument("--profile-redis", action="store_true",
                        help="--profile wslb with the Redis registry (its redis-server's "
                             "time is not sampled)")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds = 1
    args.timing = Timing(
        args.warmup if args.warmup is not None else (0.5 if args.quick else 1.0),
        args.duration if args.duration is not None else (1.5 if args.quick else 2.5),
    )
    if args.idle is None:
        args.idle = 1000 if args.quick else IDLE_CONNECTIONS
    known = [s.name for s in scenarios(args.idle)]
    unknown = set((args.only or "").split(",")) - set(known) - {""}
    if unknown:
        parser.error(f"--only: unknown {', '.join(sorted(unknown))}; known: {', '.join(known)}")
    return args


def ensureWs(node):
    """bench/node_modules/ws, from bench/package.json, installed on first use."""
    if (BENCH / "node_modules" / "ws" / "package.json").exists():
        return
    npm = shutil.which("npm") or sys.exit("npm not found: install node and npm")
    print("installing ws into bench/node_modules (npm install) ...", flush=True)
    subprocess.run([npm, "install", "--no-audit", "--no-fund", "--no-package-lock"],
                   cwd=BENCH, check=True, timeout=300)


def nodeModuleVersions():
    """"ws 8.23.0, bufferutil 4.1.0": what bench/node_modules holds."""
    modules = BENCH / "node_modules"
    return ", ".join(
        f"{name} {json.loads((modules / name / 'package.json').read_text())['version']}"
        for name in json.loads((BENCH / "package.json").read_text())["dependencies"]
    )


def ensureHaproxy():
    """The haproxy binary, installed with apt-get when missing (as root); None if impossible."""
    found = shutil.which("haproxy") or shutil.which("haproxy", path="/usr/sbin:/usr/local/sbin")
    if found or os.geteuid() != 0 or not shutil.which("apt-get"):
        return found
    print("installing haproxy (apt-get install -y haproxy) ...", flush=True)
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    install = ["apt-get", "install", "-y", "-q", "haproxy"]
    if subprocess.run(install, env=env, timeout=600).returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], env=env, timeout=600)
        subprocess.run(install, env=env, timeout=600)
    return shutil.which("haproxy", path="/usr/sbin:/usr/bin:/usr/local/sbin")


def stopOnSignals():
    """SIGTERM and SIGHUP unwind like Ctrl-C, so the finally blocks stop everything."""
    def interrupt(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, interrupt)


class Run:
    """One benchmark run: its processes, its targets for each round, its results."""

    def __init__(self, args, children, node, haproxy, logDir):
        self.args = args
        self.children = children
        self.node = node
        self.haproxy = haproxy
        self.logDir = logDir
        self.results = _report.Results()
        self.redisSkipped = args.no_redis
        self.pairSkipped = args.no_redis or args.no_x2
        self.redisServer = shutil.which("redis-server")
        self.workers = EchoWorkers(children, node, args.workers, logDir)
        self.tls = None if args.no_tls else makeCertificate(logDir)
        self.scenarios = [s for s in scenarios(args.idle)
                          if not args.only or s.name in args.only.split(",")]
        self.haproxyLabel = None
        self.seen = {}  # target name -> a target of that name, in first-seen order
        self.revision = _report.revision()  # each round's wslb loads src/ afresh

    def startTargets(self):
        """Fresh proxies for a round (a fresh process for the memory scenario)."""
        targets = [Direct(self.workers)]
        if self.haproxy:
            targets.append(HAProxy(self.children, self.haproxy, self.workers, self.logDir))
            self.haproxyLabel = targets[-1].label
        targets.append(Wslb(self.children, self.workers, self.logDir))
        if self.args.baseline:
            targets[-1].comparedWith = "wslb-baseline"
            twistd, label = baseline(self.args.baseline)
            targets.append(Wslb(self.children, self.workers, self.logDir, twistd=twistd,
                                label=label))
        if not self.redisSkipped:
            try:
                targets.append(Wslb(self.children, self.workers, self.logDir, "redis",
                                    self.redisServer))
            except Exception as e:
                self.redisSkipped = self.pairSkipped = True
                self.skipped(f"wslb with registry.backend=redis skipped: {e}")
        if self.args.baseline and not self.redisSkipped:
            targets[-1].comparedWith = "wslb-redis-baseline"
            twistd, label = baseline(self.args.baseline)
            targets.append(Wslb(self.children, self.workers, self.logDir, "redis",
                                self.redisServer, twistd=twistd, label=f"{label} (redis)"))
        if not self.pairSkipped:
            try:
                targets.append(Wslb(self.children, self.workers, self.logDir, "redis",
                                    self.redisServer, processes=2))
            except Exception as e:
                self.pairSkipped = True
                self.skipped(f"two wslb processes on one reuseport port skipped: {e}")
        if self.tls is not None:
            if self.haproxy:
                targets.append(HAProxy(self.children, self.haproxy, self.workers, self.logDir,
                                       tls=self.tls))
            targets.append(Wslb(self.children, self.workers, self.logDir, tls=self.tls))
        return targets

    def skipped(self, note):
        print(f"NOTE: {note}", flush=True)
        self.results.notes.append(note.split("\n")[0])

    def round(self, number):
        targets = self.startTargets()
        for target in targets:
            self.seen.setdefault(target.name, target)
        try:
            shift = number % len(targets)  # each round starts with another target
            order = targets[shift:] + targets[:shift]
            for scenario in self.scenarios:
                for target in order:
                    if scenario.proxiedOnly and not target.proxied:
                        continue
                    if scenario.firstRoundOnly and number > 0:
                        continue
                    if target.scenarios is not None and scenario.name not in target.scenarios:
                        continue
                    self.measure(number, scenario, target)
        finally:
            for target in targets:
                target.stop()

    def measure(self, number, scenario, target):
        prefix = f"r{number}-{target.name}-{scenario.name}"
        busy = waitQuiet()
        if busy > QUIET_LIMIT:
            print(f"  (machine still busy: {busy:.0f} % of a core before this run)", flush=True)
        try:
            measured = run(self.children, self.node, scenario, target, self.workers,
                           self.args.timing, prefix)
        except LoadgenFailed as e:
            note = f"round {number + 1}, {scenario.name}, {target.label}: {e}"
            print(f"  FAILED {note}", flush=True)
            self.results.notes.append(note)
            measured = {row.metric: None for row in scenario.rows}
        if measured.get("failures"):
            note = (f"round {number + 1}, {scenario.name}, {target.label}: "
                    f"{measured['failures']} failed connections ({measured['last_error']})")
            self.results.notes.append(note)
        self.results.add(scenario, target, measured)
        row = scenario.rows[0]
        value = measured[row.metric]
        cpu = measured.get("cpu")
        shown = "-" if value is None else f"{value:,.{row.digits}f} {row.unit}"
        usage = (f"  cpu: loadgen {cpu['loadgen']:.0f}%, proxy {cpu['proxy']:.0f}%, "
                 f"workers {cpu['workers']:.0f}%, other {cpu['other']:.0f}%" if cpu else "")
        print(f"round {number + 1}/{self.args.rounds}  {scenario.name:13} "
              f"{target.name:13} {shown:>18}{usage}", flush=True)

    def report(self):
        setup = (f"{self.args.workers} node ws echo workers; load generator (node ws), workers "
                 f"and proxies on one box, 127.0.0.1; medians of {self.args.rounds} interleaved "
                 f"round(s), each run {self.args.timing.warmup:g} s warm-up + "
                 f"{self.args.timing.duration:g} s measured (idle memory: first round only); "
                 "wslb: twistd -n wslb, static "
                 "provider, pool.capacity=100000, placement=spread, default logging; "
                 "x2 processes: two such twistd on one reuseport: port and one redis-server, "
                 "their CPU and memory summed; TLS: a self-signed 2048-bit RSA certificate, "
                 "wss:// clients verifying it, TLS ended by HAProxy (bind ssl crt) or wslb "
                 "(ssl: listener), plain ws:// to the workers")
        revision = _report.revision()
        if revision != self.revision:
            revision = (f"{self.revision} at the start, {revision} at the end "
                        "(src/ changed during the run)")
        settings = {
            "revision": revision,
            "rounds": self.args.rounds, "quick": self.args.quick, "setup": setup,
            "software": _report.software(self.node, nodeModuleVersions(), self.haproxyLabel),
        }
        return _report.render(self.results, self.scenarios, list(self.seen.values()), settings)


def baseline(checkout):
    """The twistd of another checkout's venv, and a label naming its revision."""
    twistd = Path(checkout).resolve() / ".venv" / "bin" / "twistd"
    if not twistd.exists():
        sys.exit(f"--baseline: no {twistd} (python3 -m venv .venv; .venv/bin/pip install -e .)")
    head = subprocess.run(["git", "-C", checkout, "rev-parse", "--short", "HEAD"],
                          capture_output=True, text=True, timeout=10).stdout.strip()
    return str(twistd), f"wslb baseline {head or checkout}"


def profileWslb(args, children, node, logDir):
    from _profile import outputName, profile

    named = {s.name: s for s in scenarios(args.idle) if not s.proxiedOnly}
    if args.profile not in named:
        sys.exit(f"--profile: one of {', '.join(named)}")
    workers = EchoWorkers(children, node, args.workers, logDir)
    if args.profile_redis:
        redisServer = shutil.which("redis-server") or sys.exit("redis-server not found")
        wslb = Wslb(children, workers, logDir, backend="redis", redisServer=redisServer)
    else:
        wslb = Wslb(children, workers, logDir)
    print(profile(children, node, wslb, named[args.profile], args.profile_seconds, logDir))
    name = outputName(named[args.profile])
    print(f"wrote bench/{name}.svg and bench/{name}.txt")


def main(argv=None):
    args = parseArgs(argv)
    stopOnSignals()
    raiseOpenFileLimit()
    node = shutil.which("node") or sys.exit("node not found: install nodejs")
    ensureWs(node)
    haproxy = None if args.profile else ensureHaproxy()
    if not args.profile and not haproxy:
        print("NOTE: haproxy is not installed and could not be; running without it")

    def work(children, logDir):
        if args.profile:
            profileWslb(args, children, node, logDir)
            return
        bench = Run(args, children, node, haproxy, logDir)
        for number in range(args.rounds):
            bench.round(number)
        _report.publish(bench.report(), not args.no_record)

    return runWithChildren("wslb-bench-", work)


if __name__ == "__main__":
    sys.exit(main())
