"""Serving formats: ONNX export and int8 quantization of a tiny model, the format
choice rule, and the export at promotion on a real (embedded) registry."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from slmops.tasks.core.config import ExportConfig, parse_params
from slmops.tasks.model.export import (
    CHOSEN_TAG,
    EXPORT_STATUS_TAG,
    FORMATS_DIR,
    FORMATS_FILE,
    FormatCheck,
    check_formats,
    choose_format,
    export_onnx,
    quantize_onnx,
    speedup,
)
from slmops.tasks.model.inference import OnnxPredictor, Predictor, load_predictor
from tests.tasks.tiny_model import TINY_LABELS, make_tiny_model, tiny_frames

PREFERENCE = ["onnx-int8", "onnx", "torch-int8", "torch-bf16", "torch"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("tiny") / "classifier", labels=TINY_LABELS)


@pytest.fixture(scope="module")
def test_frame() -> pd.DataFrame:
    train, val = tiny_frames()
    return pd.concat([val, train.head(20)], ignore_index=True)


@pytest.fixture(scope="module")
def exported(model_dir, tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("onnx")
    fp32 = export_onnx(model_dir, out / "fp32" / "model.onnx")
    return {"onnx": fp32, "onnx-int8": quantize_onnx(fp32, out / "int8" / "model.onnx")}


@pytest.fixture(scope="module")
def texts(test_frame) -> list[str]:
    # Mixed lengths in one call: padding and batching must not change an answer.
    return [*test_frame["text"].tolist(), "card?", "word " * 400]


# --------------------------------------------------------------------------- export


def test_onnx_fp32_matches_torch(model_dir, exported, texts):
    torch_p = Predictor.from_dir(model_dir, device="cpu")
    onnx_p = OnnxPredictor.from_files(exported["onnx"], model_dir)
    assert onnx_p.format == "onnx"
    assert (onnx_p.labels, onnx_p.max_length) == (torch_p.labels, torch_p.max_length)
    want = torch_p.predict_proba(texts, batch_size=8)
    np.testing.assert_allclose(onnx_p.predict_proba(texts, batch_size=8), want, atol=1e-5)
    # Any batch size and order: the graph has dynamic batch and sequence axes.
    one_by_one = np.concatenate([onnx_p.predict_proba([t]) for t in texts])
    np.testing.assert_allclose(one_by_one, want, atol=1e-5)
    # A random model still tells texts apart: the checks above are not vacuous.
    assert np.abs(want - want.mean(axis=0)).max() > 1e-2


def test_onnx_int8_is_smaller_and_close(model_dir, exported, texts):
    fp32 = load_predictor("onnx", model_dir, exported["onnx"]).predict_proba(texts)
    int8_p = load_predictor("onnx-int8", model_dir, exported["onnx-int8"], num_threads=1)
    assert int8_p.format == "onnx-int8"
    int8 = int8_p.predict_proba(texts)
    np.testing.assert_allclose(int8.sum(axis=1), 1.0, rtol=1e-4)
    np.testing.assert_allclose(int8, fp32, atol=0.1)
    assert np.mean(int8.argmax(axis=1) == fp32.argmax(axis=1)) >= 0.8
    assert exported["onnx-int8"].stat().st_size < exported["onnx"].stat().st_size / 2


def test_an_onnx_file_for_other_labels_is_refused(model_dir, exported, tmp_path):
    import shutil

    other = make_tiny_model(tmp_path / "other", labels=[*TINY_LABELS, "extra"])
    shutil.copy2(exported["onnx"], tmp_path / "m.onnx")
    with pytest.raises(ValueError, match="5 outputs but 6 labels"):
        OnnxPredictor.from_files(tmp_path / "m.onnx", other)
    with pytest.raises(FileNotFoundError, match="no such ONNX model"):
        OnnxPredictor.from_files(tmp_path / "missing.onnx", model_dir)


def test_check_formats_writes_files_accuracies_timings_and_the_choice(
    model_dir, test_frame, tmp_path
):
    cfg = ExportConfig(
        formats=["onnx", "onnx-int8", "torch-int8", "torch-bf16"],
        measure_rounds=1,
        measure_texts=2,
    )
    report = check_formats(model_dir, tmp_path / "formats", test_frame, cfg, num_threads=1)
    on_disk = json.loads((tmp_path / "formats" / FORMATS_FILE).read_text())
    assert on_disk == json.loads(json.dumps(report))
    formats = report["formats"]
    assert set(formats) >= {"torch", "onnx", "onnx-int8", "torch-int8"}
    assert (tmp_path / "formats" / formats["onnx"]["file"]).is_file()
    assert formats["onnx"]["file"] == "onnx/model.onnx"
    assert formats["onnx-int8"]["file"] == "onnx-int8/model.onnx"
    assert formats["torch-int8"]["file"] is None and formats["torch-int8"]["size_bytes"] is None
    assert formats["onnx-int8"]["size_bytes"] < formats["onnx"]["size_bytes"]
    # torch fp32 was measured here (no evaluation given) and ONNX fp32 agrees with it.
    assert formats["torch"]["accuracy_source"] == "measured"
    assert formats["onnx"]["accuracy"] == pytest.approx(formats["torch"]["accuracy"])
    for check in formats.values():
        assert 0 <= check["accuracy"] <= 1
        assert check["latency_p50_ms"] > 0 and check["throughput"] > 0
        assert check["speedup"] > 0
    assert formats["torch"]["speedup"] == pytest.approx(1.0)
    assert report["chosen"] in formats and formats[report["chosen"]]["eligible"]
    assert report["reason"]
    assert report["test_rows"] == len(test_frame)
    # torch-bf16 is checked only where the CPU has native bf16; otherwise it says why.
    assert "torch-bf16" in formats or "native bf16" in report["skipped"]["torch-bf16"]


def test_a_known_fp32_accuracy_is_reused_and_sets_the_bar(model_dir, test_frame, tmp_path):
    cfg = ExportConfig(formats=["onnx"], measure=False)
    report = check_formats(model_dir, tmp_path, test_frame, cfg, fp32_accuracy=1.0)
    torch_check, onnx_check = report["formats"]["torch"], report["formats"]["onnx"]
    assert (torch_check["accuracy"], torch_check["accuracy_source"]) == (1.0, "evaluation")
    # A random model is far below 100%: ONNX is out of the rule, torch fp32 serves.
    assert not onnx_check["eligible"]
    assert report["chosen"] == "torch"
    assert onnx_check["latency_p50_ms"] is None


# --------------------------------------------------------------------------- the choice rule


def timed(fmt: str, accuracy: float, lat: float, thr: float, fp32: float = 0.90) -> FormatCheck:
    check = FormatCheck(fmt, accuracy=accuracy, latency_p50_ms=lat, throughput=thr)
    check.eligible = accuracy >= fp32 - 0.005 - 1e-9
    return check


def with_speedups(*checks: FormatCheck) -> dict[str, FormatCheck]:
    by_name = {c.format: c for c in checks}
    for c in checks:
        c.speedup = speedup(c, by_name["torch"])
    return by_name


def test_the_fastest_format_within_half_a_point_wins():
    checks = with_speedups(
        timed("torch", 0.900, lat=9.0, thr=190),
        timed("onnx", 0.900, lat=3.2, thr=330),
        timed("onnx-int8", 0.896, lat=2.4, thr=470),  # -0.4 pt: inside the rule
        timed("torch-int8", 0.899, lat=7.0, thr=230),
    )
    assert checks["onnx-int8"].speedup == pytest.approx(((470 / 190) * (9.0 / 2.4)) ** 0.5)
    fmt, why = choose_format(checks, PREFERENCE)
    assert fmt == "onnx-int8"
    assert "the fastest" in why


def test_a_faster_format_outside_the_rule_loses():
    checks = with_speedups(
        timed("torch", 0.900, lat=9.0, thr=190),
        timed("onnx", 0.900, lat=3.2, thr=330),
        timed("onnx-int8", 0.894, lat=2.4, thr=470),  # -0.6 pt: outside
    )
    assert not checks["onnx-int8"].eligible
    assert choose_format(checks, PREFERENCE)[0] == "onnx"


def test_near_ties_go_to_the_preference_order():
    checks = with_speedups(
        timed("torch", 0.900, lat=9.0, thr=190),
        timed("onnx", 0.900, lat=2.9, thr=480),  # 5% faster than int8: noise
        timed("onnx-int8", 0.900, lat=3.0, thr=460),
    )
    fmt, why = choose_format(checks, PREFERENCE, speed_tolerance=0.10)
    assert fmt == "onnx-int8"
    assert "within 10% of the fastest (onnx" in why
    assert choose_format(checks, PREFERENCE, speed_tolerance=0.0)[0] == "onnx"


def test_without_timings_the_first_eligible_in_preference_order_wins():
    checks = {
        "torch": FormatCheck("torch", accuracy=0.90, eligible=True),
        "onnx": FormatCheck("onnx", accuracy=0.90, eligible=True),
        "onnx-int8": FormatCheck("onnx-int8", accuracy=0.80, eligible=False),
    }
    fmt, why = choose_format(checks, PREFERENCE)
    assert fmt == "onnx"
    assert "first format of export.preference" in why


def test_torch_fp32_serves_when_nothing_else_qualifies():
    checks = with_speedups(
        timed("torch", 0.900, lat=9.0, thr=190),
        timed("onnx-int8", 0.850, lat=2.4, thr=470),
    )
    assert choose_format(checks, PREFERENCE)[0] == "torch"
    assert choose_format({}, PREFERENCE)[0] == "torch"


# --------------------------------------------------------------------------- at promotion


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
    from slmops.tasks.registry.promotion import client
    from slmops.tasks.registry.tracking import log_model

    predictor = Predictor.from_dir(model_dir, device="cpu")
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
        info = log_model(model_dir, input_example=["my card has not arrived"])
    mv = mlflow.register_model(
        info.model_uri,
        params.registry.model_name,
        tags={"metrics.accuracy": str(report["accuracy"]), "data.test_hash": ""},
    )
    return str(mv.version)


def test_promotion_exports_the_formats_onto_the_version(model_dir, tmp_path, monkeypatch):
    import mlflow

    from slmops.tasks.registry import ledger
    from slmops.tasks.registry.promotion import CHAMPION, alias_version, apply, client

    params, test = tiny_project(tmp_path, monkeypatch)
    version = register_tiny(params, model_dir, test)
    _, promoted = apply(params, version)
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


def test_a_failed_export_keeps_the_promotion_and_says_so(model_dir, tmp_path, monkeypatch, caplog):
    from slmops.tasks.registry import ledger
    from slmops.tasks.registry.promotion import CHAMPION, alias_version, apply, client

    params, test = tiny_project(tmp_path, monkeypatch)
    version = register_tiny(params, model_dir, test)

    def broken(*args, **kwargs):
        raise RuntimeError("exporter exploded")

    monkeypatch.setattr("slmops.tasks.model.export.export_onnx", broken)
    with caplog.at_level("WARNING", logger="slmops.tasks.model.export"):
        _, promoted = apply(params, version)
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


def test_export_can_be_switched_off(model_dir, tmp_path, monkeypatch):
    from slmops.tasks.registry.promotion import apply, client

    params, test = tiny_project(tmp_path, monkeypatch, enabled=False)
    version = register_tiny(params, model_dir, test)
    assert apply(params, version)[1]
    tags = client(params).get_model_version(params.registry.model_name, version).tags
    assert EXPORT_STATUS_TAG not in tags
