"""Several real ``twistd -n pns4ones`` nodes sharing one store (a SQLite file) and a throwaway redis-server as the hub."""

from __future__ import annotations

import json
import signal
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from twisted.trial.unittest import SkipTest, SynchronousTestCase

from pns4ones_client import Subscriber
from pns4ones_client.web import WebSubscriber, get_ticket

from .redis_support import SKIP, CuttableProxy, RedisServer
from .support import ServerProcess, wait_for, without_id

#: Nodes forget a node that stopped refreshing its presence after this many seconds.
EXPIRY = 2


class NodesBase(SynchronousTestCase):
    """``nodes`` twistd processes (one class: one Redis, one shared store, one application)."""

    nodes = 2

    @classmethod
    def setUpClass(cls) -> None:
        if SKIP:
            raise SkipTest(SKIP)
        cls._tmp = tempfile.TemporaryDirectory(prefix="pns4ones-nodes-")
        cls.redis = RedisServer().start()
        store = Path(cls._tmp.name) / "pns.db"
        cls.ini = f"store = sqlite://{store}\nhub = {cls.redis.url}\nstore_poll_interval = 0.1\nhub_presence_expiry = {EXPIRY}\nrecovery_messages = 50\n"
        cls.ini += f"secrets_key_file = {cls._tmp.name}/secrets.key\n"  # the nodes share the store, hence its key file
        cls.servers: list[ServerProcess] = []
        try:
            for n in range(cls.nodes):
                cls.servers.append(ServerProcess(ini=cls.ini, args=["--node_name", "ABC"[n], *cls.node_args(n)]))
            cls.app = cls.admin("create", "Nodes", "--json")
            for server in cls.servers:
                server.start()
            for server in cls.servers:
                wait_for(lambda server=server: "hub: connected to Redis" in server.log(), 10, what="the hub connection")
        except BaseException:
            cls.tearDownClass()
            raise

    @classmethod
    def node_args(cls, n: int) -> list[str]:
        """More command-line options for node ``n``."""
        return []

    @classmethod
    def admin(cls, *args: str) -> Any:
        server = cls.servers[0]
        out = server.admin(*args, "--config", str(server.ini)).stdout
        return json.loads(out) if "--json" in args else out

    @classmethod
    def tearDownClass(cls) -> None:
        for server in cls.servers:
            server.cleanup()
        cls.redis.cleanup()
        cls._tmp.cleanup()

    def setUp(self) -> None:
        self.http = httpx.Client(timeout=10)
        self.addCleanup(self.http.close)
        self.ib = self._testMethodName  # tests share the nodes: each its own information base

    def token(self, server: ServerProcess) -> str:
        response = self.http.get(f"{server.url}/auth", params={"server_key": self.app["server_key"]})
        self.assertEqual(response.status_code, 200, response.text)
        return str(response.json()["access_token"])

    def post(self, server: ServerProcess, path: str, body: Any) -> httpx.Response:
        return self.http.post(f"{server.url}{path}", json=body, headers={"Authorization": f"Bearer {self.token(server)}"})

    def send(self, server: ServerProcess, recipient: dict[str, str], topic: str, **extra: Any) -> dict[str, Any]:
        response = self.post(server, "/sendmessage", {"Recipient": {"IbId": self.ib, **recipient}, "Message": {"Topic": topic}, **extra})
        self.assertEqual(response.status_code, 200, response.text)
        return dict(response.json())

    def addin(self, server: ServerProcess, user: str, group: str = "") -> Subscriber:
        before = server.log().count("subscription registered")
        sub = Subscriber(
            "127.0.0.1", server.service_port, self.app["id"], self.app["client_key"], self.ib, user, group, timeout=5
        ).connect()
        self.addCleanup(sub.close)
        wait_for(lambda: server.log().count("subscription registered") > before, what=f"registration of {user}")
        return sub

    def presence(self, server: ServerProcess) -> dict[str, Any]:
        response = self.http.get(f"{server.url}/presence/{self.ib}", headers={"Authorization": f"Bearer {self.token(server)}"})
        self.assertEqual(response.status_code, 200, response.text)
        return dict(response.json())

    def wait_sessions(self, server: ServerProcess, sessions: int, timeout: float = 5.0) -> None:
        """Until ``server`` sees ``sessions`` in this information base on all nodes (subscribed there, too)."""
        wait_for(
            lambda: self.presence(server)["sessions"] == sessions, timeout, what=f"{sessions} sessions in the presence seen by {server.url}"
        )


class TwoNodesTests(NodesBase):
    def test_user_group_all_through_the_other_node(self) -> None:
        """An add-in on node A gets user, group (server-side membership set through B) and all sends made through node B."""
        a, b = self.servers
        sub = self.addin(a, "u1")
        self.wait_sessions(b, 1)
        self.assertEqual(without_id(self.send(b, {"Type": "user", "UserId": "u1"}, "one")), {"sessions": 1, "users": 1, "stored": False})
        response = self.http.put(
            f"{b.url}/groups/{self.ib}/sales", json={"UserIds": ["u1", "u9"]}, headers={"Authorization": f"Bearer {self.token(b)}"}
        )
        self.assertEqual(response.status_code, 200, response.text)
        wait_for(
            lambda: (
                "u1"
                in self.http.get(f"{a.url}/groups/{self.ib}/sales", headers={"Authorization": f"Bearer {self.token(a)}"}).json()["UserIds"]
            ),
            what="the membership on node A",
        )
        self.assertEqual(self.send(b, {"Type": "group", "UserGroup": "sales"}, "two")["sessions"], 1)
        self.assertEqual(self.send(b, {"Type": "all"}, "three")["sessions"], 1)
        self.assertEqual([sub.receive(5) for _ in range(3)], [{"topic": "one"}, {"topic": "two"}, {"topic": "three"}])
        self.assertEqual(sub.receive_all(), [])

    def test_websocket_resumes_on_the_other_node(self) -> None:
        """A WebSocket client that reconnects to node B with its last id gets what it missed on A, in order, then live ones."""
        a, b = self.servers
        ticket = get_ticket(a.url, self.token(a), self.ib, "u1")
        sub = WebSubscriber(a.url, ticket, "ws", timeout=5).connect()
        self.addCleanup(sub.close)
        self.assertEqual(sub.receive(5)["event"], "ready")
        self.wait_sessions(b, 1)
        self.send(b, {"Type": "user", "UserId": "u1"}, "first")
        self.assertEqual(sub.messages(1)[0]["topic"], "first")
        resume = sub.last_id
        sub.close()
        self.wait_sessions(b, 0)
        for topic in ("m1", "m2"):
            self.send(a, {"Type": "user", "UserId": "u1"}, topic)
        self.send(b, {"Type": "user", "UserId": "someone else"}, "not mine")
        self.send(a, {"Type": "all"}, "m3")
        again = WebSubscriber(b.url, ticket, "ws", since=resume, timeout=5).connect()
        self.addCleanup(again.close)
        events = [again.receive(5) for _ in range(4)]
        self.assertEqual([e.get("topic", e.get("event")) for e in events], ["m1", "m2", "m3", "ready"])
        ids = [e["id"] for e in events[:3]]
        self.assertEqual(ids, sorted(set(ids)))
        self.assertTrue(all(i > resume for i in ids))
        self.assertEqual(events[3]["id"], ids[-1])  # resume from there
        self.send(a, {"Type": "all"}, "live")
        self.assertEqual(again.messages(1)[0]["topic"], "live")

    def test_client_key_rotation_ends_subscriptions_on_every_node(self) -> None:
        """Rotating the client key through the CLI (the shared store) ends the old-key add-in sessions on both nodes."""
        other = self.admin("create", "Rotated", "--json")
        subs = []
        for server in self.servers:
            wait_for(
                lambda server=server: self.http.get(f"{server.url}/auth", params={"server_key": other["server_key"]}).status_code == 200,
                what="the new application on every node",
            )
            sub = Subscriber("127.0.0.1", server.service_port, other["id"], other["client_key"], self.ib, "u1", "", timeout=5).connect()
            self.addCleanup(sub.close)
            subs.append(sub)
        wait_for(lambda: all(s.log().count(f"app={other['id']}") for s in self.servers), what="both registrations")
        self.admin("upd_cli_key", other["id"])
        for sub in subs:
            self.assertTrue(sub.wait_closed(5), "an old-key subscription is still open")


class ThreeNodesTests(NodesBase):
    nodes = 3

    def test_exactly_once_and_reports_count_all_nodes(self) -> None:
        """Subscribers spread over three nodes each get every send once; the report of a send through A counts B and C."""
        a, b, c = self.servers
        subs = {(n, user): self.addin(server, user, "g") for n, server in enumerate(self.servers) for user in ("u1", "u2")}
        subs[(2, "u1b")] = self.addin(c, "u1")
        for server in self.servers:
            self.wait_sessions(server, 7)
        self.assertEqual(without_id(self.send(a, {"Type": "all"}, "all")), {"sessions": 7, "users": 2, "stored": False})
        self.assertEqual(without_id(self.send(b, {"Type": "user", "UserId": "u1"}, "u1")), {"sessions": 4, "users": 1, "stored": False})
        self.assertEqual(without_id(self.send(c, {"Type": "group", "UserGroup": "g"}, "g")), {"sessions": 6, "users": 2, "stored": False})
        for (_, user), sub in subs.items():
            expected = ["all", "u1", "g"] if user == "u1" else ["all", "g"] if user == "u2" else ["all", "u1"]
            self.assertEqual([m["topic"] for m in sub.receive_all()], expected, user)

    def test_presence_through_any_node_counts_all(self) -> None:
        """/presence through any node lists the users and sessions of every node; a user's sessions name their node."""
        a, b, c = self.servers
        self.addin(a, "u1")
        self.addin(b, "u1")
        self.addin(c, "u2")
        for server in self.servers:
            self.wait_sessions(server, 3)
            doc = self.presence(server)
            self.assertEqual((doc["online"], doc["sessions"]), (2, 3))
            self.assertEqual(doc["users"], [{"UserId": "u1", "sessions": 2}, {"UserId": "u2", "sessions": 1}])
        response = self.http.get(f"{c.url}/presence/{self.ib}/u1", headers={"Authorization": f"Bearer {self.token(c)}"})
        self.assertEqual(sorted(s.get("node", "") for s in response.json()["sessions"]), ["A", "B"])

    def test_zz_killed_node_leaves_presence(self) -> None:
        """A node killed with SIGKILL disappears from the others' presence within the expiry."""
        a, b, c = self.servers
        self.addin(a, "u1")
        self.addin(c, "u2")
        self.wait_sessions(b, 2)
        c.stop(signal.SIGKILL)
        started = time.monotonic()
        for server in (a, b):
            self.wait_sessions(server, 1, timeout=EXPIRY + 3)
            self.assertEqual(self.presence(server)["users"], [{"UserId": "u1", "sessions": 1}])
        self.assertLess(time.monotonic() - started, EXPIRY + 2.5)


class RedisFailureTests(NodesBase):
    def test_redis_restart(self) -> None:
        """Redis killed: sends answer 503 with a JSON reason, /ready 503, subscriptions stay; restarted: sends reach both nodes again."""
        a, b = self.servers
        sub_a = self.addin(a, "u1")
        sub_b = self.addin(b, "u1")
        self.wait_sessions(a, 2)
        token = self.token(a)
        self.redis.kill()
        wait_for(lambda: self.http.get(f"{a.url}/ready").status_code == 503, 5, what="/ready 503")
        wait_for(lambda: self.http.get(f"{b.url}/ready").status_code == 503, 5, what="/ready 503 on B")
        self.assertIn("Redis", self.http.get(f"{a.url}/ready").json()["status"])
        response = self.http.post(
            f"{a.url}/sendmessage",
            json={"Recipient": {"Type": "all", "IbId": self.ib}, "Message": {"Topic": "lost"}},
            headers={"Authorization": f"Bearer {token}"},
        )
        self.assertEqual(response.status_code, 503, response.text)
        self.assertEqual(response.json()["error"], "hub_unavailable")
        self.assertIn("not sent", response.json()["reason"])
        batch = self.http.post(
            f"{a.url}/sendmessages",
            json=[{"Recipient": {"Type": "all", "IbId": self.ib}, "Message": {"Topic": "lost"}}],
            headers={"Authorization": f"Bearer {token}"},
        )
        self.assertEqual(batch.status_code, 200, batch.text)
        self.assertEqual(batch.json()["results"][0]["status"], 503)
        self.assertEqual(batch.json()["accepted"], 0)
        metrics = self.http.get(f"http://127.0.0.1:{a.admin_port}/metrics").text
        self.assertIn("pns4ones_hub_connected 0.0", metrics)
        self.assertIn('pns4ones_hub_publishes_total{result="failed"} 2.0', metrics)
        self.redis.start()
        for server in self.servers:
            wait_for(lambda server=server: self.http.get(f"{server.url}/ready").status_code == 200, 10, what="/ready 200 again")
        self.wait_sessions(a, 2)
        self.assertEqual(without_id(self.send(a, {"Type": "all"}, "back")), {"sessions": 2, "users": 1, "stored": False})
        self.assertEqual(sub_a.receive_all(), [{"topic": "back"}])
        self.assertEqual(sub_b.receive_all(), [{"topic": "back"}])
        self.assertFalse(sub_a.closed_by_server or sub_b.closed_by_server)
        metrics = self.http.get(f"http://127.0.0.1:{a.admin_port}/metrics").text
        self.assertIn("pns4ones_hub_connected 1.0", metrics)
        self.assertIn('pns4ones_hub_publishes_total{result="ok"} 1.0', metrics)
        for server in self.servers:
            log = server.log()
            self.assertEqual(log.count("hub: lost the connection to Redis"), 1, log[-3000:])
            self.assertEqual(log.count("hub: reconnected to Redis"), 1)


class LinkOutageTests(NodesBase):
    """Node A reaches Redis through a relay the test can cut; node B directly."""

    proxy: CuttableProxy

    @classmethod
    def node_args(cls, n: int) -> list[str]:
        if n:
            return []
        cls.proxy = CuttableProxy(cls.redis.port)
        return ["--hub", cls.proxy.url()]

    @classmethod
    def tearDownClass(cls) -> None:
        super().tearDownClass()
        if hasattr(cls, "proxy"):
            cls.proxy.close()

    def test_cut_off_node_replays_to_its_addin_sessions(self) -> None:
        """A node cut off from Redis for a few seconds gives its add-in users what was sent to them meanwhile: once, in order, before newer."""
        a, b = self.servers
        sub = self.addin(a, "u1")
        bystander = self.addin(a, "u2")
        self.wait_sessions(b, 2)
        self.send(b, {"Type": "user", "UserId": "u1"}, "before")
        self.assertEqual(sub.receive(5), {"topic": "before"})
        self.proxy.cut()
        wait_for(lambda: self.http.get(f"{a.url}/ready").status_code == 503, 5, what="node A to notice the cut")
        for topic in ("m1", "m2", "m3"):
            self.send(b, {"Type": "user", "UserId": "u1"}, topic)
        self.send(b, {"Type": "all"}, "to all")
        # A few seconds cut off: long enough for B to forget A's sessions (presence expiry).
        self.wait_sessions(b, 0, timeout=EXPIRY + 5)
        self.proxy.restore()
        wait_for(lambda: self.http.get(f"{a.url}/ready").status_code == 200, 15, what="node A back and caught up")
        self.send(b, {"Type": "user", "UserId": "u1"}, "after")
        got = [sub.receive(5) for _ in range(5)]
        self.assertEqual([m and m["topic"] for m in got], ["m1", "m2", "m3", "to all", "after"])
        self.assertEqual(bystander.receive(5), {"topic": "to all"})
        # Once: a marker sent now is the next thing both read.
        self.send(b, {"Type": "all"}, "marker")
        self.assertEqual((sub.receive(5), bystander.receive(5)), ({"topic": "marker"}, {"topic": "marker"}))
        self.assertFalse(sub.closed_by_server or bystander.closed_by_server)
        self.assertIn("caught up after the outage: 4 messages", a.log())


class TLSTests(SynchronousTestCase):
    def test_rediss_checks_the_certificate(self) -> None:
        """rediss:// with ca_file: the node connects over TLS and sends work; with another CA it stays unready and says why."""
        if SKIP:
            raise SkipTest(SKIP)
        from .pki import PKI

        tmp = tempfile.TemporaryDirectory(prefix="pns4ones-rediss-")
        self.addCleanup(tmp.cleanup)
        directory = Path(tmp.name)
        ca, other = PKI(), PKI("someone else")
        (directory / "ca.pem").write_bytes(ca.root_pem)
        (directory / "other.pem").write_bytes(other.root_pem)
        redis = RedisServer(tls=ca.server(names=("127.0.0.1",)).write(directory, "redis"))
        self.addCleanup(redis.cleanup)
        try:
            redis.start()
        except AssertionError as e:
            raise SkipTest(f"this redis-server has no TLS: {e}") from None
        good = ServerProcess(ini=f"hub = {redis.url}?ca_file={directory / 'ca.pem'}\n")
        bad = ServerProcess(ini=f"hub = {redis.url}?ca_file={directory / 'other.pem'}\n")
        for server in (good, bad):
            self.addCleanup(server.cleanup)
        app = good.create_app()
        good.start()
        bad.start()
        http = httpx.Client(timeout=10)
        self.addCleanup(http.close)
        wait_for(lambda: http.get(f"{good.url}/ready").status_code == 200, 10, what="the node over TLS")
        sub = Subscriber("127.0.0.1", good.service_port, app["id"], app["client_key"], "ib", "u1", "", timeout=5).connect()
        self.addCleanup(sub.close)
        wait_for(lambda: "subscription registered" in good.log(), what="the registration")
        token = http.get(f"{good.url}/auth", params={"server_key": app["server_key"]}).json()["access_token"]
        auth = {"Authorization": f"Bearer {token}"}
        # The registration is logged before the session joins the hub (its catch-up asks Redis first): wait until it is live.
        wait_for(lambda: http.get(f"{good.url}/presence/ib", headers=auth).json()["sessions"] == 1, 10, what="the session in the presence")
        response = http.post(
            f"{good.url}/sendmessage",
            json={"Recipient": {"Type": "user", "IbId": "ib", "UserId": "u1"}, "Message": {"Topic": "tls"}},
            headers=auth,
        )
        self.assertEqual(response.status_code, 200, response.text)
        self.assertEqual(response.json()["sessions"], 1, response.text)
        self.assertEqual(sub.receive(5), {"topic": "tls"})
        doc = http.get(f"{bad.url}/ready").json()
        self.assertEqual(doc, {"ready": False, "status": f"hub connecting to Redis at rediss://127.0.0.1:{redis.port}/0"})
        wait_for(lambda: "hub: cannot connect to Redis" in bad.log(), 5, what="the refusal in the log")
        self.assertIn("certificate verify failed", bad.log())
        self.assertEqual(bad.log().count("hub: cannot connect to Redis"), 1)
