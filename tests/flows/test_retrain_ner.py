"""Token classification through the whole loop with a tiny model: the retrain flow
trains, evaluates, registers and promotes an NER model; the service answers with
entity spans; feedback with corrected spans becomes a new version of the data."""

import json
import time

import pytest
from fastapi.testclient import TestClient

from tests.conftest import NER_TOKEN as TOKEN
from tests.conftest import run

pytestmark = pytest.mark.slow


def _served(client: TestClient) -> dict:
    for _ in range(600):
        health = client.get("/health").json()
        if health["status"] == "ok":
            return client.get("/model").json()
        time.sleep(0.1)
    raise AssertionError(f"no model served: {health}")


def test_ner_retrain_serve_feedback_and_ingest(ner_project):
    from slmops.flows.ingest_feedback import ingest_feedback_flow
    from slmops.flows.retrain import retrain
    from slmops.serving.app import create_app
    from slmops.tasks.core.config import load_params
    from slmops.tasks.data.dataset import read_labeled
    from slmops.tasks.registry.promotion import CHAMPION, alias_version, client
    from slmops.tasks.task_types.token.spans import dumps, words

    params_path = str(ner_project / "params.yaml")
    params = load_params(params_path)
    name = params.registry.model_name

    result = retrain(params_path=params_path, trigger="test")
    assert result["promoted"] and result["version"] == "1"
    m = result["metrics"]
    assert {"f1", "precision", "recall", "macro_f1", "accuracy"} <= set(m)
    mc = client(params)
    assert alias_version(mc, name, CHAMPION) == "1"
    v1 = mc.get_model_version(name, "1")
    assert v1.tags["task"] == "token_classification"
    assert float(v1.tags["metrics.f1"]) == pytest.approx(m["f1"])
    report = json.loads((ner_project / "reports" / "eval" / "report.json").read_text())
    assert set(report["per_class"]) >= {"person", "location"}

    labeled_dvc = (ner_project / "data" / "labeled.dvc").read_text()
    # A Host the service answers (bound to loopback: serve.allowed_hosts' default).
    with TestClient(create_app(params), base_url="http://127.0.0.1") as http:
        model = _served(http)
        assert model["task"] == "token_classification"
        assert "person" in model["labels"] and "B-person" not in model["labels"]
        text = "  Barack Obama visited   Paris , France !"
        answer = http.post("/predict", json={"text": text}).json()["predictions"][0]
        assert isinstance(answer["entities"], list) and answer["top_k"] == []
        for e in answer["entities"]:
            assert text[e["start"] : e["end"]] == e["text"] and 0 <= e["score"] <= 1
        assert answer["label"] == dumps(
            [(e["start"], e["end"], e["label"]) for e in answer["entities"]]
        )

        auth = {"Authorization": f"Bearer {TOKEN}"}
        (b0, _), (_, b1) = words(text)[0], words(text)[1]
        (p0, p1) = words(text)[3]
        corrected = [
            {"start": b0, "end": b1, "label": "person"},
            {"start": p0, "end": p1, "label": "location"},
        ]
        pid = answer["prediction_id"]
        cut = http.post(
            "/feedback",
            json={
                "prediction_id": pid,
                "entities": [{"start": b0, "end": b0 + 3, "label": "person"}],
            },
            headers=auth,
        )
        assert cut.status_code == 422 and "cuts a word" in cut.json()["detail"]
        unknown = http.post(
            "/feedback",
            json={"prediction_id": pid, "entities": [{"start": b0, "end": b1, "label": "alien"}]},
            headers=auth,
        )
        assert unknown.status_code == 422 and "alien" in unknown.json()["detail"]
        wrong_kind = http.post(
            "/feedback", json={"prediction_id": pid, "label": "person"}, headers=auth
        )
        assert wrong_kind.status_code == 422 and "entities" in wrong_kind.json()["detail"]
        ok = http.post(
            "/feedback", json={"prediction_id": pid, "entities": corrected}, headers=auth
        )
        assert ok.status_code == 201, ok.text
        assert json.loads(ok.json()["label"]) == [[b0, b1, "person"], [p0, p1, "location"]]

    ingested = ingest_feedback_flow(params_path=params_path, trigger_retrain=False)
    assert ingested["read"] == 1 and ingested["added"] == 1 and ingested["quarantined"] == 0
    assert ingested["version"] and ingested["commit"]
    labeled = read_labeled(params)
    row = labeled.loc[labeled["source"] == "feedback"]
    assert len(row) == 1
    spans = json.loads(row["label"].iloc[0])
    assert [s[2] for s in spans] == ["person", "location"]
    stored = row["text"].iloc[0]
    assert [stored[s:e] for s, e, _ in spans] == ["Barack Obama", "Paris"]
    assert (ner_project / "data" / "labeled.dvc").read_text() != labeled_dvc
    log = run(["git", "log", "--oneline", "-1", "--", "data/labeled.dvc"], ner_project)
    assert "feedback" in log.stdout.lower()
