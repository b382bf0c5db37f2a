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
