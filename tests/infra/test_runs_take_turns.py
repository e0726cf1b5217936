"""One run at a time, on the real services: two runs of the ``retrain`` deployment and one
of ``ingest_feedback``, started at the same moment, take turns. The retrains run one
after the other (the deployment's concurrency limit queues the second, never drops it);
the ingestion runs beside them but never holds the project lock at the same time as
either (the lock's log lines in the runs' Prefect logs); the promotion ledger is one
chain that the ``champion`` and ``previous`` aliases agree with; every feedback row
reached the labeled data exactly once.

Independent of the other infra tests' order: it reads the state it starts from.
"""

from __future__ import annotations

import itertools
import re
import time
from datetime import datetime

import pytest
import yaml

from tests.conftest import run
from tests.infra.conftest import FLOW_RUN_TIMEOUT_S, Stack, wait_for_final_state

pytestmark = [pytest.mark.slow, pytest.mark.integration]

# New texts (in none of the tiny project's data) with their true labels: each becomes one
# labeled row of source "feedback".
FEEDBACK = [
    ("the courier never brought the card I ordered last month", "card_arrival"),
    ("a thief took my wallet with the bank card inside it", "lost_or_stolen_card"),
    ("which rate do you apply when I pay in swiss francs", "exchange_rate"),
    ("adding money from my other account was declined twice", "top_up_failed"),
    ("my salary transfer is not in my balance", "balance_not_updated_after_bank_transfer"),
]
HOLD = re.compile(r"^(?P<what>.+): (?P<event>holding|released) the project lock")


def dvc_hash(project, name: str) -> str:
    return yaml.safe_load((project / "data" / f"{name}.dvc").read_text())["outs"][0]["md5"]


def add_feedback(params) -> list[int]:
    """Predictions of :data:`FEEDBACK`'s texts and a reviewer's label for each; the ids
    of the feedback rows."""
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
        return [
            store.add_feedback(pid, label, labels, "reviewer-a", task=task_type(params))[0].id
            for pid, (_, label) in zip(predicted, FEEDBACK, strict=True)
        ]


def lock_holds(flow_run_ids, expected_runs: int) -> list[tuple[datetime, datetime, str, str]]:
    """(start, end, flow run id, what) of every hold of the project lock in these runs'
    Prefect logs, by start; waits for the log lines to arrive (they are sent in batches)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    deadline = time.monotonic() + 60
    runs_filter = LogFilter(flow_run_id=LogFilterFlowRunId(any_=list(flow_run_ids)))
    with get_client(sync_client=True) as client:
        while True:
            logs: list = []
            while page := client.read_logs(runs_filter, limit=200, offset=len(logs)):
                logs += page
            events = sorted(
                (log.timestamp, str(log.flow_run_id), m["what"], m["event"])
                for log in logs
                if (m := HOLD.match(log.message))
            )
            opened: dict[tuple[str, str], datetime] = {}
            holds = []
            for stamp, flow_run, what, event in events:
                if event == "holding":
                    opened[(flow_run, what)] = stamp
                elif (flow_run, what) in opened:
                    holds.append((opened.pop((flow_run, what)), stamp, flow_run, what))
            runs = {flow_run for _, _, flow_run, _ in holds}
            if (not opened and len(runs) == expected_runs) or time.monotonic() > deadline:
                return sorted(holds)
            time.sleep(2)


def state_names(flow_run_id) -> list[str]:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return [s.name for s in client.read_flow_run_states(flow_run_id)]


def test_two_retrains_and_an_ingestion_started_at_once_take_turns(stack: Stack):
    from mlflow import MlflowClient
    from prefect.deployments import run_deployment

    from slmops.tasks.core.config import load_params
    from slmops.tasks.data.dataset import read_labeled
    from slmops.tasks.feedback.ingest import watermark
    from slmops.tasks.feedback.store import FeedbackStore
    from slmops.tasks.registry import ledger

    project = stack.project
    params = load_params(project / "params.yaml")
    name = params.registry.model_name
    mlflow = MlflowClient(tracking_uri=stack.mlflow_uri, registry_uri=stack.mlflow_uri)
    versions_before = {v.version for v in mlflow.search_model_versions(f"name='{name}'")}
    labeled_before = dvc_hash(project, "labeled")
    mine = add_feedback(params)

    # At the same moment (the worker picks all three up in one poll).
    t0 = time.monotonic()
    # force: both train, whether or not the ingestion lands between them (without it,
    # the second retrain on the first's data is skipped as unchanged).
    retrains = [
        run_deployment(
            "retrain/weekly",
            parameters={"trigger": "test", "force": True},
            timeout=0,
            as_subflow=False,
        )
        for _ in range(2)
    ]
    ingest = run_deployment(
        "ingest_feedback/hourly",
        parameters={"trigger_retrain": False},
        timeout=0,
        as_subflow=False,
    )
    done = [wait_for_final_state(stack, r.id, timeout=3 * FLOW_RUN_TIMEOUT_S) for r in retrains]
    wait_for_final_state(stack, ingest.id, timeout=3 * FLOW_RUN_TIMEOUT_S)
    seconds = time.monotonic() - t0

    # 1. The retrains ran one after the other: the later one waited for a slot, queued.
    first, second = sorted(done, key=lambda r: r.start_time)
    assert first.end_time <= second.start_time, (first.end_time, second.start_time)
    assert "AwaitingConcurrencySlot" in state_names(second.id)

    # 2. No two runs held the project lock at once, the ingestion included.
    holds = lock_holds([r.id for r in (*retrains, ingest)], expected_runs=3)
    for (_, end, run_a, what_a), (start, _, run_b, what_b) in itertools.pairwise(holds):
        assert end <= start, f"{what_a} ({run_a}) and {what_b} ({run_b}) overlap"
    assert any(what == "ingest feedback" for *_, what in holds), holds
    assert sum(what == "split" for *_, what in holds) == 2, holds

    # 3. The ledger is one chain; the aliases are where it says.
    entries = ledger.read(params.path(params.registry.ledger))
    chain = [(e["champion_before"], e["champion_after"]) for e in entries]
    for (_, after), (before, _) in itertools.pairwise(chain):
        assert before == after, chain
    champion = mlflow.get_model_version_by_alias(name, "champion").version
    assert champion == chain[-1][1]
    moves = [(b, a) for b, a in chain if a != b]
    if moves and moves[-1][0] is not None:
        assert mlflow.get_model_version_by_alias(name, "previous").version == moves[-1][0]
    # Each new version was trained on a data version that existed: before or after the
    # ingestion, never a mix.
    labeled_after = dvc_hash(project, "labeled")
    assert labeled_after != labeled_before
    for v in mlflow.search_model_versions(f"name='{name}'"):
        if v.version not in versions_before:
            assert v.tags["data.labeled_hash"] in {labeled_before, labeled_after}, v.tags

    # 4. Every feedback row is in the labeled data once; the data version is committed.
    rows = read_labeled(params).query("source == 'feedback'")["source_id"].astype(int)
    assert rows.is_unique, rows[rows.duplicated()].tolist()
    with FeedbackStore.from_params(params) as store:
        stored = [f.id for f in store.feedback_since(0)]
        assert watermark(store) == max(stored)
    assert set(mine) <= set(rows)
    assert sorted(rows) == sorted(stored)  # none lost, none twice
    assert run(["git", "status", "--porcelain", "data/labeled.dvc"], project).stdout == ""
    # Each run's own folder was published and removed.
    assert list((project / "models" / "runs").iterdir()) == []
    turns = ", ".join(
        f"{what} {(end - start).total_seconds():.1f} s" for start, end, _, what in holds
    )
    print(f"\n[two retrains and an ingestion took turns in {seconds:.0f} s; lock: {turns}]")
