"""Crash safety: SIGKILL the real code path at its step boundaries, then re-run.

Each kill runs the step in a child process that patches one function (inside the
child only) to ``SIGKILL`` its own process at the chosen point. After the kill
the state must be consistent, or become so on the re-run:

- the ``champion`` alias (what the service resolves) and the ledger's last
  ``champion_after`` agree, and the champion's gate tag says it passed (or was
  forced);
- a refused, unfinished or unregistered challenger never becomes the champion;
- feedback rows reach the labeled data exactly once and ``data/labeled.dvc`` is
  committed and matches the data.

Training resume (``test_train.py``) and ingestion killed before ``dvc add`` or
before the watermark (``test_feedback_ingest.py``) are tested where they live.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from slmops.tasks.core.config import load_params
from slmops.tasks.core.errors import DataError, PromotionError
from slmops.tasks.registry import ledger
from slmops.tasks.registry.promotion import (
    CHAMPION,
    PREVIOUS,
    alias_version,
    apply,
    client,
    reconcile,
)
from slmops.tasks.registry.registration import resolve_leftovers
from slmops.tasks.registry.store import Registry
from tests.conftest import REPO, dvc_project, run
from tests.tasks.registry.test_promotion import add_version, correctness

pytestmark = pytest.mark.slow

PRELUDE = """
import os, signal, sys
sys.path.insert(0, {repo!r})
os.environ.pop("MLFLOW_TRACKING_URI", None)

def die(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)

def then_die(fn):
    def wrapped(*args, **kwargs):
        fn(*args, **kwargs)
        die()
    return wrapped

from slmops.tasks.core.config import load_params
params = load_params({params!r})
"""


def kill_run(root: Path, *parts: str) -> None:
    """Run the code ``parts`` (after :data:`PRELUDE`) in a child in ``root``; it must die
    of SIGKILL."""
    script = root / "killed_step.py"
    prelude = PRELUDE.format(repo=str(REPO), params=str(root / "params.yaml"))
    script.write_text("\n".join(textwrap.dedent(part) for part in (prelude, *parts)))
    proc = subprocess.run(
        [sys.executable, str(script)], cwd=root, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]


def serving_version(params) -> str | None:
    """The version the service would load: ``models:/<name>@champion``."""
    from slmops.serving.model_source import NoChampion, RegistrySource

    try:
        return RegistrySource(params).champion().version
    except NoChampion:
        return None


def assert_consistent(params) -> str | None:
    """The alias and the ledger agree; what serves passed the gate. Returns the champion."""
    mc = client(params)
    name = params.registry.model_name
    champion = alias_version(mc, name, CHAMPION)
    entries = ledger.read(params.path(params.registry.ledger))
    assert (entries[-1]["champion_after"] if entries else None) == champion
    assert serving_version(params) == champion
    if champion is not None:
        tags = mc.get_model_version(name, champion).tags
        assert tags["gate.decision"] in ("promoted", "forced")
    for entry in entries:  # nothing refused or unfinished was ever recorded as serving
        after = entry["champion_after"]
        if after is not None:
            assert mc.get_model_version(name, after).tags["gate.decision"] != "refused"
    return champion


# --------------------------------------------------------------------------- promotion


@pytest.fixture
def registry(tmp_path: Path, monkeypatch):
    """An embedded registry with a champion (version 1, recorded in the ledger); an
    equally good challenger passes the gate (no significance test), a weak one does not."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    raw = {
        "gate": {"min_accuracy": 0.6, "min_macro_f1": 0.5, "significance": "none"},
        "export": {"enabled": False},  # crafted versions hold no model to export
    }
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    params = load_params(tmp_path / "params.yaml")
    apply(params, good_version(params))
    return params


def good_version(params) -> str:
    """A challenger as good as the champion, on the same rows: the gate promotes it."""
    return add_version(params, correctness(300, 60), params.root)


def apply_in_child(params, point: str, version: str) -> None:
    """Gate ``version`` in a child killed at ``point`` of :data:`PROMOTION_KILLS`."""
    kill_run(
        params.root,
        PROMOTION_KILLS[point],
        f"from slmops.tasks.registry.promotion import apply\napply(params, {version!r})\n",
    )


# Where ``apply`` is killed: after the gate tags, before any alias moves; between
# ``previous`` and ``champion``; after both aliases, before the ledger entry; and
# half-way through writing the ledger line.
PROMOTION_KILLS = {
    "before-aliases": """
        from mlflow import MlflowClient
        MlflowClient.set_registered_model_alias = die
    """,
    "between-aliases": """
        from mlflow import MlflowClient
        move = MlflowClient.set_registered_model_alias
        def moving(self, name, alias, version):
            if alias == "champion":
                die()
            move(self, name, alias, version)
        MlflowClient.set_registered_model_alias = moving
    """,
    "before-ledger": """
        import slmops.tasks.registry.ledger
        slmops.tasks.registry.ledger.append = die
    """,
    "mid-ledger-write": """
        import slmops.tasks.registry.ledger
        def torn(path, entry):
            with open(path, "a") as fh:
                fh.write('{"time": "2026-01-01T00:00:00+00:00", "action": "ga')
                fh.flush()
            die()
        slmops.tasks.registry.ledger.append = torn
    """,
}


def test_a_promotion_killed_anywhere_leaves_alias_and_ledger_agreeing_after_a_rerun(registry):
    params = registry
    name = params.registry.model_name
    mc = client(params)
    path = params.path(params.registry.ledger)
    champion = "1"
    for point in PROMOTION_KILLS:
        challenger = good_version(params)
        apply_in_child(params, point, challenger)
        found = alias_version(mc, name, CHAMPION)
        # Serving moves only to the challenger the gate promoted, tags and all.
        assert found in (champion, challenger) and serving_version(params) == found, point
        assert mc.get_model_version(name, challenger).tags["gate.decision"] == "promoted"
        # The re-run: gating the challenger again completes the promotion, or (when
        # the alias had moved) records it and says it is already the champion.
        if point in ("before-aliases", "between-aliases"):
            assert found == champion, point
            _, promoted = apply(params, challenger)
            assert promoted
            assert ledger.read(path)[-1]["action"] == "gate"
        else:
            assert found == challenger, point  # moved, but the ledger (was) left behind
            with pytest.raises(PromotionError, match="already the champion"):
                apply(params, challenger)
            entry = ledger.read(path)[-1]
            assert entry["action"] == "reconcile" and entry["champion_before"] == champion
            assert "gate: promoted" in entry["reason"]
        assert assert_consistent(params) == challenger, point
        assert alias_version(mc, name, PREVIOUS) == champion, point
        champion = challenger
    assert [e["champion_after"] for e in ledger.read(path)] == [str(v) for v in range(1, 6)]

    # A refused challenger killed after its gate tags, before its ledger entry:
    # nothing moved, and the re-run records the refusal.
    weak = add_version(params, correctness(300, 150, seed=1), params.root)
    apply_in_child(params, "before-ledger", weak)
    assert mc.get_model_version(name, weak).tags["gate.decision"] == "refused"
    assert assert_consistent(params) == champion
    _, promoted = apply(params, weak)
    assert not promoted
    assert assert_consistent(params) == champion
    assert ledger.read(path)[-1]["version"] == weak


def test_a_rollback_killed_after_its_alias_move_is_recorded_on_the_next_action(registry):
    params = registry
    name = params.registry.model_name
    mc = client(params)
    apply(params, good_version(params))
    expected = [("1", "2"), ("2", "1")]  # (champion, previous) after each rollback
    for point, (champion, previous) in zip(
        ("between-aliases", "before-ledger"), expected, strict=True
    ):
        body = PROMOTION_KILLS[point].replace('alias == "champion"', 'alias == "previous"')
        kill_run(
            params.root,
            body,
            "from slmops.tasks.registry.promotion import rollback\nrollback(params)\n",
        )
        assert alias_version(mc, name, CHAMPION) == champion, point  # the move happened
        entry = reconcile(params)  # what the next promotion or rollback does first
        assert entry["action"] == "reconcile" and entry["champion_after"] == champion
        assert assert_consistent(params) == champion
        assert alias_version(mc, name, PREVIOUS) == previous, point  # as rollback leaves it
        assert reconcile(params) is None


# --------------------------------------------------------------------------- DVC commit


def test_feedback_ingestion_killed_inside_dvc_add_or_before_git_commit_lands_once(
    tiny_project: Path, git_identity
):
    from slmops.tasks.data.dataset import LabeledPaths, load_label_set, read_labeled
    from slmops.tasks.data.versioning import track
    from slmops.tasks.feedback.ingest import watermark
    from slmops.tasks.feedback.store import FeedbackStore
    from slmops.tasks.pipeline.prepare import ingest_feedback
    from tests.tasks.feedback.test_ingest import NEW_TEXTS, predict_and_correct

    root = dvc_project(tiny_project)
    params = load_params(root / "params.yaml")
    paths = LabeledPaths(params)
    track([paths.dir, paths.test_dir], root, push=False)
    for cmd in (["git", "add", "-A"], ["git", "commit", "-qm", "data"]):
        assert run(cmd, root).returncode == 0
    labels = load_label_set(params)
    kills = {
        # dvc add run in this process, killed once the data is in the cache but
        # before data/labeled.dvc is rewritten.
        "inside-dvc-add": """
            import dvc.stage, slmops.tasks.feedback.ingest as ingest
            from dvc.cli import main
            def track(paths, root, push):
                dvc.stage.Stage.dump = die
                main(["add", "--quiet", *(str(p.relative_to(root)) for p in paths)])
            ingest.track = track
        """,
        "before-git-commit": """
            import slmops.tasks.feedback.ingest as ingest
            ingest.commit_data_version = die
        """,
    }
    batches = [NEW_TEXTS[:2], NEW_TEXTS[2:]]
    for (point, body), batch in zip(kills.items(), batches, strict=True):
        with FeedbackStore.from_params(params) as store:
            before = watermark(store)
            ids = predict_and_correct(store, labels, batch)
        kill_run(
            root,
            body,
            "from slmops.tasks.feedback.store import FeedbackStore\n"
            "from slmops.tasks.pipeline.prepare import ingest_feedback\n"
            "ingest_feedback(params, FeedbackStore.from_params(params))\n",
        )
        with FeedbackStore.from_params(params) as store:
            assert watermark(store) == before, point  # the watermark moves last
            result = ingest_feedback(params, store)
            assert result.already_in_data == len(ids), point
            assert watermark(store) == max(ids)
        fed = read_labeled(params).query("source == 'feedback'")
        assert fed["source_id"].value_counts().max() == 1  # each row exactly once
        assert {str(i) for i in ids} <= set(fed["source_id"])
        status = run(["git", "status", "--porcelain", "data/labeled.dvc"], root)
        assert status.stdout == "", point  # committed
        dvc_status = run([sys.executable, "-m", "dvc", "status", "data/labeled.dvc"], root)
        assert dvc_status.returncode == 0 and "changed" not in dvc_status.stdout, point
    assert len(fed) == len(NEW_TEXTS)
    log = run(["git", "log", "--format=%s", "--", "data/labeled.dvc"], root).stdout
    assert log.count("feedback") == 2


# ------------------------------------------------------------- evaluation, registration


def test_evaluation_and_registration_killed_never_register_or_serve_a_mismatch(
    tmp_path: Path, monkeypatch, git_identity
):
    from slmops.tasks.pipeline.challenger import (
        evaluate_challenger,
        model_digest,
        register_challenger,
        train_challenger,
    )
    from slmops.tasks.pipeline.prepare import write_splits
    from tests.conftest import training_project

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    root = training_project(tmp_path, train={"epochs": 1}, export={"enabled": False})
    monkeypatch.chdir(root)
    params = load_params(root / "params.yaml")
    name = params.registry.model_name
    write_splits(params)
    model_dir = params.path(params.train.output_dir)
    train_challenger(params, progress=False)
    evaluate_challenger(params)
    first = model_digest(model_dir)

    # A new model (one more epoch); its evaluation is killed after metrics.json,
    # before predictions.csv and report.json: the files mix two models.
    raw = yaml.safe_load((root / "params.yaml").read_text())
    raw["train"]["epochs"] = 2
    (root / "params.yaml").write_text(yaml.safe_dump(raw))
    params = load_params(root / "params.yaml")
    train_challenger(params, progress=False)
    assert model_digest(model_dir) != first
    kill_run(
        root,
        """
        import slmops.tasks.model.evaluate
        slmops.tasks.model.evaluate.write_csv_atomic = die
        from slmops.tasks.pipeline.challenger import evaluate_challenger
        evaluate_challenger(params)
        """,
    )
    with pytest.raises(DataError, match="not of the model"):
        register_challenger(params)  # (was: registered with the other model's predictions)
    evaluate_challenger(params)  # the re-run

    # Registration killed with its MLflow run open, before the version exists; then
    # after the version exists, before the run ends and before any gate.
    for body in (
        "import slmops.tasks.pipeline.challenger as c\nc.log_model = die\n",
        "import slmops.tasks.pipeline.challenger as c\nc.register = then_die(c.register)\n",
    ):
        kill_run(root, body, "c.register_challenger(params)\n")
        assert serving_version(params) is None
        assert assert_consistent(params) is None
    mc = client(params)
    versions = mc.search_model_versions(f"name='{name}'")
    assert [(str(v.version), v.tags["gate.decision"]) for v in versions] == [("1", "pending")]
    assert versions[0].tags["registration"] == "pending"  # its run never ended
    registry = Registry.of(params)
    killed = registry.runs(params.registry.experiment, "RUNNING")
    assert len(killed) == 2

    # The re-run: the same model, so the version the killed registration created is
    # completed and returned (was: a second version of the same model); then the
    # runs the kills left RUNNING are marked FAILED.
    registered = register_challenger(params)
    assert (registered.version, registered.reused) == ("1", True)
    found = resolve_leftovers(params)
    assert sorted(found.failed_runs) == sorted(r.run_id for r in killed)
    assert registry.runs(params.registry.experiment, "RUNNING") == []
    assert [v.version for v in registry.versions(name)] == ["1"]
    assert registry.version(name, "1").tags["registration"] == "complete"
    _, promoted = apply(params, registered.version)
    assert promoted and assert_consistent(params) == "1"
    with pytest.raises(PromotionError, match="already the champion"):
        apply(params, "1")
