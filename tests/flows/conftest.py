"""Flow tests: one throwaway Prefect API for all (it takes ~30 s to start), and a tiny
project that trains a tiny model under git + DVC."""

import pytest
import yaml
from prefect.testing.utilities import prefect_test_harness

from tests.conftest import dvc_project, run
from tests.tasks.tiny_model import make_tiny_model


@pytest.fixture(autouse=True, scope="session")
def prefect_api():
    """Prefect's ephemeral API and database, stopped before pytest closes its streams."""
    with prefect_test_harness(server_startup_timeout=60):
        yield


@pytest.fixture
def project(tiny_project, monkeypatch, git_identity):
    """The tiny project under git + DVC, training a tiny BERT, with low gate floors."""
    from tasks.config import load_params
    from tasks.versioning import track

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    dvc_project(tiny_project)
    params = load_params(tiny_project / "params.yaml")
    track(
        [params.path(params.data.labeled_dir), params.path(params.data.test_dir)],
        tiny_project,
        push=False,
    )
    base = make_tiny_model(tiny_project / "tiny-base")
    raw = yaml.safe_load((tiny_project / "params.yaml").read_text())
    raw["split"] = {"val_fraction": 0.25, "seed": 13}
    raw["train"] = {
        "base_model": str(base),
        "epochs": 3,
        "learning_rate": 3e-3,
        "batch_size": 8,
        "early_stopping_patience": 0,
    }
    raw["evaluate"] = {"latency_samples": 5}
    raw["gate"] = {"min_accuracy": 0.0, "min_macro_f1": 0.0, "significance": "none"}
    (tiny_project / "params.yaml").write_text(yaml.safe_dump(raw))
    assert run(["git", "add", "-A"], tiny_project).returncode == 0
    assert run(["git", "commit", "-qm", "tiny project"], tiny_project).returncode == 0
    monkeypatch.chdir(tiny_project)
    return tiny_project
