"""
The messages kept for offline recipients (TTL): by target, one user's
messages, withdrawing them from a user, deleting a target's.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import inlineCallbacks

from . import views
from .panel import PanelBase, app

#: Rows a page of the kept messages (targets, or one user's messages).
KEPT_PAGE = 50


class KeptPages(PanelBase):
    """The kept messages pages and their changes."""

    @app.route("/apps/<string:app_id>/kept", methods=["GET"])
    @inlineCallbacks
    def kept(self, request: Any, app_id: str) -> Any:
        session = yield self.require_login(request)
        app = yield self.find_application(app_id)
        number = views.page_number(self.query_value(request, "page"))
        total, rows = yield self.store.kept_summary(app.id, self.clock.seconds(), KEPT_PAGE, (number - 1) * KEPT_PAGE)
        return self.render_page(request, "kept.html", session, app=app, rows=rows, page=views.Page(number, KEPT_PAGE, total))

    @app.route("/apps/<string:app_id>/kept/user", methods=["GET"])
    @inlineCallbacks
    def kept_user(self, request: Any, app_id: str) -> Any:
        session = yield self.require_login(request)
        app = yield self.find_application(app_id)
        ib = self.query_value(request, "ib")
        user = self.query_value(request, "user")
        number = views.page_number(self.query_value(request, "page"))
        groups = sorted(self.core.membership.groups_of(app.id, ib, user))
        total, items = 0, []
        if ib and user:
            total, items = yield self.store.kept_for_user(
                app.id, ib, user, groups, self.clock.seconds(), KEPT_PAGE, (number - 1) * KEPT_PAGE
            )
        rows = [{"item": i, "preview": views.preview(i.payload), "size": len(i.payload)} for i in items]
        return self.render_page(
            request,
            "kept_user.html",
            session,
            app=app,
            ib=ib,
            user=user,
            groups=groups,
            rows=rows,
            page=views.Page(number, KEPT_PAGE, total),
        )

    @app.route("/apps/<string:app_id>/kept/withdraw", methods=["POST"])
    @inlineCallbacks
    def kept_withdraw(self, request: Any, app_id: str) -> Any:
        session = yield self.require_login(request)
        self.check_post(request, session)
        app = yield self.find_application(app_id)
        ib = self.form_value(request, "ib")
        user = self.form_value(request, "user")
        one = self.form_value(request, "id", 30)
        # One message (an id that is no message id: none), or all of them (no id).
        ids = None if not one else [int(one)] if one.isascii() and one.isdigit() else []
        groups = sorted(self.core.membership.groups_of(app.id, ib, user))
        count = yield self.store.delete_kept_for_user(app.id, ib, user, groups, self.clock.seconds(), ids)
        yield self.record_audit(
            request, session.login, "kept-withdraw", app.id, ib=ib, user=user, messages=count, **({"id": ids[0]} if ids else {})
        )
        url = self.app_url(app_id, "kept/user", ib=ib, user=user)
        raise self.done(request, session, url, "messages", "kept.withdrawn", count=count, user=user)

    @app.route("/apps/<string:app_id>/kept/delete", methods=["POST"])
    @inlineCallbacks
    def kept_delete(self, request: Any, app_id: str) -> Any:
        session = yield self.require_login(request)
        self.check_post(request, session)
        app = yield self.find_application(app_id)
        ib = self.form_value(request, "ib")
        kind = self.form_value(request, "type", 10)
        target = self.form_value(request, "target")
        count = yield self.store.delete_kept_target(app.id, ib, kind, target)
        yield self.record_audit(request, session.login, "kept-delete", app.id, ib=ib, type=kind, target=target, messages=count)
        raise self.done(request, session, self.app_url(app_id, "kept"), "list", "kept.deleted", count=count)
