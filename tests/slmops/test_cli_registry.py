"""`slmops models` and `slmops promote` on what a killed registration left: versions whose
registration never completed are shown, completed when intact, refused (with how to
remove them) when not."""

from pathlib import Path

import yaml

from slmops.tasks.core.config import load_params
from slmops.tasks.registry.registration import COMPLETE, registration_state
from slmops.tasks.registry.store import Registry
from tests.slmops.run_cli import cli
from tests.tasks.registry.test_registration import dead_owner, other_host, version


def rows(output: str) -> dict[str, str]:
    """The table rows of `slmops models`, by version."""
    found = {}
    for line in output.splitlines():
        cells = line.split()
        if cells and cells[0].isdigit():
            found[cells[0]] = line
    return found


def test_models_shows_unfinished_registrations_and_promote_resolves_them(
    tmp_path: Path, monkeypatch, capsys
):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    raw = {
        "gate": {"min_accuracy": 0.6, "min_macro_f1": 0.5, "significance": "none"},
        "export": {"enabled": False},  # crafted versions hold no model to export
    }
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    params = load_params(tmp_path / "params.yaml")
    name = params.registry.model_name
    intact, run_id = version(params, tmp_path, owner=dead_owner())
    broken, _ = version(params, tmp_path, owner=other_host(), digest="sha256:bb", model_files=False)

    code, output = cli(monkeypatch, capsys, "models")
    assert code == 0, output
    table = rows(output)
    assert "pending" in table[intact] and "pending" in table[broken]
    assert f"registration not complete (a crash midway): version(s) {broken}, {intact}" in output
    assert "`slmops promote --version N`" in output and "`slmops models --delete N`" in output

    # Its registration cannot be completed (no weights) nor checked (another host).
    code, output = cli(monkeypatch, capsys, "promote", "--version", broken)
    assert code == 1
    assert "model files are incomplete" in output and f"slmops models --delete {broken}" in output

    # Intact: the leftover run is marked FAILED, the version completed, gated and promoted.
    code, output = cli(monkeypatch, capsys, "promote", "--version", intact)
    assert code == 0 and f"champion is now version {intact}" in output, output
    registry = Registry.of(params)
    assert registry.run(run_id).status == "FAILED"
    assert registration_state(registry.version(name, intact)) == COMPLETE

    code, output = cli(monkeypatch, capsys, "models", "--delete", intact)
    assert code == 1 and "is champion: not removed" in output
    code, output = cli(monkeypatch, capsys, "models", "--delete", broken)
    assert code == 0 and f"removed {name} version {broken}" in output
    code, output = cli(monkeypatch, capsys, "models")
    assert list(rows(output)) == [intact] and "registration not complete" not in output
    assert "complete" in rows(output)[intact]
