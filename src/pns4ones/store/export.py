"""
The ``pns4ones-admin export`` document, checked before anything is written
(pure: no I/O).  Every store imports the same document (:meth:`import_data`)
and exports it in the same shape, so an export moves between SQLite,
PostgreSQL and the in-memory store.

A bad document is a :class:`~pns4ones.store.StoreError` naming the place
(``tokens[3].app_id``), never a half-done import.
"""

from __future__ import annotations

import base64
import binascii

from ..jsondoc import JSONObject
from ..wire import ClientKey
from . import StoreError
from .sealing import key_id_of

#: The format of ``pns4ones-admin export`` files: version 1 holds the keys in
#: plaintext (the in-memory store, and versions before sealing), version 2 sealed
#: as the SQL stores keep them (store/sealing.py: importing needs the key file).
EXPORT_FORMAT = "pns4ones-export"
EXPORT_VERSION = 1
SEALED_VERSION = 2


def _need(cond: bool, where: str, what: str) -> None:
    if not cond:
        raise StoreError(f"not a pns4ones export: {where} {what}")


def _fields(item: object, where: str, spec: dict[str, type | tuple[type, ...]]) -> JSONObject:
    if not isinstance(item, dict):
        raise StoreError(f"not a pns4ones export: {where} must be an object")
    for name, kind in spec.items():
        _need(name in item, where, f"lacks {name!r}")
        value = item[name]
        ok = isinstance(value, kind) and not (isinstance(value, bool) and kind is not bool)
        _need(ok, f"{where}.{name}", "has the wrong type")
    return item


def _list(doc: JSONObject, name: str) -> list[object]:
    value = doc.get(name, [])
    if not isinstance(value, list):
        raise StoreError(f"not a pns4ones export: {name} must be a list")
    return value


def _hex(value: str, where: str) -> bytes:
    try:
        return bytes.fromhex(value)
    except ValueError:
        raise StoreError(f"not a pns4ones export: {where} is not hexadecimal") from None


def check_export(doc: object) -> JSONObject:
    """The document with bytes decoded, or StoreError saying what is wrong."""
    if not isinstance(doc, dict) or doc.get("format") != EXPORT_FORMAT:
        raise StoreError(f'not a pns4ones export: the document lacks "format": "{EXPORT_FORMAT}"')
    _need(doc.get("version") in (EXPORT_VERSION, SEALED_VERSION), "version", f"must be {EXPORT_VERSION} or {SEALED_VERSION}")
    sealed = doc["version"] == SEALED_VERSION
    num = (int, float)
    apps = []
    ids = set()
    for i, item in enumerate(_list(doc, "applications")):
        where = f"applications[{i}]"
        a = _fields(item, where, {"id": str, "title": str, "server_key": str, "client_key": str, "created_at": num, "updated_at": num})
        for column in ("server_key", "client_key"):
            is_sealed = key_id_of(a[column]) is not None
            _need(is_sealed == sealed, f"{where}.{column}", "is not sealed" if sealed else "is sealed in a version 1 export")
        if not sealed:  # a sealed one is checked once opened, by the store that has the key
            try:
                ClientKey.decode(a["client_key"])
            except Exception:
                raise StoreError(f"not a pns4ones export: {where}.client_key is not a client key") from None
        _need(a["id"] not in ids, f"{where}.id", "is a duplicate")
        ids.add(a["id"])
        apps.append(a)

    def known(app_id: str, where: str) -> None:
        _need(app_id in ids, f"{where}.app_id", f"names no application in the file ({app_id!r})")

    tokens = []
    for i, item in enumerate(_list(doc, "tokens")):
        where = f"tokens[{i}]"
        t = _fields(item, where, {"digest": str, "app_id": str, "token_id": str, "issued_at": num, "expires_at": num})
        known(t["app_id"], where)
        tokens.append({**t, "digest": _hex(t["digest"], f"{where}.digest"), "token_id": _hex(t["token_id"], f"{where}.token_id")})
    groups = []
    for i, item in enumerate(_list(doc, "groups")):
        where = f"groups[{i}]"
        g = _fields(item, where, {"app_id": str, "ib_id": str, "group": str, "members": list})
        known(g["app_id"], where)
        for j, m in enumerate(g["members"]):
            _fields(m, f"{where}.members[{j}]", {"user_id": str, "added_at": num})
        groups.append(g)
    kept = []
    for i, item in enumerate(_list(doc, "kept_messages")):
        where = f"kept_messages[{i}]"
        k = _fields(
            item,
            where,
            {
                "app_id": str,
                "ib_id": str,
                "type": str,
                "target": str,
                "payload": str,
                "created_at": num,
                "expires_at": num,
                "received_by": list,
            },
        )
        known(k["app_id"], where)
        _need(k["type"] in ("user", "group", "all"), f"{where}.type", "must be user, group or all")
        _need(all(isinstance(u, str) for u in k["received_by"]), f"{where}.received_by", "must be a list of user ids")
        try:
            payload = base64.b64decode(k["payload"], validate=True)
        except (binascii.Error, ValueError):
            raise StoreError(f"not a pns4ones export: {where}.payload is not base64") from None
        kept.append({**k, "payload": payload})
    stats = []
    for i, item in enumerate(_list(doc, "kept_stats")):
        s = _fields(item, f"kept_stats[{i}]", {"app_id": str, "dropped": int, "expired": int})
        known(s["app_id"], f"kept_stats[{i}]")
        stats.append(s)
    admin = doc.get("admin")
    if admin is not None:
        _fields(admin, "admin", {"login": str, "password_hash": str, "updated_at": num})
    return {
        "applications": apps, "tokens": tokens, "groups": groups, "kept_messages": kept, "kept_stats": stats, "admin": admin,
        "sealed": sealed,
    }  # fmt: skip
