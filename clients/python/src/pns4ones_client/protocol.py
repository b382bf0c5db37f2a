"""
The native add-in's side of the subscription protocol, without I/O.

A client registers once with a frame signed by the application's client key,
then reads message frames ``<i L`` ``<i P`` AES-256-CBC(ciphertext); this module
builds the first and decodes the others.  (The server has its own copy of the
same few lines, so that this package depends on nothing but ``cryptography``.)
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import struct
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes


class ProtocolError(ValueError):
    """The server sent something the add-in could not digest either."""


@dataclass(frozen=True)
class ClientKey:
    key: bytes
    iv: bytes

    @classmethod
    def decode(cls, text: str) -> ClientKey:
        raw = base64.b64decode(text.strip(), validate=True)
        if len(raw) != 56 or struct.unpack_from("<ii", raw) != (32, 16):
            raise ValueError("not a pns4ones client key (base64 of 56 bytes)")
        return cls(raw[8:40], raw[40:56])


def registration_frame(key: ClientKey, app_id: str, ib_id: str, user_id: str, group: str = "") -> bytes:
    """The frame the add-in sends right after connecting."""
    body = b"".join(s.encode("utf-8") + b"\x00" for s in (app_id, ib_id, user_id, group))
    signature = hmac.new(key.key, body, hashlib.sha256).digest()
    payload = struct.pack("<H", len(signature)) + signature + body
    return struct.pack("<H", len(payload)) + payload


class FrameDecoder:
    """Feed received bytes; get the decrypted JSON plaintexts of complete frames."""

    def __init__(self, key: ClientKey, max_frame: int = 16 * 1024 * 1024) -> None:
        self.key = key
        self._buffer = bytearray()
        self._max = max_frame

    def feed(self, data: bytes) -> list[bytes]:
        self._buffer += data
        out = []
        while len(self._buffer) >= 8:
            length, plain_len = struct.unpack_from("<ii", self._buffer)
            if length < 4 or plain_len <= 0 or length > self._max or (length - 4) % 16:
                raise ProtocolError(f"bad frame header L={length} P={plain_len}")
            if len(self._buffer) < 4 + length:
                break
            ciphertext = bytes(self._buffer[8 : 4 + length])
            del self._buffer[: 4 + length]
            decryptor = Cipher(algorithms.AES(self.key.key), modes.CBC(self.key.iv)).decryptor()
            padded = decryptor.update(ciphertext) + decryptor.finalize()
            try:
                unpadder = padding.PKCS7(128).unpadder()
                plaintext = unpadder.update(padded) + unpadder.finalize()
            except ValueError:
                raise ProtocolError("frame does not decrypt with this client key") from None
            if len(plaintext) != plain_len or not plaintext.startswith(b"{"):
                raise ProtocolError("frame does not decrypt to the announced JSON")
            out.append(plaintext)
        return out

    def feed_messages(self, data: bytes) -> list[dict[str, Any]]:
        return [json.loads(p) for p in self.feed(data)]
