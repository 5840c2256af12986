"""
The Redis key schema, in one place.

Every key starts with the hash tag ``{<namespace>}:``, so all of a pool's
keys hash to one cluster slot: a Lua script may touch keys it derives itself
(per-worker, per-session) and still runs on a Redis Cluster, and several
pools can share one Redis under different namespaces.

``P`` below is the prefix ``{<namespace>}:``. Times are seconds (decimal
strings, as the callers' clocks give them); "" stands for None.

  P workers                    ZSET  worker id -> 0 (equal scores: byte order of ids)
  P worker:<id>                HASH  id url provider state draining("1"/"0") capacity
                                     load started_at state_since idle_since last_seen,
                                     indexed = "state draining capacity" it is indexed under,
                                     counted = "load capacity" it adds to P totals
  P worker-sessions:<id>       SET   keys of the sessions bound to the worker
  P sessions                   ZSET  session key -> 0
  P session:<key>              HASH  key worker cost since connections disconnected_at,
                                     conn:<instance> = live connections via that instance,
                                     and r:<request id> = the instance holding the connection
                                     that request counted ("+" in front: it bound the session)
  P abandoned:<request id>     STRING an abandoned request (abandon.lua), PX ABANDONED_FOR:
                                     an assign for it that still arrives does nothing
  P disconnected               ZSET  session key -> disconnected_at (no live connection)
  P queue                      ZSET  ticket (the request id that queued it) -> arrival
                                     number (FIFO order; a position is its ZRANK)
  P queue-seq                  STRING counter of arrivals
  P queue-held                 ZSET  ticket -> arrival number, the tickets a waiting
                                     handshake holds (the head is the first of them)
  P queue-absent               ZSET  ticket -> until when it keeps its place, the tickets
                                     nobody holds (their waiter left: the rejoin grace)
  P queue-keys                 HASH  session key -> its ticket (a key has one)
  P ticket-heartbeats          ZSET  held ticket -> last heartbeat
  P ticket:<ticket>            HASH  key cost instance holder (the request id holding it,
                                     or that held it last) enqueued_at, and passed =
                                     sessions that went ahead of it as the head
  P served                     HASH  slot -> "bucket count": queued sessions served per
                                     SERVED_BUCKET seconds, a ring of SERVED_SLOTS slots
  P start-seconds              LIST  the last START_SAMPLES start times (starting -> healthy)
  P instances                  SET   ids of instances that keep a heartbeat
  P instance:<id>              STRING heartbeat of a wslb instance, PX TTL (gone: it died)
  P instance-sessions:<id>     SET   session keys the instance counts connections for
                                     (reconciled a page at a time, by SSCAN)
  P queue-demand               STRING sum of the queued tickets' costs
  P queue-cost:<cost>          ZSET  ticket -> arrival number, the held tickets of that cost
  P queue-costs                ZSET  cost -> cost, the costs some held ticket has
  P epoch                      STRING random value set once (SET NX): changes when
                                     Redis lost its data
  P leader                     STRING the scaler leadership lock (random token, PX TTL)
  P fencing                    STRING counter: INCR on every new leadership
  P events                     pub/sub channel: "capacity", "ended:<key>", "queue",
                                     "sync:<token>"

Indexes, kept by the scripts in step with the worker records (the Lua
prelude's reindex and forgetWorker), so that no script reads every worker:

  P assignable:<capacity>      ZSET  worker id -> load, the healthy, non-draining workers
                                     of that capacity (placement: O(log n) per capacity)
  P assignable-capacities      ZSET  capacity -> capacity, those with an assignable:<capacity>
  P capacities                 ZSET  worker id -> capacity, every worker not dead (the
                                     largest capacity)
  P state:<state>              ZSET  worker id -> 0, the workers in that state (counts; the
                                     starting workers, paged by id)
  P totals                     HASH  load capacity: the sums over every worker not dead

Registry scripts get the prefix and the fixed keys above as KEYS
(L{Keys.scriptKeys}) and derive the per-record ones, ``epoch`` and
``events`` from the prefix. Kinds of records get distinct prefixes
(``worker:`` vs ``worker-sessions:``) so that no id, whatever its
characters, can make one key name another's.
"""

from __future__ import annotations


class Keys:
    """The key names of one namespace."""

    def __init__(self, namespace: str):
        if not namespace or "{" in namespace or "}" in namespace:
            raise ValueError(
                f"registry namespace {namespace!r}: must be non-empty, without braces"
            )
        self.prefix = "{" + namespace + "}:"
        p = self.prefix
        self.workers = p + "workers"
        self.sessions = p + "sessions"
        self.disconnected = p + "disconnected"
        self.queue = p + "queue"
        self.queueSeq = p + "queue-seq"
        self.ticketHeartbeats = p + "ticket-heartbeats"
        self.instances = p + "instances"
        self.leader = p + "leader"
        self.fencing = p + "fencing"
        self.events = p + "events"

    def scriptKeys(self) -> list[str]:
        """
        The KEYS of every registry script, in the order the Lua prelude
        (``lua/_prelude.lua``) names them.
        """
        return [
            self.prefix, self.workers, self.sessions, self.disconnected,
            self.queue, self.queueSeq, self.ticketHeartbeats, self.instances,
        ]
