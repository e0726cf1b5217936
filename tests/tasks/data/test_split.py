from pathlib import Path

import pandas as pd
from filelock import FileLock, Timeout

from slmops.tasks.core.lock import LOCK_FILE
from slmops.tasks.data import split
from slmops.tasks.data.split import data_versions, split_versions, write_splits
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


def dvc_file(folder: Path, md5: str) -> None:
    """The .dvc file `dvc add` would leave for ``folder`` (what data_hash reads)."""
    folder.with_name(folder.name + ".dvc").write_text(
        f"outs:\n- md5: {md5}\n  path: {folder.name}\n"
    )


def test_the_split_records_the_data_version_it_was_carved_from(tiny_params):
    labeled = tiny_params.path(tiny_params.data.labeled_dir)
    dvc_file(labeled, "aaa.dir")
    dvc_file(tiny_params.path(tiny_params.data.test_dir), "ttt.dir")
    write_splits(tiny_params, task_type(tiny_params))
    assert split_versions(tiny_params) == {"labeled": "aaa.dir", "test": "ttt.dir"}
    dvc_file(labeled, "bbb.dir")  # an ingestion lands while the run trains
    assert data_versions(tiny_params)["labeled"] == "bbb.dir"
    assert split_versions(tiny_params)["labeled"] == "aaa.dir"  # what it was trained on


def test_the_data_and_its_version_are_read_under_the_project_lock(tiny_params, monkeypatch):
    held = []

    def lock_is_held() -> bool:
        try:  # another handle on the lock file: refused while the split holds it
            FileLock(tiny_params.root / LOCK_FILE).acquire(timeout=0).lock.release()
        except Timeout:
            return True
        return False

    def spy(fn):
        def wrapped(*args, **kwargs):
            held.append((fn.__name__, lock_is_held()))
            return fn(*args, **kwargs)

        return wrapped

    monkeypatch.setattr(split, "read_labeled", spy(split.read_labeled))
    monkeypatch.setattr(split, "data_versions", spy(split.data_versions))
    write_splits(tiny_params, task_type(tiny_params))
    assert held == [("read_labeled", True), ("data_versions", True)]
