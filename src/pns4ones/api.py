"""
The send API (PROTOCOL.md section 3): a Klein application over
:class:`pns4ones.core.Core`.  Every error is an :class:`ApiError` answered as
``{"error": ..., "reason": ...}`` with its status.
"""

from __future__ import annotations

import json
import time
from typing import Any
from urllib.parse import unquote

from klein import Klein
from twisted.python.failure import Failure
from twisted.web import resource as _resource
from twisted.web.server import NOT_DONE_YET
from twisted.internet.defer import inlineCallbacks
from twisted.logger import Logger
from werkzeug.exceptions import MethodNotAllowed, NotFound

from .core import LEGACY_EPOCH_OFFSET, AuthError, Core
from .groups import GroupError, check_name, parse_ttl, parse_user_ids
from .messages import MessageError, decode_json_body, parse_send
from .web import json_body


class ApiError(Exception):
    def __init__(self, status: int, error: str, reason: str, **extra: Any) -> None:
        super().__init__(reason)
        self.status = status
        self.doc = {"error": error, "reason": reason, **extra}


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

    def __init__(self, core: Core, expires_in_format: str = "unix", log_sends: bool = True) -> None:
        self.core = core
        self.expires_in_format = expires_in_format
        #: A log event per send only when Information is on (it costs ~4% of a send).
        self.log_sends = log_sends

    def resource(self) -> Any:
        """
        The Klein app, with ``/sendmessage`` served by a plain ``Resource`` in
        front: it is the hot path, and Klein's per-request machinery (routing,
        Deferred chains) cost about a fifth of a send there.
        """
        root = _Root(self.app.resource())
        root.putChild(b"sendmessage", _SendMessage(self))
        return root

    def _app_for(self, request: Any) -> Any:
        try:
            return self.core.check_token(bearer_token(request))
        except AuthError as e:
            raise ApiError(e.status, "unauthorized" if e.status == 401 else "token_expired", e.reason) from None

    # -- routes --------------------------------------------------------------------------

    @app.route("/auth", methods=["GET"])
    @inlineCallbacks
    def auth(self, request: Any) -> Any:
        args = request.args.get(b"server_key") or [b""]
        server_key = args[0].decode("utf-8", "replace")
        try:
            issued = yield self.core.authorize(server_key)
        except AuthError as e:
            raise ApiError(e.status, "unauthorized", e.reason) from None
        expires = int(issued.expires_at)
        if self.expires_in_format == "legacy":
            expires += LEGACY_EPOCH_OFFSET
        return json_body(request, 200, {"access_token": issued.token, "expires_in": expires})

    def sendmessage(self, request: Any) -> Any:
        """``POST /sendmessage``: bytes now, or a Deferred of them (a networked hub)."""
        application = self._app_for(request)
        try:
            send = parse_send(request.content.read())
        except MessageError as e:
            raise ApiError(400, "bad_request", e.reason, field=e.field) from None
        ttl = 0.0
        if send.ttl is not None or b"ttl" in request.args:
            ttl = self._ttl(request, send)
        return self.core.send(application, send, ttl).addCallback(self._sent, request, application, send)

    def _ttl(self, request: Any, send: Any) -> float:
        """``Message.TTL`` or ``?ttl=`` (the body wins), bounded by ``max_ttl``."""
        try:
            if send.ttl is not None:
                return parse_ttl(send.ttl, self.core.limits.max_ttl, "Message.TTL")
            raw = request.args[b"ttl"][0].decode("utf-8", "replace")
            return parse_ttl(raw, self.core.limits.max_ttl, "ttl")
        except GroupError as e:
            raise ApiError(400, "bad_request", f"{e.field} {e.reason}", field=e.field) from None

    def _sent(self, report: Any, request: Any, application: Any, send: Any) -> bytes:
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
        stored = getattr(report, "stored", False)
        doc: dict[str, Any] = {"sessions": report.sessions, "users": report.users, "stored": stored}
        dropped = getattr(report, "dropped", 0)
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
            what=what, app_id=app.id, ib_id=ib_id, group=group, fields=fields,
            peer=getattr(request.getClientAddress(), "host", "?"), event="group-change",
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
        return json_body(request, 200, {
            "IbId": ib_id,
            "users": [{"UserId": u, "sessions": len(s)} for u, s in sorted(users.items())],
            "online": len(users),
            "sessions": sum(len(s) for s in users.values()),
        })

    @app.route("/presence/<ib>/<user>", methods=["GET"])
    def presence_of(self, request: Any, ib: str, user: str) -> Any:
        app, ib_id = self._names(request, ib)
        user_id = self._segment(user, "UserId")
        sessions = sorted(self.core.presence(app.id, ib_id).get(user_id, []), key=lambda s: getattr(s, "connected_at", 0.0))
        out = []
        for s in sessions:
            since = getattr(s, "connected_at", 0.0)
            out.append({
                "connected_since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(since)),
                "connected_since_unix": round(since, 3),
                "peer": getattr(s, "peer", ""),
                "group": s.group,
                "transport": s.transport_name,
            })
        return json_body(request, 200, {"IbId": ib_id, "UserId": user_id, "online": bool(out), "sessions": out})

    def _error_body(self, request: Any, error: Exception) -> bytes:
        if isinstance(error, ApiError):
            return json_body(request, error.status, error.doc)
        self.log.failure("unexpected error answering {path}", Failure(error), path=request.path)
        return json_body(request, 500, {"error": "internal", "reason": "internal error, see the service log"})

    # -- errors --------------------------------------------------------------------------

    @app.handle_errors(ApiError)
    def api_error(self, request: Any, failure: Any) -> bytes:
        error = failure.value
        return json_body(request, error.status, error.doc)

    @app.handle_errors(NotFound)
    def not_found(self, request: Any, failure: Any) -> bytes:
        return json_body(request, 404, {"error": "not_found", "reason": f"no such resource: {request.path.decode('utf-8', 'replace')}"})

    @app.handle_errors(MethodNotAllowed)
    def bad_method(self, request: Any, failure: Any) -> bytes:
        allowed = ", ".join(failure.value.valid_methods or [])
        request.setHeader(b"Allow", allowed.encode())
        return json_body(request, 405, {"error": "method_not_allowed", "reason": f"{request.method.decode()} is not allowed here; use {allowed}"})

    @app.handle_errors(Exception)
    def crashed(self, request: Any, failure: Any) -> bytes:
        self.log.failure("unexpected error answering {path}", failure, path=request.path)
        return json_body(request, 500, {"error": "internal", "reason": "internal error, see the service log"})




class _Root(_resource.Resource):
    """Everything but the hot path goes to the Klein app."""

    def __init__(self, klein_resource: Any) -> None:
        super().__init__()
        self._klein = klein_resource

    def getChild(self, path: bytes, request: Any) -> Any:
        try:
            request.path.decode("utf-8")
        except UnicodeDecodeError:
            return _BadPath()
        # Klein gets the raw (still percent-encoded) segments: twisted.web has
        # unquoted them, which would split a name holding %2F ("/").
        request.prepath = []
        request.postpath = request.path[1:].split(b"/")
        return self._klein

    def render(self, request: Any) -> Any:
        return self._klein.render(request)


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
        try:
            result = self.api.sendmessage(request)
        except Exception as e:
            return self.api._error_body(request, e)
        # The local hub answers at once (no TTL): no Deferred chain needed.
        sync: list[Any] = []
        waiting = False

        def done(value: Any) -> None:
            if not waiting:
                sync.append(value)
            elif not request._disconnected:
                request.write(value if isinstance(value, bytes) else self.api._error_body(request, value.value))
                request.finish()

        result.addBoth(done)
        if sync:
            value = sync[0]
            return self.api._error_body(request, value.value) if isinstance(value, Failure) else value
        waiting = True
        return NOT_DONE_YET

    def render(self, request: Any) -> Any:
        if request.method != b"POST":
            request.setHeader(b"Allow", b"POST")
            return json_body(request, 405, {"error": "method_not_allowed", "reason": f"{request.method.decode('latin-1')} is not allowed here; use POST"})
        return super().render(request)
