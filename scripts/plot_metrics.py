#!/usr/bin/env python3
"""
A short run of the real server under a little load, scraped from /metrics twice
a second, plotted the way the Grafana dashboard (contrib/grafana) shows it:

    .venv/bin/pip install matplotlib
    .venv/bin/python scripts/plot_metrics.py docs/metrics.png

Subscribers come and go in waves, a sender broadcasts and unicasts in bursts, a
few clients register with a wrong key.  Everything on 127.0.0.1.
"""

from __future__ import annotations

import itertools
import json
import random
import selectors
import socket
import sys
import threading
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from prometheus_client.parser import text_string_to_metric_families

from pns4ones_client.protocol import ClientKey, registration_frame
from tests.support import ServerProcess

DURATION = 60.0


def scrape(port: int) -> dict[tuple[str, tuple], float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def total(sample: dict, name: str, **match: str) -> float:
    return sum(v for (n, labels), v in sample.items() if n == name and all(dict(labels).get(k) == w for k, w in match.items()))


class Subscribers:
    """Raw add-in connections, drained by one selector thread."""

    def __init__(self, port: int, app: dict[str, str]) -> None:
        self.port, self.app = port, app
        self.key = ClientKey.decode(app["client_key"])
        self.sel = selectors.DefaultSelector()
        self.socks: list[socket.socket] = []
        self.lock = threading.Lock()
        self.stop = False
        threading.Thread(target=self._drain, daemon=True).start()

    def add(self, n: int, ib: str = "ib1") -> None:
        for _ in range(n):
            s = socket.create_connection(("127.0.0.1", self.port))
            s.sendall(registration_frame(self.key, self.app["id"], ib, f"user{len(self.socks)}", ""))
            s.setblocking(False)
            with self.lock:
                self.sel.register(s, selectors.EVENT_READ)
                self.socks.append(s)

    def remove(self, n: int) -> None:
        with self.lock:
            for s in self.socks[-n:]:
                self.sel.unregister(s)
                s.close()
            del self.socks[-n:]

    def stalled(self, n: int) -> list[socket.socket]:
        """Registered subscribers that never read (a tiny receive buffer): cut as slow readers."""
        out = []
        for i in range(n):
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 2048)
            s.connect(("127.0.0.1", self.port))
            s.sendall(registration_frame(self.key, self.app["id"], "ib1", f"stalled{i}", ""))
            out.append(s)
        return out

    def idle(self, n: int) -> list[socket.socket]:
        """Connections that never register: cut after registration_timeout."""
        return [socket.create_connection(("127.0.0.1", self.port)) for _ in range(n)]

    def bad(self, n: int) -> None:
        wrong = ClientKey(bytes(32), bytes(16))
        for _ in range(n):
            with socket.create_connection(("127.0.0.1", self.port)) as s:
                s.sendall(registration_frame(wrong, self.app["id"], "ib1", "x", ""))

    def _drain(self) -> None:
        while not self.stop:
            with self.lock:
                events = self.sel.select(timeout=0.01)
                for key, _ in events:
                    try:
                        if not key.fileobj.recv(1 << 16):
                            self.sel.unregister(key.fileobj)
                    except OSError:
                        pass
            time.sleep(0.001)


def sender(api_port: int, app: dict[str, str], rate: list[float], stop: threading.Event) -> None:
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", api_port, timeout=5)
    conn.request("GET", f"/auth?server_key={app['server_key']}")
    token = json.loads(conn.getresponse().read())["access_token"]
    while not stop.is_set():
        kind = "all" if random.random() < 0.3 else "user"
        body = {
            "Recipient": {"Type": kind, "IbId": "ib1", "UserId": f"user{random.randrange(400)}"},
            "Message": {"Topic": "plot", "Data": {"n": "x" * 200}},
        }
        conn.request("POST", "/sendmessage", body=json.dumps(body), headers={"Authorization": f"Bearer {token}"})
        conn.getresponse().read()
        time.sleep(1.0 / max(rate[0], 1.0))


def main(out: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    server = ServerProcess(log_level="Warning", args=["--send_buffer_limit", "16K", "--registration_timeout", "5"])
    try:
        app = server.create_app("Shop")
        server.start()
        subs = Subscribers(server.service_port, app)
        rate = [20.0]
        stop = threading.Event()
        threading.Thread(target=sender, args=(server.api_port, app, rate, stop), daemon=True).start()
        t0 = time.monotonic()
        rows = []
        keep: list[socket.socket] = []
        while (now := time.monotonic() - t0) < DURATION:
            phase = now / DURATION
            target = int(400 * min(1.0, phase * 3)) if phase < 0.6 else max(100, int(400 - (phase - 0.6) / 0.3 * 300))
            if len(subs.socks) < target:
                subs.add(min(40, target - len(subs.socks)))
            elif len(subs.socks) > target:
                subs.remove(min(40, len(subs.socks) - target))
            rate[0] = 150.0 if 0.35 < phase < 0.55 else 30.0
            if 0.7 < phase < 0.8:
                subs.bad(3)
            if not keep and phase > 0.1:
                keep += subs.stalled(10)
            if len(keep) == 10 and phase > 0.5:
                keep += subs.idle(8)
            rows.append((now, scrape(server.admin_port)))
            time.sleep(0.5)
        stop.set()
        subs.stop = True
    finally:
        server.cleanup()

    times = [t for t, _ in rows[1:]]

    def rate_of(name: str, **match: str) -> list[float]:
        return [(total(b, name, **match) - total(a, name, **match)) / (tb - ta) for (ta, a), (tb, b) in itertools.pairwise(rows)]

    def quantile(q: float) -> list[float]:
        out = []
        for (_, a), (_, b) in itertools.pairwise(rows):
            buckets = sorted(
                (float(dict(labels)["le"]), v - a.get((n, labels), 0.0))
                for (n, labels), v in b.items()
                if n == "pns4ones_send_latency_seconds_bucket"
            )
            count = buckets[-1][1] if buckets else 0
            if count <= 0:
                out.append(float("nan"))
                continue
            out.append(next(le for le, c in buckets if c >= q * count) * 1000)
        return out

    fig, axes = plt.subplots(2, 3, figsize=(15, 7.5), constrained_layout=True)
    fig.suptitle("pns4ones: a 60-second run scraped from /metrics (panels of contrib/grafana/pns4ones.json)")
    ax = axes[0][0]
    ax.plot(times, [total(s, "pns4ones_subscriptions") for _, s in rows[1:]], label="subscriptions")
    ax.plot(times, [total(s, "pns4ones_connections") for _, s in rows[1:]], "--", label="TCP connections")
    ax.set_title("Connections")
    ax = axes[0][1]
    ax.plot(times, rate_of("pns4ones_messages_sent_total", recipient_type="user"), label="user")
    ax.plot(times, rate_of("pns4ones_messages_sent_total", recipient_type="all"), label="all")
    ax.set_title("Send rate (messages/s)")
    ax = axes[0][2]
    ax.plot(times, rate_of("pns4ones_deliveries_total"), label="frames/s")
    ax.set_title("Delivery rate (frames/s)")
    ax = axes[1][0]
    for q in (0.5, 0.95, 0.99):
        ax.step(times, quantile(q), where="post", label=f"p{int(q * 100)} (bucket bound)")
    ax.set_yscale("log")
    ax.set_title("Send latency (ms, received to last write queued)")
    ax = axes[1][1]
    ax.plot(times, rate_of("pns4ones_registrations_total", result="rejected"), label="registrations rejected/s")
    ax.plot(times, rate_of("pns4ones_registrations_total", result="accepted"), label="registrations accepted/s")
    ax.set_title("Registrations")
    ax = axes[1][2]
    ax.plot(times, rate_of("pns4ones_subscriptions_cut_total", reason="slow-reader"), label="slow-reader")
    ax.plot(times, rate_of("pns4ones_subscriptions_cut_total", reason="idle"), label="idle")
    ax.set_title("Subscriptions cut (/s)")
    for row in axes:
        for ax in row:
            ax.set_xlabel("seconds")
            ax.grid(alpha=0.3)
            ax.legend(loc="upper left", fontsize="small")
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=80)
    print(f"wrote {out}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "docs/metrics.png")
