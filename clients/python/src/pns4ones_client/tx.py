"""
The Twisted flavour (extra ``[twisted]``): a sender on treq and a listener that
stays subscribed across restarts of the service::

    sender = TwistedSender("http://127.0.0.1:36696", server_key)
    result = yield sender.send_to_all(ib_id, "Stock", "refreshed")

    listener = TwistedListener("127.0.0.1", 36695, app_id, client_key, ib_id, user_id, on_message=print)
    listener.startService()        # or add it to your MultiService

Both mirror their blocking twins in :mod:`pns4ones_client.sender` and
:mod:`pns4ones_client.listener`.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar
from urllib.parse import quote

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from treq.client import HTTPClient
from twisted.application.internet import ClientService
from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.ssl import Certificate, trustRootFromCertificates
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import Agent, BrowserLikePolicyForHTTPS, HTTPConnectionPool

from . import _api
from ._api import BatchResult, Group, Presence, Request, SendResult, Ticket, UserPresence
from .backoff import Backoff
from .errors import AuthenticationError, ServiceError, error_from_response
from .protocol import ClientKey, FrameDecoder, ProtocolError, registration_frame

USER_AGENT = "pns4ones-client/0.1 (twisted)"
T = TypeVar("T")


class _Headers:
    """``.get(name)`` over Twisted's Headers, for :func:`error_from_response`."""

    def __init__(self, headers: Any) -> None:
        self._headers = headers

    def get(self, name: str) -> str | None:
        values = self._headers.getRawHeaders(name)
        return values[0] if values else None


def trust_root(ca_file: str) -> Any:
    """A Twisted trust root from a PEM file of one or more CA certificates."""
    with open(ca_file, "rb") as f:
        certificates = x509.load_pem_x509_certificates(f.read())
    return trustRootFromCertificates([Certificate.loadPEM(c.public_bytes(Encoding.PEM)) for c in certificates])


class TwistedSender:
    """
    The blocking :class:`~pns4ones_client.sender.Sender` on treq: every method
    returns a Deferred.  Concurrent sends share one /auth.  Pass ``http_client``
    (a ``treq.client.HTTPClient``) to control pooling; ``ca_file`` to trust a CA.
    """

    log = Logger()

    def __init__(
        self,
        base_url: str,
        server_key: str,
        *,
        ca_file: str | None = None,
        timeout: float = 10.0,
        refresh_margin: float = 60.0,
        reactor: Any = None,
        http_client: Any = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor
        self.base_url = _api.check_base_url(base_url)
        if not server_key:
            raise ValueError("the server key is required")
        self.server_key = server_key
        self.timeout = timeout
        self.clock = clock
        self._tokens = _api.TokenCache(refresh_margin)
        self._authorizing: list[defer.Deferred[str]] | None = None
        if http_client is None:
            policy = BrowserLikePolicyForHTTPS(trust_root(ca_file)) if ca_file else BrowserLikePolicyForHTTPS()
            self.pool = HTTPConnectionPool(reactor, persistent=True)
            http_client = HTTPClient(Agent(reactor, contextFactory=policy, pool=self.pool))
        else:
            self.pool = None
        self.http = http_client
        self.auth_requests = 0
        self.refused = 0

    def close(self) -> defer.Deferred[None]:
        """Close pooled connections (call before the reactor stops, or in test cleanup)."""
        return self.pool.closeCachedConnections() if self.pool is not None else defer.succeed(None)

    def send(self, recipient: Mapping[str, Any], message: Mapping[str, Any], ttl: float | None = None) -> defer.Deferred[SendResult]:
        """``{"Recipient": recipient, "Message": message}``; ``ttl`` (seconds): keep it for recipients not connected now."""
        return self._call(_api.send_request(recipient, message, ttl), _api.parse_send_result)

    def send_to_user(self, ib_id: str, user_id: str, title: str = "", body: str = "", **options: Any) -> defer.Deferred[SendResult]:
        return self.send(_api.recipient("user", ib_id, user_id=user_id), _api.message(title, body, **options))

    def send_to_group(self, ib_id: str, group: str, title: str = "", body: str = "", **options: Any) -> defer.Deferred[SendResult]:
        return self.send(_api.recipient("group", ib_id, group=group), _api.message(title, body, **options))

    def send_to_all(self, ib_id: str, title: str = "", body: str = "", **options: Any) -> defer.Deferred[SendResult]:
        return self.send(_api.recipient("all", ib_id), _api.message(title, body, **options))

    def send_batch(self, items: Iterable[Mapping[str, Any] | tuple[Mapping[str, Any], Mapping[str, Any]]]) -> defer.Deferred[BatchResult]:
        """``POST /sendmessages``; see :meth:`pns4ones_client.sender.Sender.send_batch`."""
        return self._call(_api.batch_request(items), _api.parse_batch_result)

    def groups(self, ib_id: str) -> defer.Deferred[dict[str, int]]:
        return self._call(_api.groups_request(ib_id), _api.parse_groups)

    def group(self, ib_id: str, group: str) -> defer.Deferred[Group]:
        return self._call(_api.group_request("GET", ib_id, group), _api.parse_group)

    def set_group(self, ib_id: str, group: str, user_ids: Iterable[str]) -> defer.Deferred[Group]:
        return self._call(_api.group_request("PUT", ib_id, group, user_ids), _api.parse_group)

    def add_to_group(self, ib_id: str, group: str, user_ids: Iterable[str]) -> defer.Deferred[Group]:
        return self._call(_api.add_members_request(ib_id, group, user_ids), _api.parse_group)

    def remove_from_group(self, ib_id: str, group: str, user_id: str) -> defer.Deferred[Group]:
        return self._call(_api.remove_member_request(ib_id, group, user_id), _api.parse_group)

    def delete_group(self, ib_id: str, group: str) -> defer.Deferred[int]:
        return self._call(_api.group_request("DELETE", ib_id, group), _api.parse_removed)

    def presence(self, ib_id: str) -> defer.Deferred[Presence]:
        return self._call(_api.presence_request(ib_id), _api.parse_presence)

    def user_presence(self, ib_id: str, user_id: str) -> defer.Deferred[UserPresence]:
        return self._call(_api.presence_request(ib_id, user_id), _api.parse_user_presence)

    def ticket(self, ib_id: str, user_id: str, groups: Iterable[str] = (), ttl: int | None = None) -> defer.Deferred[Ticket]:
        return self._call(_api.ticket_request(ib_id, user_id, groups, ttl), _api.parse_ticket)

    @defer.inlineCallbacks
    def _call_once(self, request: Request, token: str) -> Any:
        headers = {"Authorization": f"Bearer {token}"}
        if request.body is not None:
            headers["Content-Type"] = "application/json; charset=utf-8"
        status, answer, answer_headers = yield self._request(request.method, request.path, request.body, headers)
        if status != 200:
            raise error_from_response(status, answer, answer_headers)
        return answer

    def _call(self, request: Request, parse: Callable[[bytes], T]) -> defer.Deferred[T]:
        """``request`` with the shared token; once more with a fresh one after a 401/403; the answer parsed."""

        @defer.inlineCallbacks
        def call() -> Any:
            token = yield self.token()
            try:
                answer = yield self._call_once(request, token)
                return parse(answer)
            except AuthenticationError:
                self.refused += 1
                self._tokens.drop(token)
            token = yield self.token()
            answer = yield self._call_once(request, token)
            return parse(answer)

        return call()

    def token(self) -> defer.Deferred[str]:
        """The cached token, or the result of the one /auth in flight."""
        token = self._tokens.current(self.clock())
        if token is not None:
            return defer.succeed(token)
        waiter: defer.Deferred[str] = defer.Deferred()
        if self._authorizing is None:
            self._authorizing = []
            self._authorize().addBoth(self._authorized)
        self._authorizing.append(waiter)
        return waiter

    def _authorized(self, result: Any) -> None:
        waiters, self._authorizing = self._authorizing or [], None
        for waiter in waiters:
            if isinstance(result, Failure):
                waiter.errback(result)
            else:
                waiter.callback(result)

    @defer.inlineCallbacks
    def _authorize(self) -> Any:
        status, body, headers = yield self._request("GET", f"/auth?server_key={quote(self.server_key, safe='')}")
        self.auth_requests += 1
        if status != 200:
            raise error_from_response(status, body, headers)
        now = self.clock()
        token, expires_at = _api.parse_auth(body, headers.get("Date"), now)
        self._tokens.store(token, expires_at, now)
        return token

    @defer.inlineCallbacks
    def _request(self, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None) -> Any:
        try:
            response = yield self.http.request(
                method, self.base_url + path, data=body, headers={"User-Agent": USER_AGENT, **(headers or {})}, timeout=self.timeout
            )
            content = yield response.content()
        except Exception as e:
            raise ServiceError(None, "unreachable", f"{method} {self.base_url}{path.split('?')[0]}: {e}") from e
        return response.code, content, _Headers(response.headers)


class _AddinProtocol(Protocol):
    """One subscription: register on connect, decode frames into the listener."""

    def __init__(self, listener: TwistedListener) -> None:
        self.listener = listener
        self.decoder = FrameDecoder(listener.key)
        self.received = 0

    def connectionMade(self) -> None:
        self.connected_at = self.listener._clock.seconds()
        self.transport.setTcpKeepAlive(True)
        self.transport.write(
            registration_frame(self.listener.key, self.listener.app_id, self.listener.ib_id, self.listener.user_id, self.listener.group)
        )
        self.listener._connected(self)

    def dataReceived(self, data: bytes) -> None:
        try:
            plaintexts = self.decoder.feed(data)
        except ProtocolError as e:
            self.listener.log.warn("pns4ones sent an undecodable frame ({reason}): reconnecting", reason=str(e))
            self.transport.abortConnection()
            return
        for plaintext in plaintexts:
            self.received += 1
            self.listener._deliver(json.loads(plaintext))

    def connectionLost(self, reason: Any) -> None:
        self.listener._lost(self)


class TwistedListener(Service):
    """
    Subscribe like the 1C add-in and stay subscribed: a service that reconnects
    with jittered exponential backoff (``initial_delay`` doubling up to
    ``max_delay``).  Each message dict goes to ``on_message`` and to
    :meth:`next_message`.  ``connections`` counts successful connects.
    """

    log = Logger()

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
        on_message: Callable[[dict[str, Any]], Any] | None = None,
        initial_delay: float = 0.5,
        max_delay: float = 30.0,
        stable_after: float = 10.0,
        reactor: Any = None,
        rng: random.Random | None = None,
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor
        self.key = client_key if isinstance(client_key, ClientKey) else ClientKey.decode(client_key)
        self.app_id, self.ib_id, self.user_id, self.group = app_id, ib_id, user_id, group
        self.on_message = on_message
        self.connections = 0
        self.protocol: _AddinProtocol | None = None
        self._clock = reactor
        self._backoff = Backoff(initial_delay, max_delay, rng=rng)
        self._stable_after = stable_after
        self._queue: defer.DeferredQueue[dict[str, Any]] = defer.DeferredQueue()
        endpoint = HostnameEndpoint(reactor, host, port, timeout=10)
        factory = Factory.forProtocol(lambda: _AddinProtocol(self))
        self._client = ClientService(endpoint, factory, retryPolicy=self._retry_delay, clock=reactor)

    def _retry_delay(self, failed_attempts: int) -> float:
        delay = self._backoff.next_delay()
        self.log.info("pns4ones subscription: reconnecting in {delay:.1f} s", delay=delay)
        return delay

    def startService(self) -> None:
        super().startService()
        self._client.startService()

    def stopService(self) -> defer.Deferred[None]:
        super().stopService()
        return self._client.stopService()

    def whenConnected(self) -> defer.Deferred[Any]:
        """Fires with the protocol once connected (the registration is on its way)."""
        return self._client.whenConnected()

    def next_message(self) -> defer.Deferred[dict[str, Any]]:
        """The next message received (queued until asked for)."""
        return self._queue.get()

    # -- from the protocol ----------------------------------------------------------------

    def _connected(self, protocol: _AddinProtocol) -> None:
        self.protocol = protocol
        self.connections += 1

    def _deliver(self, message: dict[str, Any]) -> None:
        self._backoff.reset()
        if self.on_message is not None:
            try:
                self.on_message(message)
            except Exception:
                self.log.failure("on_message failed")
        self._queue.put(message)

    def _lost(self, protocol: _AddinProtocol) -> None:
        if self.protocol is protocol:
            self.protocol = None
        if self._clock.seconds() - protocol.connected_at >= self._stable_after:
            self._backoff.reset()
