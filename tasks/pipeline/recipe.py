"""A model's recipe: what a training run's result depends on, as one fingerprint.

Three things make a model: the data (the DVC hashes of the labeled data and the
frozen test split), the params that shape it (the sections ``labels``,
``validation``, ``split``, ``train`` and ``evaluate``, *after* a profile and the
flow's overrides: the values the run really used), and the code (the files the
dvc stages ``validate``, ``split``, ``train`` and ``evaluate`` depend on, read from
the ``dvc.yaml`` beside the params file, so the list is written once, plus the
versions of torch and transformers). Two runs with the same recipe train the same
model (training is deterministic), so the ``retrain`` flow skips training when a
registered version has the recipe of the run it is about to start
(:func:`slmops.tasks.registry.recipes.same_recipe`), the way ``dvc repro`` skips a
stage whose deps and params have not changed. The fingerprint is tagged on every
registered version (``slmops.recipe``).

Only where a run writes is left out (``validation.report_dir``,
``train.output_dir``, ``train.checkpoint_dir``, ``train.runs_dir``,
``evaluate.output_dir``: a retrain run points them into its own folder) and how often
training reports its progress (``train.report_every_seconds``): they do not change
what is trained. Everything else in those sections counts, also what
might not change the weights (``train.num_threads``, ``evaluate.latency_samples``):
a needless retrain costs minutes, a wrongly skipped one a model nobody trained.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml

from slmops.tasks.core.config import Params
from slmops.tasks.data.split import data_versions
from slmops.tasks.registry.recipes import SameRecipe, same_recipe

#: the params sections that shape a model (and its evaluation)
SECTIONS = ("labels", "validation", "split", "train", "evaluate")
#: where a run writes and how often it reports: not part of what it makes
NOT_SHAPING = {
    "validation": ("report_dir",),
    "train": ("output_dir", "checkpoint_dir", "runs_dir", "report_every_seconds"),
    "evaluate": ("output_dir",),
}
#: the dvc stages that make the model; their code deps are the recipe's code
STAGES = ("validate", "split", "train", "evaluate")
LIBRARIES = ("torch", "transformers")
DVC_FILE = "dvc.yaml"
SKIPPED_DIRS = {"__pycache__"}
SKIPPED_SUFFIXES = {".pyc", ".pyo"}

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Recipe:
    """A run's recipe: its parts and their fingerprint (``sha256:<hex>``)."""

    fingerprint: str
    data: dict[str, str]  # {"labeled": DVC hash, "test": DVC hash}
    params: dict[str, Any]  # the sections that shape the model, as the run uses them
    code: str  # sha256 of the code files and library versions
    code_paths: list[str]  # what the code hash covers


def shaping_params(params: Params) -> dict[str, Any]:
    """The params sections that shape the model, without :data:`NOT_SHAPING`."""
    out: dict[str, Any] = {"task": params.task.value}
    for section in SECTIONS:
        values = getattr(params, section).model_dump(mode="json", by_alias=True)
        for key in NOT_SHAPING.get(section, ()):
            values.pop(key, None)
        out[section] = values
    return out


def _entry_path(entry: Any) -> str:
    # dvc.yaml lists a dep or out as a string, or as a one-key mapping with options.
    return next(iter(entry)) if isinstance(entry, dict) else str(entry)


def _within(path: Path, folders: list[Path]) -> bool:
    return any(path == f or f in path.parents for f in folders)


def code_paths(params: Params) -> list[Path]:
    """The code the model depends on: the deps of the ``dvc.yaml`` beside the params file's
    stages :data:`STAGES` that are neither data nor another stage's output. Without a
    ``dvc.yaml`` (a project outside the repository), the whole ``tasks/`` package."""
    dvc_file = params.root / DVC_FILE
    if not dvc_file.exists():
        return [Path(__file__).resolve().parents[1]]
    stages = (yaml.safe_load(dvc_file.read_text(encoding="utf-8")) or {}).get("stages") or {}
    base = dvc_file.parent.resolve()
    data = [
        params.path(params.data.labeled_dir).resolve(),
        params.path(params.data.test_dir).resolve(),
    ]
    outs = [
        (base / _entry_path(o)).resolve()
        for stage in stages.values()
        for key in ("outs", "metrics", "plots")
        for o in stage.get(key) or []
    ]
    deps = {
        (base / _entry_path(d)).resolve()
        for name in STAGES
        for d in (stages.get(name) or {}).get("deps") or []
    }
    return sorted(d for d in deps if not _within(d, data + outs))


def _files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    return sorted(
        f
        for f in path.rglob("*")
        if f.is_file()
        and f.suffix not in SKIPPED_SUFFIXES
        and not SKIPPED_DIRS.intersection(f.relative_to(path).parts)
    )


def code_hash(paths: list[Path]) -> str:
    """sha256 of the files under ``paths`` (names relative to each path's parent, so the
    project's location does not count) and of :data:`LIBRARIES`' versions."""
    h = hashlib.sha256()
    for path in paths:
        if not path.exists():
            h.update(f"missing:{path.name}\0".encode())
            continue
        for f in _files(path):
            h.update(str(f.relative_to(path.parent)).encode() + b"\0")
            h.update(hashlib.sha256(f.read_bytes()).digest())
    for lib in LIBRARIES:
        try:
            version = metadata.version(lib)
        except metadata.PackageNotFoundError:
            version = "absent"
        h.update(f"{lib}=={version}\0".encode())
    return h.hexdigest()


def recipe(params: Params, data: dict[str, str]) -> Recipe:
    """The recipe of a run on ``data`` (``{"labeled", "test"}`` DVC hashes) with ``params``
    (the effective ones: profile and overrides applied)."""
    paths = code_paths(params)
    parts = {
        "data": {"labeled": data["labeled"], "test": data["test"]},
        "params": shaping_params(params),
        "code": code_hash(paths),
    }
    text = json.dumps(parts, sort_keys=True, separators=(",", ":"))
    return Recipe(
        fingerprint="sha256:" + hashlib.sha256(text.encode()).hexdigest(),
        data=parts["data"],
        params=parts["params"],
        code=parts["code"],
        code_paths=[str(p) for p in paths],
    )


@dataclass(frozen=True)
class RecipeCheck:
    """A run's recipe, and the registered version that has it already (if any)."""

    recipe: Recipe
    same: SameRecipe | None

    def unchanged(self) -> str | None:
        """Why training can be skipped (None: it cannot)."""
        if self.same is None:
            return None
        return f"unchanged: same data, params and code as {self.same.describe()}"


def check_recipe(params: Params) -> RecipeCheck:
    """The recipe of a retrain about to start with ``params`` on the data in the workspace
    (after the label import), and the registered version made from it, if any."""
    made = recipe(params, data_versions(params))
    same = same_recipe(params, made.fingerprint)
    if same is not None:
        log.info("recipe %s: %s has it", made.fingerprint[:19], same.describe())
    return RecipeCheck(made, same)
