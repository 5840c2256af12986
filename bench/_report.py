"""
The run's results as Markdown: what ran where, the medians with their ratios
to direct and to HAProxy (and of several wslb processes to one), CPU shares,
and every round's values.
"""

import datetime
import hashlib
import os
import platform
import shlex
import statistics
import subprocess
import sys
from importlib import metadata
from pathlib import Path

BENCH = Path(__file__).resolve().parent
RESULTS = BENCH / "RESULTS.md"
TITLE = "# wslb benchmark results\n"
INTRO = (
    "Produced by `bench/run.py` (see bench/README.md); newest run first. Ratios are "
    "value / reference: for throughput below 1 is slower, for latency and memory "
    "above 1 is worse.\n"
)


class Results:
    """Every round's value for each (row, target), CPU shares, and notes."""

    def __init__(self):
        self.values = {}  # (scenario name, metric) -> target name -> [value per round]
        self.cpu = {}  # scenario name -> target name -> [{"loadgen", "proxy", "workers"}]
        self.notes = []

    def add(self, scenario, target, measured):
        for row in scenario.rows:
            self.values.setdefault((scenario.name, row.metric), {}).setdefault(
                target.name, []).append(measured[row.metric])
        if measured.get("cpu"):
            self.cpu.setdefault(scenario.name, {}).setdefault(target.name, []).append(
                measured["cpu"])

    def median(self, scenario, row, targetName):
        values = [v for v in self.values.get((scenario.name, row.metric), {}).get(targetName, [])
                  if v is not None]
        return statistics.median(values) if values else None

    def rounds(self, scenario, row, targetName):
        return self.values.get((scenario.name, row.metric), {}).get(targetName, [])

    def medianCpu(self, scenario, targetName):
        samples = self.cpu.get(scenario.name, {}).get(targetName, [])
        if not samples:
            return None
        return {k: statistics.median(s[k] for s in samples) for k in samples[0]}


def machine():
    """What the numbers were measured on."""
    model = "?"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    nproc = subprocess.run(["nproc"], capture_output=True, text=True).stdout.strip()
    return f"{nproc} cores (`nproc`), {model}, Linux {platform.release()}"


def software(node, nodeModules, haproxyLabel):
    versions = [
        f"Python {platform.python_version()}",
        f"Twisted {metadata.version('twisted')}",
        f"Autobahn {metadata.version('autobahn')}",
        "node " + subprocess.run([node, "--version"], capture_output=True,
                                 text=True).stdout.strip(),
        nodeModules,
    ]
    if haproxyLabel:
        versions.append(haproxyLabel)
    return ", ".join(versions)


def command():
    script = os.path.relpath(sys.argv[0], BENCH.parent)
    return shlex.join(["python", script, *sys.argv[1:]])


def revision():
    """The wslb code measured: HEAD, and whether src/ has uncommitted changes."""
    def git(*args):
        return subprocess.run(["git", "-C", str(BENCH.parent), *args], capture_output=True,
                              text=True, timeout=10).stdout.strip()
    head = git("rev-parse", "--short", "HEAD") or "unknown"
    status = git("status", "--porcelain", "--", "src")
    if not status:
        return head
    digest = hashlib.sha1((status + git("diff", "HEAD", "--", "src")).encode()).hexdigest()
    return f"{head} + uncommitted changes in src/ (digest {digest[:8]})"


def _fmt(value, digits):
    return "-" if value is None else f"{value:,.{digits}f}"


def _ratio(value, reference):
    return "-" if value is None or not reference else f"{value / reference:.2f}"


def render(results, scenarios, targets, settings):
    """The Markdown section for this run."""
    names = [t.name for t in targets]
    labels = {t.name: t.label for t in targets}
    # TLS targets are compared with each other only (a plaintext reference would mislead).
    subjects = [t.name for t in targets if t.name.startswith("wslb") and t.tls is None]
    references = [n for n in ("direct", "haproxy") if n in names]
    scaled = [(t.name, t.comparedWith) for t in targets if t.comparedWith in names]
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    out = [
        f"## {now}: {settings['rounds']} round(s){' (quick)' if settings['quick'] else ''}\n",
        f"- command: `{command()}`",
        f"- machine: {machine()}",
        f"- wslb: {settings['revision']}",
        f"- software: {settings['software']}",
        f"- setup: {settings['setup']}",
        "",
    ]
    header = ["scenario", "unit", *(labels[n] for n in names)]
    header += [f"{labels[s]} / {labels[r].split()[0]}" for s in subjects for r in references]
    header += [f"{labels[s]} / {labels[r]}" for s, r in scaled]
    out += ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for scenario in scenarios:
        for row in scenario.rows:
            medians = {n: results.median(scenario, row, n) for n in names}
            cells = [row.label, row.unit, *(_fmt(medians[n], row.digits) for n in names)]
            cells += [_ratio(medians[s], medians[r]) for s in subjects for r in references]
            cells += [_ratio(medians[s], medians[r]) for s, r in scaled]
            out.append("| " + " | ".join(cells) + " |")
    out += [
        "",
        "CPU during the measured window (median, percent of one core, from "
        "/proc/PID/stat utime+stime; the machine has "
        f"{os.cpu_count()} cores). The load generator is one node process: well below "
        "100 % means it was not the bottleneck. \"other\" is everything else on the "
        "machine (/proc/stat), i.e. noise from other users of a shared box.",
        "",
        "| scenario | target | load generator | proxy | echo workers (all) | other |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for scenario in scenarios:
        for n in names:
            cpu = results.medianCpu(scenario, n)
            if cpu:
                proxy = f"{cpu['proxy']:.0f} %" if n != "direct" else "-"
                out.append(f"| {scenario.name} | {labels[n]} | {cpu['loadgen']:.0f} % | "
                           f"{proxy} | {cpu['workers']:.0f} % | {cpu['other']:.0f} % |")
    if results.notes:
        out += ["", "Notes:", ""] + [f"- {note}" for note in results.notes]
    out += ["", "<details><summary>Every round</summary>", "",
            "| scenario | target | values by round |", "| --- | --- | --- |"]
    for scenario in scenarios:
        for row in scenario.rows:
            for n in names:
                values = results.rounds(scenario, row, n)
                if values:
                    out.append(f"| {row.label} ({row.unit}) | {labels[n]} | "
                               + ", ".join(_fmt(v, row.digits) for v in values) + " |")
    out += ["", "</details>", ""]
    return "\n".join(out)


def publish(section, keep=True):
    """Print this run's section, and record it in bench/RESULTS.md unless told not to."""
    print("\n" + section)
    if keep:
        record(section)
        print("recorded in bench/RESULTS.md")


def record(section):
    """Put this run's section first in bench/RESULTS.md."""
    previous = RESULTS.read_text() if RESULTS.exists() else ""
    runs = previous[previous.find("\n## ") + 1:] if "\n## " in previous else ""
    RESULTS.write_text(TITLE + "\n" + INTRO + "\n" + section + ("\n" + runs if runs else ""))
