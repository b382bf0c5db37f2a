"""
The applications: their list and page (settings for 1C, live counts), create,
rename, delete, the keys and tokens, and a test message through the path of
``/sendmessage`` (counted as a send, recorded in the delivery trace).
"""

from __future__ import annotations

from time import perf_counter
from typing import Any

from twisted.internet.defer import inlineCallbacks

from ..core import Delivery
from ..groups import GroupError, parse_ttl
from ..http.site import json_body
from ..hub import HubUnavailable
from ..messages import MessageError, parse_send_object
from ..store import StoreUnavailable, UnknownApplication
from . import views
from .panel import POLL_MS, Invalid, PanelBase, Redirect, app, peer_of

TITLE_MAX = 200
#: Fields of /sendmessage that the test-message form fills, and their labels.
_SEND_FIELDS = {"Recipient.IbId": "send.ib", "Recipient.UserId": "send.target", "Recipient.UserGroup": "send.target"}


class ApplicationPages(PanelBase):
    """The applications' list and pages, their changes, the test message, the live counts."""

    @app.route("/apps", methods=["GET"])
    @inlineCallbacks
    def apps(self, request: Any) -> Any:
        session = yield self.require_login(request)
        apps = yield self.store.list_applications()
        counts = self.core.hub.counts()
        rows = [{"app": a, "ibs": sorted(counts.get(a.id, {}).items()), "total": sum(counts.get(a.id, {}).values())} for a in apps]
        return self.render_page(request, "apps.html", session, rows=rows, poll_ms=POLL_MS, title_max=TITLE_MAX)

    def _title(self, request: Any) -> str:
        title = self.form_value(request, "title", 10_000).strip()
        if not title:
            raise Invalid("apps.title_required")
        if len(title) > TITLE_MAX:
            raise Invalid("apps.title_too_long", max=TITLE_MAX)
        return title

    @app.route("/apps", methods=["POST"])
    @inlineCallbacks
    def create(self, request: Any) -> Any:
        session = yield self.require_login(request)
        self.check_post(request, session)
        try:
            title = self._title(request)
        except Invalid as e:
            self.keep_form(request, session, "create")
            raise self.done(request, session, "/apps", "create", e.key, "error", **e.fields) from None
        app = yield self.store.create_application(title, self.clock.seconds())
        yield self.core.reload()
        self.log.info("admin panel: created application {app_id} ({title!r})", app_id=app.id, title=title)
        yield self.record_audit(request, session.login, "create", app.id, title=title)
        raise self.done(request, session, self.app_url(app.id), "", "apps.created", title=title)

    @app.route("/apps/<string:app_id>", methods=["GET"])
    @inlineCallbacks
    def application(self, request: Any, app_id: str) -> Any:
        session = yield self.require_login(request)
        app = yield self.find_application(app_id)
        host = self.query_value(request, "host", 300).strip()
        host_error = bool(host) and not views.valid_host(host)
        if host_error:
            host = ""
        counts = self.core.hub.counts().get(app.id, {})
        transports = self._transports(app.id)
        kept_total, _ = yield self.store.kept_summary(app.id, self.clock.seconds(), 1)
        return self.render_page(
            request,
            "app.html",
            session,
            app=app,
            settings=views.settings_for_1c(app, self.config, host),
            host=host,
            host_error=host_error,
            ibs=sorted(counts.items()),
            total=sum(counts.values()),
            transports=transports,
            kept_targets=kept_total,
            groups=self.core.membership.group_count(app.id),
            poll_ms=POLL_MS,
            title_max=TITLE_MAX,
            max_ttl=int(self.core.limits.max_ttl),
        )

    def _transports(self, app_id: str) -> dict[str, int]:
        """This node's sessions of an application by transport (add-in ``tcp``, ``ws``, ``sse``)."""
        out = {"tcp": 0, "ws": 0, "sse": 0}
        for s in self.core.hub.sessions(app_id):
            out[s.transport_name] = out.get(s.transport_name, 0) + 1
        return out

    @inlineCallbacks
    def _change(self, request: Any, app_id: str, action: str) -> Any:
        session = yield self.require_login(request)
        self.check_post(request, session)
        now = self.clock.seconds()
        fields: dict[str, Any] = {}
        try:
            if action == "rotate-server":
                app = yield self.store.rotate_server_key(app_id, now)
            elif action == "rotate-client":
                app = yield self.store.rotate_client_key(app_id, now)
            elif action == "reset-tokens":
                app = yield self.store.get_application(app_id)
                fields["count"] = yield self.store.reset_tokens(app_id)
            else:
                app = yield self.store.remove_application(app_id)
        except UnknownApplication:
            raise self.done(request, session, "/apps", "", "apps.unknown", "error") from None
        yield self.core.reload()
        self.log.info("admin panel: {action} application {app_id}", action=action, app_id=app_id)
        yield self.record_audit(request, session.login, action, app_id, title=app.title, **fields)
        if action == "delete":
            raise self.done(request, session, "/apps", "", "apps.done.delete", title=app.title)
        raise self.done(request, session, self.app_url(app_id), "settings", f"apps.done.{action}", title=app.title, **fields)

    @app.route("/apps/<string:app_id>/rotate-server", methods=["POST"])
    def rotate_server(self, request: Any, app_id: str) -> Any:
        return self._change(request, app_id, "rotate-server")

    @app.route("/apps/<string:app_id>/rotate-client", methods=["POST"])
    def rotate_client(self, request: Any, app_id: str) -> Any:
        return self._change(request, app_id, "rotate-client")

    @app.route("/apps/<string:app_id>/reset-tokens", methods=["POST"])
    def reset_tokens(self, request: Any, app_id: str) -> Any:
        return self._change(request, app_id, "reset-tokens")

    @app.route("/apps/<string:app_id>/delete", methods=["POST"])
    def delete(self, request: Any, app_id: str) -> Any:
        return self._change(request, app_id, "delete")

    @app.route("/apps/<string:app_id>/rename", methods=["POST"])
    @inlineCallbacks
    def rename(self, request: Any, app_id: str) -> Any:
        session = yield self.require_login(request)
        self.check_post(request, session)
        url = self.app_url(app_id)
        try:
            title = self._title(request)
        except Invalid as e:
            self.keep_form(request, session, "rename")
            raise self.done(request, session, url, "manage", e.key, "error", **e.fields) from None
        try:
            old = yield self.store.get_application(app_id)
            app = yield self.store.rename_application(app_id, title, self.clock.seconds())
        except UnknownApplication:
            raise self.done(request, session, "/apps", "", "apps.unknown", "error") from None
        yield self.core.reload()
        self.log.info("admin panel: renamed application {app_id} to {title!r}", app_id=app_id, title=title)
        yield self.record_audit(request, session.login, "rename", app_id, old=old.title, title=app.title)
        raise self.done(request, session, url, "manage", "apps.renamed", old=old.title, title=app.title)

    @app.route("/apps/<string:app_id>/send", methods=["POST"])
    @inlineCallbacks
    def send(self, request: Any, app_id: str) -> Any:
        session = yield self.require_login(request)
        self.check_post(request, session)
        started = perf_counter()
        app = self.core.apps.get(app_id)
        if app is None:
            raise self.done(request, session, "/apps", "", "apps.unknown", "error")
        url = self.app_url(app_id)
        t = self.texts(request)
        values = self.keep_form(request, session, "send")  # filled again, whatever the outcome: send it once more, or mend it
        kind = values["type"]
        recipient = {"Type": kind, "IbId": values["ib"]}
        if kind == "user":
            recipient["UserId"] = values["target"]
        elif kind == "group":
            recipient["UserGroup"] = values["target"]
        doc = {"Recipient": recipient, "Message": {"Notification": {"Title": values["title"], "Body": values["body"]}}}
        try:
            send = parse_send_object(doc)
            ttl = parse_ttl(values["ttl"].strip(), self.core.limits.max_ttl, t("send.ttl")) if values["ttl"].strip() else 0.0
        except MessageError as e:
            label = _SEND_FIELDS.get(e.field)
            if label is not None and e.reason == "is required":
                raise self.done(request, session, url, "send", "send.required", "error", field=t(label)) from None
            raise self.done(request, session, url, "send", "send.invalid", "error", field=e.field, reason=e.reason) from None
        except GroupError as e:
            raise self.done(request, session, url, "send", "send.invalid", "error", field=e.field, reason=e.reason) from None
        try:
            report = yield self.core.send(app, send, ttl)
        except (HubUnavailable, StoreUnavailable) as e:
            raise self.done(request, session, url, "send", "send.unavailable", "error", reason=str(e)) from None
        self.core.metrics.panel_sent(app.id, send.recipient.type, perf_counter() - started)
        self.core.trace.sent(self.clock.seconds(), "panel", peer_of(request), app.id, send, ttl, report)
        self.log.info(
            "admin panel: test message app={app_id} type={type} ib={ib_id} target={target} sessions={sessions}",
            app_id=app.id, type=send.recipient.type, ib_id=send.recipient.ib_id, target=send.recipient.target, sessions=report.sessions, event="send",
        )  # fmt: skip
        stored = isinstance(report, Delivery) and report.stored
        yield self.record_audit(
            request, session.login, "send-test", app.id,
            type=send.recipient.type, ib=send.recipient.ib_id, target=send.recipient.target, sessions=report.sessions, users=report.users, kept=stored,
        )  # fmt: skip
        key = "send.done_kept" if stored else "send.done"
        raise self.done(request, session, url, "send", key, sessions=report.sessions, users=report.users, id=report.message_id)

    @app.route("/counts.json", methods=["GET"])
    @inlineCallbacks
    def counts(self, request: Any) -> Any:
        if self.current_session(request, touch=False) is None:  # polling alone does not keep a session alive
            return json_body(request, 401, {"error": "unauthorized", "reason": "log in first"})
        try:
            yield self.require_login(request, touch=False)
        except Redirect:
            return json_body(request, 401, {"error": "unauthorized", "reason": "the session has ended"})
        counts = self.core.hub.counts()
        apps: dict[str, Any] = {app_id: {"total": sum(ibs.values()), "ibs": ibs} for app_id, ibs in counts.items()}
        one = self.query_value(request, "app")
        if one:  # the application's page also shows its sessions by transport
            apps.setdefault(one, {"total": 0, "ibs": {}})["transports"] = self._transports(one)
        return json_body(request, 200, {"total": len(self.core.hub), "apps": apps})
