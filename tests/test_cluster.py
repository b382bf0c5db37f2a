"""
The README's "Several nodes" recipe, run: two real ``twistd -n pns4ones`` nodes on
one throwaway PostgreSQL (store) and one throwaway redis-server (hub), behind
HAProxy started with ``contrib/haproxy/pns4ones.cfg`` (only its addresses and
ports rewritten to loopback). Clients and senders know nothing but the proxy.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from twisted.trial.unittest import SynchronousTestCase

from pns4ones_client import Subscriber

from .pg_support import PgCluster
from .redis_support import RedisServer
from .support import ADMIN, ServerProcess, free_port, port_open, wait_for, without_id
from .tools import need, require

HAPROXY_CFG = Path(__file__).resolve().parent.parent / "contrib" / "haproxy" / "pns4ones.cfg"
NODES = {"node1": "10.0.0.11", "node2": "10.0.0.12"}


def proxy_config(text: str, addin_port: int, api_port: int, nodes: dict[str, ServerProcess]) -> str:
    """The contrib file with its binds on loopback and each node's real ports."""
    text = text.replace("bind :36695", f"bind 127.0.0.1:{addin_port}").replace("bind :36696", f"bind 127.0.0.1:{api_port}")
    for name, ip in NODES.items():
        node = nodes[name]
        text = text.replace(f"{ip}:36695 check port 36696", f"127.0.0.1:{node.service_port} check port {node.api_port}")
        text = text.replace(f"{ip}:36696", f"127.0.0.1:{node.api_port}")
    settings = "\n".join(line.split("#", 1)[0] for line in text.splitlines())
    if re.search(r"10\.0\.0\.1[12]|:3669[56]\b", settings):
        raise AssertionError(f"contrib/haproxy/pns4ones.cfg changed shape; rewrite it here too:\n{text}")
    return text


def closed(sub: Subscriber) -> bool:
    """Whether the proxy closed this add-in connection (nothing else is expected on it meanwhile)."""
    if not sub.closed_by_server:
        sub.receive(0.05)
    return sub.closed_by_server


class ClusterBehindProxyTests(SynchronousTestCase):
    """One class: one PostgreSQL, one Redis, two nodes, one HAProxy."""

    @classmethod
    def setUpClass(cls) -> None:
        require("postgresql", "redis-server", "haproxy")
        cls._tmp = tempfile.TemporaryDirectory(prefix="pns4ones-cluster-")
        cls.pg: PgCluster | None = None
        cls.redis: RedisServer | None = None
        cls.nodes: dict[str, ServerProcess] = {}
        cls.proxy: subprocess.Popen[bytes] | None = None
        try:
            cls.pg = PgCluster()
            cls.store = cls.pg.url(cls.pg.new_database())
            cls.redis = RedisServer().start()
            created = subprocess.run(
                [ADMIN, "--data-dir", cls._tmp.name, "create", "Shop", "--json", "--store", cls.store],
                capture_output=True,
                text=True,
                timeout=60,
                check=True,
            )
            cls.app = json.loads(created.stdout)
            ini = f"store = {cls.store}\nhub = {cls.redis.url}\ntrusted_proxies = 127.0.0.1/32\nhub_presence_expiry = 3\n"
            ini += f"secrets_key_file = {cls._tmp.name}/secrets.key\n"  # the key file of the store, shared by the nodes
            for name in NODES:
                cls.nodes[name] = ServerProcess(ini=ini, args=["--node_name", name]).start()
            cls.addin_port, cls.api_port = free_port(), free_port()
            cfg = Path(cls._tmp.name) / "haproxy.cfg"
            cfg.write_text(proxy_config(HAPROXY_CFG.read_text(), cls.addin_port, cls.api_port, cls.nodes))
            check = subprocess.run([need("haproxy"), "-c", "-f", str(cfg)], capture_output=True, text=True, timeout=30)
            if check.returncode != 0:
                raise AssertionError(f"haproxy -c refuses the contrib configuration: {check.stdout}{check.stderr}")
            cls.proxy_log = open(Path(cls._tmp.name) / "haproxy.log", "wb")
            cls.proxy = subprocess.Popen([need("haproxy"), "-db", "-f", str(cfg)], stdout=cls.proxy_log, stderr=subprocess.STDOUT)
            wait_for(lambda: port_open(cls.addin_port) and port_open(cls.api_port), 10, what="HAProxy's ports")
            with httpx.Client(timeout=10) as http:
                wait_for(
                    lambda: http.get(f"http://127.0.0.1:{cls.api_port}/ready").status_code == 200,
                    20,
                    interval=0.5,
                    what="/ready through HAProxy",
                )
        except BaseException:
            cls.tearDownClass()
            raise

    @classmethod
    def tearDownClass(cls) -> None:
        if cls.proxy is not None:
            cls.proxy.terminate()
            try:
                cls.proxy.wait(10)
            except subprocess.TimeoutExpired:
                cls.proxy.kill()
            cls.proxy_log.close()
        for node in cls.nodes.values():
            node.cleanup()
        if cls.redis is not None:
            cls.redis.cleanup()
        if cls.pg is not None:
            cls.pg.cleanup()
        cls._tmp.cleanup()

    def setUp(self) -> None:
        self.http = httpx.Client(timeout=10)
        self.addCleanup(self.http.close)
        self.ib = self._testMethodName

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    def send(self, recipient: dict[str, str], topic: str, **message: Any) -> httpx.Response:
        """/auth and /sendmessage through the proxy (round robin: often two different nodes)."""
        token = self.http.get(f"{self.api}/auth", params={"server_key": self.app["server_key"]}).json()["access_token"]
        return self.http.post(
            f"{self.api}/sendmessage",
            json={"Recipient": {"IbId": self.ib, **recipient}, "Message": {"Topic": topic, **message}},
            headers={"Authorization": f"Bearer {token}"},
        )

    def subscribe(self, user: str) -> Subscriber:
        sub = Subscriber("127.0.0.1", self.addin_port, self.app["id"], self.app["client_key"], self.ib, user, "", timeout=5).connect()
        self.addCleanup(sub.close)
        return sub

    def sessions_per_node(self) -> dict[str, int]:
        """Live sessions of this information base on each node, from each node's own /presence."""
        out = {}
        for name, node in self.nodes.items():
            if node.proc is None or node.proc.poll() is not None:
                continue
            token = self.http.get(f"{node.url}/auth", params={"server_key": self.app["server_key"]}).json()["access_token"]
            doc = self.http.get(f"{node.url}/presence/{self.ib}", headers={"Authorization": f"Bearer {token}"}).json()
            out[name] = doc["sessions"]
        return out

    def test_clients_and_senders_through_the_proxy(self) -> None:
        """Add-ins spread over both nodes by the proxy get every send made through it exactly once; reports count both nodes."""
        subs = [self.subscribe(f"u{i}") for i in range(6)]
        wait_for(lambda: set(self.sessions_per_node().values()) == {6}, 10, what="both nodes to see the 6 sessions")
        local = {name: node.log().count("subscription registered") for name, node in self.nodes.items()}
        self.assertTrue(all(local.values()), f"leastconn should use both nodes: {local}")
        for n in range(4):  # round robin: sends through both nodes
            response = self.send({"Type": "all"}, f"all-{n}")
            self.assertEqual(response.status_code, 200, response.text)
            self.assertEqual((response.json()["sessions"], response.json()["users"]), (6, 6))
        response = self.send({"Type": "user", "UserId": "u3"}, "just-u3")
        self.assertEqual(response.json()["sessions"], 1, response.text)
        for i, sub in enumerate(subs):
            expected = [{"topic": f"all-{n}"} for n in range(4)] + ([{"topic": "just-u3"}] if i == 3 else [])
            self.assertEqual([sub.receive(5) for _ in expected], expected, f"u{i}")
            self.assertEqual(sub.receive_all(), [], f"u{i} got a message twice")

    def test_node_stopped_clients_move_to_the_other(self) -> None:
        """A node stopped: the proxy closes its clients, they reconnect through it to the other node; sends keep answering 200 and reach all."""
        users = [f"m{i}" for i in range(4)]
        subs = {user: self.subscribe(user) for user in users}
        wait_for(lambda: set(self.sessions_per_node().values()) == {4}, 10, what="both nodes to see the 4 sessions")
        victim = self.nodes["node2"]
        on_victim = victim.log().count("subscription registered")
        self.assertGreater(on_victim, 0)
        victim.proc.send_signal(signal.SIGTERM)
        victim.proc.wait(30)
        try:
            # Closed clients reconnect, as the add-in does (it retries every few seconds).
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                for user, sub in list(subs.items()):
                    if closed(sub):
                        subs[user] = self.subscribe(user)
                if self.sessions_per_node() == {"node1": 4} and not any(closed(s) for s in subs.values()):
                    break
                time.sleep(0.3)
            self.assertEqual(self.sessions_per_node(), {"node1": 4})
            for n in range(3):
                response = self.send({"Type": "all"}, f"after-{n}")
                self.assertEqual(response.status_code, 200, response.text)
                self.assertEqual(response.json()["sessions"], 4, response.text)
            for user, sub in subs.items():
                got = [m for m in sub.receive_all(1.0) if m.get("topic", "").startswith("after-")]
                self.assertEqual(got, [{"topic": f"after-{n}"} for n in range(3)], user)
        finally:
            victim.start()  # for the other tests of the class

    def test_kept_messages_reach_a_user_on_whichever_node(self) -> None:
        """Messages kept (TTL) for an offline user through either node reach him once, in order, on whichever node he connects to."""
        for n in range(4):  # round robin: kept through both nodes
            response = self.send({"Type": "user", "UserId": "late"}, f"kept-{n}", TTL=600)
            self.assertEqual(response.status_code, 200, response.text)
            self.assertEqual(without_id(response.json()), {"sessions": 0, "users": 0, "stored": True})
        first = self.subscribe("late")
        self.assertEqual([first.receive(5) for _ in range(4)], [{"topic": f"kept-{n}"} for n in range(4)])
        self.assertEqual(first.receive_all(), [])
        first.close()
        second = self.subscribe("late")  # taken once: not again on the next connection
        self.assertEqual(second.receive_all(1.0), [])
