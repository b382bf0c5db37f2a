#!/usr/bin/env python3
"""
The floor: the smallest correct server for pns4ones' job that Python on Twisted
allows, for the benchmark's "floor" column (``scripts/bench --floor``).

It speaks just enough of both protocols for the swarm: add-in registrations on
the subscription port (length-prefixed, the body's NUL-separated names; the
signature is not checked) and HTTP/1.1 on the send API port (httptools):
a request without a body (``GET /auth``) answers a fixed token, one with a body
(``POST /sendmessage``) looks the recipient up in a dict, renders the add-in
JSON once (orjson), encrypts it once (AES-256-CBC with the application's key
and IV, PKCS#7) and sends the frame to each subscriber and the answer to the
publisher with one ``send()`` each; from a checkout with pns4ones, it
encrypts, writes and dispatches the reactor's events as the service does
(``pns4ones.crypto.AesCbc``: contexts kept and re-chained to the IV;
``pns4ones.txinternals.send_now`` and ``lean_dispatch``: no log context per
event, the sends of one poll's events made together after the last), compiled
where the service's install compiled them (``pns4ones.compiled``).  No
validation, no token check, no metrics, no logs.  It is NOT the service: it
is the yardstick of what the same language, runtime and reactor cost per send
(about 4 us of Python per send, measured in process).

    floor.py --client-key BASE64 [--listen 127.0.0.1:36696] [--service 127.0.0.1:36695]
"""

from __future__ import annotations

import argparse
import base64
import gc
import json
import socket
import struct
from collections.abc import Callable
from typing import Protocol

import httptools
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from twisted.internet import epollreactor

epollreactor.install()

from twisted.internet import protocol, reactor  # noqa: E402

try:
    import orjson

    loads = orjson.loads
    dumps = orjson.dumps
except ImportError:  # the standard library (slower)
    loads = json.loads

    def dumps(doc: object) -> bytes:
        return json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode()


_FRAME = struct.Struct("<ii")
_LEN = struct.Struct("<H")
_OK = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"
_BAD = b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n"
_AUTH = b'{"access_token":"floor","expires_in":4102444800}'
_AUTH_ANSWER = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(_AUTH), _AUTH)
_PAD = [bytes([n]) * n for n in range(17)]

#: (ib, user) -> subscriber transports; ib -> every subscriber transport of it.
users: dict[tuple[str, str], list[object]] = {}
ibs: dict[str, list[object]] = {}


def plain_write(transport: object, data: bytes) -> None:
    """One send() when nothing is queued (as the service's fast path does), else queue."""
    t = transport
    if not t._tempDataBuffer and len(t.dataBuffer) == t.offset:  # type: ignore[attr-defined]
        try:
            sent = t.socket.send(data)  # type: ignore[attr-defined]
        except BlockingIOError:
            sent = 0
        except OSError:
            return
        if sent == len(data):
            return
        data = data[sent:]
    t.write(data)  # type: ignore[attr-defined]


class Encrypter(Protocol):
    def encrypt(self, plain: bytes) -> bytes: ...


class FreshCbc:
    """AES-256-CBC with PKCS#7 padding from the IV, a fresh encryptor per message (without pns4ones)."""

    def __init__(self, key: bytes, iv: bytes) -> None:
        self.cipher = Cipher(algorithms.AES(key), modes.CBC(iv))

    def encrypt(self, plain: bytes) -> bytes:
        return self.cipher.encryptor().update(plain + _PAD[16 - len(plain) % 16])


try:  # from a checkout with pns4ones: the service's own write path (txinternals.send_now), as the service writes
    from pns4ones.txinternals import lean_dispatch, send_now
except ImportError:
    lean_dispatch = None
    write = plain_write
    Cbc: Callable[[bytes, bytes], Encrypter] = FreshCbc
else:
    from pns4ones.crypto import AesCbc

    Cbc = AesCbc  # the service's encryption: its contexts kept and re-chained to the IV, the same bytes

    def write(transport: object, data: bytes) -> None:
        """The service's write path: one send() at the end of the poll's events when nothing is queued, else queue."""
        if not send_now(transport, data):
            transport.write(data)  # type: ignore[attr-defined]


class Subscriber(protocol.Protocol):
    buf = b""
    key: tuple[str, str] | None = None

    def dataReceived(self, data: bytes) -> None:
        if self.key is not None:
            return
        self.buf += data
        if len(self.buf) < 2:
            return
        (n,) = _LEN.unpack_from(self.buf)
        if len(self.buf) < 2 + n:
            return
        (h,) = _LEN.unpack_from(self.buf, 2)
        _app, ib, user, _group = self.buf[4 + h : 2 + n].decode("utf-8", "replace").split("\0")[:4]
        self.key = (ib, user)
        users.setdefault(self.key, []).append(self.transport)
        ibs.setdefault(ib, []).append(self.transport)

    def connectionLost(self, reason: object = None) -> None:
        if self.key is not None:
            users[self.key].remove(self.transport)
            ibs[self.key[0]].remove(self.transport)


class Publisher(protocol.Protocol):
    def __init__(self, cbc: Encrypter) -> None:
        self.encrypt = cbc.encrypt
        self.parser = httptools.HttpRequestParser(self)
        self.body: list[bytes] = []
        self.out: list[bytes] = []

    def dataReceived(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.transport.write(_BAD)  # type: ignore[union-attr]
            self.transport.loseConnection()  # type: ignore[union-attr]
            return
        out = self.out
        if out:
            write(self.transport, out[0] if len(out) == 1 else b"".join(out))
            out.clear()

    # httptools calls only the callbacks that exist: the body and the end (a request without a body is GET /auth).
    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        body = self.body
        if not body:
            self.out.append(_AUTH_ANSWER)
            return
        doc = loads(body[0] if len(body) == 1 else b"".join(body))
        body.clear()
        recipient = doc["Recipient"]
        message = doc["Message"]
        plain = dumps({"topic": message["Topic"], "data": message["Data"]})
        ct = self.encrypt(plain)
        frame = _FRAME.pack(4 + len(ct), len(plain)) + ct
        if recipient["Type"] == "user":
            targets = users.get((recipient["IbId"], recipient["UserId"]), ())
        else:
            targets = ibs.get(recipient["IbId"], ())
        for t in targets:
            write(t, frame)
        self.out.append(_OK)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--client-key", required=True, help="the application's client key (base64 of 56 bytes)")
    parser.add_argument("--listen", default="127.0.0.1:36696")
    parser.add_argument("--service", default="127.0.0.1:36695")
    args, _ = parser.parse_known_args()
    raw = base64.b64decode(args.client_key)
    cbc = Cbc(raw[8:40], raw[40:56])

    class PubFactory(protocol.ServerFactory):
        noisy = False

        def buildProtocol(self, addr: object) -> Publisher:
            return Publisher(cbc)

    subs = protocol.ServerFactory.forProtocol(Subscriber)
    subs.noisy = False
    for spec, factory in ((args.listen, PubFactory()), (args.service, subs)):
        host, _, port = spec.rpartition(":")
        listening = reactor.listenTCP(int(port), factory, backlog=4096, interface=host)  # type: ignore[attr-defined]
        listening.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    # As the service: what is built so far out of the cyclic collector's way, young objects collected less often.
    gc.freeze()
    gc.set_threshold(20_000, 20, 20)
    # The epoll reactor's events without a log context each, writes held to the poll's end (as the service runs).
    if lean_dispatch is not None:
        lean_dispatch(reactor)
    reactor.run()  # type: ignore[attr-defined]


if __name__ == "__main__":
    main()
