"""
``pns4ones-send`` and ``pns4ones-listen``: send a message, and see what a 1C
user would receive, from a shell.  Options fall back to PNS4ONES_* environment
variables, so that keys need not appear on command lines.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from collections.abc import Sequence
from typing import Any, TextIO
from urllib.parse import urlsplit

from . import _api
from .errors import SendError
from .listener import Listener
from .sender import Sender

DEFAULT_URL = "http://localhost:36696"
DEFAULT_SERVICE = "localhost:36695"


def _env(name: str, default: str = "") -> str:
    return os.environ.get(name, default)


def _key_value(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, value


def _recipient(text: str) -> tuple[str, str]:
    kind, _, target = text.partition(":")
    if kind == "all" and not target:
        return kind, ""
    if kind in ("user", "group") and target:
        return kind, target
    raise argparse.ArgumentTypeError(f"recipient must be user:ID, group:NAME or all, not {text!r}")


def _service(text: str) -> tuple[str, int]:
    try:
        parts = urlsplit("//" + text.strip())
        host, port = parts.hostname, parts.port or 36695
    except ValueError:
        host = None
    if not host:
        raise argparse.ArgumentTypeError(f"expected HOST[:PORT] ([IPv6]:PORT), got {text!r}")
    return host, port


# -- pns4ones-send ----------------------------------------------------------------------------


def send_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="pns4ones-send",
        description='Send one message through the pns4ones send API and print the service\'s answer: {"sessions", "users", "stored", ...}.',
        epilog="examples:\n"
        "  PNS4ONES_SERVER_KEY=... pns4ones-send --ib $IB user:$USER 'New order' 'No. 1234' --data order=1234\n"
        "  pns4ones-send --url https://pns.example.com:36696 --ca-file ca.pem --ib $IB all 'Price list updated'\n"
        "  pns4ones-send --ib $IB user:$USER 'Invoice approved' --ttl 86400   # kept until the user connects (a day at most)\n"
        "exit code 0 when the service accepted the message (even if nobody was connected), 1 otherwise.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("recipient", type=_recipient, help="user:USER_ID, group:GROUP or all")
    p.add_argument("title", nargs="?", default="", help="notification title")
    p.add_argument("body", nargs="?", default="", help="notification text")
    p.add_argument("--ib", default=_env("PNS4ONES_IB"), help="information base id, IbId (env PNS4ONES_IB)")
    p.add_argument("--data", type=_key_value, action="append", default=[], metavar="KEY=VALUE", help="a Data member; repeatable")
    p.add_argument("--topic", default="", help="message topic")
    p.add_argument("--important", action="store_true", help="mark the notification important")
    p.add_argument("--icon", default="", help="notification icon")
    p.add_argument("--action", default="", help="notification action (a 1C navigation link)")
    p.add_argument(
        "--ttl",
        type=float,
        default=None,
        metavar="SECONDS",
        help="keep the message this long for recipients not connected now, delivered when they connect (default: online only)",
    )
    p.add_argument("--url", default=_env("PNS4ONES_URL", DEFAULT_URL), help=f"send API (env PNS4ONES_URL, default {DEFAULT_URL})")
    p.add_argument("--server-key", default=_env("PNS4ONES_SERVER_KEY"), help="the application's server key (env PNS4ONES_SERVER_KEY)")
    p.add_argument(
        "--ca-file",
        default=_env("PNS4ONES_CA_FILE") or None,
        help="PEM CA certificate(s) to trust for HTTPS (env PNS4ONES_CA_FILE; default: the system's)",
    )
    p.add_argument("--timeout", type=float, default=10.0, help="seconds per HTTP request (default 10)")
    return p


def send_main(argv: Sequence[str] | None = None, out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    parser = send_parser()
    args = parser.parse_args(argv)
    if not args.ib:
        parser.error("--ib (or PNS4ONES_IB) is required")
    if not args.server_key:
        parser.error("--server-key (or PNS4ONES_SERVER_KEY) is required")
    kind, target = args.recipient
    try:
        sender = Sender(args.url, args.server_key, ca_file=args.ca_file, timeout=args.timeout)
        recipient = _api.recipient(kind, args.ib, user_id=target if kind == "user" else "", group=target if kind == "group" else "")
        message = _api.message(
            args.title,
            args.body,
            topic=args.topic,
            data=dict(args.data),
            important=args.important,
            icon=args.icon,
            action=args.action,
            ttl=args.ttl,
        )
        result = sender.send(recipient, message)
    except (ValueError, OSError) as e:
        err.write(f"pns4ones-send: {e}\n")
        return 1
    except SendError as e:
        err.write(f"pns4ones-send: {e}\n")
        return 1
    out.write(json.dumps(dict(result.raw) or {"sessions": result.sessions, "users": result.users}, ensure_ascii=False) + "\n")
    return 0


# -- pns4ones-listen --------------------------------------------------------------------------


def listen_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="pns4ones-listen",
        description="Subscribe like the 1C add-in and print each message received as one JSON line "
        "(what the 1C user would get). Reconnects when the service restarts; status lines go to stderr.",
        epilog="example:\n  PNS4ONES_APP_ID=... PNS4ONES_CLIENT_KEY=... pns4ones-listen --ib $IB --user $USER | jq .",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--service",
        type=_service,
        default=_env("PNS4ONES_SERVICE", DEFAULT_SERVICE),
        help=f"HOST[:PORT] of the subscription listener (env PNS4ONES_SERVICE, default {DEFAULT_SERVICE})",
    )
    p.add_argument("--app-id", default=_env("PNS4ONES_APP_ID"), help="application id (env PNS4ONES_APP_ID)")
    p.add_argument("--client-key", default=_env("PNS4ONES_CLIENT_KEY"), help="the application's client key (env PNS4ONES_CLIENT_KEY)")
    p.add_argument("--ib", default=_env("PNS4ONES_IB"), help="information base id (env PNS4ONES_IB)")
    p.add_argument("--user", default=_env("PNS4ONES_USER"), help="user id to register as (env PNS4ONES_USER)")
    p.add_argument(
        "--group",
        default=_env("PNS4ONES_GROUP"),
        help="user group to register with (env PNS4ONES_GROUP; the stock add-in always sends none)",
    )
    p.add_argument("--count", type=int, default=0, help="exit after this many messages (default: run until interrupted)")
    p.add_argument("--quiet", action="store_true", help="no status lines on stderr")
    return p


def listen_main(argv: Sequence[str] | None = None, out: Any = None, err: TextIO = sys.stderr) -> int:
    parser = listen_parser()
    args = parser.parse_args(argv)
    for name, option in (("app_id", "--app-id"), ("client_key", "--client-key"), ("ib", "--ib"), ("user", "--user")):
        if not getattr(args, name):
            parser.error(f"{option} (or PNS4ONES_{name.upper()}) is required")
    out = out if out is not None else sys.stdout.buffer

    def status(event: str, detail: Any) -> None:
        if not args.quiet:
            text = f"retrying in {detail:.1f} s" if event == "retrying" else f"{event}: {detail}"
            err.write(f"pns4ones-listen: {text}\n")
            err.flush()

    try:
        listener = Listener(*args.service, args.app_id, args.client_key, args.ib, args.user, args.group, on_status=status)
    except ValueError as e:
        err.write(f"pns4ones-listen: client key: {e}\n")
        return 1
    signal.signal(signal.SIGTERM, lambda *_: listener.stop())
    received = 0
    try:
        for message in listener.messages():
            out.write(json.dumps(message, ensure_ascii=False).encode("utf-8") + b"\n")
            out.flush()
            received += 1
            if args.count and received >= args.count:
                listener.stop()
    except KeyboardInterrupt:
        pass
    except BrokenPipeError:  # the reader went away (| head -1)
        return 0
    return 0


def send_console() -> None:
    sys.exit(send_main())


def listen_console() -> None:
    sys.exit(listen_main())
