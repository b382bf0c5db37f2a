"""
Several nodes: a request whose access token this node has not seen yet.

The 1C extension may call ``/auth`` on node A and ``/sendmessage`` on node B
a millisecond later (a balancer without stickiness).  Node B's registry learns
about the token at its next reload; meanwhile
:meth:`pns4ones.core.Core.check_token` raises
:class:`pns4ones.core.TokenUnknown` and the resource renders the request again
once the store has answered (:func:`render_after_fetch`).  A token in memory
(the hot path) never comes here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.server import NOT_DONE_YET

from .store import StoreUnavailable
from .web import json_body

log = Logger()


def render_after_fetch(core: Any, request: Any, digest: bytes, render: Callable[[Any], Any]) -> Any:
    """Answer ``request`` with ``render(request)`` once ``digest`` was looked up in the store."""
    if getattr(request, "pns_token_fetched", False):  # looked up already: it is not there
        return json_body(request, 401, {"error": "unauthorized", "reason": "invalid access token"})
    request.pns_token_fetched = True

    def again(_: Any) -> None:
        if request._disconnected:
            return
        request.content.seek(0)
        body = render(request)
        if body is not NOT_DONE_YET:
            request.write(body)
            request.finish()

    def failed(failure: Failure) -> None:
        if request._disconnected:
            return
        if failure.check(StoreUnavailable):
            body = json_body(
                request,
                503,
                {"error": "store_unavailable", "reason": f"cannot check an access token this node has not seen: {failure.value}"},
            )
        else:
            log.failure("looking an access token up in the store failed", failure)
            body = json_body(request, 500, {"error": "internal", "reason": "internal error, see the service log"})
        request.write(body)
        request.finish()

    core.fetch_token(digest).addCallbacks(again, failed).addErrback(lambda f: log.failure("answering after a token look-up failed", f))
    return NOT_DONE_YET
