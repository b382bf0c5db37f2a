"""
The service's state and rules, between the transports and the store/hub:
the in-memory registry of applications and tokens (refreshed when the store
changes), the token policy of ``/auth``, registration of subscriptions and sends.

Time is passed in (``clock.seconds()``), so tests can drive it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.logger import Logger

from . import crypto
from .hub import Hub, Report, Session
from .messages import SendRequest
from .metrics import NULL
from .store import Application, Snapshot, Store, TokenRecord
from .wire import Registration

TOKEN_LIFETIME = 3600.0
#: Expired tokens are remembered this long so that they answer 403, not 401.
EXPIRED_TOKEN_MEMORY = 86400.0
#: Seconds between 0001-01-01 and 1970-01-01 (the original's expires_in epoch).
LEGACY_EPOCH_OFFSET = 62135596800


class AuthError(Exception):
    """A rejected credential; ``status`` is the HTTP status to answer."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class RegistrationRejected(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True, slots=True)
class IssuedToken:
    token: str
    expires_at: float


class Core:
    """Applications, tokens, subscriptions and sends for one node."""

    log = Logger()
    metrics = NULL

    def __init__(self, store: Store, hub: Hub, clock: Any, token_lifetime: float = TOKEN_LIFETIME) -> None:
        self.store = store
        self.hub = hub
        self.clock = clock
        self.token_lifetime = token_lifetime
        self.apps: dict[str, Application] = {}
        self._by_server_key: dict[str, Application] = {}
        self._tokens: dict[bytes, TokenRecord] = {}
        self._listeners: list[Callable[[], None]] = []

    # -- the registry ------------------------------------------------------------

    def apply_snapshot(self, snapshot: Snapshot) -> None:
        """Adopt the store's state; end subscriptions whose key is no longer valid."""
        old = self.apps
        self.apps = {a.id: a for a in snapshot.applications}
        self._by_server_key = {a.server_key: a for a in snapshot.applications}
        self._tokens = {t.digest: t for t in snapshot.tokens}
        for app_id, previous in old.items():
            current = self.apps.get(app_id)
            if current is None:
                self.end_sessions(app_id, "application removed")
            elif current.client_key != previous.client_key:
                self.end_sessions(app_id, "client key rotated", keep=current)
        for listener in self._listeners:
            listener()

    def on_change(self, listener: Callable[[], None]) -> None:
        self._listeners.append(listener)

    @inlineCallbacks
    def reload(self) -> Any:
        snapshot = yield self.store.snapshot()
        self.apply_snapshot(snapshot)

    def end_sessions(self, app_id: str, reason: str, keep: Application | None = None) -> int:
        ended = 0
        for session in list(self.hub.sessions(app_id)):
            if keep is not None and session.keys == keep.client_key:
                continue
            session.end(reason)
            ended += 1
        if ended:
            self.log.info("ended {count} subscriptions of application {app_id}: {reason}", count=ended, app_id=app_id, reason=reason)
        return ended

    # -- tokens -------------------------------------------------------------------

    @inlineCallbacks
    def authorize(self, server_key: str) -> Any:
        """``/auth``: the current token while it has over half its life, else a new one."""
        app = self._by_server_key.get(server_key) if server_key else None
        if app is None or not crypto.constant_time_equal(app.server_key, server_key):
            raise AuthError(401, "unknown server key")
        now = self.clock.seconds()
        best: TokenRecord | None = None
        for record in self._tokens.values():
            if record.app_id == app.id and record.expires_at - now > self.token_lifetime / 2:
                if best is None or record.expires_at > best.expires_at:
                    best = record
        if best is not None:
            return IssuedToken(crypto.derive_token(app.server_key, best.token_id), best.expires_at)
        token_id = crypto.new_token_id()
        token = crypto.derive_token(app.server_key, token_id)
        record = TokenRecord(crypto.token_digest(token), app.id, token_id, now, now + self.token_lifetime)
        yield self.store.add_token(record)
        self._tokens[record.digest] = record
        self.metrics.token_issued(app.id)
        self.log.info("issued an access token to application {app_id}", app_id=app.id)
        return IssuedToken(token, record.expires_at)

    def check_token(self, token: str) -> Application:
        """The application a bearer token belongs to; :class:`AuthError` otherwise."""
        if not token:
            raise AuthError(401, "missing access token (Authorization: Bearer ...)")
        record = self._tokens.get(crypto.token_digest(token))
        app = self.apps.get(record.app_id) if record is not None else None
        if record is None or app is None:
            raise AuthError(401, "invalid access token")
        if record.expires_at <= self.clock.seconds():
            raise AuthError(403, "access token expired: call /auth again")
        return app

    def purge_tokens(self) -> Deferred[int]:
        cutoff = self.clock.seconds() - EXPIRED_TOKEN_MEMORY
        for digest in [d for d, r in self._tokens.items() if r.expires_at < cutoff]:
            del self._tokens[digest]
        return self.store.purge_tokens(cutoff)

    # -- subscriptions and sends ---------------------------------------------------------

    def register(self, session: Session, registration: Registration) -> Application:
        """Check a registration; on success the session is attached to the hub."""
        app = self.apps.get(registration.app_id)
        if app is None:
            raise RegistrationRejected("unknown-application", f"unknown application {registration.app_id!r}")
        if not registration.verify(app.client_key):
            raise RegistrationRejected("bad-signature", f"bad signature for application {app.id}")
        self.hub.attach(session)
        return app

    def send(self, app: Application, request: SendRequest) -> Deferred[Report]:
        return self.hub.publish(app.id, request.recipient, request.message)
