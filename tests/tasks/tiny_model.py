"""A tiny randomly initialised BERT with the real MiniLM tokenizer, and a small
BANKING77 slice (or WNUT 2017 slice, for token classification) to train it on:
the whole training path in seconds on a CPU."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import torch

from tests.conftest import TINY_LABELS

SEED_TRAIN = Path(__file__).resolve().parents[2] / "data" / "seed" / "banking77" / "train.csv"
WNUT_DIR = Path(__file__).resolve().parents[2] / "data" / "seed" / "wnut17"
WNUT_TYPES = ["corporation", "creative-work", "group", "location", "person", "product"]


def make_tiny_model(
    dir: Path, labels: list[str] | None = None, task: str = "sequence_classification"
) -> Path:
    """Write a 2-layer, 32-wide BERT (seeded random weights) and the MiniLM tokenizer.

    With ``labels`` it is a classifier with ``labels.json`` beside it, the layout
    :class:`slmops.tasks.model.inference.Predictor` loads: a sequence classifier, or with
    ``task="token_classification"`` a token classifier whose ``labels`` are its
    output tags (``slmops.tasks.task_types.token.spans.tag_names(types)``); without, a bare
    ``BertModel`` to use as ``base_model``.
    """
    from transformers import (
        AutoTokenizer,
        BertConfig,
        BertForSequenceClassification,
        BertForTokenClassification,
        BertModel,
    )

    from slmops.tasks.model.inference import LABELS_FILE
    from slmops.tasks.model.runtime import resolve_base_model

    dir = Path(dir)
    tokenizer = AutoTokenizer.from_pretrained(resolve_base_model("minilm"))
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
    )
    with torch.random.fork_rng():
        torch.manual_seed(0)
        if labels is None:
            model = BertModel(config)
        else:
            config.num_labels = len(labels)
            config.id2label = dict(enumerate(labels))
            config.label2id = {label: i for i, label in enumerate(labels)}
            # Larger random weights, so that different texts get visibly different answers.
            config.initializer_range = 0.2
            if task == "token_classification":
                model = BertForTokenClassification(config)
            else:
                model = BertForSequenceClassification(config)
    model.save_pretrained(dir)
    tokenizer.save_pretrained(dir)
    if labels is not None:
        (dir / LABELS_FILE).write_text(json.dumps(list(labels)))
    return dir


def tiny_frames(
    per_class_train: int = 12, per_class_val: int = 4, labels: list[str] = TINY_LABELS
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Train and validation frames (``text``, ``label``) from the seed's first rows per class."""
    df = pd.read_csv(SEED_TRAIN, dtype=str).rename(columns={"category": "label"})
    df = df[df["label"].isin(labels)]
    head = df.groupby("label").head(per_class_train + per_class_val)
    rank = head.groupby("label").cumcount()
    train = head[rank < per_class_train].reset_index(drop=True)
    val = head[rank >= per_class_train].reset_index(drop=True)
    return train[["text", "label"]], val[["text", "label"]]


def read_wnut(name: str = "train", limit: int | None = None) -> pd.DataFrame:
    """The first ``limit`` sentences of a WNUT 2017 file as rows (``text``, ``label``
    span JSON): tokens joined by single spaces, entities from their BIO tags."""
    from slmops.tasks.task_types.token import spans as sp

    rows: list[tuple[str, str]] = []
    tokens: list[tuple[str, str]] = []

    def close() -> None:
        if not tokens:
            return
        text, found, position = "", [], 0
        for token, tag in tokens:
            start = position + (1 if text else 0)
            text = f"{text} {token}" if text else token
            position = start + len(token)
            if tag.startswith("I-") and found and found[-1][2] == tag[2:]:
                found[-1][1] = position
            elif tag != "O":
                found.append([start, position, tag[2:]])
        rows.append((text, sp.dumps(found)))
        tokens.clear()

    with open(WNUT_DIR / f"{name}.conll", encoding="utf-8") as fh:
        for line in fh:
            token, _, tag = line.rstrip("\r\n").partition("\t")
            if not token.strip():
                close()
                if limit is not None and len(rows) >= limit:
                    break
                continue
            tokens.append((token.strip(), tag.strip()))
    close()
    return pd.DataFrame(rows[:limit], columns=["text", "label"])


def tiny_ner_frames(n_train: int = 64, n_val: int = 16) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Train and validation frames (``text``, ``label`` span JSON) from the first
    ``n_train + n_val`` sentences of WNUT 2017's train file."""
    df = read_wnut("train", n_train + n_val)
    return df.head(n_train).reset_index(drop=True), df.iloc[n_train:].reset_index(drop=True)
