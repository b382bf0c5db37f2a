"""
The real sender behind a reverse proxy (nginx, Apache, IIS terminating HTTPS):
``X-Forwarded-For`` and ``X-Forwarded-Proto`` are believed only when the
connection comes from an address in ``trusted_proxies``; from anyone else they
are ignored, so a sender cannot choose the address the log shows.

``X-Forwarded-For`` is read from the right (the nearest proxy appends last):
skip addresses that are trusted proxies themselves; the first one that is not is
the client.  A malformed entry ends the walk at the last good hop.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from typing import Any

from twisted.internet.address import IPv4Address, IPv6Address

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    text = text.strip()
    if text.startswith("[") and "]" in text:  # [v6]:port
        text = text[1 : text.index("]")]
    elif text.count(":") == 1:  # v4:port
        text = text.split(":", 1)[0]
    try:
        ip = ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def is_trusted(host: str, trusted: Sequence[Network]) -> bool:
    ip = _ip(host)
    return ip is not None and any(ip in net for net in trusted)


def client_address(peer: str, forwarded_for: Iterable[str], trusted: Sequence[Network]) -> str:
    """The address to believe for a request from ``peer`` carrying these X-Forwarded-For headers."""
    if not is_trusted(peer, trusted):
        return peer
    hops = [item for header in forwarded_for for item in header.split(",") if item.strip()]
    current = peer
    for item in reversed(hops):
        ip = _ip(item)
        if ip is None:
            break
        current = str(ip)
        if not any(ip in net for net in trusted):
            break
    return current


def forwarded_proto(peer: str, values: Iterable[str], trusted: Sequence[Network]) -> str | None:
    """``http``/``https`` from the nearest trusted proxy, else ``None``."""
    if not is_trusted(peer, trusted):
        return None
    items = [item.strip().lower() for value in values for item in value.split(",") if item.strip()]
    return items[-1] if items and items[-1] in ("http", "https") else None


def resolve(peer: str, headers: Iterable[tuple[bytes, bytes]], trusted: Sequence[Network]) -> tuple[str, str | None]:
    """
    The sender's address and ``http``/``https`` (or None) for a request from
    ``peer`` with these header fields (names in any case), believed only when
    ``peer`` is a trusted proxy.
    """
    if not trusted or not is_trusted(peer, trusted):
        return peer, None
    hops: list[str] = []
    schemes: list[str] = []
    for name, value in headers:
        lower = name.lower()
        if lower == b"x-forwarded-for":
            hops.append(value.decode("latin-1"))
        elif lower == b"x-forwarded-proto":
            schemes.append(value.decode("latin-1"))
    return client_address(peer, hops, trusted), forwarded_proto(peer, schemes, trusted)


def apply(request: Any, trusted: Sequence[Network]) -> None:
    """Point ``request.getClientAddress()`` at the real sender (twisted.web ``Request``)."""
    peer = request.client
    host = getattr(peer, "host", None)
    if not trusted or host is None or not is_trusted(host, trusted):
        return
    headers = request.requestHeaders
    real = client_address(host, [v.decode("latin-1") for v in headers.getRawHeaders(b"x-forwarded-for", [])], trusted)
    if real != host:
        kind = IPv6Address if ":" in real else IPv4Address
        request.client = kind("TCP", real, 0)
    proto = forwarded_proto(host, [v.decode("latin-1") for v in headers.getRawHeaders(b"x-forwarded-proto", [])], trusted)
    if proto is not None:
        request.forwarded_proto = proto
