"""
Logging through :mod:`twisted.logger`: the configured level, text or JSON lines
on standard output (the journal), and rate-limited warnings for floods.

When standard output is systemd's journal stream (``JOURNAL_STREAM`` names its
device and inode), text lines carry journald's ``<N>`` priority prefix instead of a
timestamp (the journal has its own), so ``journalctl -p warning`` works.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Mapping
from typing import IO, TYPE_CHECKING, Protocol

from twisted.logger import (
    FileLogObserver,
    FilteringLogObserver,
    ILogFilterPredicate,
    ILogObserver,
    LogEvent,
    LogLevel,
    LogLevelFilterPredicate,
    PredicateResult,
    eventAsText,
    formatEvent,
    jsonFileLogObserver,
    textFileLogObserver,
)
from zope.interface import implementer

if TYPE_CHECKING:
    from .hub import SessionInfo

#: The manual's levels mapped on twisted.logger's (Trace is Debug plus hex dumps).
LEVELS: dict[str, LogLevel | None] = {
    "Trace": LogLevel.debug,
    "Debug": LogLevel.debug,
    "Information": LogLevel.info,
    "Warning": LogLevel.warn,
    "Error": LogLevel.error,
    "Critical": LogLevel.critical,
    "None": None,
}

#: Events with this key set are shown at every level but None (start-up lines).
ALWAYS = "pns_always"


@implementer(ILogObserver)
class _Nothing:
    def __call__(self, event: LogEvent) -> None:
        pass


def make_observer(level_name: str, fmt: str = "text", out: IO[str] | None = None) -> ILogObserver:
    """The root observer for the service: filtered by level, text or JSON."""
    level = LEVELS[level_name]
    if level is None:
        return _Nothing()
    out = sys.stdout if out is None else out
    if fmt == "json":
        sink = json_lines(out)
    elif writes_to_journal(out):
        sink = FileLogObserver(out, journal_line)
    else:
        sink = textFileLogObserver(out)
    by_level = LogLevelFilterPredicate(defaultLogLevel=level)

    @implementer(ILogFilterPredicate)
    def predicate(event: LogEvent) -> PredicateResult:
        if event.get(ALWAYS):
            return PredicateResult.yes
        # Twisted's own chatter (twistd, reactor, HTTP access log) only from Debug on.
        if (
            level > LogLevel.debug
            and event.get("log_namespace", "").startswith(("twisted.", "log_legacy"))
            and event.get("log_level", LogLevel.info) < LogLevel.warn
        ):
            return PredicateResult.no
        return by_level(event)

    return FilteringLogObserver(sink, [predicate])


#: journald's priorities (sd-daemon(3) ``<N>`` line prefixes) for twisted.logger's levels.
JOURNAL_PRIORITIES = {LogLevel.debug: 7, LogLevel.info: 6, LogLevel.warn: 4, LogLevel.error: 3, LogLevel.critical: 2}


def writes_to_journal(out: IO[str], environ: Mapping[str, str] | None = None) -> bool:
    """Whether ``out`` is the stream systemd connected to the journal (``JOURNAL_STREAM=DEV:INODE``)."""
    value = (os.environ if environ is None else environ).get("JOURNAL_STREAM", "")
    try:
        dev, inode = (int(part) for part in value.split(":"))
        st = os.fstat(out.fileno())
    except (ValueError, OSError, AttributeError):
        return False
    return (st.st_dev, st.st_ino) == (dev, inode)


def journal_line(event: LogEvent) -> str:
    """One event as journal lines: each with the event's priority prefix, no timestamp."""
    priority = JOURNAL_PRIORITIES.get(event.get("log_level", LogLevel.info), 6)
    text = eventAsText(event, includeTraceback=True, includeTimestamp=False, includeSystem=True)
    return "".join(f"<{priority}>{line}\n" for line in text.splitlines() or [""])


def json_lines(out: IO[str]) -> ILogObserver:
    """
    One JSON object per line (no RFC 7464 record separator, which line-based
    shippers do not expect), with the formatted ``text`` and the common fields
    under the names operators search for: ``application`` (``app_id``) and
    ``IbId`` (``ib_id``) beside ``peer`` and ``event``.
    """
    inner = jsonFileLogObserver(out, recordSeparator="")

    @implementer(ILogObserver)
    def observe(event: LogEvent) -> None:
        extra: LogEvent = {"text": formatEvent(event)}
        if "app_id" in event:
            extra["application"] = event["app_id"]
        if "ib_id" in event:
            extra["IbId"] = event["ib_id"]
        inner({**event, **extra})

    return observe


def level_enabled(level_name: str, wanted: LogLevel) -> bool:
    level = LEVELS[level_name]
    return level is not None and wanted >= level


class _Seconds(Protocol):
    def seconds(self) -> float: ...


class RateLimited:
    """
    Emits the first event of a kind at once, then at most one per ``interval``
    seconds with the count of the ones suppressed meanwhile: a flood of bad
    registrations or tokens does not flood the log.
    """

    def __init__(self, clock: _Seconds, interval: float = 10.0) -> None:
        self._clock = clock
        self._interval = interval
        self._state: dict[str, tuple[float, int]] = {}

    def __call__(self, key: str, emit: Callable[[int], None]) -> None:
        now = self._clock.seconds()
        last, suppressed = self._state.get(key, (float("-inf"), 0))
        if now - last >= self._interval:
            self._state[key] = (now, 0)
            emit(suppressed)
            if len(self._state) > 1000:
                self._state = {k: v for k, v in self._state.items() if now - v[0] < self._interval}
        else:
            self._state[key] = (last, suppressed + 1)


def session_fields(session: SessionInfo) -> dict[str, str]:
    """The fields every log line about one subscription carries (add-in, WebSocket or SSE)."""
    return {"peer": session.peer, "app_id": session.app_id, "ib_id": session.ib_id, "user_id": session.user_id}
