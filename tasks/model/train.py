"""Fine-tuning the base model into a sequence or token classifier, resumable epoch by epoch.

A plain torch loop rather than ``transformers.Trainer``: it tokenizes once,
batches by length (each batch padded only to its own longest text, which pads
far less than random batches), checkpoints after every epoch
(:mod:`slmops.tasks.model.checkpoints`) and resumes a killed run to the same
weights an uninterrupted run ends with.

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

Every task type shares the loop: the caller picks the task type
(:class:`~slmops.tasks.core.task_type.TaskType`, e.g.
``slmops.tasks.task_types.task_type(params)``) and passes it in; it samples and
checks the rows, encodes them into inputs and targets, names the model's outputs
and scores each epoch on the validation rows. The targets are a class id per row
for ``sequence_classification``, and for ``token_classification`` (NER; label
cells are span JSON) an id per token, the first sub-word of each word carrying
the word's BIO tag and the rest :data:`~slmops.tasks.model.runtime.IGNORE_INDEX`;
its ``labels`` argument is the list of entity types, its outputs (config and
``labels.json``) the BIO tag names, ``O`` first. The loss is cross-entropy over
the flattened logits ignoring ``IGNORE_INDEX`` for both, so the batching,
checkpoints, resumption, early stopping, precision and DDP code is one. A token
classifier's validation metrics are the loss per labelled token, the word-level
tag accuracy (``val_accuracy``, every word of each text: words cut by truncation
are predicted ``O``), the micro entity F1 (``val_f1``, strict span match, the
best-epoch and early-stopping score) and the macro entity F1 over types
(``val_macro_f1``).

Within an epoch the loop reports its progress every ``train.report_every_seconds``
(epoch, step of all steps, running loss, examples/s): a log line when no progress
bar is shown, and a call of ``on_progress`` (the ``retrain`` flow turns it into a
Prefect progress artifact). The loss stays on the device between reports: a step
reads the clock, never the loss, so reports cost no host sync per step.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from slmops.tasks.core.config import ConfigError, TrainConfig
from slmops.tasks.core.errors import DataError
from slmops.tasks.core.task_type import TaskType, ValScorer
from slmops.tasks.model.checkpoints import (
    Checkpoint,
    clear_checkpoints,
    find_checkpoint,
    fingerprint,
    load_training_state,
    no_transformers_bars,
    save_checkpoint,
    write_model,
)
from slmops.tasks.model.distributed import Dist
from slmops.tasks.model.runtime import (
    IGNORE_INDEX,
    autocast,
    autocast_dtype,
    pad_batch,
    pick_device,
    precision_name,
    resolve_base_model,
)

log = logging.getLogger(__name__)

# The progress reports' clock (a test replaces it to drive the reports step by step).
_clock = time.monotonic


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


# --------------------------------------------------------------------------- checks


def _check_frames(
    train: pd.DataFrame,
    val: pd.DataFrame,
    labels: list[str],
    task: TaskType,
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
        task.check_rows(name, df, labels)
    if train.empty:
        raise DataError("train: no rows to train on")


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
    over every parameter tensor per step, a large share of a small model's step
    (half of MiniLM's parameters are the word embeddings, whose gradient is
    dense). Fused, it is one pass; the update is the same (``Trainer``'s default
    optimizer is the fused one too).
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


@dataclass
class _Run:
    """What every part of one training run needs to know."""

    cfg: TrainConfig
    task: TaskType
    device: torch.device
    amp: torch.dtype | None
    dist: Dist
    progress: bool
    checkpoint_dir: Path


@dataclass
class _Encoded:
    """The rows tokenized once: the inputs and targets (see :func:`_batch_targets`)."""

    train: dict[str, list]
    y_train: np.ndarray | list[list[int]]
    val: dict[str, list]
    y_val: np.ndarray | list[list[int]]
    lengths: np.ndarray  # tokens per training row
    pad_id: int


@dataclass
class _Optim:
    """The optimizer, its learning-rate schedule and the fp16 grad scaler."""

    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: torch.amp.GradScaler
    steps_per_epoch: int
    total_steps: int
    warmup_steps: int


@dataclass
class _Progress:
    """The epochs done so far and the best of them."""

    history: list[dict] = field(default_factory=list)
    best_score: float = -math.inf
    best_epoch: int = 0
    resumed_from_epoch: int | None = None

    def stop_early(self, patience: int) -> bool:
        """No gain of the best metric for ``patience`` epochs (0: never stop)."""
        return (
            patience > 0
            and bool(self.history)
            and self.history[-1]["epoch"] - self.best_epoch >= patience
        )


@dataclass
class _Reporter:
    """Progress reports of rank 0 within the epochs: due every ``every`` seconds, and at
    the end of each epoch (``on_progress`` only: the epoch's own line follows)."""

    every: float
    epochs: int
    steps_per_epoch: int
    total_steps: int
    world: int
    on_progress: Callable[[dict], None] | None
    log_lines: bool  # no progress bar shows the same
    last: float = field(default_factory=lambda: _clock())
    reported: int = 0  # the global step of the last report

    def due(self) -> bool:
        """Whether a report is due now (one clock read: the whole per-step cost)."""
        now = _clock()
        if now - self.last < self.every:
            return False
        self.last = now
        return True

    def report(
        self,
        epoch: int,
        step: int,
        loss_sum: torch.Tensor,
        target_count: torch.Tensor,
        seen: int,
        seconds: float,
        lr: float,
        *,
        epoch_end: bool = False,
    ) -> None:
        """Report step ``step`` of ``epoch``: ``seen`` examples of this process in
        ``seconds`` so far this epoch; the loss is read off the device only now."""
        global_step = (epoch - 1) * self.steps_per_epoch + step
        if epoch_end and global_step == self.reported:
            return  # reported at this very step already
        self.reported = global_step
        row = {
            "epoch": epoch,
            "epochs": self.epochs,
            "step": global_step,
            "steps": self.total_steps,
            "epoch_step": step,
            "epoch_steps": self.steps_per_epoch,
            "percent": round(100.0 * global_step / max(self.total_steps, 1), 2),
            "loss": loss_sum.item() / max(int(target_count.item()), 1),
            # Every process takes as many steps (DDP keeps them in step): all of them
            # together see ``world`` times this one's examples.
            "examples_per_s": round(seen * self.world / max(seconds, 1e-9), 2),
            "seconds": round(seconds, 1),
            "lr": lr,
            "epoch_end": epoch_end,
        }
        if self.log_lines and not epoch_end:
            log.info(
                "epoch %d/%d, step %d/%d (%.0f%%): loss %.4f, %.1f examples/s",
                epoch,
                self.epochs,
                global_step,
                self.total_steps,
                row["percent"],
                row["loss"],
                row["examples_per_s"],
            )
        if self.on_progress is not None:
            self.on_progress(row)


def train_model(
    train: pd.DataFrame,
    val: pd.DataFrame,
    labels: list[str],
    cfg: TrainConfig,
    output_dir: Path,
    checkpoint_dir: Path,
    *,
    task: TaskType,
    on_epoch: Callable[[dict], None] | None = None,
    on_progress: Callable[[dict], None] | None = None,
    progress: bool = True,
) -> TrainResult:
    """Fine-tune ``cfg.base_model`` on ``train``; the best epoch (by the task type's
    :attr:`~slmops.tasks.core.task_type.TaskType.best_metric` on ``val``: macro-F1,
    or entity F1 for ``token_classification``) is written to ``output_dir``
    (safetensors weights, tokenizer, ``labels.json``: the model's outputs in order).

    ``task``: the task type, with its settings (such as
    ``TokenClassification(label_all_subwords=True)``), picked by the caller;
    ``labels``: the label set (the entity types of a token classifier, whose label
    cells are span JSON; see the module doc). ``on_epoch`` receives each epoch's
    metrics once its checkpoint is written. ``on_progress`` receives a report every
    ``cfg.report_every_seconds`` within the epochs and at the end of each: ``epoch``,
    ``epochs``, ``step`` and ``steps`` (of all epochs), ``epoch_step``,
    ``epoch_steps``, ``percent``, ``loss`` (the epoch's mean so far),
    ``examples_per_s``, ``seconds`` (this epoch so far), ``lr`` and ``epoch_end``;
    rank 0 alone reports. Without a progress bar (``progress=False``) each report
    within an epoch is also a log line.
    """
    if not isinstance(task, TaskType):
        raise ConfigError(
            f"task {task!r}: expected a TaskType (slmops.tasks.task_types.task_type picks one)"
        )
    output_dir, checkpoint_dir = Path(output_dir), Path(checkpoint_dir)
    _check_frames(train, val, labels, task)
    device = pick_device(cfg.device)
    amp = autocast_dtype(device, cfg.precision)  # fp16 on a CPU fails here, before any work
    threads_before = torch.get_num_threads()
    dist = Dist.from_env(device)
    if dist.world > 1:
        device = dist.device(device)
    run = _Run(cfg, task, device, amp, dist, progress and dist.main, checkpoint_dir)
    try:
        return _train(run, train, val, labels, output_dir, on_epoch, on_progress)
    finally:
        torch.set_num_threads(threads_before)
        dist.close()


def _train(
    run: _Run,
    train: pd.DataFrame,
    val: pd.DataFrame,
    labels: list[str],
    output_dir: Path,
    on_epoch: Callable[[dict], None] | None,
    on_progress: Callable[[dict], None] | None,
) -> TrainResult:
    # transformers is heavy: imported once a run starts, not with this module.
    from transformers import set_seed

    cfg, task, dist = run.cfg, run.task, run.dist
    started = time.perf_counter()
    threads = _set_threads(run)
    fp = fingerprint(train, val, labels, cfg, task)
    fp["world_size"] = dist.world  # the effective batch, hence the weights, depend on it
    if cfg.data_fraction < 1.0:
        train = task.sample(train, cfg.data_fraction, cfg.seed)
    # The model's outputs: the labels, or the BIO tags of the entity types.
    outputs = task.outputs(labels)
    resume = _resume_point(run, fp)

    set_seed(cfg.seed)
    base = resolve_base_model(cfg.base_model)
    tokenizer, model = _load_model(run, base, outputs, resume.path if resume else None)
    forward = dist.wrap(model)  # the model itself on one process, DDP on several
    enc = _encode(run, tokenizer, train, val, outputs)
    optim = _optimizer(run, model, len(train))
    state = _restore(resume, optim) if resume is not None else _Progress()

    params = _params(run, base, threads, len(train), len(val), outputs, optim, model)
    _log_start(run, threads, len(train), len(val), labels, outputs, optim)
    reporter = None
    if dist.main and (on_progress is not None or not run.progress):
        reporter = _Reporter(
            cfg.report_every_seconds,
            cfg.epochs,
            optim.steps_per_epoch,
            optim.total_steps,
            dist.world,
            on_progress,
            log_lines=not run.progress,
        )
    _fit(run, model, forward, enc, optim, state, val, outputs, fp, on_epoch, reporter)

    if dist.main:
        write_model(run.checkpoint_dir, output_dir, tokenizer, outputs)
    dist.barrier()
    log.info(
        "best epoch %d (%s %.4f) written to %s",
        state.best_epoch,
        task.val_metrics[task.best_metric],
        state.best_score,
        output_dir,
    )
    return TrainResult(
        model_dir=output_dir,
        history=state.history,
        best_epoch=state.best_epoch,
        epochs_run=state.history[-1]["epoch"] if state.history else 0,
        resumed_from_epoch=state.resumed_from_epoch,
        device=str(run.device),
        precision=precision_name(run.amp),
        train_examples=len(train),
        seconds=time.perf_counter() - started,
        params=params,
        rank=dist.rank,
    )


def _params(
    run: _Run,
    base: str,
    threads: int,
    train_examples: int,
    val_examples: int,
    outputs: list[str],
    optim: _Optim,
    model,
) -> dict[str, Any]:
    """The run's parameters as logged with it: the settings and what they resolved to."""
    return {
        **run.cfg.model_dump(mode="json"),
        "base_model_path": base,
        "device": str(run.device),
        "precision": precision_name(run.amp),
        "num_threads": threads if run.device.type == "cpu" else None,
        "train_examples": train_examples,
        "val_examples": val_examples,
        "task": run.task.name.value,
        "num_labels": len(outputs),
        **run.task.settings(),
        "steps_per_epoch": optim.steps_per_epoch,
        "total_steps": optim.total_steps,
        "warmup_steps": optim.warmup_steps,
        "parameters": sum(p.numel() for p in model.parameters()),
        "world_size": run.dist.world,
    }


def _set_threads(run: _Run) -> int:
    """Torch threads on a CPU (``num_threads``, or this process's share of the cores);
    TF32 matmuls on a GPU. Returns the thread count."""
    threads = run.cfg.num_threads or max(1, (os.cpu_count() or 1) // run.dist.world)
    if run.device.type == "cpu":
        torch.set_num_threads(threads)
    else:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return threads


def _resume_point(run: _Run, fp: dict[str, Any]) -> Checkpoint | None:
    """The checkpoint this run resumes (same fingerprint), or None: then rank 0
    clears whatever another run left in the checkpoint folder."""
    found = find_checkpoint(run.checkpoint_dir, fp)
    if found is not None and found.trainer is not None:
        log.info("resuming from epoch %d (%s)", found.trainer["epoch"], found.path)
    elif found is not None:
        log.info(
            "starting fresh: checkpoint %s is from a different run (changed: %s)",
            found.path,
            found.changed,
        )
    if found is not None and found.trainer is None:
        found = None
    if found is None and run.dist.main:
        clear_checkpoints(run.checkpoint_dir)  # nothing stale (a last/ or best/ of another run)
    run.dist.barrier()
    return found


def _load_model(run: _Run, base: str, outputs: list[str], resume_from: Path | None):
    """The tokenizer of ``base`` and the model in fp32 on the run's device: the
    checkpoint's weights when resuming, else ``base`` with a new head for ``outputs``."""
    # transformers is heavy: imported once a run starts, not with this module.
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base)
    model_class = run.task.auto_class()
    with no_transformers_bars(quiet=not run.progress):
        if resume_from is not None:
            model = model_class.from_pretrained(
                str(resume_from), use_safetensors=True, dtype=torch.float32
            )
        else:
            model = model_class.from_pretrained(
                base,
                use_safetensors=True,  # a base model's pickle weights are never unpickled
                num_labels=len(outputs),
                id2label=dict(enumerate(outputs)),
                label2id={label: i for i, label in enumerate(outputs)},
                dtype=torch.float32,
            )
    model.to(run.device)
    return tokenizer, model


def _encode(
    run: _Run, tokenizer, train: pd.DataFrame, val: pd.DataFrame, outputs: list[str]
) -> _Encoded:
    """Both splits tokenized, with their targets: a class id per row, or per token."""
    output_index = {label: i for i, label in enumerate(outputs)}
    enc_train, y_train = run.task.encode(tokenizer, train, output_index, run.cfg.max_length)
    enc_val, y_val = run.task.encode(tokenizer, val, output_index, run.cfg.max_length)
    lengths = np.array([len(x) for x in enc_train["input_ids"]])
    return _Encoded(enc_train, y_train, enc_val, y_val, lengths, tokenizer.pad_token_id or 0)


def _optimizer(run: _Run, model, train_examples: int) -> _Optim:
    """AdamW with a linear warm-up and decay over every step of the run."""
    # transformers is heavy: imported once a run starts, not with this module.
    from transformers import get_linear_schedule_with_warmup

    cfg = run.cfg
    steps_per_epoch = math.ceil(math.ceil(train_examples / cfg.batch_size) / run.dist.world)
    total_steps = steps_per_epoch * cfg.epochs
    warmup_steps = round(cfg.warmup_ratio * total_steps)
    optimizer = _adamw(model, cfg, run.device)
    scheduler = get_linear_schedule_with_warmup(optimizer, warmup_steps, total_steps)
    scaler = torch.amp.GradScaler(run.device.type, enabled=run.amp is torch.float16)
    return _Optim(optimizer, scheduler, scaler, steps_per_epoch, total_steps, warmup_steps)


def _restore(resume: Checkpoint, optim: _Optim) -> _Progress:
    """The optimizer, schedule and RNG states saved in ``resume``, and its progress."""
    load_training_state(resume.path, optim.optimizer, optim.scheduler, optim.scaler)
    trainer = resume.trainer  # not None: a checkpoint that resumes
    return _Progress(
        history=trainer["history"],
        best_score=trainer["best_score"],
        best_epoch=trainer["best_epoch"],
        resumed_from_epoch=trainer["epoch"],
    )


def _log_start(
    run: _Run,
    threads: int,
    train_examples: int,
    val_examples: int,
    labels: list[str],
    outputs: list[str],
    optim: _Optim,
) -> None:
    cfg, device, dist = run.cfg, run.device, run.dist
    log.info(
        "training on %s, precision %s%s: %d train / %d val examples, %d %s%s, "
        "%d epochs x %d steps (batch %d, %d warm-up steps)%s",
        device,
        precision_name(run.amp),
        f", {threads} threads" if device.type == "cpu" else "",
        train_examples,
        val_examples,
        len(labels),
        run.task.label_noun,
        f" ({len(outputs)} outputs)" if len(outputs) != len(labels) else "",
        cfg.epochs,
        optim.steps_per_epoch,
        cfg.batch_size,
        optim.warmup_steps,
        f", {dist.world} processes" if dist.world > 1 else "",
    )


def _fit(
    run: _Run,
    model,
    forward,
    enc: _Encoded,
    optim: _Optim,
    state: _Progress,
    val: pd.DataFrame,
    outputs: list[str],
    fp: dict[str, Any],
    on_epoch: Callable[[dict], None] | None,
    reporter: _Reporter | None = None,
) -> None:
    """The epochs left (after a resumed one), each checkpointed by rank 0, until the
    last or early stopping; ``state`` holds the progress."""
    cfg, dist = run.cfg, run.dist
    for epoch in range(1 + (state.resumed_from_epoch or 0), cfg.epochs + 1):
        if state.stop_early(cfg.early_stopping_patience):
            break
        row = _epoch(run, model, forward, enc, optim, val, outputs, epoch, reporter)
        state.history.append(row)
        key = run.task.best_metric
        score = row[key] if row[key] is not None else -row["train_loss"]
        if score > state.best_score:
            state.best_score, state.best_epoch = score, epoch
        if not dist.main:
            dist.barrier()  # rank 0 is writing the checkpoints
            continue
        save_checkpoint(
            model,
            run.checkpoint_dir,
            optimizer=optim.optimizer,
            scheduler=optim.scheduler,
            scaler=optim.scaler,
            history=state.history,
            best_score=state.best_score,
            best_epoch=state.best_epoch,
            fp=fp,
        )
        _log_epoch(run, row, state.best_epoch)
        if on_epoch is not None:
            on_epoch(dict(row))
        dist.barrier()
    epochs_run = state.history[-1]["epoch"] if state.history else 0
    if epochs_run < cfg.epochs:
        log.info(
            "early stopping after epoch %d: no %s gain for %d epochs (best epoch %d)",
            epochs_run,
            run.task.val_metrics[run.task.best_metric],
            epochs_run - state.best_epoch,
            state.best_epoch,
        )


def _epoch(
    run: _Run,
    model,
    forward,
    enc: _Encoded,
    optim: _Optim,
    val: pd.DataFrame,
    outputs: list[str],
    epoch: int,
    reporter: _Reporter | None = None,
) -> dict[str, Any]:
    """Train one epoch, then score it on the validation rows: its history row."""
    fit = _train_epoch(run, forward, optim, enc, epoch, reporter)
    eval_start = time.perf_counter()
    metrics: dict[str, float | None] = dict.fromkeys(("val_loss", *run.task.val_metrics))
    if len(val):
        scorer = run.task.val_scorer(val, enc.val, outputs)
        metrics = _validate(
            model, enc.val, enc.y_val, scorer, run.cfg.batch_size * 2, enc.pad_id,
            run.device, run.amp,
        )  # fmt: skip
    return {
        "epoch": epoch,
        "train_loss": fit["train_loss"],
        **metrics,
        "examples_per_s": fit["examples_per_s"],
        "tokens_per_s": fit["tokens_per_s"],
        "seconds": round(fit["seconds"] + time.perf_counter() - eval_start, 3),
        "lr": fit["lr"],
    }


def _log_epoch(run: _Run, row: dict[str, Any], best_epoch: int) -> None:
    log.info(
        "epoch %d/%d: train loss %.4f, val loss %s, %s, %.1f examples/s, %.0f tokens/s, %.1f s%s",
        row["epoch"],
        run.cfg.epochs,
        row["train_loss"],
        _fmt(row["val_loss"]),
        ", ".join(f"{name} {_fmt(row[key])}" for key, name in run.task.val_metrics.items()),
        row["examples_per_s"],
        row["tokens_per_s"],
        row["seconds"],
        " (best)" if best_epoch == row["epoch"] else "",
    )


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def _train_epoch(
    run: _Run,
    model,
    optim: _Optim,
    enc: _Encoded,
    epoch: int,
    reporter: _Reporter | None = None,
) -> dict[str, Any]:
    """One pass over the training data; returns the epoch's training metrics.

    The training loss is the mean over all targets of the epoch (examples, or
    labelled tokens). With several processes each takes its share of the batches
    and the returned figures are totals over all of them.
    """
    cfg, device = run.cfg, run.device
    model.train()
    # The batch order depends only on (seed, epoch): a resumed run sees the same
    # batches, and every rank computes the same order before taking its share.
    rng = np.random.default_rng([cfg.seed, epoch])
    batches = run.dist.share(
        length_bucketed_batches(enc.lengths, cfg.batch_size, cfg.bucket_batches, rng)
    )
    loss_sum = torch.zeros((), device=device)
    target_count = torch.zeros((), dtype=torch.int64, device=device)
    seen = tokens = 0
    lr = optim.optimizer.param_groups[0]["lr"]
    start = time.perf_counter()
    bar = tqdm(
        total=len(batches),
        desc=f"epoch {epoch}/{cfg.epochs}",
        unit="batch",
        disable=not run.progress,
        dynamic_ncols=True,
    )
    with bar:
        for step, idx in enumerate(batches, 1):
            loss, count, lr = _step(run, model, optim, enc, idx)
            loss_sum += loss.detach() * count
            target_count += count
            seen += len(idx)
            tokens += int(enc.lengths[idx].sum())
            bar.update(1)
            if run.progress and (step % 10 == 0 or step == len(batches)):
                elapsed = time.perf_counter() - start
                bar.set_postfix(
                    loss=f"{loss_sum.item() / max(int(target_count.item()), 1):.4f}",
                    ex_s=f"{seen / elapsed:.1f}",
                    refresh=False,
                )
            if reporter is not None and reporter.due():
                reporter.report(
                    epoch, step, loss_sum, target_count, seen, time.perf_counter() - start, lr
                )
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    if reporter is not None and batches:
        reporter.report(
            epoch, len(batches), loss_sum, target_count, seen, time.perf_counter() - start, lr,
            epoch_end=True,
        )  # fmt: skip
    loss_total, counted, seen, tokens = run.dist.sum(
        loss_sum.item(), target_count.item(), seen, tokens
    )
    seconds = time.perf_counter() - start
    return {
        "train_loss": loss_total / max(counted, 1),
        "examples_per_s": round(seen / seconds, 2),
        "tokens_per_s": round(tokens / seconds, 1),
        "seconds": seconds,
        "lr": lr,
    }


def _step(
    run: _Run, model, optim: _Optim, enc: _Encoded, idx: np.ndarray
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """One optimizer step on the examples at ``idx``: their loss, target count and the
    learning rate the step used."""
    # Measured on a CPU (MiniLM-L6, batch 32, fp32, one thread, issue 22): forward and backward are
    # 95% of a step, clipping 2%, fused AdamW 3%, padding the batch and the bookkeeping
    # under 0.2%; the step takes as long as Trainer's on the same batches. Tried and
    # left out, no gain: torch.compile (about 6% slower per step after a minute of
    # compiling), eager attention instead of SDPA (which already drops the mask of a
    # batch without padding), clipping folded into the fused AdamW kernel (0.6%).
    device = run.device
    batch = {
        k: v.to(device, non_blocking=True) for k, v in pad_batch(enc.train, idx, enc.pad_id).items()
    }
    target = _batch_targets(enc.y_train, idx).to(device, non_blocking=True)
    with autocast(device, run.amp):
        logits = model(**batch).logits
    loss, count = _loss(logits, target)
    optimizer, scaler = optim.optimizer, optim.scaler
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.unscale_(optimizer)
    torch.nn.utils.clip_grad_norm_(model.parameters(), run.cfg.max_grad_norm)
    lr = optimizer.param_groups[0]["lr"]
    scaler.step(optimizer)
    scaler.update()
    optim.scheduler.step()
    return loss, count, lr
