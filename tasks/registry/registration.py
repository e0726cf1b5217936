"""Registration that a crash cannot leave half done: registration state of versions,
their lookup by model digest, and the resolution of what a killed registration left.

A registration is one MLflow run (params, metrics, the evaluation, the model) and,
at its end, a new version. A process killed midway leaves the run RUNNING for
ever, and, when it died after the version was created, a version whose
registration never completed. So:

- each run records its owner (host, pid, process start: :func:`~slmops.tasks.registry.
  tracking.run_owner`); a RUNNING run whose owner process is gone is stale, and
  :func:`resolve_leftovers` (the ``retrain`` flow's first step, ``slmops register``,
  ``slmops promote``) marks it FAILED, with its never-finished logged models. A run
  whose owner still runs (a concurrent twin) or cannot be checked from here (another
  host, no owner recorded) is left alone;
- a version is created with the tag ``registration: pending`` and the digest of its
  model files (``model.digest``), and tagged ``registration: complete`` once its run
  has ended. A pending version whose model files, evaluation and tags are all there
  is completed (:func:`resolve_version`); one that lacks any of them, and whose
  registration is no longer running, is tagged ``registration: failed`` with the
  reason, and can be removed (:func:`remove_version`, ``slmops models --delete N``);
- registering the same model again (same digest, same test split) returns the
  version already registered (:func:`find_registered`) instead of a second one.

Versions without a ``registration`` tag (registered before the tag existed) count
as complete.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime

from slmops.tasks.core.config import Params
from slmops.tasks.core.errors import PromotionError
from slmops.tasks.core.lock import project_lock
from slmops.tasks.registry.store import ModelVersion, Registry, RunRecord
from slmops.tasks.registry.tracking import actor, describe_owner, owner_alive

log = logging.getLogger(__name__)

TAG_REGISTRATION = "registration"  # on a version: pending, complete or failed
TAG_REGISTRATION_NOTE = "registration.note"  # how a pending version was resolved
TAG_REGISTRATION_ERROR = "registration.error"  # why a version's registration failed
TAG_DIGEST = "model.digest"  # sha256 of the model files (config, labels, weights)
TAG_TEST_HASH = "data.test_hash"  # DVC hash of the test split the version was evaluated on
TAG_RESOLVED = "slmops.resolved"  # on a run: why and when it was marked FAILED

PENDING, COMPLETE, FAILED = "pending", "complete", "failed"

# What a registered version needs to be gated and served.
REQUIRED_TAGS = (TAG_DIGEST, TAG_TEST_HASH, "metrics.accuracy", "task")
EVAL_FILES = ("eval/report.json", "eval/predictions.csv")


@dataclass(frozen=True)
class Resolution:
    """A version's registration state after :func:`resolve_version`, and why."""

    state: str  # pending, complete or failed
    detail: str = ""  # what is missing (pending, failed); empty when complete
    owner_alive: bool | None = None  # pending: whether its registration still runs


@dataclass
class Leftovers:
    """What :func:`resolve_leftovers` found and did."""

    failed_runs: list[str] = field(default_factory=list)  # stale RUNNING runs, now FAILED
    completed: list[str] = field(default_factory=list)  # pending versions completed
    failed_versions: list[str] = field(default_factory=list)  # pending versions now failed
    pending: list[str] = field(default_factory=list)  # versions left pending (still running)
    unchecked_runs: list[str] = field(default_factory=list)  # RUNNING, owner not checkable

    def __bool__(self) -> bool:
        return bool(self.failed_runs or self.completed or self.failed_versions)


def registration_state(mv: ModelVersion) -> str:
    """``pending``, ``complete`` or ``failed``: from the version's ``registration`` tag and
    MLflow's own status (a version without the tag counts as complete)."""
    tag = mv.tags.get(TAG_REGISTRATION)
    if mv.status == "FAILED_REGISTRATION" or tag == FAILED:
        return FAILED
    if mv.status == "PENDING_REGISTRATION" or tag == PENDING:
        return PENDING
    return COMPLETE


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _missing(registry: Registry, mv: ModelVersion, run: RunRecord | None) -> str | None:
    """What a version lacks to be complete (None when nothing): MLflow status, tags, its
    run's evaluation, its model files."""
    if mv.status != "READY":
        return f"MLflow status {mv.status}"
    tags = [t for t in REQUIRED_TAGS if not mv.tags.get(t)]
    if tags:
        return f"tag(s) {', '.join(tags)} missing"
    if run is None:
        return f"its run {mv.run_id or '(none)'} is not in the store"
    files = registry.run_files(run.run_id, "eval")
    absent = [f for f in EVAL_FILES if f not in files]
    if absent:
        return f"its evaluation ({', '.join(absent)}) is missing from run {run.run_id}"
    model = registry.version_files(mv.name, mv.version)
    if "MLmodel" not in model or not any(f.endswith(".safetensors") for f in model):
        return "its model files are incomplete (no MLmodel or no .safetensors weights)"
    return None


def resolve_version(registry: Registry, mv: ModelVersion, *, who: str) -> Resolution:
    """Settle a version whose registration never completed.

    Complete versions are left as they are. A pending one whose model files,
    evaluation and tags are all there is completed (``registration: complete``, with
    a note); one that lacks any of them is failed (``registration: failed``, with the
    reason) once its registration's process is gone, and left pending while it runs
    or cannot be checked from here.
    """
    state = registration_state(mv)
    if state == COMPLETE:
        return Resolution(COMPLETE)
    if state == FAILED:
        return Resolution(
            FAILED, mv.tags.get(TAG_REGISTRATION_ERROR) or f"MLflow status {mv.status}"
        )
    run = registry.run(mv.run_id) if mv.run_id else None
    missing = _missing(registry, mv, run)
    where = f"run {mv.run_id}" if mv.run_id else "no run"
    if missing is None:
        registry.set_tags(
            mv.name,
            mv.version,
            {
                TAG_REGISTRATION: COMPLETE,
                TAG_REGISTRATION_NOTE: f"completed by {who} at {_now()}: its registration "
                f"({where}) was interrupted after the version was created; model files, "
                "evaluation and tags were all there",
            },
        )
        log.warning(
            "%s version %s: its registration (%s) never completed; its model files, evaluation "
            "and tags are intact, so it is now complete",
            mv.name,
            mv.version,
            where,
        )
        return Resolution(COMPLETE)
    alive = owner_alive(run.tags) if run is not None else False
    if alive is False:
        registry.set_tags(
            mv.name, mv.version, {TAG_REGISTRATION: FAILED, TAG_REGISTRATION_ERROR: missing[:4000]}
        )
        log.warning(
            "%s version %s: its registration (%s) was killed and cannot be completed: %s; "
            "marked failed (`slmops models --delete %s` removes it)",
            mv.name,
            mv.version,
            where,
            missing,
            mv.version,
        )
        return Resolution(FAILED, missing)
    return Resolution(PENDING, missing, alive)


def resolve_leftovers(params: Params, *, who: str | None = None) -> Leftovers:
    """Resolve what killed registrations left: mark stale RUNNING runs of the project's
    experiment FAILED (their owner process is gone; their never-finished logged models
    too), then settle every pending version (:func:`resolve_version`). Logs each
    thing it resolves; returns what it found."""
    registry = Registry.configured(params)
    who = who or actor()
    found = Leftovers()
    for run in registry.runs(params.registry.experiment, "RUNNING"):
        alive = owner_alive(run.tags)
        if alive is None:
            found.unchecked_runs.append(run.run_id)
            log.info(
                "run %s is RUNNING; its process cannot be checked from here (%s): left alone",
                run.run_id,
                describe_owner(run.tags),
            )
            continue
        if alive:
            continue  # a registration in progress (a concurrent twin)
        _fail_run(registry, run, who)
        found.failed_runs.append(run.run_id)
    name = params.registry.model_name
    for mv in registry.versions(name):
        if registration_state(mv) != PENDING:
            continue
        resolution = resolve_version(registry, mv, who=who)
        {COMPLETE: found.completed, FAILED: found.failed_versions, PENDING: found.pending}[
            resolution.state
        ].append(mv.version)
        if resolution.state == PENDING:
            log.info(
                "%s version %s: registration not complete (%s); %s",
                name,
                mv.version,
                resolution.detail,
                "still running" if resolution.owner_alive else "its process cannot be checked",
            )
    return found


def _fail_run(registry: Registry, run: RunRecord, who: str) -> None:
    registry.end_run(run.run_id, "FAILED")
    registry.set_run_tags(
        run.run_id,
        {
            TAG_RESOLVED: f"marked FAILED by {who} at {_now()}: left RUNNING by a process that "
            f"is gone ({describe_owner(run.tags)})"
        },
    )
    for model_id in run.model_ids:
        if registry.logged_model_status(model_id) == "PENDING":
            registry.fail_logged_model(model_id)  # its upload never finished
    log.warning(
        "run %s was left RUNNING by a process that is gone (%s, killed mid-registration): "
        "marked FAILED",
        run.run_id,
        describe_owner(run.tags),
    )


def find_registered(
    registry: Registry, name: str, digest: str, test_hash: str, *, who: str
) -> ModelVersion | None:
    """The version of ``name`` already registered for this model (``model.digest``) and
    test split, completing it when its registration was interrupted; None when there
    is none (a failed one does not count)."""
    for mv in sorted(registry.versions(name), key=lambda m: int(m.version)):
        if mv.tags.get(TAG_DIGEST) != digest or mv.tags.get(TAG_TEST_HASH) != test_hash:
            continue
        resolution = resolve_version(registry, mv, who=who)
        if resolution.state == COMPLETE:
            return registry.version(name, mv.version)
    return None


def mark_complete(registry: Registry, name: str, version: str) -> None:
    """Mark a version's registration complete (its run has ended)."""
    registry.set_tags(name, version, {TAG_REGISTRATION: COMPLETE})


def require_complete(registry: Registry, mv: ModelVersion, *, who: str) -> None:
    """Raise :class:`PromotionError` unless ``mv``'s registration is complete (or can be
    completed now: :func:`resolve_version`), saying why and what to do."""
    resolution = resolve_version(registry, mv, who=who)
    head = f"{mv.name} version {mv.version}"
    if resolution.state == COMPLETE:
        return
    if resolution.state == FAILED:
        raise PromotionError(
            f"{head}: its registration failed ({resolution.detail}); it cannot be promoted. "
            f"`slmops models --delete {mv.version}` removes it"
        )
    if resolution.owner_alive:
        raise PromotionError(
            f"{head}: still being registered ({resolution.detail}); promote it once its "
            "registration has finished"
        )
    raise PromotionError(
        f"{head}: its registration never completed ({resolution.detail}) and its process "
        "cannot be checked from this host; once that registration is no longer running, "
        f"`slmops models --delete {mv.version}` removes it"
    )


def remove_version(params: Params, version: str, *, who: str | None = None) -> ModelVersion:
    """Delete a version whose registration failed, or never completed and no longer runs;
    return it. A complete version, or one an alias points to, is never removed."""
    with project_lock(params, f"remove version {version}"):
        registry = Registry.configured(params)
        name = params.registry.model_name
        mv = registry.version(name, version)
        if mv is None:
            raise PromotionError(f"{name} has no version {version!r} (`slmops models` lists them)")
        aliases = [a for a, v in (registry.aliases(name) or {}).items() if v == mv.version]
        if aliases:
            raise PromotionError(f"{name} version {version} is {', '.join(aliases)}: not removed")
        resolution = resolve_version(registry, mv, who=who or actor())
        if resolution.state == COMPLETE:
            raise PromotionError(
                f"{name} version {version} is registered in full (model files, evaluation and "
                "tags): only a version whose registration failed or never completed is removed"
            )
        if resolution.state == PENDING and resolution.owner_alive:
            raise PromotionError(f"{name} version {version} is still being registered: not removed")
        registry.delete_version(name, version)
        log.warning(
            "%s version %s removed (registration %s: %s)",
            name,
            version,
            resolution.state,
            resolution.detail,
        )
        return mv
