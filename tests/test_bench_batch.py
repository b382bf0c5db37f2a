"""
scripts/bench_batch.py, the batch goal's benchmark, run briefly as the docs run
it: its driver must count every message the service accepted, whether it
decrypts every frame or one in N, with one publishing connection or several,
or its figures mean nothing.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from twisted.trial.unittest import TestCase

from .tools import require

BENCH_BATCH = Path(__file__).resolve().parent.parent / "scripts" / "bench_batch.py"


def _run(*args: str, tmpdir: str | None = None, timeout: float = 60) -> dict[str, Any]:
    result = subprocess.run(
        [sys.executable, str(BENCH_BATCH), "--subscribers", "20", "--batch", "10", "--seconds", "1", "--no-pin", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "TMPDIR": tmpdir} if tmpdir else None,
    )
    if result.returncode != 0:
        raise AssertionError(f"bench_batch.py exited {result.returncode}: {result.stdout}{result.stderr}")
    doc: dict[str, Any] = json.loads(result.stdout)
    return doc


class BenchBatchTests(TestCase):
    def test_every_message_counted_with_two_publishers_and_sampled_decryption(self) -> None:
        """Two connections at once, one frame in three decrypted: every accepted message is counted as received."""
        doc = _run("--publishers", "2", "--decrypt-every", "3")
        self.assertGreater(doc["accepted"], 0)
        self.assertEqual((doc["received"], doc["lost"]), (doc["accepted"], 0))
        self.assertEqual((doc["publishers"], doc["decrypt_every"], doc["pinned"]), (2, 3, False))
        self.assertGreater(doc["server_cpu_us_per_message"], 0)
        # (each figure is rounded to 0.1 apart: their sum may differ from the total by that much;
        # trial's assertAlmostEqual has no working delta)
        parts = doc["server_user_us_per_message"] + doc["server_kernel_us_per_message"]
        self.assertLessEqual(abs(doc["server_cpu_us_per_message"] - parts), 0.15)

    def test_every_frame_decrypted_by_default(self) -> None:
        """The default driver (one connection, every frame decrypted and checked) loses nothing, and leaves no data directory."""
        tmpdir = tempfile.mkdtemp(prefix="pns4ones-batch-test-")
        self.addCleanup(shutil.rmtree, tmpdir, True)
        doc = _run(tmpdir=tmpdir)
        self.assertGreater(doc["accepted"], 0)
        self.assertEqual((doc["received"], doc["lost"], doc["decrypt_every"]), (doc["accepted"], 0, 1))
        self.assertEqual(os.listdir(tmpdir), [])  # (the server's throwaway store went with it)

    def test_instructions_counted_while_the_batches_go_through(self) -> None:
        """--instructions: the server under callgrind, its instructions per message counted only while the batches went
        through (its start-up would make it millions), every message still received."""
        require("valgrind")
        doc = _run("--instructions", timeout=600)
        self.assertGreater(doc["accepted"], 0)
        self.assertEqual((doc["received"], doc["lost"]), (doc["accepted"], 0))
        self.assertGreater(doc["server_instructions_per_message"], 10_000)
        self.assertLess(doc["server_instructions_per_message"], 2_000_000)

    def test_bad_options_are_refused(self) -> None:
        """--publishers 0 is a usage error (exit 2), not a run."""
        result = subprocess.run([sys.executable, str(BENCH_BATCH), "--publishers", "0"], capture_output=True, text=True, timeout=30)
        self.assertEqual(result.returncode, 2)
        self.assertIn("--publishers", result.stderr)
