"""
Many add-in subscribers on raw sockets read by one thread, and a sender posting
numbered messages: for handoff tests and scripts/measure_handoff.py.
"""

from __future__ import annotations

import http.client
import itertools
import json
import selectors
import socket
import threading
import time
from pathlib import Path

from pns4ones_client.protocol import ClientKey, FrameDecoder, ProtocolError, registration_frame


class Fleet:
    """
    ``count`` subscribers (user u0..uN of one information base), the same socket
    objects throughout.  ``rcvbuf``: a small receive buffer, so that what a
    stalled subscriber is sent backs up in the server at once.
    """

    def __init__(self, port: int, app: dict[str, str], count: int, ib: str = "ib", first: int = 0, rcvbuf: int = 0) -> None:
        self.key = ClientKey.decode(app["client_key"])
        self.sockets: list[socket.socket] = []
        self.decoders: list[FrameDecoder] = []
        self.received: list[list[tuple[int, float]]] = [[] for _ in range(count)]
        self.errors: list[str] = []
        self.closed: set[int] = set()
        self._stop = threading.Event()
        self._reading = threading.Event()
        self._reading.set()
        self._sel = selectors.DefaultSelector()
        for i in range(count):
            s = socket.socket()
            s.settimeout(10)
            if rcvbuf:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)  # before connect: it sets the window
            s.connect(("127.0.0.1", port))
            s.sendall(registration_frame(self.key, app["id"], ib, f"u{first + i}"))
            s.setblocking(False)
            self.sockets.append(s)
            self.decoders.append(FrameDecoder(self.key))
            self._sel.register(s, selectors.EVENT_READ, i)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def stall(self) -> None:
        """Stop reading (every subscriber): the server's queue for them grows."""
        self._reading.clear()

    def read_again(self) -> None:
        self._reading.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            if not self._reading.wait(0.1):
                continue
            for key, _ in self._sel.select(0.1):
                i = key.data
                try:
                    data = self.sockets[i].recv(1 << 16)
                except BlockingIOError:
                    continue
                except OSError as e:
                    data = b""
                    self.errors.append(f"subscriber {i}: {e}")
                now = time.monotonic()
                if not data:
                    self.closed.add(i)
                    self._sel.unregister(self.sockets[i])
                    continue
                try:
                    for message in self.decoders[i].feed_messages(data):
                        self.received[i].append((int(message["data"]["seq"]), now))
                except (ProtocolError, KeyError, ValueError) as e:
                    self.errors.append(f"subscriber {i}: {e!r}")

    def total(self) -> int:
        return sum(len(r) for r in self.received)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        for s in self.sockets:
            s.close()
        self._sel.close()


class Sender(threading.Thread):
    """Posts ``seq`` 0, 1, 2, ... to every subscriber of the information base; records which were accepted (200) and when."""

    def __init__(self, port: int, app: dict[str, str], ib: str = "ib", interval: float = 0.0, padding: int = 0) -> None:
        super().__init__(daemon=True)
        self.port, self.app, self.ib, self.interval = port, app, ib, interval
        #: Characters of filler in each message (large messages fill a stalled subscriber's queue quickly).
        self.padding = padding
        self.accepted: dict[int, float] = {}
        self.failed: list[tuple[int, str]] = []
        self.stop_flag = threading.Event()
        self.seq = 0
        self.conn: http.client.HTTPConnection | None = None
        self.token = ""

    def _connect(self) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        if not self.token:
            self.conn.request("GET", f"/auth?server_key={self.app['server_key']}")
            self.token = json.loads(self.conn.getresponse().read())["access_token"]

    def reconnect(self) -> None:
        """Drop the keep-alive connection: the next request opens a new one (to whichever process listens now)."""
        if self.conn is not None:
            self.conn.close()
        self.conn = None

    def send_one(self) -> bool:
        seq = self.seq
        self.seq += 1
        data = {"seq": str(seq), "pad": "x" * self.padding} if self.padding else {"seq": str(seq)}
        body = json.dumps({"Recipient": {"Type": "all", "IbId": self.ib}, "Message": {"Data": data}})
        started = time.monotonic()
        try:
            if self.conn is None:
                self._connect()
            self.conn.request("POST", "/sendmessage", body, {"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"})
            response = self.conn.getresponse()
            response.read()
            if response.status == 200:
                self.accepted[seq] = started
                return True
            self.failed.append((seq, f"HTTP {response.status}"))
        except (OSError, http.client.HTTPException) as e:
            self.failed.append((seq, repr(e)))
            if self.conn is not None:
                self.conn.close()
            self.conn = None
        return False

    def post(self, path: str, doc: dict[str, object]) -> tuple[int, dict[str, object]]:
        """One authorized POST on this sender's connection (reconnecting once if the server closed it): status and JSON body."""
        for attempt in range(2):
            try:
                if self.conn is None:
                    self._connect()
                assert self.conn is not None
                headers = {"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"}
                self.conn.request("POST", path, json.dumps(doc), headers)
                response = self.conn.getresponse()
                return response.status, json.loads(response.read() or b"{}")
            except (OSError, http.client.HTTPException):
                if self.conn is not None:
                    self.conn.close()
                self.conn = None
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def send_to_user(self, user: str, topic: str = "") -> dict[str, object]:
        """Send a message to one user of the information base (its data names the user); the report of the send."""
        doc = {"Recipient": {"Type": "user", "IbId": self.ib, "UserId": user}, "Message": {"Topic": topic, "Data": {"user": user}}}
        status, report = self.post("/sendmessage", doc)
        if status != 200:
            raise AssertionError(f"send to {user}: HTTP {status} {report}")
        return report

    def ticket(self, user: str) -> str:
        """A WebSocket/SSE ticket for one user of the information base."""
        status, doc = self.post("/tickets", {"IbId": self.ib, "UserId": user, "UserGroups": []})
        if status != 200:
            raise AssertionError(f"ticket for {user}: HTTP {status} {doc}")
        return str(doc["ticket"])

    def run(self) -> None:
        while not self.stop_flag.is_set():
            self.send_one()
            if self.interval:
                time.sleep(self.interval)

    def stop(self) -> None:
        self.stop_flag.set()
        if self.is_alive():
            self.join(60)
        if self.conn is not None:
            self.conn.close()


def check_exactly_once(fleet: Fleet, sender: Sender) -> list[str]:
    """Problems: a subscriber missing an accepted message, a duplicate, out of order, a closed socket, a bad frame."""
    problems = list(fleet.errors)
    attempted = set(range(sender.seq))
    for i, got in enumerate(fleet.received):
        seqs = [s for s, _ in got]
        if any(b <= a for a, b in itertools.pairwise(seqs)):
            problems.append(f"subscriber {i}: duplicate or out of order: {seqs[:50]}...")
        missing = set(sender.accepted) - set(seqs)
        if missing:
            problems.append(f"subscriber {i}: missing accepted messages {sorted(missing)[:20]}")
        if set(seqs) - attempted:
            problems.append(f"subscriber {i}: messages nobody sent")
        if i in fleet.closed:
            problems.append(f"subscriber {i}: connection closed")
    return problems


def latencies(fleet: Fleet, sender: Sender, seqs: set[int] | None = None) -> list[float]:
    """Per (subscriber, message): receive time - the moment the send began."""
    out = []
    for got in fleet.received:
        for seq, at in got:
            if seq in sender.accepted and (seqs is None or seq in seqs):
                out.append(at - sender.accepted[seq])
    return out


def server_pid(data_dir: Path) -> int:
    try:
        return int((Path(data_dir) / "pns4ones.pid").read_text().strip())
    except (FileNotFoundError, ValueError):
        return 0


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] not in ("Z", "X")
