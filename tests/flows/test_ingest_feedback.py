"""The ingest_feedback flow: feedback → new data version → retrain as a subflow."""

import pytest
import yaml

from tests.conftest import run

pytestmark = pytest.mark.slow


def test_feedback_past_the_threshold_makes_a_version_and_retrains(project):
    from flows.ingest_feedback import ingest_feedback_flow
    from tasks.config import load_params
    from tasks.dataset import load_label_set, read_labeled
    from tasks.feedback_ingest import RETRAIN_MARK, watermark
    from tasks.feedback_store import FeedbackStore, NewPrediction
    from tasks.promotion import alias_version, client

    path = project / "params.yaml"
    raw = yaml.safe_load(path.read_text())
    raw["feedback"] = {"retrain_after_labels": 3}
    path.write_text(yaml.safe_dump(raw))
    params = load_params(path)
    labels = load_label_set(params)
    texts = [
        ("where is the card you posted to me", "card_arrival"),
        ("my top up did not go through at all", "top_up_failed"),
        ("someone stole my card this morning", "lost_or_stolen_card"),
    ]
    with FeedbackStore.from_params(params) as store:
        ids = store.log_predictions(
            [NewPrediction(t, "exchange_rate", 0.4, [], "slmops-intent", "1") for t, _ in texts]
        )
        for pid, (_, label) in zip(ids, texts, strict=True):
            store.add_feedback(pid, label, labels, user="reviewer")

    result = ingest_feedback_flow(params_path=str(path))

    assert (result["read"], result["added"], result["watermark"]) == (3, 3, 3)
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
