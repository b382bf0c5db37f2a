"""
A throw-away PKI for the TLS tests, made with cryptography at test time: a root
CA, an intermediate CA, server certificates (RSA or EC, valid or expired) and
their files (PEM chains, plain or encrypted keys, PFX).
"""

from __future__ import annotations

import datetime
import ipaddress
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

NOW = datetime.datetime.now(datetime.UTC)
DAY = datetime.timedelta(days=1)


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def rsa_key() -> Any:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def ec_key() -> Any:
    return ec.generate_private_key(ec.SECP256R1())


class Issued:
    """A certificate with its key and the chain above it (intermediates, not the root)."""

    def __init__(self, cert: x509.Certificate, key: Any, chain: tuple[x509.Certificate, ...] = ()) -> None:
        self.cert, self.key, self.chain = cert, key, chain

    @property
    def serial(self) -> int:
        return self.cert.serial_number

    def pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def chain_pem(self) -> bytes:
        return self.pem() + b"".join(c.public_bytes(serialization.Encoding.PEM) for c in self.chain)

    def key_pem(self, password: str | None = None, traditional: bool = False) -> bytes:
        encryption: Any = serialization.BestAvailableEncryption(password.encode()) if password else serialization.NoEncryption()
        fmt = serialization.PrivateFormat.TraditionalOpenSSL if traditional else serialization.PrivateFormat.PKCS8
        return self.key.private_bytes(serialization.Encoding.PEM, fmt, encryption)

    def pfx(self, password: str | None) -> bytes:
        encryption: Any = serialization.BestAvailableEncryption(password.encode()) if password else serialization.NoEncryption()
        return pkcs12.serialize_key_and_certificates(b"pns4ones", self.key, self.cert, list(self.chain) or None, encryption)

    def write(self, directory: Path, stem: str, password: str | None = None) -> tuple[Path, Path]:
        """``stem.pem`` (certificate then chain) and ``stem.key``."""
        cert, key = directory / f"{stem}.pem", directory / f"{stem}.key"
        cert.write_bytes(self.chain_pem())
        key.write_bytes(self.key_pem(password))
        return cert, key


class PKI:
    """Root -> intermediate -> servers; ``root_pem`` is what clients trust."""

    def __init__(self, name: str = "pns4ones test") -> None:
        root_key = ec_key()
        root = self._sign(_name(f"{name} root"), root_key.public_key(), _name(f"{name} root"), root_key, ca=True)
        self.root = Issued(root, root_key)
        inter_key = ec_key()
        inter = self._sign(_name(f"{name} intermediate"), inter_key.public_key(), root.subject, root_key, ca=True)
        self.intermediate = Issued(inter, inter_key, ())

    @property
    def root_pem(self) -> bytes:
        return self.root.pem()

    @staticmethod
    def _sign(subject: x509.Name, public_key: Any, issuer: x509.Name, issuer_key: Any, ca: bool = False,
              names: tuple[str, ...] = (), not_before: datetime.datetime | None = None,
              not_after: datetime.datetime | None = None, serial: int | None = None) -> x509.Certificate:  # fmt: skip
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(issuer)
            .public_key(public_key)
            .serial_number(serial or x509.random_serial_number())
            .not_valid_before(not_before or NOW - DAY)
            .not_valid_after(not_after or NOW + 90 * DAY)
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None if not ca else 1), critical=True)
        )
        if ca:
            builder = builder.add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        else:
            sans: list[x509.GeneralName] = []
            for n in names:
                try:
                    sans.append(x509.IPAddress(ipaddress.ip_address(n)))
                except ValueError:
                    sans.append(x509.DNSName(n))
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
            builder = builder.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        return builder.sign(issuer_key, hashes.SHA256())

    def server(self, cn: str = "localhost", names: tuple[str, ...] = ("localhost", "127.0.0.1"), key: Any = None,
               via_intermediate: bool = True, not_before: datetime.datetime | None = None,
               not_after: datetime.datetime | None = None) -> Issued:  # fmt: skip
        key = key or rsa_key()
        issuer = self.intermediate if via_intermediate else self.root
        cert = self._sign(
            _name(cn), key.public_key(), issuer.cert.subject, issuer.key, names=names, not_before=not_before, not_after=not_after
        )
        return Issued(cert, key, (self.intermediate.cert,) if via_intermediate else ())
