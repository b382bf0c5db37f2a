"""
HTTPS for the send API (docs/protocol.md section 2): ``ssl_mode`` and its files ->
a server TLS connection creator whose certificate can be reloaded.

Invariants:
- Loading validates everything before anything listens: the files exist and are
  readable, hold what they should, the password opens them and the private key
  belongs to the certificate.  Every failure is a :class:`ConfigError` naming the
  option and the file; nothing ever falls back to plain HTTP.
- An expired or not-yet-valid certificate loads (with warnings for the log):
  refusing it would turn a missed renewal into an outage of 1C's own sends too.
- The TLS context is made by Twisted's ``CertificateOptions`` (TLS 1.2 minimum,
  Twisted's cipher and curve defaults, the whole chain sent); we never configure
  ciphers ourselves.
- :class:`ReloadableServerTLS` picks the current context when each connection is
  created (as txsni picks one at handshake time), so :meth:`reload` changes the
  certificate for new connections only, and a failed reload keeps the old one.

``FromStorage`` on Linux: the "store" is the directory ``certs/`` in the
configuration directory (the INI file's directory, else the data directory):
``NAME.pfx``, or ``NAME.pem`` (certificate chain) with ``NAME.key`` (else a key
inside ``NAME.pem``); failing a file name, the certificate whose subject common
name is ``NAME``.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes, PublicKeyTypes
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import NameOID
from OpenSSL import SSL, crypto
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator
from twisted.internet.ssl import CertificateOptions, TLSVersion
from twisted.protocols.tls import TLSMemoryBIOProtocol
from zope.interface import implementer

from .config import Config, ConfigError

#: The private keys a certificate of the send API may have (those pyOpenSSL takes).
TLSKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | dsa.DSAPrivateKey | ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey
TLS_KEY_TYPES = (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey, dsa.DSAPrivateKey, ed25519.Ed25519PrivateKey, ed448.Ed448PrivateKey)

MAX_FILE_SIZE = 1024 * 1024
STORE_DIR = "certs"
#: A certificate this close to its end gets a warning at every load.
EXPIRY_WARNING = datetime.timedelta(days=14)


# --- what a load produces ----------------------------------------------------------


@dataclass(frozen=True)
class Material:
    """A certificate, its private key and the intermediates to send with it."""

    certificate: x509.Certificate
    key: TLSKey
    chain: tuple[x509.Certificate, ...]
    files: tuple[str, ...]
    warnings: tuple[str, ...] = field(default=())

    @property
    def serial(self) -> int:
        return self.certificate.serial_number

    def describe(self) -> str:
        cert = self.certificate
        return (
            f"{_subject(cert)}, serial {cert.serial_number:#x}, valid until "
            f"{cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC, chain of {1 + len(self.chain)}, from {', '.join(self.files)}"
        )


def _subject(cert: x509.Certificate) -> str:
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return f"CN={names[0].value!s}" if names else cert.subject.rfc4514_string() or "(no subject)"


def _common_name(cert: x509.Certificate) -> str:
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(names[0].value) if names else ""


def _validity_warnings(cert: x509.Certificate, now: datetime.datetime) -> tuple[str, ...]:
    what = f"the certificate {_subject(cert)} (serial {cert.serial_number:#x})"
    if now > cert.not_valid_after_utc:
        return (
            f"{what} expired on {cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC: HTTPS clients will refuse it; renew it and reload (SIGHUP or pns4ones-admin reload_tls)",
        )
    if now < cert.not_valid_before_utc:
        return (f"{what} is not valid before {cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC: HTTPS clients will refuse it until then",)
    if cert.not_valid_after_utc - now < EXPIRY_WARNING:
        return (f"{what} expires on {cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC; renew it soon",)
    return ()


def _public_bytes(key: PublicKeyTypes) -> bytes:
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


# --- reading files -------------------------------------------------------------------


def _read(path: str, option: str, source: str) -> bytes:
    try:
        size = os.stat(path).st_size
        if size > MAX_FILE_SIZE:
            raise ConfigError(option, f"{path} is {size} bytes, too large for a certificate or key file", source)
        with open(path, "rb") as f:
            return f.read(MAX_FILE_SIZE + 1)
    except FileNotFoundError:
        raise ConfigError(option, f"file {path} does not exist", source) from None
    except IsADirectoryError:
        raise ConfigError(option, f"{path} is a directory, not a file", source) from None
    except PermissionError:
        raise ConfigError(option, f"cannot read {path}: permission denied for the service's user (uid {os.geteuid()})", source) from None
    except OSError as e:
        raise ConfigError(option, f"cannot read {path}: {e.strerror or e}", source) from None


def _pem_certificates(data: bytes, path: str, option: str, source: str) -> list[x509.Certificate]:
    if b"-----BEGIN" not in data:
        raise ConfigError(option, f"{path} is not a PEM certificate (no '-----BEGIN CERTIFICATE-----' block)", source)
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError:
        if b"PRIVATE KEY-----" in data:
            raise ConfigError(
                option, f"{path} holds a private key, not a certificate (are ssl_certificate and ssl_certificate_key swapped?)", source
            ) from None
        raise ConfigError(option, f"{path} is not a PEM certificate (no readable 'CERTIFICATE' block)", source) from None
    return certs


def _pem_key(data: bytes, password: str, path: str, option: str, source: str, password_source: str) -> PrivateKeyTypes:
    encrypted = b"ENCRYPTED" in data
    if b"PRIVATE KEY-----" not in data:
        if b"CERTIFICATE-----" in data:
            raise ConfigError(
                option, f"{path} holds a certificate, not a private key (are ssl_certificate and ssl_certificate_key swapped?)", source
            )
        raise ConfigError(option, f"{path} is not a PEM private key (no '-----BEGIN ... PRIVATE KEY-----' block)", source)
    if encrypted and not password:
        raise ConfigError("ssl_certificate_password", f"is required: the private key {path} is encrypted", password_source)
    try:
        return serialization.load_pem_private_key(data, password.encode("utf-8") if encrypted else None)
    except ValueError:
        if encrypted:
            raise ConfigError("ssl_certificate_password", f"wrong password for the private key {path}", password_source) from None
        raise ConfigError(option, f"{path} is not a readable PEM private key", source) from None
    except (TypeError, UnsupportedAlgorithm) as e:
        raise ConfigError(option, f"cannot use the private key {path}: {e}", source) from None


def _looks_like_pkcs12(data: bytes) -> bool:
    """A DER SEQUENCE whose first member is INTEGER 3 (the PFX version): format sniffing only."""
    return data[:1] == b"\x30" and b"\x02\x01\x03" in data[2:8]


def _load_pfx(
    path: str, password: str, source: str, password_source: str
) -> tuple[x509.Certificate, PrivateKeyTypes, list[x509.Certificate]]:
    data = _read(path, "ssl_certificate", source)
    if b"-----BEGIN" in data:
        raise ConfigError(
            "ssl_certificate",
            f"{path} is a PEM file, not PFX/PKCS#12: use ssl_mode=FromFileWithPrivateKey with ssl_certificate_key",
            source,
        )
    attempts = [password.encode("utf-8"), None] if password else [None, b""]
    loaded = None
    for attempt in attempts:
        try:
            loaded = pkcs12.load_pkcs12(data, attempt)
            break
        except ValueError:
            continue
        except UnsupportedAlgorithm as e:
            raise ConfigError("ssl_certificate", f"cannot open the PFX file {path}: {e}", source) from None
    if loaded is None:
        if not _looks_like_pkcs12(data):
            raise ConfigError("ssl_certificate", f"{path} is not a PFX/PKCS#12 file", source)
        if not password:
            raise ConfigError("ssl_certificate_password", f"is required: the PFX file {path} is protected by a password", password_source)
        raise ConfigError("ssl_certificate_password", f"wrong password for the PFX file {path}", password_source)
    if loaded.cert is None:
        raise ConfigError("ssl_certificate", f"the PFX file {path} holds no certificate", source)
    if loaded.key is None:
        raise ConfigError("ssl_certificate", f"the PFX file {path} holds no private key", source)
    return loaded.cert.certificate, loaded.key, [c.certificate for c in loaded.additional_certs]


def _assemble(
    certs: list[x509.Certificate], key: PrivateKeyTypes, files: tuple[str, ...], key_option: str, key_source: str, now: datetime.datetime
) -> Material:
    """The certificate is the one matching the key (normally the first); the rest is the chain."""
    wanted = _public_bytes(key.public_key())
    for i, cert in enumerate(certs):
        try:
            matches = _public_bytes(cert.public_key()) == wanted
        except (ValueError, UnsupportedAlgorithm):
            matches = False
        if matches:
            if not isinstance(key, TLS_KEY_TYPES):  # (a key OpenSSL cannot sign a handshake with: X25519, DH, ...)
                raise ConfigError(
                    key_option,
                    f"the private key in {files[-1]} is a {type(key).__name__}: use an RSA, ECDSA, Ed25519 or Ed448 key",
                    key_source,
                )
            chain = tuple(c for j, c in enumerate(certs) if j != i)
            return Material(cert, key, chain, files, _validity_warnings(cert, now))
    first = certs[0]
    raise ConfigError(
        key_option,
        f"the private key in {files[-1]} does not match the certificate in {files[0]} ({_subject(first)}, serial {first.serial_number:#x})",
        key_source,
    )


# --- the modes ------------------------------------------------------------------------


@dataclass(frozen=True)
class Settings:
    """What a load needs from the configuration (paths already resolved)."""

    mode: str
    certificate: str
    key: str
    password: str
    store_dir: Path
    sources: dict[str, str]

    def source(self, option: str) -> str:
        return self.sources.get(option, "default")


def _required(settings: Settings, option: str, value: str, why: str) -> None:
    if not value.strip():
        raise ConfigError(option, f"is required with ssl_mode={settings.mode} ({why})", settings.source(option))


def load(settings: Settings, now: datetime.datetime | None = None) -> Material:
    """Read and check the files of ``settings``; raise :class:`ConfigError` on any problem."""
    now = now or datetime.datetime.now(datetime.UTC)
    mode = settings.mode
    cert_src, key_src, pw_src = (settings.source(o) for o in ("ssl_certificate", "ssl_certificate_key", "ssl_certificate_password"))
    if mode == "FromFileWithPrivateKey":
        _required(settings, "ssl_certificate", settings.certificate, "the PEM certificate file")
        _required(settings, "ssl_certificate_key", settings.key, "the PEM private key file")
        certs = _pem_certificates(
            _read(settings.certificate, "ssl_certificate", cert_src), settings.certificate, "ssl_certificate", cert_src
        )
        key = _pem_key(
            _read(settings.key, "ssl_certificate_key", key_src), settings.password, settings.key, "ssl_certificate_key", key_src, pw_src
        )
        return _assemble(certs, key, (settings.certificate, settings.key), "ssl_certificate_key", key_src, now)
    if mode == "FromFileWithPassword":
        _required(settings, "ssl_certificate", settings.certificate, "the PFX/PKCS#12 file")
        cert, key, extra = _load_pfx(settings.certificate, settings.password, cert_src, pw_src)
        return _assemble([cert, *extra], key, (settings.certificate,), "ssl_certificate", cert_src, now)
    if mode == "FromStorage":
        _required(settings, "ssl_certificate", settings.certificate, f"the name of a certificate in {settings.store_dir}")
        return _from_store(settings, now)
    raise ConfigError(
        "ssl_mode", f"{mode!r} is not one of: None, FromStorage, FromFileWithPrivateKey, FromFileWithPassword", settings.source("ssl_mode")
    )


def _load_pem_pair(pem: Path, key_file: Path | None, settings: Settings, now: datetime.datetime) -> Material:
    cert_src, pw_src = settings.source("ssl_certificate"), settings.source("ssl_certificate_password")
    data = _read(str(pem), "ssl_certificate", cert_src)
    certs = _pem_certificates(data, str(pem), "ssl_certificate", cert_src)
    if key_file is not None and key_file.exists():
        key = _pem_key(
            _read(str(key_file), "ssl_certificate", cert_src), settings.password, str(key_file), "ssl_certificate", cert_src, pw_src
        )
        files: tuple[str, ...] = (str(pem), str(key_file))
    elif b"PRIVATE KEY-----" in data:
        key = _pem_key(data, settings.password, str(pem), "ssl_certificate", cert_src, pw_src)
        files = (str(pem),)
    else:
        raise ConfigError("ssl_certificate", f"no private key for {pem}: put it in {pem.with_suffix('.key')} (PEM)", cert_src)
    return _assemble(certs, key, files, "ssl_certificate", cert_src, now)


def _load_store_file(path: Path, settings: Settings, now: datetime.datetime) -> Material:
    if path.suffix == ".pfx":
        cert, key, extra = _load_pfx(
            str(path), settings.password, settings.source("ssl_certificate"), settings.source("ssl_certificate_password")
        )
        return _assemble([cert, *extra], key, (str(path),), "ssl_certificate", settings.source("ssl_certificate"), now)
    return _load_pem_pair(path, path.with_suffix(".key"), settings, now)


def _from_store(settings: Settings, now: datetime.datetime) -> Material:
    source = settings.source("ssl_certificate")
    name = settings.certificate.strip()
    if name[:3].lower() == "cn=":
        name = name[3:].strip()
    store = settings.store_dir
    if not store.is_dir():
        raise ConfigError(
            "ssl_certificate",
            f"the certificate store {store} does not exist: create it and put {name}.pem with {name}.key (or {name}.pfx) there",
            source,
        )
    if "/" not in name and "\\" not in name and not name.startswith("."):
        for suffix in (".pfx", ".pem"):
            path = store / f"{name}{suffix}"
            if path.is_file():
                return _load_store_file(path, settings, now)
    # No file of that name: the certificate whose subject CN is the name.
    found: list[Material] = []
    for path in sorted(store.iterdir()):
        if path.suffix not in (".pem", ".pfx") or not path.is_file():
            continue
        try:
            material = _load_store_file(path, settings, now)
        except ConfigError:
            continue  # a broken neighbour is not this certificate's problem
        if _common_name(material.certificate).lower() == name.lower():
            found.append(material)
    if not found:
        present = ", ".join(sorted(p.name for p in store.iterdir() if p.suffix in (".pem", ".pfx", ".key"))) or "nothing"
        raise ConfigError(
            "ssl_certificate",
            f"no certificate {name!r} in the store {store}: expected {name}.pem with {name}.key, or {name}.pfx, "
            f"or a certificate whose subject CN is {name} (found: {present})",
            source,
        )

    # Several with that name (a renewal beside the old one): the valid one that lasts longest.
    def rank(m: Material) -> tuple[bool, datetime.datetime]:
        c = m.certificate
        return (c.not_valid_before_utc <= now <= c.not_valid_after_utc, c.not_valid_after_utc)

    return max(found, key=rank)


def config_directory(cfg: Config) -> Path:
    """The INI file's directory when one is used, else the data directory."""
    return Path(cfg.config_file).resolve().parent if cfg.config_file else Path(cfg.data_dir)


def settings_from_config(cfg: Config) -> Settings:
    """Resolve paths: a relative path from an INI file is relative to that file's directory."""

    def path(option: str, value: str) -> str:
        value = os.path.expanduser(value.strip())
        if value and not os.path.isabs(value) and cfg.config_file and cfg.source_of(option).startswith(cfg.config_file):
            value = str(Path(cfg.config_file).resolve().parent / value)
        return value

    file_mode = cfg.ssl_mode != "FromStorage"
    return Settings(
        mode=cfg.ssl_mode,
        certificate=path("ssl_certificate", cfg.ssl_certificate) if file_mode else cfg.ssl_certificate,
        key=path("ssl_certificate_key", cfg.ssl_certificate_key),
        password=cfg.ssl_certificate_password,
        store_dir=config_directory(cfg) / STORE_DIR,
        sources=dict(cfg.sources),
    )


# --- the TLS side -----------------------------------------------------------------------


def certificate_options(material: Material) -> CertificateOptions:
    """Twisted's server options for this material: TLS 1.2+, its modern ciphers, the chain."""
    options = CertificateOptions(
        privateKey=crypto.PKey.from_cryptography_key(material.key),
        certificate=crypto.X509.from_cryptography(material.certificate),
        extraCertChain=[crypto.X509.from_cryptography(c) for c in material.chain],
        raiseMinimumTo=TLSVersion.TLSv1_2,
    )
    options.getContext()  # build it now: an OpenSSL refusal is a load error, not a handshake error
    return options


@implementer(IOpenSSLServerConnectionCreator)
class ReloadableServerTLS:
    """
    The send API's TLS: every new connection gets the current context;
    :meth:`reload` re-reads the files and swaps it, or raises and keeps it.
    """

    def __init__(self, loader: Callable[[], Material]) -> None:
        self._loader = loader
        self.material = loader()
        self._options = self._build(self.material)

    def _build(self, material: Material) -> CertificateOptions:
        try:
            return certificate_options(material)
        except SSL.Error as e:
            raise ConfigError("ssl_certificate", f"OpenSSL refuses the certificate or key from {', '.join(material.files)}: {e}") from None

    def reload(self) -> Material:
        material = self._loader()
        options = self._build(material)
        self.material, self._options = material, options
        return material

    def serverConnectionForTLS(self, protocol: TLSMemoryBIOProtocol) -> SSL.Connection:
        return self._options.serverConnectionForTLS(protocol)


def from_config(cfg: Config) -> ReloadableServerTLS | None:
    """``None`` for ``ssl_mode=None``; else the loaded TLS, or a :class:`ConfigError`."""
    if cfg.ssl_mode == "None":
        return None
    settings = settings_from_config(cfg)
    return ReloadableServerTLS(lambda: load(settings))
