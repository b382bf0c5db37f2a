"""
The send API listener's HTTP/1.1 connections: one explicit state machine over
llhttp (httptools does the tokenizing), bounded at every byte, that answers the
hot routes itself with plain values (a :class:`~.calls.Call` in, an
:class:`~.calls.Answer` out) and hands every other request, complete, to
twisted.web.

Why: twisted.web costs about 250 µs of CPU per ``POST /sendmessage`` in
pure-Python HTTP machinery (line parsing, ``Headers`` objects, ``Request``
construction, resource traversal, a timer per ``dataReceived``), five times the
send itself.  Here a send costs the llhttp callbacks, one Call, the handler and
one write per received chunk.

The request side: ``FrontConnection.state``, changed only by ``_to()``, along
:data:`TRANSITIONS`::

    IDLE       between requests: waiting for a request's first byte
    HEAD       its request line and header fields
    BODY       its body (with the chunk framing and trailers of a chunked one)
    UPGRADING  an Upgrade request is complete; later bytes are held for twisted.web
               until the answers before it are written
    SWITCHED   the connection is twisted.web's (WebSocket, or any other Upgrade)
    CLOSING    nothing more is read: the answers queued go out, then it closes
               (Connection: close, HTTP/1.0, a restart, a refusal, a timeout)
    CLOSED     the transport is gone

    IDLE -> HEAD -> BODY -> IDLE       a request on a kept-alive connection
    BODY -> CLOSING                    ... whose answer closes the connection
    BODY -> UPGRADING -> SWITCHED      an Upgrade request
    IDLE, HEAD, BODY -> CLOSING        refused (over a bound, malformed, timed out), or idle
    any -> CLOSED

The answer side: the queue of answers not written yet, in request order.  Each
slot is an answer ready to write, one awaited (a Deferred), a request for
twisted.web (handed over when it reaches the head of the queue: twisted.web
writes straight to the transport, so the order holds), or the switch of an
Upgrade.

Invariants:

* Bytes reach llhttp only in IDLE, HEAD and BODY, at most :data:`FEED_SLICE`
  at a time, and never more than the room left in the current request's
  bounds, so that nothing llhttp or httptools accumulates (a header name or
  value, a trailer) outgrows them: the head (request line and header fields)
  :data:`MAX_HEAD` bytes, 431; the target :data:`MAX_LINE`, 414; each header
  field :data:`MAX_LINE`, 431; at most :data:`MAX_HEADERS` fields, 431; the
  chunk framing and trailers :data:`MAX_HEAD`, 400; the body ``max_body_size``,
  413 (a declared length is refused before the body).  Bytes are counted as
  they are fed, not when llhttp reports them complete.  A head that begins
  inside a read behind another request is charged for the whole read from that
  request on (so it may be refused up to one slice early); the chunk framing
  is counted from the read after the head (so it may run one slice over).
* Past a bound: the documented status as JSON, the connection closed after a
  lingering half-close, the parser and everything buffered for the request
  dropped at once.  Before any authentication: handlers run only on a complete
  request.
* Only HTTP/1.0 and HTTP/1.1: any other version llhttp reads is 505; anything
  it cannot read is 400.  A transfer coding other than ``chunked`` is 501.
* Trailer fields are dropped: never merged into the header fields.
* ``request_timeout`` runs from a request's first byte (for the first request,
  from the connection) to its last, whichever code path answers it: a request
  is handed to twisted.web only once complete, and the upgraded connection's
  later requests are twisted.web's own.  (The clock is read once the read
  holding the first byte is parsed, in the same reactor turn, and only for a
  request still incomplete then.)
* Answers leave in request order; every answer produced while reading a chunk
  goes out in one write.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Mapping
from typing import Final, cast

from httptools import HttpParserCallbackError, HttpParserError, HttpParserUpgrade, HttpRequestParser
from twisted.internet import protocol, tcp
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import (
    IAddress,
    ILoggingContext,
    IProtocol,
    IProtocolNegotiationFactory,
    IPushProducer,
    ISSLTransport,
)
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http import RESPONSES, datetimeToString
from zope.interface import classImplements, implementer

from .. import proxies
from ..logs import RateLimited
from ..txinternals import send_now
from .calls import Answer, Call
from .handlers import Handlers, Route, error_answer
from .site import ApiChannel, ApiSite, Clock, Timer, Transport, canned, linger

# -- bounds ---------------------------------------------------------------------------------

#: The longest request head (request line and header fields), and the most chunk framing and trailers.
MAX_HEAD: Final = 64 * 1024
#: The longest request target, and the longest header field (name and value).
MAX_LINE: Final = 8 * 1024
#: The most header fields in a request.
MAX_HEADERS: Final = 100
#: The most bytes handed to llhttp at once.
FEED_SLICE: Final = 16 * 1024
#: Answers not written yet before the connection stops reading.
MAX_PENDING: Final = 64
#: Seconds a refused client may go on sending (discarded) before the connection is cut.
LINGER_SECONDS: Final = 5.0
#: Bytes a client refused for its head or framing (not its body's size) may still send
#: once its answer is out: past them the connection is reset.  A sender refused with
#: 413 or 408 may be uploading in good faith, and keeps the whole LINGER_SECONDS.
LINGER_DISCARD: Final = 64 * 1024

# -- states ---------------------------------------------------------------------------------

IDLE: Final = "IDLE"
HEAD: Final = "HEAD"
BODY: Final = "BODY"
UPGRADING: Final = "UPGRADING"
SWITCHED: Final = "SWITCHED"
CLOSING: Final = "CLOSING"
CLOSED: Final = "CLOSED"

#: The request side's transitions (see the module's docstring).
TRANSITIONS: Final[Mapping[str, frozenset[str]]] = {
    IDLE: frozenset({HEAD, CLOSING, CLOSED}),
    HEAD: frozenset({BODY, CLOSING, CLOSED}),
    BODY: frozenset({IDLE, UPGRADING, CLOSING, CLOSED}),
    UPGRADING: frozenset({SWITCHED, CLOSED}),
    SWITCHED: frozenset({CLOSED}),
    CLOSING: frozenset({CLOSED}),
    CLOSED: frozenset(),
}

#: What becomes of the connection once an answer is written.
KEEP: Final = 0
CLOSE: Final = 1  # close (the request said so, or HTTP/1.0, or a restart)
LINGER: Final = 2  # half-close and discard what the client still sends (a refusal mid-request)

#: Why reading is paused (bits).
_PENDING_FULL: Final = 1
_WRITES_FULL: Final = 2
_UPGRADE_WAITS: Final = 4

HTTP11: Final = b"HTTP/1.1"
HTTP10: Final = b"HTTP/1.0"
_CONTINUE: Final = b"HTTP/1.1 100 Continue\r\n\r\n"
#: The versions served, as httptools reports them.
_VERSIONS: Final[Mapping[str, bytes]] = {"1.1": HTTP11, "1.0": HTTP10}
#: Header fields the front connection itself reads (lowercase).
#: (Proxy-Connection only for on_headers_complete's version rule: llhttp reads it as Connection.)
_READ: Final = frozenset({b"authorization", b"content-length", b"transfer-encoding", b"connection", b"expect", b"proxy-connection"})
#: Of those, the ones twisted.web reads the first of when repeated (the last, for the others).
_FIRST: Final = frozenset({b"connection", b"expect"})


def _spellings(names: frozenset[bytes]) -> dict[bytes, bytes]:
    """Each name as clients usually spell it (lowercase, Capitalized-Words, UPPERCASE) -> its lowercase form."""
    out: dict[bytes, bytes] = {}
    for name in names:
        for spelling in (name, b"-".join(word.capitalize() for word in name.split(b"-")), name.upper()):
            out[spelling] = name
    return out


#: Header names as usually spelled -> the lowercase name when the front connection reads the field, b""
#: when it does not: one dict look-up per field instead of ``lower()`` and set tests (any other
#: spelling is lower-cased).
_READ_AS: Final[Mapping[bytes, bytes]] = {
    **dict.fromkeys(
        _spellings(
            frozenset({
                b"host", b"content-type", b"user-agent", b"accept", b"accept-encoding", b"accept-language",
                b"x-forwarded-for", b"x-forwarded-proto", b"x-real-ip", b"forwarded", b"origin", b"referer",
                b"cache-control", b"pragma", b"cookie", b"content-encoding", b"te", b"upgrade", b"x-request-id",
            })
        ),
        b"",
    ),
    **_spellings(_READ),
}  # fmt: skip
#: Header fields not passed on to twisted.web: the body goes over re-framed, and 100 Continue was answered here.
_REFRAMED: Final = frozenset({b"content-length", b"transfer-encoding", b"expect"})


class StateError(Exception):
    """A transition :data:`TRANSITIONS` does not allow: a bug, never the peer's doing."""


class _Stop(Exception):
    """Raised in an llhttp callback: stop parsing (the state says why)."""


class _InProgress:
    """Stands for a request in progress in ``FrontConnection.requests`` (for the drain and the handoff)."""

    #: The front connection decides ``Connection: close`` when it writes an answer (``site.closing``).
    startedWriting = True


_IN_PROGRESS: Final = _InProgress()

_status_lines: dict[tuple[bytes, int], bytes] = {}


def status_line(version: bytes, status: int) -> bytes:
    """``HTTP/1.1 200 OK\\r\\n`` (cached)."""
    try:
        return _status_lines[version, status]
    except KeyError:
        line = _status_lines[version, status] = b"%s %d %s\r\n" % (version, status, RESPONSES.get(status, b"Unknown Status"))
        return line


class _Date:
    """The ``Date:`` header line, rebuilt once a second (read in :func:`encode_answer`)."""

    __slots__ = ("line", "since", "until")

    def __init__(self) -> None:
        self.since = self.until = 0.0  # the second the line is for: [since, until)
        self.line = b""

    def renew(self, now: float) -> None:
        second = int(now)
        self.since, self.until = second, second + 1
        self.line = b"Date: " + datetimeToString(second) + b"\r\n"


_date = _Date()


_CLOSE: Final = b"Connection: close\r\n"


def encode_answer(answer: Answer, version: bytes, close: bool, closing: bool) -> bytes:
    """
    The whole response, with twisted.web's header order (``closing``: a restart
    is under way).  (Every answer is encoded once: each ``/sendmessage``
    answer is its send's own, carrying its id.)
    """
    connection = _CLOSE if close and (closing or version == HTTP11) else b""
    body = answer.body
    fields = answer.fields
    if fields is None:
        fields = b"".join([b"%s: %s\r\n" % field for field in answer.headers])
    line = _status_lines.get((version, answer.status)) or status_line(version, answer.status)
    date = _date  # (one clock read and no call while the second lasts)
    now = time.time()
    if not date.since <= now < date.until:
        date.renew(now)
    return b"%s%s%s%sContent-Length: %d\r\n\r\n%s" % (line, connection, date.line, fields, len(body), body)


def encode_request(
    method: bytes, target: bytes, version: bytes, fields: list[tuple[bytes, bytes]], body: bytes, framed: bool, close: bool
) -> bytes:
    """A complete request for twisted.web: the same fields, the body re-framed by Content-Length, no Expect."""
    out = [b"%s %s %s\r\n" % (method, target, version)]
    for name, value in fields:
        lower = name.lower()
        if lower in _REFRAMED or (close and lower == b"connection"):
            continue
        out.append(b"%s: %s\r\n" % (name, value))
    if close:
        out.append(b"Connection: close\r\n")
    if framed or body:
        out.append(b"Content-Length: %d\r\n" % len(body))
    out.append(b"\r\n")
    out.append(body)
    return b"".join(out)


def keep_alive(version: bytes, connection: bytes | None) -> bool:
    """twisted.web's rule (``HTTPChannel.checkPersistence``): HTTP/1.1 without a ``close`` token."""
    if version != HTTP11:
        return False
    if not connection:
        return True
    return b"close" not in [token.lower() for token in connection.split(b" ")]


class _Slot:
    """An answer not written yet (see the module's docstring)."""

    __slots__ = ("close", "cold", "data", "handed", "upgrade")

    def __init__(self, data: bytes | None, close: int, cold: bytes | None = None, upgrade: bool = False) -> None:
        self.data = data  # the bytes to write; None while awaited or answered by twisted.web
        self.close = close
        self.cold = cold  # a request for twisted.web
        self.handed = False
        self.upgrade = upgrade


class FrontConnection:
    """
    One connection of the send API listener (see the module's docstring): an
    ``IProtocol`` and ``IPushProducer`` of its own (declared below the class),
    not a subclass of Twisted's ``Protocol``, so that the compiled build can make
    it an extension type whose attributes are C fields (``connection.pxd``:
    compiled code reads an attribute of a plain object through the type and a
    dictionary each time, about a fifth of the compiled server's CPU).
    """

    # Slots: every attribute, the same names as connection.pxd declares (a test compares them),
    # so that both builds refuse an attribute nobody declared.
    __slots__ = (
        "__weakref__",
        "_active",
        "_advancing",
        "_begun",
        "_body",
        "_body_total",
        "_chunked",
        "_direct",
        "_discard",
        "_feeding",
        "_fields",
        "_framing",
        "_head_bytes",
        "_head_done",
        "_held",
        "_held_size",
        "_inner",
        "_line_bytes",
        "_linger",
        "_lose",
        "_method",
        "_out",
        "_parser",
        "_paused",
        "_peer",
        "_pending",
        "_producing",
        "_read",
        "_route",
        "_seconds",
        "_secure",
        "_size",
        "_swept",
        "_target",
        "_transport",
        "_trusted",
        "_upgrade",
        "_version",
        "connected",
        "factory",
        "handlers",
        "idle_since",
        "max_body",
        "persistent",
        "routes",
        "site",
        "started",
        "state",
        "transport",
    )

    log = Logger()

    def __init__(self, factory: FrontFactory) -> None:
        # (Protocol's three attributes: the transport sets ``transport`` and ``connected`` in makeConnection)
        self.connected = 0
        self.transport: object = None
        self.factory = factory
        self.site = factory.site
        self.handlers = factory.handlers
        self.routes = factory.routes
        self._seconds = factory.clock.seconds
        self._trusted = factory.trusted
        self.max_body = factory.site.max_body_size
        self.state = IDLE
        #: False: close once the answers in progress are written (the restart handoff sets it).
        self.persistent = True
        #: When the request being received began (the connection, before the first); None between requests.
        #: A request's clock is read only if it is still incomplete when the read that began it has been
        #: parsed (the same reactor turn: the time its first byte was received); one received whole in
        #: one read costs no clock read.
        self.started: float | None = None
        #: Since when the connection has been idle: the sweep before its last request was completed
        #: (at most one sweep before it: see tick()).
        self.idle_since = 0.0
        #: A request was completed since the last sweep.
        self._active = False
        #: The time of the last sweep (of the connection, before the first).
        self._swept = 0.0
        self._parser = HttpRequestParser(self)
        self._peer = "?"
        self._secure = False
        self._direct = False  # plain TCP: answers may go straight to the socket (txinternals.send_now)
        # The request being received.
        self._fields: list[tuple[bytes, bytes]] = []
        self._read: dict[bytes, bytes] = {}
        self._body: list[bytes] = []
        self._size = 0
        self._version = HTTP11
        self._method = b""
        self._target = b""  # as it arrives (on_url)
        self._route: Route | None = None
        self._upgrade = False
        self._chunked = False
        # Bytes of the request's bounds, counted as fed (see the invariants).
        self._head_bytes = 0
        self._line_bytes = 0
        self._framing = 0
        self._body_total = 0
        self._begun = False
        self._head_done = False
        # Answers.
        self._pending: deque[_Slot] = deque()
        self._out: list[bytes] = []
        self._lose = KEEP
        self._advancing = False
        self._feeding = False
        self._paused = 0
        self._producing = False
        self._inner: ApiChannel | None = None
        self._held: list[bytes] = []
        self._held_size = 0
        self._linger: Timer | None = None
        #: Bytes still discarded after a refusal before the connection is reset (None: no such bound).
        self._discard: int | None = None
        self._transport: Transport | None = None  # (``self.transport``, typed by what is used of it)

    # -- the one place the state changes ---------------------------------------------------------

    def _to(self, state: str) -> None:
        if state not in TRANSITIONS[self.state]:
            raise StateError(f"{self.state} -> {state}")
        self.state = state

    # -- IProtocol ---------------------------------------------------------------------------------

    def makeConnection(self, transport: object) -> None:
        """As ``Protocol.makeConnection``: the transport is ours from now on."""
        self.connected = 1
        self.transport = transport
        self.connectionMade()

    def logPrefix(self) -> str:
        return "FrontConnection"

    def connectionMade(self) -> None:
        transport = self._transport = cast(Transport, self.transport)
        self._peer = getattr(transport.getPeer(), "host", "?")
        self._secure = ISSLTransport.providedBy(transport)
        self._direct = isinstance(transport, tcp.Connection)  # (not TLS: its wrapper forwards .socket)
        self.started = self._swept = self._seconds()  # as twisted.web: a silent connection gets 408
        transport.registerProducer(self, True)  # the socket's buffer is full: stop reading
        self._producing = True

    def dataReceived(self, data: bytes) -> None:
        state = self.state
        if state is not IDLE and state is not HEAD and state is not BODY:
            self._not_reading(state, data)
            return
        self._feeding = True
        try:  # bytes to llhttp, within the bounds (each part at most the room left, then charged: see _count_head)
            end = len(data)
            pos = 0
            parser = self._parser
            while pos < end:
                state = self.state
                if state is BODY:
                    room = MAX_HEAD - self._framing if self._chunked else FEED_SLICE
                    if room <= 0:
                        self._refuse(400, b"Bad Request", "bad_request", f"chunk framing and trailers over {MAX_HEAD} bytes")
                        break
                elif state is IDLE or state is HEAD:
                    room = MAX_HEAD - self._head_bytes
                    if room <= 0:
                        self._refuse(
                            431, b"Request Header Fields Too Large", "headers_too_large", f"request line and headers over {MAX_HEAD} bytes"
                        )
                        break
                else:
                    break  # CLOSING, UPGRADING (llhttp stopped), CLOSED
                n = end - pos  # min(end - pos, room, FEED_SLICE), without the builtin's call
                if n > room:
                    n = room
                if n > FEED_SLICE:
                    n = FEED_SLICE
                part = data if n == end else data[pos : pos + n]
                body_before = self._body_total
                self._begun = self._head_done = False
                try:
                    parser.feed_data(part)
                except HttpParserUpgrade as e:
                    self._hold(part[e.args[0] :] + data[pos + n :])
                    break
                except HttpParserCallbackError as e:
                    if isinstance(e.__context__, _Stop):
                        break
                    raise
                except HttpParserError as e:
                    self._refuse(400, b"Bad Request", "bad_request", f"malformed HTTP request: {e}")
                    break
                pos += n
                state = self.state
                if state is UPGRADING:  # (llhttp did not pause: nothing of this part is after the request)
                    self._hold(data[pos:])
                    break
                if state is HEAD:
                    if self._begun:  # a request began in this part and is incomplete: its clock starts (see started)
                        self.started = self._seconds()
                    self._count_head(part, n, self._body_total - body_before)
                elif state is BODY:
                    if self._begun:
                        self.started = self._seconds()
                    if self._chunked:
                        self._framing = 0 if self._head_done else self._framing + n - (self._body_total - body_before)
        finally:
            self._feeding = False
        if self._pending:  # (an empty queue has nothing to move, and nothing paused for it: _advance resumes as it empties it)
            self._advance()
        self._flush()

    def _not_reading(self, state: str, data: bytes) -> None:
        """Bytes received in a state that does not parse them."""
        if state is SWITCHED:
            assert self._inner is not None
            self._inner.dataReceived(data)  # (looked up each time: a WebSocket replaces it)
        elif state is UPGRADING:
            self._hold(data)
        elif self._discard is not None:  # CLOSING, CLOSED: the rest of a refused or final request, discarded within its bound
            self._discard -= len(data)
            if self._discard < 0 and not self._pending and self._transport is not None:
                self._discard = None
                self._transport.abortConnection()

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        if self.state is not CLOSED:
            self._to(CLOSED)
        self.started = None
        if self._linger is not None and self._linger.active():
            self._linger.cancel()
        self.site.channels.discard(self)
        self.factory.connections.discard(self)
        self._pending.clear()
        self._held = []
        if self._inner is not None:
            self._inner.connectionLost(reason)

    # -- IPushProducer: the transport's buffer is full / drained ---------------------------------

    def pauseProducing(self) -> None:
        self._pause(_WRITES_FULL)

    def resumeProducing(self) -> None:
        self._resume(_WRITES_FULL)

    def stopProducing(self) -> None:
        pass

    def _pause(self, reason: int) -> None:
        if not self._paused and self._transport is not None:
            self._transport.pauseProducing()
        self._paused |= reason

    def _resume(self, reason: int) -> None:
        if self._paused & reason:
            self._paused &= ~reason
            if not self._paused and self._transport is not None and self.state is not CLOSED:
                self._transport.resumeProducing()

    # -- reading: bytes to llhttp, within the bounds -----------------------------------------------

    def _count_head(self, part: bytes, n: int, body: int) -> None:
        """Charge a head still incomplete after a feed, and bound its current line."""
        if self._begun:  # it began in this part: charge the part from its start (an over-estimate)
            self._head_bytes = n - body
        else:
            self._head_bytes += n
        newline = part.rfind(b"\n")
        line = n - newline - 1 if newline >= 0 else n + (0 if self._begun else self._line_bytes)
        self._line_bytes = line = min(line, self._head_bytes)
        if line > MAX_LINE:
            if not self._fields and line <= len(self._target) + 24:  # still the request line
                self._refuse(414, b"URI Too Long", "uri_too_long", f"request target over {MAX_LINE} bytes")
            else:
                self._refuse(431, b"Request Header Fields Too Large", "headers_too_large", f"a header field over {MAX_LINE} bytes")

    def _hold(self, data: bytes) -> None:
        """Bytes after an Upgrade request, kept for twisted.web until the answers before it are written."""
        if not data:
            return
        self._held.append(data)
        self._held_size += len(data)
        if self._held_size > MAX_HEAD:
            self._held = []
            assert self._transport is not None
            self._transport.abortConnection()
            return
        self._pause(_UPGRADE_WAITS)

    # -- llhttp's callbacks ------------------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self.state is not IDLE:
            raise _Stop()
        self._to(HEAD)
        self._begun = True  # (and its clock starts after this read, if it is still incomplete: see dataReceived)
        self._target = b""
        self._fields = []
        self._read = {}
        self._body = []
        self._size = 0
        # (the head's counters are 0: new, or reset as the last request completed)

    def on_url(self, url: bytes) -> None:
        # Usually one piece (b"" + url is url itself); pieces add up to MAX_LINE at most.
        target = self._target = self._target + url
        if len(target) > MAX_LINE:
            self._refuse(414, b"URI Too Long", "uri_too_long", f"request target over {MAX_LINE} bytes")
            raise _Stop()

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.state is not HEAD:
            return  # a trailer field: dropped, never merged into the header fields
        fields = self._fields
        if len(fields) >= MAX_HEADERS or len(name) + len(value) > MAX_LINE:
            reason = f"more than {MAX_HEADERS} header fields" if len(fields) >= MAX_HEADERS else f"a header field over {MAX_LINE} bytes"
            self._refuse(431, b"Request Header Fields Too Large", "headers_too_large", reason)
            raise _Stop()
        fields.append((name, value))
        lower = _READ_AS.get(name)
        if lower is None:  # an unusual spelling
            lower = name.lower()
            if lower not in _READ:
                return
        if lower and (lower not in _FIRST or lower not in self._read):
            self._read[lower] = value  # repeated: the first or the last, as twisted.web reads each

    def on_headers_complete(self) -> None:
        parser = self._parser
        read = self._read
        # The usual case without get_http_version()'s string formatting: llhttp reads only the versions
        # 0.9, 1.0, 1.1 and 2.0, and keeps alive "HTTP/1.1 without close, any other with keep-alive" in
        # Connection or Proxy-Connection; with neither field, keep-alive means HTTP/1.1.
        if b"connection" not in read and b"proxy-connection" not in read and parser.should_keep_alive():
            self._version = HTTP11
        else:
            version = parser.get_http_version()
            served = _VERSIONS.get(version)
            if served is None:
                self._refuse(
                    505, b"HTTP Version Not Supported", "http_version_not_supported", f"HTTP/{version} is not served: use HTTP/1.1"
                )
                raise _Stop()
            self._version = served
        # (the fields a request seldom has tested with ``in``: no call when they are absent)
        self._chunked = chunked = b"transfer-encoding" in read
        if chunked and read[b"transfer-encoding"].strip().lower() != b"chunked":
            self._refuse(501, b"Not Implemented", "not_implemented", "the only transfer coding served is chunked")
            raise _Stop()
        length = read.get(b"content-length")
        if length is not None and int(length) > self.max_body:
            self._refuse(413, b"Payload Too Large", "payload_too_large", f"request body over {self.max_body} bytes", int(length))
            raise _Stop()
        method = parser.get_method()
        target = self._target
        self._method = method
        self._upgrade = upgrade = parser.should_upgrade()
        if upgrade:
            self._route = None
        else:  # (a target without a query is its path: one look-up, no partition)
            routes = self.routes
            self._route = routes.get((method, target)) or routes.get((method, target.partition(b"?")[0]))
        if b"expect" in read and self._version is HTTP11 and read[b"expect"].lower() == b"100-continue":
            self._queue(_Slot(_CONTINUE, KEEP))
        self._to(BODY)
        self._head_done = True

    def on_body(self, data: bytes) -> None:
        n = len(data)
        size = self._size + n
        self._body_total += n
        if size > self.max_body:
            self._refuse(413, b"Payload Too Large", "payload_too_large", f"request body over {self.max_body} bytes", size)
            raise _Stop()
        self._size = size
        self._body.append(data)

    def on_message_complete(self) -> None:
        self.started = None
        self._active = True
        version = self._version
        read = self._read
        kept = (version is HTTP11 and b"connection" not in read) or keep_alive(version, read.get(b"connection"))  # (the common case first)
        close = self.site.closing or not self.persistent or not kept
        body = b"".join(self._body)  # (one part: that part itself, not a copy)
        route = self._route
        if route is not None:
            # A hot route: its handler runs on the request just received, its answer is queued.
            path, _, query = self._target.partition(b"?")
            peer, secure = self._peer, self._secure
            trusted = self._trusted
            if trusted:
                peer, scheme = proxies.resolve(peer, self._fields, trusted)
                if scheme is not None:
                    secure = scheme == "https"
            call = Call(self._method, path, query, read.get(b"authorization", b""), body, peer, secure)
            result = self.handlers.answer(route, call)
            if isinstance(result, Answer):
                site = self.site
                site.on_request(path, result.status)
                data = encode_answer(result, version, close, site.closing)
                if not self._pending:  # the usual case: answered at once, nothing before it
                    self._out.append(data)
                    if close:
                        self._lose = CLOSE
                else:
                    self._pending.append(_Slot(data, CLOSE if close else KEEP))
            else:
                self._await(result, call, close, version, path)
        else:
            framed = self._chunked or b"content-length" in read
            request = encode_request(self._method, self._target, version, self._fields, body, framed, close)
            if self._upgrade:
                self._to(UPGRADING)
                self._queue(_Slot(None, KEEP, request, upgrade=True))
                return  # llhttp pauses here (HttpParserUpgrade): the rest is twisted.web's
            self._queue(_Slot(None, CLOSE if close else KEEP, request))
        self._head_bytes = self._line_bytes = self._framing = 0
        if close:
            self._to(CLOSING)
            raise _Stop()
        self._to(IDLE)

    # -- answering -----------------------------------------------------------------------------

    def _await(self, result: Deferred[Answer], call: Call, close: bool, version: bytes, path: bytes) -> None:
        """A hot route's answer that comes later: its place in the queue is kept."""
        slot = _Slot(None, CLOSE if close else KEEP)
        self._queue(slot)
        result.addErrback(lambda failure: error_answer(failure.value, call)).addCallback(self._answered, slot, version, path)

    def _answered(self, answer: Answer, slot: _Slot, version: bytes, path: bytes) -> None:
        if self.state is CLOSED:
            return
        self.site.on_request(path, answer.status)
        closing = self.site.closing
        if not slot.close and (closing or not self.persistent) and self._pending[-1] is slot and self.state in (IDLE, CLOSING):
            slot.close = CLOSE  # a restart began meanwhile: the last answer in progress closes the connection
        slot.data = encode_answer(answer, version, bool(slot.close), closing)
        if not self._feeding:
            self._advance()
            self._flush()

    def _queue(self, slot: _Slot) -> None:
        """An answer behind those not written yet (or at once, when there are none and it is ready)."""
        pending = self._pending
        if not pending and slot.data is not None:
            self._out.append(slot.data)
            if slot.close:
                self._lose = slot.close
            return
        pending.append(slot)
        if len(pending) >= MAX_PENDING:
            self._pause(_PENDING_FULL)

    def _refuse(self, status: int, phrase: bytes, error: str, reason: str, size: int = 0) -> None:
        """Past a bound, malformed or timed out: a JSON error after the answers before it, then a lingering close."""
        self.log_refusal(status, reason, size)
        self._to(CLOSING)
        self.started = None
        if status not in (408, 413):
            self._discard = LINGER_DISCARD
        self._parser = HttpRequestParser(self)  # what llhttp and httptools held for this request goes now
        self._target, self._fields, self._read, self._body = b"", [], {}, []
        self._queue(_Slot(canned(status, phrase, {"error": error, "reason": reason}), LINGER))

    def log_refusal(self, status: int, reason: str, size: int) -> None:
        if status == 413:
            self.site.logger.warn(
                "request body of {size} bytes from {peer} exceeds max_body_size={limit}: 413",
                size=size,
                peer=self._peer,
                limit=self.max_body,
            )
            return
        self.factory.warn(
            f"refused:{status}", "refused an HTTP request from {peer}: {reason}: {status}", peer=self._peer, reason=reason, status=status
        )

    def _advance(self) -> None:
        """Move every answer at the head of the queue that is ready to the output; hand twisted.web its requests in turn."""
        if self._advancing:
            return
        self._advancing = True
        try:
            pending = self._pending
            out = self._out
            while pending:
                slot = pending[0]
                if slot.data is not None:
                    pending.popleft()
                    if slot.data:
                        out.append(slot.data)
                    if slot.close:
                        self._lose = slot.close
                        pending.clear()
                    continue
                if slot.cold is None:
                    break  # awaited
                if slot.upgrade:
                    pending.popleft()
                    self._flush()
                    self._switch(slot.cold)
                    return
                if slot.handed:
                    break  # twisted.web is answering it
                slot.handed = True
                self._flush()  # what is before it goes out first: twisted.web writes straight to the transport
                self._hand_over(slot.cold)
            if self._paused & _PENDING_FULL and len(pending) < MAX_PENDING // 2:
                self._resume(_PENDING_FULL)
        finally:
            self._advancing = False

    def _flush(self) -> None:
        """Write what is ready, in one write; close when the last answer said so."""
        transport = self._transport
        if transport is None or self.state is SWITCHED:
            return
        out = self._out
        if out:
            data = b"".join(out)  # (one answer: that answer itself, not a copy)
            out.clear()
            # Plain TCP with nothing queued: one send() (with the other writes of this
            # poll's events, after its last), rather than queueing and two epoll
            # changes around a later doWrite (see txinternals.send_now).
            if not (self._direct and send_now(transport, data)):
                transport.write(data)
        if self._lose and not self._pending:
            lose, self._lose = self._lose, KEEP
            if self.state is not CLOSED and self.state is not CLOSING:
                self._to(CLOSING)
            if lose == LINGER:
                self._linger = linger(transport, self.factory.clock, LINGER_SECONDS)
            else:
                transport.loseConnection()

    # -- twisted.web: cold requests and upgrades ---------------------------------------------------

    def _cold_channel(self) -> ApiChannel:
        inner = self._inner
        if inner is None:
            transport = self._transport
            assert transport is not None
            if self._producing:  # twisted.web's channel is the transport's producer from now on
                transport.unregisterProducer()
                self._producing = False
                self._resume(_WRITES_FULL)
            inner = self._inner = self.site.cold_channel(self, transport)
        return inner

    def _hand_over(self, request: bytes) -> None:
        self._cold_channel().dataReceived(request)

    def cold_done(self) -> None:
        """twisted.web has finished the answer to the request at the head of the queue."""
        pending = self._pending
        if self.state is CLOSED or not pending or not pending[0].handed:
            return
        pending[0].data = b""
        if not self._advancing:
            self._advance()
            self._flush()

    def _switch(self, request: bytes) -> None:
        """The Upgrade request reached the head of the queue: the connection is twisted.web's from now on."""
        inner = self._cold_channel()
        inner.take_over()
        self._to(SWITCHED)
        self.site.channels.discard(self)
        self.factory.connections.discard(self)
        held, self._held = b"".join(self._held), []
        self._resume(_UPGRADE_WAITS | _PENDING_FULL)
        inner.dataReceived(request + held)

    # -- timing (the factory's sweep) ------------------------------------------------------------

    def tick(self, now: float, request_timeout: float, idle_timeout: float | None) -> None:
        """408 for a request over ``request_timeout``; close a connection idle over ``idle_timeout``."""
        swept, self._swept = self._swept, now
        started = self.started
        if started is not None:
            if now - started > request_timeout and self.state in (IDLE, HEAD, BODY):
                self._refuse(408, b"Request Timeout", "request_timeout", "the request was not received in time")
                self._advance()
                self._flush()
        elif idle_timeout is not None and self.state is IDLE and not self._pending:
            if self._active:  # a request was completed since the last sweep: idle from that sweep on
                self._active = False
                self.idle_since = swept
            elif now - self.idle_since > idle_timeout:
                self.log.info("closing an idle connection from {peer}", peer=self._peer)
                self._to(CLOSING)
                assert self._transport is not None
                self._transport.loseConnection()

    # -- for the graceful drain and the restart handoff ------------------------------------------

    @property
    def requests(self) -> list[_InProgress]:
        """Requests in progress: being received, or not answered yet."""
        count = len(self._pending) + (self.state is HEAD or self.state is BODY)
        return [_IN_PROGRESS] * count


# (a declaration, not the decorator: a decorator cannot wrap the compiled build's extension type)
classImplements(FrontConnection, IProtocol, ILoggingContext, IPushProducer)


@implementer(IProtocolNegotiationFactory)
class FrontFactory(protocol.ServerFactory):
    """
    The send API listener: :class:`FrontConnection` in front of ``site`` (an
    :class:`~.site.ApiSite` serving every route through twisted.web), with the
    hot routes answered by ``handlers``.
    """

    log = Logger()
    noisy = False

    def __init__(self, site: ApiSite, handlers: Handlers, clock: Clock | None = None) -> None:
        self.site = site
        self.handlers = handlers
        self.clock: Clock = clock or site.clock
        self.trusted = site.trusted_proxies
        #: The routes answered here (method, path) -> handler; any other request goes to twisted.web.
        self.routes: dict[tuple[bytes, bytes], Route] = {
            (b"POST", b"/sendmessage"): handlers.sendmessage,
            (b"POST", b"/sendmessages"): handlers.sendmessages,
            (b"GET", b"/auth"): handlers.auth,
            (b"POST", b"/tickets"): handlers.tickets,
            (b"GET", b"/health"): handlers.health,
            (b"GET", b"/ready"): handlers.ready,
        }
        self.connections: set[FrontConnection] = set()
        self._warn = RateLimited(self.clock, 10.0)
        self._sweep: LoopingCall | None = None

    def acceptableProtocols(self) -> list[bytes]:
        """ALPN over TLS: HTTP/1.1 only."""
        return [b"http/1.1"]

    def buildProtocol(self, addr: IAddress | None) -> FrontConnection:  # type: ignore[override]  # (an IProtocol, not a Protocol)
        connection = FrontConnection(self)
        self.connections.add(connection)
        self.site.channels.add(connection)
        return connection

    def startFactory(self) -> None:
        self.site.doStart()
        self._sweep = LoopingCall(self.sweep)
        self._sweep.clock = self.clock  # type: ignore[assignment]  # (typed as IReactorTime)
        self._sweep.start(min(1.0, self.site.request_timeout / 4), now=False)

    def stopFactory(self) -> None:
        if self._sweep is not None and self._sweep.running:
            self._sweep.stop()
        self._sweep = None
        self.site.doStop()

    def sweep(self) -> None:
        """Once per tick: 408 for requests over ``request_timeout``, close connections idle over ``site.timeOut``."""
        now = self.clock.seconds()
        limit = self.site.request_timeout
        idle = self.site.timeOut
        for connection in list(self.connections):
            connection.tick(now, limit, idle)

    def warn(self, key: str, fmt: str, **fields: object) -> None:
        """A warning about a peer, at most once per 10 s per kind (a flood of bad requests does not flood the log)."""

        def emit(suppressed: int) -> None:
            more = f" ({suppressed} more like it in the last 10 s)" if suppressed else ""
            self.log.warn(fmt + more, **fields)

        self._warn(key, emit)
