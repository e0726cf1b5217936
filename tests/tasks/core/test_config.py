from pathlib import Path

import pytest

from slmops.tasks.core.config import ConfigError, Params, Severity, load_params
from tests.conftest import REPO


def test_shipped_params_are_valid_and_match_the_defaults():
    shipped = load_params(REPO / "params.yaml")
    # params.yaml spells out every default, so the file documents the defaults.
    assert shipped.model_dump(exclude={"profiles"}) == Params().model_dump(exclude={"profiles"})
    assert shipped.root == REPO
    assert set(shipped.profiles) == {"full", "smoke", "loop-demo"}
    for name in shipped.profiles:  # each shipped profile applies cleanly
        load_params(REPO / "params.yaml", profile=name)


def test_profiles_override_and_are_validated(tmp_path: Path):
    shipped = load_params(REPO / "params.yaml", profile="smoke")
    assert (shipped.train.epochs, shipped.train.data_fraction) == (1, 0.1)
    with pytest.raises(ConfigError, match=r"profiles\.nope: no such profile"):
        load_params(REPO / "params.yaml", profile="nope")
    path = tmp_path / "params.yaml"
    path.write_text("profiles:\n  bad:\n    train:\n      epoch: 2\n")
    with pytest.raises(ConfigError, match=r"train\.epoch: unknown key"):
        load_params(path, profile="bad")


def test_relative_paths_resolve_against_the_params_directory(tmp_path: Path):
    (tmp_path / "params.yaml").write_text("data:\n  labeled_dir: elsewhere/labeled\n")
    params = load_params(tmp_path / "params.yaml")
    assert params.path(params.data.labeled_dir) == tmp_path / "elsewhere" / "labeled"


def test_empty_file_gives_defaults(tmp_path: Path):
    (tmp_path / "params.yaml").write_text("")
    assert load_params(tmp_path / "params.yaml").validation.text_max_chars == 1000


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("validation:\n  text_max_char: 10\n", "validation.text_max_char: unknown key"),
        ("trainer:\n  epochs: 3\n", "trainer: unknown key"),
        ("validation:\n  severity:\n    leakage: fatal\n", "validation.severity.leakage"),
        ("split:\n  val_fraction: 0.9\n", "split.val_fraction"),
        ("validation:\n  text_min_chars: 50\n  text_max_chars: 10\n", "text_min_chars (50)"),
        ("label_import:\n  min_agreement: zero\n", "label_import.min_agreement"),
        ("- just\n- a list\n", "expected a mapping"),
        ("root: /etc\n", "root: unknown key"),
        ("serve:\n  allowed_hosts: [example.com:8000]\n", "serve.allowed_hosts"),
        ("serve:\n  allowed_hosts: ['*example.com']\n", "'*.example.com'"),
    ],
)
def test_invalid_values_name_the_file_and_key(tmp_path: Path, text: str, expected: str):
    path = tmp_path / "params.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as exc:
        load_params(path)
    assert str(path) in str(exc.value)
    assert expected in str(exc.value)


def test_malformed_yaml_names_line_and_column(tmp_path: Path):
    path = tmp_path / "params.yaml"
    path.write_text("split:\n  seed: 13\n  val_fraction: [0.1\n")
    with pytest.raises(ConfigError, match=r"params.yaml: line \d+, column \d+ malformed YAML"):
        load_params(path)


def test_missing_file(tmp_path: Path):
    with pytest.raises(ConfigError, match="params file not found"):
        load_params(tmp_path / "nope.yaml")


def test_severity_uses_the_schema_alias(tmp_path: Path):
    path = tmp_path / "params.yaml"
    path.write_text("validation:\n  severity:\n    schema: warn\n    near_duplicate: off\n")
    sev = load_params(path).validation.severity
    assert sev.schema_ is Severity.warn
    assert sev.near_duplicate is Severity.off


def test_params_are_frozen():
    with pytest.raises(ValueError):
        Params().split.seed = 3  # type: ignore[misc]
