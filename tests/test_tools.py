"""tests/tools.py: what scripts/test installs or names as missing, and how a test that needs a missing program skips."""

from __future__ import annotations

import subprocess
import sys
import tempfile
import unittest

from twisted.trial.unittest import SynchronousTestCase

from . import tools

SCRIPT = tools.__file__


class ToolsTests(SynchronousTestCase):
    def run_tools(self, *args: str) -> str:
        """tools.py run as scripts/test runs it, with a PATH that has none of the programs."""
        with tempfile.TemporaryDirectory(prefix="pns4ones-empty-path-") as empty:
            result = subprocess.run([sys.executable, SCRIPT, *args], env={"PATH": empty}, capture_output=True, text=True, timeout=120)
        self.assertEqual(result.returncode, 0, result.stderr)
        return result.stdout.strip()

    def test_missing_packages_on_one_line(self) -> None:
        """With no program on PATH, 'missing' names the Debian packages of those looked up on PATH, and 'servers' the ones that start a service."""
        missing = self.run_tools("missing").split()
        self.assertLessEqual(
            {"chromium", "chromium-driver", "php-cli", "php-curl", "jq", "curl", "prometheus", "redis-server"}, set(missing)
        )
        self.assertEqual(len(missing), len(set(missing)))
        servers = self.run_tools("servers").split()
        self.assertLessEqual({"prometheus", "redis-server"}, set(servers))
        self.assertLessEqual(set(servers), {t.package for t in tools.TOOLS.values() if t.server})
        self.assertNotIn("chromium", servers)

    def test_require_skips_with_the_install_command(self) -> None:
        """require() of a missing program raises SkipTest naming it and the apt-get command; need() returns the path of a present one."""
        self.patch(tools, "TOOLS", {**tools.TOOLS, "no-such-program": tools.Tool("no-such-program", "no-such-package", lambda: None)})
        with self.assertRaises(unittest.SkipTest) as caught:
            tools.require("no-such-program")
        self.assertEqual(
            str(caught.exception),
            "needs no-such-program, not installed: apt-get install -y no-such-package (or run scripts/test as root, which installs them)",
        )
        self.patch(tools, "TOOLS", {**tools.TOOLS, "python-here": tools.Tool("python-here", "python3", lambda: sys.executable)})
        self.assertEqual(tools.need("python-here"), sys.executable)
        self.assertIsNone(tools.skip_reason("python-here"))

    def test_usage(self) -> None:
        """tools.py with anything but missing or servers exits 2 with its usage."""
        result = subprocess.run([sys.executable, SCRIPT, "everything"], capture_output=True, text=True, timeout=60)
        self.assertEqual((result.returncode, result.stderr.strip()), (2, "usage: tools.py missing|servers"))
