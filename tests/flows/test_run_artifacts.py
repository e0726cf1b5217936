"""What a retrain run shows in the Prefect UI: the train step's progress artifact and its
progress lines in the run's log, the evaluation artifact (metrics, gate decision, the
weakest classes, where the version is in MLflow), for a promoted and a refused run."""

from __future__ import annotations

import re

import pytest
import yaml

from slmops.flows.run_artifacts import (
    evaluation_markdown,
    metrics_table,
    mlflow_link,
    progress_line,
    weakest_table,
)
from tests.prefect_api import flow_run_artifacts, wait_for_logs

PROGRESS = re.compile(r"epoch \d+/\d+, step (\d+)/(\d+) \(\d+%\): loss \d+\.\d+, [\d.]+ examples/s")
PER_CLASS = {
    "card_arrival": {"precision": 0.9, "recall": 0.8, "f1": 0.85, "support": 10},
    "top_up_failed": {"precision": 0.2, "recall": 0.1, "f1": 0.1333, "support": 5},
    "exchange_rate": {"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 4},
    "never_in_test": {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0},
}


def test_progress_line_says_epoch_step_loss_and_throughput():
    report = {
        "epoch": 2,
        "epochs": 3,
        "step": 140,
        "steps": 210,
        "percent": 66.67,
        "loss": 0.41234,
        "examples_per_s": 85.24,
    }
    line = progress_line(report)
    assert line == "epoch 2/3, step 140/210 (67%): loss 0.4123, 85.2 examples/s"
    assert PROGRESS.fullmatch(line)


def test_metrics_table_with_and_without_the_champion():
    metrics = {"accuracy": 0.8125, "macro_f1": 0.75, "n": 20, "per_class": PER_CLASS}
    assert metrics_table(metrics) == [
        "| metric | value |",
        "|---|---|",
        "| accuracy | 0.8125 |",
        "| macro_f1 | 0.7500 |",
        "| n | 20 |",
    ]
    beside = metrics_table(metrics, {"accuracy": 0.8}, "champion (version 1)")
    assert beside[0] == "| metric | this version | champion (version 1) |"
    assert "| accuracy | 0.8125 | 0.8000 |" in beside
    assert "| macro_f1 | 0.7500 | n/a |" in beside


def test_weakest_classes_are_the_lowest_f1_among_those_in_the_test_split():
    rows = weakest_table(PER_CLASS, n=2)
    assert rows[2].startswith("| top_up_failed | 0.1333 |")
    assert rows[3].startswith("| exchange_rate | 0.5000 |")
    assert len(rows) == 4  # header, rule, two classes; support 0 is not weak, it is absent
    assert weakest_table({}) == []


def test_mlflow_link_is_the_version_page_on_a_server_else_the_ui_command():
    assert mlflow_link("http://127.0.0.1:5000/", "slmops intent", "3") == (
        "[slmops intent version 3](http://127.0.0.1:5000/#/models/slmops%20intent/versions/3)"
        " in the MLflow UI"
    )
    local = mlflow_link("sqlite:///mlflow/mlflow.db", "slmops-intent", "3")
    assert local.startswith("`mlflow ui --backend-store-uri sqlite:///mlflow/mlflow.db`")
    assert "slmops-intent → version 3" in local


def test_evaluation_markdown_of_a_refused_version():
    text = evaluation_markdown(
        model="slmops-intent",
        version="2",
        metrics={"accuracy": 0.7, "macro_f1": 0.6},
        report={"per_class": PER_CLASS},
        decision="refuse: macro-F1 gain 0.0100 < 0.0500",
        promoted=False,
        tracking_uri="http://mlflow:5000",
        checks=[
            {"rule": "min_macro_f1_gain", "passed": False, "value": 0.01, "threshold": 0.05},
            {"rule": "min_accuracy", "passed": True, "value": 0.7, "threshold": 0.5},
        ],
        champion="1",
        champion_metrics={"accuracy": 0.72, "macro_f1": 0.59},
    )
    assert "**Gate: not promoted** (against version 1) — refuse: macro-F1 gain" in text
    assert "| accuracy | 0.7000 | 0.7200 |" in text
    assert "| min_macro_f1_gain | **no** | 0.0100 | 0.0500 |" in text
    assert "| top_up_failed | 0.1333 |" in text
    assert "http://mlflow:5000/#/models/slmops-intent/versions/2" in text


@pytest.mark.slow
def test_retrain_runs_publish_progress_and_evaluation_artifacts(project, monkeypatch):
    from slmops.flows import run_artifacts
    from slmops.flows.retrain import retrain

    params_file = project / "params.yaml"
    raw = yaml.safe_load(params_file.read_text())
    raw["train"]["report_every_seconds"] = 0  # a report at every step
    params_file.write_text(yaml.safe_dump(raw))
    published: list[float] = []
    update = run_artifacts.update_progress_artifact

    def recorded(artifact_id, progress, **kwargs):
        published.append(progress)
        return update(artifact_id, progress, **kwargs)

    monkeypatch.setattr(run_artifacts, "update_progress_artifact", recorded)

    state = retrain(params_path=str(params_file), trigger="test", return_state=True)
    assert state.is_completed(), state.message
    first = state.state_details.flow_run_id

    # The train step moved its progress artifact at every step, up to 100 %.
    steps = 3 * 7  # 3 epochs of 50 examples in batches of 8
    assert len(published) == steps + 1  # every step, then "training done"
    assert published == sorted(published) and published[0] < 10 and published[-1] == 100.0
    artifacts = flow_run_artifacts(first)
    progress = artifacts["train-progress"]
    assert progress.type == "progress" and progress.data == 100.0
    assert progress.task_run_id is not None  # on the train step's task run too
    evaluation = artifacts["evaluation"]
    assert evaluation.type == "markdown"
    assert "# Evaluation: slmops-intent version 1" in evaluation.data
    assert "**Gate: promoted**" in evaluation.data
    assert re.search(r"\| accuracy \| \d\.\d{4} \|", evaluation.data)
    assert "## Weakest classes" in evaluation.data
    assert "`mlflow ui --backend-store-uri sqlite:///" in evaluation.data
    # The summary's table is the same renderer's.
    assert "| metric | value |" in artifacts["retrain-summary"].data

    # The run's log holds the train step's progress lines and its epoch lines.
    messages = wait_for_logs(first, lambda m: sum(bool(PROGRESS.search(x)) for x in m) >= steps)
    reported = [int(m[1]) for x in messages if (m := PROGRESS.search(x))]
    assert reported == list(range(1, steps + 1))
    assert sum(x.startswith("epoch ") and ": train loss" in x for x in messages) == 3

    # A refused run has its evaluation artifact too, judged against the champion.
    state = retrain(
        params_path=str(params_file),
        epochs=1,
        gate_rules={"min_macro_f1_gain": 0.5},
        trigger="test",
        return_state=True,
    )
    assert state.is_completed(), state.message
    evaluation = flow_run_artifacts(state.state_details.flow_run_id)["evaluation"]
    assert "**Gate: not promoted** (against version 1)" in evaluation.data
    assert "| metric | this version | champion (version 1) |" in evaluation.data
    assert "| min_macro_f1_gain | **no** |" in evaluation.data
