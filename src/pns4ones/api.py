"""
The send API (PROTOCOL.md section 3): a Klein application over
:class:`pns4ones.core.Core`.  Every error is an :class:`ApiError` answered as
``{"error": ..., "reason": ...}`` with its status.
"""

from __future__ import annotations

import time
from time import perf_counter
from typing import Any
from urllib.parse import unquote

from klein import Klein
from twisted.internet.defer import gatherResults, inlineCallbacks
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import resource as _resource
from twisted.web.server import NOT_DONE_YET
from werkzeug.exceptions import MethodNotAllowed, NotFound

from . import crypto
from .core import LEGACY_EPOCH_OFFSET, AuthError, Core, TokenUnknown
from .groups import GroupError, check_name, parse_ttl, parse_user_ids
from .hub import HubUnavailable
from .logs import RateLimited
from .messages import MessageError, decode_json_body, parse_send, parse_send_object
from .metrics import NULL
from .ratelimit import RateLimiter
from .store import StoreUnavailable
from .tokenfetch import render_after_fetch
from .web import json_body


def _hub_unavailable(failure: Any) -> Any:
    """A send the hub between nodes could not take (Redis unreachable): 503, never a success."""
    if failure.check(HubUnavailable):
        raise ApiError(503, "hub_unavailable", str(failure.value), headers={b"Retry-After": b"1"})
    return failure


class ApiError(Exception):
    def __init__(self, status: int, error: str, reason: str, headers: dict[bytes, bytes] | None = None, **extra: Any) -> None:
        super().__init__(reason)
        self.status = status
        self.headers = headers or {}
        self.doc = {"error": error, "reason": reason, **extra}

    def body(self, request: Any) -> bytes:
        for name, value in self.headers.items():
            request.setHeader(name, value)
        return json_body(request, self.status, self.doc)


def bearer_token(request: Any) -> str:
    header = (request.getHeader(b"authorization") or b"").decode("latin-1")
    scheme, _, value = header.strip().partition(" ")
    if scheme.lower() != "bearer":
        return ""
    return value.strip()


class SendAPI:
    """Routes of the send API listener."""

    app = Klein()
    log = Logger()
    metrics = NULL

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
        self.max_batch = max_batch
        #: WebSocket/SSE subscriptions (:class:`pns4ones.transports.web.WebSubscriptions`), if served.
        self.subscriptions = subscriptions
        self.expires_in_format = expires_in_format
        self.limiter = RateLimiter(send_rate_limit) if send_rate_limit > 0 else None
        self._warn = RateLimited(core.clock, 10.0)
        #: A log event per send only when Information is on (it costs ~4% of a send).
        self.log_sends = log_sends
        #: ``/ready``: () -> (ready, reason); the service passes its own.
        self.readiness = lambda: (True, "ready")

    def resource(self) -> Any:
        """
        The Klein app, with ``/sendmessage`` served by a plain ``Resource`` in
        front: it is the hot path, and Klein's per-request machinery (routing,
        Deferred chains) cost about a fifth of a send there.
        """
        root = _Root(self.app.resource(), self.core)
        root.putChild(b"sendmessage", _SendMessage(self))
        if self.subscriptions is not None:
            root.putChild(b"subscribe", self.subscriptions.resource())
        return root

    def _app_for(self, request: Any, cost: int = 1) -> Any:
        try:
            app = self.core.check_token(bearer_token(request))
        except TokenUnknown:
            raise  # the resource looks it up in the store and renders again (tokenfetch.py)
        except AuthError as e:
            self._rejected(request, e.status, e.reason)
            raise ApiError(e.status, "unauthorized" if e.status == 401 else "token_expired", e.reason) from None
        if self.limiter is not None:
            wait = self.limiter.take(app.id, self.core.clock.seconds(), cost)
            if wait:
                retry = str(max(1, int(wait + 0.999))).encode()
                self._rejected(request, 429, f"application {app.id} over send_rate_limit")
                raise ApiError(
                    429,
                    "rate_limited",
                    f"over {self.limiter.rate:g} sends per second for this application",
                    headers={b"Retry-After": retry},
                )
        return app

    def _rejected(self, request: Any, status: int, reason: str) -> None:
        """A rate-limited warning: a flood of bad tokens does not flood the log."""
        peer = getattr(request.getClientAddress(), "host", "?")

        def emit(suppressed: int) -> None:
            more = f" ({suppressed} more like it in the last 10 s)" if suppressed else ""
            self.log.warn(
                "rejected {method} {path} from {peer}: {status} {reason}{more}",
                method=request.method.decode("latin-1"),
                path=request.path.decode("latin-1", "replace"),
                peer=peer,
                status=status,
                reason=reason,
                more=more,
                event="rejected",
            )

        self._warn(f"{status}:{reason[:20]}", emit)

    # -- routes --------------------------------------------------------------------------

    @app.route("/auth", methods=["GET"])
    @inlineCallbacks
    def auth(self, request: Any) -> Any:
        args = request.args.get(b"server_key") or [b""]
        server_key = args[0].decode("utf-8", "replace")
        try:
            issued = yield self.core.authorize(server_key)
        except AuthError as e:
            self._rejected(request, e.status, e.reason)
            raise ApiError(e.status, "unauthorized", e.reason) from None
        expires = int(issued.expires_at)
        if self.expires_in_format == "legacy":
            expires += LEGACY_EPOCH_OFFSET
        return json_body(request, 200, {"access_token": issued.token, "expires_in": expires})

    @app.route("/tickets", methods=["POST"])
    def tickets(self, request: Any) -> Any:
        """``POST /tickets``: a subscription ticket for WebSocket/SSE (see transports/web.py)."""
        application = self._app_for(request)
        if self.subscriptions is None:
            raise ApiError(404, "not_found", "WebSocket/SSE subscriptions are not served here")
        try:
            doc = self.subscriptions.issue(application, bearer_token(request), request.content.read())
        except MessageError as e:
            raise ApiError(400, "bad_request", e.reason, field=e.field) from None
        return json_body(request, 200, doc)

    def sendmessage(self, request: Any) -> Any:
        """``POST /sendmessage``: bytes now, or a Deferred of them (a networked hub)."""
        started = perf_counter()
        application = self._app_for(request)
        try:
            send = parse_send(request.content.read())
        except MessageError as e:
            raise ApiError(400, "bad_request", e.reason, field=e.field) from None
        ttl = 0.0
        if send.ttl is not None or b"ttl" in request.args:
            ttl = self._ttl(request, send)
        return self.core.send(application, send, ttl).addCallbacks(
            self._sent, _hub_unavailable, callbackArgs=(request, application, send, started)
        )

    def _ttl(self, request: Any, send: Any) -> float:
        """``Message.TTL`` or ``?ttl=`` (the body wins), bounded by ``max_ttl``."""
        try:
            if send.ttl is not None:
                return parse_ttl(send.ttl, self.core.limits.max_ttl, "Message.TTL")
            raw = request.args[b"ttl"][0].decode("utf-8", "replace")
            return parse_ttl(raw, self.core.limits.max_ttl, "ttl")
        except GroupError as e:
            raise ApiError(400, "bad_request", f"{e.field} {e.reason}", field=e.field) from None

    def _sent(self, report: Any, request: Any, application: Any, send: Any, started: float) -> bytes:
        self.metrics.sent(application.id, send.recipient.type, perf_counter() - started)
        if self.log_sends:
            self.log.info(
                "send: app={app_id} type={type} ib={ib_id} target={target} sessions={sessions} peer={peer}",
                app_id=application.id,
                type=send.recipient.type,
                ib_id=send.recipient.ib_id,
                target=send.recipient.target,
                sessions=report.sessions,
                peer=getattr(request.getClientAddress(), "host", "?"),
                event="send",
            )
        request.setHeader(b"X-PNS-Sessions", str(report.sessions).encode())
        request.setHeader(b"X-PNS-Users", str(report.users).encode())
        stored = report.stored
        doc: dict[str, Any] = {"sessions": report.sessions, "users": report.users, "stored": stored}
        dropped = report.dropped
        if dropped:
            doc["dropped"] = dropped
        if stored:
            request.setHeader(b"X-PNS-Stored", b"true")
        return json_body(request, 200, doc)

    # -- groups (names percent-encoded in the path; the token's application only) -------

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

    def _names(self, request: Any, ib: str, group: str | None = None) -> Any:
        app = self._app_for(request)
        ib_id = self._segment(ib, "IbId")
        if group is None:
            return app, ib_id
        return app, ib_id, self._segment(group, "Group")

    def _user_ids(self, request: Any) -> list[str]:
        try:
            doc = decode_json_body(request.content.read())
            return parse_user_ids(doc, self.core.limits.max_group_size)
        except MessageError as e:
            raise ApiError(400, "bad_request", f"{e.field} {e.reason}", field=e.field) from None
        except GroupError as e:
            raise self._group_error(e) from None

    @staticmethod
    def _group_error(e: GroupError) -> ApiError:
        return ApiError(e.status, "too_large" if e.status == 413 else "bad_request", f"{e.field} {e.reason}", field=e.field)

    def _changed(self, request: Any, what: str, app: Any, ib_id: str, group: str, **fields: Any) -> None:
        self.log.info(
            "groups: {what} app={app_id} ib={ib_id} group={group} {fields} peer={peer}",
            what=what,
            app_id=app.id,
            ib_id=ib_id,
            group=group,
            fields=fields,
            peer=getattr(request.getClientAddress(), "host", "?"),
            event="group-change",
        )

    def _group_doc(self, app: Any, ib_id: str, group: str) -> dict[str, Any]:
        members = sorted(self.core.membership.members(app.id, ib_id, group))
        return {"IbId": ib_id, "Group": group, "UserIds": members, "members": len(members)}

    @app.route("/groups/<ib>", methods=["GET"])
    def list_groups(self, request: Any, ib: str) -> Any:
        app, ib_id = self._names(request, ib)
        groups = self.core.membership.groups(app.id, ib_id)
        return json_body(request, 200, {"IbId": ib_id, "groups": [{"Group": g, "members": n} for g, n in sorted(groups.items())]})

    @app.route("/groups/<ib>/<group>", methods=["GET"])
    def get_group(self, request: Any, ib: str, group: str) -> Any:
        app, ib_id, name = self._names(request, ib, group)
        return json_body(request, 200, self._group_doc(app, ib_id, name))

    @app.route("/groups/<ib>/<group>", methods=["PUT"])
    @inlineCallbacks
    def put_group(self, request: Any, ib: str, group: str) -> Any:
        app, ib_id, name = self._names(request, ib, group)
        users = self._user_ids(request)
        try:
            yield self.core.set_group(app, ib_id, name, users)
        except GroupError as e:
            raise self._group_error(e) from None
        self._changed(request, "replaced", app, ib_id, name, members=len(users))
        return json_body(request, 200, self._group_doc(app, ib_id, name))

    @app.route("/groups/<ib>/<group>/members", methods=["POST"])
    @inlineCallbacks
    def add_members(self, request: Any, ib: str, group: str) -> Any:
        app, ib_id, name = self._names(request, ib, group)
        users = self._user_ids(request)
        try:
            added = yield self.core.add_members(app, ib_id, name, users)
        except GroupError as e:
            raise self._group_error(e) from None
        self._changed(request, "added", app, ib_id, name, added=added)
        return json_body(request, 200, {**self._group_doc(app, ib_id, name), "added": added})

    @app.route("/groups/<ib>/<group>/members/<user>", methods=["DELETE"])
    @inlineCallbacks
    def remove_member(self, request: Any, ib: str, group: str, user: str) -> Any:
        app, ib_id, name = self._names(request, ib, group)
        user_id = self._segment(user, "UserId")
        removed = yield self.core.remove_member(app, ib_id, name, user_id)
        self._changed(request, "removed member", app, ib_id, name, user=user_id, removed=removed)
        return json_body(request, 200, {**self._group_doc(app, ib_id, name), "removed": removed})

    @app.route("/groups/<ib>/<group>", methods=["DELETE"])
    @inlineCallbacks
    def delete_group(self, request: Any, ib: str, group: str) -> Any:
        app, ib_id, name = self._names(request, ib, group)
        removed = yield self.core.remove_group(app, ib_id, name)
        self._changed(request, "deleted", app, ib_id, name, removed=removed)
        return json_body(request, 200, {"IbId": ib_id, "Group": name, "removed": removed})

    # -- presence ---------------------------------------------------------------------------

    @app.route("/presence/<ib>", methods=["GET"])
    def presence(self, request: Any, ib: str) -> Any:
        app, ib_id = self._names(request, ib)
        users = self.core.presence(app.id, ib_id)
        return json_body(
            request,
            200,
            {
                "IbId": ib_id,
                "users": [{"UserId": u, "sessions": len(s)} for u, s in sorted(users.items())],
                "online": len(users),
                "sessions": sum(len(s) for s in users.values()),
            },
        )

    @app.route("/presence/<ib>/<user>", methods=["GET"])
    def presence_of(self, request: Any, ib: str, user: str) -> Any:
        app, ib_id = self._names(request, ib)
        user_id = self._segment(user, "UserId")
        sessions = sorted(self.core.presence(app.id, ib_id).get(user_id, []), key=lambda s: s.connected_at)
        out = []
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
        return json_body(request, 200, {"IbId": ib_id, "UserId": user_id, "online": bool(out), "sessions": out})

    @app.route("/sendmessages", methods=["POST"])
    def sendmessages(self, request: Any) -> Any:
        """
        ``POST /sendmessages``: a JSON array of ``/sendmessage`` bodies, one
        result per element in the answer (a bad element does not stop the
        others); the batch counts as that many sends for ``send_rate_limit``.
        """
        started = perf_counter()
        try:
            doc = decode_json_body(request.content.read())
        except MessageError as e:
            self._app_for(request)
            raise ApiError(400, "bad_request", e.reason, field=e.field) from None
        if not isinstance(doc, list):
            self._app_for(request)
            raise ApiError(400, "bad_request", "must be a JSON array of messages", field="body")
        if len(doc) > self.max_batch:
            self._app_for(request)
            raise ApiError(413, "batch_too_large", f"at most {self.max_batch} messages per batch", field="body")
        application = self._app_for(request, cost=max(1, len(doc)))
        results: list[Any] = []
        pending = []
        for index, item in enumerate(doc):
            try:
                send = parse_send_object(item)
                ttl = parse_ttl(send.ttl, self.core.limits.max_ttl, "Message.TTL") if send.ttl is not None else 0.0
            except MessageError as e:
                results.append({"status": 400, "error": "bad_request", "field": f"[{index}].{e.field}", "reason": e.reason})
                continue
            except GroupError as e:
                results.append({"status": 400, "error": "bad_request", "field": f"[{index}].{e.field}", "reason": e.reason})
                continue
            slot = len(results)
            results.append(None)
            pending.append(
                self.core.send(application, send, ttl).addCallbacks(
                    self._batch_sent,
                    self._batch_unavailable,
                    callbackArgs=(results, slot, application.id, send.recipient.type, started),
                    errbackArgs=(results, slot),
                )
            )

        def answer(_: Any) -> bytes:
            sessions = sum(r.get("sessions", 0) for r in results)
            if self.log_sends:
                self.log.info(
                    "batch send: app={app_id} messages={count} sessions={sessions}",
                    app_id=application.id,
                    count=len(doc),
                    sessions=sessions,
                    event="send",
                )
            request.setHeader(b"X-PNS-Sessions", str(sessions).encode())
            return json_body(request, 200, {"results": results, "sessions": sessions, "accepted": sum(r["status"] == 200 for r in results)})

        return gatherResults(pending, consumeErrors=True).addCallback(answer)

    def _batch_sent(self, report: Any, results: list[Any], slot: int, app_id: str, kind: str, started: float) -> None:
        self.metrics.sent(app_id, kind, perf_counter() - started)
        results[slot] = {
            "status": 200,
            "sessions": report.sessions,
            "users": report.users,
            "stored": report.stored,
        }

    @staticmethod
    def _batch_unavailable(failure: Failure, results: list[Any], slot: int) -> None:
        """The hub between nodes, or the store for a kept message (ttl), cannot take this
        message now: 503 for this element, the others stand."""
        failure.trap(HubUnavailable, StoreUnavailable)
        error = "hub_unavailable" if failure.check(HubUnavailable) else "store_unavailable"
        results[slot] = {"status": 503, "error": error, "reason": str(failure.value)}

    @app.route("/health", methods=["GET"])
    def health(self, request: Any) -> bytes:
        """The process serves HTTP (liveness): always 200."""
        return json_body(request, 200, {"status": "ok"})

    @app.route("/ready", methods=["GET"])
    def ready(self, request: Any) -> bytes:
        """Store open, listeners bound, not stopping: 200; otherwise 503 (take the node out of rotation)."""
        ok, reason = self.readiness()
        return json_body(request, 200 if ok else 503, {"ready": ok, "status": reason})

    def respond(self, handler: Any, request: Any, later: Any, fetched: bool = False) -> bytes | None:
        """
        Run a route handler (the plain ``/sendmessage`` resource and the lean
        HTTP path, :mod:`pns4ones.lean`, both call it): the response body now,
        or None and ``later(body)`` when the Deferred it returned fires (a
        networked hub, a token written to the store).  Errors are answered as
        the Klein routes answer them (:meth:`_error_body`).
        """
        try:
            result = handler(request)
        except TokenUnknown as e:
            if fetched:  # still unknown after the look-up (the memory of absent tokens was full)
                return self._error_body(request, ApiError(401, "unauthorized", e.reason))
            return self._after_token_fetch(handler, request, later, e)
        except Exception as e:
            return self._error_body(request, e)
        if isinstance(result, bytes):
            return result
        # The local hub answers at once (no TTL): the Deferred has fired already and
        # its result is final; read it (a Failure is answered, logged and consumed).
        if result.called and not result.paused:  # (paused: waiting on another Deferred)
            value = result.result
            if isinstance(value, bytes):
                return value
            if isinstance(value, Failure):
                result.addErrback(lambda _: None)
                return self._error_body(request, value.value)
        state: list[Any] = []

        def done(value: Any) -> None:
            body = self._error_body(request, value.value) if isinstance(value, Failure) else value
            if state:
                later(body)
            else:
                state.append(body)

        result.addBoth(done)
        if state:
            return state[0]
        state.append(None)  # from now on, done() calls later()
        return None

    def _after_token_fetch(self, handler: Any, request: Any, later: Any, unknown: TokenUnknown) -> None:
        """
        A token this node has not seen (another node may have issued it a moment
        ago, see :mod:`pns4ones.tokenfetch`): look it up in the store, then run the
        handler again; ``later`` gets the answer.
        """

        def again(_: Any) -> None:
            request.content.seek(0)
            body = self.respond(handler, request, later, fetched=True)
            if body is not None:
                later(body)

        def failed(failure: Failure) -> None:
            later(self._error_body(request, failure.value))

        self.core.fetch_token(unknown.digest).addCallbacks(again, failed).addErrback(
            lambda f: self.log.failure("answering after a token look-up failed", f)
        )
        return None

    def _error_body(self, request: Any, error: Exception) -> bytes:
        if isinstance(error, ApiError):
            return error.body(request)
        if isinstance(error, StoreUnavailable):
            return store_unavailable(request, error)
        self.log.failure("unexpected error answering {path}", Failure(error), path=request.path)
        return json_body(request, 500, {"error": "internal", "reason": "internal error, see the service log"})

    # -- errors --------------------------------------------------------------------------

    @app.handle_errors(ApiError)
    def api_error(self, request: Any, failure: Any) -> bytes:
        return failure.value.body(request)

    @app.handle_errors(StoreUnavailable)
    def store_down(self, request: Any, failure: Any) -> bytes:
        return store_unavailable(request, failure.value)

    @app.handle_errors(TokenUnknown)
    def token_unknown(self, request: Any, failure: Any) -> bytes:
        return json_body(request, 401, {"error": "unauthorized", "reason": failure.value.reason})

    @app.handle_errors(NotFound)
    def not_found(self, request: Any, failure: Any) -> bytes:
        return json_body(request, 404, {"error": "not_found", "reason": f"no such resource: {request.path.decode('utf-8', 'replace')}"})

    @app.handle_errors(MethodNotAllowed)
    def bad_method(self, request: Any, failure: Any) -> bytes:
        allowed = ", ".join(failure.value.valid_methods or [])
        request.setHeader(b"Allow", allowed.encode())
        return json_body(
            request, 405, {"error": "method_not_allowed", "reason": f"{request.method.decode()} is not allowed here; use {allowed}"}
        )

    @app.handle_errors(Exception)
    def crashed(self, request: Any, failure: Any) -> bytes:
        self.log.failure("unexpected error answering {path}", failure, path=request.path)
        return json_body(request, 500, {"error": "internal", "reason": "internal error, see the service log"})


def store_unavailable(request: Any, error: Exception) -> bytes:
    """503: what was asked needs the store, which cannot be reached now (never a silent loss)."""
    request.setHeader(b"Retry-After", b"5")
    return json_body(request, 503, {"error": "store_unavailable", "reason": str(error)})


class _Root(_resource.Resource):
    """Everything but the hot path goes to the Klein app."""

    def __init__(self, klein_resource: Any, core: Any) -> None:
        super().__init__()
        self._klein = klein_resource
        self._core = core

    def getChild(self, path: bytes, request: Any) -> Any:
        try:
            request.path.decode("utf-8")
        except UnicodeDecodeError:
            return _BadPath()
        # Klein gets the raw (still percent-encoded) segments: twisted.web has
        # unquoted them, which would split a name holding %2F ("/").
        request.prepath = []
        request.postpath = request.path[1:].split(b"/")
        token = bearer_token(request)
        if token:  # a token issued by another node a moment ago: look it up first
            digest = crypto.token_digest(token)
            if self._core.token_unchecked(digest):
                return _AfterTokenFetch(self._core, digest, self._klein)
        return self._klein

    def render(self, request: Any) -> Any:
        return self._klein.render(request)


class _AfterTokenFetch(_resource.Resource):
    isLeaf = True

    def __init__(self, core: Any, digest: bytes, klein_resource: Any) -> None:
        super().__init__()
        self._core = core
        self._digest = digest
        self._klein = klein_resource

    def render(self, request: Any) -> Any:
        return render_after_fetch(self._core, request, self._digest, self._klein.render)


class _BadPath(_resource.Resource):
    """A path that is not UTF-8 (Klein would answer in plain text)."""

    isLeaf = True

    def render(self, request: Any) -> bytes:
        return json_body(request, 400, {"error": "bad_request", "field": "path", "reason": "the path is not (percent-encoded) UTF-8"})


class _SendMessage(_resource.Resource):
    """``/sendmessage`` as a plain twisted.web resource (see :meth:`SendAPI.resource`)."""

    isLeaf = True

    def __init__(self, api: SendAPI) -> None:
        super().__init__()
        self.api = api

    def render_POST(self, request: Any) -> Any:
        def later(body: bytes) -> None:
            if not request._disconnected:
                request.write(body)
                request.finish()

        body = self.api.respond(self.api.sendmessage, request, later)
        return NOT_DONE_YET if body is None else body

    def render(self, request: Any) -> Any:
        if request.method != b"POST":
            request.setHeader(b"Allow", b"POST")
            return json_body(
                request, 405, {"error": "method_not_allowed", "reason": f"{request.method.decode('latin-1')} is not allowed here; use POST"}
            )
        return super().render(request)
