"""A plain client of Label Studio's HTTP API (the endpoints of label-studio 1.23).

Only what the review loop needs: find or create a project by title with a labeling
config, read its tasks, import tasks (with predictions: pre-annotations, never
annotations), export its finished tasks as the full JSON export, map user ids to
e-mail addresses, and register the project's webhook to the prediction service. httpx
rather than label-studio-sdk: the SDK brings pydantic models of the whole API and its
own pins for a handful of calls.

Authentication is the *legacy* token (``Authorization: Token <key>``), the one
``infra/label-studio.sh`` creates for its admin user (``LABEL_STUDIO_USER_TOKEN``,
with legacy tokens enabled for the organisation). Label Studio 1.23's personal access
tokens are JWT refresh tokens that must first be exchanged for an access token
(``/api/token/refresh``): a token that looks like a JWT is exchanged once and the
access token sent as ``Authorization: Bearer``.

Every failure is a :class:`LabelStudioError` whose message names the server's URL:
:class:`LabelStudioUnreachable` when nothing answers (the caller may go on without
it), otherwise a refused token, a missing project or an HTTP error with Label
Studio's own detail.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from typing import Any, Literal
from urllib.parse import urlsplit
from xml.sax.saxutils import quoteattr

import httpx

from slmops.tasks.core.config import LabelStudioConfig

Control = Literal["choices", "labels"]
PAGE_SIZE = 100

# The webhook actions after which a pull can find a new or changed label: what `review
# push` registers and the service's /hooks/label-studio forwards.
LABEL_ACTIONS = frozenset({"ANNOTATION_CREATED", "ANNOTATIONS_CREATED", "ANNOTATION_UPDATED"})


class LabelStudioError(RuntimeError):
    """Label Studio refused a request or answered something unusable (the message says
    which server and why)."""


class LabelStudioUnreachable(LabelStudioError):
    """Nothing answered at the server's URL (connection refused, DNS, timeout)."""


def label_config(
    control: Control, labels: Sequence[str], *, text_field: str, from_name: str
) -> str:
    """The labeling config (XML) of a review project: one ``<Text>`` showing
    ``data.<text_field>`` and, for ``choices``, a single-choice ``<Choices>`` (sequence
    classification), for ``labels``, a ``<Labels>`` span control (token classification).
    The control is named ``from_name`` so predictions and the import agree on it."""
    if not labels:
        raise ValueError("a review project needs at least one label")
    text = f"<Text name={quoteattr(text_field)} value={quoteattr('$' + text_field)}/>"
    if control == "choices":
        options = "".join(f"<Choice value={quoteattr(label)}/>" for label in labels)
        names = f"name={quoteattr(from_name)} toName={quoteattr(text_field)}"
        head = f'<Choices {names} choice="single" showInline="true">'
        return f"<View>{text}{head}{options}</Choices></View>"
    options = "".join(f"<Label value={quoteattr(label)}/>" for label in labels)
    head = f"<Labels name={quoteattr(from_name)} toName={quoteattr(text_field)}>"
    # The span control before the text: Label Studio's own NER template has it so.
    return f"<View>{head}{options}</Labels>{text}</View>"


def host_of(url: str) -> str:
    """``host:port`` of a URL (what provenance and file names call the server)."""
    parts = urlsplit(url)
    return parts.netloc or url


def _is_jwt(token: str) -> bool:
    return token.count(".") == 2 and token.startswith("ey")


class LabelStudio:
    """A session with one Label Studio server; use as a context manager (or ``close``).

    ``transport`` replaces the network (tests pass an :class:`httpx.MockTransport`).
    """

    def __init__(
        self,
        url: str,
        token: str,
        *,
        timeout: float = 30.0,
        token_source: str = "the token",
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self.token_source = token_source
        self._http = httpx.Client(
            base_url=self.url,
            timeout=timeout,
            transport=transport,
            headers={"Accept": "application/json"},
            # The server is named in the config: no proxy from the environment in between.
            trust_env=False,
        )
        self._token = token
        self._auth: str | None = None

    @classmethod
    def from_config(
        cls, cfg: LabelStudioConfig, *, transport: httpx.BaseTransport | None = None
    ) -> LabelStudio:
        """A client for ``label_studio.url`` with the token from ``label_studio.token_env``;
        :class:`LabelStudioError` when either is missing."""
        if not cfg.url:
            raise LabelStudioError(
                "label_studio.url is not set in params.yaml: no Label Studio server configured"
            )
        token = os.environ.get(cfg.token_env, "").strip()
        if not token:
            raise LabelStudioError(
                f"no API token for Label Studio at {cfg.url}: set the environment variable "
                f"{cfg.token_env} (label_studio.token_env) to the token "
                "(infra/label-studio.sh token prints the local server's)"
            )
        return cls(
            cfg.url,
            token,
            timeout=cfg.timeout_seconds,
            token_source=f"the token in ${cfg.token_env}",
            transport=transport,
        )

    def __enter__(self) -> LabelStudio:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the HTTP connections."""
        self._http.close()

    # ------------------------------------------------------------------ requests

    def _authorization(self) -> str:
        if self._auth is None:
            if _is_jwt(self._token):
                # A personal access token: a refresh token, exchanged for an access token.
                answer = self._send(
                    "POST", "/api/token/refresh/", json={"refresh": self._token}, auth=False
                )
                self._auth = f"Bearer {answer['access']}"
            else:
                self._auth = f"Token {self._token}"
        return self._auth

    def _send(self, method: str, path: str, *, auth: bool = True, **kwargs: Any) -> Any:
        headers = {"Authorization": self._authorization()} if auth else {}
        try:
            response = self._http.request(method, path, headers=headers, **kwargs)
        except httpx.TimeoutException as exc:
            raise LabelStudioUnreachable(
                f"Label Studio at {self.url} did not answer {method} {path} in time ({exc})"
            ) from None
        except httpx.TransportError as exc:
            raise LabelStudioUnreachable(
                f"Label Studio at {self.url} is unreachable ({exc}); is it running? "
                "(infra/label-studio.sh status)"
            ) from None
        if response.status_code in (401, 403):
            raise LabelStudioError(
                f"Label Studio at {self.url} refused {self.token_source} "
                f"(HTTP {response.status_code} on {method} {path}: {_detail(response)})"
            )
        if response.status_code >= 400:
            raise LabelStudioError(
                f"Label Studio at {self.url}: {method} {path} failed with HTTP "
                f"{response.status_code}: {_detail(response)}"
            )
        if not response.content:
            return None
        try:
            return response.json()
        except json.JSONDecodeError:
            raise LabelStudioError(
                f"Label Studio at {self.url}: {method} {path} answered HTTP "
                f"{response.status_code} with something other than JSON (is {self.url} a "
                "Label Studio server?)"
            ) from None

    def _pages(self, path: str, params: dict[str, Any], key: str) -> Iterator[dict[str, Any]]:
        """The items of a paginated list (``results`` with ``next``, or ``tasks`` with
        ``total``), page by page."""
        page, seen = 1, 0
        while True:
            query = {**params, "page": page, "page_size": PAGE_SIZE}
            answer = self._send("GET", path, params=query)
            if isinstance(answer, list):  # an unpaginated answer
                yield from answer
                return
            items = answer.get(key) or []
            yield from items
            seen += len(items)
            total = answer.get("count", answer.get("total"))
            if not items or (key == "results" and answer.get("next") is None):
                return
            if total is not None and seen >= total:
                return
            page += 1

    # ------------------------------------------------------------------ API

    def whoami(self) -> dict[str, Any]:
        """The user the token belongs to."""
        return self._send("GET", "/api/current-user/whoami")

    def projects(self) -> list[dict[str, Any]]:
        """Every project the user sees."""
        return list(self._pages("/api/projects/", {}, "results"))

    def find_project(self, title: str) -> dict[str, Any] | None:
        """The project with exactly this title (the lowest id when several have it)."""
        found = [p for p in self.projects() if p.get("title") == title]
        return min(found, key=lambda p: p["id"]) if found else None

    def ensure_project(
        self, title: str, config: str, description: str = ""
    ) -> tuple[dict[str, Any], str]:
        """The project titled ``title`` with labeling config ``config``: created when
        missing, its config replaced when it differs. Returns it and what was done
        (``created``, ``updated`` or ``unchanged``)."""
        project = self.find_project(title)
        if project is None:
            body = {"title": title, "label_config": config, "description": description}
            return self._send("POST", "/api/projects/", json=body), "created"
        if project.get("label_config", "").strip() == config.strip():
            return project, "unchanged"
        path = f"/api/projects/{project['id']}/"
        return self._send("PATCH", path, json={"label_config": config}), "updated"

    def tasks(self, project_id: int) -> list[dict[str, Any]]:
        """Every task of a project (its ``data``, ids and annotation counts)."""
        return list(self._pages("/api/tasks/", {"project": project_id}, "tasks"))

    def import_tasks(self, project_id: int, tasks: list[dict[str, Any]]) -> int:
        """Add tasks (each ``data`` with its ``predictions``) to a project; how many it
        took."""
        if not tasks:
            return 0
        answer = self._send("POST", f"/api/projects/{project_id}/import", json=tasks)
        return int(answer.get("task_count", len(tasks))) if isinstance(answer, dict) else len(tasks)

    def export(self, project_id: int) -> list[dict[str, Any]]:
        """The project's finished tasks (those with an annotation, skips included) as
        Label Studio's full JSON export: ``data``, ``annotations`` (``completed_by`` a
        user id), ``predictions``."""
        answer = self._send(
            "GET", f"/api/projects/{project_id}/export", params={"exportType": "JSON"}
        )
        if not isinstance(answer, list):
            raise LabelStudioError(
                f"Label Studio at {self.url}: the export of project {project_id} is not a "
                "JSON list of tasks"
            )
        return answer

    def ensure_webhook(
        self, project_id: int, url: str, headers: dict[str, str], actions: list[str]
    ) -> str:
        """The project's webhook to ``url`` for ``actions``, sending ``headers`` and no
        payload: created when missing, changed when it differs. Returns ``created``,
        ``updated`` or ``unchanged``."""
        want = {"headers": headers, "actions": sorted(actions), "is_active": True}
        hooks = self._send("GET", "/api/webhooks/", params={"project": project_id}) or []
        for hook in hooks:
            if hook.get("url") != url or hook.get("project") != project_id:
                continue
            have = {k: hook.get(k) for k in want}
            have["actions"] = sorted(have["actions"] or [])
            if have == want and hook.get("send_payload") is False:
                return "unchanged"
            body = {**want, "send_payload": False, "send_for_all_actions": False}
            self._send("PATCH", f"/api/webhooks/{hook['id']}/", json=body)
            return "updated"
        body = {
            **want,
            "project": project_id,
            "url": url,
            "send_payload": False,
            "send_for_all_actions": False,
        }
        self._send("POST", "/api/webhooks/", json=body)
        return "created"

    def user_emails(self) -> dict[int, str]:
        """User id -> e-mail address, for the users the token may list."""
        return {
            int(u["id"]): str(u["email"])
            for u in self._send("GET", "/api/users/") or []
            if u.get("id") is not None and u.get("email")
        }


def _detail(response: httpx.Response) -> str:
    """Label Studio's own explanation of an error, short."""
    try:
        body = response.json()
    except ValueError:
        return response.text.strip()[:300] or response.reason_phrase
    if isinstance(body, dict):
        # "Validation error" alone says little: the field errors follow it.
        said = [
            body[key] if isinstance(body[key], str) else json.dumps(body[key])
            for key in ("detail", "validation_errors", "message")
            if body.get(key)
        ]
        if said:
            return ": ".join(said)[:500]
    return json.dumps(body)[:300]
