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

from .. import trace
from ..http.site import json_body
from . import views
from .account import AccountPages
from .applications import ApplicationPages
from .audit import AuditPages
from .groups import GroupPages
from .kept import KeptPages
from .online import OnlinePages
from .panel import POLL_MS, PanelStore, Redirect, Refused, app
from .site import AdminRequest, AdminSite

__all__ = ["AdminPanel", "AdminRequest", "AdminSite", "PanelStore"]


#: Sends a page of the delivery trace, and users listed on one send's page.
TRACE_PAGE = 50
TRACE_USERS = 500


class AdminPanel(AccountPages, ApplicationPages, GroupPages, KeptPages, OnlinePages, AuditPages):
    """Routes of the admin listener."""

    # -- audit log, status -------------------------------------------------------------------------

    # -- delivery trace ---------------------------------------------------------------------------

    def _user_groups(self) -> trace.UserGroups:
        return trace.UserGroups(self.core.membership.groups_of, self.core.presence)

    @app.route("/trace", methods=["GET"])
    @inlineCallbacks
    def trace_page(self, request: Any) -> Any:
        session = yield self.require_login(request)
        id_text = self.query_value(request, "id", 30).strip()
        bad_id = bool(id_text) and not (id_text.isascii() and id_text.isdigit())
        query = trace.Query(
            self.query_value(request, "app"),
            self.query_value(request, "ib"),
            self.query_value(request, "user"),
            0 if bad_id else int(id_text or 0),
        )
        groups_of = self._user_groups()
        number = views.page_number(self.query_value(request, "page"))
        total, found = (0, []) if bad_id else self.core.trace.page(query, groups_of, (number - 1) * TRACE_PAGE, TRACE_PAGE)
        page = views.Page(number, TRACE_PAGE, total)
        rows = []
        for sent in found:
            groups = groups_of(sent.app_id, sent.recipient.ib_id, query.user) if query.user else ()
            rows.append({"sent": sent, "outcome": sent.outcome_for(query.user, groups) if query.user else "", "groups": groups})
        apps = sorted(self.core.apps.values(), key=lambda a: a.title.casefold())
        return self.render_page(
            request,
            "trace.html",
            session,
            query=query,
            id_text=id_text,
            bad_id=bad_id,
            rows=rows,
            page=page,
            apps=apps,
            titles={a.id: a.title for a in apps},
            trace=self.core.trace,
            node=self.config.node,
        )

    @app.route("/trace/<int:seq>", methods=["GET"])
    @inlineCallbacks
    def trace_send(self, request: Any, seq: int) -> Any:
        session = yield self.require_login(request)
        sent = self.core.trace.find(seq)
        if sent is None:
            raise Refused(404, "trace.unknown")
        r = sent.recipient
        user = self.query_value(request, "user").strip()
        groups = self._user_groups()(sent.app_id, r.ib_id, user) if user else ()
        reached = sorted(sent.reached) if sent.reached is not None else None
        app = self.core.apps.get(sent.app_id)
        return self.render_page(
            request,
            "trace_send.html",
            session,
            sent=sent,
            app_title=app.title if app is not None else None,
            reached=reached[:TRACE_USERS] if reached is not None else None,
            more=len(reached) - TRACE_USERS if reached is not None and len(reached) > TRACE_USERS else 0,
            members_now=len(self.core.membership.members(sent.app_id, r.ib_id, r.group)) if r.type == "group" else None,
            user=user,
            outcome=sent.outcome_for(user, groups) if user else "",
            member_now=r.group in groups if user and r.type == "group" else None,
            bodies=self.core.trace.bodies,
            node=self.config.node,
        )

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
