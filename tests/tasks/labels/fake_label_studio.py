"""An in-memory Label Studio speaking the few endpoints of the client
(:mod:`slmops.tasks.labels.label_studio`), behind an :class:`httpx.MockTransport`."""

from __future__ import annotations

import json
from typing import Any

import httpx

TOKEN = "test-token-0123456789"


class FakeLabelStudio:
    """Projects, tasks, annotations and users of one fake server; ``requests`` logs
    (method, path) of every request."""

    def __init__(self, token: str = TOKEN, page_size: int | None = None) -> None:
        self.token = token
        self.page_size = page_size  # forces small pages (None: the client's)
        self.projects: dict[int, dict[str, Any]] = {}
        self.tasks: dict[int, dict[str, Any]] = {}
        self.users = {1: "admin@example.com"}
        self.requests: list[tuple[str, str]] = []
        self._ids = {"project": 0, "task": 0, "annotation": 0}

    def transport(self) -> httpx.MockTransport:
        """The transport to give the client."""
        return httpx.MockTransport(self.handle)

    def _next(self, kind: str) -> int:
        self._ids[kind] += 1
        return self._ids[kind]

    def annotate(
        self,
        task_id: int,
        label: str,
        user: int,
        *,
        cancelled: bool = False,
        result: list[dict[str, Any]] | None = None,
    ) -> dict[str, Any]:
        """Add an annotation choosing ``label`` by user ``user`` (skipped: ``cancelled``;
        ``result``: these regions instead of the choice)."""
        aid = self._next("annotation")
        choice = {
            "from_name": "label",
            "to_name": "text",
            "type": "choices",
            "value": {"choices": [label]},
        }
        annotation = {
            "id": aid,
            "completed_by": user,
            "was_cancelled": cancelled,
            "result": [] if cancelled else result if result is not None else [choice],
            "created_at": f"2026-01-01T00:00:{aid:02d}Z",
            "updated_at": f"2026-01-01T00:00:{aid:02d}Z",
        }
        self.tasks[task_id]["annotations"].append(annotation)
        return annotation

    def handle(self, request: httpx.Request) -> httpx.Response:
        path, method = request.url.path, request.method
        self.requests.append((method, path))
        if request.headers.get("Authorization") != f"Token {self.token}":
            return httpx.Response(401, json={"detail": "Invalid token."})
        query = dict(request.url.params)
        body = json.loads(request.content) if request.content else None
        parts = [p for p in path.split("/") if p]
        if path == "/api/projects/" and method == "GET":
            return self._page(list(self.projects.values()), query, "results")
        if path == "/api/projects/" and method == "POST":
            pid = self._next("project")
            self.projects[pid] = {"id": pid, **body}
            return httpx.Response(201, json=self.projects[pid])
        if parts[:2] == ["api", "projects"] and len(parts) == 3 and method == "PATCH":
            project = self.projects[int(parts[2])]
            project.update(body)
            return httpx.Response(200, json=project)
        if parts[:2] == ["api", "projects"] and parts[-1] == "import" and method == "POST":
            pid = int(parts[2])
            for task in body:
                tid = self._next("task")
                self.tasks[tid] = {
                    "id": tid,
                    "project": pid,
                    "data": task["data"],
                    "predictions": task.get("predictions", []),
                    "annotations": [],
                }
            return httpx.Response(201, json={"task_count": len(body)})
        if parts[:2] == ["api", "projects"] and parts[-1] == "export" and method == "GET":
            pid = int(parts[2])
            done = [t for t in self.tasks.values() if t["project"] == pid and t["annotations"]]
            return httpx.Response(200, json=json.loads(json.dumps(done)))
        if path == "/api/tasks/" and method == "GET":
            pid = int(query["project"])
            mine = [
                {"id": t["id"], "data": t["data"]}
                for t in self.tasks.values()
                if t["project"] == pid
            ]
            return self._page(mine, query, "tasks")
        if path == "/api/users/" and method == "GET":
            return httpx.Response(200, json=[{"id": i, "email": e} for i, e in self.users.items()])
        return httpx.Response(404, json={"detail": "Not found."})

    def _page(self, items: list[Any], query: dict[str, str], key: str) -> httpx.Response:
        size = self.page_size or int(query.get("page_size", 100))
        page = int(query.get("page", 1))
        chunk = items[(page - 1) * size : page * size]
        if page > 1 and not chunk:
            return httpx.Response(404, json={"detail": "Invalid page."})
        more = page * size < len(items)
        if key == "results":
            return httpx.Response(
                200,
                json={"count": len(items), "next": "more" if more else None, "results": chunk},
            )
        return httpx.Response(200, json={"total": len(items), "tasks": chunk})
