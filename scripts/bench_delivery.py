"""
Measure group sends and registrations with kept messages on the real server.

    .venv/bin/python scripts/bench_delivery.py

Starts ``twistd -n pns4ones`` (log level Warning) on loopback, connects add-in
subscribers over TCP, and prints:
* a group send to 1,000 members, all online (1,000 sessions), next to an
  ``all`` send to the same 1,000 sessions;
* a group send to 1,000 members of whom 10 are online, among 3,000 other connections;
* a registration with 100 kept messages waiting (connect -> 100th message),
  next to one with a single kept message.
"""

from __future__ import annotations

import http.client
import json
import selectors
import socket
import statistics
import sys
import threading
import time
from pathlib import Path
from urllib.parse import quote

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pns4ones_client import Subscriber
from pns4ones_client.protocol import ClientKey, registration_frame
from tests.support import ServerProcess, wait_for


class Api:
    def __init__(self, server: ServerProcess, app: dict[str, str]) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", server.api_port, timeout=30)
        self.conn.request("GET", f"/auth?server_key={app['server_key']}")
        self.token = json.loads(self.conn.getresponse().read())["access_token"]

    def call(self, method: str, path: str, doc: object = None) -> tuple[int, dict]:
        body = json.dumps(doc).encode() if doc is not None else None
        self.conn.request(method, path, body=body, headers={"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"})
        response = self.conn.getresponse()
        return response.status, json.loads(response.read())


class Drain:
    """Many raw subscriber sockets read by one thread (bytes only: we count on the server's report)."""

    def __init__(self) -> None:
        self.sel = selectors.DefaultSelector()
        self.socks: list[socket.socket] = []
        self.stop = False
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def connect(self, port: int, app: dict[str, str], ib: str, user: str) -> None:
        key = ClientKey.decode(app["client_key"])
        sock = socket.create_connection(("127.0.0.1", port))
        sock.sendall(registration_frame(key, app["id"], ib, user, ""))
        sock.setblocking(False)
        self.socks.append(sock)
        self.sel.register(sock, selectors.EVENT_READ)

    def run(self) -> None:
        while not self.stop:
            for key, _ in self.sel.select(0.1) if self.socks else (time.sleep(0.05) or []):
                try:
                    key.fileobj.recv(1 << 16)
                except (BlockingIOError, OSError):
                    pass

    def close(self) -> None:
        self.stop = True
        self.thread.join()
        for s in self.socks:
            s.close()


def timed(fn, repeat: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000, result


def online(api: Api, ib: str) -> int:
    return api.call("GET", f"/presence/{quote(ib)}")[1]["sessions"]


def main() -> None:
    server = ServerProcess(log_level="Warning", ini="max_kept_per_user = 1000\n")
    app = server.create_app("bench")
    server.start()
    drain = Drain()
    try:
        api = Api(server, app)
        members = [f"member{i}" for i in range(1000)]
        status, _ = api.call("PUT", "/groups/ib1/" + quote("Все менеджеры"), {"UserIds": members})
        assert status == 200
        for user in members:
            drain.connect(server.service_port, app, "ib1", user)
        wait_for(lambda: online(api, "ib1") == 1000, 30, what="1,000 sessions")
        group = {
            "Recipient": {"Type": "group", "IbId": "ib1", "UserGroup": "Все менеджеры"},
            "Message": {"Topic": "t", "Notification": {"Title": "Заказ", "Body": "готов"}},
        }
        everyone = {"Recipient": {"Type": "all", "IbId": "ib1"}, "Message": group["Message"]}
        # Alternate the two kinds, so both see the same load from the reading side.
        ms: dict[str, list[float]] = {"group": [], "all": []}
        for _ in range(50):
            for kind, doc in (("group", group), ("all", everyone)):
                t, report = timed(lambda doc=doc: api.call("POST", "/sendmessage", doc)[1], 1)
                ms[kind].append(t)
                if kind == "group":
                    report_group = report
                else:
                    report_all = report
        ms_group, ms_all, report = statistics.median(ms["group"]), statistics.median(ms["all"]), report_group
        print(
            f"group send, 1,000 members all online: {ms_group:.2f} ms per send (report {report}); 'all' to the same 1,000 sessions: {ms_all:.2f} ms ({report_all})"
        )
        kept_group = {**group, "Message": {**group["Message"], "TTL": 600}}
        ms_kept, report = timed(lambda: api.call("POST", "/sendmessage", kept_group)[1], 20)
        print(f"the same group send with a TTL (kept, 1,000 receivers recorded): {ms_kept:.2f} ms per send (report {report})")

        # 1,000 members, 10 online, among 3,000 connections of non-members.
        api.call("PUT", "/groups/ib2/big", {"UserIds": [f"m{i}" for i in range(1000)]})
        for i in range(10):
            drain.connect(server.service_port, app, "ib2", f"m{i}")
        for i in range(3000):
            drain.connect(server.service_port, app, "ib2", f"other{i}")
        wait_for(lambda: online(api, "ib2") == 3010, 60, what="3,010 sessions")
        sparse = {"Recipient": {"Type": "group", "IbId": "ib2", "UserGroup": "big"}, "Message": {"Topic": "t"}}
        ms_sparse, report = timed(lambda: api.call("POST", "/sendmessage", sparse)[1], 50)
        user = {"Recipient": {"Type": "user", "IbId": "ib2", "UserId": "m1"}, "Message": {"Topic": "t"}}
        ms_user, _ = timed(lambda: api.call("POST", "/sendmessage", user)[1], 50)
        print(
            f"group send, 1,000 members, 10 online among 3,010 connections: {ms_sparse:.2f} ms per send (report {report}); a user send there: {ms_user:.2f} ms"
        )

        # Registration with 100 kept messages waiting.
        def kept_registration(n: int, k: int) -> float:
            uid = f"late{n}"
            for i in range(k):
                api.call(
                    "POST",
                    "/sendmessage?ttl=600",
                    {"Recipient": {"Type": "user", "IbId": "ib3", "UserId": uid}, "Message": {"Topic": f"k{i}"}},
                )
            t0 = time.perf_counter()
            sub = Subscriber("127.0.0.1", server.service_port, app["id"], app["client_key"], "ib3", uid, timeout=10).connect()
            try:
                got = [sub.receive(10) for _ in range(k)]
                assert [m["topic"] for m in got] == [f"k{i}" for i in range(k)], got[:3]
                return (time.perf_counter() - t0) * 1000
            finally:
                sub.close()
                wait_for(lambda: online(api, "ib3") == 0, 10, 0.01, what="disconnect")

        with_kept = statistics.median(kept_registration(n, 100) for n in range(10))
        one = statistics.median(kept_registration(100 + n, 1) for n in range(10))
        print(
            f"registration with 100 kept messages waiting: {with_kept:.1f} ms from connect to the 100th message; with 1 kept message: {one:.1f} ms"
        )
    finally:
        drain.close()
        server.cleanup()


if __name__ == "__main__":
    main()
