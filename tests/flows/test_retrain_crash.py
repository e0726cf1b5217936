"""The retrain flow after a registration killed midway (SIGKILL in a child process, at two
points): its first step resolves the leftover runs and version, registration returns
the version already registered for the same model, and a re-run on unchanged data
registers nothing new. How the kill is done: ``tests/tasks/pipeline/test_crash_safety.py``."""

import pytest

from tests.conftest import training_project
from tests.tasks.pipeline.test_crash_safety import assert_consistent, kill_run

pytestmark = pytest.mark.slow

# Where registration is killed: while the model files are uploaded (the run RUNNING,
# its logged model PENDING, no version yet); after the version is created, before the
# run ends (the run RUNNING, the version's registration pending).
KILLS = {
    "mid-model-upload": """
        from mlflow import MlflowClient
        MlflowClient.log_model_artifacts = die
    """,
    "after-version": """
        import slmops.tasks.pipeline.challenger as c
        c.register = then_die(c.register)
    """,
}
REGISTER = """
from slmops.tasks.pipeline.challenger import register_challenger
register_challenger(params)
"""


@pytest.fixture
def project(tmp_path, monkeypatch, git_identity):
    """The tiny training project, without the export (not what is tested here)."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    root = training_project(tmp_path, export={"enabled": False})
    monkeypatch.chdir(root)
    return root


def test_a_registration_killed_midway_is_resolved_by_the_next_flow_run(project):
    from slmops.flows.retrain import retrain
    from slmops.tasks.core.config import load_params
    from slmops.tasks.pipeline.challenger import evaluate_challenger, train_challenger
    from slmops.tasks.pipeline.prepare import write_splits
    from slmops.tasks.registry.promotion import versions_table
    from slmops.tasks.registry.registration import TAG_RESOLVED
    from slmops.tasks.registry.store import Registry

    params_path = str(project / "params.yaml")
    params = load_params(params_path)
    name, experiment = params.registry.model_name, params.registry.experiment
    registry = Registry.of(params)
    write_splits(params)
    train_challenger(params, progress=False)
    evaluate_challenger(params)
    for body in KILLS.values():
        kill_run(project, body, REGISTER)

    killed = registry.runs(experiment, "RUNNING")
    assert len(killed) == 2
    models = [m for r in killed for m in r.model_ids]
    assert [registry.logged_model_status(m) for m in models].count("PENDING") == 1
    assert versions_table(params)["registration"].tolist() == ["pending"]

    result = retrain(params_path=params_path, trigger="test")

    # The leftover runs were marked FAILED (with why), the half-uploaded model too.
    assert registry.runs(experiment, "RUNNING") == []
    for run in killed:
        after = registry.run(run.run_id)
        assert (
            after.status == "FAILED"
            and "left RUNNING by a process that is gone" in (after.tags[TAG_RESOLVED])
        )
    assert "PENDING" not in [registry.logged_model_status(m) for m in models]
    resolved = result["leftovers"]  # what the flow's first step reports
    assert sorted(resolved["failed_runs"]) == sorted(r.run_id for r in killed)
    assert resolved["completed"] == ["1"]
    # The same model retrained: the version the killed registration created, completed
    # and gated (was: version 1 left pending for ever beside a version 2).
    assert (result["version"], result["promoted"]) == ("1", True)
    assert versions_table(params)["registration"].tolist() == ["complete"]
    assert assert_consistent(params) == "1"
    # Nothing logged twice: the flow's run trained the same model again, and says so
    # instead of logging a second copy of it.
    for run in registry.runs(experiment, "FINISHED"):
        assert run.tags["slmops.duplicate_of"] == f"{name} version 1" and not run.model_ids

    # Unchanged data again, forced past the recipe check (which would skip training):
    # the same model, which is the champion: nothing new.
    again = retrain(params_path=params_path, trigger="test", force=True)
    assert (again["version"], again["promoted"]) == ("1", False)
    assert "champion already" in again["decision"]
    assert not any(again["leftovers"].values())  # nothing left over this time
    assert [v.version for v in registry.versions(name)] == ["1"]
    assert assert_consistent(params) == "1"
