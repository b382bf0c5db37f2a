"""
A blocking subscriber that behaves exactly like the 1C add-in (standard library
sockets): one connection, one registration, no reconnection.  For a client that
stays subscribed across restarts see :mod:`pns4ones_client.listener`.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from typing import Any

from .protocol import ClientKey, FrameDecoder, registration_frame


class Subscriber:
    """
    Connect, register, then read messages::

        with Subscriber("127.0.0.1", 36695, app_id, client_key, "ib", "user") as sub:
            for message in sub.messages():
                print(message)
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
        timeout: float = 10.0,
        source_address: tuple[str, int] | None = None,
    ) -> None:
        self.address = (host, port)
        self.app_id = app_id
        self.key = client_key if isinstance(client_key, ClientKey) else ClientKey.decode(client_key)
        self.ib_id, self.user_id, self.group = ib_id, user_id, group
        self.timeout = timeout
        self.source_address = source_address
        self.sock: socket.socket | None = None
        self._decoder = FrameDecoder(self.key)
        self._pending: list[dict[str, Any]] = []
        self.raw_frames: list[bytes] = []
        self.closed_by_server = False

    def connect(self) -> Subscriber:
        self.sock = socket.create_connection(self.address, timeout=self.timeout, source_address=self.source_address)
        # The service never writes unless there is a message: let TCP notice a vanished server.
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        self.sock.sendall(registration_frame(self.key, self.app_id, self.ib_id, self.user_id, self.group))
        return self

    __enter__ = connect

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def receive(self, timeout: float | None = None) -> dict[str, Any] | None:
        """The next message, or None if none arrives within ``timeout`` (or the server closed)."""
        if self._pending:
            return self._pending.pop(0)
        assert self.sock is not None, "not connected"
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while not self._pending:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            self.sock.settimeout(remaining)
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                return None
            except ConnectionError:
                data = b""
            if not data:
                self.closed_by_server = True
                return None
            for plaintext in self._decoder.feed(data):
                self.raw_frames.append(plaintext)
                self._pending.append(json.loads(plaintext))
        return self._pending.pop(0)

    def receive_all(self, quiet: float = 0.3) -> list[dict[str, Any]]:
        """Every message until none arrives for ``quiet`` seconds."""
        out = []
        while (message := self.receive(quiet)) is not None:
            out.append(message)
        return out

    def wait_closed(self, timeout: float = 5.0) -> bool:
        """True once the server has closed the connection (messages are discarded)."""
        deadline = time.monotonic() + timeout
        while not self.closed_by_server and time.monotonic() < deadline:
            self.receive(deadline - time.monotonic())
        return self.closed_by_server

    def messages(self) -> Iterator[dict[str, Any]]:
        while True:
            message = self.receive(3600)
            if message is None:
                if self.closed_by_server:
                    return
                continue
            yield message
