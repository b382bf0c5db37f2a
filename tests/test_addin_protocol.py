"""The add-in TCP protocol over an in-memory transport: framing, registration, bounds."""

from __future__ import annotations

import struct

from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.trial.unittest import SynchronousTestCase

from pns4ones import config, wire
from pns4ones.core import Core
from pns4ones.hub import Outbound
from pns4ones.hub.local import LocalHub
from pns4ones.messages import Message, Recipient
from pns4ones.store import Application, Snapshot
from pns4ones.transports.addin import AddinFactory

from .vectors import WIRE

KEY = wire.ClientKey.decode(WIRE["client_key"]["base64"])
APP = Application("app", "Test", "s" * 64, KEY, 0.0)
OTHER = Application("other", "Other", "t" * 64, wire.ClientKey.generate(), 0.0)


def good_frame(user: str = "u1", group: str = "") -> bytes:
    return wire.encode_registration(KEY, "app", "ib", user, group)


class ProtocolTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = MemoryReactorClock()
        self.core = Core(store=None, hub=LocalHub(), clock=self.clock)  # type: ignore[arg-type]
        self.core.apply_snapshot(Snapshot((APP, OTHER), ()))
        self.cfg = config.build(
            {"config": "/dev/null", "data_dir": "/nonexistent", "registration_timeout": "5", "send_buffer_limit": "1000"}
        )
        self.factory = AddinFactory(self.core, self.cfg, self.clock)

    def connect(self, host: str = "127.0.0.1") -> tuple[object, StringTransport]:
        proto = self.factory.buildProtocol(IPv4Address("TCP", host, 40000))
        transport = StringTransport(peerAddress=IPv4Address("TCP", host, 40000))
        proto.makeConnection(transport)
        return proto, transport

    def send(self, user: str) -> int:
        return self.core.hub.route("app", Recipient("user", "ib", user), Outbound(Message(topic="Hello"))).sessions

    def test_vector_frame_byte_by_byte(self) -> None:
        """The vector registration fed one byte at a time registers; the next send is the vector frame."""
        proto, transport = self.connect()
        for byte in bytes.fromhex(WIRE["registration_frames"][1]["frame_hex"]):
            proto.dataReceived(bytes([byte]))
        self.assertEqual(len(self.core.hub), 1)
        self.assertEqual(self.send("u1"), 1)
        self.assertEqual(transport.value().hex(), WIRE["message_frames"][0]["frame_hex"])
        self.assertFalse(transport.disconnecting)

    def test_illegal_frames_disconnect(self) -> None:
        """Bad signature, unknown app, missing NULs, oversized length: disconnected, nothing registered."""
        bad = [
            wire.encode_registration(wire.ClientKey.generate(), "app", "ib", "u"),
            wire.encode_registration(KEY, "nope", "ib", "u"),
            struct.pack("<H", 36) + struct.pack("<H", 32) + bytes(32) + b"ab",
            struct.pack("<H", 65000),
        ]
        for data in bad:
            proto, transport = self.connect()
            proto.dataReceived(data)
            self.assertTrue(transport.disconnecting, data[:8])
        self.assertEqual(len(self.core.hub), 0)

    def test_registration_timeout(self) -> None:
        """A connection that does not register in time is closed; a registered one is not."""
        _, silent_t = self.connect()
        ok, ok_t = self.connect()
        ok.dataReceived(good_frame())
        self.clock.advance(5.1)
        self.assertTrue(silent_t.disconnecting)
        self.assertFalse(ok_t.disconnecting)

    def test_slow_reader_cut_at_bound(self) -> None:
        """A subscriber whose transport is paused is cut once more than send_buffer_limit is queued."""
        slow, slow_t = self.connect()
        fast, fast_t = self.connect()
        slow.dataReceived(good_frame("u1"))
        fast.dataReceived(good_frame("u1"))
        slow.pauseProducing()  # what the transport does when its buffer is full
        sent = 0
        while not slow_t.disconnecting and sent < 100:
            self.send("u1")
            sent += 1
        self.assertTrue(slow_t.disconnecting)
        self.assertLess(sent * 40, 1000 + 200)
        self.assertFalse(fast_t.disconnecting)
        self.assertEqual(len(fast_t.value()), 40 * sent)
        self.assertEqual(len(self.core.hub), 1)

    def test_rotation_ends_old_key_sessions(self) -> None:
        """A snapshot with a new client key ends that application's sessions only."""
        proto, transport = self.connect()
        proto.dataReceived(good_frame())
        other, other_t = self.connect()
        other.dataReceived(wire.encode_registration(OTHER.client_key, "other", "ib", "u"))
        rotated = Application("app", "Test", APP.server_key, wire.ClientKey.generate(), 0.0)
        self.core.apply_snapshot(Snapshot((rotated, OTHER), ()))
        self.assertTrue(transport.disconnecting)
        self.assertFalse(other_t.disconnecting)
        self.assertEqual(len(self.core.hub), 1)

    def test_allow_list_and_limit(self) -> None:
        """service_allow refuses other networks; max_subscriptions refuses connections beyond it."""
        cfg = config.build({"config": "/dev/null", "data_dir": "/x", "service_allow": "10.1.0.0/16", "max_subscriptions": "1"})
        self.factory = AddinFactory(self.core, cfg, self.clock)
        self.assertIsNone(self.factory.buildProtocol(IPv4Address("TCP", "192.168.1.5", 40000)))  # closed by the listener
        _, t2 = self.connect("10.1.2.3")
        self.assertFalse(t2.disconnecting)
        self.assertIsNone(self.factory.buildProtocol(IPv4Address("TCP", "10.1.2.4", 40000)))
