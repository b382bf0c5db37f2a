"""
The status page: the service's live figures (given by the observability part
as ``status_source``), and the figures alone for its live refresh.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import inlineCallbacks

from ..http.site import json_body
from .panel import POLL_MS, PanelBase, Redirect, app


class StatusPages(PanelBase):
    """The status page and its live figures."""

    def _status(self) -> dict[str, Any] | None:
        return self.status_source() if self.status_source is not None else None

    @app.route("/status", methods=["GET"])
    @inlineCallbacks
    def status(self, request: Any) -> Any:
        session = yield self.require_login(request)
        return self.render_page(request, "status.html", session, doc=self._status(), poll_ms=POLL_MS)

    @app.route("/status/live", methods=["GET"])
    @inlineCallbacks
    def status_live(self, request: Any) -> Any:
        """The figures alone, for the page's live refresh (a poll does not keep the session alive)."""
        if self.current_session(request, touch=False) is None:
            return json_body(request, 401, {"error": "unauthorized", "reason": "log in first"})
        try:
            session = yield self.require_login(request, touch=False)
        except Redirect:
            return json_body(request, 401, {"error": "unauthorized", "reason": "the session has ended"})
        return self.render_page(request, "status_figures.html", session, doc=self._status())
