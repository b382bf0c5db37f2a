"""The churn soak script, shortened for the suite."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from twisted.trial.unittest import TestCase

ROOT = Path(__file__).resolve().parents[1]


class SoakTests(TestCase):
    def test_short_soak(self) -> None:
        """15 s of churn: nothing lost, duplicated or out of order; fds back to baseline; no log errors."""
        result = subprocess.run(
            [sys.executable, str(ROOT / "scripts" / "soak.py"), "--duration", "15", "--subscribers", "100", "--seed", "7"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
        self.assertIn("soak ok", result.stdout)
