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

A restart handoff carries the windows to the new process: :meth:`Recovery.export`
gives them as a JSON-ready document, :meth:`Recovery.adopt` continues them in a
fresh ``Recovery`` (its own bounds applied, ids kept growing), so a web client
resuming with its last id after a restart gets what it missed, once.  A document
that does not hold raises :class:`RecoveryError` and changes nothing.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Iterator

from ..jsondoc import JSONObject
from ..messages import RECIPIENT_TYPES, Message, Notification, Recipient, parse_addin_json
from .outbound import Outbound

#: Most windows kept; past it the longest-idle empty ones are forgotten.
MAX_WINDOWS = 10_000
#: The format of :meth:`Recovery.export` documents.
EXPORT_VERSION = 1


class RecoveryError(ValueError):
    """A recovery document that cannot be adopted (another version, a field of the wrong type)."""


class Window:
    __slots__ = ("entries", "floor")

    def __init__(self, floor: int) -> None:
        self.entries: deque[tuple[int, float, Recipient, Outbound]] = deque()
        self.floor = floor


class Recovery:
    """Ids and recovery windows of one node."""

    __slots__ = ("_forgotten_floor", "_windows", "last_id", "limit", "seconds")

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
        self.last_id = message_id = outbound.id = self.last_id + 1  # (next_id(), inline: once per send)
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
        if entries[0][1] < now - self.seconds:  # (_expire's test first: usually nothing has expired)
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

    # -- handing the windows to another process ---------------------------------------------

    def export(self) -> JSONObject:
        """Every window, its floor, the last id and the floor of forgotten windows, as a JSON-ready document."""
        windows = [
            {
                "app": app_id,
                "ib": ib_id,
                "floor": window.floor,
                "entries": [[message_id, at, _recipient_json(r), _message_json(o)] for message_id, at, r, o in window.entries],
            }
            for (app_id, ib_id), window in self._windows.items()
        ]
        return {"version": EXPORT_VERSION, "last_id": self.last_id, "forgotten_floor": self._forgotten_floor, "windows": windows}

    def adopt(self, doc: object, now: float) -> int:
        """
        Continue the windows of ``doc`` (:meth:`export` of the previous process)
        in this one, which has routed nothing yet: its entries under this
        process's bounds (``seconds``, ``limit``), ids growing from the higher of
        both last ids.  Returns the number of messages adopted.
        """
        if self._windows or self.last_id != self._forgotten_floor:
            raise RecoveryError("this process has routed messages already")
        if not isinstance(doc, dict) or doc.get("version") != EXPORT_VERSION:
            raise RecoveryError(f"not a recovery document of version {EXPORT_VERSION}")
        last_id = _int(doc.get("last_id"), "last_id")
        forgotten = _int(doc.get("forgotten_floor"), "forgotten_floor")
        windows: dict[tuple[str, str], Window] = {}
        raw_windows = doc.get("windows")
        if not isinstance(raw_windows, list):
            raise RecoveryError("windows must be a list")
        for i, raw in enumerate(raw_windows):
            if not isinstance(raw, dict) or not isinstance(raw.get("app"), str) or not isinstance(raw.get("ib"), str):
                raise RecoveryError(f"windows[{i}] must name its application and information base")
            window = Window(_int(raw.get("floor"), f"windows[{i}].floor"))
            previous = window.floor
            entries = raw.get("entries")
            if not isinstance(entries, list):
                raise RecoveryError(f"windows[{i}].entries must be a list")
            for j, entry in enumerate(entries):
                where = f"windows[{i}].entries[{j}]"
                if not isinstance(entry, list) or len(entry) != 4:
                    raise RecoveryError(f"{where} must be [id, time, recipient, message]")
                message_id, at = _int(entry[0], where), _time(entry[1])
                if at is None or not previous < message_id <= last_id:
                    raise RecoveryError(f"{where}: ids must grow above the floor, up to last_id, with a time")
                previous = message_id
                window.entries.append((message_id, at, _recipient(entry[2], where), Outbound(_message(entry[3], where), message_id)))
            windows[(raw["app"], raw["ib"])] = window
        self.last_id = max(self.last_id, last_id)
        self._forgotten_floor = forgotten
        adopted = 0
        for key, window in windows.items():
            while len(window.entries) > max(self.limit, 0):
                window.floor = window.entries.popleft()[0]
            self._expire(window, now)
            if len(self._windows) >= MAX_WINDOWS:
                self._forget_idle(now)
            self._windows[key] = window
            adopted += len(window.entries)
        return adopted


def _int(value: object, where: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise RecoveryError(f"{where} must be an integer")
    return value


def _time(value: object) -> float | None:
    """A finite time in seconds, or None (JSON allows integers no float holds, and NaN)."""
    if not isinstance(value, int | float) or isinstance(value, bool):
        return None
    try:
        at = float(value)
    except OverflowError:
        return None
    return at if math.isfinite(at) else None


def _recipient_json(r: Recipient) -> list[str]:
    return [r.type, r.ib_id, r.user_id, r.group]


def _recipient(raw: object, where: str) -> Recipient:
    if not isinstance(raw, list) or len(raw) != 4 or not all(isinstance(x, str) for x in raw) or raw[0] not in RECIPIENT_TYPES:
        raise RecoveryError(f"{where}: bad recipient")
    return Recipient(raw[0], raw[1], raw[2], raw[3])


def _message_json(outbound: Outbound) -> JSONObject:
    m = outbound.message if outbound.message is not None else parse_addin_json(outbound.plaintext)
    n = m.notification
    note = None if n is None else [n.title, n.body, n.icon, n.action, n.important]
    return {"topic": m.topic, "notification": note, "data": dict(m.data)}


def _message(raw: object, where: str) -> Message:
    if not isinstance(raw, dict) or not isinstance(raw.get("topic"), str):
        raise RecoveryError(f"{where}: bad message")
    data, note = raw.get("data"), raw.get("notification")
    if not isinstance(data, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in data.items()):
        raise RecoveryError(f"{where}: bad message data")
    notification = None
    if note is not None:
        if not isinstance(note, list) or len(note) != 5 or not all(isinstance(x, str) for x in note[:4]) or not isinstance(note[4], bool):
            raise RecoveryError(f"{where}: bad notification")
        notification = Notification(*note)
    return Message(raw["topic"], notification, data)
