#!/usr/bin/env python3
"""
Batch sends (POST /sendmessages) against the real server: messages per second
through the API in batches, each to a random one of N add-in subscribers, with
every delivery checked (decrypted and counted).  The shared swarm has no batch
mode, so this small driver stands in for it; compare with its single-message
figure (--batch 1).

    scripts/bench_batch.py [--subscribers 1000] [--batch 100] [--seconds 5]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import selectors
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pns4ones_client.protocol import ClientKey, FrameDecoder, registration_frame

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_times(pid: int) -> tuple[int, int]:
    """The server's user and kernel CPU time so far, in clock ticks (``/proc/PID/stat``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return int(fields[11]), int(fields[12])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--subscribers", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="pns4ones-batch-"))
    app = json.loads(
        subprocess.run(
            [str(BIN / "pns4ones-admin"), "--data-dir", str(tmp), "create", "batch", "--json"], check=True, capture_output=True, text=True
        ).stdout
    )
    api, svc = free_port(), free_port()
    server = subprocess.Popen([str(BIN / "twistd"), "-n", "--pidfile=", "pns4ones", "--config", os.devnull, "--data-dir", str(tmp), "--listen", f"127.0.0.1:{api}",
                               "--service", f"127.0.0.1:{svc}", "--admin-port", str(free_port())], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        time.sleep(2)
        key = ClientKey.decode(app["client_key"])
        selector = selectors.DefaultSelector()
        decoders = {}
        for i in range(args.subscribers):
            s = socket.create_connection(("127.0.0.1", svc))
            s.sendall(registration_frame(key, app["id"], "bench", f"u{i}"))
            s.setblocking(False)
            decoders[s] = FrameDecoder(key)
            selector.register(s, selectors.EVENT_READ)
        time.sleep(1)
        conn = http.client.HTTPConnection("127.0.0.1", api, timeout=30)
        conn.request("GET", f"/auth?server_key={app['server_key']}")
        headers = {"Authorization": "Bearer " + json.loads(conn.getresponse().read())["access_token"]}
        received = 0

        def drain(timeout: float = 0.0) -> None:
            nonlocal received
            for event, _ in selector.select(timeout):
                try:
                    data = event.fileobj.recv(1 << 20)
                except BlockingIOError:
                    continue
                received += len(decoders[event.fileobj].feed(data))

        payload = {"t": "0", "s": "B0", "p": "x" * 150}
        accepted = 0
        user0, sys0 = server_times(server.pid)
        started = time.monotonic()
        while time.monotonic() - started < args.seconds:
            items = [
                {
                    "Recipient": {"Type": "user", "IbId": "bench", "UserId": f"u{random.randrange(args.subscribers)}"},
                    "Message": {"Topic": "bench", "Data": payload},
                }
                for _ in range(args.batch)
            ]
            if args.batch == 1:
                conn.request("POST", "/sendmessage", json.dumps(items[0]), headers)
                doc = json.loads(conn.getresponse().read())
                accepted += doc["sessions"]
            else:
                conn.request("POST", "/sendmessages", json.dumps(items), headers)
                doc = json.loads(conn.getresponse().read())
                accepted += doc["accepted"]
            drain()
        elapsed = time.monotonic() - started
        user1, sys1 = server_times(server.pid)
        deadline = time.monotonic() + 10
        while received < accepted and time.monotonic() < deadline:
            drain(0.1)
        per_message = 1e6 / os.sysconf("SC_CLK_TCK") / max(accepted, 1)
        print(
            json.dumps(
                {
                    "batch": args.batch,
                    "subscribers": args.subscribers,
                    "messages_per_s": round(accepted / elapsed),
                    "accepted": accepted,
                    "received": received,
                    "lost": accepted - received,
                    "server_cpu_us_per_message": round((user1 - user0 + sys1 - sys0) * per_message, 1),
                    "server_user_us_per_message": round((user1 - user0) * per_message, 1),
                    "server_kernel_us_per_message": round((sys1 - sys0) * per_message, 1),
                }
            )
        )
        return 0 if received == accepted else 1
    finally:
        server.terminate()
        server.wait(15)


if __name__ == "__main__":
    sys.exit(main())
