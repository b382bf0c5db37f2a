"""
Configuration, without I/O beyond reading the INI file's text.

Sources, later ones winning: built-in defaults, the INI file, the command line.
Every option is both an INI key and a command-line option.  Command-line forms
of the original's manual are accepted: ``/listen x``, ``/listen=x``,
``-listen=x``, ``-listen x``, ``--listen=x``, ``--listen x``; INI keys may be
spelled with spaces or dashes (``log level``).  Every error names the option and
where its value came from, and is a :class:`ConfigError`.
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar

from .catalog import translator

DEFAULT_LISTEN_PORT = 36696
DEFAULT_SERVICE_PORT = 36695
DEFAULT_ADMIN_PORT = 36697
DEFAULT_METRICS_PORT = 36698
SYSTEM_CONFIG = Path("/etc/pns4ones/pns4ones.ini")
#: The installed service's state (store, admin.json, control files); configuration stays in /etc/pns4ones.
SYSTEM_DATA_DIR = Path("/var/lib/pns4ones")


class ConfigError(ValueError):
    """A bad option: ``option`` is its name, ``source`` where the value came from."""

    def __init__(self, option: str, message: str, source: str = "") -> None:
        where = f" (from {source})" if source else ""
        super().__init__(f"option '{option}'{where}: {message}")
        self.option = option
        self.source = source


class HelpRequested(Exception):
    """``-h`` was given."""


# --- value types -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Address:
    """A listening address: ``hosts`` to bind (empty = all interfaces) and a port."""

    text: str
    hosts: tuple[str, ...]
    port: int

    def describe(self) -> str:
        hosts = ", ".join(f"[{h}]" if ":" in h else h for h in self.hosts) or "*"
        return f"{hosts} port {self.port}"


def _ipv6_available() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


def all_interfaces() -> tuple[str, ...]:
    """Hosts that mean "every interface": dual-stack ``::`` where IPv6 works."""
    return ("::",) if _ipv6_available() else ("0.0.0.0",)


def _port(text: str, option: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise ConfigError(option, f"port {text!r} is not a number from 1 to 65535")
    return int(text)


def parse_address(value: str, default_port: int, option: str, allow_hint: str | None = None) -> Address:
    """
    ``*``, ``*:PORT``, ``HOST``, ``HOST:PORT``; HOST is ``localhost``, an IPv4
    address, ``[IPv6]`` (bare IPv6 without a port too) or a resolvable name.
    """
    text = value.strip()
    if not text:
        raise ConfigError(option, "is empty")
    host, port = text, default_port
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise ConfigError(option, f"{text!r}: missing ']' after an IPv6 address")
        host, rest = text[1:end], text[end + 1 :]
        if rest:
            if not rest.startswith(":"):
                raise ConfigError(option, f"{text!r}: expected ':PORT' after ']'")
            port = _port(rest[1:], option)
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ConfigError(option, f"{host!r} is not an IPv6 address") from None
        return Address(text, (host,), port)
    if text.count(":") > 1:
        try:
            ipaddress.IPv6Address(text)
        except ValueError:
            raise ConfigError(option, f"{text!r}: write IPv6 addresses in brackets, e.g. [::1]:{default_port}") from None
        return Address(text, (text,), port)
    if ":" in text:
        host, port_text = text.rsplit(":", 1)
        port = _port(port_text, option)
    if "/" in host:
        raise ConfigError(
            option,
            f"{host!r} is a network, not an address of this machine; to accept only some "
            f"networks, listen on '*' and list them in {allow_hint or 'an allow-list option'} (CIDR)",
        )
    if host in ("*", "", "0.0.0.0"):
        return Address(text, all_interfaces() if host != "0.0.0.0" else ("0.0.0.0",), port)
    if host.lower() == "localhost":
        return Address(text, ("127.0.0.1", "::1") if _ipv6_available() else ("127.0.0.1",), port)
    try:
        ip = ipaddress.IPv4Address(host)
    except ValueError:
        ip = None
    if ip is not None:
        if ip.packed[3] == 0 and allow_hint:
            net = ".".join(host.split(".")[:3])
            raise ConfigError(
                option,
                f"{host} looks like a network, not an address of this machine. To accept "
                f"clients only from {net}.x, keep {option}=*:{port} (or this machine's own "
                f"address) and set {allow_hint}={host}/24",
            )
        return Address(text, (host,), port)
    if re.fullmatch(r"[0-9.]+", host):
        raise ConfigError(option, f"{host!r} is not a valid IPv4 address")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as e:
        raise ConfigError(option, f"host name {host!r} does not resolve: {e}") from None
    hosts = tuple(dict.fromkeys(str(info[4][0]) for info in infos))
    return Address(text, hosts, port)


def parse_networks(value: str, option: str) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    nets = []
    for item in re.split(r"[\s,]+", value.strip()):
        if not item:
            continue
        try:
            nets.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise ConfigError(option, f"{item!r} is not a network in CIDR form (e.g. 192.168.10.0/24)") from None
    return tuple(nets)


_SIZE = re.compile(r"^\s*(\d+)\s*([kKmMgG]?)(i?[bB])?\s*$")


def parse_size(value: str, option: str) -> int:
    m = _SIZE.match(value)
    if not m:
        raise ConfigError(option, f"{value!r} is not a size (e.g. 65536, 64K, 1M)")
    return int(m.group(1)) * {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}[m.group(2).lower()]


#: A number option's type.
_N = TypeVar("_N", int, float)


def _number(kind: Callable[[str], _N], lo: float, hi: float) -> Callable[[str, str], _N]:
    def parse(value: str, option: str) -> _N:
        try:
            n = kind(value.strip())
        except ValueError:
            raise ConfigError(option, f"{value!r} is not a number") from None
        if not lo <= n <= hi:
            raise ConfigError(option, f"{value} is out of range {lo:g}..{hi:g}")
        return n

    return parse


def _choice(*names: str) -> Callable[[str, str], str]:
    lookup = {n.lower(): n for n in names}

    def parse(value: str, option: str) -> str:
        try:
            return lookup[value.strip().lower()]
        except KeyError:
            raise ConfigError(option, f"{value!r} is not one of: {', '.join(names)}") from None

    return parse


LOG_LEVELS = ("Trace", "Debug", "Information", "Warning", "Error", "Critical", "None")
SSL_MODES = ("None", "FromStorage", "FromFileWithPrivateKey", "FromFileWithPassword")


def _log_level(value: str, option: str) -> str:
    if value.strip().lower() in ("info", "informational"):
        return "Information"
    if value.strip().lower() in ("warn",):
        return "Warning"
    return _choice(*LOG_LEVELS)(value, option)


def _metrics_auth(value: str, option: str) -> str:
    value = value.strip()
    if value and (":" not in value or not value.split(":", 1)[0] or not value.split(":", 1)[1]):
        raise ConfigError(option, "write it as USER:PASSWORD")
    return value


def _boolean(value: str, option: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("true", "yes", "on", "1"):
        return True
    if lowered in ("false", "no", "off", "0"):
        return False
    raise ConfigError(option, f"{value!r} is neither true nor false")


def _text(value: str, option: str) -> str:
    return value


def _store(value: str, option: str) -> str:
    """``sqlite`` (the data directory's file), ``sqlite:///ABSOLUTE/PATH.db`` or a PostgreSQL URL."""
    value = value.strip()
    lowered = value.lower()
    if lowered in ("", "sqlite"):
        return "sqlite"
    if lowered.startswith("sqlite:///"):
        path = value[len("sqlite://") :]
        if not os.path.isabs(path) or path.endswith("/"):
            raise ConfigError(option, "write a SQLite file as sqlite:///ABSOLUTE/PATH.db")
        return "sqlite://" + path
    if lowered.startswith(("postgresql://", "postgres://")):
        return value
    raise ConfigError(option, f"{value!r} is neither sqlite, sqlite:///PATH nor a postgresql:// URL")


def _hub(value: str, option: str) -> str:
    """``local`` (one process) or ``redis://``/``rediss://`` URL of the hub between nodes."""
    value = value.strip()
    lowered = value.lower()
    if lowered in ("", "local"):
        return "local"
    if lowered.startswith(("redis://", "rediss://")):
        return value
    raise ConfigError(option, f"{value!r} is neither local nor a redis:// or rediss:// URL")


def _path(value: str, option: str) -> str:
    return os.path.expanduser(value.strip()) if value.strip() else ""


def _origins(value: str, option: str) -> tuple[str, ...]:
    """``scheme://host[:port]`` origins (lowercased, no path), or ``*``."""
    out = []
    for item in re.split(r"[\s,]+", value.strip()):
        if not item:
            continue
        origin = item.lower().rstrip("/")
        if origin != "*" and not re.fullmatch(r"https?://[^/\s?#]+", origin):
            raise ConfigError(option, f"{item!r} is not an origin like https://host or https://host:port (or *)")
        out.append(origin)
    return tuple(out)


# --- the option table ----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Option:
    name: str
    default: str
    parse: Callable[[str, str], object]
    help: str
    metavar: str = "VALUE"
    secret: bool = False


OPTIONS: tuple[Option, ...] = (
    Option("config", "", _path, "INI file (default /etc/pns4ones/pns4ones.ini, else DATA_DIR/pns4ones.ini, when present)", "PATH"),
    Option(
        "data_dir",
        "",
        _path,
        "where the store, keys and account live (default /var/lib/pns4ones for root and for its owner, the service user; else ~/.config/pns4ones)",
        "DIR",
    ),
    Option("listen", "*", _text, "send API address: *, *:PORT, HOST, HOST:PORT, [IPv6]:PORT (default *:36696)", "ADDR"),
    Option("service", "*", _text, "add-in subscription address, same syntax (default *:36695)", "ADDR"),
    Option("service_allow", "", _text, "accept add-in clients only from these networks (CIDR, comma-separated; default all)", "CIDRS"),
    Option(
        "admin_port",
        str(DEFAULT_ADMIN_PORT),
        _number(int, 1, 65535),
        "port of the admin panel, always on loopback only (default 36697)",
        "PORT",
    ),
    Option("log_level", "Warning", _log_level, "Trace, Debug, Information, Warning (default), Error, Critical, None", "LEVEL"),
    Option("log_format", "text", _choice("text", "json"), "text (default) or json (one JSON event per line)", "FORMAT"),
    Option("ssl_mode", "None", _choice(*SSL_MODES), "None (default), FromStorage, FromFileWithPrivateKey, FromFileWithPassword", "MODE"),
    Option("ssl_certificate", "", _text, "certificate file (PEM or PFX), or its name in the store for FromStorage", "PATH|NAME"),
    Option("ssl_certificate_key", "", _path, "PEM private key file (FromFileWithPrivateKey)", "PATH"),
    Option("ssl_certificate_password", "", _text, "password of the PFX file or of an encrypted private key", "PASSWORD", secret=True),
    Option(
        "trusted_proxies",
        "",
        _text,
        "reverse proxies (CIDR, comma-separated) whose X-Forwarded-For/-Proto name the real sender (default none)",
        "CIDRS",
    ),
    Option(
        "expires_in_format",
        "unix",
        _choice("unix", "legacy"),
        "expires_in of /auth: unix (default, as documented) or legacy (seconds since 0001-01-01, as the original)",
        "FORMAT",
    ),
    Option(
        "token_lifetime",
        "3600",
        _number(float, 2, 86400 * 30),
        "seconds an access token from /auth stays valid (default 3600, as the original)",
        "SECONDS",
    ),
    Option("max_body_size", "1M", parse_size, "largest accepted HTTP request body (default 1M)", "SIZE"),
    Option("max_batch", "1000", _number(int, 1, 100000), "most messages in one POST /sendmessages (default 1000)", "N"),
    Option(
        "max_registration_size",
        "4096",
        _number(int, 64, 65535),
        "largest accepted add-in registration frame in bytes (default 4096)",
        "BYTES",
    ),
    Option(
        "registration_timeout", "10", _number(float, 0.1, 3600), "seconds a new add-in connection has to register (default 10)", "SECONDS"
    ),
    Option(
        "max_subscriptions",
        "0",
        _number(int, 0, 10_000_000),
        "most live add-in connections; 0 = no limit but the open-file limit (default 0)",
        "N",
    ),
    Option(
        "max_unregistered",
        "5000",
        _number(int, 1, 10_000_000),
        "most add-in connections that have not registered yet; past it the oldest one waiting over a second is closed for a newcomer, else the newcomer is refused (default 5000)",
        "N",
    ),
    Option(
        "max_unregistered_per_address",
        "1000",
        _number(int, 1, 10_000_000),
        "most add-in connections from one address that have not registered yet, same rule (default 1000: a terminal server or NAT reconnecting all its sessions at once)",
        "N",
    ),
    Option(
        "fd_reserve",
        "0",
        _number(int, 0, 1_000_000),
        "file descriptors kept free for the send API, the admin panel and the store: new add-in connections are refused when fewer are free (default 0 = a tenth of the open-file limit, at least 50 and at most 1000)",
        "N",
    ),
    Option("send_buffer_limit", "1M", parse_size, "bytes queued for one slow subscriber before it is cut off (default 1M)", "SIZE"),
    Option("keepalive_idle", "60", _number(int, 1, 86400), "TCP keepalive: idle seconds before the first probe (default 60)", "SECONDS"),
    Option("keepalive_interval", "10", _number(int, 1, 3600), "TCP keepalive: seconds between probes (default 10)", "SECONDS"),
    Option("keepalive_count", "6", _number(int, 1, 100), "TCP keepalive: unanswered probes before the peer is dead (default 6)", "N"),
    Option(
        "request_timeout", "30", _number(float, 1, 3600), "seconds an HTTP client may take to send a whole request (default 30)", "SECONDS"
    ),
    Option("send_rate_limit", "0", _number(float, 0, 1e9), "sends per second per application, 0 = unlimited (default 0)", "RATE"),
    Option(
        "metrics_listen",
        "",
        _text,
        "also serve /metrics on this address (syntax of listen, default port 36698; default: only on the admin listener)",
        "ADDR",
    ),
    Option(
        "metrics_auth",
        "",
        _metrics_auth,
        "USER:PASSWORD that scrapes of metrics_listen must send (HTTP basic auth; default none)",
        "USER:PASSWORD",
        secret=True,
    ),
    Option(
        "store",
        "sqlite",
        _store,
        "sqlite (default: DATA_DIR/pns4ones.db), sqlite:///PATH.db, or postgresql://USER[:PASSWORD]@HOST:PORT/DB to share one store between nodes",
        "STORE",
        secret=True,
    ),
    Option("store_password_file", "", _path, "file holding the PostgreSQL password (instead of the URL or PGPASSWORD)", "PATH"),
    Option(
        "secrets_key_file",
        "",
        _path,
        "the key that seals the keys kept in the store (default DATA_DIR/secrets.key, created at first start; nodes sharing a store need the same file)",
        "PATH",
    ),
    Option(
        "hub",
        "local",
        _hub,
        "local (default: one process) or redis://HOST:PORT/DB (rediss:// for TLS) to fan out between nodes",
        "HUB",
        secret=True,
    ),
    Option("node_name", "", _text, "this node's name in presence and logs when hub is redis (default HOSTNAME:LISTEN_PORT)", "NAME"),
    Option(
        "hub_presence_expiry",
        "15",
        _number(float, 1, 3600),
        "seconds after which the other nodes forget a node that stopped refreshing its presence in Redis (default 15; refreshed every third of it)",
        "SECONDS",
    ),
    Option(
        "store_poll_interval",
        "1",
        _number(float, 0.05, 60),
        "seconds between checks for changes made by the admin CLI (default 1)",
        "SECONDS",
    ),
    Option(
        "max_ttl",
        "86400",
        _number(float, 0, 86400 * 365),
        "longest TTL a sender may ask to keep a message for offline users, in seconds (default 86400)",
        "SECONDS",
    ),
    Option(
        "max_kept_per_user",
        "100",
        _number(int, 1, 1_000_000),
        "most kept messages for one user; the oldest is dropped first (default 100)",
        "N",
    ),
    Option(
        "max_kept_per_app",
        "100000",
        _number(int, 1, 100_000_000),
        "most kept messages for one application; the oldest is dropped first (default 100000)",
        "N",
    ),
    Option("max_group_size", "10000", _number(int, 1, 10_000_000), "most members of one group (default 10000)", "N"),
    Option("max_groups", "10000", _number(int, 1, 10_000_000), "most groups of one application (default 10000)", "N"),
    Option(
        "allowed_origins",
        "",
        _origins,
        "browser origins allowed to subscribe over WebSocket/SSE (comma-separated, e.g. https://erp.example.com; * = any; default none)",
        "ORIGINS",
    ),
    Option(
        "ticket_ttl",
        "300",
        _number(int, 5, 86400),
        "seconds a subscription ticket from /tickets is valid when no TTL is asked (default 300)",
        "SECONDS",
    ),
    Option("ticket_max_ttl", "3600", _number(int, 5, 86400), "longest TTL /tickets grants (default 3600)", "SECONDS"),
    Option("ws_ping_interval", "30", _number(float, 0.05, 3600), "seconds between WebSocket pings (default 30)", "SECONDS"),
    Option(
        "ws_ping_timeout",
        "30",
        _number(float, 0.05, 3600),
        "seconds a WebSocket peer has to answer a ping before it is closed (default 30)",
        "SECONDS",
    ),
    Option(
        "sse_heartbeat", "15", _number(float, 0.05, 3600), "seconds between Server-Sent Events comment heartbeats (default 15)", "SECONDS"
    ),
    Option(
        "http_engine",
        "lean",
        _choice("lean", "twisted"),
        "send API HTTP: lean (default: one bounded HTTP/1.1 state machine over httptools answers the send routes and hands the rest to twisted.web) or twisted (twisted.web for everything, the reference path)",
        "ENGINE",
    ),
    Option(
        "recovery_window",
        "120",
        _number(float, 0, 86400),
        "seconds of messages kept per information base for resuming WebSocket/SSE clients (default 120; 0 = none)",
        "SECONDS",
    ),
    Option(
        "recovery_messages",
        "1000",
        _number(int, 0, 1_000_000),
        "most messages kept per information base for resuming clients (default 1000)",
        "N",
    ),
    Option(
        "trace_size",
        "5000",
        _number(int, 0, 1_000_000),
        "sends the delivery trace keeps in memory: admin panel Trace page, pns4ones-admin trace (default 5000; 0 = off)",
        "N",
    ),
    Option(
        "trace_bodies",
        "false",
        _boolean,
        "keep each traced message's text (title, body, data; its first 2000 characters) in the delivery trace (default false)",
        "BOOL",
    ),
)

OPTION_BY_NAME = {o.name: o for o in OPTIONS}


@dataclass(frozen=True)
class Config:
    """The validated configuration the service runs with."""

    config_file: str
    data_dir: Path
    listen: Address
    service: Address
    service_allow: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]
    admin_port: int
    log_level: str
    log_format: str
    ssl_mode: str
    ssl_certificate: str
    ssl_certificate_key: str
    ssl_certificate_password: str
    expires_in_format: str
    token_lifetime: float
    max_body_size: int
    max_batch: int
    max_registration_size: int
    registration_timeout: float
    max_subscriptions: int
    send_buffer_limit: int
    keepalive_idle: int
    keepalive_interval: int
    keepalive_count: int
    request_timeout: float
    send_rate_limit: float
    store_poll_interval: float
    trusted_proxies: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    max_ttl: float = 86400.0
    max_kept_per_user: int = 100
    max_kept_per_app: int = 100000
    max_group_size: int = 10000
    max_groups: int = 10000
    allowed_origins: tuple[str, ...] = ()
    ticket_ttl: int = 300
    ticket_max_ttl: int = 3600
    ws_ping_interval: float = 30.0
    ws_ping_timeout: float = 30.0
    sse_heartbeat: float = 15.0
    http_engine: str = "lean"
    recovery_window: float = 120.0
    recovery_messages: int = 1000
    metrics_listen: Address | None = None
    metrics_auth: str = ""
    store: str = "sqlite"
    store_password_file: str = ""
    hub: str = "local"
    node_name: str = ""
    hub_presence_expiry: float = 15.0
    max_unregistered: int = 5000
    max_unregistered_per_address: int = 1000
    fd_reserve: int = 0
    secrets_key_file: str = ""
    trace_size: int = 5000
    trace_bodies: bool = False
    sources: Mapping[str, str] = field(default_factory=dict, compare=False)

    def source_of(self, option: str) -> str:
        return self.sources.get(option, "default")

    @property
    def node(self) -> str:
        """This node's name: ``node_name``, else ``HOSTNAME:LISTEN_PORT`` (the Redis hub's default)."""
        return self.node_name or f"{socket.gethostname()}:{self.listen.port}"


# --- parsing -------------------------------------------------------------------


def normalize_name(name: str) -> str:
    return re.sub(r"[\s\-]+", "_", name.strip().lower())


def parse_ini(text: str, path: str = "<ini>") -> dict[str, tuple[str, str]]:
    """``key = value`` lines; ``;``/``#`` comment lines; a ``[section]`` line is ignored."""
    out: dict[str, tuple[str, str]] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip().lstrip("\ufeff")
        if not line or line[0] in ";#" or (line.startswith("[") and line.endswith("]")):
            continue
        if "=" not in line:
            raise ConfigError(line.split()[0][:40], f"line {number} is not 'key = value'", f"{path}:{number}")
        key, value = line.split("=", 1)
        name = normalize_name(key)
        if name not in OPTION_BY_NAME or name == "config":
            raise ConfigError(key.strip(), f"unknown option on line {number}", f"{path}:{number}")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        out[name] = (value, f"{path}:{number}")
    return out


HELP_FLAGS = {"-h", "--help", "/h", "/?", "-?", "/help", "-help"}


def parse_argv(argv: Sequence[str]) -> tuple[dict[str, str], list[str]]:
    """
    Command-line options in any of the manual's forms; returns the options
    (name -> value) and the positional arguments.  Everything after the first
    positional argument is positional (for subcommands such as ``admin``).
    """
    options: dict[str, str] = {}
    positional: list[str] = []
    args = list(argv)
    i = 0
    while i < len(args):
        arg = args[i]
        i += 1
        if positional:
            positional.append(arg)
            continue
        if arg in HELP_FLAGS:
            raise HelpRequested()
        if arg == "--":
            positional.extend(args[i:])
            break
        prefix = "--" if arg.startswith("--") else arg[:1] if arg[:1] in "-/" else ""
        if not prefix or arg == prefix:
            positional.append(arg)
            continue
        body = arg[len(prefix) :]
        name_part, has_value, value = body.partition("=")
        name = normalize_name(name_part)
        if name not in OPTION_BY_NAME:
            if prefix == "/" and not has_value:
                positional.append(arg)  # a path, not an option
                continue
            raise ConfigError(name_part, "unknown option (see -h)", "command line")
        if not has_value:
            if i >= len(args):
                raise ConfigError(name, "needs a value", "command line")
            value = args[i]
            i += 1
        options[name] = value
    return options, positional


def _owner_of(path: Path) -> int | None:
    try:
        return path.stat().st_uid
    except OSError:
        return None


def _readable_file(path: Path) -> bool:
    """A file this user may read; not one in a directory closed to him (the installed service's /etc/pns4ones, 0700)."""
    try:
        return path.is_file() and os.access(path, os.R_OK)
    except PermissionError:
        return False


def default_data_dir(environ: Mapping[str, str] | None = None, euid: int | None = None) -> Path:
    environ = os.environ if environ is None else environ
    euid = os.geteuid() if euid is None else euid
    if euid == 0 or _owner_of(SYSTEM_DATA_DIR) == euid:  # root, or the installed service's user
        return SYSTEM_DATA_DIR
    base = environ.get("XDG_CONFIG_HOME") or os.path.join(environ.get("HOME") or os.path.expanduser("~"), ".config")
    return Path(base) / "pns4ones"


def build(cli: Mapping[str, str], environ: Mapping[str, str] | None = None, euid: int | None = None) -> Config:
    """Defaults, then the INI file, then ``cli``; validate into a :class:`Config`."""
    raw: dict[str, tuple[str, str]] = {o.name: (o.default, "default") for o in OPTIONS}
    cli_values = {k: (v, "command line") for k, v in cli.items()}
    config_file = ""
    if "config" in cli and cli["config"].strip():
        config_file = _path(cli["config"], "config")
        if not os.path.exists(config_file) or os.path.isdir(config_file):
            raise ConfigError("config", f"file {config_file} does not exist", "command line")
    else:
        data_dir_guess = Path(_path(cli["data_dir"], "data_dir")) if cli.get("data_dir") else default_data_dir(environ, euid)
        for candidate in (SYSTEM_CONFIG, data_dir_guess / "pns4ones.ini"):
            if _readable_file(candidate):
                config_file = str(candidate)
                break
    if config_file:
        try:
            text = Path(config_file).read_text(encoding="utf-8-sig")
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError("config", f"cannot read {config_file}: {e}") from None
        raw.update(parse_ini(text, config_file))
    raw.update(cli_values)

    values: dict[str, Any] = {}
    for opt in OPTIONS:
        value, source = raw[opt.name]
        try:
            values[opt.name] = opt.parse(value, opt.name)
        except ConfigError as e:
            raise ConfigError(opt.name, str(e).split(": ", 1)[-1], source) from None

    def addr(name: str, port: int, hint: str | None) -> Address:
        value, source = raw[name]
        try:
            return parse_address(value, port, name, hint)
        except ConfigError as e:
            raise ConfigError(name, str(e).split(": ", 1)[-1], source) from None

    def _networks(name: str) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
        value, source = raw[name]
        try:
            return parse_networks(value, name)
        except ConfigError as e:
            raise ConfigError(name, str(e).split(": ", 1)[-1], source) from None

    data_dir = Path(values["data_dir"]) if values["data_dir"] else default_data_dir(environ, euid)
    values.update(
        config_file=config_file,
        data_dir=data_dir,
        listen=addr("listen", DEFAULT_LISTEN_PORT, None),
        service=addr("service", DEFAULT_SERVICE_PORT, "service_allow"),
        service_allow=parse_networks(raw["service_allow"][0], "service_allow"),
        trusted_proxies=_networks("trusted_proxies"),
        metrics_listen=addr("metrics_listen", DEFAULT_METRICS_PORT, None) if raw["metrics_listen"][0].strip() else None,
        sources={k: s for k, (_, s) in raw.items()},
    )
    values.pop("config")
    names = {f.name for f in fields(Config)}
    return Config(**{k: v for k, v in values.items() if k in names})


def help_text(program: str = "twistd -n pns4ones", lang: str | None = None, seen: set[str] | None = None) -> str:
    """``-h``: the options with their help, in ``lang`` (default: the locale's; see :mod:`pns4ones.catalog`)."""
    _ = translator(lang, seen)
    lines = [
        _("Usage:") + f" {program} [options]",
        f"       {program.replace(' -n', '')} admin <command> [...]   ("
        + _("the commands: {program} admin --help").format(program=program.replace(" -n", ""))
        + ")",
        "",
        _("Options (also INI keys; write them as --name=value, --name value, -name=value or /name value):"),
    ]
    for opt in OPTIONS:
        lines.append(f"  --{opt.name.ljust(26)} {_(opt.help)}")
    lines.append(f"  -h, --help                   {_('show this help')}")
    return "\n".join(lines)
