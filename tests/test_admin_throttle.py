"""The admin panel's login throttle on the real twistd: taken before the password check, per address and overall, bounded."""

from __future__ import annotations

import http.client
import re
import threading
import time
import urllib.parse
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from .support import ServerProcess, wait_for

PASSWORD = "correct horse 1"


def setup_code(server: ServerProcess) -> str:
    """The panel's one-time set-up code (in the data directory while there is no administrator)."""
    path = server.data_dir / "panel-setup-code"
    return str(wait_for(lambda: path.exists() and path.read_text().strip(), what="the set-up code file"))


class Panel:
    """A cookie-keeping HTTP client of the panel from one loopback source address (stdlib only)."""

    def __init__(self, port: int, source: str = "127.0.0.1") -> None:
        self.port = port
        self.source = source
        self.cookies: dict[str, str] = {}

    def request(self, method: str, path: str, form: dict[str, str] | None = None) -> tuple[int, Any, str]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30, source_address=(self.source, 0))
        try:
            headers = {"Host": f"127.0.0.1:{self.port}"}
            if self.cookies:
                headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
            body = None
            if form is not None:
                body = urllib.parse.urlencode(form).encode()
                headers["Content-Type"] = "application/x-www-form-urlencoded"
            conn.request(method, path, body=body, headers=headers)
            response = conn.getresponse()
            text = response.read().decode("utf-8")
            for line in response.headers.get_all("Set-Cookie") or []:
                name, _, rest = line.partition("=")
                self.cookies[name] = rest.split(";", 1)[0]
            return response.status, response.headers, text
        finally:
            conn.close()

    def csrf(self, path: str) -> str:
        status, _, page = self.request("GET", path)
        assert status == 200, (status, page)
        found = re.search(r'name="csrf" value="([^"]+)"', page)
        assert found is not None
        return found.group(1)

    def setup(self, code: str) -> None:
        """Create the administrator with the one-time set-up code the server wrote to its data directory."""
        token = self.csrf("/setup")
        form = {"csrf": token, "code": code, "login": "admin", "password": PASSWORD, "password2": PASSWORD}
        status, _, _ = self.request("POST", "/setup", form)
        assert status == 303, status

    def login(self, password: str, token: str | None = None) -> int:
        token = token or self.csrf("/login")
        return self.request("POST", "/login", {"csrf": token, "login": "admin", "password": password})[0]


class ThrottleTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.server = ServerProcess()
        self.addCleanup(self.server.cleanup)
        self.server.start()
        Panel(self.server.admin_port).setup(setup_code(self.server))

    def panel(self, source: str = "127.0.0.1") -> Panel:
        return Panel(self.server.admin_port, source)

    def parallel(self, count: int, attempt: Any) -> list[int]:
        """``count`` calls of ``attempt()`` released at the same instant from their own threads; their statuses."""
        barrier = threading.Barrier(count)
        statuses: list[int] = []

        def run() -> None:
            barrier.wait()
            statuses.append(attempt())

        threads = [threading.Thread(target=run) for _ in range(count)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        return statuses

    def test_parallel_wrong_passwords(self) -> None:
        """Waves of thirty wrong passwords at once from one address: at most five are checked (401), the rest refused at once (429)."""
        client = self.panel()
        token = client.csrf("/login")
        statuses: list[int] = []
        for _ in range(4):
            statuses += self.parallel(30, lambda: client.login("wrong password", token))
        self.assertEqual(len(statuses), 120)
        self.assertEqual(statuses.count(401) + statuses.count(429), 120, statuses)
        self.assertLessEqual(statuses.count(401), 6, statuses)  # five free, then one a second
        self.assertLessEqual(self.server.log().count("failed login as"), 6)

    def test_per_address(self) -> None:
        """One address throttled after five failures does not lock out the administrator on another address."""
        attacker = self.panel("127.0.0.1")
        for _ in range(5):
            self.assertEqual(attacker.login("wrong password"), 401)
        status, headers, body = attacker.request(
            "POST", "/login", {"csrf": attacker.csrf("/login"), "login": "admin", "password": PASSWORD}
        )
        self.assertEqual((status, headers["Retry-After"]), (429, "1"))
        self.assertIn("Слишком много неудачных попыток", body)
        self.assertEqual(self.panel("127.0.0.2").login(PASSWORD), 303)

    def test_overall(self) -> None:
        """Failures spread over many addresses are throttled overall: after twenty, a new address waits too."""
        for n in range(4):
            client = self.panel(f"127.0.1.{n + 1}")
            for _ in range(5):
                self.assertEqual(client.login("wrong password"), 401)
        self.assertEqual(self.panel("127.0.2.1").login(PASSWORD), 429)
        time.sleep(1.1)
        self.assertEqual(self.panel("127.0.2.1").login(PASSWORD), 303)

    def test_flood_leaves_the_panel_usable(self) -> None:
        """During a flood of wrong passwords from twenty addresses, a logged-in administrator's pages keep answering at once."""
        admin = self.panel("127.0.0.9")
        self.assertEqual(admin.login(PASSWORD), 303)
        stop = time.monotonic() + 3
        outcomes: list[int] = []

        def flood(n: int) -> None:
            client = self.panel(f"127.0.3.{n + 1}")
            token = client.csrf("/login")
            while time.monotonic() < stop:
                outcomes.append(client.login("wrong password", token))

        threads = [threading.Thread(target=flood, args=(n,)) for n in range(20)]
        for thread in threads:
            thread.start()
        slowest = 0.0
        pages = 0
        while time.monotonic() < stop:
            started = time.monotonic()
            status, _, _ = admin.request("GET", "/apps")
            slowest = max(slowest, time.monotonic() - started)
            self.assertEqual(status, 200)
            pages += 1
        for thread in threads:
            thread.join(30)
        self.assertGreater(len(outcomes), 50)
        self.assertLessEqual(outcomes.count(401), 20 + 3, "checked passwords past the overall throttle (20 free, then 1 s, 2 s)")
        self.assertGreater(pages, 5)
        self.assertLess(slowest, 2.0, f"a page took {slowest:.2f} s during the flood")
