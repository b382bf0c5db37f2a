"""
The panel's base: what every page shares (the one Klein application, the
state, rendering, forms, CSRF, sessions, the audit record, the error pages).

Each page module (:mod:`.account`, :mod:`.applications`, ...) is a mixin of
:class:`PanelBase` whose routes are registered on :data:`app`; :mod:`.app`
assembles them into :class:`~pns4ones.admin.app.AdminPanel`.  Klein binds
``app`` to the instance it is reached through, so a route written in any
mixin runs with the whole panel as ``self``.
"""

from __future__ import annotations

import hashlib
import hmac
import mimetypes
import secrets
from collections.abc import Callable
from importlib import resources
from typing import Any, Protocol
from urllib.parse import quote, urlencode

from jinja2 import Environment, PackageLoader, StrictUndefined
from klein import Klein
from twisted.internet.defer import DeferredLock, inlineCallbacks
from twisted.logger import Logger
from twisted.web.resource import Resource
from werkzeug.exceptions import MethodNotAllowed, NotFound
from werkzeug.routing import RequestRedirect

from .. import audit
from ..core import Core
from ..logs import RateLimited
from ..store import Admin, AdminAccount, Audit, AuditEntry, Groups, KeptMessages, StoreUnavailable, UnknownApplication
from . import auth, i18n, views
from .site import PanelRoot


class PanelStore(Admin, Audit, Groups, KeptMessages, Protocol):
    """What the panel uses of the store: applications, the account, the audit log, groups and kept messages."""


SESSION_COOKIE = b"pns4ones_session"
PRE_COOKIE = b"pns4ones_pre"
LANG_COOKIE = b"pns4ones_lang"
#: Milliseconds between two polls of the live subscription counts and status figures.
POLL_MS = 2000

#: The panel's sections (top navigation).
NAV = (("/apps", "nav.apps"), ("/online", "nav.online"), ("/trace", "nav.trace"), ("/status", "nav.status"), ("/audit", "nav.audit"))

#: Form fields kept for each form that can be refused (or sent again).
_FORM_FIELDS = {
    "create": ("title",),
    "rename": ("title",),
    "send": ("ib", "type", "target", "title", "body", "ttl"),
    "group-add": ("ib", "group", "members"),
}


def peer_of(request: Any) -> str:
    return getattr(request.getClientAddress(), "host", "?")


def _fingerprint(account: AdminAccount) -> bytes:
    """What a session remembers of the password it logged in with (the hash changes with every new password)."""
    return hashlib.sha256(account.password_hash.encode("utf-8")).digest()


def is_local_path(target: str) -> bool:
    """A path of this site (no scheme, no other host): safe to redirect to."""
    return target.startswith("/") and not target.startswith("//") and "\\" not in target and target.isprintable()


class Redirect(Exception):
    def __init__(self, location: str) -> None:
        super().__init__(location)
        self.location = location


class Refused(Exception):
    """An answer other than the page asked for: ``key`` names the catalog text."""

    def __init__(self, status: int, key: str, **fields: Any) -> None:
        super().__init__(key)
        self.status = status
        self.key = key
        self.fields = fields


class Invalid(Exception):
    """A form's input is refused: ``key`` names the catalog text shown beside the form."""

    def __init__(self, key: str, **fields: Any) -> None:
        super().__init__(key)
        self.key = key
        self.fields = fields


#: The panel's one Klein application: every page module registers its routes on it.
app = Klein()


class PanelBase:
    """The panel's state and the helpers its pages share; the static files and the error pages."""

    #: The module's ``app``: reached through a panel, Klein binds itself to it (every mixin's routes then run on the whole panel).
    app = app
    log = Logger()

    def __init__(self, core: Core, store: PanelStore, config: Any, clock: Any) -> None:
        self.core = core
        self.store = store
        self.config = config
        self.clock = clock
        self.sessions = auth.Sessions(clock)
        self.throttle = auth.Throttle(clock)
        self.login_refusals = RateLimited(clock, 10.0)
        #: Wrong set-up codes back off like failed logins.
        self.setup_throttle = auth.Throttle(clock)
        #: The one-time set-up code while there is no administrator (see :mod:`.firstrun`).
        self.setup_code: str | None = None
        #: The live figures of the status page (set by the service's observability part).
        self.status_source: Callable[[], dict[str, Any]] | None = None
        self.translator = i18n.Translator(i18n.load_catalogs())
        self.templates = Environment(
            loader=PackageLoader("pns4ones.admin", "templates"),
            autoescape=True,
            undefined=StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self.templates.filters["moment"] = views.moment
        self.templates.filters["size"] = views.size
        self.templates.filters["detail"] = audit.describe_detail
        self._static = self._load_static()
        self.account_lock = DeferredLock()

    def resource(self) -> Resource:
        return PanelRoot(self, self.app.resource())

    @staticmethod
    def _load_static() -> dict[str, tuple[bytes, bytes]]:
        out = {}
        for entry in resources.files("pns4ones.admin").joinpath("static").iterdir():
            kind = mimetypes.guess_type(entry.name)[0] or "application/octet-stream"
            if kind.startswith("text/") or kind.endswith("javascript"):
                kind += "; charset=utf-8"
            out[entry.name] = (entry.read_bytes(), kind.encode())
        return out

    # -- request helpers -------------------------------------------------------------------

    def _lang(self, request: Any) -> str:
        value = (request.getCookie(LANG_COOKIE) or b"").decode("ascii", "replace")
        return value if value in i18n.LANGUAGES else i18n.DEFAULT

    def texts(self, request: Any) -> Callable[..., str]:
        return self.translator.for_language(self._lang(request))

    def cookie(self, request: Any, name: bytes) -> str:
        return (request.getCookie(name) or b"").decode("ascii", "replace")

    def current_session(self, request: Any, touch: bool = True) -> auth.Session | None:
        return self.sessions.get(self.cookie(request, SESSION_COOKIE), touch)

    def set_cookie(self, request: Any, name: bytes, value: str, max_age: int | None) -> None:
        request.addCookie(
            name,
            value.encode("ascii"),
            path=b"/",
            max_age=None if max_age is None else str(max_age).encode(),
            httpOnly=True,
            sameSite=b"strict",
        )

    def _pre_session(self, request: Any) -> str:
        """The random pre-session cookie that the setup and login forms' CSRF token is bound to."""
        value = self.cookie(request, PRE_COOKIE)
        if len(value) < 20:
            value = secrets.token_urlsafe(24)
            self.set_cookie(request, PRE_COOKIE, value, None)
            request.received_cookies[PRE_COOKIE] = value.encode()
        return value

    def form_value(self, request: Any, name: str, limit: int = 4096) -> str:
        values = request.args.get(name.encode()) or [b""]
        text = values[0].decode("utf-8", "replace")
        if len(text) > limit:
            raise Refused(400, "error.too_long", field=name)
        return text

    def query_value(self, request: Any, name: str, limit: int = 1024) -> str:
        """A query (or form) argument for a GET page: too long counts as absent."""
        values = request.args.get(name.encode()) or [b""]
        text = values[0].decode("utf-8", "replace")
        return text if len(text) <= limit else ""

    def check_post(self, request: Any, session: auth.Session | None) -> None:
        """Refuse a POST from another origin or without this browser's CSRF token."""
        host = (request.getHeader(b"host") or b"").decode("ascii", "replace")
        origin = (request.getHeader(b"origin") or b"").decode("ascii", "replace")
        fetch_site = (request.getHeader(b"sec-fetch-site") or b"").decode("ascii", "replace")
        if session is not None:
            expected = session.csrf
        else:
            pre = self.cookie(request, PRE_COOKIE)
            expected = self.sessions.anonymous_csrf(pre) if pre else ""
        given = self.form_value(request, "csrf", 200)
        reason = ""
        if origin and origin.lower() != f"http://{host}".lower():
            reason = f"foreign Origin {origin!r}"
        elif fetch_site and fetch_site not in ("same-origin", "none"):
            reason = f"Sec-Fetch-Site {fetch_site!r}"
        elif not expected or not given or not hmac.compare_digest(expected.encode(), given.encode("utf-8", "replace")):
            reason = "missing or wrong CSRF token"
        if reason:
            self.log.warn(
                "admin panel: refused {method} {path} from {peer}: {reason}",
                method=request.method.decode(),
                path=request.path.decode("utf-8", "replace"),
                peer=peer_of(request),
                reason=reason,
            )
            raise Refused(403, "error.csrf")

    def _csrf_for(self, request: Any, session: auth.Session | None) -> str:
        return session.csrf if session is not None else self.sessions.anonymous_csrf(self._pre_session(request))

    @inlineCallbacks
    def require_login(self, request: Any, touch: bool = True) -> Any:
        """The live session, whose password is still the administrator's; else off to the login (or first-run) page."""
        session = self.current_session(request, touch)
        account = yield self.store.get_admin()
        if session is not None:
            if account is not None and hmac.compare_digest(_fingerprint(account), session.account):
                return session
            # A new password (another browser, or pns4ones-admin panel-password): this session is over.
            self.sessions.end(self.cookie(request, SESSION_COOKIE))
            self.log.info("admin panel: ended a session of {login!r}: the password has changed", login=session.login)
        raise Redirect("/setup" if account is None else "/login")

    def render_page(self, request: Any, template: str, session: auth.Session | None, status: int = 200, **context: Any) -> bytes:
        lang = self._lang(request)
        t = self.translator.for_language(lang)
        flashes = list(session.flash) if session is not None else []
        forms = dict(session.forms) if session is not None else {}
        if session is not None:
            session.flash.clear()
            session.forms.clear()

        def form(name: str, field: str, default: str = "") -> str:
            return forms.get(name, {}).get(field, default)

        request.setResponseCode(status)
        request.setHeader(b"Content-Type", b"text/html; charset=utf-8")
        path = request.path.decode("utf-8", "replace")

        def page_url(number: int) -> str:
            """This page's URL with its query, showing page ``number``."""
            query = [(k.decode("utf-8", "replace"), v[0].decode("utf-8", "replace")) for k, v in request.args.items() if k != b"page" and v]
            return path + "?" + urlencode([*query, ("page", str(number))])

        html = self.templates.get_template(template).render(
            t=t,
            lang=lang,
            languages=i18n.LANGUAGES,
            csrf=self._csrf_for(request, session),
            login=session.login if session is not None else None,
            flashes=flashes,
            form=form,
            path=path,
            here=request.uri.decode("utf-8", "replace"),
            nav=NAV,
            page_url=page_url,
            now=self.clock.seconds(),
            duration=lambda seconds: views.duration(seconds, t),
            **context,
        )
        return html.encode("utf-8")

    def flash(self, request: Any, session: auth.Session, kind: str, key: str, section: str = "", **fields: Any) -> None:
        session.flash.append((kind, self.texts(request)(key, **fields), section))

    def done(self, request: Any, session: auth.Session, url: str, section: str, key: str, kind: str = "ok", **fields: Any) -> Redirect:
        """Show the result in ``section`` of the page at ``url``, and go there (the browser scrolls to it)."""
        self.flash(request, session, kind, key, section, **fields)
        return Redirect(f"{url}#{section}" if section else url)

    def keep_form(self, request: Any, session: auth.Session, name: str) -> dict[str, str]:
        """Remember what was typed into form ``name``, to fill it again on the next page."""
        # unbounded here: the body is (max_body_size), and the copy lives until the next page
        values = {field: (request.args.get(field.encode()) or [b""])[0].decode("utf-8", "replace") for field in _FORM_FIELDS[name]}
        session.forms[name] = values
        return values

    def start_session(self, request: Any, account: AdminAccount) -> auth.Session:
        """A fresh session (a new token after every login: no session fixation)."""
        self.sessions.end(self.cookie(request, SESSION_COOKIE))
        token, session = self.sessions.create(account.login)
        session.account = _fingerprint(account)
        self.set_cookie(request, SESSION_COOKIE, token, int(self.sessions.lifetime))
        return session

    @inlineCallbacks
    def record_audit(self, request: Any, actor: str, action: str, app_id: str = "", **fields: Any) -> Any:
        """Record an administrator's action; a store that cannot take it is logged, the action stands."""
        entry = AuditEntry(self.clock.seconds(), actor, "panel", peer_of(request), action, app_id, audit.detail(**fields) if fields else "")
        try:
            yield self.store.add_audit(entry, audit.MAX_ROWS)
        except Exception as e:
            self.log.error("admin panel: cannot record {action} in the audit log: {error}", action=action, error=str(e))

    @inlineCallbacks
    def find_application(self, app_id: str) -> Any:
        """The application (from the store: the freshest), or a 404 page."""
        try:
            app = yield self.store.get_application(app_id)
        except UnknownApplication:
            raise Refused(404, "apps.unknown") from None
        return app

    @staticmethod
    def app_url(app_id: str, page: str = "", **query: str) -> str:
        url = f"/apps/{quote(app_id, safe='')}" + (f"/{page}" if page else "")
        return url + ("?" + urlencode(query) if query else "")

    @app.route("/static/<string:name>", methods=["GET"])
    def static(self, request: Any, name: str) -> Any:
        found = self._static.get(name)
        if found is None:
            raise NotFound()
        body, kind = found
        request.setHeader(b"Content-Type", kind)
        request.setHeader(b"Cache-Control", b"no-cache")
        return body

    # -- errors ------------------------------------------------------------------------------------

    @app.handle_errors(Redirect)
    def redirect(self, request: Any, failure: Any) -> bytes:
        request.setResponseCode(303)
        request.setHeader(b"Location", failure.value.location.encode("utf-8"))
        return b""

    @app.handle_errors(Refused)
    def refused(self, request: Any, failure: Any) -> bytes:
        e = failure.value
        return self.render_page(
            request, "error.html", self.current_session(request), status=e.status, message=self.texts(request)(e.key, **e.fields)
        )

    @app.handle_errors(NotFound, RequestRedirect)  # (a path with an empty segment, "%2F": werkzeug would redirect it elsewhere)
    def not_found(self, request: Any, failure: Any) -> bytes:
        return self.no_such_page(request)

    def no_such_page(self, request: Any) -> bytes:
        return self.render_page(
            request, "error.html", self.current_session(request), status=404, message=self.texts(request)("error.not_found")
        )

    @app.handle_errors(MethodNotAllowed)
    def bad_method(self, request: Any, failure: Any) -> bytes:
        request.setHeader(b"Allow", ", ".join(failure.value.valid_methods or []).encode())
        return self.render_page(
            request, "error.html", self.current_session(request), status=405, message=self.texts(request)("error.method")
        )

    @app.handle_errors(StoreUnavailable)
    def store_down(self, request: Any, failure: Any) -> bytes:
        return self.render_page(request, "error.html", self.current_session(request), status=503, message=str(failure.value))

    @app.handle_errors(Exception)
    def crashed(self, request: Any, failure: Any) -> bytes:
        self.log.failure("admin panel: unexpected error answering {path}", failure, path=request.path)
        request.setResponseCode(500)
        request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
        return b"internal error, see the service log\n"
