"""
The audit log page: the administrators' actions (panel and CLI), newest
first, a page at a time.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import inlineCallbacks

from . import views
from .panel import PanelBase, app

#: Records a page of the audit log.
AUDIT_PAGE = 50


class AuditPages(PanelBase):
    """The audit log."""

    @app.route("/audit", methods=["GET"])
    @inlineCallbacks
    def audit_log(self, request: Any) -> Any:
        session = yield self.require_login(request)
        number = views.page_number(self.query_value(request, "page"))
        total, entries = yield self.store.list_audit(AUDIT_PAGE, (number - 1) * AUDIT_PAGE)
        titles = {a.id: a.title for a in self.core.apps.values()}
        return self.render_page(request, "audit.html", session, entries=entries, titles=titles, page=views.Page(number, AUDIT_PAGE, total))
