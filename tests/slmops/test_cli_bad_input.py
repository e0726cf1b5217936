"""Bad input catalogue for the command line: wrong arguments are a usage message and
exit 2, bad files an `error:` line naming the file and the problem and exit 1, never a
traceback, and a rejected import leaves the labeled data and its .dvc file unchanged."""

from __future__ import annotations

import codecs
import json
from pathlib import Path

import pandas as pd
import pytest

from slmops.tasks.core.config import load_params
from slmops.tasks.data.versioning import track
from tests.conftest import GIT_IDENTITY, dvc_project, run
from tests.slmops.run_cli import cli
from tests.snapshots import labeled_state

FRESH = "my replacement card has still not arrived after ten days"


USAGE = [
    (("import-labels",), "Missing argument"),
    (("validate", "--bogus"), "No such option: --bogus"),
    (("nosuchcommand",), "No such command 'nosuchcommand'"),
    (("promote",), "Missing option '--version'"),
    (("export-review", "out.json", "--limit", "abc"), "Invalid value for '--limit'"),
    (("export-review", "out.json", "--limit", "-5"), "Invalid value for '--limit'"),
    (("retrain", "--epochs", "two"), "Invalid value for '--epochs'"),
    (("retrain", "--data-fraction", "half"), "Invalid value for '--data-fraction'"),
]


@pytest.mark.parametrize(("args", "expected"), USAGE, ids=[" ".join(a) for a, _ in USAGE])
def test_wrong_arguments_are_a_usage_error_not_a_traceback(
    tiny_project, monkeypatch, capsys, args, expected
) -> None:
    monkeypatch.chdir(tiny_project)
    before = labeled_state(tiny_project)
    code, output = cli(monkeypatch, capsys, *args)
    assert code == 2, output
    assert expected in output and "Usage:" in output
    assert "Traceback" not in output
    assert labeled_state(tiny_project) == before


BAD_PARAMS = [
    ("params_dir", None, "is a directory, not a params file"),
    ("missing.yaml", None, "params file not found"),
    ("typo.yaml", b"train:\n  epochz: 2\n", "train.epochz: unknown key"),
    ("truncated.yaml", b"train: {epochs: 2\n", "malformed YAML"),
    ("latin1.yaml", "x: caf\xe9\n".encode("latin-1"), "not UTF-8 text"),
]


@pytest.mark.parametrize(
    ("name", "content", "expected"), BAD_PARAMS, ids=[b[0] for b in BAD_PARAMS]
)
def test_a_bad_params_file_is_one_error_line_and_exit_1(
    tiny_project, monkeypatch, capsys, name, content, expected
) -> None:
    monkeypatch.chdir(tiny_project)
    path = tiny_project / name
    if name == "params_dir":
        path.mkdir()
    elif content is not None:
        path.write_bytes(content)
    code, output = cli(monkeypatch, capsys, "validate", "--params", name)
    assert code == 1, output
    assert f"error: {name}" in output and expected in output, output
    assert "Traceback" not in output


def test_an_unknown_profile_is_an_error_naming_it(tiny_project, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tiny_project)
    code, output = cli(monkeypatch, capsys, "train", "--profile", "nope")
    assert code == 1
    assert "profiles.nope: no such profile" in output and "Traceback" not in output


BAD_IMPORTS = [
    ("empty.csv", b"", "file is empty"),
    ("utf16.csv", f"text,label\n{FRESH},card_arrival\n".encode("utf-16-le"), "NUL byte at byte 1"),
    ("latin1.csv", "text,label\ncaf\xe9,card_arrival\n".encode("latin-1"), "not valid UTF-8"),
    ("truncated.json", b'[{"id": 1, "data": {"text": "x"}, "annotations": [', "malformed JSON"),
    ("no_label.csv", f"text\n{FRESH}\n".encode(), "missing column 'label'"),
    ("unknown.csv", f"text,label\n{FRESH},no_such_class\n".encode(), "'no_such_class'"),
    ("labels.txt", b"hello", "unknown file type '.txt'"),
]


@pytest.mark.parametrize(
    ("name", "content", "expected"), BAD_IMPORTS, ids=[b[0] for b in BAD_IMPORTS]
)
def test_a_rejected_import_exits_1_naming_the_file_and_writes_nothing(
    tiny_project, monkeypatch, capsys, name, content, expected
) -> None:
    monkeypatch.chdir(tiny_project)
    (tiny_project / name).write_bytes(content)
    before = labeled_state(tiny_project)
    code, output = cli(monkeypatch, capsys, "import-labels", name)
    assert code == 1, output
    assert f"error: {name}" in output and expected in output, output
    assert "Traceback" not in output
    assert labeled_state(tiny_project) == before


def test_missing_files_and_dotdot_paths_are_named(tiny_project, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tiny_project)
    before = labeled_state(tiny_project)
    code, output = cli(monkeypatch, capsys, "import-labels", "../../nowhere/labels.csv")
    assert code == 1 and "error: ../../nowhere/labels.csv: file not found" in output
    code, output = cli(monkeypatch, capsys, "import-labels", "--format", "xml", "data")
    assert code == 1 and "unknown format 'xml'" in output
    code, output = cli(monkeypatch, capsys, "import-labels", "data")
    assert code == 1 and "error: data:" in output
    assert labeled_state(tiny_project) == before


def test_a_good_file_after_a_bad_one_is_not_imported(tiny_project, monkeypatch, capsys) -> None:
    # Files are imported in order; the first failure stops the command with nothing of
    # the bad file written (earlier good files keep their own new version).
    monkeypatch.chdir(tiny_project)
    (tiny_project / "bad.csv").write_bytes(b"")
    (tiny_project / "good.csv").write_text(f"text,label\n{FRESH},card_arrival\n")
    before = labeled_state(tiny_project)
    code, output = cli(monkeypatch, capsys, "--verbose", "import-labels", "bad.csv", "good.csv")
    assert code == 1 and "error: bad.csv: file is empty" in output
    assert labeled_state(tiny_project) == before


def test_a_rejected_import_leaves_the_dvc_pointer_and_git_unchanged(
    tiny_project, monkeypatch, capsys
) -> None:
    dvc_project(tiny_project)
    params = load_params(tiny_project / "params.yaml")
    track([params.path(params.data.labeled_dir)], tiny_project, False)
    for cmd in (["git", "add", "-A"], ["git", "commit", "-qm", "data"]):
        assert run(cmd, tiny_project, env=GIT_IDENTITY).returncode == 0
    monkeypatch.chdir(tiny_project)
    (tiny_project / "bad.json").write_text(
        json.dumps([{"id": 1, "data": {"text": 3}, "annotations": []}])
    )
    before = labeled_state(tiny_project)
    assert (tiny_project / "data" / "labeled.dvc").is_file()

    code, output = cli(monkeypatch, capsys, "import-labels", "bad.json")

    assert code == 1 and "task 1 (index 0): data.text: expected a string, got a number" in output
    assert labeled_state(tiny_project) == before
    status = run(["git", "status", "--porcelain"], tiny_project).stdout
    assert status.strip() == "?? bad.json"


VALIDATE = [
    ("empty.csv", b"", "error: empty.csv: file is empty"),
    ("latin1.csv", "text,label\ncaf\xe9 card,card_arrival\n".encode("latin-1"), "not UTF-8 text"),
    (
        "utf16.csv",
        "text,label\nmy card,card_arrival\n".encode("utf-16-le"),
        "NUL bytes in the header row",
    ),
    ("utf16_bom.csv", "text,label\nmy card,card_arrival\n".encode("utf-16"), "not UTF-8 text"),
]


@pytest.mark.parametrize(("name", "content", "expected"), VALIDATE, ids=[v[0] for v in VALIDATE])
def test_validate_names_an_unreadable_file(
    tiny_project, monkeypatch, capsys, name, content, expected
):
    monkeypatch.chdir(tiny_project)
    (tiny_project / name).write_bytes(content)
    code, output = cli(monkeypatch, capsys, "validate", name)
    assert code == 1, output
    assert expected in output and "Traceback" not in output


def _labeled_pair(root: Path) -> pd.DataFrame:
    return pd.read_csv(root / "data/labeled/labeled.csv", dtype=str)[["text", "label"]]


def test_validate_reads_bom_and_crlf_and_quarantines_blank_and_huge_texts(
    tiny_project, monkeypatch, capsys
) -> None:
    monkeypatch.chdir(tiny_project)
    df = _labeled_pair(tiny_project)
    extra = pd.DataFrame(
        {"text": ["   ", "a" * 1_048_576, FRESH], "label": ["card_arrival", "card_arrival", None]}
    )
    body = pd.concat([df, extra]).to_csv(index=False, lineterminator="\r\n")
    (tiny_project / "mixed.csv").write_bytes(codecs.BOM_UTF8 + body.encode())
    code, output = cli(monkeypatch, capsys, "validate", "mixed.csv")
    assert code == 1, output
    q = pd.read_csv(tiny_project / "reports/validation/mixed/quarantine.csv", dtype=str)
    n = len(df)
    reasons = dict(
        zip(q["reason"].str.extract(r"row (\d+)")[0].astype(int), q["reason"], strict=True)
    )
    assert "text is empty" in reasons[n + 1]
    assert "text length 1048576 outside [2, 1000]" in reasons[n + 2]
    assert "label is empty" in reasons[n + 3]
    assert len(q) == 3  # every original row passed: BOM and CRLF did not spoil them


def test_a_label_set_change_between_train_and_test_fails_the_gate_by_name(
    tiny_project, monkeypatch, capsys
) -> None:
    monkeypatch.chdir(tiny_project)
    test = pd.read_csv(tiny_project / "data/test/test.csv", dtype=str)
    test.loc[0, "label"] = "pin_queries"  # a class the labeled data never had
    test = test.loc[test["label"] != "exchange_rate"]  # and one class gone from test
    test.to_csv(tiny_project / "data/test/test.csv", index=False)
    code, output = cli(monkeypatch, capsys, "validate")
    assert code == 1, output
    assert "'pin_queries' is not in the label set" in output
    assert "with no examples: exchange_rate" in output or "exchange_rate" in output
    report = json.loads((tiny_project / "reports/validation/test/report.json").read_text())
    assert {"label_in_set", "min_examples_per_class"} <= set(report["failed_checks"])
