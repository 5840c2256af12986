"""
wslb's fleet-scale benchmark: what the shared Redis registry costs as the
fleet, the sessions and the queue grow, and crowds against a cluster of wslb
instances on one Redis.

    python bench/scale.py                      # everything, about 10 minutes
    python bench/scale.py --only costs         # costs, once, crowd (comma-separated)

Run it with the project's venv Python (its twistd is used). Everything listens
on 127.0.0.1, and every process started is stopped at the end, also on
failure or Ctrl-C. Results go to bench/RESULTS.md (unless --no-record); see
bench/README.md.
"""

import argparse
import datetime
import os
import shutil
import sys
import time

import _crowd
import _pool
import _report
import _scale_costs
from _procs import freePort, raiseOpenFileLimit, runWithChildren, waitListening
from run import ensureWs, nodeModuleVersions, stopOnSignals

PARTS = ("costs", "pool", "once", "crowd")
PERIODIC_BOUND = 200.0  # µs of Redis per call, for any call made periodically or per handshake
POSITION_BOUND = 3.0  # a queue position at the longest queue, at most this times the shortest's

# The calls an instance makes per handshake or periodically (the leader's
# page reads included), by their row in the costs tables: (table, row).
HOT = [
    ("fleet", "assign: fresh key, pack"), ("fleet", "assign: fresh key, spread"),
    ("fleet", "assign: reconnect"), ("fleet", "release"), ("fleet", "end_session"),
    ("fleet", "expire_sessions (none due)"), ("fleet", "instance_heartbeat"),
    ("fleet", "epoch"), ("fleet", "sweep_instances (none gone)"),
    ("fleet", "largest_capacity"), ("fleet", "count_workers"), ("fleet", "count_sessions"),
    ("fleet", "worker_totals"), ("fleet", "abandon (an assign given up)"),
    ("fleet", f"counted_sessions: a page ({_scale_costs.PAGE}) of an instance's"),
    ("fleet", f"reconcile: a page ({_scale_costs.PAGE})"),
    ("fleet", f"list_workers: a page ({_scale_costs.PAGE}), without sessions"),
    ("fleet", "get_worker, without sessions"),
    ("fleet", "set_worker_state: health check passed"),
    ("queue", "queue_info"), ("queue", "assign: queue retry, not the head"),
    ("queue", "assign: queue retry, the head"), ("queue", "assign: new key, joins the queue"),
    ("queue", "assign: new key, allow_overtake (checks the queue ahead)"),
    ("queue", "leave_queue"), ("queue", f"touch_tickets: a slice ({_scale_costs.PAGE})"),
    ("queue", "queue_status: one key's place"),
    ("queue", f"queue_status: a slice of places ({_scale_costs.PAGE})"),
    ("queue", "abandon: a queued key, keeping its place"),
    ("queue", "assign: a key back within its rejoin grace"),
    ("queue", "expire_tickets (none due)"),
    ("lock", "lock_renew"),
]


def parseArgs(argv):
    parser = argparse.ArgumentParser(prog="python bench/scale.py",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", help=f"comma-separated parts: {', '.join(PARTS)}")
    parser.add_argument("--rounds", type=int, default=3,
                        help="rounds of the script costs, sizes interleaved (default 3)")
    parser.add_argument("--users", type=int, default=5000, help="the flash crowd (5,000)")
    parser.add_argument("--workers", type=int, default=2000,
                        help="workers (capacity 1) for the flash crowd (2,000)")
    parser.add_argument("--spread", type=float, default=10.0,
                        help="seconds over which the flash crowd arrives (10)")
    parser.add_argument("--no-record", action="store_true", help="do not write bench/RESULTS.md")
    args = parser.parse_args(argv)
    args.parts = PARTS if not args.only else tuple(args.only.split(","))
    unknown = set(args.parts) - set(PARTS)
    if unknown:
        parser.error(f"--only: unknown {', '.join(sorted(unknown))}; known: {', '.join(PARTS)}")
    return args


def withRedis(children, redisServer, logDir, name, measure, *args):
    """
    ``measure(port, *args)`` against a redis-server of its own, at a higher
    priority when we may (root: nice -10), so that the other users of a
    shared box preempt it less: what a Redis host of its own does is measured.
    """
    port = freePort()
    priority = ["nice", "-n", "-10"] if os.geteuid() == 0 else []
    process = children.start([*priority, redisServer, "--port", str(port), "--bind", "127.0.0.1",
                              "--save", "", "--appendonly", "no"], log=logDir / f"{name}.log")
    try:
        waitListening(port, process, 30, "redis-server")
        return measure(port, *args)
    finally:
        children.stop(process)


def once(children, node, redisServer, logDir):
    """1,000 users at once: on 1,000 workers of capacity 1, then on 10 of capacity 100."""
    results = []
    for workers, capacity in ((1000, 1), (10, 100)):
        print(f"  1,000 users at once, 3 instances, {workers:,} workers of capacity {capacity}",
              flush=True)
        cluster = _crowd.Cluster(children, node, redisServer, logDir, workers, capacity,
                                 name=f"once-{workers}")
        try:
            results.append(_crowd.allAtOnce(children, node, cluster, 1000))
        finally:
            cluster.stop()
    return results


def crowd(children, node, redisServer, logDir, args):
    print(f"  flash crowd: {args.users:,} users within {args.spread:g} s, 3 instances, "
          f"{args.workers:,} workers of capacity 1", flush=True)
    cluster = _crowd.Cluster(children, node, redisServer, logDir, args.workers, 1, name="crowd")
    try:
        return _crowd.flashCrowd(children, node, cluster, args.users, args.spread)
    finally:
        cluster.stop()


def _us(value):
    return "-" if value is None else f"{value:,.0f}" if value >= 100 else f"{value:.1f}"


def renderCosts(c):
    out = []
    sizes = list(c["fleets"])
    header = ([f"Redis µs at {n:,} workers" for n in sizes]
              + [f"round trip p50 µs at {n:,}" for n in sizes])
    out += [f"Script costs, {_scale_costs.SESSIONS:,} sessions (half in their reconnect "
            "grace) whatever the fleet; Redis µs per call from `INFO commandstats` "
            "(EVALSHA usec / calls over a batch of "
            f"{_scale_costs.BATCH}; redis-server at nice -10 when run as root), the least "
            "over the rounds (preemption by other processes only adds); round trip: "
            "redis-py, one call at a time, the median over the rounds.", "",
            "| call | " + " | ".join(header) + " |", "|" + " --- |" * (len(header) + 1)]
    for name in c["fleets"][sizes[0]]:
        cells = [_us(c["fleets"][n][name][0]) for n in sizes]
        cells += [_us(c["fleets"][n][name][1]) for n in sizes]
        out.append(f"| {name} | " + " | ".join(cells) + " |")
    lengths = list(c["queues"])
    header = ([f"Redis µs at {n:,} queued" for n in lengths]
              + [f"round trip p50 µs at {n:,}" for n in lengths])
    out += ["", "| call | " + " | ".join(header) + " |", "|" + " --- |" * (len(header) + 1)]
    for name in c["queues"][lengths[0]]:
        cells = [_us(c["queues"][n][name][0]) for n in lengths]
        cells += [_us(c["queues"][n][name][1]) for n in lengths]
        out.append(f"| {name} | " + " | ".join(cells) + " |")
    out += ["", "| leader lock script | Redis µs | round trip p50 µs |", "| --- | --- | --- |"]
    for name, (usec, p50, _) in c["lock"].items():
        out.append(f"| {name} | {_us(usec)} | {_us(p50)} |")
    largest, smallest = sizes[-1], sizes[0]
    fleet, queue = c["fleets"], c["queues"]
    pack = fleet[largest]["assign: fresh key, pack"][0]
    packSmall = fleet[smallest]["assign: fresh key, pack"][0]
    out += ["", f"- fresh `assign` (pack): {_us(packSmall)} µs at {smallest:,} workers, "
                f"{_us(pack)} µs at {largest:,}: ratio {pack / packSmall:.2f}"]
    for name, bound in (("queue_info", ""),
                        ("queue_status: one key's place", f" (bound {POSITION_BOUND:g})")):
        small, large = queue[lengths[0]][name][0], queue[lengths[-1]][name][0]
        out.append(f"- `{name}`: {_us(small)} µs at {lengths[0]:,} tickets, {_us(large)} µs "
                   f"at {lengths[-1]:,}: ratio {large / small:.2f}{bound}")
    tables = {"fleet": fleet[largest], "queue": queue[lengths[-1]], "lock": c["lock"]}
    hot = [(name, tables[table][name][0]) for table, name in HOT]
    worst = max(hot, key=lambda h: h[1])
    out += [f"- every call an instance makes per handshake or periodically, at {largest:,} "
            f"workers, {_scale_costs.SESSIONS:,} sessions and {lengths[-1]:,} queued: "
            f"at most {_us(worst[1])} µs ({worst[0]}); over {PERIODIC_BOUND:.0f} µs: "
            + (", ".join(f"{n} ({_us(v)} µs)" for n, v in hot if v > PERIODIC_BOUND)
               or "none")]
    m = c["memory"]
    out += [f"- Redis memory: {m['worker']:,.0f} B per worker (with its index entries), "
            f"{m['session']:,.0f} B per session, {m['ticket']:,.0f} B per queued ticket "
            "(`used_memory` growth over 10,000 of each)"]
    return out


def renderPool(results):
    out = ["", f"Command connections per instance: {_pool.INSTANCES} client processes (each a "
               "RedisRegistry) on one Redis with 10,000 workers and 10,000 sessions, each "
               f"running {_pool.CONCURRENCY} handshake loops (assign of a known key, release) "
               f"for {_pool.SECONDS:g} s; the first, the leader, also reads the whole fleet "
               "in pages over and over. Assign round trips in µs, medians over the rounds:", "",
           "| connections | all: calls | all: p50 | all: p99 | all: max | leader: p50 | "
           "leader: p99 | leader: max | leader's fleet reads |",
           "|" + " --- |" * 9]
    for pool, r in results.items():
        a, lead = r["all"], r["leader"]
        out.append(f"| {pool} | {a['calls']:,.0f} | {_us(a['p50'])} | {_us(a['p99'])} | "
                   f"{_us(a['max'])} | {_us(lead['p50'])} | {_us(lead['p99'])} | "
                   f"{_us(lead['max'])} | {r['passes']:.0f} |")
    return out


def renderOnce(results):
    out = ["", "1,000 users opening a WebSocket at the same moment, round robin over 3 wslb "
               "instances (twistd, Redis registry) on one redis-server:", "",
           "| workers | capacity | served | refused | seconds until all served | "
           "most sessions on one worker (worker-side) |", "| --- | --- | --- | --- | --- | --- |"]
    for r in results:
        out.append(f"| {r['workers']:,} | {r['capacity']} | {r['opened']:,} | {r['refused']} | "
                   f"{r['seconds']:.2f} | {r['most_per_worker']} |")
    return out


def renderCrowd(r):
    d = r["drain"]
    cpu = r["cpu"]
    return [
        "", f"Flash crowd: {r['users']:,} users arriving evenly within {r['spread']:g} s, round "
            f"robin over {r['instances']} wslb instances on one redis-server, {r['workers']:,} "
            f"workers of capacity {r['capacity']} (one node process, a port each):", "",
        f"- every user served or queued after {r['seconds_to_served_or_queued']:.2f} s "
        f"({r['served']:,} served, {r['queued']:,} queued, {r['refused']} refused"
        + (f": {r['refusals']}" if r["refused"] else "") + ")",
        f"- handshake of the users served during the crowd: p50 {r['handshake_p50_ms']:.1f} ms, "
        f"p99 {r['handshake_p99_ms']:.1f} ms",
        f"- CPU meanwhile (percent of one core): redis-server {cpu['redis']:.0f} %, the 3 wslb "
        f"{cpu['wslb']:.0f} %, workers {cpu['workers']:.0f} %, load generator "
        f"{cpu['loadgen']:.0f} %, other {cpu['other']:.0f} %; Redis ran {r['script_calls']:,} "
        f"scripts in {r['script_usec'] / 1000:,.0f} ms ({r['redis_script_share']:.1f} % of the "
        "time)",
        f"- most sessions one worker had at once (worker-side count): {r['most_per_worker']} "
        f"(capacity {r['capacity']})",
        f"- the queue drained {_crowd.DRAIN_BATCH} freed slots at a time in {d['seconds']:.1f} s; "
        f"Redis bound the {d['bound']:,} queued users in the queue's order: "
        + ("exactly" if d["fifo_exact"] else f"NO (first difference at {d['first_out_of_order']})")
        + (f"; {d['never_bound']} queued tickets were never bound (nobody held them: their "
           "caller had timed out and was refused)" if d["never_bound"] else ""),
    ]


def heading(args, revision):
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    return [f"## {now}: fleet scale (`bench/scale.py`)\n",
            f"- command: `{_report.command()}`",
            f"- machine: {_report.machine()}; load average before the run: {args.load}",
            f"- wslb: {revision}",
            f"- software: node modules {nodeModuleVersions()}",
            ""]


def main(argv=None):
    args = parseArgs(argv)
    stopOnSignals()
    raiseOpenFileLimit()
    node = shutil.which("node") or sys.exit("node not found: install nodejs")
    redisServer = shutil.which("redis-server") or sys.exit("redis-server not found")
    ensureWs(node)
    with open("/proc/loadavg") as f:
        args.load = " ".join(f.read().split()[:3])
    revision = _report.revision()

    parts = {  # name: (measure it, render what it measured)
        "costs": (lambda children, logDir: withRedis(
            children, redisServer, logDir, "costs-redis", _scale_costs.run, args.rounds),
            renderCosts),
        "pool": (lambda children, logDir: withRedis(
            children, redisServer, logDir, "pool-redis", _pool.run, args.rounds), renderPool),
        "once": (lambda children, logDir: once(children, node, redisServer, logDir),
                 renderOnce),
        "crowd": (lambda children, logDir: crowd(children, node, redisServer, logDir, args),
                  renderCrowd),
    }

    def work(children, logDir):
        began = time.monotonic()
        section = heading(args, revision)
        for name in args.parts:
            measure, render = parts[name]
            lines = render(measure(children, logDir))
            print("\n".join(lines), flush=True)  # kept on screen should a later part fail
            section += lines
        _report.publish("\n".join(section) + "\n", not args.no_record)
        print(f"({time.monotonic() - began:.0f} s)")

    return runWithChildren("wslb-scale-", work)


if __name__ == "__main__":
    sys.exit(main())
