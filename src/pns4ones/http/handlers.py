"""
The send API (docs/protocol.md section 3) as one handler per route:
``Call -> Answer | Deferred[Answer]``, over :class:`pns4ones.core.Core`.

Invariants:

* A handler reads only its :class:`~.calls.Call` and the core; it never sees a
  connection, a transport or a twisted.web request, so both front-ends (the
  front connection and twisted.web/Klein) run the same code.
* An answer known at once is returned as a value: no Deferred is made for it
  (the hot path: a token in memory, the in-process hub).  A Deferred is
  returned only where something is really awaited (the store, the hub between
  nodes).
* Errors become answers in one place, :meth:`Handlers.answer` with
  :func:`error_answer`: :class:`ApiError` carries its status and JSON document;
  :class:`~pns4ones.core.AuthError`, the store's and the hub's unavailability
  map to 401/403 and 503; anything else is a 500 and a logged failure.
* Authentication comes first: a request with a bad token is refused before its
  body is parsed.

A note on speed: a result that is a value or a Deferred is told apart by the
value's class (``isinstance(app, Application)``), not by ``Deferred``:
Deferred is an abstract base class (``collections.abc.Awaitable``), and an
``isinstance`` against it runs ``ABCMeta.__instancecheck__`` in Python, about
0.15 µs, against 0.03 µs for a plain class; a send made three of them.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from time import perf_counter
from typing import Any, Final, TypeAlias
from urllib.parse import unquote

from twisted.internet.defer import Deferred, gatherResults
from twisted.logger import Logger
from twisted.python.failure import Failure

from ..core import LEGACY_EPOCH_OFFSET, AuthError, Core, IssuedToken
from ..groups import GroupError, check_name, parse_ttl, parse_user_ids
from ..hub import Delivery, HubUnavailable
from ..logs import RateLimited
from ..messages import MessageError, SendRequest, decode_json_body, decode_send_body, parse_send, parse_send_object
from ..metrics import NULL, NullMetrics
from ..ratelimit import RateLimiter
from ..store import Application, StoreUnavailable
from .calls import JSON_HEADERS, Answer, Call, Headers, json_answer

#: The namespace of the send and rejection log lines, as operators filter on it (unchanged since the
#: module api.py).  Used as a module global: a Logger read as a class attribute names itself after the class.
log = Logger(namespace="pns4ones.api.SendAPI")

#: A route: the call and the path's segments (still percent-encoded) in, an answer out.
Route: TypeAlias = Callable[..., "Answer | Deferred[Answer]"]

_SESSIONS: Final = b"X-Pns-Sessions"
_USERS: Final = b"X-Pns-Users"
_ID: Final = b"X-Pns-Id"
_STORED_HEADER: Final = (b"X-Pns-Stored", b"true")


class ApiError(Exception):
    """An answer other than 200: its status, ``{"error": ..., "reason": ..., **extra}`` and extra headers."""

    def __init__(self, status: int, error: str, reason: str, headers: Headers = (), **extra: Any) -> None:
        super().__init__(reason)
        self.status = status
        self.headers = headers
        self.doc = {"error": error, "reason": reason, **extra}

    def answer(self) -> Answer:
        return json_answer(self.status, self.doc, self.headers)


def error_answer(error: BaseException | None, call: Call | None = None) -> Answer:
    """The one map from an error to an answer (logged when it is a bug)."""
    if isinstance(error, ApiError):
        return error.answer()
    if isinstance(error, AuthError):
        return json_answer(error.status, {"error": "unauthorized" if error.status == 401 else "token_expired", "reason": error.reason})
    if isinstance(error, StoreUnavailable):
        return json_answer(503, {"error": "store_unavailable", "reason": str(error)}, ((b"Retry-After", b"5"),))
    if isinstance(error, HubUnavailable):
        return json_answer(503, {"error": "hub_unavailable", "reason": str(error)}, ((b"Retry-After", b"1"),))
    path = call.path.decode("latin-1", "replace") if call is not None else "?"
    log.failure("unexpected error answering {path}", Failure(error), path=path)
    return json_answer(500, {"error": "internal", "reason": "internal error, see the service log"})


def _sent_body(delivery: Delivery) -> bytes:
    """``{"sessions": N, "users": N, "stored": B[, "dropped": N], "id": N}``, byte for byte as ``json.dumps`` writes it."""
    d = delivery
    stored = b"true" if d.stored else b"false"
    if d.dropped:
        return b'{"sessions": %d, "users": %d, "stored": %s, "dropped": %d, "id": %d}' % (
            d.sessions,
            d.users,
            stored,
            d.dropped,
            d.message_id,
        )
    return b'{"sessions": %d, "users": %d, "stored": %s, "id": %d}' % (d.sessions, d.users, stored, d.message_id)


#: :func:`_sent_body` of a send neither kept nor dropping any, from the digits already made.
_LIVE_BODY: Final = b'{"sessions": %s, "users": %s, "stored": false, "id": %s}'

#: ``/sendmessage``'s header fields in wire form: the counts, the id, X-Pns-Stored when kept, then JSON_HEADERS.
_SENT_FIELDS: Final = b"%s: %%s\r\n%s: %%s\r\n%s: %%s\r\n%%s%s" % (
    _SESSIONS,
    _USERS,
    _ID,
    b"".join([b"%s: %s\r\n" % field for field in JSON_HEADERS]).replace(b"%", b"%%"),
)
_STORED_FIELD: Final = b"%s: %s\r\n" % _STORED_HEADER


def sent_answer(delivery: Delivery) -> Answer:
    """
    The answer of ``/sendmessage``: the body of :func:`_sent_body` and its
    headers (each send's own: it carries the id) made in their wire form
    (:attr:`Answer.fields`: one format rather than one per field; the pairs
    are read from it only if asked for).
    """
    sessions, users, message_id = b"%d" % delivery.sessions, b"%d" % delivery.users, b"%d" % delivery.message_id
    if delivery.stored:
        return Answer(200, None, _sent_body(delivery), _SENT_FIELDS % (sessions, users, message_id, _STORED_FIELD))
    if delivery.dropped:  # (only ever with stored; kept for the body's shape)
        return Answer(200, None, _sent_body(delivery), _SENT_FIELDS % (sessions, users, message_id, b""))
    # The usual send (not kept): the body from the same digits as the fields.
    return Answer(200, None, _LIVE_BODY % (sessions, users, message_id), _SENT_FIELDS % (sessions, users, message_id, b""))


class _Batch:
    """
    A ``/sendmessages`` answer being made: each element's result as the JSON
    text ``json.dumps(..., ensure_ascii=False)`` writes for it, the totals, and
    what every element's metrics and trace record share (the application, the
    sender, when the batch arrived and when it was taken).
    """

    __slots__ = ("accepted", "app_id", "now", "peer", "results", "sessions", "started")

    def __init__(self, count: int, app_id: str, peer: str, started: float, now: float) -> None:
        self.results: list[str] = ["null"] * count
        self.sessions = 0
        self.accepted = 0
        self.app_id = app_id
        self.peer = peer
        #: perf_counter() when the request was complete (each element's latency runs from it).
        self.started = started
        #: The clock when the batch was taken: each element's time in the trace.
        self.now = now


def _element(result: dict[str, Any]) -> str:
    """One element's result (a refusal) as JSON text, as in the whole answer."""
    return json.dumps(result, ensure_ascii=False)


class Handlers:
    """Every route of the send API listener (see the module's invariants)."""

    __slots__ = ("_warn", "core", "expires_in_format", "limiter", "log_sends", "max_batch", "metrics", "readiness", "subscriptions")

    def __init__(
        self,
        core: Core,
        expires_in_format: str = "unix",
        log_sends: bool = True,
        send_rate_limit: float = 0.0,
        max_batch: int = 1000,
        subscriptions: Any = None,
    ) -> None:
        self.core = core
        #: The service's metrics (pns4ones.observe sets them), or none.
        self.metrics: NullMetrics = NULL
        self.max_batch = max_batch
        #: WebSocket/SSE subscriptions (:class:`pns4ones.transports.web.WebSubscriptions`), if served.
        self.subscriptions = subscriptions
        self.expires_in_format = expires_in_format
        self.limiter = RateLimiter(send_rate_limit) if send_rate_limit > 0 else None
        self._warn = RateLimited(core.clock, 10.0)
        #: A log event per send only when Information is on (it costs ~4% of a send).
        self.log_sends = log_sends
        #: ``/ready``: () -> (ready, reason); the service passes its own.
        self.readiness: Callable[[], tuple[bool, str]] = lambda: (True, "ready")

    # -- the one place errors become answers ------------------------------------------------

    def answer(self, route: Route, call: Call, *segments: str) -> Answer | Deferred[Answer]:
        """Run ``route``; whatever it raises or fails with is answered by :meth:`error`."""
        try:
            result = route(call, *segments) if segments else route(call)  # (the hot routes take no segments: a plain call)
        except Exception as e:
            return self.error(e, call)
        if isinstance(result, Answer):
            return result
        return result.addErrback(self._failed, call)

    def _failed(self, failure: Failure, call: Call) -> Answer:
        return self.error(failure.value, call)

    def error(self, error: BaseException | None, call: Call) -> Answer:
        """:func:`error_answer`, and a rate-limited warning for refused credentials."""
        if isinstance(error, AuthError):
            self._rejected(call, error.status, error.reason)
        return error_answer(error, call)

    def _rejected(self, call: Call, status: int, reason: str) -> None:
        """A rate-limited warning: a flood of bad tokens does not flood the log."""

        def emit(suppressed: int) -> None:
            more = f" ({suppressed} more like it in the last 10 s)" if suppressed else ""
            log.warn(
                "rejected {method} {path} from {peer}: {status} {reason}{more}",
                method=call.method.decode("latin-1"),
                path=call.path.decode("latin-1", "replace"),
                peer=call.peer,
                status=status,
                reason=reason,
                more=more,
                event="rejected",
            )

        self._warn(f"{status}:{reason[:20]}", emit)

    # -- credentials ------------------------------------------------------------------------

    def _then(self, call: Call, step: Callable[..., Answer | Deferred[Answer]], *args: Any) -> Answer | Deferred[Answer]:
        """``step(application, call, *args)`` once the call's token is resolved (at once when it is in memory)."""
        app = self.core.resolve_token(call.bearer_token())
        if isinstance(app, Application):  # (the value's class: see the module's note on Deferred)
            return step(app, call, *args)
        return app.addCallback(step, call, *args)

    def _charge(self, call: Call, app: Application, cost: int = 1) -> None:
        """``send_rate_limit``: 429 with Retry-After when the application is over it."""
        if self.limiter is None:
            return
        wait = self.limiter.take(app.id, self.core.clock.seconds(), cost)
        if wait:
            self._rejected(call, 429, f"application {app.id} over send_rate_limit")
            raise ApiError(
                429,
                "rate_limited",
                f"over {self.limiter.rate:g} sends per second for this application",
                headers=((b"Retry-After", str(max(1, int(wait + 0.999))).encode()),),
            )

    # -- /auth ------------------------------------------------------------------------------

    def auth(self, call: Call) -> Answer | Deferred[Answer]:
        """``GET /auth?server_key=...``: an access token."""
        server_key = (call.arg(b"server_key") or b"").decode("utf-8", "replace")
        issued = self.core.authorize(server_key)
        if isinstance(issued, Deferred):
            return issued.addCallback(self._issued)
        return self._issued(issued)

    def _issued(self, issued: IssuedToken) -> Answer:
        expires = int(issued.expires_at)
        if self.expires_in_format == "legacy":
            expires += LEGACY_EPOCH_OFFSET
        return json_answer(200, {"access_token": issued.token, "expires_in": expires})

    # -- /sendmessage -----------------------------------------------------------------------

    def sendmessage(self, call: Call) -> Answer | Deferred[Answer]:
        """``POST /sendmessage``: one message."""
        started = perf_counter()
        app = self.core.resolve_token(call.bearer_token())
        if isinstance(app, Application):
            return self._sendmessage(app, call, started)
        return app.addCallback(self._sendmessage, call, started)

    def _sendmessage(self, app: Application, call: Call, started: float) -> Answer | Deferred[Answer]:
        if self.limiter is not None:
            self._charge(call, app)
        try:
            send = parse_send(call.body)
        except MessageError as e:
            raise ApiError(400, "bad_request", e.reason, field=e.field) from None
        ttl = self._ttl(call, send) if send.ttl is not None or call.query else 0.0
        delivery = self.core.send(app, send, ttl)
        if isinstance(delivery, Delivery):
            return self._sent(delivery, call, app, send, ttl, started)
        # a hub between nodes, or a kept message: the answer comes later
        return delivery.addCallback(self._sent, call, app, send, ttl, started)

    def _ttl(self, call: Call, send: SendRequest) -> float:
        """``Message.TTL`` or ``?ttl=`` (the body wins), bounded by ``max_ttl``; 0.0 when neither is given."""
        try:
            if send.ttl is not None:
                return parse_ttl(send.ttl, self.core.limits.max_ttl, "Message.TTL")
            arg = call.arg(b"ttl")
            if arg is None:
                return 0.0
            return parse_ttl(arg.decode("utf-8", "replace"), self.core.limits.max_ttl, "ttl")
        except GroupError as e:
            raise ApiError(400, "bad_request", f"{e.field} {e.reason}", field=e.field) from None

    def _sent(self, delivery: Delivery, call: Call, app: Application, send: SendRequest, ttl: float, started: float) -> Answer:
        self.metrics.sent(app.id, send.recipient.type, perf_counter() - started)
        self.core.trace.sent(self.core.clock.seconds(), "api", call.peer, app.id, send, ttl, delivery)
        if self.log_sends:
            log.info(
                "send: app={app_id} type={type} ib={ib_id} target={target} sessions={sessions} peer={peer}",
                app_id=app.id,
                type=send.recipient.type,
                ib_id=send.recipient.ib_id,
                target=send.recipient.target,
                sessions=delivery.sessions,
                peer=call.peer,
                event="send",
            )
        return sent_answer(delivery)

    # -- /sendmessages ----------------------------------------------------------------------

    def sendmessages(self, call: Call) -> Answer | Deferred[Answer]:
        """
        ``POST /sendmessages``: a JSON array of ``/sendmessage`` bodies, one
        result per element in the answer (a bad element does not stop the
        others); the batch counts as that many sends for ``send_rate_limit``.
        """
        return self._then(call, self._sendmessages, perf_counter())

    def _sendmessages(self, app: Application, call: Call, started: float) -> Answer | Deferred[Answer]:
        try:
            doc = decode_send_body(call.body)
        except MessageError as e:
            self._charge(call, app)
            raise ApiError(400, "bad_request", e.reason, field=e.field) from None
        if not isinstance(doc, list):
            self._charge(call, app)
            raise ApiError(400, "bad_request", "must be a JSON array of messages", field="body")
        if len(doc) > self.max_batch:
            self._charge(call, app)
            raise ApiError(413, "batch_too_large", f"at most {self.max_batch} messages per batch", field="body")
        self._charge(call, app, max(1, len(doc)))
        batch = _Batch(len(doc), app.id, call.peer, started, self.core.clock.seconds())
        pending: list[Deferred[None]] = []
        max_ttl = self.core.limits.max_ttl
        send_one = self.core.send
        for index, item in enumerate(doc):
            try:
                send = parse_send_object(item, True)  # (the batch is this call's own: no copy of each Data)
                ttl = parse_ttl(send.ttl, max_ttl, "Message.TTL") if send.ttl is not None else 0.0
            except (MessageError, GroupError) as e:
                batch.results[index] = _element(
                    {"status": 400, "error": "bad_request", "field": f"[{index}].{e.field}", "reason": e.reason}
                )
                continue
            delivery = send_one(app, send, ttl)
            if not isinstance(delivery, Delivery):  # a Deferred
                pending.append(
                    delivery.addCallbacks(
                        self._batch_sent, self._batch_unavailable, callbackArgs=(batch, index, send, ttl), errbackArgs=(batch, index)
                    )
                )
            else:
                self._batch_sent(delivery, batch, index, send, ttl)
        if pending:
            return gatherResults(pending, consumeErrors=True).addCallback(self._batch_answer, app, batch)
        return self._batch_answer(None, app, batch)

    def _batch_answer(self, gathered: object, app: Application, batch: _Batch) -> Answer:
        """The batch's answer, once every element has its result (``gathered``: what the elements' Deferreds gave, unused)."""
        sessions = batch.sessions
        if self.log_sends:
            log.info(
                "batch send: app={app_id} messages={count} sessions={sessions}",
                app_id=app.id,
                count=len(batch.results),
                sessions=sessions,
                event="send",
            )
        body = f'{{"results": [{", ".join(batch.results)}], "sessions": {sessions}, "accepted": {batch.accepted}}}'.encode()
        return Answer(200, ((_SESSIONS, b"%d" % sessions), *JSON_HEADERS), body)

    def _batch_sent(self, delivery: Delivery, batch: _Batch, index: int, send: SendRequest, ttl: float) -> None:
        self.metrics.sent(batch.app_id, send.recipient.type, perf_counter() - batch.started)
        self.core.trace.sent(batch.now, "batch", batch.peer, batch.app_id, send, ttl, delivery)
        stored = "true" if delivery.stored else "false"
        if delivery.dropped:  # (as /sendmessage's answer: only when keeping it pushed older ones out)
            batch.results[index] = (
                f'{{"status": 200, "sessions": {delivery.sessions}, "users": {delivery.users}, "stored": {stored}, '
                f'"dropped": {delivery.dropped}, "id": {delivery.message_id}}}'
            )
        else:
            batch.results[index] = (
                f'{{"status": 200, "sessions": {delivery.sessions}, "users": {delivery.users}, "stored": {stored}, '
                f'"id": {delivery.message_id}}}'
            )
        batch.sessions += delivery.sessions
        batch.accepted += 1

    @staticmethod
    def _batch_unavailable(failure: Failure, batch: _Batch, index: int) -> None:
        """The hub between nodes, or the store for a kept message (ttl), cannot take this
        message now: 503 for this element, the others stand."""
        failure.trap(HubUnavailable, StoreUnavailable)
        error = "hub_unavailable" if failure.check(HubUnavailable) else "store_unavailable"
        batch.results[index] = _element({"status": 503, "error": error, "reason": str(failure.value)})

    # -- /tickets ---------------------------------------------------------------------------

    def tickets(self, call: Call) -> Answer | Deferred[Answer]:
        """``POST /tickets``: a subscription ticket for WebSocket/SSE (see transports/web.py)."""
        return self._then(call, self._ticket)

    def _ticket(self, app: Application, call: Call) -> Answer:
        if self.subscriptions is None:
            raise ApiError(404, "not_found", "WebSocket/SSE subscriptions are not served here")
        try:
            doc = self.subscriptions.issue(app, call.bearer_token(), call.body)
        except MessageError as e:
            raise ApiError(400, "bad_request", e.reason, field=e.field) from None
        return json_answer(200, doc)

    # -- groups (names percent-encoded in the path; the token's application only) -----------

    @staticmethod
    def _segment(raw: str, field: str) -> str:
        try:
            value = unquote(raw, encoding="utf-8", errors="strict")
        except UnicodeDecodeError:
            raise ApiError(400, "bad_request", f"{field} is not percent-encoded UTF-8", field=field) from None
        try:
            return check_name(value, field)
        except GroupError as e:
            raise ApiError(400, "bad_request", f"{field} {e.reason}", field=field) from None

    def _user_ids(self, call: Call) -> list[str]:
        try:
            return parse_user_ids(decode_json_body(call.body), self.core.limits.max_group_size)
        except MessageError as e:
            raise ApiError(400, "bad_request", f"{e.field} {e.reason}", field=e.field) from None
        except GroupError as e:
            raise self._group_error(e) from None

    @staticmethod
    def _group_error(e: GroupError) -> ApiError:
        return ApiError(e.status, "too_large" if e.status == 413 else "bad_request", f"{e.field} {e.reason}", field=e.field)

    def _changed(self, call: Call, what: str, app: Application, ib_id: str, group: str, **fields: Any) -> None:
        log.info(
            "groups: {what} app={app_id} ib={ib_id} group={group} {fields} peer={peer}",
            what=what,
            app_id=app.id,
            ib_id=ib_id,
            group=group,
            fields=fields,
            peer=call.peer,
            event="group-change",
        )

    def _group_doc(self, app: Application, ib_id: str, group: str) -> dict[str, Any]:
        members = sorted(self.core.membership.members(app.id, ib_id, group))
        return {"IbId": ib_id, "Group": group, "UserIds": members, "members": len(members)}

    def list_groups(self, call: Call, ib: str) -> Answer | Deferred[Answer]:
        """``GET /groups/<ib>``."""
        return self._then(call, self._list_groups, ib)

    def _list_groups(self, app: Application, call: Call, ib: str) -> Answer:
        ib_id = self._segment(ib, "IbId")
        groups = self.core.membership.groups(app.id, ib_id)
        return json_answer(200, {"IbId": ib_id, "groups": [{"Group": g, "members": n} for g, n in sorted(groups.items())]})

    def get_group(self, call: Call, ib: str, group: str) -> Answer | Deferred[Answer]:
        """``GET /groups/<ib>/<group>``."""
        return self._then(call, self._get_group, ib, group)

    def _get_group(self, app: Application, call: Call, ib: str, group: str) -> Answer:
        ib_id, name = self._segment(ib, "IbId"), self._segment(group, "Group")
        return json_answer(200, self._group_doc(app, ib_id, name))

    def put_group(self, call: Call, ib: str, group: str) -> Answer | Deferred[Answer]:
        """``PUT /groups/<ib>/<group>``: replace the members."""
        return self._then(call, self._put_group, ib, group)

    def _group_failure(self, failure: Failure) -> Failure:
        """A group change the store or the bounds refused: a GroupError becomes its answer's ApiError."""
        error = failure.value
        if isinstance(error, GroupError):
            raise self._group_error(error) from None
        return failure

    def _put_group(self, app: Application, call: Call, ib: str, group: str) -> Deferred[Answer]:
        ib_id, name = self._segment(ib, "IbId"), self._segment(group, "Group")
        users = self._user_ids(call)

        def done(_: object) -> Answer:
            self._changed(call, "replaced", app, ib_id, name, members=len(users))
            return json_answer(200, self._group_doc(app, ib_id, name))

        d: Deferred[Any] = self.core.set_group(app, ib_id, name, users)
        return d.addCallbacks(done, self._group_failure)

    def add_members(self, call: Call, ib: str, group: str) -> Answer | Deferred[Answer]:
        """``POST /groups/<ib>/<group>/members``."""
        return self._then(call, self._add_members, ib, group)

    def _add_members(self, app: Application, call: Call, ib: str, group: str) -> Deferred[Answer]:
        ib_id, name = self._segment(ib, "IbId"), self._segment(group, "Group")
        users = self._user_ids(call)

        def done(added: int) -> Answer:
            self._changed(call, "added", app, ib_id, name, added=added)
            return json_answer(200, {**self._group_doc(app, ib_id, name), "added": added})

        d: Deferred[int] = self.core.add_members(app, ib_id, name, users)
        return d.addCallbacks(done, self._group_failure)

    def remove_member(self, call: Call, ib: str, group: str, user: str) -> Answer | Deferred[Answer]:
        """``DELETE /groups/<ib>/<group>/members/<user>``."""
        return self._then(call, self._remove_member, ib, group, user)

    def _remove_member(self, app: Application, call: Call, ib: str, group: str, user: str) -> Deferred[Answer]:
        ib_id, name = self._segment(ib, "IbId"), self._segment(group, "Group")
        user_id = self._segment(user, "UserId")

        def done(removed: bool) -> Answer:
            self._changed(call, "removed member", app, ib_id, name, user=user_id, removed=removed)
            return json_answer(200, {**self._group_doc(app, ib_id, name), "removed": removed})

        d: Deferred[bool] = self.core.remove_member(app, ib_id, name, user_id)
        return d.addCallback(done)

    def delete_group(self, call: Call, ib: str, group: str) -> Answer | Deferred[Answer]:
        """``DELETE /groups/<ib>/<group>``."""
        return self._then(call, self._delete_group, ib, group)

    def _delete_group(self, app: Application, call: Call, ib: str, group: str) -> Deferred[Answer]:
        ib_id, name = self._segment(ib, "IbId"), self._segment(group, "Group")

        def done(removed: int) -> Answer:
            self._changed(call, "deleted", app, ib_id, name, removed=removed)
            return json_answer(200, {"IbId": ib_id, "Group": name, "removed": removed})

        d: Deferred[int] = self.core.remove_group(app, ib_id, name)
        return d.addCallback(done)

    # -- presence ---------------------------------------------------------------------------

    def presence(self, call: Call, ib: str) -> Answer | Deferred[Answer]:
        """``GET /presence/<ib>``: who is online."""
        return self._then(call, self._presence, ib)

    def _presence(self, app: Application, call: Call, ib: str) -> Answer:
        ib_id = self._segment(ib, "IbId")
        users = self.core.presence(app.id, ib_id)
        return json_answer(
            200,
            {
                "IbId": ib_id,
                "users": [{"UserId": u, "sessions": len(s)} for u, s in sorted(users.items())],
                "online": len(users),
                "sessions": sum(len(s) for s in users.values()),
            },
        )

    def presence_of(self, call: Call, ib: str, user: str) -> Answer | Deferred[Answer]:
        """``GET /presence/<ib>/<user>``: one user's sessions."""
        return self._then(call, self._presence_of, ib, user)

    def _presence_of(self, app: Application, call: Call, ib: str, user: str) -> Answer:
        ib_id = self._segment(ib, "IbId")
        user_id = self._segment(user, "UserId")
        sessions = sorted(self.core.presence(app.id, ib_id).get(user_id, []), key=lambda s: s.connected_at)
        out: list[dict[str, Any]] = []
        for s in sessions:
            node = s.node
            if node is not None:  # on another node (a hub between nodes): counted, no details
                out.append({"node": node, "transport": s.transport_name, "group": s.group})
                continue
            since = s.connected_at
            out.append(
                {
                    "connected_since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(since)),
                    "connected_since_unix": round(since, 3),
                    "peer": s.peer,
                    "group": s.group,
                    "transport": s.transport_name,
                }
            )
        return json_answer(200, {"IbId": ib_id, "UserId": user_id, "online": bool(out), "sessions": out})

    # -- liveness and readiness ---------------------------------------------------------------

    def health(self, call: Call) -> Answer:
        """The process serves HTTP (liveness): always 200."""
        return json_answer(200, {"status": "ok"})

    def ready(self, call: Call) -> Answer:
        """Store open, listeners bound, not stopping: 200; otherwise 503 (take the node out of rotation)."""
        ok, reason = self.readiness()
        return json_answer(200 if ok else 503, {"ready": ok, "status": reason})
