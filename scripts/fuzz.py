#!/usr/bin/env python3
"""
Coverage-guided fuzzing (atheris) of the pure parsers: the add-in registration
frame, the /sendmessage body, the INI file, the command line and the restart
hand-over documents (``handoff``); and of the
send API's front connection (``http``: any bytes, cut anywhere, must give only
well-formed answers, never an exception, and never more than the bounds held).
Each target must only ever raise its own error type; anything else is a crash,
reported with the input that caused it.

    scripts/fuzz                    60 s per target
    scripts/fuzz --seconds 600 registration
    scripts/fuzz hypothesis [SCALE]  the hypothesis fuzz tests, SCALE (default 20) times
                                     their CI budget, with new random examples
"""

from __future__ import annotations

import argparse
import functools
import json
import subprocess
import sys
import time
from typing import Any


def target_registration(data: bytes) -> None:
    from pns4ones import wire

    try:
        wire.parse_registration(data)
    except wire.WireError:
        pass


def target_send(data: bytes) -> None:
    from pns4ones.messages import MessageError, parse_send, render_addin_json

    try:
        send = parse_send(data)
    except MessageError:
        return
    plaintext = render_addin_json(send.message)
    assert plaintext.startswith(b"{") and not any(b >= 0xF0 for b in plaintext)
    json.loads(plaintext)


def target_ini(data: bytes) -> None:
    from pns4ones.config import ConfigError, parse_ini

    try:
        parse_ini(data.decode("utf-8", "replace"))
    except ConfigError:
        pass


def target_argv(data: bytes) -> None:
    from pns4ones.config import ConfigError, HelpRequested, parse_argv

    try:
        parse_argv(data.decode("utf-8", "replace").split("\x00"))
    except (ConfigError, HelpRequested):
        pass


def target_handoff(data: bytes) -> None:
    """A restart hand-over document (a sessions or listeners packet, a recovery window): refused with its own error, or well-typed."""
    import math

    from pns4ones.handoff import FAMILIES, HandoffError, listeners_from, sessions_from
    from pns4ones.hub.local import LocalHub
    from pns4ones.hub.recovery import RecoveryError

    try:
        doc = json.loads(data)
    except (ValueError, RecursionError):
        return
    if not isinstance(doc, dict):
        doc = {"sessions": doc, "listeners": doc, "windows": doc}
    descriptors = data[0] % 4
    try:
        for state, family, pending in sessions_from(doc, descriptors):
            assert family in FAMILIES and pending >= 0
            assert all(isinstance(t, str) for t in (state.peer, state.app_id, state.ib_id, state.user_id, state.group, state.key))
            assert state.registration_left is None or (math.isfinite(state.registration_left) and state.registration_left >= 0)
    except HandoffError:
        pass
    try:
        for option, address, _ in listeners_from(doc, descriptors):
            assert isinstance(option, str) and isinstance(address, str)
    except HandoffError:
        pass
    try:
        LocalHub().recovery.adopt(doc, 0.0)
    except RecoveryError:
        pass


@functools.cache
def _front_factory() -> Any:
    """A front connection factory over the real handlers, core and hub, with a store that knows nothing more."""
    from twisted.internet.defer import succeed
    from twisted.internet.task import Clock

    from pns4ones import crypto
    from pns4ones.core import Core
    from pns4ones.http.connection import FrontFactory
    from pns4ones.http.handlers import Handlers
    from pns4ones.http.resources import SendAPI
    from pns4ones.http.site import ApiSite
    from pns4ones.hub.local import LocalHub
    from pns4ones.store import Application, Snapshot, TokenRecord
    from pns4ones.wire import ClientKey

    class Store:
        def get_token(self, digest: bytes) -> Any:
            return succeed(None)

        def list_applications(self) -> Any:
            return succeed([app])

    app = Application("app", "Fuzz", "s" * 64, ClientKey.generate(), 0.0)
    token = crypto.derive_token(app.server_key, b"\x01" * 16)
    clock = Clock()
    core = Core(Store(), LocalHub(), clock)  # type: ignore[arg-type]
    core.apply_snapshot(Snapshot((app,), (TokenRecord(crypto.token_digest(token), app.id, b"\x01" * 16, 0.0, 4e9),)))
    handlers = Handlers(core, log_sends=False)
    site = ApiSite(SendAPI(handlers).resource(), 8192, 30.0, clock=clock)
    return FrontFactory(site, handlers, clock)


def target_http(data: bytes) -> None:
    from httptools import HttpParserError, HttpResponseParser
    from twisted.internet.address import IPv4Address
    from twisted.internet.testing import StringTransport

    if not data:
        return
    cuts = sorted({b % len(data) for b in data[:4]})  # the first bytes choose where the stream is cut
    connection = _front_factory().buildProtocol(None)
    transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 1))
    connection.makeConnection(transport)
    at = 0
    for cut in [*cuts, len(data)]:
        if transport.disconnecting:
            break  # (as a TCP transport: no more reading once it is closing)
        connection.dataReceived(data[at:cut])
        at = cut
    connection.connectionLost()
    out = transport.value()
    if b"HEAD" in data:
        return  # (an answer to HEAD has a length but no body: a response parser cannot tell where it ends)

    class Count:
        complete = 0

        def on_message_complete(self) -> None:
            self.complete += 1

    count = Count()
    try:
        HttpResponseParser(count).feed_data(out)
    except HttpParserError as e:
        raise AssertionError(f"malformed answer bytes: {out[:300]!r}") from e
    assert out == b"" or count.complete >= 1, out[:300]


TARGETS = {
    "registration": target_registration,
    "send": target_send,
    "ini": target_ini,
    "argv": target_argv,
    "http": target_http,
    "handoff": target_handoff,
}
SEEDS = {
    "registration": [bytes.fromhex("2000544818abff73ed9fb5b1c4ff200b5704cea4df4f53acb12e17aed6aa13ea5d0b6170700069620075310000")],
    "send": [
        b'{"Recipient": {"Type": "all", "IbId": "x"}, "Message": {"Topic": "t", "Notification": {"Title": "a", "Important": true}, "Data": {"k": "v"}}}'
    ],
    "ini": [b"listen = *:8092\n; c\nlog level=Error\n"],
    "argv": [b"/listen\x00localhost\x00-log_level=Error\x00--service=*:1"],
    "handoff": [
        b'{"type":"sessions","sessions":[{"family":2,"peer":"127.0.0.1:1","pending":0,"inbound":"","left":3.5}]}',
        b'{"type":"listeners","listeners":[{"option":"listen","address":"*:8092","family":2}]}',
        b'{"version":1,"last_id":5,"forgotten_floor":3,"windows":[{"app":"a","ib":"i","floor":3,'
        b'"entries":[[4,1.5,["user","i","u",""],{"topic":"t","notification":null,"data":{}}]]}]}',
    ],
    "http": [
        b"POST /sendmessage HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}GET /health HTTP/1.1\r\n\r\n",
        b"POST /sendmessages HTTP/1.1\r\nTransfer-Encoding: chunked\r\nExpect: 100-continue\r\n\r\n2;x=y\r\n[]\r\n0\r\nT: 1\r\n\r\n",
        b"GET /auth?server_key=x HTTP/1.0\r\nConnection: keep-alive\r\n\r\nGET /groups/ib HTTP/1.1\r\nUpgrade: x\r\nConnection: upgrade\r\n\r\n",
    ],
}


def _run(name: str, seconds: int) -> None:
    import os
    import tempfile

    import atheris

    corpus = tempfile.mkdtemp(prefix=f"fuzz-{name}-")
    for i, seed in enumerate(SEEDS[name]):
        with open(os.path.join(corpus, f"seed{i}"), "wb") as f:
            f.write(seed)
    with atheris.instrument_imports():
        import pns4ones.config
        import pns4ones.handoff
        import pns4ones.http.connection
        import pns4ones.hub.recovery
        import pns4ones.messages
        import pns4ones.wire  # noqa: F401
    atheris.Setup([sys.argv[0], f"-max_total_time={seconds}", "-print_final_stats=1", "-max_len=4096", corpus], TARGETS[name])
    atheris.Fuzz()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=60, help="seconds per target (default 60)")
    parser.add_argument("--child", choices=list(TARGETS), help=argparse.SUPPRESS)
    parser.add_argument("targets", nargs="*", metavar="TARGET", help="registration, send, ini, argv, http, handoff (default all)")
    args = parser.parse_args()
    if args.child:
        _run(args.child, args.seconds)
        return 0
    failed = []
    unknown = set(args.targets) - set(TARGETS)
    if unknown:
        parser.error(f"unknown target(s): {', '.join(sorted(unknown))}")
    for name in args.targets or list(TARGETS):
        print(f"== fuzzing {name} for {args.seconds} s", flush=True)
        started = time.monotonic()
        proc = subprocess.run(
            [sys.executable, __file__, "--child", name, "--seconds", str(args.seconds)],
            capture_output=True,
            text=True,
            timeout=args.seconds + 120,
        )
        stats = [
            line
            for line in proc.stderr.splitlines()
            if line.startswith(("stat::number_of_executed_units", "stat::average_exec_per_sec", "==", "Done"))
        ]
        print(*stats, sep="\n")
        print(f"== {name}: exit code {proc.returncode} after {time.monotonic() - started:.0f} s", flush=True)
        if proc.returncode != 0:
            print(proc.stderr[-3000:], file=sys.stderr)
            failed.append(name)
    if failed:
        print("crashes in: " + ", ".join(failed), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
