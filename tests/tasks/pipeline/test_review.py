"""The review loop against a fake Label Studio (httpx.MockTransport): push sends the
review and conflicts queues once, as predictions; pull imports new annotations as a
DVC version with the project as provenance, once."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd
import pytest

from slmops.tasks.core.config import load_params
from slmops.tasks.core.errors import DataError
from slmops.tasks.data.dataset import LabeledPaths, load_label_set
from slmops.tasks.data.versioning import track
from slmops.tasks.feedback.store import FeedbackStore, Held, NewPrediction
from slmops.tasks.labels.label_studio import LabelStudio, LabelStudioError
from slmops.tasks.pipeline.review import project_title, pull, push
from slmops.tasks.task_types import task_type
from tests.conftest import dvc_project, run
from tests.tasks.labels.fake_label_studio import TOKEN, FakeLabelStudio

SEQUENCE = task_type("sequence_classification")
URL = "http://ls.test:8080"
TEXTS = ["card never came", "what rate for euros", "top up did not work"]


@pytest.fixture
def params(tiny_project: Path, git_identity):
    """The tiny project under git + DVC, three predictions nobody reviewed and one
    conflict (a reviewer's label against the curated one)."""
    dvc_project(tiny_project)
    params = load_params(tiny_project / "params.yaml")
    track([LabeledPaths(params).dir, LabeledPaths(params).test_dir], tiny_project, push=False)
    for cmd in (["git", "add", "-A"], ["git", "commit", "-qm", "data"]):
        assert run(cmd, tiny_project).returncode == 0
    labels = load_label_set(params)
    with FeedbackStore.from_params(params) as store:
        store.log_predictions(
            [
                NewPrediction(t, "card_arrival", 0.2 + i / 10, [], "slmops-intent", "2")
                for i, t in enumerate(TEXTS)
            ]
        )
        (disputed,) = store.log_predictions(
            [NewPrediction("I was charged twice", "exchange_rate", 0.9, [], "slmops-intent", "2")]
        )
        row, _ = store.add_feedback(disputed, "card_arrival", labels, user="rev", task=SEQUENCE)
        store.hold([Held(row.id, "conflict", "conflict", "disagrees with the curated label")])
    return params


def client(fake: FakeLabelStudio) -> LabelStudio:
    return LabelStudio(URL, TOKEN, transport=fake.transport())


def test_push_makes_the_project_and_sends_each_item_once(params):
    fake = FakeLabelStudio()
    first = push(params, client=client(fake))
    assert (first.project, first.predictions, first.conflicts, first.already) == (
        "created",
        3,
        1,
        0,
    )
    (project,) = fake.projects.values()
    assert project["title"] == project_title(params) == "slmops-intent review"
    choices = ET.fromstring(project["label_config"]).find("Choices")
    assert [c.get("value") for c in choices] == load_label_set(params)
    tasks = list(fake.tasks.values())
    assert sorted(t["data"]["text"] for t in tasks) == sorted([*TEXTS, "I was charged twice"])
    for task in tasks:  # the answers are predictions, never annotations
        assert task["annotations"] == [] and len(task["predictions"]) == 1
    least_sure = next(t for t in tasks if t["data"]["text"] == TEXTS[0])
    assert least_sure["predictions"][0]["result"][0]["value"] == {"choices": ["card_arrival"]}
    assert least_sure["predictions"][0]["score"] == pytest.approx(0.2)
    conflict = next(t for t in tasks if "feedback_ids" in t["data"])
    assert conflict["predictions"][0]["model_version"] == "feedback/rev"

    again = push(params, client=client(fake))
    assert (again.project, again.predictions, again.conflicts, again.already) == (
        "unchanged",
        0,
        0,
        4,
    )
    assert len(fake.tasks) == 4

    with FeedbackStore.from_params(params) as store:
        store.log_predictions([NewPrediction("new one", "card_arrival", 0.99, [], "m", "2")])
    third = push(params, client=client(fake), limit=1)  # the sent ones do not use the limit up
    assert (third.predictions, len(fake.tasks)) == (1, 5)


def test_pull_imports_new_annotations_once_with_the_project_as_provenance(params):
    fake = FakeLabelStudio()
    fake.users[7] = "ann@example.com"
    fake.users[8] = "bob@example.com"
    push(params, client=client(fake))
    by_text = {t["data"]["text"]: t["id"] for t in fake.tasks.values()}
    fake.annotate(by_text[TEXTS[2]], "top_up_failed", 7)
    fake.annotate(by_text[TEXTS[2]], "top_up_failed", 8)
    fake.annotate(by_text[TEXTS[1]], "exchange_rate", 7)
    fake.annotate(by_text[TEXTS[1]], "card_arrival", 8)  # a tie: quarantined
    paths = LabeledPaths(params)
    dvc_file = paths.dir.with_suffix(".dvc")
    before = dvc_file.read_text()

    result = pull(params, client=client(fake))
    s = result.summary
    assert (result.finished, result.new_tasks) == (2, 2)
    assert (s.votes, s.added, s.quarantined) == (4, 1, 1)
    assert s.version is not None and dvc_file.read_text() != before
    assert result.commit is not None  # feedback.git_commit: committed like an ingestion
    message = run(["git", "log", "-1", "--format=%s", result.commit], params.root).stdout
    assert message.startswith("labels: Label Studio ls.test:8080/projects/1: 1 added"), message
    assert message.strip().endswith("annotators: ann@example.com, bob@example.com"), message
    labeled = pd.read_csv(paths.labeled, dtype=str)
    row = labeled.loc[labeled["text"] == TEXTS[2]].iloc[0]
    assert row["label"] == "top_up_failed" and row["annotator_count"] == "2"
    assert row["batch_id"].startswith("label-studio:ls.test:8080/projects/1@")
    assert row["source_id"] == str(by_text[TEXTS[2]])
    saved = params.root / row["source_file"]
    assert saved == result.export and saved.parent == params.path(params.data.imported_dir)
    emails = {
        a["completed_by"]["email"] for t in json.loads(saved.read_text()) for a in t["annotations"]
    }
    assert emails == {"ann@example.com", "bob@example.com"}
    quarantined = pd.read_csv(paths.quarantine, dtype=str)
    assert TEXTS[1] in set(quarantined["text"])

    after = dvc_file.read_text()
    again = pull(params, client=client(fake))
    assert (again.summary, again.new_tasks, again.export) == (None, 0, None)
    assert dvc_file.read_text() == after
    assert len(pd.read_csv(paths.quarantine, dtype=str)) == len(quarantined)  # not again

    # Bob changes his mind on the tie: that task comes again, with both votes.
    bob = fake.tasks[by_text[TEXTS[1]]]["annotations"][1]
    bob.update(result=[{**bob["result"][0], "value": {"choices": ["exchange_rate"]}}])
    bob["updated_at"] = "2026-02-01T00:00:00Z"
    third = pull(params, client=client(fake))
    assert (third.new_tasks, third.summary.votes, third.summary.added) == (1, 2, 1)
    labeled = pd.read_csv(paths.labeled, dtype=str)
    assert labeled.loc[labeled["text"] == TEXTS[1], "label"].tolist() == ["exchange_rate"]


def test_two_pulls_at_once_import_the_annotations_once(params):
    fake = FakeLabelStudio()
    push(params, client=client(fake))
    for task in list(fake.tasks)[:2]:
        fake.annotate(task, "card_arrival", 1)
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda _: pull(params, client=client(fake)), range(2)))
    # They took turns: the second found the first's record and pulled nothing.
    assert sorted(r.new_tasks for r in results) == [0, 2]
    done = params.path(params.data.imported_dir)
    assert len(list(done.glob("label-studio-*.json"))) == 1


def test_a_refused_import_saves_nothing_so_the_next_pull_tries_again(params):
    fake = FakeLabelStudio()
    push(params, client=client(fake))
    task = next(iter(fake.tasks))
    fake.annotate(task, "no_such_class", 1)
    with pytest.raises(DataError, match="not in the label set"):
        pull(params, client=client(fake))
    done = params.path(params.data.imported_dir)
    assert not done.exists() or not list(done.iterdir())
    fake.tasks[task]["annotations"][0]["result"][0]["value"] = {"choices": ["card_arrival"]}
    assert pull(params, client=client(fake)).new_tasks == 1


def test_pull_without_the_project_says_to_push_first(params):
    with pytest.raises(LabelStudioError, match=r"no project titled .*slmops review push"):
        pull(params, client=client(FakeLabelStudio()))


def test_token_classification_goes_out_as_spans_and_comes_back_as_span_labels(ner_project):
    params = load_params(ner_project / "params.yaml")
    text = "Ann flew to Paris yesterday"
    with FeedbackStore.from_params(params) as store:
        store.log_predictions(
            [NewPrediction(text, '[[12,17,"location"]]', 0.3, [], "slmops-ner-test", "1")]
        )
    fake = FakeLabelStudio()
    assert push(params, client=client(fake)).predictions == 1
    (project,) = fake.projects.values()
    labels = ET.fromstring(project["label_config"]).find("Labels")
    assert [label.get("value") for label in labels] == load_label_set(params)
    (task,) = fake.tasks.values()
    (region,) = task["predictions"][0]["result"]
    assert region["type"] == "labels"
    assert region["value"] == {"start": 12, "end": 17, "text": "Paris", "labels": ["location"]}

    person = {**region, "value": {"start": 0, "end": 3, "text": "Ann", "labels": ["person"]}}
    fake.annotate(task["id"], "", 1, result=[region, person])
    result = pull(params, client=client(fake))
    assert (result.summary.fmt, result.summary.added) == ("label_studio_spans", 1)
    labeled = pd.read_csv(LabeledPaths(params).labeled, dtype=str)
    (cell,) = labeled.loc[labeled["text"] == text, "label"]
    assert json.loads(cell) == [[0, 3, "person"], [12, 17, "location"]]
