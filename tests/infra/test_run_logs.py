"""A retrain run on the worker, watched as a person watches it in the Prefect UI: the
flow run's log (read back through the API) holds the train step's progress lines and
its epoch lines, and the run has the ``train-progress`` artifact at 100 % and the
``evaluation`` artifact linking to the version's page on the MLflow server.

Independent of the other infra tests' order: it trains whatever the project holds,
with settings no other run used (2 epochs, a report at every step)."""

from __future__ import annotations

import re

import pytest
import yaml

from tests.infra.conftest import Stack, wait_for_final_state
from tests.prefect_api import flow_run_artifacts, flow_run_logs, wait_for_logs

pytestmark = [pytest.mark.slow, pytest.mark.integration]

EPOCHS = 2
PROGRESS = re.compile(
    r"^epoch (\d+)/(\d+), step (\d+)/(\d+) \(\d+%\): loss \d+\.\d+, [\d.]+ examples/s$"
)
EPOCH_LINE = re.compile(r"^epoch (\d+)/(\d+): train loss \d+\.\d+, val loss")


def test_worker_run_logs_training_progress_and_has_its_artifacts(stack: Stack):
    from prefect.deployments import run_deployment

    from slmops.tasks.core.config import load_params

    params_file = stack.project / "params.yaml"
    original = params_file.read_text()
    raw = yaml.safe_load(original)
    raw["train"].update(epochs=EPOCHS, report_every_seconds=0)
    params_file.write_text(yaml.safe_dump(raw))
    try:
        # As the schedule, the UI's Quick run or an automation start it: on the worker.
        started = run_deployment("retrain/weekly", timeout=0, as_subflow=False)
        run = wait_for_final_state(stack, started.id)
    finally:
        params_file.write_text(original)  # the project as the other tests know it

    messages = wait_for_logs(
        run.id, lambda m: sum(bool(EPOCH_LINE.match(x)) for x in m) >= EPOCHS, timeout=60
    )
    epochs = [m.groups() for x in messages if (m := EPOCH_LINE.match(x))]
    assert epochs == [(str(e), str(EPOCHS)) for e in range(1, EPOCHS + 1)], messages
    # A progress line at every step of both epochs (the steps of all epochs counted).
    progress = [m.groups() for x in messages if (m := PROGRESS.match(x))]
    assert progress, messages
    steps = int(progress[0][3])
    assert [int(p[2]) for p in progress] == list(range(1, steps + 1)), messages
    assert {(p[3], p[1]) for p in progress} == {(str(steps), str(EPOCHS))}
    assert steps % EPOCHS == 0 and [p[0] for p in progress].count("2") == steps // EPOCHS

    artifacts = flow_run_artifacts(run.id)
    bar = artifacts["train-progress"]
    assert (bar.type, bar.data) == ("progress", 100.0)
    # The lines and the bar belong to the train step's task run.
    train_lines = [log for log in flow_run_logs(run.id) if PROGRESS.match(log.message)]
    assert {log.task_run_id for log in train_lines} == {bar.task_run_id}

    evaluation = artifacts["evaluation"]
    assert evaluation.type == "markdown"
    name = load_params(params_file).registry.model_name
    version = re.search(rf"# Evaluation: {name} version (\d+)", evaluation.data)
    assert version, evaluation.data
    assert "**Gate: " in evaluation.data and "| accuracy |" in evaluation.data
    link = f"{stack.mlflow_uri}/#/models/{name}/versions/{version[1]}"
    assert link in evaluation.data, evaluation.data
