"""Feedback as the service records it: predictions of version 1, each corrected."""

from __future__ import annotations

from slmops.tasks.task_types import task_type

SEQUENCE = task_type("sequence_classification")

# Three texts version 1 answered "exchange_rate" for, with the right label.
CORRECTIONS = [
    ("where is the card you posted to me", "card_arrival"),
    ("my top up did not go through at all", "top_up_failed"),
    ("someone stole my card this morning", "lost_or_stolen_card"),
]


def record_corrections(params, corrections=CORRECTIONS) -> None:
    """Log a prediction of each text and a reviewer's correction of it."""
    from slmops.tasks.data.dataset import load_label_set
    from slmops.tasks.feedback.store import FeedbackStore, NewPrediction

    labels = load_label_set(params)
    with FeedbackStore.from_params(params) as store:
        ids = store.log_predictions(
            [
                NewPrediction(t, "exchange_rate", 0.4, [], "slmops-intent", "1")
                for t, _ in corrections
            ]
        )
        for pid, (_, label) in zip(ids, corrections, strict=True):
            store.add_feedback(pid, label, labels, user="reviewer", task=SEQUENCE)


def corrections_past_the_threshold(project, **sections: dict):
    """Retrain after 3 feedback labels (``sections`` update other sections of
    params.yaml), and record :data:`CORRECTIONS`; return the params."""
    import yaml

    from slmops.tasks.core.config import load_params

    path = project / "params.yaml"
    raw = yaml.safe_load(path.read_text())
    raw["feedback"] = {"retrain_after_labels": 3}
    for section, values in sections.items():
        raw.setdefault(section, {}).update(values)
    path.write_text(yaml.safe_dump(raw))
    params = load_params(path)
    record_corrections(params)
    return params
