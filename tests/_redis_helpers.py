"""A TLS-only redis-server with an ACL user, and the certificates it needs."""

import datetime
import ipaddress
import shutil
import socket
import subprocess
import time

from conftest import free_port
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

USER, PASSWORD = "alice", "s3cret"


def _name(common):
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def _pem(key):
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _certificate(subject, issuer, public_key, signing_key, extensions):
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder().subject_name(subject).issuer_name(issuer)
        .public_key(public_key).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
    )
    for extension, critical in extensions:
        builder = builder.add_extension(extension, critical=critical)
    return builder.sign(signing_key, hashes.SHA256())


def makeCA(directory, name):
    """A self-signed CA: (path of its PEM certificate, its key, its certificate)."""
    key = ec.generate_private_key(ec.SECP256R1())
    cert = _certificate(_name(name), _name(name), key.public_key(), key, [
        (x509.BasicConstraints(ca=True, path_length=None), True),
        (x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                       content_commitment=False, key_encipherment=False,
                       data_encipherment=False, key_agreement=False,
                       encipher_only=False, decipher_only=False), True),
    ])
    path = directory / f"{name}.pem"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path, key, cert


def makeServerCertificate(directory, ca_key, ca_cert):
    """A certificate for 127.0.0.1 signed by the CA: (cert path, key path)."""
    key = ec.generate_private_key(ec.SECP256R1())
    cert = _certificate(_name("redis"), ca_cert.subject, key.public_key(), ca_key, [
        (x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
         False),
        (x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False),
    ])
    cert_path, key_path = directory / "server.pem", directory / "server.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(_pem(key))
    return cert_path, key_path


class TLSRedisServer:
    """
    redis-server on a TLS port only, default user off, one ACL user. The
    certificates exist from the start; the server runs after start().
    """

    def __init__(self, directory):
        self.dir = directory
        self.port = free_port()
        self.ca, ca_key, ca_cert = makeCA(directory, "ca")
        self.otherCA, _, _ = makeCA(directory, "other-ca")
        self._cert, self._key = makeServerCertificate(directory, ca_key, ca_cert)
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
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                return
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError("TLS redis-server did not start") from None
                time.sleep(0.05)

    def url(self, ca, host="127.0.0.1", db=2):
        return f"rediss://{USER}:{PASSWORD}@{host}:{self.port}/{db}?ssl_ca_certs={ca}"

    def stop(self):
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None
