"""
Everything in pns4ones that relies on Twisted's private state, in one place.

Twisted does not promise these attributes; an upgrade may rename or remove
them.  ``tests/test_txinternals.py`` pins each one against the installed
Twisted (that it exists, and that it means what we use it for), so that such
an upgrade fails that test loudly instead of silently breaking a fast path or
a restart handoff.  No other module reads or writes an underscore attribute of
a Twisted object (``tests/test_house.py`` checks the source tree).

Attributes relied on:

* ``twisted.internet.tcp.Connection`` (via ``abstract.FileDescriptor``):
  ``dataBuffer`` and ``offset`` (bytes queued for writing and how much of them
  is sent), ``_tempDataBuffer`` and ``_tempDataLen`` (chunks written since the
  last flush into ``dataBuffer``), and ``socket``, ``connected``,
  ``disconnecting`` (public but undocumented);
* ``tcp.Connection`` and ``tcp.Port`` (``tcp._SocketCloser``):
  ``_shouldShutdown`` (closing calls ``shutdown()`` first, which would end
  the connection for every process holding the socket), and ``connectionLost``
  called directly to close one at once (:func:`close_descriptor`);
* ``twisted.protocols.basic.IntNStringReceiver``: ``_unprocessed`` and
  ``_compatibilityOffset`` (bytes received and not yet cut into frames);
* ``twisted.enterprise.adbapi``: ``Connection._connection`` and ``._pool``
  (the DB-API connection and its pool, in :class:`QuietConnection`'s
  rollback) and ``ConnectionPool._close`` (overridden by :class:`QuietPool`);
* ``twisted.internet.epollreactor.EPollReactor``: ``_poller`` (the epoll
  object), ``_selectables`` (fd -> selectable) and ``_doReadOrWrite`` (one
  event's work), and that ``doIteration`` is looked up on the instance each
  turn (:func:`lean_dispatch`);
* ``twisted.web``'s WebSocket wire protocol (``_websocket_impl._WebSocketWireProtocol``):
  ``_textBuffer``, ``_bytesBuffer`` (message reassembly) and ``_wsconn`` (its
  wsproto connection), see :func:`guard_websocket`.
"""

from __future__ import annotations

import errno
from collections.abc import Callable, Iterator
from typing import Protocol, TypeVar

from twisted.enterprise import adbapi
from twisted.internet import error, tcp
from twisted.protocols.basic import IntNStringReceiver
from twisted.python import log
from twisted.python.failure import Failure
from twisted.web._websocket_impl import _WebSocketWireProtocol
from twisted.web.websocket import WebSocketProtocol, WebSocketTransport
from wsproto import WSConnection
from wsproto.connection import Connection as WSProtoConnection
from wsproto.connection import ConnectionState
from wsproto.events import Event

#: The private attributes of a TCP transport this module reads or writes (pinned by the tests).
TCP_ATTRIBUTES = ("dataBuffer", "offset", "_tempDataBuffer", "_tempDataLen", "_shouldShutdown", "socket", "connected", "disconnecting")
#: ... of a listening TCP port.
PORT_ATTRIBUTES = ("_shouldShutdown",)
#: ... of an ``IntNStringReceiver``.
RECEIVER_ATTRIBUTES = ("_unprocessed", "_compatibilityOffset")
#: ... of an ``EPollReactor`` (:func:`lean_dispatch`).
EPOLL_ATTRIBUTES = ("_poller", "_selectables", "_doReadOrWrite", "doIteration", "doPoll")
#: ... of an ``adbapi.Connection``, and the method of ``adbapi.ConnectionPool`` overridden.
ADBAPI_CONNECTION_ATTRIBUTES = ("_connection", "_pool")
ADBAPI_POOL_METHODS = ("_close",)


class _Cork:
    """
    ``held``: the TCP transports written to through :func:`send_now` while the
    lean loop dispatches one poll's events, their bytes held in the
    transport's own queue (None: not dispatching, writes go out at once).
    See :func:`lean_dispatch`.
    """

    __slots__ = ("held",)

    def __init__(self) -> None:
        self.held: dict[tcp.Connection, None] | None = None


_cork = _Cork()

#: Bytes one transport may hold for the end of a poll's events; past it
#: :func:`send_now` declines and the caller's ``transport.write()`` queues the
#: rest as usual (with the producer's flow control).
CORK_LIMIT = 1 << 16
#: Transports held at most: the next one first sends what the others hold, so
#: a large fan-out leaves in runs of this many (its first subscribers do not
#: wait for its last, and each run's transports are still in the caches).
CORK_TRANSPORTS = 64


def send_now(transport: object, data: bytes) -> bool:
    """
    Write path of the hot transports: when nothing is queued on a plain TCP
    transport, hand ``data`` straight to the kernel (one ``send()``), instead
    of queueing it and registering for writability, which costs two epoll
    changes and a later ``doWrite`` per subscriber.  Whatever the kernel does
    not take goes through ``transport.write()`` as usual, keeping order and
    flow control.  Measured: fan-out to 1,000 subscribers went from about
    18,000 to about 92,000 deliveries per second.

    While the lean loop dispatches a poll's events (:func:`lean_dispatch`),
    the bytes wait in the transport's own queue (where ``write()``,
    ``loseConnection()`` and :func:`take_output` see them, in order) and go
    out with one ``send()`` per transport after the last event: every
    answer and frame of one turn of the loop leaves together, so a peer
    asleep in its own poll is woken once for all of them rather than once
    per write (on loopback each wake-up is paid by the sender's core).

    Returns False when the transport is not one this applies to (TLS, memory
    transports, something queued, closing); the caller then writes normally.
    """
    if not isinstance(transport, tcp.Connection):
        return False
    if getattr(transport, "socket", None) is None or not transport.connected or transport.disconnecting:
        return False  # (the socket is deleted once the connection is lost)
    corked = _cork.held
    if corked is not None and transport in corked:
        if transport._tempDataLen >= CORK_LIMIT:
            return False
    elif transport._tempDataBuffer or len(transport.dataBuffer) != transport.offset:
        return False
    elif corked is None:
        _send(transport, data)
        return True
    else:
        if len(corked) >= CORK_TRANSPORTS:
            _uncork(corked)
            corked.clear()
        corked[transport] = None
    transport._tempDataBuffer.append(data)
    transport._tempDataLen += len(data)
    return True


def _send(transport: tcp.Connection, data: bytes) -> None:
    """One ``send()`` of ``data`` on a transport with nothing queued; what the kernel does not take is queued as usual."""
    try:
        sent = transport.socket.send(data)
    except OSError:  # full (BlockingIOError), or broken: doWrite meets the error and reports the loss
        sent = 0
    if sent < len(data):
        transport.write(data[sent:] if sent else data)


def _uncork(corked: dict[tcp.Connection, None]) -> None:
    """Send what :func:`send_now` held during a poll's events: one ``send()`` per transport, the rest queued as usual."""
    for transport in corked:
        try:
            held = transport._tempDataBuffer
            if not held or len(transport.dataBuffer) != transport.offset or not transport.connected or transport.disconnecting:
                continue  # taken (a handoff), dropped (lost, aborted), or a close is flushing it through doWrite
            data = held[0] if len(held) == 1 else b"".join(held)
            held.clear()
            transport._tempDataLen = 0
            _send(transport, data)
        except Exception:
            log.err(system=transport.logPrefix())


def lean_dispatch(reactor: object) -> bool:
    """
    Dispatch the epoll reactor's events without ``log.callWithLogger``: its
    ``doPoll`` wraps every event in a legacy log context (the selectable's
    ``logPrefix()`` pushed as ``system``, three calls deep, about 1.1 µs per
    event, the largest part of Twisted's own cost of a request).  This loop
    calls the same ``_doReadOrWrite`` (which handles a read, a write, a lost
    connection and an exception of a protocol exactly as before) directly,
    and catches what escapes it as ``callWithLogger`` does (logged with the
    selectable's prefix).  What changes: legacy ``twisted.python.log``
    messages emitted inside an event's work name the system ``-`` instead of
    the connection (``twisted.logger`` events, which this project logs with,
    never read that context).  After the last event of a poll it sends what
    :func:`send_now` held meanwhile (one ``send()`` per transport, in the order
    first written).  Returns False, changing nothing, for a reactor that is
    not the epoll reactor (tests, other platforms).
    """
    from twisted.internet.epollreactor import EPollReactor

    if type(reactor) is not EPollReactor:
        return False
    epoll_reactor: EPollReactor = reactor
    do_read_or_write = epoll_reactor._doReadOrWrite

    def do_poll(timeout: float | None) -> None:
        try:
            events = epoll_reactor._poller.poll(-1 if timeout is None else timeout, len(epoll_reactor._selectables))
        except OSError as e:
            if e.errno == errno.EINTR:
                return
            raise
        selectables = epoll_reactor._selectables
        corked: dict[tcp.Connection, None] = {}
        _cork.held = corked
        try:
            for fd, event in events:
                selectable = selectables.get(fd)
                if selectable is None:
                    continue
                try:
                    do_read_or_write(selectable, fd, event)
                except KeyboardInterrupt:
                    raise
                except BaseException:
                    try:
                        prefix = selectable.logPrefix()
                    except BaseException:
                        prefix = "(buggy logPrefix method)"
                    log.err(system=prefix)
        finally:
            _cork.held = None
            if corked:
                _uncork(corked)

    epoll_reactor.doIteration = epoll_reactor.doPoll = do_poll  # type: ignore[method-assign]  # (the point: our loop in its place)
    return True


def take_output(transport: tcp.Connection) -> bytes:
    """
    Stop reading from and writing to a TCP connection and take the bytes
    queued for it that the kernel has not accepted yet, in order, leaving its
    buffer empty: whoever writes them next (another process that now owns the
    socket, or this one again) continues the byte stream exactly where it
    stopped, even in the middle of a frame.
    """
    transport.stopReading()
    transport.stopWriting()
    pending = bytes(transport.dataBuffer[transport.offset :]) + b"".join(transport._tempDataBuffer)
    transport.dataBuffer = b""
    transport.offset = 0
    transport._tempDataBuffer = []
    transport._tempDataLen = 0
    return pending


def set_handed_over(selectable: tcp.Connection | tcp.Port, handed: bool) -> None:
    """
    ``handed``: another process owns this socket now, so closing it here (this
    process exiting) must only drop this process's descriptor, without the
    ``shutdown()`` Twisted does first, which would end the connection (or stop
    the listener) for the other process too.  False undoes it.
    """
    selectable._shouldShutdown = not handed


def close_descriptor(transport: tcp.Connection) -> None:
    """
    Close this process's descriptor of a TCP connection now, writing nothing
    (what is queued is dropped) and without ``shutdown()``, then tell its
    protocol ``connectionLost`` (``ConnectionDone``), as Twisted would.  The
    socket may still be open in another process: the connection ends for the
    peer (end of stream) only once every descriptor of it is closed.  No
    ``SO_LINGER`` either (``abortConnection`` sets it, which would turn that
    last close into a reset).
    """
    transport.stopReading()
    transport.stopWriting()
    transport.dataBuffer = b""
    transport.offset = 0
    transport._tempDataBuffer = []
    transport._tempDataLen = 0
    transport._shouldShutdown = False
    transport.connectionLost(Failure(error.ConnectionDone("closed without shutdown")))


def unparsed_input(receiver: IntNStringReceiver) -> bytes:
    """The bytes an ``IntNStringReceiver`` has received and not yet cut into frames (part of the next frame)."""
    return bytes(receiver._unprocessed[receiver._compatibilityOffset :])


class DBAPIConnection(Protocol):
    """What this module does with a DB-API connection (``sqlite3``'s, ``psycopg``'s)."""

    def rollback(self) -> None: ...
    def close(self) -> None: ...


class QuietConnection(adbapi.Connection):
    """
    A pooled connection whose failed rollback (the database server went away)
    raises nothing: the interaction's own error reaches the caller, and the
    connection is dropped when its pool says it is :meth:`QuietPool.broken`
    (the next interaction opens a new one).  The store reports the outage once.
    """

    def rollback(self) -> None:
        conn: DBAPIConnection | None = self._connection
        if conn is None:  # (never: an adbapi.Connection connects in its constructor)
            return
        try:
            conn.rollback()
        except Exception:  # noqa: S110 (the connection is dropped below when broken; the outage is reported by the store)
            pass
        pool = self._pool
        if isinstance(pool, QuietPool) and pool.broken(conn) and pool.connections.get(pool.threadID()) is conn:
            pool.disconnect(conn)


class QuietPool(adbapi.ConnectionPool):
    """``adbapi.ConnectionPool`` of :class:`QuietConnection`\\s, whose closing of a broken connection logs no traceback."""

    connectionFactory = QuietConnection

    def broken(self, conn: DBAPIConnection) -> bool:
        """Whether ``conn`` (a DB-API connection) is past use; subclasses know their driver."""
        return False

    def _close(self, conn: DBAPIConnection) -> None:
        try:
            conn.close()
        except Exception:  # noqa: S110 (closing a broken connection: nothing left to do)
            pass


# -- twisted.web.websocket ------------------------------------------------------------------
#
# ``twisted.web._websocket_impl._WebSocketWireProtocol`` (what a
# ``WebSocketProtocol``'s ``negotiationStarted`` receives as its transport):
#
# * ``_textBuffer``, ``_bytesBuffer``: message reassembly buffers, unbounded in
#   the library (``Buffer.add`` appends, ``Buffer.done`` takes the whole message);
# * ``_wsconn``: the wsproto ``Connection``; the wire protocol calls its
#   ``receive_data()``, ``events()``, ``send()`` and ``state``, and answers
#   every ``Ping`` event itself (``transport.write(_wsconn.send(ping.response()))``),
#   with no way for the application to refuse or count it.

#: The private attributes of twisted.web's WebSocket wire protocol this module replaces (pinned by the tests).
WS_WIRE_ATTRIBUTES = ("_textBuffer", "_bytesBuffer", "_wsconn")

#: twisted.web's WebSocket wire protocol (its public ``transport`` attribute is what it writes to).
WebSocketWire = _WebSocketWireProtocol[WebSocketProtocol]

S = TypeVar("S", str, bytes | bytearray)


class Reassembly(Protocol[S]):
    """A message reassembly buffer as the wire protocol uses it (``twisted.web._websocket_impl.Buffer``'s methods)."""

    def add(self, new: S) -> None: ...
    def done(self) -> S: ...


class _FilteredConnection:
    """A wsproto ``Connection`` whose ``events()`` drops what ``keep`` refuses."""

    __slots__ = ("_inner", "_keep")

    def __init__(self, inner: WSConnection | WSProtoConnection, keep: Callable[[Event], bool]) -> None:
        self._inner = inner
        self._keep = keep

    @property
    def state(self) -> ConnectionState:
        return self._inner.state

    def receive_data(self, data: bytes | None) -> None:
        self._inner.receive_data(data)

    def send(self, event: Event) -> bytes:
        return bytes(self._inner.send(event))

    def events(self) -> Iterator[Event]:
        keep = self._keep
        for event in self._inner.events():
            if keep(event):
                yield event


def websocket_wire(transport: WebSocketTransport) -> WebSocketWire:
    """The wire protocol behind the ``WebSocketTransport`` a ``WebSocketProtocol``'s ``negotiationStarted`` receives."""
    if not isinstance(transport, _WebSocketWireProtocol):
        raise TypeError(f"not twisted.web's WebSocket wire protocol: {transport!r}")
    return transport


def guard_websocket(
    wire: WebSocketWire, text_buffer: Reassembly[str], bytes_buffer: Reassembly[bytes | bytearray], keep: Callable[[Event], bool]
) -> None:
    """
    Bound and filter what twisted.web's WebSocket wire protocol ``wire`` does
    with a peer's frames: reassemble messages in ``text_buffer`` and
    ``bytes_buffer`` (objects with ``add`` and ``done``, which can refuse to
    grow), and hand it only the wsproto events ``keep(event)`` accepts, so
    that the caller can rate-limit pings (a refused ``Ping`` gets no pong)
    and ignore everything once it has closed the connection.
    """
    # The library types these as its own classes; ours have their methods (add/done; receive_data, events, send, state).
    wire._textBuffer = text_buffer  # type: ignore[assignment]  # (a bounded Buffer in the library's place)
    wire._bytesBuffer = bytes_buffer  # type: ignore[assignment]  # (likewise)
    wire._wsconn = _FilteredConnection(wire._wsconn, keep)  # type: ignore[assignment]  # (a filtering wsproto Connection)
