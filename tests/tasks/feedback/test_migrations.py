"""The feedback store's Alembic migrations: a database the release before them made,
with rows in every table, upgrades to the newest revision and loses none; its label
columns become TEXT; a second upgrade does nothing; with ``auto_migrate`` off an older
database is refused. On SQLite, and on a throwaway Postgres cluster."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from slmops.tasks.feedback import migrations
from slmops.tasks.feedback.keys import ApiKeyError, KeyStore, api_keys_table
from slmops.tasks.feedback.migrations import baseline
from slmops.tasks.feedback.store import (
    FeedbackStore,
    NewPrediction,
    make_engine,
    upgrade_schema,
)
from slmops.tasks.feedback.store import metadata as store_metadata
from slmops.tasks.task_types import task_type
from tests.tasks.feedback.test_store_upgrade import fresh_database

TABLES = [
    "predictions",
    "feedback",
    "ingest_watermark",
    "feedback_held",
    "feedback_revocations",
    "api_keys",
]
AT = datetime(2026, 11, 30, 12, tzinfo=UTC)
LABELS = ["card_arrival", "top_up_failed"]


def release_tables() -> sa.MetaData:
    """Every table the release before migrations made, ``api_keys`` included."""
    tables = baseline.tables()
    baseline.api_keys(tables)
    return tables


def release_database(
    tmp_path, backend: str, request, *, varchar_labels: bool, keys: bool = True
) -> str:
    """A database made as the release before migrations made it (``create_all`` of its
    tables; ``varchar_labels``: as the first release declared them, VARCHAR(255);
    ``keys``: its keys were used, so it has ``api_keys``), with rows in every table."""
    if backend == "postgres":
        url = fresh_database(request.getfixturevalue("postgres_url"))
    else:
        url = f"sqlite:///{tmp_path / 'release.db'}"
    tables = release_tables() if keys else baseline.tables()
    if varchar_labels:
        for name in ("predictions", "feedback"):
            tables.tables[name].c.label.type = sa.String(255)
    engine = sa.create_engine(url)
    tables.create_all(engine)
    with engine.begin() as conn:
        for i in range(3):
            conn.execute(
                tables.tables["predictions"].insert(),
                {
                    "id": f"{i:032x}",
                    "text": f"text {i}",
                    "label": "card_arrival",
                    "confidence": 0.5 + i / 10,
                    "top_k": [{"label": "card_arrival", "score": 0.5}],
                    "model_name": "slmops-intent",
                    "model_version": "1",
                    "created_at": AT,
                    "principal": "svc" if i else None,
                },
            )
        for i, user in enumerate(["ann", "bob"], start=1):
            conn.execute(
                tables.tables["feedback"].insert(),
                {
                    "id": i,
                    "prediction_id": f"{0:032x}",
                    "label": "top_up_failed",
                    "kind": "correction",
                    "user_name": user,
                    "created_at": AT,
                },
            )
        conn.execute(
            tables.tables["ingest_watermark"].insert(),
            {"name": "labeled", "last_feedback_id": 1, "updated_at": AT},
        )
        conn.execute(
            tables.tables["feedback_held"].insert(),
            {
                "feedback_id": 2,
                "queue": "conflict",
                "check_name": "reviewers",
                "reason": "one reviewer",
                "held_at": AT,
            },
        )
        conn.execute(
            tables.tables["feedback_revocations"].insert(),
            {"feedback_id": 1, "revoked_by": "ops", "reason": "spam", "revoked_at": AT},
        )
        if keys:
            conn.execute(
                tables.tables["api_keys"].insert(),
                {
                    "id": "0123456789ab",
                    "name": "ann",
                    "role": "reviewer",
                    "salt": "00" * 16,
                    "hash": "ab" * 32,
                    "created_at": AT,
                    "created_by": "ops",
                },
            )
    engine.dispose()
    return url


def contents(engine: sa.Engine) -> dict[str, list[tuple]]:
    """Every row of every table, in key order."""
    tables = release_tables()
    out = {}
    with engine.connect() as conn:
        for name in TABLES:
            table = tables.tables[name]
            rows = conn.execute(sa.select(table).order_by(*table.primary_key.columns)).all()
            out[name] = [tuple(r) for r in rows]
    return out


def label_types(engine: sa.Engine) -> dict[str, sa.types.TypeEngine]:
    inspector = sa.inspect(engine)
    return {
        name: next(c["type"] for c in inspector.get_columns(name) if c["name"] == "label")
        for name in ("predictions", "feedback")
    }


@pytest.mark.parametrize("varchar_labels", [False, True], ids=["text", "varchar255"])
@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_a_release_database_upgrades_to_head_and_loses_no_row(
    tmp_path, backend, varchar_labels, request
):
    url = release_database(tmp_path, backend, request, varchar_labels=varchar_labels)
    engine = make_engine(url, tmp_path)
    before = contents(engine)
    assert all(before[name] for name in TABLES)  # rows in every table
    if varchar_labels:
        assert {t.length for t in label_types(engine).values()} == {255}
    assert migrations.current(engine) is None

    assert upgrade_schema(engine) == (None, migrations.head())

    assert migrations.current(engine) == migrations.head()
    assert contents(engine) == before
    for column_type in label_types(engine).values():
        assert isinstance(column_type, sa.Text) and column_type.length is None
    # The rebuilt tables kept their constraints: the kind check...
    with pytest.raises(sa.exc.IntegrityError), engine.begin() as conn:
        conn.exec_driver_sql(
            "INSERT INTO feedback (prediction_id, label, kind, created_at) "
            f"VALUES ('{1:032x}', 'x', 'nonsense', '2026-01-01')"
        )
    # ...the foreign keys, cascading...
    with engine.begin() as conn:
        conn.exec_driver_sql(f"DELETE FROM predictions WHERE id = '{2:032x}'")
    # ...and one row per (prediction, label, reviewer); a long span label now fits.
    spans = '[{"start": 0, "end": 4, "label": "' + "B-ORG" * 100 + '"}]'
    with FeedbackStore(engine, auto_migrate=False) as store:
        again, created = store.add_feedback(
            f"{0:032x}",
            "top_up_failed",
            LABELS,
            user="ann",
            task=task_type("sequence_classification"),
        )
        assert (again.id, created) == (1, False)
        (long,) = store.log_predictions(
            [NewPrediction("t", spans, 0.9, [], "slmops-ner", "2", None)]
        )
        assert store.get_prediction(long).label == spans
        assert store.counts()["predictions"] == 3


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_a_second_upgrade_changes_nothing(tmp_path, backend, request):
    url = release_database(tmp_path, backend, request, varchar_labels=True)
    engine = make_engine(url, tmp_path)
    upgrade_schema(engine)
    after_first = contents(engine)
    head = migrations.head()
    assert upgrade_schema(engine) == (head, head)
    assert contents(engine) == after_first
    engine.dispose()


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_a_release_database_whose_keys_were_never_used_gets_the_keys_table(
    tmp_path, backend, request
):
    url = release_database(tmp_path, backend, request, varchar_labels=False, keys=False)
    engine = make_engine(url, tmp_path)
    assert "api_keys" not in sa.inspect(engine).get_table_names()
    upgrade_schema(engine)
    with KeyStore(engine, auto_migrate=False) as keys:
        key, _ = keys.add("ann", "reviewer", created_by="ops")
        # The partial unique index came with it: one active key per name.
        with pytest.raises(ApiKeyError, match="already has an active key"):
            keys.add("ann", "admin", created_by="ops")
        keys.revoke(key.id)
        keys.add("ann", "admin", created_by="ops")


def test_the_keys_refuse_an_older_database_when_migrating_is_off(tmp_path, request):
    url = release_database(tmp_path, "sqlite", request, varchar_labels=False, keys=False)
    engine = make_engine(url, tmp_path)
    with pytest.raises(migrations.SchemaBehind, match="slmops db upgrade"):
        KeyStore(engine, auto_migrate=False)
    assert "api_keys" not in sa.inspect(engine).get_table_names()  # untouched
    with KeyStore(engine) as keys:  # auto_migrate on (the default): brought up to date
        assert keys.keys() == []
    assert migrations.current(engine) == migrations.head()


def test_a_new_database_is_made_by_the_migrations(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'new.db'}", tmp_path)
    with FeedbackStore(engine) as store:
        assert migrations.current(store.engine) == migrations.head()
        assert set(TABLES) <= set(sa.inspect(store.engine).get_table_names())


def test_with_auto_migrate_off_an_older_database_is_refused(tmp_path, request):
    url = release_database(tmp_path, "sqlite", request, varchar_labels=True)
    engine = make_engine(url, tmp_path)
    with pytest.raises(migrations.SchemaBehind, match=r"not under migrations.*slmops db upgrade"):
        FeedbackStore(engine, auto_migrate=False)
    assert migrations.current(engine) is None  # untouched
    assert label_types(engine)["feedback"].length == 255
    # A database at an older revision is refused too, naming it.
    upgrade_schema(engine)
    with engine.begin() as conn:
        conn.exec_driver_sql(f"UPDATE {migrations.VERSION_TABLE} SET version_num = '0001'")
    with pytest.raises(migrations.SchemaBehind, match="at revision 0001"):
        FeedbackStore(engine, auto_migrate=False)


@pytest.mark.filterwarnings("ignore:.*expression-based index")  # SQLite cannot reflect it
@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_the_migrations_make_the_schema_the_code_declares(tmp_path, backend, request):
    # A table or column added to the code without a revision shows up here.
    if backend == "postgres":
        url = fresh_database(request.getfixturevalue("postgres_url"))
    else:
        url = f"sqlite:///{tmp_path / 'new.db'}"
    engine = make_engine(url, tmp_path)
    upgrade_schema(engine)
    declared = sa.MetaData()
    for table in [*store_metadata.tables.values(), api_keys_table]:
        table.to_metadata(declared)
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"version_table": migrations.VERSION_TABLE})
        assert compare_metadata(context, declared) == []
    engine.dispose()


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_revision_0005_marks_exactly_the_predictions_with_feedback_reviewed(
    tmp_path, backend, request
):
    # A database at revision 0004 (before predictions.reviewed) with feedback on
    # predictions 0 (two reviewers, one of them revoked) and 2, none on 1 and 3: the
    # review queue held 1 and 3 then, and must hold exactly those after the upgrade.
    if backend == "postgres":
        url = fresh_database(request.getfixturevalue("postgres_url"))
    else:
        url = f"sqlite:///{tmp_path / 'r0004.db'}"
    engine = make_engine(url, tmp_path)
    with engine.connect() as conn:
        command.upgrade(migrations.config(conn), "0004")
        conn.commit()
    assert migrations.current(engine) == "0004"
    tables = baseline.tables()
    predictions, feedback = tables.tables["predictions"], tables.tables["feedback"]
    ids = [f"{i:032x}" for i in range(4)]
    with engine.begin() as conn:
        conn.execute(
            predictions.insert(),
            [
                {
                    "id": pid,
                    "text": f"text {i}",
                    "label": "card_arrival",
                    "confidence": 0.1 * (i + 1),
                    "top_k": [],
                    "model_name": "slmops-intent",
                    "model_version": "1",
                    "created_at": AT,
                }
                for i, pid in enumerate(ids)
            ],
        )
        conn.execute(
            feedback.insert(),
            [
                {
                    "prediction_id": ids[i],
                    "label": "top_up_failed",
                    "kind": "correction",
                    "user_name": user,
                    "created_at": AT,
                }
                for i, user in [(0, "ann"), (0, "bob"), (2, None)]
            ],
        )
        first = conn.execute(sa.select(sa.func.min(feedback.c.id))).scalar_one()
        conn.execute(
            tables.tables["feedback_revocations"].insert(),
            {"feedback_id": first, "revoked_by": "ops", "reason": "spam", "revoked_at": AT},
        )

    assert upgrade_schema(engine) == ("0004", migrations.head())

    with engine.connect() as conn:
        reviewed = dict(conn.execute(sa.text("SELECT id, reviewed FROM predictions")).all())
    assert {pid: bool(flag) for pid, flag in reviewed.items()} == {
        ids[0]: True,
        ids[1]: False,
        ids[2]: True,
        ids[3]: False,
    }
    with FeedbackStore(engine, auto_migrate=False) as store:
        assert [p.id for p in store.review_queue(10)] == [ids[1], ids[3]]
        # A prediction logged after the upgrade starts unreviewed (the column's default).
        (new,) = store.log_predictions(
            [NewPrediction("new", "card_arrival", 0.05, [], "slmops-intent", "2")]
        )
        assert [p.id for p in store.review_queue(10)] == [new, ids[1], ids[3]]
    engine.dispose()
