"""
The send API on twisted.web and Klein: every route turns the request into a
:class:`~.calls.Call`, runs its handler (:mod:`.handlers`) and writes the
:class:`~.calls.Answer` back, in a few lines.  This is the whole API with
``http_engine = twisted``, and the cold routes (groups, presence, tickets,
health, WebSocket/SSE, 404s) behind the front connection of :mod:`.connection`.

Invariants:

* No route decides a status or a body itself: the handlers and their one
  error map do (Klein's own routing errors, 404 and 405, are answered here in
  the same JSON shape).
* Klein gets the path's segments still percent-encoded (twisted.web would have
  decoded them, splitting a name holding ``%2F``); a path or a Host header that
  is not UTF-8 is a JSON 400.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

from klein import Klein
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import resource as _resource
from twisted.web.server import NOT_DONE_YET, Request
from werkzeug.exceptions import MethodNotAllowed, NotFound
from werkzeug.routing import RequestRedirect

from .calls import Answer, Call
from .handlers import Handlers, Route, error_answer
from .site import json_body

log = Logger()


def call_of(request: Request) -> Call:
    """The :class:`Call` of a twisted.web request."""
    content = request.content
    body = b""
    if content is not None:
        content.seek(0)
        body = content.read()
    peer = getattr(request.getClientAddress(), "host", "?")
    return Call(
        request.method,
        request.path,
        request.uri.partition(b"?")[2],
        request.getHeader(b"authorization") or b"",
        body,
        peer,
        bool(request.isSecure()),
    )


def write_answer(answer: Answer, request: Request) -> bytes:
    """Put ``answer``'s status and headers on ``request``; its body is returned (for Klein or ``render``)."""
    request.setResponseCode(answer.status)
    for name, value in answer.headers:
        request.setHeader(name, value)
    request.setHeader(b"Content-Length", b"%d" % len(answer.body))
    return answer.body


class SendAPI:
    """The Klein application of the send API listener."""

    app = Klein()
    log = Logger()

    def __init__(self, handlers: Handlers) -> None:
        self.handlers = handlers

    def resource(self) -> _resource.Resource:
        root = _Root(self.app.resource())
        if self.handlers.subscriptions is not None:
            root.putChild(b"subscribe", self.handlers.subscriptions.resource())
        return root

    def _answer(self, request: Request, route: Route, *segments: str) -> bytes | Deferred[bytes]:
        result = self.handlers.answer(route, call_of(request), *segments)
        if isinstance(result, Deferred):
            # Klein cancels what a route returns when the client goes away. The handler's work goes on (a store
            # write that memory must follow, a look-up other requests share); its answer is dropped, and no
            # CancelledError reaches the handler's error map (it was logged as an unexpected error).
            shielded: Deferred[bytes] = Deferred()
            result.addCallback(write_answer, request).chainDeferred(shielded)
            return shielded
        return write_answer(result, request)

    # -- routes ---------------------------------------------------------------------------

    @app.route("/auth", methods=["GET"])
    def auth(self, request: Request) -> bytes | Deferred[bytes]:
        return self._answer(request, self.handlers.auth)

    @app.route("/sendmessage", methods=["POST"])
    def sendmessage(self, request: Request) -> bytes | Deferred[bytes]:
        return self._answer(request, self.handlers.sendmessage)

    @app.route("/sendmessages", methods=["POST"])
    def sendmessages(self, request: Request) -> bytes | Deferred[bytes]:
        return self._answer(request, self.handlers.sendmessages)

    @app.route("/tickets", methods=["POST"])
    def tickets(self, request: Request) -> bytes | Deferred[bytes]:
        return self._answer(request, self.handlers.tickets)

    @app.route("/groups/<ib>", methods=["GET"])
    def list_groups(self, request: Request, ib: str) -> bytes | Deferred[bytes]:
        return self._answer(request, self.handlers.list_groups, ib)

    @app.route("/groups/<ib>/<group>", methods=["GET"])
    def get_group(self, request: Request, ib: str, group: str) -> bytes | Deferred[bytes]:
        return self._answer(request, self.handlers.get_group, ib, group)

    @app.route("/groups/<ib>/<group>", methods=["PUT"])
    def put_group(self, request: Request, ib: str, group: str) -> bytes | Deferred[bytes]:
        return self._answer(request, self.handlers.put_group, ib, group)

    @app.route("/groups/<ib>/<group>/members", methods=["POST"])
    def add_members(self, request: Request, ib: str, group: str) -> bytes | Deferred[bytes]:
        return self._answer(request, self.handlers.add_members, ib, group)

    @app.route("/groups/<ib>/<group>/members/<user>", methods=["DELETE"])
    def remove_member(self, request: Request, ib: str, group: str, user: str) -> bytes | Deferred[bytes]:
        return self._answer(request, self.handlers.remove_member, ib, group, user)

    @app.route("/groups/<ib>/<group>", methods=["DELETE"])
    def delete_group(self, request: Request, ib: str, group: str) -> bytes | Deferred[bytes]:
        return self._answer(request, self.handlers.delete_group, ib, group)

    @app.route("/presence/<ib>", methods=["GET"])
    def presence(self, request: Request, ib: str) -> bytes | Deferred[bytes]:
        return self._answer(request, self.handlers.presence, ib)

    @app.route("/presence/<ib>/<user>", methods=["GET"])
    def presence_of(self, request: Request, ib: str, user: str) -> bytes | Deferred[bytes]:
        return self._answer(request, self.handlers.presence_of, ib, user)

    @app.route("/health", methods=["GET"])
    def health(self, request: Request) -> bytes | Deferred[bytes]:
        return self._answer(request, self.handlers.health)

    @app.route("/ready", methods=["GET"])
    def ready(self, request: Request) -> bytes | Deferred[bytes]:
        return self._answer(request, self.handlers.ready)

    # -- Klein's own routing errors, in the API's JSON shape ---------------------------------

    @app.handle_errors(NotFound, RequestRedirect)  # type: ignore[arg-type]  # (Klein types the request as IRequest; an empty segment: werkzeug would redirect)
    def not_found(self, request: Request, failure: Failure) -> bytes:
        return json_body(request, 404, {"error": "not_found", "reason": f"no such resource: {request.path.decode('utf-8', 'replace')}"})

    @app.handle_errors(MethodNotAllowed)  # type: ignore[arg-type]  # (Klein types the request as IRequest; it is twisted.web's Request)
    def bad_method(self, request: Request, failure: Failure) -> bytes:
        allowed = ", ".join(cast(MethodNotAllowed, failure.value).valid_methods or [])
        request.setHeader(b"Allow", allowed.encode())
        return json_body(
            request, 405, {"error": "method_not_allowed", "reason": f"{request.method.decode()} is not allowed here; use {allowed}"}
        )

    @app.handle_errors(Exception)  # type: ignore[arg-type]  # (Klein types the request as IRequest; it is twisted.web's Request)
    def crashed(self, request: Request, failure: Failure) -> bytes:
        return write_answer(error_answer(failure.value, call_of(request)), request)


class _Root(_resource.Resource):
    """Every path goes to the Klein app, with its segments still percent-encoded."""

    def __init__(self, klein_resource: _resource.Resource) -> None:
        super().__init__()
        self._klein = klein_resource

    def getChild(self, path: bytes, request: Request) -> _resource.Resource:
        try:
            request.path.decode("utf-8")
        except UnicodeDecodeError:
            return _BadRequest("path", "the path is not (percent-encoded) UTF-8")
        try:
            request.getRequestHostname().decode("utf-8")
        except UnicodeDecodeError:
            return _BadRequest("Host", "the Host header is not UTF-8")
        request.prepath = []
        request.postpath = request.path[1:].split(b"/")
        return self._klein

    def render(self, request: Request) -> bytes | int:
        return self._klein.render(request)


class _BadRequest(_resource.Resource):
    """A path or Host header that is not UTF-8 (Klein would answer in plain text, and log a traceback)."""

    isLeaf = True

    def __init__(self, field: str, reason: str) -> None:
        super().__init__()
        self.field = field
        self.reason = reason

    def render(self, request: Request) -> bytes:
        return json_body(request, 400, {"error": "bad_request", "field": self.field, "reason": self.reason})


# -- rendering again once something was looked up ------------------------------------------


class RenderAgain(Exception):
    """Raised by a resource's render step: render the request again once ``pending`` has fired (see :func:`render_when`)."""

    def __init__(self, pending: Deferred[Any]) -> None:
        super().__init__("waiting for a look-up")
        self.pending = pending


def render_when(request: Request, pending: Deferred[Any], render: Callable[[Request], Any]) -> int:
    """
    Answer ``request`` with ``render(request)`` once ``pending`` has fired (an
    access token looked up in the store); a failure is answered through the
    one error map.  Returns ``NOT_DONE_YET`` for the caller's ``render``.
    """

    gone: list[bool] = []
    request.notifyFinish().addErrback(lambda _: gone.append(True))  # the client went away meanwhile

    def again(_: object) -> None:
        if gone:
            return
        body = render(request)
        if body is not NOT_DONE_YET:
            request.write(body)
            request.finish()

    def failed(failure: Failure) -> None:
        if gone:
            return
        request.write(write_answer(error_answer(failure.value, call_of(request)), request))
        request.finish()

    pending.addCallbacks(again, failed).addErrback(lambda f: log.failure("answering after a look-up failed", f))
    return NOT_DONE_YET
