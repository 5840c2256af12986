"""
Where wslb spends its time under one scenario's load (the 50-connection
ping-pong by default): py-spy samples the twistd process while the load
generator runs, giving a flame graph (SVG) and a text summary of the
functions with the most own time.
"""

import collections
import json
import shutil
import subprocess
import sys
from pathlib import Path

from _scenarios import LOADGEN, SLACK

BENCH = Path(__file__).resolve().parent
TOP = 15
IDLE = "EPollReactor.doPoll ("  # own time here is the reactor in epoll_wait


def pyspyPath():
    beside = Path(sys.executable).with_name("py-spy")
    found = str(beside) if beside.exists() else shutil.which("py-spy")
    if not found:
        raise SystemExit("py-spy not found: pip install py-spy (into the venv running this)")
    return found


def _frame(frame):
    """("function (short/path.py)", package) from py-spy's "function (path/to/file.py:line)"."""
    function, _, where = frame.rpartition(" (")
    parts = Path(where.rstrip(")").rsplit(":", 1)[0]).parts
    for anchor in ("site-packages", "src", "lib"):
        if anchor in parts:
            parts = parts[len(parts) - parts[::-1].index(anchor):]
            break
    package = parts[0] if len(parts) > 1 else "stdlib"
    if package.startswith("python3"):
        package = "stdlib"
    return f"{function} ({'/'.join(parts[-3:])})", package


def summarise(rawPath, top=TOP):
    """Text: the ``top`` functions by own (leaf) samples with their totals; own time by package."""
    own = collections.Counter()
    total = collections.Counter()
    packages = collections.Counter()
    samples = 0
    for line in Path(rawPath).read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        count = int(count)
        thread, *stack = stack.split(";")
        if "MainThread" not in thread:  # the reactor's thread; pool threads only wait
            continue
        frames = [_frame(f) for f in stack]
        samples += count
        leaf, package = frames[-1]
        own[leaf] += count
        if not leaf.startswith(IDLE):
            packages[package] += count
        for name in {name for name, _ in frames}:
            total[name] += count
    idle = sum(n for name, n in own.items() if name.startswith(IDLE))
    busy = max(samples - idle, 1)
    lines = [
        f"{samples} samples of the main thread; {idle} ({100 * idle / max(samples, 1):.1f} %) "
        f"in epoll_wait; percentages below are of the {busy} other samples.",
        "",
        "own time by package: " + ", ".join(
            f"{name} {100 * n / busy:.1f} %" for name, n in packages.most_common()),
        "",
        f"{'own %':>6} {'total %':>7}  function (file)",
    ]
    ranked = [(name, n) for name, n in own.most_common() if not name.startswith(IDLE)]
    for name, n in ranked[:top]:
        lines.append(f"{100 * n / busy:6.1f} {100 * total[name] / busy:7.1f}  {name}")
    return "\n".join(lines) + "\n"


def outputName(scenario):
    """bench/<name>.svg and .txt for a profiled scenario."""
    return "profile-50conn" if scenario.name == "pingpong-50" else f"profile-{scenario.name}"


def profile(children, node, wslb, scenario, seconds, logDir):
    """Record wslb (a running L{Wslb}) under ``scenario``'s load; returns the summary."""
    pyspy = pyspyPath()
    spec = dict(scenario.spec, urls=wslb.urls, prefix="profile", warmup=1.0,
                duration=2 * seconds + 4, limit=2 * seconds + 5 + SLACK)
    loadgen = children.start([node, str(LOADGEN), json.dumps(spec)],
                             stdout=subprocess.PIPE, text=True)
    svg = BENCH / f"{outputName(scenario)}.svg"
    raw = logDir / "profile.raw"
    try:
        if loadgen.stdout.readline().split()[:2] != ["EVENT", "measure-start"]:
            raise RuntimeError("load generator did not start measuring")
        pid = str(wslb.process.pid)
        for args in (["-o", str(svg)],
                     ["--format", "raw", "--function", "--idle", "--threads", "-o", str(raw)]):
            subprocess.run([pyspy, "record", "--pid", pid, "--duration", str(seconds), *args],
                           check=True, timeout=seconds + 60, capture_output=True)
        result = json.loads(loadgen.stdout.read().split("RESULT ", 1)[1])
    finally:
        children.stop(loadgen)
    row = scenario.rows[0]
    text = (f"wslb under: {row.label} ({result[row.metric]:,.{row.digits}f} {row.unit} "
            f"while sampled).\npy-spy record --function --idle --threads, {seconds} s; "
            f"main thread only; flame graph: bench/{svg.name}.\n\n" + summarise(raw))
    (BENCH / f"{outputName(scenario)}.txt").write_text(text)
    return text
