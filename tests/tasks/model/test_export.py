"""Serving formats: ONNX export and int8 quantization of a tiny model, the format
choice rule, and the export at promotion on a real (embedded) registry."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from slmops.tasks.core.config import ExportConfig
from slmops.tasks.model import export as export_module
from slmops.tasks.model.export import (
    FORMATS_FILE,
    INPUT_NAMES,
    FormatCheck,
    _Logits,
    check_formats,
    choose_format,
    export_onnx,
    quantize_onnx,
    speedup,
)
from slmops.tasks.model.inference import (
    DISABLED_OPTIMIZERS,
    OnnxPredictor,
    Predictor,
    load_predictor,
    ort_session,
)
from slmops.tasks.task_types import task_type
from tests.tasks.tiny_model import TINY_LABELS, make_tiny_model, tiny_frames

SEQ = task_type("sequence_classification")  # the caller picks the type; these tests do
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
    fp32 = export_onnx(model_dir, out / "fp32" / "model.onnx", task=SEQ)
    return {"onnx": fp32, "onnx-int8": quantize_onnx(fp32, out / "int8" / "model.onnx")}


@pytest.fixture(scope="module")
def texts(test_frame) -> list[str]:
    # Mixed lengths in one call: padding and batching must not change an answer.
    return [*test_frame["text"].tolist(), "card?", "word " * 400]


# --------------------------------------------------------------------------- export


def test_onnx_fp32_matches_torch(model_dir, exported, texts):
    torch_p = Predictor.from_dir(model_dir, device="cpu", task=SEQ)
    onnx_p = OnnxPredictor.from_files(exported["onnx"], model_dir, task=SEQ)
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
    fp32 = load_predictor("onnx", model_dir, exported["onnx"], task=SEQ).predict_proba(texts)
    int8_p = load_predictor("onnx-int8", model_dir, exported["onnx-int8"], task=SEQ, num_threads=1)
    assert int8_p.format == "onnx-int8"
    int8 = int8_p.predict_proba(texts)
    np.testing.assert_allclose(int8.sum(axis=1), 1.0, rtol=1e-4)
    np.testing.assert_allclose(int8, fp32, atol=0.1)
    assert np.mean(int8.argmax(axis=1) == fp32.argmax(axis=1)) >= 0.8
    assert exported["onnx-int8"].stat().st_size < exported["onnx"].stat().st_size / 2


def op_types(path: Path) -> set[str]:
    import onnx

    return {node.op_type for node in onnx.load(str(path)).graph.node}


@pytest.fixture(scope="module")
def fused(model_dir, tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("fused")
    fp32 = export_onnx(model_dir, out / "fp32" / "model.onnx", task=SEQ, fuse=True)
    int8 = quantize_onnx(fp32, out / "int8" / "model.onnx", ["MatMul", "Gather"])
    return {"onnx": fp32, "onnx-int8": int8}


def test_the_fused_export_matches_torch(model_dir, exported, fused, texts):
    ops = op_types(fused["onnx"])
    # Attention, embeddings + LayerNorm and bias + GELU fused; no SkipLayerNormalization,
    # whose CPU kernel is slower than the Add + LayerNormalization it replaces.
    assert {"Attention", "EmbedLayerNormalization", "BiasGelu"} <= ops
    assert "SkipLayerNormalization" not in ops and "Attention" not in op_types(exported["onnx"])
    torch_p = Predictor.from_dir(model_dir, device="cpu", task=SEQ)
    fused_p = load_predictor("onnx", model_dir, fused["onnx"], task=SEQ, num_threads=1)
    want = torch_p.predict_proba(texts, batch_size=8)
    # Padded batches (the mask becomes sequence lengths) and single texts alike.
    np.testing.assert_allclose(fused_p.predict_proba(texts, batch_size=8), want, atol=1e-5)
    one_by_one = np.concatenate([fused_p.predict_proba([t]) for t in texts])
    np.testing.assert_allclose(one_by_one, want, atol=1e-5)


def test_the_fused_graph_quantizes_its_fused_ops_too(model_dir, fused, texts):
    ops = op_types(fused["onnx-int8"])
    # MatMul means the Q/K/V weights inside Attention too, Gather the embedding tables.
    assert {"QAttention", "QEmbedLayerNormalization"} <= ops
    assert not {"Attention", "EmbedLayerNormalization"} & ops
    assert fused["onnx-int8"].stat().st_size < fused["onnx"].stat().st_size / 2
    fp32 = load_predictor("onnx", model_dir, fused["onnx"], task=SEQ).predict_proba(texts)
    int8 = load_predictor("onnx-int8", model_dir, fused["onnx-int8"], task=SEQ, num_threads=1)
    got = int8.predict_proba(texts)
    np.testing.assert_allclose(got.sum(axis=1), 1.0, rtol=1e-4)
    np.testing.assert_allclose(got, fp32, atol=0.1)
    assert np.mean(got.argmax(axis=1) == fp32.argmax(axis=1)) >= 0.8


def test_check_formats_with_fusion_stores_the_fused_graphs(model_dir, test_frame, tmp_path):
    cfg = ExportConfig(formats=["onnx", "onnx-int8"], fusion=True, measure=False)
    report = check_formats(model_dir, tmp_path / "f", test_frame, cfg, task=SEQ, num_threads=1)
    formats = report["formats"]
    assert "Attention" in op_types(tmp_path / "f" / formats["onnx"]["file"])
    assert "QAttention" in op_types(tmp_path / "f" / formats["onnx-int8"]["file"])
    assert formats["onnx"]["accuracy"] == pytest.approx(formats["torch"]["accuracy"])


def test_sessions_do_not_spin_and_leave_skip_layer_norm_unfused(exported):
    options = ort_session(exported["onnx-int8"], 1).get_session_options()
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert "SkipLayerNormFusion" in DISABLED_OPTIMIZERS


def test_a_graph_exported_before_eager_attention_still_loads(model_dir, tmp_path, texts):
    """Versions exported earlier hold the SDPA graph (IsNaN/Where after each softmax):
    today's sessions load and run it as before."""
    import torch
    from transformers import AutoTokenizer

    model = SEQ.auto_class().from_pretrained(str(model_dir), attn_implementation="sdpa").eval()
    enc = AutoTokenizer.from_pretrained(str(model_dir))(
        ["a b", "c"], padding=True, return_tensors="pt"
    )
    axes = {n: {0: "batch", 1: "sequence"} for n in INPUT_NAMES}
    old = tmp_path / "model.onnx"
    with warnings.catch_warnings(), torch.inference_mode():
        warnings.simplefilter("ignore")  # the tracer's shape warnings, as in export_onnx
        torch.onnx.export(
            _Logits(model, INPUT_NAMES).eval(),
            tuple(enc[n] for n in INPUT_NAMES),
            str(old),
            input_names=list(INPUT_NAMES),
            output_names=["logits"],
            dynamic_axes={**axes, "logits": {0: "batch"}},
            opset_version=17,
            dynamo=False,
        )
    assert "IsNaN" in op_types(old)
    want = Predictor.from_dir(model_dir, device="cpu", task=SEQ).predict_proba(texts)
    got = load_predictor("onnx", model_dir, old, task=SEQ, num_threads=1).predict_proba(texts)
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_without_a_fusion_the_export_stays_unfused(model_dir, tmp_path, monkeypatch, caplog):
    # An architecture the optimizer is not asked to fuse: exported as is, and said so.
    monkeypatch.setattr(export_module, "FUSABLE_MODEL_TYPES", frozenset())
    plain = export_onnx(model_dir, tmp_path / "a" / "model.onnx", task=SEQ, fuse=True)
    assert "Attention" not in op_types(plain) and "no ONNX Runtime fusion" in caplog.text

    # An optimizer that fails: the checked unfused graph is kept, nothing left beside it.
    def broken(*args, **kwargs):
        raise RuntimeError("optimizer broke")

    monkeypatch.setattr(export_module, "FUSABLE_MODEL_TYPES", frozenset({"bert"}))
    monkeypatch.setattr(export_module, "fuse_onnx", broken)
    kept = export_onnx(model_dir, tmp_path / "b" / "model.onnx", task=SEQ, fuse=True)
    assert "Attention" not in op_types(kept) and "optimizer broke" in caplog.text
    assert [p.name for p in kept.parent.iterdir()] == ["model.onnx"]


def test_an_onnx_file_for_other_labels_is_refused(model_dir, exported, tmp_path):
    other = make_tiny_model(tmp_path / "other", labels=[*TINY_LABELS, "extra"])
    shutil.copy2(exported["onnx"], tmp_path / "m.onnx")
    with pytest.raises(ValueError, match="5 outputs but 6 labels"):
        OnnxPredictor.from_files(tmp_path / "m.onnx", other, task=SEQ)
    with pytest.raises(FileNotFoundError, match="no such ONNX model"):
        OnnxPredictor.from_files(tmp_path / "missing.onnx", model_dir, task=SEQ)


def test_check_formats_writes_files_accuracies_timings_and_the_choice(
    model_dir, test_frame, tmp_path
):
    cfg = ExportConfig(
        formats=["onnx", "onnx-int8", "torch-int8", "torch-bf16"],
        measure_rounds=1,
        measure_texts=2,
    )
    report = check_formats(
        model_dir, tmp_path / "formats", test_frame, cfg, task=SEQ, num_threads=1
    )
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
    assert report["task"] == "sequence_classification" and report["metric"] == "accuracy"
    # torch-bf16 is checked only where the CPU has native bf16; otherwise it says why.
    assert "torch-bf16" in formats or "native bf16" in report["skipped"]["torch-bf16"]


def test_a_known_fp32_accuracy_is_reused_and_sets_the_bar(model_dir, test_frame, tmp_path):
    cfg = ExportConfig(formats=["onnx"], measure=False)
    report = check_formats(model_dir, tmp_path, test_frame, cfg, task=SEQ, fp32_accuracy=1.0)
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
