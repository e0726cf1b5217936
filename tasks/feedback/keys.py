"""API keys: who calls the prediction service, and what each caller may do.

A *principal* is a named caller (a person, a team, a client application) with
one role. Roles are ordered, each implying the ones below it:

- ``client``: ``POST /predict`` (and the other reads) when ``serve.protect_reads``
  is on;
- ``reviewer``: ``POST /feedback`` and ``GET /review`` (other users' texts);
- ``admin``: ``POST /admin/reload`` and any other operation.

Keys live in the table ``api_keys`` of the feedback database
(``feedback.db_url``), created and revoked with ``slmops keys``. A key reads
``slm_<id>_<secret>``: the id is public (it names the row, so a lookup is one
primary-key read) and the secret is ``secrets.token_urlsafe(32)``, 256 random
bits. Only a random salt and ``HMAC-SHA256(salt, secret)`` are stored; the
key itself is shown once, when it is made. A slow password hash (bcrypt,
scrypt) protects *guessable* secrets from a stolen table; a 256-bit random
secret cannot be guessed whatever the hash's speed, so one HMAC keeps the
check at about a microsecond on every request.

The shared token of ``serve.token_env`` / ``serve.token_file`` from before keys
existed still works: it is the principal :data:`TOKEN_PRINCIPAL`, an admin
(``serving/auth.py``).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError

from slmops.tasks.core.config import Params
from slmops.tasks.feedback import migrations
from slmops.tasks.feedback.store import make_engine, upgrade_schema

KEY_PREFIX = "slm"
ID_HEX_CHARS = 12  # 48 bits: unique among a few thousand keys; public anyway
SECRET_BYTES = 32
SALT_BYTES = 16
MAX_SECRET_CHARS = 128  # anything longer is not one of ours: refused before any hashing
# The principal of the shared token (serve.token_env / serve.token_file): an admin.
# Reserved: no key may take the name, so its feedback is never mixed with a key's.
TOKEN_PRINCIPAL = "api-token"
# How long the service trusts a key's row it read (serving/auth.py): a revoked key is
# refused at most this long after `slmops keys revoke`.
KEY_CACHE_SECONDS = 5.0
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")
_KEY_PATTERN = re.compile(rf"{KEY_PREFIX}_(?P<id>[0-9a-f]{{{ID_HEX_CHARS}}})_(?P<secret>\S+)")


class Role(StrEnum):
    """What a principal may do; each role implies the ones before it."""

    client = "client"
    reviewer = "reviewer"
    admin = "admin"

    def allows(self, needed: Role) -> bool:
        """Whether this role may do what ``needed`` may."""
        order = list(Role)
        return order.index(self) >= order.index(needed)


@dataclass(frozen=True)
class Principal:
    """An authenticated caller: its name (recorded with its feedback and predictions),
    its role and its key id (None for the shared token)."""

    name: str
    role: Role
    key_id: str | None = None


@dataclass(frozen=True)
class ApiKey:
    """A stored key, without its hash (what ``slmops keys list`` shows)."""

    id: str
    name: str
    role: Role
    created_at: datetime
    created_by: str | None
    revoked_at: datetime | None

    @property
    def active(self) -> bool:
        """Not revoked."""
        return self.revoked_at is None


@dataclass(frozen=True)
class StoredKey:
    """A key's row with what verifies it: the salt and the salted hash."""

    key: ApiKey
    salt: str
    hash: str

    def check(self, secret: str) -> Principal | None:
        """The key's principal if ``secret`` is its secret and it is not revoked."""
        if not self.key.active:
            return None
        # Constant-time comparison: the time taken says nothing about the hash.
        if not hmac.compare_digest(_digest(self.salt, secret), self.hash):
            return None
        return Principal(self.key.name, self.key.role, self.key.id)


class ApiKeyError(ValueError):
    """A key operation that cannot be done (the message says why and what to do)."""


metadata = sa.MetaData()

api_keys_table = sa.Table(
    "api_keys",
    metadata,
    sa.Column("id", sa.String(ID_HEX_CHARS), primary_key=True),
    sa.Column("name", sa.String(64), nullable=False),
    sa.Column("role", sa.String(16), nullable=False),
    sa.Column("salt", sa.String(2 * SALT_BYTES), nullable=False),
    sa.Column("hash", sa.String(64), nullable=False),  # hex HMAC-SHA256
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("created_by", sa.String(255), nullable=True),
    sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
    sa.CheckConstraint("role IN ('client', 'reviewer', 'admin')", name="ck_api_keys_role"),
    # One active key per name (a partial unique index: SQLite and Postgres); a revoked
    # key keeps its row, and the name can be given a new key.
    sa.Index(
        "uq_api_keys_active_name",
        "name",
        unique=True,
        sqlite_where=sa.text("revoked_at IS NULL"),
        postgresql_where=sa.text("revoked_at IS NULL"),
    ),
)


def _digest(salt: str, secret: str) -> str:
    return hmac.new(bytes.fromhex(salt), secret.encode(), hashlib.sha256).hexdigest()


def _utc(value: datetime | None) -> datetime | None:
    # SQLite keeps no time zone: values come back naive, but were written in UTC.
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def parse_key(key: str) -> tuple[str, str] | None:
    """``(id, secret)`` of a string shaped like a key (``slm_<id>_<secret>``), else None."""
    match = _KEY_PATTERN.fullmatch(key)
    if match is None or len(match["secret"]) > MAX_SECRET_CHARS:
        return None
    return match["id"], match["secret"]


def check_name(name: str) -> str:
    """``name`` if it can name a principal; :class:`ApiKeyError` saying why not."""
    if not NAME_PATTERN.fullmatch(name):
        raise ApiKeyError(
            f"principal name {name!r}: use 1 to 64 letters, digits, '.', '_', '@' or '-', "
            "starting with a letter or digit"
        )
    if name == TOKEN_PRINCIPAL:
        raise ApiKeyError(
            f"{TOKEN_PRINCIPAL!r} is the principal of the shared token (serve.token_env or "
            "serve.token_file): choose another name"
        )
    return name


def _api_key(row: sa.Row) -> ApiKey:
    m = row._mapping
    return ApiKey(
        id=m["id"],
        name=m["name"],
        role=Role(m["role"]),
        created_at=_utc(m["created_at"]),  # type: ignore[arg-type]
        created_by=m["created_by"],
        revoked_at=_utc(m["revoked_at"]),
    )


class KeyStore:
    """The API keys in the feedback database. Thread-safe (a connection per call)."""

    def __init__(self, engine: Engine, *, auto_migrate: bool = True) -> None:
        """Open the keys; the table is the migrations' (revision 0003): ``auto_migrate``
        brings the database's schema to this code's revision, else an older database
        raises :class:`migrations.SchemaBehind`."""
        self.engine = engine
        if auto_migrate:
            upgrade_schema(engine)
        else:
            migrations.check(engine)

    @classmethod
    def from_params(cls, params: Params) -> KeyStore:
        """The keys in the database at ``feedback.db_url``."""
        return cls(
            make_engine(params.feedback.db_url, params.root),
            auto_migrate=params.feedback.auto_migrate,
        )

    def close(self) -> None:
        """Close the pooled connections (only for a store that owns its engine)."""
        self.engine.dispose()

    def __enter__(self) -> KeyStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def add(self, name: str, role: Role | str, *, created_by: str | None) -> tuple[ApiKey, str]:
        """Make a key for principal ``name``; return its row and the key, which is
        stored nowhere (only its salted hash is). One active key per name."""
        check_name(name)
        try:
            role = Role(role)
        except ValueError:
            roles = ", ".join(r.value for r in Role)
            raise ApiKeyError(f"role {role!r}: expected one of {roles}") from None
        key_id = secrets.token_hex(ID_HEX_CHARS // 2)
        secret = secrets.token_urlsafe(SECRET_BYTES)
        salt = secrets.token_hex(SALT_BYTES)
        now = datetime.now(UTC)
        values = {
            "id": key_id,
            "name": name,
            "role": role.value,
            "salt": salt,
            "hash": _digest(salt, secret),
            "created_at": now,
            "created_by": created_by,
        }
        try:
            with self.engine.begin() as conn:
                active = self._active(conn, name)
                if active is None:
                    conn.execute(api_keys_table.insert().values(**values))
        except IntegrityError:  # another process added one between the check and the insert
            with self.engine.connect() as conn:
                active = self._active(conn, name)
            if active is None:
                raise
        if active is not None:
            raise ApiKeyError(
                f"{name!r} already has an active key (id {active}); revoke it first "
                f"(slmops keys revoke {name}), then add a new one"
            )
        key = ApiKey(key_id, name, role, now, created_by, None)
        return key, f"{KEY_PREFIX}_{key_id}_{secret}"

    @staticmethod
    def _active(conn: sa.Connection, name: str) -> str | None:
        k = api_keys_table.c
        return conn.execute(
            sa.select(k.id).where(k.name == name, k.revoked_at.is_(None))
        ).scalar_one_or_none()

    def keys(self) -> list[ApiKey]:
        """Every key, revoked ones included, oldest first."""
        k = api_keys_table.c
        query = sa.select(*(c for c in api_keys_table.c if c.name not in ("salt", "hash")))
        with self.engine.connect() as conn:
            return [_api_key(r) for r in conn.execute(query.order_by(k.created_at, k.id))]

    def revoke(self, name_or_id: str) -> ApiKey:
        """Revoke the active key of principal ``name_or_id`` (or with that key id);
        return it as revoked. :class:`ApiKeyError` when no active key matches."""
        k = api_keys_table.c
        now = datetime.now(UTC)
        with self.engine.begin() as conn:
            row = conn.execute(
                sa.select(api_keys_table).where(
                    sa.or_(k.name == name_or_id, k.id == name_or_id), k.revoked_at.is_(None)
                )
            ).first()
            if row is None:
                raise ApiKeyError(
                    f"no active key named or with id {name_or_id!r} (slmops keys list shows them)"
                )
            conn.execute(api_keys_table.update().where(k.id == row.id).values(revoked_at=now))
        key = _api_key(row)
        return ApiKey(key.id, key.name, key.role, key.created_at, key.created_by, now)

    def stored(self, key_id: str) -> StoredKey | None:
        """The row of key ``key_id`` with its salt and hash, or None (one primary-key read)."""
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.select(api_keys_table).where(api_keys_table.c.id == key_id)
            ).first()
        if row is None:
            return None
        return StoredKey(_api_key(row), row._mapping["salt"], row._mapping["hash"])

    def verify(self, key: str) -> Principal | None:
        """The principal of ``key``, or None (not a key, unknown, wrong secret, revoked)."""
        parsed = parse_key(key)
        if parsed is None:
            return None
        stored = self.stored(parsed[0])
        return stored.check(parsed[1]) if stored is not None else None

    def has_active(self) -> bool:
        """Whether any key is active (the service's endpoints are usable at all)."""
        with self.engine.connect() as conn:
            query = sa.select(api_keys_table.c.id).where(api_keys_table.c.revoked_at.is_(None))
            return conn.execute(query.limit(1)).first() is not None
