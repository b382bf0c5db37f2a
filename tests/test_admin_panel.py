"""The admin web panel of the real ``twistd -n pns4ones`` process, driven by a real headless Chromium and plain HTTP."""

from __future__ import annotations

import http.client
import http.server
import json
import os
import re
import socket
import sqlite3
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from twisted.trial.unittest import SynchronousTestCase

from pns4ones_client import Subscriber

from .browser import screenshot, start_chromium
from .support import ServerProcess, free_port, wait_for

PASSWORD = "correct horse 1"
TIMEOUT = 10


def auth_status(server: ServerProcess, server_key: str) -> int:
    """Status of ``/auth`` on the send API for ``server_key``."""
    try:
        with urllib.request.urlopen(f"{server.url}/auth?server_key={server_key}", timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as e:
        return e.code


def listed_apps(server: ServerProcess) -> list[dict[str, str]]:
    return json.loads(server.admin("list", "--json").stdout)


@pytest.mark.browser
class PanelBrowserTests(SynchronousTestCase):
    """Pages in Chromium: setup, login, applications, test messages, language, CSRF, XSS."""

    def setUp(self) -> None:
        self.server = ServerProcess()
        self.addCleanup(self.server.cleanup)
        self.server.start()
        self.base = f"http://127.0.0.1:{self.server.admin_port}"
        self.driver = start_chromium(self)
        from selenium.common.exceptions import NoAlertPresentException, WebDriverException
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support.ui import WebDriverWait

        self.By, self.NoAlert = By, NoAlertPresentException
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

    def at(self, path: str) -> None:
        self.wait.until(lambda d: d.current_url.split("?")[0].split("#")[0] == self.base + path, f"expected to be at {path}")

    def submit(self, selector: str, root: Any = None) -> None:
        """Click something that loads a new page, and wait until the old page is gone."""
        self.driver.execute_script("window.pnsOldPage = true")
        self.css(selector, root).click()
        self.wait.until(
            lambda d: d.execute_script("return window.pnsOldPage === undefined && document.readyState !== 'loading'"),
            f"a new page after clicking {selector}",
        )

    def text(self, selector: str) -> str:
        return self.css(selector).get_attribute("textContent").strip()

    def flash(self) -> str:
        return " ".join(e.get_attribute("textContent").strip() for e in self.all(".flash"))

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

    def setup_admin(self, login: str = "admin", password: str = PASSWORD) -> None:
        self.go("/")
        self.at("/setup")
        self.fill(login=login, password=password, password2=password)
        self.submit("#submit")
        self.at("/apps")

    def login(self, login: str = "admin", password: str = PASSWORD) -> None:
        self.fill(login=login, password=password)
        self.submit("#submit")

    def create_app(self, title: str) -> Any:
        self.fill(**{"new-title": title})
        self.submit("#create")
        self.wait.until(lambda d: "создано" in self.flash() or "created" in self.flash(), "the creation message")
        return self.css("details[open]")

    def logout(self) -> None:
        self.submit("#logout")
        self.at("/login")

    # -- tests -------------------------------------------------------------------------------

    def test_first_run_login_logout(self) -> None:
        """First visit creates the administrator (checked inputs); then login failure, success, logout ending the session."""
        self.go("/apps")
        self.at("/setup")
        self.assertEqual(self.driver.find_element(self.By.TAG_NAME, "html").get_attribute("lang"), "ru")
        screenshot(self.driver, "01-setup")
        self.fill(login="admin", password=PASSWORD, password2=PASSWORD + "x")
        self.submit("#submit")
        self.wait.until(lambda d: "Пароли не совпадают" in self.text("#error"))
        screenshot(self.driver, "02-setup-error")
        self.fill(login="admin", password="short", password2="short")
        self.driver.execute_script("for (const e of document.querySelectorAll('input')) e.removeAttribute('minlength')")
        self.submit("#submit")
        self.wait.until(lambda d: "не короче 8" in self.text("#error"))
        self.fill(login="admin", password=PASSWORD, password2=PASSWORD)
        self.submit("#submit")
        self.at("/apps")
        self.assertIn("Приложений пока нет", self.text("#no-apps"))
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

    def test_applications_create_copy_rotate_delete(self) -> None:
        """Create (name required), expand, copy, rotate both keys (with warnings) and delete (confirmation naming it) an application."""
        self.setup_admin()
        self.fill(**{"new-title": "   "})
        self.submit("#create")
        self.wait.until(lambda d: "Укажите название приложения" in self.flash())
        self.assertEqual(listed_apps(self.server), [])

        details = self.create_app("Магазин «Ромашка»")
        app_id = details.get_attribute("data-app-id")
        [cli] = listed_apps(self.server)
        self.assertEqual((cli["id"], cli["title"]), (app_id, "Магазин «Ромашка»"))
        self.assertEqual(self.text(".app-title"), "Магазин «Ромашка»")
        self.assertEqual(self.text(".app-id"), app_id)

        self.go("/apps")  # collapsed after a reload; a click expands it
        details = self.css(f'details[data-app-id="{app_id}"]')
        self.assertIsNone(details.get_attribute("open"))
        self.assertFalse(self.css("#server-key-1").is_displayed())
        self.css("summary", details).click()
        self.wait.until(lambda d: self.css("#server-key-1").is_displayed())
        self.assertEqual(self.css("#server-key-1").text, cli["server_key"])
        self.assertEqual(self.css("#client-key-1").text, cli["client_key"])

        # Copy: the clipboard holds the key afterwards.
        self.driver.execute_cdp_cmd(
            "Browser.grantPermissions", {"origin": self.base, "permissions": ["clipboardReadWrite", "clipboardSanitizedWrite"]}
        )
        for key_id, value in (("server-key-1", cli["server_key"]), ("client-key-1", cli["client_key"])):
            self.css(f'button[data-copy="{key_id}"]').click()
            self.wait.until(
                lambda d, key_id=key_id, value=value: self.css(f'button[data-copy="{key_id}"]').get_attribute("data-copied") == value
            )
            pasted = self.driver.execute_async_script(
                "const done = arguments[0]; navigator.clipboard.readText().then(done, e => done('ERROR ' + e));"
            )
            self.assertEqual(pasted, value)
        self.assertIn("Скопировано", self.text(".copy-status"))
        screenshot(self.driver, "06-apps-expanded")

        # Rotate the server key: the old one stops working at once.
        self.assertEqual(auth_status(self.server, cli["server_key"]), 200)
        self.css("form.rotate-server button").click()
        dialog = self.alert()
        self.assertIn("Магазин «Ромашка»", dialog.text)
        dialog.accept()
        self.wait.until(lambda d: "Ключ сервера приложения «Магазин «Ромашка»» обновлён" in self.flash())
        new_server_key = self.css("#server-key-1").text
        self.assertNotEqual(new_server_key, cli["server_key"])
        self.assertEqual(auth_status(self.server, cli["server_key"]), 401)
        self.assertEqual(auth_status(self.server, new_server_key), 200)

        # Rotate the client key: the warning says sessions are cut, and they are.
        sub = Subscriber("127.0.0.1", self.server.service_port, app_id, cli["client_key"], "ib1", "u1", "", timeout=5).connect()
        self.addCleanup(sub.close)
        wait_for(lambda: self.server.log().count("subscription registered") == 1, what="the subscription")
        self.go(f"/apps?open={app_id}")
        self.watch_submits()
        self.css("form.rotate-client button").click()
        dialog = self.alert()
        self.assertIn("будут отключены", dialog.text)
        self.assertIn("сейчас: 1", dialog.text)
        dialog.dismiss()  # cancelled: nothing changes
        self.assertEqual(self.submits(), [True], "the cancelled form was not sent")
        self.assertEqual(self.css("#client-key-1").text, cli["client_key"])
        self.assertEqual(listed_apps(self.server)[0]["client_key"], cli["client_key"])
        self.css("form.rotate-client button").click()
        self.alert().accept()
        self.wait.until(lambda d: "Ключ клиента" in self.flash())
        self.assertNotEqual(self.css("#client-key-1").text, cli["client_key"])
        self.assertTrue(sub.wait_closed(5), "the subscription with the old client key was not ended")
        self.assertEqual(listed_apps(self.server)[0]["client_key"], self.css("#client-key-1").text)

        # Delete: the confirmation names the application; cancel keeps it.
        self.watch_submits()
        self.css("form.delete button").click()
        dialog = self.alert()
        self.assertIn("Удалить приложение «Магазин «Ромашка»»", dialog.text)
        dialog.dismiss()
        self.assertEqual(self.submits(), [True], "the cancelled form was not sent")
        self.assertEqual(len(listed_apps(self.server)), 1)
        self.css("form.delete button").click()
        self.alert().accept()
        self.wait.until(lambda d: "удалено" in self.flash())
        self.assertEqual(self.all("details[data-app-id]"), [])
        self.assertEqual(listed_apps(self.server), [])
        self.assertEqual(auth_status(self.server, new_server_key), 401)

    def test_live_counts_and_test_message(self) -> None:
        """The counts follow subscribers live (no reload); the test-message form reaches the subscriber and reports the count."""
        self.setup_admin()
        details = self.create_app("Учёт")
        app_id = details.get_attribute("data-app-id")
        client_key = self.text("#client-key-1")
        badge = f'[data-app-count="{app_id}"]'
        self.assertEqual(self.text(badge), "0")
        self.assertEqual(self.text("#total-count"), "0")

        subs = []
        for user, ib in (("u1", "ib1"), ("u1", "ib1"), ("u2", "ib2")):
            sub = Subscriber("127.0.0.1", self.server.service_port, app_id, client_key, ib, user, "", timeout=5).connect()
            self.addCleanup(sub.close)
            subs.append(sub)
        self.wait.until(lambda d: self.text(badge) == "3", "the live count to reach 3")
        self.assertEqual(self.text("#total-count"), "3")
        ibs = [li.get_attribute("textContent").strip() for li in self.all(f'[data-app-ibs="{app_id}"] li')]
        self.assertEqual(ibs, ["ib1: 2", "ib2: 1"])
        screenshot(self.driver, "07-live-counts")

        form = self.css("form.send")
        self.css('input[name="ib"]', form).send_keys("ib1")
        self.css('input[name="target"]', form).send_keys("u1")
        self.css('input[name="title"]', form).send_keys("Проверка <b>связи</b>")
        self.css('textarea[name="body"]', form).send_keys('Текст "в кавычках" 🚀')
        self.submit("button.send-button", form)
        self.wait.until(lambda d: "Получили подписок: 2 (пользователей: 1)" in self.flash())
        screenshot(self.driver, "08-test-message-sent")
        for sub in subs[:2]:
            message = sub.receive(5)
            self.assertEqual(
                message, {"notification": {"title": "Проверка <b>связи</b>", "body": 'Текст "в кавычках" 🚀', "important": False}}
            )
        self.assertIsNone(subs[2].receive(0.3))
        self.assertIn("admin panel: test message app=" + app_id, self.server.log())

        # Same checks as /sendmessage: a missing field is named.
        form = self.css("form.send")
        Select = __import__("selenium.webdriver.support.select", fromlist=["Select"]).Select
        Select(self.css('select[name="type"]', form)).select_by_value("group")
        self.driver.execute_script("document.querySelector('form.send input[name=ib]').removeAttribute('required')")
        self.submit("button.send-button", form)
        self.wait.until(lambda d: "заполните поле «Информационная база (IbId)»" in self.flash())
        form = self.css("form.send")
        self.css('input[name="ib"]', form).send_keys("ib1")
        self.css('input[name="target"]', form).send_keys("Менеджеры")
        Select(self.css('select[name="type"]', form)).select_by_value("group")
        self.submit("button.send-button", form)
        self.wait.until(lambda d: "Получили подписок: 0" in self.flash())  # stock clients register no group

        for sub in subs:
            sub.close()
        self.wait.until(lambda d: self.text(badge) == "0", "the live count to fall to 0")
        self.assertIn("Сейчас нет подключённых сеансов", self.text(f'[data-app-ibs="{app_id}"]'))

    def test_hostile_title_is_text(self) -> None:
        """A title full of markup is shown as text, in the page and in the delete confirmation; no script runs."""
        self.setup_admin()
        title = "<img src=x onerror=alert(1)><script>alert(2)</script>\"'&"
        self.create_app(title)
        self.assertEqual(self.text(".app-title"), title)
        self.assertEqual(self.all("main img, main script"), [])
        self.assertIsNone(self._alert_or_none())
        self.assertIn("&lt;img src=x onerror=alert(1)&gt;", self.driver.page_source)
        screenshot(self.driver, "09-hostile-title")
        self.css("form.delete button").click()
        dialog = self.alert()
        self.assertIn(f"«{title}»", dialog.text)
        dialog.dismiss()

    def test_change_password(self) -> None:
        """Change password checks the current one and the repetition; afterwards only the new password logs in."""
        self.setup_admin()
        self.submit('nav a[href="/password"]')
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

    def test_language_switch(self) -> None:
        """Russian by default; the EN switch translates every page and is remembered in a cookie."""
        self.go("/setup")
        self.assertEqual(self.text("h1"), "Создание администратора")
        self.submit("#lang-en")
        self.wait.until(lambda d: self.text("h1") == "Create the administrator")
        self.assertEqual(self.driver.get_cookie("pns4ones_lang")["value"], "en")
        self.fill(login="admin", password=PASSWORD, password2=PASSWORD)
        self.submit("#submit")
        self.at("/apps")
        self.assertEqual(self.text("h1"), "Applications")
        self.create_app("Shop")
        self.assertIn("Application “Shop” created.", self.flash())
        self.assertEqual(self.driver.find_element(self.By.TAG_NAME, "html").get_attribute("lang"), "en")
        screenshot(self.driver, "11-apps-en")
        self.submit("#lang-ru")
        self.wait.until(lambda d: self.text("h1") == "Приложения")
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


class PanelClient:
    """A minimal cookie-keeping HTTP client for the panel (stdlib only, loopback)."""

    def __init__(self, port: int, host: str = "127.0.0.1") -> None:
        self.port = port
        self.host = host
        self.cookies: dict[str, str] = {}

    def request(
        self, method: str, path: str, form: dict[str, str] | None = None, headers: dict[str, str] | None = None
    ) -> tuple[int, Any, str]:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=10)
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

    def setup(self, password: str = PASSWORD) -> None:
        token = self.csrf("/setup")
        status, headers, _ = self.request("POST", "/setup", {"csrf": token, "login": "admin", "password": password, "password2": password})
        assert status == 303 and headers["Location"] == "/apps", status


class PanelHttpTests(SynchronousTestCase):
    """The panel over plain HTTP: listeners, headers, Host check, CSRF, throttling, password storage."""

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
        self.assertEqual(self.client.request("GET", "/counts.json")[0], 401)

    def test_csrf_token_required(self) -> None:
        """With a valid session, a POST without the token, with a wrong token or from a foreign Origin is 403 and changes nothing."""
        # Even the first-run setup needs the token.
        status, _, _ = self.client.request("POST", "/setup", {"login": "evil", "password": PASSWORD, "password2": PASSWORD})
        self.assertEqual(status, 403)
        self.client.setup()
        token = self.client.csrf("/apps")
        for form, headers in (
            ({"title": "x"}, {}),
            ({"title": "x", "csrf": token[:-1] + "A"}, {}),
            ({"title": "x", "csrf": token}, {"Origin": "http://127.0.0.1:1"}),
            ({"title": "x", "csrf": token}, {"Sec-Fetch-Site": "cross-site"}),
        ):
            status, _, body = self.client.request("POST", "/apps", form, headers)
            self.assertEqual(status, 403, (form, headers))
            self.assertIn("Запрос отклонён", body)
        self.assertEqual(listed_apps(self.server), [])
        status, headers, _ = self.client.request(
            "POST", "/apps", {"title": "ok", "csrf": token}, {"Origin": f"http://127.0.0.1:{self.server.admin_port}"}
        )
        self.assertEqual(status, 303)
        self.assertEqual([a["title"] for a in listed_apps(self.server)], ["ok"])
        counts = json.loads(self.client.request("GET", "/counts.json")[2])
        self.assertEqual(counts, {"total": 0, "apps": {}})

    def test_failed_logins_throttled(self) -> None:
        """After five failed logins even the right password waits (429, Retry-After); then it works again."""
        self.client.setup()
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
        time.sleep(int(headers["Retry-After"]) + 0.1)  # the wait the answer asked for (time under test, not synchronization)
        status, headers, _ = self.client.request("POST", "/login", {"csrf": token, "login": "admin", "password": PASSWORD})
        self.assertEqual((status, headers["Location"]), (303, "/apps"))

    def test_password_stored_as_argon2id(self) -> None:
        """The administrator's password is kept only as an Argon2id PHC string (19 MiB, 2 passes, 1 lane) with its own salt."""
        self.client.setup()
        with sqlite3.connect(self.server.data_dir / "pns4ones.db") as db:
            (encoded,) = db.execute("SELECT password_hash FROM admin_account").fetchone()
        self.assertTrue(encoded.startswith("$argon2id$v=19$m=19456,t=2,p=1$"), encoded)
        self.assertNotIn(PASSWORD, encoded)


class CatalogTests(SynchronousTestCase):
    def test_catalogs_complete(self) -> None:
        """Russian and English catalogs have the same keys, and every key the templates and code use exists."""
        from pns4ones.admin import i18n

        catalogs = i18n.load_catalogs()
        self.assertEqual(set(catalogs["ru"]), set(catalogs["en"]))
        package = Path(i18n.__file__).parent
        used = set()
        for template in (package / "templates").glob("*.html"):
            used |= set(re.findall(r"t\('([a-z0-9_.-]+)'", template.read_text()))
        code = (package / "app.py").read_text()
        used |= {k for k in re.findall(r'"((?:error|apps|send|password)\.[a-z0-9_]+)"', code) if not k.endswith(".html")}
        used |= {f"apps.done.{action}" for action in ("rotate-server", "rotate-client", "delete")}
        self.assertGreater(len(used), 40)
        self.assertEqual(sorted(used - set(catalogs["ru"])), [])
