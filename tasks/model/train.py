"""Fine-tuning the base model into a sequence or token classifier, resumable epoch by epoch.

A plain torch loop rather than ``transformers.Trainer``: it tokenizes once,
batches by length (each batch padded only to its own longest text: 2.25x the
throughput of random batches on BANKING77 on a CPU), checkpoints after every
epoch and resumes a killed run to the same weights an uninterrupted run ends with.

Checkpoints (``checkpoint_dir``, removed once the model is written)::

    last/   config.json, model.safetensors   weights after the last completed epoch
            training_state.pt                optimizer, scheduler, grad scaler, RNG states
            trainer.json                     epoch, history, best score and epoch
            fingerprint.json                 hash of data + labels + training settings
    best/   config.json, model.safetensors   weights of the best epoch (validation macro-F1;
                                             entity F1 for a token classifier)
            best.json                        its epoch and score

Each folder is written to a temporary sibling and renamed into place, so a kill
never leaves a half-written checkpoint. A run whose fingerprint matches
``last/`` resumes after its epoch; any other run starts fresh and replaces it.

Several GPUs (or processes): launch the same command with ``torchrun`` or
``accelerate launch``, no code change::

    torchrun --nproc_per_node 4 -m slmops train
    accelerate launch --num_processes 4 -m slmops train

Each process trains on its share of every epoch's batches (the same
length-bucketed order on every rank, dealt out round-robin) under
``DistributedDataParallel`` (NCCL on GPUs, gloo on CPUs), so the effective
batch is ``batch_size x processes``. Every rank scores the whole validation set,
so they all take the same early-stopping decision; rank 0 alone writes
checkpoints and the model. Several nodes need ``checkpoint_dir`` and
``output_dir`` on a filesystem they share.

Every task type shares the loop (``task``, :mod:`tasks.task_types`): the task
type samples and checks the rows, encodes them into inputs and targets, names
the model's outputs and scores each epoch on the validation rows. The targets
are a class id per row for ``sequence_classification``, and for
``token_classification`` (NER; label cells are span JSON, :mod:`tasks.task_types.token.spans`)
an id per token, the first sub-word of each word carrying the word's BIO tag
and the rest ``-100`` (:mod:`tasks.task_types.token.alignment`); its ``labels`` argument is
the list of entity types, its outputs (config and ``labels.json``) the BIO tag
names, ``O`` first. The loss is cross-entropy over the flattened logits with
``ignore_index=-100`` for both, so the batching, checkpoints, resumption, early
stopping, precision and DDP code is one. A token classifier's validation metrics
are the loss per labelled token, the word-level tag accuracy (``val_accuracy``,
every word of each text: words cut by truncation are predicted ``O``), the micro
entity F1 (``val_f1``, strict span match, the best-epoch and early-stopping
score) and the macro entity F1 over types (``val_macro_f1``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import random
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from slmops.tasks.core.config import ConfigError, TaskName, TrainConfig
from slmops.tasks.core.errors import DataError
from slmops.tasks.model.distributed import Dist
from slmops.tasks.model.inference import (
    LABELS_FILE,
    autocast,
    autocast_dtype,
    pad_batch,
    pick_device,
    precision_name,
    resolve_base_model,
)
from slmops.tasks.task_types import TaskType, ValScorer, task_type
from slmops.tasks.task_types.token.alignment import IGNORE_INDEX

log = logging.getLogger(__name__)

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


@dataclass
class TrainResult:
    """What a training run produced and how it went."""

    model_dir: Path
    history: list[dict]
    best_epoch: int
    epochs_run: int
    resumed_from_epoch: int | None
    device: str
    precision: str
    train_examples: int
    seconds: float
    params: dict = field(default_factory=dict)
    rank: int = 0  # this process's rank when several train together (rank 0 wrote the files)


# --------------------------------------------------------------------------- data


def length_bucketed_batches(
    lengths: np.ndarray,
    batch_size: int,
    bucket_batches: int,
    rng: np.random.Generator,
    *,
    shuffle_batches: bool = True,
) -> list[np.ndarray]:
    """One epoch of batches of similar-length examples.

    Shuffle all indices, cut them into windows of ``bucket_batches * batch_size``,
    sort each window by length, cut it into batches, then shuffle the batch order.
    Every index appears exactly once; only the last batch of each window can be
    short (so there are ``ceil(n / batch_size)`` batches).
    """
    lengths = np.asarray(lengths)
    perm = rng.permutation(len(lengths))
    window = batch_size * bucket_batches
    batches: list[np.ndarray] = []
    for start in range(0, len(perm), window):
        chunk = perm[start : start + window]
        chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
        batches.extend(chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size))
    if shuffle_batches:
        batches = [batches[i] for i in rng.permutation(len(batches))]
    return batches


def fingerprint(
    train: pd.DataFrame,
    val: pd.DataFrame,
    labels: list[str],
    cfg: TrainConfig,
    task: str | TaskType = TaskName.sequence_classification,
) -> dict[str, Any]:
    """What identifies a run: hashes of the data and the label list, the task, its
    settings (:meth:`TaskType.settings`) and the training settings."""

    def frame_hash(df: pd.DataFrame) -> str:
        h = hashlib.sha256()
        for text, label in zip(df["text"], df["label"], strict=True):
            h.update(json.dumps([str(text), str(label)], ensure_ascii=False).encode("utf-8"))
            h.update(b"\n")
        return h.hexdigest()

    task = task_type(task)
    settings = cfg.model_dump(mode="json")
    return {
        "train": frame_hash(train),
        "val": frame_hash(val),
        "labels": hashlib.sha256(json.dumps(list(labels)).encode("utf-8")).hexdigest(),
        "task": task.name.value,
        "config": {**{k: settings[k] for k in FINGERPRINT_FIELDS}, **task.settings()},
    }


def _check_frames(
    train: pd.DataFrame,
    val: pd.DataFrame,
    labels: list[str],
    task: str | TaskType = TaskName.sequence_classification,
) -> None:
    """Raise :class:`DataError` naming the frame (and the row) that cannot be trained on
    (``labels``: the label set; the rows' label cells are checked by the task type)."""
    if not labels:
        raise DataError("the label list is empty")
    if len(set(labels)) != len(labels):
        raise DataError("the label list has duplicates")
    for name, df in (("train", train), ("val", val)):
        for col in ("text", "label"):
            if col not in df.columns:
                raise DataError(f"{name}: no column {col!r} (has {list(df.columns)})")
        task_type(task).check_rows(name, df, labels)
    if train.empty:
        raise DataError("train: no rows to train on")


# --------------------------------------------------------------------------- files


def _replace_dir(tmp: Path, dest: Path) -> None:
    """Move the finished folder ``tmp`` to ``dest``, replacing what was there."""
    old = dest.with_name(f".{dest.name}.old")
    if old.exists():
        shutil.rmtree(old)
    if dest.exists():
        dest.rename(old)
    tmp.rename(dest)
    if old.exists():
        shutil.rmtree(old)


def _temp_dir(dest: Path) -> Path:
    dest.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-", dir=dest.parent))


def _write_json(obj: Any, path: Path) -> None:
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


@contextlib.contextmanager
def _no_transformers_bars(quiet: bool = True) -> Iterator[None]:
    """Hide transformers' own progress bars (one-shard saves, weight loading)."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    if quiet and was_enabled:
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if quiet and was_enabled:
            hf_logging.enable_progress_bar()


def _save_weights(model, dest: Path, extra: dict[str, Any]) -> None:
    tmp = _temp_dir(dest)
    try:
        with _no_transformers_bars():
            model.save_pretrained(tmp)
        for name, obj in extra.items():
            if name.endswith(".json"):
                _write_json(obj, tmp / name)
            else:
                torch.save(obj, tmp / name)
        _replace_dir(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _find_last(checkpoint_dir: Path) -> Path | None:
    last = checkpoint_dir / LAST
    if (last / TRAINER_FILE).is_file():
        return last
    # Killed between the two renames of _replace_dir: the previous one is intact.
    old = checkpoint_dir / f".{LAST}.old"
    if (old / TRAINER_FILE).is_file():
        return old
    return None


def _clear_checkpoints(checkpoint_dir: Path) -> None:
    """Remove what this module wrote in ``checkpoint_dir`` (and the folder if then empty)."""
    if not checkpoint_dir.is_dir():
        return
    for child in checkpoint_dir.iterdir():
        ours = child.name in (LAST, BEST) or child.name.startswith((f".{LAST}.", f".{BEST}."))
        if ours and child.is_dir():
            shutil.rmtree(child)
    if not any(checkpoint_dir.iterdir()):
        checkpoint_dir.rmdir()


def _rng_states() -> dict[str, Any]:
    np_state = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def _set_rng_states(states: dict[str, Any]) -> None:
    py = states["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    kind, keys, *rest = states["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), *rest))
    torch.set_rng_state(states["torch"])
    cuda = states.get("cuda") or []
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


# --------------------------------------------------------------------------- model


def _param_groups(model, weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay on weight matrices only, not on biases and normalisation weights."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if param.ndim < 2 or name.endswith("bias") or "norm" in name.lower():
            no_decay.append(param)
        else:
            decay.append(param)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def _adamw(model, cfg: TrainConfig, device: torch.device) -> torch.optim.Optimizer:
    """AdamW, fused into one kernel per parameter group on CPUs and CUDA GPUs.

    On a CPU torch otherwise runs its for-loop implementation: a dozen passes
    over every parameter tensor per step. MiniLM-L6 has 22.7M parameters, half
    of them the word embeddings (whose gradient is dense), so that was about a
    quarter of each training step on 2 CPU cores. Fused, it is one pass; the
    update is the same (``Trainer``'s default optimizer is the fused one too).
    """
    return torch.optim.AdamW(
        _param_groups(model, cfg.weight_decay),
        lr=cfg.learning_rate,
        betas=(0.9, 0.999),
        eps=1e-8,
        fused=device.type in ("cpu", "cuda"),
    )


def _batch_targets(targets: np.ndarray | list[list[int]], idx: np.ndarray) -> torch.Tensor:
    """The targets of the examples at ``idx``: a class id per row (a 1-D array of
    them), or per-token ids (a list of rows as long as their inputs) padded with
    ``IGNORE_INDEX`` to the batch's longest row, the width :func:`pad_batch` pads to."""
    if isinstance(targets, np.ndarray):
        return torch.as_tensor(targets[idx])
    rows = [targets[i] for i in idx]
    out = np.full((len(rows), max(len(r) for r in rows)), IGNORE_INDEX, dtype=np.int64)
    for r, row in enumerate(rows):
        out[r, : len(row)] = row
    return torch.from_numpy(out)


def _loss(logits: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean cross-entropy over the targets that are not ``IGNORE_INDEX``, and their count.

    ``logits`` ``[batch, labels]`` with ``target`` ``[batch]``, or ``[batch, tokens,
    labels]`` with ``[batch, tokens]``: flattened alike. A batch without any target
    (texts without words) has loss 0 and still runs backward, so DDP ranks stay in step.
    """
    flat_target = target.reshape(-1)
    total = torch.nn.functional.cross_entropy(
        logits.float().reshape(-1, logits.shape[-1]),
        flat_target,
        ignore_index=IGNORE_INDEX,
        reduction="sum",
    )
    count = (flat_target != IGNORE_INDEX).sum()
    return total / count.clamp(min=1), count


def _val_batches(
    model, encoded, batch_size: int, pad_id: int, device: torch.device, amp: torch.dtype | None
) -> Iterator[tuple[np.ndarray, torch.Tensor]]:
    """``(indices, fp32 logits)`` of the validation set, batched by length; the caller
    holds ``torch.inference_mode`` (a mode entered in a generator would leak to it)."""
    model.eval()
    lengths = np.array([len(x) for x in encoded["input_ids"]])
    order = np.argsort(lengths, kind="stable")
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        batch = {k: v.to(device) for k, v in pad_batch(encoded, idx, pad_id).items()}
        with autocast(device, amp):
            logits = model(**batch).logits
        yield idx, logits.float()


@torch.inference_mode()
def _validate(
    model,
    encoded,
    targets: np.ndarray | list[list[int]],
    scorer: ValScorer,
    batch_size: int,
    pad_id: int,
    device: torch.device,
    amp: torch.dtype | None,
) -> dict[str, float | None]:
    """Validation loss (per target) and the task's metrics (``scorer``)."""
    loss_sum, counted = 0.0, 0
    for idx, logits in _val_batches(model, encoded, batch_size, pad_id, device, amp):
        loss, count = _loss(logits, _batch_targets(targets, idx).to(device))
        loss_sum += loss.item() * int(count)
        counted += int(count)
        scorer.add(idx, torch.softmax(logits, dim=-1).cpu().numpy())
    return {"val_loss": loss_sum / max(counted, 1), **scorer.result()}


# --------------------------------------------------------------------------- training


def train_model(
    train: pd.DataFrame,
    val: pd.DataFrame,
    labels: list[str],
    cfg: TrainConfig,
    output_dir: Path,
    checkpoint_dir: Path,
    *,
    on_epoch: Callable[[dict], None] | None = None,
    progress: bool = True,
    task: str | TaskType = TaskName.sequence_classification,
) -> TrainResult:
    """Fine-tune ``cfg.base_model`` on ``train``; the best epoch (by the task type's
    :attr:`~tasks.task_types.TaskType.best_metric` on ``val``: macro-F1, or entity F1
    for ``token_classification``) is written to ``output_dir`` (safetensors weights,
    tokenizer, ``labels.json``: the model's outputs in order).

    ``task``: a task name or a :class:`~tasks.task_types.TaskType` (with its settings,
    such as ``TokenClassification(label_all_subwords=True)``); ``labels``: the label
    set (the entity types of a token classifier, whose label cells are span JSON; see
    the module doc). ``on_epoch`` receives each epoch's metrics once its checkpoint is
    written.
    """
    output_dir, checkpoint_dir = Path(output_dir), Path(checkpoint_dir)
    try:
        task = task_type(task)
    except ValueError:
        known = ", ".join(t.value for t in TaskName)
        raise ConfigError(f"task {task!r}: expected one of {known}") from None
    _check_frames(train, val, labels, task)
    device = pick_device(cfg.device)
    amp = autocast_dtype(device, cfg.precision)  # fp16 on a CPU fails here, before any work
    threads_before = torch.get_num_threads()
    dist = Dist.from_env(device)
    if dist.world > 1:
        device = dist.device(device)
    try:
        return _train(
            train, val, labels, cfg, output_dir, checkpoint_dir, device, amp, on_epoch,
            progress and dist.main, dist, task,
        )  # fmt: skip
    finally:
        torch.set_num_threads(threads_before)
        dist.close()


def _train(
    train: pd.DataFrame,
    val: pd.DataFrame,
    labels: list[str],
    cfg: TrainConfig,
    output_dir: Path,
    checkpoint_dir: Path,
    device: torch.device,
    amp: torch.dtype | None,
    on_epoch: Callable[[dict], None] | None,
    progress: bool,
    dist: Dist,
    task: TaskType,
) -> TrainResult:
    from transformers import AutoTokenizer, get_linear_schedule_with_warmup, set_seed

    started = time.perf_counter()
    threads = cfg.num_threads or max(1, (os.cpu_count() or 1) // dist.world)
    if device.type == "cpu":
        torch.set_num_threads(threads)
    else:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    precision = precision_name(amp)

    # ---- data
    fp = fingerprint(train, val, labels, cfg, task)
    fp["world_size"] = dist.world  # the effective batch, hence the weights, depend on it
    if cfg.data_fraction < 1.0:
        train = task.sample(train, cfg.data_fraction, cfg.seed)
    # The model's outputs: the labels, or the BIO tags of the entity types.
    outputs = task.outputs(labels)
    label_index = {label: i for i, label in enumerate(outputs)}
    score_key = task.best_metric
    score_name = task.val_metrics[score_key]

    # ---- resume or start fresh
    resume_from = _find_last(checkpoint_dir)
    trainer: dict[str, Any] | None = None
    if resume_from is not None:
        try:
            saved_fp = json.loads((resume_from / FINGERPRINT_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            saved_fp = None
        if saved_fp == fp:
            trainer = json.loads((resume_from / TRAINER_FILE).read_text(encoding="utf-8"))
            log.info("resuming from epoch %d (%s)", trainer["epoch"], resume_from)
        else:
            changed = (
                "unreadable fingerprint"
                if not isinstance(saved_fp, dict)
                else ", ".join(
                    [
                        k
                        for k in ("train", "val", "labels", "task", "world_size")
                        if saved_fp.get(k, 1 if k == "world_size" else None) != fp[k]
                    ]
                    + [
                        f"config.{k}"
                        for k in fp["config"]
                        if (saved_fp.get("config") or {}).get(k) != fp["config"][k]
                    ]
                )
            )
            log.info(
                "starting fresh: checkpoint %s is from a different run (changed: %s)",
                resume_from,
                changed,
            )
    if trainer is None and dist.main:
        _clear_checkpoints(checkpoint_dir)  # nothing stale (a last/ or best/ of another run)
    dist.barrier()

    set_seed(cfg.seed)
    base = resolve_base_model(cfg.base_model)
    tokenizer = AutoTokenizer.from_pretrained(base)
    model_class = task.auto_class()
    with _no_transformers_bars(quiet=not progress):
        if trainer is not None:
            model = model_class.from_pretrained(
                str(resume_from), use_safetensors=True, dtype=torch.float32
            )
        else:
            model = model_class.from_pretrained(
                base,
                use_safetensors=True,  # a base model's pickle weights are never unpickled
                num_labels=len(outputs),
                id2label=dict(enumerate(outputs)),
                label2id=label_index,
                dtype=torch.float32,
            )
    model.to(device)
    forward = dist.wrap(model)  # the model itself on one process, DDP on several
    pad_id = tokenizer.pad_token_id or 0

    # Targets: a class id per row, or per token of each row (see _batch_targets).
    enc_train, y_train = task.encode(tokenizer, train, label_index, cfg.max_length)
    enc_val, y_val = task.encode(tokenizer, val, label_index, cfg.max_length)
    lengths = np.array([len(x) for x in enc_train["input_ids"]])

    steps_per_epoch = math.ceil(math.ceil(len(train) / cfg.batch_size) / dist.world)
    total_steps = steps_per_epoch * cfg.epochs
    warmup_steps = round(cfg.warmup_ratio * total_steps)
    optimizer = _adamw(model, cfg, device)
    scheduler = get_linear_schedule_with_warmup(optimizer, warmup_steps, total_steps)
    scaler = torch.amp.GradScaler(device.type, enabled=amp is torch.float16)

    history: list[dict] = []
    best_score, best_epoch, start_epoch = -math.inf, 0, 1
    resumed_from_epoch = None
    if trainer is not None:
        state = torch.load(resume_from / STATE_FILE, map_location="cpu", weights_only=True)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        _set_rng_states(state["rng"])
        history = trainer["history"]
        best_score, best_epoch = trainer["best_score"], trainer["best_epoch"]
        resumed_from_epoch = start_epoch = trainer["epoch"]
        start_epoch += 1

    params = {
        **cfg.model_dump(mode="json"),
        "base_model_path": base,
        "device": str(device),
        "precision": precision,
        "num_threads": threads if device.type == "cpu" else None,
        "train_examples": len(train),
        "val_examples": len(val),
        "task": task.name.value,
        "num_labels": len(outputs),
        **task.settings(),
        "steps_per_epoch": steps_per_epoch,
        "total_steps": total_steps,
        "warmup_steps": warmup_steps,
        "parameters": sum(p.numel() for p in model.parameters()),
        "world_size": dist.world,
    }
    log.info(
        "training on %s, precision %s%s: %d train / %d val examples, %d %s%s, "
        "%d epochs x %d steps (batch %d, %d warm-up steps)%s",
        device,
        precision,
        f", {threads} threads" if device.type == "cpu" else "",
        len(train),
        len(val),
        len(labels),
        task.label_noun,
        f" ({len(outputs)} outputs)" if len(outputs) != len(labels) else "",
        cfg.epochs,
        steps_per_epoch,
        cfg.batch_size,
        warmup_steps,
        f", {dist.world} processes" if dist.world > 1 else "",
    )

    def stop_early() -> bool:
        patience = cfg.early_stopping_patience
        return patience > 0 and bool(history) and history[-1]["epoch"] - best_epoch >= patience

    for epoch in range(start_epoch, cfg.epochs + 1):
        if stop_early():
            break
        fit = _train_epoch(
            forward, optimizer, scheduler, scaler, enc_train, y_train, lengths, cfg, epoch,
            device, amp, pad_id, progress, dist,
        )  # fmt: skip
        eval_start = time.perf_counter()
        metrics: dict[str, float | None] = dict.fromkeys(("val_loss", *task.val_metrics))
        if len(val):
            metrics = _validate(
                model, enc_val, y_val, task.val_scorer(val, enc_val, outputs),
                cfg.batch_size * 2, pad_id, device, amp,
            )  # fmt: skip
        row = {
            "epoch": epoch,
            "train_loss": fit["train_loss"],
            **metrics,
            "examples_per_s": fit["examples_per_s"],
            "tokens_per_s": fit["tokens_per_s"],
            "seconds": round(fit["seconds"] + time.perf_counter() - eval_start, 3),
            "lr": fit["lr"],
        }
        history.append(row)
        score = row[score_key] if row[score_key] is not None else -row["train_loss"]
        improved = score > best_score
        if improved:
            best_score, best_epoch = score, epoch
        if not dist.main:
            dist.barrier()  # rank 0 is writing the checkpoints
            continue
        if improved:
            _save_weights(
                model, checkpoint_dir / BEST, {BEST_FILE: {"epoch": epoch, "score": score}}
            )
        _save_weights(
            model,
            checkpoint_dir / LAST,
            {
                STATE_FILE: {
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "scaler": scaler.state_dict(),
                    "rng": _rng_states(),
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
        log.info(
            "epoch %d/%d: train loss %.4f, val loss %s, %s, "
            "%.1f examples/s, %.0f tokens/s, %.1f s%s",
            epoch,
            cfg.epochs,
            row["train_loss"],
            _fmt(row["val_loss"]),
            ", ".join(f"{name} {_fmt(row[key])}" for key, name in task.val_metrics.items()),
            row["examples_per_s"],
            row["tokens_per_s"],
            row["seconds"],
            " (best)" if best_epoch == epoch else "",
        )
        if on_epoch is not None:
            on_epoch(dict(row))
        dist.barrier()
    epochs_run = history[-1]["epoch"] if history else 0
    if epochs_run < cfg.epochs:
        log.info(
            "early stopping after epoch %d: no %s gain for %d epochs (best epoch %d)",
            epochs_run,
            score_name,
            epochs_run - best_epoch,
            best_epoch,
        )

    # ---- the best weights, the tokenizer and the labels, all at once
    if dist.main:
        tmp = _temp_dir(output_dir)
        try:
            for item in (checkpoint_dir / BEST).iterdir():
                if item.is_file() and item.name != BEST_FILE:
                    shutil.copy2(item, tmp / item.name)
            tokenizer.save_pretrained(tmp)
            _write_json(list(outputs), tmp / LABELS_FILE)
            _replace_dir(tmp, output_dir)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        _clear_checkpoints(checkpoint_dir)
    dist.barrier()
    seconds = time.perf_counter() - started
    log.info(
        "best epoch %d (%s %.4f) written to %s", best_epoch, score_name, best_score, output_dir
    )
    return TrainResult(
        model_dir=output_dir,
        history=history,
        best_epoch=best_epoch,
        epochs_run=epochs_run,
        resumed_from_epoch=resumed_from_epoch,
        device=str(device),
        precision=precision,
        train_examples=len(train),
        seconds=seconds,
        params=params,
        rank=dist.rank,
    )


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def _train_epoch(
    model,
    optimizer,
    scheduler,
    scaler,
    encoded,
    targets: np.ndarray | list[list[int]],
    lengths: np.ndarray,
    cfg: TrainConfig,
    epoch: int,
    device: torch.device,
    amp: torch.dtype | None,
    pad_id: int,
    progress: bool,
    dist: Dist,
) -> dict[str, Any]:
    """One pass over the training data; returns the epoch's training metrics.

    ``targets``: a class id per example, or per-token ids (see :func:`_batch_targets`).
    The training loss is the mean over all targets of the epoch (examples, or
    labelled tokens). With several processes each takes its share of the batches
    and the returned figures are totals over all of them.
    """
    model.train()
    # The batch order depends only on (seed, epoch): a resumed run sees the same
    # batches, and every rank computes the same order before taking its share.
    rng = np.random.default_rng([cfg.seed, epoch])
    batches = dist.share(length_bucketed_batches(lengths, cfg.batch_size, cfg.bucket_batches, rng))
    loss_sum = torch.zeros((), device=device)
    target_count = torch.zeros((), dtype=torch.int64, device=device)
    seen = tokens = 0
    lr = optimizer.param_groups[0]["lr"]
    start = time.perf_counter()
    bar = tqdm(
        total=len(batches),
        desc=f"epoch {epoch}/{cfg.epochs}",
        unit="batch",
        disable=not progress,
        dynamic_ncols=True,
    )
    with bar:
        for step, idx in enumerate(batches, 1):
            batch = {
                k: v.to(device, non_blocking=True)
                for k, v in pad_batch(encoded, idx, pad_id).items()
            }
            target = _batch_targets(targets, idx).to(device, non_blocking=True)
            with autocast(device, amp):
                logits = model(**batch).logits
            loss, count = _loss(logits, target)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
            lr = optimizer.param_groups[0]["lr"]
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            loss_sum += loss.detach() * count
            target_count += count
            seen += len(idx)
            tokens += int(lengths[idx].sum())
            bar.update(1)
            if progress and (step % 10 == 0 or step == len(batches)):
                elapsed = time.perf_counter() - start
                bar.set_postfix(
                    loss=f"{loss_sum.item() / max(int(target_count.item()), 1):.4f}",
                    ex_s=f"{seen / elapsed:.1f}",
                    refresh=False,
                )
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    loss_total, counted, seen, tokens = dist.sum(loss_sum.item(), target_count.item(), seen, tokens)
    seconds = time.perf_counter() - start
    return {
        "train_loss": loss_total / max(counted, 1),
        "examples_per_s": round(seen / seconds, 2),
        "tokens_per_s": round(tokens / seconds, 1),
        "seconds": seconds,
        "lr": lr,
    }
