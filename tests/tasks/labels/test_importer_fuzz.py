"""Property-based fuzzing of the label importers (hypothesis).

Arbitrary vote tables, arbitrary bytes and arbitrary JSON shaped like Label Studio
exports either import or fail with :class:`DataError`, never anything else; a failed
import leaves the labeled data byte-for-byte as it was, and a successful one loses no
row that was there before. Example counts are bounded so the suite stays fast.
"""

from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from slmops.tasks.core.config import CsvImportConfig, ImportConfig, load_params
from slmops.tasks.core.errors import DataError
from slmops.tasks.data.dataset import LabeledPaths, normalise
from slmops.tasks.labels.sources import read_votes, resolve_votes
from slmops.tasks.pipeline.prepare import import_labels
from slmops.tasks.task_types import LABEL_FORMATS
from tests.conftest import TINY_LABELS, build_tiny_project
from tests.snapshots import labeled_state

FAST = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
# Each full import runs the Great Expectations gate (~0.5 s): fewer examples.
SLOW = settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Cells that stress CSV quoting and the cleaning rules: separators, quotes, line breaks,
# whitespace, BOMs, labels that are near misses of real ones.
tricky = st.sampled_from(
    ["", " ", "\t", ",", '"', "\r\n", "\n", "\ufeff", "NA", "null", "../x", "card_arrival "]
)
cell = st.one_of(st.text(max_size=40), tricky)
label = st.one_of(st.sampled_from(TINY_LABELS), cell)
json_scalar = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=20)
)
json_value = st.recursive(
    json_scalar,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)
choices = st.fixed_dictionaries(
    {"from_name": st.sampled_from(["intent", "other", None]), "value": json_value}
) | st.fixed_dictionaries(
    {
        "from_name": st.just("intent"),
        "value": st.fixed_dictionaries({"choices": st.lists(label, max_size=3)}),
    }
)
annotation = st.fixed_dictionaries(
    {"result": st.one_of(st.lists(choices, max_size=2), json_value)},
    optional={
        "completed_by": json_value,
        "was_cancelled": st.booleans(),
        "id": json_value,
    },
)
ls_task = st.fixed_dictionaries(
    {},
    optional={
        "id": json_value,
        "data": st.one_of(st.fixed_dictionaries({"text": st.one_of(cell, json_value)}), json_value),
        "annotations": st.one_of(st.lists(annotation, max_size=3), json_value),
        "predictions": json_value,
    },
)
min_item = st.fixed_dictionaries(
    {},
    optional={
        "id": st.one_of(st.integers(0, 3), json_value),
        "text": st.one_of(cell, json_value),
        "intent": st.one_of(label, st.lists(label, max_size=2), json_value),
        "annotator": json_value,
    },
)
export = st.one_of(st.lists(ls_task, max_size=4), st.lists(min_item, max_size=4), json_value)


def csv_bytes(rows: list[tuple[str, str, str]], header: tuple[str, ...]) -> bytes:
    buf = io.StringIO(newline="")
    writer = csv.writer(buf)
    writer.writerow(header)
    writer.writerows(rows)
    return buf.getvalue().encode()


CFG = ImportConfig(csv=CsvImportConfig(annotator_column="annotator"))
ROWS = st.lists(st.tuples(cell, label, st.sampled_from(["a", "b", "c", ""])), max_size=8)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


def _parse(path: Path, cfg: ImportConfig) -> None:
    """Read and vote; only DataError may come out."""
    try:
        table = read_votes(path, cfg, LABEL_FORMATS)
    except DataError as exc:
        assert str(path) in str(exc), exc  # every error names the file
        return
    assert list(table.votes.columns) == ["text", "label", "annotator", "source_id"]
    resolved, quarantined = resolve_votes(table.votes, cfg.min_agreement)
    # Every text with a vote is either resolved or quarantined, never dropped.
    voted = {t.strip() for t in table.votes["text"]}
    assert voted == set(resolved["text"]) | set(quarantined["text"])


@FAST
@given(rows=ROWS)
def test_fuzzed_vote_tables_parse_or_raise_data_error(workdir: Path, rows) -> None:
    f = workdir / "votes.csv"
    f.write_bytes(csv_bytes(rows, ("text", "label", "annotator")))
    _parse(f, CFG)


@FAST
@given(content=st.binary(max_size=200), suffix=st.sampled_from([".csv", ".json", ".tsv"]))
def test_fuzzed_bytes_parse_or_raise_data_error(workdir: Path, content: bytes, suffix: str) -> None:
    f = workdir / f"bytes{suffix}"
    f.write_bytes(content)
    _parse(f, ImportConfig())


@FAST
@given(data=export)
def test_fuzzed_label_studio_exports_parse_or_raise_data_error(workdir: Path, data) -> None:
    f = workdir / "export.json"
    f.write_text(json.dumps(data))
    _parse(f, ImportConfig())
    # A truncated copy of the same export is always a clear error, never a traceback.
    text = json.dumps(data)
    if len(text) > 2:
        f.write_text(text[: len(text) // 2])
        _parse(f, ImportConfig())


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    root = build_tiny_project(tmp_path_factory.mktemp("fuzz-project"))
    shutil.copytree(root / "data" / "labeled", root / "pristine")
    return root


def _reset(root: Path) -> None:
    shutil.rmtree(root / "data" / "labeled")
    shutil.copytree(root / "pristine", root / "data" / "labeled")


def _import_keeps_the_data(root: Path, f: Path) -> None:
    params = load_params(root / "params.yaml")
    paths = LabeledPaths(params)
    before = labeled_state(root)
    old = pd.read_csv(paths.labeled, dtype=str, keep_default_na=False)["text"].map(normalise)
    try:
        import_labels(f, params, version=False)
    except DataError:
        assert labeled_state(root) == before  # refused: not a byte changed
        return
    new = pd.read_csv(paths.labeled, dtype=str, keep_default_na=False)["text"].map(normalise)
    quarantined = pd.read_csv(paths.quarantine, dtype=str, keep_default_na=False)["text"]
    kept = set(new) | set(quarantined.map(normalise))
    assert set(old) <= kept  # no row that was there is lost


@SLOW
@given(rows=ROWS)
def test_fuzzed_csv_imports_never_corrupt_the_labeled_data(project: Path, rows) -> None:
    _reset(project)
    f = project / "in.csv"
    f.write_bytes(csv_bytes([(t, lab) for t, lab, _ in rows], ("text", "label")))
    _import_keeps_the_data(project, f)


@SLOW
@given(data=export)
def test_fuzzed_label_studio_imports_never_corrupt_the_labeled_data(project: Path, data) -> None:
    _reset(project)
    f = project / "in.json"
    f.write_text(json.dumps(data))
    _import_keeps_the_data(project, f)
