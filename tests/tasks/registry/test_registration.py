"""Crash leftovers in the registry: stale RUNNING runs, versions whose registration never
completed, lookup by model digest; on a real (embedded) store, with crafted runs."""

import socket
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.entities import LoggedModelOutput

from slmops.tasks.core.config import parse_params
from slmops.tasks.core.errors import PromotionError
from slmops.tasks.registry.promotion import CHAMPION, alias_version, apply, versions_table
from slmops.tasks.registry.registration import (
    COMPLETE,
    FAILED,
    PENDING,
    TAG_REGISTRATION,
    TAG_REGISTRATION_ERROR,
    TAG_RESOLVED,
    find_registered,
    registration_state,
    remove_version,
    resolve_leftovers,
)
from slmops.tasks.registry.store import Registry
from slmops.tasks.registry.tracking import OWNER_HOST, OWNER_PID, OWNER_STARTED, run_owner
from tests.tasks.registry.test_promotion import correctness, write_eval


@pytest.fixture
def params(tmp_path: Path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    raw = {"gate": {"min_accuracy": 0.6, "min_macro_f1": 0.5, "significance": "none"}}
    return parse_params(raw, tmp_path / "params.yaml", root=tmp_path)


def dead_owner() -> dict[str, str]:
    """Owner tags of a process that has exited (and been reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return {OWNER_HOST: socket.gethostname(), OWNER_PID: str(proc.pid), OWNER_STARTED: ""}


def other_host() -> dict[str, str]:
    return {OWNER_HOST: "some-other-host", OWNER_PID: "1", OWNER_STARTED: ""}


def open_run(params, owner: dict[str, str]) -> str:
    """A run left RUNNING (as a killed process leaves it), owned by ``owner``."""
    registry = Registry.configured(params)
    experiment = registry.client.get_experiment_by_name(params.registry.experiment)
    return registry.client.create_run(experiment.experiment_id, tags=owner).info.run_id


def version(
    params,
    tmp_path: Path,
    *,
    owner: dict[str, str],
    digest: str = "sha256:aa",
    test_hash: str = "t1",
    model_files: bool = True,
    evaluation: bool = True,
    wrong: int = 60,
) -> tuple[str, str]:
    """A version as a registration killed after creating it leaves it: tagged ``pending``,
    its run RUNNING; with its evaluation and model files (MLmodel, weights) unless told
    otherwise. Returns (version, run id)."""
    registry = Registry.configured(params)
    mc = registry.client
    run_id = open_run(params, owner)
    folder, report = write_eval(tmp_path, correctness(300, wrong))
    if evaluation:
        mc.log_artifacts(run_id, str(folder), "eval")
    model = tmp_path / f"model-{run_id}"
    (model / "model").mkdir(parents=True)
    (model / "MLmodel").write_text("flavors: {}\n")
    if model_files:
        (model / "model" / "model.safetensors").write_bytes(b"weights")
    mc.log_artifacts(run_id, str(model), "model")
    name = params.registry.model_name
    if not mc.search_registered_models(f"name='{name}'"):
        mc.create_registered_model(name)
    mv = mc.create_model_version(
        name,
        source=f"runs:/{run_id}/model",
        run_id=run_id,
        tags={
            "data.test_hash": test_hash,
            "metrics.accuracy": str(report["accuracy"]),
            "metrics.macro_f1": str(report["macro_f1"]),
            "task": "sequence_classification",
            "gate.decision": "pending",
            "model.digest": digest,
            TAG_REGISTRATION: PENDING,
        },
    )
    return str(mv.version), run_id


def status(params, run_id: str) -> str:
    return Registry.of(params).run(run_id).status


def state(params, v: str) -> str:
    return registration_state(Registry.of(params).version(params.registry.model_name, v))


# --------------------------------------------------------------------------- runs


def test_a_run_left_running_by_a_dead_process_is_marked_failed_and_a_live_one_is_not(
    params, caplog
):
    dead = open_run(params, dead_owner())
    live = open_run(params, run_owner())  # this test's own process: a concurrent twin
    elsewhere = open_run(params, other_host())
    unowned = open_run(params, {})
    caplog.set_level("INFO")

    found = resolve_leftovers(params, who="test")

    assert found.failed_runs == [dead]
    assert status(params, dead) == "FAILED"
    assert "marked FAILED by test" in Registry.of(params).run(dead).tags[TAG_RESOLVED]
    assert f"run {dead} was left RUNNING by a process that is gone" in caplog.text
    for run_id in (live, elsewhere, unowned):
        assert status(params, run_id) == "RUNNING"
    assert sorted(found.unchecked_runs) == sorted([elsewhere, unowned])
    assert not resolve_leftovers(params, who="test")  # nothing more to resolve


def test_a_dead_runs_unfinished_logged_model_is_failed_too(params):
    registry = Registry.configured(params)
    mc = registry.client
    run_id = open_run(params, dead_owner())
    experiment = mc.get_experiment_by_name(params.registry.experiment).experiment_id
    model = mc.create_logged_model(experiment, source_run_id=run_id, name="model")
    mc.log_outputs(run_id, [LoggedModelOutput(model.model_id, step=0)])
    assert registry.logged_model_status(model.model_id) == "PENDING"
    resolve_leftovers(params, who="test")
    assert registry.logged_model_status(model.model_id) == "FAILED"


# --------------------------------------------------------------------------- versions


def test_a_pending_version_with_its_files_intact_is_completed(params, tmp_path):
    v, run_id = version(params, tmp_path, owner=dead_owner())
    assert versions_table(params).set_index("version").loc[int(v), "registration"] == PENDING

    found = resolve_leftovers(params, who="test")

    assert found.failed_runs == [run_id] and found.completed == [v]
    tags = Registry.of(params).version(params.registry.model_name, v).tags
    assert tags[TAG_REGISTRATION] == COMPLETE and "completed by test" in tags["registration.note"]
    assert versions_table(params).set_index("version").loc[int(v), "registration"] == COMPLETE


@pytest.mark.parametrize(
    ("missing", "reason"),
    [("model_files", "model files are incomplete"), ("evaluation", "eval/report.json")],
)
def test_a_pending_version_missing_files_is_failed_once_its_process_is_gone(
    params, tmp_path, missing, reason
):
    live, _ = version(params, tmp_path, owner=run_owner(), **{missing: False})
    dead, _ = version(params, tmp_path, owner=dead_owner(), digest="sha256:bb", **{missing: False})

    found = resolve_leftovers(params, who="test")

    assert found.failed_versions == [dead] and found.pending == [live]
    assert state(params, dead) == FAILED and state(params, live) == PENDING
    error = Registry.of(params).version(params.registry.model_name, dead).tags
    assert reason in error[TAG_REGISTRATION_ERROR]


def test_the_same_model_and_test_split_find_the_version_already_registered(params, tmp_path):
    registry = Registry.configured(params)
    name = params.registry.model_name
    v, _ = version(params, tmp_path, owner=dead_owner(), digest="sha256:aa")
    broken, _ = version(params, tmp_path, owner=dead_owner(), digest="sha256:bb", evaluation=False)

    found = find_registered(registry, name, "sha256:aa", "t1", who="test")
    assert found is not None and found.version == v
    assert registration_state(found) == COMPLETE  # completed on the way
    assert find_registered(registry, name, "sha256:aa", "t2", who="test") is None  # other split
    assert find_registered(registry, name, "sha256:cc", "t1", who="test") is None
    assert find_registered(registry, name, "sha256:bb", "t1", who="test") is None  # failed
    assert state(params, broken) == FAILED


# --------------------------------------------------------------------------- promotion


def test_promoting_a_pending_version_completes_it_when_intact(params, tmp_path):
    v, _ = version(params, tmp_path, owner=other_host())  # cannot be checked, but intact
    _, promoted = apply(params, v)
    assert promoted
    assert state(params, v) == COMPLETE
    assert alias_version(Registry.of(params), params.registry.model_name, CHAMPION) == v


def test_a_version_that_cannot_be_completed_is_refused_with_how_to_remove_it(params, tmp_path):
    name = params.registry.model_name
    failed, _ = version(params, tmp_path, owner=dead_owner(), model_files=False)
    running, _ = version(params, tmp_path, owner=run_owner(), model_files=False)
    elsewhere, _ = version(params, tmp_path, owner=other_host(), model_files=False)

    with pytest.raises(PromotionError, match=f"--delete {failed}") as exc:
        apply(params, failed)
    assert "registration failed (its model files are incomplete" in str(exc.value)
    with pytest.raises(PromotionError, match="still being registered"):
        apply(params, running)
    with pytest.raises(PromotionError, match=f"cannot be checked.*--delete {elsewhere}"):
        apply(params, elsewhere)
    assert alias_version(Registry.of(params), name, CHAMPION) is None

    remove_version(params, failed)
    remove_version(params, elsewhere)  # the operator says that registration is gone
    with pytest.raises(PromotionError, match="still being registered: not removed"):
        remove_version(params, running)
    assert [mv.version for mv in Registry.of(params).versions(name)] == [running]


def test_a_complete_or_serving_version_is_never_removed(params, tmp_path):
    v, _ = version(params, tmp_path, owner=dead_owner())
    with pytest.raises(PromotionError, match="registered in full"):
        remove_version(params, v)  # intact: completed, not removed
    apply(params, v)
    with pytest.raises(PromotionError, match="is champion: not removed"):
        remove_version(params, v)
    with pytest.raises(PromotionError, match="has no version '9'"):
        remove_version(params, "9")
