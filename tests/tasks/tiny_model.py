"""A tiny randomly initialised BERT with the real MiniLM tokenizer, and a small
BANKING77 slice to train it on: the whole training path in seconds on a CPU."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import torch

from tests.conftest import TINY_LABELS

SEED_TRAIN = Path(__file__).resolve().parents[2] / "data" / "seed" / "banking77" / "train.csv"


def make_tiny_model(dir: Path, labels: list[str] | None = None) -> Path:
    """Write a 2-layer, 32-wide BERT (seeded random weights) and the MiniLM tokenizer.

    With ``labels`` it is a sequence classifier with ``labels.json`` beside it, the
    layout :class:`tasks.inference.Predictor` loads; without, a bare ``BertModel``
    to use as ``base_model``.
    """
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification, BertModel

    from tasks.inference import LABELS_FILE, resolve_base_model

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
