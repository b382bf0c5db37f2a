"""
The store behind small interfaces, one per role.

Every method returns a ``Deferred``, so that a networked store can stand in for
the embedded SQLite one without changes above.  The roles:

* :class:`Registry`: what a node keeps in memory (``snapshot``) and its tokens;
* :class:`Groups`: group membership;
* :class:`KeptMessages`: messages kept for offline users;
* :class:`Admin`: applications, their keys, the admin panel's account;
* :class:`Transfer`: ``pns4ones-admin export`` / ``import``;
* :class:`Lifecycle`: location, availability, schema version, change
  notification, closing.

Each user declares the roles it uses (``Core``: registry, groups, kept
messages; the admin panel: admin; the CLI: all but the registry; the service:
:class:`Store`, every role).  Three implementations: SQLite (``sqlite.py``) and
PostgreSQL (``postgres.py``) share their SQL (``_sql.py``); ``memory.py`` keeps
everything in dictionaries, for tests and as the reference.  One contract test
suite (``tests/test_postgres.py``) runs on all three.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from twisted.internet.defer import Deferred

from ..jsondoc import JSONObject
from ..wire import ClientKey

if TYPE_CHECKING:
    from ..config import Config
    from ..reactor import IStoreReactor


class StoreError(Exception):
    """The store cannot do what was asked."""


class StoreUnavailable(StoreError):
    """The store cannot be reached now (PostgreSQL restarting): answer 503, try again later."""


class UnknownApplication(StoreError):
    def __init__(self, app_id: str) -> None:
        super().__init__(f"no application with id {app_id!r}")
        self.app_id = app_id


@dataclass(frozen=True, slots=True)
class Application:
    id: str
    title: str
    server_key: str
    client_key: ClientKey
    created_at: float

    def as_json(self) -> dict[str, str]:
        return {"id": self.id, "title": self.title, "server_key": self.server_key, "client_key": self.client_key.encode()}


@dataclass(frozen=True, slots=True)
class TokenRecord:
    digest: bytes
    app_id: str
    token_id: bytes
    issued_at: float
    expires_at: float


@dataclass(frozen=True, slots=True)
class AdminAccount:
    login: str
    password_hash: str


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What the running service keeps in memory: every application and live token."""

    applications: tuple[Application, ...]
    tokens: tuple[TokenRecord, ...]
    #: ``(app_id, ib_id, group, user_id)`` rows of every group.
    memberships: tuple[tuple[str, str, str, str], ...] = ()
    #: ``(app_id, ib_id)`` pairs that have kept messages (registrations there look them up).
    kept_ibs: frozenset[tuple[str, str]] = frozenset()


@dataclass(frozen=True, slots=True)
class KeptMessage:
    """A message kept for users who are offline (store and forward)."""

    app_id: str
    ib_id: str
    type: str  # user, group or all
    target: str  # the user id, the group name, or "" for all
    payload: bytes  # the add-in JSON (rendered once)
    created_at: float
    expires_at: float


@dataclass(frozen=True, slots=True)
class KeptOutcome:
    """What keeping a message did: its id and the older messages dropped to stay in bounds."""

    id: int
    dropped_user: int
    dropped_app: int


@dataclass(frozen=True, slots=True)
class KeptCount:
    app_id: str
    kept: int
    dropped: int
    expired: int


@dataclass(frozen=True, slots=True)
class KeptTarget:
    """Kept messages waiting for one recipient: a user, a group, or everyone (``all``) of an information base."""

    ib_id: str
    type: str
    target: str
    count: int
    oldest: float  # created_at of the oldest
    next_expiry: float  # the first to expire
    last_expiry: float


@dataclass(frozen=True, slots=True)
class KeptInfo:
    """One kept message as the admin panel lists it."""

    id: int
    type: str
    target: str
    created_at: float
    expires_at: float
    payload: bytes


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One administrator action: ``source`` is ``panel`` (actor: its login) or ``cli`` (actor: the OS user)."""

    at: float
    actor: str
    source: str
    address: str
    action: str
    app_id: str = ""
    detail: str = ""
    id: int = 0


class Registry(Protocol):
    """What a node keeps in memory (applications, tokens, groups) and the tokens it issues: the Core's registry."""

    def snapshot(self) -> Deferred[Snapshot]: ...
    def add_token(self, token: TokenRecord) -> Deferred[None]: ...
    def get_token(self, digest: bytes) -> Deferred[TokenRecord | None]:
        """A token issued by any node (another node's /auth a moment ago), or None."""

    def purge_tokens(self, expired_before: float) -> Deferred[int]: ...
    def list_applications(self) -> Deferred[list[Application]]:
        """Every application (a node looks for keys it does not know yet; also an :class:`Admin` ability)."""


class Groups(Protocol):
    """Group membership per application and information base; every change is one transaction."""

    def set_group(self, app_id: str, ib_id: str, group: str, user_ids: list[str], now: float) -> Deferred[None]: ...
    def add_group_members(self, app_id: str, ib_id: str, group: str, user_ids: list[str], now: float) -> Deferred[int]: ...
    def remove_group_member(self, app_id: str, ib_id: str, group: str, user_id: str) -> Deferred[int]: ...
    def remove_group(self, app_id: str, ib_id: str, group: str) -> Deferred[int]: ...
    def list_groups(self, app_id: str, ib_id: str | None = None) -> Deferred[list[tuple[str, str, int]]]: ...
    def group_members(self, app_id: str, ib_id: str, group: str) -> Deferred[list[str]]: ...


class KeptMessages(Protocol):
    """Messages kept for users who are offline (store and forward)."""

    def keep_message(self, message: KeptMessage, received_by: list[str], max_per_user: int, max_per_app: int) -> Deferred[KeptOutcome]: ...
    def take_kept(self, app_id: str, ib_id: str, user_id: str, groups: list[str], now: float) -> Deferred[list[bytes]]:
        """The unexpired kept messages for this user not received yet, oldest first; recorded as received."""

    def purge_kept(self, now: float) -> Deferred[int]: ...
    def kept_ibs(self) -> Deferred[frozenset[tuple[str, str]]]: ...
    def kept_counts(self) -> Deferred[list[KeptCount]]: ...
    # for the admin panel (pages: ``(total, rows)``)
    def kept_summary(self, app_id: str, now: float, limit: int, offset: int = 0) -> Deferred[tuple[int, list[KeptTarget]]]: ...
    def kept_for_user(
        self, app_id: str, ib_id: str, user_id: str, groups: list[str], now: float, limit: int, offset: int = 0
    ) -> Deferred[tuple[int, list[KeptInfo]]]: ...
    def delete_kept_for_user(
        self, app_id: str, ib_id: str, user_id: str, groups: list[str], now: float, ids: list[int] | None = None
    ) -> Deferred[int]:
        """The user's own kept messages are deleted; group and ``all`` ones are marked received by him."""

    def delete_kept_target(self, app_id: str, ib_id: str, type: str, target: str) -> Deferred[int]: ...


class Admin(Protocol):
    """What an administrator changes: applications and their keys, token resets, the panel's account."""

    def list_applications(self) -> Deferred[list[Application]]: ...
    def get_application(self, app_id: str) -> Deferred[Application]: ...
    def create_application(self, title: str, now: float) -> Deferred[Application]: ...
    def rotate_server_key(self, app_id: str, now: float) -> Deferred[Application]: ...
    def rotate_client_key(self, app_id: str, now: float) -> Deferred[Application]: ...
    def remove_application(self, app_id: str) -> Deferred[Application]: ...
    def reset_tokens(self, app_id: str) -> Deferred[int]: ...
    def get_admin(self) -> Deferred[AdminAccount | None]: ...
    def set_admin(self, account: AdminAccount, now: float) -> Deferred[None]: ...
    def rename_application(self, app_id: str, title: str, now: float) -> Deferred[Application]: ...


class Audit(Protocol):
    """The audit log of administrator actions (pages: ``(total, rows)``, newest first)."""

    def add_audit(self, entry: AuditEntry, max_rows: int) -> Deferred[int]: ...
    def list_audit(self, limit: int, offset: int = 0) -> Deferred[tuple[int, list[AuditEntry]]]: ...


class Transfer(Protocol):
    """``pns4ones-admin export`` / ``import``: everything, secrets included (see :mod:`.export`)."""

    def export_data(self) -> Deferred[JSONObject]: ...
    def import_data(self, doc: object, replace: bool = False) -> Deferred[int]: ...


class Lifecycle(Protocol):
    """Where the store is, whether it answers now, its schema, change notification, closing."""

    #: Where the data lives, for messages (a PostgreSQL URL without its password).
    location: str
    #: False while the store cannot be reached (PostgreSQL restarting): ``/ready`` and the metrics say so.
    available: bool
    #: Why it is unavailable ("" while available).
    unavailable_reason: str
    #: Schema versions before and after the migrations applied on open (``pns4ones-admin migrate``).
    migrated_from: int
    schema_version: int

    def start_watching(self, on_change: Callable[[], object], interval: float) -> None:
        """Call ``on_change`` when another process or node changed what nodes keep in memory."""

    def stop_watching(self) -> None: ...
    def close(self) -> Deferred[None]: ...


class Store(Registry, Groups, KeptMessages, Admin, Audit, Transfer, Lifecycle, Protocol):
    """Every role at once: what :func:`open_store` returns and the service owns."""


def open_store(config: Config, reactor: IStoreReactor | None = None) -> Store:
    """The store ``config.store`` names: the data directory's SQLite file by default, or PostgreSQL (migrated on open)."""
    location = config.store
    # The key that seals the store's secrets lives outside it (store/sealing.py).
    key_file = Path(config.secrets_key_file or Path(config.data_dir) / "secrets.key")
    if location == "sqlite" or location.startswith("sqlite://"):
        from .sqlite import SQLiteStore

        path = location[len("sqlite://") :] if location != "sqlite" else None
        return SQLiteStore(config.data_dir, reactor=reactor, path=path, key_file=key_file)
    from .postgres import PostgresStore

    # The data directory still holds the node's own files (PID, admin.json, handoff).
    try:
        Path(config.data_dir).mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as e:
        raise StoreError(f"cannot create the data directory {config.data_dir}: {e.strerror or e}") from None
    return PostgresStore(location, password_file=config.store_password_file, reactor=reactor, key_file=key_file)


def redact_url(url: str) -> str:
    """``url`` without its password, for logs and messages."""
    from urllib.parse import urlsplit, urlunsplit

    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable URL>"
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)
    user = netloc[0].split(":", 1)[0]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc[1]}"))
