#!/usr/bin/env python3
"""
A fixed number of one-to-one sends through a real server, for measuring a
change while developing: the server's CPU per send (from /proc), and, under a
wrapper, its instruction count (callgrind) or a profile (py-spy).

    scripts/bench_send.py [--server ours|floor] [--subscribers 1000] [--publishers 16] [--sends 20000]
                          [--depth 1] [--wrap "valgrind --tool=callgrind --callgrind-out-file=/tmp/cg.%p"]

The load is this script (Python, selectors): N add-in subscribers register,
then C publishers send M ``POST /sendmessage`` in total, each to a random
subscriber, keeping ``--depth`` requests in flight per connection (1: closed
loop, as the swarm does; more: pipelined).  Every answer must be 200 and every
frame must arrive (counted by its header; ``--verify`` decrypts them too).
The server is started on free loopback ports and stopped at the end; unlike
``scripts/bench`` it needs no lock for correctness, but its figures are only
comparable between runs of the same sitting.  Instruction counts under
callgrind are the repeatable figure: compare two runs with different
``--sends`` and divide the difference.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import selectors
import shlex
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pns4ones_client.protocol import ClientKey, FrameDecoder, registration_frame

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SWARM = Path(os.environ.get("PNS4ONES_SHARED", ROOT.parent / "shared")) / "bench" / "swarm" / "swarm"
_FRAME = struct.Struct("<ii")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_ticks(pid: int) -> int:
    """User + system ticks of ``pid`` and its waited-for children."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(x) for x in fields[11:15])


def wait_port(port: int, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def server_pid(proc: subprocess.Popen[bytes], wrapped: bool) -> int:
    """The server's own pid (a wrapper such as valgrind execs it, py-spy runs it as a child)."""
    if not wrapped:
        return proc.pid
    children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children")
    kids = children.read_text().split() if children.exists() else []
    return int(kids[0]) if kids else proc.pid


class Load:
    def __init__(self, args: argparse.Namespace, app: dict[str, str], api: int, svc: int) -> None:
        self.args = args
        self.key = ClientKey.decode(app["client_key"])
        self.app = app
        self.api = api
        self.svc = svc
        self.sel = selectors.DefaultSelector()
        self.frames = 0
        self.decoders: dict[socket.socket, FrameDecoder] = {}
        self.inbound: dict[socket.socket, bytes] = {}

    def subscribe(self) -> None:
        for i in range(self.args.subscribers):
            s = socket.create_connection(("127.0.0.1", self.svc))
            s.sendall(registration_frame(self.key, self.app["id"], "bench", f"u{i}"))
            s.setblocking(False)
            self.inbound[s] = b""
            if self.args.verify:
                self.decoders[s] = FrameDecoder(self.key)
            self.sel.register(s, selectors.EVENT_READ, "sub")

    def token(self) -> str:
        s = socket.create_connection(("127.0.0.1", self.api))
        s.sendall(b"GET /auth?server_key=%s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" % self.app["server_key"].encode())
        data = b""
        while b"}" not in data.partition(b"\r\n\r\n")[2]:  # (the floor keeps the connection open)
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
        s.close()
        return str(json.loads(data.split(b"\r\n\r\n", 1)[1])["access_token"])

    def on_sub(self, s: socket.socket) -> None:
        try:
            data = s.recv(1 << 20)
        except BlockingIOError:
            return
        if not data:
            raise SystemExit("the server closed a subscriber")
        if self.args.verify:
            self.frames += len(self.decoders[s].feed(data))
            return
        buf = self.inbound[s] + data
        pos = 0
        while len(buf) - pos >= 8:
            length, _ = _FRAME.unpack_from(buf, pos)
            if len(buf) - pos < 4 + length:
                break
            pos += 4 + length
            self.frames += 1
        self.inbound[s] = buf[pos:]

    def run(self) -> dict[str, float]:
        args = self.args
        head = (
            b"POST /sendmessage HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer %s\r\n"
            b"Content-Type: application/json\r\nContent-Length: %%d\r\n\r\n" % self.token().encode()
        )
        pad = "x" * max(0, args.payload - 70)
        rnd = random.Random(1)

        def request(seq: int) -> bytes:
            user, now = rnd.randrange(args.subscribers), time.monotonic_ns()
            body = (
                f'{{"Recipient":{{"Type":"user","IbId":"bench","UserId":"u{user}"}},'
                f'"Message":{{"Topic":"bench","Data":{{"t":"{now}","s":"B{seq}","p":"{pad}"}}}}}}'
            ).encode()
            return head % len(body) + body

        pubs = []
        for _ in range(args.publishers):
            s = socket.create_connection(("127.0.0.1", self.api))
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            s.setblocking(False)
            pubs.append(s)
            self.sel.register(s, selectors.EVENT_READ, "pub")
        time.sleep(0.5)  # registrations settle
        while True:  # anything left over from registering
            events = self.sel.select(0.05)
            if not events:
                break
            for key, _ in events:
                if key.data == "sub":
                    self.on_sub(key.fileobj)  # type: ignore[arg-type]
        self.frames = 0
        sent = answered = 0
        inflight = dict.fromkeys(pubs, 0)
        pending = dict.fromkeys(pubs, b"")
        pid = self.pid
        cpu0 = cpu_ticks(pid)
        t0 = time.monotonic()
        for s in pubs:
            burst = b""
            while inflight[s] < args.depth and sent < args.sends:
                burst += request(sent)
                sent += 1
                inflight[s] += 1
            s.sendall(burst)
        while answered < args.sends:
            for key, _ in self.sel.select(10):
                s = key.fileobj  # type: ignore[assignment]
                if key.data == "sub":
                    self.on_sub(s)
                    continue
                data = s.recv(1 << 20)
                if not data:
                    raise SystemExit("the server closed a publisher")
                buf = pending[s] + data
                done = 0
                while True:
                    end = buf.find(b"\r\n\r\n")
                    if end < 0:
                        break
                    headline = buf[: buf.find(b"\r\n")]
                    if not headline.startswith(b"HTTP/1.1 200"):
                        raise SystemExit(f"answer: {buf[: end + 200]!r}")
                    i = buf.find(b"Content-Length: ", 0, end)
                    length = int(buf[i + 16 : buf.find(b"\r\n", i)])
                    if len(buf) < end + 4 + length:
                        break
                    buf = buf[end + 4 + length :]
                    done += 1
                pending[s] = buf
                answered += done
                inflight[s] -= done
                burst = b""
                while inflight[s] < args.depth and sent < args.sends:
                    burst += request(sent)
                    sent += 1
                    inflight[s] += 1
                if burst:
                    s.sendall(burst)
        elapsed = time.monotonic() - t0
        deadline = time.monotonic() + 30
        while self.frames < args.sends and time.monotonic() < deadline:
            for key, _ in self.sel.select(0.5):
                if key.data == "sub":
                    self.on_sub(key.fileobj)  # type: ignore[arg-type]
        cpu = (cpu_ticks(pid) - cpu0) / os.sysconf("SC_CLK_TCK")
        return {
            "sends": args.sends,
            "sends_per_s": round(args.sends / elapsed),
            "server_cpu_us_per_send": round(cpu / args.sends * 1e6, 1),
            "lost": args.sends - self.frames,
        }

    pid = 0


def swarm(args: argparse.Namespace, app: dict[str, str], api: int, svc: int, pid: int) -> dict[str, float]:
    """The shared harness's swarm (C, on CPU 1) instead of this script's load: the server saturated, as in scripts/bench."""
    cmd = ["taskset", "-c", "1", str(SWARM), "--driver", "pns4ones", "--scenario", "unicast", "--port", str(svc), "--pub-port", str(api),
           "--n", str(args.subscribers), "--concurrency", str(args.publishers), "--duration", str(args.seconds), "--payload", str(args.payload),
           "--server-pid", str(pid), "--server-cpu", "0", "--load-cpu", "1",
           "--app-id", app["id"], "--server-key", app["server_key"], "--client-key", app["client_key"], "--ib-id", "bench"]  # fmt: skip
    doc = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1])
    rate = float(doc["publishes_per_s"])
    return {
        "sends_per_s": round(rate),
        "server_cpu_us_per_send": round(float(doc["server_cpu_pct"]) / 100 / rate * 1e6, 1) if rate else 0.0,
        "p99_ms": round(float(doc["lat_us"]["p99"]) / 1000, 2),
        "lost": int(doc["lost"]),
        "server_core_busy_pct": doc.get("server_core_busy_pct", -1),
        "load_core_busy_pct": doc.get("load_core_busy_pct", -1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--server", choices=("ours", "floor"), default="ours")
    parser.add_argument("--subscribers", type=int, default=1000)
    parser.add_argument("--publishers", type=int, default=16)
    parser.add_argument("--sends", type=int, default=20000)
    parser.add_argument("--depth", type=int, default=1, help="requests in flight per publisher connection")
    parser.add_argument("--payload", type=int, default=200)
    parser.add_argument("--verify", action="store_true", help="decrypt every frame")
    parser.add_argument("--wrap", default="", help="a command line the server runs under (valgrind, py-spy record ... --)")
    parser.add_argument("--server-args", default="", help="more pns4ones options")
    parser.add_argument("--swarm", action="store_true", help="load with the shared swarm for --seconds (server on CPU 0, swarm on CPU 1)")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--taskset", default="", help="pin the server to these CPUs (taskset -c)")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="pns4ones-send-"))
    app = json.loads(
        subprocess.run(
            [str(BIN / "pns4ones-admin"), "--data-dir", str(tmp), "create", "bench", "--json"], check=True, capture_output=True, text=True
        ).stdout
    )
    api, svc, admin = free_port(), free_port(), free_port()
    if args.server == "floor":
        cmd = [sys.executable, str(ROOT / "scripts" / "floor.py"), "--client-key", app["client_key"],
               "--listen", f"127.0.0.1:{api}", "--service", f"127.0.0.1:{svc}"]  # fmt: skip
    else:
        cmd = [str(BIN / "twistd"), "-n", "--pidfile=", "pns4ones", "--config", os.devnull, "--data-dir", str(tmp),
               "--listen", f"127.0.0.1:{api}", "--service", f"127.0.0.1:{svc}", "--admin-port", str(admin), *shlex.split(args.server_args)]  # fmt: skip
    wrap = shlex.split(args.wrap)
    if args.swarm and not args.taskset:
        args.taskset = "0"
    if args.taskset:
        wrap = ["taskset", "-c", args.taskset, *wrap]
    proc = subprocess.Popen([*wrap, *cmd], stdout=subprocess.DEVNULL, stderr=None if args.wrap else subprocess.DEVNULL)
    pid = proc.pid
    try:
        wait_port(api, 120)
        wait_port(svc, 120)
        pid = server_pid(proc, bool(args.wrap))
        if args.swarm:
            result = swarm(args, app, api, svc, pid)
        else:
            load = Load(args, app, api, svc)
            load.pid = pid
            load.subscribe()
            result = load.run()
        print(
            json.dumps(
                {"server": args.server, "subscribers": args.subscribers, "publishers": args.publishers, "depth": args.depth, **result}
            )
        )
        return 0 if result["lost"] == 0 else 1
    finally:
        os.kill(pid, signal.SIGTERM)  # the server itself: a wrapper (py-spy) then writes its output and ends
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()


if __name__ == "__main__":
    sys.exit(main())
