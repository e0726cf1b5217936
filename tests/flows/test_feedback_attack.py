"""Poisoning the loop through the service (issue 19): one reviewer key floods
corrections of curated labels while anonymous clients predict the same texts over and
over; ingestion and a retrain later, nothing curated has moved and the champion is the
same. Two distinct reviewer keys agreeing do change a label, and its provenance names
both."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from tests.conftest import training_project

pytestmark = pytest.mark.slow

FLIPPED_FROM, FLIPPED_TO = "card_arrival", "exchange_rate"
CORRECTIONS = 500
ANONYMOUS_PREDICTIONS = 1000


@pytest.fixture
def project(tmp_path, monkeypatch, git_identity):
    """The tiny training project, gated by McNemar's test as the shipped defaults are."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    root = training_project(tmp_path, gate={"significance": "mcnemar"})
    monkeypatch.chdir(root)
    return root


def predict(http: TestClient, texts: list[str], batch: int = 50) -> list[str]:
    """Anonymous /predict calls (a batch of texts each); the prediction ids, in order."""
    ids: list[str] = []
    for start in range(0, len(texts), batch):
        r = http.post("/predict", json={"texts": texts[start : start + batch]})
        assert r.status_code == 200, r.text
        ids += [p["prediction_id"] for p in r.json()["predictions"]]
    return ids


def correct(http: TestClient, key: str, ids: list[str], label: str) -> None:
    auth = {"Authorization": f"Bearer {key}"}
    for pid in ids:
        r = http.post("/feedback", json={"prediction_id": pid, "label": label}, headers=auth)
        assert r.status_code == 201, r.text


def test_one_key_cannot_poison_curated_labels_two_agreeing_keys_can(project):
    from slmops.flows.ingest_feedback import ingest_feedback_flow
    from slmops.flows.retrain import retrain
    from slmops.serving.app import create_app
    from slmops.tasks.core.config import load_params
    from slmops.tasks.data.dataset import read_corrections, read_labeled
    from slmops.tasks.feedback.keys import KeyStore
    from slmops.tasks.feedback.policy import CHECK_CURATED, CHECK_DAILY_CAP
    from slmops.tasks.feedback.store import FeedbackStore
    from slmops.tasks.registry.promotion import CHAMPION, alias_version, client

    path = str(project / "params.yaml")
    params = load_params(path)
    assert retrain(params_path=path, trigger="test")["promoted"]
    curated = read_labeled(params)
    targets = curated.loc[curated["label"] == FLIPPED_FROM, "text"].tolist()
    with KeyStore.from_params(params) as keys:
        _, mallory = keys.add("mallory", "reviewer", created_by="test")
        _, ann = keys.add("ann", "reviewer", created_by="test")

    with TestClient(create_app(params), base_url="http://127.0.0.1") as http:
        for _ in range(600):
            if http.get("/health").json()["status"] == "ok":
                break
        flood = [targets[i % len(targets)] for i in range(CORRECTIONS)]
        correct(http, mallory, predict(http, flood), FLIPPED_TO)
        echo = [targets[i % len(targets)] for i in range(ANONYMOUS_PREDICTIONS)]
        assert len(predict(http, echo)) == ANONYMOUS_PREDICTIONS

        ingested = ingest_feedback_flow(params_path=path)
        again = retrain(params_path=path, trigger="test")

        # Every curated label as it was; the corrections wait; the champion stayed.
        after = read_labeled(params)
        assert after[["text", "label", "source"]].equals(curated[["text", "label", "source"]])
        assert ingested["read"] == CORRECTIONS and ingested["conflicts"] == CORRECTIONS
        assert ingested["retrain"] is None  # the flood forced no retrain
        with FeedbackStore.from_params(params) as store:
            held = store.held("conflict")
        assert len(held) == CORRECTIONS
        cap = params.feedback.max_corrections_per_reviewer_per_day
        checks = [h.check for h in held]
        assert (
            checks.count(CHECK_CURATED) == cap
            and checks.count(CHECK_DAILY_CAP) == CORRECTIONS - cap
        )
        assert not again["promoted"]
        assert alias_version(client(params), params.registry.model_name, CHAMPION) == "1"

        # A second, distinct reviewer agrees with one of mallory's corrections.
        text = targets[0]
        (pid,) = predict(http, [text])
        correct(http, ann, [pid], FLIPPED_TO)
        ingest_feedback_flow(params_path=path, trigger_retrain=False)

    row = read_labeled(params).set_index("text").loc[text]
    assert row["label"] == FLIPPED_TO and row["source"] == "feedback"
    last = read_corrections(params).iloc[-1]
    assert last["text"] == text and last["old_label"] == FLIPPED_FROM
    assert sorted(last["new_annotators"].split(",")) == ["ann", "mallory"]
    with FeedbackStore.from_params(params) as store:
        voters = {
            i.user for i in store.feedback_by_ids(int(x) for x in row["source_id"].split(","))
        }
    assert voters == {"ann", "mallory"}
    # The other targets are untouched.
    others = read_labeled(params).set_index("text").loc[targets[1:], "label"]
    assert set(others) == {FLIPPED_FROM}
