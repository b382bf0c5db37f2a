"""
Pins the private Twisted state that :mod:`pns4ones.txinternals` relies on, so a
Twisted upgrade that changes it fails here, by name, instead of breaking a fast
path or a restart handoff in production.
"""

from __future__ import annotations

import socket
from collections.abc import Generator
from typing import Any

from twisted.internet import defer, protocol, reactor, tcp
from twisted.trial.unittest import TestCase

from pns4ones import txinternals


class _Keep(protocol.Protocol):
    def connectionMade(self) -> None:
        self.factory.made.callback(self)  # type: ignore[attr-defined]


class TcpTransportTests(TestCase):
    @defer.inlineCallbacks
    def setUp(self) -> Generator[Any, Any, None]:
        factory = protocol.ServerFactory()
        factory.protocol = _Keep
        factory.made = defer.Deferred()  # type: ignore[attr-defined]
        self.port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.client = socket.create_connection(("127.0.0.1", self.port.getHost().port))
        self.client.settimeout(5)
        self.proto = yield factory.made
        self.transport = self.proto.transport

    def tearDown(self) -> defer.Deferred[None]:
        self.client.close()
        self.transport.abortConnection()
        return defer.maybeDeferred(self.port.stopListening)

    def test_attributes_exist(self) -> None:
        """Every private attribute txinternals reads is on the installed Twisted's TCP transport."""
        self.assertIsInstance(self.transport, tcp.Connection)
        for name in txinternals.TCP_ATTRIBUTES:
            self.assertTrue(hasattr(self.transport, name), f"twisted.internet.tcp.Connection has no {name!r}: update pns4ones.txinternals")
        self.assertIsInstance(self.transport.dataBuffer, bytes)
        self.assertIsInstance(self.transport._tempDataBuffer, list)
        self.assertIsInstance(self.transport.offset, int)

    def test_send_now_writes_at_once_when_idle(self) -> None:
        """With nothing queued, send_now hands the bytes to the kernel in the same call (the peer can read them before the reactor runs)."""
        self.assertTrue(txinternals.send_now(self.transport, b"hello"))
        self.assertEqual(self.client.recv(5), b"hello")

    def test_send_now_keeps_order_behind_queued_bytes(self) -> None:
        """With bytes queued by transport.write, send_now declines, so the caller queues behind them."""
        self.transport.write(b"first")
        self.assertFalse(txinternals.send_now(self.transport, b"second"))


class _Recorder:
    """The smallest WebSocketProtocol: guards its wire and records what it is given."""

    def __init__(self, keep: Any) -> None:
        self.keep = keep
        self.texts: list[str] = []

    def negotiationStarted(self, transport: Any) -> None:
        txinternals.guard_websocket(transport, _Capped(""), _Capped(b""), self.keep)

    def negotiationFinished(self) -> None:
        pass

    def textMessageReceived(self, message: str) -> None:
        self.texts.append(message)

    def bytesMessageReceived(self, data: bytes) -> None:
        pass

    def pongReceived(self, payload: bytes) -> None:
        pass

    def connectionLost(self, reason: Any) -> None:
        pass


class _Capped:
    """A reassembly buffer that keeps at most 4 units."""

    def __init__(self, empty: Any) -> None:
        self.data = empty

    def add(self, new: Any) -> None:
        self.data = (self.data + new)[:4]

    def done(self) -> Any:
        data, self.data = self.data, self.data[0:0]
        return data


class WebSocketWireTests(TestCase):
    def wire(self, keep: Any) -> tuple[Any, Any, _Recorder]:
        from twisted.internet.testing import StringTransport
        from twisted.web import _websocket_impl
        from wsproto import Connection, ConnectionType

        recorder = _Recorder(keep)
        wire = _websocket_impl._WebSocketWireProtocol(Connection(ConnectionType.SERVER), _websocket_impl.serverBootstrap, recorder)
        transport = StringTransport()
        wire.makeConnection(transport)
        return wire, transport, recorder

    def test_attributes_exist(self) -> None:
        """The WebSocket wire protocol still has the private attributes guard_websocket replaces."""
        wire, _, _ = self.wire(lambda event: True)
        for name in txinternals.WS_WIRE_ATTRIBUTES:
            self.assertTrue(hasattr(wire, name), f"twisted's WebSocket wire protocol has no {name!r}: update pns4ones.txinternals")

    def test_guard_filters_pings_and_bounds_messages(self) -> None:
        """A ping the filter refuses gets no pong (the library answers the others itself); messages go through the given buffers."""
        from wsproto import Connection, ConnectionType
        from wsproto.events import Ping, TextMessage

        seen: list[Any] = []

        def keep(event: Any) -> bool:
            seen.append(event)
            return not (isinstance(event, Ping) and event.payload == b"no")

        wire, transport, recorder = self.wire(keep)
        client = Connection(ConnectionType.CLIENT)
        wire.dataReceived(client.send(Ping(b"yes")) + client.send(Ping(b"no")) + client.send(TextMessage("abcdefgh")))
        client.receive_data(transport.value())
        answered = [e.payload for e in client.events()]
        self.assertEqual(answered, [b"yes"])
        self.assertEqual(len(seen), 3)
        self.assertEqual(recorder.texts, ["abcd"])
