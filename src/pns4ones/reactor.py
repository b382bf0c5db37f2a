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

from typing import cast

from twisted.internet.interfaces import IReactorCore, IReactorProcess, IReactorSocket, IReactorTCP, IReactorThreads, IReactorTime


class IServiceReactor(IReactorCore, IReactorTime, IReactorTCP, IReactorSocket, IReactorProcess, IReactorThreads):
    """
    What :class:`pns4ones.service.PnsService` and its parts use of the reactor:
    time, listening and adopting sockets (a restart handoff), starting the new
    process, threads (the store's pools) and stopping.  Linux's default
    reactor (epoll) provides every part.
    """


#: The interfaces :class:`IServiceReactor` joins.
PARTS = (IReactorCore, IReactorTime, IReactorTCP, IReactorSocket, IReactorProcess, IReactorThreads)


def service_reactor(reactor: object) -> IServiceReactor:
    """``reactor`` as an :class:`IServiceReactor`, once it is checked to provide every part (TypeError otherwise)."""
    missing = [part.__name__ for part in PARTS if not part.providedBy(reactor)]
    if missing:
        raise TypeError(f"the reactor {reactor!r} does not provide {', '.join(missing)}")
    # Checked part by part above; zope.interface cannot declare the intersection for an object it did not build.
    return cast(IServiceReactor, reactor)
