"""
Throwaway certificates for TLS tests: a CA, and a server certificate it
signs for the names a test connects by (wslb's listeners, a TLS redis-server).
"""

import datetime
import ipaddress

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

# A fixed window that holds the test run's date: no certificate reads the clock.
NOT_BEFORE = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
NOT_AFTER = NOT_BEFORE + datetime.timedelta(days=3650)


def _name(common):
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def _certificate(subject, issuer, public_key, signing_key, extensions):
    builder = (
        x509.CertificateBuilder().subject_name(subject).issuer_name(issuer)
        .public_key(public_key).serial_number(x509.random_serial_number())
        .not_valid_before(NOT_BEFORE).not_valid_after(NOT_AFTER)
    )
    for extension, critical in extensions:
        builder = builder.add_extension(extension, critical=critical)
    return builder.sign(signing_key, hashes.SHA256())


def _altName(name):
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def makeCA(path, name):
    """A self-signed CA called ``name``, its PEM written to ``path``: (its key, its certificate)."""
    key = ec.generate_private_key(ec.SECP256R1())
    cert = _certificate(_name(name), _name(name), key.public_key(), key, [
        (x509.BasicConstraints(ca=True, path_length=None), True),
        (x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                       content_commitment=False, key_encipherment=False,
                       data_encipherment=False, key_agreement=False,
                       encipher_only=False, decipher_only=False), True),
    ])
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key, cert


def makeCertificates(directory, ca_name="wslb test CA", names=("localhost", "127.0.0.1")):
    """
    Write ca.pem, server.pem and server-key.pem into ``directory``, the
    server's certificate valid for ``names`` only; return their paths.
    """
    paths = {name: directory / f"{name}.pem" for name in ("ca", "server", "server-key")}
    caKey, ca = makeCA(paths["ca"], ca_name)
    key = ec.generate_private_key(ec.SECP256R1())
    server = _certificate(_name(names[0]), ca.subject, key.public_key(), caKey, [
        (x509.SubjectAlternativeName([_altName(name) for name in names]), False),
        (x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False),
    ])
    paths["server"].write_bytes(server.public_bytes(serialization.Encoding.PEM))
    paths["server-key"].write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    return paths


def makeJwtKey(directory):
    """An RSA key for RS256 tokens: (the private key, the path of its public PEM)."""
    from cryptography.hazmat.primitives.asymmetric import rsa

    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    path = directory / "jwt-public.pem"
    path.write_bytes(private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return private, path
