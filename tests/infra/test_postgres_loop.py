"""The whole loop on PostgreSQL: the Prefect server, MLflow and the feedback store each in
their own database of one throwaway cluster (``SLMOPS_DB=postgres infra/services.sh``).
A retrain on the worker promotes a model; the prediction service serves it while 32
clients at once ask for predictions and send feedback; ingestion (with a non-zero
``feedback.settle_seconds``) turns every accepted feedback into exactly one row of the
labeled data and starts a retrain on it. Nothing is lost and nothing is counted twice."""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator

import httpx
import psycopg
import pytest

from slmops.serving.background import free_port, serve_in_thread
from tests.conftest import postgres, run, training_project
from tests.infra.conftest import (
    FLOW_RUN_TIMEOUT_S,
    Stack,
    deployment_runs,
    environ_of,
    plain,
    running_stack,
    wait_for_final_state,
    wait_for_new_runs,
)
from tests.infra.test_loop import TOKEN, dvc_hash

pytestmark = [pytest.mark.slow, pytest.mark.integration]

CLIENTS = 32
ROUNDS = 2  # predictions each client asks for and reviews, one after the other
# Ingest feedback one second old and older: on Postgres ids can commit out of order
# (tests/tasks/feedback/test_out_of_order_commits.py).
SETTLE = 1.0
PHRASES = [
    ("where is the card you posted to me", "card_arrival"),
    ("my top up did not go through at all", "top_up_failed"),
    ("someone stole my card this morning", "lost_or_stolen_card"),
]


@pytest.fixture(scope="module")
def pg_stack(tmp_path_factory) -> Iterator[Stack]:
    """The services on a throwaway cluster (its folder under /tmp: under root the cluster
    runs as another user, who must reach it), a project whose feedback store is the
    cluster's ``feedback`` database; the cluster removed at the end."""
    folder = tempfile.mkdtemp(prefix="slmops-pg-loop-")
    pg_env = {**os.environ, "SLMOPS_PG_DIR": folder, "SLMOPS_PG_THROWAWAY": "1"}
    installed = postgres("install", env=pg_env)
    if installed.returncode != 0:
        shutil.rmtree(folder, ignore_errors=True)
        assert os.geteuid() != 0, installed.stdout + installed.stderr
        pytest.skip("no PostgreSQL server binaries (initdb, pg_ctl): apt-get install postgresql")
    port = free_port()  # the cluster's, known before the project's params are written
    base = tmp_path_factory.mktemp("pg-stack")
    project = training_project(
        base / "project",
        feedback={
            "db_url": f"postgresql+psycopg://slmops@127.0.0.1:{port}/feedback",
            "settle_seconds": SETTLE,
            "retrain_after_labels": CLIENTS,
        },
        serve={"poll_seconds": 0},
    )
    extra = {"SLMOPS_DB": "postgres", "SLMOPS_PG_PORT": str(port)}
    try:
        with running_stack(base, project, {**pg_env, **extra}) as s:
            yield s
    finally:
        postgres("stop", "--remove", env=pg_env)
        shutil.rmtree(folder, ignore_errors=True)


def client(url: str, number: int, accepted: list, failures: list, start: threading.Barrier):
    """One client: ``ROUNDS`` times /predict then /feedback; the 201 answers go to
    ``accepted`` as (feedback id, text), anything else to ``failures``."""
    headers = {"Authorization": f"Bearer {TOKEN}"}
    with httpx.Client(base_url=url, timeout=60) as http:
        start.wait(30)
        for j in range(ROUNDS):
            phrase, label = PHRASES[(number + j) % len(PHRASES)]
            text = f"ticket {number}-{j}: {phrase}"
            try:
                answer = http.post("/predict", json={"texts": [text]}).json()["predictions"][0]
                sent = http.post(
                    "/feedback",
                    json={"prediction_id": answer["prediction_id"], "label": label},
                    headers=headers,
                )
            except Exception as exc:  # any failure is reported by the test
                failures.append(f"client {number}: {exc!r}")
                continue
            if sent.status_code == 201:
                accepted.append((sent.json()["feedback_id"], text))
            else:
                failures.append(f"client {number}: {sent.status_code} {sent.text}")


def test_the_loop_on_postgres_loses_and_duplicates_no_feedback(pg_stack: Stack, monkeypatch):
    from mlflow import MlflowClient
    from prefect.deployments import run_deployment

    from slmops.tasks.core.config import load_params
    from slmops.tasks.data.dataset import read_labeled
    from slmops.tasks.feedback.ingest import RETRAIN_MARK, watermark
    from slmops.tasks.feedback.store import FeedbackStore

    t0 = time.monotonic()
    stack = pg_stack
    project = stack.project
    params = load_params(project / "params.yaml")
    name = params.registry.model_name
    mlflow = MlflowClient(tracking_uri=stack.mlflow_uri, registry_uri=stack.mlflow_uri)
    port = stack.env["SLMOPS_PG_PORT"]
    cluster = f"postgresql://slmops@127.0.0.1:{port}"

    # 0. Each store is on the cluster, by its own settings.
    prefect_env = environ_of(stack.run_dir / "prefect-server.pid")
    assert plain(prefect_env["PREFECT_SERVER_DATABASE_CONNECTION_URL"]) == f"{cluster}/prefect"
    mlflow_env = environ_of(stack.run_dir / "mlflow-server.pid")
    assert plain(mlflow_env["MLFLOW_BACKEND_STORE_URI"]) == f"{cluster}/mlflow"
    with FeedbackStore.from_params(params) as store:
        url = store.engine.url
        assert (url.get_backend_name(), url.host, url.port, url.database) == (
            "postgresql",
            "127.0.0.1",
            int(port),
            "feedback",
        )
        assert watermark(store) == 0

    # 1. The weekly retrain, started through the API; its model becomes the champion.
    first = run_deployment("retrain/weekly", timeout=FLOW_RUN_TIMEOUT_S, as_subflow=False)
    wait_for_final_state(stack, first.id)
    champion = mlflow.get_model_version_by_alias(name, "champion")
    assert champion.tags["gate.decision"] == "promoted"
    assert champion.tags["data.labeled_hash"] == dvc_hash(project, "labeled")

    # 2. 32 clients at once: predictions, then feedback on them.
    monkeypatch.setenv(params.serve.token_env, TOKEN)
    accepted: list[tuple[int, str]] = []
    failures: list[str] = []
    with serve_in_thread(params, free_port()) as service:
        start = threading.Barrier(CLIENTS)
        threads = [
            threading.Thread(target=client, args=(service, i, accepted, failures, start))
            for i in range(CLIENTS)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
    assert not failures, failures[:5]
    assert len(accepted) == CLIENTS * ROUNDS
    ids = sorted(i for i, _ in accepted)
    assert len(set(ids)) == len(ids)  # one feedback row per 201
    with psycopg.connect(f"{cluster}/feedback") as db:
        tables = {r[0] for r in db.execute("SELECT tablename FROM pg_tables")}
        assert {"predictions", "feedback", "ingest_watermark"} <= tables
        assert db.execute("SELECT count(*) FROM predictions").fetchone() == (CLIENTS * ROUNDS,)
        stored = sorted(r[0] for r in db.execute("SELECT id FROM feedback"))
    assert stored == ids  # every accepted feedback in the store, once; nothing else
    labeled_before = dvc_hash(project, "labeled")
    retrains_before = {r.id for r in deployment_runs("retrain/weekly")}

    # 3. Ingestion on the worker once the feedback has settled.
    time.sleep(SETTLE + 1)
    ingest = run_deployment("ingest_feedback/hourly", timeout=FLOW_RUN_TIMEOUT_S, as_subflow=False)
    wait_for_final_state(stack, ingest.id)
    labeled_after = dvc_hash(project, "labeled")
    assert labeled_after != labeled_before
    labeled = read_labeled(params)
    fed = labeled[labeled["source"] == "feedback"]
    # Rows in == rows out: each accepted feedback is one row of its own (its text is new).
    assert sorted(int(i) for i in fed["source_id"]) == ids
    assert sorted(fed["text"]) == sorted(t for _, t in accepted)
    log = run(["git", "log", "-1", "--format=%s", "--", "data/labeled.dvc"], project).stdout
    assert log.startswith(f"data: feedback 1-{len(ids)}: {len(ids)} added"), log
    with FeedbackStore.from_params(params) as store:
        # Ids without gaps (no insert failed), so the watermark is the count.
        assert watermark(store) == len(ids) == ids[-1]
        assert watermark(store, RETRAIN_MARK) == len(ids)

    # 4. The retrain that ingestion started trains on the new data version.
    triggered = wait_for_new_runs("retrain/weekly", retrains_before)
    assert len(triggered) == 1, [r.name for r in triggered]
    assert triggered[0].parameters["trigger"] == "feedback"
    wait_for_final_state(stack, triggered[0].id)
    (second,) = [
        v
        for v in mlflow.search_model_versions(f"name='{name}'")
        if v.tags.get("data.labeled_hash") == labeled_after
    ]
    decision = second.tags["gate.decision"]
    assert decision in {"promoted", "refused"}
    now_champion = mlflow.get_model_version_by_alias(name, "champion").version
    assert now_champion == (second.version if decision == "promoted" else champion.version)
    live = mlflow.get_model_version(name, champion.version).tags
    assert live.get("live.feedback_rows") == str(len(ids)), live

    # The runs and the models are in the cluster's databases.
    with psycopg.connect(f"{cluster}/prefect") as db:
        runs = {str(r[0]) for r in db.execute("SELECT id FROM flow_run")}
        assert {str(first.id), str(ingest.id), str(triggered[0].id)} <= runs
    with psycopg.connect(f"{cluster}/mlflow") as db:
        versions = db.execute("SELECT count(*) FROM model_versions WHERE name = %s", (name,))
        assert versions.fetchone() == (2,)
    print(f"\n[the loop on postgres: {time.monotonic() - t0:.0f} s after the services started]")
