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

:class:`AdminPanel` is assembled here from one mixin per page module, each
over :class:`~pns4ones.admin.panel.PanelBase` (:mod:`.panel`: the shared state
and helpers, the error pages, the one Klein application every route is
registered on): :mod:`.account`, :mod:`.applications`, :mod:`.groups`,
:mod:`.kept`, :mod:`.online`, :mod:`.audit`, :mod:`.trace`, :mod:`.status`.
The listener (:class:`AdminSite`, :class:`AdminRequest`) is in :mod:`.site`.
"""

from __future__ import annotations

from .account import AccountPages
from .applications import ApplicationPages
from .audit import AuditPages
from .groups import GroupPages
from .kept import KeptPages
from .online import OnlinePages
from .panel import PanelStore
from .site import AdminRequest, AdminSite
from .status import StatusPages
from .trace import TracePages

__all__ = ["AdminPanel", "AdminRequest", "AdminSite", "PanelStore"]


class AdminPanel(AccountPages, ApplicationPages, GroupPages, KeptPages, OnlinePages, AuditPages, TracePages, StatusPages):
    """Routes of the admin listener."""
