"""
scripts/floor.py, the benchmark's "floor" column, run as scripts/bench runs it:
a yardstick is only fair if it does the job, so its frames must decrypt with
the application's key to the message sent, reach only their recipient, and
its answers must be HTTP/1.1 a publisher can keep alive.
"""

from __future__ import annotations

import http.client
import json
import socket
import subprocess
import sys
import time
from pathlib import Path

from twisted.trial.unittest import TestCase

from pns4ones.wire import ClientKey
from pns4ones_client.protocol import ClientKey as ClientSideKey
from pns4ones_client.protocol import FrameDecoder, registration_frame

from .support import free_port

FLOOR = Path(__file__).resolve().parent.parent / "scripts" / "floor.py"


def _connect(port: int, deadline: float) -> socket.socket:
    while True:
        try:
            return socket.create_connection(("127.0.0.1", port), timeout=5)
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def _frames(sock: socket.socket, decoder: FrameDecoder, count: int) -> list[dict[str, object]]:
    """Frames until ``count`` that are not probes (probes still in flight are kept, for the caller to drop)."""
    got: list[dict[str, object]] = []
    while sum(m["topic"] != "probe" for m in got) < count:
        data = sock.recv(65536)
        if not data:
            break
        got.extend(decoder.feed_messages(data))
    return got


class FloorTests(TestCase):
    def setUp(self) -> None:
        self.key = ClientKey.generate()
        self.api, self.service = free_port(), free_port()
        self.floor = subprocess.Popen(
            [
                sys.executable,
                str(FLOOR),
                "--client-key",
                self.key.encode(),
                "--listen",
                f"127.0.0.1:{self.api}",
                "--service",
                f"127.0.0.1:{self.service}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        self.addCleanup(self._stop)

    def _stop(self) -> None:
        self.floor.kill()
        self.floor.wait(10)
        assert self.floor.stderr is not None
        self.floor.stderr.close()

    def test_frames_decrypt_to_the_message_and_reach_only_the_recipient(self) -> None:
        deadline = time.monotonic() + 20
        client_key = ClientSideKey.decode(self.key.encode())
        alice = [_connect(self.service, deadline) for _ in range(2)]
        bob = _connect(self.service, deadline)
        for sock in alice:
            sock.sendall(registration_frame(client_key, "app", "ib", "alice"))
        bob.sendall(registration_frame(client_key, "app", "ib", "bob"))
        for sock in (*alice, bob):
            self.addCleanup(sock.close)
        api = http.client.HTTPConnection("127.0.0.1", self.api, timeout=10)
        self.addCleanup(api.close)
        decoders = [FrameDecoder(client_key) for _ in alice]
        # Registrations carry no answer: probes to alice until both her connections got one.
        probe = {"Recipient": {"Type": "user", "IbId": "ib", "UserId": "alice"}, "Message": {"Topic": "probe", "Data": {}}}
        for sock in alice:
            sock.settimeout(0.2)
        reached = [False, False]
        while not all(reached):
            self.assertLess(time.monotonic(), deadline, "the floor did not register the subscribers")
            api.request("POST", "/sendmessage", json.dumps(probe), {"Content-Type": "application/json"})
            api.getresponse().read()
            for i, sock in enumerate(alice):
                try:
                    reached[i] = reached[i] or bool(decoders[i].feed_messages(sock.recv(65536)))
                except TimeoutError:
                    pass
        for sock in alice:
            sock.settimeout(5)
        sent = []
        for i in range(40):  # one keep-alive connection; lengths across several AES blocks
            doc = {"Recipient": {"Type": "user", "IbId": "ib", "UserId": "alice"}, "Message": {"Topic": f"t{i}", "Data": {"k": "ж" * i}}}
            api.request("POST", "/sendmessage", json.dumps(doc), {"Content-Type": "application/json"})
            answer = api.getresponse()
            answer.read()
            self.assertEqual((answer.status, answer.version), (200, 11))
            sent.append({"topic": f"t{i}", "data": {"k": "ж" * i}})
        for sock, decoder in zip(alice, decoders, strict=True):
            got = _frames(sock, decoder, 40)
            self.assertEqual([m for m in got if m["topic"] != "probe"], sent)
        bob.settimeout(0.5)
        with self.assertRaises(TimeoutError):
            bob.recv(1)
