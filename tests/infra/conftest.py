"""Real services for the infra tests: a Prefect server, a worker on a process pool and an
MLflow server started by ``infra/services.sh`` on free ports, with every bit of their
state (PIDs, logs, Prefect database, MLflow store) in a temporary folder; the
deployments and their automations registered for a tiny project (code from this
checkout, params from the project). One stack for the whole package:
starting it takes ~30 s. ``infra/services.sh stop`` runs at the end, also on failure.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from slmops.serving.background import free_port
from tests.conftest import GIT_IDENTITY, REPO, training_project

SERVICES = REPO / "infra" / "services.sh"
POOL = "slmops-test"
# Each flow run starts a Python process that imports torch, transformers, MLflow and
# Prefect (10-20 s on 2 busy cores) before the tiny training run itself.
FLOW_RUN_TIMEOUT_S = 300
# Variables of the caller that would point the services at other state.
FOREIGN = (
    "PREFECT_API_URL",
    "PREFECT_API_KEY",
    "PREFECT_PROFILE",
    "PREFECT_API_DATABASE_CONNECTION_URL",
    "PREFECT_SERVER_DATABASE_CONNECTION_URL",
    "MLFLOW_TRACKING_URI",
    "MLFLOW_REGISTRY_URI",
)


@dataclass(frozen=True)
class Stack:
    """Where the services of the test run are, and the project they work on."""

    project: Path
    run_dir: Path
    prefect_api: str  # http://127.0.0.1:N/api
    prefect_ui: str  # http://127.0.0.1:N
    mlflow_uri: str
    env: dict[str, str]  # what infra/services.sh ran with
    start_seconds: float

    def log_tail(self, name: str, lines: int = 60) -> str:
        """The end of a service's log, for failure messages."""
        path = self.run_dir / f"{name}.log"
        if not path.exists():
            return f"({path} does not exist)"
        return f"--- {path} ---\n" + "\n".join(path.read_text().splitlines()[-lines:])


def services(command: str, env: dict[str, str], timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(SERVICES), command],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.fixture(scope="package")
def stack(tmp_path_factory) -> Iterator[Stack]:
    """Services up, deployments registered (schedules paused), clients pointed at them."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from slmops.flows.deployments import deploy_all

    base = tmp_path_factory.mktemp("stack")
    project = training_project(
        base / "project",
        # Three reviewed predictions are enough to make ingestion start a retrain.
        feedback={"retrain_after_labels": 3},
        serve={"poll_seconds": 0},
        # What the run form's profile choice list offers (test_ui.py).
        profiles={"quick": {"train": {"epochs": 1}}, "steady": {"train": {"epochs": 2}}},
    )
    run_dir = base / "run"
    prefect_port, mlflow_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if k not in FOREIGN}
    env.update(GIT_IDENTITY)  # the worker's ingestion runs commit data/labeled.dvc
    env.update(
        SLMOPS_RUN_DIR=str(run_dir),
        SLMOPS_BIN=str(Path(sys.executable).parent),
        SLMOPS_ROOT=str(REPO),
        SLMOPS_WORK_POOL=POOL,
        PREFECT_HOME=str(base / "prefect-home"),
        PREFECT_PORT=str(prefect_port),
        MLFLOW_PORT=str(mlflow_port),
        MLFLOW_BACKEND_STORE_URI=f"sqlite:///{base / 'mlflow' / 'mlflow.db'}",
        MLFLOW_ARTIFACTS_DESTINATION=str(base / "mlflow" / "artifacts"),
        # A run queued behind a deployment's concurrency limit asks again after 5 s
        # (Prefect's default: 30 s), so the one-at-a-time test waits less.
        PREFECT_SERVER_DEPLOYMENTS_CONCURRENCY_SLOT_WAIT_SECONDS="5",
    )
    s = Stack(
        project=project,
        run_dir=run_dir,
        prefect_api=f"http://127.0.0.1:{prefect_port}/api",
        prefect_ui=f"http://127.0.0.1:{prefect_port}",
        mlflow_uri=f"http://127.0.0.1:{mlflow_port}",
        env=env,
        start_seconds=0.0,
    )
    try:
        t0 = time.monotonic()
        started = services("start", env, timeout=400)
        seconds = time.monotonic() - t0
        assert started.returncode == 0, (
            f"infra/services.sh start failed ({started.returncode}):\n"
            f"{started.stdout}\n{started.stderr}"
        )
        print(f"\n[services started in {seconds:.1f} s]\n{started.stdout}", file=sys.stderr)
        s = Stack(**{**s.__dict__, "start_seconds": seconds})
        with (
            pytest.MonkeyPatch.context() as mp,
            temporary_settings({PREFECT_API_URL: s.prefect_api}),
        ):
            mp.setenv("MLFLOW_TRACKING_URI", s.mlflow_uri)
            mp.setenv("PREFECT_API_URL", s.prefect_api)  # for subprocesses of the tests
            for key, value in GIT_IDENTITY.items():
                mp.setenv(key, value)
            deploy_all(REPO, params_path=project / "params.yaml", pool=POOL, paused=True)
            yield s
    finally:
        stopped = services("stop", env, timeout=120)
        print(f"\n[services stopped]\n{stopped.stdout}{stopped.stderr}", file=sys.stderr)


def deployment_runs(name: str) -> list:
    """The flow runs of deployment ``name`` (``flow/deployment``), newest first."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
    from prefect.client.schemas.sorting import FlowRunSort

    with get_client(sync_client=True) as client:
        deployment = client.read_deployment_by_name(name)
        return client.read_flow_runs(
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment.id])),
            sort=FlowRunSort.EXPECTED_START_TIME_DESC,
            limit=50,
        )


def wait_for_new_runs(
    name: str, before: set, count: int = 1, timeout: float = 90, settle: float = 5
) -> list:
    """The runs of deployment ``name`` not in ``before``, once ``count`` of them exist (an
    automation creates its run a few seconds after the event) and ``settle`` seconds more
    brought no other; oldest first. Fails after ``timeout`` seconds with fewer."""
    deadline = time.monotonic() + timeout
    while len(new := [r for r in deployment_runs(name) if r.id not in before]) < count:
        if time.monotonic() > deadline:
            pytest.fail(f"{len(new)} new run(s) of {name} after {timeout:.0f} s, not {count}")
        time.sleep(1)
    time.sleep(settle)
    new = [r for r in deployment_runs(name) if r.id not in before]
    return sorted(new, key=lambda r: r.created)


def wait_for_final_state(stack: Stack, flow_run_id, timeout: float = FLOW_RUN_TIMEOUT_S):
    """The flow run once it reached a final state; fails with the worker's log after
    ``timeout`` seconds, and when the run did not complete."""
    from prefect.client.orchestration import get_client

    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while True:
            run = client.read_flow_run(flow_run_id)
            if run.state is not None and run.state.is_final():
                break
            if time.monotonic() > deadline:
                pytest.fail(
                    f"flow run {run.name} still {run.state_name} after {timeout:.0f} s\n"
                    + stack.log_tail("prefect-worker")
                )
            time.sleep(2)
    assert run.state.is_completed(), (
        f"flow run {run.name} ended {run.state_name}: {run.state.message}\n"
        + stack.log_tail("prefect-worker")
    )
    return run
