"""
The delivery trace pages (:mod:`pns4ones.trace`): the recent sends, found by
application, information base, user or message id, and one send's page (whom
it reached, and what became of it for one user).
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import inlineCallbacks

from .. import trace
from . import views
from .panel import PanelBase, Refused, app

#: Sends a page of the delivery trace, and users listed on one send's page.
TRACE_PAGE = 50
TRACE_USERS = 500


class TracePages(PanelBase):
    """The delivery trace pages."""

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
