import json
from datetime import UTC, datetime

import pandas as pd
import pytest

from slmops.tasks.core.config import load_params
from slmops.tasks.core.errors import DataError
from slmops.tasks.data.dataset import LABELED_COLUMNS, LabeledPaths, read_label_file
from slmops.tasks.pipeline.prepare import import_labels, import_pending
from tests.conftest import copy_fixture, dvc_project, write_params

NOW = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)


def ls_task(task_id: int, text: str, *labels: str, cancelled: int = 0) -> dict:
    """One task as Label Studio's full JSON export writes it."""
    anns = [
        {
            "id": task_id * 10 + i,
            "completed_by": i + 1,
            "was_cancelled": False,
            "result": [
                {
                    "from_name": "intent",
                    "to_name": "text",
                    "type": "choices",
                    "value": {"choices": [label]},
                }
            ],
        }
        for i, label in enumerate(labels)
    ]
    anns += [
        {"id": 999 + i, "completed_by": 9, "was_cancelled": True, "result": []}
        for i in range(cancelled)
    ]
    return {"id": task_id, "data": {"text": text}, "annotations": anns, "predictions": []}


def write_export(path, *tasks):
    path.write_text(json.dumps(list(tasks)))
    return path


def labeled(params) -> pd.DataFrame:
    return pd.read_csv(LabeledPaths(params).labeled, dtype=str, keep_default_na=False)


def test_new_texts_are_added_with_provenance(tiny_params, tmp_path):
    export = write_export(
        tmp_path / "export.json",
        ls_task(
            1,
            "Has my replacement card been posted yet?",
            "card_arrival",
            "card_arrival",
            "exchange_rate",
        ),
        ls_task(2, "I think my wallet was stolen", "lost_or_stolen_card", cancelled=1),
    )
    before = labeled(tiny_params)
    summary = import_labels(export, tiny_params, now=NOW, version=False)

    assert (summary.added, summary.corrected, summary.unchanged, summary.quarantined) == (
        2,
        0,
        0,
        0,
    )
    after = labeled(tiny_params)
    assert list(after.columns) == list(LABELED_COLUMNS)
    assert len(after) == len(before) + 2
    new = after.tail(2).set_index("source_id")
    assert new.loc["1", "label"] == "card_arrival"
    assert new.loc["1", "annotator_count"] == "3"
    assert float(new.loc["1", "agreement"]) == pytest.approx(2 / 3, abs=1e-4)
    assert new.loc["2", "annotator_count"] == "1"  # the skipped annotation is not a vote
    assert set(new["source"]) == {"import"}
    assert set(new["imported_at"]) == {"2026-11-23T10:00:00+00:00"}
    assert new["batch_id"].iloc[0].startswith("import-20261123T100000Z-")


def test_ties_and_low_agreement_are_quarantined_not_guessed(tiny_project, tmp_path):
    write_params(tiny_project, label_import={"min_agreement": 0.6})
    params = load_params(tiny_project / "params.yaml")
    export = write_export(
        tmp_path / "export.json",
        ls_task(1, "Card or rate, who knows", "card_arrival", "exchange_rate"),
        ls_task(2, "Three opinions on this one", "card_arrival", "exchange_rate", "top_up_failed"),
        ls_task(3, "Two of three agree here", "top_up_failed", "top_up_failed", "exchange_rate"),
    )
    summary = import_labels(export, params, now=NOW, version=False)
    assert (summary.added, summary.quarantined) == (1, 2)
    quarantine = pd.read_csv(LabeledPaths(params).quarantine).tail(2)
    assert set(quarantine["check"]) == {"vote"}
    reasons = " ".join(quarantine["reason"])
    assert "tie" in reasons and "below min_agreement" in reasons


def test_a_new_label_for_a_known_text_replaces_it_and_is_recorded(tiny_params, tmp_path):
    old = labeled(tiny_params).iloc[0]
    new_label = "exchange_rate" if old["label"] != "exchange_rate" else "card_arrival"
    # Same text up to case and whitespace.
    text = "  " + old["text"].upper() + " "
    pd.DataFrame({"text": [text], "label": [new_label]}).to_csv(tmp_path / "fix.csv", index=False)

    summary = import_labels(tmp_path / "fix.csv", tiny_params, now=NOW, version=False)
    assert (summary.added, summary.corrected) == (0, 1)
    after = labeled(tiny_params)
    assert len(after) == len(labeled(tiny_params))
    row = after.iloc[0]
    assert row["label"] == new_label and row["source"] == "import"
    corrections = pd.read_csv(LabeledPaths(tiny_params).corrections)
    assert corrections.loc[0, "old_label"] == old["label"]
    assert corrections.loc[0, "new_label"] == new_label
    assert corrections.loc[0, "old_source"] == f"seed:{old['source_file']}:{old['source_id']}"


def test_reimporting_the_same_export_changes_nothing(tiny_params, tmp_path):
    export = write_export(
        tmp_path / "e.json", ls_task(1, "Where's the card I ordered?", "card_arrival")
    )
    import_labels(export, tiny_params, now=NOW, version=False)
    files = LabeledPaths(tiny_params)
    snapshot = [p.read_bytes() for p in (files.labeled, files.quarantine, files.corrections)]
    summary = import_labels(export, tiny_params, now=NOW, version=False)
    assert not summary.changed and summary.unchanged == 1
    assert [
        p.read_bytes() for p in (files.labeled, files.quarantine, files.corrections)
    ] == snapshot


def test_unknown_labels_are_listed_and_nothing_is_written(tiny_params, tmp_path):
    export = write_export(
        tmp_path / "e.json",
        ls_task(7, "Can I freeze my card?", "freeze_card"),
        ls_task(8, "Where is my card?", "card_arival"),
    )
    before = LabeledPaths(tiny_params).labeled.read_bytes()
    with pytest.raises(DataError) as exc:
        import_labels(export, tiny_params, now=NOW, version=False)
    message = str(exc.value)
    assert "2 label(s) not in the label set" in message
    assert "'card_arival' (1 row(s): 8)" in message and "'freeze_card'" in message
    assert LabeledPaths(tiny_params).labeled.read_bytes() == before


def test_allow_new_accepts_new_classes_into_the_label_set(tiny_project, tmp_path):
    write_params(
        tiny_project,
        labels={"allow_new": True},
        validation={"min_examples_per_class": 1, "severity": {"min_examples_per_class": "warn"}},
    )
    params = load_params(tiny_project / "params.yaml")
    export = write_export(tmp_path / "e.json", ls_task(7, "Can I freeze my card?", "freeze_card"))
    summary = import_labels(export, params, now=NOW, version=False)
    assert summary.new_labels == ["freeze_card"]
    assert "freeze_card" in read_label_file(LabeledPaths(params).labels)


def test_rows_failing_the_gate_are_quarantined_with_the_import(tiny_params, tmp_path):
    from slmops.tasks.data.dataset import read_test

    leaked = read_test(tiny_params)["text"].iloc[0]
    pd.DataFrame(
        {"text": [leaked, "A fresh question about my card delivery"], "label": ["card_arrival"] * 2}
    ).to_csv(tmp_path / "l.csv", index=False)
    summary = import_labels(tmp_path / "l.csv", tiny_params, now=NOW, version=False)
    assert (summary.added, summary.quarantined) == (1, 1)
    quarantine = pd.read_csv(LabeledPaths(tiny_params).quarantine)
    last = quarantine.iloc[-1]
    assert last["check"] == "leakage" and last["source"] == "import"


@pytest.mark.slow
def test_import_records_a_new_dvc_version(tiny_project, tmp_path):
    from slmops.tasks.data.versioning import data_hash, track

    dvc_project(tiny_project)
    params = load_params(tiny_project / "params.yaml")
    paths = LabeledPaths(params)
    track([paths.dir, paths.test_dir], tiny_project, push=True)
    before = data_hash(paths.dir)

    export = copy_fixture("label_studio/export_full.json", tmp_path)
    summary = import_labels(export, params, now=NOW)
    assert summary.version and summary.version != before
    assert data_hash(paths.dir) == summary.version
    assert any((tiny_project / ".dvc-remote").rglob("*"))  # pushed to the default remote


def test_pending_exports_move_to_done_and_bad_ones_stay(tiny_params, tmp_path):
    pending = tiny_params.path(tiny_params.data.pending_dir)
    pending.mkdir(parents=True)
    write_export(pending / "a.json", ls_task(1, "When will my card come?", "card_arrival"))
    (pending / "b.json").write_text('[{"id": 1, "data": {"text": "x"}, "annotations": [')
    with pytest.raises(DataError, match=r"1 of 2 pending export\(s\) rejected") as exc:
        import_pending(tiny_params, version=False)
    assert "b.json" in str(exc.value)
    assert (tiny_params.path(tiny_params.data.imported_dir) / "a.json").exists()
    assert (pending / "b.json").exists()
