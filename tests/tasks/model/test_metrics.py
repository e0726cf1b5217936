import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import f1_score

from slmops.tasks.model.metrics import (
    classification_report,
    confusion_rows,
    expected_calibration_error,
    length_bucket_names,
    plot_confusion_matrix,
    plot_reliability,
    reliability_rows,
    slice_metrics,
)

LABELS = ["a", "b", "c"]
# Six rows, columns follow LABELS. argmax, confidence, correct:
#   true a: a 0.70 ✓ | a 0.55 ✓ | b 0.45 ✗
#   true b: b 0.85 ✓ | c 0.55 ✗
#   true c: c 0.90 ✓
Y_TRUE = ["a", "a", "a", "b", "b", "c"]
PROBS = np.array(
    [
        [0.70, 0.20, 0.10],
        [0.55, 0.35, 0.10],
        [0.30, 0.45, 0.25],
        [0.10, 0.85, 0.05],
        [0.10, 0.35, 0.55],
        [0.05, 0.05, 0.90],
    ]
)


def test_hand_computed_three_class_report():
    r = classification_report(Y_TRUE, PROBS, LABELS, ece_bins=5)
    # accuracy: 4 of 6 right.
    assert r["accuracy"] == pytest.approx(4 / 6, abs=1e-6)
    assert r["n"] == 6
    # a: predicted twice, both right → P 1; 2 of 3 found → R 2/3; F1 = 2·1·⅔/(1+⅔) = 0.8
    # b: predicted twice (rows 3, 4), 1 right → P ½; 1 of 2 found → R ½; F1 ½
    # c: predicted twice (rows 5, 6), 1 right → P ½; 1 of 1 found → R 1; F1 = 2·½/1.5 = ⅔
    pc = r["per_class"]
    assert list(pc) == LABELS
    assert pc["a"] == {
        "precision": 1.0,
        "recall": pytest.approx(2 / 3, abs=1e-6),
        "f1": 0.8,
        "support": 3,
    }
    assert pc["b"] == {"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2}
    assert pc["c"] == {
        "precision": 0.5,
        "recall": 1.0,
        "f1": pytest.approx(2 / 3, abs=1e-6),
        "support": 1,
    }
    # macro-F1 = (0.8 + 0.5 + ⅔) / 3 = 0.655556; macro P = (1 + ½ + ½)/3; macro R = (⅔+½+1)/3
    assert r["macro_f1"] == pytest.approx((0.8 + 0.5 + 2 / 3) / 3, abs=1e-6)
    assert r["macro_precision"] == pytest.approx(2 / 3, abs=1e-6)
    assert r["macro_recall"] == pytest.approx((2 / 3 + 0.5 + 1) / 3, abs=1e-6)
    # weighted F1 = (3·0.8 + 2·0.5 + 1·⅔) / 6 = 0.677778
    assert r["weighted_f1"] == pytest.approx((2.4 + 1 + 2 / 3) / 6, abs=1e-6)
    # ECE, 5 bins of width 0.2, (lower, upper]:
    #   (0.4, 0.6]: 0.55 ✓, 0.45 ✗, 0.55 ✗ → acc ⅓, conf 0.516667, gap 0.183333, weight 3/6
    #   (0.6, 0.8]: 0.70 ✓ → acc 1, conf 0.70, gap 0.30, weight 1/6
    #   (0.8, 1.0]: 0.85 ✓, 0.90 ✓ → acc 1, conf 0.875, gap 0.125, weight 2/6
    #   ECE = 0.091667 + 0.05 + 0.041667 = 0.183333
    assert r["ece"] == pytest.approx(0.183333, abs=1e-6)
    json.dumps(r)  # JSON-serialisable as is


def test_reliability_bins_of_the_hand_example():
    conf = PROBS.max(axis=1)
    correct = np.array([True, True, False, True, False, True])
    ece, bins = expected_calibration_error(conf, correct, 5)
    assert ece == pytest.approx(0.183333, abs=1e-6)
    assert [b["count"] for b in bins] == [0, 0, 3, 1, 2]
    assert bins[2] == {
        "bin_lower": 0.4,
        "bin_upper": 0.6,
        "count": 3,
        "accuracy": pytest.approx(1 / 3, abs=1e-6),
        "confidence": pytest.approx(1.55 / 3, abs=1e-6),
    }
    assert bins[0]["accuracy"] is None and bins[0]["confidence"] is None
    assert reliability_rows(bins) == [
        {
            "confidence": pytest.approx(1.55 / 3, abs=1e-6),
            "accuracy": pytest.approx(1 / 3, abs=1e-6),
        },
        {"confidence": 0.7, "accuracy": 1.0},
        {"confidence": 0.875, "accuracy": 1.0},
    ]


def test_bin_edges_are_upper_inclusive():
    # 4 bins: [0, .25], (.25, .5], (.5, .75], (.75, 1]
    _, bins = expected_calibration_error(np.array([0.0, 0.25, 0.5, 0.75, 1.0]), np.ones(5), 4)
    assert [b["count"] for b in bins] == [2, 1, 1, 1]


def test_perfectly_calibrated_bins_have_zero_ece():
    # 10 rows at 0.7 with 7 right, 10 at 0.9 with 9 right: accuracy equals confidence.
    conf = np.array([0.7] * 10 + [0.9] * 10)
    correct = np.array([True] * 7 + [False] * 3 + [True] * 9 + [False])
    ece, _ = expected_calibration_error(conf, correct, 10)
    assert ece == pytest.approx(0.0, abs=1e-9)
    # Sampled: right with probability equal to the confidence.
    rng = np.random.default_rng(0)
    conf = rng.uniform(0, 1, 200_000)
    ece, _ = expected_calibration_error(conf, rng.uniform(0, 1, conf.size) < conf, 15)
    assert ece < 0.01


def test_overconfident_model_has_large_ece():
    ece, _ = expected_calibration_error(np.full(100, 0.99), np.arange(100) < 50, 15)
    assert ece == pytest.approx(0.49, abs=1e-6)


def test_ece_input_checks():
    with pytest.raises(ValueError, match="pair up"):
        expected_calibration_error(np.ones(3), np.ones(2), 10)
    with pytest.raises(ValueError, match=r"within \[0, 1\]"):
        expected_calibration_error(np.array([1.5]), np.ones(1), 10)
    assert expected_calibration_error(np.array([]), np.array([]), 3)[0] == 0.0


def test_unknown_label_and_shape_mismatch_raise():
    with pytest.raises(ValueError, match=r"not in the label set: 'zzz'"):
        classification_report(["a", "zzz"], PROBS[:2], LABELS)
    with pytest.raises(ValueError, match=r"expected \(5, 3\)"):
        classification_report(Y_TRUE[:5], PROBS, LABELS)
    with pytest.raises(ValueError, match=r"expected \(6, 2\)"):
        classification_report(Y_TRUE, PROBS, LABELS[:2])
    with pytest.raises(ValueError, match="logits"):
        classification_report(Y_TRUE, PROBS * 3, LABELS)
    with pytest.raises(ValueError, match="duplicates"):
        classification_report(Y_TRUE, PROBS, ["a", "b", "a"])


def test_support_zero_labels_are_listed_and_do_not_lower_macro_scores():
    probs = np.hstack([PROBS, np.zeros((6, 1))])
    r = classification_report(Y_TRUE, probs, [*LABELS, "never"])
    assert r["per_class"]["never"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert r["macro_f1"] == classification_report(Y_TRUE, PROBS, LABELS)["macro_f1"]


@settings(max_examples=40, deadline=None)
@given(st.data())
def test_report_agrees_with_sklearn(data):
    k = data.draw(st.integers(2, 6))
    n = data.draw(st.integers(1, 40))
    labels = [f"l{i}" for i in range(k)]
    y = data.draw(st.lists(st.sampled_from(labels), min_size=n, max_size=n))
    probs = np.array(
        data.draw(
            st.lists(st.lists(st.floats(0.01, 1.0), min_size=k, max_size=k), min_size=n, max_size=n)
        )
    )
    probs = probs / probs.sum(axis=1, keepdims=True)
    pred = [labels[i] for i in probs.argmax(axis=1)]
    r = classification_report(y, probs, labels)
    assert r["macro_f1"] == pytest.approx(
        f1_score(y, pred, average="macro", zero_division=0), abs=1e-6
    )
    assert r["accuracy"] == pytest.approx(np.mean(np.array(y) == np.array(pred)), abs=1e-6)
    assert 0.0 <= r["ece"] <= 1.0


def test_bucket_names_are_readable_and_stable():
    assert length_bucket_names([6, 10, 15]) == [
        "<=6 words",
        "7-10 words",
        "11-15 words",
        ">15 words",
    ]
    assert length_bucket_names([15, 6, 10, 10]) == length_bucket_names([6, 10, 15])
    assert length_bucket_names([6, 7]) == ["<=6 words", "7 words", ">7 words"]
    assert length_bucket_names([]) == ["all lengths"]


def words(n: int) -> str:
    return " ".join(["w"] * n)


def test_slice_bucket_boundaries_and_sources():
    lengths = [1, 6, 7, 10, 11, 15, 16, 40]
    frame = pd.DataFrame(
        {
            "text": [words(n) for n in lengths],
            "label": ["a", "b", "a", "b", "a", "a", "b", "b"],
            "pred": ["a", "a", "a", "b", "b", "a", "b", "a"],
            "source": ["seed", "seed", "seed", "seed", "import", "import", None, "feedback"],
        }
    )
    s = slice_metrics(frame, length_buckets=[6, 10, 15])
    assert list(s["length"]) == ["<=6 words", "7-10 words", "11-15 words", ">15 words"]
    assert [v["n"] for v in s["length"].values()] == [2, 2, 2, 2]
    # <=6: (a→a ✓, b→a ✗): accuracy ½; labels present {a, b}: F1 a = 2·1/(1+2) = ⅔, F1 b = 0
    assert s["length"]["<=6 words"] == {
        "n": 2,
        "accuracy": 0.5,
        "macro_f1": pytest.approx(1 / 3, abs=1e-6),
    }
    assert s["length"]["7-10 words"] == {"n": 2, "accuracy": 1.0, "macro_f1": 1.0}
    # 11-15: (a→b ✗, a→a ✓); only label a present: P 1, R ½ → F1 ⅔ (b is not averaged in)
    assert s["length"]["11-15 words"]["macro_f1"] == pytest.approx(2 / 3, abs=1e-6)
    assert list(s["source"]) == ["feedback", "import", "seed", "unknown"]
    assert s["source"]["seed"]["n"] == 4 and s["source"]["unknown"]["accuracy"] == 1.0
    json.dumps(s)


def test_empty_slices_are_left_out_and_source_is_optional():
    frame = pd.DataFrame({"text": [words(3), words(4)], "label": ["a", "b"], "pred": ["a", "b"]})
    s = slice_metrics(frame, length_buckets=[6, 10, 15])
    assert s == {"length": {"<=6 words": {"n": 2, "accuracy": 1.0, "macro_f1": 1.0}}}
    with pytest.raises(ValueError, match="lacks column"):
        slice_metrics(frame.drop(columns="pred"), length_buckets=[6])


def test_confusion_rows_one_per_example():
    rows = confusion_rows(["a", "b"], ["a", "c"])
    assert rows == [{"actual": "a", "predicted": "a"}, {"actual": "b", "predicted": "c"}]
    with pytest.raises(ValueError):
        confusion_rows(["a"], [])


def is_png(path: Path) -> bool:
    return path.stat().st_size > 1000 and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plots_write_non_empty_pngs(tmp_path: Path):
    pred = [LABELS[i] for i in PROBS.argmax(axis=1)]
    out = plot_confusion_matrix(Y_TRUE, pred, LABELS, tmp_path / "plots" / "cm.png")
    assert out == tmp_path / "plots" / "cm.png" and is_png(out)
    _, bins = expected_calibration_error(PROBS.max(axis=1), np.array(Y_TRUE) == pred, 15)
    assert is_png(plot_reliability(bins, tmp_path / "rel.png"))
    # No temporary files left behind.
    assert {p.name for p in tmp_path.rglob("*") if p.is_file()} == {"rel.png", "cm.png"}


def test_confusion_matrix_with_77_classes_scales_up(tmp_path: Path):
    from PIL import Image

    labels = [f"intent_name_{i:02d}" for i in range(77)]
    rng = np.random.default_rng(0)
    y = [labels[i] for i in rng.integers(0, 77, 1000)]
    pred = [v if rng.random() < 0.8 else labels[rng.integers(0, 77)] for v in y]
    big = plot_confusion_matrix(y, pred, labels, tmp_path / "big.png")
    small = plot_confusion_matrix(Y_TRUE, Y_TRUE, LABELS, tmp_path / "small.png")
    assert is_png(big)
    assert Image.open(big).size[0] > 2 * Image.open(small).size[0]
    with pytest.raises(ValueError, match="y_pred holds labels not in the label set"):
        plot_confusion_matrix(["a"], ["zzz"], LABELS, tmp_path / "bad.png")
