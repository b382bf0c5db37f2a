"""
The reactor as the service uses it: one name for the abilities it needs together.

A reactor is typed by one interface per ability (``IReactorTime``,
``IReactorTCP``, ...), and zope.interface has no intersection of them:
:class:`IServiceReactor` names the one the service needs.  Parts that need a
single ability take that interface (or a small ``Protocol``, such as
:class:`pns4ones.hub.Clock`), so tests pass a ``task.Clock`` or a
``MemoryReactor``.
"""

from __future__ import annotations

from typing import TypeVar, cast

from twisted.internet.interfaces import IReactorCore, IReactorProcess, IReactorSocket, IReactorTCP, IReactorThreads, IReactorTime
from zope.interface import Interface


class IStoreReactor(IReactorCore, IReactorTime, IReactorThreads):
    """What a store uses of the reactor: its connection pool's threads (``adbapi``), timers, calls from its threads."""


class IServiceReactor(IStoreReactor, IReactorTCP, IReactorSocket, IReactorProcess):
    """
    What :class:`pns4ones.service.PnsService` and its parts use of the reactor:
    time, listening and adopting sockets (a restart handoff), starting the new
    process, threads (the store's pools) and stopping.  Linux's default
    reactor (epoll) provides every part.
    """


R = TypeVar("R", IServiceReactor, IStoreReactor)


def checked(reactor: object, interface: type[R]) -> R:
    """``reactor`` as an ``interface`` of this module, once it is checked to provide each interface it joins (TypeError otherwise)."""
    parts = [part for part in interface.__iro__ if part is not Interface and part.__module__ != __name__]  # Twisted's
    missing = [part.__name__ for part in parts if not part.providedBy(reactor)]
    if missing:
        raise TypeError(f"the reactor {reactor!r} does not provide {', '.join(missing)}")
    # Checked part by part above; zope.interface cannot declare an intersection for an object it did not build.
    return cast(R, reactor)
