"""The challenger's MLflow run as a user of MLflow sees it: opened before training and
named for what it is, epochs logged as they end, test metrics against the logged
model and the test dataset, the gate's decision as tags on the version and the run,
a model card as the version's description, and no path of this machine anywhere.

Two tiny models trained and registered once for the module (a few seconds each)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from slmops.tasks.core.config import load_params, with_overrides
from tests.conftest import GIT_IDENTITY, REPO, training_project

pytestmark = pytest.mark.slow


def train_evaluate_register(params, seen: list):
    from slmops.tasks.pipeline.challenger import (
        evaluate_challenger,
        register_challenger,
        train_challenger,
    )
    from slmops.tasks.registry.store import Registry

    registry = Registry.of(params)

    def probe(row: dict) -> None:
        # While training: the run is RUNNING and already holds this epoch's metrics.
        experiment = registry.client.get_experiment_by_name(params.registry.experiment)
        (run,) = registry.client.search_runs(
            [experiment.experiment_id], "attributes.status = 'RUNNING'"
        )
        history = registry.client.get_metric_history(run.info.run_id, "val_macro_f1")
        seen.append((run.info.run_id, row["epoch"], [m.step for m in history], time.time()))

    started = time.time()
    trained = train_challenger(params, progress=False, on_epoch=probe, trigger="test")
    evaluate_challenger(params)
    registering = time.time()
    registered = register_challenger(params, trigger="test")
    return started, trained, registering, registered


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """Two versions of a tiny model, version 1 gated (promoted) before version 2 was
    registered, version 2 gated too."""
    from slmops.tasks.data.split import data_versions
    from slmops.tasks.pipeline.prepare import write_splits
    from slmops.tasks.registry.promotion import apply, gate

    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        for key, value in GIT_IDENTITY.items():
            mp.setenv(key, value)
        root = training_project(
            tmp_path_factory.mktemp("run"), train={"epochs": 2}, export={"enabled": False}
        )
        mp.chdir(root)
        params = load_params(root / "params.yaml")
        write_splits(params)
        seen: list = []
        first = train_evaluate_register(params, seen)
        apply(params, first[3].version)
        params2 = with_overrides(params, {"train": {"seed": 7}})
        second = train_evaluate_register(params2, [])
        verdict = gate(params2, second[3].version)
        yield {
            "root": root,
            "params": params,
            "data": data_versions(params),
            "first": first,
            "second": second,
            "seen": seen,
            "verdict": verdict,
        }


def model_id(c, run_id: str) -> str:
    """The id of the model a run logged (the version's source)."""
    (output,) = c.get_run(run_id).outputs.model_outputs
    return output.model_id


def client(p):
    from slmops.tasks.registry.store import Registry

    return Registry.of(p["params"]).client


def test_test_metrics_are_logged_against_the_logged_model_and_the_test_dataset(project):
    c = client(project)
    registered = project["first"][3]
    mv = c.get_model_version("slmops-intent", registered.version)
    assert mv.source == f"models:/{model_id(c, registered.run_id)}"
    model = c.get_logged_model(model_id(c, registered.run_id))
    metrics = {m.key: m for m in model.metrics}
    for key in ("test_accuracy", "test_macro_f1"):
        assert metrics[key].dataset_name == "test"
        assert metrics[key].dataset_digest == project["data"]["test"][:36]
        assert metrics[key].run_id == registered.run_id
        assert metrics[key].value == float(mv.tags[f"metrics.{key.removeprefix('test_')}"])
    # The test dataset is an input of the run, under its DVC hash.
    run = c.get_run(registered.run_id)
    inputs = {i.dataset.name: i.dataset.digest for i in run.inputs.dataset_inputs}
    assert inputs["test"] == project["data"]["test"][:36]
    assert "test_macro_f1" in run.data.metrics  # the run comparison reads them there
    # The logged model carries the settings it was trained with, for the Models tab.
    assert model.params["train.epochs"] == "2"


def test_the_run_is_named_for_its_model_data_and_trigger(project):
    run = client(project).get_run(project["first"][3].run_id)
    short = project["data"]["labeled"].split(":")[-1][:8]
    assert run.info.run_name == f"tiny-base-{short}-test"


def test_epochs_are_logged_into_the_run_while_it_trains(project):
    run_id = project["first"][3].run_id
    # Each epoch was in the run (the training run, RUNNING) when the epoch ended...
    assert [(r, e, steps) for r, e, steps, _ in project["seen"]] == [
        (run_id, 1, [1]),
        (run_id, 2, [1, 2]),
    ]
    # ...and the registration resumed that run rather than opening another one.
    history = client(project).get_metric_history(run_id, "train_loss")
    assert [m.step for m in history] == [1, 2]


def test_the_run_spans_training_and_registration(project):
    started, trained, registering, registered = project["first"]
    info = client(project).get_run(registered.run_id).info
    first_epoch_end = project["seen"][0][3]
    assert started * 1000 - 1000 <= info.start_time <= first_epoch_end * 1000
    assert info.end_time >= registering * 1000
    assert info.status == "FINISHED"
    assert (info.end_time - info.start_time) / 1000 >= trained.seconds


def test_the_gate_decision_is_a_tag_of_the_version_and_of_its_run(project):
    c = client(project)
    verdict = project["verdict"]
    version = project["second"][3].version
    tags = c.get_model_version("slmops-intent", version).tags
    run_tags = c.get_run(project["second"][3].run_id).data.tags
    expected = "promoted" if verdict.decision.promote else "refused"
    for t in (tags, run_tags):
        assert t["gate.decision"] == expected
        assert t["gate.reasons"] == ("; ".join(verdict.decision.reasons) or "none")
    assert tags["gate.summary"] == verdict.decision.summary
    # A filter a user types in the UI's search box finds it.
    found = c.search_model_versions(f"name='slmops-intent' and tags.`gate.decision` = '{expected}'")
    assert version in {str(m.version) for m in found}


def test_each_version_describes_itself_in_a_model_card(project):
    c = client(project)
    data = project["data"]
    first = c.get_model_version("slmops-intent", project["first"][3].version)
    card = first.description
    assert f"### slmops-intent version {first.version}" in card
    assert f"| accuracy | {first.tags['metrics.accuracy']} |" in card
    assert f"| macro-F1 | {first.tags['metrics.macro_f1']} |" in card
    assert data["labeled"] in card and data["test"] in card
    assert f"git commit `{first.tags['git.commit']}`" in card
    weakest = first.tags["eval.weakest_classes"]
    assert weakest.count("F1 ") == 3 and weakest in card
    # Rewritten once the gate decided (version 1 was promoted: no champion before it).
    assert "**Gate**: **promoted**:" in card
    assert "not exported yet" in card  # export.enabled is false in this project


def test_no_logged_value_holds_a_path_of_this_machine(project):
    c = client(project)
    here = {project["root"], Path(project["root"]).resolve(), REPO, Path.home()}
    prefixes = (*(str(p) for p in here), "/tmp", "/var/", os.path.realpath("/tmp"))
    seen: dict[str, str] = {}
    for step in ("first", "second"):
        registered = project[step][3]
        run = c.get_run(registered.run_id)
        mv = c.get_model_version("slmops-intent", registered.version)
        model = c.get_logged_model(model_id(c, registered.run_id))
        for kind, values in (
            ("param", run.data.params),
            ("run tag", run.data.tags),
            ("version tag", mv.tags),
            ("model param", model.params),
        ):
            for key, value in values.items():
                if key == "mlflow.log-model.history":
                    continue  # MLflow's own record of where it stored the files
                seen[f"{kind} {key}"] = str(value)
    assert "param train.base_model_path" in seen  # checked, not absent
    assert seen["param train.base_model_digest"].startswith("sha256:")
    leaks = {k: v for k, v in seen.items() if v.startswith(prefixes)}
    assert not leaks, f"logged values holding a path of this machine: {leaks}"


def test_a_model_trained_again_registers_as_the_same_version_and_its_run_says_so(project):
    from slmops.tasks.pipeline.challenger import register_challenger, train_challenger

    params = project["params"]
    trained = train_challenger(params, progress=False, trigger="again")
    from slmops.tasks.pipeline.challenger import evaluate_challenger

    evaluate_challenger(params)
    registered = register_challenger(params)
    assert registered.reused and registered.version == project["first"][3].version
    c = client(project)
    (run,) = c.search_runs(
        [c.get_experiment_by_name(params.registry.experiment).experiment_id],
        "tags.trigger = 'again'",
    )
    assert trained.model_dir.exists()
    assert run.data.tags["slmops.duplicate_of"] == f"slmops-intent version {registered.version}"
    assert run.info.status == "FINISHED"
