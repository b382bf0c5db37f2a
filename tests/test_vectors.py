"""tests/vectors/wire.json: written by scripts/make_vectors.py, and the same bytes as the reference vectors where both have a vector."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from .vectors import CHECKOUT, WIRE, WIRE_FILE, reference_file

SCRIPT = CHECKOUT / "scripts" / "make_vectors.py"


class OwnVectors(SynchronousTestCase):
    def test_file_is_what_the_script_writes(self) -> None:
        """make_vectors.py --check recomputes every vector (package and independent code agreeing) and finds the committed file identical."""
        result = subprocess.run(
            [sys.executable, str(SCRIPT), "--check", "--output", str(WIRE_FILE)], capture_output=True, text=True, timeout=120
        )
        self.assertEqual((result.returncode, result.stderr), (0, ""))

    def test_check_notices_a_changed_byte(self) -> None:
        """--check fails on a file with one frame byte changed (the comparison is real)."""
        doc = json.loads(WIRE_FILE.read_text(encoding="utf-8"))
        frame = doc["message_frames"][0]["frame_hex"]
        doc["message_frames"][0]["frame_hex"] = frame[:-2] + ("00" if frame[-2:] != "00" else "01")
        with tempfile.TemporaryDirectory(prefix="pns4ones-vectors-") as tmp:
            changed = Path(tmp) / "wire.json"
            changed.write_text(json.dumps(doc, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
            result = subprocess.run(
                [sys.executable, str(SCRIPT), "--check", "--output", str(changed)], capture_output=True, text=True, timeout=120
            )
        self.assertEqual(result.returncode, 1)
        self.assertIn("is not what scripts/make_vectors.py writes", result.stderr)


class ReferenceCrossCheck(SynchronousTestCase):
    def setUp(self) -> None:
        path = reference_file()
        if path is None:
            raise SkipTest(
                "no reference vectors beside this checkout (shared/vectors/wire.json next to it, or PNS4ONES_REFERENCE_VECTORS=FILE): "
                "the cross-check is optional, tests/vectors/wire.json is what the tests use"
            )
        self.reference = json.loads(path.read_text(encoding="utf-8"))

    def test_same_key_material(self) -> None:
        """The client key and its AES key and IV are the reference's."""
        self.assertEqual(WIRE["client_key"], self.reference["client_key"])

    def test_every_reference_vector_is_ours_byte_for_byte(self) -> None:
        """Every reference registration and message frame is one of ours, with the same inputs and the same bytes."""
        for kind in ("registration_frames", "message_frames"):
            for vector in self.reference[kind]:
                self.assertIn(vector, WIRE[kind], kind)
