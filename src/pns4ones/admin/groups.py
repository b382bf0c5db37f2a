"""
The groups of an application: the list by information base, one group's
members, adding members, removing a member or a whole group (through the
core's group methods, so every node sees the change).
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import inlineCallbacks

from ..groups import GroupError, check_name
from . import views
from .panel import Invalid, PanelBase, app, is_local_path

#: Rows a page of the groups list and of a group's members.
GROUPS_PAGE = 50
MEMBERS_PAGE = 100
#: User ids named in one audit record of a group change (the count is always there).
AUDIT_IDS = 20


class GroupPages(PanelBase):
    """The groups pages and their changes."""

    @app.route("/apps/<string:app_id>/groups", methods=["GET"])
    @inlineCallbacks
    def groups(self, request: Any, app_id: str) -> Any:
        session = yield self.require_login(request)
        app = yield self.find_application(app_id)
        ib = self.query_value(request, "ib")
        query = self.query_value(request, "q")
        rows = yield self.store.list_groups(app.id, ib or None)
        if query:
            needle = query.casefold()
            rows = [r for r in rows if needle in r[1].casefold()]
        page = views.Page(views.page_number(self.query_value(request, "page")), GROUPS_PAGE, len(rows))
        return self.render_page(
            request,
            "groups.html",
            session,
            app=app,
            ib=ib,
            query=query,
            rows=page.slice(rows),
            page=page,
            max_group_size=self.core.limits.max_group_size,
        )

    @app.route("/apps/<string:app_id>/group", methods=["GET"])
    @inlineCallbacks
    def group(self, request: Any, app_id: str) -> Any:
        session = yield self.require_login(request)
        app = yield self.find_application(app_id)
        ib = self.query_value(request, "ib")
        name = self.query_value(request, "name")
        query = self.query_value(request, "q")
        members = (yield self.store.group_members(app.id, ib, name)) if ib and name else []
        shown = [m for m in members if query.casefold() in m.casefold()] if query else members
        page = views.Page(views.page_number(self.query_value(request, "page")), MEMBERS_PAGE, len(shown))
        return self.render_page(
            request,
            "group.html",
            session,
            app=app,
            ib=ib,
            name=name,
            query=query,
            count=len(members),
            members=page.slice(shown),
            page=page,
            max_group_size=self.core.limits.max_group_size,
        )

    @inlineCallbacks
    def _group_change(self, request: Any, app_id: str) -> Any:
        """The session, the application and the checked (information base, group) of a group form."""
        session = yield self.require_login(request)
        self.check_post(request, session)
        app = self.core.apps.get(app_id)
        if app is None:
            raise self.done(request, session, "/apps", "", "apps.unknown", "error")
        return session, app

    def _names(self, request: Any) -> tuple[str, str]:
        try:
            return check_name(self.form_value(request, "ib"), "IbId"), check_name(self.form_value(request, "group"), "Group")
        except GroupError as e:
            raise Invalid("groups.invalid", field=e.field, reason=e.reason) from None

    @app.route("/apps/<string:app_id>/groups/add", methods=["POST"])
    @inlineCallbacks
    def group_add(self, request: Any, app_id: str) -> Any:
        session, app = yield self._group_change(request, app_id)
        back = self.form_value(request, "back", 2000)
        back = back if is_local_path(back) else self.app_url(app_id, "groups")
        try:
            ib, name = self._names(request)
            users = views.lines(self.form_value(request, "members", 2_000_000))
            if not users:
                raise Invalid("groups.members_required")
            for i, user in enumerate(users):
                try:
                    check_name(user, "UserId")
                except GroupError as e:
                    raise Invalid("groups.invalid", field=f"{e.field} {i + 1}", reason=e.reason) from None
            added = yield self.core.add_members(app, ib, name, users)
        except Invalid as e:
            self.keep_form(request, session, "group-add")
            raise self.done(request, session, back, "add", e.key, "error", **e.fields) from None
        except GroupError as e:
            self.keep_form(request, session, "group-add")
            raise self.done(request, session, back, "add", "groups.invalid", "error", field=e.field, reason=e.reason) from None
        self.log.info(
            "admin panel: added {added} members to group {group!r} of app={app_id} ib={ib_id}",
            added=added,
            group=name,
            app_id=app.id,
            ib_id=ib,
        )
        yield self.record_audit(request, session.login, "group-add", app.id, ib=ib, group=name, added=added, users=users[:AUDIT_IDS])
        url = self.app_url(app_id, "group", ib=ib, name=name)
        raise self.done(request, session, url, "members", "groups.added", added=added, given=len(users), group=name)

    @app.route("/apps/<string:app_id>/groups/remove-member", methods=["POST"])
    @inlineCallbacks
    def group_remove_member(self, request: Any, app_id: str) -> Any:
        session, app = yield self._group_change(request, app_id)
        user = self.form_value(request, "user")
        try:
            ib, name = self._names(request)
        except Invalid as e:
            raise self.done(request, session, self.app_url(app_id, "groups"), "list", e.key, "error", **e.fields) from None
        removed = yield self.core.remove_member(app, ib, name, user)
        yield self.record_audit(request, session.login, "group-remove-member", app.id, ib=ib, group=name, user=user, removed=removed)
        url = self.app_url(app_id, "group", ib=ib, name=name)
        key = "groups.member_removed" if removed else "groups.member_absent"
        raise self.done(request, session, url, "members", key, "ok" if removed else "error", user=user, group=name)

    @app.route("/apps/<string:app_id>/groups/remove", methods=["POST"])
    @inlineCallbacks
    def group_remove(self, request: Any, app_id: str) -> Any:
        session, app = yield self._group_change(request, app_id)
        try:
            ib, name = self._names(request)
        except Invalid as e:
            raise self.done(request, session, self.app_url(app_id, "groups"), "list", e.key, "error", **e.fields) from None
        removed = yield self.core.remove_group(app, ib, name)
        yield self.record_audit(request, session.login, "group-remove", app.id, ib=ib, group=name, members=removed)
        raise self.done(request, session, self.app_url(app_id, "groups", ib=ib), "list", "groups.removed", group=name, count=removed)
