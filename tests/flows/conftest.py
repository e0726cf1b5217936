"""One throwaway Prefect API for all flow tests (it takes ~30 s to start)."""

import pytest
from prefect.testing.utilities import prefect_test_harness


@pytest.fixture(autouse=True, scope="session")
def prefect_api():
    """Prefect's ephemeral API and database, stopped before pytest closes its streams."""
    with prefect_test_harness(server_startup_timeout=60):
        yield
