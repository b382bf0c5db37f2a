"""
Secrets at rest: the store keeps every application's server key and client
key sealed (authenticated encryption, AES-256-GCM from ``cryptography``) under
a key that lives outside the store, in the *key file* (``DATA_DIR/secrets.key``
by default, mode 0600).  A copy of the store alone (the SQLite file, a
PostgreSQL dump or backup, an export) gives no usable key or token: access
tokens are ``HMAC(server key, token id)``, so without the server key their ids
and digests give nothing away either.

Invariants:

* A sealed value is text: ``sealed1:<key id>:<base64url(nonce + ciphertext + tag)>``.
  No plaintext value starts so (server keys are alphanumeric, client keys
  base64: neither holds ``:``), which tells sealed from not yet sealed.
* The associated data binds a value to its place: key id, table, column and
  row id.  A sealed value copied to another row or column does not open.
* Every value gets a fresh random 96-bit nonce.  A key seals a few values per
  application and rotation; the bound for random nonces (2^32 per key) is far.
* The key file holds one key per line, ``<id> <base64 of 32 bytes>``, and
  ``#`` comments.  Several keys may be listed: every one of them opens values,
  the store says which one seals new values (its ``sealing`` row).

The functions above :class:`KeyRing` are pure; :class:`KeyRing` reads and
writes the key file (atomically: a new file is linked in place or renamed over
the old one, never written in place).
"""

from __future__ import annotations

import base64
import binascii
import os
import re
import secrets
import tempfile
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from . import StoreError

if TYPE_CHECKING:
    from twisted.internet.defer import Deferred

PREFIX = "sealed1:"
KEY_FILE_NAME = "secrets.key"
KEY_BYTES = 32
NONCE_BYTES = 12
#: What the ``sealing`` row's probe holds, sealed: a wrong key file is recognised at start.
PROBE = "pns4ones secrets probe"
_AAD_HEAD = b"pns4ones sealed v1"
_KEY_ID = re.compile(r"[0-9a-f]{8}")

KEY_FILE_HEADER = """\
# pns4ones secrets key file: it opens the server keys and client keys sealed in the store.
# Keep it private (mode 0600) and keep it out of the store's backups: the store and this file
# together give every key. Every node that shares the store needs a copy of this file.
# One key per line: ID BASE64. Rotate with: pns4ones-admin rotate-secrets-key
"""


class SealingError(StoreError):
    """A sealed value cannot be opened (wrong or missing key, tampered value), or the key file is unusable."""


@dataclass(frozen=True, slots=True)
class SecretKey:
    id: str
    material: bytes = field(repr=False)


def new_key(taken: Iterable[str] = ()) -> SecretKey:
    """A fresh random key with an id not in ``taken``."""
    used = set(taken)
    while True:
        key_id = secrets.token_hex(4)
        if key_id not in used:
            return SecretKey(key_id, secrets.token_bytes(KEY_BYTES))


def _aad(key_id: str, table: str, column: str, row: str) -> bytes:
    return b"\x00".join((_AAD_HEAD, key_id.encode(), table.encode(), column.encode(), row.encode("utf-8", "surrogatepass")))


def seal(key: SecretKey, plaintext: str, table: str, column: str, row: str, nonce: bytes | None = None) -> str:
    """``plaintext`` sealed under ``key`` for its place (``nonce``: tests only; random otherwise)."""
    if nonce is None:
        nonce = secrets.token_bytes(NONCE_BYTES)
    box = AESGCM(key.material).encrypt(nonce, plaintext.encode("utf-8"), _aad(key.id, table, column, row))
    return f"{PREFIX}{key.id}:{base64.urlsafe_b64encode(nonce + box).rstrip(b'=').decode('ascii')}"


def key_id_of(value: str) -> str | None:
    """The id of the key ``value`` is sealed under, or None if it is not sealed."""
    if not value.startswith(PREFIX):
        return None
    key_id, sep, _ = value[len(PREFIX) :].partition(":")
    return key_id if sep else None


def unseal(keys: Mapping[str, SecretKey], value: str, table: str, column: str, row: str) -> str:
    """The plaintext of ``value`` at its place; :class:`SealingError` if it is not sealed, its key is unknown, or it does not open."""
    where = f"{table}.{column} of {row!r}"
    key_id = key_id_of(value)
    if key_id is None:
        raise SealingError(f"{where} is not sealed (written by a pns4ones older than this one? stop it and restart this one to seal it)")
    key = keys.get(key_id)
    if key is None:
        raise SealingError(f"{where} is sealed with key {key_id}, which the key file does not hold")
    text = value[len(PREFIX) + len(key_id) + 1 :]
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        if len(raw) < NONCE_BYTES + 16:
            raise ValueError("too short")
        plain = AESGCM(key.material).decrypt(raw[:NONCE_BYTES], raw[NONCE_BYTES:], _aad(key_id, table, column, row))
        return plain.decode("utf-8")
    except (InvalidTag, ValueError, binascii.Error):
        raise SealingError(
            f"{where} does not open with key {key_id}: altered, moved from another row, or a different key with that id"
        ) from None


def parse_key_file(text: str, path: str = "<key file>") -> list[SecretKey]:
    keys: list[SecretKey] = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        where = f"{path}:{number}"
        if len(parts) != 2 or not _KEY_ID.fullmatch(parts[0]):
            raise SealingError(f"{where}: expected 'ID BASE64' (an 8-digit hexadecimal id and a key)")
        try:
            material = base64.b64decode(parts[1], validate=True)
        except (binascii.Error, ValueError):
            raise SealingError(f"{where}: the key is not base64") from None
        if len(material) != KEY_BYTES:
            raise SealingError(f"{where}: the key has {len(material)} bytes, expected {KEY_BYTES}")
        if any(k.id == parts[0] for k in keys):
            raise SealingError(f"{where}: key id {parts[0]} is listed twice")
        keys.append(SecretKey(parts[0], material))
    return keys


def format_key_file(keys: Iterable[SecretKey]) -> str:
    return KEY_FILE_HEADER + "".join(f"{k.id} {base64.b64encode(k.material).decode('ascii')}\n" for k in keys)


@runtime_checkable
class Sealed(Protocol):
    """A store that keeps its keys sealed at rest (the SQL stores): its key file, its sealing key, rotation."""

    keyring: KeyRing
    location: str

    def sealing_key_id(self) -> Deferred[str]: ...
    def rotate_secrets_key(self, new: SecretKey, now: float) -> Deferred[int]: ...


class KeyRing:
    """
    The key file of a store.  Read when the store opens; read again when a
    value names a key it lacks and the file has changed, so that a running
    node picks up a key another process added (a rotation).  Refused when
    other users may read it.  Safe to use from the store's threads.
    """

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._keys: dict[str, SecretKey] = {}
        self._order: list[str] = []
        self._signature: tuple[int, int, int] | None = None
        if self.path.exists():
            self._load()

    def exists(self) -> bool:
        return self.path.exists()

    def _stat(self) -> tuple[int, int, int] | None:
        try:
            st = self.path.stat()
        except OSError:
            return None
        return (st.st_ino, st.st_size, st.st_mtime_ns)

    def _load(self) -> None:
        try:
            st = self.path.stat()
            text = self.path.read_text(encoding="utf-8")
        except OSError as e:
            raise SealingError(f"cannot read the key file {self.path}: {e.strerror or e}") from None
        if st.st_mode & 0o007:
            raise SealingError(f"the key file {self.path} is open to other users (mode {st.st_mode & 0o777:o}): chmod 600 it")
        keys = parse_key_file(text, str(self.path))
        self._keys = {k.id: k for k in keys}
        self._order = [k.id for k in keys]
        self._signature = (st.st_ino, st.st_size, st.st_mtime_ns)

    @property
    def keys(self) -> Mapping[str, SecretKey]:
        return dict(self._keys)

    def get(self, key_id: str) -> SecretKey | None:
        """The key ``key_id``; the file is read again first when it lacks it and has changed since."""
        with self._lock:
            key = self._keys.get(key_id)
            if key is None:
                signature = self._stat()
                if signature is not None and signature != self._signature:
                    self._load()
                    key = self._keys.get(key_id)
            return key

    def newest(self) -> SecretKey | None:
        """The key listed last (the one a fresh store seals with)."""
        with self._lock:
            return self._keys[self._order[-1]] if self._order else None

    def open(self, value: str, table: str, column: str, row: str) -> str:
        key_id = key_id_of(value)
        if key_id is not None:
            self.get(key_id)  # re-reads the file for a key it lacks
        try:
            return unseal(self._keys, value, table, column, row)
        except SealingError as e:
            if key_id is not None and key_id not in self._keys:
                raise SealingError(f"{e} ({self.path}): copy the key file from the node that sealed it") from None
            raise

    def create(self) -> SecretKey:
        """A new key file with one fresh key (mode 0600); if another process made one meanwhile, its newest key."""
        with self._lock:
            key = new_key()
            try:
                _write_new(self.path, format_key_file([key]))
            except FileExistsError:
                self._load()
                if not self._order:
                    raise SealingError(f"the key file {self.path} holds no key") from None
                return self._keys[self._order[-1]]
            self._keys, self._order, self._signature = {key.id: key}, [key.id], self._stat()
            return key

    def replace(self, keys: list[SecretKey]) -> None:
        """Write the key file anew with ``keys`` (atomically: a reader sees the old file or the new one)."""
        if not keys:
            raise SealingError("refusing to write a key file without keys")
        with self._lock:
            _write_over(self.path, format_key_file(keys))
            self._keys, self._order, self._signature = {k.id: k for k in keys}, [k.id for k in keys], self._stat()

    def ordered(self) -> list[SecretKey]:
        with self._lock:
            return [self._keys[i] for i in self._order]


def _temp_beside(path: Path, text: str) -> str:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(prefix=".secrets-", dir=path.parent)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        os.unlink(temp)
        raise
    return temp


def _write_new(path: Path, text: str) -> None:
    """Create ``path`` with ``text``, mode 0600; FileExistsError if it exists (another process won)."""
    temp = _temp_beside(path, text)
    try:
        os.link(temp, path)
    finally:
        os.unlink(temp)
    _sync_dir(path.parent)


def _write_over(path: Path, text: str) -> None:
    temp = _temp_beside(path, text)
    try:
        os.replace(temp, path)
    except BaseException:
        os.unlink(temp)
        raise
    _sync_dir(path.parent)


def _sync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
