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

Two tasks share the loop (``task``): ``sequence_classification`` (a label per
text; the target of a batch is one class id per row) and ``token_classification``
(NER; the label cell is span JSON, :mod:`tasks.ner.spans`; the target is one id
per token, the first sub-word of each word carrying the word's BIO tag and the
rest ``-100``, see :mod:`tasks.ner.alignment`). Both compute cross-entropy over
the flattened logits with ``ignore_index=-100``, so the batching, checkpoints,
resumption, early stopping, precision and DDP code is one. A token classifier's
``labels`` argument is the list of entity types; its model outputs (config and
``labels.json``) are the BIO tag names, ``O`` first. Its validation metrics are
the loss per labelled token, the word-level tag accuracy (``val_accuracy``,
every word of each text: words cut by truncation are predicted ``O``), the
micro entity F1 (``val_f1``, strict span match, the best-epoch and
early-stopping score) and the macro entity F1 over types (``val_macro_f1``).
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

from tasks.config import ConfigError, TaskName, TrainConfig
from tasks.distributed import Dist
from tasks.errors import DataError
from tasks.inference import (
    LABELS_FILE,
    SEQUENCE_CLASSIFICATION,
    TOKEN_CLASSIFICATION,
    auto_model_class,
    autocast,
    autocast_dtype,
    pad_batch,
    pick_device,
    precision_name,
    resolve_base_model,
)
from tasks.ner import spans as sp
from tasks.ner.alignment import IGNORE_INDEX

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


def stratified_fraction(train: pd.DataFrame, fraction: float, seed: int) -> pd.DataFrame:
    """A per-class random share of ``train`` (at least one row of every class).

    Rows keep their original order.
    """
    if fraction >= 1.0:
        return train
    sampled = train.groupby("label", sort=False).sample(frac=fraction, random_state=seed)
    missing = train[~train["label"].isin(set(sampled["label"]))]
    if len(missing):
        extra = missing.groupby("label", sort=False).sample(n=1, random_state=seed)
        sampled = pd.concat([sampled, extra])
    return train.loc[train.index.isin(sampled.index)]


def training_fraction(
    train: pd.DataFrame, fraction: float, seed: int, task: str = SEQUENCE_CLASSIFICATION
) -> pd.DataFrame:
    """The share of ``train`` a run trains on: per class for a sequence classifier
    (:func:`stratified_fraction`), a seeded random share of the rows (at least one)
    for a token classifier, whose rows each hold entities of several types."""
    if fraction >= 1.0:
        return train
    if task != TOKEN_CLASSIFICATION:
        return stratified_fraction(train, fraction, seed)
    n = max(1, round(len(train) * fraction))
    sampled = train.sample(n=min(n, len(train)), random_state=seed)
    return train.loc[train.index.isin(sampled.index)]


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
    task: str = SEQUENCE_CLASSIFICATION,
    label_all_subwords: bool = False,
) -> dict[str, Any]:
    """What identifies a run: hashes of the data and the label list, the task and the
    settings (``label_all_subwords`` only for a token classifier, whose targets it sets)."""

    def frame_hash(df: pd.DataFrame) -> str:
        h = hashlib.sha256()
        for text, label in zip(df["text"], df["label"], strict=True):
            h.update(json.dumps([str(text), str(label)], ensure_ascii=False).encode("utf-8"))
            h.update(b"\n")
        return h.hexdigest()

    settings = cfg.model_dump(mode="json")
    task = TaskName(task).value
    out = {
        "train": frame_hash(train),
        "val": frame_hash(val),
        "labels": hashlib.sha256(json.dumps(list(labels)).encode("utf-8")).hexdigest(),
        "task": task,
        "config": {k: settings[k] for k in FINGERPRINT_FIELDS},
    }
    if task == TOKEN_CLASSIFICATION:
        out["config"]["label_all_subwords"] = bool(label_all_subwords)
    return out


def _check_frames(
    train: pd.DataFrame,
    val: pd.DataFrame,
    labels: list[str],
    task: str = SEQUENCE_CLASSIFICATION,
) -> None:
    """Raise :class:`DataError` naming the frame (and the row) that cannot be trained on.

    ``labels``: the label set (entity types for a token classifier, whose label cells
    must be span JSON fitting their text, of types in the set).
    """
    if not labels:
        raise DataError("the label list is empty")
    if len(set(labels)) != len(labels):
        raise DataError("the label list has duplicates")
    known = set(labels)
    for name, df in (("train", train), ("val", val)):
        for col in ("text", "label"):
            if col not in df.columns:
                raise DataError(f"{name}: no column {col!r} (has {list(df.columns)})")
        if task == TOKEN_CLASSIFICATION:
            _check_spans(name, df, known)
            continue
        unknown = sorted(set(df["label"].astype(str)) - known)
        if unknown:
            raise DataError(f"{name}: labels not in the label set: {unknown[:10]}")
    if train.empty:
        raise DataError("train: no rows to train on")


def _check_spans(name: str, df: pd.DataFrame, types: set[str]) -> None:
    """Each label cell of ``df`` is span JSON that fits its text, of known types."""
    for row, (text, cell) in enumerate(zip(df["text"], df["label"], strict=True)):
        where = f"{name} row {row}" + (
            f" (index {df.index[row]!r})" if df.index[row] != row else ""
        )
        if not isinstance(text, str):
            raise DataError(f"{where}: text is {text!r}, not a string")
        try:
            found = sp.loads(cell)
            sp.check(text, found)
        except sp.SpanError as exc:
            raise DataError(f"{where}: {exc}") from None
        unknown = sorted({kind for _, _, kind in found} - types)
        if unknown:
            raise DataError(f"{where}: entity types not in the label set: {unknown}")


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
def _evaluate(
    model,
    encoded,
    label_ids: np.ndarray,
    batch_size: int,
    pad_id: int,
    device: torch.device,
    amp: torch.dtype | None,
) -> dict[str, float]:
    """Loss, accuracy and macro-F1 (over the classes present in ``label_ids``)."""
    from sklearn.metrics import f1_score

    preds = np.empty(len(label_ids), dtype=np.int64)
    loss_sum = 0.0
    for idx, logits in _val_batches(model, encoded, batch_size, pad_id, device, amp):
        target = torch.as_tensor(label_ids[idx], device=device)
        loss_sum += torch.nn.functional.cross_entropy(logits, target, reduction="sum").item()
        preds[idx] = logits.argmax(dim=-1).cpu().numpy()
    present = np.unique(label_ids)
    return {
        "val_loss": loss_sum / len(label_ids),
        "val_accuracy": float((preds == label_ids).mean()),
        "val_macro_f1": float(
            f1_score(label_ids, preds, labels=present, average="macro", zero_division=0)
        ),
    }


@torch.inference_mode()
def _evaluate_tokens(
    model,
    encoded,
    targets: list[list[int]],
    texts: list[str],
    gold: list[list[sp.Span]],
    types: list[str],
    tag_names: list[str],
    batch_size: int,
    pad_id: int,
    device: torch.device,
    amp: torch.dtype | None,
) -> dict[str, float | None]:
    """A token classifier's validation metrics (module doc): loss per labelled token,
    word-level tag accuracy, micro and macro entity F1 (strict spans)."""
    from tasks.ner.alignment import word_tags
    from tasks.ner.metrics import entity_report

    loss_sum, labelled, correct, words = 0.0, 0, 0, 0
    pred: list[list[sp.Span]] = [[] for _ in texts]
    for idx, logits in _val_batches(model, encoded, batch_size, pad_id, device, amp):
        loss, count = _loss(logits, _batch_targets(targets, idx).to(device))
        loss_sum += loss.item() * int(count)
        labelled += int(count)
        probs = torch.softmax(logits, dim=-1).cpu().numpy()
        for row, i in enumerate(idx):
            n = len(encoded["input_ids"][i])
            found = word_tags(
                texts[i], encoded["offset_mapping"][i], encoded["word_ids"][i],
                probs[row, :n], tag_names,
            )  # fmt: skip
            want = sp.to_tags(texts[i], gold[i])
            correct += sum(a == b for a, b in zip(want, found.tags, strict=True))
            words += len(want)
            pred[i] = found.spans()
    report = entity_report(gold, pred, types)
    return {
        "val_loss": loss_sum / max(labelled, 1),
        "val_accuracy": correct / words if words else None,
        "val_f1": float(report["f1"]),
        "val_macro_f1": float(report["macro_f1"]),
    }


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
    task: str = SEQUENCE_CLASSIFICATION,
    label_all_subwords: bool = False,
) -> TrainResult:
    """Fine-tune ``cfg.base_model`` on ``train``; the best epoch (validation macro-F1, or
    entity F1 for ``token_classification``) is written to ``output_dir`` (safetensors
    weights, tokenizer, ``labels.json``: the model's outputs in order).

    ``task``: ``sequence_classification`` (``labels``: the label set) or
    ``token_classification`` (``labels``: the entity types; label cells are span
    JSON; see the module doc). ``label_all_subwords`` (token classification): every
    piece of a word gets a target, not only the first. ``on_epoch`` receives each
    epoch's metrics once its checkpoint is written.
    """
    output_dir, checkpoint_dir = Path(output_dir), Path(checkpoint_dir)
    try:
        task = TaskName(task).value
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
            progress and dist.main, dist, task, label_all_subwords,
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
    task: str = SEQUENCE_CLASSIFICATION,
    label_all_subwords: bool = False,
) -> TrainResult:
    from transformers import AutoTokenizer, get_linear_schedule_with_warmup, set_seed

    from tasks.ner import alignment

    started = time.perf_counter()
    threads = cfg.num_threads or max(1, (os.cpu_count() or 1) // dist.world)
    if device.type == "cpu":
        torch.set_num_threads(threads)
    else:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    precision = precision_name(amp)

    # ---- data
    token = task == TOKEN_CLASSIFICATION
    fp = fingerprint(train, val, labels, cfg, task, label_all_subwords)
    fp["world_size"] = dist.world  # the effective batch, hence the weights, depend on it
    train = training_fraction(train, cfg.data_fraction, cfg.seed, task)
    # The model's outputs: the labels, or the BIO tags of the entity types.
    outputs = sp.tag_names(labels) if token else list(labels)
    label_index = {label: i for i, label in enumerate(outputs)}
    score_key, score_name = ("val_f1", "entity F1") if token else ("val_macro_f1", "macro-F1")

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
    model_class = auto_model_class(task)
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

    def encode(df: pd.DataFrame):
        texts = df["text"].astype(str).tolist()
        if token:
            # Per-token targets ride along in the encoding, under "labels".
            return alignment.encode(
                tokenizer, texts, df["label"].astype(str).tolist(), label_index,
                cfg.max_length, label_all_subwords,
            )  # fmt: skip
        if not texts:
            return {"input_ids": []}
        return tokenizer(texts, truncation=True, max_length=cfg.max_length)

    enc_train, enc_val = encode(train), encode(val)
    lengths = np.array([len(x) for x in enc_train["input_ids"]])
    # A class id per row, or per token of each row (see _batch_targets).
    y_train: np.ndarray | list[list[int]]
    y_val: np.ndarray | list[list[int]]
    if token:
        y_train, y_val = enc_train["labels"], enc_val["labels"]
        val_texts = val["text"].astype(str).tolist()
        val_gold = [sp.loads(cell) for cell in val["label"].astype(str)]
    else:
        y_train = train["label"].astype(str).map(label_index).to_numpy(dtype=np.int64)
        y_val = val["label"].astype(str).map(label_index).to_numpy(dtype=np.int64)

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
        "task": task,
        "num_labels": len(outputs),
        **({"label_all_subwords": bool(label_all_subwords)} if token else {}),
        "steps_per_epoch": steps_per_epoch,
        "total_steps": total_steps,
        "warmup_steps": warmup_steps,
        "parameters": sum(p.numel() for p in model.parameters()),
        "world_size": dist.world,
    }
    log.info(
        "training on %s, precision %s%s: %d train / %d val examples, %d %s, "
        "%d epochs x %d steps (batch %d, %d warm-up steps)%s",
        device,
        precision,
        f", {threads} threads" if device.type == "cpu" else "",
        len(train),
        len(val),
        len(labels),
        f"entity types ({len(outputs)} tags)" if token else "labels",
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
        metrics: dict[str, float | None] = dict.fromkeys(
            ("val_loss", "val_accuracy", "val_f1", "val_macro_f1")
            if token
            else ("val_loss", "val_accuracy", "val_macro_f1")
        )
        if len(val) and token:
            metrics = _evaluate_tokens(
                model, enc_val, y_val, val_texts, val_gold, list(labels), outputs,
                cfg.batch_size * 2, pad_id, device, amp,
            )  # fmt: skip
        elif len(val):
            metrics = _evaluate(model, enc_val, y_val, cfg.batch_size * 2, pad_id, device, amp)
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
            "epoch %d/%d: train loss %.4f, val loss %s, %saccuracy %s, %smacro-F1 %s, "
            "%.1f examples/s, %.0f tokens/s, %.1f s%s",
            epoch,
            cfg.epochs,
            row["train_loss"],
            _fmt(row["val_loss"]),
            "word " if token else "",
            _fmt(row["val_accuracy"]),
            f"entity F1 {_fmt(row['val_f1'])}, " if token else "",
            _fmt(row["val_macro_f1"]),
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
