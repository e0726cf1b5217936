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
