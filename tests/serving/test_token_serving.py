"""A token classifier served: entities in the answers, spans as feedback, and the 422 for
an answer in the field of the other task type. The service asks the served model's task
type for all of it; nothing here goes through the registry (a folder model source)."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from slmops.serving.app import create_app
from slmops.serving.model_source import LoadedModel, ModelRef
from slmops.tasks.core.config import parse_params
from slmops.tasks.model.inference import load_predictor
from slmops.tasks.task_types import task_type
from slmops.tasks.task_types.token.spans import tag_names
from tests.serving.conftest import TOKEN, auth, wait_until_loaded
from tests.tasks.tiny_model import make_tiny_model

NER = task_type("token_classification")
TYPES = ["location", "person"]
TEXT = "Alice flew from Paris to Rome"  # words at 0-5, 6-10, 11-15, 16-21, 22-24, 25-29


class FolderSource:
    """One version, loaded from a model folder."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def champion(self) -> ModelRef:
        return ModelRef("slmops-ner", "1", "run-1")

    def load(self, ref: ModelRef) -> LoadedModel:
        predictor = load_predictor("torch", self.folder, task=NER)
        return LoadedModel(ref.name, ref.version, ref.run_id, predictor, ref.uri, self.folder)


@pytest.fixture(scope="module")
def ner_model(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("ner") / "model"
    return make_tiny_model(folder, labels=tag_names(TYPES), task="token_classification")


@pytest.fixture
def client(ner_model, tmp_path, monkeypatch):
    monkeypatch.setenv("SLMOPS_API_TOKEN", TOKEN)
    params = parse_params({"serve": {"poll_seconds": 0}}, tmp_path / "params.yaml", root=tmp_path)
    with TestClient(create_app(params, model_loader=FolderSource(ner_model))) as c:
        wait_until_loaded(c)
        yield c


def test_answers_carry_entities_and_no_runner_up_labels(client):
    model = client.get("/model").json()
    assert model["task"] == "token_classification" and model["labels"] == TYPES
    (answer,) = client.post("/predict", json={"text": TEXT}).json()["predictions"]
    assert answer["top_k"] == [] and isinstance(answer["entities"], list)
    for e in answer["entities"]:
        assert e["label"] in TYPES and TEXT[e["start"] : e["end"]] == e["text"]
    spans = [[e["start"], e["end"], e["label"]] for e in answer["entities"]]
    assert answer["label"] == str(spans).replace(" ", "").replace("'", '"')
    stored = client.app.state.service.store.get_prediction(answer["prediction_id"])
    assert stored.label == answer["label"]


def test_feedback_takes_spans_and_stores_them_as_span_json(client):
    (answer,) = client.post("/predict", json={"text": TEXT}).json()["predictions"]
    pid = answer["prediction_id"]
    spans = [
        {"start": 16, "end": 21, "label": "location"},  # out of order: stored sorted
        {"start": 0, "end": 5, "label": "person"},
    ]
    body = {"prediction_id": pid, "entities": spans, "user": "r"}
    first = client.post("/feedback", json=body, headers=auth())
    assert first.status_code == 201, first.text
    assert first.json()["label"] == '[[0,5,"person"],[16,21,"location"]]'
    again = client.post("/feedback", json=body, headers=auth())
    assert again.status_code == 200 and again.json()["created"] is False
    none = client.post("/feedback", json={"prediction_id": pid, "entities": []}, headers=auth())
    assert none.status_code == 201 and none.json()["label"] == "[]"


@pytest.mark.parametrize(
    ("extra", "detail"),
    [
        ({"label": "person"}, "entities missing or null"),
        ({"label": "person", "entities": []}, "entities sent with the other field"),
        ({"entities": [{"start": 0, "end": 3, "label": "person"}]}, "word"),  # mid-word
        ({"entities": [{"start": 0, "end": 5, "label": "alien"}]}, "alien"),
    ],
    ids=["label_field", "both_fields", "mid_word", "unknown_type"],
)
def test_wrong_feedback_is_a_422_that_names_the_problem(client, extra, detail):
    (answer,) = client.post("/predict", json={"text": TEXT}).json()["predictions"]
    body = {"prediction_id": answer["prediction_id"], **extra}
    response = client.post("/feedback", json=body, headers=auth())
    assert response.status_code == 422, response.text
    assert detail in response.json()["detail"]
    assert response.json()["valid_labels"] == TYPES
    assert client.app.state.service.store.counts()["feedback"] == 0
