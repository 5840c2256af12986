"""
The relay's per-message path on its own: CPU per message of the byte
relay's frame parser (wslb.proxy.splice's Direction), fed frames in memory,
for this checkout and, with ``--baseline DIR``, another checkout's
(DIR/.venv/bin/python), alternating in every round.

    python bench/hotpath.py [--baseline DIR] [--rounds 7] [--messages 200000]

It measures what no socket, reactor or other process adds noise to: on a
shared machine bench/run.py's throughput figures vary by more than the few
percent a change of the relay's code makes. CPU time (process_time), median
over rounds.
"""

import argparse
import statistics
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent

# Run by each checkout's Python: prints "case microseconds-per-message" lines.
_MEASURE = r"""
import os, sys, time
from wslb.metrics import Traffic
from wslb.proxy import splice
Direction = getattr(splice, "Direction", None) or splice._Direction

class Splice:
    maxMessageSize = 16 * 1024 * 1024
    activity = 0
    def __init__(self):
        self.traffic = Traffic()

class Sink:
    def write(self, data):
        pass

def frame(opcode, payload, masked):
    n = len(payload)
    head = bytes([0x80 | opcode])
    head += bytes([(0x80 if masked else 0) | n]) if n < 126 else (
        bytes([(0x80 if masked else 0) | 126]) + n.to_bytes(2, "big"))
    if not masked:
        return head + payload
    key = os.urandom(4)
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))

CASES = {  # name: (from the user?, opcode, payload size, messages per read)
    "user 32 B text, one per read": (True, 1, 32, 1),
    "user 1 KiB text, 16 per read": (True, 1, 1024, 16),
    "worker 32 B text, one per read": (False, 1, 32, 1),
    "worker 64 KiB binary, one per read": (False, 2, 65535, 1),
}
count = int(sys.argv[1])
for name, (fromUser, opcode, size, perRead) in CASES.items():
    read = b"".join(frame(opcode, b"a" * size, fromUser) for _ in range(perRead))
    reads = max(1, count // perRead // (1 + size // 1024))
    direction = Direction(Splice(), Sink(), Sink(), fromUser=fromUser)
    received = direction.dataReceived
    start = time.process_time()
    for _ in range(reads):
        received(read)
    spent = time.process_time() - start
    print(f"{name}\t{spent / (reads * perRead) * 1e6:.4f}")
"""


def measure(python, checkout, messages):
    out = subprocess.run([python, "-c", _MEASURE, str(messages)], cwd=checkout, check=True,
                         capture_output=True, text=True, timeout=600).stdout
    return dict((name, float(value)) for name, value in
                (line.split("\t") for line in out.splitlines()))


def main(argv):
    parser = argparse.ArgumentParser(prog="python bench/hotpath.py",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", metavar="DIR", help="another checkout with a .venv")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--messages", type=int, default=200_000)
    args = parser.parse_args(argv)
    checkouts = {"this": (sys.executable, BENCH.parent)}
    if args.baseline:
        base = Path(args.baseline).resolve()
        checkouts["baseline"] = (str(base / ".venv" / "bin" / "python"), base)
    runs = {name: [] for name in checkouts}
    for number in range(args.rounds):
        order = list(checkouts) if number % 2 == 0 else list(reversed(checkouts))
        for name in order:
            runs[name].append(measure(*checkouts[name], args.messages))
        print(f"round {number + 1}/{args.rounds} done", flush=True)
    cases = list(runs["this"][0])
    header = ["case (µs of CPU per message)", *checkouts]
    if "baseline" in checkouts:
        header.append("this / baseline")
    print("| " + " | ".join(header) + " |")
    print("|" + " --- |" * len(header))
    for case in cases:
        medians = {name: statistics.median(run[case] for run in runs[name]) for name in runs}
        cells = [case, *(f"{medians[name]:.3f}" for name in checkouts)]
        if "baseline" in checkouts:
            cells.append(f"{medians['this'] / medians['baseline']:.3f}")
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main(sys.argv[1:])
