"""
The send API's HTTP paths in process, for byte-level tests: the front
connection (pns4ones.http.connection) and twisted.web alone (the reference
path), each over a StringTransport, in front of the real handlers, core and
in-process hub; a small in-memory store stands in for SQLite (only tokens and
applications are read, and token look-ups can be held back); the hub's
RecordingSession stands in for a subscriber.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from httptools import HttpParserError, HttpResponseParser
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from pns4ones import crypto
from pns4ones.core import Core
from pns4ones.http.connection import FrontConnection, FrontFactory
from pns4ones.http.handlers import Handlers
from pns4ones.http.resources import SendAPI
from pns4ones.http.site import ApiSite
from pns4ones.hub.local import LocalHub
from pns4ones.hub.testing import RecordingSession
from pns4ones.store import Application, Snapshot, TokenRecord
from pns4ones.wire import ClientKey

APP = Application("app", "Shop", "s" * 64, ClientKey.generate(), 0.0)
TOKEN_ID = b"\x01" * 16
TOKEN = crypto.derive_token(APP.server_key, TOKEN_ID)
OTHER_TOKEN = crypto.derive_token(APP.server_key, b"\x02" * 16)  # issued by "another node": only the store knows it
FAR = 4_000_000_000.0


class MemoryStore:
    """The few store methods the send path reads, in memory; ``gate`` (when set) holds token look-ups back."""

    def __init__(self) -> None:
        self.apps = [APP]
        self.tokens = {
            crypto.token_digest(TOKEN): TokenRecord(crypto.token_digest(TOKEN), APP.id, TOKEN_ID, 0.0, FAR),
            crypto.token_digest(OTHER_TOKEN): TokenRecord(crypto.token_digest(OTHER_TOKEN), APP.id, b"\x02" * 16, 0.0, FAR),
        }
        self.gate: Deferred[None] | None = None
        self.lookups = 0

    def snapshot(self) -> Deferred[Snapshot]:
        first = self.tokens[crypto.token_digest(TOKEN)]
        return succeed(Snapshot(tuple(self.apps), (first,)))

    def list_applications(self) -> Deferred[list[Application]]:
        self.lookups += 1
        return succeed(list(self.apps))

    def get_token(self, digest: bytes) -> Deferred[TokenRecord | None]:
        self.lookups += 1
        record = self.tokens.get(digest)
        if self.gate is None:
            return succeed(record)
        return self.gate.addCallback(lambda _: record)

    def add_token(self, record: TokenRecord) -> Deferred[None]:
        self.tokens[record.digest] = record
        return succeed(None)

    def set_group(self, app_id: str, ib_id: str, group: str, user_ids: list[str], now: float) -> Deferred[None]:
        return succeed(None)

    def remove_group_member(self, app_id: str, ib_id: str, group: str, user_id: str) -> Deferred[int]:
        return succeed(1)


def recorder() -> RecordingSession:
    """A live subscription of user u1 in ib1 (``plaintexts()``: what it was sent)."""
    return RecordingSession("u1", (), "ib1", APP.id, APP.client_key)


@dataclass
class Setup:
    """One send API in process: the clock, store, core, subscriber, site, and the front factory."""

    engine: str = "front"
    max_body: int = 8192
    request_timeout: float = 30.0
    trusted: tuple[Any, ...] = ()
    clock: Clock = field(default_factory=Clock)
    store: MemoryStore = field(default_factory=MemoryStore)
    recorder: RecordingSession = field(default_factory=recorder)

    def __post_init__(self) -> None:
        self.core = Core(self.store, LocalHub(), self.clock)  # type: ignore[arg-type]
        self.core.apply_snapshot(self.store.snapshot().result)
        self.core.adopt(self.recorder)
        self.handlers = Handlers(self.core, log_sends=False)
        self.site = ApiSite(
            SendAPI(self.handlers).resource(), self.max_body, self.request_timeout, clock=self.clock, trusted_proxies=self.trusted
        )
        self.front = FrontFactory(self.site, self.handlers, self.clock)
        self.front.startFactory()

    def stop(self) -> None:
        self.front.stopFactory()

    def connect(self, host: str = "127.0.0.1") -> tuple[Any, StringTransport]:
        """A new connection on this setup's engine ("front" or "twisted")."""
        address = IPv4Address("TCP", host, 40000)
        factory: Any = self.front if self.engine == "front" else self.site
        proto = factory.buildProtocol(address)
        transport = StringTransport(peerAddress=address)
        proto.makeConnection(transport)
        return proto, transport

    def run(self, chunks: list[bytes], host: str = "127.0.0.1") -> tuple[bytes, bool, Any]:
        """Feed ``chunks`` on a new connection: (what was written, whether the server is closing, the protocol)."""
        proto, transport = self.connect(host)
        for chunk in chunks:
            if transport.disconnecting:
                break
            proto.dataReceived(chunk)
        return transport.value(), bool(transport.disconnecting), proto


@dataclass
class Response:
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes

    def header(self, name: bytes) -> bytes | None:
        for key, value in self.headers:
            if key.lower() == name.lower():
                return value
        return None


class _Collect:
    """httptools callbacks gathering whole responses."""

    def __init__(self) -> None:
        self.responses: list[Response] = []
        self._headers: list[tuple[bytes, bytes]] = []
        self._body: list[bytes] = []
        self.parser = HttpResponseParser(self)

    def on_message_begin(self) -> None:
        self._headers, self._body = [], []

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        self.responses.append(Response(self.parser.get_status_code(), self._headers, b"".join(self._body)))


def responses(data: bytes) -> list[Response]:
    """The responses in ``data`` (interim 100 Continue included), read by llhttp; a trailing partial one is left out."""
    collect = _Collect()
    try:
        collect.parser.feed_data(data)
    except HttpParserError:
        pass
    return collect.responses


def front_connection(proto: Any) -> FrontConnection:
    assert isinstance(proto, FrontConnection)
    return proto
