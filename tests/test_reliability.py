"""Hostile input, slow and dead peers, overload, crashes and stops, against the real process."""

from __future__ import annotations

import http.client
import json
import selectors
import signal
import socket
import sqlite3
import subprocess
import threading
import time
from typing import Any

from twisted.trial.unittest import TestCase

from pns4ones_client import Subscriber
from pns4ones_client.protocol import ClientKey, FrameDecoder, registration_frame

from .support import ADMIN, ServerProcess, wait_for


def rss_kb(pid: int) -> int:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


class Sender:
    """A keep-alive HTTP sender (standard library), one request at a time."""

    def __init__(self, server: ServerProcess, app: dict[str, str]) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", server.api_port, timeout=10)
        self.conn.request("GET", f"/auth?server_key={app['server_key']}")
        self.token = json.loads(self.conn.getresponse().read())["access_token"]

    def send(self, recipient: dict[str, str], message: dict[str, Any]) -> tuple[int, dict[str, Any], Any]:
        body = json.dumps({"Recipient": recipient, "Message": message})
        self.conn.request("POST", "/sendmessage", body, {"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"})
        response = self.conn.getresponse()
        return response.status, json.loads(response.read() or b"{}"), response


class SlowConsumerTests(TestCase):
    def setUp(self) -> None:
        self.server = ServerProcess(ini="send_buffer_limit = 256K\n", log_level="Warning")
        self.addCleanup(self.server.cleanup)
        self.app = self.server.create_app("slow")
        self.server.start()

    def test_stalled_reader_never_delays_the_healthy(self) -> None:
        """1 stalled reader + 200 healthy: the healthy get every broadcast promptly, the stalled one is cut at the bound, memory stays bounded."""
        key = ClientKey.decode(self.app["client_key"])
        stalled = socket.socket()
        stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stalled.connect(("127.0.0.1", self.server.service_port))
        stalled.sendall(registration_frame(key, self.app["id"], "ib", "stalled"))
        self.addCleanup(stalled.close)
        healthy = []
        for i in range(200):
            s = socket.create_connection(("127.0.0.1", self.server.service_port))
            s.sendall(registration_frame(key, self.app["id"], "ib", f"h{i}"))
            s.setblocking(False)
            healthy.append(s)
            self.addCleanup(s.close)
        sender = Sender(self.server, self.app)
        wait_for(
            lambda: sender.send({"Type": "all", "IbId": "ib"}, {"Topic": "warmup"})[1]["sessions"] == 201, what="all 201 subscriptions"
        )
        rss_before = rss_kb(self.server.proc.pid)

        selector = selectors.DefaultSelector()
        decoders = {s: FrameDecoder(key) for s in healthy}
        for s in healthy:
            selector.register(s, selectors.EVENT_READ)
        latencies: list[float] = []
        received = {s: 0 for s in healthy}
        stop = threading.Event()

        def read_loop() -> None:
            while not stop.is_set():
                for event, _ in selector.select(0.1):
                    try:
                        data = event.fileobj.recv(262144)
                    except BlockingIOError:
                        continue
                    now = time.monotonic()
                    for plaintext in decoders[event.fileobj].feed(data):
                        doc = json.loads(plaintext)
                        if doc.get("topic") == "tick":
                            received[event.fileobj] += 1
                            latencies.append(now - float(doc["data"]["t"]))

        reader = threading.Thread(target=read_loop, daemon=True)
        reader.start()
        big = {"Topic": "bulk", "Data": {"p": "x" * 60000}}
        ticks = 0
        cut_after = None
        for round_ in range(200):
            for _ in range(5):  # ~300 KB per round for the stalled reader only
                status, doc, _ = sender.send({"Type": "user", "IbId": "ib", "UserId": "stalled"}, big)
                self.assertEqual(status, 200)
                if doc["sessions"] == 0 and cut_after is None:
                    cut_after = round_
            sender.send({"Type": "all", "IbId": "ib"}, {"Topic": "tick", "Data": {"t": repr(time.monotonic())}})
            ticks += 1
            if cut_after is not None and round_ > cut_after + 3:
                break
        wait_for(lambda: all(n == ticks for n in received.values()), 15, what="every healthy subscriber to get every tick")
        stop.set()
        reader.join(5)
        self.assertIsNotNone(cut_after, "the stalled reader was never cut off")
        self.assertIn("is not reading", self.server.log())
        latencies.sort()
        p99 = latencies[int(len(latencies) * 0.99) - 1]
        print(
            f"\nstalled-reader test: {ticks} broadcasts x 200 healthy, latency p50 {1000 * latencies[len(latencies) // 2]:.1f} ms, p99 {1000 * p99:.1f} ms, max {1000 * latencies[-1]:.1f} ms; stalled cut after {cut_after + 1} rounds (~{(cut_after + 1) * 300} KB)"
        )
        self.assertLess(p99, 2.0)
        rss_after = rss_kb(self.server.proc.pid)
        self.assertLess(rss_after - rss_before, 64 * 1024, "server memory grew by more than 64 MiB")


class DeadPeerAndLimitTests(TestCase):
    def setUp(self) -> None:
        self.server = ServerProcess(
            ini="keepalive_idle = 30\nkeepalive_interval = 5\nkeepalive_count = 3\nrequest_timeout = 1\nsend_rate_limit = 5\nmax_subscriptions = 3\nregistration_timeout = 2\n",
            log_level="Warning",
        )
        self.addCleanup(self.server.cleanup)
        self.app = self.server.create_app("limits")
        self.server.start()

    def test_keepalive_on_subscription_sockets(self) -> None:
        """Every subscription socket has TCP keepalive with the configured idle time."""
        sub = Subscriber("127.0.0.1", self.server.service_port, self.app["id"], self.app["client_key"], "ib", "u").connect()
        self.addCleanup(sub.close)
        local_port = sub.sock.getsockname()[1]
        out = wait_for(
            lambda: subprocess.run(["ss", "-tno", "state", "established", f"( sport = :{self.server.service_port} and dport = :{local_port} )"], capture_output=True, text=True).stdout.count("keepalive") and
            subprocess.run(["ss", "-tno", "state", "established", f"( sport = :{self.server.service_port} and dport = :{local_port} )"], capture_output=True, text=True).stdout,
            what="ss to show the connection",
        )  # fmt: skip
        self.assertIn("timer:(keepalive,", out)
        seconds = int(out.split("timer:(keepalive,")[1].split("sec")[0].split("min")[-1].split(".")[0] or 0)
        self.assertLessEqual(seconds, 30)

    def test_dribbling_sender_gets_408(self) -> None:
        """A client that sends its request too slowly gets 408 and is closed."""
        s = socket.create_connection(("127.0.0.1", self.server.api_port), timeout=5)
        self.addCleanup(s.close)
        s.sendall(b"POST /sendmessage HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{")
        time.sleep(1.5)
        answer = s.recv(4096)
        self.assertIn(b" 408 ", answer)
        self.assertIn(b"request_timeout", answer)

    def test_rate_limit_answers_429(self) -> None:
        """Past send_rate_limit, sends answer 429 with Retry-After; later ones pass again."""
        sender = Sender(self.server, self.app)
        statuses = []
        retry = None
        for _ in range(20):
            status, doc, response = sender.send({"Type": "all", "IbId": "ib"}, {})
            statuses.append(status)
            if status == 429:
                retry = response.getheader("Retry-After")
                self.assertEqual(doc["error"], "rate_limited")
        self.assertIn(429, statuses)
        self.assertEqual(statuses[:5], [200] * 5)
        self.assertGreaterEqual(int(retry), 1)
        time.sleep(1.1)
        self.assertEqual(sender.send({"Type": "all", "IbId": "ib"}, {})[0], 200)

    def test_max_subscriptions_and_quiet_log(self) -> None:
        """Connections beyond max_subscriptions are closed at once, logged once per interval, not per connection."""
        sender = Sender(self.server, self.app)
        time.sleep(0.5)  # the start-up port probes have come and gone
        keep = [
            Subscriber("127.0.0.1", self.server.service_port, self.app["id"], self.app["client_key"], "ib", f"u{i}").connect()
            for i in range(3)
        ]
        for sub in keep:
            self.addCleanup(sub.close)
        wait_for(lambda: sender.send({"Type": "all", "IbId": "ib"}, {})[1].get("sessions") == 3, what="the three subscriptions")
        refused = 0
        for _ in range(50):
            t0 = time.monotonic()
            try:  # the refusal may come so fast that connect() itself sees the reset
                with socket.create_connection(("127.0.0.1", self.server.service_port), timeout=5) as s:
                    refused += s.recv(10) == b""
            except ConnectionResetError:
                refused += 1
            self.assertLess(time.monotonic() - t0, 1.0)
        self.assertEqual(refused, 50)
        self.assertLessEqual(self.server.log().count("max_subscriptions=3 reached"), 2)


class LogFloodTests(TestCase):
    def setUp(self) -> None:
        self.server = ServerProcess(log_level="Warning")
        self.addCleanup(self.server.cleanup)
        self.app = self.server.create_app("flood")
        self.server.start()

    def test_flood_of_bad_registrations_and_tokens_does_not_flood_the_log(self) -> None:
        """300 bad registrations and 300 bad tokens produce a handful of warnings with counts."""
        wrong = ClientKey(bytes(32), bytes(16))
        for i in range(300):
            s = socket.create_connection(("127.0.0.1", self.server.service_port), timeout=5)
            try:
                s.sendall(registration_frame(wrong, self.app["id"], "ib", f"x{i}"))
                self.assertEqual(s.recv(10), b"", "a bad registration is cut off")
            except ConnectionResetError:
                pass  # cut off with a reset: as good
            finally:
                s.close()
        conn = http.client.HTTPConnection("127.0.0.1", self.server.api_port, timeout=10)
        self.addCleanup(conn.close)
        for _ in range(300):
            conn.request("POST", "/sendmessage", "{}", {"Authorization": "Bearer nope"})
            response = conn.getresponse()
            body = json.loads(response.read())
            self.assertEqual((response.status, body["error"]), (401, "unauthorized"), body)
        wait_for(
            lambda: "rejected add-in registration" in self.server.log() and "rejected POST /sendmessage" in self.server.log(),
            10,
            what="the warnings in the log",
        )
        log = self.server.log()
        self.assertLessEqual(log.count("rejected add-in registration"), 3)
        self.assertLessEqual(log.count("rejected POST /sendmessage"), 3)
        self.assertIn("bad signature", log)
        self.assertIn("from 127.0.0.1", log)


class CrashSafetyTests(TestCase):
    def test_kill_9_during_cli_writes(self) -> None:
        """CLI writes while the server is killed -9 and restarted (and CLIs killed): the store stays intact and holds every committed change."""
        server = ServerProcess(log_level="Warning")
        self.addCleanup(server.cleanup)
        server.create_app("first")
        server.start()
        committed: list[str] = []
        stop = threading.Event()
        errors: list[str] = []

        def writer() -> None:
            i = 0
            while not stop.is_set():
                i += 1
                r = subprocess.run(
                    [ADMIN, "--data-dir", str(server.data_dir), "create", f"app{i}", "--json"], capture_output=True, text=True
                )
                if r.returncode == 0:
                    committed.append(json.loads(r.stdout)["id"])
                else:
                    errors.append(r.stderr)

        t = threading.Thread(target=writer)
        t.start()
        try:
            for _ in range(3):
                time.sleep(1.0)
                server.proc.send_signal(signal.SIGKILL)
                server.proc.wait()
                server.stop()
                server.start()
            # a CLI killed in the middle of its write
            for _ in range(5):
                p = subprocess.Popen(
                    [ADMIN, "--data-dir", str(server.data_dir), "create", "victim"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
                )
                time.sleep(0.15)
                p.kill()
                p.wait()
        finally:
            stop.set()
            t.join(60)
        server.stop()
        self.assertEqual(errors, [])
        self.assertGreater(len(committed), 5)
        db = sqlite3.connect(server.data_dir / "pns4ones.db")
        self.assertEqual(db.execute("PRAGMA integrity_check").fetchone()[0], "ok")
        ids = {row[0] for row in db.execute("SELECT id FROM applications")}
        db.close()
        self.assertEqual(set(committed) - ids, set())
        server.start()
        listed = json.loads(server.admin("list", "--json").stdout)
        self.assertEqual(len(listed), len(ids))


class GracefulStopTests(TestCase):
    def test_sigterm_ends_subscriptions_cleanly_and_exits_0(self) -> None:
        """SIGTERM: subscribers see a clean end of stream (not a reset), the process exits 0 within seconds."""
        server = ServerProcess(log_level="Warning")
        self.addCleanup(server.cleanup)
        app = server.create_app("stop")
        server.start()
        subs = [Subscriber("127.0.0.1", server.service_port, app["id"], app["client_key"], "ib", f"u{i}").connect() for i in range(20)]
        sender = Sender(server, app)
        wait_for(lambda: sender.send({"Type": "all", "IbId": "ib"}, {"Topic": "hi"})[1]["sessions"] == 20)
        started = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        code = server.proc.wait(15)
        elapsed = time.monotonic() - started
        self.assertEqual(code, 0, server.log())
        self.assertLess(elapsed, 5)
        for sub in subs:
            sub.sock.settimeout(5)
            data = b""
            while True:
                chunk = sub.sock.recv(65536)  # a reset would raise ConnectionResetError
                if not chunk:
                    break
                data += chunk
            self.assertTrue(data)  # the messages before the stop arrived
            sub.close()
        self.assertIn("received SIGTERM: stopping gracefully", server.log())
        server.proc = None
