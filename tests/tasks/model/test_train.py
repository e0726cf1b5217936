"""Fine-tuning: the whole path on a tiny BERT, batching, resumption, early stopping."""

from __future__ import annotations

import json
import logging
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from slmops.tasks.core.config import ConfigError, TrainConfig
from slmops.tasks.core.errors import DataError
from slmops.tasks.model.checkpoints import BEST, FINGERPRINT_FILE, LAST, STATE_FILE, TRAINER_FILE
from slmops.tasks.model.inference import LABELS_FILE, Predictor
from slmops.tasks.model.runtime import resolve_base_model
from slmops.tasks.model.train import _adamw, _param_groups, length_bucketed_batches, train_model
from slmops.tasks.task_types import SequenceClassification
from tests.tasks.tiny_model import SEED_TRAIN, TINY_LABELS, make_tiny_model, tiny_frames

SEQUENCE = SequenceClassification()
HISTORY_KEYS = {
    "epoch",
    "train_loss",
    "val_loss",
    "val_accuracy",
    "val_macro_f1",
    "examples_per_s",
    "tokens_per_s",
    "seconds",
    "lr",
}


class Interrupt(RuntimeError):
    """Stands in for a kill during the epoch after the one just checkpointed."""


def kill_after(epoch: int):
    def on_epoch(row: dict) -> None:
        if row["epoch"] == epoch:
            raise Interrupt(f"killed after epoch {epoch}")

    return on_epoch


@pytest.fixture(scope="module")
def base_model(tmp_path_factory) -> str:
    return str(make_tiny_model(tmp_path_factory.mktemp("tiny") / "model"))


@pytest.fixture(scope="module")
def frames() -> tuple[pd.DataFrame, pd.DataFrame]:
    return tiny_frames()


def config(base_model: str, **overrides) -> TrainConfig:
    settings = {
        "base_model": base_model,
        "epochs": 4,
        "batch_size": 8,
        "learning_rate": 1e-2,
        "warmup_ratio": 0.1,
        "early_stopping_patience": 0,
        "device": "cpu",
        "num_threads": 2,
    }
    return TrainConfig(**{**settings, **overrides})


def weights(model_dir: Path) -> dict:
    return load_file(model_dir / "model.safetensors")


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for key in wa:
        assert (wa[key] == wb[key]).all(), key


def without_timings(history: list[dict]) -> list[dict]:
    timing = {"examples_per_s", "tokens_per_s", "seconds"}
    return [{k: v for k, v in row.items() if k not in timing} for row in history]


@pytest.fixture(scope="module")
def baseline(base_model, frames, tmp_path_factory):
    """An uninterrupted 4-epoch run: the reference the other runs are compared with."""
    train, val = frames
    root = tmp_path_factory.mktemp("baseline")
    rows: list[dict] = []
    result = train_model(
        train,
        val,
        TINY_LABELS,
        config(base_model),
        root / "model",
        root / "checkpoints",
        on_epoch=rows.append,
        progress=False,
        task=SEQUENCE,
    )
    return result, rows, root


# --------------------------------------------------------------------------- the whole run


def test_training_writes_a_loadable_model(baseline, frames):
    result, rows, root = baseline
    model_dir = root / "model"
    assert result.model_dir == model_dir
    assert (model_dir / "model.safetensors").is_file()
    assert not list(model_dir.glob("*.bin"))
    assert (model_dir / "config.json").is_file()
    assert (model_dir / "tokenizer.json").is_file()
    assert json.loads((model_dir / LABELS_FILE).read_text()) == TINY_LABELS
    assert not (root / "checkpoints").exists(), "a finished run leaves no checkpoints"
    assert not [p for p in root.iterdir() if p.name.startswith(".")], "no temporary folders"

    assert result.epochs_run == 4
    assert result.resumed_from_epoch is None
    assert result.device == "cpu"
    assert result.precision == "fp32"
    assert result.train_examples == len(frames[0])
    assert result.seconds > 0
    assert result.params["learning_rate"] == 1e-2
    assert result.params["steps_per_epoch"] == math.ceil(len(frames[0]) / 8)
    assert [row["epoch"] for row in result.history] == [1, 2, 3, 4]
    assert rows == result.history, "on_epoch sees every epoch's metrics"
    for row in result.history:
        assert set(row) == HISTORY_KEYS
        assert 0.0 <= row["val_accuracy"] <= 1.0
        assert 0.0 <= row["val_macro_f1"] <= 1.0
        assert row["examples_per_s"] > 0 and row["tokens_per_s"] > row["examples_per_s"]
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"], "it learns"
    best = max(result.history, key=lambda r: r["val_macro_f1"])
    assert result.best_epoch == best["epoch"]

    predictor = Predictor.from_dir(model_dir, device="cpu", task=SEQUENCE)
    assert predictor.labels == TINY_LABELS
    assert len(predictor.predict(frames[1]["text"].tolist())) == len(frames[1])


def test_same_seed_gives_identical_weights(baseline, base_model, frames, tmp_path):
    result, _, root = baseline
    again = train_model(
        *frames,
        TINY_LABELS,
        config(base_model),
        tmp_path / "model",
        tmp_path / "ck",
        progress=False,
        task=SEQUENCE,
    )
    assert_same_weights(root / "model", again.model_dir)
    assert without_timings(again.history) == without_timings(result.history)


def test_other_seed_gives_other_weights(baseline, base_model, frames, tmp_path):
    other = train_model(
        *frames,
        TINY_LABELS,
        config(base_model, epochs=1, seed=7),
        tmp_path / "model",
        tmp_path / "ck",
        progress=False,
        task=SEQUENCE,
    )
    first = baseline[0].history[0]
    assert other.history[0]["train_loss"] != first["train_loss"]


def test_resume_after_a_kill_ends_with_the_same_weights(
    baseline, base_model, frames, tmp_path, caplog
):
    result, _, root = baseline
    cfg = config(base_model)
    # Killed after the last epoch (before the model is written): last/ holds the
    # final weights and optimizer state of an uninterrupted run.
    straight = tmp_path / "straight"
    with pytest.raises(Interrupt):
        train_model(*frames, TINY_LABELS, cfg, straight / "model", straight / "ck",
                    on_epoch=kill_after(4), progress=False, task=SEQUENCE)  # fmt: skip

    out, ck = tmp_path / "model", tmp_path / "ck"
    with pytest.raises(Interrupt):
        train_model(
            *frames,
            TINY_LABELS,
            cfg,
            out,
            ck,
            on_epoch=kill_after(1),
            progress=False,
            task=SEQUENCE,
        )
    assert not out.exists(), "no model is written before the run completes"
    for name in ("model.safetensors", "config.json", STATE_FILE, TRAINER_FILE, FINGERPRINT_FILE):
        assert (ck / LAST / name).is_file(), name
    assert (ck / BEST / "model.safetensors").is_file()
    assert json.loads((ck / LAST / TRAINER_FILE).read_text())["epoch"] == 1

    with caplog.at_level(logging.INFO, logger="slmops.tasks.model.train"), pytest.raises(Interrupt):
        train_model(
            *frames,
            TINY_LABELS,
            cfg,
            out,
            ck,
            on_epoch=kill_after(4),
            progress=False,
            task=SEQUENCE,
        )
    assert "resuming from epoch 1" in caplog.text
    assert_same_weights(straight / "ck" / LAST, ck / LAST)
    state_a = torch.load(straight / "ck" / LAST / STATE_FILE, weights_only=True)
    state_b = torch.load(ck / LAST / STATE_FILE, weights_only=True)
    for key, value in state_a["optimizer"]["state"].items():
        for name, tensor in value.items():
            assert torch.equal(tensor, state_b["optimizer"]["state"][key][name]), (key, name)
    assert state_a["scheduler"] == state_b["scheduler"]

    # All epochs done, only the model left to write: it resumes to write it.
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="slmops.tasks.model.train"):
        resumed = train_model(*frames, TINY_LABELS, cfg, out, ck, progress=False, task=SEQUENCE)
    assert "resuming from epoch 4" in caplog.text
    assert resumed.resumed_from_epoch == 4
    assert resumed.epochs_run == 4
    assert without_timings(resumed.history) == without_timings(result.history)
    assert resumed.best_epoch == result.best_epoch
    assert_same_weights(root / "model", out)
    assert not ck.exists()


def test_a_changed_fingerprint_starts_fresh(base_model, frames, tmp_path, caplog):
    out, ck = tmp_path / "model", tmp_path / "ck"
    with pytest.raises(Interrupt):
        train_model(
            *frames,
            TINY_LABELS,
            config(base_model, epochs=2),
            out,
            ck,
            on_epoch=kill_after(1),
            progress=False,
            task=SEQUENCE,
        )
    changed = config(base_model, epochs=2, learning_rate=1e-3)
    with caplog.at_level(logging.INFO, logger="slmops.tasks.model.train"):
        result = train_model(*frames, TINY_LABELS, changed, out, ck, progress=False, task=SEQUENCE)
    assert "starting fresh" in caplog.text
    assert "config.learning_rate" in caplog.text
    assert "resuming" not in caplog.text
    assert result.resumed_from_epoch is None
    assert [row["epoch"] for row in result.history] == [1, 2]
    assert not ck.exists()


def test_a_kill_between_the_renames_of_last_still_resumes(base_model, frames, tmp_path, caplog):
    out, ck = tmp_path / "model", tmp_path / "ck"
    cfg = config(base_model, epochs=2)
    with pytest.raises(Interrupt):
        train_model(
            *frames,
            TINY_LABELS,
            cfg,
            out,
            ck,
            on_epoch=kill_after(1),
            progress=False,
            task=SEQUENCE,
        )
    # The previous last/ moved aside, the new one not yet in place.
    (ck / LAST).rename(ck / f".{LAST}.old")
    with caplog.at_level(logging.INFO, logger="slmops.tasks.model.train"):
        result = train_model(*frames, TINY_LABELS, cfg, out, ck, progress=False, task=SEQUENCE)
    assert "resuming from epoch 1" in caplog.text
    assert result.resumed_from_epoch == 1
    assert not ck.exists()


def test_early_stopping_stops_when_macro_f1_stalls(base_model, frames, tmp_path, caplog):
    # A learning rate this small cannot move a prediction: macro-F1 never improves.
    cfg = config(base_model, epochs=5, learning_rate=1e-9, early_stopping_patience=1)
    with caplog.at_level(logging.INFO, logger="slmops.tasks.model.train"):
        result = train_model(
            *frames,
            TINY_LABELS,
            cfg,
            tmp_path / "model",
            tmp_path / "ck",
            progress=False,
            task=SEQUENCE,
        )
    assert result.epochs_run == 2
    assert [row["epoch"] for row in result.history] == [1, 2]
    assert result.best_epoch == 1
    assert "early stopping after epoch 2" in caplog.text


def test_data_fraction_trains_on_a_share_of_every_class(base_model, frames, tmp_path):
    cfg = config(base_model, epochs=1, data_fraction=0.5)
    result = train_model(
        *frames,
        TINY_LABELS,
        cfg,
        tmp_path / "model",
        tmp_path / "ck",
        progress=False,
        task=SEQUENCE,
    )
    assert result.train_examples == len(TINY_LABELS) * 6


def test_fp16_on_cpu_is_a_clear_error(base_model, frames, tmp_path):
    cfg = config(base_model, precision="fp16")
    with pytest.raises(ConfigError, match="fp16 needs a CUDA GPU"):
        train_model(
            *frames,
            TINY_LABELS,
            cfg,
            tmp_path / "model",
            tmp_path / "ck",
            progress=False,
            task=SEQUENCE,
        )
    assert not (tmp_path / "ck").exists()


def test_unknown_labels_are_rejected(base_model, frames, tmp_path):
    train, val = frames
    bad = train.copy()
    bad.loc[0, "label"] = "not_a_label"
    with pytest.raises(DataError, match="not_a_label"):
        train_model(
            bad,
            val,
            TINY_LABELS,
            config(base_model),
            tmp_path / "m",
            tmp_path / "c",
            progress=False,
            task=SEQUENCE,
        )


def test_the_fused_optimizer_makes_the_same_update_as_the_plain_one():
    """Fused AdamW (one kernel per group instead of a loop over every tensor)."""
    cfg = TrainConfig(learning_rate=1e-2, weight_decay=0.1)
    torch.manual_seed(0)
    fused_model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.LayerNorm(8))
    plain_model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.LayerNorm(8))
    plain_model.load_state_dict(fused_model.state_dict())
    fused = _adamw(fused_model, cfg, torch.device("cpu"))
    assert fused.defaults["fused"] is True
    plain = torch.optim.AdamW(_param_groups(plain_model, 0.1), lr=1e-2, foreach=False)
    x = torch.randn(16, 8)
    for _ in range(5):
        for model, opt in ((fused_model, fused), (plain_model, plain)):
            opt.zero_grad()
            model(x).pow(2).sum().backward()
            opt.step()
    for a, b in zip(fused_model.parameters(), plain_model.parameters(), strict=True):
        torch.testing.assert_close(a, b)


# --------------------------------------------------------------------------- data helpers


@pytest.fixture(scope="module")
def real_lengths() -> np.ndarray:
    from transformers import AutoTokenizer

    texts = pd.read_csv(SEED_TRAIN, dtype=str)["text"].head(1000).tolist()
    tokenizer = AutoTokenizer.from_pretrained(resolve_base_model("minilm"))
    return np.array([len(ids) for ids in tokenizer(texts, truncation=True)["input_ids"]])


def padding(batches: list[np.ndarray], lengths: np.ndarray) -> int:
    return int(sum(lengths[b].max() * len(b) - lengths[b].sum() for b in batches))


def test_bucketed_batches_cover_every_index_once(real_lengths):
    batches = length_bucketed_batches(real_lengths, 32, 10, np.random.default_rng(0))
    flat = np.concatenate(batches)
    assert len(flat) == len(real_lengths)
    assert sorted(flat.tolist()) == list(range(len(real_lengths)))
    assert len(batches) == math.ceil(len(real_lengths) / 32)
    assert all(1 <= len(b) <= 32 for b in batches)


def test_bucketed_batches_are_sorted_within_windows(real_lengths):
    batch_size, window_batches = 32, 10
    unshuffled = length_bucketed_batches(
        real_lengths, batch_size, window_batches, np.random.default_rng(0), shuffle_batches=False
    )
    for start in range(0, len(unshuffled), window_batches):
        window = np.concatenate(unshuffled[start : start + window_batches])
        assert len(window) <= batch_size * window_batches
        assert (np.diff(real_lengths[window]) >= 0).all()
    # Shuffling changes the order of the batches, not the batches.
    shuffled = length_bucketed_batches(
        real_lengths, batch_size, window_batches, np.random.default_rng(0)
    )
    assert sorted(map(tuple, shuffled)) == sorted(map(tuple, unshuffled))
    assert [tuple(b) for b in shuffled] != [tuple(b) for b in unshuffled]


def test_bucketed_batches_pad_less_than_random_batches(real_lengths):
    rng = np.random.default_rng(0)
    bucketed = length_bucketed_batches(real_lengths, 32, 10, rng)
    perm = np.random.default_rng(0).permutation(len(real_lengths))
    random_batches = [perm[i : i + 32] for i in range(0, len(perm), 32)]
    assert padding(bucketed, real_lengths) * 3 < padding(random_batches, real_lengths)


def test_bucketed_batches_change_with_the_generator(real_lengths):
    a = length_bucketed_batches(real_lengths, 32, 10, np.random.default_rng([13, 1]))
    b = length_bucketed_batches(real_lengths, 32, 10, np.random.default_rng([13, 1]))
    c = length_bucketed_batches(real_lengths, 32, 10, np.random.default_rng([13, 2]))
    assert [tuple(x) for x in a] == [tuple(x) for x in b]
    assert [tuple(x) for x in a] != [tuple(x) for x in c]


KILLABLE = """
import sys, time
from pathlib import Path
sys.path.insert(0, {repo!r})
import slmops.tasks.model.train as t
from slmops.tasks.core.config import TrainConfig
from slmops.tasks.task_types import SequenceClassification
from tests.tasks.tiny_model import TINY_LABELS, tiny_frames

SEQUENCE = SequenceClassification()
marker = Path({marker!r})
calls = {{"n": 0}}
real_pad = t.pad_batch

def pad_batch(*args, **kwargs):
    # Training batches of epoch 2 start after epoch 1's 8 training and 1 validation
    # batches: halfway through epoch 2, say so and hang until killed.
    calls["n"] += 1
    if calls["n"] == 13 and not marker.exists():
        marker.write_text("mid-epoch 2")
        time.sleep(600)
    return real_pad(*args, **kwargs)

t.pad_batch = pad_batch
train, val = tiny_frames()
cfg = TrainConfig(base_model={base!r}, epochs=4, batch_size=8, learning_rate=1e-2,
                  warmup_ratio=0.1, early_stopping_patience=0, device="cpu", num_threads=2)
r = t.train_model(train, val, TINY_LABELS, cfg, Path({out!r}), Path({ck!r}), progress=False,
                  task=SEQUENCE)
print("resumed_from_epoch", r.resumed_from_epoch)
"""


@pytest.mark.slow
def test_sigkill_mid_epoch_then_rerun_resumes_to_the_same_weights(baseline, base_model, tmp_path):
    import signal
    import subprocess
    import sys
    import time

    from tests.conftest import REPO

    _, _, root = baseline
    out, ck, marker = tmp_path / "model", tmp_path / "ck", tmp_path / "killed-here"
    script = tmp_path / "killable.py"
    script.write_text(
        KILLABLE.format(
            repo=str(REPO), marker=str(marker), base=base_model, out=str(out), ck=str(ck)
        )
    )
    proc = subprocess.Popen([sys.executable, str(script)], cwd=tmp_path)
    try:
        deadline = time.monotonic() + 120
        while not marker.exists():
            assert proc.poll() is None, "training ended before reaching epoch 2"
            assert time.monotonic() < deadline, "epoch 2 never started"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    assert json.loads((ck / LAST / TRAINER_FILE).read_text())["epoch"] == 1
    assert not out.exists()

    rerun = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "resumed_from_epoch 1" in rerun.stdout
    assert_same_weights(root / "model", out)  # as if it had never been killed


# --------------------------------------------------------------------------- progress reports

PROGRESS_KEYS = {
    "epoch",
    "epochs",
    "step",
    "steps",
    "epoch_step",
    "epoch_steps",
    "percent",
    "loss",
    "examples_per_s",
    "seconds",
    "lr",
    "epoch_end",
}
PROGRESS_LINE = re.compile(
    r"^epoch (\d+)/(\d+), step (\d+)/(\d+) \(\d+%\): loss \d+\.\d{4}, \d+\.\d examples/s$"
)


def test_report_every_seconds_0_reports_every_step_and_trains_the_same(
    baseline, base_model, frames, tmp_path, caplog
):
    reports: list[dict] = []
    with caplog.at_level(logging.INFO, logger="slmops.tasks.model.train"):
        result = train_model(
            *frames,
            TINY_LABELS,
            config(base_model, report_every_seconds=0),
            tmp_path / "model",
            tmp_path / "ck",
            on_progress=reports.append,
            progress=False,
            task=SEQUENCE,
        )
    total = result.params["total_steps"]
    per_epoch = result.params["steps_per_epoch"]
    assert total == 4 * per_epoch > 4
    # One report per step (an epoch's last step is its end: not reported twice).
    assert [r["step"] for r in reports] == list(range(1, total + 1))
    assert all(set(r) == PROGRESS_KEYS for r in reports)
    assert [r["epoch_end"] for r in reports] == [False] * total
    first, last = reports[0], reports[-1]
    assert (first["epoch"], first["epoch_step"], first["epochs"], first["steps"]) == (
        1,
        1,
        4,
        total,
    )
    assert (last["epoch"], last["epoch_step"], last["percent"]) == (4, per_epoch, 100.0)
    assert all(math.isfinite(r["loss"]) and r["loss"] > 0 for r in reports)
    assert all(r["examples_per_s"] > 0 and r["lr"] >= 0 for r in reports)  # warm-up: 0 first
    # The last report of an epoch is the epoch's train loss.
    assert last["loss"] == pytest.approx(result.history[-1]["train_loss"], rel=1e-5)
    # Without a progress bar each report is a log line.
    lines = [m.groups() for r in caplog.records if (m := PROGRESS_LINE.match(r.getMessage()))]
    assert [int(g[2]) for g in lines] == list(range(1, total + 1))
    # Reading the loss for a report changes nothing that is trained.
    assert_same_weights(baseline[2] / "model", tmp_path / "model")


def test_reports_come_when_due_on_the_clock_and_at_each_epoch_end(
    base_model, frames, tmp_path, monkeypatch, caplog
):
    import slmops.tasks.model.train as train_module

    # A clock 10 s on at every read: read once when training starts, then once a step,
    # so a report every 25 s is due at every third step.
    ticks = iter(range(0, 10**6, 10))
    monkeypatch.setattr(train_module, "_clock", lambda: next(ticks))
    reports: list[dict] = []
    with caplog.at_level(logging.INFO, logger="slmops.tasks.model.train"):
        result = train_model(
            *frames,
            TINY_LABELS,
            config(base_model, epochs=2, report_every_seconds=25),
            tmp_path / "model",
            tmp_path / "ck",
            on_progress=reports.append,
            progress=False,
            task=SEQUENCE,
        )
    total, per_epoch = result.params["total_steps"], result.params["steps_per_epoch"]
    due = list(range(3, total + 1, 3))
    assert [r["step"] for r in reports if not r["epoch_end"]] == due
    ends = [e * per_epoch for e in (1, 2) if e * per_epoch not in due]
    assert [r["step"] for r in reports if r["epoch_end"]] == ends
    assert reports[-1]["percent"] == 100.0
    # A log line for each report due on the clock; an epoch's end has its own line.
    lines = [int(m[3]) for r in caplog.records if (m := PROGRESS_LINE.match(r.getMessage()))]
    assert lines == due


def test_a_progress_bar_run_without_on_progress_has_no_report_lines(
    base_model, frames, tmp_path, caplog
):
    with caplog.at_level(logging.INFO, logger="slmops.tasks.model.train"):
        train_model(
            *frames,
            TINY_LABELS,
            config(base_model, epochs=1, report_every_seconds=0),
            tmp_path / "model",
            tmp_path / "ck",
            progress=True,
            task=SEQUENCE,
        )
    assert not any(PROGRESS_LINE.match(r.getMessage()) for r in caplog.records)
    assert "epoch 1/1: train loss" in caplog.text
