"""
The native add-in's byte protocol, without I/O (docs/protocol.md section 4).

Invariants:

* All integers are little-endian.
* Inbound: one registration frame ``<H N`` ``<H H`` signature body, where the
  body is ``appId NUL ibId NUL userId NUL userGroup NUL``.  :func:`parse_registration`
  takes the ``N`` bytes after the length prefix (the framing is done by the
  Twisted protocol) and either returns a :class:`Registration` or raises
  :class:`WireError`; it never raises anything else, whatever the bytes.
* Outbound: ``<i L`` ``<i P`` ciphertext with ``L = 4 + len(ciphertext)`` and
  ``P = len(plaintext) > 0``; the plaintext starts with ``{``.  Frames that would
  break the add-in (``P <= 0``, ``L < 4``) are never produced.
"""

from __future__ import annotations

import base64
import binascii
import struct
from dataclasses import dataclass, field

from . import crypto

#: The signature is an HMAC-SHA256.
SIGNATURE_LENGTH = 32
#: Smallest meaningful registration payload: H, the signature, four NULs.
MIN_REGISTRATION = 2 + SIGNATURE_LENGTH + 4
#: Default bound on the registration payload (the original read 1,024 bytes).
DEFAULT_MAX_REGISTRATION = 4096

_CLIENT_KEY = struct.Struct("<ii")
_FRAME_HEADER = struct.Struct("<ii")


class WireError(ValueError):
    """A frame or key that does not follow the protocol; ``reason`` is a short code."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True, slots=True)
class ClientKey:
    """The AES key and IV an application's add-in sessions decrypt with."""

    key: bytes
    iv: bytes
    #: Its AES-CBC (what :func:`encode_frame` encrypts with); not part of the value.
    aes: crypto.AesCbc = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "aes", crypto.AesCbc(self.key, self.iv))  # (frozen: set once, as dataclasses do)

    def encode(self) -> str:
        """The base64 text an administrator types into 1C."""
        raw = _CLIENT_KEY.pack(len(self.key), len(self.iv)) + self.key + self.iv
        return base64.b64encode(raw).decode("ascii")

    @classmethod
    def decode(cls, text: str) -> ClientKey:
        try:
            raw = base64.b64decode(text.strip(), validate=True)
        except (binascii.Error, ValueError) as e:
            raise WireError("client-key", f"client key is not base64: {e}") from None
        if len(raw) != 8 + 32 + 16:
            raise WireError("client-key", f"client key has {len(raw)} bytes, expected 56")
        key_len, iv_len = _CLIENT_KEY.unpack_from(raw)
        if (key_len, iv_len) != (32, 16):
            raise WireError("client-key", f"client key header says {key_len}/{iv_len}, expected 32/16")
        return cls(raw[8:40], raw[40:56])

    @classmethod
    def generate(cls) -> ClientKey:
        return cls(*crypto.random_aes_material())


@dataclass(frozen=True, slots=True)
class Registration:
    """A decoded registration frame (signature not yet verified)."""

    app_id: str
    ib_id: str
    user_id: str
    group: str
    signature: bytes
    body: bytes

    def verify(self, key: ClientKey) -> bool:
        """Constant-time HMAC check with the application's AES key."""
        return crypto.verify_hmac_sha256(key.key, self.body, self.signature)


def _text(raw: bytes) -> str:
    # The stock add-in sends the low byte of each UTF-16 unit: ASCII for the
    # GUIDs 1C passes, Latin-1 otherwise.  Real UTF-8 is decoded as such.
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def parse_registration(payload: bytes) -> Registration:
    """Decode the ``N`` bytes that follow the registration's length prefix."""
    if len(payload) < MIN_REGISTRATION:
        raise WireError("truncated", f"registration of {len(payload)} bytes is too short")
    (sig_len,) = struct.unpack_from("<H", payload)
    if sig_len != SIGNATURE_LENGTH:
        raise WireError("signature-length", f"signature length {sig_len}, expected {SIGNATURE_LENGTH}")
    signature = payload[2 : 2 + SIGNATURE_LENGTH]
    body = payload[2 + SIGNATURE_LENGTH :]
    if not body.endswith(b"\x00"):
        raise WireError("malformed", "registration body does not end with NUL")
    parts = body[:-1].split(b"\x00")
    if len(parts) != 4:
        raise WireError("malformed", f"registration body has {len(parts)} fields, expected 4")
    app_id, ib_id, user_id, group = (_text(p) for p in parts)
    if not app_id or not ib_id:
        raise WireError("malformed", "registration without application or information base id")
    return Registration(app_id, ib_id, user_id, group, signature, body)


def encode_registration(key: ClientKey, app_id: str, ib_id: str, user_id: str, group: str = "") -> bytes:
    """A complete registration frame, length prefix included (the client side)."""
    body = b"".join(s.encode("utf-8") + b"\x00" for s in (app_id, ib_id, user_id, group))
    signature = crypto.hmac_sha256(key.key, body)
    payload = struct.pack("<H", len(signature)) + signature + body
    return struct.pack("<H", len(payload)) + payload


def encode_frame(key: ClientKey, plaintext: bytes) -> bytes:
    """One server-to-client message frame."""
    if not plaintext.startswith(b"{"):
        raise WireError("plaintext", "the add-in requires the plaintext to start with '{'")
    aes = key.aes
    ciphertext = aes.encrypt(plaintext)
    return _FRAME_HEADER.pack(4 + len(ciphertext), len(plaintext)) + ciphertext


class FrameDecoder:
    """
    The add-in's side of message frames: feed bytes, get plaintexts (the client
    library and the tests use it).  Bounded: a frame over ``max_frame`` raises.
    """

    def __init__(self, key: ClientKey, max_frame: int = 16 * 1024 * 1024) -> None:
        self._key = key
        self._buffer = bytearray()
        self._max = max_frame

    def feed(self, data: bytes) -> list[bytes]:
        self._buffer += data
        out = []
        while len(self._buffer) >= 8:
            length, plain_len = _FRAME_HEADER.unpack_from(self._buffer)
            if length < 4 or plain_len <= 0 or length > self._max:
                raise WireError("frame", f"bad frame header L={length} P={plain_len}")
            if len(self._buffer) < 4 + length:
                break
            ciphertext = bytes(self._buffer[8 : 4 + length])
            del self._buffer[: 4 + length]
            try:
                plaintext = crypto.aes_cbc_decrypt(self._key.key, self._key.iv, ciphertext)
            except ValueError as e:
                raise WireError("decrypt", f"frame does not decrypt: {e}") from None
            if len(plaintext) != plain_len or not plaintext.startswith(b"{"):
                raise WireError("decrypt", "frame does not decrypt to the announced JSON")
            out.append(plaintext)
        return out
