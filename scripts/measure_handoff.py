#!/usr/bin/env python3
"""
Measure the pause in delivery while ``pns4ones-admin restart`` hands N add-in
subscriptions over to a new process (issue 13).

    .venv/bin/python scripts/measure_handoff.py [--subscribers 10000] [--interval 0.2]

Starts a real ``twistd -n pns4ones`` on loopback, connects N subscribers (one
reader thread here), posts a numbered broadcast every ``interval`` seconds,
restarts once and prints, for messages sent before and during the handoff, the
latency from the start of the POST to the arrival at each subscriber (p50, p99,
max), and checks every accepted message arrived exactly once.  The latency
includes this script's own reading and decrypting of N frames per message (one
Python thread), so compare "during" with "before".
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import resource
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.handoff_support import Fleet, Sender, alive, check_exactly_once, latencies, server_pid  # noqa: E402
from tests.support import ServerProcess, wait_for  # noqa: E402


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(p / 100 * len(values)))]


def _worker(port: int, app: dict[str, str], first: int, count: int, pipe: object) -> None:
    """One reader process: ``count`` subscribers; reports what each received (CLOCK_MONOTONIC is system-wide)."""
    fleet = Fleet(port, app, count, first=first)
    pipe.send("connected")
    pipe.recv()  # stop
    fleet.close()
    pipe.send((fleet.received, fleet.errors, fleet.closed))


class Readers:
    """N subscribers spread over several reader processes, so reading and decrypting is not the bottleneck."""

    def __init__(self, port: int, app: dict[str, str], total: int, processes: int) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.pipes, self.procs = [], []
        share = -(-total // processes)
        for first in range(0, total, share):
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_worker, args=(port, app, first, min(share, total - first), child), daemon=True)
            proc.start()
            self.pipes.append(parent)
            self.procs.append(proc)
        for pipe in self.pipes:
            assert pipe.recv() == "connected"

    def collect(self) -> Fleet:
        merged = Fleet.__new__(Fleet)
        merged.received, merged.errors, merged.closed = [], [], set()
        for pipe in self.pipes:
            pipe.send("stop")
        for pipe in self.pipes:
            received, errors, closed = pipe.recv()
            merged.closed |= {len(merged.received) + i for i in closed}
            merged.received += received
            merged.errors += errors
        for proc in self.procs:
            proc.join(10)
        return merged


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--subscribers", type=int, default=10_000)
    parser.add_argument("--interval", type=float, default=0.1, help="seconds between broadcasts")
    parser.add_argument("--readers", type=int, default=8, help="reader processes")
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = args.subscribers + 1000
    if soft < need:
        if hard != resource.RLIM_INFINITY and hard < need:
            print(f"open-file limit {hard} is too low for {args.subscribers} subscribers", file=sys.stderr)
            return 1
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))  # the server inherits it
    server = ServerProcess(log_level="Warning")
    try:
        app = server.create_app("measure")
        server.start()
        old = server_pid(server.data_dir)
        t0 = time.monotonic()
        readers = Readers(server.service_port, app, args.subscribers, args.readers)
        time.sleep(2)  # registrations
        print(f"{args.subscribers} subscribers connected in {time.monotonic() - t0:.1f} s ({args.readers} reader processes)")
        sender = Sender(server.api_port, app, interval=args.interval)
        sender.seq = 1_000_000
        sender.start()
        time.sleep(3)
        start = time.monotonic()
        result = server.admin("restart", check=False)
        end = time.monotonic()
        print(f"pns4ones-admin restart: exit {result.returncode} in {end - start:.2f} s: {result.stdout.strip()} {result.stderr.strip()}")
        time.sleep(3)
        sender.stop()
        time.sleep(3)
        fleet = readers.collect()
        problems = check_exactly_once(fleet, sender)
        before = {s for s, at in sender.accepted.items() if at < start - 0.5}
        during = {s for s, at in sender.accepted.items() if start <= at <= end}
        for name, seqs in (("before", before), ("during", during)):
            lat = latencies(fleet, sender, seqs)
            print(
                f"{name:>7}: {len(seqs)} messages, {len(lat)} deliveries: p50 {pct(lat, 50) * 1000:.0f} ms, p99 {pct(lat, 99) * 1000:.0f} ms, max {max(lat, default=0) * 1000:.0f} ms"
            )
        new = server_pid(server.data_dir)
        print(f"server pid {old} -> {new}; old alive: {alive(old) and server.proc.poll() is None}; failed sends: {sender.failed[:5]}")
        print("exactly once, in order, frames intact:", "yes" if not problems else problems[:5])
        if new != old and alive(new):
            os.kill(new, 15)
            wait_for(lambda: not alive(new), 30, what="the server to stop")
        return 0 if not problems and result.returncode == 0 else 1
    finally:
        server.cleanup()


if __name__ == "__main__":
    sys.exit(main())
