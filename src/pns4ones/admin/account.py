"""
The administrator's account: the first-run set-up (with the one-time code of
:mod:`.firstrun`), login and logout, the password, the panel's language.
"""

from __future__ import annotations

import hmac
import sys
from typing import Any

from twisted.internet.defer import inlineCallbacks

from .. import logs
from ..store import AdminAccount
from . import auth, firstrun, i18n
from .panel import LANG_COOKIE, SESSION_COOKIE, PanelBase, Redirect, app, is_local_path, peer_of


class AccountPages(PanelBase):
    """First run, login, logout, password, language."""

    @inlineCallbacks
    def prepare(self) -> Any:
        """At start: without an administrator, make and print the set-up code; with one, forget an old code file."""
        account = yield self.store.get_admin()
        if account is None:
            self.new_setup_code()
        else:
            self._forget_setup_code()

    def new_setup_code(self) -> str:
        code = self.setup_code = firstrun.new_code()
        where = f"{self.config.data_dir}/{firstrun.FILE_NAME}"
        try:
            firstrun.write_file(self.config.data_dir, code)
        except OSError as e:
            where = f"not written to the data directory: {e.strerror or e}"
        url = f"http://127.0.0.1:{self.config.admin_port}/"
        self.log.warn(
            "admin panel: no administrator yet. Open {url} on this machine and enter the one-time set-up code {code} ({where})",
            url=url,
            code=code,
            where=where,
            **{logs.ALWAYS: True},
        )
        if self.config.log_level == "None" and sys.__stderr__ is not None:  # no log: the console still gets it
            sys.__stderr__.write(f"pns4ones: admin panel set-up code {code}: open {url} and enter it\n")
        return code

    def _forget_setup_code(self) -> None:
        self.setup_code = None
        try:
            firstrun.remove_file(self.config.data_dir)
        except OSError as e:
            self.log.warn("cannot remove the old set-up code file: {error}", error=str(e))

    @app.route("/", methods=["GET"])
    @inlineCallbacks
    def index(self, request: Any) -> Any:
        yield self.require_login(request)
        raise Redirect("/apps")

    @app.route("/setup", methods=["GET", "POST"])
    @inlineCallbacks
    def setup(self, request: Any) -> Any:
        account = yield self.store.get_admin()
        if account is not None:
            raise Redirect("/login")
        if self.setup_code is None:
            self.new_setup_code()
        code_file = f"{self.config.data_dir}/{firstrun.FILE_NAME}"

        def page(status: int, error: str | None, login: str = "", code: str = "") -> bytes:
            return self.render_page(
                request,
                "setup.html",
                None,
                status=status,
                error=error,
                form_login=login,
                form_code=code,
                code_file=code_file,
                password_min=auth.PASSWORD_MIN,
            )

        if request.method == b"GET":
            return page(200, None)
        self.check_post(request, None)
        t = self.texts(request)
        code = self.form_value(request, "code", 100)
        login = self.form_value(request, "login", 1000).strip()
        password = self.form_value(request, "password", auth.PASSWORD_MAX)
        password2 = self.form_value(request, "password2", auth.PASSWORD_MAX)
        attempt = self.setup_throttle.begin(peer_of(request))
        if isinstance(attempt, auth.Refusal):
            request.setHeader(b"Retry-After", str(int(attempt.wait) + 1).encode())
            key = "error.throttled" if attempt.reason == "throttled" else "error.login_busy"
            return page(429, t(key, seconds=int(attempt.wait) + 1), login)
        if self.setup_code is None or not firstrun.matches(code, self.setup_code):
            failures = attempt.failures
            attempt.failed()
            self.log.warn("admin panel: wrong set-up code from {peer} ({failures} in a row)", peer=peer_of(request), failures=failures)
            return page(403, t("error.setup_code"), login)
        attempt.succeeded()  # the right code: what follows are form errors
        error = self._password_problem(login, password, password2)
        if error:
            return page(400, t(error, min=auth.PASSWORD_MIN, max=auth.LOGIN_MAX), login, code)
        yield self.account_lock.acquire()
        try:
            if (yield self.store.get_admin()) is not None:  # another browser was first
                raise Redirect("/login")
            encoded = yield auth.hash_password_async(password)
            account = AdminAccount(login, encoded)
            yield self.store.set_admin(account, self.clock.seconds())
        finally:
            self.account_lock.release()
        self._forget_setup_code()
        self.log.info("admin panel: administrator {login!r} created from {peer}", login=login, peer=peer_of(request))
        self.start_session(request, account)
        yield self.record_audit(request, login, "setup")
        raise Redirect("/apps")

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
                raise Redirect("/setup")
            if self.current_session(request) is not None:
                raise Redirect("/apps")
            return self.render_page(request, "login.html", None, error=None, form_login="")
        self.check_post(request, None)
        t = self.texts(request)
        peer = peer_of(request)
        login = self.form_value(request, "login", 1000).strip()
        password = self.form_value(request, "password", auth.PASSWORD_MAX)
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
            return self.render_page(request, "login.html", None, status=429, error=t(key, seconds=seconds), form_login=login)
        try:
            account = yield self.store.get_admin()
            valid = account is not None and (yield auth.verify_password_async(password, account.password_hash))
        except BaseException:
            attempt.abandoned()
            raise
        if account is None:
            attempt.abandoned()
            raise Redirect("/setup")
        if not (valid and hmac.compare_digest(login.encode("utf-8", "replace"), account.login.encode("utf-8", "replace"))):
            failures = attempt.failures
            attempt.failed()
            yield self.record_audit(request, login, "login-failed")
            self.log.warn(
                "admin panel: failed login as {login!r} from {peer} ({failures} in a row)", login=login, peer=peer, failures=failures
            )
            return self.render_page(request, "login.html", None, status=401, error=t("error.login_failed"), form_login=login)
        attempt.succeeded()
        self.log.info("admin panel: {login!r} logged in from {peer}", login=login, peer=peer)
        self.start_session(request, account)
        yield self.record_audit(request, account.login, "login")
        raise Redirect("/apps")

    def _login_refused(self, key: str, fmt: str, **fields: Any) -> None:
        """A refused login attempt's warning, rate-limited (a flood would otherwise fill the log)."""

        def emit(suppressed: int) -> None:
            more = f" ({suppressed} more like it in the last interval)" if suppressed else ""
            self.log.warn(fmt + more, **fields)

        self.login_refusals(key, emit)

    @app.route("/logout", methods=["POST"])
    @inlineCallbacks
    def logout(self, request: Any) -> Any:
        session = self.current_session(request)
        if session is None:  # already expired: nothing to end
            raise Redirect("/login")
        self.check_post(request, session)
        self.sessions.end(self.cookie(request, SESSION_COOKIE))
        self.set_cookie(request, SESSION_COOKIE, "", 0)
        yield self.record_audit(request, session.login, "logout")
        raise Redirect("/login")

    @app.route("/password", methods=["GET", "POST"])
    @inlineCallbacks
    def password(self, request: Any) -> Any:
        session = yield self.require_login(request)
        if request.method == b"GET":
            return self.render_page(request, "password.html", session, error=None, password_min=auth.PASSWORD_MIN)
        self.check_post(request, session)
        t = self.texts(request)
        current = self.form_value(request, "current", auth.PASSWORD_MAX)
        new = self.form_value(request, "password", auth.PASSWORD_MAX)
        new2 = self.form_value(request, "password2", auth.PASSWORD_MAX)
        account = yield self.store.get_admin()
        valid = account is not None and (yield auth.verify_password_async(current, account.password_hash))
        error = "error.current_password" if not valid else self._password_problem(None, new, new2)
        if error:
            return self.render_page(
                request, "password.html", session, status=400, error=t(error, min=auth.PASSWORD_MIN), password_min=auth.PASSWORD_MIN
            )
        yield self.account_lock.acquire()
        try:
            encoded = yield auth.hash_password_async(new)
            account = AdminAccount(account.login, encoded)
            yield self.store.set_admin(account, self.clock.seconds())
        finally:
            self.account_lock.release()
        self.log.info(
            "admin panel: password of {login!r} changed from {peer}; other sessions ended", login=account.login, peer=peer_of(request)
        )
        self.sessions.end_all()
        self.start_session(request, account).flash.append(("ok", t("password.changed"), ""))
        yield self.record_audit(request, account.login, "password")
        raise Redirect("/apps")

    @app.route("/lang", methods=["POST"])
    def language(self, request: Any) -> Any:
        self.check_post(request, self.current_session(request))
        lang = self.form_value(request, "lang", 10)
        if lang in i18n.LANGUAGES:
            self.set_cookie(request, LANG_COOKIE, lang, 365 * 86400)
        back = self.form_value(request, "next", 2000)
        raise Redirect(back if is_local_path(back) else "/")
