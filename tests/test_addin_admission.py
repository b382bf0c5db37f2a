"""The add-in listener's bounds before registration: unregistered caps per address and in all, the descriptor reserve."""

from __future__ import annotations

import json
import os
import socket
import sys
import time
import urllib.request
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from pns4ones import config, wire
from pns4ones.core import Core
from pns4ones.hub.local import LocalHub
from pns4ones.store import Application, Snapshot
from pns4ones.transports.addin import AddinFactory, descriptor_budget
from pns4ones_client import Subscriber

from .support import ServerProcess, wait_for

KEY = wire.ClientKey(bytes(range(32)), bytes(range(16)))
APP = Application("app", "App", "s" * 64, KEY, 0.0)


class AdmissionTests(SynchronousTestCase):
    """The factory with memory transports and a fake clock; the real metrics registry."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.core = Core(store=None, hub=LocalHub(), clock=self.clock)  # type: ignore[arg-type]
        self.core.apply_snapshot(Snapshot((APP,), ()))
        self.factory = self.make({"max_unregistered": "5", "max_unregistered_per_address": "3"})

    def make(self, options: dict[str, str]) -> AddinFactory:
        from pns4ones.metrics import Metrics

        cfg = config.build({"config": "/dev/null", "data_dir": "/nonexistent", **options})
        factory = AddinFactory(self.core, cfg, self.clock)
        factory.metrics = Metrics(self.clock)
        self.addCleanup(factory.stop)
        return factory

    def refused(self, factory: AddinFactory, reason: str) -> float:
        value = factory.metrics.registry.get_sample_value("pns4ones_addin_refused_total", {"reason": reason})  # type: ignore[attr-defined]
        return float(value or 0)

    def connect(self, host: str, factory: AddinFactory | None = None) -> tuple[Any, StringTransport] | None:
        factory = factory or self.factory
        proto = factory.buildProtocol(IPv4Address("TCP", host, 40000))
        if proto is None:
            return None
        transport = StringTransport(peerAddress=IPv4Address("TCP", host, 40000))
        proto.makeConnection(transport)
        return proto, transport

    def test_per_address_cap_and_eviction(self) -> None:
        """At max_unregistered_per_address a newcomer is refused while the waiting ones are young; later the oldest makes room."""
        first = [self.connect("10.0.0.1") for _ in range(3)]
        self.assertNotIn(None, first)
        self.assertIsNone(self.connect("10.0.0.1"))
        self.assertEqual(self.refused(self.factory, "unregistered-per-address"), 1)
        self.assertIsNotNone(self.connect("10.0.0.2"))  # another address is not affected
        self.clock.advance(1.5)
        newcomer = self.connect("10.0.0.1")
        self.assertIsNotNone(newcomer)
        oldest = first[0]
        assert oldest is not None
        self.assertTrue(oldest[1].disconnecting)
        self.assertFalse(first[1][1].disconnecting)  # type: ignore[index]
        self.assertEqual(self.refused(self.factory, "evicted"), 1)
        self.assertEqual(self.factory.unregistered, 4)

    def test_total_cap(self) -> None:
        """At max_unregistered in all, newcomers from any address are refused until the oldest waiting one has waited a second."""
        for n in range(5):
            self.assertIsNotNone(self.connect(f"10.0.1.{n}"))
        self.assertIsNone(self.connect("10.0.2.1"))
        self.assertEqual(self.refused(self.factory, "unregistered-total"), 1)
        self.clock.advance(1.5)
        self.assertIsNotNone(self.connect("10.0.2.1"))
        self.assertEqual(self.factory.unregistered, 5)

    def test_burst_from_one_address_admitted(self) -> None:
        """With the defaults, 500 connections from one address accepted before any registration is read (a NAT reconnecting) all get in."""
        factory = self.make({})
        made = [self.connect("10.0.9.9", factory) for _ in range(500)]
        self.assertNotIn(None, made)
        self.assertEqual(factory.unregistered, 500)

    def test_registered_do_not_count(self) -> None:
        """A connection that registers leaves the unregistered count; only waiting ones take the places."""
        for n in range(3):
            made = self.connect("10.0.0.1")
            assert made is not None
            made[0].dataReceived(wire.encode_registration(KEY, "app", "ib", f"u{n}"))
        self.assertEqual(self.factory.unregistered, 0)
        self.assertEqual(len(self.core.hub), 3)
        for _ in range(3):
            self.assertIsNotNone(self.connect("10.0.0.1"))
        self.assertIsNone(self.connect("10.0.0.1"))

    def test_timeout_frees_places(self) -> None:
        """The registration sweep closes silent connections and gives their places back."""
        made = [self.connect("10.0.0.1") for _ in range(3)]
        self.clock.advance(self.factory.config.registration_timeout + 1.1)
        for item in made:
            assert item is not None
            self.assertTrue(item[1].disconnecting)
            item[0].connectionLost(None)
        self.assertEqual(self.factory.unregistered, 0)
        self.assertIsNotNone(self.connect("10.0.0.1"))

    def test_descriptor_reserve(self) -> None:
        """A new connection is refused when the lowest free descriptor is within fd_reserve of the open-file limit."""
        probe = os.dup(0)
        os.close(probe)
        factory = self.make({"max_unregistered": "1000"})
        factory.fd_limit, factory.fd_reserve = probe + 500, 100
        self.assertIsNotNone(self.connect("10.0.0.1", factory))
        factory.fd_limit, factory.fd_reserve = probe + 50, 100
        self.assertIsNone(self.connect("10.0.0.1", factory))
        self.assertEqual(self.refused(factory, "fd-reserve"), 1)
        self.clock.advance(1.5)  # the first one has waited long enough to give its place
        self.assertIsNotNone(self.connect("10.0.0.2", factory))
        self.assertEqual(self.refused(factory, "evicted"), 1)
        self.assertEqual(factory.unregistered, 1)

    def test_budget(self) -> None:
        """fd_reserve 0 means a tenth of the open-file limit, at least 50 and at most 1000; never over half the limit."""
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        limit, reserve = descriptor_budget(0)
        self.assertEqual(limit, soft)
        self.assertEqual(reserve, min(1000, max(50, soft // 10), soft // 2))
        self.assertEqual(descriptor_budget(7)[1], 7)
        self.assertEqual(descriptor_budget(10**6)[1], soft // 2)


def _limited(nofile: int) -> list[str]:
    """A command prefix that starts the server with RLIMIT_NOFILE lowered to ``nofile``."""
    code = "import os, resource, sys; resource.setrlimit(resource.RLIMIT_NOFILE, (%d, %d)); os.execv(sys.argv[1], sys.argv[1:])"
    return [sys.executable, "-c", code % (nofile, nofile)]


class LimitedServer(ServerProcess):
    """The real twistd with a low open-file limit (the 20,000-connection scenario at a hundredth of the scale)."""

    nofile = 400

    def command(self) -> list[str]:
        return [*_limited(self.nofile), *super().command()]


class IdleFloodTests(SynchronousTestCase):
    """A flood of add-in connections that never register, against the real server with an open-file limit of 400."""

    def setUp(self) -> None:
        self.server = LimitedServer(args=["--registration_timeout", "60"])
        self.addCleanup(self.server.cleanup)
        self.app = self.server.create_app("Flood")
        self.server.start()
        self.socks: list[socket.socket] = []
        self.addCleanup(self.close_all)

    def close_all(self) -> None:
        for sock in self.socks:
            sock.close()

    def flood(self, count: int, sources: int) -> None:
        """``count`` idle connections to the add-in port from ``sources`` loopback addresses (connect only, never a byte)."""
        for n in range(count):
            sock = socket.socket()
            sock.bind((f"127.0.{10 + n % sources}.1", 0))
            sock.setblocking(False)
            try:
                sock.connect(("127.0.0.1", self.server.service_port))
            except BlockingIOError:
                pass
            self.socks.append(sock)
        time.sleep(1.0)

    def health(self) -> int:
        with urllib.request.urlopen(f"{self.server.url}/health", timeout=5) as response:
            return int(response.status)

    def admin_page(self, path: str) -> tuple[int, str]:
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.server.admin_port}{path}", headers={"Host": f"127.0.0.1:{self.server.admin_port}"}
        )
        with urllib.request.urlopen(request, timeout=5) as response:
            return int(response.status), response.read().decode()

    def send(self, user: str) -> dict[str, Any]:
        with urllib.request.urlopen(f"{self.server.url}/auth?server_key={self.app['server_key']}", timeout=5) as response:
            token = json.loads(response.read())["access_token"]
        body = json.dumps({"Recipient": {"Type": "user", "IbId": "ib", "UserId": user}, "Message": {"Topic": "hi"}}).encode()
        request = urllib.request.Request(
            f"{self.server.url}/sendmessage", data=body, headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=5) as response:
            return dict(json.loads(response.read()))

    def test_idle_flood_leaves_the_service_working(self) -> None:
        """600 idle add-in connections (more than the 400 descriptors): /health, /auth, sends, the panel and 1C clients keep working."""
        registered = Subscriber("127.0.0.1", self.server.service_port, self.app["id"], self.app["client_key"], "ib", "before", timeout=5)
        registered.connect()
        self.addCleanup(registered.close)
        wait_for(lambda: "user=before" in self.server.log(), what="the first registration")
        self.flood(600, sources=30)
        self.assertEqual(self.health(), 200)
        self.assertEqual(self.admin_page("/login")[0], 200)
        self.assertEqual(self.send("before")["sessions"], 1)
        self.assertEqual(registered.receive(5), {"topic": "hi"})
        late = Subscriber("127.0.0.1", self.server.service_port, self.app["id"], self.app["client_key"], "ib", "after", timeout=5)
        late.connect()
        self.addCleanup(late.close)
        wait_for(lambda: self.send("after")["sessions"] == 1, what="a 1C client connecting during the flood")
        assert self.server.proc is not None
        self.assertIsNone(self.server.proc.poll())
        self.assertLess(len(os.listdir(f"/proc/{self.server.proc.pid}/fd")), self.server.nofile - 20)
        log = self.server.log()
        self.assertNotIn("EMFILE", log)
        self.assertNotIn("Traceback", log)
        _, metrics = self.admin_page("/metrics")
        refused = sum(float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines() if line.startswith("pns4ones_addin_refused_total{"))
        self.assertGreater(refused, 0, metrics)
        self.assertIn("add-in connection from", log)
