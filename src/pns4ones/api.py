"""
The send API (PROTOCOL.md section 3): a Klein application over
:class:`pns4ones.core.Core`.  Every error is an :class:`ApiError` answered as
``{"error": ..., "reason": ...}`` with its status.
"""

from __future__ import annotations

import json
from typing import Any

from klein import Klein
from twisted.python.failure import Failure
from twisted.web import resource as _resource
from twisted.web.server import NOT_DONE_YET
from twisted.internet.defer import inlineCallbacks
from twisted.logger import Logger
from werkzeug.exceptions import MethodNotAllowed, NotFound

from .core import LEGACY_EPOCH_OFFSET, AuthError, Core
from .messages import MessageError, parse_send
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

    def __init__(self, core: Core, expires_in_format: str = "unix", log_sends: bool = True, subscriptions: Any = None) -> None:
        self.core = core
        #: WebSocket/SSE subscriptions (:class:`pns4ones.transports.web.WebSubscriptions`), if served.
        self.subscriptions = subscriptions
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
        if self.subscriptions is not None:
            root.putChild(b"subscribe", self.subscriptions.resource())
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
        application = self._app_for(request)
        try:
            send = parse_send(request.content.read())
        except MessageError as e:
            raise ApiError(400, "bad_request", e.reason, field=e.field) from None
        return self.core.send(application, send).addCallback(self._sent, request, application, send)

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
        return json_body(request, 200, {"sessions": report.sessions, "users": report.users})

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
        request.prepath.pop()
        request.postpath.insert(0, path)
        return self._klein

    def render(self, request: Any) -> Any:
        return self._klein.render(request)


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
        if result.called:  # the local hub answers at once: no Deferred chain needed
            outcome: list[Any] = []
            result.addBoth(outcome.append)
            value = outcome[0]
            return self.api._error_body(request, value.value) if isinstance(value, Failure) else value

        def done(value: Any) -> None:
            if not request._disconnected:
                request.write(value if isinstance(value, bytes) else self.api._error_body(request, value.value))
                request.finish()

        result.addBoth(done)
        return NOT_DONE_YET

    def render(self, request: Any) -> Any:
        if request.method != b"POST":
            request.setHeader(b"Allow", b"POST")
            return json_body(request, 405, {"error": "method_not_allowed", "reason": f"{request.method.decode('latin-1')} is not allowed here; use POST"})
        return super().render(request)
