"""
The admin web panel (docs/protocol.md section 6): a Klein application over the
store and the core, served on loopback only by :class:`AdminSite`.

Safe by construction:

* every page is a Jinja2 template with autoescaping; texts come from the
  message catalogs (``locale/``); the only script is ``static/admin.js``;
* :class:`AdminRequest` refuses a ``Host`` that is not the loopback address
  it listens on (DNS rebinding) and puts the security headers on every answer
  (CSP without inline script, ``X-Frame-Options: DENY``, ``no-store``);
* the session is an ``HttpOnly; SameSite=Strict`` cookie, never in the URL;
  every POST must carry the session's CSRF token (and, when the browser says
  where it comes from, come from the panel's own origin);
* the first administrator needs the one-time set-up code the service printed
  (:mod:`.firstrun`); a new password (here or ``pns4ones-admin panel-password``)
  ends every session at its next request (the session remembers a digest of the
  password hash it logged in with, and the store is asked on every page);
* application changes go through the :class:`~pns4ones.store.Store` (the
  same calls as the CLI) followed by ``core.reload()``; group changes through
  the core's group methods; test messages through ``parse_send_object`` and
  ``Core.send``, the path of ``/sendmessage``, counted as sends and recorded in
  the delivery trace (:mod:`pns4ones.trace`, the Trace pages); every change is
  recorded in the audit log (:mod:`pns4ones.audit`).

Every action answers with a redirect to the section of the page that holds its
control (``#send``, ``#settings``...), where the result is shown; a refused form
comes back with what was typed.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import inlineCallbacks

from ..http.site import json_body
from .account import AccountPages
from .applications import ApplicationPages
from .audit import AuditPages
from .groups import GroupPages
from .kept import KeptPages
from .online import OnlinePages
from .panel import POLL_MS, PanelStore, Redirect, app
from .site import AdminRequest, AdminSite
from .trace import TracePages

__all__ = ["AdminPanel", "AdminRequest", "AdminSite", "PanelStore"]


class AdminPanel(AccountPages, ApplicationPages, GroupPages, KeptPages, OnlinePages, AuditPages, TracePages):
    """Routes of the admin listener."""

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
