"""Real services for the infra tests: a Prefect server, a worker on a process pool and an
MLflow server started by ``infra/services.sh`` on free ports, with every bit of their
state (PIDs, logs, Prefect database, MLflow store) in a temporary folder; the
deployments and their automations registered for a tiny project (code from this
checkout, params from the project). One stack for the whole package
(:func:`running_stack` starts another, e.g. on PostgreSQL, for a module of its own):
starting it takes ~30 s. ``infra/services.sh stop`` runs at the end, also on failure.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
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

# The Label Studio admin's API token for this session, known before either server
# starts: `label_studio` starts Label Studio with it, and the stack's worker has it in
# LABEL_STUDIO_API_KEY, so an ingestion run there can pull from that server.
LABEL_STUDIO_TOKEN = secrets.token_hex(20)


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


def plain(url: str) -> str:
    """psycopg's own form of a SQLAlchemy URL."""
    return url.replace("+psycopg", "").replace("+asyncpg", "")


def environ_of(pid_file: Path) -> dict[str, str]:
    """The environment a service runs with (its PID from ``pid_file``)."""
    raw = Path(f"/proc/{pid_file.read_text().strip()}/environ").read_bytes().decode()
    return dict(item.split("=", 1) for item in raw.split("\0") if "=" in item)


@contextmanager
def running_stack(
    base: Path, project: Path, extra_env: dict[str, str] | None = None
) -> Iterator[Stack]:
    """Services up (state under ``base``; ``extra_env`` added to what
    ``infra/services.sh`` runs with), deployments registered for ``project`` (schedules
    paused), clients pointed at them until the block ends; then the services stopped."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from slmops.flows.deployments import deploy_all

    run_dir = base / "run"
    prefect_port, mlflow_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if k not in FOREIGN}
    env.update(GIT_IDENTITY)  # the worker's ingestion runs commit data/labeled.dvc
    env["LABEL_STUDIO_API_KEY"] = LABEL_STUDIO_TOKEN  # its ingestion pulls from Label Studio
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
    env.update(extra_env or {})
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


@pytest.fixture(scope="package")
def stack(tmp_path_factory) -> Iterator[Stack]:
    """Services up, deployments registered (schedules paused), clients pointed at them."""
    base = tmp_path_factory.mktemp("stack")
    project = training_project(
        base / "project",
        # Three reviewed predictions are enough to make ingestion start a retrain.
        feedback={"retrain_after_labels": 3},
        serve={"poll_seconds": 0},
        # What the run form's profile choice list offers (test_ui.py).
        profiles={"quick": {"train": {"epochs": 1}}, "steady": {"train": {"epochs": 2}}},
    )
    with running_stack(base, project) as s:
        yield s


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


LABEL_STUDIO_SH = REPO / "infra" / "label-studio.sh"
# label-studio's own virtual environment: SLMOPS_LS_VENV when set (a CI cache), else
# the script's default, kept between test sessions (installing takes ~70 s and 1 GB).
LABEL_STUDIO_VENV = Path(
    os.environ.get("SLMOPS_LS_VENV") or REPO / ".run" / "label-studio" / "venv"
)


@dataclass(frozen=True)
class LabelStudioServer:
    """A Label Studio server started by ``infra/label-studio.sh`` for the tests."""

    url: str  # http://127.0.0.1:PORT
    token: str  # the admin's legacy API token (`Authorization: Token ...`)
    username: str  # the admin's e-mail (the login name)
    password: str
    run_dir: Path  # SLMOPS_LS_DIR: data/, log, pid, port, token, password
    env: dict[str, str]  # what infra/label-studio.sh ran with (SLMOPS_LS_DIR, _VENV)
    start_seconds: float

    def script(self, *args: str) -> subprocess.CompletedProcess:
        """``infra/label-studio.sh <args>`` for this server."""
        return label_studio_sh(*args, env=self.env)

    def add_user(self, email: str, password: str) -> str:
        """Sign a user up through the organisation's invite link (how Label Studio adds
        people: the API makes users without a password or organisation) and return the
        user's API token (a legacy token, `Authorization: Token ...`)."""
        import httpx  # deferred: only the Label Studio tests need it

        admin = {"Authorization": f"Token {self.token}"}
        invite = httpx.get(f"{self.url}/api/invite", headers=admin, timeout=30)
        assert invite.status_code == 200, invite.text
        link = invite.json()["invite_url"]
        with httpx.Client(base_url=self.url, timeout=30) as session:
            session.get(link)  # sets the CSRF cookie
            csrf = session.cookies["csrftoken"]
            signed = session.post(
                link,
                data={"email": email, "password": password, "csrfmiddlewaretoken": csrf},
                headers={"Referer": f"{self.url}{link}"},
            )
            assert signed.status_code in (200, 302), signed.text[-500:]
            token = session.get("/api/current-user/token")
            assert token.status_code == 200, f"{email} not signed up: {token.text}"
            return token.json()["token"]

    def review_project(
        self, root: Path, title: str, predictions: list[tuple[str, str]], monkeypatch
    ) -> Path:
        """A tiny project at ``root`` pointed at this server (its review project
        ``title``, the token in ``LABEL_STUDIO_API_KEY``) whose feedback store holds
        ``predictions`` (text, the model's label) nobody reviewed, least sure first."""
        from slmops.tasks.core.config import load_params  # deferred: torch via the store
        from slmops.tasks.feedback.store import FeedbackStore, NewPrediction  # (same)

        project = training_project(root, label_studio={"url": self.url, "project_title": title})
        monkeypatch.setenv("LABEL_STUDIO_API_KEY", self.token)
        with FeedbackStore.from_params(load_params(project / "params.yaml")) as store:
            store.log_predictions(
                [
                    NewPrediction(text, label, 0.3 + i / 10, [], "slmops-intent", "1")
                    for i, (text, label) in enumerate(predictions)
                ]
            )
        return project

    def log_tail(self, lines: int = 60) -> str:
        """The end of the server's log, for failure messages."""
        path = self.run_dir / "log"
        if not path.exists():
            return f"({path} does not exist)"
        return f"--- {path} ---\n" + "\n".join(path.read_text().splitlines()[-lines:])


def label_studio_sh(*args: str, env: dict[str, str], timeout: float = 600):
    """``infra/label-studio.sh <args>`` with ``env``, its output captured."""
    return subprocess.run(
        [str(LABEL_STUDIO_SH), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,  # `install` downloads label-studio
        check=False,
    )


@pytest.fixture(scope="package")
def label_studio(tmp_path_factory) -> Iterator[LabelStudioServer]:
    """A Label Studio server on a free port with its data in a temporary folder, its
    admin user and API token made by the script; stopped (and its folder removed) at
    the end. Skipped when label-studio cannot be installed (no package index)."""
    run_dir = tmp_path_factory.mktemp("label-studio")
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("SLMOPS_LS_")},
        "SLMOPS_LS_DIR": str(run_dir),
        "SLMOPS_LS_VENV": str(LABEL_STUDIO_VENV),
    }
    # The token the script would make, made here: the stack's worker has it already.
    token = run_dir / "token"
    token.write_text(LABEL_STUDIO_TOKEN + "\n")
    token.chmod(0o600)
    t0 = time.monotonic()
    installed = label_studio_sh("install", env=env)
    if installed.returncode != 0:
        pytest.skip(f"label-studio could not be installed: {installed.stderr.strip()[-300:]}")
    print(f"\n[label-studio install: {time.monotonic() - t0:.1f} s]", file=sys.stderr)
    try:
        t0 = time.monotonic()
        started = label_studio_sh("start", env=env)
        seconds = time.monotonic() - t0
        assert started.returncode == 0, started.stdout + started.stderr
        print(f"[label-studio started in {seconds:.1f} s] {started.stdout}", file=sys.stderr)

        def read(name: str) -> str:
            done = label_studio_sh(name, env=env)
            assert done.returncode == 0, done.stderr
            return done.stdout.strip()

        yield LabelStudioServer(
            url=read("url"),
            token=read("token"),
            username=read("user"),
            password=read("password"),
            run_dir=run_dir,
            env=env,
            start_seconds=seconds,
        )
    finally:
        stopped = label_studio_sh("stop", "--remove", env=env, timeout=120)
        print(f"\n[label-studio stopped] {stopped.stdout}{stopped.stderr}", file=sys.stderr)
