"""Token classification through the whole loop with a tiny model: the retrain flow
trains, evaluates, registers and promotes an NER model; the service answers with
entity spans; feedback with corrected spans becomes a new version of the data."""

import json
import time
from pathlib import Path

import pytest
import yaml
from fastapi.testclient import TestClient

from tests.conftest import GIT_IDENTITY, dvc_project, run

pytestmark = pytest.mark.slow

WNUT = Path(__file__).resolve().parents[2] / "data" / "seed" / "wnut17"
TOKEN = "ner-test-token"


def _head_conll(src: Path, dest: Path, sentences: int) -> None:
    """The first ``sentences`` sentences of a CoNLL file."""
    out, n = [], 0
    for line in src.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            if out and out[-1] != "":
                n += 1
                out.append("")
                if n == sentences:
                    break
            continue
        out.append(line)
    dest.write_text("\n".join(out) + "\n", encoding="utf-8")


@pytest.fixture
def ner_project(tmp_path, monkeypatch, git_identity):
    """A tiny NER project under git + DVC: 120 WNUT train sentences, 40 test ones."""
    from tasks.config import load_params
    from tasks.seed import build_from_seed
    from tasks.versioning import track
    from tests.tasks.tiny_model import make_tiny_model

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("SLMOPS_API_TOKEN", TOKEN)
    root = tmp_path
    seed = root / "data" / "seed"
    seed.mkdir(parents=True)
    _head_conll(WNUT / "train.conll", seed / "train.conll", 120)
    _head_conll(WNUT / "test.conll", seed / "test.conll", 40)
    (seed / "types.json").write_text((WNUT / "entity_types.json").read_text())
    raw = {
        "task": "token_classification",
        "data": {"seed_train": "data/seed/train.conll", "seed_test": "data/seed/test.conll"},
        "labels": {"label_set": "data/seed/types.json"},
        "validation": {"min_examples_per_class": 0, "severity": {"exact_duplicate": "off"}},
        "dvc": {"push": False},
        "split": {"val_fraction": 0.2, "seed": 13},
        "train": {
            "base_model": str(make_tiny_model(root / "tiny-base")),
            "epochs": 2,
            "learning_rate": 3e-3,
            "batch_size": 8,
            "early_stopping_patience": 0,
        },
        "evaluate": {"latency_samples": 3},
        "registry": {"model_name": "slmops-ner-test"},
        "gate": {"min_accuracy": 0.0, "min_macro_f1": 0.0, "significance": "none"},
        "export": {"measure": False},
        "serve": {"poll_seconds": 0},
        "feedback": {"git_commit": True},
    }
    (root / "params.yaml").write_text(yaml.safe_dump(raw))
    dvc_project(root)
    params = load_params(root / "params.yaml")
    build_from_seed(params)
    track([params.path(params.data.labeled_dir), params.path(params.data.test_dir)], root, False)
    for cmd in (["git", "add", "-A"], ["git", "commit", "-qm", "tiny ner project"]):
        proc = run(cmd, root, env=GIT_IDENTITY)
        assert proc.returncode == 0, proc.stderr
    monkeypatch.chdir(root)
    return root


def _served(client: TestClient) -> dict:
    for _ in range(600):
        health = client.get("/health").json()
        if health["status"] == "ok":
            return client.get("/model").json()
        time.sleep(0.1)
    raise AssertionError(f"no model served: {health}")


def test_ner_retrain_serve_feedback_and_ingest(ner_project):
    from flows.ingest_feedback import ingest_feedback_flow
    from flows.retrain import retrain
    from serving.app import create_app
    from tasks.config import load_params
    from tasks.dataset import read_labeled
    from tasks.ner.spans import dumps, words
    from tasks.promotion import CHAMPION, alias_version, client

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
    with TestClient(create_app(params)) as http:
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
