#!/usr/bin/env python3
"""
The cost of the Redis hub: the same sends against one node with ``hub = local``
and against nodes sharing a throwaway redis-server (``--hub redis``), with
every delivery checked (decrypted and counted).

    scripts/bench_nodes.py --hub local  --mode unicast      # the baseline
    scripts/bench_nodes.py --hub redis  --mode unicast      # one node over Redis
    scripts/bench_nodes.py --hub redis  --nodes 2 --mode unicast   # sends through A to subscribers on A and B
    scripts/bench_nodes.py --hub redis  --nodes 2 --mode fanout --subscribers 2000

unicast: one send at a time to a random subscriber, waiting for its delivery:
send latency (HTTP round trip) and delivery latency (send to frame decrypted),
p50/p99, and CPU per message of the nodes and of redis-server (from /proc).
fanout: ``all`` sends to every subscriber (split over the nodes), back to back:
deliveries per second and CPU per delivery.  Everything runs on this machine,
so with two nodes the figures are functional, not a capacity measurement.
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
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pns4ones_client.protocol import ClientKey, FrameDecoder, registration_frame

BIN = Path(sys.executable).parent
TICK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid: int) -> float:
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def wait_port(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing listens on port {port}")


def percentile(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * p))] if values else 0.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hub", choices=("local", "redis"), default="redis")
    parser.add_argument("--nodes", type=int, default=1)
    parser.add_argument("--mode", choices=("unicast", "fanout"), default="unicast")
    parser.add_argument("--subscribers", type=int, default=100)
    parser.add_argument("--messages", type=int, default=2000, help="unicast: sends; fanout: sends of 'all'")
    args = parser.parse_args()
    if args.hub == "local" and args.nodes != 1:
        parser.error("--hub local serves one node")
    tmp = Path(tempfile.mkdtemp(prefix="pns4ones-nodes-bench-"))
    procs: list[subprocess.Popen[bytes]] = []
    try:
        ini = tmp / "pns4ones.ini"
        lines = [f"store = sqlite://{tmp / 'pns.db'}", "log_level = Warning"]
        redis = None
        if args.hub == "redis":
            redis_server = shutil.which("redis-server") or "/usr/bin/redis-server"
            rport = free_port()
            redis = subprocess.Popen(
                [redis_server, "--port", str(rport), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(tmp)],
                stdout=subprocess.DEVNULL,
            )
            procs.append(redis)
            wait_port(rport)
            lines.append(f"hub = redis://127.0.0.1:{rport}/0")
        ini.write_text("\n".join(lines) + "\n")
        app = json.loads(
            subprocess.run(
                [str(BIN / "pns4ones-admin"), "--config", str(ini), "--data-dir", str(tmp / "admin"), "create", "bench", "--json"],
                check=True,
                capture_output=True,
                text=True,
            ).stdout
        )
        nodes = []
        for n in range(args.nodes):
            api, svc = free_port(), free_port()
            proc = subprocess.Popen([str(BIN / "twistd"), "-n", "--pidfile=", "pns4ones", "--config", str(ini), "--data-dir", str(tmp / f"node{n}"), "--listen", f"127.0.0.1:{api}",
                                     "--service", f"127.0.0.1:{svc}", "--admin-port", str(free_port()), "--node_name", f"n{n}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
            procs.append(proc)
            nodes.append((proc, api, svc))
        for _, api, svc in nodes:
            wait_port(api)
            wait_port(svc)
        key = ClientKey.decode(app["client_key"])
        selector = selectors.DefaultSelector()
        decoders = {}
        for i in range(args.subscribers):
            s = socket.create_connection(("127.0.0.1", nodes[i % len(nodes)][2]))
            s.sendall(registration_frame(key, app["id"], "bench", f"u{i}"))
            s.setblocking(False)
            decoders[s] = FrameDecoder(key)
            selector.register(s, selectors.EVENT_READ)
        conn = http.client.HTTPConnection("127.0.0.1", nodes[0][1], timeout=30)
        time.sleep(1.5)  # registrations, subscriptions and presence settle
        conn.request("GET", f"/auth?server_key={app['server_key']}")
        headers = {"Authorization": "Bearer " + json.loads(conn.getresponse().read())["access_token"], "Content-Type": "application/json"}
        delivery_latency: list[float] = []
        received = 0

        def drain(timeout: float = 0.0) -> None:
            nonlocal received
            for event, _ in selector.select(timeout):
                try:
                    data = event.fileobj.recv(1 << 20)
                except BlockingIOError:
                    continue
                for plaintext in decoders[event.fileobj].feed(data):
                    received += 1
                    if args.mode == "unicast":
                        delivery_latency.append(time.perf_counter() - float(json.loads(plaintext)["data"]["t"]))

        pids = [p.pid for p in procs]
        cpu0 = {pid: cpu_seconds(pid) for pid in pids}
        send_latency: list[float] = []
        expected = 0
        started = time.monotonic()
        for _ in range(args.messages):
            if args.mode == "unicast":
                recipient = {"Type": "user", "IbId": "bench", "UserId": f"u{random.randrange(args.subscribers)}"}
            else:
                recipient = {"Type": "all", "IbId": "bench"}
            body = json.dumps(
                {"Recipient": recipient, "Message": {"Topic": "bench", "Data": {"t": repr(time.perf_counter()), "p": "x" * 100}}}
            )
            t0 = time.perf_counter()
            conn.request("POST", "/sendmessage", body, headers)
            response = conn.getresponse()
            doc = json.loads(response.read())
            send_latency.append(time.perf_counter() - t0)
            if response.status != 200:
                raise SystemExit(f"send answered {response.status}: {doc}")
            expected += doc["sessions"]
            if args.mode == "unicast":
                deadline = time.monotonic() + 5
                while received < expected and time.monotonic() < deadline:
                    drain(0.5)
            else:
                drain()
        deadline = time.monotonic() + 30
        while received < expected and time.monotonic() < deadline:
            drain(0.1)
        elapsed = time.monotonic() - started
        cpu = {pid: cpu_seconds(pid) - cpu0[pid] for pid in pids}
        node_cpu = sum(cpu[p.pid] for p, _, _ in nodes)
        redis_cpu = cpu[redis.pid] if redis is not None else 0.0
        out = {
            "hub": args.hub, "nodes": args.nodes, "mode": args.mode, "subscribers": args.subscribers, "messages": args.messages,
            "deliveries": received, "expected": expected, "lost": expected - received,
            "nodes_cpu_us_per_message": round(node_cpu / args.messages * 1e6, 1),
            "redis_cpu_us_per_message": round(redis_cpu / args.messages * 1e6, 1),
        }  # fmt: skip
        if args.mode == "unicast":
            out.update({
                "send_ms_p50": round(percentile(send_latency, 0.5) * 1000, 3), "send_ms_p99": round(percentile(send_latency, 0.99) * 1000, 3),
                "delivery_ms_p50": round(percentile(delivery_latency, 0.5) * 1000, 3), "delivery_ms_p99": round(percentile(delivery_latency, 0.99) * 1000, 3),
            })  # fmt: skip
        else:
            out.update(
                {"deliveries_per_s": round(received / elapsed), "nodes_cpu_us_per_delivery": round(node_cpu / max(received, 1) * 1e6, 2)}
            )
        print(json.dumps(out))
        return 0 if received == expected else 1
    finally:
        for proc in reversed(procs):
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
