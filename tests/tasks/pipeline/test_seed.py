import pandas as pd

from slmops.tasks.core.config import load_params
from slmops.tasks.data.dataset import LABELED_COLUMNS, LabeledPaths, read_label_file
from slmops.tasks.pipeline.seed import build_from_seed
from tests.conftest import TINY_LABELS


def test_build_writes_labeled_data_with_provenance(tiny_params):
    paths = LabeledPaths(tiny_params)
    labeled = pd.read_csv(paths.labeled, dtype=str, keep_default_na=False)
    assert tuple(labeled.columns) == LABELED_COLUMNS
    assert set(labeled["source"]) == {"seed"}
    assert labeled["source_id"].iloc[0] == "row 1"
    assert read_label_file(paths.labels) == TINY_LABELS
    assert len(pd.read_csv(paths.test)) == 20
    assert pd.read_csv(paths.corrections).empty


def test_build_is_byte_for_byte_reproducible(tiny_project):
    params = load_params(tiny_project / "params.yaml")
    paths = LabeledPaths(params)
    files = [paths.labeled, paths.quarantine, paths.corrections, paths.labels, paths.test]
    first = [f.read_bytes() for f in files]
    build_from_seed(params)
    assert [f.read_bytes() for f in files] == first


def test_seed_rows_leaking_into_test_are_quarantined_not_dropped(tiny_project):
    seed = tiny_project / "data" / "seed" / "banking77"
    train = pd.read_csv(seed / "train.csv")
    test = pd.read_csv(seed / "test.csv")
    leak = pd.DataFrame(
        {"text": ["  " + test["text"].iloc[0].upper() + "\n"], "category": ["card_arrival"]}
    )
    pd.concat([train, leak]).to_csv(seed / "train.csv", index=False)

    params = load_params(tiny_project / "params.yaml")
    summary = build_from_seed(params)
    paths = LabeledPaths(params)
    quarantine = pd.read_csv(paths.quarantine)
    assert summary.quarantined_rows == 1
    assert quarantine["check"].tolist() == ["leakage"]
    assert f"row {len(train) + 1}:" in quarantine["reason"].iloc[0]
    assert summary.labeled_rows == len(train)
