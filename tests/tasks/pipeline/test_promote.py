"""Promotion with its export on a real (embedded) registry: the formats land on the
promoted version before the alias moves; a failed export keeps the promotion."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from slmops.tasks.core.config import parse_params
from slmops.tasks.model.export import CHOSEN_TAG, EXPORT_STATUS_TAG, FORMATS_DIR, FORMATS_FILE
from slmops.tasks.model.inference import Predictor
from slmops.tasks.pipeline.promote import promote_version
from slmops.tasks.registry import ledger
from slmops.tasks.registry.promotion import CHAMPION, alias_version, apply, client
from slmops.tasks.task_types import task_type
from tests.tasks.tiny_model import TINY_LABELS, make_tiny_model, tiny_frames

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("tiny") / "classifier", labels=TINY_LABELS)


def tiny_project(tmp_path: Path, monkeypatch, **export) -> tuple:
    """Params on a fresh embedded registry, with a test split in the tiny labels."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    _, val = tiny_frames(per_class_val=8)
    (tmp_path / "data" / "test").mkdir(parents=True)
    val.to_csv(tmp_path / "data" / "test" / "test.csv", index=False)
    raw = {
        "gate": {"min_accuracy": 0.0, "min_macro_f1": 0.0, "significance": "none"},
        "export": {"measure_rounds": 1, "measure_texts": 2, **export},
    }
    return parse_params(raw, tmp_path / "params.yaml", root=tmp_path), val


def register_tiny(params, model_dir: Path, test: pd.DataFrame) -> str:
    """A version as `slmops register` makes it: the model and its evaluation on `test`."""
    import mlflow

    from slmops.tasks.model.metrics import classification_report
    from slmops.tasks.registry.tracking import log_model

    predictor = Predictor.from_dir(model_dir, device="cpu", task=task_type(params))
    probs = predictor.predict_proba(test["text"].tolist())
    report = classification_report(test["label"].tolist(), probs, TINY_LABELS)
    report["metrics"] = {"accuracy": report["accuracy"], "macro_f1": report["macro_f1"]}
    folder = model_dir.parent / "eval"
    folder.mkdir(exist_ok=True)
    (folder / "report.json").write_text(json.dumps(report))
    pd.DataFrame(
        {
            "text": test["text"],
            "label": test["label"],
            "pred": predictor.predict(test["text"].tolist()),
        }
    ).to_csv(folder / "predictions.csv", index=False)
    client(params)  # configures MLflow on this store
    with mlflow.start_run():
        mlflow.log_artifacts(str(folder), artifact_path="eval")
        info = log_model(
            model_dir, input_example=["my card has not arrived"], task=task_type(params)
        )
    mv = mlflow.register_model(
        info.model_uri,
        params.registry.model_name,
        tags={"metrics.accuracy": str(report["accuracy"]), "data.test_hash": ""},
    )
    return str(mv.version)


def test_promotion_exports_the_formats_onto_the_version(model_dir, tmp_path, monkeypatch):
    import mlflow

    params, test = tiny_project(tmp_path, monkeypatch)
    version = register_tiny(params, model_dir, test)
    _, promoted = promote_version(params, version)
    assert promoted
    mc = client(params)
    name = params.registry.model_name
    assert alias_version(mc, name, CHAMPION) == version
    mv = mc.get_model_version(name, version)
    assert mv.tags[EXPORT_STATUS_TAG] == "ok"
    chosen = mv.tags[CHOSEN_TAG]
    assert chosen in {"torch", "onnx", "onnx-int8"}
    assert float(mv.tags["format.onnx-int8.accuracy"]) >= 0
    assert float(mv.tags["format.onnx.size_mb"]) > float(mv.tags["format.onnx-int8.size_mb"])
    files = mlflow.artifacts.download_artifacts(
        run_id=mv.run_id, artifact_path=FORMATS_DIR, dst_path=str(tmp_path / "dl")
    )
    report = json.loads((Path(files) / FORMATS_FILE).read_text())
    assert report["model"] == {"name": name, "version": version, "run_id": mv.run_id}
    assert report["chosen"] == chosen
    assert (Path(files) / "onnx" / "model.onnx").is_file()
    assert (Path(files) / "onnx-int8" / "model.onnx").is_file()
    entry = ledger.read(params.path(params.registry.ledger))[-1]
    assert entry["formats"]["chosen"] == chosen and entry["formats"]["error"] is None


def test_the_export_runs_before_the_champion_alias_moves(model_dir, tmp_path, monkeypatch):
    import slmops.tasks.pipeline.promote as promote

    params, test = tiny_project(tmp_path, monkeypatch, enabled=False)
    version = register_tiny(params, model_dir, test)
    seen = []

    def export(params, version):
        seen.append(alias_version(client(params), params.registry.model_name, CHAMPION))
        return {"chosen": None, "error": None}

    monkeypatch.setattr(promote, "export_formats", export)
    assert promote_version(params, version)[1]
    assert seen == [None]  # while the formats are made, the service sees the old champion
    assert alias_version(client(params), params.registry.model_name, CHAMPION) == version


def test_a_failed_export_keeps_the_promotion_and_says_so(model_dir, tmp_path, monkeypatch, caplog):
    params, test = tiny_project(tmp_path, monkeypatch)
    version = register_tiny(params, model_dir, test)

    def broken(*args, **kwargs):
        raise RuntimeError("exporter exploded")

    monkeypatch.setattr("slmops.tasks.model.export.export_onnx", broken)
    with caplog.at_level("WARNING", logger="slmops.tasks.pipeline.promote"):
        _, promoted = promote_version(params, version)
    assert promoted
    mc = client(params)
    name = params.registry.model_name
    assert alias_version(mc, name, CHAMPION) == version
    tags = mc.get_model_version(name, version).tags
    assert tags[EXPORT_STATUS_TAG] == "failed"
    assert "exporter exploded" in tags["format.error"]
    assert CHOSEN_TAG not in tags
    assert "served in torch fp32" in caplog.text
    entry = ledger.read(params.path(params.registry.ledger))[-1]
    assert entry["promoted"] and "exporter exploded" in entry["formats"]["error"]


def test_export_can_be_switched_off_and_apply_never_exports(model_dir, tmp_path, monkeypatch):
    params, test = tiny_project(tmp_path, monkeypatch, enabled=False)
    version = register_tiny(params, model_dir, test)
    assert promote_version(params, version)[1]
    tags = client(params).get_model_version(params.registry.model_name, version).tags
    assert EXPORT_STATUS_TAG not in tags
    assert ledger.read(params.path(params.registry.ledger))[-1]["formats"]["skipped"]

    on, _ = tiny_project(tmp_path / "on", monkeypatch)
    version = register_tiny(on, model_dir, test)
    assert apply(on, version)[1]  # the registry's own promotion: gate and alias, no export
    tags = client(on).get_model_version(on.registry.model_name, version).tags
    assert EXPORT_STATUS_TAG not in tags
