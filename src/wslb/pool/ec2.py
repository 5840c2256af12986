"""EC2 instances as workers: boto3 in a thread pool of the provider's own, never on the reactor."""

import threading
import uuid
from urllib.parse import urlsplit

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError, ConnectionError, HTTPClientError
from twisted.application.service import Service
from twisted.internet.defer import DeferredList, inlineCallbacks, maybeDeferred, succeed
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool
from zope.interface import implementer

from wslb.pool._interfaces import IProvider, LaunchedWorker

# Its value is [pool.ec2] pool_id: only instances tagged with ours are ours. (The
# registry namespace alone is "wslb" in every deployment of an account.)
POOL_TAG = "wslb:pool"
LIVE_STATES = ("pending", "running")
TERMINABLE_STATES = ("pending", "running", "stopping", "stopped")

# Each call is bounded here and retried only by _call, so a throttled API
# sees one backoff schedule, not botocore's multiplied by ours.
CONNECT_TIMEOUT = 5.0
READ_TIMEOUT = 20.0
ATTEMPTS = 5  # per API call, the first included
FIRST_DELAY = 0.5  # seconds before the first retry, doubled before each next one
TRANSIENT_CODES = frozenset({
    "RequestLimitExceeded", "Throttling", "ThrottlingException",
    "InternalError", "InternalFailure", "ServiceUnavailable", "Unavailable",
})

# An instance the launch answer gave no address (tag mode: the instance
# tags itself once booted) is polled for one this long, then terminated.
ADDRESS_POLL = 2.0
ADDRESS_TIMEOUT = 60.0


def _transient(error):
    """True for errors worth another attempt: throttling, 5xx, network trouble."""
    if isinstance(error, ClientError):
        code = error.response.get("Error", {}).get("Code")
        status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        return code in TRANSIENT_CODES or status >= 500
    return isinstance(error, (ConnectionError, HTTPClientError))


def _withPort(address, port):
    """C{host:port} as given, or C{port} appended to a bare host."""
    return address if urlsplit(f"//{address}").port else f"{address}:{port}"


def _tagValue(instance, key):
    for tag in instance.get("Tags", ()):
        if tag["Key"] == key:
            return tag["Value"]
    return None


def _describeAll(ec2, filters):
    """Every instance matching C{filters}, across all pages (runs in a pool thread)."""
    pages = ec2.get_paginator("describe_instances").paginate(Filters=filters)
    return [
        instance
        for page in pages for reservation in page["Reservations"]
        for instance in reservation["Instances"]
    ]


@implementer(IProvider)
class Ec2Provider(Service):
    """
    Launches workers from C{launch_template} (a name, or an id C{lt-...}),
    tagged C{wslb:pool=<poolId>}: worker id = instance id, url
    C{ws://<address>:<port>}. C{address} is C{"private_ip"},
    C{"private_dns"}, or C{"tag:<TagKey>"} (that tag holds C{host:port}, or
    a host to which C{port} is added). C{resolveAddress(instance_id,
    "host:port")} may rewrite the address (tests map instances to loopback).

    Every boto3 call runs in C{threadpool}: by default one of the provider's
    own, started on first use and stopped with the service; an injected one
    is its owner's to start and stop. Throttling and transient errors are
    retried with exponential backoff on C{clock}, a bounded number of times.
    """

    name = "ec2"
    managed = True
    log = Logger()

    def __init__(self, reactor, region, launch_template, port, address, poolId,
                 endpoint_url="", threadpool=None, clock=None, resolveAddress=None):
        if not launch_template:
            raise ValueError("pool.ec2.launch_template is required for the ec2 provider")
        if not poolId:
            raise ValueError("pool.ec2.pool_id is required for the ec2 provider")
        self._reactor = reactor
        self._clock = clock or reactor
        self._region = region or None  # None: boto3 finds it (AWS_DEFAULT_REGION, profile)
        self._endpointUrl = endpoint_url or None
        key = "LaunchTemplateId" if launch_template.startswith("lt-") else "LaunchTemplateName"
        self._launchTemplate = {key: launch_template}
        self._port = port
        self._addressTag = address[len("tag:"):] if address.startswith("tag:") else None
        self._addressField = {"private_ip": "PrivateIpAddress",
                              "private_dns": "PrivateDnsName"}.get(address)
        self._poolId = poolId
        self._resolve = resolveAddress or (lambda instance_id, host_port: host_port)
        self._ownsThreads = threadpool is None
        self._threads = threadpool or ThreadPool(minthreads=0, maxthreads=2, name="wslb-ec2")
        self._client = None
        self._clientLock = threading.Lock()
        self._stopped = False
        self._inFlight = set()  # Deferreds of calls running in a pool thread
        self._workers = {}  # instance id -> LaunchedWorker, as last reported (launch or list)
        self._terminating = set()  # ids we terminated, never listed again
        self._deathListeners = []

    # -- boto3, off the reactor --------------------------------------------

    def _ec2(self):
        """The boto3 client, made once in a pool thread (making one is slow)."""
        with self._clientLock:
            if self._client is None:
                self._client = boto3.session.Session().client(  # thread-safe: a pool thread
                    "ec2", region_name=self._region, endpoint_url=self._endpointUrl,
                    config=Config(
                        connect_timeout=CONNECT_TIMEOUT, read_timeout=READ_TIMEOUT,
                        # total_max_attempts counts the first try ("max_attempts" counts retries)
                        retries={"total_max_attempts": 1, "mode": "standard"},
                    ),
                )
            return self._client

    def _inThread(self, request):
        """Run C{request(client)} in the pool; fires with its result."""
        if self._stopped:
            raise RuntimeError("the ec2 provider is stopped")
        if self._ownsThreads and not self._threads.started:
            self._threads.start()
        d = deferToThreadPool(self._reactor, self._threads, lambda: request(self._ec2()))
        self._inFlight.add(d)

        def done(result):
            self._inFlight.discard(d)
            return result

        return d.addBoth(done)

    @inlineCallbacks
    def _call(self, operation, request):
        """C{request(client)} in the pool, retried with backoff while the error is transient."""
        delay = FIRST_DELAY
        for attempt in range(1, ATTEMPTS + 1):
            try:
                return (yield self._inThread(request))
            except Exception as error:
                if attempt == ATTEMPTS or not _transient(error):
                    raise
                self.log.warn(
                    "EC2 {operation} failed ({error}), attempt {attempt} of {attempts}; "
                    "retrying in {delay} s",
                    operation=operation, error=error, attempt=attempt, attempts=ATTEMPTS,
                    delay=delay,
                )
                yield deferLater(self._clock, delay)
                delay *= 2

    def _describe(self, *filters):
        filters = [{"Name": f"tag:{POOL_TAG}", "Values": [self._poolId]}, *filters]
        return self._call("DescribeInstances", lambda ec2: _describeAll(ec2, filters))

    # -- addresses ----------------------------------------------------------

    def _hostPort(self, instance):
        """C{host:port} of the instance, or None while it has none."""
        if self._addressTag is None:
            address = instance.get(self._addressField)
            return f"{address}:{self._port}" if address else None
        value = _tagValue(instance, self._addressTag)
        if not value:
            return None
        try:
            return _withPort(value, self._port)
        except ValueError:
            self.log.warn("instance {instance}: tag {tag}={value!r} is no host:port",
                          instance=instance["InstanceId"], tag=self._addressTag, value=value)
            return None

    def _worker(self, instance):
        """The instance as reported before, else a new LaunchedWorker, or None without address."""
        instance_id = instance["InstanceId"]
        known = self._workers.get(instance_id)
        if known is not None:
            return known
        host_port = self._hostPort(instance)
        if host_port is None:
            return None
        return LaunchedWorker(instance_id, f"ws://{self._resolve(instance_id, host_port)}")

    # -- IProvider ------------------------------------------------------------

    def launch(self, n):
        """
        One RunInstances for C{n} instances (all or none). Fires with the
        instances that have an address, after polling for missing ones.
        """
        if n <= 0:
            return succeed([])
        return self._launch(n)

    @inlineCallbacks
    def _launch(self, n):
        params = dict(
            LaunchTemplate=self._launchTemplate, MinCount=n, MaxCount=n,
            ClientToken=uuid.uuid4().hex,  # a retried request launches nothing twice
            TagSpecifications=[{
                "ResourceType": "instance",
                "Tags": [{"Key": POOL_TAG, "Value": self._poolId}],
            }],
        )
        response = yield self._call("RunInstances", lambda ec2: ec2.run_instances(**params))
        workers = yield self._addressed(response["Instances"])
        for worker in workers:
            self._workers[worker.id] = worker
        return workers

    @inlineCallbacks
    def _addressed(self, instances):
        """
        Workers for C{instances}, polling DescribeInstances for the addresses
        not known yet; those still missing after ADDRESS_TIMEOUT are
        terminated (or, should that fail, adopted later once they have one).
        """
        order = [instance["InstanceId"] for instance in instances]
        deadline = self._clock.seconds() + ADDRESS_TIMEOUT
        workers = {}
        while True:
            for instance in instances:
                worker = self._worker(instance)
                if worker is not None:
                    workers[worker.id] = worker
            missing = [instance_id for instance_id in order if instance_id not in workers]
            if not missing or self._clock.seconds() >= deadline:
                break
            yield deferLater(self._clock, ADDRESS_POLL)
            instances = yield self._describe({"Name": "instance-id", "Values": missing})
        if missing:
            self.log.warn(
                "instances {instances} have no address ({address}) {timeout} s after "
                "launch: terminating them",
                instances=missing, address=self._addressTag or self._addressField,
                timeout=ADDRESS_TIMEOUT,
            )
            yield self.terminate(missing).addErrback(lambda failure: self.log.failure(
                "could not terminate {instances}", failure, instances=missing))
        return [workers[instance_id] for instance_id in order if instance_id in workers]

    @inlineCallbacks
    def terminate(self, worker_ids):
        """
        Terminate those of C{worker_ids} that are instances of this pool and
        not terminated yet (others, even unknown ids, are ignored). Fires
        with the ids terminated.
        """
        worker_ids = list(worker_ids)
        if not worker_ids:
            return []
        instances = yield self._describe(
            {"Name": "instance-id", "Values": worker_ids},
            {"Name": "instance-state-name", "Values": list(TERMINABLE_STATES)},
        )
        ours = [instance["InstanceId"] for instance in instances]
        if ours:
            yield self._call("TerminateInstances",
                             lambda ec2: ec2.terminate_instances(InstanceIds=ours))
        for worker_id in worker_ids:
            self._workers.pop(worker_id, None)
        self._terminating.update(ours)
        return ours

    @inlineCallbacks
    def list(self):
        """
        The pool's pending and running instances that have an address. An
        instance reported before and missing now (stopping, stopped,
        terminated, gone) goes to the death listeners, unless we terminated it.
        """
        instances = yield self._describe(
            {"Name": "instance-state-name", "Values": list(LIVE_STATES)})
        self._terminating &= {instance["InstanceId"] for instance in instances}
        current = {}
        for instance in instances:
            worker = self._worker(instance)
            if worker is not None and worker.id not in self._terminating:
                current[worker.id] = worker
        gone = sorted(set(self._workers) - set(current))
        self._workers = current
        for instance_id in gone:
            self._died(instance_id)
        return list(current.values())

    def addDeathListener(self, listener):
        self._deathListeners.append(listener)

    def _died(self, instance_id):
        self.log.warn("instance {instance} is no longer pending or running", instance=instance_id)
        for listener in self._deathListeners:
            maybeDeferred(listener, instance_id).addErrback(
                lambda failure: self.log.failure(
                    "death listener failed for {instance}", failure, instance=instance_id))

    # -- service ----------------------------------------------------------------

    def startService(self):
        super().startService()
        self.log.info("EC2 pool: instances tagged {tag}={pool}", tag=POOL_TAG, pool=self._poolId)
        self._stopped = False
        if self._ownsThreads and not self._threads.started:
            self._threads.start()

    def stopService(self):
        """
        Refuse new calls, wait for those in a thread (each bounded by the
        botocore timeouts), then close the client's connections and stop our
        threads: joining idle ones is quick.
        """
        super().stopService()
        self._stopped = True
        d = DeferredList(list(self._inFlight))
        d.addCallback(lambda _: self._release())
        return d

    def _release(self):
        if self._client is not None:
            self._client.close()
            self._client = None
        if self._ownsThreads and self._threads.started:
            self._threads.stop()
