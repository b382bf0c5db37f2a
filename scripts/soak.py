#!/usr/bin/env python3
"""
Churn soak: a real ``twistd -n pns4ones`` on loopback, subscribers connecting and
leaving at random (gracefully or with an abrupt reset), a sender sending to them
throughout, for a bounded time.  At the end it checks:

* every message the server reported as written to a subscription that stayed
  until it had drained (or until the end) arrived exactly once and in order;
* the server's open file descriptors are back to their baseline and its memory
  close to it;
* the log holds no errors (only the expected disconnect warnings).

    scripts/soak                    10 minutes
    scripts/soak --duration 30      30 seconds (CI)
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import selectors
import shutil
import signal
import socket
import struct
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


def fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def rss_kb(pid: int) -> int:
    return next(int(line.split()[1]) for line in open(f"/proc/{pid}/status") if line.startswith("VmRSS:"))


class Sub:
    __slots__ = ("decoder", "expected", "name", "received", "sock", "state")

    def __init__(self, name: str, sock: socket.socket, key: ClientKey) -> None:
        self.name, self.sock = name, sock
        self.decoder = FrameDecoder(key)
        self.expected: list[int] = []
        self.received: list[int] = []
        self.state = "live"  # live, draining, checked, reset


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=600.0, help="seconds of churn (default 600)")
    parser.add_argument("--subscribers", type=int, default=300, help="live subscribers kept around (default 300)")
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    tmp = Path(tempfile.mkdtemp(prefix="pns4ones-soak-"))
    data = tmp / "data"
    app = json.loads(
        subprocess.run(
            [str(BIN / "pns4ones-admin"), "--data-dir", str(data), "create", "soak", "--json"], check=True, capture_output=True, text=True
        ).stdout
    )
    key = ClientKey.decode(app["client_key"])
    api, svc = free_port(), free_port()
    log_path = tmp / "server.log"
    log = open(log_path, "wb")
    server = subprocess.Popen([str(BIN / "twistd"), "-n", "--pidfile=", "pns4ones", "--config", os.devnull, "--data-dir", str(data),
                               "--listen", f"127.0.0.1:{api}", "--service", f"127.0.0.1:{svc}", "--admin-port", str(free_port()),
                               "--log_level", "Warning"], stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
    deadline = time.monotonic() + 20
    while b"applications in the store" not in log_path.read_bytes():
        if time.monotonic() > deadline or server.poll() is not None:
            print(log_path.read_text(), file=sys.stderr)
            return 1
        time.sleep(0.1)
    conn = http.client.HTTPConnection("127.0.0.1", api, timeout=10)
    conn.request("GET", f"/auth?server_key={app['server_key']}")
    token = json.loads(conn.getresponse().read())["access_token"]
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}

    def send(user: str, seq: int) -> int:
        body = json.dumps(
            {"Recipient": {"Type": "user", "IbId": "soak", "UserId": user}, "Message": {"Topic": "soak", "Data": {"seq": str(seq)}}}
        )
        conn.request("POST", "/sendmessage", body, headers)
        response = conn.getresponse()
        doc = json.loads(response.read())
        if response.status != 200:
            raise SystemExit(f"send answered {response.status}: {doc}")
        return int(doc["sessions"])

    time.sleep(0.5)
    base_fds, base_rss = fds(server.pid), rss_kb(server.pid)
    selector = selectors.DefaultSelector()
    subs: dict[str, Sub] = {}
    done: list[Sub] = []
    counter = seq = 0
    counts = {"connections": 0, "graceful": 0, "resets": 0, "sent": 0, "written": 0}

    def pump(timeout: float = 0.0) -> None:
        for event, _ in selector.select(timeout):
            sub = event.data
            try:
                chunk = sub.sock.recv(65536)
            except (BlockingIOError, InterruptedError):
                continue
            if not chunk:
                raise SystemExit(f"server closed subscriber {sub.name} unexpectedly")
            for plaintext in sub.decoder.feed(chunk):
                sub.received.append(int(json.loads(plaintext)["data"]["seq"]))

    def connect() -> None:
        nonlocal counter
        counter += 1
        name = f"s{counter}"
        sock = socket.create_connection(("127.0.0.1", svc))
        sock.sendall(registration_frame(key, app["id"], "soak", name))
        sock.setblocking(False)
        sub = subs[name] = Sub(name, sock, key)
        selector.register(sock, selectors.EVENT_READ, sub)
        counts["connections"] += 1

    def finish(sub: Sub, graceful: bool) -> None:
        selector.unregister(sub.sock)
        del subs[sub.name]
        if graceful:
            sub.state = "checked"
            sub.sock.close()
            counts["graceful"] += 1
            done.append(sub)
        else:
            sub.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sub.sock.close()  # an abrupt reset (RST)
            counts["resets"] += 1

    for _ in range(args.subscribers):
        connect()
    started = time.monotonic()
    last_report = started
    while time.monotonic() - started < args.duration:
        pump()
        roll = rng.random()
        live = [s for s in subs.values() if s.state == "live"]
        if (roll < 0.04 and len(subs) < 2 * args.subscribers) or len(subs) < args.subscribers // 2:
            connect()
        elif roll < 0.06 and live:
            live_sub = rng.choice(live)
            live_sub.state = "draining"  # no more sends; checked once everything has arrived
        elif roll < 0.07 and live:
            finish(rng.choice(live), graceful=False)
        elif live:
            target = rng.choice(live)
            seq += 1
            counts["sent"] += 1
            if send(target.name, seq):
                target.expected.append(seq)
                counts["written"] += 1
        for sub in [s for s in subs.values() if s.state == "draining" and len(s.received) >= len(s.expected)]:
            finish(sub, graceful=True)
        if time.monotonic() - last_report > 30:
            last_report = time.monotonic()
            print(
                f"  {last_report - started:4.0f} s: {counts}, live {len(subs)}, server fds {fds(server.pid)}, rss {rss_kb(server.pid) // 1024} MiB",
                flush=True,
            )
    # drain the rest
    drain_until = time.monotonic() + 10
    while time.monotonic() < drain_until and any(len(s.received) < len(s.expected) for s in subs.values()):
        pump(0.1)
    for sub in list(subs.values()):
        finish(sub, graceful=True)
    closed_at = time.monotonic()
    while fds(server.pid) > base_fds and time.monotonic() - closed_at < 20:
        time.sleep(0.2)  # the server notices thousands of closes in its own time
    settle_s = round(time.monotonic() - closed_at, 1)
    end_fds, end_rss = fds(server.pid), rss_kb(server.pid)
    lost = dup = disorder = 0
    for sub in done:
        got = sub.received
        dup += len(got) - len(set(got))
        lost += len(set(sub.expected) - set(got))
        disorder += got != sorted(got)
        if set(got) - set(sub.expected):
            raise SystemExit(f"{sub.name} got messages it was not sent: {sorted(set(got) - set(sub.expected))[:5]}")
    server.send_signal(signal.SIGTERM)
    code = server.wait(20)
    text = log_path.read_text(errors="replace")
    bad = [line for line in text.splitlines() if ("#error]" in line or "#critical]" in line or "Traceback" in line)]
    report = {
        "duration_s": round(time.monotonic() - started, 1), **counts, "checked_subscriptions": len(done),
        "lost": lost, "duplicates": dup, "out_of_order": disorder,
        "fds_before": base_fds, "fds_after": end_fds, "rss_before_mib": round(base_rss / 1024, 1), "rss_after_mib": round(end_rss / 1024, 1),
        "fds_settled_in_s": settle_s, "log_errors": len(bad), "exit_code": code,
    }  # fmt: skip
    print(json.dumps(report))
    ok = lost == dup == disorder == 0 and end_fds == base_fds and end_rss - base_rss < 64 * 1024 and not bad and code == 0
    if not ok:
        print("SOAK FAILED", *bad[:10], f"(the server's log and store are kept in {tmp})", sep="\n", file=sys.stderr)
    else:
        shutil.rmtree(tmp, ignore_errors=True)
        print(
            f"soak ok: {counts['connections']} connections ({counts['resets']} reset), {counts['written']} messages written, 0 lost, 0 duplicated; fds {base_fds} -> {end_fds}, rss {report['rss_before_mib']} -> {report['rss_after_mib']} MiB"
        )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
