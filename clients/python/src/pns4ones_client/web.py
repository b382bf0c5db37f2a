"""
Subscribing without the add-in: a blocking WebSocket / Server-Sent Events
subscriber for pns4ones, and ``get_ticket`` (what 1C server code does).

Needs ``websockets`` (WebSocket) or ``httpx`` and ``httpx-sse`` (SSE, tickets)::

    pip install websockets httpx httpx-sse

Example::

    ticket = get_ticket("http://pns:36696", token, ib_id="ib1", user_id="u1")
    with WebSubscriber("http://pns:36696", ticket, transport="ws") as sub:
        while True:
            print(sub.receive(timeout=60))

Every event is a dict: a message (the add-in's JSON plus ``"id"``) or a control
event with an ``"event"`` member (``ready``, ``missed``, ``end``).  ``last_id``
is where to resume after a reconnect (``since=``).

Command line: ``python -m pns4ones_client.web URL TICKET [--transport ws|sse] [--since ID]``.
"""

from __future__ import annotations

import json
import queue
import ssl
import sys
import threading
from typing import Any


def get_ticket(
    url: str, token: str, ib_id: str, user_id: str, groups: list[str] | None = None, ttl: int | None = None, verify: Any = True
) -> str:
    """``POST /tickets`` with the application's access token (from ``/auth``)."""
    import httpx

    body: dict[str, Any] = {"IbId": ib_id, "UserId": user_id, "UserGroups": groups or []}
    if ttl is not None:
        body["TTL"] = ttl
    response = httpx.post(url.rstrip("/") + "/tickets", json=body, headers={"Authorization": f"Bearer {token}"}, verify=verify, timeout=10)
    response.raise_for_status()
    return str(response.json()["ticket"])


class WebSubscriber:
    """One WebSocket or SSE subscription; ``receive()`` returns the next event."""

    def __init__(self, url: str, ticket: str, transport: str = "ws", since: int | None = None, origin: str | None = None,
                 ssl_context: ssl.SSLContext | None = None, ticket_in_query: bool = False, timeout: float = 10) -> None:  # fmt: skip
        if transport not in ("ws", "sse"):
            raise ValueError("transport must be ws or sse")
        self.url = url.rstrip("/")
        self.ticket = ticket
        self.transport = transport
        self.since = since
        self.origin = origin
        self.ssl_context = ssl_context
        self.ticket_in_query = ticket_in_query
        self.timeout = timeout
        self.last_id: int | None = since
        self._ws: Any = None
        self._client: Any = None
        self._stream: Any = None
        self._events: queue.Queue[Any] = queue.Queue()

    def __enter__(self) -> WebSubscriber:
        return self.connect()

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _params(self) -> dict[str, str]:
        params = {}
        if self.ticket_in_query:
            params["ticket"] = self.ticket
        if self.since is not None and self.transport == "ws":
            params["since"] = str(self.since)
        return params

    def _headers(self) -> dict[str, str]:
        headers = {} if self.ticket_in_query else {"Authorization": f"Bearer {self.ticket}"}
        if self.origin:
            headers["Origin"] = self.origin
        return headers

    def connect(self) -> WebSubscriber:
        """Subscribe; raises on refusal (websockets' InvalidStatus, httpx's HTTPStatusError)."""
        if self.transport == "ws":
            from urllib.parse import urlencode

            from websockets.sync.client import connect

            ws_url = "ws" + self.url[len("http") :] + "/subscribe/ws"
            if self._params():
                ws_url += "?" + urlencode(self._params())
            headers = self._headers()
            origin = headers.pop("Origin", None)
            options: dict[str, Any] = dict(
                additional_headers=headers, origin=origin, ssl=self.ssl_context, open_timeout=self.timeout, max_size=2**22
            )
            try:
                self._ws = connect(ws_url, legacy=True, **options)  # websockets >= 16: a plain connection, not a context manager
            except TypeError:
                self._ws = connect(ws_url, **options)
            return self
        import httpx
        from httpx_sse import connect_sse

        headers = self._headers()
        if self.since is not None:
            headers["Last-Event-ID"] = str(self.since)
        self._client = httpx.Client(verify=self.ssl_context or True, timeout=httpx.Timeout(self.timeout, read=None))
        self._stream = connect_sse(self._client, "GET", self.url + "/subscribe/sse", params=self._params(), headers=headers)
        source = self._stream.__enter__()
        try:
            if source.response.status_code >= 400:
                source.response.read()  # the JSON reason, for the caller
            source.response.raise_for_status()
        except Exception:
            self.close()
            raise
        # A reader thread, so that receive() has a deadline even while heartbeats flow.
        threading.Thread(target=self._read_sse, args=(source,), daemon=True).start()
        return self

    def _read_sse(self, source: Any) -> None:
        try:
            for event in source.iter_sse():
                if event.data:  # a "retry:" hint alone carries no data
                    self._events.put(event.json())
        except Exception as e:  # closed by us, or by the server
            self._events.put(e)
        self._events.put(EOFError("the server ended the stream"))

    def receive(self, timeout: float | None = None) -> dict[str, Any]:
        """The next event; TimeoutError if none arrives in time, EOFError when the server closed."""
        if self._ws is not None:
            from websockets.exceptions import ConnectionClosed

            try:
                text = self._ws.recv(timeout=timeout if timeout is not None else self.timeout)
            except ConnectionClosed as e:
                raise EOFError(f"closed by the server: {e}") from None
            doc = json.loads(text)
        else:
            try:
                doc = self._events.get(timeout=timeout if timeout is not None else self.timeout)
            except queue.Empty:
                raise TimeoutError("no event in time") from None
            if isinstance(doc, Exception):
                self._events.put(doc)  # stays closed
                raise EOFError(f"the stream ended: {doc}")
        if isinstance(doc.get("id"), int):
            self.last_id = doc["id"]
        return doc

    def messages(self, count: int, timeout: float | None = None) -> list[dict[str, Any]]:
        """The next ``count`` messages, skipping control events."""
        out: list[dict[str, Any]] = []
        while len(out) < count:
            doc = self.receive(timeout)
            if "event" not in doc:
                out.append(doc)
        return out

    @property
    def close_code(self) -> int | None:
        return self._ws.close_code if self._ws is not None else None

    def close(self) -> None:
        if self._ws is not None:
            self._ws.close()
        if self._stream is not None:
            try:
                self._stream.__exit__(None, None, None)
            finally:
                self._stream = None
        if self._client is not None:
            self._client.close()
            self._client = None


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m pns4ones_client.web", description="Print pns4ones events received over WebSocket or SSE"
    )
    parser.add_argument("url", help="the send API, e.g. http://localhost:36696")
    parser.add_argument("ticket", help="a ticket from POST /tickets")
    parser.add_argument("--transport", choices=("ws", "sse"), default="ws")
    parser.add_argument("--since", type=int, default=None, help="resume after this message id")
    args = parser.parse_args(argv)
    with WebSubscriber(args.url, args.ticket, args.transport, since=args.since, timeout=60) as sub:
        while True:
            try:
                print(json.dumps(sub.receive(timeout=60), ensure_ascii=False), flush=True)
            except TimeoutError:
                continue
            except EOFError as e:
                print(e, file=sys.stderr)
                return 1


if __name__ == "__main__":
    sys.exit(main())
