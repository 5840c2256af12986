"""
The Redis registry's operations, apart from how Redis is reached.

Each function returns an L{Op}: which Lua script to run (``lua/*.lua``),
its ARGV, and how to turn the script's JSON reply into the registry's
dataclasses. The Twisted L{wslb.registry.redis.RedisRegistry} runs them over
txredisapi; the Lambda handlers run the very same scripts synchronously
with redis-py::

    keys = Keys(namespace).scriptKeys()
    op = redis_ops.setWorkerState(worker_id, "dead", now)
    worker = op.decode(client.eval(op.source, len(keys), *keys, *op.args))

(redis-py returns bytes unless ``decode_responses=True``; ``decode``
accepts both.) Every registry script gets the same KEYS; see
``lua/_prelude.lua`` and L{wslb.registry.keys}.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from importlib import resources

from wslb.registry._interfaces import (
    ABANDONED_FOR,
    MAX_OVERTAKES,
    PACK,
    SERVED_BUCKET,
    SERVED_SLOTS,
    SPREAD,
    START_SAMPLES,
    WORKER_STATES,
    Abandoned,
    Assigned,
    Queued,
    QueueFull,
    QueueInfo,
    QueuePace,
    QueuePlace,
    QueueStatus,
    Session,
    Worker,
)
from wslb.registry.prelude import withPrelude

_LUA = resources.files("wslb.registry") / "lua"

# The most records one listing script reads: each record costs Redis a few
# microseconds (a session reconciled, about ten), and a script holds Redis
# for its whole run, so longer lists are read as several pages (several
# calls), between which other calls run: none costs much over 100 µs.
PAGE = 15


@cache
def _text(name: str) -> str:
    return (_LUA / f"{name}.lua").read_text(encoding="utf-8")


# The constants the prelude shares with the memory registry, defined once.
_CONSTANTS = (f"local SERVED_BUCKET, SERVED_SLOTS, START_SAMPLES = "
              f"{SERVED_BUCKET}, {SERVED_SLOTS}, {START_SAMPLES}\n")


@cache
def registryScript(name: str) -> str:
    """
    The source of a registry script: its body after the shared constants
    and the prelude's definitions it uses (L{wslb.registry.prelude}).
    """
    return withPrelude(_CONSTANTS + _text("_prelude"), _text(name))


def lockScript(name: str) -> str:
    """The source of a lock script (``lock_release``, ``lock_renew``)."""
    return _text(name)


@dataclass(frozen=True)
class Op:
    """One registry script call: run ``source`` with ``args``, ``decode`` the reply."""

    script: str
    args: tuple[str, ...]
    decode: Callable[[str | bytes], object]

    @property
    def source(self) -> str:
        return registryScript(self.script)


# -- encoding -----------------------------------------------------------


def _time(seconds) -> str:
    """Seconds as a string that reads back as the same number (int or float)."""
    return repr(seconds) if isinstance(seconds, (int, float)) else str(float(seconds))


def _readTime(text: str):
    if not text:
        return None
    return int(text) if text.lstrip("-").isdigit() else float(text)


def _json(reply):
    return json.loads(reply)


def _worker(fields) -> Worker | None:
    """A Worker from its fields; ``sessions`` None when the script left them out."""
    if not fields:
        return None
    sessions = fields.get("sessions")
    return Worker(
        id=fields["id"], url=fields["url"], provider=fields["provider"],
        state=fields["state"], draining=fields["draining"] == "1",
        capacity=int(fields["capacity"]), load=int(fields["load"]),
        # cjson writes an empty list as {}
        sessions=None if sessions is None else tuple(sorted(sessions or ())),
        started_at=_readTime(fields["started_at"]),
        state_since=_readTime(fields["state_since"]),
        idle_since=_readTime(fields["idle_since"]),
        last_seen=_readTime(fields["last_seen"]),
    )


def _session(fields) -> Session | None:
    if not fields:
        return None
    return Session(
        key=fields["key"], worker=fields["worker"], cost=int(fields["cost"]),
        connections=int(fields["connections"]), since=_readTime(fields["since"]),
        disconnected_at=_readTime(fields["disconnected_at"]),
    )


def _decodeWorker(reply):
    return _worker(_json(reply))


# What a listing reads of each record (HMGET: a row of values, not a map).
WORKER_FIELDS = ("id", "url", "provider", "state", "draining", "capacity", "load",
                 "started_at", "state_since", "idle_since", "last_seen")
SESSION_FIELDS = ("key", "worker", "cost", "connections", "since", "disconnected_at")


def _decodeWorkerRows(reply):
    """Rows of WORKER_FIELDS' values, each followed by its sessions when they were read."""
    workers = []
    for row in _json(reply) or ():
        fields = dict(zip(WORKER_FIELDS, row))
        if len(row) > len(WORKER_FIELDS):
            fields["sessions"] = row[-1]
        workers.append(_worker(fields))
    return workers


def _decodeSession(reply):
    return _session(_json(reply))


def _decodeSessionRows(reply):
    return [_session(dict(zip(SESSION_FIELDS, row))) for row in _json(reply) or ()]


def _decodeSortedNames(reply):
    return sorted(_json(reply) or ())


def _decodeAssignment(reply):
    answer = _json(reply)
    if "abandoned" in answer:
        return Abandoned()
    if "assigned" in answer:
        return Assigned(_worker(answer["assigned"]), answer["fresh"])
    if "queued" in answer:
        return Queued(answer["queued"], int(answer["position"]), int(answer["order"]))
    return QueueFull()


def _decodePlain(reply):
    return _json(reply)


def _pageSize(limit) -> str:
    if not 1 <= limit <= PAGE:
        raise ValueError(f"a page holds 1 to {PAGE} records, not {limit}")
    return str(int(limit))


# -- workers ------------------------------------------------------------


def addWorker(worker_id, url, provider, capacity, now) -> Op:
    return Op("add_worker", (worker_id, url, provider, str(int(capacity)), _time(now)),
              _decodeWorker)


def getWorker(worker_id, sessions=True) -> Op:
    return Op("get_worker", (worker_id, "1" if sessions else "0"), _decodeWorker)


def listWorkers(sessions=True, state=None, after=None, limit=PAGE) -> Op:
    """One page: at most ``limit`` (<= PAGE) workers; RedisRegistry pages through more."""
    if state is not None and state not in WORKER_STATES:
        raise ValueError(f"unknown worker state {state!r}")
    return Op("list_workers", (
        "1" if sessions else "0", after or "", _pageSize(limit), state or "", *WORKER_FIELDS,
    ), _decodeWorkerRows)


def countWorkers() -> Op:
    return Op("count_workers", (), _decodePlain)


def largestCapacity() -> Op:
    return Op("largest_capacity", (), _decodePlain)


def workerTotals() -> Op:
    return Op("worker_totals", (), _decodePlain)


def setWorkerState(worker_id, state, now, allowedFrom=None, sessions=True) -> Op:
    for named in (state, *(allowedFrom or ())):
        if named not in WORKER_STATES:
            raise ValueError(f"unknown worker state {named!r}")
    guard = () if allowedFrom is None else (" ".join(sorted(allowedFrom)),)
    return Op("set_worker_state", (worker_id, state, _time(now), "1" if sessions else "0",
                                   *guard), _decodeWorker)


def setDraining(worker_id, draining) -> Op:
    return Op("set_draining", (worker_id, "1" if draining else "0"), _decodeWorker)


def heartbeat(worker_id, now) -> Op:
    return Op("worker_heartbeat", (worker_id, _time(now)), _decodeWorker)


def removeWorker(worker_id) -> Op:
    return Op("remove_worker", (worker_id,), _decodeSortedNames)


def claimIdleWorker(worker_id) -> Op:
    return Op("claim_idle_worker", (worker_id,), _decodePlain)


# -- sessions -----------------------------------------------------------


def _requestId(request_id):
    """A request id as the scripts take it: listed with spaces between, so none inside."""
    if not request_id or request_id.split() != [request_id]:  # split: by str.isspace, in C
        raise ValueError(f"a request id is a non-empty word, not {request_id!r}")
    return request_id


def assign(request, now) -> Op:
    if request.placement not in (PACK, SPREAD):
        raise ValueError(f"unknown placement {request.placement!r}")
    return Op("assign", (
        request.key, str(int(request.cost)), request.instance, request.placement,
        str(int(request.max_queue)), request.ticket or "", _time(now),
        _requestId(request.request_id), str(MAX_OVERTAKES if request.allow_overtake else 0),
    ), _decodeAssignment)


def release(key, instance, now, request_id=None) -> Op:
    request = "" if request_id is None else _requestId(request_id)
    return Op("release", (key, instance, _time(now), request), _decodeSession)


def abandon(key, request_id, now, keep_place_until=None) -> Op:
    keep = "" if keep_place_until is None else _time(keep_place_until)
    return Op("abandon", (key, _requestId(request_id), _time(now),
                          str(round(ABANDONED_FOR * 1000)), keep), _decodeSession)


def countedSessions(instance, cursor="0", count=PAGE) -> Op:
    """About ``count`` of the sessions ``instance`` counts: (next cursor, "0" at the end; keys)."""
    def decode(reply):
        cursor, keys = _json(reply)
        return cursor, keys or []

    return Op("counted_sessions", (instance, cursor, _pageSize(count)), decode)


def reconcile(instance, held, now) -> Op:
    """
    ``held``: session key -> the request ids of its connections ``instance``
    holds, for the sessions to reconcile (a page of countedSessions).
    """
    pairs = [part for key, ids in sorted(held.items())
             for part in (key, " ".join(_requestId(i) for i in ids))]
    return Op("reconcile", (instance, _time(now), *pairs), _decodeSortedNames)


def endSession(key, now) -> Op:
    """``now`` dates the idle_since of a worker left empty."""
    return Op("end_session", (key, _time(now)), _decodeSession)


def expireSessions(now, grace) -> Op:
    return Op("expire_sessions", (_time(now), _time(grace)), _decodeSortedNames)


def getSession(key) -> Op:
    return Op("get_session", (key,), _decodeSession)


def listSessions(after=None, limit=PAGE) -> Op:
    """One page: at most ``limit`` (<= PAGE) sessions; RedisRegistry pages through more."""
    return Op("list_sessions", (after or "", _pageSize(limit), *SESSION_FIELDS),
              _decodeSessionRows)


def countSessions(connected=None) -> Op:
    flag = "" if connected is None else str(int(bool(connected)))
    return Op("count_sessions", (flag,), _decodePlain)


# -- queue --------------------------------------------------------------


def leaveQueue(ticket) -> Op:
    return Op("leave_queue", (ticket,), _decodePlain)


def touchTickets(tickets, now) -> Op:
    return Op("touch_tickets", (_time(now), *tickets), _decodePlain)


def expireTickets(now, max_age) -> Op:
    return Op("expire_tickets", (_time(now), _time(max_age)), _decodePlain)


def queueInfo(now) -> Op:
    def decode(reply):
        info = _json(reply)
        if not info["length"]:
            return QueueInfo(length=0, oldest_wait=0.0, demand=0)
        return QueueInfo(
            length=int(info["length"]),
            oldest_wait=max(0.0, now - _readTime(info["head_enqueued_at"])),
            demand=int(info["demand"]),
        )

    return Op("queue_info", (), decode)


def _place(fields):
    if "ticket" in fields:
        return QueuePlace(fields["ticket"], int(fields["position"]), bool(fields["held"]))
    return _session(fields.get("session"))


def _decodeQueueStatus(reply):
    status = _json(reply)
    pace = status["pace"]
    return QueueStatus(
        length=int(status["length"]),
        places=tuple(_place(fields) for fields in status["places"] or ()),
        pace=QueuePace(served=int(pace["served"]), over=float(pace["over"]),
                       starting=int(pace["starting"]),
                       start_seconds=pace.get("start_seconds")),
    )


def queueStatus(keys, now) -> Op:
    """At most PAGE keys (RedisRegistry asks for more in slices)."""
    if len(keys) > PAGE:
        raise ValueError(f"a queue status names at most {PAGE} keys, not {len(keys)}")
    return Op("queue_status", (_time(now), *keys), _decodeQueueStatus)


# -- surviving lost data and dead instances -----------------------------


def reassertSession(key, worker_id, worker_url, provider, capacity, cost, instance,
                    requests, now) -> Op:
    if not requests:
        raise ValueError("reassert needs at least one live connection's request id")
    return Op("reassert_session", (
        key, worker_id, worker_url, provider, str(int(capacity)), str(int(cost)),
        instance, " ".join(_requestId(r) for r in requests), _time(now),
    ), _decodeSession)


def dropInstance(instance, now) -> Op:
    return Op("drop_instance", (instance, _time(now)), _decodeSortedNames)


def sweepInstances(now) -> Op:
    return Op("sweep_instances", (_time(now),), _decodeSortedNames)


def instanceHeartbeat(instance, ttl) -> Op:
    """``ttl`` in seconds."""
    return Op("instance_heartbeat", (instance, str(max(1, round(ttl * 1000)))),
              _decodePlain)


def epoch(now: float = 0.0) -> Op:
    """The epoch is "<random>:<when it was set>", so its age can be told."""
    return Op("epoch", (f"{uuid.uuid4().hex}:{now!r}",), _decodePlain)
