"""Typed flow parameters: what the Prefect UI's run form shows and the server checks.

The flows' signatures use these types, so Prefect builds each deployment's parameter
schema from them (a choice list for :class:`Trigger`, a form with one described field
per rule for :data:`GateOverrides`) and the server validates a run's parameters against
it (``enforce_parameter_schema``): a wrong value is an error in the run form, not a
failed run. The profiles a params file defines are known only when the deployments are
registered, so :func:`with_profile_choices` patches them into the schema there.
"""

from __future__ import annotations

import copy
from enum import StrEnum
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, create_model

from slmops.tasks.core.config import GateConfig, Params, TokenGateConfig


class Trigger(StrEnum):
    """What started a run (recorded on the MLflow run, the ledger and the notifications)."""

    manual = "manual"  # by hand: the UI's Run button, `prefect deployment run`, the API
    schedule = "schedule"  # a deployment's schedule
    feedback = "feedback"  # the automation on the ingestion's retrain-due event
    drift = "drift"  # the automation on the monitor's drift alert
    cli = "cli"  # `slmops retrain`
    dvc = "dvc"  # a `dvc repro` / `dvc exp run` stage
    benchmark = "benchmark"  # benchmarks/
    test = "test"  # the test suite


# The rules' own descriptions where the config classes have none.
_EXTRA = {
    "alpha": "significance level of the paired test",
    "bootstrap_samples": "resamples of the paired bootstrap",
}
_SEQUENCE = set(GateConfig.model_fields) - set(TokenGateConfig.model_fields)
_TOKEN = set(TokenGateConfig.model_fields) - set(GateConfig.model_fields)


def _override_field(name: str) -> tuple[Any, Any]:
    """``gate.<name>`` as an optional field: its type, constraints and description from
    the config class that has it; None (the default) keeps the params file's value."""
    config = GateConfig if name in GateConfig.model_fields else TokenGateConfig
    info = config.model_fields[name]
    description = info.description or _EXTRA.get(name, name)
    if name in _SEQUENCE:
        description += " (sequence_classification)"
    elif name in _TOKEN:
        description += " (token_classification)"
    annotation = info.annotation
    for constraint in info.metadata:  # ge/le/gt/lt, kept on the non-null branch
        annotation = Annotated[annotation, constraint]
    return annotation | None, Field(default=None, description=description)


#: Overrides of the params file's ``gate.*`` rules for one run, every field optional:
#: the fields of :class:`GateConfig` (sequence classification) and of
#: :class:`TokenGateConfig` (token classification); a rule the project's task does not
#: have is refused when the run loads its params, naming the key.
GateOverrides: type[BaseModel] = create_model(
    "GateOverrides",
    __config__=ConfigDict(extra="forbid", title="Gate overrides"),
    __doc__="Overrides of the promotion gate's rules for this run (empty: the params file's).",
    **{name: _override_field(name) for name in [*GateConfig.model_fields, *sorted(_TOKEN)]},
)


def gate_overrides(value: BaseModel | dict[str, Any] | None) -> dict[str, Any]:
    """The ``gate`` section overrides of a run: the fields that were given (None: none)."""
    if value is None:
        return {}
    model = value if isinstance(value, GateOverrides) else GateOverrides.model_validate(value)
    return model.model_dump(mode="json", exclude_none=True)


def with_profile_choices(schema: dict[str, Any], params: Params) -> dict[str, Any]:
    """A copy of a flow's parameter schema whose ``profile`` is one of ``params.profiles``
    or null: a choice list in the UI's run form, checked by the server."""
    patched = copy.deepcopy(schema)
    field = patched.get("properties", {}).get("profile")
    if field is None:
        return patched
    field.pop("type", None)
    # Titled: the run form's toggle between the choice list and none shows the titles.
    choices = (
        [{"title": "profile", "type": "string", "enum": list(params.profiles)}]
        if params.profiles
        else []
    )
    field["anyOf"] = [*choices, {"type": "null"}]
    return patched
