"""
scripts/bench's interleaved table, read from the result files the shared harness
writes: a round whose server gave no figures (it did not start, the swarm failed)
is named under the table and left out of the medians and of the ratios, and the
ratios pair each of our runs with the peer's run of the same round.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import tempfile
from pathlib import Path
from types import ModuleType
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

BENCH = Path(__file__).resolve().parent.parent / "scripts" / "bench.py"


def _bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("pns4ones_bench_script", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(rate: int, cpu_pct: float) -> dict[str, Any]:
    return {
        "n": 10000,
        "concurrency": 16,
        "publishes_per_s": rate,
        "accepted": rate * 10,
        "duration_s": 10.0,
        "server_cpu_pct": cpu_pct,
        "lat_us": {"p99": 1500.0},
        "lost": 0,
    }


class InterleavedTableTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.bench = _bench()
        self.dir = Path(tempfile.mkdtemp(prefix="pns4ones-bench-table-"))
        self.addCleanup(shutil.rmtree, self.dir, True)

    def write(self, round_name: str, peer: str, runs: list[dict[str, Any]]) -> None:
        where = self.dir / round_name
        where.mkdir(exist_ok=True)
        (where / f"{peer}-unicast.json").write_text(json.dumps({"points": [{"runs": runs}]}))

    def test_failed_run_is_named_and_left_out(self) -> None:
        # Round 1: ours failed to start; round 2: both ran (ours 20,000/s at 100% CPU: 50 µs per send).
        self.write("round-1", "pns4ones", [{"error": "no result from swarm: cannot connect for /auth\n"}])
        self.write("round-1", "floor", [_run(40000, 100.0)])
        self.write("round-2", "pns4ones", [_run(20000, 100.0)])
        self.write("round-2", "floor", [_run(50000, 100.0)])
        table = self.bench.interleaved_table(self.dir)
        self.assertIn("| n=10000, C=16 | pns4ones | 20,000 | 50.0 | 1.50 | 0 | 1 |", table)
        self.assertIn("| n=10000, C=16 | floor | 45,000 | 22.5 | 1.50 | 0 | 2 |", table)
        # Paired by round: round 2's floor (20 µs) against ours (50 µs), not round 1's.
        self.assertIn("- n=10000, C=16, floor: 0.40 (median 0.40)", table)
        self.assertIn("Runs without figures (left out above):\n- round-1, pns4ones: no result from swarm: cannot connect for /auth", table)

    def test_no_failures_no_failure_section(self) -> None:
        self.write("round-1", "pns4ones", [_run(20000, 100.0)])
        self.write("round-1", "floor", [_run(40000, 100.0)])
        table = self.bench.interleaved_table(self.dir)
        self.assertIn("- n=10000, C=16, floor: 0.50 (median 0.50)", table)
        self.assertNotIn("without figures", table)
