#!/usr/bin/env python3
"""
Write tests/vectors/wire.json: byte-exact vectors of the 1C add-in's wire
protocol (docs/protocol.md), which tests/test_wire.py, test_messages.py and
test_addin_protocol.py read.

Every frame is computed twice and must agree before it is written: once by the
package's pure code (``pns4ones.wire``, ``pns4ones.messages``) and once here,
independently, from the protocol's definition (``struct`` for the framing, the
standard library's ``hmac`` for the registration's signature, AES-256-CBC from
``cryptography`` with the PKCS#7 padding written out here).  The add-in JSON of
the manual's example request is likewise written out here and compared with
what the package renders.

The key material and the first vectors are those of the reference vectors the
project was started from (shared/vectors/wire.json beside a checkout), so
tests/test_vectors.py can compare both files byte for byte when that file is
there; the rest cover edges the reference does not (a plaintext of exactly one
AES block, empty user and group, a character beyond the BMP).

    .venv/bin/python scripts/make_vectors.py           # (re)write the file
    .venv/bin/python scripts/make_vectors.py --check   # exit 1 if the file differs from what it would write
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import json
import struct
import sys
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from pns4ones import wire
from pns4ones.messages import parse_send, render_addin_json

OUTPUT = Path(__file__).resolve().parents[1] / "tests" / "vectors" / "wire.json"

#: AES-256 key and IV of the test application (its client key is their base64 with an 8-byte header).
AES_KEY = bytes.fromhex("2343e7f35dfe4f10728a2684e28d5195610cf9ef01f1db08d45d8066292d7606")
AES_IV = bytes.fromhex("fa6a2b02f706a05cdf11043c775dd04c")

#: (app_id, ib_id, user_id, group) of each registration frame.
REGISTRATIONS = [
    (
        "7d3c0a52-5a4e-4b52-9d43-1f0a2b3c4d5e",
        "d2273d53-b633-4817-a006-4fa627a5dea9",
        "0b9e8f4c-3a2d-4c1b-9e8f-7a6b5c4d3e2f",
        "Менеджеры по продажам",
    ),
    ("app", "ib", "u1", ""),
    ("app", "ib", "", ""),  # an information-base-wide registration: no user, no group
]

#: The manual's example /sendmessage request (the original product's documentation).
MANUAL_REQUEST: dict[str, Any] = {
    "Recipient": {"Type": "all", "IbId": "d2273d53-b633-4817-a006-4fa627a5dea9"},
    "Message": {
        "Topic": "Hello",
        "Notification": {"Title": "Заголовок", "Body": "Тело сообщения", "Important": False},
        "Data": {"param1": "value 1", "param2": "value 2"},
    },
}

#: Each message vector: the /sendmessage Message and the add-in JSON it must become, written out by hand.
MESSAGES: list[tuple[dict[str, Any], dict[str, Any]]] = [
    ({"Topic": "Hello"}, {"topic": "Hello"}),
    (
        MANUAL_REQUEST["Message"],
        {
            "topic": "Hello",
            "notification": {"title": "Заголовок", "body": "Тело сообщения", "important": False},
            "data": {"param1": "value 1", "param2": "value 2"},
        },
    ),
    ({"Topic": "Hi!"}, {"topic": "Hi!"}),
    ({"Topic": "abc"}, {"topic": "abc"}),  # 16 bytes: exactly one AES block, so a whole block of padding
    (
        {"Topic": "🔔", "Data": {"k": ""}},
        {"topic": "🔔", "data": {"k": ""}},
    ),  # beyond the BMP: a surrogate pair escape; an empty data value is kept
]


# -- the independent side: the protocol as docs/protocol.md defines it ------------------------


def client_key_text(key: bytes, iv: bytes) -> str:
    """``<i len(key)`` ``<i len(iv)`` key iv, base64."""
    return base64.b64encode(struct.pack("<ii", len(key), len(iv)) + key + iv).decode("ascii")


def registration_frame(key: bytes, app_id: str, ib_id: str, user_id: str, group: str) -> bytes:
    """``<H N`` ``<H 32`` HMAC-SHA256(key, body) body; body = the four fields, each UTF-8 and NUL-terminated."""
    body = b"".join(field.encode("utf-8") + b"\x00" for field in (app_id, ib_id, user_id, group))
    signature = hmac.new(key, body, hashlib.sha256).digest()
    payload = struct.pack("<H", len(signature)) + signature + body
    return struct.pack("<H", len(payload)) + payload


def message_frame(key: bytes, iv: bytes, plaintext: bytes) -> bytes:
    """``<i 4+len(ciphertext)`` ``<i len(plaintext)`` AES-256-CBC(key, iv, PKCS#7(plaintext))."""
    pad = 16 - len(plaintext) % 16
    padded = plaintext + bytes([pad]) * pad
    encryptor = Cipher(algorithms.AES(key), modes.CBC(iv)).encryptor()
    ciphertext = encryptor.update(padded) + encryptor.finalize()
    return struct.pack("<ii", 4 + len(ciphertext), len(plaintext)) + ciphertext


def addin_json(doc: dict[str, Any]) -> bytes:
    """
    The add-in's JSON: members in order, ``", "`` and ``": "`` separators, UTF-8,
    except characters beyond the BMP, which are escaped as UTF-16 surrogate pairs
    (the add-in's UTF-8 decoder mangles 4-byte sequences).
    """
    text = json.dumps(doc, ensure_ascii=False)
    text = "".join(json.dumps(ch)[1:-1] if ord(ch) > 0xFFFF else ch for ch in text)
    return text.encode("utf-8")


# -- both sides, compared ---------------------------------------------------------------------


def agree(what: str, ours: object, independent: object) -> None:
    if ours != independent:
        raise SystemExit(f"make_vectors: {what}: the package gives {ours!r}, the protocol {independent!r}")


def vectors() -> dict[str, Any]:
    key_text = client_key_text(AES_KEY, AES_IV)
    key = wire.ClientKey.decode(key_text)
    agree("client key", (key.key, key.iv, key.encode()), (AES_KEY, AES_IV, key_text))

    registrations = []
    for app_id, ib_id, user_id, group in REGISTRATIONS:
        frame = registration_frame(AES_KEY, app_id, ib_id, user_id, group)
        agree(f"registration {app_id}/{ib_id}/{user_id}", wire.encode_registration(key, app_id, ib_id, user_id, group), frame)
        parsed = wire.parse_registration(frame[2:])
        agree("parsed registration", (parsed.app_id, parsed.ib_id, parsed.user_id, parsed.group, parsed.verify(key)),
              (app_id, ib_id, user_id, group, True))  # fmt: skip
        registrations.append({"app_id": app_id, "ib_id": ib_id, "user_id": user_id, "group": group, "frame_hex": frame.hex()})

    messages = []
    for request_message, expected in MESSAGES:
        body = json.dumps({"Recipient": {"Type": "user", "IbId": "ib", "UserId": "u"}, "Message": request_message}).encode("utf-8")
        plaintext = addin_json(expected)
        agree(f"add-in JSON of {request_message}", render_addin_json(parse_send(body).message), plaintext)
        frame = message_frame(AES_KEY, AES_IV, plaintext)
        agree(f"frame of {plaintext!r}", wire.encode_frame(key, plaintext), frame)
        messages.append({"plaintext_utf8": plaintext.decode("utf-8"), "frame_hex": frame.hex()})
    agree(
        "the manual's example",
        render_addin_json(parse_send(json.dumps(MANUAL_REQUEST).encode()).message).decode(),
        messages[1]["plaintext_utf8"],
    )

    return {
        "about": (
            "Byte-exact vectors for the 1C add-in wire protocol (docs/protocol.md), written by scripts/make_vectors.py. "
            "Hex strings are lowercase. message_frames[1] is the manual's example request."
        ),
        "client_key": {"base64": key_text, "aes_key_hex": AES_KEY.hex(), "aes_iv_hex": AES_IV.hex()},
        "registration_frames": registrations,
        "message_frames": messages,
    }


def render() -> str:
    return json.dumps(vectors(), ensure_ascii=False, indent=2) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0] if __doc__ else None)
    parser.add_argument("--check", action="store_true", help="compare with the file instead of writing it (exit 1 if it differs)")
    parser.add_argument("--output", type=Path, default=OUTPUT, help=f"where to write (default {OUTPUT})")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        current = args.output.read_text(encoding="utf-8") if args.output.exists() else ""
        if current != text:
            print(f"make_vectors: {args.output} is not what scripts/make_vectors.py writes; run it and commit the file", file=sys.stderr)
            return 1
        print(f"make_vectors: {args.output} is up to date")
        return 0
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text, encoding="utf-8")
    print(f"make_vectors: wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
