"""The admin panel's login throttle on the real twistd: taken before the password check, per address and overall, bounded."""

from __future__ import annotations

import threading
import time
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from .support import ServerProcess
from .test_admin_panel import PASSWORD, PanelClient, setup_code


class ThrottleTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.server = ServerProcess()
        self.addCleanup(self.server.cleanup)
        self.server.start()
        PanelClient(self.server.admin_port).setup(setup_code(self.server))

    def panel(self, source: str = "127.0.0.1") -> PanelClient:
        return PanelClient(self.server.admin_port, source=source, timeout=30)

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
