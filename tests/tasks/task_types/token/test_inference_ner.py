"""Token-classifier predictors in every serving format, decoded by the token type:
entities with offsets into the caller's text, the same answers batched or not,
formats that agree."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from slmops.tasks.core.config import ExportConfig
from slmops.tasks.model.export import check_formats, export_onnx, quantize_onnx
from slmops.tasks.model.inference import OnnxPredictor, Predictor, load_predictor
from slmops.tasks.model.runtime import softmax
from slmops.tasks.task_types import task_of, task_of_model, task_type
from slmops.tasks.task_types.token import spans as sp
from slmops.tasks.task_types.token.predict import predict_entities, predict_word_tags
from tests.tasks.tiny_model import TINY_LABELS, WNUT_TYPES, make_tiny_model, tiny_ner_frames

TOKEN = "token_classification"
TAGS = sp.tag_names(WNUT_TYPES)
NER = task_type(TOKEN)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("tiny") / "ner", labels=TAGS, task=TOKEN)


@pytest.fixture(scope="module")
def predictor(model_dir) -> Predictor:
    return Predictor.from_dir(model_dir, device="cpu", task=NER)


@pytest.fixture(scope="module")
def exported(model_dir, tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("onnx")
    fp32 = export_onnx(model_dir, out / "fp32" / "model.onnx", task=NER)
    return {"onnx": fp32, "onnx-int8": quantize_onnx(fp32, out / "int8" / "model.onnx")}


@pytest.fixture(scope="module")
def texts() -> list[str]:
    _, val = tiny_ner_frames(0, 12)
    return [
        *val["text"].tolist(),
        "  @paulwalk\tvisits   Empire State\u00a0Building .",
        "Zürich café 😀 NYC\n\nnew  york",
        "",
        "word " * 400,  # truncated to the model's 128 positions
    ]


def spans_of(found: list[list[dict]]) -> list[list[tuple]]:
    return [[(e["start"], e["end"], e["label"]) for e in row] for row in found]


def test_the_predictor_knows_its_task_and_types(predictor, model_dir):
    assert predictor.task is NER and predictor.per_token
    assert predictor.labels == TAGS
    assert predictor.label_set == WNUT_TYPES
    assert NER.label_set_of(TAGS) == WNUT_TYPES
    assert task_of(predictor.model.config) is NER is task_of_model(model_dir)


def test_raw_answers_are_token_probabilities_with_offsets(predictor, texts):
    found = predictor.predict_token_proba(texts, batch_size=4)
    assert len(found) == len(texts)
    for text, out in zip(texts, found, strict=True):
        assert out.probs.shape == (len(out.offsets), len(TAGS))
        np.testing.assert_allclose(out.probs.sum(axis=1), 1.0, rtol=1e-5)
        assert out.offsets[0] == (0, 0), "the [CLS] token covers no character"
        assert all(0 <= s <= e <= len(text) for s, e in out.offsets)
    assert len(found[-1].offsets) == 128, "cut at the model's positions"
    assert predictor.predict_token_proba([]) == []


def test_entities_have_offsets_into_the_original_text(predictor, texts):
    found = predict_entities(predictor, texts, batch_size=4)
    assert len(found) == len(texts)
    total = 0
    for text, row in zip(texts, found, strict=True):
        bounds = sp.words(text)
        starts, ends = {s for s, _ in bounds}, {e for _, e in bounds}
        for e in row:
            assert set(e) == {"start", "end", "label", "score", "text"}
            assert e["text"] == text[e["start"] : e["end"]]
            assert e["start"] in starts and e["end"] in ends, "entities fall on word edges"
            assert e["label"] in WNUT_TYPES
            assert 0.0 < e["score"] <= 1.0
        sp.check(text, [(e["start"], e["end"], e["label"]) for e in row])
        total += len(row)
    assert total > 10, "a random model tags plenty: the checks above are not vacuous"
    assert found[-2] == [], "no words, no entities"
    # Words past the 128-token cut are never tagged.
    assert max(e["end"] for e in found[-1]) < 128 * 5


def test_batching_and_order_do_not_change_answers(predictor, texts):
    batched = predict_entities(predictor, texts, batch_size=4)
    one_by_one = [predict_entities(predictor, [t], batch_size=1)[0] for t in texts]
    assert spans_of(batched) == spans_of(one_by_one)
    for a, b in zip(batched, one_by_one, strict=True):
        np.testing.assert_allclose([e["score"] for e in a], [e["score"] for e in b], atol=1e-5)
    reverse = predict_entities(predictor, texts[::-1], batch_size=3)[::-1]
    assert spans_of(reverse) == spans_of(batched)


def test_confidence_is_the_mean_first_piece_probability(predictor, texts):
    pairs = predict_entities(predictor, texts, with_confidence=True)
    words = predict_word_tags(predictor, texts)
    assert [p[0] for p in pairs] == predict_entities(predictor, texts)
    for (_, confidence), row in zip(pairs, words, strict=True):
        seen = [s for s in row.scores if not np.isnan(s)]
        assert confidence == pytest.approx(np.mean(seen) if seen else 1.0)
        assert 1 / len(TAGS) <= confidence <= 1.0
    assert predict_entities(predictor, []) == []


def test_the_predictor_refuses_the_other_kind_of_answer(predictor, tmp_path):
    with pytest.raises(TypeError, match="answers per token: use predict_token_proba"):
        predictor.predict_proba(["hello"])
    with pytest.raises(TypeError, match="answers per token"):
        predictor.predict(["hello"])
    folder = make_tiny_model(tmp_path / "cls", labels=TINY_LABELS)
    classifier = Predictor.from_dir(folder, device="cpu", task=task_of_model(folder))
    assert classifier.task.name == "sequence_classification" and not classifier.per_token
    assert classifier.label_set == TINY_LABELS
    with pytest.raises(TypeError, match="answers per text: use predict_proba"):
        classifier.predict_token_proba(["hello"])
    with pytest.raises(TypeError, match="answers per text"):
        predict_entities(classifier, ["hello"])


def test_the_caller_picks_the_model_class(model_dir):
    """The engine loads the model class of the task type it is given and never reads
    the type itself: the caller takes it from the model's config (task_of_model)."""
    assert task_of_model(model_dir) is NER
    as_text = Predictor.from_dir(model_dir, device="cpu", task=task_type("sequence_classification"))
    assert type(as_text.model).__name__ == "BertForSequenceClassification"


def test_softmax_is_over_the_last_axis():
    logits = np.random.default_rng(0).normal(size=(2, 5, 4))
    probs = softmax(logits)
    np.testing.assert_allclose(probs.sum(axis=-1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(softmax(logits[:, 0]), probs[:, 0], rtol=1e-6)


# --------------------------------------------------------------------------- other formats


def test_onnx_output_keeps_batch_and_sequence_axes(exported, model_dir, predictor, texts):
    onnx_p = OnnxPredictor.from_files(exported["onnx"], model_dir, task=NER)
    assert onnx_p.task is NER and onnx_p.label_set == WNUT_TYPES
    shape = onnx_p.session.get_outputs()[0].shape
    assert len(shape) == 3 and not isinstance(shape[1], int), shape
    want = predict_word_tags(predictor, texts, batch_size=4)
    got = predict_word_tags(onnx_p, texts, batch_size=5)
    for a, b in zip(want, got, strict=True):
        assert a.tags == b.tags
        np.testing.assert_allclose(a.scores, b.scores, atol=1e-4)
    one_by_one = [predict_entities(onnx_p, [t])[0] for t in texts]
    assert spans_of(one_by_one) == spans_of(predict_entities(predictor, texts))


def test_a_classifier_graph_is_refused_as_a_token_model(exported, model_dir, tmp_path):
    classifier = make_tiny_model(tmp_path / "cls", labels=TINY_LABELS)
    seq = task_of_model(classifier)
    graph = export_onnx(classifier, tmp_path / "cls.onnx", task=seq)
    with pytest.raises(ValueError, match=r"not \[batch, sequence, labels\]"):
        OnnxPredictor(
            OnnxPredictor.from_files(graph, classifier, task=seq).session,
            None,
            TAGS,
            128,
            "onnx",
            task=NER,
        )


@pytest.mark.parametrize("fmt", ["onnx-int8", "torch-int8", "torch-bf16"])
def test_quantized_and_bf16_formats_mostly_agree(fmt, exported, model_dir, predictor, texts):
    other = load_predictor(fmt, model_dir, exported.get(fmt), task=NER, device="cpu")
    assert other.format == fmt and other.task is NER
    want = predict_word_tags(predictor, texts)
    got = predict_word_tags(other, texts)
    same = sum(
        a == b for w, g in zip(want, got, strict=True) for a, b in zip(w.tags, g.tags, strict=True)
    )
    words = sum(len(w.tags) for w in want)
    assert same / words >= 0.8, f"{fmt}: {same}/{words} word tags agree"
    for text, row in zip(texts, predict_entities(other, texts), strict=True):
        for e in row:
            assert e["text"] == text[e["start"] : e["end"]]


def test_check_formats_compares_entity_f1(model_dir, tmp_path, predictor):
    _, test = tiny_ner_frames(0, 24)
    # The random model's own answers as gold: torch fp32 scores F1 1.0 by construction.
    found = predict_entities(predictor, test["text"].tolist())
    test = pd.DataFrame({"text": test["text"], "label": [sp.dumps(s) for s in spans_of(found)]})
    cfg = ExportConfig(formats=["onnx", "onnx-int8"], measure=False, max_accuracy_drop=0.5)
    report = check_formats(model_dir, tmp_path / "formats", test, cfg, task=NER, num_threads=1)
    assert report["metric"] == "entity_f1" and report["task"] == TOKEN
    assert report["reference"]["accuracy"] == pytest.approx(1.0)
    assert report["formats"]["onnx"]["accuracy"] == pytest.approx(1.0)
    assert 0.5 <= report["formats"]["onnx-int8"]["accuracy"] <= 1.0
    assert report["formats"]["onnx"]["eligible"]
    assert report["chosen"] in ("onnx-int8", "onnx")
    assert (tmp_path / "formats" / "onnx-int8" / "model.onnx").is_file()
