"""`slmops demo-loop`: the loop closing, on the shipped data, in one command.

Serve the champion → send the example texts and correct its answers (labels, or
entity spans for a token classifier) → ingest the feedback (a new data version,
committed) → retrain because the threshold was crossed → promote or refuse →
the service answers with whichever model is champion afterwards.
"""

from __future__ import annotations

import os
import secrets
import time
from pathlib import Path

import httpx
import pandas as pd
from rich.console import Console

from slmops.flows.ingest_feedback import ingest_feedback_flow
from slmops.serving.background import free_port, serve_in_thread
from slmops.tasks.core.config import load_params, with_overrides
from slmops.tasks.core.errors import DataError
from slmops.tasks.registry.promotion import CHAMPION, alias_version, client
from slmops.tasks.task_types import task_type

EXAMPLES = Path("data/examples/feedback_demo.csv")
PROFILE = "loop-demo"  # params.yaml profile: a retrain threshold the example batch crosses


def run(params_path: Path, out: Console, port: int | None = None) -> None:
    """Run the loop demo against the project at ``params_path`` (see module doc)."""
    params = load_params(params_path, PROFILE)
    task = task_type(params)
    name = params.registry.model_name
    before = alias_version(client(params), name, CHAMPION)
    if before is None:
        raise DataError(f"{name} has no champion yet: run `make demo` (or `slmops demo`) first")
    examples = pd.read_csv(params.path(EXAMPLES), dtype=str)
    token_env = params.serve.token_env
    # A throwaway token unless the user set one: the demo posts feedback itself.
    os.environ.setdefault(token_env, secrets.token_urlsafe(24))
    headers = {"Authorization": f"Bearer {os.environ[token_env]}"}
    served = with_overrides(params, {"serve": {"poll_seconds": 2}}, "demo-loop")

    with serve_in_thread(served, port or free_port()) as url:
        model = httpx.get(f"{url}/model", timeout=10).json()
        out.print(f"[bold]1. serving[/] {name} version {model['version']} at {url}")

        answers = httpx.post(
            f"{url}/predict", json={"texts": examples["text"].tolist()}, timeout=120
        ).json()["predictions"]
        wrong = 0
        for answer, truth in zip(answers, examples["label"], strict=True):
            body = {"prediction_id": answer["prediction_id"], "user": "demo"}
            r = httpx.post(
                f"{url}/feedback",
                json=body | {task.feedback_field: task.feedback_answer(truth)},
                headers=headers,
                timeout=10,
            )
            r.raise_for_status()
            wrong += r.json()["kind"] == "correction"
        out.print(
            f"[bold]2. feedback[/]: {len(answers)} predictions, {wrong} corrected, "
            f"{len(answers) - wrong} confirmed"
        )

        out.print("[bold]3. ingest_feedback[/] (retrains when the threshold is crossed) ...")
        r = ingest_feedback_flow(params_path=str(params_path), profile=PROFILE)
        out.print(
            f"   {r['added']} added, {r['corrected']} corrected, {r['quarantined']} quarantined; "
            f"data version {r['version']} (git commit {str(r['commit'] or '-')[:10]})"
        )
        for version, m in r["live"].items():
            out.print(f"   live accuracy of version {version}: {m['accuracy']:.4f} on {m['n']}")
        retrain = r["retrain"] or {}
        out.print(f"[bold]4. retrain[/]: {r['retrain_reason'] or 'not due'}")
        if retrain.get("mode") == "subflow":
            verdict = "promoted" if retrain["promoted"] else "refused"
            out.print(f"   version {retrain['version']} {verdict}: {retrain['decision']}")

        after = alias_version(client(params), name, CHAMPION)
        deadline = time.monotonic() + 30
        while True:  # the service polls the alias every 2 s
            model = httpx.get(f"{url}/model", timeout=10).json()
            if str(model["version"]) == str(after) or time.monotonic() > deadline:
                break
            time.sleep(1)
        sample = examples["text"].iloc[0]
        answer = httpx.post(f"{url}/predict", json={"text": sample}, timeout=30).json()
        answer = answer["predictions"][0]
        out.print(
            f"[bold]5. serving[/] version {model['version']} (champion before: {before}, "
            f"after: {after}); {sample!r} → {task.shown(answer)}"
        )
