"""`slmops db upgrade|current`: an older feedback database is upgraded (its rows kept)
and reported; a second upgrade says there is nothing to do; with feedback.auto_migrate
off the store refuses the older database until `slmops db upgrade` ran."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from slmops.tasks.core.config import load_params
from slmops.tasks.feedback import migrations
from slmops.tasks.feedback.migrations import baseline
from slmops.tasks.feedback.store import FeedbackStore
from tests.slmops.run_cli import cli


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A project whose feedback database the release before migrations made (VARCHAR
    labels, one prediction), with feedback.auto_migrate off."""
    (tmp_path / "params.yaml").write_text("feedback:\n  auto_migrate: false\n")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data" / "feedback").mkdir(parents=True)
    tables = baseline.tables()
    tables.tables["predictions"].c.label.type = sa.String(255)
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'data' / 'feedback' / 'feedback.db'}")
    tables.create_all(engine)
    with engine.begin() as conn:
        conn.exec_driver_sql(
            "INSERT INTO predictions VALUES ('p1', 'a text', 'card_arrival', 0.5, '[]', "
            "'slmops-intent', '1', '2026-11-30 12:00:00', NULL)"
        )
    engine.dispose()
    return tmp_path


def test_db_upgrade_brings_an_older_database_to_head(project, monkeypatch, capsys):
    params = load_params(project / "params.yaml")
    with pytest.raises(migrations.SchemaBehind, match="slmops db upgrade"):
        FeedbackStore.from_params(params)
    head = migrations.head()

    code, output = cli(monkeypatch, capsys, "db", "current")
    assert code == 0 and f"revision none (head {head})" in output and "behind" in output

    code, output = cli(monkeypatch, capsys, "db", "upgrade")
    assert code == 0 and f"upgraded from no revision to {head}" in output

    code, output = cli(monkeypatch, capsys, "db", "current")
    assert code == 0 and f"revision {head} (head {head}): up to date" in output
    code, output = cli(monkeypatch, capsys, "db", "upgrade")
    assert code == 0 and f"already at revision {head}" in output

    with FeedbackStore.from_params(params) as store:  # auto_migrate off: now accepted
        assert store.get_prediction("p1").text == "a text"
        assert store.counts()["predictions"] == 1


def test_db_current_on_a_project_without_a_database_creates_none(tmp_path, monkeypatch, capsys):
    (tmp_path / "params.yaml").write_text("{}\n")
    monkeypatch.chdir(tmp_path)
    code, output = cli(monkeypatch, capsys, "db", "current")
    assert code == 0 and "no database yet" in output, output
    assert not (tmp_path / "data" / "feedback" / "feedback.db").exists()
