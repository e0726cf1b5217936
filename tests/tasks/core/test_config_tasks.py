"""`task:` selects the shape of the task-dependent sections: token-only keys (word
bounds, span checks, label_all_subwords, the entity-level gate) are accepted and
validated in a token_classification project only, and refused by name elsewhere."""

from __future__ import annotations

from pathlib import Path

import pytest

from slmops.tasks.core.config import (
    ConfigError,
    GateConfig,
    Params,
    Severity,
    SignificanceTest,
    TokenGateConfig,
    TokenParams,
    load_params,
    parse_params,
    with_overrides,
)
from tests.conftest import REPO

TOKEN = {"task": "token_classification"}


def parse(raw: dict) -> Params:
    return parse_params(raw, Path("params.yaml"), root=Path("."))


def error_of(raw: dict) -> str:
    with pytest.raises(ConfigError) as caught:
        parse(raw)
    return str(caught.value)


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        ({"validation": {"token_min_words": 2}}, "validation.token_min_words"),
        ({"validation": {"token_max_words": 50}}, "validation.token_max_words"),
        ({"validation": {"severity": {"spans_valid": "warn"}}}, "validation.severity.spans_valid"),
        ({"validation": {"severity": {"token_length": "off"}}}, "validation.severity.token_length"),
        ({"train": {"label_all_subwords": True}}, "train.label_all_subwords"),
        ({"gate": {"min_entity_f1": 0.3}}, "gate.min_entity_f1"),
    ],
)
def test_a_token_only_key_in_a_sequence_project_is_refused_by_name(raw: dict, key: str):
    message = error_of(raw)
    assert (
        f"{key}: only for task token_classification "
        "(this project's task is sequence_classification)" in message
    ), message
    # ...and the same key is a setting of a token project.
    assert isinstance(parse({**TOKEN, **raw}), TokenParams)


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        ({"gate": {"min_macro_f1": 0.3}}, "gate.min_macro_f1"),
        ({"gate": {"max_class_recall_drop": 0.1}}, "gate.max_class_recall_drop"),
        ({"gate": {"bootstrap_samples": 500}}, "gate.bootstrap_samples"),
    ],
)
def test_a_sequence_only_gate_key_in_a_token_project_is_refused_by_name(raw: dict, key: str):
    message = error_of({**TOKEN, **raw})
    assert (
        f"{key}: only for task sequence_classification "
        "(this project's task is token_classification)" in message
    ), message


@pytest.mark.parametrize("task", ["sequence_classification", "token_classification"])
def test_unknown_keys_stay_unknown_in_every_task(task: str):
    message = error_of({"task": task, "train": {"label_all_subword": True}})
    assert "train.label_all_subword: unknown key" in message
    message = error_of({"task": task, "validation": {"severity": {"span_valid": "off"}}})
    assert "validation.severity.span_valid: unknown key" in message


def test_a_token_project_reads_its_keys():
    params = parse(
        {
            **TOKEN,
            "validation": {
                "token_min_words": 2,
                "token_max_words": 40,
                "severity": {"spans_valid": "warn", "token_length": False},  # YAML's bare off
            },
            "train": {"label_all_subwords": True, "epochs": 2},
            "gate": {"min_entity_f1": 0.4, "min_exact_match": 0.3, "significance": "none"},
        }
    )
    assert isinstance(params, TokenParams) and params.task == "token_classification"
    assert (params.validation.token_min_words, params.validation.token_max_words) == (2, 40)
    assert params.validation.severity.of("spans_valid") is Severity.warn
    assert params.validation.severity.of("token_length") is Severity.off
    assert params.train.label_all_subwords is True and params.train.epochs == 2
    assert isinstance(params.gate, TokenGateConfig)
    assert (params.gate.min_entity_f1, params.gate.min_exact_match) == (0.4, 0.3)


def test_token_defaults_are_the_checks_and_targets_as_before():
    params = parse(TOKEN)
    assert (params.validation.token_min_words, params.validation.token_max_words) == (1, 200)
    assert params.validation.severity.of("spans_valid") is Severity.error
    assert params.validation.severity.of("token_length") is Severity.error
    assert params.train.label_all_subwords is False
    # The shared keys keep their defaults whatever the task.
    shared = {"task", "validation", "train", "gate", "root"}
    assert params.model_dump(exclude=shared) == Params().model_dump(exclude=shared)
    assert params.train.model_dump(exclude={"label_all_subwords"}) == Params().train.model_dump()
    assert isinstance(Params().gate, GateConfig)


def test_word_bounds_are_validated():
    message = error_of({**TOKEN, "validation": {"token_min_words": 9, "token_max_words": 3}})
    assert "token_min_words (9) is greater than token_max_words (3)" in message
    assert "validation.token_max_words" in error_of({**TOKEN, "validation": {"token_max_words": 0}})


def test_a_token_gate_refuses_the_bootstrap_with_the_reason():
    message = error_of({**TOKEN, "gate": {"significance": "bootstrap"}})
    assert "gate.significance" in message and "sequence_classification only" in message
    assert parse({"gate": {"significance": "bootstrap"}}).gate.significance == (
        SignificanceTest.bootstrap
    )


def test_an_unknown_task_lists_the_known_ones():
    message = error_of({"task": "ner"})
    assert "task: expected sequence_classification | token_classification" in message
    assert "'ner'" in message


def test_the_class_must_match_the_task():
    with pytest.raises(ValueError, match="task token_classification has the sections of"):
        Params(task="token_classification")
    with pytest.raises(ValueError, match="task sequence_classification has the sections of"):
        TokenParams(task="sequence_classification")
    assert TokenParams().task == "token_classification"


def test_overrides_and_profiles_keep_the_task_sections():
    params = parse({**TOKEN, "profiles": {"every-piece": {"train": {"label_all_subwords": True}}}})
    changed = with_overrides(params, params.profiles["every-piece"], "profile")
    assert isinstance(changed, TokenParams) and changed.train.label_all_subwords is True
    with pytest.raises(ConfigError, match=r"train\.label_all_subwords: only for task"):
        with_overrides(Params(), {"train": {"label_all_subwords": True}})


def test_the_shipped_ner_project_is_a_token_project():
    params = load_params(REPO / "ner" / "params.yaml")
    assert isinstance(params, TokenParams)
    assert isinstance(params.gate, TokenGateConfig)
    assert params.gate.min_entity_f1 == 0.25 and params.gate.significance == "mcnemar"
    # It spells out the token-only keys at their defaults.
    defaults = parse(TOKEN)
    assert params.train.label_all_subwords is defaults.train.label_all_subwords
    assert params.validation.severity.spans_valid is defaults.validation.severity.spans_valid
    for name in params.profiles:
        assert isinstance(load_params(REPO / "ner" / "params.yaml", profile=name), TokenParams)
