import pandas as pd

from slmops.tasks.data.split import write_splits
from slmops.tasks.task_types import task_type

SEQUENCE = task_type("sequence_classification")


def split_frame(df: pd.DataFrame, val_fraction: float, seed: int):
    return SEQUENCE.split_frame(df, val_fraction, seed)


def frame() -> pd.DataFrame:
    labels = ["a"] * 30 + ["b"] * 20 + ["c"] * 1
    return pd.DataFrame({"text": [f"t{i}" for i in range(len(labels))], "label": labels})


def test_split_is_stratified_disjoint_and_complete():
    train, val = split_frame(frame(), 0.1, seed=13)
    assert val["label"].value_counts().to_dict() == {"a": 3, "b": 2}
    assert set(train["text"]).isdisjoint(val["text"])
    assert len(train) + len(val) == 51
    assert "c" in set(train["label"])  # a one-example class stays in train


def test_split_is_deterministic_per_seed():
    a = split_frame(frame(), 0.2, seed=1)[1]
    b = split_frame(frame(), 0.2, seed=1)[1]
    c = split_frame(frame(), 0.2, seed=2)[1]
    assert a.equals(b)
    assert not a.equals(c)


def test_write_splits_reads_labeled_data(tiny_params):
    summary = write_splits(tiny_params, task_type(tiny_params))
    assert summary.train_rows + summary.val_rows == 70
    assert pd.read_csv(summary.val_path)["label"].value_counts().min() == 1
