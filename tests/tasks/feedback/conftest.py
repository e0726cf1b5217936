"""Fixtures of the feedback tests: a tiny git + DVC project, feedback as the service
records it."""

from __future__ import annotations

from pathlib import Path

import pytest

from slmops.tasks.core.config import load_params
from slmops.tasks.data.dataset import LabeledPaths
from slmops.tasks.data.versioning import track
from slmops.tasks.feedback.store import FeedbackStore, NewPrediction
from slmops.tasks.task_types import task_type
from tests.conftest import dvc_project, run

SEQUENCE = task_type("sequence_classification")


@pytest.fixture
def project(tiny_project: Path, git_identity) -> Path:
    """The tiny project as a git + DVC repository with its data committed."""
    dvc_project(tiny_project)
    params = load_params(tiny_project / "params.yaml")
    track([LabeledPaths(params).dir, LabeledPaths(params).test_dir], tiny_project, push=False)
    for cmd in (
        ["git", "add", "-A"],
        ["git", "commit", "-qm", "data"],
    ):
        assert run(cmd, tiny_project).returncode == 0
    return tiny_project


def predict_and_correct(store: FeedbackStore, labels: list[str], items) -> list[int]:
    """Log one prediction per (text, predicted, given, user) and the feedback on it."""
    ids = store.log_predictions(
        [NewPrediction(text, pred, 0.5, [], "slmops-intent", "1") for text, pred, _, _ in items]
    )
    out = []
    for pid, (_, _, given, user) in zip(ids, items, strict=True):
        row, _ = store.add_feedback(pid, given, labels, user=user, task=SEQUENCE)
        out.append(row.id)
    return out
