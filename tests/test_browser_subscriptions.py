"""clients/examples/browser.html in a real headless Chromium against the real twistd: EventSource and WebSocket, allowed_origins."""

from __future__ import annotations

import json
import shutil
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
from twisted.trial.unittest import SynchronousTestCase

from .support import ServerProcess, free_port, wait_for
from .tools import find, require

PAGE = Path(__file__).resolve().parents[1] / "clients" / "examples" / "browser.html"


class PageServer:
    """The "1C side" on loopback: serves browser.html and /ticket (it holds the access token)."""

    def __init__(self, api_url: str, server_key: str, user: str, port: int = 0) -> None:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.startswith("/browser.html"):
                    body, kind = PAGE.read_bytes(), "text/html; charset=utf-8"
                elif self.path == "/ticket":
                    body, kind = json.dumps({"ticket": outer.ticket()}).encode(), "application/json"
                else:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.api_url, self.server_key, self.user = api_url, server_key, user
        self.httpd = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def ticket(self) -> str:
        with httpx.Client(timeout=10) as http:
            token = http.get(f"{self.api_url}/auth", params={"server_key": self.server_key}).json()["access_token"]
            response = http.post(
                f"{self.api_url}/tickets", json={"IbId": "ib1", "UserId": self.user}, headers={"Authorization": f"Bearer {token}"}
            )
            return str(response.json()["ticket"])

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class BrowserTests(SynchronousTestCase):
    def setUp(self) -> None:
        require("chromium", "chromedriver")
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service

        self.allowed_port = free_port()
        self.server = ServerProcess(args=["--allowed_origins", f"http://127.0.0.1:{self.allowed_port}"])
        self.addCleanup(self.server.cleanup)
        self.app = self.server.create_app("Browser")
        self.server.start()
        options = webdriver.ChromeOptions()
        options.binary_location = find("chromium")
        profile = tempfile.mkdtemp(prefix="pns4ones-chromium-")
        self.addCleanup(shutil.rmtree, profile, True)
        for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                     "--disable-sync", "--no-first-run", "--disable-dev-shm-usage", f"--user-data-dir={profile}"):  # fmt: skip
            options.add_argument(flag)
        self.driver = webdriver.Chrome(options=options, service=Service(executable_path=find("chromedriver")))
        self.addCleanup(self.driver.quit)

    def page(self, port: int | None = None, user: str = "u1") -> PageServer:
        page = PageServer(self.server.url, self.app["server_key"], user, port or 0)
        self.addCleanup(page.close)
        self.driver.get(f"{page.origin}/browser.html?ticket_url=/ticket&server={self.server.url}")
        return page

    def status(self, transport: str) -> str:
        return str(self.driver.find_element("id", f"status-{transport}").text)

    def shown(self) -> list[tuple[str, str]]:
        items = self.driver.find_elements("css selector", "#log li")
        return [(li.get_attribute("data-transport"), li.find_elements("css selector", "span")[1].text) for li in items]

    def test_receives_through_both_transports(self) -> None:
        """browser.html from an allowed origin gets a ticket, subscribes with WebSocket and EventSource and shows a message from each."""
        self.page(self.allowed_port)
        wait_for(
            lambda: self.status("ws") == "connected" and self.status("sse") == "connected",
            15,
            what=f"both transports (ws: {self.status('ws')}, sse: {self.status('sse')})",
        )
        with httpx.Client(timeout=10) as http:
            token = http.get(f"{self.server.url}/auth", params={"server_key": self.app["server_key"]}).json()["access_token"]
            body = {
                "Recipient": {"Type": "user", "IbId": "ib1", "UserId": "u1"},
                "Message": {"Notification": {"Title": "Заказ <b>7</b>", "Body": "готов"}},
            }
            response = http.post(f"{self.server.url}/sendmessage", json=body, headers={"Authorization": f"Bearer {token}"})
        self.assertEqual(response.json()["sessions"], 2)
        wait_for(lambda: len(self.shown()) >= 2, 10, what="the message on the page")
        self.assertEqual(sorted(self.shown()), [("sse", "Заказ <b>7</b>: готов"), ("ws", "Заказ <b>7</b>: готов")])

    def test_other_origin_refused(self) -> None:
        """The same page from an origin not in allowed_origins is refused on both transports."""
        self.page()
        wait_for(
            lambda: self.status("ws") == "refused or closed" and self.status("sse") == "refused or closed",
            15,
            what=f"refusals (ws: {self.status('ws')}, sse: {self.status('sse')})",
        )
        self.assertIn("is not in allowed_origins", self.server.log())
        self.assertNotIn("subscription registered", self.server.log())
