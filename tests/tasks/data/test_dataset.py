"""The label set file: what is refused, naming the file."""

from __future__ import annotations

from pathlib import Path

import pytest

from slmops.tasks.core.errors import DataError
from slmops.tasks.data.dataset import read_label_file


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"", "malformed JSON at line 1"),
        (b'{"a": 1}', "expected a JSON list of non-empty label names"),
        (b'["ok", ""]', "expected a JSON list of non-empty label names"),
        (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),  # was a RecursionError
    ],
    ids=["empty", "object", "empty-name", "deep"],
)
def test_a_bad_label_file_is_a_data_error_naming_it(tmp_path: Path, content, expected):
    path = tmp_path / "labels.json"
    path.write_bytes(content)
    with pytest.raises(DataError, match=expected) as caught:
        read_label_file(path)
    assert str(path) in str(caught.value)


def test_a_missing_label_file_is_named(tmp_path: Path):
    with pytest.raises(DataError, match="label set file not found"):
        read_label_file(tmp_path / "none.json")


def test_a_label_file_with_a_bom_is_read(tmp_path: Path):
    path = tmp_path / "labels.json"
    path.write_bytes(b'\xef\xbb\xbf["a", "b"]')
    assert read_label_file(path) == ["a", "b"]
