"""The admin panel's pure helpers: paging, the 1C settings, durations, previews, the set-up code, audit details."""

from __future__ import annotations

import os
import socket
import stat
import tempfile
from types import SimpleNamespace

from twisted.trial.unittest import SynchronousTestCase

from pns4ones import audit
from pns4ones.admin import firstrun, views
from pns4ones.config import Address
from pns4ones.store import Application
from pns4ones.wire import ClientKey


def t(key: str, **fields: object) -> str:
    return {"unit.s": "{n} s", "unit.min": "{n} min", "unit.h": "{n} h", "unit.d": "{n} d"}[key].format(**fields)


class ViewTests(SynchronousTestCase):
    def test_page(self) -> None:
        """Pages count from 1, slice the rows, and know their neighbours; a bad ?page= is page 1."""
        page = views.Page(2, 10, 25)
        self.assertEqual((page.offset, page.pages, page.previous, page.next), (10, 3, 1, 3))
        self.assertEqual(list(page.slice(range(25))), list(range(10, 20)))
        self.assertEqual((views.Page(1, 10, 0).pages, views.Page(1, 10, 0).next, views.Page(3, 10, 25).next), (1, None, None))
        self.assertEqual([views.page_number(x) for x in ("3", "", "0", "-1", "x", "1" * 12)], [3, 1, 1, 1, 1, 1])

    def test_settings_for_1c(self) -> None:
        """The stock form's values: id, addresses with ports, keys, the HTTPS flag; loopback is localhost, a wildcard the host's name."""
        key = ClientKey.generate()
        app = Application("a-id", "Shop", "server-key", key, 0.0)
        config = SimpleNamespace(
            listen=Address("*:8092", ("::",), 8092),
            service=Address("10.0.0.5:8093", ("10.0.0.5",), 8093),
            ssl_mode="FromFileWithPrivateKey",
        )
        s = {x.element: x for group in views.settings_for_1c(app, config).values() for x in group}
        name = socket.gethostname()
        self.assertEqual(s["set-app-id"].value, "a-id")
        self.assertEqual(s["set-send-address"].value, f"{name}:8092")
        self.assertEqual(s["set-receive-address"].value, "10.0.0.5:8093")
        self.assertEqual((s["set-server-key"].value, s["set-client-key"].value), ("server-key", key.encode()))
        self.assertEqual((s["set-secure"].value, s["set-secure"].copy), ("settings.yes", False))
        self.assertEqual(s["set-ws-url"].value, f"wss://{name}:8092/subscribe/ws")
        self.assertEqual(s["set-api-url"].value, f"https://{name}:8092/")
        config.ssl_mode = "None"
        config.listen = Address("[::1]:1", ("::1",), 1)
        s = {x.element: x for group in views.settings_for_1c(app, config, "pns.local").values() for x in group}
        self.assertEqual((s["set-send-address"].value, s["set-receive-address"].value), ("pns.local:1", "pns.local:8093"))
        self.assertEqual(s["set-secure"].value, "settings.no")
        self.assertEqual(views.host_for(("127.0.0.1",)), "localhost")
        self.assertEqual(views.host_for(("2001:db8::1",)), "[2001:db8::1]")
        self.assertEqual(views.host_for(("0.0.0.0",)), name)

    def test_valid_host(self) -> None:
        """Host names, IPv4 and IPv6 addresses are accepted as the server's address; markup, spaces and ports are not."""
        for good in ("pns", "pns.example.local", "192.168.10.3", "[2001:db8::1]", "2001:db8::1", "a-b.c"):
            self.assertTrue(views.valid_host(good), good)
        for bad in ("", "<script>", "a b", "-a", "a-", "pns:36696", "a/b", "x" * 300, "a\nb"):
            self.assertFalse(views.valid_host(bad), bad)

    def test_duration_preview_lines(self) -> None:
        """Durations in the largest units; previews give topic and title only, shortened; typed lists are stripped and deduplicated."""
        self.assertEqual([views.duration(x, t) for x in (-5, 45, 60, 3599, 3600, 3660, 86400, 90000)],
                         ["0 s", "45 s", "1 min", "59 min", "1 h", "1 h 1 min", "1 d", "1 d 1 h"])  # fmt: skip
        payload = b'{"topic":"t","notification":{"title":"' + b"x" * 200 + b'","body":"secret","important":false}}'
        topic, title = views.preview(payload)
        self.assertEqual((topic, len(title), title[-1]), ("t", 120, "…"))
        self.assertEqual(views.preview(b"\xff"), ("", ""))
        self.assertEqual(views.preview(b"[1]"), ("", ""))
        self.assertEqual(views.preview(b'{"notification": "x"}'), ("", ""))
        self.assertEqual(views.lines(" u1 \r\nu2\n\nu1\nu3,u4\n"), ["u1", "u2", "u3,u4"])
        self.assertEqual(views.size(2048), "2.0 KiB")


class SetupCodeTests(SynchronousTestCase):
    def test_code(self) -> None:
        """Codes are 12 characters without look-alikes in groups of four; case, spaces and dashes do not matter."""
        codes = {firstrun.new_code() for _ in range(50)}
        self.assertEqual(len(codes), 50)
        for code in codes:
            self.assertRegex(code, r"^[A-HJKMNP-Z2-9]{4}-[A-HJKMNP-Z2-9]{4}-[A-HJKMNP-Z2-9]{4}$")
        code = "ABCD-EFGH-JKMN"
        self.assertTrue(firstrun.matches("abcd efgh jkmn", code))
        self.assertTrue(firstrun.matches("ABCDEFGHJKMN", code))
        self.assertFalse(firstrun.matches("ABCD-EFGH-JKMP", code))
        self.assertFalse(firstrun.matches("", code))
        self.assertFalse(firstrun.matches("ЖABCD-EFGH-JKMN", code))

    def test_file(self) -> None:
        """The code file is private (0600), replaced whole, and removing it twice is fine."""
        directory = tempfile.mkdtemp()
        self.addCleanup(os.rmdir, directory)
        path = firstrun.write_file(directory, "AAAA-BBBB-CCCC")
        firstrun.write_file(directory, "DDDD-EEEE-FFFF")
        self.assertEqual(path.read_text(), "DDDD-EEEE-FFFF\n")
        self.assertEqual(stat.S_IMODE(path.stat().st_mode), 0o600)
        self.assertEqual(os.listdir(directory), [firstrun.FILE_NAME])
        firstrun.remove_file(directory)
        firstrun.remove_file(directory)
        self.assertFalse(path.exists())


class AuditDetailTests(SynchronousTestCase):
    def test_detail(self) -> None:
        """Details are compact JSON, shown as key: value; oversized ones are cut; unreadable ones shown as they are."""
        text = audit.detail(ib="ib1", users=["u1", "u2"], kept=True)
        self.assertEqual(text, '{"ib":"ib1","users":["u1","u2"],"kept":true}')
        self.assertEqual(audit.describe_detail(text), 'ib: ib1, users: ["u1", "u2"], kept: true')
        self.assertLessEqual(len(audit.detail(users=["x" * 100] * 100)), audit.MAX_DETAIL)
        self.assertIn("truncated", audit.parse_detail(audit.detail(users=["x" * 100] * 100)))
        self.assertEqual(audit.parse_detail("not json"), {"text": "not json"})
        self.assertEqual(audit.parse_detail(""), {})
