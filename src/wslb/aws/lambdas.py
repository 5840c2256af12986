"""
AWS Lambda handlers (DESIGN §7): EC2 state changes and the events workers
send, applied to the Redis registry by the very Lua scripts wslb runs
(L{wslb.registry.redis_ops}), synchronously with redis-py (the ``aws``
extra). Configured by ``WSLB_NAMESPACE`` (default "wslb") and the registry
URL: ``WSLB_REDIS_URL``, or ``WSLB_REDIS_URL_SECRET_ARN`` naming a Secrets
Manager secret whose value is the URL (read once per cold start, and again
after Redis refuses the password, e.g. once the secret was rotated). One
client per cold start; a ``rediss://`` server's certificate is verified,
its host name included.

AWS delivers events at least once and in no promised order, so each state
change is one script call guarded by the lifecycle table
(L{wslb.registry.lifecycle}): a duplicate finds the worker where the event
leads already, a late one finds it in a state the event does not apply to,
and neither changes anything ("running" after "terminated" does not revive).
A bad event raises ValueError, which Lambda reports.
"""

from __future__ import annotations

import os

import redis

from wslb.redis_url import parseRedisURL
from wslb.registry import lifecycle, redis_ops
from wslb.registry.keys import Keys

EC2_STATE_CHANGE = "EC2 Instance State-change Notification"
EC2_INPUTS = {
    "pending": lifecycle.INSTANCE_PENDING,
    "running": lifecycle.INSTANCE_RUNNING,
    **dict.fromkeys(("stopping", "stopped", "shutting-down", "terminated"),
                    lifecycle.INSTANCE_GONE),
}
SESSION_ENDED = "session-ended"
WORKER_EVENTS = (*lifecycle.REPORTED, "drain", "heartbeat", SESSION_ENDED)
REDIS_TIMEOUT = 5.0  # seconds to connect to Redis, and for each reply
SECRETS_TIMEOUT = 5.0  # seconds to connect to Secrets Manager, and for its answer
URL_VARIABLE, SECRET_VARIABLE = "WSLB_REDIS_URL", "WSLB_REDIS_URL_SECRET_ARN"

# Outcomes: the worker is where the event leads (now or already); the event
# does not apply to its state (late, or not for this state); no such record.
DONE, IGNORED, UNKNOWN_WORKER, UNKNOWN_SESSION = (
    "done", "ignored", "unknown worker", "unknown session")


class Handlers:
    """The handlers' work over one redis-py ``client``; ``clock.seconds()`` dates it."""

    def __init__(self, client, namespace, clock):
        self.client = client
        self._keys = Keys(namespace).scriptKeys()
        self._clock = clock
        self._scripts = {}  # script name -> redis-py Script (EVALSHA, loads on NOSCRIPT)

    def run(self, op):
        script = self._scripts.get(op.script)
        if script is None:
            script = self._scripts[op.script] = self.client.register_script(op.source)
        return op.decode(script(keys=self._keys, args=op.args))

    def ec2StateChange(self, worker_id, ec2_state):
        return {"ec2_state": ec2_state, **self.transition(worker_id, EC2_INPUTS[ec2_state])}

    def workerEvent(self, worker_id, event, session=None):
        if event in lifecycle.REPORTED:
            return {"event": event, **self.transition(worker_id, lifecycle.REPORTED[event])}
        now = self._clock.seconds()
        answer = {"worker": worker_id, "event": event}
        if event == SESSION_ENDED:
            return {**answer, "session": session, "outcome": self._endSession(
                worker_id, session, now)}
        op = (redis_ops.setDraining(worker_id, True) if event == "drain"
              else redis_ops.heartbeat(worker_id, now))
        return {**answer, "outcome": DONE if self.run(op) else UNKNOWN_WORKER}

    def transition(self, worker_id, event):
        """Apply a lifecycle input in one guarded script call."""
        state = lifecycle.target(event)
        worker = self.run(redis_ops.setWorkerState(
            worker_id, state, self._clock.seconds(), lifecycle.sources(event)))
        answer = {"worker": worker_id, "input": event}
        if worker is None:
            return {**answer, "outcome": UNKNOWN_WORKER}
        return {**answer, "state": worker.state,
                "outcome": DONE if worker.state == state else IGNORED}

    def _endSession(self, worker_id, key, now):
        # Only the reporting worker's session: after that worker died, the
        # key may be bound to another worker, and a late report must not
        # end it. (Read, then end: a key re-bound in between is the one
        # case this misses.)
        session = self.run(redis_ops.getSession(key))
        if session is None:
            return UNKNOWN_SESSION
        if session.worker != worker_id:
            return IGNORED
        ended = self.run(redis_ops.endSession(key, now))
        return DONE if ended is not None else UNKNOWN_SESSION


_handlers = None


def handlers():
    """The cold start's L{Handlers}, made on first use from the environment."""
    global _handlers
    if _handlers is None:
        url, origin = redisURL(os.environ)
        try:
            address = parseRedisURL(url)
        except ValueError as e:  # it never shows the password
            raise ValueError(f"{origin}: {e}") from None
        tls = {"ssl_check_hostname": True} if address.tls else {}  # redis-py < 6 did not
        client = redis.Redis.from_url(url, socket_timeout=REDIS_TIMEOUT,
                                      socket_connect_timeout=REDIS_TIMEOUT, **tls)
        from twisted.internet import reactor  # only as the clock: it never runs here

        _handlers = Handlers(client, os.environ.get("WSLB_NAMESPACE") or "wslb", reactor)
    return _handlers


def redisURL(environ, secrets=None):
    """
    The registry URL and where it came from: ``WSLB_REDIS_URL``, or the value
    of the Secrets Manager secret ``WSLB_REDIS_URL_SECRET_ARN`` names (read
    with ``secrets``, a boto3 ``secretsmanager`` client, made here if None).
    """
    url, arn = environ.get(URL_VARIABLE), environ.get(SECRET_VARIABLE)
    if url and arn:
        raise RuntimeError(f"set one of {URL_VARIABLE} and {SECRET_VARIABLE}, not both")
    if url:
        return url, URL_VARIABLE
    if not arn:
        raise RuntimeError(f"{URL_VARIABLE} (redis://... or rediss://...) or "
                           f"{SECRET_VARIABLE} (a secret holding that URL) must be set")
    if secrets is None:
        import boto3
        from botocore.config import Config

        secrets = boto3.client("secretsmanager", config=Config(
            connect_timeout=SECRETS_TIMEOUT, read_timeout=SECRETS_TIMEOUT,
            retries={"max_attempts": 3, "mode": "standard"}))
    value = secrets.get_secret_value(SecretId=arn).get("SecretString")
    if not value:
        raise RuntimeError(f"the secret {SECRET_VARIABLE} names holds no string")
    return value.strip(), f"the secret {SECRET_VARIABLE} names"


def _handle(work):
    """``work(handlers())``; a refused password makes the next event read the URL again."""
    global _handlers
    try:
        return work(handlers())
    except redis.AuthenticationError:
        _handlers = None
        raise


def ec2_state_change(event, context):
    """EventBridge "EC2 Instance State-change Notification" -> the instance's worker."""
    _need(isinstance(event, dict), "the event must be a JSON object")
    kind = event.get("detail-type")
    _need(kind == EC2_STATE_CHANGE,
          f"detail-type must be {EC2_STATE_CHANGE!r}, not {kind!r}")
    detail = event.get("detail")
    _need(isinstance(detail, dict), "the event has no detail object")
    worker_id = _text(detail, "instance-id", "detail.instance-id")
    state = _text(detail, "state", "detail.state")
    _need(state in EC2_INPUTS,
          f"detail.state {state!r} is none of {', '.join(EC2_INPUTS)}")
    return _handle(lambda h: h.ec2StateChange(worker_id, state))


def worker_event(event, context):
    """``{"worker": id, "event": ..., "session": key}`` (session only with session-ended)."""
    _need(isinstance(event, dict), "the event must be a JSON object")
    unknown = sorted(set(event) - {"worker", "event", "session"})
    _need(not unknown, f"unknown fields: {', '.join(map(str, unknown))}")
    worker_id = _text(event, "worker")
    name = _text(event, "event")
    _need(name in WORKER_EVENTS, f"event {name!r} is none of {', '.join(WORKER_EVENTS)}")
    session = None
    if name == SESSION_ENDED:
        session = _text(event, "session")
    else:
        _need("session" not in event, f"session goes only with {SESSION_ENDED}, not {name}")
    return _handle(lambda h: h.workerEvent(worker_id, name, session))


def _need(condition, problem):
    if not condition:
        raise ValueError(problem)


def _text(fields, name, label=None):
    value = fields.get(name)
    _need(isinstance(value, str) and value,
          f"{label or name} must be a non-empty string, not {value!r}")
    return value
