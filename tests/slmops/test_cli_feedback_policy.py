"""`slmops feedback revoke` and `slmops feedback conflicts`."""

from __future__ import annotations

from slmops.tasks.core.config import load_params
from slmops.tasks.data.dataset import load_label_set, read_labeled
from slmops.tasks.feedback.store import FeedbackStore
from slmops.tasks.pipeline.prepare import ingest_feedback
from tests.slmops.run_cli import cli
from tests.tasks.feedback.conftest import predict_and_correct


def test_conflicts_lists_the_waiting_corrections_and_why(tiny_project, monkeypatch, capsys):
    params = load_params(tiny_project / "params.yaml")
    data = read_labeled(params)
    text = data.loc[data["label"] == "card_arrival", "text"].iloc[0]
    with FeedbackStore.from_params(params) as store:
        predict_and_correct(
            store, load_label_set(params), [(text, "card_arrival", "exchange_rate", "mallory")]
        )
        ingest_feedback(params, store)
    params_file = str(tiny_project / "params.yaml")

    code, output = cli(monkeypatch, capsys, "feedback", "conflicts", "--params", params_file)
    assert code == 0
    assert "conflicts queue: 1 row(s)" in output and "mallory" in output
    assert "contradicts the curated label 'card_arrival' (seed)" in output

    code, output = cli(
        monkeypatch, capsys, "feedback", "conflicts", "--dead-letters", "--params", params_file
    )
    assert code == 0 and "dead letters: 0 row(s)" in output


def test_revoke_marks_a_reviewers_feedback_and_says_what_comes_next(
    tiny_project, monkeypatch, capsys
):
    params = load_params(tiny_project / "params.yaml")
    with FeedbackStore.from_params(params) as store:
        ids = predict_and_correct(
            store,
            load_label_set(params),
            [
                ("is my card on its way", "exchange_rate", "card_arrival", "mallory"),
                ("rate for yen please", "card_arrival", "exchange_rate", "ann"),
            ],
        )
    args = (
        "feedback",
        "revoke",
        "--reviewer",
        "mallory",
        "--params",
        str(tiny_project / "params.yaml"),
    )

    code, output = cli(monkeypatch, capsys, *args)
    assert code == 0 and f"1 feedback row(s) of mallory revoked (ids {ids[0]}-{ids[0]})" in output
    with FeedbackStore.from_params(params) as store:
        assert store.revoked_ids() == {ids[0]}
    code, output = cli(monkeypatch, capsys, *args)
    assert code == 0 and "nothing to revoke" in output


def test_revoke_needs_a_reviewer(tiny_project, monkeypatch, capsys):
    code, output = cli(monkeypatch, capsys, "feedback", "revoke")
    assert code == 2 and "--reviewer" in output


def test_export_review_conflicts_for_label_studio(tiny_project, monkeypatch, capsys):
    import json

    params = load_params(tiny_project / "params.yaml")
    data = read_labeled(params)
    text = data.loc[data["label"] == "card_arrival", "text"].iloc[0]
    with FeedbackStore.from_params(params) as store:
        ids = predict_and_correct(
            store,
            load_label_set(params),
            [
                (text, "card_arrival", "exchange_rate", "mallory"),
                (text, "card_arrival", "top_up_failed", "ann"),
            ],
        )
        ingest_feedback(params, store)
    out = tiny_project / "conflicts.json"
    code, output = cli(
        monkeypatch, capsys, "export-review", str(out), "--conflicts",
        "--params", str(tiny_project / "params.yaml"),
    )  # fmt: skip
    assert code == 0 and "1 conflicting text(s) to review" in output
    (task,) = json.loads(out.read_text())
    assert task["data"]["text"] == text and task["data"]["feedback_ids"] == f"{ids[0]},{ids[1]}"
    proposed = {
        (p["model_version"], p["result"][0]["value"]["choices"][0]) for p in task["predictions"]
    }
    assert proposed == {("feedback/mallory", "exchange_rate"), ("feedback/ann", "top_up_failed")}
    assert "annotations" not in task  # proposals, not votes
