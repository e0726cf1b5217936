"""The whole loop on real services: a scheduled-style retrain run on the worker
registers and promotes a model in the MLflow server; the prediction service serves it
and takes feedback; the ingestion deployment turns the feedback into a new DVC version
and emits the event on which the retrain deployment's automation starts a run, which
trains on that version."""

from __future__ import annotations

import httpx
import pytest
import yaml

from slmops.serving.background import free_port, serve_in_thread
from tests.conftest import run
from tests.infra.conftest import (
    FLOW_RUN_TIMEOUT_S,
    Stack,
    deployment_runs,
    wait_for_final_state,
    wait_for_new_runs,
)

pytestmark = [pytest.mark.slow, pytest.mark.integration]

TOKEN = "integration-token-0123456789"
# Reviewed texts and their true labels (the tiny project's label set).
REVIEWED = [
    ("where is the card you posted to me", "card_arrival"),
    ("my top up did not go through at all", "top_up_failed"),
    ("someone stole my card this morning", "lost_or_stolen_card"),
]


def dvc_hash(project, name: str) -> str:
    """The md5 that ``data/<name>.dvc`` records (what training tags as its data version)."""
    return yaml.safe_load((project / "data" / f"{name}.dvc").read_text())["outs"][0]["md5"]


def test_retrain_serve_feedback_and_retrain_again(stack: Stack, monkeypatch):
    from mlflow import MlflowClient
    from prefect.deployments import run_deployment

    from slmops.tasks.core.config import load_params
    from slmops.tasks.data.dataset import read_labeled
    from slmops.tasks.feedback.ingest import RETRAIN_MARK, watermark
    from slmops.tasks.feedback.store import FeedbackStore

    project = stack.project
    params = load_params(project / "params.yaml")
    name = params.registry.model_name
    mlflow = MlflowClient(tracking_uri=stack.mlflow_uri, registry_uri=stack.mlflow_uri)
    # The stack is shared: other tests of the package may have run retrains and
    # ingestions before this one. Everything below is relative to where it stands.
    with FeedbackStore.from_params(params) as store:
        read_before = watermark(store)
    feedback_rows_before = len(read_labeled(params).query("source == 'feedback'"))

    # 1. The weekly retrain, started through the API like the schedule would (force: it
    # trains even when an earlier test's run trained on this data already).
    first = run_deployment(
        "retrain/weekly", parameters={"force": True}, timeout=FLOW_RUN_TIMEOUT_S, as_subflow=False
    )
    wait_for_final_state(stack, first.id)
    # The version it registered trained on the current data version. Whether the gate
    # promoted it depends on what earlier tests of the package left as champion (a tiny
    # random model on other data may score lower): the champion is served either way.
    newest = max(mlflow.search_model_versions(f"name='{name}'"), key=lambda v: int(v.version))
    assert newest.tags["data.labeled_hash"] == dvc_hash(project, "labeled"), newest.tags
    assert newest.tags["gate.decision"] in {"promoted", "refused"}, newest.tags
    champion = mlflow.get_model_version_by_alias(name, "champion")
    # Everything went to the servers' stores, nothing to the project's own.
    assert not (project / "mlflow" / "mlflow.db").exists()
    assert any((stack.run_dir.parent / "mlflow" / "artifacts").rglob("model.safetensors"))

    # 2. The prediction service serves the champion and takes reviewers' labels.
    monkeypatch.setenv(params.serve.token_env, TOKEN)
    with serve_in_thread(params, free_port()) as url:
        model = httpx.get(f"{url}/model", timeout=10).json()
        assert (model["name"], model["version"]) == (name, champion.version)
        answers = httpx.post(
            f"{url}/predict", json={"texts": [t for t, _ in REVIEWED]}, timeout=60
        ).json()["predictions"]
        assert [a["model_version"] for a in answers] == [champion.version] * len(REVIEWED)
        for answer, (_, label) in zip(answers, REVIEWED, strict=True):
            response = httpx.post(
                f"{url}/feedback",
                json={"prediction_id": answer["prediction_id"], "label": label, "user": "qa"},
                headers={"Authorization": f"Bearer {TOKEN}"},
                timeout=10,
            )
            assert response.status_code == 201, response.text
    labeled_before = dvc_hash(project, "labeled")
    retrains_before = {r.id for r in deployment_runs("retrain/weekly")}

    # 3. Ingestion on the worker: a new data version, committed, and a retrain started.
    ingest = run_deployment("ingest_feedback/hourly", timeout=FLOW_RUN_TIMEOUT_S, as_subflow=False)
    wait_for_final_state(stack, ingest.id)
    labeled_after = dvc_hash(project, "labeled")
    assert labeled_after != labeled_before
    log = run(["git", "log", "-1", "--format=%s", "--", "data/labeled.dvc"], project).stdout
    ids = f"{read_before + 1}-{read_before + len(REVIEWED)}"
    assert log.startswith(f"data: feedback {ids}: {len(REVIEWED)} added"), log
    assert run(["git", "status", "--porcelain", "data/labeled.dvc"], project).stdout == ""
    feedback_rows = len(read_labeled(params).query("source == 'feedback'"))
    assert feedback_rows == feedback_rows_before + len(REVIEWED)
    with FeedbackStore.from_params(params) as store:
        assert watermark(store) == read_before + len(REVIEWED)
        assert watermark(store, RETRAIN_MARK) == read_before + len(REVIEWED)

    # The ingestion's event; the deployment's automation starts the run.
    triggered = wait_for_new_runs("retrain/weekly", retrains_before)
    assert len(triggered) == 1, [r.name for r in triggered]
    assert triggered[0].parameters["trigger"] == "feedback"
    assert triggered[0].parameters["params_path"] == str(project / "params.yaml")
    wait_for_final_state(stack, triggered[0].id)

    # 4. The triggered retrain registered a version trained on the new data version.
    (second,) = [
        v
        for v in mlflow.search_model_versions(f"name='{name}'")
        if v.tags.get("data.labeled_hash") == labeled_after
    ]
    assert second.tags["gate.decision"] in {"promoted", "refused"}
    assert mlflow.get_model_version_by_alias(name, "champion").version in {
        champion.version,
        second.version,
    }
    # The live accuracy of the served version on the feedback was recorded on it.
    live = mlflow.get_model_version(name, champion.version).tags
    assert live.get("live.feedback_rows") == str(len(REVIEWED)), live
