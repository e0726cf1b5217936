"""Token classification: entity spans in a text (named-entity recognition)."""

from __future__ import annotations

import functools
import json
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any, ClassVar

import pandas as pd

from slmops.tasks.core.config import Params, TaskName
from slmops.tasks.core.errors import DataError
from slmops.tasks.core.task_type import NO_ENTITY, LabelError, Scored, TaskType, ValScorer
from slmops.tasks.labels.sources import LabelFormat, VoteTable
from slmops.tasks.task_types.token import alignment
from slmops.tasks.task_types.token import spans as sp
from slmops.tasks.task_types.token.conll import CONLL, read_conll
from slmops.tasks.task_types.token.evaluate import entity_eval_report, entity_predictions
from slmops.tasks.task_types.token.label_studio import LABEL_STUDIO_SPANS
from slmops.tasks.task_types.token.metrics import entity_report
from slmops.tasks.task_types.token.predict import predict_entities
from slmops.tasks.task_types.token.validate import validate_entities_frame


@dataclass(frozen=True)
class TokenClassification(TaskType):
    """Entity spans in a text (named-entity recognition), BIO-tagged per word.

    ``label_all_subwords``: every sub-word of a word gets a training target (its
    inside tag after the first), not only the first (:mod:`tasks.task_types.token.alignment`).
    """

    name: ClassVar[TaskName] = TaskName.token_classification
    model_class: ClassVar[str] = "AutoModelForTokenClassification"
    pipeline_task: ClassVar[str] = "token-classification"
    label_noun: ClassVar[str] = "entity types"
    label_formats: ClassVar[tuple[LabelFormat, ...]] = (LABEL_STUDIO_SPANS, CONLL)
    per_token: ClassVar[bool] = True
    val_metrics: ClassVar[dict[str, str]] = {
        "val_accuracy": "word accuracy",
        "val_f1": "entity F1",
        "val_macro_f1": "macro-F1",
    }
    best_metric: ClassVar[str] = "val_f1"
    format_metric: ClassVar[str] = "entity_f1"
    eval_metric: ClassVar[str] = "f1"

    label_all_subwords: bool = False

    def classes(self, cell: str) -> list[str]:
        """The entity types of the spans, once each, in order of first appearance."""
        try:
            return list(dict.fromkeys(kind for _, _, kind in sp.loads(cell)))
        except sp.SpanError as exc:
            raise LabelError(str(exc)) from None

    def canonical(self, text: str, cell: str, label_set: Collection[str]) -> str:
        """Canonical span JSON, after checking the spans fit ``text`` and their types."""
        try:
            spans = sp.loads(cell)
            sp.check(text, spans)
        except sp.SpanError as exc:
            raise LabelError(str(exc)) from None
        unknown = sorted({kind for _, _, kind in spans} - set(label_set))
        if unknown:
            raise LabelError(f"entity type(s) {unknown} not in the label set", label_set)
        return sp.dumps(spans)

    def strip(self, text: str, cell: str) -> tuple[str, str]:
        """The stripped text, and the spans moved left by the whitespace cut off its start
        (a cell that is not span JSON is left for the gate to reject)."""
        shift = len(text) - len(text.lstrip())
        try:
            spans = sp.loads(cell)
        except sp.SpanError:
            return text.strip(), cell
        return text.strip(), sp.dumps([(s - shift, e - shift, kind) for s, e, kind in spans])

    feedback_field: ClassVar[str] = "entities"
    feedback_shape: ClassVar[str] = "a list of spans"

    def feedback_cell(self, answer: Any) -> str:
        # ``{"start", "end", "label"}`` objects, as /predict gives them, to a span cell.
        return json.dumps([[e["start"], e["end"], e["label"]] for e in answer], ensure_ascii=False)

    def feedback_answer(self, cell: str) -> Any:
        return [{"start": s, "end": e, "label": t} for s, e, t in sp.loads(cell)]

    def shown(self, answer: dict[str, Any]) -> str:
        found = [f"{e['text']!r} {e['label']} ({e['score']:.2f})" for e in answer["entities"]]
        return ", ".join(found) or "no entities"

    def observed(self, cell: str) -> list[str]:
        """Entity types, one per entity; a text without entities counts as ``(no entity)``."""
        return [kind for _, _, kind in sp.loads(cell)] or [NO_ENTITY]

    def read_seed(self, params: Params, rel: str) -> VoteTable:
        """A CoNLL file (one token and its BIO tag per line)."""
        return read_conll(params.path(rel))

    def validate_frame(self, df, params, label_set, test_texts=None, **kw):
        """Span, tag-set and length checks (:func:`.validate.validate_entities_frame`)."""
        bounds = params.validation
        kw.setdefault("token_min", bounds.token_min_words)
        kw.setdefault("token_max", bounds.token_max_words)
        return validate_entities_frame(df, params, label_set, test_texts, **kw)

    def split_frame(self, df, val_fraction, seed):
        """A seeded random share of the rows (a row holds entities of several types)."""
        val = df.sample(frac=val_fraction, random_state=seed)
        train = df.drop(index=val.index)
        return train.reset_index(drop=True), val.sort_index().reset_index(drop=True)

    # -- model ------------------------------------------------------------------------

    def settings(self):
        """``label_all_subwords``."""
        return {"label_all_subwords": self.label_all_subwords}

    def outputs(self, label_set):
        """``O``, then ``B-t``, ``I-t`` per entity type."""
        return sp.tag_names(label_set)

    def label_set_of(self, outputs):
        """The entity types of BIO tag names, in output order."""
        return list(dict.fromkeys(t[2:] for t in outputs if t[:2] in ("B-", "I-")))

    def sample(self, train, fraction, seed):
        """A seeded random share of the rows (at least one): a row holds entities of
        several types, so there is no class to stratify by."""
        if fraction >= 1.0:
            return train
        n = max(1, round(len(train) * fraction))
        sampled = train.sample(n=min(n, len(train)), random_state=seed)
        return train.loc[train.index.isin(sampled.index)]

    def check_rows(self, name, df, label_set):
        """Each label cell is span JSON that fits its text, of types in ``label_set``."""
        types = set(label_set)
        for row, (text, cell) in enumerate(zip(df["text"], df["label"], strict=True)):
            where = f"{name} row {row}" + (
                f" (index {df.index[row]!r})" if df.index[row] != row else ""
            )
            if not isinstance(text, str):
                raise DataError(f"{where}: text is {text!r}, not a string")
            try:
                found = sp.loads(cell)
                sp.check(text, found)
            except sp.SpanError as exc:
                raise DataError(f"{where}: {exc}") from None
            unknown = sorted({kind for _, _, kind in found} - types)
            if unknown:
                raise DataError(f"{where}: entity types not in the label set: {unknown}")

    def encode(self, tokenizer, df, output_index, max_length):
        """Tokens with their offsets and words (:func:`.alignment.encode`); the
        targets per token."""
        encoded = alignment.encode(
            tokenizer,
            df["text"].astype(str).tolist(),
            df["label"].astype(str).tolist(),
            output_index,
            max_length,
            self.label_all_subwords,
        )
        return encoded, encoded.pop("labels")

    def val_scorer(self, val, encoded, outputs):
        """Word-level tag accuracy (every word: words cut by truncation are predicted
        ``O``), micro entity F1 (strict spans) and macro entity F1 over the types."""
        return _EntityScorer(val, encoded, outputs, self.label_set_of(outputs))

    def eval_predictions(self, predictor, df, batch_size):
        """Each text's predicted spans and word tags (:func:`.evaluate.entity_predictions`)."""
        return entity_predictions(predictor, df, batch_size)

    def eval_report(self, test, val, outputs, cfg):
        """Entity metrics per type, word-level confusion and reliability, length slices
        (:func:`.evaluate.entity_eval_report`)."""
        return entity_eval_report(test, val, self.label_set_of(outputs), cfg)

    def predict_call(self, predictor):
        """Entities, the spans decoded (:func:`.predict.predict_entities`)."""
        return functools.partial(predict_entities, predictor)

    def format_score(self, predictor, test, batch_size=128):
        """Micro entity F1 (strict spans) on test rows whose ``label`` is span JSON."""
        texts = test["text"].astype(str).tolist()
        found = predict_entities(predictor, texts, batch_size=batch_size)
        pred = [[(e["start"], e["end"], e["label"]) for e in row] for row in found]
        gold = [sp.loads(cell) for cell in test["label"].astype(str)]
        return float(entity_report(gold, pred, self.label_set_of(predictor.labels))["f1"])

    def score(self, predictor, texts, *, chunk, top_k):
        """Entity spans with character offsets into each text and their scores."""
        out = []
        for entities, confidence in predict_entities(
            predictor, texts, batch_size=chunk, with_confidence=True
        ):
            label = sp.dumps([(e["start"], e["end"], e["label"]) for e in entities])
            out.append(Scored(label, confidence, [], entities))
        return out


class _EntityScorer(ValScorer):
    def __init__(self, val: pd.DataFrame, encoded: dict, outputs: list[str], types: list[str]):
        self.texts = val["text"].astype(str).tolist()
        self.gold = [sp.loads(cell) for cell in val["label"].astype(str)]
        self.encoded, self.outputs, self.types = encoded, outputs, types
        self.pred: list[list[sp.Span]] = [[] for _ in self.texts]
        self.correct = self.words = 0

    def add(self, idx, probs):
        enc = self.encoded
        for row, i in enumerate(idx):
            n = len(enc["input_ids"][i])
            found = alignment.word_tags(
                self.texts[i], enc["offset_mapping"][i], enc["word_ids"][i], probs[row, :n],
                self.outputs,
            )  # fmt: skip
            want = sp.to_tags(self.texts[i], self.gold[i])
            self.correct += sum(a == b for a, b in zip(want, found.tags, strict=True))
            self.words += len(want)
            self.pred[i] = found.spans()

    def result(self):
        report = entity_report(self.gold, self.pred, self.types)
        return {
            "val_accuracy": self.correct / self.words if self.words else None,
            "val_f1": float(report["f1"]),
            "val_macro_f1": float(report["macro_f1"]),
        }
