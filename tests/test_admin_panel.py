"""The admin web panel of the real ``twistd -n pns4ones`` process, driven by a real headless Chromium, plain HTTP and the CLI."""

from __future__ import annotations

import http.client
import http.server
import json
import os
import pty
import re
import select
import shutil
import socket
import sqlite3
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from twisted.trial.unittest import SkipTest, SynchronousTestCase

from pns4ones_client import Subscriber
from pns4ones_client.protocol import ClientKey, registration_frame
from pns4ones_client.web import WebSubscriber, get_ticket

from .browser import screenshot, start_chromium
from .support import ADMIN, ServerProcess, free_port, wait_for

PASSWORD = "correct horse 1"
TIMEOUT = 10
CODE = re.compile(r"set-up code ([A-Z0-9]{4}-[A-Z0-9]{4}-[A-Z0-9]{4})")


def setup_code(server: ServerProcess) -> str:
    """The one-time set-up code the server printed to its log (the latest one)."""
    return wait_for(lambda: CODE.findall(server.log())[-1:] and CODE.findall(server.log())[-1], what="the set-up code in the log")


def auth_status(server: ServerProcess, server_key: str) -> int:
    """Status of ``/auth`` on the send API for ``server_key``."""
    try:
        with urllib.request.urlopen(f"{server.url}/auth?server_key={server_key}", timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as e:
        return e.code


def token(server: ServerProcess, server_key: str) -> str:
    with urllib.request.urlopen(f"{server.url}/auth?server_key={server_key}", timeout=5) as response:
        return json.loads(response.read())["access_token"]


def send_status(server: ServerProcess, access_token: str, recipient: dict[str, str]) -> int:
    """Status of a ``/sendmessage`` with this token."""
    body = json.dumps({"Recipient": recipient, "Message": {"Topic": "t"}}).encode()
    request = urllib.request.Request(f"{server.url}/sendmessage", body, {"Authorization": f"Bearer {access_token}"})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as e:
        return e.code


def listed_apps(server: ServerProcess) -> list[dict[str, str]]:
    return json.loads(server.admin("list", "--json").stdout)


def audit_log(server: ServerProcess, *args: str) -> list[dict[str, Any]]:
    return json.loads(server.admin("audit", "--json", *args).stdout)


def metric(server: ServerProcess, name: str, **labels: str) -> float:
    """One sample of the admin listener's ``/metrics`` (0 when absent)."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{server.admin_port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return sum(
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    )


def set_password(server: ServerProcess, password: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """``pns4ones-admin panel-password`` with the password on standard input."""
    result = subprocess.run(
        [ADMIN, "--data-dir", str(server.data_dir), "panel-password", *args],
        input=password + "\n",
        capture_output=True,
        text=True,
        timeout=60,
    )
    if check and result.returncode != 0:
        raise AssertionError(f"panel-password failed ({result.returncode}): {result.stderr}")
    return result


#: Server options of particular browser tests.
SERVER_ARGS = {
    "test_groups": ["--max_group_size", "300"],
    # A closed SSE stream is noticed at the next heartbeat (twisted.web reads nothing while it answers).
    "test_live_counts_and_test_message": ["--sse_heartbeat", "0.5"],
}


@pytest.mark.browser
class PanelBrowser(SynchronousTestCase):
    """
    A fresh service and a fresh Chromium for each test, and the helpers that drive the
    panel's pages. The tests are in two classes that pytest-xdist runs side by side.
    """

    def setUp(self) -> None:
        self.server = ServerProcess(args=SERVER_ARGS.get(self._testMethodName, []))
        self.addCleanup(self.server.cleanup)
        self.server.start()
        self.base = f"http://127.0.0.1:{self.server.admin_port}"
        self.driver = start_chromium(self)
        self.driver.set_window_size(1280, 800)  # the laptop screen of the issue: results must show without scrolling
        from selenium.common.exceptions import NoAlertPresentException, WebDriverException
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support.ui import Select, WebDriverWait

        self.By, self.NoAlert, self.Select = By, NoAlertPresentException, Select
        # A page replaced mid-check (stale elements, nodes "not in the document") just means "not yet";
        # a condition that never holds still fails with a timeout naming it.
        self.wait = WebDriverWait(self.driver, TIMEOUT, poll_frequency=0.05, ignored_exceptions=(WebDriverException,))

    # -- helpers -------------------------------------------------------------------------

    def go(self, path: str) -> None:
        self.driver.get(self.base + path)

    def css(self, selector: str, root: Any = None) -> Any:
        return (root or self.driver).find_element(self.By.CSS_SELECTOR, selector)

    def all(self, selector: str, root: Any = None) -> list[Any]:
        return (root or self.driver).find_elements(self.By.CSS_SELECTOR, selector)

    def fill(self, **fields: str) -> None:
        for name, value in fields.items():
            box = self.css(f"#{name}")
            box.clear()
            box.send_keys(value)

    def fill_in(self, form: str, **fields: str) -> None:
        """Type into the named fields of a form (``form`` a CSS selector)."""
        for name, value in fields.items():
            box = self.css(f'{form} [name="{name}"]')
            box.clear()
            if value:
                box.send_keys(value)

    def value(self, selector: str) -> str:
        return self.css(selector).get_attribute("value")

    def at(self, path: str) -> None:
        self.wait.until(lambda d: d.current_url.split("?")[0].split("#")[0] == self.base + path, f"expected to be at {path}")

    def submit(self, selector: str, root: Any = None) -> None:
        """Click something that loads a new page, and wait until the old page is gone."""
        self.driver.execute_script("window.pnsOldPage = true")
        self.css(selector, root).click()
        self.page_loaded(selector)

    def page_loaded(self, what: str) -> None:
        self.wait.until(
            lambda d: d.execute_script("return window.pnsOldPage === undefined && document.readyState !== 'loading'"),
            f"a new page after {what}",
        )

    def confirm(self, selector: str, expect: str = "") -> str:
        """Click a button whose form asks for confirmation, accept it, wait for the next page; the dialog's text."""
        self.driver.execute_script("window.pnsOldPage = true")
        self.css(selector).click()
        dialog = self.alert()
        text = dialog.text
        self.assertIn(expect, text)
        dialog.accept()
        self.page_loaded(selector)
        return text

    def text(self, selector: str) -> str:
        return self.css(selector).get_attribute("textContent").strip()

    def texts(self, selector: str) -> list[str]:
        return [e.get_attribute("textContent").strip() for e in self.all(selector)]

    def flash(self) -> str:
        return " ".join(self.texts(".flash"))

    def note(self, section: str) -> str:
        """The results shown in one section of the page (beside the control that did it)."""
        return " ".join(self.texts(f'.flash[data-section="{section}"]'))

    def in_view(self, selector: str) -> bool:
        """Wholly inside the browser's viewport (no scrolling needed to read it)."""
        return bool(
            self.driver.execute_script(
                "const e = document.querySelector(arguments[0]); if (!e) return false;"
                "const r = e.getBoundingClientRect(); return r.height > 0 && r.top >= 0 && r.bottom <= window.innerHeight;",
                selector,
            )
        )

    def result(self, section: str, expect: str) -> None:
        """The result of an action: shown in its section, and in view."""
        self.wait.until(lambda d: expect in self.note(section), f"{expect!r} in section {section}")
        self.assertTrue(self.in_view(f'.flash[data-section="{section}"]'), f"the result in #{section} is out of sight")

    def watch_submits(self) -> None:
        """Record, for every form submitted on this page from now on, whether the page's script cancelled it."""
        self.driver.execute_script(
            "window.submits = []; document.addEventListener('submit', e => window.submits.push(e.defaultPrevented));"
        )

    def submits(self) -> list[bool]:
        """What watch_submits recorded, once something was (a form that went ahead navigates away: the wait fails)."""
        return list(self.wait.until(lambda d: d.execute_script("return window.submits && window.submits.length ? window.submits : null")))

    def alert(self) -> Any:
        self.wait.until(lambda d: self._alert_or_none(), "a confirmation dialog")
        return self.driver.switch_to.alert

    def _alert_or_none(self) -> Any:
        try:
            return self.driver.switch_to.alert
        except self.NoAlert:
            return None

    def clipboard(self) -> str:
        return self.driver.execute_async_script(
            "const done = arguments[0]; navigator.clipboard.readText().then(done, e => done('ERROR ' + e));"
        )

    def grant_clipboard(self) -> None:
        self.driver.execute_cdp_cmd(
            "Browser.grantPermissions", {"origin": self.base, "permissions": ["clipboardReadWrite", "clipboardSanitizedWrite"]}
        )

    def copy(self, element: str) -> str:
        """Press the Copy button of ``element``; what the clipboard holds afterwards."""
        button = self.css(f'button[data-copy="{element}"]')
        button.click()
        self.wait.until(lambda d: button.get_attribute("data-copied"), f"the copy of {element}")
        return self.clipboard()

    def setup_admin(self, login: str = "admin", password: str = PASSWORD) -> None:
        self.go("/")
        self.at("/setup")
        self.fill(code=setup_code(self.server), login=login, password=password, password2=password)
        self.submit("#submit")
        self.at("/apps")

    def login(self, login: str = "admin", password: str = PASSWORD) -> None:
        self.fill(login=login, password=password)
        self.submit("#submit")

    def create_app(self, title: str) -> str:
        """Create an application from the list page; its id (the browser is on its page)."""
        self.go("/apps")
        self.fill(**{"new-title": title})
        self.submit("#create-button")
        self.wait.until(lambda d: "создано" in self.flash() or "created" in self.flash(), "the creation message")
        return self.css("#overview").get_attribute("data-app-id")

    def logout(self) -> None:
        self.submit("#logout")
        self.at("/login")

    def app_page(self, app_id: str, suffix: str = "") -> None:
        self.go(f"/apps/{app_id}{suffix}")

    def subscribe(self, app: dict[str, str], ib: str, user: str, transport: str = "tcp") -> Any:
        """A real subscriber: the add-in's TCP protocol, or WebSocket / SSE with a ticket."""
        before = self.server.log().count("subscription registered")
        if transport == "tcp":
            sub = Subscriber("127.0.0.1", self.server.service_port, app["id"], app["client_key"], ib, user, "", timeout=5).connect()
            self.addCleanup(sub.close)
            wait_for(lambda: self.server.log().count("subscription registered") > before, what=f"the registration of {user}")
            return sub
        ticket = get_ticket(self.server.url, token(self.server, app["server_key"]), ib, user)
        sub = WebSubscriber(self.server.url, ticket, transport, timeout=5).connect()
        self.addCleanup(sub.close)
        return sub

    def app_of(self, app_id: str) -> dict[str, str]:
        return next(a for a in listed_apps(self.server) if a["id"] == app_id)

    def send_test(self, ib: str, kind: str, target: str, title: str, body: str = "", ttl: str = "") -> None:
        self.fill_in("#send-form", ib=ib, target=target, title=title, body=body, ttl=ttl)
        self.Select(self.css('#send-form select[name="type"]')).select_by_value(kind)
        self.submit("#send-form button.send-button")


@pytest.mark.browser
class PanelBrowserTests(PanelBrowser):
    """Pages in Chromium: first run, login, password, language, cross-site posts, applications and their 1C settings."""

    # -- first run, login, password, language -----------------------------------------------------

    def test_first_run_login_logout(self) -> None:
        """First visit needs the logged set-up code (a wrong one refused, input kept) to create the administrator; then login, logout."""
        code_file = self.server.data_dir / "panel-setup-code"
        code = setup_code(self.server)
        self.assertEqual(code_file.read_text().strip(), code)
        self.assertEqual(code_file.stat().st_mode & 0o777, 0o600)
        self.go("/apps")
        self.at("/setup")
        self.assertEqual(self.driver.find_element(self.By.TAG_NAME, "html").get_attribute("lang"), "ru")
        self.assertIn(str(code_file), self.text("#code-hint"))
        screenshot(self.driver, "01-setup")
        self.fill(code="AAAA-BBBB-CCCC", login="admin", password=PASSWORD, password2=PASSWORD)
        self.submit("#submit")
        self.wait.until(lambda d: "Неверный код установки" in self.text("#error"))
        self.assertEqual(self.value("#login"), "admin")
        self.assertIn("wrong set-up code", self.server.log())
        screenshot(self.driver, "02-setup-wrong-code")
        self.fill(code=code.lower().replace("-", " "), login="admin", password=PASSWORD, password2=PASSWORD + "x")
        self.submit("#submit")
        self.wait.until(lambda d: "Пароли не совпадают" in self.text("#error"))
        self.assertEqual(self.value("#code"), code.lower().replace("-", " "))  # kept: only the passwords are typed again
        self.fill(password="short", password2="short")
        self.driver.execute_script("for (const e of document.querySelectorAll('input')) e.removeAttribute('minlength')")
        self.submit("#submit")
        self.wait.until(lambda d: "не короче 8" in self.text("#error"))
        self.fill(password=PASSWORD, password2=PASSWORD)
        self.submit("#submit")
        self.at("/apps")
        self.assertIn("Приложений пока нет", self.text("#no-apps"))
        self.assertFalse(code_file.exists(), "the set-up code is spent")
        screenshot(self.driver, "03-apps-empty")

        cookie = self.driver.get_cookie("pns4ones_session")
        self.assertTrue(cookie["httpOnly"])
        self.assertEqual(cookie["sameSite"], "Strict")
        self.assertGreater(cookie["expiry"], time.time() + 3600)
        self.assertNotIn(cookie["value"], self.driver.current_url)
        self.assertNotIn(cookie["value"], self.driver.page_source)

        self.go("/setup")  # the administrator exists: no second setup
        self.at("/apps")
        self.logout()
        self.go("/setup")
        self.at("/login")
        screenshot(self.driver, "04-login")
        self.driver.add_cookie({"name": "pns4ones_session", "value": cookie["value"], "path": "/"})
        self.go("/apps")  # the old cookie no longer opens a session
        self.at("/login")

        self.login(password=PASSWORD + "!")
        self.wait.until(lambda d: "Неверный логин или пароль" in self.text("#error"))
        screenshot(self.driver, "05-login-failed")
        self.login(login="root")
        self.wait.until(lambda d: "Неверный логин или пароль" in self.text("#error"))
        self.login()
        self.at("/apps")
        self.assertNotEqual(self.driver.get_cookie("pns4ones_session")["value"], cookie["value"])
        actions = [e["action"] for e in audit_log(self.server)]
        self.assertEqual(actions, ["login", "login-failed", "login-failed", "logout", "setup"])

    def test_change_password(self) -> None:
        """Change password checks the current one and the repetition; afterwards only the new password logs in."""
        self.setup_admin()
        self.submit("#nav-password")
        self.at("/password")
        screenshot(self.driver, "10-password")
        new = "new password 22"
        self.fill(current="wrong one 123", password=new, password2=new)
        self.submit("#submit")
        self.wait.until(lambda d: "Текущий пароль указан неверно" in self.text("#error"))
        self.fill(current=PASSWORD, password=new, password2=new + "3")
        self.submit("#submit")
        self.wait.until(lambda d: "Пароли не совпадают" in self.text("#error"))
        self.fill(current=PASSWORD, password=new, password2=new)
        self.submit("#submit")
        self.at("/apps")
        self.assertIn("Пароль изменён", self.flash())
        self.logout()
        self.login(password=PASSWORD)
        self.wait.until(lambda d: "Неверный логин или пароль" in self.text("#error"))
        self.login(password=new)
        self.at("/apps")

    def test_cli_password_ends_sessions(self) -> None:
        """pns4ones-admin panel-password ends the open panel session: its live poll and its next page go to the login; the new password works."""
        self.setup_admin()
        self.go("/apps")
        new = "reset by the CLI 1"
        set_password(self.server, new)
        self.wait.until(lambda d: d.current_url.startswith(self.base + "/login"), "the poll to notice the ended session")
        self.go("/status")
        self.at("/login")
        self.login(password=PASSWORD)
        self.wait.until(lambda d: "Неверный логин или пароль" in self.text("#error"))
        self.login(password=new)
        self.at("/apps")
        [entry] = [e for e in audit_log(self.server) if e["action"] == "panel-password"]
        self.assertEqual((entry["source"], entry["detail"]), ("cli", {"login": "admin", "created": False}))

    def test_language_switch(self) -> None:
        """Russian by default; the EN switch translates every page (the current one stays) and is remembered in a cookie."""
        self.go("/setup")
        self.assertEqual(self.text("h1"), "Создание администратора")
        self.submit("#lang-en")
        self.wait.until(lambda d: self.text("h1") == "Create the administrator")
        self.assertEqual(self.driver.get_cookie("pns4ones_lang")["value"], "en")
        self.fill(code=setup_code(self.server), login="admin", password=PASSWORD, password2=PASSWORD)
        self.submit("#submit")
        self.at("/apps")
        self.assertEqual(self.text("h1"), "Applications")
        app_id = self.create_app("Shop")
        self.assertIn("Application “Shop” created.", self.flash())
        self.assertEqual(self.driver.find_element(self.By.TAG_NAME, "html").get_attribute("lang"), "en")
        self.assertEqual(self.text("#settings h2"), "Settings for 1C")
        self.assertIn("Application ID", self.texts("#settings th"))
        screenshot(self.driver, "11-app-en")
        for path, heading in (("/groups", "Groups"), ("/kept", "Kept messages")):
            self.app_page(app_id, path)
            self.assertEqual(self.text("h1"), heading)
        self.go("/status")
        self.assertEqual(self.text("h1"), "Status")
        self.go("/audit")
        self.assertEqual(self.text("h1"), "Audit log")
        self.assertIn("created an application", self.texts("#audit-log td"))
        self.app_page(app_id, "/groups")
        self.submit("#lang-ru")
        self.at(f"/apps/{app_id}/groups")
        self.wait.until(lambda d: self.text("h1") == "Группы")
        self.assertEqual(self.driver.get_cookie("pns4ones_lang")["value"], "ru")

    def test_cross_site_post_refused(self) -> None:
        """A form on another origin posting to the panel (the browser sends the session cookie) is refused: no CSRF token."""
        self.setup_admin()
        port = free_port()
        target = f"{self.base}/apps"
        page = (
            f'<!doctype html><form id="f" method="post" action="{target}"><input name="title" value="planted by evil"></form>'
            '<script>document.getElementById("f").submit()</script>'
        ).encode()

        class Evil(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "text/html")
                self.send_header("Content-Length", str(len(page)))
                self.end_headers()
                self.wfile.write(page)

            def log_message(self, *args: Any) -> None:
                pass

        evil = http.server.ThreadingHTTPServer(("127.0.0.1", port), Evil)
        threading.Thread(target=evil.serve_forever, daemon=True).start()
        self.addCleanup(evil.server_close)
        self.addCleanup(evil.shutdown)
        self.driver.get(f"http://127.0.0.1:{port}/")
        self.wait.until(lambda d: d.current_url.startswith(self.base), "the forged form to be submitted")
        self.wait.until(lambda d: "Запрос отклонён" in self.text("#error"))
        screenshot(self.driver, "12-csrf-refused")
        self.assertEqual(listed_apps(self.server), [])
        self.assertIn("refused POST /apps", self.server.log())
        self.go("/apps")  # still logged in, nothing planted
        self.at("/apps")
        self.assertNotIn("planted by evil", self.driver.page_source)

    # -- applications ------------------------------------------------------------------------------

    def test_applications_create_copy_rotate_reset_rename_delete(self) -> None:
        """Create (refusals beside the form, input kept), copy the id from the list, rotate keys, reset tokens, rename, delete: each result in view."""
        self.setup_admin()
        self.fill(**{"new-title": "   "})
        self.submit("#create-button")
        self.result("create", "Укажите название приложения")
        long_title = "Ы" * 201
        self.driver.execute_script("document.getElementById('new-title').removeAttribute('maxlength')")
        self.fill(**{"new-title": long_title})
        self.submit("#create-button")
        self.result("create", "длиннее 200")
        self.assertEqual(self.value("#new-title"), long_title)  # what was typed comes back
        screenshot(self.driver, "06-create-refused")
        self.assertEqual(listed_apps(self.server), [])

        app_id = self.create_app("Магазин «Ромашка»")
        self.at(f"/apps/{app_id}")
        self.assertIn("Приложение «Магазин «Ромашка»» создано", self.flash())
        self.assertTrue(self.in_view(".flash.ok"))
        cli = self.app_of(app_id)
        self.assertEqual((cli["title"], self.text("#app-title"), self.text("#app-id")), ("Магазин «Ромашка»", "Магазин «Ромашка»", app_id))

        # The list: the id is copied (and selected) without opening or leaving anything.
        self.grant_clipboard()
        self.go("/apps")
        self.assertEqual(self.text("#app-id-1"), app_id)
        self.css("#app-id-1").click()
        self.at("/apps")
        self.assertEqual(self.copy("app-id-1"), app_id)
        self.assertIn("Скопировано", self.text("#apps .copy-status"))
        screenshot(self.driver, "07-apps-list")
        self.submit("a.app-title")
        self.at(f"/apps/{app_id}")

        # Rotate the server key: the old one stops working at once; the result shows in the settings block.
        self.assertEqual(auth_status(self.server, cli["server_key"]), 200)
        self.confirm("form.rotate-server button", "Магазин «Ромашка»")
        self.result("settings", "Ключ сервера приложения «Магазин «Ромашка»» обновлён")
        new_server_key = self.text("#set-server-key")
        self.assertNotEqual(new_server_key, cli["server_key"])
        self.assertEqual(auth_status(self.server, cli["server_key"]), 401)
        screenshot(self.driver, "08-rotated-in-view")

        # Reset tokens: a token that worked stops working; the count is reported.
        access = token(self.server, new_server_key)
        self.assertEqual(send_status(self.server, access, {"Type": "all", "IbId": "ib1"}), 200)
        self.confirm("form.reset-tokens button", "/auth")
        self.result("settings", "отозвано 1")
        self.assertEqual(send_status(self.server, access, {"Type": "all", "IbId": "ib1"}), 401)

        # Rotate the client key: the warning says sessions are cut, and they are.
        sub = self.subscribe(cli, "ib1", "u1")
        self.app_page(app_id)
        self.watch_submits()
        self.css("form.rotate-client button").click()
        dialog = self.alert()
        self.assertIn("будут отключены", dialog.text)
        self.assertIn("сейчас: 1", dialog.text)
        dialog.dismiss()  # cancelled: nothing changes
        self.assertEqual(self.submits(), [True], "the cancelled form was not sent")
        self.assertEqual(self.text("#set-client-key"), cli["client_key"])
        self.assertEqual(self.app_of(app_id)["client_key"], cli["client_key"])
        self.confirm("form.rotate-client button")
        self.result("settings", "Ключ клиента")
        self.assertNotEqual(self.text("#set-client-key"), cli["client_key"])
        self.assertTrue(sub.wait_closed(5), "the subscription with the old client key was not ended")
        self.assertEqual(self.app_of(app_id)["client_key"], self.text("#set-client-key"))

        # Rename: refused keeps the input; done shows beside the form.
        self.fill(**{"rename-title": "  "})
        self.submit("#rename-button")
        self.result("manage", "Укажите название приложения")
        self.assertEqual(self.value("#rename-title"), "  ")
        self.fill(**{"rename-title": "Ромашка 2"})
        self.submit("#rename-button")
        self.result("manage", "«Магазин «Ромашка»» переименовано в «Ромашка 2»")
        self.assertEqual((self.text("#app-title"), self.app_of(app_id)["title"]), ("Ромашка 2", "Ромашка 2"))
        screenshot(self.driver, "09-renamed")

        # Delete: the confirmation names the application; cancel keeps it.
        self.watch_submits()
        self.css("form.delete button").click()
        dialog = self.alert()
        self.assertIn("Удалить приложение «Ромашка 2»", dialog.text)
        dialog.dismiss()
        self.assertEqual(self.submits(), [True], "the cancelled form was not sent")
        self.assertEqual(len(listed_apps(self.server)), 1)
        self.confirm("form.delete button")
        self.at("/apps")
        self.wait.until(lambda d: "удалено" in self.flash())
        self.assertEqual(self.all("li.app"), [])
        self.assertEqual(listed_apps(self.server), [])
        self.assertEqual(auth_status(self.server, new_server_key), 401)
        self.go(f"/apps/{app_id}")
        self.wait.until(lambda d: "Такого приложения нет" in self.text("#error"))
        actions = [(e["action"], e["source"], e["actor"]) for e in audit_log(self.server)][:6]
        self.assertEqual(
            actions,
            [(a, "panel", "admin") for a in ("delete", "rename", "rotate-client", "reset-tokens", "rotate-server", "create")],
        )

    def test_settings_for_1c(self) -> None:
        """The 1C settings block has every value of the stock extension's form, each copied exactly; the server's address can be set."""
        self.setup_admin()
        app_id = self.create_app("Учёт")
        cli = self.app_of(app_id)
        api, service = self.server.api_port, self.server.service_port
        expected = {
            "set-app-id": app_id,
            "set-send-address": f"localhost:{api}",  # the test server listens on 127.0.0.1
            "set-server-key": cli["server_key"],
            "set-receive-address": f"localhost:{service}",
            "set-client-key": cli["client_key"],
            "set-api-url": f"http://localhost:{api}/",
            "set-ws-url": f"ws://localhost:{api}/subscribe/ws",
            "set-sse-url": f"http://localhost:{api}/subscribe/sse",
        }
        labels = self.texts("#settings th[scope=row]")
        for label in (
            "Использовать сервис уведомлений",
            "ID приложения",
            "Адрес сервера",
            "Ключ сервера",
            "Использовать защищенное соединение",
            "Ключ клиента",
        ):
            self.assertIn(label, labels)
        self.assertEqual(self.texts("#settings tr.group-head th")[:2], ["Сервер отправления уведомлений", "Сервер приема уведомлений"])
        self.assertIn("Нет", self.text("#set-secure"))
        self.grant_clipboard()
        for element, value in expected.items():
            self.assertEqual(self.text(f"#{element}"), value)
            self.assertEqual(self.copy(element), value, element)
        screenshot(self.driver, "13-settings-for-1c")

        self.fill(host="pns.example.local")
        self.submit("#host-apply")
        self.assertTrue(self.in_view("#set-send-address"), "the settings block is scrolled into view")
        self.assertEqual(self.text("#set-send-address"), f"pns.example.local:{api}")
        self.assertEqual(self.text("#set-receive-address"), f"pns.example.local:{service}")
        self.assertEqual(self.copy("set-ws-url"), f"ws://pns.example.local:{api}/subscribe/ws")
        self.fill(host="<script>alert(1)</script>")
        self.submit("#host-apply")
        self.assertIn("не имя хоста", self.text("#host-error"))
        self.assertEqual(self.text("#set-send-address"), f"localhost:{api}")
        self.assertIsNone(self._alert_or_none())


@pytest.mark.browser
class PanelBrowserLiveTests(PanelBrowser):
    """Pages in Chromium: live counts and test messages, groups, kept messages, hostile text, status, audit, online."""

    # -- live counts, groups, kept messages ----------------------------------------------------------

    def test_live_counts_and_test_message(self) -> None:
        """Add-in, WebSocket and SSE subscribers show live by transport and base; a test message reaches them, its result in view, counted as a send."""
        self.setup_admin()
        app_id = self.create_app("Учёт")
        app = self.app_of(app_id)
        badge = f'[data-app-count="{app_id}"]'
        self.assertEqual(self.text(badge), "0")

        addins = [self.subscribe(app, "ib1", "u1"), self.subscribe(app, "ib1", "u1")]
        ws = self.subscribe(app, "ib1", "u1", "ws")
        sse = self.subscribe(app, "ib2", "u2", "sse")
        self.wait.until(lambda d: self.text(badge) == "4", "the live count to reach 4")
        self.wait.until(lambda d: [self.text(f'[data-app-transport="{t}"]') for t in ("tcp", "ws", "sse")] == ["2", "1", "1"])
        self.assertEqual(self.texts(f'[data-app-ibs="{app_id}"] li'), ["ib1: 3", "ib2: 1"])
        screenshot(self.driver, "14-live-counts")
        self.go("/apps")
        self.wait.until(lambda d: self.text("#total-count") == "4")
        self.app_page(app_id)

        self.send_test("ib1", "user", "u1", "Проверка <b>связи</b>", 'Текст "в кавычках" 🚀')
        self.result("send", "Получили подписок: 3 (пользователей: 1)")
        self.assertEqual(
            (self.value('#send-form [name="ib"]'), self.value('#send-form [name="target"]'), self.value('#send-form [name="title"]')),
            ("ib1", "u1", "Проверка <b>связи</b>"),
        )  # the form keeps what was sent: send again, or change one field
        screenshot(self.driver, "15-test-message-sent")
        note = {"title": "Проверка <b>связи</b>", "body": 'Текст "в кавычках" 🚀', "important": False}
        for sub in addins:
            self.assertEqual(sub.receive(5), {"notification": note})
        self.assertEqual(ws.messages(1)[0]["notification"], note)
        with self.assertRaises(TimeoutError):
            sse.messages(1, timeout=0.3)
        self.assertIn("admin panel: test message app=" + app_id, self.server.log())

        # Counted as a send, like /sendmessage, and as the panel's.
        self.assertEqual(metric(self.server, "pns4ones_messages_sent_total", application=app_id, recipient_type="user"), 1)
        self.assertEqual(metric(self.server, "pns4ones_panel_test_messages_total", application=app_id), 1)
        self.assertEqual(json.loads(self.server.admin("status", "--json").stdout)["totals"]["sends"], 1)

        # Refused: the missing field is named beside the form, and what was typed stays.
        self.Select(self.css('#send-form select[name="type"]')).select_by_value("group")
        self.driver.execute_script("document.querySelector('#send-form input[name=ib]').removeAttribute('required')")
        self.fill_in("#send-form", ib="", target="Менеджеры")
        self.submit("#send-form button.send-button")
        self.result("send", "заполните поле «Информационная база (IbId)»")
        self.assertEqual(self.value('#send-form [name="target"]'), "Менеджеры")
        self.assertEqual(self.Select(self.css('#send-form select[name="type"]')).first_selected_option.get_attribute("value"), "group")
        screenshot(self.driver, "16-test-message-refused")
        self.send_test("ib2", "all", "", "Всем")
        self.result("send", "Получили подписок: 1 (пользователей: 1)")
        self.assertEqual(sse.messages(1)[0]["notification"]["title"], "Всем")

        for sub in (*addins, ws, sse):
            sub.close()
        self.wait.until(lambda d: self.text(badge) == "0", "the live count to fall to 0")
        self.assertIn("Сейчас нет подключённых сеансов", self.text(f'[data-app-ibs="{app_id}"]'))

    def test_groups(self) -> None:
        """Groups: create with members (refusals beside the form, input kept), a group send reaches a member, page, search, remove."""
        self.setup_admin()
        app_id = self.create_app("Склад")
        app = self.app_of(app_id)
        self.submit("#tab-groups")
        self.at(f"/apps/{app_id}/groups")
        self.assertIn("Групп нет", self.text("#no-groups"))
        self.fill_in("#group-add", ib="ib1", group="Кладовщики", members="")
        self.submit("#group-add-button")
        self.result("add", "Укажите хотя бы один идентификатор")
        self.assertEqual((self.value('#group-add [name="ib"]'), self.value('#group-add [name="group"]')), ("ib1", "Кладовщики"))
        self.fill_in("#group-add", members="u1\nu2\nu2\n u3 \n")
        self.submit("#group-add-button")
        self.at(f"/apps/{app_id}/group")
        self.result("members", "добавлено 3 из 3")
        self.assertEqual(self.texts("#member-list .user-id"), ["u1", "u2", "u3"])
        self.fill_in("#group-add", members="u3\nu4")
        self.submit("#group-add-button")
        self.result("members", "добавлено 1 из 2")
        screenshot(self.driver, "17-group")
        members = json.loads(self.server.admin("group_members", app_id, "ib1", "Кладовщики", "--json").stdout)["UserIds"]
        self.assertEqual(members, ["u1", "u2", "u3", "u4"])

        # The group routes: a send to it reaches the connected member.
        sub = self.subscribe(app, "ib1", "u4")
        other = self.subscribe(app, "ib1", "u9")
        self.app_page(app_id)
        self.send_test("ib1", "group", "Кладовщики", "Инвентаризация")
        self.result("send", "Получили подписок: 1 (пользователей: 1)")
        self.assertEqual(sub.receive(5)["notification"]["title"], "Инвентаризация")
        self.assertIsNone(other.receive(0.3))

        self.app_page(app_id, "/group?" + urllib.parse.urlencode({"ib": "ib1", "name": "Кладовщики"}))
        self.confirm('tr[data-user="u4"] form.remove-member button', "u4")
        self.result("members", "«u4» исключён из группы «Кладовщики»")
        self.assertEqual(self.texts("#member-list .user-id"), ["u1", "u2", "u3"])

        # Many members: pages and search; over max_group_size (300 here): refused, input kept.
        self.app_page(app_id, "/groups")
        many = "\n".join(f"u{n:03d}" for n in range(250))
        self.fill_in("#group-add", ib="ib2", group="Все", members=many)
        self.submit("#group-add-button")
        self.result("members", "добавлено 250 из 250")
        self.assertEqual(len(self.all("#member-list tbody tr")), 100)
        self.assertIn("страница 1 из 3", self.text(".pager"))
        self.submit(".pager a.next")
        self.assertEqual(self.texts("#member-list .user-id")[0], "u100")
        self.fill_in("form.filter", q="u24")
        self.submit("form.filter button")
        self.assertEqual(self.texts("#member-list .user-id"), [f"u24{n}" for n in range(10)])
        more = "\n".join(f"x{n:03d}" for n in range(60))
        self.fill_in("#group-add", members=more)
        self.submit("#group-add-button")
        self.result("add", "max_group_size")
        self.assertEqual(self.value('#group-add [name="members"]').split("\n"), more.split("\n"))
        screenshot(self.driver, "18-group-refused")

        self.app_page(app_id, "/groups")
        self.assertEqual(self.texts("#groups .group-link"), ["Кладовщики", "Все"])
        self.fill_in("#groups-filter", ib="ib2")
        self.submit("#groups-filter button")
        self.assertEqual(self.texts("#groups .group-link"), ["Все"])
        self.confirm('tr[data-group="Все"] form.remove-group button', "250")
        self.result("list", "Группа «Все» удалена (участников: 250)")
        self.assertIn("Групп нет", self.text("#no-groups"))
        self.assertIn("Кладовщики", self.server.admin("groups", app_id).stdout)
        self.assertNotIn("Все", self.server.admin("groups", app_id).stdout)
        actions = [e["action"] for e in audit_log(self.server)]
        self.assertEqual(actions[:6], ["group-remove", "group-add", "group-remove-member", "send-test", "group-add", "group-add"])

    def test_kept_messages(self) -> None:
        """Kept messages per recipient and per user (age, expiry, title), withdrawn for one user or deleted; the user then gets the rest."""
        self.setup_admin()
        app_id = self.create_app("Отложенные")
        app = self.app_of(app_id)
        self.submit("#tab-groups")
        self.fill_in("#group-add", ib="ib1", group="sales", members="u9\nu7")
        self.submit("#group-add-button")
        self.app_page(app_id)
        for kind, target, title in (
            ("user", "u9", "первое"), ("user", "u9", "второе"), ("group", "sales", "группе"), ("all", "", "всем"), ("user", "u8", "другому"),
        ):  # fmt: skip
            self.send_test("ib1", kind, target, title, ttl="600")
            self.result("send", "сохранено для неподключённых")
        self.submit("#tab-kept")
        rows = [(r.get_attribute("data-type"), r.get_attribute("data-target")) for r in self.all("#kept-targets tbody tr")]
        self.assertEqual(rows, [("all", ""), ("group", "sales"), ("user", "u8"), ("user", "u9")])
        self.assertEqual(self.text('tr[data-target="u9"] td.num'), "2")
        self.assertIn("через 9 мин", self.text('tr[data-target="u9"]'))
        screenshot(self.driver, "19-kept")

        self.fill_in("#kept-lookup", ib="ib1", user="u9")
        self.submit("#kept-lookup-button")
        self.at(f"/apps/{app_id}/kept/user")
        self.assertEqual(self.texts("#kept-messages .message-title"), ["первое", "второе", "группе", "всем"])
        self.assertIn("Ожидают: 4", self.text("#messages"))
        screenshot(self.driver, "20-kept-user")
        first = self.all("#kept-messages tbody tr")[0].get_attribute("data-id")
        self.confirm(f'tr[data-id="{first}"] form.kept-withdraw button', "u9")
        self.result("messages", "Отозвано для «u9»: 1")
        self.assertEqual(self.texts("#kept-messages .message-title"), ["второе", "группе", "всем"])

        self.submit("#tab-kept")
        self.confirm('tr[data-target="u8"] form.kept-delete button', "1")
        self.result("list", "Удалено сохранённых сообщений: 1")

        u9 = self.subscribe(app, "ib1", "u9")
        got = [u9.receive(5) for _ in range(3)]
        self.assertEqual([m["notification"]["title"] for m in got], ["второе", "группе", "всем"])
        self.assertIsNone(u9.receive(0.3))
        u7 = self.subscribe(app, "ib1", "u7")  # the group's and everyone's are still there for the others
        self.assertEqual([u7.receive(5)["notification"]["title"] for _ in range(2)], ["группе", "всем"])
        u8 = self.subscribe(app, "ib1", "u8")
        self.assertEqual(u8.receive(5)["notification"]["title"], "всем")
        self.assertIsNone(u8.receive(0.3))
        self.app_page(app_id, "/kept/user?ib=ib1&user=u9")
        self.assertIn("ничего не ожидает", self.text("#no-kept"))

    def test_hostile_text_is_text(self) -> None:
        """Markup in titles, group names, user ids, information bases and message titles shows as text on every page; no script runs."""
        self.setup_admin()
        evil = "<img src=x onerror=alert(1)><script>alert(2)</script>\"'&"
        app_id = self.create_app(evil)
        self.assertEqual(self.text("#app-title"), evil)
        app = self.app_of(app_id)
        self.submit("#tab-groups")
        group, user, ib = "<img src=g onerror=alert(3)>", "<svg onload=alert(4)>", "<b>ib</b>"
        self.fill_in("#group-add", ib=ib, group=group, members=f"{user}\nu2")
        self.submit("#group-add-button")
        self.result("members", group)
        self.assertEqual(self.text("#group-name"), group)
        self.assertEqual(self.texts("#member-list .user-id"), [user, "u2"])
        self.css(f'tr[data-user="{user}"] form.remove-member button').click()
        dialog = self.alert()
        self.assertIn(user, dialog.text)
        dialog.dismiss()
        self.app_page(app_id, "/groups")
        self.assertEqual(self.texts("#groups .group-link"), [group])
        self.app_page(app_id)
        self.send_test(ib, "user", user, "<img src=t onerror=alert(5)>", ttl="60")
        self.result("send", "сохранено")
        self.app_page(app_id, "/kept")
        self.assertIn(user, self.text("#kept-targets"))
        self.submit("#kept-targets a.user-link")
        self.assertEqual(self.texts("#kept-messages .message-title"), ["<img src=t onerror=alert(5)>"])
        sub = self.subscribe(app, ib, user)
        self.assertEqual(sub.receive(5)["notification"]["title"], "<img src=t onerror=alert(5)>")
        self.go("/audit")
        self.assertIn(group, self.text("#audit-log"))
        self.assertIn(evil, self.text("#audit-log"))
        self.go("/status")
        self.assertIn(evil, self.text("#status-apps"))
        for path in ("/audit", "/status", f"/apps/{app_id}", f"/apps/{app_id}/groups", f"/apps/{app_id}/kept", "/apps"):
            self.go(path)
            self.assertEqual(self.all("main img, main script, main svg"), [], path)
            self.assertIsNone(self._alert_or_none(), path)
        self.assertIn("&lt;img src=x onerror=alert(1)&gt;", self.driver.page_source)
        screenshot(self.driver, "21-hostile-text")
        self.app_page(app_id)
        self.css("form.delete button").click()
        dialog = self.alert()
        self.assertIn(f"«{evil}»", dialog.text)
        dialog.dismiss()

    # -- status and audit --------------------------------------------------------------------------

    def test_status_page(self) -> None:
        """The status page shows version, uptime, listeners, store, hub, sends, deliveries and refusals, and follows them live."""
        self.setup_admin()
        app_id = self.create_app("Магазин")
        app = self.app_of(app_id)
        sub = self.subscribe(app, "ib1", "u1")
        wrong = ClientKey(bytes(32), bytes(16))
        with socket.create_connection(("127.0.0.1", self.server.service_port), timeout=5) as s:
            s.sendall(registration_frame(wrong, app_id, "ib1", "mallory", ""))
            try:
                s.recv(100)
            except ConnectionResetError:
                pass
        access = token(self.server, app["server_key"])
        for _ in range(2):
            self.assertEqual(send_status(self.server, access, {"Type": "user", "IbId": "ib1", "UserId": "u1"}), 200)
        self.app_page(app_id)
        self.send_test("ib1", "user", "u1", "из панели")
        self.result("send", "Получили подписок: 1")
        self.submit("#nav-status")
        self.at("/status")
        from pns4ones import __version__

        self.assertEqual(self.text("#fig-version"), __version__)
        self.assertIn("готов", self.text("#fig-ready"))
        self.assertEqual(self.text("#fig-subscriptions"), "1")
        self.assertEqual(self.text("#fig-sends"), "3")
        self.assertEqual(self.text("#fig-deliveries"), "3")
        self.assertEqual(self.text("#fig-panel-messages"), "1")
        self.assertTrue(self.text("#fig-sends-minute").startswith("3 "))
        self.assertEqual(self.text("#fig-accepted"), "1")
        self.assertIn("bad-signature: 1", self.text("#fig-rejected"))
        self.assertEqual(self.text("#fig-cut-slow"), "0")
        self.assertIn("200: 3", self.text("#fig-http"))
        self.assertIn("pns4ones.db", self.text("#fig-store"))
        self.assertIn("доступно", self.text("#fig-store"))
        self.assertIn("в этом процессе", self.text("#fig-hub"))
        listeners = self.texts("#status-listeners td code")
        for port in (self.server.api_port, self.server.service_port, self.server.admin_port):
            self.assertIn(f"127.0.0.1:{port}", listeners)
        self.assertIn("Магазин", self.text("#status-apps"))
        screenshot(self.driver, "22-status")

        # Live: new sends show without a reload.
        self.driver.execute_script("window.pnsOldPage = true")
        for _ in range(2):
            send_status(self.server, access, {"Type": "all", "IbId": "ib1"})
        self.wait.until(lambda d: self.text("#fig-sends") == "5", "the live figures to follow")
        self.assertTrue(self.driver.execute_script("return window.pnsOldPage === true"), "the page was reloaded")
        self.assertEqual(sub.receive(5)["topic"], "t")

    def test_audit_page(self) -> None:
        """The audit log shows panel actions (login, address) and CLI ones (OS user), translated, newest first, paged."""
        self.setup_admin()
        app_id = self.create_app("Журнал")
        self.server.admin("reset_token", app_id)
        self.app_page(app_id)
        self.fill(**{"rename-title": "Журнал 2"})
        self.submit("#rename-button")
        self.submit("#nav-audit")
        self.at("/audit")
        rows = self.all("#audit-log tbody tr")
        self.assertEqual([r.get_attribute("data-action") for r in rows], ["rename", "reset-tokens", "create", "setup"])
        rename, reset = rows[0].get_attribute("textContent"), rows[1].get_attribute("textContent")
        for text in ("панель", "admin", "127.0.0.1", "переименовано приложение", "Журнал 2", "old: Журнал"):
            self.assertIn(text, rename)
        import pwd

        for text in ("командная строка", pwd.getpwuid(os.getuid()).pw_name, "local", "сброшены ключи доступа", "count: 0"):
            self.assertIn(text, reset)
        screenshot(self.driver, "23-audit")

        with sqlite3.connect(self.server.data_dir / "pns4ones.db") as db:  # many records at once, for the pages
            db.executemany(
                "INSERT INTO audit_log (at, actor, source, address, action) VALUES (?, 'admin', 'panel', '127.0.0.1', ?)",
                [(time.time(), f"bulk-{n}") for n in range(120)],
            )
        self.go("/audit")
        self.assertEqual(len(self.all("#audit-log tbody tr")), 50)
        self.assertIn("страница 1 из 3 (всего 124)", self.text(".pager"))
        self.assertEqual(self.all("#audit-log tbody tr")[0].get_attribute("data-action"), "bulk-119")
        self.submit(".pager a.next")
        self.submit(".pager a.next")
        self.assertEqual(
            [r.get_attribute("data-action") for r in self.all("#audit-log tbody tr")][-4:], ["rename", "reset-tokens", "create", "setup"]
        )

    # -- online --------------------------------------------------------------------------------------

    def cell(self, row: Any, selector: str) -> str:
        return self.css(selector, row).get_attribute("textContent").strip()

    def online(self) -> list[tuple[str, str, str]]:
        """The Online view's rows as shown: (user, information base, transport)."""
        return [(self.cell(r, ".user-id"), self.cell(r, ".ib"), self.cell(r, ".transport")) for r in self.all("#online-rows tr")]

    def test_online_view(self) -> None:
        """Online: add-in, WebSocket and SSE sessions listed, live-updated and searched; a session and a user disconnected (the dialogs say who comes back), audited; hostile ids stay text."""
        import socket as sockets

        self.setup_admin()
        app_id = self.create_app("Кто в сети")
        app = self.app_of(app_id)
        addins = [self.subscribe(app, "ib1", "u1"), self.subscribe(app, "ib1", "u1")]
        ws = self.subscribe(app, "ib1", "u1", "ws")
        self.subscribe(app, "ib2", "u2", "sse")
        self.submit("#nav-online")
        self.at("/online")
        addin = "компонента 1С"
        u1 = [("u1", "ib1", addin), ("u1", "ib1", addin), ("u1", "ib1", "WebSocket")]
        self.wait.until(lambda d: self.online() == [*u1, ("u2", "ib2", "SSE")], "the four sessions")
        self.assertEqual((self.text("#online-users"), self.text("#online-sessions")), ("2", "4"))
        rows = self.all("#online-rows tr")
        self.assertEqual({self.cell(r, ".peer") for r in rows}, {"127.0.0.1"})
        self.assertEqual({self.cell(r, ".node") for r in rows}, {f"{sockets.gethostname()}:{self.server.api_port}"})
        self.assertTrue(all(re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", self.cell(r, ".since")) for r in rows))
        self.assertEqual([len(self.all("form.disconnect-user", r)) for r in rows], [1, 0, 0, 0])  # on the user's first row

        # Live: new sessions show without a reload (rows made by the script from the JSON).
        self.driver.execute_script("window.pnsOldPage = true")
        evil = "<img src=x onerror=alert(1)>{session}"
        hostile = self.subscribe(app, "ib1", evil)
        late = self.subscribe(app, "ib1", "u3")
        self.wait.until(lambda d: self.online() == [(evil, "ib1", addin), *u1, ("u2", "ib2", "SSE"), ("u3", "ib1", addin)], "two more")
        self.assertEqual((self.text("#online-users"), self.text("#online-sessions")), ("4", "6"))
        self.assertTrue(self.driver.execute_script("return window.pnsOldPage === true"), "the page was reloaded")
        self.assertEqual(self.text("#online-rows form.disconnect-user button"), "Все сеансы пользователя (3)")
        screenshot(self.driver, "24-online")

        # Hostile ids are text, in the list and in the dialog; the dialogs say who comes back by itself.
        self.assertEqual(self.all("main img, main script"), [])
        self.css(f'#online-rows tr[data-user="{evil}"] form.disconnect-session button').click()
        dialog = self.alert()
        self.assertIn(f"пользователя «{evil}» (компонента 1С)", dialog.text)
        self.assertIn("перезапустит 1С", dialog.text)
        dialog.dismiss()
        self.css('#online-rows tr[data-transport="sse"] form.disconnect-session button').click()
        dialog = self.alert()
        self.assertIn("(SSE)? Клиент получит событие end и подключится снова, если так написан его код", dialog.text)
        dialog.dismiss()
        self.assertIsNone(hostile.receive(0.2))
        self.assertFalse(hostile.closed_by_server)

        # A session (its row made by the script): the add-in's connection ends.
        text = self.confirm('#online-rows tr[data-user="u3"] form.disconnect-session button', "«u3»")
        self.assertIn("сама не подключится снова", text)
        self.result("sessions", "пользователя «u3» (компонента 1С) отключён")
        self.assertTrue(late.wait_closed(5), "the add-in's connection is still open")
        self.assertNotIn("u3", [row[0] for row in self.online()])

        # Live: a session that leaves disappears.
        self.driver.execute_script("window.pnsOldPage = true")
        addins[1].close()
        self.wait.until(lambda d: [r for r in self.online() if r[0] == "u1"] == [u1[0], u1[2]], "the closed session to go")
        self.wait.until(lambda d: self.text("#online-rows form.disconnect-user button") == "Все сеансы пользователя (2)")
        self.assertTrue(self.driver.execute_script("return window.pnsOldPage === true"), "the page was reloaded")

        # A user: every session of u1 on this node (the add-in and the WebSocket) ends.
        text = self.confirm("#online-rows form.disconnect-user button", "«u1»")
        self.assertIn("пользователю придётся перезапустить 1С", text)
        self.assertIn("WebSocket и SSE подключатся снова", text)
        self.result("sessions", "Отключено сеансов пользователя «u1»: 2.")
        self.assertTrue(addins[0].wait_closed(5))
        events = []
        with self.assertRaises(EOFError):
            while True:
                events.append(ws.receive(5))
        self.assertIn({"event": "end", "reason": "disconnected by the administrator"}, events)
        self.assertEqual(self.online(), [(evil, "ib1", addin), ("u2", "ib2", "SSE")])
        screenshot(self.driver, "25-online-disconnected")

        # Search by part of the user id, any case; nothing found says so.
        self.fill(**{"online-q": "U2"})
        self.submit("#online-show")
        self.assertEqual(self.online(), [("u2", "ib2", "SSE")])
        self.assertEqual((self.text("#online-users"), self.text("#online-sessions")), ("1", "1"))
        screenshot(self.driver, "26-online-search")
        self.fill(**{"online-q": "nobody"})
        self.submit("#online-show")
        self.assertIn("Нет сеансов пользователей с таким идентификатором", self.text("#online-empty"))
        self.assertEqual(self.all("#online-rows tr"), [])

        self.submit("#nav-audit")
        rows = self.all("#audit-log tbody tr")[:2]
        self.assertEqual([r.get_attribute("data-action") for r in rows], ["disconnect-user", "disconnect"])
        for text in ("отключены сеансы пользователя", "user: u1", "sessions: 2"):
            self.assertIn(text, rows[0].get_attribute("textContent"))
        for text in ("отключён сеанс", "user: u3", "transport: tcp"):
            self.assertIn(text, rows[1].get_attribute("textContent"))
        self.assertIsNone(self._alert_or_none())


class PanelClient:
    """A minimal cookie-keeping HTTP client for the panel (stdlib only, loopback; ``source``: the loopback address it connects from)."""

    def __init__(self, port: int, host: str = "127.0.0.1", source: str | None = None, timeout: float = 10) -> None:
        self.port = port
        self.host = host
        self.source = source
        self.timeout = timeout
        self.cookies: dict[str, str] = {}

    def request(
        self, method: str, path: str, form: dict[str, str] | None = None, headers: dict[str, str] | None = None
    ) -> tuple[int, Any, str]:
        source = (self.source, 0) if self.source is not None else None
        conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout, source_address=source)
        try:
            hdrs = {"Host": f"127.0.0.1:{self.port}", **(headers or {})}
            if self.cookies:
                hdrs["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
            body = None
            if form is not None:
                body = urllib.parse.urlencode(form).encode()
                hdrs["Content-Type"] = "application/x-www-form-urlencoded"
            conn.request(method, path, body=body, headers=hdrs)
            response = conn.getresponse()
            text = response.read().decode("utf-8")
            for line in response.headers.get_all("Set-Cookie") or []:
                name, _, rest = line.partition("=")
                value = rest.split(";", 1)[0]
                if "Max-Age=0" in line:
                    self.cookies.pop(name, None)
                else:
                    self.cookies[name] = value
            return response.status, response.headers, text
        finally:
            conn.close()

    def csrf(self, path: str) -> str:
        status, _, page = self.request("GET", path)
        assert status == 200, (status, page)
        return re.search(r'name="csrf" value="([^"]+)"', page).group(1)

    def setup(self, code: str, password: str = PASSWORD) -> None:
        token = self.csrf("/setup")
        form = {"csrf": token, "code": code, "login": "admin", "password": password, "password2": password}
        status, headers, _ = self.request("POST", "/setup", form)
        assert status == 303 and headers["Location"] == "/apps", status

    def login(self, password: str, token: str | None = None) -> int:
        """POST /login as admin (with ``token``, or a fresh CSRF token); the status."""
        token = token or self.csrf("/login")
        return self.request("POST", "/login", {"csrf": token, "login": "admin", "password": password})[0]

    def post(self, path: str, form: dict[str, str]) -> tuple[int, str]:
        """POST with this session's CSRF token; (status, Location)."""
        status, headers, _ = self.request("POST", path, {"csrf": self.csrf("/apps"), **form})
        return status, headers.get("Location", "")


class PanelHttpTests(SynchronousTestCase):
    """The panel over plain HTTP: listeners, headers, Host check, set-up code, CSRF on every form, throttling, sessions."""

    def setUp(self) -> None:
        self.server = ServerProcess()
        self.addCleanup(self.server.cleanup)
        self.server.start()
        self.client = PanelClient(self.server.admin_port)

    def test_listens_on_loopback_only(self) -> None:
        """The server process's listening sockets on the admin port are 127.0.0.1 and (when the host has it) ::1, nothing else."""
        pid = self.server.proc.pid
        inodes = set()
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if link.startswith("socket:["):
                inodes.add(link[8:-1])
        found = []
        for table, family in (("/proc/net/tcp", socket.AF_INET), ("/proc/net/tcp6", socket.AF_INET6)):
            if not os.path.exists(table):
                continue
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                local, state, inode = fields[1], fields[3], fields[9]
                if state != "0A" or inode not in inodes:  # 0A = LISTEN
                    continue
                hex_addr, hex_port = local.split(":")
                raw = bytes.fromhex(hex_addr)
                # /proc prints the address as 32-bit words in host (little-endian) order.
                raw = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
                found.append((socket.inet_ntop(family, raw), int(hex_port, 16)))
        admin = sorted(addr for addr, port in found if port == self.server.admin_port)
        has_ipv6_loopback = (
            any(line.split()[0] == "0" * 31 + "1" for line in Path("/proc/net/if_inet6").read_text().splitlines())
            if os.path.exists("/proc/net/if_inet6")
            else False
        )
        self.assertEqual(admin, ["127.0.0.1", "::1"] if has_ipv6_loopback else ["127.0.0.1"])
        self.assertIn(("127.0.0.1", self.server.api_port), found)  # the table was read right
        for host in ["127.0.0.1"] + (["::1"] if has_ipv6_loopback else []):
            status, _, _ = PanelClient(self.server.admin_port, host).request("GET", "/setup")
            self.assertEqual(status, 200, host)

    def test_headers_and_host_check(self) -> None:
        """Every answer carries CSP without inline script, X-Frame-Options DENY and no-store; a foreign Host is refused (DNS rebinding)."""
        for path in ("/setup", "/static/admin.js", "/nowhere"):
            status, headers, _ = self.client.request("GET", path)
            csp = headers["Content-Security-Policy"]
            self.assertIn("script-src 'self'", csp)
            self.assertNotIn("unsafe-inline", csp)
            self.assertIn("frame-ancestors 'none'", csp)
            self.assertEqual(headers["X-Frame-Options"], "DENY")
            self.assertEqual(headers["X-Content-Type-Options"], "nosniff")
        self.assertEqual(self.client.request("GET", "/nowhere")[0], 404)
        status, headers, _ = self.client.request("GET", "/setup")
        self.assertEqual(headers["Cache-Control"], "no-store")
        for host in ("evil.example", f"evil.example:{self.server.admin_port}", "127.0.0.1:1"):
            status, _, _ = self.client.request("GET", "/setup", headers={"Host": host})
            self.assertEqual(status, 421, host)
        self.assertIn("refused a request for Host", self.server.log())
        self.assertEqual(self.client.request("GET", "/setup", headers={"Host": f"localhost:{self.server.admin_port}"})[0], 200)
        for path in ("/counts.json", "/status/live"):
            self.assertEqual(self.client.request("GET", path)[0], 401, path)
        for path in ("/apps", "/status", "/audit", "/apps/x/groups"):
            status, headers, _ = self.client.request("GET", path)
            self.assertEqual((status, headers["Location"]), (303, "/setup"), path)

    def test_setup_code_required(self) -> None:
        """Creating the administrator needs the logged code: wrong ones are refused and throttled; a restart makes a new code."""
        first = setup_code(self.server)
        self.server.restart()
        code = wait_for(lambda: setup_code(self.server) != first and setup_code(self.server), what="a new set-up code after the restart")
        self.assertNotEqual(code, first)
        token = self.client.csrf("/setup")
        form = {"csrf": token, "login": "admin", "password": PASSWORD, "password2": PASSWORD}
        for wrong in (first, "", "AAAA-BBBB-CCCC", code[:-1]):
            status, _, body = self.client.request("POST", "/setup", {**form, "code": wrong})
            self.assertEqual(status, 403, wrong)
            self.assertIn("Неверный код установки", body)
        status, _, body = self.client.request("POST", "/setup", {**form, "code": "AAAA-BBBB-CCCD"})
        self.assertEqual(status, 403)
        status, headers, body = self.client.request(
            "POST", "/setup", {**form, "code": code}
        )  # throttled after 5 failures: even the right code waits
        self.assertEqual((status, headers["Retry-After"]), (429, "1"))
        with sqlite3.connect(self.server.data_dir / "pns4ones.db") as db:
            self.assertIsNone(db.execute("SELECT login FROM admin_account").fetchone())
        self.assertEqual(audit_log(self.server), [])
        time.sleep(1.1)
        status, headers, _ = self.client.request("POST", "/setup", {**form, "code": code})
        self.assertEqual((status, headers["Location"]), (303, "/apps"))
        self.assertFalse((self.server.data_dir / "panel-setup-code").exists())
        self.assertEqual(self.client.request("GET", "/apps")[0], 200)
        [entry] = audit_log(self.server)
        self.assertEqual((entry["action"], entry["actor"], entry["source"], entry["address"]), ("setup", "admin", "panel", "127.0.0.1"))

    def test_csrf_token_required(self) -> None:
        """Every form of the panel, posted without the token, with a wrong one or from a foreign Origin, is 403 and changes nothing."""
        status, _, _ = self.client.request(
            "POST", "/setup", {"code": setup_code(self.server), "login": "evil", "password": PASSWORD, "password2": PASSWORD}
        )
        self.assertEqual(status, 403)  # even the first-run setup needs the token
        self.client.setup(setup_code(self.server))
        self.assertEqual(self.client.post("/apps", {"title": "Shop"})[0], 303)
        [app] = listed_apps(self.server)
        a = app["id"]
        self.assertEqual(self.client.post(f"/apps/{a}/groups/add", {"ib": "ib1", "group": "g", "members": "u1\nu2"})[0], 303)
        self.assertEqual(
            self.client.post(f"/apps/{a}/send", {"ib": "ib1", "type": "user", "target": "u1", "title": "x", "ttl": "600"})[0], 303
        )
        forms = {
            "/apps": {"title": "x"},
            f"/apps/{a}/rotate-server": {},
            f"/apps/{a}/rotate-client": {},
            f"/apps/{a}/reset-tokens": {},
            f"/apps/{a}/rename": {"title": "renamed"},
            f"/apps/{a}/send": {"ib": "ib1", "type": "all", "title": "x"},
            f"/apps/{a}/groups/add": {"ib": "ib1", "group": "g", "members": "u3"},
            f"/apps/{a}/groups/remove-member": {"ib": "ib1", "group": "g", "user": "u1"},
            f"/apps/{a}/groups/remove": {"ib": "ib1", "group": "g"},
            f"/apps/{a}/kept/withdraw": {"ib": "ib1", "user": "u1"},
            f"/apps/{a}/kept/delete": {"ib": "ib1", "type": "user", "target": "u1"},
            f"/apps/{a}/delete": {},
            "/password": {"current": PASSWORD, "password": "x" * 12, "password2": "x" * 12},
            "/logout": {},
        }
        token = self.client.csrf("/apps")
        before = (listed_apps(self.server), self.server.admin("group_members", a, "ib1", "g").stdout, audit_log(self.server))
        for path, fields in forms.items():
            for form, headers in (
                (fields, {}),
                ({**fields, "csrf": token[:-1] + ("A" if token[-1] != "A" else "B")}, {}),
                ({**fields, "csrf": token}, {"Origin": "http://127.0.0.1:1"}),
                ({**fields, "csrf": token}, {"Sec-Fetch-Site": "cross-site"}),
            ):
                status, _, body = self.client.request("POST", path, form, headers)
                self.assertEqual(status, 403, (path, form, headers))
                self.assertIn("Запрос отклонён", body)
            self.assertIn(f"refused POST {path}", self.server.log())
        after = (listed_apps(self.server), self.server.admin("group_members", a, "ib1", "g").stdout, audit_log(self.server))
        self.assertEqual(after, before)
        status, page = self.client.request("GET", f"/apps/{a}/kept")[::2]
        self.assertIn('data-target="u1"', page)  # the kept message is still there
        self.assertEqual(self.client.request("GET", "/apps")[0], 200)  # and the session too
        status, headers, _ = self.client.request(
            "POST", "/apps", {"title": "ok", "csrf": token}, {"Origin": f"http://127.0.0.1:{self.server.admin_port}"}
        )
        self.assertEqual(status, 303)
        self.assertEqual([x["title"] for x in listed_apps(self.server)], ["Shop", "ok"])
        counts = json.loads(self.client.request("GET", "/counts.json")[2])
        self.assertEqual(counts, {"total": 0, "apps": {}})

    def test_failed_logins_throttled(self) -> None:
        """After five failed logins even the right password waits (429, Retry-After); then it works again."""
        self.client.setup(setup_code(self.server))
        self.client.cookies.pop("pns4ones_session")
        token = self.client.csrf("/login")
        for _ in range(5):
            status, _, body = self.client.request("POST", "/login", {"csrf": token, "login": "admin", "password": "wrong password"})
            self.assertEqual(status, 401)
        status, headers, body = self.client.request("POST", "/login", {"csrf": token, "login": "admin", "password": PASSWORD})
        self.assertEqual(status, 429)
        self.assertEqual(headers["Retry-After"], "1")
        self.assertIn("Слишком много неудачных попыток", body)
        self.assertIn("throttled", self.server.log())
        time.sleep(1.1)
        status, headers, _ = self.client.request("POST", "/login", {"csrf": token, "login": "admin", "password": PASSWORD})
        self.assertEqual((status, headers["Location"]), (303, "/apps"))

    def test_password_stored_as_argon2id(self) -> None:
        """The administrator's password is kept only as an Argon2id PHC string (19 MiB, 2 passes, 1 lane) with its own salt."""
        self.client.setup(setup_code(self.server))
        with sqlite3.connect(self.server.data_dir / "pns4ones.db") as db:
            (encoded,) = db.execute("SELECT password_hash FROM admin_account").fetchone()
        self.assertTrue(encoded.startswith("$argon2id$v=19$m=19456,t=2,p=1$"), encoded)
        self.assertNotIn(PASSWORD, encoded)

    def test_cli_password_ends_every_session(self) -> None:
        """panel-password ends every open panel session at its next request (pages, polls); only the new password logs in."""
        self.client.setup(setup_code(self.server))
        other = PanelClient(self.server.admin_port)
        other.cookies = dict(self.client.cookies)  # a second tab: the same session
        self.assertEqual(self.client.request("GET", "/apps")[0], 200)
        set_password(self.server, "reset by the CLI 1")
        status, headers, _ = self.client.request("GET", "/apps")
        self.assertEqual((status, headers["Location"]), (303, "/login"))
        self.assertEqual(other.request("GET", "/counts.json")[0], 401)
        self.assertEqual(other.request("GET", "/status")[0], 303)
        self.assertIn("the password has changed", self.server.log())
        token = self.client.csrf("/login")
        self.assertEqual(self.client.request("POST", "/login", {"csrf": token, "login": "admin", "password": PASSWORD})[0], 401)
        status, headers, _ = self.client.request("POST", "/login", {"csrf": token, "login": "admin", "password": "reset by the CLI 1"})
        self.assertEqual((status, headers["Location"]), (303, "/apps"))


class PanelOnlineHttpTests(SynchronousTestCase):
    """The Online view over plain HTTP with real add-in subscribers: paging and search on the server, the JSON refresh, disconnecting behind CSRF."""

    def setUp(self) -> None:
        self.server = ServerProcess()
        self.addCleanup(self.server.cleanup)
        self.server.start()
        self.client = PanelClient(self.server.admin_port)
        self.client.setup(setup_code(self.server))
        self.assertEqual(self.client.post("/apps", {"title": "Online"})[0], 303)  # the panel reloads the core: no wait for the store's poll
        [self.app] = listed_apps(self.server)
        self.sockets: list[socket.socket] = []
        self.addCleanup(lambda: [s.close() for s in self.sockets])

    def connect(self, ib: str, users: list[str]) -> None:
        """Raw add-in registrations (nothing is read: no message is sent to them)."""
        key = ClientKey.decode(self.app["client_key"])
        for user in users:
            sock = socket.create_connection(("127.0.0.1", self.server.service_port), timeout=5)
            sock.sendall(registration_frame(key, self.app["id"], ib, user, ""))
            self.sockets.append(sock)

    def live(self, **query: str) -> dict[str, Any]:
        status, headers, text = self.client.request("GET", "/online.json?" + urllib.parse.urlencode({"app": self.app["id"], **query}))
        self.assertEqual((status, headers["Content-Type"]), (200, "application/json"), text)
        return json.loads(text)

    def test_paging_search_and_refresh(self) -> None:
        """250 sessions: the page and each refresh carry 100 rows at most, with totals; search by part of the id in any case; a page past the end shows the last."""
        self.connect("ib1", [f"u{n:03}" for n in range(230)])
        self.connect("ib2", [f"v{n:02}" for n in range(20)])
        wait_for(lambda: self.live()["sessions"] == 250, what="250 sessions")
        status, _, page = self.client.request("GET", f"/online?app={self.app['id']}")
        self.assertEqual(status, 200)
        self.assertEqual(len(re.findall(r'<tr data-user="[^"]', page)), 100)  # and the empty row <template>
        self.assertIn('<b id="online-users">250</b>', page)
        self.assertIn("страница 1 из 3 (всего 250)", page)
        first = self.live()
        self.assertEqual([r["user"] for r in first["rows"]], [f"u{n:03}" for n in range(100)])
        self.assertLess(len(json.dumps(first)), 40_000)
        last = self.live(page="3")
        self.assertEqual((last["page"], last["pages"], len(last["rows"]), last["next"]), (3, 3, 50, None))
        self.assertEqual(last["previous"], f"/online?app={self.app['id']}&page=2")
        self.assertEqual([r["user"] for r in last["rows"]][-20:], [f"v{n:02}" for n in range(20)])
        self.assertEqual(self.live(page="99")["page"], 3)
        found = self.live(q="U01")
        self.assertEqual(([r["user"] for r in found["rows"]], found["sessions"], found["users"]), ([f"u01{n}" for n in range(10)], 10, 10))
        ib2 = self.live(ib="ib2")
        self.assertEqual((ib2["sessions"], {r["ib"] for r in ib2["rows"]}), (20, {"ib2"}))
        self.assertEqual(self.live(ib="ib2", q="nobody")["rows"], [])
        row = first["rows"][0]
        self.assertEqual((row["transport"], row["peer"], row["remote"], row["delivered"]), ("tcp", "127.0.0.1", False, 0))
        for s in self.sockets[:30]:
            s.close()
        wait_for(lambda: self.live()["sessions"] == 220, what="the closed sessions to go")
        self.assertEqual(self.live()["rows"][0]["user"], "u030")
        # Without a panel session: no data, the page goes to the login.
        other = PanelClient(self.server.admin_port)
        self.assertEqual(other.request("GET", f"/online.json?app={self.app['id']}")[0], 401)
        self.assertEqual(other.request("GET", "/online")[1]["Location"], "/login")
        self.assertEqual(self.client.request("GET", "/online.json?app=nope")[0], 404)
        self.assertIn("Такого приложения нет", self.client.request("GET", "/online?app=nope")[2])

    def test_disconnect_needs_the_token(self) -> None:
        """A session's Delivered counts what it received; disconnect without the CSRF token, with a wrong one or from another origin: 403 and the session stays; with it, the connection ends, logged, counted, audited."""
        sub = Subscriber("127.0.0.1", self.server.service_port, self.app["id"], self.app["client_key"], "ib1", "u1", timeout=5).connect()
        self.addCleanup(sub.close)
        [row] = wait_for(lambda: self.live()["rows"], what="the session")
        self.assertEqual(row["delivered"], 0)
        for title in ("one", "two"):
            self.assertEqual(
                self.client.post(f"/apps/{self.app['id']}/send", {"ib": "ib1", "type": "user", "target": "u1", "title": title})[0], 303
            )
            self.assertIsNotNone(sub.receive(5), title)
        self.assertEqual([r["delivered"] for r in self.live()["rows"]], [2])
        form = {"app": self.app["id"], "ib": "ib1", "user": "u1", "session": row["session"], "back": "/online?q=u"}
        token = self.client.csrf("/online")
        for fields, headers in (
            (form, {}),
            ({**form, "csrf": token[:-1] + ("A" if token[-1] != "A" else "B")}, {}),
            ({**form, "csrf": token}, {"Origin": "http://127.0.0.1:1"}),
            ({**form, "csrf": token}, {"Sec-Fetch-Site": "cross-site"}),
            ({"app": self.app["id"], "ib": "ib1", "user": "u1"}, {}),
        ):
            status, _, body = self.client.request("POST", "/online/disconnect", fields, headers)
            self.assertEqual(status, 403, (fields, headers))
            self.assertIn("Запрос отклонён", body)
        self.assertIn("refused POST /online/disconnect", self.server.log())
        self.assertIsNone(sub.receive(0.3))
        self.assertFalse(sub.closed_by_server)
        self.assertEqual(len(self.live()["rows"]), 1)
        self.assertEqual(audit_log(self.server, "--limit", "1")[0]["action"], "send-test")  # nothing from the refused ones

        status, headers, _ = self.client.request("POST", "/online/disconnect", {**form, "csrf": token})
        self.assertEqual((status, headers["Location"]), (303, "/online?q=u#sessions"))
        self.assertTrue(sub.wait_closed(5))
        self.assertIn(
            f"ended subscription {row['session']} of 127.0.0.1 (app={self.app['id']} ib=ib1 user=u1 transport=tcp): disconnected by the administrator",
            self.server.log(),
        )
        self.assertEqual(metric(self.server, "pns4ones_subscriptions_cut_total", reason="admin"), 1)
        [entry] = audit_log(self.server, "--limit", "1")
        self.assertEqual(
            (entry["action"], entry["app_id"], entry["actor"], entry["address"]), ("disconnect", self.app["id"], "admin", "127.0.0.1")
        )
        self.assertEqual(entry["detail"], {"ib": "ib1", "user": "u1", "session": row["session"], "transport": "tcp"})
        page = self.client.request("GET", "/online?q=u")[2]
        self.assertIn(f"Сеанс {row['session']} пользователя «u1» (компонента 1С) отключён.", page)
        self.assertIn('data-section="sessions"', page)
        # Once more: nothing left to end, and the page says so; a foreign "back" is not followed; nothing changed, nothing audited.
        status, headers, _ = self.client.request("POST", "/online/disconnect", {**form, "back": "https://evil.example/", "csrf": token})
        self.assertEqual((status, headers["Location"]), (303, f"/online?app={self.app['id']}&ib=ib1#sessions"))
        self.assertIn("уже нет: ничего не отключено", self.client.request("GET", headers["Location"].split("#")[0])[2])
        self.assertEqual(audit_log(self.server, "--limit", "1"), [entry])


class PanelNodesTests(SynchronousTestCase):
    """Two nodes on one store and a Redis hub: each node's status page sees both; a CLI password reset ends the sessions of both."""

    def setUp(self) -> None:
        from .redis_support import SKIP, RedisServer

        if SKIP:
            raise SkipTest(SKIP)
        redis = RedisServer().start()
        self.addCleanup(redis.cleanup)
        store = Path(tempfile.mkdtemp(prefix="pns4ones-nodes-")) / "pns.db"
        self.addCleanup(shutil.rmtree, store.parent, True)
        ini = f"store = sqlite://{store}\nhub = {redis.url}\nstore_poll_interval = 0.1\n"
        ini += f"secrets_key_file = {store.parent}/secrets.key\n"  # nodes sharing a store share its key file
        self.nodes = [ServerProcess(ini=ini, args=["--node_name", name]) for name in ("A", "B")]
        for node in self.nodes:
            self.addCleanup(node.cleanup)
            node.start()
        for node in self.nodes:
            wait_for(lambda node=node: "hub: connected to Redis" in node.log(), 10, what="the hub connection")

    def test_status_and_sessions_across_nodes(self) -> None:
        """Status on each node: hub connected, 2 nodes, its own name; panel-password ends the sessions opened on either node."""
        a, b = (PanelClient(node.admin_port) for node in self.nodes)
        a.setup(setup_code(self.nodes[0]))
        status, headers, _ = b.request("GET", "/setup")  # the administrator exists in the shared store
        self.assertEqual((status, headers["Location"]), (303, "/login"))
        token = b.csrf("/login")
        self.assertEqual(b.request("POST", "/login", {"csrf": token, "login": "admin", "password": PASSWORD})[0], 303)
        for client, name in ((a, "A"), (b, "B")):
            page = wait_for(
                lambda client=client: (text := client.request("GET", "/status")[2]) and "2 (этот: " in text and text,
                what="two nodes in the status",
            )
            figure = re.search(r'id="fig-nodes">([^<]*)<', page).group(1)
            self.assertIn(f"2 (этот: {name})", figure)
            self.assertIn("подключена", re.search(r'id="fig-hub">(.*?)</dd>', page, re.S).group(1))
            self.assertIn("redis://127.0.0.1:", page)
        set_password(self.nodes[1], "reset on node B 1", "--config", str(self.nodes[1].ini))
        for client in (a, b):
            status, headers, _ = client.request("GET", "/apps")
            self.assertEqual((status, headers["Location"]), (303, "/login"))

    def test_online_across_nodes(self) -> None:
        """A node's Online view lists the other node's sessions of a base with that node's name (no button); disconnecting a user ends this node's sessions only and names the node of the rest."""
        a, b = (PanelClient(node.admin_port) for node in self.nodes)
        a.setup(setup_code(self.nodes[0]))
        token = b.csrf("/login")
        self.assertEqual(b.request("POST", "/login", {"csrf": token, "login": "admin", "password": PASSWORD})[0], 303)
        self.assertEqual(a.post("/apps", {"title": "Nodes"})[0], 303)
        [app] = json.loads(self.nodes[0].admin("list", "--json", "--config", str(self.nodes[0].ini)).stdout)
        wait_for(lambda: b.request("GET", f"/online.json?app={app['id']}")[0] == 200, what="node B to know the application")

        def subscribe(node: ServerProcess, user: str) -> Subscriber:
            sub = Subscriber("127.0.0.1", node.service_port, app["id"], app["client_key"], "ib1", user, timeout=5).connect()
            self.addCleanup(sub.close)
            return sub

        here, there = subscribe(self.nodes[0], "u1"), [subscribe(self.nodes[1], "u1"), subscribe(self.nodes[1], "u2")]

        def live(**query: str) -> dict[str, Any]:
            return json.loads(a.request("GET", "/online.json?" + urllib.parse.urlencode({"app": app["id"], **query}))[2])

        found = wait_for(lambda: (doc := live(ib="ib1")) and doc["remote"] == 2 and doc["sessions"] == 3 and doc, what="B's sessions on A")
        self.assertEqual(found["users"], 2)
        rows = [(r["user"], r["node"], r["transport"], r["remote"], r["peer"], r["delivered"]) for r in found["rows"]]
        self.assertEqual(
            rows, [("u1", "A", "tcp", False, "127.0.0.1", 0), ("u1", "B", "remote", True, "", None), ("u2", "B", "remote", True, "", None)]
        )
        page = a.request("GET", f"/online?app={app['id']}&ib=ib1")[2]
        self.assertEqual(page.count('class="inline disconnect-session"'), 2)  # A's row, and the row <template>
        self.assertEqual(page.count("отключается в панели узла B"), 2)
        self.assertIn('<b id="online-remote">2</b>', page)
        every = live()  # every base: this node's sessions only (presence is kept per base), and the page says so
        self.assertEqual((every["sessions"], every["remote"]), (1, 0))
        self.assertIn('id="online-nodes-hint"', a.request("GET", f"/online?app={app['id']}")[2])

        status, headers, _ = a.request(
            "POST", "/online/disconnect", {"csrf": a.csrf("/online"), "app": app["id"], "ib": "ib1", "user": "u1"}
        )
        self.assertEqual(status, 303)
        self.assertTrue(here.wait_closed(5))
        self.assertIn("У пользователя «u1» остались сеансы на других узлах (1: B)", a.request("GET", headers["Location"].split("#")[0])[2])
        self.assertIsNone(there[0].receive(0.3))
        self.assertFalse(there[0].closed_by_server)
        wait_for(lambda: live(ib="ib1")["sessions"] == 2, what="A's session to go")


class PanelCliTests(SynchronousTestCase):
    """pns4ones-admin audit and panel-password against a real server's data directory."""

    def setUp(self) -> None:
        self.server = ServerProcess()
        self.addCleanup(self.server.cleanup)
        self.server.start()

    def admin(self, *args: str, env: dict[str, str] | None = None, stdin: str = "") -> subprocess.CompletedProcess[str]:
        clean = {k: v for k, v in os.environ.items() if k not in ("SSH_CONNECTION", "SUDO_USER")}
        return subprocess.run(
            [ADMIN, "--data-dir", str(self.server.data_dir), *args],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=60,
            env={**clean, **(env or {})},
        )

    def test_audit_command(self) -> None:
        """CLI changes are recorded with the OS user and where from; audit lists them newest first (text and --json, --limit)."""
        import pwd

        created = json.loads(self.admin("create", "Склад «Юг»", "--json").stdout)
        a = created["id"]
        for command in ("upd_srv_key", "upd_cli_key", "reset_token"):
            self.assertEqual(self.admin(command, a).returncode, 0)
        self.admin("export", str(self.server.dir / "dump.json"))
        self.assertEqual(self.admin("remove", a, env={"SSH_CONNECTION": "10.1.2.3 50000 10.0.0.1 22"}).returncode, 0)
        self.admin("list")  # reading changes nothing: not recorded
        entries = json.loads(self.admin("audit", "--json").stdout)
        me = pwd.getpwuid(os.getuid()).pw_name
        self.assertEqual(
            [(e["action"], e["app_id"]) for e in entries],
            [("delete", a), ("export", ""), ("reset-tokens", a), ("rotate-client", a), ("rotate-server", a), ("create", a)],
        )
        self.assertEqual({(e["actor"], e["source"]) for e in entries}, {(me, "cli")})
        self.assertEqual(entries[0]["address"], "ssh 10.1.2.3")
        self.assertTrue(all(e["address"].startswith("local") for e in entries[1:]))
        self.assertEqual(entries[-1]["detail"], {"title": "Склад «Юг»"})
        self.assertEqual(entries[2]["detail"], {"count": 0})
        self.assertGreater(entries[0]["at"], time.time() - 60)
        self.assertEqual([e["action"] for e in json.loads(self.admin("audit", "--json", "--limit", "2").stdout)], ["delete", "export"])
        text = self.admin("audit", "--limit", "3").stdout
        lines = text.splitlines()
        self.assertEqual(len(lines), 4)
        self.assertIn(f"cli:{me} from ssh 10.1.2.3  delete app={a}  title: Склад «Юг»", lines[0])
        self.assertIn("(3 of 6 records; --limit N for more)", lines[3])
        bad = self.admin("audit", "--limit", "0")
        self.assertEqual(bad.returncode, 1)
        self.assertIn("--limit must be from 1", bad.stderr)

    def test_panel_password_command(self) -> None:
        """panel-password reads the password from standard input (never an argument), creates or updates the administrator, checks length."""
        code_file = self.server.data_dir / "panel-setup-code"
        wait_for(code_file.exists, what="the set-up code file")
        short = set_password(self.server, "short", check=False)
        self.assertEqual(short.returncode, 1)
        self.assertIn("at least 8 characters", short.stderr)
        self.assertEqual(self.admin("panel-password", "a password on the command line").returncode, 2)
        self.assertEqual(self.admin("panel-password", "--login", "", stdin=PASSWORD + "\n").returncode, 1)
        with sqlite3.connect(self.server.data_dir / "pns4ones.db") as db:
            self.assertIsNone(db.execute("SELECT login FROM admin_account").fetchone())
        done = set_password(self.server, PASSWORD)
        self.assertIn("Created the panel administrator 'admin'", done.stdout)
        self.assertFalse(code_file.exists())
        client = PanelClient(self.server.admin_port)
        status, headers, _ = client.request("GET", "/setup")  # no first-run page any more
        self.assertEqual((status, headers["Location"]), (303, "/login"))
        token = client.csrf("/login")
        self.assertEqual(client.request("POST", "/login", {"csrf": token, "login": "admin", "password": PASSWORD})[0], 303)
        renamed = json.loads(set_password(self.server, "another one 2", "--login", "root", "--json").stdout)
        self.assertEqual(renamed, {"login": "root", "created": False, "sessions_ended": True})
        self.assertEqual(client.request("GET", "/apps")[1]["Location"], "/login")  # the session has ended
        token = client.csrf("/login")
        self.assertEqual(client.request("POST", "/login", {"csrf": token, "login": "root", "password": "another one 2"})[0], 303)
        self.assertEqual([e["action"] for e in audit_log(self.server)], ["login", "panel-password", "login", "panel-password"])

    def test_panel_password_prompts_on_a_terminal(self) -> None:
        """On a terminal, panel-password asks twice without echo; different answers change nothing."""

        def run(first: str, second: str) -> tuple[int, str]:
            pid, fd = pty.fork()
            if pid == 0:  # the child: its controlling terminal is the pty
                try:
                    os.execv(ADMIN, [ADMIN, "--data-dir", str(self.server.data_dir), "panel-password"])
                finally:
                    os._exit(127)
            output = b""

            def expect(prompt: bytes) -> None:
                nonlocal output
                deadline = time.monotonic() + 30
                while prompt not in output:
                    ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
                    if not ready:
                        raise AssertionError(f"no {prompt!r} prompt; got {output!r}")
                    output += os.read(fd, 1024)

            expect(b"New admin panel password: ")
            os.write(fd, first.encode() + b"\n")
            expect(b"The same again: ")
            os.write(fd, second.encode() + b"\n")
            while True:
                try:
                    chunk = os.read(fd, 1024)
                except OSError:  # EIO: the child has gone
                    break
                if not chunk:
                    break
                output += chunk
            os.close(fd)
            _, status = os.waitpid(pid, 0)
            return os.waitstatus_to_exitcode(status), output.decode(errors="replace")

        code, output = run("typed twice 1", "typed twice 2")
        self.assertEqual(code, 1, output)
        self.assertIn("the two passwords differ", output)
        code, output = run("typed twice 1", "typed twice 1")
        self.assertEqual(code, 0, output)
        self.assertNotIn("typed twice", output)  # no echo
        client = PanelClient(self.server.admin_port)
        token = client.csrf("/login")
        self.assertEqual(client.request("POST", "/login", {"csrf": token, "login": "admin", "password": "typed twice 1"})[0], 303)


class OnlineCoreTests(SynchronousTestCase):
    """Core.online and Core.disconnect on the in-process hub, another node's sessions as presence reports them (fast: no process, no socket)."""

    def setUp(self) -> None:
        from twisted.internet.task import Clock

        from pns4ones.core import Core
        from pns4ones.hub.local import LocalHub
        from pns4ones.hub.redis.presence import RemoteSession
        from pns4ones.hub.testing import RecordingSession
        from pns4ones.metrics import NullMetrics
        from pns4ones.store.memory import MemoryDatabase, MemoryStore

        class TwoNodes(LocalHub):
            """This node's hub; node B has u1 once and w9 twice in app/ib1, as its presence says."""

            def remote_sessions(self, app_id: str, ib_id: str) -> dict[str, list[Any]]:
                if (app_id, ib_id) != ("app", "ib1"):
                    return {}
                return {
                    "u1": [RemoteSession("app", "ib1", "u1", "B", 0)],
                    "w9": [RemoteSession("app", "ib1", "w9", "B", n) for n in range(2)],
                }

        class Cuts(NullMetrics):
            def __init__(self) -> None:
                self.cuts: list[str] = []

            def cut(self, reason: str) -> None:
                self.cuts.append(reason)

        clock = Clock()
        self.core = Core(MemoryStore(MemoryDatabase(), clock), TwoNodes(clock=clock), clock)
        self.core.metrics = self.metrics = Cuts()
        made = [("u1", "ib1", "app", 20.0), ("U10", "ib1", "app", 30.0), ("u1", "ib1", "app", 10.0), ("u1", "ib2", "app", 5.0)]
        made.append(("u1", "ib1", "other", 1.0))
        self.sessions = [RecordingSession(user, ("g",), ib, app, None, at) for user, ib, app, at in made]
        for session in self.sessions:
            self.core.subscribe(session)

    def rows(self, found: Any) -> list[tuple[str, str, str | None, float, int]]:
        return [(r.user_id, r.ib_id, r.node, r.connected_at, r.user_sessions) for r in found.rows]

    def test_online_rows(self) -> None:
        """One base: this node's sessions then the other nodes', by user and connection time, with totals of every page; search ignores case; paging slices."""
        found = self.core.online("app", "ib1")
        self.assertEqual((found.sessions, found.users, found.remote), (6, 3, 3))
        self.assertEqual(
            self.rows(found),
            [
                ("U10", "ib1", None, 30.0, 1),
                ("u1", "ib1", None, 10.0, 2),
                ("u1", "ib1", None, 20.0, 2),
                ("u1", "ib1", "B", 0.0, 2),
                ("w9", "ib1", "B", 0.0, 0),
                ("w9", "ib1", "B", 0.0, 0),
            ],
        )
        first = found.rows[1]
        self.assertEqual(
            (first.session_id, first.transport, first.peer, first.groups), (self.sessions[2].session_id, "test", "127.0.0.1", ("g",))
        )
        self.assertEqual((found.rows[3].transport, found.rows[3].peer), ("remote", ""))
        page = self.core.online("app", "ib1", offset=1, limit=2)
        self.assertEqual(([r.connected_at for r in page.rows], page.sessions), ([10.0, 20.0], 6))
        self.assertEqual(self.core.online("app", "ib1", offset=6).rows, [])
        found = self.core.online("app", "ib1", "U1")
        self.assertEqual(([r.user_id for r in found.rows], found.users, found.remote), (["U10", "u1", "u1", "u1"], 2, 1))
        every = self.core.online("app")  # every base of this node; presence is per base
        self.assertEqual([(r.user_id, r.ib_id) for r in every.rows], [("U10", "ib1"), ("u1", "ib1"), ("u1", "ib1"), ("u1", "ib2")])
        self.assertEqual((every.sessions, every.users, every.remote), (4, 3, 0))
        self.assertEqual(self.core.online("none", "ib1").sessions, 0)

    def test_disconnect(self) -> None:
        """Disconnecting a user ends his sessions of that base on this node only; a session id narrows it to one; each is logged and counted."""
        from twisted.logger import capturedLogs

        from pns4ones.core import DISCONNECT_REASON

        with capturedLogs() as events:
            ended = self.core.disconnect("app", "ib1", "u1")
        self.assertEqual(sorted(s.session_id for s in ended), sorted(s.session_id for s in (self.sessions[0], self.sessions[2])))
        self.assertEqual([s.ended for s in self.sessions], [DISCONNECT_REASON, None, DISCONNECT_REASON, None, None])
        self.assertEqual(self.metrics.cuts, ["admin", "admin"])
        logged = [e for e in events if e.get("event") == "disconnected"]
        self.assertEqual(sorted(e["session_id"] for e in logged), sorted(s.session_id for s in ended))
        self.assertEqual({(e["user_id"], e["ib_id"], e["reason"]) for e in logged}, {("u1", "ib1", DISCONNECT_REASON)})
        u10 = self.sessions[1]
        self.assertEqual(self.core.disconnect("app", "ib1", "u1", u10.session_id), [])  # another user's session: untouched
        self.assertEqual(self.core.disconnect("app", "ib2", "U10", u10.session_id), [])
        self.assertEqual(self.core.disconnect("app", "ib1", "U10", u10.session_id), [u10])
        self.assertEqual(self.metrics.cuts, ["admin"] * 3)


class CatalogTests(SynchronousTestCase):
    def test_catalogs_complete(self) -> None:
        """Russian and English catalogs have the same keys, and every key the templates and code use exists in both."""
        from pns4ones.admin import i18n

        catalogs = i18n.load_catalogs()
        self.assertEqual(set(catalogs["ru"]), set(catalogs["en"]))
        package = Path(i18n.__file__).parent
        used = set()
        for template in (package / "templates").glob("*.html"):
            used |= set(re.findall(r"t\('([a-z0-9_.-]+)'", template.read_text()))
        code = "".join(path.read_text() for path in sorted(package.glob("*.py")))  # the panel's modules, one per page
        prefixes = "error|apps|send|password|groups|kept|settings|manage|status|audit|unit|page|transport|app|setup|online"
        used |= {k for k in re.findall(rf'"((?:{prefixes})\.[a-z0-9_.]+)"', code) if not k.endswith(".html")}
        # keys made of a prefix and a value
        used = {k for k in used if not k.endswith((".", "_"))}
        used |= {f"apps.done.{action}" for action in ("rotate-server", "rotate-client", "reset-tokens", "delete")}
        used |= {f"send.type_{kind}" for kind in ("user", "group", "all")}
        used |= {f"transport.{name}" for name in ("tcp", "ws", "sse")}
        used |= {f"audit.source.{source}" for source in ("panel", "cli")}
        used |= {f"status.listener.{name}" for name in ("send API", "add-in subscriptions", "admin panel", "metrics", "other")}
        actions = set(re.findall(r'record_audit\(\s*request,\s*[\w.]+,\s*"([a-z-]+)"', code)) | set(
            re.findall(r'"(rotate-server|rotate-client|reset-tokens|delete)"', code)
        )
        from pns4ones.cli import AUDITED

        actions |= set(AUDITED.values())
        self.assertGreater(len(actions), 15)
        used |= {f"audit.action.{a}" for a in actions}
        self.assertGreater(len(used), 200)
        for lang in ("ru", "en"):
            self.assertEqual(sorted(used - set(catalogs[lang])), [], lang)
