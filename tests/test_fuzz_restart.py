"""
Fuzzing (hypothesis) of the restart hand-over documents (``pns4ones.handoff``):
what the new process reads from the old one over the real ``SOCK_SEQPACKET``
socket (the ``listeners`` packet, then ``sessions`` packets with their
descriptors and pending bytes, the recovery window, ``end``, ``commit``),
forged, garbled, truncated or cut off; and the recovery window a new process
adopts (``RecoveryWindows.adopt``), any JSON and every leaf of a real export
replaced by a hostile value.

Invariants: the new process's side either refuses with HandoffError (it then
exits without touching the sockets, and the old process takes every
connection back) or, only when everything was well-formed, says ``adopted``
and returns connections whose every field has the type and range the
adoption needs (nothing can fail after the commit, when the old process has
let go); a recovery window is adopted or refused with RecoveryError, never
anything else (a failure there comes after the commit).
"""

from __future__ import annotations

import base64
import json
import math
import os
import shutil
import socket
import tempfile
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from pns4ones import handoff
from pns4ones.handoff import HandoffError, Incoming
from pns4ones.hub import Outbound
from pns4ones.hub.local import LocalHub
from pns4ones.hub.recovery import RecoveryError
from pns4ones.messages import Message, Notification, Recipient

from .fuzz_harness import FUZZ, examples

#: Values of the wrong type or range, for any field.
HOSTILE = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=4),
    st.sampled_from(["\ud800", "!!", "AAA=", "-1"]),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=2), st.integers(), max_size=2),
)
FAMILIES = frozenset({int(socket.AF_INET), int(socket.AF_INET6)})
COMMIT = b'J{"type": "commit"}'
SESSION_FIELDS = ("family", "peer", "pending", "inbound", "app", "ib", "user", "group", "key", "left")


@st.composite
def session_entry(draw: Any) -> dict[str, Any]:
    """A ``sessions`` entry as the old process writes it, maybe with fields dropped or replaced by hostile values."""
    inbound = base64.b64encode(draw(st.binary(max_size=8))).decode()
    entry: dict[str, Any] = {
        "family": int(socket.AF_INET),
        "peer": "127.0.0.1:4000",
        "pending": draw(st.integers(0, 6)),
        "inbound": inbound,
    }
    if draw(st.booleans()):
        entry.update(app="app", ib="ib", user=draw(st.sampled_from(["u1", "пользователь"])), group="", key="k" * 16)
    else:
        entry["left"] = draw(st.floats(0, 30))
    if draw(st.integers(0, 2)) == 0:
        for name in draw(st.sets(st.sampled_from(SESSION_FIELDS), max_size=2)):
            entry.pop(name, None)
        entry.update(draw(st.dictionaries(st.sampled_from(SESSION_FIELDS), HOSTILE, max_size=2)))
    return entry


@st.composite
def packets(draw: Any) -> list[tuple[bytes, int]]:
    """What the old process sends after ``ready``: (packet, descriptors to attach), well-formed or not, maybe cut short."""
    out: list[tuple[bytes, int]] = []
    count = 0
    for _ in range(draw(st.integers(0, 3))):
        kind = draw(st.sampled_from(["sessions", "sessions", "recovery", "junk"]))
        if kind == "sessions":
            entries = draw(st.lists(session_entry(), max_size=4))
            fds = max(0, len(entries) + draw(st.sampled_from([0, 0, 0, -1, 1])))
            out.append((b"J" + json.dumps({"type": "sessions", "sessions": entries}).encode(), fds))
            pending = sum(e["pending"] for e in entries if isinstance(e.get("pending"), int) and not isinstance(e["pending"], bool))
            size = max(0, min(pending + draw(st.sampled_from([0, 0, 0, -1, 1])), 1000))
            if size:
                out.append((b"B" + b"p" * size, 0))
            count += len(entries)
        elif kind == "recovery":
            window = draw(st.sampled_from([json.dumps(LocalHub().recovery.export()).encode(), b"[1,", b"{}", b"\xff", b"[" * 5000]))
            declared: Any = draw(st.sampled_from([len(window), len(window), len(window) + 1, -1, "x", None]))
            out.append((b"J" + json.dumps({"type": "recovery", "bytes": declared}).encode(), 0))
            out.append((b"B" + window, 0))
        else:
            out.append(
                (
                    draw(
                        st.sampled_from(
                            [
                                b"J[]",
                                b'J"x"',
                                b"Jnull",
                                b"J{",
                                b"B",
                                b"J" + b"[" * 5000,
                                b'J{"type": "hello"}',
                                b'J{"type": "refuse", "reason": "no"}',
                            ]
                        )
                    ),
                    0,
                )
            )
    if draw(st.integers(0, 3)):
        out.append((b"J" + json.dumps({"type": "end", "count": draw(st.sampled_from([count, count, count + 1, -1, "x"]))}).encode(), 0))
    if draw(st.integers(0, 3)):
        out.append((draw(st.sampled_from([b'J{"type": "commit"}', b'J{"type": "commit"}', b'J{"type": "serving"}', b"J1"])), 0))
    return out


def open_fds() -> set[int]:
    return {int(name) for name in os.listdir("/proc/self/fd")}


class Old:
    """The old process's end of the handoff socket, played by the test: writes whatever it is given."""

    def __init__(self, testcase: SynchronousTestCase) -> None:
        folder = tempfile.mkdtemp(prefix="pns4ones-handoff-")
        testcase.addCleanup(shutil.rmtree, folder, True)
        self.path = os.path.join(folder, handoff.SOCKET_NAME)
        self.listening = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.listening.bind(self.path)
        self.listening.listen(4)
        testcase.addCleanup(self.listening.close)
        #: A connected TCP socket: the descriptor handed over, duplicated (each is closed by the test).
        self.tcp_server = socket.create_server(("127.0.0.1", 0))
        self.tcp = socket.create_connection(self.tcp_server.getsockname())
        testcase.addCleanup(self.tcp.close)
        testcase.addCleanup(self.tcp_server.close)

    def hand(self, script: list[tuple[bytes, int]]) -> tuple[Incoming, socket.socket]:
        """A new process connected; ``script`` written and the old side's writing shut: the new process reads it all, then end of stream."""
        incoming = Incoming(self.path)
        conn, _ = self.listening.accept()
        for data, fds in script:
            if fds:
                socket.send_fds(conn, [data], [self.tcp.fileno()] * fds)
            else:
                conn.sendall(data)
        conn.shutdown(socket.SHUT_WR)
        return incoming, conn


def said(conn: socket.socket) -> list[str]:
    """The types of the packets the new process sent."""
    conn.setblocking(False)
    out: list[str] = []
    while True:
        try:
            data = conn.recv(1 << 16)
        except BlockingIOError:
            return out
        if not data:
            return out
        out.append(json.loads(data[1:]).get("type"))


class SessionsPacketsFuzz(SynchronousTestCase):
    """The new process reading forged, garbled and truncated hand-over packets."""

    def setUp(self) -> None:
        self.old = Old(self)

    @settings(FUZZ, max_examples=examples(300))
    @given(packets())
    def test_refused_or_adopted_whole(self, script: list[tuple[bytes, int]]) -> None:
        """Any packets: HandoffError before "adopted", or every connection well-formed for adoption; no other exception."""
        before = open_fds()
        incoming, conn = self.old.hand(script)
        try:
            handed = incoming.receive_sessions()
        except HandoffError:
            handed = None
        spoken = said(conn)
        incoming.sock.close()
        conn.close()
        for fd in open_fds() - before:  # (the new process exits when it refuses; here, the test closes what it received)
            try:
                os.close(fd)
            except OSError:
                pass
        if handed is None:  # (refused after "adopted" only when the old process did not commit)
            self.assertTrue("adopted" not in spoken or script[-1][0] != COMMIT, spoken)
            return
        self.assertEqual(spoken, ["ready", "adopted"])
        self.assertEqual(script[-1][0], COMMIT, "adopted only after the old process let go")
        for h in handed:
            state = h.state
            self.assertIn(h.family, FAMILIES)
            for text in (state.peer, state.app_id, state.ib_id, state.user_id, state.group, state.key):
                self.assertIsInstance(text, str)
                text.encode("utf-8")
            self.assertIsInstance(state.inbound, bytes)
            self.assertIsInstance(h.pending, bytes)
            if state.key:
                self.assertIsNone(state.registration_left)
            elif state.registration_left is not None:
                self.assertTrue(math.isfinite(state.registration_left) and state.registration_left >= 0, state)

    @settings(FUZZ, max_examples=examples(150))
    @given(
        st.one_of(
            st.fixed_dictionaries(
                {"type": st.just("listeners"), "handoff": st.sampled_from([2, 2, 1, 3, "2", None]), "pid": st.one_of(st.just(1), HOSTILE)},
                optional={
                    "listeners": st.one_of(
                        st.lists(
                            st.one_of(
                                st.dictionaries(st.sampled_from(["option", "address", "family"]), HOSTILE, max_size=2).map(
                                    lambda hostile: {"option": "listen", "address": "127.0.0.1:1", "family": int(socket.AF_INET), **hostile}
                                ),
                                HOSTILE,
                            ),
                            max_size=3,
                        ),
                        HOSTILE,
                    )
                },
            ),
            HOSTILE,
        ),
        st.integers(0, 3),
    )
    def test_listeners_refused_or_taken(self, doc: Any, fds: int) -> None:
        """Any listeners packet: HandoffError, or listeners with an option, an address and a family; no other exception."""
        before = open_fds()
        incoming, conn = self.old.hand([(b"J" + json.dumps(doc).encode(), fds)])
        try:
            incoming.receive_listeners()
        except HandoffError:
            return
        finally:
            incoming.sock.close()
            conn.close()
            for fd in open_fds() - before:
                try:
                    os.close(fd)
                except OSError:
                    pass
        for option, handed in incoming.listeners.items():
            self.assertIsInstance(option, str)
            for spec, _ in handed:
                self.assertIsInstance(spec["address"], str)
                self.assertIsInstance(spec["family"], int)


def exported() -> dict[str, Any]:
    """A real recovery window: messages routed to users and groups of two information bases, then exported."""
    hub = LocalHub()
    note = Notification("title", "body", "", "", True)
    for i, recipient in enumerate([Recipient("user", "ib1", user_id="u1"), Recipient("group", "ib1", group="g"), Recipient("all", "ib2")]):
        hub.publish("app", recipient, Outbound(Message(topic=f"t{i}", notification=note if i == 0 else None, data={"k": str(i)})))
    doc: dict[str, Any] = hub.recovery.export()
    return doc


EXPORTED = exported()
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=4),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=12,
)


def leaves(doc: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """The path of every value in ``doc`` (containers too)."""
    out = [path]
    if isinstance(doc, dict):
        for key, value in doc.items():
            out += leaves(value, (*path, key))
    elif isinstance(doc, list):
        for i, value in enumerate(doc):
            out += leaves(value, (*path, i))
    return out


@st.composite
def mutated_export(draw: Any) -> Any:
    """A real export with one to three values (anywhere) replaced by hostile ones, or removed."""
    doc = json.loads(json.dumps(EXPORTED))
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(leaves(doc)))
        value = draw(st.one_of(HOSTILE, st.integers(-(2**1100), 2**1100), JSON))
        if not path:
            return value
        parent = doc
        for step in path[:-1]:
            parent = parent[step]
        if draw(st.integers(0, 4)) == 0 and isinstance(parent, dict):
            parent.pop(path[-1])
        else:
            parent[path[-1]] = value
    return doc


class RecoveryWindowFuzz(SynchronousTestCase):
    """The recovery window a new process adopts after the commit (a failure there cannot be rolled back)."""

    @settings(FUZZ, max_examples=examples(400))
    @given(st.one_of(mutated_export(), JSON))
    def test_adopted_or_refused(self, doc: Any) -> None:
        """Any document: adopted (then the window serves a resume), or RecoveryError; never another exception."""
        hub = LocalHub()
        try:
            hub.recovery.adopt(doc, 0.0)
        except RecoveryError:
            return
        since, replayed = hub.recovery.replay("app", "ib1", 0, 1.0, lambda _: True)
        for outbound in replayed:
            outbound.plaintext  # noqa: B018 (rendered as every transport writes it)
        del since
        handoff.adopt_recovery(LocalHub(), doc, 0.0)  # (the new process's call: logs a refusal, never raises)

    def test_real_export_adopted(self) -> None:
        """The unmutated export is adopted whole (the fuzzing above starts from a document that works)."""
        self.assertEqual(LocalHub().recovery.adopt(json.loads(json.dumps(EXPORTED)), 0.0), 3)
