"""A failing flow says which step failed and why (state message, CLI, webhook) and leaves
the champion, the ledger and the labeled data as they were."""

import io
import logging
import sys

import pytest

from tests.snapshots import labeled_state, tree_digest
from tests.webhook import Webhook, refused_url

pytestmark = pytest.mark.slow


def cli(monkeypatch, *args: str) -> tuple[int, str]:
    """Run `slmops <args>` in-process; return the exit code and all it printed.

    Its consoles write to a buffer rather than to capsys: a Prefect log handler
    set up while capsys is active would keep its stream after the test closes it.
    """
    from rich.console import Console

    import slmops.cli
    from slmops.cli import main

    buffer = io.StringIO()
    console = Console(file=buffer, width=300, color_system=None)
    monkeypatch.setattr(slmops.cli, "out", console)
    monkeypatch.setattr(slmops.cli, "err", console)
    monkeypatch.setattr(sys, "argv", ["slmops", *args])
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        main()
        code = 0
    except SystemExit as exc:
        code = exc.code or 0
    finally:  # the CLI's log handler goes with it
        root.handlers[:], root.level = handlers, level
    return code, buffer.getvalue()


@pytest.fixture
def corrupt_train_split(monkeypatch):
    """The train split as the train step reads it holds a label outside the label set."""
    import slmops.tasks.pipeline.challenger as challenger

    real = challenger._splits

    def corrupt(params):
        train, val = real(params)
        return train.assign(label="not_a_label"), val

    monkeypatch.setattr(challenger, "_splits", corrupt)


def flow_run_message(state) -> str:
    """The state message of the run as the Prefect API (and so the UI) holds it."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        run = client.read_flow_run(state.state_details.flow_run_id)
    assert run.state.is_failed()
    return run.state.message


def test_a_failing_train_step_is_named_everywhere_and_changes_nothing(
    project, monkeypatch, request
):
    from slmops.flows.retrain import retrain
    from slmops.tasks.core.config import load_params
    from slmops.tasks.registry.promotion import CHAMPION, alias_version, client

    params_path = str(project / "params.yaml")
    params = load_params(params_path)
    code, output = cli(monkeypatch, "retrain", "--epochs", "1", "--params", params_path)
    assert code == 0, output
    assert "slmops-intent version 1" in output and "promoted to champion" in output
    mc = client(params)
    name = params.registry.model_name
    ledger = project / "mlflow" / "promotions.jsonl"
    before = {"labeled": labeled_state(project), "ledger": tree_digest(ledger)}
    request.getfixturevalue("corrupt_train_split")

    with Webhook() as hook:
        monkeypatch.setenv("SLMOPS_NOTIFY_URL", hook.url)
        state = retrain(params_path=params_path, trigger="test", return_state=True)
        assert state.is_failed()
        message = flow_run_message(state)
        assert message == state.message
        assert message == (
            "step 'train' failed: DataError: train: labels not in the label set: ['not_a_label']"
        )
        assert len(hook.posts) == 1
        post = hook.posts[0]["json"]
        assert post["event"] == "flow_failed" and post["flow"] == "retrain"
        assert post["step"] == "train" and post["error"] == message.removeprefix(
            "step 'train' failed: "
        )
        assert post["state"] == "Failed" and post["message"] == message
        assert post["flow_run_id"] == str(state.state_details.flow_run_id)
        assert post["trigger"] == "test"

        # The CLI: the same message, exit 1.
        code, output = cli(monkeypatch, "retrain", "--params", params_path)
        assert code == 1, output
        assert f"error: flow retrain failed: {message}" in output
        assert len(hook.posts) == 2 and hook.posts[1]["json"]["step"] == "train"

    # Nothing after the failed step ran: champion, registry, ledger and data as before.
    assert alias_version(mc, name, CHAMPION) == "1"
    assert [str(v.version) for v in mc.search_model_versions(f"name='{name}'")] == ["1"]
    assert {"labeled": labeled_state(project), "ledger": tree_digest(ledger)} == before


def test_a_refused_webhook_leaves_the_original_failure_reported(
    project, monkeypatch, caplog, corrupt_train_split
):
    from slmops.flows.retrain import retrain
    from slmops.tasks.core.errors import DataError

    monkeypatch.setenv("SLMOPS_NOTIFY_URL", refused_url("/hook/s3cr3t"))
    before = labeled_state(project)
    with pytest.raises(DataError, match="not_a_label"):  # the step's own exception, for a caller
        retrain(params_path=str(project / "params.yaml"))
    assert "notification flow_failed not delivered: ConnectionRefusedError" in caplog.text
    assert "s3cr3t" not in caplog.text
    assert labeled_state(project) == before


def test_a_bad_params_file_fails_the_load_params_step(project, monkeypatch):
    (project / "params.yaml").write_text("train:\n  epoch: 2\n")
    code, output = cli(monkeypatch, "prepare", "--params", str(project / "params.yaml"))
    assert code == 1
    assert "flow prepare-data failed: step 'load-params' failed: ConfigError: " in output
    assert "train.epoch: unknown key" in output


def test_a_failing_retrain_subflow_is_named_through_the_ingest_step(project, corrupt_train_split):
    from slmops.flows.ingest_feedback import ingest_feedback_flow
    from slmops.tasks.feedback.ingest import RETRAIN_MARK, watermark
    from slmops.tasks.feedback.store import FeedbackStore
    from tests.flows.feedback import corrections_past_the_threshold

    path = project / "params.yaml"
    params = corrections_past_the_threshold(project)

    state = ingest_feedback_flow(params_path=str(path), return_state=True)

    assert state.is_failed()
    assert flow_run_message(state) == (
        "step 'trigger-retrain' failed: retrain: step 'train' failed: DataError: "
        "train: labels not in the label set: ['not_a_label']"
    )
    with FeedbackStore.from_params(params) as store:
        assert watermark(store, RETRAIN_MARK) == 0  # the next ingestion retrains again
