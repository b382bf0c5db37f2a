#!/usr/bin/env python3
"""
Batch sends (POST /sendmessages) against the real server: messages per second
through the API in batches, each to a random one of N add-in subscribers, with
every delivery counted and checked.  The shared swarm has no batch mode, so
this small driver stands in for it; compare with its single-message figure
(--batch 1).

    scripts/bench_batch.py [--subscribers 1000] [--batch 100] [--seconds 5]
                           [--publishers 1] [--decrypt-every 1]

By default one connection sends batch after batch and every frame is
decrypted: the Python driver is then slower than the server, which idles
between batches.  ``--publishers 2 --decrypt-every 50`` keeps a batch always
waiting at the server (two connections, each a thread) and decrypts one frame
in 50 (the others are counted by their headers), so that the server's core is
busy and the figure is what one core moves.  On a machine with two or more
cores the server runs on the first and the driver on the second, as the
swarm does (``--no-pin``: wherever the scheduler puts them).  Prints the server's CPU per message (user and kernel apart) and
how busy its core was.

``--instructions`` runs the server under Valgrind's callgrind and prints the
instructions it executed per message while the batches went through (user
space only; the kernel's work is not counted).  Unlike the CPU time, the count
does not move with the machine's load, so two builds compare in one run each;
the server is some fifty times slower meanwhile, so its times mean nothing.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import selectors
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from bench_send import free_port, wait_port  # (scripts/ is this script's directory)

from pns4ones_client.protocol import ClientKey, FrameDecoder, registration_frame

BIN = Path(sys.executable).parent
#: A message frame's header (see docs/protocol.md): the bytes after this length field, and the plaintext's length.
FRAME_HEADER = struct.Struct("<ii")


def server_times(pid: int) -> tuple[int, int]:
    """The server's user and kernel CPU time so far, in clock ticks (``/proc/PID/stat``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return int(fields[11]), int(fields[12])


class FrameCounter:
    """One subscriber's frames: each counted by its header, every ``every``-th decrypted and checked by :class:`FrameDecoder`."""

    def __init__(self, key: ClientKey, every: int) -> None:
        self.decoder = FrameDecoder(key)
        self.every = every
        self.buffer = bytearray()
        self.seen = 0

    def feed(self, data: bytes) -> int:
        buffer = self.buffer
        buffer += data
        count = 0
        while len(buffer) >= FRAME_HEADER.size:
            length, _ = FRAME_HEADER.unpack_from(buffer)
            if len(buffer) < 4 + length:
                break
            self.seen += 1
            if self.seen % self.every == 0 and len(self.decoder.feed(bytes(buffer[: 4 + length]))) != 1:
                raise RuntimeError("a frame did not decrypt to one message")
            del buffer[: 4 + length]
            count += 1
        return count


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--subscribers", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--publishers", type=int, default=1, help="publishing connections, each a thread sending batch after batch")
    parser.add_argument("--decrypt-every", type=int, default=1, help="decrypt and check one frame in N (1: all); the rest are counted")
    parser.add_argument(
        "--no-pin", action="store_true", help="leave the server and the driver to the scheduler (default: each on its own core)"
    )
    parser.add_argument("--instructions", action="store_true", help="run the server under callgrind and count its instructions per message")
    args = parser.parse_args()
    if args.publishers < 1 or args.decrypt_every < 1 or args.batch < 1:
        parser.error("--publishers, --decrypt-every and --batch must be at least 1")
    if args.instructions and not (shutil.which("valgrind") and shutil.which("callgrind_control")):
        parser.error("--instructions needs Valgrind: apt-get install valgrind")
    pinned = not args.no_pin and (os.cpu_count() or 1) >= 2
    tmp = Path(tempfile.mkdtemp(prefix="pns4ones-batch-"))
    app = json.loads(
        subprocess.run(
            [str(BIN / "pns4ones-admin"), "--data-dir", str(tmp), "create", "batch", "--json"], check=True, capture_output=True, text=True
        ).stdout
    )
    api, svc = free_port(), free_port()
    counting = str(tmp / "callgrind.out")
    under = (
        ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={counting}", sys.executable]
        if args.instructions
        else []
    )
    server = subprocess.Popen([*under, str(BIN / "twistd"), "-n", "--pidfile=", "pns4ones", "--config", os.devnull, "--data-dir", str(tmp), "--listen", f"127.0.0.1:{api}",
                               "--service", f"127.0.0.1:{svc}", "--admin-port", str(free_port())], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              preexec_fn=(lambda: os.sched_setaffinity(0, {0})) if pinned else None)  # fmt: skip
    if pinned:
        os.sched_setaffinity(0, {1})  # (before any thread: the publishers inherit it)
    try:
        wait_port(svc, 300 if args.instructions else 30)
        key = ClientKey.decode(app["client_key"])
        selector = selectors.DefaultSelector()
        counters = {}
        for i in range(args.subscribers):
            s = socket.create_connection(("127.0.0.1", svc))
            s.sendall(registration_frame(key, app["id"], "bench", f"u{i}"))
            s.setblocking(False)
            counters[s] = FrameCounter(key, args.decrypt_every)
            selector.register(s, selectors.EVENT_READ)
        wait_port(api, 30)
        conn = http.client.HTTPConnection("127.0.0.1", api, timeout=300)
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
                received += counters[event.fileobj].feed(data)

        # Every subscriber registered before the clock starts: one message to each (in batches the
        # server takes), until all are reached; those frames are read and not counted.
        everyone = [{"Recipient": {"Type": "user", "IbId": "bench", "UserId": f"u{i}"}, "Message": {"Topic": "warm-up"}}
                    for i in range(args.subscribers)]  # fmt: skip
        warm, deadline = 0, time.monotonic() + (300 if args.instructions else 30)
        while True:
            reached = 0
            for first in range(0, len(everyone), 1000):
                conn.request("POST", "/sendmessages", json.dumps(everyone[first : first + 1000]), headers)
                reached += json.loads(conn.getresponse().read())["sessions"]
            warm += reached
            if reached == args.subscribers or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        conn.close()
        while received < warm and time.monotonic() < deadline:
            drain(0.1)
        if reached != args.subscribers or received != warm:
            print(f"bench_batch: {args.subscribers - reached} of the subscribers did not register in time", file=sys.stderr)
            return 1
        received = 0
        payload = {"t": "0", "s": "B0", "p": "x" * 150}
        accepted = [0] * args.publishers
        errors: list[Exception] = []

        def publish(index: int, deadline: float) -> None:
            try:
                rnd = random.Random(index)
                conn = http.client.HTTPConnection("127.0.0.1", api, timeout=30)
                while time.monotonic() < deadline:
                    items = [
                        {
                            "Recipient": {"Type": "user", "IbId": "bench", "UserId": f"u{rnd.randrange(args.subscribers)}"},
                            "Message": {"Topic": "bench", "Data": payload},
                        }
                        for _ in range(args.batch)
                    ]
                    if args.batch == 1:
                        conn.request("POST", "/sendmessage", json.dumps(items[0]), headers)
                        accepted[index] += json.loads(conn.getresponse().read())["sessions"]
                    else:
                        conn.request("POST", "/sendmessages", json.dumps(items), headers)
                        accepted[index] += json.loads(conn.getresponse().read())["accepted"]
                conn.close()
            except Exception as e:  # (reported by the main thread)
                errors.append(e)

        if args.instructions:
            subprocess.run(["callgrind_control", "--instr=on", str(server.pid)], check=True, capture_output=True)
        user0, sys0 = server_times(server.pid)
        started = time.monotonic()
        publishers = [threading.Thread(target=publish, args=(k, started + args.seconds)) for k in range(args.publishers)]
        for thread in publishers:
            thread.start()
        while any(thread.is_alive() for thread in publishers):
            drain(0.01)
        elapsed = time.monotonic() - started
        user1, sys1 = server_times(server.pid)
        if errors:
            print(f"bench_batch: a publisher failed: {errors[0]!r}", file=sys.stderr)
            return 1
        total = sum(accepted)
        deadline = time.monotonic() + (300 if args.instructions else 10)
        while received < total and time.monotonic() < deadline:
            drain(0.1)
        ticks = os.sysconf("SC_CLK_TCK")
        extra = {}
        if args.instructions:  # (the frames' writes are done once they are all read)
            subprocess.run(["callgrind_control", "--instr=off", str(server.pid)], check=True, capture_output=True)
            server.terminate()
            server.wait(300)  # (callgrind writes its counts as the server exits)
            totals = [line for line in Path(counting).read_text().splitlines() if line.startswith("totals:")]
            extra = {"server_instructions_per_message": round(int(totals[0].split()[1]) / max(total, 1))}
        per_message = 1e6 / ticks / max(total, 1)
        print(
            json.dumps(
                {
                    "batch": args.batch,
                    "subscribers": args.subscribers,
                    "publishers": args.publishers,
                    "decrypt_every": args.decrypt_every,
                    "pinned": pinned,
                    "messages_per_s": round(total / elapsed),
                    "accepted": total,
                    "received": received,
                    "lost": total - received,
                    "server_core_busy_pct": round(100 * (user1 - user0 + sys1 - sys0) / ticks / elapsed, 1),
                    "server_cpu_us_per_message": round((user1 - user0 + sys1 - sys0) * per_message, 1),
                    "server_user_us_per_message": round((user1 - user0) * per_message, 1),
                    "server_kernel_us_per_message": round((sys1 - sys0) * per_message, 1),
                    **extra,
                }
            )
        )
        return 0 if received == total else 1
    finally:
        if server.poll() is None:
            server.terminate()
            server.wait(300 if args.instructions else 15)
        shutil.rmtree(tmp, ignore_errors=True)  # (the throwaway store and admin files)


if __name__ == "__main__":
    sys.exit(main())
