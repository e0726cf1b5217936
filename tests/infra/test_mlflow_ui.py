"""MLflow's model comparison, as a person uses it: two registered versions of a tiny
model, ``mlflow ui`` on the project's store (the command the README gives), the
registered model's page → tick both versions → Compare; the comparison page shows
each version's test accuracy and macro-F1. Headless Chromium, as in ``test_ui.py``."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from slmops.serving.background import free_port
from tests.conftest import GIT_IDENTITY, training_project
from tests.infra.test_ui import page  # noqa: F401 (the fixture)

pytestmark = [pytest.mark.slow, pytest.mark.integration, pytest.mark.browser]

MODEL = "slmops-intent"
START_TIMEOUT_S = 120


@pytest.fixture
def two_versions(tmp_path: Path, monkeypatch) -> tuple[Path, dict[str, dict[str, float]]]:
    """A tiny project with two registered versions (two seeds); their test metrics."""
    from slmops.tasks.core.config import load_params, with_overrides
    from slmops.tasks.pipeline.challenger import (
        evaluate_challenger,
        register_challenger,
        train_challenger,
    )
    from slmops.tasks.pipeline.prepare import write_splits

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    for key, value in GIT_IDENTITY.items():
        monkeypatch.setenv(key, value)
    root = training_project(tmp_path / "project", train={"epochs": 1}, export={"enabled": False})
    monkeypatch.chdir(root)
    params = load_params(root / "params.yaml")
    write_splits(params)
    metrics = {}
    for seed in (13, 7):
        p = with_overrides(params, {"train": {"seed": seed}})
        train_challenger(p, progress=False, trigger="test")
        evaluated = evaluate_challenger(p)
        registered = register_challenger(p, trigger="test")
        assert not registered.reused
        metrics[registered.version] = evaluated.metrics
    return root, metrics


@pytest.fixture
def mlflow_ui(two_versions, tmp_path: Path) -> Iterator[str]:
    """``mlflow ui --backend-store-uri sqlite:///…`` on the project's store; its URL."""
    root, _ = two_versions
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    # As infra/services.sh: no telemetry, no job runner processes.
    env.update(MLFLOW_DISABLE_TELEMETRY="true", MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
    log = (tmp_path / "mlflow-ui.log").open("w")
    proc = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "mlflow"),
            "ui",
            "--backend-store-uri",
            f"sqlite:///{root / 'mlflow' / 'mlflow.db'}",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        cwd=root,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group: stopped whole below
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(
                    f"mlflow ui did not answer:\n{(tmp_path / 'mlflow-ui.log').read_text()}"
                )
            time.sleep(0.5)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


def test_the_comparison_page_of_two_versions_shows_their_accuracy_and_macro_f1(
    two_versions,
    mlflow_ui: str,
    page,  # noqa: F811 (the fixture)
):
    from playwright.sync_api import expect

    _, metrics = two_versions
    versions = sorted(metrics, key=int)
    # The registered model's page: tick both versions, then Compare.
    page.goto(f"{mlflow_ui}/#/models/{MODEL}")
    for version in versions:
        row = page.get_by_role("row").filter(has_text=f"Version {version}")
        row.get_by_role("checkbox").check()
    page.get_by_role("button", name="Compare", exact=True).click()
    expect(page).to_have_url(re.compile(r".*#/compare-model-versions\?.*"))
    # The metrics section shows only the metrics that differ by default: all of them.
    diff_only = page.get_by_role("rowheader").filter(has_text="Metrics").get_by_role("switch")
    if diff_only.is_checked():
        diff_only.click()
    for key in ("test_accuracy", "test_macro_f1"):
        row = page.get_by_role("row").filter(
            has=page.get_by_role("rowheader", name=re.compile(rf"^{key}\b"))
        )
        expect(row).to_be_visible()
        # One cell per version, in the order ticked, each value as MLflow rounds it.
        shown = [shown_value(metrics[v][key.removeprefix("test_")]) for v in versions]
        expect(row.get_by_role("cell")).to_have_text(shown)


def shown_value(value: float) -> str:
    """A metric as the comparison page prints it: at most three decimals."""
    return f"{round(float(value), 3):g}"
