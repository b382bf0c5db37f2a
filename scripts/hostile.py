#!/usr/bin/env python3
"""
Hostile probes against a real ``twistd -n pns4ones`` on loopback, one fresh
server per probe.  For each probe it prints the server's RSS before, at its
peak and after (once the attacker has left and the server had a moment),
``/health`` latency while the probe ran (median and worst of one request every
100 ms, each on a new connection), and the verdict with what decided it.

Every probe is bounded in count and in time, and stops early when the server's
RSS grows past ``--rss-budget`` MiB (a fail in itself).

    scripts/hostile                      every probe (about five minutes)
    scripts/hostile --only ws-ping-flood,addin-idle
    scripts/hostile --json results.json  also write the figures as JSON

The probes (see PROBES): the send API's front door (never-ending header value,
header name and chunked trailer; trailer fields used as headers; an HTTP/2.0
request line over HTTP/1; a slow request to a route handed to twisted.web),
WebSocket pings from a client that never reads, parallel wrong panel
passwords, NaN and 1e999 numbers, 20,000 idle add-in connections, and a copy
of the store without its key file.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import os
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support import ADMIN, ServerProcess  # noqa: E402

MIB = 1024 * 1024


def rss(pid: int) -> int:
    """Resident set size of ``pid`` in bytes."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


@dataclass
class Outcome:
    name: str
    passed: bool = False
    detail: str = ""
    rss_before: int = 0
    rss_peak: int = 0
    rss_after: int = 0
    health_ms: list[float] = field(default_factory=list)
    health_failures: int = 0
    seconds: float = 0.0


class Monitor:
    """Samples the server's RSS every 50 ms and times /health every 100 ms while a probe runs."""

    def __init__(self, server: ServerProcess, budget: int) -> None:
        assert server.proc is not None
        self.pid = server.proc.pid
        self.port = server.api_port
        self.budget = budget
        self.base = rss(self.pid)
        self.peak = self.base
        self.health_ms: list[float] = []
        self.failures = 0
        self.over_budget = threading.Event()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._rss, daemon=True), threading.Thread(target=self._health, daemon=True)]

    def __enter__(self) -> Monitor:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(5)

    def _rss(self) -> None:
        while not self._stop.wait(0.05):
            try:
                now = rss(self.pid)
            except OSError:
                return
            self.peak = max(self.peak, now)
            if now - self.base > self.budget:
                self.over_budget.set()

    def _health(self) -> None:
        while not self._stop.wait(0.1):
            started = time.perf_counter()
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
                conn.request("GET", "/health")
                ok = conn.getresponse().status == 200
                conn.close()
            except OSError:
                ok = False
            if ok:
                self.health_ms.append((time.perf_counter() - started) * 1000)
            else:
                self.failures += 1


def token_of(server: ServerProcess, app: dict[str, str]) -> str:
    """An access token (waiting for the server to load an application created a moment ago)."""
    deadline = time.monotonic() + 10
    while True:
        conn = http.client.HTTPConnection("127.0.0.1", server.api_port, timeout=10)
        conn.request("GET", f"/auth?server_key={app['server_key']}")
        response = conn.getresponse()
        body = response.read()
        conn.close()
        if response.status == 200:
            return str(json.loads(body)["access_token"])
        if time.monotonic() > deadline:
            raise RuntimeError(f"/auth answered {response.status}: {body[:200]!r}")
        time.sleep(0.1)


def request(
    server: ServerProcess, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None
) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", server.api_port, timeout=10)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def status_line(data: bytes) -> int | None:
    try:
        return int(data.split(b"\r\n", 1)[0].split()[1])
    except (IndexError, ValueError):
        return None


# -- the probes: each gets a started server and its monitor, returns (passed, detail) ---------------------------


def endless(
    server: ServerProcess, monitor: Monitor, head: bytes, filler: bytes, connections: int = 4, seconds: float = 6.0
) -> tuple[bool, str]:
    """``connections`` clients send ``head`` then ``filler`` forever (bounded by ``seconds`` and the RSS budget)."""
    socks = []
    for _ in range(connections):
        sock = socket.create_connection(("127.0.0.1", server.api_port), timeout=5)
        sock.sendall(head)
        sock.setblocking(False)
        socks.append(sock)
    sent = [0] * connections
    closed = [False] * connections
    chunk = filler * (65536 // len(filler))
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and not all(closed) and not monitor.over_budget.is_set():
        for i, sock in enumerate(socks):
            if closed[i]:
                continue
            try:
                sent[i] += sock.send(chunk)
            except BlockingIOError:
                pass
            except OSError:
                closed[i] = True
        time.sleep(0.001)
    answers = []
    for sock in socks:
        sock.setblocking(True)
        sock.settimeout(0.5)
        try:
            answers.append(status_line(sock.recv(4096)))
        except OSError:
            answers.append(None)
        sock.close()
    most = max(sent) / MIB
    passed = all(closed) and most < 1.0 and not monitor.over_budget.is_set()
    why = "over the RSS budget: stopped" if monitor.over_budget.is_set() else f"{sum(closed)}/{connections} cut by the server"
    return passed, f"{why}; up to {most:.1f} MiB sent per connection; answers {answers}"


def probe_header_value(server: ServerProcess, monitor: Monitor) -> tuple[bool, str]:
    return endless(server, monitor, b"POST /sendmessage HTTP/1.1\r\nHost: x\r\nX-Endless: ", b"a")


def probe_header_name(server: ServerProcess, monitor: Monitor) -> tuple[bool, str]:
    return endless(server, monitor, b"POST /sendmessage HTTP/1.1\r\nHost: x\r\nX-", b"a")


def probe_trailer(server: ServerProcess, monitor: Monitor) -> tuple[bool, str]:
    head = b"POST /sendmessage HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Type: application/json\r\n\r\n2\r\n{}\r\n0\r\nX-Trailer: "
    return endless(server, monitor, head, b"a")


def probe_trailer_headers(server: ServerProcess, monitor: Monitor) -> tuple[bool, str]:
    app = server.create_app("Trailers")
    good = token_of(server, app)
    body = json.dumps({"Recipient": {"Type": "all", "IbId": "ib"}, "Message": {"Topic": "t"}}).encode()

    def send(header_token: str, trailer_token: str) -> int | None:
        with socket.create_connection(("127.0.0.1", server.api_port), timeout=5) as sock:
            sock.sendall(
                b"POST /sendmessage HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n"
                + f"Authorization: Bearer {header_token}\r\n\r\n".encode()
                + b"%x\r\n%s\r\n0\r\n" % (len(body), body)
                + f"Authorization: Bearer {trailer_token}\r\n\r\n".encode()
            )
            return status_line(sock.recv(4096))

    forged = send("not-a-token", good)
    spoiled = send(good, "not-a-token")
    passed = forged in (400, 401) and spoiled in (200, 400)
    return passed, f"bad header + good trailer: {forged} (must not be 200); good header + bad trailer: {spoiled}"


def probe_http2_line(server: ServerProcess, monitor: Monitor) -> tuple[bool, str]:
    app = server.create_app("H2")
    token = token_of(server, app)
    body = json.dumps({"Recipient": {"Type": "all", "IbId": "ib"}, "Message": {"Topic": "t"}}).encode()
    with socket.create_connection(("127.0.0.1", server.api_port), timeout=5) as sock:
        sock.sendall(
            b"POST /sendmessage HTTP/2.0\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Authorization: Bearer {token}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        try:
            answer = sock.recv(4096)
        except OSError:
            answer = b""
    line = answer.split(b"\r\n", 1)[0].decode("latin-1")
    code = status_line(answer)
    return code in (400, 505) or not answer, f"answered {line or 'nothing (closed)'}"


def probe_slow_cold(server: ServerProcess, monitor: Monitor) -> tuple[bool, str]:
    """A request to a route twisted.web answers, trickled from its first byte: the 408 must come request_timeout after it."""
    app = server.create_app("Slow")
    token = token_of(server, app)
    timeout = 5.0  # the server runs with --request_timeout 5 for this probe
    head = f"PUT /groups/ib/g HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n"
    pause = 0.6 * timeout / len(head)  # the head over 60% of the timeout, then the body a byte every 0.5 s
    started = time.monotonic()
    answer = b""
    with socket.create_connection(("127.0.0.1", server.api_port), timeout=30) as sock:
        sock.settimeout(pause)
        for position in range(len(head) + 100):
            if time.monotonic() - started > 4 * timeout:
                break
            try:
                sock.sendall(head[position].encode() if position < len(head) else b" ")
            except OSError:
                break
            sock.settimeout(pause if position < len(head) else 0.5)
            try:
                data = sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                break
            if not data:
                break
            answer += data
            break
    took = time.monotonic() - started
    return (
        took <= timeout + 1.5,
        f"answered {status_line(answer)} after {took:.1f} s (request_timeout {timeout:.0f} s, from the first byte)",
    )


def probe_ws_ping_flood(server: ServerProcess, monitor: Monitor) -> tuple[bool, str]:
    from wsproto import Connection, ConnectionType
    from wsproto.events import Ping

    app = server.create_app("WS")
    token = token_of(server, app)
    _, body = request(server, "POST", "/tickets", json.dumps({"IbId": "ib", "UserId": "u"}).encode(), {"Authorization": f"Bearer {token}"})
    ticket = json.loads(body)["ticket"]
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", server.api_port))
    sock.sendall(
        f"GET /subscribe/ws?ticket={ticket} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Key: MDEyMzQ1Njc4OWFiY2RlZg==\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:  # the handshake first: twisted.web holds (and never reads past) bytes sent before its 101
        chunk = sock.recv(4096)
        if not chunk:
            return False, "the server closed the connection during the handshake"
        head += chunk
    client = Connection(ConnectionType.CLIENT)
    frame = client.send(Ping(b""))  # the smallest ping: the most answers per byte the attacker sends
    batch = frame * 10_000
    sent = 0
    refused = False
    sock.setblocking(False)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and sent < 1_500_000 and not monitor.over_budget.is_set():
        try:
            sent += sock.send(batch) // len(frame)
        except BlockingIOError:  # the server is not reading as fast: keep pushing
            time.sleep(0.001)
        except OSError:  # reset: the server cut us
            refused = True
            break
    # Only now read (what the server kept sending us) to see whether it closed: FIN or RST within a few seconds.
    sock.setblocking(True)
    sock.settimeout(1.0)
    cut = refused
    ends = time.monotonic() + 8
    while not cut and time.monotonic() < ends:
        try:
            if not sock.recv(1 << 20):
                cut = True
        except TimeoutError:
            continue
        except OSError:
            cut = True
    sock.close()
    return (
        cut and not monitor.over_budget.is_set(),
        f"{sent} pings sent, never reading; {'cut by the server' if cut else 'still connected'}",
    )


def probe_panel_passwords(server: ServerProcess, monitor: Monitor) -> tuple[bool, str]:
    from tests.test_admin_panel import PASSWORD, PanelClient, setup_code

    PanelClient(server.admin_port).setup(setup_code(server))
    admin = PanelClient(server.admin_port, source="127.0.0.9", timeout=30)
    assert admin.login(PASSWORD) == 303
    outcomes: list[int] = []
    stop = time.monotonic() + 5

    def attacker(source: str, parallel: int) -> None:
        client = PanelClient(server.admin_port, source=source, timeout=30)
        token = client.csrf("/login")

        def one(barrier: threading.Barrier) -> None:
            barrier.wait()
            outcomes.append(client.login("wrong password", token))

        while time.monotonic() < stop:
            barrier = threading.Barrier(parallel)
            wave = [threading.Thread(target=one, args=(barrier,)) for _ in range(parallel)]
            for t in wave:
                t.start()
            for t in wave:
                t.join(30)

    threads = [threading.Thread(target=attacker, args=("127.0.0.1", 30))]
    threads += [threading.Thread(target=attacker, args=(f"127.0.4.{n + 1}", 1)) for n in range(10)]
    for t in threads:
        t.start()
    pages = []
    while time.monotonic() < stop:
        started = time.perf_counter()
        status, _, _ = admin.request("GET", "/apps")
        pages.append((time.perf_counter() - started) * 1000)
        assert status == 200
    for t in threads:
        t.join(60)
    checked = outcomes.count(401)
    passed = checked <= 25 and max(pages) < 1000
    return passed, (
        f"{len(outcomes)} wrong passwords: {checked} checked (401), {outcomes.count(429)} refused at once (429); "
        f"logged-in page p50 {statistics.median(pages):.0f} ms, max {max(pages):.0f} ms"
    )


def probe_nan_ttl(server: ServerProcess, monitor: Monitor) -> tuple[bool, str]:
    app = server.create_app("Numbers")
    auth = {"Authorization": f"Bearer {token_of(server, app)}", "Content-Type": "application/json"}
    numbers = ["NaN", "Infinity", "-Infinity", "1e999", "-1e999", "1" + "0" * 400, "-1"]
    statuses = []
    for n in numbers:
        statuses.append(request(server, "POST", "/tickets", ('{"IbId":"i","UserId":"u","TTL":' + n + "}").encode(), auth)[0])
        body = '{"Recipient":{"Type":"user","IbId":"i","UserId":"u"},"Message":{"Topic":"t","TTL":' + n + "}}"
        statuses.append(request(server, "POST", "/sendmessage", body.encode(), auth)[0])
        statuses.append(request(server, "POST", "/sendmessages", ("[" + body + "]").encode(), auth)[0])
    plain = b'{"Recipient":{"Type":"user","IbId":"i","UserId":"u"},"Message":{"Topic":"t"}}'
    for value in ("nan", "inf", "1e999", "1" + "0" * 400):
        statuses.append(request(server, "POST", "/sendmessage?ttl=" + value, plain, auth)[0])
    ticket = json.loads(request(server, "POST", "/tickets", b'{"IbId":"i","UserId":"u"}', auth)[1])["ticket"]
    for value in ("%C2%B2", "NaN", "9" * 19):
        statuses.append(request(server, "GET", f"/subscribe/sse?ticket={ticket}&since={value}")[0])
    five = [s for s in statuses if s >= 500]
    return not five, f"{len(statuses)} requests: statuses {sorted(set(statuses))}; {len(five)} answered 5xx"


def _addin_worker(port: int, count: int, first_source: int, hold: float) -> None:
    """A child process: ``count`` idle connections to the add-in port, 100 per source address, held ``hold`` seconds."""
    socks = []
    for n in range(count):
        source = first_source + n // 100
        sock = socket.socket()
        try:
            sock.bind((f"127.{10 + source // 250}.{source % 250}.1", 0))
            sock.setblocking(False)
            sock.connect_ex(("127.0.0.1", port))
        except OSError:
            sock.close()
            continue
        socks.append(sock)
    time.sleep(hold)
    for sock in socks:
        sock.close()


def probe_addin_idle(server: ServerProcess, monitor: Monitor) -> tuple[bool, str]:
    from pns4ones_client import Subscriber

    assert server.proc is not None
    app = server.create_app("Idle flood")
    limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    total, workers, hold = 20_000, 4, 10.0
    started = time.monotonic()
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                __file__,
                "--addin-worker",
                str(server.service_port),
                str(total // workers),
                str(w * total // workers // 100),
                str(hold),
            ]
        )
        for w in range(workers)
    ]
    peak_fds = 0
    registered = received = False
    panel_ms = []
    time.sleep(2.0)
    while time.monotonic() - started < hold:
        peak_fds = max(peak_fds, open_fds(server.proc.pid))
        t0 = time.perf_counter()
        try:
            conn = http.client.HTTPConnection("127.0.0.1", server.admin_port, timeout=5)
            conn.request("GET", "/login", headers={"Host": f"127.0.0.1:{server.admin_port}"})
            conn.getresponse().read()
            conn.close()
            panel_ms.append((time.perf_counter() - t0) * 1000)
        except OSError:
            panel_ms.append(float("inf"))
        if not registered:
            try:
                sub = Subscriber("127.0.0.1", server.service_port, app["id"], app["client_key"], "ib", "real", timeout=5).connect()
                time.sleep(0.3)
                token = token_of(server, app)
                body = json.dumps({"Recipient": {"Type": "user", "IbId": "ib", "UserId": "real"}, "Message": {"Topic": "during"}}).encode()
                status, answer = request(
                    server, "POST", "/sendmessage", body, {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
                )
                registered = status == 200 and json.loads(answer)["sessions"] == 1
                received = registered and sub.receive(5) == {"topic": "during"}
                sub.close()
            except OSError:
                pass
        time.sleep(0.5)
    for proc in procs:
        proc.wait(30)
    log = server.log()
    status, metrics = 0, b""
    try:
        conn = http.client.HTTPConnection("127.0.0.1", server.admin_port, timeout=5)
        conn.request("GET", "/metrics", headers={"Host": f"127.0.0.1:{server.admin_port}"})
        response = conn.getresponse()
        status, metrics = response.status, response.read()
    except OSError:
        pass
    refused = {
        line.split('reason="')[1].split('"')[0]: float(line.rsplit(" ", 1)[1])
        for line in metrics.decode().splitlines()
        if line.startswith("pns4ones_addin_refused_total{")
    }
    passed = received and monitor.failures == 0 and max(panel_ms, default=0) < 1000 and "EMFILE" not in log and peak_fds < limit - 100
    return passed, (
        f"{total} idle connections from 200 addresses for {hold:.0f} s; server fds peak {peak_fds} of {limit}; "
        f"a 1C client registered and received: {received}; panel max {max(panel_ms, default=0):.0f} ms; refusals {refused}"
    )


def probe_stolen_store(server: ServerProcess, monitor: Monitor) -> tuple[bool, str]:
    apps = [server.create_app(f"App {n}") for n in range(3)]
    tokens = [token_of(server, app) for app in apps]
    server.admin("upd_srv_key", apps[0]["id"])
    export = subprocess.run([ADMIN, "--data-dir", str(server.data_dir), "export", "-"], capture_output=True, timeout=60, check=True).stdout
    time.sleep(1.5)
    copy = Path(tempfile.mkdtemp(prefix="pns4ones-stolen-"))
    try:
        for path in server.data_dir.iterdir():  # the store as a thief copies it, without the key file
            if path.name.startswith("pns4ones.db"):
                shutil.copy(path, copy / path.name)
        stolen = b"".join(p.read_bytes() for p in copy.iterdir()) + export
    finally:
        shutil.rmtree(copy, ignore_errors=True)
    secrets = [s for app in apps for s in (app["server_key"], app["client_key"])] + tokens
    raw_keys = [base64.b64decode(app["client_key"])[8:40] for app in apps]
    found = [s[:8] for s in secrets if s.encode() in stolen] + ["raw AES key" for k in raw_keys if k in stolen]
    return not found, f"{len(secrets)} keys and tokens looked for in the database files and an export: {len(found)} found {found}"


@dataclass(frozen=True)
class Probe:
    name: str
    run: Callable[[ServerProcess, Monitor], tuple[bool, str]]
    args: tuple[str, ...] = ()
    note: str = ""


PROBES = (
    Probe("header-value", probe_header_value),
    Probe("header-name", probe_header_name),
    Probe("trailer-endless", probe_trailer),
    Probe("trailer-headers", probe_trailer_headers),
    Probe("http2-line", probe_http2_line),
    Probe("slow-cold", probe_slow_cold, args=("--request_timeout", "5")),
    Probe("ws-ping-flood", probe_ws_ping_flood),
    Probe("panel-passwords", probe_panel_passwords),
    Probe("nan-ttl", probe_nan_ttl),
    Probe("addin-idle", probe_addin_idle, args=("--registration_timeout", "30")),
    Probe("stolen-store", probe_stolen_store),
)


def run(probe: Probe, budget: int) -> Outcome:
    outcome = Outcome(probe.name)
    server = ServerProcess(args=list(probe.args), log_level="Warning")
    try:
        server.start()
        assert server.proc is not None
        time.sleep(1.0)  # settle after start
        started = time.monotonic()
        with Monitor(server, budget) as monitor:
            outcome.rss_before = monitor.base
            try:
                outcome.passed, outcome.detail = probe.run(server, monitor)
            except Exception as e:  # a probe that cannot finish is a fail, with its reason
                outcome.passed, outcome.detail = False, f"probe error: {type(e).__name__}: {e}"
        outcome.seconds = time.monotonic() - started
        outcome.rss_peak = monitor.peak
        outcome.health_ms = monitor.health_ms
        outcome.health_failures = monitor.failures
        time.sleep(3.0)  # the attacker has left: what the server keeps
        alive = server.proc.poll() is None
        outcome.rss_after = rss(server.proc.pid) if alive else 0
        if not alive:
            outcome.passed, outcome.detail = False, f"the server died ({server.proc.returncode}); " + outcome.detail
        if outcome.health_failures:
            outcome.passed = False
    finally:
        server.cleanup()
    return outcome


def table(outcomes: list[Outcome]) -> str:
    lines = [
        f"{'probe':<16} {'verdict':<7} {'RSS before':>10} {'peak':>7} {'after':>7} {'/health p50':>11} {'max':>7} {'fails':>5}  detail",
    ]
    for o in outcomes:
        p50 = statistics.median(o.health_ms) if o.health_ms else float("nan")
        worst = max(o.health_ms) if o.health_ms else float("nan")
        lines.append(
            f"{o.name:<16} {'pass' if o.passed else 'FAIL':<7} {o.rss_before / MIB:>8.1f} M {o.rss_peak / MIB:>5.1f} M {o.rss_after / MIB:>5.1f} M "
            f"{p50:>8.1f} ms {worst:>4.0f} ms {o.health_failures:>5}  {o.detail}"
        )
    return "\n".join(lines)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--addin-worker":
        port, count, first, hold = sys.argv[2:6]
        _addin_worker(int(port), int(count), int(first), float(hold))
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default="", help="comma-separated probe names: " + ", ".join(p.name for p in PROBES))
    parser.add_argument("--rss-budget", type=int, default=512, help="MiB of RSS growth past which a probe stops (default 512)")
    parser.add_argument("--json", default="", help="also write the figures to this file")
    args = parser.parse_args()
    wanted = {n.strip() for n in args.only.split(",") if n.strip()}
    unknown = wanted - {p.name for p in PROBES}
    if unknown:
        parser.error(f"unknown probe(s): {', '.join(sorted(unknown))}")
    outcomes = []
    for probe in PROBES:
        if wanted and probe.name not in wanted:
            continue
        print(f"-- {probe.name} ...", flush=True)
        outcome = run(probe, args.rss_budget * MIB)
        print(f"   {'pass' if outcome.passed else 'FAIL'}: {outcome.detail}" + (f"  [{probe.note}]" if probe.note else ""), flush=True)
        outcomes.append(outcome)
    print()
    print(table(outcomes))
    if args.json:
        figures = [
            {
                "probe": o.name,
                "passed": o.passed,
                "detail": o.detail,
                "seconds": round(o.seconds, 1),
                "rss_before_mib": round(o.rss_before / MIB, 1),
                "rss_peak_mib": round(o.rss_peak / MIB, 1),
                "rss_after_mib": round(o.rss_after / MIB, 1),
                "health_p50_ms": round(statistics.median(o.health_ms), 2) if o.health_ms else None,
                "health_max_ms": round(max(o.health_ms), 2) if o.health_ms else None,
                "health_failures": o.health_failures,
            }
            for o in outcomes
        ]
        Path(args.json).write_text(json.dumps(figures, indent=1) + "\n")
    sys.exit(0 if all(o.passed for o in outcomes) else 1)


if __name__ == "__main__":
    main()
