"""
Admin commands (docs/protocol.md section 5), behind two doors: the console script
``pns4ones-admin`` and ``twistd pns4ones admin``.  Changes go to the store; a
running server notices them within ``store_poll_interval`` (1 s by default).

Run as root against a data directory that belongs to another user (the service
user of an installed service), the command acts as that user: whatever it creates
(the ``.db``, ``-wal``, ``-shm`` files) keeps the service user's ownership, and root
never follows links planted in a directory it does not own.

Exit codes: 0 done, 1 the command failed (unknown id, bad store), 2 usage.
"""

from __future__ import annotations

import argparse
import json
import os
import pwd
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from twisted.internet import defer, task

from . import audit as _audit
from . import catalog
from . import config as _config
from .store import (
    Admin,
    AdminAccount,
    Application,
    Audit,
    AuditEntry,
    Groups,
    KeptMessages,
    Lifecycle,
    StoreError,
    Transfer,
    UnknownApplication,
)

COMMANDS = {
    "list": "list the applications with their keys",
    "create": "create an application: create NAME",
    "upd_srv_key": "new server key for an application (revokes its tokens): upd_srv_key ID",
    "upd_cli_key": "new client key for an application (ends its live subscriptions): upd_cli_key ID",
    "remove": "remove an application (ends its subscriptions, revokes its tokens): remove ID",
    "reset_token": "revoke every access token of an application: reset_token ID",
    "groups": "list the groups of an application: groups ID [IB_ID]",
    "group_members": "list the members of a group: group_members ID IB_ID GROUP",
    "migrate": "create or upgrade the store's schema and report its version",
    "export": "write everything in the store (applications with keys sealed, tokens, groups, kept messages, admin account) as JSON: export FILE|-",
    "import": "load an export into an empty store (--replace: overwrite a store that has applications): import FILE|-",
    "kept": "count the messages kept for offline users, per application (and how many were dropped or expired)",
    "reload_tls": "make the running server re-read its HTTPS certificate files (same as SIGHUP)",
    "restart": "restart the running server from the code and configuration on disk, keeping the 1C desktops connected (what systemctl reload pns4ones does; SIGUSR2 too)",
    "status": "live figures of the running server: uptime, subscriptions, sends, store, listeners",
    "audit": "the administrators' actions (panel and this command), newest first: audit [--limit N]",
    "trace": "the running server's last sends and what each reached, newest first: trace [--ib IB] [--user USER] [--id ID] [--limit N]",
    "panel-password": "set the admin panel's password, asked for (or one line of standard input); ends every panel session",
    "rotate-secrets-key": "seal every key in the store under a new key of the key file (--prepare: only add the new key, for several nodes)",
}

#: What each changing command is called in the audit log (the panel's names for the same actions).
AUDITED = {
    "create": "create",
    "upd_srv_key": "rotate-server",
    "upd_cli_key": "rotate-client",
    "remove": "delete",
    "reset_token": "reset-tokens",
    "export": "export",
    "import": "import",
    "panel-password": "panel-password",
    "rotate-secrets-key": "rotate-secrets-key",
}
#: Most audit records one ``audit`` shows.
AUDIT_LIMIT_MAX = 100_000
#: Most sends one ``trace`` shows (the most a trace holds).
TRACE_LIMIT_MAX = 1_000_000


class CliStore(Admin, Audit, Groups, KeptMessages, Transfer, Lifecycle, Protocol):
    """What the admin commands use of the store: everything but the node's registry."""


class CommandError(Exception):
    pass


def _parser(prog: str, lang: str | None = None, seen: set[str] | None = None) -> argparse.ArgumentParser:
    """The parser, its help in ``lang`` (default: the locale's; texts in :mod:`pns4ones.catalog`)."""
    _ = catalog.translator(lang, seen)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--data-dir", default=argparse.SUPPRESS, help=_("data directory of the service"))
    common.add_argument("--config", default=argparse.SUPPRESS, help=_("the service's INI file (for data_dir)"))
    common.add_argument(
        "--store",
        default=argparse.SUPPRESS,
        help=_(
            "the store: sqlite, sqlite:///PATH.db or postgresql://USER@HOST:PORT/DB (default: the config file's store, else DATA_DIR/pns4ones.db)"
        ),
    )
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help=_("machine-readable output"))
    parser = catalog.parser_class(lang, seen)(
        prog=prog,
        parents=[common],
        description=_("Administer pns4ones applications (changes reach a running server within a second)."),
        epilog=_("commands:") + "\n" + "\n".join(f"  {name:<12} {_(text)}" for name, text in COMMANDS.items()),
    )
    sub = parser.add_subparsers(dest="command", metavar=_("<command>"))
    sub.add_parser("list", parents=[common], help=_(COMMANDS["list"]))
    sub.add_parser("reload_tls", parents=[common], help=_(COMMANDS["reload_tls"]))
    sub.add_parser("kept", parents=[common], help=_(COMMANDS["kept"]))
    sub.add_parser("migrate", parents=[common], help=_(COMMANDS["migrate"]))
    p = sub.add_parser("export", parents=[common], help=_(COMMANDS["export"]))
    p.add_argument("file", help=_("file to write (created with mode 0600: it holds every secret), or - for standard output"))
    p = sub.add_parser("import", parents=[common], help=_(COMMANDS["import"]))
    p.add_argument("file", help=_("a file written by export, or - for standard input"))
    p.add_argument("--replace", action="store_true", help=_("empty the target store first (it may have applications)"))
    p = sub.add_parser("groups", parents=[common], help=_(COMMANDS["groups"]))
    p.add_argument("id", help=_("application id (see list)"))
    p.add_argument("ib_id", nargs="?", default=None, help=_("only this information base"))
    p = sub.add_parser("group_members", parents=[common], help=_(COMMANDS["group_members"]))
    p.add_argument("id", help=_("application id (see list)"))
    p.add_argument("ib_id", help=_("information base id"))
    p.add_argument("group", help=_("group name"))
    sub.add_parser("restart", parents=[common], help=_(COMMANDS["restart"]))
    p = sub.add_parser("rotate-secrets-key", parents=[common], help=_(COMMANDS["rotate-secrets-key"]))
    p.add_argument(
        "--prepare",
        action="store_true",
        help=_("only add a new key to the key file (copy the file to every node, then run the command again)"),
    )
    p.add_argument(
        "--keep-old", action="store_true", help=_("keep the previous key(s) in the key file (old backups stay readable with it)")
    )
    p = sub.add_parser("status", parents=[common], help=_(COMMANDS["status"]))
    p.add_argument(
        "--admin-port", type=int, default=None, help=_("admin port of the server (default: the one it recorded in DATA_DIR/admin.json)")
    )
    p = sub.add_parser("trace", parents=[common], help=_(COMMANDS["trace"]))
    p.add_argument("--app", default="", help=_("only this application (its id)"))
    p.add_argument("--ib", default="", help=_("only this information base"))
    p.add_argument(
        "--user",
        default="",
        help=_("only the sends that concern this user: to him, to his groups, to everyone of his information base (with --ib)"),
    )
    p.add_argument("--id", type=int, default=0, help=_("only the send with this message id (the id of the send's answer)"))
    p.add_argument("--limit", type=int, default=50, help=_("how many of the newest sends (default 50)"))
    p.add_argument(
        "--admin-port", type=int, default=None, help=_("admin port of the server (default: the one it recorded in DATA_DIR/admin.json)")
    )
    p = sub.add_parser("audit", parents=[common], help=_(COMMANDS["audit"]))
    p.add_argument("--limit", type=int, default=50, help=_("how many of the newest records (default 50)"))
    p = sub.add_parser("panel-password", parents=[common], help=_(COMMANDS["panel-password"]))
    p.add_argument("--login", default=None, help=_("the administrator's login (default: keep the current one, or admin)"))
    p = sub.add_parser("create", parents=[common], help=_(COMMANDS["create"]))
    p.add_argument("name", nargs="+", help=_("title of the new application"))
    for name in ("upd_srv_key", "upd_cli_key", "remove", "reset_token"):
        p = sub.add_parser(name, parents=[common], help=_(COMMANDS[name]))
        p.add_argument("id", help=_("application id (see list)"))
    return parser


def _describe(app: Application) -> str:
    return f"{app.title}\n  id:          {app.id}\n  server key:  {app.server_key}\n  client key:  {app.client_key.encode()}\n"


def become_data_owner(data_dir: Path) -> int | None:
    """
    As root, switch this process to the owner of ``data_dir`` when that is not
    root (the service user); return the uid switched to, else None.
    """
    if os.geteuid() != 0:
        return None
    try:
        st = data_dir.stat()
    except OSError:
        return None  # not there yet: root creates it
    if st.st_uid == 0:
        return None
    try:
        user = pwd.getpwuid(st.st_uid)
    except KeyError:  # a bare uid: no supplementary groups
        os.setgroups([])
        gid = st.st_gid
    else:
        gid = user.pw_gid
        os.initgroups(user.pw_name, gid)
    os.setgid(gid)
    os.setuid(st.st_uid)
    return st.st_uid


def _config_of(args: argparse.Namespace) -> _config.Config:
    cli: dict[str, str] = {}
    for name in ("data_dir", "config", "store"):
        if getattr(args, name, None):
            cli[name] = getattr(args, name)
    try:
        return _config.build(cli)
    except _config.ConfigError as e:
        raise CommandError(str(e)) from None


def _signal_server(args: argparse.Namespace, out: Any, request: Any, failed: str) -> None:
    """Signal the server of this data directory (``request``) and report its outcome."""
    from . import control

    cfg = _config_of(args)
    try:
        outcome = request(cfg.data_dir)
    except control.ControlError as e:
        raise CommandError(str(e)) from None
    out.write(json.dumps(outcome, ensure_ascii=False) + "\n" if getattr(args, "json", False) else f"{outcome['message']}\n")
    if not outcome.get("ok"):
        raise CommandError(failed)


def reload_tls(args: argparse.Namespace, out: Any) -> None:
    """SIGHUP the server of this data directory and report what it did."""
    from . import control

    _signal_server(args, out, control.request_reload, "the server kept its current certificate (see above)")


def restart(args: argparse.Namespace, out: Any) -> None:
    """SIGUSR2 the server of this data directory; report the handoff's outcome."""
    from . import handoff

    _signal_server(args, out, handoff.request_restart, "restart failed; the running server keeps serving (see above and its log)")


def status(args: argparse.Namespace, out: Any) -> None:
    """Ask the server of this data directory for its live figures."""
    from . import control
    from . import status as _status

    cfg = _config_of(args)
    try:
        doc = _status.fetch(cfg.data_dir, args.admin_port)
    except control.ControlError as e:
        raise CommandError(str(e)) from None
    out.write(json.dumps(doc, ensure_ascii=False, indent=2) + "\n" if getattr(args, "json", False) else _status.render(doc))


def trace(args: argparse.Namespace, out: Any) -> None:
    """Ask the server of this data directory for its delivery trace (each node has its own)."""
    from . import control
    from . import status as _status
    from . import trace as _trace

    if not 1 <= args.limit <= TRACE_LIMIT_MAX:
        raise CommandError(f"--limit must be from 1 to {TRACE_LIMIT_MAX}")
    if args.id < 0:
        raise CommandError("--id must be a message id (the id of the send's answer)")
    query = {"app": args.app, "ib": args.ib, "user": args.user, "id": str(args.id), "limit": str(args.limit)}
    cfg = _config_of(args)
    try:
        doc = _status.fetch(cfg.data_dir, args.admin_port, resource="/trace.json", query={k: v for k, v in query.items() if v})
    except control.ControlError as e:
        raise CommandError(str(e)) from None
    out.write(json.dumps(doc, ensure_ascii=False, indent=2) + "\n" if getattr(args, "json", False) else _trace.render(doc))


def open_store(args: argparse.Namespace) -> CliStore:
    cfg = _config_of(args)
    if getattr(args, "as_data_owner", False):
        try:
            become_data_owner(cfg.data_dir)
        except OSError as e:
            raise CommandError(f"cannot act as the owner of {cfg.data_dir}: {e}") from None
    from .store import open_store

    try:
        return open_store(cfg)
    except StoreError as e:
        raise CommandError(str(e)) from None


@defer.inlineCallbacks
def run(args: argparse.Namespace, out: Any) -> Any:
    store = open_store(args)
    as_json = getattr(args, "json", False)
    now = time.time()
    record: dict[str, Any] = {}  # what a changing command tells the audit log
    try:
        cmd = args.command
        if cmd == "list":
            apps = yield store.list_applications()
            if as_json:
                out.write(json.dumps([a.as_json() for a in apps], ensure_ascii=False, indent=2) + "\n")
            elif not apps:
                out.write("No applications yet. Create one with: create NAME\n")
            else:
                out.write("\n".join(_describe(a) for a in apps))
        elif cmd == "create":
            title = " ".join(args.name).strip()
            if not title:
                raise CommandError("the application needs a name")
            app = yield store.create_application(title, now)
            record.update(app_id=app.id, title=title)
            if as_json:
                out.write(json.dumps(app.as_json(), ensure_ascii=False) + "\n")
            else:
                out.write("Created application " + _describe(app))
                out.write("Senders (1C server, web shop) need the id and the server key; 1C clients the id and the client key.\n")
        elif cmd in ("upd_srv_key", "upd_cli_key"):
            fn = store.rotate_server_key if cmd == "upd_srv_key" else store.rotate_client_key
            app = yield fn(args.id, now)
            record.update(app_id=app.id, title=app.title)
            if as_json:
                out.write(json.dumps(app.as_json(), ensure_ascii=False) + "\n")
            else:
                what = (
                    "server key (its access tokens are revoked)"
                    if cmd == "upd_srv_key"
                    else "client key (its connected 1C sessions are disconnected)"
                )
                out.write(f"New {what}:\n" + _describe(app))
        elif cmd == "remove":
            app = yield store.remove_application(args.id)
            record.update(app_id=app.id, title=app.title)
            if as_json:
                out.write(json.dumps({"removed": app.id, "title": app.title}, ensure_ascii=False) + "\n")
            else:
                out.write(f"Removed application {app.title} ({app.id}).\n")
        elif cmd == "groups":
            rows = yield store.list_groups(args.id, args.ib_id)
            if as_json:
                out.write(json.dumps([{"IbId": ib, "Group": g, "members": n} for ib, g, n in rows], ensure_ascii=False, indent=2) + "\n")
            elif not rows:
                out.write(f"Application {args.id} has no groups.\n")
            else:
                for ib, g, n in rows:
                    out.write(f"{ib}\t{g}\t{n} member(s)\n")
        elif cmd == "group_members":
            members = yield store.group_members(args.id, args.ib_id, args.group)
            if as_json:
                out.write(json.dumps({"IbId": args.ib_id, "Group": args.group, "UserIds": members}, ensure_ascii=False, indent=2) + "\n")
            elif not members:
                out.write(f"Group {args.group} of {args.ib_id} has no members.\n")
            else:
                out.write("".join(f"{m}\n" for m in members))
        elif cmd == "kept":
            counts = yield store.kept_counts()
            if as_json:
                out.write(
                    json.dumps([{"id": c.app_id, "kept": c.kept, "dropped": c.dropped, "expired": c.expired} for c in counts], indent=2)
                    + "\n"
                )
            else:
                for c in counts:
                    out.write(f"{c.app_id}\tkept {c.kept}\tdropped {c.dropped}\texpired {c.expired}\n")
        elif cmd == "migrate":
            before, version = store.migrated_from, store.schema_version
            if as_json:
                out.write(json.dumps({"store": store.location, "from": before, "version": version}) + "\n")
            elif before == version:
                out.write(f"Store {store.location}: schema version {version}, up to date.\n")
            else:
                out.write(f"Store {store.location}: schema migrated from version {before} to {version}.\n")
        elif cmd == "export":
            doc = yield store.export_data()
            doc["exported_at"] = now
            record.update(file=args.file, store=store.location)
            _write_export(args.file, doc, out)
            if args.file != "-":
                from .store.sealing import Sealed

                keys = (
                    f"its keys are sealed: importing it needs the key file {store.keyring.path}"
                    if isinstance(store, Sealed)
                    else "it holds every key"
                )
                out.write(f"Exported {_summary(doc)} from {store.location} to {args.file} (mode 0600; {keys}).\n")
        elif cmd == "import":
            doc = _read_export(args.file)
            yield store.import_data(doc, replace=args.replace)
            record.update(file=args.file, store=store.location, replace=args.replace)
            if as_json:
                out.write(json.dumps({"store": store.location, "applications": len(doc.get("applications", []))}) + "\n")
            else:
                out.write(f"Imported {_summary(doc)} into {store.location}.\n")
        elif cmd == "rotate-secrets-key":
            yield rotate_secrets_key(store, args, out, now, record)
        elif cmd == "reset_token":
            count = yield store.reset_tokens(args.id)
            record.update(app_id=args.id, count=count)
            if as_json:
                out.write(json.dumps({"id": args.id, "revoked": count}) + "\n")
            else:
                out.write(f"Revoked {count} access token(s) of application {args.id}; its senders must call /auth again.\n")
        elif cmd == "audit":
            yield _show_audit(store, args, out, as_json)
        elif cmd == "panel-password":
            yield _panel_password(store, args, out, as_json, now, record)
        if cmd in AUDITED:
            yield _record(store, args, AUDITED[cmd], now, record)
    finally:
        yield store.close()


@defer.inlineCallbacks
def rotate_secrets_key(store: object, args: argparse.Namespace, out: Any, now: float, record: dict[str, Any]) -> Any:
    """
    ``rotate-secrets-key``: (1) the key file gets a new key beside the current
    one, (2) one transaction seals every key in the store under it and makes it
    the store's key, (3) the key file keeps only the new key (unless
    ``--keep-old``).  A crash between the steps leaves every value readable;
    running the command again finishes.  ``--prepare`` stops after step 1, so
    that the file can be copied to the other nodes before the store changes.
    """
    from .store.sealing import Sealed, new_key

    if not isinstance(store, Sealed):
        raise CommandError("this store keeps no keys at rest: nothing to rotate")
    ring = store.keyring
    current = yield store.sealing_key_id()
    keys = ring.ordered()
    prepared = [k for k in keys if k.id != current]
    new = prepared[-1] if prepared else new_key(k.id for k in keys)
    if not prepared:
        ring.replace([*keys, new])
    if args.prepare:
        record.update(prepared=new.id, current=current, store=store.location)
        if getattr(args, "json", False):
            out.write(json.dumps({"store": store.location, "prepared": new.id, "current": current, "key_file": str(ring.path)}) + "\n")
        else:
            out.write(
                f"The key file {ring.path} holds the new key {new.id} beside the current {current}.\n"
                f"Copy it to every node that shares this store, then run rotate-secrets-key again.\n"
            )
        return
    count = yield store.rotate_secrets_key(new, now)
    record.update(key=new.id, previous=current, sealed=count, store=store.location)
    if not args.keep_old:
        ring.replace([new])
    kept = f"still holds {', '.join(k.id for k in ring.ordered() if k.id != new.id)} too" if args.keep_old else "holds only the new key"
    if getattr(args, "json", False):
        out.write(
            json.dumps({"store": store.location, "key": new.id, "previous": current, "sealed": count, "key_file": str(ring.path)}) + "\n"
        )
    else:
        out.write(
            f"Sealed {count} key(s) in {store.location} under the new key {new.id} (was {current}); {ring.path} {kept}.\n"
            f"Nodes sharing this store need this key file: copy it to them (a running node reads it again when it meets the new key).\n"
        )


@defer.inlineCallbacks
def _record(store: Any, args: argparse.Namespace, action: str, now: float, record: dict[str, Any]) -> Any:
    """The audit record of a changing command, as the OS user who ran it (taken before acting as the data's owner)."""
    actor, address = args.actor if getattr(args, "actor", None) else _audit.cli_actor()
    app_id = str(record.pop("app_id", ""))
    entry = AuditEntry(now, actor, "cli", address, action, app_id, _audit.detail(**record) if record else "")
    yield store.add_audit(entry, _audit.MAX_ROWS)


@defer.inlineCallbacks
def _show_audit(store: Any, args: argparse.Namespace, out: Any, as_json: bool) -> Any:
    if not 1 <= args.limit <= AUDIT_LIMIT_MAX:
        raise CommandError(f"--limit must be from 1 to {AUDIT_LIMIT_MAX}")
    total, entries = yield store.list_audit(args.limit)
    if as_json:
        out.write(json.dumps([_audit.as_json(e) for e in entries], ensure_ascii=False, indent=2) + "\n")
    else:
        out.write(_audit.render(entries, total))


@defer.inlineCallbacks
def _panel_password(store: Any, args: argparse.Namespace, out: Any, as_json: bool, now: float, record: dict[str, Any]) -> Any:
    """Set the administrator's password (hashed before the reactor ran); the panel ends every session whose password is not this one."""
    from .admin import auth, firstrun

    if args.login is not None and not 0 < len(args.login.strip()) <= auth.LOGIN_MAX:
        raise CommandError(f"--login must be 1 to {auth.LOGIN_MAX} characters")
    current = yield store.get_admin()
    login = args.login.strip() if args.login else (current.login if current is not None else "admin")
    yield store.set_admin(AdminAccount(login, args.password_hash), now)
    try:
        firstrun.remove_file(_config_of(args).data_dir)  # no set-up needed any more
    except OSError:
        pass
    record.update(login=login, created=current is None)
    if as_json:
        out.write(json.dumps({"login": login, "created": current is None, "sessions_ended": True}, ensure_ascii=False) + "\n")
    else:
        what = "Created the panel administrator" if current is None else "Set the panel password of"
        out.write(f"{what} {login!r}; every open panel session ends at its next request.\n")


def _new_panel_password() -> str:
    """The new panel password, asked twice on a terminal or one line of standard input (never an argument): its hash."""
    import getpass

    from .admin import auth

    if sys.stdin.isatty():
        try:
            password = getpass.getpass("New admin panel password: ")
            again = getpass.getpass("The same again: ")
        except (EOFError, KeyboardInterrupt):
            raise CommandError("no password given; nothing changed") from None
        if password != again:
            raise CommandError("the two passwords differ; nothing changed")
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    if len(password) < auth.PASSWORD_MIN:
        raise CommandError(f"the password must be at least {auth.PASSWORD_MIN} characters long; nothing changed")
    if len(password) > auth.PASSWORD_MAX:
        raise CommandError(f"the password is longer than {auth.PASSWORD_MAX} characters; nothing changed")
    return auth.hash_password(password)


def _summary(doc: dict[str, Any]) -> str:
    members = sum(len(g.get("members", [])) for g in doc.get("groups", []))
    return (
        f"{len(doc.get('applications', []))} application(s), {len(doc.get('tokens', []))} token(s), "
        f"{len(doc.get('groups', []))} group(s) with {members} member(s), {len(doc.get('kept_messages', []))} kept message(s), "
        f"{'an' if doc.get('admin') else 'no'} admin account"
    )


def _write_export(name: str, doc: dict[str, Any], out: Any) -> None:
    text = json.dumps(doc, ensure_ascii=False, indent=1) + "\n"
    if name == "-":
        out.write(text)
        return
    try:
        fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        os.fchmod(fd, 0o600)  # an existing file keeps no wider mode
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
    except OSError as e:
        raise CommandError(f"cannot write {name}: {e.strerror or e}") from None


def _read_export(name: str) -> Any:
    try:
        text = sys.stdin.read() if name == "-" else Path(name).read_text(encoding="utf-8")
    except OSError as e:
        raise CommandError(f"cannot read {name}: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise CommandError(f"{name} is not UTF-8 text: not a pns4ones export") from None
    try:
        return json.loads(text)
    except ValueError as e:
        raise CommandError(f"{name} is not JSON ({e}): not a pns4ones export") from None


def main(
    argv: Sequence[str] | None = None, prog: str = "pns4ones-admin", out: Any = None, err: Any = None, as_data_owner: bool = False
) -> int:
    """Run one command; ``as_data_owner``: as root, act as the data directory's owner (a whole-process switch, for the console scripts)."""
    out = out or sys.stdout
    err = err or sys.stderr
    parser = _parser(prog)
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv:
        parser.print_help(out)
        return 0
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:
        return int(e.code or 0)
    if not args.command:
        parser.print_help(out)
        return 2
    if args.command in ("reload_tls", "restart", "status", "trace"):  # no store, no reactor: a signal, a file, a local HTTP request
        try:
            {"reload_tls": reload_tls, "restart": restart, "status": status, "trace": trace}[args.command](args, out)
        except CommandError as e:
            err.write(f"{prog}: {e}\n")
            return 1
        return 0
    args.as_data_owner = as_data_owner
    args.actor = _audit.cli_actor()  # who ran it, before acting as the data directory's owner
    if args.command == "panel-password":
        try:
            args.password_hash = _new_panel_password()
        except CommandError as e:
            err.write(f"{prog}: {e}\n")
            return 1
    result: dict[str, int] = {}

    def go(reactor: Any) -> Any:
        d = run(args, out)

        def failed(failure: Any) -> None:
            if failure.check(UnknownApplication):
                err.write(f"{prog}: {failure.value}; see '{prog} list'\n")
            elif failure.check(CommandError, StoreError):
                err.write(f"{prog}: {failure.value}\n")
            else:
                err.write(f"{prog}: unexpected error: {failure.getTraceback()}\n")
            result["code"] = 1

        return d.addErrback(failed)

    try:
        task.react(go)
    except SystemExit as e:
        code = int(e.code or 0)
    else:  # pragma: no cover - react always exits
        code = 0
    return result.get("code", code)


def console() -> None:
    sys.exit(main(as_data_owner=True))
