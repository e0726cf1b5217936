"""The UIs, as a person uses them: Run → Quick run on the ``retrain/weekly`` deployment
page of the Prefect UI, then the ``champion`` alias on the model's page of the MLflow
UI; Run → Custom run with a profile chosen from the form's list. Headless Debian
Chromium (``/usr/bin/chromium``, installed by ``infra/setup-browser.sh``) driven by
Playwright; no browser download."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from tests.infra.browser import headless_page
from tests.infra.conftest import Stack, deployment_runs, wait_for_final_state

pytestmark = [pytest.mark.slow, pytest.mark.browser]


@pytest.fixture
def page(tmp_path) -> Iterator:
    """A page of a fresh headless Chromium profile; a screenshot is left in tmp_path."""
    with headless_page(tmp_path) as page:
        yield page


def open_run_menu(page, stack: Stack) -> set:
    """The ``retrain/weekly`` deployment's page with its Run menu open; the ids of the
    deployment's runs so far (to tell the run the menu starts from them)."""
    from playwright.sync_api import expect
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        deployment = client.read_deployment_by_name("retrain/weekly")
    before = {r.id for r in deployment_runs("retrain/weekly")}
    page.goto(f"{stack.prefect_ui}/deployments/deployment/{deployment.id}")
    expect(page.get_by_text("weekly").first).to_be_visible()
    page.get_by_role("button", name="Run", exact=True).click()
    return before


def test_quick_run_in_prefect_ui_then_champion_in_mlflow_ui(stack: Stack, page):
    from mlflow import MlflowClient
    from playwright.sync_api import expect

    # Prefect UI: the deployment page, Run → Quick run (the deployment's parameters:
    # the tiny project's params.yaml).
    before = open_run_menu(page, stack)
    page.get_by_text("Quick run", exact=True).click()

    deadline = time.monotonic() + 30
    while not (new := [r for r in deployment_runs("retrain/weekly") if r.id not in before]):
        assert time.monotonic() < deadline, "pressing Quick run created no flow run"
        time.sleep(1)
    assert len(new) == 1
    run = wait_for_final_state(stack, new[0].id)
    assert run.parameters["params_path"] == str(stack.project / "params.yaml")
    # Started by hand: recorded as such, not as the schedule.
    assert run.parameters["trigger"] == "manual"

    # MLflow UI: the registered model's page shows the champion alias on its version.
    mlflow = MlflowClient(tracking_uri=stack.mlflow_uri, registry_uri=stack.mlflow_uri)
    name = "slmops-intent"
    champion = mlflow.get_model_version_by_alias(name, "champion").version
    page.goto(f"{stack.mlflow_uri}/#/models/{name}")
    # MLflow's page never reaches network-idle: wait for the text.
    expect(page.get_by_text("champion").first).to_be_visible()
    row = page.get_by_role("row").filter(has_text=f"Version {champion}")
    expect(row).to_contain_text("champion")


def test_custom_run_form_offers_the_params_files_profiles_and_the_run_completes(stack: Stack, page):
    """Run → Custom run on ``retrain/weekly``: ``profile`` is a choice list of the params
    file's profiles (``make deploy`` put them in the deployment's parameter schema); the
    run started with one of them completes with it."""
    from playwright.sync_api import expect

    from slmops.tasks.core.config import load_params

    profiles = list(load_params(stack.project / "params.yaml").profiles)
    assert profiles == ["quick", "steady"]
    before = open_run_menu(page, stack)
    page.get_by_text("Custom run", exact=True).click()
    field = page.locator(".schema-form-property").filter(
        has=page.get_by_text("profile (Optional)", exact=True)
    )
    expect(field).to_have_count(1)
    # None (the file as it is) by default; the other choice is the list of profiles.
    field.get_by_role("button", name="profile", exact=True).click()
    select = field.locator(".p-select-button__control")
    select.focus()
    select.press("ArrowDown")  # opens the list (a click in headless Chromium does not)
    options = page.get_by_role("listbox").get_by_role("option")
    expect(options).to_have_text(profiles)
    options.filter(has_text="quick").click()
    expect(field.locator(".p-select-button__value")).to_have_text("quick")
    page.get_by_role("button", name="Submit", exact=True).click()

    deadline = time.monotonic() + 30
    while not (new := [r for r in deployment_runs("retrain/weekly") if r.id not in before]):
        assert time.monotonic() < deadline, "submitting the form created no flow run"
        time.sleep(1)
    (run,) = new
    assert run.parameters["profile"] == "quick"
    assert run.parameters["trigger"] == "manual"
    wait_for_final_state(stack, run.id)
