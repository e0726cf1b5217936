"""The training benchmark's helpers (the benchmark itself trains for minutes: `make bench`)."""

from __future__ import annotations

import pandas as pd
import torch

from benchmarks.bench_train import (
    CEILING_GOAL,
    SIDES,
    _ceiling_note,
    _CountingCollator,
    _Encoded,
    model_flops_per_token,
    per_class,
    settings,
)


def test_settings_are_the_default_budget_and_quick_is_a_subset() -> None:
    full, quick = settings(quick=False), settings(quick=True)
    assert full["train"]["epochs"] == 3 and full["train"]["batch_size"] == 32
    assert full["train"]["learning_rate"] == quick["train"]["learning_rate"]
    assert "train_examples" not in full
    assert quick["train"]["epochs"] == 1 and quick["train_examples"] > 0
    assert SIDES[0] == "ours"


def test_per_class_takes_at_most_n_of_each_class() -> None:
    df = pd.DataFrame({"text": [f"t{i}" for i in range(30)], "label": ["a"] * 20 + ["b"] * 10})
    sub = per_class(df, 4, seed=0)
    assert sub["label"].value_counts().to_dict() == {"a": 4, "b": 4}
    assert sub.index.is_monotonic_increasing
    assert per_class(df, 4, seed=0).equals(sub)


def test_flops_per_token_counts_linear_layers_six_times() -> None:
    model = torch.nn.Sequential(torch.nn.Embedding(1000, 8), torch.nn.Linear(8, 4))
    assert model_flops_per_token(model) == 6 * 32


def test_counting_collator_counts_real_and_padded_tokens() -> None:
    def pad(features):
        width = max(len(f["input_ids"]) for f in features)
        ids = torch.zeros(len(features), width, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, f in enumerate(features):
            ids[i, : len(f["input_ids"])] = torch.tensor(f["input_ids"])
            mask[i, : len(f["input_ids"])] = 1
        return {"input_ids": ids, "attention_mask": mask}

    data = _Encoded({"input_ids": [[1, 2, 3], [4], [5, 6]]}, [0, 1, 0])
    assert len(data) == 3 and data[1] == {"input_ids": [4], "labels": 1}
    collator = _CountingCollator(pad)
    collator([data[0], data[1]])
    collator([data[2]])
    assert (collator.tokens, collator.padded) == (6, 8)


def test_ceiling_note_explains_a_miss_and_is_empty_when_met() -> None:
    assert CEILING_GOAL == 0.70
    assert _ceiling_note(0.75, cuda=False, quick=False) == ""
    assert "besides matmuls" in _ceiling_note(0.59, cuda=False, quick=False)
    assert "quick mode" in _ceiling_note(0.75, cuda=False, quick=True)
    assert "bf16" in _ceiling_note(None, cuda=True, quick=False)
