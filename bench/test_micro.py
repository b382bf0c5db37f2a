"""
Micro-benchmarks of the hot pure functions (pytest-benchmark), apart from the
test suite: ``scripts/microbench``.  They time; they assert only correctness.
"""

from __future__ import annotations

import json

from pns4ones import wire
from pns4ones.hub import Delivery, Outbound
from pns4ones.hub.local import LocalHub
from pns4ones.messages import Recipient, parse_send, render_addin_json

KEY = wire.ClientKey.generate()
BODY = json.dumps(
    {
        "Recipient": {"Type": "user", "IbId": "d2273d53-b633-4817-a006-4fa627a5dea9", "UserId": "0b9e8f4c-3a2d-4c1b-9e8f-7a6b5c4d3e2f"},
        "Message": {
            "Topic": "bench",
            "Notification": {"Title": "Новая задача", "Body": "Позвонить клиенту", "Important": True},
            "Data": {"t": "123456789", "s": "B1", "p": "x" * 150},
        },
    },
    ensure_ascii=False,
    indent=4,
).encode("utf-8")
MESSAGE = parse_send(BODY).message


class _Session:
    __slots__ = ("app_id", "group", "groups", "ib_id", "keys", "transport_name", "user_id", "written")

    def __init__(self, user: str) -> None:
        self.app_id, self.ib_id, self.user_id, self.group, self.keys = "app", "ib", user, "", KEY
        self.groups: tuple[str, ...] = ()
        self.transport_name = "bench"
        self.written = 0

    def deliver(self, message: Outbound) -> bool:
        self.written += len(message.addin_frame(self.keys))
        return True

    def end(self, reason: str) -> None:
        pass


def test_parse_send(benchmark) -> None:  # type: ignore[no-untyped-def]
    """Validate a pretty-printed /sendmessage body with Cyrillic text."""
    assert benchmark(parse_send, BODY).recipient.type == "user"


def test_render_addin_json(benchmark) -> None:  # type: ignore[no-untyped-def]
    """Shape the add-in JSON of one message."""
    assert benchmark(render_addin_json, MESSAGE).startswith(b"{")


def test_encode_frame(benchmark) -> None:  # type: ignore[no-untyped-def]
    """Encrypt and frame a ~300-byte plaintext."""
    plaintext = render_addin_json(MESSAGE)
    assert len(benchmark(wire.encode_frame, KEY, plaintext)) > len(plaintext)


def test_parse_registration(benchmark) -> None:  # type: ignore[no-untyped-def]
    """Decode a registration frame."""
    frame = wire.encode_registration(
        KEY, "7d3c0a52-5a4e-4b52-9d43-1f0a2b3c4d5e", "d2273d53-b633-4817-a006-4fa627a5dea9", "0b9e8f4c-3a2d-4c1b-9e8f-7a6b5c4d3e2f"
    )
    assert benchmark(wire.parse_registration, frame[2:]).verify(KEY)


def _hub(n: int) -> LocalHub:
    hub = LocalHub()
    for i in range(n):
        hub.attach(_Session(f"u{i}"))
    return hub


def _send(hub: LocalHub, recipient: Recipient) -> Delivery:
    """What Core.send does with the hub for a message without TTL: one Outbound, published (id, window, fan-out)."""
    return hub.publish("app", recipient, Outbound(MESSAGE)).result


def test_route_user_among_100(benchmark) -> None:  # type: ignore[no-untyped-def]
    """A user send with 100 sessions connected (render + encrypt + 1 delivery)."""
    hub = _hub(100)
    assert benchmark(_send, hub, Recipient("user", "ib", "u7")).sessions == 1


def test_route_user_among_20000(benchmark) -> None:  # type: ignore[no-untyped-def]
    """The same user send with 20,000 sessions connected: should cost the same."""
    hub = _hub(20000)
    assert benchmark(_send, hub, Recipient("user", "ib", "u7")).sessions == 1


def test_route_all_to_1000(benchmark) -> None:  # type: ignore[no-untyped-def]
    """A broadcast to 1,000 sessions: one encryption, 1,000 deliveries."""
    hub = _hub(1000)
    assert benchmark(_send, hub, Recipient("all", "ib")).sessions == 1000


def _metrics():  # type: ignore[no-untyped-def]
    import time

    from pns4ones.metrics import Metrics

    return Metrics(type("Clock", (), {"seconds": staticmethod(time.time)}))


def test_route_user_among_100_with_metrics(benchmark) -> None:  # type: ignore[no-untyped-def]
    """test_route_user_among_100 with the metrics hook counting deliveries and bytes."""
    hub = _hub(100)
    hub.on_routed = _metrics().routed
    assert benchmark(_send, hub, Recipient("user", "ib", "u7")).sessions == 1


def test_metrics_per_send(benchmark) -> None:  # type: ignore[no-untyped-def]
    """Everything the metrics add to one send: routed, sent (counter + latency histogram), HTTP request counter."""
    import time

    metrics = _metrics()
    request = type("Request", (), {"path": b"/sendmessage", "code": 200})()

    def one_send() -> None:
        started = time.perf_counter()
        metrics.routed("app", 1, 400)
        metrics.sent("app", "user", time.perf_counter() - started)
        metrics.http_request(request)

    benchmark(one_send)
    assert metrics.sends > 0
