"""
The delivery trace's cost per send, in process (no sockets): the send API's
handler (token in memory, parse, Core.send, the in-process hub, one add-in
session that gets the encrypted frame, the answer) and ``Core.send`` alone,
timed with the trace off (``trace_size = 0``) and on (the default size, and
with ``trace_bodies``).  Run it under the shared lock; it prints figures:

    flock /tmp/pns4ones-heavy.lock .venv/bin/python scripts/bench_trace.py
"""

from __future__ import annotations

import argparse
import gc
import json
import time
from collections.abc import Callable
from functools import partial
from typing import Any

from twisted.internet.defer import succeed
from twisted.internet.task import Clock

from pns4ones import crypto
from pns4ones.core import Core
from pns4ones.http.calls import Answer, Call
from pns4ones.http.handlers import Handlers
from pns4ones.hub import Delivery, Outbound
from pns4ones.hub.local import LocalHub
from pns4ones.messages import parse_send
from pns4ones.store import Application, Snapshot, TokenRecord
from pns4ones.wire import ClientKey

APP = Application("app", "Shop", "s" * 64, ClientKey.generate(), 0.0)
TOKEN_ID = b"\x01" * 16
TOKEN = crypto.derive_token(APP.server_key, TOKEN_ID)
BODY = json.dumps(
    {
        "Recipient": {"Type": "user", "IbId": "ib", "UserId": "u7"},
        "Message": {"Topic": "bench", "Notification": {"Title": "Новая задача", "Body": "Позвонить клиенту"}, "Data": {"t": "1"}},
    },
    ensure_ascii=False,
).encode()

BODY_ALL = json.dumps(
    {"Recipient": {"Type": "all", "IbId": "ib"}, "Message": {"Topic": "bench", "Notification": {"Title": "Всем", "Body": "Обновление"}}},
    ensure_ascii=False,
).encode()


class _Store:
    """The one store call the set-up makes (the registry's snapshot)."""

    def snapshot(self) -> Any:
        record = TokenRecord(crypto.token_digest(TOKEN), APP.id, TOKEN_ID, 0.0, 4e9)
        return succeed(Snapshot((APP,), (record,)))


class _Session:
    """An add-in session that takes the encrypted frame (one encryption per message, as in the service)."""

    transport_name = "bench"
    peer = "127.0.0.1"
    node = None
    connected_at = 0.0
    delivered = 0

    def __init__(self, user: str) -> None:
        self.app_id, self.ib_id, self.user_id, self.group, self.keys = APP.id, "ib", user, "", APP.client_key
        self.groups: tuple[str, ...] = ()
        self.session_id = f"bench-{user}"
        self.written = 0

    def deliver(self, message: Outbound) -> bool:
        self.written += len(message.addin_frame(self.keys))
        return True


def build(trace_size: int | None, bodies: bool) -> tuple[Core, Handlers]:
    core = Core(_Store(), LocalHub(), Clock())  # type: ignore[arg-type]
    core.apply_snapshot(_Store().snapshot().result)
    for i in range(100):
        core.adopt(_Session(f"u{i}"))  # type: ignore[arg-type]
    if trace_size is not None:
        from pns4ones.trace import Trace

        core.trace = Trace(trace_size, bodies=bodies)
    return core, Handlers(core, log_sends=False)


def timed(fn: Callable[[], object], n: int) -> float:
    """One run of ``n`` calls, in microseconds per call."""
    gc.collect()
    started = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - started) / n * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", type=int, default=20000, help="calls per run (default 20000)")
    parser.add_argument("--repeat", type=int, default=9, help="runs of each, interleaved; the best counts (default 9)")
    parser.add_argument("--records", default="5000,50000", help="trace sizes whose memory is measured (default 5000,50000)")
    args = parser.parse_args()
    try:
        import pns4ones.trace  # noqa: F401

        variants: list[tuple[str, int | None, bool]] = [("trace off", 0, False), ("trace on", 5000, False), ("trace + bodies", 5000, True)]
    except ImportError:  # the code before the trace
        variants = [("no trace (before)", None, False)]
    call = Call(b"POST", b"/sendmessage", b"", b"Bearer " + TOKEN.encode(), BODY, "192.0.2.1", False)
    request = parse_send(BODY)
    runs: dict[str, Callable[[], object]] = {}
    for name, size, bodies in variants:
        core, handlers = build(size, bodies)
        answer = handlers.answer(handlers.sendmessage, call)
        assert isinstance(answer, Answer) and answer.status == 200, answer
        runs[f"{name}: handler"] = partial(handlers.answer, handlers.sendmessage, call)
        runs[f"{name}: Core.send"] = partial(core.send, APP, request)
        if size:
            delivery = core.send(APP, request).result
            assert isinstance(delivery, Delivery), delivery
            runs[f"{name}: Trace.sent alone"] = partial(core.trace.sent, 1.0, "api", "192.0.2.1", APP.id, request, 0.0, delivery)
    best = dict.fromkeys(runs, float("inf"))
    for _ in range(args.repeat):
        for label, fn in runs.items():
            best[label] = min(best[label], timed(fn, args.n))
    print(f"per send, best of {args.repeat} interleaved runs of {args.n} (a user send to 1 of 100 add-in sessions):")
    for label, value in best.items():
        print(f"  {label:<34} {value:7.2f} µs")
    if variants[0][1] is not None:
        main_memory([int(n) for n in args.records.split(",")])


def memory(records: int, body: bytes, what: str) -> None:
    """Bytes per record held for ``records`` sends of ``body`` (the record, its peer and topic strings, the hub's set of users reached)."""
    import tracemalloc

    from pns4ones.trace import Trace

    core, handlers = build(records, False)
    call = Call(b"POST", b"/sendmessage", b"", b"Bearer " + TOKEN.encode(), body, "192.0.2.1", False)
    tracemalloc.start()
    for _ in range(records):  # the records and what only they hold are allocated while traced
        handlers.answer(handlers.sendmessage, call)
    gc.collect()
    before = tracemalloc.take_snapshot()
    held = len(core.trace)
    core.trace = Trace(0)  # the full trace dropped: what it held is freed
    gc.collect()
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    freed = -sum(stat.size_diff for stat in after.compare_to(before, "filename"))
    print(f"  {what:<44} {held:>7} records  {freed / 1e6:7.2f} MB  {freed / held:6.0f} bytes a record")


def main_memory(sizes: list[int]) -> None:
    print("memory held by the trace (freed when it is dropped):")
    for records in sizes:
        memory(records, BODY, "user sends (1 user reached)")
    for records in sizes:
        memory(records, BODY_ALL, "sends to everyone (100 users reached)")


if __name__ == "__main__":
    main()
