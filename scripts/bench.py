#!/usr/bin/env python3
"""
Benchmark pns4ones against nchan and Mosquitto on the shared harness
(../shared/bench/bench.py) and print one comparison table.

    scripts/bench              the full matrix, 3 runs per point (about 30 minutes)
    scripts/bench --quick      a smoke run: N = 1,000, 1 run per point (a few minutes)
    scripts/bench --table      only print the table of what --results-dir holds
    scripts/bench --interleave 3 --scenario unicast --concurrency 16
                               one run of each server in turn, 3 rounds: on a shared
                               machine whose speed drifts from minute to minute, each
                               round compares servers measured within a minute or two

Beside nchan and Mosquitto, the table has a "floor" column: scripts/floor.py,
the smallest correct server for this job that Python on Twisted allows (a plain
Protocol with httptools, a dict look-up, one AES-CBC encryption, one write, no
validation), driven by the same swarm in the same sitting (``--peers`` names it
``floor``), so that "ours / floor" says how much of the language's and the
reactor's reach the service uses.

Figures go to --results-dir (default bench-results/ in the checkout). The
server is started fresh for every run on 127.0.0.1 (send API 36696, add-in
36695, admin 36697: stop any development server first).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("PNS4ONES_SHARED", ROOT.parent / "shared"))
BENCH = SHARED / "bench" / "bench.py"
VENV_BIN = Path(sys.executable).parent

FIGURES = {
    "idle": [("connected", "ready", False), ("conn/s", "connect_per_s", True), ("RSS B/conn", "rss_bytes_per_conn", False)],
    "fanout": [
        ("deliveries/s", "deliveries_per_s", True),
        ("latency p99 ms", "lat_us.p99", False),
        ("lost", "lost_max", False),
        ("load core %", "load_core_busy_pct", None),
    ],
    "unicast": [
        ("publishes/s", "publishes_per_s", True),
        ("latency p99 ms", "lat_us.p99", False),
        ("lost", "lost_max", False),
        ("load core %", "load_core_busy_pct", None),
    ],
}


def run(cmd: list[str], **kw: object) -> None:
    print("+", shlex.join(cmd), flush=True)
    subprocess.run(cmd, check=True, **kw)  # type: ignore[arg-type]


def prepare_app(data: Path) -> list[str]:
    out = subprocess.run(
        [str(VENV_BIN / "pns4ones-admin"), "--data-dir", str(data), "create", "bench", "--json"], check=True, capture_output=True, text=True
    ).stdout
    app = json.loads(out)
    return ["--app-id", app["id"], "--server-key", app["server_key"], "--client-key", app["client_key"], "--ib-id", "bench"]


def run_ours(results: Path, extra: list[str], server_args: str = "", name: str = "pns4ones", floor: bool = False) -> None:
    data = Path(tempfile.mkdtemp(prefix="pns4ones-bench-"))
    try:
        driver_args = prepare_app(data)
        if floor:
            client_key = driver_args[driver_args.index("--client-key") + 1]
            server = f"{sys.executable} {ROOT / 'scripts' / 'floor.py'} --client-key {client_key} --listen 127.0.0.1:36696 --service 127.0.0.1:36695"
        else:
            twistd = str(VENV_BIN / "twistd")
            server = f"{twistd} -n --pidfile= pns4ones --config /dev/null --data-dir {data} --listen 127.0.0.1:36696 --service 127.0.0.1:36695 {server_args}".rstrip()
        env = {**os.environ, "PATH": f"{VENV_BIN}:{os.environ['PATH']}"}
        run([sys.executable, str(BENCH), "run", "--peer", "cmd", "--name", name, "--driver", "pns4ones", "--server-cmd", server,
             "--port", "36695", "--pub-port", "36696", "--driver-args", shlex.join(driver_args), "--results-dir", str(results), *extra], env=env)  # fmt: skip
    finally:
        shutil.rmtree(data, ignore_errors=True)


def load(results: Path, peer: str, scenario: str) -> dict[str, dict[str, object]]:
    path = results / f"{peer}-{scenario}.json"
    if not path.exists():
        return {}
    doc = json.loads(path.read_text())
    out = {}
    for point in doc["points"]:
        params = point["params"]
        key = f"n={params['n']}" + (f", C={params['concurrency']}" if scenario == "unicast" else "")
        out[key] = point["median"]
    return out


def fmt(value: object, key: str) -> str:
    if value is None:
        return "-"
    if key.startswith("lat_us"):
        return f"{float(value) / 1000:.3g}"  # type: ignore[arg-type]
    if isinstance(value, float):
        return f"{value:,.0f}" if value >= 100 else f"{value:.3g}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def ratio(a: object, b: object, higher_better: bool | None) -> str:
    if higher_better is None or a in (None, 0) or b in (None, 0):
        return ""
    return f"{float(a) / float(b):.2f}"  # type: ignore[arg-type]


def table(results: Path) -> str:
    # A comparison run of another engine (--name pns4ones-twisted --server-args '--http-engine twisted') adds a column.
    before = {scenario: load(results, "pns4ones-twisted", scenario) for scenario in FIGURES}
    extra = any(before.values())
    lines = [
        "| scenario | point | figure | pns4ones |"
        + (" twisted.web only |" if extra else "")
        + " floor | nchan | Mosquitto | pns4ones / floor | pns4ones / nchan |",
        "|---|---|---|---:|" + ("---:|" if extra else "") + "---:|---:|---:|---:|---:|",
    ]
    for scenario, figures in FIGURES.items():
        ours, floor, nchan, mosq = (load(results, p, scenario) for p in ("pns4ones", "floor", "nchan", "mosquitto"))
        for point in ours:
            for label, key, higher_better in figures:
                a = ours[point].get(key)
                f = floor.get(point, {}).get(key)
                b = nchan.get(point, {}).get(key)
                c = mosq.get(point, {}).get(key)
                was = f" {fmt(before[scenario].get(point, {}).get(key), key)} |" if extra else ""
                lines.append(
                    f"| {scenario} | {point} | {label} | {fmt(a, key)} |{was} {fmt(f, key)} | {fmt(b, key)} | {fmt(c, key)} |"
                    f" {ratio(a, f, higher_better)} | {ratio(a, b, higher_better)} |"
                )
    return "\n".join(lines)


def run_cpu_us(run_doc: dict[str, Any]) -> float:
    """The server process tree's CPU time per accepted send, in µs (what holds when other work takes part of a core)."""
    return float(run_doc["server_cpu_pct"]) / 100 * float(run_doc["duration_s"]) / max(int(run_doc["accepted"]), 1) * 1e6


def interleaved(results: Path, rounds: int, peers: list[str], common: list[str], server_args: str) -> str:
    """Each round runs every server once (ours first, then the peers), each round in its own directory; a table of medians."""
    for k in range(1, rounds + 1):
        where = results / f"round-{k}"
        run_ours(where, [*common, "--repeat", "1"], server_args)
        for peer in peers:
            if peer == "floor":
                run_ours(where, [*common, "--repeat", "1"], name="floor", floor=True)
            else:
                run([sys.executable, str(BENCH), "run", "--peer", peer, "--results-dir", str(where), *common, "--repeat", "1"])
    return interleaved_table(results)


def interleaved_table(results: Path) -> str:
    """Per server and point: the median over the rounds of the rate, the CPU per send, p99 and the losses; ratios per round."""
    names = {"pns4ones": "pns4ones", "floor": "floor", "nchan": "nchan", "mosquitto": "Mosquitto"}
    cells: dict[tuple[str, str], list[dict[str, Any]]] = {}
    failed: list[str] = []
    for where in sorted(results.glob("round-*")):
        for peer in names:
            path = where / f"{peer}-unicast.json"
            if path.exists():
                for point in json.loads(path.read_text())["points"]:
                    for one in point["runs"]:
                        if "error" in one:  # (a run that gave no figures: the server did not start, the swarm failed)
                            failed.append(f"- {where.name}, {names[peer]}: {str(one['error']).strip()}")
                            continue
                        one["round"] = where.name
                        cells.setdefault((peer, f"n={one['n']}, C={one['concurrency']}"), []).append(one)
    lines = [
        "| point | server | sends/s (median) | CPU µs per send (median) | p99 ms (median) | lost | runs |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for point in sorted({p for _, p in cells}, key=lambda p: int(p.rpartition("=")[2])):
        for peer, label in names.items():
            runs = cells.get((peer, point), [])
            if runs:
                rate = statistics.median(r["publishes_per_s"] for r in runs)
                cpu = statistics.median(run_cpu_us(r) for r in runs)
                p99 = statistics.median(r["lat_us"]["p99"] for r in runs) / 1000
                lost = sum(r["lost"] for r in runs)
                lines.append(f"| {point} | {label} | {rate:,.0f} | {cpu:.1f} | {p99:.2f} | {lost} | {len(runs)} |")
    lines.append("")
    lines.append("Ours against each peer, by CPU per send, round by round (peer's µs / ours):")
    for point in sorted({p for _, p in cells}, key=lambda p: int(p.rpartition("=")[2])):
        ours_runs = cells.get(("pns4ones", point), [])
        for peer in ("floor", "nchan", "mosquitto"):
            theirs = {t["round"]: t for t in cells.get((peer, point), [])}
            pairs = [run_cpu_us(theirs[o["round"]]) / run_cpu_us(o) for o in ours_runs if o["round"] in theirs]
            if pairs:
                shown = ", ".join(f"{x:.2f}" for x in pairs)
                lines.append(f"- {point}, {names[peer]}: {shown} (median {statistics.median(pairs):.2f})")
    if failed:
        lines.append("")
        lines.append("Runs without figures (left out above):")
        lines.extend(failed)
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="N = 1,000, one run per point, short unicast")
    parser.add_argument(
        "--peers", default="floor,nchan,mosquitto", help="peers to measure beside ours ('' for none; floor is scripts/floor.py)"
    )
    parser.add_argument("--scenario", default="idle,fanout,unicast")
    parser.add_argument("--results-dir", default=str(ROOT / "bench-results"))
    parser.add_argument("--table", action="store_true", help="only print the table")
    parser.add_argument("--server-args", default="", help="more pns4ones options, e.g. '--http-engine twisted'")
    parser.add_argument("--name", default="pns4ones", help="name of our results (e.g. pns4ones-twisted for a comparison run)")
    parser.add_argument("--interleave", type=int, default=0, metavar="ROUNDS", help="unicast: one run of each server in turn, ROUNDS times")
    args, extra = parser.parse_known_args()
    results = Path(args.results_dir).resolve()  # (absolute: nginx reads its files relative to its own prefix)
    if args.table and any(results.glob("round-*")):
        print(interleaved_table(results))
        return 0
    if not args.table:
        if not BENCH.exists():
            print(
                f"bench.py: the shared benchmark harness is not here ({BENCH}): it lives in the shared directory beside "
                "the checkout (set PNS4ONES_SHARED=DIR for another place). The project's own benchmarks need none: "
                "scripts/bench nodes, scripts/bench_store.py, scripts/bench_batch.py, scripts/bench_delivery.py.",
                file=sys.stderr,
            )
            return 1
        if not (BENCH.parent / "swarm" / "swarm").exists():
            run([sys.executable, str(BENCH), "build"])
        common = ["--scenario", args.scenario]
        if args.quick:
            common += ["--n", "1000", "--repeat", "1", "--duration", "3"]
        common += extra
        if args.interleave:
            print(interleaved(results, args.interleave, list(filter(None, args.peers.split(","))), common, args.server_args))
            return 0
        run_ours(results, common, args.server_args, args.name)
        for peer in filter(None, args.peers.split(",")):
            if peer == "floor":
                run_ours(results, common, name="floor", floor=True)
            else:
                run([sys.executable, str(BENCH), "run", "--peer", peer, "--results-dir", str(results), *common])
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
