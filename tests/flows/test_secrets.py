"""Secrets never land in MLflow (params, tags, metric names, artifacts), in logs, in
Prefect's logs, artifacts and run records, in reports/ or in the ledger."""

import contextlib
import io
import logging

import pytest

from tests.flows.feedback import corrections_past_the_threshold
from tests.webhook import Webhook

pytestmark = pytest.mark.slow

SECRETS_IN_ENV = {
    "SLMOPS_API_TOKEN": "sentinel-api-token-8f3a61",
    "MLFLOW_TRACKING_PASSWORD": "sentinel-mlflow-password-2b7c94",
    "AWS_SECRET_ACCESS_KEY": "sentinel-aws-secret-9d1e27",
}
TOKEN_FILE_SECRET = "sentinel-token-file-5c6d03"
WEBHOOK_SECRET = "sentinel-webhook-path-7e2f58"
DB_PASSWORD = "sentinel-db-password-4a9b12"
SENTINELS = [*SECRETS_IN_ENV.values(), TOKEN_FILE_SECRET, WEBHOOK_SECRET, DB_PASSWORD]


def _prefect_records() -> list[str]:
    """Every log line, artifact, flow and task run record the Prefect API holds."""
    from prefect.client.orchestration import get_client
    from prefect.logging.handlers import APILogHandler

    APILogHandler().flush()  # logs are sent in batches in the background
    texts: list[str] = []
    with get_client(sync_client=True) as client:
        for read in (
            client.read_logs,
            client.read_artifacts,
            client.read_flow_runs,
            client.read_task_runs,
        ):
            offset = 0
            while batch := read(limit=200, offset=offset):
                texts += [item.model_dump_json() for item in batch]
                offset += len(batch)
    assert any("retrain" in t for t in texts)  # the runs of this test are there
    return texts


def _mlflow_records(params) -> list[str]:
    """Names and values of every run's params and tags, metric names, version tags."""
    from slmops.tasks.registry.promotion import client

    mc = client(params)
    texts: list[str] = []
    for exp in mc.search_experiments():
        for run in mc.search_runs([exp.experiment_id]):
            texts += [f"{k}={v}" for k, v in run.data.params.items()]
            texts += [f"{k}={v}" for k, v in run.data.tags.items()]
            texts += list(run.data.metrics)
    for mv in mc.search_model_versions(f"name='{params.registry.model_name}'"):
        texts += [f"{k}={v}" for k, v in mv.tags.items()]
    assert any(t.startswith("gate.decision=") for t in texts)
    return texts


def test_secrets_reach_no_log_record_or_artifact(project, monkeypatch, caplog, tmp_path_factory):
    from slmops.flows.ingest_feedback import ingest_feedback_flow
    from slmops.flows.retrain import retrain

    caplog.set_level(logging.DEBUG)
    for name, value in SECRETS_IN_ENV.items():
        monkeypatch.setenv(name, value)
    token_file = tmp_path_factory.mktemp("secrets") / "api-token"
    token_file.write_text(TOKEN_FILE_SECRET)
    path = project / "params.yaml"
    params = corrections_past_the_threshold(  # the ingestion below starts a retrain
        project,
        serve={"token_file": str(token_file)},
        notify={"events": ["flow_failed", "challenger_refused", "challenger_promoted"]},
    )
    # What the flow reports as the tracking URI, had it one with a password.
    monkeypatch.setattr(
        "slmops.flows.retrain.tracking_uri",
        lambda p: f"postgresql://mlflow:{DB_PASSWORD}@db/mlflow",
    )

    # stdout and stderr into buffers that stay open (not capfd: a Prefect log handler
    # set up meanwhile would keep writing to a stream closed after the test).
    stdout, stderr = io.StringIO(), io.StringIO()
    with (
        contextlib.redirect_stdout(stdout),
        contextlib.redirect_stderr(stderr),
        Webhook(path=f"/hook/{WEBHOOK_SECRET}") as hook,
    ):
        monkeypatch.setenv("SLMOPS_NOTIFY_URL", hook.url)
        first = retrain(params_path=str(path), epochs=1, trigger="test")
        ingested = ingest_feedback_flow(params_path=str(path))
        failed = retrain(params_path=str(path), profile="no-such-profile", return_state=True)

    assert first["tracking_uri"] == "postgresql://mlflow:***@db/mlflow"
    assert ingested["retrain"]["mode"] == "subflow"  # a second retrain ran, as a subflow
    assert failed.is_failed() and failed.message.startswith("step 'load-params' failed")
    # The webhook was used: promoted, the subflow's verdict, the failure.
    events = [p["json"]["event"] for p in hook.posts]
    assert events[0] == "challenger_promoted" and events[2] == "flow_failed" and len(events) == 3
    assert "notification flow_failed delivered" in caplog.text  # caplog sees the flows' logs

    records = {
        "log records": [caplog.text],
        "stdout/stderr": [stdout.getvalue(), stderr.getvalue()],
        "Prefect API": _prefect_records(),
        "MLflow params, tags, metrics": _mlflow_records(params),
    }
    for where, items in records.items():
        for secret in SENTINELS:
            assert not any(secret in item for item in items), f"{secret} in {where}"
    # Every file of the project: MLflow store and artifacts, reports/, the ledger,
    # data, models, git history.
    files = [f for f in project.rglob("*") if f.is_file()]
    assert project / "mlflow" / "promotions.jsonl" in files
    assert any(f.is_relative_to(project / "reports") for f in files)
    assert any(f.is_relative_to(project / "mlflow" / "artifacts") for f in files)
    for f in files:
        data = f.read_bytes()
        for secret in SENTINELS:
            assert secret.encode() not in data, f"{secret} in {f}"
