"""
Message ids and the recovery window (pure; time is passed in).

Ids: one node-wide counter, starting at the node's start time in milliseconds
times 1,000 and counting up by one per routed message.  So ids only grow, also
across restarts (unless more than 1,000 messages a millisecond were sent for the
whole previous run), and stay below 2**53 (exact in JavaScript).  The Redis hub
(:mod:`.redis`) uses its streams' ids ``MS-SEQ`` as ``MS * 1000 + SEQ`` instead.
Id 0 is never given: it means "no id" (a kept message).

Window: per (application, information base), the messages of the last
``seconds`` and at most ``limit`` of them, with their recipient.  ``floor`` is
the highest id that fell out of the window: a client resuming after an id
below the floor may have missed messages.

Invariants: entries are in increasing id order; every id above ``floor`` that
was routed to this information base is in ``entries``.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator

from ..messages import Recipient
from .outbound import Outbound

#: Most windows kept; past it the longest-idle empty ones are forgotten.
MAX_WINDOWS = 10_000


class Window:
    __slots__ = ("entries", "floor")

    def __init__(self, floor: int) -> None:
        self.entries: deque[tuple[int, float, Recipient, Outbound]] = deque()
        self.floor = floor


class Recovery:
    """Ids and recovery windows of one node."""

    def __init__(self, start_id: int, seconds: float = 120.0, limit: int = 1000) -> None:
        self.last_id = start_id - 1
        self.seconds = seconds
        self.limit = limit
        self._windows: dict[tuple[str, str], Window] = {}
        #: Floor for information bases whose window was forgotten (or never existed).
        self._forgotten_floor = start_id - 1

    def next_id(self) -> int:
        self.last_id += 1
        return self.last_id

    def record(self, app_id: str, recipient: Recipient, outbound: Outbound, now: float) -> int:
        """Give the message its id (``outbound.id``) and keep it in its window; returns the id."""
        message_id = outbound.id = self.next_id()
        if self.limit <= 0 or self.seconds <= 0:
            return message_id
        key = (app_id, recipient.ib_id)
        window = self._windows.get(key)
        if window is None:
            if len(self._windows) >= MAX_WINDOWS:
                self._forget_idle(now)
            window = self._windows[key] = Window(self._forgotten_floor)
        entries = window.entries
        entries.append((message_id, now, recipient, outbound))
        if len(entries) > self.limit:
            window.floor = entries.popleft()[0]
        self._expire(window, now)
        return message_id

    def _expire(self, window: Window, now: float) -> None:
        entries = window.entries
        cutoff = now - self.seconds
        while entries and entries[0][1] < cutoff:
            window.floor = entries.popleft()[0]

    def _forget_idle(self, now: float) -> None:
        for key, window in list(self._windows.items()):
            self._expire(window, now)
            if not window.entries:
                self._forgotten_floor = max(self._forgotten_floor, window.floor)
                del self._windows[key]
        if len(self._windows) >= MAX_WINDOWS:  # all busy: forget the oldest
            key = min(self._windows, key=lambda k: self._windows[k].entries[-1][0])
            window = self._windows.pop(key)
            self._forgotten_floor = max(self._forgotten_floor, window.entries[-1][0])

    def replay(
        self, app_id: str, ib_id: str, since: int, now: float, wanted: Callable[[Recipient], bool]
    ) -> tuple[int | None, Iterator[Outbound]]:
        """
        (the window's floor if a session of ``ib_id`` may have missed messages after
        ``since``, else None; the messages after ``since`` whose recipient is
        ``wanted``, in id order).  An id from the future (another node, a clock
        that went back) counts as missed.
        """
        window = self._windows.get((app_id, ib_id))
        if window is not None:
            self._expire(window, now)
        floor = window.floor if window is not None else self._forgotten_floor
        missed = since < floor or since > self.last_id
        if missed:
            since = floor
        entries = tuple(window.entries) if window is not None else ()

        def matching() -> Iterator[Outbound]:
            for message_id, _, recipient, outbound in entries:
                if message_id > since and wanted(recipient):
                    yield outbound

        return (floor if missed else None), matching()
