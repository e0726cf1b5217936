"""What a retrain may record in dvc.lock: only what the stages would have made."""

from slmops.tasks.core.config import load_params, with_overrides
from slmops.tasks.pipeline.dvc_record import experiment_name, params_differ
from tests.conftest import REPO

STAGE = {"params": ["evaluate", "train.device", "train.precision"]}


def test_a_stage_is_recorded_only_with_the_params_file_values_it_declares():
    file = load_params(REPO / "params.yaml")
    assert params_differ(STAGE, file, file) is None
    # A profile or override that touches nothing the stage reads: the same stage.
    other = with_overrides(file, {"train": {"epochs": 1}, "feedback": {"retrain_after_labels": 5}})
    assert params_differ(STAGE, other, file) is None
    # One it reads: named, with both values.
    fp32 = with_overrides(file, {"train": {"precision": "fp32"}})
    assert params_differ(STAGE, fp32, file) == (
        "train.precision is 'fp32' in this run, 'auto' in params.yaml (a profile or override)"
    )
    # A whole section: the key inside it that differs.
    batch = with_overrides(file, {"evaluate": {"batch_size": 7}})
    assert params_differ(STAGE, batch, file).startswith("evaluate.batch_size is 7 in this run")
    # Params of another file: not what the run read.
    assert (
        params_differ({"params": [{"other.yaml": ["x"]}]}, file, file) == "params from other.yaml"
    )


def test_the_experiment_is_named_for_the_version():
    params = load_params(REPO / "params.yaml")
    assert experiment_name(params, "3") == "slmops-intent-v3"
    odd = with_overrides(params, {"registry": {"model_name": "my model/ä"}})
    assert experiment_name(odd, "3") == "my-model-v3"
