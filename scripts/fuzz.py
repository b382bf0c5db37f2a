#!/usr/bin/env python3
"""
Coverage-guided fuzzing (atheris) of the pure parsers: the add-in registration
frame, the /sendmessage body, the INI file and the command line.  Each target
must only ever raise its own error type; anything else is a crash, reported
with the input that caused it.

    scripts/fuzz                    60 s per target
    scripts/fuzz --seconds 600 registration
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time


def target_registration(data: bytes) -> None:
    from pns4ones import wire

    try:
        wire.parse_registration(data)
    except wire.WireError:
        pass


def target_send(data: bytes) -> None:
    from pns4ones.messages import MessageError, parse_send, render_addin_json

    try:
        send = parse_send(data)
    except MessageError:
        return
    plaintext = render_addin_json(send.message)
    assert plaintext.startswith(b"{") and not any(b >= 0xF0 for b in plaintext)
    json.loads(plaintext)


def target_ini(data: bytes) -> None:
    from pns4ones.config import ConfigError, parse_ini

    try:
        parse_ini(data.decode("utf-8", "replace"))
    except ConfigError:
        pass


def target_argv(data: bytes) -> None:
    from pns4ones.config import ConfigError, HelpRequested, parse_argv

    try:
        parse_argv(data.decode("utf-8", "replace").split("\x00"))
    except (ConfigError, HelpRequested):
        pass


TARGETS = {"registration": target_registration, "send": target_send, "ini": target_ini, "argv": target_argv}
SEEDS = {
    "registration": [bytes.fromhex("2000544818abff73ed9fb5b1c4ff200b5704cea4df4f53acb12e17aed6aa13ea5d0b6170700069620075310000")],
    "send": [
        b'{"Recipient": {"Type": "all", "IbId": "x"}, "Message": {"Topic": "t", "Notification": {"Title": "a", "Important": true}, "Data": {"k": "v"}}}'
    ],
    "ini": [b"listen = *:8092\n; c\nlog level=Error\n"],
    "argv": [b"/listen\x00localhost\x00-log_level=Error\x00--service=*:1"],
}


def _run(name: str, seconds: int) -> None:
    import os
    import tempfile

    import atheris

    corpus = tempfile.mkdtemp(prefix=f"fuzz-{name}-")
    for i, seed in enumerate(SEEDS[name]):
        with open(os.path.join(corpus, f"seed{i}"), "wb") as f:
            f.write(seed)
    with atheris.instrument_imports():
        import pns4ones.config
        import pns4ones.messages
        import pns4ones.wire  # noqa: F401
    atheris.Setup([sys.argv[0], f"-max_total_time={seconds}", "-print_final_stats=1", "-max_len=4096", corpus], TARGETS[name])
    atheris.Fuzz()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=60, help="seconds per target (default 60)")
    parser.add_argument("--child", choices=list(TARGETS), help=argparse.SUPPRESS)
    parser.add_argument("targets", nargs="*", metavar="TARGET", help="registration, send, ini, argv (default all)")
    args = parser.parse_args()
    if args.child:
        _run(args.child, args.seconds)
        return 0
    failed = []
    unknown = set(args.targets) - set(TARGETS)
    if unknown:
        parser.error(f"unknown target(s): {', '.join(sorted(unknown))}")
    for name in args.targets or list(TARGETS):
        print(f"== fuzzing {name} for {args.seconds} s", flush=True)
        started = time.monotonic()
        proc = subprocess.run(
            [sys.executable, __file__, "--child", name, "--seconds", str(args.seconds)],
            capture_output=True,
            text=True,
            timeout=args.seconds + 120,
        )
        stats = [
            line
            for line in proc.stderr.splitlines()
            if line.startswith(("stat::number_of_executed_units", "stat::average_exec_per_sec", "==", "Done"))
        ]
        print(*stats, sep="\n")
        print(f"== {name}: exit code {proc.returncode} after {time.monotonic() - started:.0f} s", flush=True)
        if proc.returncode != 0:
            print(proc.stderr[-3000:], file=sys.stderr)
            failed.append(name)
    if failed:
        print("crashes in: " + ", ".join(failed), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
