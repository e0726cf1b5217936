"""The ingest_feedback flow: feedback → new data version → retrain as a subflow."""

import pytest

from tests.conftest import run
from tests.flows.feedback import corrections_past_the_threshold

pytestmark = pytest.mark.slow


def test_feedback_past_the_threshold_makes_a_version_and_retrains(project):
    from slmops.flows.ingest_feedback import ingest_feedback_flow
    from slmops.tasks.data.dataset import read_labeled
    from slmops.tasks.feedback.ingest import RETRAIN_MARK, watermark
    from slmops.tasks.feedback.store import FeedbackStore
    from slmops.tasks.registry.promotion import alias_version, client

    path = project / "params.yaml"
    params = corrections_past_the_threshold(project)

    result = ingest_feedback_flow(params_path=str(path))

    assert (result["read"], result["added"], result["watermark"]) == (3, 3, 3)
    assert result["label_studio"] is None  # no label_studio.url: no pull step
    assert result["live"] == {"1": {"n": 3, "accuracy": 0.0}}
    assert result["retrain_reason"].startswith("3 new feedback labels")
    assert result["retrain"]["mode"] == "subflow" and result["retrain"]["version"] == "1"
    assert len(read_labeled(params).query("source == 'feedback'")) == 3
    log = run(["git", "log", "-1", "--format=%s", "--", "data/labeled.dvc"], project).stdout
    assert log.startswith("data: feedback 1-3: 3 added")
    with FeedbackStore.from_params(params) as store:
        assert watermark(store, RETRAIN_MARK) == 3  # these labels were in the retrain's data
    assert alias_version(client(params), params.registry.model_name, "champion") == "1"

    again = ingest_feedback_flow(params_path=str(path))
    assert again["read"] == 0 and again["retrain"] is None


def test_a_batch_that_would_drain_a_class_is_reported_not_wedged(project, monkeypatch):
    import yaml

    from slmops.flows.ingest_feedback import ingest_feedback_flow
    from slmops.tasks.core.config import load_params
    from slmops.tasks.data.dataset import read_labeled
    from slmops.tasks.feedback.ingest import watermark
    from slmops.tasks.feedback.store import FeedbackStore
    from tests.flows.feedback import record_corrections
    from tests.webhook import Webhook

    path = project / "params.yaml"
    raw = yaml.safe_load(path.read_text())
    # One reviewer may relabel curated texts; no retrain, only the ingestion is under test.
    raw["feedback"] = {"reviewers_to_override": 1, "retrain_after_labels": 1000}
    path.write_text(yaml.safe_dump(raw))
    params = load_params(path)
    data = read_labeled(params)
    floor = params.validation.min_examples_per_class
    rare = data.loc[data["label"] == "exchange_rate", "text"].tolist()
    record_corrections(params, [(t, "card_arrival") for t in rare])

    with Webhook() as hook:
        monkeypatch.setenv("SLMOPS_NOTIFY_URL", hook.url)
        state = ingest_feedback_flow(params_path=str(path), return_state=True)

    result = state.result()
    assert state.is_completed() and "feedback text(s) dead-lettered" in state.message
    assert result["dead_lettered"] == floor and result["corrected"] == len(rare) - floor
    (post,) = [p["json"] for p in hook.posts]
    assert post["event"] == "feedback_dead_lettered" and post["dead_lettered"] == floor
    assert "min_examples_per_class" in post["rows"][0]["reason"]
    with FeedbackStore.from_params(params) as store:
        assert watermark(store) == len(rare)  # moved past the batch: nothing wedges
    again = ingest_feedback_flow(params_path=str(path))
    assert again["read"] == 0 and again["dead_lettered"] == 0


def test_each_run_deletes_old_predictions_that_never_got_feedback(project):
    from datetime import UTC, datetime, timedelta

    from slmops.flows.ingest_feedback import ingest_feedback_flow
    from slmops.tasks.core.config import load_params
    from slmops.tasks.feedback.store import FeedbackStore, NewPrediction, predictions_table

    path = project / "params.yaml"
    params = load_params(path)
    assert params.feedback.retention_days == 30
    with FeedbackStore.from_params(params) as store:
        old, recent = store.log_predictions(
            [
                NewPrediction(text, "card_arrival", 0.5, [], "slmops-intent", "1")
                for text in ("asked 31 days ago", "asked just now")
            ]
        )
        with store.engine.begin() as conn:
            conn.execute(
                predictions_table.update()
                .where(predictions_table.c.id == old)
                .values(created_at=datetime.now(UTC) - timedelta(days=31))
            )

    result = ingest_feedback_flow(params_path=str(path), trigger_retrain=False)

    assert result["read"] == 0 and result["pruned_predictions"] == 1
    with FeedbackStore.from_params(params) as store:
        assert store.get_prediction(old) is None
        assert store.get_prediction(recent) is not None


def test_an_unreachable_label_studio_is_a_warning_and_the_feedback_still_comes_in(
    project, monkeypatch
):
    import socket

    import yaml

    from slmops.flows.ingest_feedback import ingest_feedback_flow
    from slmops.tasks.core.config import load_params
    from tests.flows.feedback import record_corrections

    with socket.socket() as s:  # a port nobody listens on once closed
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}"
    path = project / "params.yaml"
    raw = yaml.safe_load(path.read_text())
    raw["feedback"] = {"retrain_after_labels": 1000}
    raw["label_studio"] = {"url": url, "timeout_seconds": 5}
    path.write_text(yaml.safe_dump(raw))
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", "some-token")
    record_corrections(load_params(path))

    result = ingest_feedback_flow(params_path=str(path))

    error = result["label_studio"]["error"]
    assert url in error and "unreachable" in error
    assert (result["read"], result["added"]) == (3, 3)
