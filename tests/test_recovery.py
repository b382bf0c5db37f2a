"""
The recovery window handed from one process to the next (pure: time passed in):
:meth:`Recovery.export` and :meth:`Recovery.adopt`.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from pns4ones.hub import Outbound
from pns4ones.hub.recovery import Recovery, RecoveryError
from pns4ones.hub.routing import reaches
from pns4ones.messages import Message, Notification, Recipient


@dataclass
class Sub:
    """A session as the window sees it."""

    app_id: str
    ib_id: str
    user_id: str
    group: str = ""
    groups: tuple[str, ...] = ()


MESSAGES = [
    Message("Тема 😀", Notification("Заголовок", "тело", "icon", "e1cib/x", True), {"k": 'v "q"'}),
    Message("plain"),
    Message("", Notification(icon="only an icon"), {}),
]


def replays(recovery: Recovery, session: Sub, since: int, now: float) -> tuple[int | None, list[tuple[int, Message | None]]]:
    floor, items = recovery.replay(session.app_id, session.ib_id, since, now, lambda r: reaches(session.app_id, r, session, None))
    return floor, [(outbound.id, outbound.message) for outbound in items]


def handed(recovery: Recovery, start_id: int, now: float, **bounds: Any) -> Recovery:
    """What the next process has after adopting ``recovery``'s export (through JSON, as the handoff carries it)."""
    new = Recovery(start_id, **bounds)
    new.adopt(json.loads(json.dumps(recovery.export())), now)
    return new


class HandoverTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.old = Recovery(1_000_000, seconds=60, limit=100)
        self.ids = []
        for i, (recipient, message) in enumerate(
            [
                (Recipient("user", "ib1", user_id="u1"), MESSAGES[0]),
                (Recipient("group", "ib1", group="g"), MESSAGES[1]),
                (Recipient("all", "ib1"), MESSAGES[2]),
                (Recipient("user", "ib2", user_id="u1"), MESSAGES[1]),
                (Recipient("user", "ib1", user_id="u2"), MESSAGES[1]),
            ]
        ):
            self.ids.append(self.old.record("app", recipient, Outbound(message), 100.0 + i))
        self.sessions = [Sub("app", "ib1", "u1"), Sub("app", "ib1", "u2", groups=("g",)), Sub("app", "ib2", "u1"), Sub("app", "ib3", "u1")]

    def test_replays_are_the_same_after_the_handover(self) -> None:
        """For every session and resume point, the next process replays what the previous one would have: same ids, same messages, same floor."""
        new = handed(self.old, 2_000_000, 110.0, seconds=60, limit=100)
        for session in self.sessions:
            for since in [999_999, *self.ids]:
                self.assertEqual(replays(new, session, since, 110.0), replays(self.old, session, since, 110.0), (session, since))
        self.assertEqual(replays(new, self.sessions[0], 2_000_001, 110.0)[0], self.ids[0] - 1, "an id neither issued is missed")

    def test_delivered_messages_are_handed_over_whole(self) -> None:
        """A message already rendered for delivery (its Message let go) is handed over the same: the same add-in bytes, under the same id."""
        before = {}
        for session in self.sessions:
            for outbound in self.old.replay(session.app_id, session.ib_id, 999_999, 110.0, lambda r: True)[1]:
                if outbound.id in before:
                    continue
                assert outbound.message is not None
                before[outbound.id] = outbound.plaintext  # rendered: as a delivery does
                self.assertIsNone(outbound.message)
        new = handed(self.old, 2_000_000, 110.0, seconds=60, limit=100)
        after = {}
        for session in self.sessions:
            for outbound in new.replay(session.app_id, session.ib_id, 999_999, 110.0, lambda r: True)[1]:
                after[outbound.id] = outbound.plaintext
        self.assertEqual(after, before)
        self.assertEqual(len(after), len(self.ids))

    def test_ids_keep_growing(self) -> None:
        """The next process's ids are above every id handed over, also when its own start is below them (a clock that went back)."""
        new = handed(self.old, 2_000_000, 110.0)
        self.assertEqual(new.next_id(), 2_000_000)
        behind = handed(self.old, 5, 110.0)
        self.assertEqual(behind.next_id(), self.ids[-1] + 1)

    def test_messages_after_the_handover_follow_the_old_ones(self) -> None:
        """A session resuming from an old id gets the old messages after it, then those the next process routed, once each."""
        new = handed(self.old, 2_000_000, 110.0)
        later = new.record("app", Recipient("user", "ib1", user_id="u1"), Outbound(MESSAGES[1]), 111.0)
        self.assertEqual(replays(new, self.sessions[0], self.ids[0], 112.0), (None, [(self.ids[2], MESSAGES[2]), (later, MESSAGES[1])]))

    def test_the_next_process_bounds_apply(self) -> None:
        """Smaller bounds in the next process drop the oldest entries and raise the floor: a resume below it is told it missed messages."""
        new = handed(self.old, 2_000_000, 110.0, seconds=60, limit=2)
        self.assertEqual(replays(new, self.sessions[0], self.ids[0], 110.0), (self.ids[1], [(self.ids[2], MESSAGES[2])]))
        aged = handed(self.old, 2_000_000, 162.5, seconds=60, limit=100)  # entries at 100..104 s; now 162.5: those before 102.5 expired
        self.assertEqual(replays(aged, self.sessions[0], self.ids[2], 162.5), (None, []))
        self.assertEqual(replays(aged, self.sessions[0], self.ids[1], 162.5)[0], self.ids[2])

    def test_only_into_a_fresh_window(self) -> None:
        """A process that has routed a message already refuses a window, unchanged."""
        new = Recovery(2_000_000)
        new.record("app", Recipient("all", "ib1"), Outbound(MESSAGES[1]), 100.0)
        before = new.export()
        self.assertRaises(RecoveryError, new.adopt, self.old.export(), 110.0)
        self.assertEqual(new.export(), before)

    def test_bad_documents_are_refused_unchanged(self) -> None:
        """A document of another version, with ids out of order or above last_id, or a malformed entry, raises RecoveryError and leaves the window empty."""
        good = self.old.export()

        def spoiled(change: Any) -> dict[str, Any]:
            doc = copy.deepcopy(good)
            change(doc)
            return doc

        def entries(doc: dict[str, Any]) -> list[Any]:
            return doc["windows"][0]["entries"]

        bad = [
            None,
            [],
            spoiled(lambda d: d.update(version=2)),
            spoiled(lambda d: d.update(last_id="7")),
            spoiled(lambda d: d.update(windows={})),
            spoiled(lambda d: entries(d).reverse()),
            spoiled(lambda d: d.update(last_id=self.ids[0])),
            spoiled(lambda d: entries(d)[0].__setitem__(2, ["nobody", "ib1", "", ""])),
            spoiled(lambda d: entries(d)[0].__setitem__(3, {"topic": 5})),
            spoiled(lambda d: entries(d)[0][3].update(data={"k": 1})),
            spoiled(lambda d: entries(d)[0][3].update(notification=["t", "b", "i", "a", "yes"])),
            spoiled(lambda d: entries(d)[0].pop()),
            spoiled(lambda d: d["windows"][0].update(app=None)),
        ]
        for doc in bad:
            new = Recovery(2_000_000)
            self.assertRaises(RecoveryError, new.adopt, doc, 110.0)
            self.assertEqual(new.export(), Recovery(2_000_000).export(), doc)

    @settings(max_examples=150, deadline=None)
    @given(
        st.lists(
            st.tuples(st.sampled_from(["ib1", "ib2"]), st.sampled_from(["user", "group", "all"]), st.sampled_from(["u1", "u2"])),
            max_size=30,
        ),
        st.integers(1, 10),
    )
    def test_any_history_replays_the_same(self, sends: list[tuple[str, str, str]], limit: int) -> None:
        """Whatever was routed, a handover with the same bounds replays the same thing for every session and resume point."""
        old = Recovery(1000, seconds=60, limit=limit)
        for i, (ib, kind, user) in enumerate(sends):
            recipient = Recipient(kind, ib, user_id=user if kind == "user" else "", group="g" if kind == "group" else "")
            old.record("app", recipient, Outbound(MESSAGES[i % len(MESSAGES)]), 100.0 + i / 10)
        new = handed(old, 5000, 104.0, seconds=60, limit=limit)
        for session in (Sub("app", "ib1", "u1", groups=("g",)), Sub("app", "ib2", "u2")):
            for since in range(999, old.last_id + 1):
                self.assertEqual(replays(new, session, since, 104.0), replays(old, session, since, 104.0))
