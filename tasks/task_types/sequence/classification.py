"""Sequence classification: one label per text from a fixed label set."""

from __future__ import annotations

from collections.abc import Collection
from typing import ClassVar

import numpy as np
import pandas as pd
from sklearn.metrics import f1_score

from slmops.tasks.core.config import Params, TaskName
from slmops.tasks.core.errors import DataError
from slmops.tasks.core.task_type import Scored, TaskType, UnknownClass, ValScorer
from slmops.tasks.data.dataset import read_table
from slmops.tasks.labels.sources import REJECTED_COLUMNS, VoteTable
from slmops.tasks.model.inference import predict_proba_by_length
from slmops.tasks.task_types.sequence.evaluate import label_predictions, label_report
from slmops.tasks.task_types.sequence.validate import validate_frame


class SequenceClassification(TaskType):
    """One label per text, from a fixed label set (intents, topics, sentiment)."""

    name = TaskName.sequence_classification
    model_class = "AutoModelForSequenceClassification"
    pipeline_task = "text-classification"
    val_metrics: ClassVar[dict[str, str]] = {"val_accuracy": "accuracy", "val_macro_f1": "macro-F1"}
    best_metric = "val_macro_f1"
    format_metric = eval_metric = "accuracy"

    def classes(self, cell: str) -> list[str]:
        """The label itself."""
        return [cell]

    def canonical(self, text: str, cell: str, label_set: Collection[str]) -> str:
        """The label, if it is in the label set."""
        if cell not in label_set:
            raise UnknownClass(f"label {cell!r} is not in the label set", label_set)
        return cell

    def read_seed(self, params: Params, rel: str) -> VoteTable:
        """A CSV with the configured text and label columns."""
        d = params.data
        df = read_table(params.path(rel), (d.seed_text_column, d.seed_label_column))
        df = df.rename(columns={d.seed_text_column: "text", d.seed_label_column: "label"})
        # Surrounding newlines/spaces in a few seed texts carry no meaning.
        df["text"] = df["text"].str.strip()
        df["source_id"] = [f"row {i}" for i in range(1, len(df) + 1)]
        df["annotator"] = "seed"
        return VoteTable(df, pd.DataFrame(columns=list(REJECTED_COLUMNS)), "csv")

    def validate_frame(self, df, params, label_set, test_texts=None, **kw):
        """The classification checks (:func:`.validate.validate_frame`)."""
        return validate_frame(df, params, label_set, test_texts, **kw)

    def split_frame(self, df, val_fraction, seed):
        """Stratified: ``val_fraction`` of each class (a class too small stays in train)."""
        val = df.groupby("label", sort=True).sample(frac=val_fraction, random_state=seed)
        train = df.drop(index=val.index)
        return train.reset_index(drop=True), val.sort_index().reset_index(drop=True)

    # -- model ------------------------------------------------------------------------

    def outputs(self, label_set):
        """The labels themselves."""
        return list(label_set)

    def label_set_of(self, outputs):
        """The outputs themselves."""
        return list(outputs)

    def sample(self, train, fraction, seed):
        """A per-class share (at least one row of every class): :func:`stratified_fraction`."""
        return stratified_fraction(train, fraction, seed)

    def check_rows(self, name, df, label_set):
        """Every label is in the label set."""
        unknown = sorted(set(df["label"].astype(str)) - set(label_set))
        if unknown:
            raise DataError(f"{name}: labels not in the label set: {unknown[:10]}")

    def encode(self, tokenizer, df, output_index, max_length):
        """Token ids of each text; a label id per row."""
        texts = df["text"].astype(str).tolist()
        encoded = (
            tokenizer(texts, truncation=True, max_length=max_length) if texts else {"input_ids": []}
        )
        targets = df["label"].astype(str).map(output_index).to_numpy(dtype=np.int64)
        return {k: list(v) for k, v in encoded.items()}, targets

    def val_scorer(self, val, encoded, outputs):
        """Accuracy and macro-F1 (over the classes present in ``val``)."""
        return _LabelScorer(val["label"].astype(str).map({o: i for i, o in enumerate(outputs)}))

    def eval_predictions(self, predictor, df, batch_size):
        """Each text's most probable label and its probability
        (:func:`.evaluate.label_predictions`)."""
        return label_predictions(predictor, df, batch_size)

    def eval_report(self, test, val, outputs, cfg):
        """Accuracy, per-class report, confusion, calibration and slices
        (:func:`.evaluate.label_report`)."""
        return label_report(test, val, list(outputs), cfg)

    def predict_call(self, predictor):
        """Class probabilities."""
        return predictor.predict_proba

    def format_score(self, predictor, test, batch_size=128):
        """Share of test rows whose most probable label is the row's label."""
        preds = predictor.predict(test["text"].tolist(), batch_size=batch_size)
        return float(np.mean(np.asarray(preds) == test["label"].to_numpy()))

    def score(self, predictor, texts, *, chunk, top_k):
        """Most probable label, its probability and the ``top_k`` labels."""
        probs = predict_proba_by_length(predictor, texts, chunk)
        labels = predictor.labels
        k = min(top_k, len(labels))
        out = []
        for p in probs:
            order = np.argsort(-p, kind="stable")[:k]
            top = [{"label": labels[i], "score": float(p[i])} for i in order]
            out.append(Scored(top[0]["label"], top[0]["score"], top))
        return out


def stratified_fraction(train: pd.DataFrame, fraction: float, seed: int) -> pd.DataFrame:
    """A per-class random share of ``train`` (at least one row of every class).

    Rows keep their original order.
    """
    if fraction >= 1.0:
        return train
    sampled = train.groupby("label", sort=False).sample(frac=fraction, random_state=seed)
    missing = train[~train["label"].isin(set(sampled["label"]))]
    if len(missing):
        extra = missing.groupby("label", sort=False).sample(n=1, random_state=seed)
        sampled = pd.concat([sampled, extra])
    return train.loc[train.index.isin(sampled.index)]


class _LabelScorer(ValScorer):
    def __init__(self, label_ids: pd.Series) -> None:
        self.label_ids = label_ids.to_numpy(dtype=np.int64)
        self.preds = np.empty(len(self.label_ids), dtype=np.int64)

    def add(self, idx, probs):
        self.preds[idx] = probs.argmax(axis=-1)

    def result(self):
        present = np.unique(self.label_ids)
        return {
            "val_accuracy": float((self.preds == self.label_ids).mean()),
            "val_macro_f1": float(
                f1_score(
                    self.label_ids, self.preds, labels=present, average="macro", zero_division=0
                )
            ),
        }
