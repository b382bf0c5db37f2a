"""
The admin web panel (PROTOCOL.md section 6): a Klein application over the
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
* application changes go through the :class:`~pns4ones.store.Store` (the
  same calls as the CLI) followed by ``core.reload()``; test messages go
  through ``parse_send_object`` and ``Core.send``, the path of ``/sendmessage``.
"""

from __future__ import annotations

import hmac
import mimetypes
import secrets
from importlib import resources
from typing import Any
from urllib.parse import quote

from jinja2 import Environment, PackageLoader, StrictUndefined
from klein import Klein
from twisted.internet.defer import DeferredLock, inlineCallbacks
from twisted.logger import Logger
from werkzeug.exceptions import MethodNotAllowed, NotFound

from ..core import Core
from ..logs import RateLimited
from ..messages import MessageError, parse_send_object
from ..store import Admin, AdminAccount, StoreUnavailable, UnknownApplication
from ..web import ApiSite, BoundedRequest, json_body
from . import auth, i18n

SESSION_COOKIE = b"pns4ones_session"
PRE_COOKIE = b"pns4ones_pre"
LANG_COOKIE = b"pns4ones_lang"
TITLE_MAX = 200
#: Milliseconds between two polls of the live subscription counts.
POLL_MS = 2000

SECURITY_HEADERS = {
    b"Content-Security-Policy": (
        b"default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
        b"form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    b"X-Frame-Options": b"DENY",
    b"X-Content-Type-Options": b"nosniff",
    b"Referrer-Policy": b"same-origin",
    b"Cross-Origin-Opener-Policy": b"same-origin",
    b"Cross-Origin-Resource-Policy": b"same-origin",
    b"Cache-Control": b"no-store",
}


#: Fields of /sendmessage that the test-message form fills, and their labels.
_SEND_FIELDS = {"Recipient.IbId": "send.ib", "Recipient.UserId": "send.target", "Recipient.UserGroup": "send.target"}


def _peer(request: Any) -> str:
    return getattr(request.getClientAddress(), "host", "?")


class _Redirect(Exception):
    def __init__(self, location: str) -> None:
        super().__init__(location)
        self.location = location


class _Refused(Exception):
    """An answer other than the page asked for: ``key`` names the catalog text."""

    def __init__(self, status: int, key: str, **fields: Any) -> None:
        super().__init__(key)
        self.status = status
        self.key = key
        self.fields = fields


class AdminPanel:
    """Routes of the admin listener."""

    app = Klein()
    log = Logger()

    def __init__(self, core: Core, store: Admin, config: Any, clock: Any) -> None:
        self.core = core
        self.store = store
        self.config = config
        self.clock = clock
        self.sessions = auth.Sessions(clock)
        self.throttle = auth.Throttle(clock)
        self._refusals = RateLimited(clock, 10.0)
        self.translator = i18n.Translator(i18n.load_catalogs())
        self.templates = Environment(
            loader=PackageLoader("pns4ones.admin", "templates"),
            autoescape=True,
            undefined=StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self._static = self._load_static()
        self._account_lock = DeferredLock()

    def resource(self) -> Any:
        return self.app.resource()

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

    def _t(self, request: Any) -> Any:
        return self.translator.for_language(self._lang(request))

    def _cookie(self, request: Any, name: bytes) -> str:
        return (request.getCookie(name) or b"").decode("ascii", "replace")

    def _session(self, request: Any, touch: bool = True) -> auth.Session | None:
        return self.sessions.get(self._cookie(request, SESSION_COOKIE), touch)

    def _set_cookie(self, request: Any, name: bytes, value: str, max_age: int | None) -> None:
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
        value = self._cookie(request, PRE_COOKIE)
        if len(value) < 20:
            value = secrets.token_urlsafe(24)
            self._set_cookie(request, PRE_COOKIE, value, None)
            request.received_cookies[PRE_COOKIE] = value.encode()
        return value

    def _form(self, request: Any, name: str, limit: int = 4096) -> str:
        values = request.args.get(name.encode()) or [b""]
        text = values[0].decode("utf-8", "replace")
        if len(text) > limit:
            raise _Refused(400, "error.too_long", field=name)
        return text

    def _check_post(self, request: Any, session: auth.Session | None) -> None:
        """Refuse a POST from another origin or without this browser's CSRF token."""
        host = (request.getHeader(b"host") or b"").decode("ascii", "replace")
        origin = (request.getHeader(b"origin") or b"").decode("ascii", "replace")
        fetch_site = (request.getHeader(b"sec-fetch-site") or b"").decode("ascii", "replace")
        if session is not None:
            expected = session.csrf
        else:
            pre = self._cookie(request, PRE_COOKIE)
            expected = self.sessions.anonymous_csrf(pre) if pre else ""
        given = self._form(request, "csrf", 200)
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
                peer=_peer(request),
                reason=reason,
            )
            raise _Refused(403, "error.csrf")

    def _csrf_for(self, request: Any, session: auth.Session | None) -> str:
        return session.csrf if session is not None else self.sessions.anonymous_csrf(self._pre_session(request))

    @inlineCallbacks
    def _require_login(self, request: Any) -> Any:
        session = self._session(request)
        if session is not None:
            return session
        account = yield self.store.get_admin()
        raise _Redirect("/setup" if account is None else "/login")

    def _render(self, request: Any, template: str, session: auth.Session | None, status: int = 200, **context: Any) -> bytes:
        lang = self._lang(request)
        t = self.translator.for_language(lang)
        flashes = list(session.flash) if session is not None else []
        if session is not None:
            session.flash.clear()
        request.setResponseCode(status)
        request.setHeader(b"Content-Type", b"text/html; charset=utf-8")
        html = self.templates.get_template(template).render(
            t=t,
            lang=lang,
            languages=i18n.LANGUAGES,
            csrf=self._csrf_for(request, session),
            login=session.login if session is not None else None,
            flashes=flashes,
            path=request.path.decode("utf-8", "replace"),
            **context,
        )
        return html.encode("utf-8")

    def _flash(self, request: Any, session: auth.Session, kind: str, key: str, **fields: Any) -> None:
        session.flash.append((kind, self._t(request)(key, **fields)))

    def _start_session(self, request: Any, login: str) -> auth.Session:
        """A fresh session (a new token after every login: no session fixation)."""
        self.sessions.end(self._cookie(request, SESSION_COOKIE))
        token, session = self.sessions.create(login)
        self._set_cookie(request, SESSION_COOKIE, token, int(self.sessions.lifetime))
        return session

    # -- first run, login, logout, password ------------------------------------------------------

    @app.route("/", methods=["GET"])
    @inlineCallbacks
    def index(self, request: Any) -> Any:
        yield self._require_login(request)
        raise _Redirect("/apps")

    @app.route("/setup", methods=["GET", "POST"])
    @inlineCallbacks
    def setup(self, request: Any) -> Any:
        account = yield self.store.get_admin()
        if account is not None:
            raise _Redirect("/login")
        if request.method == b"GET":
            return self._render(request, "setup.html", None, error=None, form_login="", password_min=auth.PASSWORD_MIN)
        self._check_post(request, None)
        login = self._form(request, "login", 1000).strip()
        password = self._form(request, "password", auth.PASSWORD_MAX)
        password2 = self._form(request, "password2", auth.PASSWORD_MAX)
        error = self._password_problem(login, password, password2)
        if error:
            return self._render(
                request,
                "setup.html",
                None,
                status=400,
                error=self._t(request)(error, min=auth.PASSWORD_MIN, max=auth.LOGIN_MAX),
                form_login=login,
                password_min=auth.PASSWORD_MIN,
            )
        yield self._account_lock.acquire()
        try:
            if (yield self.store.get_admin()) is not None:  # another browser was first
                raise _Redirect("/login")
            encoded = yield auth.hash_password_async(password)
            yield self.store.set_admin(AdminAccount(login, encoded), self.clock.seconds())
        finally:
            self._account_lock.release()
        self.log.info("admin panel: administrator {login!r} created from {peer}", login=login, peer=_peer(request))
        self._start_session(request, login)
        raise _Redirect("/apps")

    @staticmethod
    def _password_problem(login: str | None, password: str, password2: str) -> str:
        if login is not None and not login:
            return "error.login_required"
        if login is not None and len(login) > auth.LOGIN_MAX:
            return "error.login_too_long"
        if len(password) < auth.PASSWORD_MIN:
            return "error.password_short"
        if password != password2:
            return "error.password_mismatch"
        return ""

    @app.route("/login", methods=["GET", "POST"])
    @inlineCallbacks
    def login(self, request: Any) -> Any:
        if request.method == b"GET":
            account = yield self.store.get_admin()
            if account is None:
                raise _Redirect("/setup")
            if self._session(request) is not None:
                raise _Redirect("/apps")
            return self._render(request, "login.html", None, error=None, form_login="")
        self._check_post(request, None)
        t = self._t(request)
        peer = _peer(request)
        login = self._form(request, "login", 1000).strip()
        password = self._form(request, "password", auth.PASSWORD_MAX)
        # The throttle first: nothing (not even the store) is asked for an attempt it refuses.
        attempt = self.throttle.begin(peer)
        if isinstance(attempt, auth.Refusal):
            seconds = int(attempt.wait) + 1
            self._login_refused(
                attempt.reason,
                "admin panel: login from {peer} refused: "
                + (
                    "throttled for {wait:.0f} s after {failures} failures"
                    if attempt.reason == "throttled"
                    else "another check is under way"
                ),
                peer=peer,
                wait=attempt.wait,
                failures=self.throttle.failures,
            )
            request.setHeader(b"Retry-After", str(seconds).encode())
            key = "error.throttled" if attempt.reason == "throttled" else "error.login_busy"
            return self._render(request, "login.html", None, status=429, error=t(key, seconds=seconds), form_login=login)
        try:
            account = yield self.store.get_admin()
            valid = account is not None and (yield auth.verify_password_async(password, account.password_hash))
        except BaseException:
            attempt.abandoned()
            raise
        if account is None:
            attempt.abandoned()
            raise _Redirect("/setup")
        if not (valid and hmac.compare_digest(login.encode("utf-8", "replace"), account.login.encode("utf-8", "replace"))):
            failures = attempt.failures
            attempt.failed()
            self.log.warn(
                "admin panel: failed login as {login!r} from {peer} ({failures} in a row)", login=login, peer=peer, failures=failures
            )
            return self._render(request, "login.html", None, status=401, error=t("error.login_failed"), form_login=login)
        attempt.succeeded()
        self.log.info("admin panel: {login!r} logged in from {peer}", login=login, peer=peer)
        self._start_session(request, account.login)
        raise _Redirect("/apps")

    def _login_refused(self, key: str, fmt: str, **fields: Any) -> None:
        """A refused login attempt's warning, rate-limited (a flood would otherwise fill the log)."""

        def emit(suppressed: int) -> None:
            more = f" ({suppressed} more like it in the last interval)" if suppressed else ""
            self.log.warn(fmt + more, **fields)

        self._refusals(key, emit)

    @app.route("/logout", methods=["POST"])
    def logout(self, request: Any) -> Any:
        session = self._session(request)
        if session is None:  # already expired: nothing to end
            raise _Redirect("/login")
        self._check_post(request, session)
        self.sessions.end(self._cookie(request, SESSION_COOKIE))
        self._set_cookie(request, SESSION_COOKIE, "", 0)
        raise _Redirect("/login")

    @app.route("/password", methods=["GET", "POST"])
    @inlineCallbacks
    def password(self, request: Any) -> Any:
        session = yield self._require_login(request)
        if request.method == b"GET":
            return self._render(request, "password.html", session, error=None, password_min=auth.PASSWORD_MIN)
        self._check_post(request, session)
        t = self._t(request)
        current = self._form(request, "current", auth.PASSWORD_MAX)
        new = self._form(request, "password", auth.PASSWORD_MAX)
        new2 = self._form(request, "password2", auth.PASSWORD_MAX)
        account = yield self.store.get_admin()
        valid = account is not None and (yield auth.verify_password_async(current, account.password_hash))
        error = "error.current_password" if not valid else self._password_problem(None, new, new2)
        if error:
            return self._render(
                request, "password.html", session, status=400, error=t(error, min=auth.PASSWORD_MIN), password_min=auth.PASSWORD_MIN
            )
        yield self._account_lock.acquire()
        try:
            encoded = yield auth.hash_password_async(new)
            yield self.store.set_admin(AdminAccount(account.login, encoded), self.clock.seconds())
        finally:
            self._account_lock.release()
        self.log.info(
            "admin panel: password of {login!r} changed from {peer}; other sessions ended", login=account.login, peer=_peer(request)
        )
        self.sessions.end_all()
        self._start_session(request, account.login).flash.append(("ok", t("password.changed")))
        raise _Redirect("/apps")

    @app.route("/lang", methods=["POST"])
    def language(self, request: Any) -> Any:
        self._check_post(request, self._session(request))
        lang = self._form(request, "lang", 10)
        if lang in i18n.LANGUAGES:
            self._set_cookie(request, LANG_COOKIE, lang, 365 * 86400)
        back = self._form(request, "next", 200)
        raise _Redirect(back if back in ("/apps", "/password", "/login", "/setup") else "/")

    # -- applications --------------------------------------------------------------------------

    @app.route("/apps", methods=["GET"])
    @inlineCallbacks
    def apps(self, request: Any) -> Any:
        session = yield self._require_login(request)
        apps = yield self.store.list_applications()
        counts = self.core.hub.counts()
        opened = (request.args.get(b"open") or [b""])[0].decode("utf-8", "replace")
        rows = [
            {
                "app": a,
                "ibs": sorted(counts.get(a.id, {}).items()),
                "total": sum(counts.get(a.id, {}).values()),
                "client_key": a.client_key.encode(),
            }
            for a in apps
        ]
        return self._render(request, "apps.html", session, rows=rows, opened=opened, error=None, poll_ms=POLL_MS, title_max=TITLE_MAX)

    @app.route("/apps", methods=["POST"])
    @inlineCallbacks
    def create(self, request: Any) -> Any:
        session = yield self._require_login(request)
        self._check_post(request, session)
        title = self._form(request, "title", 10_000).strip()
        if not title or len(title) > TITLE_MAX:
            self._flash(request, session, "error", "apps.title_required" if not title else "apps.title_too_long", max=TITLE_MAX)
            raise _Redirect("/apps")
        app = yield self.store.create_application(title, self.clock.seconds())
        yield self.core.reload()
        self.log.info("admin panel: created application {app_id} ({title!r})", app_id=app.id, title=title)
        self._flash(request, session, "ok", "apps.created", title=title)
        raise _Redirect(self._app_url(app.id))

    @staticmethod
    def _app_url(app_id: str) -> str:
        q = quote(app_id, safe="")
        return f"/apps?open={q}#app-{q}"

    @inlineCallbacks
    def _change(self, request: Any, app_id: str, action: str) -> Any:
        session = yield self._require_login(request)
        self._check_post(request, session)
        now = self.clock.seconds()
        try:
            if action == "rotate-server":
                app = yield self.store.rotate_server_key(app_id, now)
            elif action == "rotate-client":
                app = yield self.store.rotate_client_key(app_id, now)
            else:
                app = yield self.store.remove_application(app_id)
        except UnknownApplication:
            self._flash(request, session, "error", "apps.unknown")
            raise _Redirect("/apps") from None
        yield self.core.reload()
        self.log.info("admin panel: {action} application {app_id}", action=action, app_id=app_id)
        self._flash(request, session, "ok", f"apps.done.{action}", title=app.title)
        raise _Redirect("/apps" if action == "delete" else self._app_url(app_id))

    @app.route("/apps/<string:app_id>/rotate-server", methods=["POST"])
    def rotate_server(self, request: Any, app_id: str) -> Any:
        return self._change(request, app_id, "rotate-server")

    @app.route("/apps/<string:app_id>/rotate-client", methods=["POST"])
    def rotate_client(self, request: Any, app_id: str) -> Any:
        return self._change(request, app_id, "rotate-client")

    @app.route("/apps/<string:app_id>/delete", methods=["POST"])
    def delete(self, request: Any, app_id: str) -> Any:
        return self._change(request, app_id, "delete")

    @app.route("/apps/<string:app_id>/send", methods=["POST"])
    @inlineCallbacks
    def send(self, request: Any, app_id: str) -> Any:
        session = yield self._require_login(request)
        self._check_post(request, session)
        app = self.core.apps.get(app_id)
        if app is None:
            self._flash(request, session, "error", "apps.unknown")
            raise _Redirect("/apps")
        kind = self._form(request, "type", 20)
        target = self._form(request, "target")
        recipient = {"Type": kind, "IbId": self._form(request, "ib")}
        if kind == "user":
            recipient["UserId"] = target
        elif kind == "group":
            recipient["UserGroup"] = target
        doc = {
            "Recipient": recipient,
            "Message": {"Notification": {"Title": self._form(request, "title"), "Body": self._form(request, "body")}},
        }
        try:
            send = parse_send_object(doc)
        except MessageError as e:
            label = _SEND_FIELDS.get(e.field)
            if label is not None and e.reason == "is required":
                self._flash(request, session, "error", "send.required", field=self._t(request)(label))
            else:
                self._flash(request, session, "error", "send.invalid", field=e.field, reason=e.reason)
            raise _Redirect(self._app_url(app_id)) from None
        report = yield self.core.send(app, send)
        self.log.info(
            "admin panel: test message app={app_id} type={type} ib={ib_id} target={target} sessions={sessions}",
            app_id=app.id, type=send.recipient.type, ib_id=send.recipient.ib_id, target=send.recipient.target, sessions=report.sessions, event="send",
        )  # fmt: skip
        self._flash(request, session, "ok", "send.done", sessions=report.sessions, users=report.users)
        raise _Redirect(self._app_url(app_id))

    @app.route("/counts.json", methods=["GET"])
    def counts(self, request: Any) -> Any:
        if self._session(request, touch=False) is None:  # polling alone does not keep a session alive
            return json_body(request, 401, {"error": "unauthorized", "reason": "log in first"})
        counts = self.core.hub.counts()
        apps = {app_id: {"total": sum(ibs.values()), "ibs": ibs} for app_id, ibs in counts.items()}
        return json_body(request, 200, {"total": len(self.core.hub), "apps": apps})

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

    @app.handle_errors(_Redirect)
    def redirect(self, request: Any, failure: Any) -> bytes:
        request.setResponseCode(303)
        request.setHeader(b"Location", failure.value.location.encode("utf-8"))
        return b""

    @app.handle_errors(_Refused)
    def refused(self, request: Any, failure: Any) -> bytes:
        e = failure.value
        return self._render(request, "error.html", self._session(request), status=e.status, message=self._t(request)(e.key, **e.fields))

    @app.handle_errors(NotFound)
    def not_found(self, request: Any, failure: Any) -> bytes:
        return self._render(request, "error.html", self._session(request), status=404, message=self._t(request)("error.not_found"))

    @app.handle_errors(MethodNotAllowed)
    def bad_method(self, request: Any, failure: Any) -> bytes:
        request.setHeader(b"Allow", ", ".join(failure.value.valid_methods or []).encode())
        return self._render(request, "error.html", self._session(request), status=405, message=self._t(request)("error.method"))

    @app.handle_errors(StoreUnavailable)
    def store_down(self, request: Any, failure: Any) -> bytes:
        return self._render(request, "error.html", self._session(request), status=503, message=str(failure.value))

    @app.handle_errors(Exception)
    def crashed(self, request: Any, failure: Any) -> bytes:
        self.log.failure("admin panel: unexpected error answering {path}", failure, path=request.path)
        request.setResponseCode(500)
        request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
        return b"internal error, see the service log\n"


class AdminRequest(BoundedRequest):
    """A panel request: loopback ``Host`` only; security headers on every answer."""

    def process(self) -> None:
        for name, value in SECURITY_HEADERS.items():
            self.setHeader(name, value)
        host = (self.getHeader(b"host") or b"").lower()
        if host not in self.channel.site.allowed_hosts:
            self.channel.site.logger.warn(
                "admin panel: refused a request for Host {host!r} from {peer} (only loopback names are served)",
                host=host.decode("latin-1"),
                peer=getattr(self.getClientAddress(), "host", "?"),
            )
            self.setResponseCode(421)
            self.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
            self.write(b"421 Misdirected Request: the admin panel answers only to 127.0.0.1, localhost and [::1]\n")
            self.finish()
            return
        super().process()


class AdminSite(ApiSite):
    """The admin listener's ``Site``: bounded like the API's, with :class:`AdminRequest`."""

    requestFactory = AdminRequest
    noisy = False  # no "Starting factory" lines

    def __init__(self, panel: AdminPanel, port: int, max_body_size: int, request_timeout: float, clock: Any = None) -> None:
        # HTML forms: the panel needs twisted.web to parse POSTed form bodies.
        super().__init__(panel.resource(), max_body_size, request_timeout, clock=clock, parsePOSTFormSubmission=True)
        self.allowed_hosts = {f"{name}:{port}".encode() for name in ("127.0.0.1", "localhost", "[::1]")}
        if port == 80:
            self.allowed_hosts |= {b"127.0.0.1", b"localhost", b"[::1]"}
