"""Crafted prediction streams for the monitoring tests, and a registry whose champion has
its test-set predictions.

A stream draws labels (one of them, ``compromised_card``, at a chosen share),
confidences (beta) and text lengths (Poisson); the reference is a larger sample
of the unshifted stream.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from slmops.tasks.core.config import parse_params
from slmops.tasks.feedback.store import FeedbackStore, NewPrediction
from slmops.tasks.monitoring.run import run_monitoring
from slmops.tasks.monitoring.sources import Reference
from slmops.tasks.registry.promotion import CHAMPION, client
from slmops.tasks.task_types import task_type

NAME = "slmops-intent"
VERSION = "4"
SPIKE = "compromised_card"
OTHERS = [f"intent_{i}" for i in range(9)]
LABELS = [SPIKE, *OTHERS]
REFERENCE_ROWS = 3000
LIVE_ROWS = 800


def label_probs(spike_share: float) -> np.ndarray:
    return np.array([spike_share] + [(1 - spike_share) / len(OTHERS)] * len(OTHERS))


def stream(
    rng: np.random.Generator,
    n: int,
    *,
    spike_share: float = 0.02,
    confidence: tuple[float, float] = (9.0, 1.2),
    words: float = 11.0,
) -> pd.DataFrame:
    """``n`` predictions: label, confidence (beta), text of Poisson(words) + 1 words."""
    labels = rng.choice(LABELS, size=n, p=label_probs(spike_share))
    conf = rng.beta(*confidence, size=n)
    lengths = rng.poisson(words, size=n) + 1
    texts = [" ".join(["word"] * int(k)) for k in lengths]
    return pd.DataFrame({"text": texts, "cell": labels, "confidence": conf})


def shifted_stream() -> pd.DataFrame:
    """One label from 2% to 30%, lower confidence, longer texts."""
    return stream(
        np.random.default_rng(2), LIVE_ROWS, spike_share=0.30, confidence=(3.0, 2.0), words=40.0
    )


def reference_frame(seed: int = 1) -> pd.DataFrame:
    return stream(np.random.default_rng(seed), REFERENCE_ROWS)


def make_params(tmp_path, **monitoring):
    return parse_params(
        {"registry": {"model_name": NAME}, "monitoring": monitoring},
        tmp_path / "params.yaml",
        root=tmp_path,
    )


def log_stream(params, live: pd.DataFrame, *, version: str = VERSION) -> list[str]:
    """Write the stream to the project's feedback store as served predictions; their ids."""
    rows = [
        NewPrediction(
            text=r.text,
            label=r.cell,
            confidence=float(r.confidence),
            top_k=[{"label": r.cell, "score": float(r.confidence)}],
            model_name=NAME,
            model_version=version,
        )
        for r in live.itertuples()
    ]
    with FeedbackStore.from_params(params) as store:
        return store.log_predictions(rows)


def give_feedback(params, ids: list[str], cells: list[str], confirmed: int, total: int) -> None:
    """Feedback on the first ``total`` predictions: ``confirmed`` confirm, the rest correct."""
    task = task_type(params)
    with FeedbackStore.from_params(params) as store:
        for i in range(total):
            other = OTHERS[0] if cells[i] != OTHERS[0] else OTHERS[1]
            label = cells[i] if i < confirmed else other
            store.add_feedback(ids[i], label, LABELS, "rev", task=task)


def feedback_frame(confirmed: int, total: int) -> pd.DataFrame:
    """Feedback rows as the live window holds them: ``confirmed`` confirm, the rest correct."""
    kinds = ["confirmation"] * confirmed + ["correction"] * (total - confirmed)
    return pd.DataFrame({"prediction_id": range(total), "label": "x", "kind": kinds})


def monitor(params, reference: pd.DataFrame, **kwargs):
    """``run_monitoring`` of :data:`VERSION` against a crafted reference."""
    return run_monitoring(
        params, version=VERSION, reference=Reference(reference, "crafted reference"), **kwargs
    )


def ner_stream(rng: np.random.Generator, n: int, org_share: float) -> pd.DataFrame:
    """NER label cells: span lists; ORG entities in ``org_share`` of the texts."""
    cells = []
    for _ in range(n):
        spans = []
        if rng.random() < 0.5:
            spans.append([0, 4, "PER"])
        if rng.random() < 0.3:
            spans.append([10, 15, "LOC"])
        if rng.random() < org_share:
            spans.append([20, 25, "ORG"])
        cells.append(json.dumps(spans))
    return pd.DataFrame(
        {"text": ["Anna went to Paris to see ACME"] * n, "cell": cells, "confidence": 0.9}
    )


def ner_labels_of(cell: str) -> list[str]:
    return [kind for _, _, kind in json.loads(cell)] or ["(no entity)"]


def champion_registry(root: Path) -> str:
    """An MLflow store under ``root`` whose model :data:`NAME` has version 1 as champion,
    its run holding ``eval/predictions.csv`` as registration logs it (no weights needed),
    and a version 2 whose run has no evaluation files. Its tracking URI."""
    import mlflow  # heavy: imported only by the tests that build a registry

    uri = f"sqlite:///{root / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        params = parse_params({"registry": {"tracking_uri": uri}}, root / "params.yaml", root=root)
        ref = reference_frame().rename(columns={"cell": "pred"})
        ref.insert(1, "label", ref["pred"])
        (root / "eval").mkdir()
        ref.assign(correct=True).to_csv(root / "eval" / "predictions.csv", index=False)
        mc = client(params)  # configures MLflow on this store
        with mlflow.start_run() as run:
            mlflow.log_artifacts(str(root / "eval"), artifact_path="eval")
        mc.create_registered_model(NAME)
        source = f"{run.info.artifact_uri}/eval"
        mv = mc.create_model_version(NAME, source=source, run_id=run.info.run_id)
        mc.set_registered_model_alias(NAME, CHAMPION, mv.version)
        with mlflow.start_run() as bare:  # version 2: a run without evaluation files
            pass
        mc.create_model_version(NAME, source=bare.info.artifact_uri, run_id=bare.info.run_id)
    return uri
