"""The review loop with a live Label Studio server: push the review queue, pull labels.

``push`` finds (by title) or creates the project ``label_studio.project_title`` with
the labeling config of the project's task (single choice over the label set, or span
labels over the text for token classification) and sends the least confident
predictions of the feedback store and the texts of the conflicts queue as tasks, the
model's (or reviewers') answers as *predictions*: pre-annotations a person accepts or
changes, never annotations. The project's tasks are read first, and a review item
already there (same prediction id, or same conflicting text: :func:`review_key`) is
not sent again, so pushing twice adds nothing.

``pull`` exports the project's finished tasks (the full JSON export), keeps the tasks
with an annotation not pulled before, saves them as they came under
``data.imported_dir`` (``label-studio-<host>-project-<id>-<time>.json``) and merges them
through the label import (:func:`slmops.tasks.labels.importer.merge_votes`: voting,
agreement, quarantine, the gate) as a new DVC version. The rows' provenance is that
file (``source_file``), a batch id naming the server and project
(``label-studio:<host>/projects/<id>@<time>``). The export gives annotators as user
ids: they are resolved through the users API, so the votes (and ``corrections.csv``'s
``new_annotators``) name e-mail addresses, and the saved file has each annotation's
``completed_by`` expanded to ``{"id", "email"}`` (the form of Label Studio's own
export with ``annotations__completed_by``); ``source_file`` and ``source_id`` (the
task id) lead from a labeled row to its annotators there.

The saved exports are the pull's watermark: an annotation is identified by its id and
``updated_at``, and one found in an earlier saved export of the same project is not
pulled again. So pulling twice imports nothing the second time (no file, no version),
even for tasks the import set aside (ties, skips), which a plain re-import would
quarantine again; an annotation changed in Label Studio is pulled again (a
correction), with the other annotations of its task so the vote sees them all.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from slmops.tasks.core.config import Params
from slmops.tasks.core.lock import project_lock
from slmops.tasks.data.dataset import load_label_set
from slmops.tasks.feedback.ingest import commit_data_version
from slmops.tasks.feedback.review import control_of, review_items, review_key, review_tasks
from slmops.tasks.feedback.store import FeedbackStore
from slmops.tasks.labels.importer import ImportSummary, display_path, merge_votes
from slmops.tasks.labels.label_studio import (
    LABEL_ACTIONS,
    LabelStudio,
    LabelStudioError,
    host_of,
    label_config,
)
from slmops.tasks.labels.sources import VoteTable, read_votes
from slmops.tasks.task_types import LABEL_FORMATS, task_type

log = logging.getLogger(__name__)

EXPORT_PREFIX = "label-studio-"


def project_title(params: Params) -> str:
    """``label_studio.project_title``, else ``<registry.model_name> review``."""
    return params.label_studio.project_title or f"{params.registry.model_name} review"


def connect(params: Params, *, transport: httpx.BaseTransport | None = None) -> LabelStudio:
    """A client of the configured server (:class:`LabelStudioError` when not configured
    or the token variable is empty)."""
    return LabelStudio.from_config(params.label_studio, transport=transport)


def project_config(params: Params) -> str:
    """The labeling config of the review project for this project's task and label set."""
    ls = params.label_import.label_studio
    return label_config(
        control_of(params),
        load_label_set(params),
        text_field=ls.text_field,
        from_name=ls.from_name or "label",
    )


@dataclass(frozen=True)
class PushResult:
    """What a push did."""

    url: str
    project_id: int
    project: str  # created | updated | unchanged
    predictions: int  # review-queue tasks sent
    conflicts: int  # conflict tasks sent
    already: int  # review tasks the project held before
    webhook: str | None = None  # created | updated | unchanged; None: none configured


def push(
    params: Params,
    *,
    limit: int | None = None,
    conflicts: bool = True,
    client: LabelStudio | None = None,
) -> PushResult:
    """Send the review queue (and the conflicts queue) to the Label Studio project,
    creating or updating it first; items already in the project are not sent again.

    ``limit`` (default ``serve.review_limit``) caps each queue's new tasks.
    """
    limit = limit or params.serve.review_limit
    text_field = params.label_import.label_studio.text_field
    own = client is None
    ls = client or connect(params)
    try:
        title = project_title(params)
        project, what = ls.ensure_project(
            title, project_config(params), f"Review queue of {params.registry.model_name}"
        )
        pid = int(project["id"])
        keys = (review_key(t.get("data") or {}, text_field) for t in ls.tasks(pid))
        sent = {key for key in keys if key is not None}
        with FeedbackStore.from_params(params) as store:
            queue = review_items(params, store, limit=limit, skip=sent)
            held = (
                review_items(params, store, limit=limit, conflicts=True, skip=sent)
                if conflicts
                else []
            )
        ls.import_tasks(pid, review_tasks(params, queue + held))
        hook = _ensure_webhook(params, ls, pid)
        return PushResult(ls.url, pid, what, len(queue), len(held), len(sent), hook)
    finally:
        if own:
            ls.close()


def _ensure_webhook(params: Params, ls: LabelStudio, project_id: int) -> str | None:
    """Register ``label_studio.webhook_url`` in the project (with the service key of
    ``label_studio.webhook_key_env``); None when no webhook is configured."""
    cfg = params.label_studio
    if cfg.webhook_url is None:
        return None
    key = os.environ.get(cfg.webhook_key_env, "").strip()
    if not key:
        raise LabelStudioError(
            f"label_studio.webhook_url is set but ${cfg.webhook_key_env} is empty: put a "
            "service key with role reviewer there (`slmops keys add label-studio --role "
            "reviewer`), which Label Studio sends with the webhook"
        )
    headers = {"Authorization": f"Bearer {key}"}
    return ls.ensure_webhook(project_id, cfg.webhook_url, headers, sorted(LABEL_ACTIONS))


@dataclass(frozen=True)
class PullResult:
    """What a pull did: ``summary`` is None when nothing new was annotated."""

    url: str
    project_id: int
    finished: int  # finished tasks in the export
    new_tasks: int  # of which with an annotation not pulled before
    export: Path | None  # the saved export of those tasks
    summary: ImportSummary | None
    commit: str | None = None


def _annotation_key(annotation: dict[str, Any]) -> str:
    return f"{annotation.get('id')}@{annotation.get('updated_at') or annotation.get('created_at')}"


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "_", text).strip("_")


def _saved_exports(params: Params, host: str, pid: int) -> list[Path]:
    done = params.path(params.data.imported_dir)
    return sorted(done.glob(f"{EXPORT_PREFIX}{_slug(host)}-project-{pid}-*.json"))


def pulled_annotations(paths: Iterable[Path]) -> set[str]:
    """The annotations (id and update time) in saved exports: the pull's watermark."""
    seen: set[str] = set()
    for path in paths:
        try:
            tasks = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise LabelStudioError(
                f"{path}: an earlier Label Studio export cannot be read ({exc}); it is the "
                "record of what was pulled: restore it or move it away"
            ) from None
        for task in tasks if isinstance(tasks, list) else []:
            annotations = task.get("annotations") if isinstance(task, dict) else None
            for annotation in annotations or []:
                if isinstance(annotation, dict):
                    seen.add(_annotation_key(annotation))
    return seen


def _expand_completed_by(task: dict[str, Any], emails: dict[int, str]) -> dict[str, Any]:
    """The task with each annotation's ``completed_by`` user id expanded to
    ``{"id", "email"}``, as Label Studio's own export does with its
    ``annotations__completed_by`` option: the saved file names the annotators."""

    def expand(annotation: Any) -> Any:
        user = annotation.get("completed_by") if isinstance(annotation, dict) else None
        if isinstance(user, int) and user in emails:
            return {**annotation, "completed_by": {"id": user, "email": emails[user]}}
        return annotation

    return {**task, "annotations": [expand(a) for a in task.get("annotations") or []]}


def _with_emails(table: VoteTable, emails: dict[int, str]) -> VoteTable:
    """The votes with each annotator's user id replaced by their e-mail address."""

    def name(annotator: str) -> str:
        return emails.get(int(annotator), annotator) if annotator.isdigit() else annotator

    votes = table.votes.assign(annotator=table.votes["annotator"].astype(str).map(name))
    return VoteTable(votes, table.rejected, table.fmt)


def pull(
    params: Params,
    *,
    client: LabelStudio | None = None,
    now: datetime | None = None,
    version: bool = True,
    commit: bool | None = None,
) -> PullResult:
    """Import the project's annotations not pulled before as a new labeled-data version.

    ``commit`` (default ``feedback.git_commit``) commits ``data/labeled.dvc`` to git,
    as the feedback ingestion does. Raises :class:`LabelStudioError` when the server
    fails or the project does not exist, :class:`DataError` when the import refuses the
    labels (nothing is saved or merged then: the next pull tries again).
    """
    now = now or datetime.now(UTC)
    own = client is None
    ls = client or connect(params)
    # One pull at a time (the flow's step beside `slmops review pull`): what was pulled
    # is read, imported and recorded under the lock the label import itself takes.
    with project_lock(params, "pull labels from Label Studio"):
        try:
            title = project_title(params)
            project = ls.find_project(title)
            if project is None:
                raise LabelStudioError(
                    f"Label Studio at {ls.url} has no project titled {title!r}: "
                    "`slmops review push` creates it"
                )
            pid, host = int(project["id"]), host_of(ls.url)
            finished = ls.export(pid)
            seen = pulled_annotations(_saved_exports(params, host, pid))
            fresh = [
                task
                for task in finished
                if any(_annotation_key(a) not in seen for a in task.get("annotations") or [])
            ]
            if not fresh:
                log.info("Label Studio project %s at %s: no new annotations", pid, ls.url)
                return PullResult(ls.url, pid, len(finished), 0, None, None)
            emails = ls.user_emails()
        finally:
            if own:
                ls.close()
        fresh = [_expand_completed_by(task, emails) for task in fresh]
        path, summary = _import(params, fresh, emails, host, pid, now, version)
        sha = None
        commit = params.feedback.git_commit if commit is None else commit
        if version and summary.version and commit:
            sha = commit_data_version(
                params,
                f"labels: Label Studio {host}/projects/{pid}: {summary.added} added, "
                f"{summary.corrected} corrected, {summary.quarantined} quarantined; "
                f"annotators: {', '.join(_annotators(fresh))}",
            )
    return PullResult(ls.url, pid, len(finished), len(fresh), path, summary, sha)


def _annotators(tasks: list[dict[str, Any]]) -> list[str]:
    """The annotators of ``tasks`` (e-mail addresses where known), sorted."""
    names = set()
    for task in tasks:
        for annotation in task.get("annotations") or []:
            user = annotation.get("completed_by")
            if isinstance(user, dict):
                user = user.get("email") or user.get("id")
            names.add(str(user))
    return sorted(names)


def _import(
    params: Params,
    fresh: list[dict[str, Any]],
    emails: dict[int, str],
    host: str,
    pid: int,
    now: datetime,
    version: bool,
) -> tuple[Path, ImportSummary]:
    """Save the tasks pulled and merge their votes; the saved file's name is the pull's
    record, so it appears only once the merge succeeded."""
    stamp = f"{now:%Y%m%dT%H%M%S%fZ}"
    done = params.path(params.data.imported_dir)
    path = done / f"{EXPORT_PREFIX}{_slug(host)}-project-{pid}-{stamp}.json"
    raw = json.dumps(fresh, ensure_ascii=False, indent=1).encode("utf-8")
    digest = hashlib.sha256(raw).hexdigest()[:8]
    # Written under a temporary name first: a refused import leaves no file, so the
    # annotations are not taken as pulled.
    done.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".partial-{path.name}")
    tmp.write_bytes(raw)
    try:
        table = _with_emails(read_votes(tmp, params.label_import, LABEL_FORMATS), emails)
        summary = merge_votes(
            table,
            params,
            task_type(params),
            source=display_path(path, params.root),
            batch_id=f"label-studio:{host}/projects/{pid}@{stamp}-{digest}",
            now=now,
            version=version,
        )
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    tmp.replace(path)
    return path, summary
