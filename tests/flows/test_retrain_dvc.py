"""`dvc` in step with the retrain flow, in a throwaway copy: after `slmops demo`,
`dvc repro` skips every stage and `dvc exp show` lists the demo's retrain; a second
retrain on unchanged data trains nothing; `dvc exp run -S` registers a challenger."""

import json
import shutil
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import GIT_IDENTITY, REPO, run

pytestmark = pytest.mark.slow


def dvc(root: Path, *args: str):
    proc = run([sys.executable, "-m", "dvc", *args], root)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def git(root: Path, *args: str) -> str:
    proc = run(["git", *args], root, env=GIT_IDENTITY)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


@pytest.fixture
def repo_like(project: Path) -> Path:
    """The tiny training project with the repository's dvc.yaml and the code its stages
    depend on (tasks/), its .gitignore and .dvcignore: the layout `make demo` runs in."""
    from slmops.tasks.core.config import load_params

    # Every key written out, as in the repository's params.yaml (dvc reads the
    # sections the stages declare from the file; defaults are not in it).
    full = load_params(project / "params.yaml").model_dump(mode="json", by_alias=True)
    (project / "params.yaml").write_text(yaml.safe_dump(full, sort_keys=False))
    for name in ("dvc.yaml", ".gitignore", ".dvcignore"):
        shutil.copy2(REPO / name, project / name)
    shutil.copytree(REPO / "tasks", project / "tasks", ignore=shutil.ignore_patterns("__pycache__"))
    git(project, "add", "-A")
    git(project, "commit", "-qm", "the repository's dvc.yaml and code")
    return project


def slmops(root: Path, *args: str) -> str:
    """`slmops <args>` as a user types it, its flows on this session's Prefect API."""
    from prefect.settings import PREFECT_API_URL

    proc = run(
        [sys.executable, "-m", "slmops", *args],
        root,
        env={"PREFECT_API_URL": PREFECT_API_URL.value()},
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout + proc.stderr


def exps(root: Path) -> dict[str, dict]:
    """`dvc exp show --json`: experiment name -> its data (params, metrics)."""
    found = {}
    for baseline in json.loads(dvc(root, "exp", "show", "--json")):
        for exp in baseline.get("experiments") or []:
            for rev in exp.get("revs") or []:
                found[rev["name"]] = rev["data"]
    return found


def test_after_demo_dvc_is_in_step_and_a_second_retrain_trains_nothing(repo_like):
    from slmops.flows.retrain import retrain
    from slmops.tasks.core.config import load_params
    from slmops.tasks.registry.promotion import client

    root = repo_like
    head = git(root, "rev-parse", "HEAD")
    output = slmops(root, "demo")
    params = load_params(root / "params.yaml")
    name = params.registry.model_name
    mc = client(params)
    v1 = mc.get_model_version(name, "1")
    assert v1.tags.get("dvc.experiment") == f"{name}-v1", output
    assert v1.tags["slmops.recipe"].startswith("sha256:")

    # DVC knows what the flow made: nothing to do, nothing to run.
    assert "up to date" in dvc(root, "status")
    repro = dvc(root, "repro")
    assert "Running stage" not in repro, repro
    for stage in ("validate", "split", "train", "evaluate", "register"):
        assert f"Stage '{stage}' didn't change, skipping" in repro
    # The retrain is an experiment, with its params, metrics, MLflow version and run.
    shown = exps(root)[f"{name}-v1"]
    eval_metrics = shown["metrics"]["reports/eval/metrics.json"]["data"]
    assert eval_metrics["accuracy"] == pytest.approx(float(v1.tags["metrics.accuracy"]))
    registered = shown["metrics"]["reports/registry/registered.json"]["data"]
    assert registered["version"] == "1" and registered["run_id"] == v1.run_id
    assert registered["promoted"] is True
    assert shown["params"]["params.yaml"]["data"]["train"]["epochs"] == 3
    # `dvc metrics show`: the champion's metrics beside the last challenger's.
    metrics = json.loads(dvc(root, "metrics", "show", "--json"))
    workspace = next(iter(metrics.values()))["data"]
    champion = workspace["reports/champion/metrics.json"]["data"]
    assert champion["version"] == "1" and champion["accuracy"] == pytest.approx(
        eval_metrics["accuracy"]
    )
    # The user's branch and index are left alone: dvc.lock is new in the worktree only.
    assert git(root, "rev-parse", "HEAD") == head
    assert git(root, "diff", "--cached", "--name-only") == ""

    # A second retrain on the same data, params and code trains nothing.
    runs_before = len(mc.search_runs([mc.get_experiment_by_name("slmops").experiment_id]))
    output = slmops(root, "retrain")
    assert "unchanged: same data, params and code as version 1 (champion)" in output
    assert [str(v.version) for v in mc.search_model_versions(f"name='{name}'")] == ["1"]
    runs_after = len(mc.search_runs([mc.get_experiment_by_name("slmops").experiment_id]))
    assert runs_after == runs_before  # no MLflow run: nothing trained
    # With force it trains (the same model again: the champion's version, reused).
    forced = retrain(params_path=str(root / "params.yaml"), trigger="test", force=True)
    assert "skipped" not in forced and forced["epochs_run"] == 3
    assert forced["version"] == "1"


def test_dvc_exp_run_with_a_param_registers_a_challenger_like_a_retrain(repo_like):
    from slmops.tasks.core.config import load_params
    from slmops.tasks.registry.promotion import client

    root = repo_like
    proc = run(
        [sys.executable, "-m", "dvc", "exp", "run", "-n", "short", "-S", "train.epochs=1"], root
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Running stage 'register'" in proc.stdout
    params = load_params(root / "params.yaml")
    name = params.registry.model_name
    v1 = client(params).get_model_version(name, "1")
    assert v1.tags["dvc.experiment"] == "short"
    assert v1.tags["gate.decision"] == "promoted"  # gated like a retrain (low floors)
    shown = exps(root)["short"]
    registered = shown["metrics"]["reports/registry/registered.json"]["data"]
    assert registered["version"] == "1" and registered["run_id"] == v1.run_id
    assert shown["params"]["params.yaml"]["data"]["train"]["epochs"] == 1
    # The experiment's params are in the workspace: a retrain with them trains nothing new.
    from slmops.flows.retrain import retrain

    again = retrain(params_path=str(root / "params.yaml"), trigger="test")
    assert again["skipped"].endswith("as version 1 (champion)")
