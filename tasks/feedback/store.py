"""The feedback store: every prediction the service makes, and what reviewers said about it.

Three tables, through SQLAlchemy Core so that any SQLAlchemy URL works
(SQLite by default, Postgres for teams):

- ``predictions``: one row per answered text (the text, the answer, the model
  version that gave it). Its id is what a client sends back with feedback.
- ``feedback``: a reviewer's label for a prediction, a ``correction`` when it
  differs from the predicted label, else a ``confirmation``. The triple
  (prediction, label, reviewer) is unique, so a client that retries a request
  creates nothing new; another reviewer's label, or a *different* label for the
  same prediction, is a new row (a second opinion, or a reviewer changing their
  mind), which the ingestion step resolves.
- ``feedback_held`` and ``feedback_revocations``: feedback ingestion set aside
  (conflicts, dead letters) and feedback an operator withdrew.
- ``ingest_watermark``: the highest feedback id each consumer has ingested.

Ingestion is meant to be exactly-once: read :meth:`FeedbackStore.feedback_since`
the consumer's watermark, write the rows into the labeled data idempotently
(keyed by feedback id, so a crash between that write and the watermark update
only re-reads rows it will recognise), then :meth:`FeedbackStore.set_watermark`
to the largest id it ingested.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal, Protocol

import sqlalchemy as sa
from sqlalchemy.engine import URL, Engine, make_url
from sqlalchemy.exc import IntegrityError

from slmops.tasks.core.config import Params
from slmops.tasks.core.task_type import LabelError, TaskType, UnknownClass
from slmops.tasks.feedback import migrations
from slmops.tasks.feedback.migrations import baseline

log = logging.getLogger(__name__)

FeedbackKind = Literal["correction", "confirmation"]

# SQLite waits this long for another writer's lock instead of failing at once
# with "database is locked" (the service and an ingestion run share the file).
SQLITE_BUSY_TIMEOUT_MS = 10_000
# How many valid labels an UnknownLabel message lists (77 would drown the message).
LABELS_SHOWN = 8
# Ids per IN (...) list: under SQLite's and Postgres' parameter limits.
ID_CHUNK = 500

metadata = sa.MetaData()

predictions_table = sa.Table(
    "predictions",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),  # uuid4 hex: unguessable, no round trip
    sa.Column("text", sa.Text, nullable=False),
    # Text: a token-classification label is span JSON, longer than a class name.
    sa.Column("label", sa.Text, nullable=False),
    sa.Column("confidence", sa.Float, nullable=False),
    sa.Column("top_k", sa.JSON, nullable=False),
    sa.Column("model_name", sa.String(255), nullable=False),
    sa.Column("model_version", sa.String(64), nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    # The API key's principal that asked; None: anonymous (serve.protect_reads off).
    # Added after the first release: _add_missing_columns adds it to older databases.
    sa.Column("principal", sa.String(64), nullable=True),
    # Whether any feedback row names this prediction: set in the transaction that inserts
    # the first one, never cleared (feedback rows go only with their prediction, and a
    # revoked row stays). The review queue reads it instead of searching feedback for
    # every candidate (migration 0005).
    sa.Column("reviewed", sa.Boolean, nullable=False, server_default=sa.false()),
    # The review queue sorts on confidence and may filter on time.
    sa.Index("ix_predictions_confidence", "confidence"),
    sa.Index("ix_predictions_created_at", "created_at"),
)
# The review queue's rows, in its order, without the reviewed ones: reviewers work the
# least confident end, so an index over every prediction made each page step over all
# the reviewed rows there, a count that grows with the store (benchmarks/bench_curves.py).
UNREVIEWED = predictions_table.c.reviewed == sa.false()
review_queue_index = sa.Index(
    "ix_predictions_review_queue",
    predictions_table.c.confidence,
    predictions_table.c.created_at.desc(),
    sqlite_where=UNREVIEWED,
    postgresql_where=UNREVIEWED,
)

feedback_table = sa.Table(
    "feedback",
    metadata,
    # Monotonic ids are what the ingestion watermark counts on.
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column(
        "prediction_id",
        sa.String(32),
        sa.ForeignKey("predictions.id", ondelete="CASCADE"),
        nullable=False,
    ),
    sa.Column("label", sa.Text, nullable=False),
    sa.Column("kind", sa.String(16), nullable=False),
    # Not "user": that is a reserved word (and a function) in Postgres.
    sa.Column("user_name", sa.String(255), nullable=True),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.CheckConstraint("kind IN ('correction', 'confirmation')", name="ck_feedback_kind"),
    # Ingestion's daily-cap count (corrections_by) and revoke look feedback up by reviewer
    # and time: without it each count scans every feedback row (migration 0004).
    sa.Index("ix_feedback_user_created", "user_name", "created_at"),
)
# One row per (prediction, label, reviewer): a client that retries creates nothing new,
# and a second reviewer agreeing on the same prediction is a second vote, not a repeat.
# (The first release made (prediction, label) unique: _per_reviewer_feedback upgrades it.)
OLD_FEEDBACK_UNIQUE = "uq_feedback_prediction_label"
feedback_unique = sa.Index(
    "uq_feedback_prediction_label_user",
    feedback_table.c.prediction_id,
    feedback_table.c.label,
    sa.func.coalesce(feedback_table.c.user_name, ""),
    unique=True,
)

watermark_table = sa.Table(
    "ingest_watermark",
    metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("last_feedback_id", sa.Integer, nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
)


def _about_feedback() -> sa.Column:
    """The key of a table holding one row about a feedback row."""
    return sa.Column(
        "feedback_id",
        sa.Integer,
        sa.ForeignKey("feedback.id", ondelete="CASCADE"),
        primary_key=True,
    )


# Feedback that ingestion set aside instead of merging: ``conflict`` rows wait for more
# reviewers or a person (they are looked at again by every ingestion and exported for
# review); ``dead_letter`` rows failed a check of the whole data set and are never
# retried. Either way the row is accounted for and the watermark can move past it.
held_table = sa.Table(
    "feedback_held",
    metadata,
    _about_feedback(),
    sa.Column("queue", sa.String(16), nullable=False),
    sa.Column("check_name", sa.String(64), nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("held_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("resolved_at", sa.DateTime(timezone=True), nullable=True),
    sa.Column("resolution", sa.String(16), nullable=True),
    sa.CheckConstraint("queue IN ('conflict', 'dead_letter')", name="ck_feedback_held_queue"),
)

# Feedback withdrawn by an operator (``slmops feedback revoke``): never a vote again;
# the next ingestion re-derives every label it had shaped.
revocations_table = sa.Table(
    "feedback_revocations",
    metadata,
    _about_feedback(),
    sa.Column("revoked_by", sa.String(255), nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=False),
)


class FeedbackError(ValueError):
    """Feedback that cannot be stored (the message says why)."""


class UnknownPrediction(FeedbackError):
    """Feedback names a prediction id the store has never seen."""

    def __init__(self, prediction_id: str) -> None:
        self.prediction_id = prediction_id
        super().__init__(
            f"unknown prediction id {prediction_id!r}: send the prediction_id that /predict "
            "returned with the answer"
        )


class PredictionPending(RuntimeError):
    """A prediction is still queued for the database and did not reach it in time (the
    database is down or far behind): answered 503, the id is valid, retry later."""


class PendingPredictions(Protocol):
    """Predictions answered but not yet committed (the service's background writer,
    :class:`slmops.tasks.feedback.prediction_log.PredictionLog`): what the store waits
    for before a read, so that an id the service handed out is always found."""

    def settle(self, prediction_id: str | None = None) -> None:
        """Return once ``prediction_id`` (None: every prediction queued so far) is
        committed; at once when it is not queued. :class:`PredictionPending` when that
        takes too long."""


class UnknownLabel(FeedbackError):
    """Feedback gives a label outside the model's label set."""

    def __init__(self, label: str, known_labels: Collection[str]) -> None:
        self.label = label
        self.known_labels = sorted(known_labels)
        shown = ", ".join(self.known_labels[:LABELS_SHOWN])
        more = len(self.known_labels) - LABELS_SHOWN
        if more > 0:
            shown += f", … ({more} more; GET /model lists them all)"
        super().__init__(f"unknown label {label!r}; valid labels: {shown}")


class InvalidLabel(FeedbackError):
    """Feedback whose label does not fit the prediction's text (e.g. an entity span
    cutting a word, or overlapping another)."""

    def __init__(self, reason: str, known_labels: Collection[str]) -> None:
        self.known_labels = sorted(known_labels)
        super().__init__(reason)


@dataclass(frozen=True)
class NewPrediction:
    """A prediction to record (:func:`prediction_values` gives it its id and time)."""

    text: str
    label: str
    confidence: float
    top_k: list[dict[str, Any]]
    model_name: str
    model_version: str
    principal: str | None = None  # who asked (the API key's principal); None: anonymous


@dataclass(frozen=True)
class PredictionRecord:
    """A stored prediction."""

    id: str
    text: str
    label: str
    confidence: float
    top_k: list[dict[str, Any]]
    model_name: str
    model_version: str
    created_at: datetime
    principal: str | None = None


@dataclass(frozen=True)
class FeedbackRecord:
    """A stored piece of feedback."""

    id: int
    prediction_id: str
    label: str
    kind: FeedbackKind
    user: str | None
    created_at: datetime


@dataclass(frozen=True)
class FeedbackItem:
    """A feedback row joined with the prediction it is about (what ingestion reads)."""

    id: int
    prediction_id: str
    text: str
    label: str
    kind: FeedbackKind
    user: str | None
    created_at: datetime
    predicted_label: str
    confidence: float
    model_name: str
    model_version: str


@dataclass(frozen=True)
class Watermark:
    """How far one consumer has ingested feedback."""

    name: str
    last_feedback_id: int
    updated_at: datetime


HeldQueue = Literal["conflict", "dead_letter"]


@dataclass(frozen=True)
class Held:
    """A feedback row to set aside, and why (``check``: what set it aside)."""

    feedback_id: int
    queue: HeldQueue
    check: str
    reason: str


@dataclass(frozen=True)
class HeldItem:
    """A feedback row set aside, with its prediction's text."""

    item: FeedbackItem
    queue: HeldQueue
    check: str
    reason: str
    held_at: datetime
    resolution: str | None


def _utc(value: datetime) -> datetime:
    # SQLite keeps no time zone: values come back naive, but were written in UTC.
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _now() -> datetime:
    return datetime.now(UTC)


def _is_postgres(bind: Engine | sa.Connection) -> bool:
    return bind.dialect.name == "postgresql"


def _feedback_stamp(engine: Engine) -> Any:
    """A new feedback row's ``created_at``: on Postgres the database's clock when the
    INSERT runs (``clock_timestamp()``; ``now()`` would be when its transaction began),
    the clock :meth:`FeedbackStore.feedback_since` settles against, so that no writer's
    clock (a service replica's, off by seconds) can make its rows look settled early.
    SQLite (one machine, writers serialised) keeps the process clock and its microseconds."""
    return sa.func.clock_timestamp() if _is_postgres(engine) else _now()


def _settle_clock(conn: sa.Connection) -> datetime:
    """Now, by the clock :func:`_feedback_stamp` stamps feedback with."""
    if _is_postgres(conn):
        return _utc(conn.execute(sa.select(sa.func.clock_timestamp())).scalar_one())
    return _now()


def _is_sqlite(url: URL) -> bool:
    return url.get_backend_name() == "sqlite"


def _in_memory(url: URL) -> bool:
    return url.database in (None, "", ":memory:") or "mode=memory" in str(url.query)


def resolve_url(db_url: str, root: Path) -> URL:
    """The URL with a relative SQLite path made absolute against ``root``.

    Other databases (Postgres by URL) pass through unchanged.
    """
    url = make_url(db_url)
    if _is_sqlite(url) and not _in_memory(url):
        path = Path(url.database).expanduser()
        if not path.is_absolute():
            path = (root / path).resolve()
        url = url.set(database=str(path))
    return url


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    try:
        # WAL lets readers (the review queue, ingestion) run while the service
        # writes; busy_timeout turns lock contention into a short wait.
        cursor.execute("PRAGMA journal_mode=WAL")
        # In WAL mode NORMAL syncs at checkpoints instead of every commit: a commit
        # costs about 0.5 ms instead of 5 ms (an fsync) on the reference machine, and
        # the service commits on every /predict. An application crash loses nothing;
        # only an OS crash or power cut can roll back the last commits (never corrupt).
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        # SQLite ignores foreign keys unless asked, per connection.
        cursor.execute("PRAGMA foreign_keys=ON")
    finally:
        cursor.close()


def make_engine(db_url: str, root: Path) -> Engine:
    """An engine on ``db_url``; for SQLite: parent folder created, WAL, busy timeout."""
    url = resolve_url(db_url, root)
    kwargs: dict[str, Any] = {"future": True}
    if _is_sqlite(url):
        if _in_memory(url):
            # One shared connection, or every pooled connection would see its
            # own empty in-memory database.
            kwargs.update(poolclass=sa.pool.StaticPool, connect_args={"check_same_thread": False})
        else:
            Path(url.database).parent.mkdir(parents=True, exist_ok=True)
    else:
        # A server may close idle connections; test them before use.
        kwargs["pool_pre_ping"] = True
    engine = sa.create_engine(url, **kwargs)
    if _is_sqlite(url):
        sa.event.listen(engine, "connect", _sqlite_pragmas)
    return engine


def _prediction(row: sa.Row) -> PredictionRecord:
    m = row._mapping
    return PredictionRecord(
        id=m["id"],
        text=m["text"],
        label=m["label"],
        confidence=float(m["confidence"]),
        top_k=list(m["top_k"]),
        model_name=m["model_name"],
        model_version=m["model_version"],
        created_at=_utc(m["created_at"]),
        principal=m["principal"],
    )


def _feedback(row: sa.Row) -> FeedbackRecord:
    m = row._mapping
    return FeedbackRecord(
        id=int(m["id"]),
        prediction_id=m["prediction_id"],
        label=m["label"],
        kind=m["kind"],
        user=m["user_name"],
        created_at=_utc(m["created_at"]),
    )


def _items_query() -> sa.Select:
    """Feedback joined with its prediction, oldest first (what :class:`FeedbackItem` holds)."""
    f, p = feedback_table, predictions_table
    return (
        sa.select(
            f.c.id,
            f.c.prediction_id,
            p.c.text,
            f.c.label,
            f.c.kind,
            f.c.user_name,
            f.c.created_at,
            p.c.label.label("predicted_label"),
            p.c.confidence,
            p.c.model_name,
            p.c.model_version,
        )
        .join(p, p.c.id == f.c.prediction_id)
        .order_by(f.c.id.asc())
    )


def _item(row: sa.Row) -> FeedbackItem:
    m = row._mapping
    return FeedbackItem(
        id=int(m["id"]),
        prediction_id=m["prediction_id"],
        text=m["text"],
        label=m["label"],
        kind=m["kind"],
        user=m["user_name"],
        created_at=_utc(m["created_at"]),
        predicted_label=m["predicted_label"],
        confidence=float(m["confidence"]),
        model_name=m["model_name"],
        model_version=m["model_version"],
    )


def prediction_values(rows: Sequence[NewPrediction]) -> list[dict[str, Any]]:
    """The ``predictions`` rows for ``rows``: ids (uuid4 hex) and time given here, in
    the application, so an id can be handed out before its row is committed."""
    now = _now()
    return [
        {
            "id": uuid.uuid4().hex,
            "text": r.text,
            "label": r.label,
            "confidence": float(r.confidence),
            "top_k": r.top_k,
            "model_name": r.model_name,
            "model_version": str(r.model_version),
            "created_at": now,
            "principal": r.principal,
        }
        for r in rows
    ]


def _existing(conn: sa.Connection, column: sa.Column, ids: Sequence[int]) -> set[int]:
    """Which of ``ids`` are already in ``column``."""
    found: set[int] = set()
    for start in range(0, len(ids), ID_CHUNK):
        query = sa.select(column).where(column.in_(ids[start : start + ID_CHUNK]))
        found.update(int(i) for i in conn.execute(query).scalars())
    return found


def _add_missing_columns(engine: Engine) -> None:
    """Add the nullable columns that this module's tables gained since the database was
    made (``ALTER TABLE ... ADD COLUMN``; SQLite and Postgres). Idempotent.

    Only additive and only nullable columns: old rows read them as NULL. Anything
    else (a new NOT NULL column, a changed type) needs a real schema migration,
    which is a later step (Alembic); this raises rather than guess.
    """
    inspector = sa.inspect(engine)
    release = baseline.tables()
    for table in metadata.sorted_tables:
        if not inspector.has_table(table.name):
            continue
        have = {c["name"] for c in inspector.get_columns(table.name)}
        release_table = release.tables.get(table.name)
        for column in table.columns:
            if column.name in have:
                continue
            if release_table is not None and column.name not in release_table.c:
                continue  # a revision after the baseline adds it (with its values)
            if not column.nullable or column.primary_key:
                raise RuntimeError(
                    f"the feedback database's table {table.name} lacks the column "
                    f"{column.name}, which cannot be added without a schema migration"
                )
            quote = engine.dialect.identifier_preparer.quote
            ddl = (
                f"ALTER TABLE {quote(table.name)} ADD COLUMN {quote(column.name)} "
                f"{column.type.compile(dialect=engine.dialect)}"
            )
            try:
                with engine.begin() as conn:
                    conn.execute(sa.text(ddl))
            except sa.exc.DBAPIError:
                # Another process (the service, a flow) added it first: fine if it is there.
                now = sa.inspect(engine).get_columns(table.name)
                if column.name not in {c["name"] for c in now}:
                    raise
            else:
                log.info("feedback database: added column %s.%s", table.name, column.name)


def _per_reviewer_feedback(engine: Engine) -> None:
    """Replace the first release's unique (prediction, label) on ``feedback`` by
    :data:`feedback_unique`, keeping every row. Idempotent.

    Postgres drops the constraint; SQLite cannot, so the table is rebuilt in one
    transaction (foreign-key checks off meanwhile, as SQLite's documentation asks).
    """
    if engine.dialect.name == "sqlite":
        with engine.connect() as conn:
            ddl = conn.exec_driver_sql(
                "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'feedback'"
            ).scalar()
        if ddl and OLD_FEEDBACK_UNIQUE + " " in ddl.replace('"', " "):
            _rebuild_sqlite_feedback(engine)
    elif sa.inspect(engine).has_table("feedback"):
        with engine.begin() as conn:
            conn.exec_driver_sql(
                f"ALTER TABLE feedback DROP CONSTRAINT IF EXISTS {OLD_FEEDBACK_UNIQUE}"
            )
    # IF NOT EXISTS, not checkfirst: SQLite's inspector does not list expression indexes.
    with engine.begin() as conn:
        conn.execute(sa.schema.CreateIndex(feedback_unique, if_not_exists=True))


def _rebuild_sqlite_feedback(engine: Engine) -> None:
    copy = sa.MetaData()
    predictions_table.to_metadata(copy)  # what the staging table's foreign key names
    staging = feedback_table.to_metadata(copy, name="feedback__upgrade")
    columns = ", ".join(c.name for c in feedback_table.columns)
    with engine.connect() as conn:
        conn.exec_driver_sql("PRAGMA foreign_keys=OFF")
        conn.commit()  # a no-op inside a transaction: set it, then begin
        try:
            with conn.begin():
                conn.exec_driver_sql("DROP TABLE IF EXISTS feedback__upgrade")
                conn.execute(sa.schema.CreateTable(staging))
                conn.exec_driver_sql(
                    f"INSERT INTO feedback__upgrade ({columns}) SELECT {columns} FROM feedback"
                )
                conn.exec_driver_sql("DROP TABLE feedback")
                conn.exec_driver_sql("ALTER TABLE feedback__upgrade RENAME TO feedback")
        finally:
            conn.exec_driver_sql("PRAGMA foreign_keys=ON")
            conn.commit()
    log.info("feedback database: feedback is now unique per (prediction, label, reviewer)")


def _adopt_release_schema(engine: Engine) -> None:
    """The release before migrations' own upgrades, for a database it made: missing
    tables created, nullable columns added, feedback unique per reviewer."""
    metadata.create_all(engine)  # idempotent: missing tables only
    _add_missing_columns(engine)
    _per_reviewer_feedback(engine)


def upgrade_schema(engine: Engine) -> tuple[str | None, str]:
    """Bring the feedback database to the newest schema revision (``slmops db upgrade``);
    return (revision before, revision after). Idempotent."""
    return migrations.upgrade(engine, adopt=_adopt_release_schema)


class FeedbackStore:
    """Predictions, feedback and ingestion watermarks in one SQL database.

    Thread-safe: every method takes its own connection from the engine's pool,
    so the service can call it from its worker threads.
    """

    def __init__(self, engine: Engine, *, auto_migrate: bool = True) -> None:
        """Open the store; ``auto_migrate``: bring its schema to this code's revision
        (a new database is created so), else raise :class:`migrations.SchemaBehind`
        unless it is there already."""
        self.engine = engine
        # Predictions handed out but not committed yet (the service's background writer):
        # reads of predictions wait for them, so this process reads its own writes.
        self.pending: PendingPredictions | None = None
        if auto_migrate:
            upgrade_schema(engine)
        else:
            migrations.check(engine)

    @classmethod
    def from_params(cls, params: Params) -> FeedbackStore:
        """The store at ``feedback.db_url`` (a relative SQLite path is under the project root)."""
        return cls(
            make_engine(params.feedback.db_url, params.root),
            auto_migrate=params.feedback.auto_migrate,
        )

    def close(self) -> None:
        """Close the pooled connections."""
        self.engine.dispose()

    def __enter__(self) -> FeedbackStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- predictions -------------------------------------------------------------------

    def log_predictions(self, rows: Sequence[NewPrediction]) -> list[str]:
        """Record predictions in one transaction; return their ids in input order."""
        if not rows:
            return []
        values = prediction_values(rows)
        self.insert_predictions(values)
        return [v["id"] for v in values]

    def insert_predictions(self, values: Sequence[dict[str, Any]]) -> None:
        """Commit rows of :func:`prediction_values` in one transaction.

        Safe to retry: when a commit failed after all (a connection lost after the
        server committed), rows already there are skipped instead of raising.
        """
        if not values:
            return
        try:
            with self.engine.begin() as conn:
                # A list of parameter sets is one executemany: one round trip per batch.
                conn.execute(predictions_table.insert(), values)
        except IntegrityError:
            ids = [v["id"] for v in values]
            with self.engine.begin() as conn:
                have: set[str] = set()
                for start in range(0, len(ids), ID_CHUNK):
                    query = sa.select(predictions_table.c.id).where(
                        predictions_table.c.id.in_(ids[start : start + ID_CHUNK])
                    )
                    have.update(conn.execute(query).scalars())
                missing = [v for v in values if v["id"] not in have]
                if len(missing) == len(values):
                    raise  # not a retry: a real constraint failure
                if missing:
                    conn.execute(predictions_table.insert(), missing)

    def _settle(self, prediction_id: str | None = None) -> None:
        # Wait for this process's queued predictions (see PendingPredictions).
        if self.pending is not None:
            self.pending.settle(prediction_id)

    def get_prediction(self, prediction_id: str) -> PredictionRecord | None:
        """The prediction with this id, or None.

        One still queued by this process's writer is waited for
        (:class:`PredictionPending` when that takes too long).
        """
        self._settle(prediction_id)
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.select(predictions_table).where(predictions_table.c.id == prediction_id)
            ).first()
        return _prediction(row) if row is not None else None

    # -- retention (feedback.retention_days, tasks/feedback/retention.py) --------------

    @staticmethod
    def _prunable(older_than: datetime) -> sa.Select:
        """Ids of the predictions made before ``older_than`` that never got feedback."""
        p, f = predictions_table, feedback_table
        has_feedback = sa.exists().where(f.c.prediction_id == p.c.id)
        return sa.select(p.c.id).where(p.c.created_at < older_than.astimezone(UTC), ~has_feedback)

    def count_prunable_predictions(self, older_than: datetime) -> int:
        """How many predictions :meth:`prune_predictions` would delete now."""
        query = sa.select(sa.func.count()).select_from(self._prunable(older_than).subquery())
        with self.engine.connect() as conn:
            return int(conn.execute(query).scalar_one())

    def prune_predictions(self, older_than: datetime, batch: int) -> int:
        """Delete the predictions made before ``older_than`` that never got feedback;
        return how many.

        Predictions with feedback stay: their feedback rows reference them and
        ingestion reads their text. Each transaction deletes at most ``batch`` rows,
        so the service's writes wait for one short batch, never for the whole table.
        The feedback check is part of each DELETE, so feedback given meanwhile keeps
        its prediction (on Postgres, a row whose feedback is being written is locked,
        and skipped).
        """
        if batch < 1:
            raise ValueError(f"batch must be at least 1, got {batch}")
        ids = self._prunable(older_than).limit(batch).with_for_update(skip_locked=True)
        delete = predictions_table.delete().where(predictions_table.c.id.in_(ids.scalar_subquery()))
        total = 0
        while True:
            with self.engine.begin() as conn:
                deleted = conn.execute(delete).rowcount
            total += deleted
            if deleted < batch:
                return total

    # -- feedback ----------------------------------------------------------------------

    def _find_feedback(
        self, conn: sa.Connection, prediction_id: str, label: str, user: str | None
    ) -> sa.Row | None:
        f = feedback_table.c
        return conn.execute(
            sa.select(feedback_table).where(
                f.prediction_id == prediction_id,
                f.label == label,
                sa.func.coalesce(f.user_name, "") == (user or ""),
            )
        ).first()

    def add_feedback(
        self,
        prediction_id: str,
        label: str,
        known_labels: Collection[str],
        user: str | None = None,
        *,
        task: TaskType,
    ) -> tuple[FeedbackRecord, bool]:
        """Record a reviewer's label for a prediction; return the row and whether it is new.

        ``task`` (the served model's type) checks the label against the
        prediction's text and ``known_labels`` and gives its stored form. The
        same (prediction, label) sent again by the same ``user`` returns the stored
        row and creates nothing, so clients can retry safely; another user's is
        their own row (a second vote). Raises :class:`UnknownPrediction`,
        :class:`UnknownLabel` or :class:`InvalidLabel` before writing.
        """
        prediction = self.get_prediction(prediction_id)
        if prediction is None:
            raise UnknownPrediction(prediction_id)
        try:
            label = task.canonical(prediction.text, label, known_labels)
        except UnknownClass:
            raise UnknownLabel(label, known_labels) from None
        except LabelError as exc:
            raise InvalidLabel(str(exc), known_labels) from None
        with self.engine.connect() as conn:
            existing = self._find_feedback(conn, prediction_id, label, user)
        if existing is not None:
            return _feedback(existing), False
        kind: FeedbackKind = "confirmation" if label == prediction.label else "correction"
        try:
            with self.engine.begin() as conn:
                new_id = conn.execute(
                    feedback_table.insert().values(
                        prediction_id=prediction_id,
                        label=label,
                        kind=kind,
                        user_name=user,
                        created_at=_feedback_stamp(self.engine),
                    )
                ).inserted_primary_key[0]
                # Out of the review queue with the feedback that took it out, atomically.
                conn.execute(
                    predictions_table.update()
                    .where(predictions_table.c.id == prediction_id, UNREVIEWED)
                    .values(reviewed=True)
                )
                row = conn.execute(
                    sa.select(feedback_table).where(feedback_table.c.id == new_id)
                ).one()
            return _feedback(row), True
        except IntegrityError:
            # Two identical requests raced past the lookup above; the unique
            # constraint let one in, so this one is the repeat...
            with self.engine.connect() as conn:
                existing = self._find_feedback(conn, prediction_id, label, user)
            if existing is not None:
                return _feedback(existing), False
            # ...or retention deleted the prediction meanwhile (the foreign key).
            if self.get_prediction(prediction_id) is None:
                raise UnknownPrediction(prediction_id) from None
            raise

    def review_queue(self, limit: int, since: datetime | None = None) -> list[PredictionRecord]:
        """Predictions nobody has given feedback on yet, least confident first.

        Those are where a reviewer's label teaches the model most. ``since``
        keeps only predictions made at or after that time; among equal
        confidences the most recent comes first.
        """
        self._settle()
        # ``reviewed`` mirrors "has a feedback row" (add_feedback sets it with the row),
        # and the partial index holds only these rows: a page costs the same at any size.
        query = sa.select(predictions_table).where(UNREVIEWED)
        if since is not None:
            query = query.where(predictions_table.c.created_at >= since.astimezone(UTC))
        query = query.order_by(
            predictions_table.c.confidence.asc(), predictions_table.c.created_at.desc()
        ).limit(limit)
        with self.engine.connect() as conn:
            return [_prediction(r) for r in conn.execute(query)]

    def feedback_since(
        self, last_id: int, limit: int | None = None, settle_seconds: float = 0.0
    ) -> list[FeedbackItem]:
        """Feedback with id above ``last_id``, oldest first, each with its prediction's text.

        The list stops before the first row younger than ``settle_seconds``.
        On a database with concurrent writers (Postgres) ids can commit out of
        order: a slower transaction may still be writing id 10 when id 11 is
        visible. Setting the watermark to 11 would skip 10 forever, so a
        consumer there passes a few seconds of settling. SQLite serialises
        writers, so ids always commit in order and 0 is safe.

        The guarantee: a row whose transaction commits less than ``settle_seconds``
        after its INSERT is never passed over. On Postgres both ends read the
        database's clock (rows are stamped at the INSERT, the cutoff is read before
        the rows), so clocks of the machines do not enter; the bound is the time
        between the INSERT and the commit of :meth:`add_feedback`'s short
        transaction (milliseconds, unless a process or the database stalls).
        """
        query = _items_query().where(feedback_table.c.id > last_id)
        if limit is not None:
            query = query.limit(limit)
        items: list[FeedbackItem] = []
        with self.engine.connect() as conn:
            # Read before the rows: a row they lack was still uncommitted at this time.
            cutoff = None
            if settle_seconds > 0:
                cutoff = _settle_clock(conn) - timedelta(seconds=settle_seconds)
            for row in conn.execute(query):
                item = _item(row)
                if cutoff is not None and item.created_at > cutoff:
                    break  # stop, not skip: the watermark must never pass an unsettled row
                items.append(item)
        return items

    def feedback_by_ids(self, ids: Collection[int]) -> list[FeedbackItem]:
        """The feedback rows with these ids (those that exist), oldest first."""
        wanted = sorted({int(i) for i in ids})
        items: list[FeedbackItem] = []
        with self.engine.connect() as conn:
            # Chunks keep the IN list under every backend's parameter limit.
            for start in range(0, len(wanted), ID_CHUNK):
                chunk = wanted[start : start + ID_CHUNK]
                query = _items_query().where(feedback_table.c.id.in_(chunk))
                items += [_item(r) for r in conn.execute(query)]
        return sorted(items, key=lambda i: i.id)

    def corrections_by(
        self, user: str | None, start: datetime, end: datetime, before_id: int
    ) -> int:
        """How many corrections ``user`` (None: anonymous) sent in [start, end) with an id
        below ``before_id`` (the daily cap counts what came before a batch)."""
        f = feedback_table.c
        who = f.user_name.is_(None) if user is None else f.user_name == user
        query = (
            sa.select(sa.func.count())
            .select_from(feedback_table)
            .where(
                who,
                f.kind == "correction",
                f.created_at >= start.astimezone(UTC),
                f.created_at < end.astimezone(UTC),
                f.id < before_id,
            )
        )
        with self.engine.connect() as conn:
            return int(conn.execute(query).scalar_one())

    # -- feedback set aside: conflicts and dead letters --------------------------------

    def hold(self, rows: Sequence[Held]) -> int:
        """Set feedback rows aside (a conflict to resolve, or a dead letter); return how
        many were new. Idempotent: a row already held keeps its first record, so a run
        killed after holding and re-run holds nothing twice."""
        if not rows:
            return 0
        now = _now()
        with self.engine.begin() as conn:
            have = _existing(conn, held_table.c.feedback_id, [r.feedback_id for r in rows])
            values = [
                {
                    "feedback_id": r.feedback_id,
                    "queue": r.queue,
                    "check_name": r.check,
                    "reason": r.reason,
                    "held_at": now,
                }
                for r in {r.feedback_id: r for r in rows}.values()
                if r.feedback_id not in have
            ]
            if values:
                conn.execute(held_table.insert(), values)
        return len(values)

    def held(self, queue: HeldQueue | None = None, *, pending: bool = True) -> list[HeldItem]:
        """Feedback set aside, oldest first: one queue or both; by default only rows no
        later ingestion resolved."""
        h = held_table.c
        query = (
            _items_query()
            .add_columns(h.queue, h.check_name, h.reason, h.held_at, h.resolution)
            .join(held_table, h.feedback_id == feedback_table.c.id)
        )
        if queue is not None:
            query = query.where(h.queue == queue)
        if pending:
            query = query.where(h.resolved_at.is_(None))
        with self.engine.connect() as conn:
            return [
                HeldItem(
                    item=_item(r),
                    queue=r._mapping["queue"],
                    check=r._mapping["check_name"],
                    reason=r._mapping["reason"],
                    held_at=_utc(r._mapping["held_at"]),
                    resolution=r._mapping["resolution"],
                )
                for r in conn.execute(query)
            ]

    def held_ids(self) -> set[int]:
        """Ids of every feedback row ever set aside, resolved or not."""
        with self.engine.connect() as conn:
            return {int(i) for i in conn.execute(sa.select(held_table.c.feedback_id)).scalars()}

    def resolve_held(self, ids: Collection[int], resolution: str) -> int:
        """Mark held rows resolved (``accepted``: now votes in the data; ``revoked``)."""
        wanted = sorted({int(i) for i in ids})
        done = 0
        with self.engine.begin() as conn:
            for start in range(0, len(wanted), ID_CHUNK):
                done += conn.execute(
                    held_table.update()
                    .where(
                        held_table.c.feedback_id.in_(wanted[start : start + ID_CHUNK]),
                        held_table.c.resolved_at.is_(None),
                    )
                    .values(resolved_at=_now(), resolution=resolution)
                ).rowcount
        return done

    # -- revocation --------------------------------------------------------------------

    def revoke(
        self, user: str, *, by: str, reason: str, since: datetime | None = None
    ) -> list[int]:
        """Withdraw the feedback ``user`` sent (at or after ``since``); return the ids
        newly revoked. ``by`` names the principal who revoked it."""
        f = feedback_table.c
        query = sa.select(f.id).where(f.user_name == user)
        if since is not None:
            query = query.where(f.created_at >= since.astimezone(UTC))
        now = _now()
        with self.engine.begin() as conn:
            ids = [int(i) for i in conn.execute(query).scalars()]
            have = _existing(conn, revocations_table.c.feedback_id, ids)
            new = [i for i in ids if i not in have]
            if new:
                conn.execute(
                    revocations_table.insert(),
                    [
                        {"feedback_id": i, "revoked_by": by, "reason": reason, "revoked_at": now}
                        for i in new
                    ],
                )
        return new

    def revoked_ids(self) -> set[int]:
        """Ids of every revoked feedback row."""
        with self.engine.connect() as conn:
            query = sa.select(revocations_table.c.feedback_id)
            return {int(i) for i in conn.execute(query).scalars()}

    # -- ingestion watermark -----------------------------------------------------------

    def get_watermark(self, name: str) -> Watermark | None:
        """How far consumer ``name`` has ingested, or None if it never has (start from 0)."""
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.select(watermark_table).where(watermark_table.c.name == name)
            ).first()
        if row is None:
            return None
        m = row._mapping
        return Watermark(m["name"], int(m["last_feedback_id"]), _utc(m["updated_at"]))

    def set_watermark(self, name: str, last_id: int) -> Watermark:
        """Record that consumer ``name`` has ingested every feedback id up to ``last_id``;
        returns the watermark as stored.

        Its own transaction, committed before returning: call it only after the
        ingested rows are safely written elsewhere. A watermark only rises: the
        update is conditional in SQL, so a slower twin run that read an older
        watermark cannot move it back and make the next run ingest rows twice.
        """
        now = _now()
        mark = watermark_table.c
        with self.engine.begin() as conn:
            conn.execute(
                watermark_table.update()
                .where(mark.name == name, mark.last_feedback_id < int(last_id))
                .values(last_feedback_id=int(last_id), updated_at=now)
            )
            row = conn.execute(
                sa.select(mark.last_feedback_id, mark.updated_at).where(mark.name == name)
            ).first()
            if row is None:
                conn.execute(
                    watermark_table.insert().values(
                        name=name, last_feedback_id=int(last_id), updated_at=now
                    )
                )
                return Watermark(name, int(last_id), now)
        return Watermark(name, int(row.last_feedback_id), _utc(row.updated_at))

    def counts(self) -> dict[str, int]:
        """Row counts of predictions and feedback (for status pages and tests)."""
        self._settle()
        with self.engine.connect() as conn:
            return {
                "predictions": conn.execute(
                    sa.select(sa.func.count()).select_from(predictions_table)
                ).scalar_one(),
                "feedback": conn.execute(
                    sa.select(sa.func.count()).select_from(feedback_table)
                ).scalar_one(),
            }
