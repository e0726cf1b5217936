"""`slmops demo-loop` on a tiny NER project: spans corrected through the service
become a new data version and retrain the model; the console lines for both task
types."""

import io
import json

import pandas as pd
import pytest
import yaml
from rich.console import Console

from slmops.loop_demo import run
from slmops.tasks.core.errors import DataError
from tests.conftest import GIT_IDENTITY
from tests.conftest import run as sh

# (text, its entities): the texts are not in the fixture's WNUT slices.
EXAMPLES = [
    ("just landed in Lisbon and the rain followed me", [[15, 21, "location"]]),
    ("Taylor Swift tickets sold out in four minutes", [[0, 12, "person"]]),
    ("good morning everyone , coffee first", []),
]


def _console() -> tuple[Console, io.StringIO]:
    buffer = io.StringIO()
    return Console(file=buffer, width=200, no_color=True), buffer


@pytest.mark.slow
def test_the_loop_closes_on_an_ner_project(ner_project):
    from slmops.flows.retrain import retrain
    from slmops.tasks.core.config import load_params
    from slmops.tasks.data.dataset import read_labeled

    params_path = ner_project / "params.yaml"
    raw = yaml.safe_load(params_path.read_text())
    raw["profiles"] = {"loop-demo": {"feedback": {"retrain_after_labels": 2}}}
    params_path.write_text(yaml.safe_dump(raw))
    examples = ner_project / "data" / "examples"
    examples.mkdir(parents=True)
    pd.DataFrame(
        [(text, json.dumps(spans)) for text, spans in EXAMPLES], columns=["text", "label"]
    ).to_csv(examples / "feedback_demo.csv", index=False)
    for cmd in (["git", "add", "-A"], ["git", "commit", "-qm", "loop demo set-up"]):
        assert sh(cmd, ner_project, env=GIT_IDENTITY).returncode == 0

    console, printed = _console()
    with pytest.raises(DataError, match="no champion yet"):
        run(params_path, console)
    assert retrain(params_path=str(params_path), trigger="test")["version"] == "1"

    run(params_path, console)

    text = printed.getvalue()
    assert "1. serving slmops-ner-test version 1" in text
    assert "2. feedback: 3 predictions" in text
    assert "3 added, 0 corrected, 0 quarantined" in text
    assert "4. retrain: " in text and "version 2 " in text
    assert "5. serving version" in text
    labeled = read_labeled(load_params(params_path))
    fed = labeled.loc[labeled["source"] == "feedback"].set_index("text")["label"]
    assert {t: json.loads(fed[t]) for t, _ in EXAMPLES} == dict(EXAMPLES)
