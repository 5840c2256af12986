"""
EC2 test helpers: moto's real EC2 server on loopback, a guard that keeps every
connection on loopback, a throttling proxy in front of moto, and the
resolveAddress hook that maps instances to local echo workers.
"""

import ipaddress
import socket
import threading
import urllib.request

import boto3
import treq
from moto.server import ThreadedMotoServer
from twisted.internet import reactor
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site

REGION = "us-east-1"
CREDENTIALS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}
HOP_BY_HOP = {b"connection", b"content-length", b"host", b"keep-alive", b"transfer-encoding"}
POOL_FILTER_KEY = "tag:wslb:pool"

# What EC2 answers a throttled request with (the EC2 query API's error shape).
THROTTLED = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Response><Errors><Error>'
    b"<Code>RequestLimitExceeded</Code><Message>Request limit exceeded.</Message>"
    b"</Error></Errors><RequestID>throttled</RequestID></Response>"
)


class MotoEc2:
    """
    ThreadedMotoServer on 127.0.0.1 and a boto3 client on it for the test's
    own calls (made synchronously: they only reach loopback, between yields).
    """

    def __init__(self):
        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self.server.start()
        host, self.port = self.server.get_host_and_port()
        self.url = f"http://{host}:{self.port}"
        self.client = boto3.client("ec2", endpoint_url=self.url, region_name=REGION, **CREDENTIALS)
        images = self.client.describe_images(
            Owners=["amazon"], Filters=[{"Name": "name", "Values": ["amzn2-ami-hvm-*"]}])
        self.imageId = images["Images"][0]["ImageId"]

    def reset(self):
        """Forget every instance and template (moto's own reset endpoint)."""
        request = urllib.request.Request(f"{self.url}/moto-api/reset", method="POST")
        urllib.request.urlopen(request, timeout=10).close()

    def createLaunchTemplate(self, name):
        """Its id ("lt-...")."""
        response = self.client.create_launch_template(
            LaunchTemplateName=name,
            LaunchTemplateData={"ImageId": self.imageId, "InstanceType": "t3.micro"},
        )
        return response["LaunchTemplate"]["LaunchTemplateId"]

    def instances(self, *filters):
        """Every instance matching the filters, any state: {id: instance}."""
        pages = self.client.get_paginator("describe_instances").paginate(Filters=list(filters))
        return {
            instance["InstanceId"]: instance
            for page in pages for reservation in page["Reservations"]
            for instance in reservation["Instances"]
        }

    def states(self, namespace):
        """{instance id: state name} of the pool's instances."""
        pool = {"Name": POOL_FILTER_KEY, "Values": [namespace]}
        return {i: instance["State"]["Name"] for i, instance in self.instances(pool).items()}

    def run(self, tags=()):
        """One instance started behind wslb's back (plain ImageId, no template). Its id."""
        params = {"ImageId": self.imageId, "MinCount": 1, "MaxCount": 1}
        if tags:
            params["TagSpecifications"] = [{
                "ResourceType": "instance",
                "Tags": [{"Key": key, "Value": value} for key, value in tags],
            }]
        return self.client.run_instances(**params)["Instances"][0]["InstanceId"]

    def terminate(self, *instance_ids):
        self.client.terminate_instances(InstanceIds=list(instance_ids))

    def stop(self):
        self.server.stop()


class LoopbackOnly:
    """
    Patches socket connect/connect_ex and getaddrinfo for one test: anything
    but a loopback address is refused and recorded, so moto's invented
    10.x/172.x addresses and ec2.internal names never see a packet. Records
    the thread of every connection made.
    """

    def __init__(self, monkeypatch):
        self.refused = []  # (what, address)
        self.connections = []  # (host, port, thread name)
        for method in ("connect", "connect_ex"):
            original = getattr(socket.socket, method)
            monkeypatch.setattr(socket.socket, method, self._guarded(original))
        original_getaddrinfo = socket.getaddrinfo

        def getaddrinfo(host, *args, **kwargs):
            if not self._loopback(host):
                self.refused.append(("getaddrinfo", host))
                raise socket.gaierror(f"test guard: {host!r} is not a loopback address")
            return original_getaddrinfo(host, *args, **kwargs)

        monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)

    @staticmethod
    def _loopback(host):
        if isinstance(host, bytes):
            host = host.decode("ascii", "replace")
        if host == "localhost":
            return True
        try:
            return ipaddress.ip_address(host).is_loopback
        except ValueError:
            return False

    def _guarded(self, connect):
        def guarded(sock, address):
            if sock.family in (socket.AF_INET, socket.AF_INET6):
                if not self._loopback(address[0]):
                    self.refused.append(("connect", address))
                    raise ConnectionRefusedError(f"test guard: {address} is not loopback")
                self.connections.append(
                    (address[0], address[1], threading.current_thread().name))
            return connect(sock, address)

        return guarded

    def connectionsTo(self, port):
        return [connection for connection in self.connections if connection[1] == port]


class ThrottlingProxy(Resource):
    """
    An EC2 endpoint on 127.0.0.1 that answers the first C{throttle} requests
    with 503 RequestLimitExceeded, as EC2 does, and passes later ones to moto.
    """

    isLeaf = True

    def __init__(self, moto_url, throttle):
        super().__init__()
        self.throttle = throttle
        self.requests = 0
        self._moto = moto_url
        site = Site(self)
        site.noisy = False
        self._listener = reactor.listenTCP(0, site, interface="127.0.0.1")
        self.url = f"http://127.0.0.1:{self._listener.getHost().port}"

    def render(self, request):
        self.requests += 1
        if self.requests <= self.throttle:
            request.setResponseCode(503)
            request.setHeader(b"content-type", b"text/xml")
            return THROTTLED
        headers = {
            name: values for name, values in request.requestHeaders.getAllRawHeaders()
            if name.lower() not in HOP_BY_HOP
        }
        d = treq.request(
            request.method.decode("ascii"), self._moto + request.uri.decode("ascii"),
            headers=headers, data=request.content.read(), persistent=False, timeout=10,
        )
        d.addCallback(lambda response: treq.content(response).addCallback(
            self._relay, request, response))
        d.addErrback(lambda failure: self._relay(
            failure.getErrorMessage().encode("utf-8"), request, None))
        return NOT_DONE_YET

    @staticmethod
    def _relay(body, request, response):
        request.setResponseCode(502 if response is None else response.code)
        for name, values in () if response is None else response.headers.getAllRawHeaders():
            if name.lower() not in HOP_BY_HOP:
                request.responseHeaders.setRawHeaders(name, values)
        request.write(body)
        request.finish()

    def close(self):
        return self._listener.stopListening()


class LoopbackWorkers:
    """
    The provider's resolveAddress hook: each instance gets one of the echo
    workers on 127.0.0.1, round robin; records the address the provider
    derived from the instance (never contacted).
    """

    def __init__(self, ports):
        self._ports = list(ports)
        self.asked = {}  # instance id -> "host:port" the provider passed

    def __call__(self, instance_id, address):
        self.asked[instance_id] = address
        port = self._ports[(len(self.asked) - 1) % len(self._ports)]
        return f"127.0.0.1:{port}"
