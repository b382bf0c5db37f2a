#!/usr/bin/env python3
"""
The Python work of one-to-one sends, in process and without system calls: the
send API's front connection, the real handlers, core, in-process hub and
metrics, fed ``POST /sendmessage`` requests one per ``dataReceived`` (as a
closed-loop publisher sends them), each to one of N subscribers that build
their add-in frame and drop it.  Prints microseconds per send; repeatable
enough to compare a change (run it a few times), and under
``valgrind --tool=callgrind`` it gives instruction counts (the difference of
``--rounds 1`` and ``--rounds 3``, halved, is what the sends cost).

    scripts/bench_inproc.py [--sends 20000] [--subscribers 1000] [--batch 0] [--rounds 1] [--trace-size 5000]

The delivery trace records every send as the service does (``trace_size``,
5000 by default; ``--trace-size 0`` leaves it out, to measure what it costs).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import time
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock

from pns4ones import crypto
from pns4ones.core import Core
from pns4ones.http.connection import FrontFactory
from pns4ones.http.handlers import Handlers
from pns4ones.http.resources import SendAPI
from pns4ones.http.site import ApiSite
from pns4ones.hub import Outbound
from pns4ones.hub.local import LocalHub
from pns4ones.store import Application, Snapshot, TokenRecord
from pns4ones.trace import DEFAULT_SIZE, Trace
from pns4ones.wire import ClientKey

APP = Application("app", "Bench", "s" * 64, ClientKey.generate(), 0.0)
TOKEN_ID = b"\x01" * 16
TOKEN = crypto.derive_token(APP.server_key, TOKEN_ID)


class Store:
    def snapshot(self) -> Deferred[Snapshot]:
        digest = crypto.token_digest(TOKEN)
        return succeed(Snapshot((APP,), (TokenRecord(digest, APP.id, TOKEN_ID, 0.0, 4e9),)))


class Subscriber:
    """A session that builds its frame and drops it (the socket's send() is not measured here)."""

    transport_name = "bench"
    node = None
    group = ""
    groups: tuple[str, ...] = ()

    def __init__(self, user: str) -> None:
        self.app_id, self.ib_id, self.user_id, self.keys = APP.id, "bench", user, APP.client_key
        self.bytes = 0

    def deliver(self, message: Outbound) -> bool:
        self.bytes += len(message.addin_frame(self.keys))
        return True


class Sink:
    """A transport that drops what is written (plain TCP's shape is not needed: the front connection falls back to write())."""

    disconnecting = False

    def __init__(self) -> None:
        self.written = 0

    def write(self, data: bytes) -> None:
        self.written += len(data)

    def writeSequence(self, data: list[bytes]) -> None:
        for d in data:
            self.write(d)

    def getPeer(self) -> IPv4Address:
        return IPv4Address("TCP", "127.0.0.1", 40000)

    def getHost(self) -> IPv4Address:
        return IPv4Address("TCP", "127.0.0.1", 36696)

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        pass

    def unregisterProducer(self) -> None:
        pass

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def loseConnection(self) -> None:
        self.disconnecting = True

    def abortConnection(self) -> None:
        self.disconnecting = True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sends", type=int, default=20000)
    parser.add_argument("--subscribers", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=0, help="POST /sendmessages with this many messages per request (0: /sendmessage)")
    parser.add_argument("--rounds", type=int, default=1, help="feed the requests this many times (callgrind: compare 1 and 3)")
    parser.add_argument("--no-metrics", action="store_true")
    parser.add_argument("--trace-size", type=int, default=DEFAULT_SIZE, help="the delivery trace's size (the service's trace_size; 0: off)")
    parser.add_argument("--profile", action="store_true", help="cProfile the run, top 30 by own time")
    args = parser.parse_args()
    from twisted.internet import reactor

    clock = Clock()
    core = Core(Store(), LocalHub(), clock, trace=Trace(args.trace_size))  # type: ignore[arg-type]
    core.apply_snapshot(Store().snapshot().result)  # type: ignore[attr-defined,arg-type]
    for i in range(args.subscribers):
        core.adopt(Subscriber(f"u{i}"))  # type: ignore[arg-type]
    handlers = Handlers(core, log_sends=False)
    site = ApiSite(SendAPI(handlers).resource(), 1 << 20, 30.0, clock=clock)
    if not args.no_metrics:
        from pns4ones.metrics import Metrics

        metrics = Metrics(reactor)
        handlers.metrics = metrics
        core.hub.on_routed = metrics.routed  # type: ignore[attr-defined]
        site.on_request = metrics.http_request
    front = FrontFactory(site, handlers, clock)  # type: ignore[arg-type]
    proto = front.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
    sink = Sink()
    proto.makeConnection(sink)  # type: ignore[arg-type]
    rnd = random.Random(1)
    pad = "x" * 130

    def item(i: int) -> dict[str, Any]:
        return {
            "Recipient": {"Type": "user", "IbId": "bench", "UserId": f"u{rnd.randrange(args.subscribers)}"},
            "Message": {"Topic": "bench", "Data": {"t": str(1700000000000000000 + i), "s": f"B{i}", "p": pad}},
        }

    head = b"POST %s HTTP/1.1\r\nHost: 127.0.0.1:36696\r\nAuthorization: Bearer %s\r\nContent-Type: application/json\r\nContent-Length: %%d\r\n\r\n"
    requests = []
    if args.batch:
        h = head % (b"/sendmessages", TOKEN.encode())
        for n in range(args.sends // args.batch):
            body = json.dumps([item(n * args.batch + k) for k in range(args.batch)], separators=(",", ":")).encode()
            requests.append(h % len(body) + body)
    else:
        h = head % (b"/sendmessage", TOKEN.encode())
        for n in range(args.sends):
            body = json.dumps(item(n), separators=(",", ":")).encode()
            requests.append(h % len(body) + body)
    feed = proto.dataReceived
    for r in requests[:200]:  # warm up
        feed(r)
    gc.freeze()  # the service's collector settings (PnsService._loaded)
    gc.set_threshold(20_000, 20, 20)
    if args.profile:
        import cProfile
        import pstats

        prof = cProfile.Profile()
        prof.enable()
    t0 = time.perf_counter()
    c0 = time.process_time()
    for _ in range(args.rounds):
        for r in requests:
            feed(r)
    cpu = time.process_time() - c0
    wall = time.perf_counter() - t0
    if args.profile:
        prof.disable()
        pstats.Stats(prof).sort_stats(os.environ.get("PROFILE_SORT", "tottime")).print_stats(int(os.environ.get("PROFILE_N", "30")))
    sent = len(requests) * (args.batch or 1) * args.rounds
    print(json.dumps({"sends": sent, "us_per_send_wall": round(wall / sent * 1e6, 2), "us_per_send_cpu": round(cpu / sent * 1e6, 2)}))


if __name__ == "__main__":
    main()
