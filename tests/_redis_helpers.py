"""A TLS-only redis-server with an ACL user, and the certificates it needs."""

import shutil
import socket
import subprocess

from _certs import makeCA, makeCertificates
from _polling import waitForBlocking
from conftest import free_port

USER, PASSWORD = "alice", "s3cret"


class TLSRedisServer:
    """
    redis-server on a TLS port only, default user off, one ACL user. The
    certificates exist from the start; the server runs after start().
    """

    def __init__(self, directory):
        self.dir = directory
        self.port = free_port()
        certs = makeCertificates(directory, "ca", names=["127.0.0.1"])
        self.ca, self._cert, self._key = certs["ca"], certs["server"], certs["server-key"]
        self.otherCA = directory / "other-ca.pem"
        makeCA(self.otherCA, "other-ca")
        self.process = None

    def start(self):
        self.process = subprocess.Popen(
            [shutil.which("redis-server"), "--port", "0", "--tls-port", str(self.port),
             "--bind", "127.0.0.1", "--tls-cert-file", str(self._cert),
             "--tls-key-file", str(self._key),
             "--tls-ca-cert-file", str(self.ca), "--tls-auth-clients", "no",
             "--save", "", "--appendonly", "no", "--dir", str(self.dir),
             "--user", USER, "on", f">{PASSWORD}", "~*", "&*", "+@all",
             "--user", "default", "off"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        try:
            waitForBlocking(lambda: socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                            or True, timeout=10, retrying=OSError, what="TLS redis-server up")
        except AssertionError:
            self.stop()
            raise

    def url(self, ca, host="127.0.0.1", db=2):
        return f"rediss://{USER}:{PASSWORD}@{host}:{self.port}/{db}?ssl_ca_certs={ca}"

    def stop(self):
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None
