"""The review loop with a person in it, in the browser: `slmops review push` sends a tiny
project's review queue to Label Studio (the model's answers as pre-annotations); an
annotator, invited to the organization, signs up through the invite link, opens the
project, labels the first task of the labeling stream with a label other than the
model's and submits; `slmops review pull` then makes a new DVC version of data/labeled
whose row names the project (its batch id) and the annotator (the saved export its
``source_file`` points to). Headless Chromium as in ``test_ui.py``; the server is
``infra/label-studio.sh``'s (the ``label_studio`` fixture)."""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
import yaml

from slmops.tasks.core.config import load_params
from slmops.tasks.data.dataset import LabeledPaths, read_labeled
from tests.infra.browser import headless_page
from tests.infra.conftest import LabelStudioServer
from tests.slmops.run_cli import cli

pytestmark = [pytest.mark.slow, pytest.mark.integration, pytest.mark.browser]

# Not test_label_studio.py's: the server is shared by the package.
TITLE = "tiny review (browser)"
ANNOTATOR = "ui-annotator@example.com"
MODEL_LABEL = "card_arrival"  # what the model said of every text: wrong each time
# The texts of the review queue and the label the annotator gives each.
RIGHT = {
    "the exchange rate you charged me was wrong": "exchange_rate",
    "my top up was declined again this morning": "top_up_failed",
}


def choice(page, label: str):
    """The check box of a label of the Choices control; its name is the label with the
    hotkey hint Label Studio appends (``exchange_rate[3]``)."""
    return page.get_by_role("checkbox", name=re.compile(rf"^{re.escape(label)}(\[\d+\])?$"))


@pytest.fixture
def page(tmp_path) -> Iterator:
    """A page of a fresh headless Chromium profile; a screenshot is left in tmp_path."""
    with headless_page(tmp_path) as page:
        yield page


@pytest.fixture
def project(tmp_path, monkeypatch, git_identity, label_studio) -> Path:
    """A tiny project pointed at the server, with predictions nobody reviewed."""
    return label_studio.review_project(
        tmp_path / "project", TITLE, [(text, MODEL_LABEL) for text in RIGHT], monkeypatch
    )


def test_an_annotator_labels_a_task_in_the_browser_and_pull_versions_it(
    label_studio: LabelStudioServer, project: Path, page, monkeypatch, capsys
):
    from playwright.sync_api import expect

    params_file = str(project / "params.yaml")
    params = load_params(params_file)
    code, out = cli(monkeypatch, capsys, "review", "push", "--params", params_file)
    assert code == 0, out + label_studio.log_tail()
    assert f"{len(RIGHT)} prediction(s)" in out, out

    api = httpx.Client(
        base_url=label_studio.url,
        headers={"Authorization": f"Token {label_studio.token}"},
        timeout=30,
    )
    with api:
        listed = api.get("/api/projects/").json()["results"]
        (pid,) = [p["id"] for p in listed if p["title"] == TITLE]
        invite = api.get("/api/invite").json()["invite_url"]  # /user/signup/?token=...

    # The annotator signs up through the invite link and lands on the project's tasks.
    t0 = time.monotonic()
    data_page = f"/projects/{pid}/data"
    page.goto(f"{label_studio.url}{invite}&next={data_page}")
    form = page.locator("#signup-form")  # its labels are not tied to the inputs
    form.locator("input[name=email]").fill(ANNOTATOR)
    form.locator("input[name=password]").fill("annotate-in-the-browser")
    page.get_by_role("button", name="Create Account").click()
    page.wait_for_url(lambda url: urlsplit(url).path.rstrip("/") == data_page)

    # The labeling stream: the first task, the model's answer already ticked.
    page.get_by_role("button", name="Label All Tasks").click()
    # Waiting for the pre-annotation also waits for the editor to settle: a click
    # before it is there is undone when it arrives.
    expect(choice(page, MODEL_LABEL)).to_be_checked()
    shown = [text for text in RIGHT if page.get_by_text(text, exact=True).is_visible()]
    assert len(shown) == 1, f"the labeling stream shows none or several of {list(RIGHT)}"
    text, label = shown[0], RIGHT[shown[0]]
    choice(page, label).click()  # single choice: replaces the model's
    expect(choice(page, label)).to_be_checked()
    expect(choice(page, MODEL_LABEL)).not_to_be_checked()
    page.get_by_role("button", name="Submit current annotation").click()
    # The toast; its text is also repeated in an aria-live status for screen readers.
    expect(page.get_by_text("Annotation saved successfully").first).to_be_visible()
    ui_seconds = time.monotonic() - t0

    dvc_file = LabeledPaths(params).dir.with_suffix(".dvc")

    def md5() -> str:
        return yaml.safe_load(dvc_file.read_text())["outs"][0]["md5"]

    before = md5()
    code, out = cli(monkeypatch, capsys, "review", "pull", "--params", params_file)
    assert code == 0, out + label_studio.log_tail()
    assert "1 added" in out and "new dataset version" in out, out
    assert md5() != before, "the pull made no new DVC version of data/labeled"
    host = urlsplit(label_studio.url).netloc
    subject = subprocess.run(
        ["git", "log", "-1", "--format=%s", "--", dvc_file.name],
        cwd=dvc_file.parent,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert subject.startswith(f"labels: Label Studio {host}/projects/{pid}: 1 added"), subject

    # The labeled row: the annotator's label (not the model's), the project as its batch.
    labeled = read_labeled(params)
    assert set(labeled["text"]) & set(RIGHT) == {text}  # the other task was not labeled
    row = labeled.loc[labeled["text"] == text].iloc[0]
    assert row["label"] == label
    assert row["source"] == "import"
    assert row["batch_id"].startswith(f"label-studio:{host}/projects/{pid}@"), row["batch_id"]
    assert row["annotator_count"] == "1"
    # ... and its source file, the saved export, names the annotator of that task.
    saved = json.loads((project / row["source_file"]).read_text())
    (task,) = [t for t in saved if str(t["id"]) == row["source_id"]]
    assert task["data"]["text"] == text
    (annotation,) = task["annotations"]
    assert annotation["completed_by"]["email"] == ANNOTATOR
    assert [r["value"]["choices"] for r in annotation["result"]] == [[label]]
    print(f"\n[label studio ui: sign up, label and submit in {ui_seconds:.1f} s]")
