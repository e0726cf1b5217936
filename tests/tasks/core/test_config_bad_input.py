"""Bad input catalogue for params.yaml: each broken file is a ConfigError naming the file,
the line or key, and the problem; a readable file with a BOM or CRLF reads as usual."""

from __future__ import annotations

import codecs
from pathlib import Path

import pytest

from slmops.tasks.core.config import ConfigError, load_params, parse_params

BROKEN: list[tuple[str, bytes, tuple[str, ...]]] = [
    ("latin1", "train:\n  base_model: caf\xe9\n".encode("latin-1"), ("not UTF-8 text", "byte 24")),
    ("utf16_bom", "train:\n  epochs: 2\n".encode("utf-16"), ("not UTF-8 text", "byte 0")),
    ("utf16_no_bom", "train:\n  epochs: 2\n".encode("utf-16-le"), ("malformed YAML", "#x0000")),
    ("truncated", b"train: {epochs: 2\n", ("line 2, column 1", "malformed YAML", "expected ','")),
    ("tab_indent", b"train:\n\tepochs: 2\n", ("line 2, column 1", "malformed YAML")),
    ("wrong_type", b"train:\n  epochs: ten\n", ("train.epochs", "valid integer", "'ten'")),
    ("list_for_section", b"train: [1, 2]\n", ("train:", "valid dictionary", "[1, 2]")),
    ("null_section", b"train: null\n", ("train:", "valid dictionary", "None")),
    ("top_level_list", b"- train\n", ("expected a mapping at the top level, got list",)),
    ("top_level_number", b"42\n", ("expected a mapping at the top level, got int",)),
    ("unknown_key", b"train:\n  epochz: 2\n", ("train.epochz: unknown key",)),
    ("root_key", b"root: /\n", ("root: unknown key",)),
    (
        "null_column",
        b"label_import:\n  csv:\n    text_column: null\n",
        ("label_import.csv.text_column",),
    ),
    (
        "empty_delimiter",
        b"label_import:\n  csv:\n    delimiter: ''\n",
        ("label_import.csv.delimiter", "at least 1"),
    ),
    (
        "bad_severity",
        b"validation:\n  severity:\n    leakage: maybe\n",
        ("validation.severity.leakage", "'maybe'"),
    ),
    (
        "bad_bounds",
        b"validation:\n  text_min_chars: 50\n  text_max_chars: 10\n",
        ("text_min_chars (50) is greater",),
    ),
    (
        "duplicate_key",
        b"train:\n  epochs: 2\ntrain:\n  epochs: 3\n",
        ("line 3, column 1", "duplicate key 'train' (first given on line 1)"),
    ),
    (
        "duplicate_nested_key",
        b"train:\n  epochs: 2\n  epochs: 3\n",
        ("line 3", "duplicate key 'epochs'"),
    ),
    (
        "agreement_out_of_range",
        b"label_import:\n  min_agreement: 1.5\n",
        ("label_import.min_agreement", "1.5"),
    ),
]


@pytest.mark.parametrize(("name", "content", "expected"), BROKEN, ids=[b[0] for b in BROKEN])
def test_a_broken_params_file_is_a_config_error_naming_file_and_place(
    tmp_path: Path, name: str, content: bytes, expected: tuple[str, ...]
) -> None:
    path = tmp_path / f"{name}.yaml"
    path.write_bytes(content)
    with pytest.raises(ConfigError) as caught:
        load_params(path)
    message = str(caught.value)
    assert message.startswith(str(path)), message
    for part in expected:
        assert part in message, message


def test_a_directory_or_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="is a directory, not a params file"):
        load_params(tmp_path)
    with pytest.raises(ConfigError, match="params file not found"):
        load_params(tmp_path / "nope.yaml")


def test_an_unknown_profile_lists_the_known_ones(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_text("profiles:\n  quick:\n    train:\n      epochs: 1\n")
    with pytest.raises(ConfigError, match=r"profiles\.fast: no such profile \(quick\)"):
        load_params(path, "fast")


def test_a_profile_with_a_wrong_type_names_the_profile(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_text("profiles:\n  quick:\n    train:\n      epochs: one\n")
    with pytest.raises(ConfigError, match=r"profiles\.quick\).*\n  train\.epochs"):
        load_params(path, "quick")


@pytest.mark.parametrize(
    "content",
    [
        codecs.BOM_UTF8 + b"train:\r\n  epochs: 2\r\n",
        b"train:\r\n  epochs: 2\r\n",
        b"# only a comment\r\ntrain:\n  epochs: 2\n",
    ],
    ids=["bom_crlf", "crlf", "mixed_line_endings"],
)
def test_bom_and_crlf_params_read_as_usual(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "params.yaml"
    path.write_bytes(content)
    assert load_params(path).train.epochs == 2


@pytest.mark.parametrize(
    "content", [b"", b"\n  \n", b"# nothing set\n"], ids=["empty", "blank", "comment"]
)
def test_an_empty_params_file_means_every_default(tmp_path: Path, content: bytes) -> None:
    # Documented behaviour: params.yaml overrides defaults, so nothing set is all defaults.
    path = tmp_path / "params.yaml"
    path.write_bytes(content)
    assert load_params(path).model_dump() == parse_params({}, path, root=tmp_path).model_dump()


def test_a_yaml_anchor_merge_still_loads(tmp_path: Path) -> None:
    # The duplicate-key check must not refuse YAML's merge keys.
    path = tmp_path / "params.yaml"
    path.write_text("profiles:\n  a: &base\n    train:\n      epochs: 1\n  b:\n    <<: *base\n")
    assert load_params(path, "b").train.epochs == 1
