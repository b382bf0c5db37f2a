"""
Logging through :mod:`twisted.logger`: the configured level, text or JSON lines
on standard output (the journal), and rate-limited warnings for floods.
"""

from __future__ import annotations

import sys
from typing import IO, Any, Callable

from twisted.logger import (
    FilteringLogObserver,
    ILogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    PredicateResult,
    jsonFileLogObserver,
    textFileLogObserver,
)
from zope.interface import implementer

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
    def __call__(self, event: dict[str, Any]) -> None:
        pass


def make_observer(level_name: str, fmt: str = "text", out: IO[str] | None = None) -> ILogObserver:
    """The root observer for the service: filtered by level, text or JSON."""
    level = LEVELS[level_name]
    if level is None:
        return _Nothing()
    out = sys.stdout if out is None else out
    sink = jsonFileLogObserver(out) if fmt == "json" else textFileLogObserver(out)
    by_level = LogLevelFilterPredicate(defaultLogLevel=level)

    def predicate(event: dict[str, Any]) -> PredicateResult:
        if event.get(ALWAYS):
            return PredicateResult.yes
        # Twisted's own chatter (twistd, reactor, HTTP access log) only from Debug on.
        if level > LogLevel.debug and event.get("log_namespace", "").startswith(("twisted.", "log_legacy")) and event.get("log_level", LogLevel.info) < LogLevel.warn:
            return PredicateResult.no
        return by_level(event)

    return FilteringLogObserver(sink, [predicate])


def level_enabled(level_name: str, wanted: LogLevel) -> bool:
    level = LEVELS[level_name]
    return level is not None and wanted >= level


class RateLimited:
    """
    Emits the first event of a kind at once, then at most one per ``interval``
    seconds with the count of the ones suppressed meanwhile: a flood of bad
    registrations or tokens does not flood the log.
    """

    def __init__(self, clock: Any, interval: float = 10.0) -> None:
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

