import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from tests.slmops.run_cli import cli

STARTUP_TIMEOUT = "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"


def test_help_lists_the_commands(monkeypatch, capsys):
    code, output = cli(monkeypatch, capsys, "--help")
    assert code == 0
    for command in (
        *("validate", "import-labels", "data", "split", "prepare", "demo", "train"),
        *("evaluate", "register", "promote", "rollback", "models", "retrain"),
    ):
        assert command in output


def test_validate_passes_on_the_built_data(tiny_project, monkeypatch, capsys):
    monkeypatch.chdir(tiny_project)
    code, output = cli(monkeypatch, capsys, "validate")
    assert code == 0, output
    assert output.count("PASSED") == 2


def test_validate_names_each_problem_and_quarantines_rows(tiny_project, monkeypatch, capsys):
    monkeypatch.chdir(tiny_project)
    labeled = pd.read_csv(tiny_project / "data/labeled/labeled.csv")[["text", "label"]]
    test_text = pd.read_csv(tiny_project / "data/test/test.csv")["text"].iloc[0]
    bad = pd.concat(
        [
            labeled,
            pd.DataFrame(
                {
                    "text": [None, "Where can I find my card PIN?", labeled["text"][0], test_text],
                    "label": ["card_arrival", "pin_queries", "card_arrival", "card_arrival"],
                }
            ),
        ]
    )
    bad.to_csv(tiny_project / "bad.csv", index=False)

    code, output = cli(monkeypatch, capsys, "validate", "bad.csv")
    assert code == 1
    for problem in ("text is empty", "'pin_queries' is not in the label set", "duplicate of row 1"):
        assert problem in output
    assert "also appears in the test split" in output
    quarantine = pd.read_csv(tiny_project / "reports/validation/bad/quarantine.csv")
    assert sorted(quarantine["check"]) == ["exact_duplicate", "label_in_set", "leakage", "not_null"]
    assert (tiny_project / "reports/validation/bad/report.json").exists()


def test_missing_file_is_a_clear_error(tiny_project, monkeypatch, capsys):
    monkeypatch.chdir(tiny_project)
    code, output = cli(monkeypatch, capsys, "validate", "nope.csv")
    assert code == 1
    assert "nope.csv: file not found" in output


def test_bad_params_name_the_key(tiny_project, monkeypatch, capsys):
    monkeypatch.chdir(tiny_project)
    (tiny_project / "params.yaml").write_text("split:\n  sed: 3\n")
    code, output = cli(monkeypatch, capsys, "split")
    assert code == 1
    assert "params.yaml" in output and "split.sed: unknown key" in output


PARAMS_PLACES = [
    # (arguments, SLMOPS_PARAMS, the params file the command reads)
    (("--params", "typo.yaml", "split"), None, "typo.yaml"),
    (("-p", "typo.yaml", "split"), None, "typo.yaml"),
    (("split", "--params", "typo.yaml"), None, "typo.yaml"),
    (("--params", "typo.yaml", "split", "--params", "params.yaml"), None, "params.yaml"),
    (("--params", "params.yaml", "split", "-p", "typo.yaml"), None, "typo.yaml"),
    (("split",), "typo.yaml", "typo.yaml"),
    (("--params", "params.yaml", "split"), "typo.yaml", "params.yaml"),
    (("split", "--params", "params.yaml"), "typo.yaml", "params.yaml"),
    (("--params", "typo.yaml", "data", "init"), None, "typo.yaml"),
    (("--params", "typo.yaml", "demo"), None, "typo.yaml"),
]


@pytest.mark.parametrize(
    ("args", "env", "read"),
    PARAMS_PLACES,
    ids=[" ".join(a) + f" env={e}" for a, e, _ in PARAMS_PLACES],
)
def test_params_before_or_after_the_command(tiny_project, monkeypatch, capsys, args, env, read):
    """`slmops --params ner/params.yaml retrain` was "No such option: --params": the
    option goes before the command too; after the command it wins, and SLMOPS_PARAMS
    counts only when neither is given."""
    monkeypatch.chdir(tiny_project)
    (tiny_project / "typo.yaml").write_text("split:\n  sed: 3\n")
    monkeypatch.delenv("SLMOPS_PARAMS", raising=False)
    if env:
        monkeypatch.setenv("SLMOPS_PARAMS", env)
    code, output = cli(monkeypatch, capsys, *args)
    if read == "typo.yaml":
        assert code == 1, output
        assert "typo.yaml" in output and "split.sed: unknown key" in output
    else:
        assert code == 0, output
        assert "train rows" in output
    assert "No such option" not in output


def test_help_shows_params_before_the_command(monkeypatch, capsys):
    code, output = cli(monkeypatch, capsys, "--help")
    assert code == 0 and "--params" in output and "SLMOPS_PARAMS" in output


@pytest.mark.parametrize("export", ["unknown.csv"])
def test_import_with_unknown_labels_fails_and_changes_nothing(
    tiny_project, monkeypatch, capsys, export
):
    monkeypatch.chdir(tiny_project)
    pd.DataFrame(
        {"text": ["how do I freeze my card", "is there an app"], "label": ["freeze", "app"]}
    ).to_csv(tiny_project / export, index=False)
    before = (tiny_project / "data/labeled/labeled.csv").read_bytes()
    code, output = cli(monkeypatch, capsys, "import-labels", export)
    assert code == 1
    assert "2 label(s) not in the label set: 'app'" in output
    assert "'freeze'" in output and "labels.allow_new" in output
    assert (tiny_project / "data/labeled/labeled.csv").read_bytes() == before


def test_registry_commands_on_an_empty_registry_fail_clearly(tiny_project, monkeypatch, capsys):
    monkeypatch.chdir(tiny_project)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    code, output = cli(monkeypatch, capsys, "models")
    assert code == 0 and "no versions of slmops-intent registered yet" in output
    code, output = cli(monkeypatch, capsys, "rollback")
    assert code == 1 and "nothing to roll back to" in output
    code, output = cli(monkeypatch, capsys, "promote", "--version", "7")
    assert code == 1 and "slmops-intent has no version '7'" in output
    assert not (tiny_project / "mlflow" / "promotions.jsonl").exists()  # nothing recorded


def test_train_without_a_split_says_what_to_run(tiny_project, monkeypatch, capsys):
    monkeypatch.chdir(tiny_project)
    code, output = cli(monkeypatch, capsys, "train")
    assert code == 1 and "run `slmops split`" in output


@pytest.mark.parametrize(
    ("preset", "expected"),
    [(None, "180"), ("45", "45")],
    ids=["default", "user-value-kept"],
)
def test_the_ephemeral_prefect_server_gets_time_to_start(preset, expected):
    """Prefect's own 20 s made `slmops demo` fail on a busy 2-core machine."""
    env = {k: v for k, v in os.environ.items() if k != STARTUP_TIMEOUT}
    if preset is not None:
        env[STARTUP_TIMEOUT] = preset
    code = (
        "import slmops.cli, prefect.settings as s; "
        "print(s.get_current_settings().server.ephemeral.startup_timeout_seconds)"
    )
    run = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert run.stdout.strip() == expected


def test_next_steps_name_the_chosen_projects_paths(tiny_project, monkeypatch):
    """`slmops demo -p ner/params.yaml` pointed at the root project's data/labeled.dvc."""
    from slmops.cli import next_steps
    from slmops.tasks.core.config import load_params

    monkeypatch.chdir(tiny_project.parent)
    params = Path(tiny_project.name) / "params.yaml"
    text = next_steps(load_params(params), params)
    assert f"slmops models -p {params}`" in text
    assert f"git diff {tiny_project.name}/data/labeled.dvc`" in text
    assert f"reports are in {tiny_project.name}/reports/eval/" in text

    monkeypatch.chdir(tiny_project)
    text = next_steps(load_params(Path("params.yaml")), Path("params.yaml"))
    assert "`slmops models`" in text and "`git diff data/labeled.dvc`" in text


def test_feedback_prune_counts_then_deletes_old_predictions_without_feedback(
    tiny_project, monkeypatch, capsys
):
    from datetime import UTC, datetime, timedelta

    import yaml

    from slmops.tasks.core.config import load_params
    from slmops.tasks.feedback.store import FeedbackStore, NewPrediction, predictions_table

    monkeypatch.chdir(tiny_project)
    params = load_params(tiny_project / "params.yaml")
    with FeedbackStore.from_params(params) as store:
        old, recent = store.log_predictions(
            [NewPrediction(t, "card_arrival", 0.5, [], "m", "1") for t in ("old", "new")]
        )
        with store.engine.begin() as conn:
            conn.execute(
                predictions_table.update()
                .where(predictions_table.c.id == old)
                .values(created_at=datetime.now(UTC) - timedelta(days=31))
            )

        code, output = cli(monkeypatch, capsys, "feedback", "prune", "--dry-run")
        assert code == 0, output
        assert "1 prediction(s) without feedback older than 30 day(s)" in output
        assert "would be deleted (dry run)" in output
        assert store.get_prediction(old) is not None

        code, output = cli(monkeypatch, capsys, "feedback", "prune")
        assert code == 0 and "1 prediction(s)" in output and output.rstrip().endswith("deleted")
        assert store.get_prediction(old) is None and store.get_prediction(recent) is not None

        raw = yaml.safe_load((tiny_project / "params.yaml").read_text())
        raw["feedback"] = {"retention_days": None}
        (tiny_project / "params.yaml").write_text(yaml.safe_dump(raw))
        code, output = cli(monkeypatch, capsys, "feedback", "prune")
        assert code == 0 and "kept forever" in output
        assert store.get_prediction(recent) is not None
