"""
The service's state and rules, between the transports and the store/hub:
the in-memory registry of applications and tokens (refreshed when the store
changes), the token policy of ``/auth``, the subscription lifecycle and sends.

Time is passed in (``clock.seconds()``), so tests can drive it.

Invariants:

* Every transport joins with :meth:`Core.subscribe` and leaves with
  :meth:`Core.unsubscribe` (a restart's handed-over sessions come back with
  :meth:`Core.adopt`); nothing else attaches to or detaches from the hub.
* A joining session gets, in this order and each once: its user's kept
  messages, the replay after its resume point, the live messages (held while
  it joins).
* :meth:`Core.send` answers one type, :class:`~pns4ones.hub.Delivery`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol

from twisted.internet.defer import Deferred, inlineCallbacks, succeed
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from . import crypto
from .groups import GroupError, Membership
from .hub import Catchup, Clock, Delivery, Hub, Outbound, Replay, Session, SessionInfo
from .messages import Recipient, SendRequest
from .metrics import NULL
from .store import Application, Groups, KeptMessage, KeptMessages, Registry, Snapshot, StoreUnavailable, TokenRecord
from .trace import Trace
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


#: How many digests of unknown tokens are remembered (then forgotten at once).
MAX_ABSENT_TOKENS = 100_000
#: How many tokens' digests are remembered (then forgotten at once).
MAX_DIGESTS = 10_000
#: Seconds between two store look-ups of server keys this node does not know (``/auth``).
SERVER_KEY_LOOKUP_INTERVAL = 0.5
#: Snapshots a reload reads at most while this node keeps changing its own memory (see Core.reload).
RELOAD_READS = 5


class RegistrationRejected(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


class _Join:
    """A session between :meth:`Core.subscribe` and its release."""

    __slots__ = ("replay", "since")

    def __init__(self, since: int | None) -> None:
        self.since = since
        self.replay: Replay | None = None


def _not_replayed(payloads: list[bytes], backlog: Sequence[Outbound]) -> list[Outbound]:
    """
    The kept messages (add-in JSON, oldest first) that the replay does not carry
    already: a message kept while its user was offline is also in the recovery
    window, and a web client resuming within the window gets it from there, with
    its id.  Matched by content, each replayed message against one kept one.
    """
    if not backlog:
        return [Outbound.rendered(p) for p in payloads]
    replayed = Counter(outbound.plaintext for outbound in backlog)
    out = []
    for payload in payloads:
        if replayed[payload]:
            replayed[payload] -= 1
        else:
            out.append(Outbound.rendered(payload))
    return out


@dataclass(frozen=True, slots=True)
class Limits:
    """Bounds of groups and kept messages (see the options of the same names)."""

    max_ttl: float = 86400.0
    max_kept_per_user: int = 100
    max_kept_per_app: int = 100000
    max_group_size: int = 10000
    max_groups: int = 10000


#: What a client disconnected from the admin panel is told (the WebSocket/SSE ``end`` event's reason).
DISCONNECT_REASON = "disconnected by the administrator"


@dataclass(frozen=True, slots=True)
class OnlineRow:
    """A live session as the admin panel lists it: this node's, or another node's (``node`` set; what presence knows)."""

    user_id: str
    ib_id: str
    session_id: str
    #: ``tcp`` (the 1C add-in), ``ws``, ``sse``, or ``remote`` (on another node).
    transport: str
    #: The client's address ("" on another node).
    peer: str
    #: None: this node.
    node: str | None
    #: Seconds since the epoch (0.0 on another node).
    connected_at: float
    #: Messages written to it (0 on another node).
    delivered: int
    groups: tuple[str, ...]
    #: This node's sessions of the same user and base (what disconnecting the user ends).
    user_sessions: int


@dataclass(frozen=True, slots=True)
class Online:
    """One page of :meth:`Core.online`, with the totals of every page."""

    #: Sessions found (every node).
    sessions: int
    #: Distinct (base, user) among them.
    users: int
    #: Of the sessions, those on other nodes.
    remote: int
    rows: list[OnlineRow]


@dataclass(frozen=True, slots=True)
class IssuedToken:
    token: str
    expires_at: float


class CoreStore(Registry, Groups, KeptMessages, Protocol):
    """What Core uses of the store: the registry, groups and kept messages."""


class Core:
    """Applications, tokens, subscriptions and sends for one node."""

    log = Logger()
    metrics = NULL

    def __init__(
        self,
        store: CoreStore,
        hub: Hub,
        clock: Clock,
        token_lifetime: float = TOKEN_LIFETIME,
        membership: Membership | None = None,
        limits: Limits = Limits(),
        trace: Trace | None = None,
    ) -> None:
        self.store = store
        #: The delivery trace: every send's callers record it there (the send API's handlers, the panel).
        self.trace = trace if trace is not None else Trace(0)
        #: Group membership in memory (the hub routes with it; the store keeps it).
        self.membership = membership if membership is not None else Membership()
        self.limits = limits
        #: (app_id, ib_id) with kept messages: only registrations there look in the store.
        self._kept_ibs: set[tuple[str, str]] = set()
        self._kept_added: set[tuple[str, str]] | None = None
        self.hub = hub
        self.clock = clock
        self.token_lifetime = token_lifetime
        self.apps: dict[str, Application] = {}
        self._by_server_key: dict[str, Application] = {}
        self._tokens: dict[bytes, TokenRecord] = {}
        #: Digests the store did not know either (tokens are never reused: no expiry needed).
        self._absent: set[bytes] = set()
        #: token -> its digest (a pure function: one SHA-256 per token, not per request); cleared when full.
        self._digests: dict[str, bytes] = {}
        self._fetching: dict[bytes, list[Deferred[None]]] = {}
        # /auth with an unknown server key: requests waiting for the next look-up, its timer, the last one's start.
        self._key_waiters: list[Deferred[None]] = []
        self._key_timer: IDelayedCall | None = None
        self._key_lookup_running = False
        self._key_lookup_at = float("-inf")
        self._listeners: list[Callable[[], None]] = []
        #: Sessions between subscribe() and their release.
        self._joining: dict[Session, _Join] = {}
        #: Changes this node made to its memory after writing them to the store (see reload()).
        self._local_changes = 0

    # -- the registry ------------------------------------------------------------

    def apply_snapshot(self, snapshot: Snapshot) -> None:
        """Adopt the store's state; end subscriptions whose key is no longer valid."""
        old = self.apps
        self.apps = {a.id: a for a in snapshot.applications}
        self._by_server_key = {a.server_key: a for a in snapshot.applications}
        self._tokens = {t.digest: t for t in snapshot.tokens}
        self.membership.load(snapshot.memberships)
        self._kept_ibs |= snapshot.kept_ibs
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
        """
        Adopt the store's state.  A snapshot read while this node changed its
        own memory after a write of its own (a group, a token) may predate that
        write: applied, it would undo the change here until the next reload.
        So a snapshot during which such a change happened is read again, up to
        ``RELOAD_READS`` times (past that, the last one is applied: the store
        holds the change, and the next reload brings it back).
        """
        for _ in range(RELOAD_READS):
            changes = self._local_changes
            snapshot = yield self.store.snapshot()
            if self._local_changes == changes:
                break
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
    #
    # Token resolution is one step, ``resolve_token``: a value when this node can
    # answer from memory (the hot path: a dict look-up), a Deferred when the store
    # must be asked (a token another node issued a moment ago).  Invariant: once
    # ``fetch_token(digest)`` has fired, ``resolve_digest(digest)`` answers from
    # memory in the same reactor turn (the digest is in ``_tokens`` or ``_absent``),
    # so a caller that resolves again after a look-up never loops.

    def authorize(self, server_key: str) -> IssuedToken | Deferred[IssuedToken]:
        """
        ``/auth``: the current token while it has over half its life, else a new
        one (a Deferred: the store writes it).  A server key this node does not
        know is looked for in the store first (an application created a moment
        ago by ``pns4ones-admin create``), at most once per
        ``SERVER_KEY_LOOKUP_INTERVAL`` for all such requests together.
        :class:`AuthError` (401) for a key the store does not know either.
        """
        if not server_key:
            raise AuthError(401, "unknown server key")
        app = self._by_server_key.get(server_key)
        if app is None:
            return self._look_up_server_key().addCallback(lambda _: self._authorize_known(server_key))
        return self._issue(app, server_key)

    def _authorize_known(self, server_key: str) -> IssuedToken | Deferred[IssuedToken]:
        app = self._by_server_key.get(server_key)
        if app is None:
            raise AuthError(401, "unknown server key")
        return self._issue(app, server_key)

    def _issue(self, app: Application, server_key: str) -> IssuedToken | Deferred[IssuedToken]:
        if not crypto.constant_time_equal(app.server_key, server_key):
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
        return self.store.add_token(record).addCallback(self._issued, app, token, record)

    def _issued(self, _: object, app: Application, token: str, record: TokenRecord) -> IssuedToken:
        self._tokens[record.digest] = record
        self._local_changes += 1
        self.metrics.token_issued(app.id)
        self.log.info("issued an access token to application {app_id}", app_id=app.id)
        return IssuedToken(token, record.expires_at)

    def _look_up_server_key(self) -> Deferred[None]:
        """
        Fires once the store's applications were read by a look-up that started
        after this call (so an application created before the request is seen),
        and adopted if the store has any this node does not know.  Look-ups are
        shared by every request waiting for one and start at most once per
        ``SERVER_KEY_LOOKUP_INTERVAL``: random server keys cannot turn into a query
        each.  Fails with StoreUnavailable when the store cannot answer.
        """
        d: Deferred[None] = Deferred()
        self._key_waiters.append(d)
        self._schedule_key_lookup()
        return d

    def _schedule_key_lookup(self) -> None:
        if self._key_timer is not None or self._key_lookup_running or not self._key_waiters:
            return
        delay = max(0.0, self._key_lookup_at + SERVER_KEY_LOOKUP_INTERVAL - self.clock.seconds())
        self._key_timer = self.clock.callLater(delay, self._run_key_lookup)

    def _run_key_lookup(self) -> None:
        self._key_timer = None
        waiters, self._key_waiters = self._key_waiters, []
        self._key_lookup_running = True
        self._key_lookup_at = self.clock.seconds()

        def adopt(apps: list[Application]) -> Deferred[None] | None:
            if any(self._by_server_key.get(a.server_key) != a for a in apps):
                return self.reload()  # new or changed applications: adopt the store's whole state
            return None

        def done(result: object) -> None:
            self._key_lookup_running = False
            for waiter in waiters:
                if isinstance(result, Failure):
                    waiter.errback(result)
                else:
                    waiter.callback(None)
            self._schedule_key_lookup()

        self.store.list_applications().addCallback(adopt).addBoth(done)

    def resolve_token(self, token: str) -> Application | Deferred[Application]:
        """
        The application a bearer token belongs to: at once from memory, or a
        Deferred when the store must be asked (a token another node issued).
        :class:`AuthError` (raised, or as the Deferred's failure): 401 missing or
        unknown, 403 expired; :class:`~pns4ones.store.StoreUnavailable` when the
        store cannot answer.
        """
        if not token:
            raise AuthError(401, "missing access token (Authorization: Bearer ...)")
        digest = self._digests.get(token)
        if digest is None:
            if len(self._digests) >= MAX_DIGESTS:
                self._digests.clear()
            digest = self._digests[token] = crypto.token_digest(token)
        record = self._tokens.get(digest)
        if record is not None:  # (resolve_digest and _application_of, inline for a known token: once per send)
            app = self.apps.get(record.app_id)
            if app is not None and record.expires_at > self.clock.seconds():
                return app
            return self._application_of(record)
        found = self.resolve_digest(digest)
        if isinstance(found, TokenRecord):  # (not isinstance(found, Deferred): an ABC's check costs 0.15 µs)
            return self._application_of(found)
        return found.addCallback(self._application_of)

    def resolve_digest(self, digest: bytes) -> TokenRecord | Deferred[TokenRecord]:
        """The record of the access token with this digest: from memory, or from the store (a Deferred); AuthError(401) if neither knows it."""
        record = self._tokens.get(digest)
        if record is not None:
            return record
        if digest in self._absent:
            raise AuthError(401, "invalid access token")
        return self.fetch_token(digest).addCallback(self._fetched, digest)

    def _fetched(self, _: object, digest: bytes) -> TokenRecord:
        record = self._tokens.get(digest)
        if record is None:
            raise AuthError(401, "invalid access token")
        return record

    def _application_of(self, record: TokenRecord) -> Application:
        app = self.apps.get(record.app_id)
        if app is None:
            raise AuthError(401, "invalid access token")
        if record.expires_at <= self.clock.seconds():
            raise AuthError(403, "access token expired: call /auth again")
        return app

    def fetch_token(self, digest: bytes) -> Deferred[None]:
        """
        Look a token up in the store (issued by another node, or by this one's
        store before the last snapshot) and remember what it says, either way.
        Concurrent look-ups of one digest share one query.  Fails with
        :class:`~pns4ones.store.StoreUnavailable` when the store cannot answer.
        """
        d: Deferred[None] = Deferred()
        waiting = self._fetching.get(digest)
        if waiting is not None:
            waiting.append(d)
            return d
        self._fetching[digest] = [d]

        def done(result: Any) -> None:
            for waiter in self._fetching.pop(digest, []):
                if isinstance(result, Failure):
                    waiter.errback(result)
                else:
                    waiter.callback(None)

        self._fetch_token(digest).addBoth(done)
        return d

    @inlineCallbacks
    def _fetch_token(self, digest: bytes) -> Any:
        record = yield self.store.get_token(digest)
        if record is None:
            if len(self._absent) >= MAX_ABSENT_TOKENS:
                self._absent.clear()
            self._absent.add(digest)
            return
        if record.app_id not in self.apps:  # an application created a moment ago on another node
            yield self.reload()
        self._tokens[digest] = record
        self.log.debug("adopted an access token of application {app_id} from the store", app_id=record.app_id)

    def token_expiry(self, digest: bytes, app_id: str) -> float | None:
        """When the access token with this digest expires(d), or None if it was revoked (reset, key rotated) or purged."""
        record = self._tokens.get(digest)
        return record.expires_at if record is not None and record.app_id == app_id else None

    def purge_tokens(self) -> Deferred[int]:
        cutoff = self.clock.seconds() - EXPIRED_TOKEN_MEMORY
        for digest in [d for d, r in self._tokens.items() if r.expires_at < cutoff]:
            del self._tokens[digest]
        return self.store.purge_tokens(cutoff)

    # -- subscriptions: the one way in and out, for every transport ------------------------

    def register(self, registration: Registration) -> Application:
        """Check an add-in registration (application, signature): its application, or :class:`RegistrationRejected`."""
        app = self.apps.get(registration.app_id)
        if app is None:
            raise RegistrationRejected("unknown-application", f"unknown application {registration.app_id!r}")
        if not registration.verify(app.client_key):
            raise RegistrationRejected("bad-signature", f"bad signature for application {app.id}")
        return app

    def subscribe(self, session: Session, since: int | None = None) -> Deferred[None]:
        """
        Join: ``session`` holds live messages; the hub replays what it missed
        after ``since`` (None: a new subscription) and attaches it in the same
        turn (no gap, no duplicate); its user's kept messages are taken from the
        store (those the replay carries already are not written twice); then the
        session writes the kept messages, the replay and the held live ones, in
        that order (:class:`~pns4ones.hub.Catchup`).  Fires once the session is
        live, or has left meanwhile; a failure ends the session.
        """
        if session in self._joining:
            self.unsubscribe(session)
        join = _Join(since)
        self._joining[session] = join
        session.hold()
        replayed: Deferred[Replay] = self.hub.replay(session, since)
        taken: Deferred[list[bytes] | None] = replayed.addCallback(self._replayed, session, join)
        live: Deferred[None] = taken.addCallback(self._caught_up, session, join)
        return live.addErrback(self._join_failed, session, join)

    def unsubscribe(self, session: Session) -> None:
        """Leave: no more messages for ``session``, also while it is joining (its catch-up is dropped). Idempotent."""
        self._joining.pop(session, None)
        self.hub.detach(session)

    def adopt(self, session: Session) -> None:
        """A session the previous process handed over (restart): it had its catch-up there; route to it from now on."""
        self.hub.attach(session)

    def _replayed(self, replay: Replay, session: Session, join: _Join) -> Deferred[list[bytes] | None]:
        if self._joining.get(session) is not join:
            return succeed(None)  # left meanwhile
        # The same turn as the replay's end: messages from now on are held by the session.
        self.hub.attach(session)
        join.replay = replay
        if (session.app_id, session.ib_id) not in self._kept_ibs:
            return succeed([])
        return self._take_kept(session)

    @inlineCallbacks
    def _take_kept(self, session: Session) -> Generator[Deferred[Any], Any, list[bytes] | None]:
        app_id, ib_id, user_id = session.app_id, session.ib_id, session.user_id
        try:
            groups = set(self.membership.groups_of(app_id, ib_id, user_id)) | set(session.groups)
            payloads = yield self.store.take_kept(app_id, ib_id, user_id, sorted(groups), self.clock.seconds())
            return list(payloads)
        except StoreUnavailable as e:
            self.log.warn(
                "kept messages for app={app_id} ib={ib_id} user={user_id} not read: {reason}",
                app_id=app_id,
                ib_id=ib_id,
                user_id=user_id,
                reason=str(e),
            )
        except Exception:
            self.log.failure(
                "cannot read kept messages for app={app_id} ib={ib_id} user={user_id}", app_id=app_id, ib_id=ib_id, user_id=user_id
            )
        return []

    def _caught_up(self, payloads: list[bytes] | None, session: Session, join: _Join) -> None:
        if payloads is None:
            return
        if self._joining.get(session) is not join:
            if payloads:
                self.log.warn(
                    "{count} kept messages for app={app_id} ib={ib_id} user={user_id} were taken for a subscription that ended meanwhile",
                    count=len(payloads),
                    app_id=session.app_id,
                    ib_id=session.ib_id,
                    user_id=session.user_id,
                    event="kept-lost",
                )
            return
        del self._joining[session]
        replay = join.replay
        assert replay is not None
        kept = _not_replayed(payloads, replay.backlog)
        session.release(Catchup(kept, replay.backlog, join.since, replay.missed, replay.resume_id))
        if kept:
            self.log.info(
                "wrote {count} kept messages to app={app_id} ib={ib_id} user={user_id}",
                count=len(kept),
                app_id=session.app_id,
                ib_id=session.ib_id,
                user_id=session.user_id,
                event="kept-delivered",
            )

    def _join_failed(self, failure: Failure, session: Session, join: _Join) -> None:
        if self._joining.get(session) is join:
            del self._joining[session]
        self.hub.detach(session)
        self.log.failure("cannot start the subscription of {peer}", failure, peer=session.peer)
        session.end("internal error: try again")

    # -- sends ------------------------------------------------------------------------------

    def send(self, app: Application, request: SendRequest, ttl: float = 0.0) -> Delivery | Deferred[Delivery]:
        """
        Live delivery; with a TTL also keep the message for users who are not
        reached.  The Delivery itself when nothing is awaited (the in-process
        hub, no TTL), else a Deferred of it.
        """
        outbound = Outbound(request.message)
        result = self.hub.publish(app.id, request.recipient, outbound)
        if not ttl:
            return result
        d = result if isinstance(result, Deferred) else succeed(result)
        return d.addCallback(self._keep, app, request.recipient, outbound, ttl)

    @inlineCallbacks
    def _keep(self, delivery: Delivery, app: Application, recipient: Recipient, outbound: Outbound, ttl: float) -> Any:
        if recipient.type == "user" and delivery.sessions:
            return delivery
        now = self.clock.seconds()
        key = (app.id, recipient.ib_id)
        self._kept_ibs.add(key)
        if self._kept_added is not None:
            self._kept_added.add(key)
        message = KeptMessage(app.id, recipient.ib_id, recipient.type, recipient.target, outbound.plaintext, now, now + ttl)
        received = [] if recipient.type == "user" else list(delivery.reached)
        outcome = yield self.store.keep_message(message, received, self.limits.max_kept_per_user, self.limits.max_kept_per_app)
        dropped = outcome.dropped_user + outcome.dropped_app
        if outcome.dropped_user:
            self.log.warn(
                "kept messages of app={app_id} ib={ib_id} user={user_id} over max_kept_per_user={limit}: dropped the {count} oldest",
                app_id=app.id,
                ib_id=recipient.ib_id,
                user_id=recipient.user_id,
                limit=self.limits.max_kept_per_user,
                count=outcome.dropped_user,
                event="kept-dropped",
            )
        if outcome.dropped_app:
            self.log.warn(
                "kept messages of app={app_id} over max_kept_per_app={limit}: dropped the {count} oldest",
                app_id=app.id,
                limit=self.limits.max_kept_per_app,
                count=outcome.dropped_app,
                event="kept-dropped",
            )
        return replace(delivery, stored=True, dropped=dropped)

    @inlineCallbacks
    def purge_kept(self) -> Any:
        """Forget expired kept messages; registrations where none are left skip the store."""
        self._kept_added = set()
        try:
            count = yield self.store.purge_kept(self.clock.seconds())
            fresh = yield self.store.kept_ibs()
            self._kept_ibs = set(fresh) | self._kept_added
        finally:
            self._kept_added = None
        if count:
            self.log.info("purged {count} expired kept messages", count=count, event="kept-expired")
        return count

    # -- groups (the store first, then memory: the next send sees the change) -------------

    def _check_group_room(self, app: Application, ib_id: str, group: str, new_members: int) -> None:
        if new_members > self.limits.max_group_size:
            raise GroupError(
                413, "UserIds", f"the group would have {new_members} members; at most {self.limits.max_group_size} (max_group_size)"
            )
        if group not in self.membership.groups(app.id, ib_id) and self.membership.group_count(app.id) >= self.limits.max_groups:
            raise GroupError(413, "Group", f"the application has {self.limits.max_groups} groups already (max_groups)")

    @inlineCallbacks
    def set_group(self, app: Application, ib_id: str, group: str, user_ids: list[str]) -> Any:
        if user_ids:
            self._check_group_room(app, ib_id, group, len(user_ids))
        yield self.store.set_group(app.id, ib_id, group, user_ids, self.clock.seconds())
        self.membership.replace(app.id, ib_id, group, user_ids)
        self._local_changes += 1
        self.log.info(
            "group set: app={app_id} ib={ib_id} group={group} members={count}",
            app_id=app.id,
            ib_id=ib_id,
            group=group,
            count=len(user_ids),
            event="group-set",
        )
        return len(user_ids)

    @inlineCallbacks
    def add_members(self, app: Application, ib_id: str, group: str, user_ids: list[str]) -> Any:
        current = self.membership.members(app.id, ib_id, group)
        self._check_group_room(app, ib_id, group, len(current) + sum(1 for u in user_ids if u not in current))
        added = yield self.store.add_group_members(app.id, ib_id, group, user_ids, self.clock.seconds())
        self.membership.add(app.id, ib_id, group, user_ids)
        self._local_changes += 1
        return added

    @inlineCallbacks
    def remove_member(self, app: Application, ib_id: str, group: str, user_id: str) -> Any:
        removed = yield self.store.remove_group_member(app.id, ib_id, group, user_id)
        self.membership.remove(app.id, ib_id, group, user_id)
        self._local_changes += 1
        return removed

    @inlineCallbacks
    def remove_group(self, app: Application, ib_id: str, group: str) -> Any:
        removed = yield self.store.remove_group(app.id, ib_id, group)
        self.membership.drop_group(app.id, ib_id, group)
        self._local_changes += 1
        return removed

    # -- presence ------------------------------------------------------------------------

    def presence(self, app_id: str, ib_id: str) -> dict[str, list[SessionInfo]]:
        """Live sessions of one information base, by user: this node's, then the other nodes' (a hub between nodes)."""
        out: dict[str, list[SessionInfo]] = {}
        for session in self.hub.sessions(app_id):
            if session.ib_id == ib_id:
                out.setdefault(session.user_id, []).append(session)
        for user_id, sessions in self.hub.remote_sessions(app_id, ib_id).items():
            out.setdefault(user_id, []).extend(sessions)
        return out

    # -- the admin console: who is online, disconnecting ------------------------------------

    def online(self, app_id: str, ib_id: str | None = None, search: str = "", offset: int = 0, limit: int = 100) -> Online:
        """
        Live sessions of an application as plain rows, for the admin panel:
        those of one information base (None: every base of this node), whose
        user id contains ``search`` (any case); this node's, and, for one
        information base, the other nodes' (what presence knows of them).
        Ordered by user, base, node, connection time; ``limit`` rows from ``offset``.
        """
        needle = search.casefold()
        found: list[SessionInfo] = []
        for session in self.hub.sessions(app_id):
            if (ib_id is None or session.ib_id == ib_id) and (not needle or needle in session.user_id.casefold()):
                found.append(session)
        #: This node's sessions of each (base, user): what disconnecting the user ends.
        local = Counter((s.ib_id, s.user_id) for s in found)
        users = set(local)
        remote = 0
        if ib_id is not None:
            for user_id, infos in self.hub.remote_sessions(app_id, ib_id).items():
                if infos and (not needle or needle in user_id.casefold()):
                    found.extend(infos)
                    remote += len(infos)
                    users.add((ib_id, user_id))
        found.sort(key=lambda s: (s.user_id, s.ib_id, s.node is not None, s.node or "", s.connected_at, s.session_id))
        start = max(0, offset)
        rows = [
            OnlineRow(
                s.user_id, s.ib_id, s.session_id, s.transport_name, s.peer, s.node, s.connected_at, s.delivered, s.groups,
                local[(s.ib_id, s.user_id)],
            )
            for s in found[start : start + max(0, limit)]
        ]  # fmt: skip
        return Online(len(found), len(users), remote, rows)

    def disconnect(self, app_id: str, ib_id: str, user_id: str, session_id: str = "", reason: str = DISCONNECT_REASON) -> list[SessionInfo]:
        """
        End this node's sessions of ``user_id`` in one information base (only
        ``session_id`` when given), telling each client ``reason``; logged and
        counted (``pns4ones_subscriptions_cut{reason="admin"}``).  The sessions ended.
        """
        ended: list[SessionInfo] = []
        for session in list(self.hub.sessions(app_id)):
            if session.ib_id != ib_id or session.user_id != user_id or (session_id and session.session_id != session_id):
                continue
            self.log.info(
                "ended subscription {session_id} of {peer} (app={app_id} ib={ib_id} user={user_id} transport={transport}): {reason}",
                session_id=session.session_id,
                peer=session.peer,
                app_id=app_id,
                ib_id=ib_id,
                user_id=user_id,
                transport=session.transport_name,
                reason=reason,
                event="disconnected",
            )
            session.end(reason)
            self.metrics.cut("admin")
            ended.append(session)
        return ended
