"""
A blocking listener that stays subscribed like a well-behaved 1C client: it
reconnects with jittered exponential backoff whenever the connection drops
(the service restarts, the network hiccups) and re-registers::

    listener = Listener("127.0.0.1", 36695, app_id, client_key, ib_id, user_id)
    for message in listener.messages():      # runs until listener.stop()
        print(message)

Messages sent while it is disconnected are lost: the service delivers online only.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from .backoff import Backoff
from .protocol import ClientKey, ProtocolError
from .subscriber import Subscriber


class Listener:
    """
    ``on_status(event, detail)`` hears ``"connected"``, ``"disconnected"`` (with
    the reason) and ``"retrying"`` (with the delay).  ``connections`` counts
    successful connects.  :meth:`stop` may be called from any thread.
    """

    def __init__(
        self,
        host: str,
        port: int,
        app_id: str,
        client_key: str | ClientKey,
        ib_id: str,
        user_id: str,
        group: str = "",
        *,
        initial_delay: float = 0.5,
        max_delay: float = 30.0,
        stable_after: float = 10.0,
        connect_timeout: float = 10.0,
        on_status: Callable[[str, Any], None] | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.address = (host, port)
        self.app_id, self.ib_id, self.user_id, self.group = app_id, ib_id, user_id, group
        self.key = client_key if isinstance(client_key, ClientKey) else ClientKey.decode(client_key)
        self.connect_timeout = connect_timeout
        self.stable_after = stable_after
        self.on_status = on_status or (lambda event, detail: None)
        self.connections = 0
        self._backoff = Backoff(initial_delay, max_delay, rng=rng)
        self._stopped = threading.Event()
        self._current: Subscriber | None = None

    def stop(self) -> None:
        """End :meth:`messages` (within a second) from any thread."""
        self._stopped.set()

    def messages(self) -> Iterator[dict[str, Any]]:
        """Every message received, across reconnections, until :meth:`stop`."""
        while not self._stopped.is_set():
            subscriber = Subscriber(
                *self.address, self.app_id, self.key, self.ib_id, self.user_id, self.group, timeout=self.connect_timeout
            )
            try:
                subscriber.connect()
            except OSError as e:
                self._retry(f"cannot connect: {e}")
                continue
            self.connections += 1
            self._current = subscriber
            self.on_status("connected", f"{self.address[0]}:{self.address[1]}")
            started = time.monotonic()
            received = 0
            reason = "closed by the service"
            try:
                while not self._stopped.is_set():
                    message = subscriber.receive(1.0)  # short waits, so that stop() is noticed
                    if message is not None:
                        received += 1
                        self._backoff.reset()
                        yield message
                    elif subscriber.closed_by_server:
                        if not received and time.monotonic() - started < 2:
                            reason = (
                                "closed by the service right after registering: wrong application id or client key? (see the service log)"
                            )
                        break
            except ProtocolError as e:
                reason = f"undecodable frame ({e}): wrong client key?"
            except OSError as e:
                reason = str(e)
            finally:
                subscriber.close()
                self._current = None
            if self._stopped.is_set():
                return
            if time.monotonic() - started >= self.stable_after:
                self._backoff.reset()
            self._retry(reason)

    def _retry(self, reason: str) -> None:
        self.on_status("disconnected", reason)
        delay = self._backoff.next_delay()
        self.on_status("retrying", delay)
        self._stopped.wait(delay)


def listen(
    host: str, port: int, app_id: str, client_key: str | ClientKey, ib_id: str, user_id: str, group: str = "", **options: Any
) -> Iterator[dict[str, Any]]:
    """Shorthand: ``for message in listen(...)`` with a :class:`Listener`."""
    return Listener(host, port, app_id, client_key, ib_id, user_id, group, **options).messages()


__all__ = ["Listener", "listen"]
