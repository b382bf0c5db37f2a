"""WebSocket peers that flood pings, never read, or fake pongs, against the real twistd: each is cut, the others keep receiving."""

from __future__ import annotations

import socket
import time

import httpx
from twisted.trial.unittest import SynchronousTestCase
from wsproto import Connection, ConnectionType
from wsproto.events import CloseConnection, Ping, Pong, TextMessage

from pns4ones.transports.web import PING_BURST

from .support import ServerProcess, wait_for


class RawWebSocket:
    """A WebSocket client by hand (handshake as bytes, frames through wsproto): it reads only when told to."""

    def __init__(self, port: int, ticket: str, rcvbuf: int | None = None) -> None:
        self.sock = socket.socket()
        if rcvbuf is not None:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(5)
        self.sock.connect(("127.0.0.1", port))
        self.sock.sendall(
            f"GET /subscribe/ws?ticket={ticket} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            "Sec-WebSocket-Key: MDEyMzQ1Njc4OWFiY2RlZg==\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        self.conn = Connection(ConnectionType.CLIENT)
        self.head = b""

    def handshake(self) -> None:
        """Read the 101 answer (and whatever frames came with it)."""
        while b"\r\n\r\n" not in self.head:
            self.head += self.sock.recv(4096)
        head, _, rest = self.head.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101"), head
        self.conn.receive_data(rest)

    def send(self, event: Ping | Pong | TextMessage) -> None:
        self.sock.sendall(self.conn.send(event))

    def read_events(self, seconds: float) -> tuple[list[object], bool]:
        """Events that arrive within ``seconds``, and whether the server ended the connection (close frame, FIN or reset)."""
        events: list[object] = []
        deadline = time.monotonic() + seconds
        closed = False
        while time.monotonic() < deadline and not closed:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                break
            except ConnectionResetError:
                closed = True
                break
            if not data:
                closed = True
                self.conn.receive_data(None)
            else:
                self.conn.receive_data(data)
            for event in self.conn.events():
                events.append(event)
                if isinstance(event, CloseConnection):
                    closed = True
        return events, closed

    def close(self) -> None:
        self.sock.close()


class HostileWebSocketTests(SynchronousTestCase):
    """One real server (small send_buffer_limit, quick pings) for the class."""

    server: ServerProcess

    @classmethod
    def setUpClass(cls) -> None:
        cls.server = ServerProcess(
            args=["--send_buffer_limit", "2K", "--ws_ping_interval", "0.5", "--ws_ping_timeout", "0.5", "--max_body_size", "8M"]
        )
        cls.app = cls.server.create_app("WS")
        try:
            cls.server.start()
        except BaseException:
            cls.server.cleanup()
            raise

    @classmethod
    def tearDownClass(cls) -> None:
        cls.server.cleanup()

    def setUp(self) -> None:
        self.http = httpx.Client(timeout=10)
        self.addCleanup(self.http.close)
        token = self.http.get(f"{self.server.url}/auth", params={"server_key": self.app["server_key"]}).json()["access_token"]
        self.auth = {"Authorization": f"Bearer {token}"}
        self.ib = self._testMethodName

    def ticket(self, user: str) -> str:
        response = self.http.post(f"{self.server.url}/tickets", json={"IbId": self.ib, "UserId": user}, headers=self.auth)
        return str(response.json()["ticket"])

    def send(self, user: str, topic: str, data: dict[str, str] | None = None) -> int:
        body = {"Recipient": {"Type": "user", "IbId": self.ib, "UserId": user}, "Message": {"Topic": topic, "Data": data or {}}}
        response = self.http.post(f"{self.server.url}/sendmessage", json=body, headers=self.auth)
        self.assertEqual(response.status_code, 200, response.text)
        return int(response.json()["sessions"])

    def connect(self, user: str, rcvbuf: int | None = None) -> RawWebSocket:
        ws = RawWebSocket(self.server.api_port, self.ticket(user), rcvbuf)
        self.addCleanup(ws.close)
        wait_for(lambda: self.send(user, "probe") == 1, what=f"{user}'s subscription")
        return ws

    def test_ping_flood_is_closed_1008(self) -> None:
        """Pings past the rate are not answered: the flooder gets close 1008 after about PING_BURST pongs; a quiet subscriber keeps receiving."""
        quiet = self.connect("quiet")
        quiet.handshake()
        flooder = self.connect("flooder")
        flooder.handshake()
        for n in range(500):
            try:
                flooder.send(Ping(b"%d" % n))
            except OSError:
                break
        events, closed = flooder.read_events(5)
        pongs = [e for e in events if isinstance(e, Pong)]
        closes = [e for e in events if isinstance(e, CloseConnection)]
        self.assertTrue(closed, "the flooder was not disconnected")
        self.assertEqual([c.code for c in closes], [1008])
        self.assertLessEqual(len(pongs), PING_BURST + 5)
        self.assertIn("sent pings faster than", self.server.log())
        self.assertEqual(self.send("quiet", "still here"), 1)
        events, _ = quiet.read_events(2)
        self.assertIn("still here", "".join(e.data for e in events if isinstance(e, TextMessage)))

    def test_pongs_count_in_the_send_buffer(self) -> None:
        """A peer that does not read and pings within the rate is cut once pongs queued behind a full socket pass send_buffer_limit."""
        stuck = self.connect("stuck", rcvbuf=4096)
        # One message larger than the socket takes (the kernel's send buffer grows to 4 MiB): the rest waits in
        # Twisted's buffer and the session is paused from now on (a second one would be cut by itself, queued whole).
        self.send("stuck", "big", {"blob": "x" * 6_000_000})
        self.assertEqual(self.send("stuck", "small"), 1)  # queued behind the big one, within the limit
        for n in range(int(PING_BURST)):  # within the burst: the rate limit does not close it
            stuck.sock.sendall(stuck.conn.send(Ping(b"p" * 120 + b"%04d" % n)))
        wait_for(lambda: self.send("stuck", "gone?") == 0, 5, what="the stuck reader to be cut")
        self.assertIn("over 2048 bytes queued, cut off", self.server.log())  # the first such line (later ones are rate-limited)

    def test_unsolicited_pongs_do_not_keep_a_silent_peer(self) -> None:
        """A peer that never reads but sends pongs on its own (any payload, ours included) is closed after the ping timeout."""
        silent = self.connect("silent", rcvbuf=4096)
        started = time.monotonic()
        while time.monotonic() - started < 5 and self.send("silent", "still there?") == 1:
            try:
                silent.sock.sendall(silent.conn.send(Pong(b"pns4ones")))
            except OSError:
                break
            time.sleep(0.1)
        self.assertEqual(self.send("silent", "gone"), 0, "the silent peer is still considered alive")
        self.assertLess(time.monotonic() - started, 3)  # ping interval + timeout: 1 s
        self.assertIn("did not answer a ping", self.server.log())

    def test_answering_peer_stays(self) -> None:
        """A peer that reads and echoes our pings (as browsers do) stays subscribed across several ping intervals."""
        good = self.connect("good")
        good.handshake()
        deadline = time.monotonic() + 2.5
        while time.monotonic() < deadline:
            events, closed = good.read_events(0.2)
            self.assertFalse(closed)
            for event in events:
                if isinstance(event, Ping):
                    good.send(event.response())
        self.assertEqual(self.send("good", "alive"), 1)
