"""
The Online view: an application's sessions on this node (and, with a shared
hub, the others'), a page at a time, its live refresh (``/online.json``)
and disconnecting a session or every session of a user.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from twisted.internet.defer import inlineCallbacks

from ..core import Online
from ..http.site import json_body
from . import views
from .panel import POLL_MS, PanelBase, Redirect, app, is_local_path

#: Sessions a page of the Online view (its live refresh sends this page only, never the whole list).
ONLINE_PAGE = 100


class OnlinePages(PanelBase):
    """The Online view, its live data and the disconnect form."""

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
        rows = views.online_rows(found.rows, t, self.clock.seconds(), self.config.node) if found is not None else []
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
        rows = views.online_rows(found.rows, t, self.clock.seconds(), self.config.node)
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
        if not ended:  # already gone: nothing changed, nothing to audit
            raise self.done(request, session, back, "sessions", "online.gone", "error", user=user)
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
