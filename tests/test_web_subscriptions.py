"""WebSocket and SSE subscriptions on the real twistd: tickets, fan-out with add-in sessions, pings, limits, resume, wss://."""

from __future__ import annotations

import base64
import json
import socket
import ssl
import time
from pathlib import Path
from typing import Any

import httpx
from twisted.trial.unittest import SynchronousTestCase
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect as ws_connect

from pns4ones.hub import Outbound
from pns4ones.hub.recovery import Recovery
from pns4ones.messages import Message, Recipient
from pns4ones_client import Subscriber
from pns4ones_client.web import WebSubscriber, get_ticket

from .support import ServerProcess, wait_for, without_id


class WebBase(SynchronousTestCase):
    """One real server for the whole class (starting one costs more than most tests)."""

    ini = ""
    args: list[str] = [
        "--ticket_max_ttl", "60",
        "--allowed_origins", "https://erp.example.com, http://127.0.0.1:1",
        "--ws_ping_interval", "0.3", "--ws_ping_timeout", "0.5",
        "--sse_heartbeat", "0.3",
        "--recovery_messages", "5",
        "--send_buffer_limit", "64K",
    ]  # fmt: skip
    server: ServerProcess

    @classmethod
    def setUpClass(cls) -> None:
        cls.server = ServerProcess(ini=cls.ini, args=cls.args)
        cls.prepare(cls.server.dir)
        cls.app = cls.server.create_app("Web")
        cls.other = cls.server.create_app("Other")
        cls.revoked = cls.server.create_app("Revoked")
        try:
            cls.server.start()
        except BaseException:
            cls.server.cleanup()
            raise

    @classmethod
    def prepare(cls, directory: Path) -> None:
        """Write files the server needs before it starts."""

    @classmethod
    def tearDownClass(cls) -> None:
        cls.server.cleanup()

    def setUp(self) -> None:
        self.http = httpx.Client(timeout=10, verify=self.verify())
        self.addCleanup(self.http.close)
        self.ib = self._testMethodName  # tests share the server: each its own information base

    def verify(self) -> Any:
        return True

    @property
    def url(self) -> str:
        return self.server.url

    def token(self, app: dict[str, str] | None = None) -> str:
        response = self.http.get(f"{self.url}/auth", params={"server_key": (app or self.app)["server_key"]})
        self.assertEqual(response.status_code, 200, response.text)
        return str(response.json()["access_token"])

    def ticket(
        self,
        user: str = "u1",
        ib: str | None = None,
        groups: list[str] | None = None,
        ttl: int | None = None,
        app: dict[str, str] | None = None,
    ) -> str:
        return get_ticket(self.url, self.token(app), ib or self.ib, user, groups, ttl, verify=self.verify())

    def send(self, recipient: dict[str, str], topic: str, app: dict[str, str] | None = None, ttl: float = 0) -> dict[str, Any]:
        message: dict[str, Any] = {"Topic": topic, "TTL": ttl} if ttl else {"Topic": topic}
        body = {"Recipient": {"IbId": self.ib, **recipient}, "Message": message}
        response = self.http.post(f"{self.url}/sendmessage", json=body, headers={"Authorization": f"Bearer {self.token(app)}"})
        self.assertEqual(response.status_code, 200, response.text)
        return dict(response.json())

    def subscriber(self, transport: str, ticket: str | None = None, **kwargs: Any) -> WebSubscriber:
        before = self.server.log().count(f"transport={transport}")
        sub = WebSubscriber(self.url, ticket or self.ticket(), transport, timeout=5, **kwargs).connect()
        self.addCleanup(sub.close)
        ready = sub.receive(5)
        while ready.get("event") != "ready":
            ready = sub.receive(5)
        wait_for(lambda: self.server.log().count(f"transport={transport}") > before, what="the registration log line")
        return sub

    def attempt(self, transport: str, ticket: str, **kwargs: Any) -> tuple[int, dict[str, Any]]:
        """Status and JSON body of a subscription attempt (200 and {} when accepted)."""
        try:
            WebSubscriber(self.url, ticket, transport, timeout=5, **kwargs).connect().close()
        except InvalidStatus as e:
            return e.response.status_code, json.loads(e.response.body or b"{}")
        except httpx.HTTPStatusError as e:
            return e.response.status_code, json.loads(e.response.content or b"{}")
        return 200, {}

    def refused(self, transport: str, ticket: str, **kwargs: Any) -> tuple[int, dict[str, Any]]:
        status, doc = self.attempt(transport, ticket, **kwargs)
        self.assertNotEqual(status, 200, f"{transport} subscription was accepted")
        return status, doc


class FanOutTests(WebBase):
    def test_one_user_three_transports(self) -> None:
        """An add-in, a WebSocket and an SSE session of one user each get every message exactly once, and sends count them."""
        addin = Subscriber(
            "127.0.0.1", self.server.service_port, self.app["id"], self.app["client_key"], self.ib, "u1", "", timeout=5
        ).connect()
        self.addCleanup(addin.close)
        wait_for(lambda: "subscription registered" in self.server.log(), what="the add-in registration")
        ws = self.subscriber("ws")
        sse = self.subscriber("sse")
        for n in range(3):
            self.assertEqual(without_id(self.send({"Type": "user", "UserId": "u1"}, f"m{n}")), {"sessions": 3, "users": 1, "stored": False})
        self.send({"Type": "all"}, "end")
        self.assertEqual([addin.receive(5) for _ in range(4)], [{"topic": f"m{n}"} for n in range(3)] + [{"topic": "end"}])
        for sub in (ws, sse):
            got = sub.messages(4)
            self.assertEqual([m["topic"] for m in got], ["m0", "m1", "m2", "end"])
            ids = [m["id"] for m in got]
            self.assertEqual(ids, sorted(set(ids)))
        # The same ids on both web transports: one id per message, node-wide.
        self.assertEqual(ws.last_id, sse.last_id)
        log = self.server.log()
        for transport in ("tcp", "ws", "sse"):
            self.assertIn(f"user=u1 group= transport={transport}", log)

    def test_groups_and_other_users(self) -> None:
        """Group sends reach tickets listing the group; other users and other information bases get nothing."""
        ws = self.subscriber("ws", self.ticket("u1", groups=["sales", "Склад"]))
        other = self.subscriber("sse", self.ticket("u2", ib="ib2-" + self.ib))
        self.assertEqual(without_id(self.send({"Type": "group", "UserGroup": "Склад"}, "g1")), {"sessions": 1, "users": 1, "stored": False})
        self.assertEqual(self.send({"Type": "group", "UserGroup": "sales"}, "g2")["sessions"], 1)
        self.assertEqual(self.send({"Type": "user", "UserId": "u2"}, "not for ib2")["sessions"], 0)
        self.assertEqual([m["topic"] for m in ws.messages(2)], ["g1", "g2"])
        self.assertEqual(self.send({"Type": "all", "IbId": "ib2-" + self.ib}, "ib2")["sessions"], 1)
        self.assertEqual(other.messages(1)[0]["topic"], "ib2")

    def test_client_goes_away(self) -> None:
        """Closing a WebSocket or SSE client detaches its session: no leaked subscriptions."""
        ws = self.subscriber("ws")
        sse = self.subscriber("sse")
        self.assertEqual(self.send({"Type": "all"}, "x")["sessions"], 2)
        ws.close()
        sse.close()
        wait_for(lambda: self.server.log().count("subscription ended") >= 2, what="both sessions to end")
        self.assertEqual(self.send({"Type": "all"}, "y")["sessions"], 0)


class TicketTests(WebBase):
    def test_ticket_response(self) -> None:
        """/tickets needs the bearer token, validates its body and bounds the TTL."""
        response = self.http.post(f"{self.url}/tickets", json={"IbId": "ib1", "UserId": "u1"})
        self.assertEqual(response.status_code, 401)
        auth = {"Authorization": f"Bearer {self.token()}"}
        response = self.http.post(f"{self.url}/tickets", json={"ibid": "ib1", "userid": "u1", "TTL": 3600}, headers=auth)
        self.assertEqual(response.status_code, 200, response.text)
        self.assertEqual(response.json()["expires_in"], 60)
        self.assertTrue(response.json()["ticket"].startswith("pt1."))
        response = self.http.post(f"{self.url}/tickets", json={"IbId": "ib1"}, headers=auth)
        self.assertEqual((response.status_code, response.json()["field"]), (400, "UserId"))
        response = self.http.post(f"{self.url}/tickets", json={"IbId": "ib1", "UserId": "u", "UserGroups": "g"}, headers=auth)
        self.assertEqual((response.status_code, response.json()["field"]), (400, "UserGroups"))
        response = self.http.post(f"{self.url}/tickets", json={"IbId": "ib1", "UserId": "u", "TTL": -5}, headers=auth)
        self.assertEqual((response.status_code, response.json()["field"]), (400, "TTL"))

    def test_header_and_query(self) -> None:
        """A ticket works from Authorization: Bearer and from ?ticket= on both transports."""
        ticket = self.ticket()
        for transport in ("ws", "sse"):
            for in_query in (False, True):
                sub = self.subscriber(transport, ticket, ticket_in_query=in_query)
                self.send({"Type": "user", "UserId": "u1"}, f"{transport}-{in_query}")
                self.assertEqual(sub.messages(1)[0]["topic"], f"{transport}-{in_query}")
                sub.close()

    def test_refusals(self) -> None:
        """Expired, forged, missing and other applications' tickets are refused with 401/403 on both transports."""
        good = self.ticket()
        payload, mac = good[4:].split(".")
        doc = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        doc["u"] = "admin"
        forged = "pt1." + base64.urlsafe_b64encode(json.dumps(doc).encode()).rstrip(b"=").decode() + "." + mac
        other_app = self.ticket(app=self.other)
        # Signed by the other application, but claiming to be this one's.
        payload2, mac2 = other_app[4:].split(".")
        doc2 = json.loads(base64.urlsafe_b64decode(payload2 + "=" * (-len(payload2) % 4)))
        doc2["a"] = self.app["id"]
        cross = "pt1." + base64.urlsafe_b64encode(json.dumps(doc2).encode()).rstrip(b"=").decode() + "." + mac2
        issued = self.http.post(
            f"{self.url}/tickets", json={"IbId": self.ib, "UserId": "u1", "TTL": 1}, headers={"Authorization": f"Bearer {self.token()}"}
        ).json()
        short = issued["ticket"]
        wait_for(lambda: time.time() >= issued["expires_at"], 5, what="the one-second ticket's expiry time")
        for transport in ("ws", "sse"):
            self.assertEqual(self.refused(transport, forged)[0], 401)
            self.assertEqual(self.refused(transport, cross)[0], 401)
            self.assertEqual(self.refused(transport, "nonsense")[0], 401)
            status, doc = self.refused(transport, short)
            self.assertEqual((status, doc["error"]), (403, "ticket_expired"))
        # The other application's own ticket subscribes to the other application only.
        sub = self.subscriber("ws", other_app)
        self.assertEqual(self.send({"Type": "all"}, "a")["sessions"], 0)
        self.assertEqual(self.send({"Type": "all"}, "b", app=self.other)["sessions"], 1)
        self.assertEqual(sub.messages(1)[0]["topic"], "b")
        self.assertIn("refused a subscription from 127.0.0.1", self.server.log())

    def test_revocation(self) -> None:
        """Rotating the server key or reset_token refuses outstanding tickets and ends live sessions; a client key rotation does not."""
        app = self.revoked
        before_rotation = self.ticket(app=app)
        live = self.subscriber("ws", before_rotation)
        live_sse = self.subscriber("sse", before_rotation)
        self.server.admin("upd_srv_key", app["id"])
        self.assertEqual(live.receive(5)["event"], "end")
        self.assertEqual(live_sse.receive(5)["event"], "end")
        self.assertRaises(EOFError, live.receive, 5)
        self.assertEqual(live.close_code, 1008)
        self.assertEqual(self.refused("ws", before_rotation)[0], 401)
        app = next(a for a in json.loads(self.server.admin("list", "--json").stdout) if a["id"] == app["id"])
        before_reset = self.ticket(app=app)
        self.subscriber("sse", before_reset).close()
        self.server.admin("reset_token", app["id"])
        wait_for(lambda: self.attempt("sse", before_reset)[0] == 401, what="the reset to reach the server")
        fresh = self.subscriber("ws", self.ticket(app=app))
        # A witness: an add-in session with the old client key ends when the server has applied the rotation.
        witness = Subscriber(
            "127.0.0.1", self.server.service_port, app["id"], app["client_key"], self.ib, "witness", "", timeout=5
        ).connect()
        self.addCleanup(witness.close)
        wait_for(lambda: "user=witness group= transport=tcp" in self.server.log(), what="the witness's registration")
        self.server.admin("upd_cli_key", app["id"])
        self.assertTrue(witness.wait_closed(5), "the server did not apply the client key rotation")
        self.assertEqual(self.send({"Type": "all"}, "still here", app=app)["sessions"], 1)
        self.assertEqual(fresh.messages(1)[0]["topic"], "still here")


class OriginTests(WebBase):
    def test_origins(self) -> None:
        """Listed Origins are accepted (SSE gets CORS), others refused with 403, no Origin accepted."""
        ticket = self.ticket()
        for transport in ("ws", "sse"):
            status, doc = self.refused(transport, ticket, origin="https://evil.example.com")
            self.assertEqual((status, doc["error"]), (403, "origin_not_allowed"))
            self.subscriber(transport, ticket, origin="https://ERP.example.com").close()
            self.subscriber(transport, ticket).close()
        with self.http.stream(
            "GET", f"{self.url}/subscribe/sse", params={"ticket": ticket}, headers={"Origin": "https://erp.example.com"}
        ) as response:
            self.assertEqual(response.headers["access-control-allow-origin"], "https://erp.example.com")
            self.assertTrue(response.headers["content-type"].startswith("text/event-stream"))


class KeepaliveTests(WebBase):
    def raw_ws(self, ticket: str) -> socket.socket:
        """A WebSocket handshake by hand, then silence: a peer that never answers pings."""
        sock = socket.create_connection(("127.0.0.1", self.server.api_port), timeout=5)
        self.addCleanup(sock.close)
        key = base64.b64encode(b"0123456789abcdef").decode()
        sock.sendall(
            f"GET /subscribe/ws?ticket={ticket} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        return sock

    def test_silent_peer_is_closed(self) -> None:
        """A WebSocket peer that answers no ping is closed after ping interval + timeout; an answering one stays."""
        lively = self.subscriber("ws")
        sock = self.raw_ws(self.ticket("silent"))
        first = sock.recv(4096)
        self.assertIn(b"101", first.split(b"\r\n")[0])
        start = time.monotonic()
        data = b""
        while True:
            try:
                chunk = sock.recv(4096)
            except ConnectionResetError:  # aborted: a dead peer gets no closing handshake
                break
            if not chunk:
                break
            data += chunk
        self.assertLess(time.monotonic() - start, 4)
        self.assertIn(b"did not answer a ping", self.server.log().encode())
        wait_for(lambda: "user=silent transport=ws" in self.server.log(), what="the end of the silent session")
        self.assertEqual(self.send({"Type": "all"}, "alive")["sessions"], 1)
        self.assertEqual(lively.messages(1)[0]["topic"], "alive")

    def test_slow_readers_are_cut_off(self) -> None:
        """A WebSocket or SSE subscriber that stops reading is cut off past send_buffer_limit; the others keep receiving."""
        lively = self.subscriber("sse", self.ticket("lively"))
        stuck = []
        for path in ("/subscribe/ws", "/subscribe/sse"):
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.settimeout(5)
            sock.connect(("127.0.0.1", self.server.api_port))
            self.addCleanup(sock.close)
            upgrade = (
                "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: MDEyMzQ1Njc4OWFiY2RlZg==\r\nSec-WebSocket-Version: 13\r\n"
                if path.endswith("ws")
                else ""
            )
            sock.sendall(f"GET {path}?ticket={self.ticket('stuck')} HTTP/1.1\r\nHost: 127.0.0.1\r\n{upgrade}\r\n".encode())
            stuck.append(sock)
        wait_for(lambda: self.send({"Type": "user", "UserId": "stuck"}, "probe")["sessions"] == 2, what="both stuck sessions")
        token = self.token()
        body = {"Recipient": {"Type": "all", "IbId": self.ib}, "Message": {"Data": {"blob": "x" * 60_000}}}
        for n in range(400):  # noqa: B007 (n is reported below)
            response = self.http.post(f"{self.url}/sendmessage", json=body, headers={"Authorization": f"Bearer {token}"})
            if response.json()["sessions"] == 1:
                break
        self.assertEqual(
            without_id(response.json()), {"sessions": 1, "users": 1, "stored": False}, f"still {response.json()} after {n + 1} large sends"
        )
        log = self.server.log()
        self.assertIn("is not reading: over 65536 bytes queued, cut off", log)  # further ones are rate-limited
        self.assertIn("subscription ended: peer=127.0.0.1 app={} ib={} user=stuck transport=ws".format(self.app["id"], self.ib), log)
        self.assertIn("subscription ended: peer=127.0.0.1 app={} ib={} user=stuck transport=sse".format(self.app["id"], self.ib), log)
        self.assertEqual(self.send({"Type": "user", "UserId": "lively"}, "fine")["sessions"], 1)
        while lively.receive(5).get("topic") != "fine":
            pass

    def test_sse_heartbeat(self) -> None:
        """The SSE stream starts with a retry: hint and carries comment heartbeats."""
        with self.http.stream("GET", f"{self.url}/subscribe/sse", params={"ticket": self.ticket()}) as response:
            self.assertEqual(response.status_code, 200)
            seen = ""
            deadline = time.monotonic() + 5
            for text in response.iter_text():
                seen += text
                if seen.split("\n").count(":") >= 2 or time.monotonic() > deadline:
                    break
        self.assertTrue(seen.startswith("retry: 3000\n"), seen)
        self.assertIn("event: ready\nid: ", seen)
        self.assertGreaterEqual(seen.split("\n").count(":"), 2, seen)

    def test_oversized_inbound_frame(self) -> None:
        """An inbound WebSocket message over 4 KiB closes the connection with 1009; a small ack is fine."""
        with ws_connect(f"ws://127.0.0.1:{self.server.api_port}/subscribe/ws?ticket={self.ticket()}", open_timeout=5) as ws:
            self.assertEqual(json.loads(ws.recv(5))["event"], "ready")
            ws.send(json.dumps({"ack": 1}))
            ws.send("x" * 4000)
            self.send({"Type": "all"}, "ok")
            self.assertEqual(json.loads(ws.recv(5))["topic"], "ok")
            ws.send("x" * 5000)
            with self.assertRaises(ConnectionClosed):
                while True:
                    ws.recv(5)
            self.assertEqual(ws.close_code, 1009)


class KeptTests(WebBase):
    def test_kept_messages_over_websocket_and_sse(self) -> None:
        """Kept (TTL) messages reach a user's first WebSocket or SSE subscription once, oldest first, without id, before "ready" and live ones."""
        for transport in ("ws", "sse"):
            user, group = f"late-{transport}", f"g-{transport}"
            for topic in ("k1", "k2"):
                self.assertEqual(
                    without_id(self.send({"Type": "user", "UserId": user}, topic, ttl=600)), {"sessions": 0, "users": 0, "stored": True}
                )
            self.assertTrue(self.send({"Type": "group", "UserGroup": group}, "k3", ttl=600)["stored"])
            ticket = self.ticket(user, groups=[group])
            sub = WebSubscriber(self.url, ticket, transport, timeout=5).connect()
            self.addCleanup(sub.close)
            events = [sub.receive(5) for _ in range(4)]
            self.assertEqual([e.get("topic", e.get("event")) for e in events], ["k1", "k2", "k3", "ready"], transport)
            self.assertFalse(any("id" in e for e in events[:3]), "kept messages are not in the recovery window: no id")
            self.assertEqual(sub.last_id, events[3]["id"])
            self.send({"Type": "user", "UserId": user}, "live")
            self.assertEqual(sub.messages(1)[0]["topic"], "live")
            # Once: the next subscription of the user starts with "ready", and a marker is the first message after it.
            again = WebSubscriber(self.url, ticket, transport, timeout=5).connect()
            self.addCleanup(again.close)
            self.assertEqual(again.receive(5)["event"], "ready")
            self.send({"Type": "user", "UserId": user}, "marker")
            self.assertEqual(again.receive(5)["topic"], "marker")

    def test_kept_messages_on_the_sse_wire(self) -> None:
        """On SSE a kept message is a data: block without id:, so the stream's last event id stays the resume point."""
        self.send({"Type": "user", "UserId": "wire"}, "kept", ttl=600)
        with self.http.stream("GET", f"{self.url}/subscribe/sse", params={"ticket": self.ticket("wire")}) as response:
            seen = ""
            for text in response.iter_text():
                seen += text
                if "event: ready" in seen:
                    break
        blocks = [b for b in seen.split("\n\n") if b.strip()]
        kept = [b for b in blocks if '"topic"' in b]
        self.assertEqual(len(kept), 1, seen)
        self.assertTrue(kept[0].startswith("data: {"), kept[0])
        self.assertNotIn("id:", kept[0])
        self.assertLess(blocks.index(kept[0]), next(i for i, b in enumerate(blocks) if b.startswith("event: ready")))


class ResumeTests(WebBase):
    def test_resume_without_loss_or_duplicates(self) -> None:
        """Reconnecting with ?since / Last-Event-ID first gets what was missed in order, then live messages, no duplicates."""
        ticket = self.ticket()
        for transport in ("ws", "sse"):
            sub = self.subscriber(transport, ticket)
            self.send({"Type": "user", "UserId": "u1"}, "a")
            self.assertEqual(sub.messages(1)[0]["topic"], "a")
            resume = sub.last_id
            ended = self.server.log().count("subscription ended")
            sub.close()
            wait_for(lambda ended=ended: self.server.log().count("subscription ended") > ended, what="the session to end")
            self.send({"Type": "user", "UserId": "u1"}, "b")
            self.send({"Type": "user", "UserId": "someone else"}, "not mine")
            self.send({"Type": "all"}, "c")
            again = WebSubscriber(self.url, ticket, transport, since=resume, timeout=5).connect()
            self.addCleanup(again.close)
            events = [again.receive(5) for _ in range(3)]
            self.assertEqual([e.get("topic", e.get("event")) for e in events], ["b", "c", "ready"])
            self.send({"Type": "all"}, "live")
            self.assertEqual(again.messages(1)[0]["topic"], "live")
            again.close()

    def test_missed_past_the_window(self) -> None:
        """A resume id older than the window gets a "missed" event, then what the window still holds."""
        sub = self.subscriber("sse")
        resume = sub.last_id
        sub.close()
        for n in range(8):  # the window holds 5
            self.send({"Type": "all"}, f"m{n}")
        for transport in ("ws", "sse"):
            again = WebSubscriber(self.url, self.ticket(), transport, since=resume, timeout=5).connect()
            self.addCleanup(again.close)
            missed = again.receive(5)
            self.assertEqual((missed["event"], missed["since"]), ("missed", resume))
            self.assertEqual([m["topic"] for m in again.messages(5)], [f"m{n}" for n in range(3, 8)])
            self.assertEqual(again.receive(5)["event"], "ready")
            again.close()
        response = self.http.get(f"{self.url}/subscribe/sse", params={"ticket": self.ticket()}, headers={"Last-Event-ID": "abc"})
        self.assertEqual((response.status_code, response.json()["field"]), (400, "since"))


class RecoveryUnitTests(SynchronousTestCase):
    def test_window_by_time_and_count(self) -> None:
        """The window keeps the last N messages of the last T seconds; older resume points are reported as missed."""

        rec = Recovery(1000, seconds=10, limit=3)
        r = Recipient("all", "ib")
        ids = [rec.record("a", r, Outbound(Message(topic=str(n))), now=float(n)) for n in range(5)]
        self.assertEqual(ids, [1000, 1001, 1002, 1003, 1004])

        def replay(app: str, since: int, now: float) -> tuple[int | None, list[int]]:
            floor, items = rec.replay(app, "ib", since, now, lambda recipient: True)
            return floor, [o.id for o in items]

        self.assertEqual(replay("a", 1002, now=5.0), (None, [1003, 1004]))
        self.assertEqual(replay("a", 1000, now=5.0), (1001, [1002, 1003, 1004]))
        self.assertEqual(replay("a", 1003, now=13.5), (None, [1004]))  # 1002 and 1003 expired by time
        self.assertEqual(replay("a", 5000, now=13.5)[0], 1003)  # from the future
        self.assertEqual(replay("b", 999, now=13.5), (None, []))  # never sent to: nothing missed


class TicketUnitTests(SynchronousTestCase):
    def test_sign_verify(self) -> None:
        """A ticket verifies with its application's server key until it expires; any change to it or the key fails."""
        from pns4ones import tickets

        ticket = tickets.Ticket("app", "ib", "пользователь", ("g",), 1000, b"\x01" * 32)
        text = tickets.issue("key-1", ticket)
        self.assertEqual(tickets.verify(text, {"app": "key-1"}.get, 999), ticket)
        with self.assertRaises(tickets.TicketError) as e:
            tickets.verify(text, {"app": "key-1"}.get, 1000)
        self.assertEqual(e.exception.status, 403)
        for bad in (text[:-2] + ("AA" if text[-2:] != "AA" else "BB"), text.replace("pt1.", "pt2."), text + ".x", "", "pt1." + "A" * 9000):
            self.assertRaises(tickets.TicketError, tickets.verify, bad, {"app": "key-1"}.get, 999)
        self.assertRaises(tickets.TicketError, tickets.verify, text, {"app": "key-2"}.get, 999)
        self.assertRaises(tickets.TicketError, tickets.verify, text, {}.get, 999)


class SecureTests(WebBase):
    """The same over wss:// and https:// with the test CA."""

    ini = "ssl_mode = FromFileWithPrivateKey\nssl_certificate = server.pem\nssl_certificate_key = server.key\n"

    @classmethod
    def prepare(cls, directory: Path) -> None:
        from .pki import PKI

        pki = PKI()
        issued = pki.server()
        (directory / "server.pem").write_bytes(issued.chain_pem())
        (directory / "server.key").write_bytes(issued.key_pem())
        (directory / "root.pem").write_bytes(pki.root_pem)

    def verify(self) -> Any:
        return ssl.create_default_context(cafile=str(self.server.dir / "root.pem"))

    @property
    def url(self) -> str:
        return f"https://localhost:{self.server.api_port}"

    def test_wss_and_https_sse(self) -> None:
        """wss:// and SSE over HTTPS subscribe, receive and resume with the ticket."""
        context = self.verify()
        ws = self.subscriber("ws", ssl_context=context)
        sse = self.subscriber("sse", ssl_context=context)
        self.assertEqual(self.send({"Type": "user", "UserId": "u1"}, "по TLS")["sessions"], 2)
        self.assertEqual(ws.messages(1)[0]["topic"], "по TLS")
        self.assertEqual(sse.messages(1)[0]["topic"], "по TLS")
        with self.assertRaises(ssl.SSLError):
            WebSubscriber(self.url, self.ticket(), "ws", ssl_context=ssl.create_default_context(), timeout=5).connect()
