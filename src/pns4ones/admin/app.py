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
from urllib.parse import urlencode

from twisted.internet.defer import inlineCallbacks

from .. import trace
from ..core import Online
from ..http.site import json_body
from . import views
from .account import AccountPages
from .applications import ApplicationPages
from .groups import GroupPages
from .kept import KeptPages
from .panel import POLL_MS, PanelStore, Redirect, Refused, app, is_local_path
from .site import AdminRequest, AdminSite

__all__ = ["AdminPanel", "AdminRequest", "AdminSite", "PanelStore"]


AUDIT_PAGE = 50
#: Sessions a page of the Online view (its live refresh sends this page only, never the whole list).
ONLINE_PAGE = 100
#: Sends a page of the delivery trace, and users listed on one send's page.
TRACE_PAGE = 50
TRACE_USERS = 500


class AdminPanel(AccountPages, ApplicationPages, GroupPages, KeptPages):
    """Routes of the admin listener."""

    # -- online: sessions, disconnecting -----------------------------------------------------------

    def _online_query(self, request: Any) -> tuple[Any, str, str, int]:
        """(application or None, information base or "", search, page number) of an Online view's URL."""
        app_id = self.query_value(request, "app")
        apps = sorted(self.core.apps.values(), key=lambda a: (a.title.casefold(), a.id))
        app = self.core.apps.get(app_id) if app_id else (apps[0] if apps else None)
        return app, self.query_value(request, "ib"), self.query_value(request, "q"), views.page_number(self.query_value(request, "page"))

    def _online(self, app: Any, ib: str, query: str, number: int) -> tuple[Online, views.Page]:
        """One page of the Online view (the last one when ``number`` is past it)."""
        found = self.core.online(app.id, ib or None, query, (number - 1) * ONLINE_PAGE, ONLINE_PAGE)
        page = views.Page(number, ONLINE_PAGE, found.sessions)
        if number > page.pages:
            page = views.Page(page.pages, ONLINE_PAGE, found.sessions)
            found = self.core.online(app.id, ib or None, query, page.offset, ONLINE_PAGE)
        return found, page

    @staticmethod
    def _online_url(app_id: str, ib: str, query: str, number: int = 1) -> str:
        fields = [("app", app_id)] + [(k, v) for k, v in (("ib", ib), ("q", query)) if v]
        return "/online?" + urlencode(fields + ([("page", str(number))] if number > 1 else []))

    @app.route("/online", methods=["GET"])
    @inlineCallbacks
    def online(self, request: Any) -> Any:
        session = yield self.require_login(request)
        app, ib, query, number = self._online_query(request)
        t = self.texts(request)
        found, page = (None, views.Page(1, ONLINE_PAGE, 0)) if app is None else self._online(app, ib, query, number)
        rows = views.online_rows(found.rows, t, self.clock.seconds(), views.node_name(self.config)) if found is not None else []
        counts = self.core.hub.counts().get(app.id, {}) if app is not None else {}
        return self.render_page(
            request,
            "online.html",
            session,
            apps=sorted(self.core.apps.values(), key=lambda a: (a.title.casefold(), a.id)),
            app=app,
            unknown=bool(self.query_value(request, "app")) and app is None,
            ib=ib,
            query=query,
            ibs=sorted(counts.items()),
            found=found,
            rows=rows,
            page=page,
            nodes=self.config.hub != "local",
            live_url=self._online_url(app.id, ib, query, page.number).replace("/online?", "/online.json?", 1) if app else "",
            poll_ms=POLL_MS,
        )

    @app.route("/online.json", methods=["GET"])
    @inlineCallbacks
    def online_live(self, request: Any) -> Any:
        """One page of the Online view as data, for its live refresh (a poll does not keep the session alive)."""
        if self.current_session(request, touch=False) is None:
            return json_body(request, 401, {"error": "unauthorized", "reason": "log in first"})
        try:
            yield self.require_login(request, touch=False)
        except Redirect:
            return json_body(request, 401, {"error": "unauthorized", "reason": "the session has ended"})
        app, ib, query, number = self._online_query(request)
        if app is None:
            return json_body(request, 404, {"error": "not found", "reason": "unknown application"})
        t = self.texts(request)
        found, page = self._online(app, ib, query, number)
        rows = views.online_rows(found.rows, t, self.clock.seconds(), views.node_name(self.config))
        return json_body(
            request,
            200,
            {
                "sessions": found.sessions,
                "users": found.users,
                "remote": found.remote,
                "page": page.number,
                "pages": page.pages,
                "where": t("page.of", n=page.number, pages=page.pages, total=page.total),
                "previous": self._online_url(app.id, ib, query, page.previous) if page.previous else None,
                "next": self._online_url(app.id, ib, query, page.next) if page.next else None,
                "rows": rows,
            },
        )

    @app.route("/online/disconnect", methods=["POST"])
    @inlineCallbacks
    def disconnect(self, request: Any) -> Any:
        """End a session (``session`` given) or every session of a user, on this node; the result on top of the list."""
        session = yield self.require_login(request)
        self.check_post(request, session)
        app = self.core.apps.get(self.form_value(request, "app"))
        if app is None:
            raise self.done(request, session, "/online", "", "apps.unknown", "error")
        ib, user, one = self.form_value(request, "ib"), self.form_value(request, "user"), self.form_value(request, "session", 100)
        back = self.form_value(request, "back", 2000)
        back = back if is_local_path(back) and (back == "/online" or back.startswith("/online?")) else self._online_url(app.id, ib, "")
        ended = self.core.disconnect(app.id, ib, user, one)
        transports = sorted({s.transport_name for s in ended})
        if one:
            yield self.record_audit(
                request, session.login, "disconnect", app.id, ib=ib, user=user, session=one, transport=",".join(transports)
            )
        else:
            yield self.record_audit(
                request, session.login, "disconnect-user", app.id, ib=ib, user=user, sessions=len(ended), transports=transports
            )
        t = self.texts(request)
        if not ended:
            raise self.done(request, session, back, "sessions", "online.gone", "error", user=user)
        remote = [s.node for s in self.core.presence(app.id, ib).get(user, []) if s.node is not None]
        if one:
            self.flash(
                request,
                session,
                "ok",
                "online.disconnected",
                "sessions",
                user=user,
                session_id=one,
                transport=t(f"transport.{transports[0]}"),
            )
        else:
            self.flash(request, session, "ok", "online.disconnected_user", "sessions", user=user, count=len(ended))
        if remote:
            self.flash(
                request,
                session,
                "error",
                "online.remote_left",
                "sessions",
                user=user,
                count=len(remote),
                nodes=", ".join(sorted(set(remote))),
            )
        raise Redirect(f"{back}#sessions")

    # -- audit log, status -------------------------------------------------------------------------

    @app.route("/audit", methods=["GET"])
    @inlineCallbacks
    def audit_log(self, request: Any) -> Any:
        session = yield self.require_login(request)
        number = views.page_number(self.query_value(request, "page"))
        total, entries = yield self.store.list_audit(AUDIT_PAGE, (number - 1) * AUDIT_PAGE)
        titles = {a.id: a.title for a in self.core.apps.values()}
        return self.render_page(request, "audit.html", session, entries=entries, titles=titles, page=views.Page(number, AUDIT_PAGE, total))

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
