"""A training run's checkpoints: what identifies the run, saving and finding them, and
the final atomic copy of the best weights into the model folder.

Checkpoints (``checkpoint_dir``, removed once the model is written)::

    last/   config.json, model.safetensors   weights after the last completed epoch
            training_state.pt                optimizer, scheduler, grad scaler, RNG states
            trainer.json                     epoch, history, best score and epoch
            fingerprint.json                 hash of data + labels + training settings
    best/   config.json, model.safetensors   weights of the best epoch (the task type's
                                             best metric on the validation rows)
            best.json                        its epoch and score

Each folder is written to a temporary sibling and renamed into place, so a kill
never leaves a half-written checkpoint. A run whose fingerprint matches
``last/`` resumes after its epoch; any other run starts fresh and replaces it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import random
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from slmops.tasks.core.config import TrainConfig
from slmops.tasks.core.task_type import TaskType
from slmops.tasks.model.inference import LABELS_FILE

LAST = "last"
BEST = "best"
STATE_FILE = "training_state.pt"
TRAINER_FILE = "trainer.json"
FINGERPRINT_FILE = "fingerprint.json"
BEST_FILE = "best.json"

# Settings that change the weights a run ends with; the others (device, threads,
# folders) may differ between a killed run and its resumption.
FINGERPRINT_FIELDS = (
    "base_model",
    "epochs",
    "batch_size",
    "learning_rate",
    "weight_decay",
    "warmup_ratio",
    "max_grad_norm",
    "max_length",
    "bucket_batches",
    "early_stopping_patience",
    "data_fraction",
    "seed",
    "precision",
)


# --------------------------------------------------------------------------- identity


def fingerprint(
    train: pd.DataFrame,
    val: pd.DataFrame,
    labels: list[str],
    cfg: TrainConfig,
    task: TaskType,
) -> dict[str, Any]:
    """What identifies a run: hashes of the data and the label list, the task, its
    settings (:meth:`TaskType.settings`) and the training settings."""

    def frame_hash(df: pd.DataFrame) -> str:
        h = hashlib.sha256()
        for text, label in zip(df["text"], df["label"], strict=True):
            h.update(json.dumps([str(text), str(label)], ensure_ascii=False).encode("utf-8"))
            h.update(b"\n")
        return h.hexdigest()

    settings = cfg.model_dump(mode="json")
    return {
        "train": frame_hash(train),
        "val": frame_hash(val),
        "labels": hashlib.sha256(json.dumps(list(labels)).encode("utf-8")).hexdigest(),
        "task": task.name.value,
        "config": {**{k: settings[k] for k in FINGERPRINT_FIELDS}, **task.settings()},
    }


def changes(saved: Any, fp: dict[str, Any]) -> str:
    """What differs between a checkpoint's fingerprint ``saved`` and ``fp``, for logs."""
    if not isinstance(saved, dict):
        return "unreadable fingerprint"
    return ", ".join(
        [
            k
            for k in ("train", "val", "labels", "task", "world_size")
            if saved.get(k, 1 if k == "world_size" else None) != fp[k]
        ]
        + [
            f"config.{k}"
            for k in fp["config"]
            if (saved.get("config") or {}).get(k) != fp["config"][k]
        ]
    )


# --------------------------------------------------------------------------- finding


@dataclass
class Checkpoint:
    """The ``last/`` checkpoint found in a checkpoint folder."""

    path: Path
    #: its ``trainer.json`` when its fingerprint is the run's (it resumes), else None
    trainer: dict[str, Any] | None
    #: what changed when it does not resume (see :func:`changes`)
    changed: str = ""


def find_last(checkpoint_dir: Path) -> Path | None:
    """The ``last/`` checkpoint of ``checkpoint_dir``, if a complete one is there."""
    last = checkpoint_dir / LAST
    if (last / TRAINER_FILE).is_file():
        return last
    # Killed between the two renames of replace_dir: the previous one is intact.
    old = checkpoint_dir / f".{LAST}.old"
    if (old / TRAINER_FILE).is_file():
        return old
    return None


def find_checkpoint(checkpoint_dir: Path, fp: dict[str, Any]) -> Checkpoint | None:
    """The ``last/`` checkpoint and whether the run with fingerprint ``fp`` resumes it."""
    path = find_last(checkpoint_dir)
    if path is None:
        return None
    try:
        saved = json.loads((path / FINGERPRINT_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        saved = None
    if saved != fp:
        return Checkpoint(path, None, changes(saved, fp))
    return Checkpoint(path, json.loads((path / TRAINER_FILE).read_text(encoding="utf-8")))


def clear_checkpoints(checkpoint_dir: Path) -> None:
    """Remove what this module wrote in ``checkpoint_dir`` (and the folder if then empty)."""
    if not checkpoint_dir.is_dir():
        return
    for child in checkpoint_dir.iterdir():
        ours = child.name in (LAST, BEST) or child.name.startswith((f".{LAST}.", f".{BEST}."))
        if ours and child.is_dir():
            shutil.rmtree(child)
    if not any(checkpoint_dir.iterdir()):
        checkpoint_dir.rmdir()


# --------------------------------------------------------------------------- writing


def replace_dir(tmp: Path, dest: Path) -> None:
    """Move the finished folder ``tmp`` to ``dest``, replacing what was there."""
    old = dest.with_name(f".{dest.name}.old")
    if old.exists():
        shutil.rmtree(old)
    if dest.exists():
        dest.rename(old)
    tmp.rename(dest)
    if old.exists():
        shutil.rmtree(old)


def temp_dir(dest: Path) -> Path:
    """A new temporary sibling of ``dest`` to write into before :func:`replace_dir`."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-", dir=dest.parent))


def write_json(obj: Any, path: Path) -> None:
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


@contextlib.contextmanager
def no_transformers_bars(quiet: bool = True) -> Iterator[None]:
    """Hide transformers' own progress bars (one-shard saves, weight loading)."""
    # transformers is heavy and only needed once a model is loaded or saved.
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    if quiet and was_enabled:
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if quiet and was_enabled:
            hf_logging.enable_progress_bar()


def save_weights(model, dest: Path, extra: dict[str, Any]) -> None:
    """``model``'s weights and config, and ``extra`` files (``.json``: JSON, else
    ``torch.save``), written to ``dest`` at once."""
    tmp = temp_dir(dest)
    try:
        with no_transformers_bars():
            model.save_pretrained(tmp)
        for name, obj in extra.items():
            if name.endswith(".json"):
                write_json(obj, tmp / name)
            else:
                torch.save(obj, tmp / name)
        replace_dir(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def save_checkpoint(
    model,
    checkpoint_dir: Path,
    *,
    optimizer,
    scheduler,
    scaler,
    history: list[dict],
    best_score: float,
    best_epoch: int,
    fp: dict[str, Any],
) -> None:
    """``last/`` after the epoch that ends ``history``, and ``best/`` too when it was
    the best epoch so far."""
    epoch = history[-1]["epoch"]
    if best_epoch == epoch:
        save_weights(
            model, checkpoint_dir / BEST, {BEST_FILE: {"epoch": epoch, "score": best_score}}
        )
    save_weights(
        model,
        checkpoint_dir / LAST,
        {
            STATE_FILE: {
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict(),
                "rng": rng_states(),
            },
            TRAINER_FILE: {
                "epoch": epoch,
                "history": history,
                "best_score": best_score,
                "best_epoch": best_epoch,
            },
            FINGERPRINT_FILE: fp,
        },
    )


def load_training_state(checkpoint: Path, optimizer, scheduler, scaler) -> None:
    """Restore the optimizer, scheduler, grad scaler and RNG states saved in ``checkpoint``."""
    state = torch.load(checkpoint / STATE_FILE, map_location="cpu", weights_only=True)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    scaler.load_state_dict(state["scaler"])
    set_rng_states(state["rng"])


def write_model(checkpoint_dir: Path, output_dir: Path, tokenizer, outputs: Sequence[str]) -> None:
    """The best weights, the tokenizer and ``labels.json`` (``outputs``) into
    ``output_dir`` all at once; then the checkpoints are removed."""
    tmp = temp_dir(output_dir)
    try:
        for item in (checkpoint_dir / BEST).iterdir():
            if item.is_file() and item.name != BEST_FILE:
                shutil.copy2(item, tmp / item.name)
        tokenizer.save_pretrained(tmp)
        write_json(list(outputs), tmp / LABELS_FILE)
        replace_dir(tmp, output_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    clear_checkpoints(checkpoint_dir)


# --------------------------------------------------------------------------- RNG


def rng_states() -> dict[str, Any]:
    """The Python, numpy, torch and CUDA random states, in a ``weights_only`` form."""
    np_state = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_states(states: dict[str, Any]) -> None:
    """Restore what :func:`rng_states` returned (CUDA's only on as many GPUs)."""
    py = states["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    kind, keys, *rest = states["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), *rest))
    torch.set_rng_state(states["torch"])
    cuda = states.get("cuda") or []
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
