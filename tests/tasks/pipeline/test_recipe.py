"""A run's recipe: data versions, the params that shape the model, the code."""

from pathlib import Path

from slmops.tasks.core.config import load_params, parse_params, with_overrides
from slmops.tasks.pipeline.recipe import code_paths, recipe
from slmops.tasks.pipeline.workspace import run_params
from tests.conftest import REPO

DATA = {"labeled": "aaa.dir", "test": "bbb.dir"}


def project(root: Path) -> Path:
    """A params file with a dvc.yaml beside it whose stages depend on code under code/."""
    (root / "code").mkdir()
    (root / "code" / "train.py").write_text("EPOCHS = 1\n")
    (root / "code" / "__pycache__").mkdir()
    (root / "dvc.yaml").write_text(
        "stages:\n"
        "  train:\n"
        "    cmd: slmops train\n"
        "    deps: [data/labeled, data/splits, code]\n"
        "    outs: [models/challenger]\n"
        "  split:\n"
        "    cmd: slmops split\n"
        "    deps: [data/labeled]\n"
        "    outs: [data/splits]\n"
    )
    (root / "params.yaml").write_text("train: {epochs: 3}\n")
    return root / "params.yaml"


def test_the_recipe_changes_with_a_train_param_a_data_version_or_a_code_file(tmp_path):
    params = load_params(project(tmp_path))
    base = recipe(params, DATA).fingerprint
    assert recipe(params, DATA).fingerprint == base  # the same inputs, the same recipe
    # A param that shapes the model (as an override or a profile would set it).
    assert recipe(with_overrides(params, {"train": {"epochs": 2}}), DATA).fingerprint != base
    # Another data version.
    assert recipe(params, {**DATA, "labeled": "ccc.dir"}).fingerprint != base
    assert recipe(params, {**DATA, "test": "ccc.dir"}).fingerprint != base
    # A code file the stages depend on.
    (tmp_path / "code" / "train.py").write_text("EPOCHS = 2\n")
    changed = recipe(params, DATA).fingerprint
    assert changed != base
    # ...but not bytecode, nor where a run writes (a retrain run's own folder).
    (tmp_path / "code" / "__pycache__" / "train.cpython-311.pyc").write_bytes(b"\0")
    assert recipe(params, DATA).fingerprint == changed
    assert recipe(run_params(params, tmp_path / "models" / "runs" / "x"), DATA).fingerprint == (
        changed
    )


def test_settings_outside_the_model_sections_do_not_count(tmp_path):
    params = load_params(project(tmp_path))
    base = recipe(params, DATA).fingerprint
    other = with_overrides(params, {"feedback": {"retrain_after_labels": 20}, "serve": {"port": 1}})
    assert recipe(other, DATA).fingerprint == base
    # How often training reports its progress changes nothing that is trained.
    quieter = with_overrides(params, {"train": {"report_every_seconds": 300}})
    assert recipe(quieter, DATA).fingerprint == base


def test_the_code_is_what_the_dvc_yaml_stages_depend_on_minus_data_and_outputs():
    root = [p.relative_to(REPO).as_posix() for p in code_paths(load_params(REPO / "params.yaml"))]
    assert "tasks/model" in root and "tasks/validation" in root and "tasks/data/split.py" in root
    assert all(p.startswith("tasks/") for p in root), root  # no data/, reports/ or models/
    # The NER project's dvc.yaml names the same package from ner/.
    ner = code_paths(load_params(REPO / "ner" / "params.yaml"))
    assert {p.relative_to(REPO).as_posix() for p in ner} >= {
        "tasks/model",
        "tasks/task_types/token",
    }


def test_without_a_dvc_yaml_the_whole_tasks_package_counts(tmp_path):
    params = parse_params({}, tmp_path / "params.yaml", root=tmp_path)
    assert code_paths(params) == [REPO / "tasks"]
