"""Flow tests: one throwaway Prefect API for all (it takes ~30 s to start), and a tiny
project that trains a tiny model under git + DVC."""

import pytest
from prefect.logging.configuration import setup_logging
from prefect.testing.utilities import prefect_test_harness

from tests.conftest import training_project


@pytest.fixture(autouse=True, scope="session")
def prefect_api():
    """Prefect's ephemeral API and database, stopped before pytest closes its streams."""
    # Prefect's logging set up now, once: set up by the first flow run instead, its
    # dictConfig would drop the root handlers of a test's caplog, and which test sees
    # the flows' log lines would depend on the order the tests run in.
    setup_logging()
    with prefect_test_harness(server_startup_timeout=60):
        yield


@pytest.fixture
def project(tmp_path, monkeypatch, git_identity):
    """The tiny project under git + DVC, training a tiny BERT, with low gate floors."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    root = training_project(tmp_path)
    monkeypatch.chdir(root)
    return root
