"""The event-driven loop on Prefect's own machinery, on the real services: ``make deploy``
registers the deployments with their schedules, one run at a time and the automation;
feedback past the threshold and an ingestion give exactly one ``retrain`` run, created by
the automation from the ingestion's event (``trigger`` feedback); two events at once give
two runs that take turns, never two running.

Independent of the other infra tests' order: it reads the state it starts from.
"""

from __future__ import annotations

import os
import subprocess
import time

import pytest

from tests.conftest import REPO
from tests.infra.conftest import (
    POOL,
    Stack,
    deployment_runs,
    wait_for_final_state,
    wait_for_new_runs,
)

pytestmark = [pytest.mark.slow, pytest.mark.integration]

# New texts (in none of the tiny project's data, nor the other infra tests') and their
# true labels: as many as the stack's feedback.retrain_after_labels.
FEEDBACK = [
    ("the new card you mailed me has still not turned up", "card_arrival"),
    ("my wallet was stolen on the train with the card in it", "lost_or_stolen_card"),
    ("the money I tried to add to my account bounced back", "top_up_failed"),
]


def add_feedback(params) -> None:
    """A prediction of each text of :data:`FEEDBACK` and a reviewer's label for it."""
    from slmops.tasks.data.dataset import load_label_set
    from slmops.tasks.feedback.store import FeedbackStore, NewPrediction
    from slmops.tasks.task_types import task_type

    labels = load_label_set(params)
    with FeedbackStore.from_params(params) as store:
        predicted = store.log_predictions(
            [
                NewPrediction(text, labels[0], 0.4, [], params.registry.model_name, "0")
                for text, _ in FEEDBACK
            ]
        )
        for pid, (_, label) in zip(predicted, FEEDBACK, strict=True):
            store.add_feedback(pid, label, labels, "reviewer-events", task=task_type(params))


def test_make_deploy_registers_schedules_limits_and_automations(stack: Stack):
    from prefect.client.orchestration import get_client

    from slmops.tasks.core.events import RETRAIN_DUE

    # `make deploy` as a user runs it, for the stack's project and pool (schedules off,
    # as the stack has them); `-o` keeps make from reinstalling the environment.
    params_path = stack.project / "params.yaml"
    args = f"--params {params_path} --pool {POOL} --paused"
    done = subprocess.run(
        ["make", "-o", ".venv/.slmops-installed", "deploy", f"DEPLOY_ARGS={args}"],
        cwd=REPO,
        env={**os.environ},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "deployed retrain/weekly" in done.stdout, done.stdout

    with get_client(sync_client=True) as client:
        for name in ("retrain/weekly", "ingest_feedback/hourly", "monitor/scheduled"):
            deployment = client.read_deployment_by_name(name)
            assert deployment.global_concurrency_limit.limit == 1, name
            assert len(deployment.schedules) == 1, name
            assert deployment.work_pool_name == POOL
            profile = deployment.parameter_openapi_schema["properties"]["profile"]
            assert profile["anyOf"][0]["enum"] == ["quick", "steady"], name
        weekly = client.read_deployment_by_name("retrain/weekly")
        assert weekly.schedules[0].parameters == {"trigger": "schedule"}
        assert weekly.parameters["trigger"] == "manual"
        (automation,) = client.read_resource_related_automations(f"prefect.deployment.{weekly.id}")
        assert automation.enabled and automation.trigger.expect == {RETRAIN_DUE}
        assert automation.actions[0].parameters["trigger"] == "feedback"


def test_feedback_past_the_threshold_starts_one_retrain_through_the_automation(stack: Stack):
    from slmops.flows.ingest_feedback import ingest_feedback_flow
    from slmops.tasks.core.config import load_params

    params_path = stack.project / "params.yaml"
    add_feedback(load_params(params_path))
    before = {r.id for r in deployment_runs("retrain/weekly")}

    # The ingestion (here, in this process) emits the event and starts no run itself.
    result = ingest_feedback_flow(params_path=str(params_path))
    assert result["retrain_reason"], result
    assert result["retrain"]["mode"] == "automation", result["retrain"]

    (run,) = wait_for_new_runs("retrain/weekly", before)
    assert run.created_by is not None and run.created_by.type == "AUTOMATION", run.created_by
    assert run.parameters["trigger"] == "feedback"
    assert run.parameters["params_path"] == str(params_path)
    assert run.parameters["profile"] is None
    wait_for_final_state(stack, run.id)


def test_two_events_at_once_give_two_queued_runs_never_two_running(stack: Stack):
    from prefect.client.orchestration import get_client
    from prefect.events import emit_event
    from prefect.events.worker import EventsWorker

    from slmops.tasks.core.config import load_params
    from slmops.tasks.core.events import RETRAIN_DUE, model_resource

    params_path = stack.project / "params.yaml"
    params = load_params(params_path)
    before = {r.id for r in deployment_runs("retrain/weekly")}
    # Profile `steady` (2 epochs), which no other test trains on this data: the first run
    # trains (tens of seconds), so the second is submitted while it holds the slot. With
    # a recipe trained before, the first would skip in seconds and could end before the
    # worker even picked the second up (then nothing had to wait).
    for n in range(2):
        emit_event(
            event=RETRAIN_DUE,
            resource=model_resource(params.registry.model_name),
            payload={
                "reason": f"test event {n}",
                "params_path": str(params_path),
                "profile": "steady",
            },
        )
    EventsWorker.drain_all()

    runs = wait_for_new_runs("retrain/weekly", before, count=2)
    assert len(runs) == 2, [r.name for r in runs]
    assert {r.parameters["trigger"] for r in runs} == {"feedback"}
    # Watch them: at no moment two RUNNING (the deployment's limit queues the second).
    deadline = time.monotonic() + 600
    with get_client(sync_client=True) as client:
        while True:
            states = [client.read_flow_run(r.id).state for r in runs]
            running = [s for s in states if s.is_running()]
            assert len(running) <= 1, [s.name for s in states]
            if all(s.is_final() for s in states):
                break
            assert time.monotonic() < deadline, [s.name for s in states]
            time.sleep(1)
        waited = [[s.name for s in client.read_flow_run_states(r.id)] for r in runs]
    done = [wait_for_final_state(stack, r.id) for r in runs]
    first, second = sorted(done, key=lambda r: r.start_time)
    assert first.end_time <= second.start_time, (first.end_time, second.start_time)
    assert any("AwaitingConcurrencySlot" in names for names in waited), waited
