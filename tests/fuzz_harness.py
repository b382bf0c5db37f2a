"""
The service's HTTP listeners in process, for fuzzing (the hypothesis tests in
``tests/test_fuzz_*.py`` and the atheris targets of ``scripts/fuzz.py``):

* :class:`Node`: the send API as the service builds it (core, in-process hub,
  WebSocket/SSE subscriptions, the handlers, twisted.web and Klein, the front
  connection) over the in-memory store, on a test clock; connections over
  ``StringTransport``;
* :class:`WebSocketPeer`: a client that completes the WebSocket handshake
  through the front connection, the hand-over to twisted.web and its
  WebSocket resource, then sends frames of any kind (wsproto's, or raw bytes);
* :class:`Panel`: the admin panel's site over the same store, with an
  administrator logged in (a session and its CSRF token).

Everything answers at once (the in-memory store's Deferreds have fired), so a
fuzz step is a few function calls; what a step leaves behind is checked by
:meth:`Node.check_clean`.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import struct
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast
from urllib.parse import quote

from hypothesis import HealthCheck, settings
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import AcceptConnection, CloseConnection, Event, Ping, Pong, RejectConnection, Request, TextMessage

from pns4ones import config
from pns4ones.admin import auth
from pns4ones.admin.app import AdminPanel, AdminSite
from pns4ones.core import Core, Limits
from pns4ones.groups import Membership
from pns4ones.http.connection import FrontFactory
from pns4ones.http.handlers import Handlers
from pns4ones.http.resources import SendAPI
from pns4ones.http.site import ApiSite
from pns4ones.http.site import Clock as SiteClock
from pns4ones.hub.local import LocalHub
from pns4ones.messages import Message as PushMessage
from pns4ones.messages import Recipient, SendRequest
from pns4ones.store import AdminAccount
from pns4ones.store.memory import Clock as StoreClock
from pns4ones.store.memory import MemoryDatabase, MemoryStore
from pns4ones.transports.web import WebSubscriptions

from .http_support import Response, responses

#: Multiplies every fuzz test's number of examples (``PNS4ONES_FUZZ_SCALE=50``: a long local run; see ``scripts/fuzz hypothesis``).
SCALE = float(os.environ.get("PNS4ONES_FUZZ_SCALE", "1") or "1")
#: The fuzz tests' settings: the fixed budget of CI is derandomized (the same examples every run, a failure
#: reproduces); a scaled run, or ``PNS4ONES_FUZZ_RANDOM=1``, draws new ones and keeps failures in ``.hypothesis/``.
FUZZ = settings(
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    derandomize=SCALE == 1 and not os.environ.get("PNS4ONES_FUZZ_RANDOM"),
    print_blob=True,
)


def examples(n: int) -> int:
    """A fuzz test's number of examples: ``n`` in CI, scaled by ``PNS4ONES_FUZZ_SCALE``."""
    return max(1, round(n * SCALE))


#: Options of every fuzzed node: small bounds, so that fuzzing reaches them.
OPTIONS = {
    "config": os.devnull,
    "data_dir": "/nonexistent",
    "allowed_origins": "*",
    "send_buffer_limit": "64K",
    "max_body_size": "64K",
    "ws_ping_interval": "5",
    "ws_ping_timeout": "5",
    "max_group_size": "50",
    "max_groups": "40",
    "ticket_max_ttl": "600",
}
PEER = IPv4Address("TCP", "127.0.0.1", 40000)
#: twisted.web's refusal of what it cannot parse (a malformed multipart body, a bad request line): no body, then it closes.
TWISTED_400 = b"HTTP/1.1 400 Bad Request\r\n\r\n"
T = TypeVar("T")


def at_once(d: Deferred[T]) -> T:
    """The result of a Deferred that has fired (the in-memory store's)."""
    out: list[T] = []
    d.addCallback(out.append)
    assert out, "the in-memory store answers at once"
    return out[0]


#: The panel's administrator (hashed once per process: Argon2id takes ~60 ms).
ADMIN_LOGIN = "admin"
_admin_hash: list[str] = []


def _password_hash() -> str:
    if not _admin_hash:
        _admin_hash.append(auth.hash_password("correct horse 1"))
    return _admin_hash[0]


class Node:
    """One send API in process (see the module's docstring); ``engine`` "front" (the default) or "twisted" (twisted.web alone)."""

    def __init__(self, engine: str = "front", start: MemoryDatabase | None = None, **options: str) -> None:
        self.engine = engine
        self.options = options
        self.clock = Clock()
        self.config = config.build({**OPTIONS, **options})
        database = MemoryDatabase()
        if start is not None:  # (a twin: the same application and token)
            database.tables = copy.deepcopy(start.tables)
        self.store = MemoryStore(database, clock=cast(StoreClock, self.clock))
        if start is None:
            at_once(self.store.create_application("Fuzz", 0.0))
        limits = self.config
        self.core = Core(
            self.store,
            LocalHub(clock=self.clock),
            self.clock,
            membership=Membership(),
            limits=Limits(limits.max_ttl, limits.max_kept_per_user, limits.max_kept_per_app, limits.max_group_size, limits.max_groups),
        )
        snapshot = at_once(self.store.snapshot())
        self.app = snapshot.applications[0]
        self.core.apply_snapshot(snapshot)
        self.subscriptions = WebSubscriptions(self.core, self.config, self.clock)
        self.handlers = Handlers(self.core, log_sends=False, max_batch=self.config.max_batch, subscriptions=self.subscriptions)
        self.site = ApiSite(SendAPI(self.handlers).resource(), self.config.max_body_size, self.config.request_timeout, clock=self.clock)
        self.front = FrontFactory(self.site, self.handlers, cast(SiteClock, self.clock))
        self.front.startFactory()
        issued: list[Any] = []
        maybeDeferred(self.core.authorize, self.app.server_key).addBoth(issued.append)  # (the in-memory store answers at once)
        self.token: str = issued[0].token
        self._start = MemoryDatabase()
        self._start.tables = copy.deepcopy(database.tables)
        self.transports: list[StringTransport] = []

    def twin(self, engine: str) -> Node:
        """A node as this one was when built (the same application and token), on ``engine``."""
        return Node(engine, self._start, **self.options)

    def stop(self) -> None:
        self.front.stopFactory()

    def connect(self) -> tuple[Any, StringTransport]:
        """A new connection (front connection, or a twisted.web channel with ``engine="twisted"``)."""
        factory: Any = self.front if self.engine == "front" else self.site
        proto = factory.buildProtocol(PEER)
        transport = StringTransport(peerAddress=PEER)
        proto.makeConnection(transport)
        self.transports.append(transport)
        return proto, transport

    def ticket(self, ib: str = "ib1", user: str = "u1", groups: Iterable[str] = ()) -> str:
        body = json.dumps({"IbId": ib, "UserId": user, "UserGroups": list(groups)}).encode()
        doc = self.subscriptions.issue(self.app, self.token, body)
        return str(doc["ticket"])

    def send(self, user: str, topic: str, ib: str = "ib1") -> int:
        """A message to ``user`` through the core (as /sendmessage sends it): the sessions it reached."""
        request = SendRequest(Recipient("user", ib, user_id=user), PushMessage(topic=topic))
        result: list[Any] = []
        sent = self.core.send(self.app, request)
        if isinstance(sent, Deferred):
            sent.addBoth(result.append)
        else:  # (the in-process hub answers a send at once, without a Deferred)
            result.append(sent)
        assert result, "the in-process hub answers at once"
        if isinstance(result[0], BaseException) or hasattr(result[0], "raiseException"):
            result[0].raiseException()
        return int(result[0].sessions)

    def request(self, raw: bytes, cuts: Iterable[int] = ()) -> tuple[list[Response], bool]:
        """``raw`` on a new connection, cut at ``cuts``: the answers and whether the server is closing it."""
        proto, transport = self.connect()
        at = 0
        for cut in [*sorted(set(cuts)), len(raw)]:
            if transport.disconnecting:
                break
            if at < cut <= len(raw):
                proto.dataReceived(raw[at:cut])
                at = cut
        return responses(transport.value()), bool(transport.disconnecting)

    def check_clean(self) -> None:
        """After every connection is gone: no subscription is left in the hub or the subscriptions."""
        assert not self.subscriptions.sessions, self.subscriptions.sessions
        assert len(self.core.hub) == 0, "sessions left in the hub"
        assert not self.site.channels, f"connections left in the site: {self.site.channels}"


def http_request(
    method: bytes, target: bytes, body: bytes | None = None, headers: Iterable[tuple[bytes, bytes]] = (), token: str = ""
) -> bytes:
    out = [b"%s %s HTTP/1.1\r\nHost: x\r\n" % (method, target)]
    if token:
        out.append(b"Authorization: Bearer %s\r\n" % token.encode())
    out += [b"%s: %s\r\n" % pair for pair in headers]
    if body is not None:
        out.append(b"Content-Length: %d\r\n" % len(body))
    out.append(b"\r\n")
    return b"".join(out) + (body or b"")


# -- WebSocket ---------------------------------------------------------------------------------


def frame(
    opcode: int, payload: bytes, fin: bool = True, mask: bytes | None = b"\x01\x02\x03\x04", rsv: int = 0, length: int | None = None
) -> bytes:
    """One WebSocket frame as a client sends it (masked) or as it must not (``mask=None``); ``length`` may lie."""
    size = len(payload) if length is None else length
    head = bytes([(0x80 if fin else 0) | (rsv & 0x7) << 4 | (opcode & 0xF)])
    bit = 0x80 if mask is not None else 0
    if size < 126:
        head += bytes([bit | size])
    elif size < 1 << 16:
        head += bytes([bit | 126]) + struct.pack("!H", size)
    else:
        head += bytes([bit | 127]) + struct.pack("!Q", size & (1 << 64) - 1)
    if mask is None:
        return head + payload
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


@dataclass
class WebSocketPeer:
    """A WebSocket client of a :class:`Node`, over the front connection and twisted.web's WebSocket resource."""

    node: Node
    user: str = "u1"
    since: str | None = None
    #: A ticket to subscribe with (default: a fresh one for ``user`` in ib1).
    ticket: str | None = None
    proto: Any = None
    transport: StringTransport = field(default_factory=lambda: StringTransport(peerAddress=PEER))
    client: WSConnection = field(default_factory=lambda: WSConnection(ConnectionType.CLIENT))
    events: list[Event] = field(default_factory=list)
    accepted: bool = False
    read_at: int = 0
    #: The client sent a close frame, or its bytes were not a WebSocket stream: it may not get messages any more.
    spoiled: bool = False

    def open(self) -> WebSocketPeer:
        """The handshake; afterwards ``accepted``."""
        self.proto, self.transport = self.node.connect()
        ticket = self.ticket or self.node.ticket(user=self.user)
        target = f"/subscribe/ws?ticket={quote(ticket)}" + (f"&since={self.since}" if self.since else "")
        self.proto.dataReceived(self.client.send(Request(host="x", target=target)))
        self.read()
        return self

    def read(self) -> list[Event]:
        """What the server wrote since the last read, as events (wsproto's view of it)."""
        data = self.transport.value()[self.read_at :]
        self.read_at += len(data)
        if not data or self.client.state is ConnectionState.CLOSED:
            return []
        try:
            self.client.receive_data(data)
            new = list(self.client.events())
        except Exception as e:  # (wsproto refuses what it cannot parse: the server wrote a bad frame)
            raise AssertionError(f"the server wrote bytes a WebSocket client cannot read: {data[:200]!r}") from e
        for event in new:
            if isinstance(event, AcceptConnection):
                self.accepted = True
            elif isinstance(event, RejectConnection):
                raise AssertionError(f"handshake refused: {event.status_code}")
        self.events += new
        return new

    def feed(self, data: bytes) -> None:
        """Raw bytes from the client (no effect once the server closes: as a TCP transport, nothing more is read)."""
        if not self.transport.disconnecting:
            self.proto.dataReceived(data)

    def send(self, event: Event) -> bytes:
        """A well-formed frame (wsproto's), as bytes to feed."""
        if self.client.state is not ConnectionState.OPEN:
            return b""
        return bytes(self.client.send(event))

    def lose(self) -> None:
        """The TCP connection ends (as the reactor reports it)."""
        from twisted.internet.error import ConnectionDone
        from twisted.python.failure import Failure

        self.proto.connectionLost(Failure(ConnectionDone()))

    def texts(self) -> list[str]:
        return [e.data for e in self.events if isinstance(e, TextMessage)]

    def pongs(self) -> int:
        return sum(isinstance(e, Pong) for e in self.events)

    def close_codes(self) -> list[int]:
        return [e.code for e in self.events if isinstance(e, CloseConnection)]

    def pings(self) -> list[Ping]:
        return [e for e in self.events if isinstance(e, Ping)]


# -- the admin panel ---------------------------------------------------------------------------


class Panel:
    """The admin panel's site over a :class:`Node`'s store and core, an administrator logged in."""

    def __init__(self, node: Node) -> None:
        self.node = node
        account = AdminAccount(ADMIN_LOGIN, _password_hash())
        node.store.set_admin(account, 0.0)
        self.panel = AdminPanel(node.core, node.store, node.config, node.clock)
        self.port = 8093
        self.site = AdminSite(self.panel, self.port, node.config.max_body_size, node.config.request_timeout, clock=node.clock)
        token, session = self.panel.sessions.create(ADMIN_LOGIN)
        # What the panel's login remembers of the password (admin.app: the digest of the hash it logged in with).
        session.account = hashlib.sha256(account.password_hash.encode("utf-8")).digest()
        self.cookie = f"pns4ones_session={token}".encode()
        self.csrf = session.csrf

    def request(
        self, method: bytes, target: bytes, body: bytes | None = None, content_type: bytes = b"application/x-www-form-urlencoded"
    ) -> Response | None:
        """One request on a new connection: the answer (None when the panel wrote none)."""
        headers = [(b"Host", b"127.0.0.1:%d" % self.port), (b"Cookie", self.cookie)]
        if body is not None:
            headers.append((b"Content-Type", content_type))
        raw = b"%s %s HTTP/1.1\r\n" % (method, target) + b"".join(b"%s: %s\r\n" % h for h in headers)
        if body is not None:
            raw += b"Content-Length: %d\r\n" % len(body)
        raw += b"Connection: close\r\n\r\n" + (body or b"")
        proto = self.site.buildProtocol(PEER)
        transport = StringTransport(peerAddress=PEER)
        proto.makeConnection(transport)
        proto.dataReceived(raw)
        answers = responses(transport.value())
        if not answers and transport.value() == TWISTED_400 and transport.disconnecting:
            return Response(400, [], b"")  # (twisted.web's own refusal: no length, the connection closed)
        return answers[-1] if answers else None


def form_body(pairs: Iterable[tuple[str | bytes, str | bytes]]) -> bytes:
    """An urlencoded form body; bytes values go as they are (percent-encoded)."""
    from urllib.parse import quote_from_bytes

    def enc(value: str | bytes) -> str:
        return quote_from_bytes(value if isinstance(value, bytes) else value.encode("utf-8", "surrogatepass"), safe="")

    return "&".join(f"{enc(k)}={enc(v)}" for k, v in pairs).encode("ascii")


__all__ = ["FUZZ", "Node", "Panel", "WebSocketPeer", "examples", "form_body", "frame", "http_request"]
