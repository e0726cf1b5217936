"""infra/label-studio.sh and the review loop against a real Label Studio server:
`slmops review push` sends a tiny project's review queue once (a second push adds
nothing), an annotator's label comes back with `slmops review pull` as a new DVC
version whose provenance names the Label Studio project and the annotator, and a
second pull imports nothing."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import httpx
import pandas as pd
import pytest
import yaml

from slmops.tasks.core.config import load_params
from slmops.tasks.data.dataset import LabeledPaths, load_label_set
from slmops.tasks.feedback.store import FeedbackStore, NewPrediction
from tests.conftest import REPO, run
from tests.infra.conftest import (
    POOL,
    LabelStudioServer,
    Stack,
    deployment_runs,
    wait_for_final_state,
    wait_for_new_runs,
)
from tests.slmops.run_cli import cli

pytestmark = [pytest.mark.slow, pytest.mark.integration]

TITLE = "tiny review"
TEXTS = [
    "my card still has not arrived after two weeks",
    "the exchange rate you gave me was wrong",
    "why was my top up declined again today",
]
ANNOTATOR = "annotator@example.com"


def api(server: LabelStudioServer) -> httpx.Client:
    return httpx.Client(
        base_url=server.url, headers={"Authorization": f"Token {server.token}"}, timeout=30
    )


def test_the_script_runs_one_server_and_says_where(label_studio):
    again = label_studio.script("start")  # idempotent: the running server is kept
    assert again.returncode == 0 and "already running" in again.stdout, again.stderr
    status = label_studio.script("status")
    assert status.returncode == 0 and label_studio.url in status.stdout
    assert label_studio.url.startswith("http://127.0.0.1:")
    with api(label_studio) as client:
        me = client.get("/api/current-user/whoami")
        assert me.status_code == 200, me.text
        assert me.json()["email"] == label_studio.username
        refused = client.get("/api/projects/", headers={"Authorization": "Token wrong"})
        assert refused.status_code == 401
    # The admin's e-mail and password (what the browser test types) open a session.
    with httpx.Client(base_url=label_studio.url, timeout=30) as session:
        session.get("/user/login/")  # sets the CSRF cookie
        login = session.post(
            "/user/login/",
            data={
                "email": label_studio.username,
                "password": label_studio.password,
                "csrfmiddlewaretoken": session.cookies["csrftoken"],
            },
            headers={"Referer": f"{label_studio.url}/user/login/"},
        )
        assert login.status_code == 302, login.text[-300:]
        assert session.get("/api/current-user/whoami").json()["email"] == label_studio.username


@pytest.fixture
def project(tmp_path, monkeypatch, git_identity, label_studio) -> Path:
    """A tiny project pointed at the server, with three predictions nobody reviewed."""
    return label_studio.review_project(
        tmp_path / "project", TITLE, [(text, "card_arrival") for text in TEXTS], monkeypatch
    )


def test_push_pull_round_trip(label_studio, project, monkeypatch, capsys):
    params_file = str(project / "params.yaml")
    params = load_params(params_file)
    labels = load_label_set(params)

    code, out = cli(monkeypatch, capsys, "review", "push", "--params", params_file)
    assert code == 0, out
    assert "3 prediction(s)" in out, out
    code, out = cli(monkeypatch, capsys, "review", "push", "--params", params_file)
    assert code == 0, out
    assert "0 prediction(s)" in out and "3 already there" in out, out
    assert "(unchanged)" in out, out  # the config read back is the one sent

    with api(label_studio) as client:
        listed = client.get("/api/projects/").json()["results"]
        projects = [p for p in listed if p["title"] == TITLE]
        assert len(projects) == 1
        pid = projects[0]["id"]
        tasks = client.get("/api/tasks/", params={"project": pid, "fields": "all"}).json()["tasks"]
        assert sorted(t["data"]["text"] for t in tasks) == sorted(TEXTS)
        assert all(t["total_predictions"] == 1 and t["total_annotations"] == 0 for t in tasks)

        task = next(t for t in tasks if t["data"]["text"] == TEXTS[0])
    # The annotator signs up through the invite link and labels with their own token.
    annotator_token = label_studio.add_user(ANNOTATOR, "annotate-123")
    with httpx.Client(
        base_url=label_studio.url,
        headers={"Authorization": f"Token {annotator_token}"},
        timeout=30,
    ) as annotator:
        made = annotator.post(
            f"/api/tasks/{task['id']}/annotations/",
            json={
                "result": [
                    {
                        "from_name": "label",
                        "to_name": "text",
                        "type": "choices",
                        "value": {"choices": ["card_arrival"]},
                    }
                ]
            },
        )
        assert made.status_code == 201, made.text
    assert "card_arrival" in labels

    dvc_file = LabeledPaths(params).dir.with_suffix(".dvc")
    before = dvc_file.read_text()
    code, out = cli(monkeypatch, capsys, "review", "pull", "--params", params_file)
    assert code == 0, out
    assert "1 added" in out, out
    assert dvc_file.read_text() != before  # a new DVC version, committed
    message = run(["git", "log", "-1", "--format=%s", "--", "data/labeled.dvc"], project).stdout
    assert message.startswith(f"labels: Label Studio {label_studio.url.removeprefix('http://')}")
    labeled = pd.read_csv(LabeledPaths(params).labeled, dtype=str)
    row = labeled.loc[labeled["text"] == TEXTS[0]].iloc[0]
    assert row["label"] == "card_arrival"
    assert row["source"] == "import"
    host = label_studio.url.removeprefix("http://")
    assert row["batch_id"].startswith(f"label-studio:{host}/projects/{pid}@")
    saved = json.loads((project / row["source_file"]).read_text())
    (pulled,) = [t for t in saved if str(t["id"]) == row["source_id"]]
    assert pulled["data"]["text"] == TEXTS[0]
    assert [a["completed_by"]["email"] for a in pulled["annotations"]] == [ANNOTATOR]

    after = dvc_file.read_text()
    code, out = cli(monkeypatch, capsys, "review", "pull", "--params", params_file)
    assert code == 0, out
    assert "nothing new" in out, out
    assert dvc_file.read_text() == after


def test_a_wrong_token_is_an_error_naming_the_server(label_studio, project, monkeypatch, capsys):
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", "not-the-token")
    code, out = cli(monkeypatch, capsys, "review", "push", "--params", str(project / "params.yaml"))
    assert code == 1
    assert label_studio.url in out and "LABEL_STUDIO_API_KEY" in out and "401" in out, out


def test_stop_ends_the_server_and_start_brings_it_back_on_its_port(label_studio):
    pid = int((label_studio.run_dir / "pid").read_text())
    stopped = label_studio.script("stop")
    assert stopped.returncode == 0 and "stopped" in stopped.stdout
    assert label_studio.script("status").returncode == 3
    assert label_studio.script("url").returncode == 1
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # the whole process group ended
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{label_studio.url}/health", timeout=5)

    started = label_studio.script("start")  # left running for the package's other tests
    assert started.returncode == 0, started.stdout + started.stderr + label_studio.log_tail()
    assert label_studio.script("url").stdout.strip() == label_studio.url  # same port
    with api(label_studio) as client:  # same data: the token still opens it
        assert client.get("/api/current-user/whoami").status_code == 200


def test_a_submitted_label_starts_an_ingestion_that_pulls_it(
    stack: Stack, label_studio, monkeypatch, capsys
):
    """The loop through the webhook: `review push` registers the service's
    /hooks/label-studio in the project; an annotator's submission makes Label Studio call
    it; the service emits slmops.review.annotated to the Prefect server, whose automation
    starts ingest_feedback/hourly on the worker, which pulls the label as a new version."""
    from slmops.flows.deployments import deploy_all
    from slmops.serving.background import free_port, serve_in_thread
    from slmops.tasks.feedback.keys import KeyStore

    project = stack.project
    port = free_port()
    raw = yaml.safe_load((project / "params.yaml").read_text())
    raw["label_studio"] = {
        "url": label_studio.url,
        "project_title": "stack review (webhook)",
        "webhook_url": f"http://127.0.0.1:{port}/hooks/label-studio",
    }
    # The ingestion it starts must leave no retrain behind for the stack's other tests
    # (feedback they left pending would cross the threshold: its retrain would then run
    # on this params file after the test).
    raw["feedback"] = {**raw.get("feedback", {}), "retrain_after_labels": 1_000_000}
    raw["feedback"]["live_accuracy_min_feedback"] = 1_000_000
    review_params = project / "params-review.yaml"
    review_params.write_text(yaml.safe_dump(raw))
    params = load_params(review_params)
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", label_studio.token)
    with KeyStore.from_params(params) as keys:
        _, key = keys.add(f"label-studio-{port}", "reviewer", created_by="test")
    monkeypatch.setenv(params.label_studio.webhook_key_env, key)
    text, label = "the card you mailed me is still not here", "card_arrival"
    with FeedbackStore.from_params(params) as store:
        store.log_predictions(
            [NewPrediction(text, "exchange_rate", 0.01, [], params.registry.model_name, "1")]
        )
    dvc_file = LabeledPaths(params).dir.with_suffix(".dvc")
    before_version = dvc_file.read_text()
    # The ingestion deployment, now with the automation on the webhook's event.
    deploy_all(REPO, params_path=review_params, pool=POOL, paused=True)
    try:
        before = {r.id for r in deployment_runs("ingest_feedback/hourly")}
        retrains = {r.id for r in deployment_runs("retrain/weekly")}
        with serve_in_thread(params, port, need_model=False):
            code, out = cli(monkeypatch, capsys, "review", "push", "--params", str(review_params))
            assert code == 0 and "webhook created" in out, out
            with api(label_studio) as admin:
                pid = next(
                    p["id"]
                    for p in admin.get("/api/projects/").json()["results"]
                    if p["title"] == "stack review (webhook)"
                )
                tasks = admin.get("/api/tasks/", params={"project": pid}).json()["tasks"]
            (task,) = [t for t in tasks if t["data"]["text"] == text]
            token = label_studio.add_user("hook-annotator@example.com", "annotate-123")
            with httpx.Client(
                base_url=label_studio.url, headers={"Authorization": f"Token {token}"}, timeout=30
            ) as annotator:
                made = annotator.post(
                    f"/api/tasks/{task['id']}/annotations/",
                    json={"result": [choice(label)]},
                )
                assert made.status_code == 201, made.text
            (ingest,) = wait_for_new_runs("ingest_feedback/hourly", before)
        wait_for_final_state(stack, ingest.id)
        time.sleep(5)  # an automation would have created a run by now
        assert {r.id for r in deployment_runs("retrain/weekly")} == retrains  # none left
    finally:
        deploy_all(REPO, params_path=project / "params.yaml", pool=POOL, paused=True)
        review_params.unlink()
    assert dvc_file.read_text() != before_version
    labeled = pd.read_csv(LabeledPaths(params).labeled, dtype=str)
    row = labeled.loc[labeled["text"] == text].iloc[0]
    assert row["label"] == label
    host = label_studio.url.removeprefix("http://")
    assert row["batch_id"].startswith(f"label-studio:{host}/projects/{pid}@")
    # The pull's commit (the ingestion may have committed feedback after it).
    log = run(["git", "log", "-3", "--format=%s", "--", "data/labeled.dvc"], project).stdout
    assert f"labels: Label Studio {host}/projects/{pid}: 1 added" in log, log
    assert "annotators: hook-annotator@example.com" in log, log


def choice(label: str) -> dict:
    """A Choices result of the review project's config."""
    return {
        "from_name": "label",
        "to_name": "text",
        "type": "choices",
        "value": {"choices": [label]},
    }
