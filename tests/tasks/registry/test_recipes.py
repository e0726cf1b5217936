"""Registered versions by recipe: which one a retrain would train again, on a real
(embedded) store with crafted versions."""

import json

from slmops.tasks.registry.promotion import CHAMPION, TAG_DECISION, apply, rollback
from slmops.tasks.registry.recipes import TAG_EXPERIMENT, TAG_RECIPE, same_recipe, tag_experiment
from slmops.tasks.registry.registration import COMPLETE, FAILED, TAG_REGISTRATION
from slmops.tasks.registry.store import Registry
from tests.tasks.registry.test_registration import other_host, params, version  # noqa: F401


def crafted(p, tmp_path, digest: str, recipe: str, state: str, decision: str = "refused") -> str:
    """A version with ``recipe``, registration ``state`` and gate ``decision``."""
    v, _ = version(p, tmp_path, owner=other_host(), digest=digest)
    tags = {TAG_RECIPE: recipe, TAG_REGISTRATION: state, TAG_DECISION: decision}
    Registry.of(p).set_tags(p.registry.model_name, v, tags)
    return v


def test_nothing_registered_has_no_recipe(params):  # noqa: F811
    assert same_recipe(params, "sha256:r") is None


def test_the_champion_wins_then_the_newest_and_a_failed_or_ungated_version_never_counts(
    params,  # noqa: F811
    tmp_path,
):
    v1 = crafted(params, tmp_path, "sha256:a1", "sha256:r", COMPLETE)
    v2 = crafted(params, tmp_path, "sha256:a2", "sha256:r", COMPLETE)
    crafted(params, tmp_path, "sha256:a3", "sha256:r", FAILED)  # the newest: failed
    crafted(params, tmp_path, "sha256:a4", "sha256:other", COMPLETE)
    # Never judged by the gate: a retrain trains it again (and gates it).
    crafted(params, tmp_path, "sha256:a5", "sha256:r", COMPLETE, decision="pending")
    found = same_recipe(params, "sha256:r")
    assert (found.version, found.champion) == (v2, False)  # the newest complete one
    assert found.describe() == f"version {v2}"
    Registry.of(params).set_alias(params.registry.model_name, CHAMPION, v1)
    found = same_recipe(params, "sha256:r")
    assert (found.version, found.champion) == (v1, True)
    assert found.describe() == f"version {v1} (champion)"
    assert same_recipe(params, "sha256:unknown") is None


def test_a_version_is_tagged_with_its_dvc_experiment(params, tmp_path):  # noqa: F811
    v = crafted(params, tmp_path, "sha256:a1", "sha256:r", COMPLETE)
    tag_experiment(params, v, "slmops-intent-v1")
    mv = Registry.of(params).version(params.registry.model_name, v)
    assert mv.tags[TAG_EXPERIMENT] == "slmops-intent-v1"


def test_the_champions_metrics_file_follows_the_champion_alias(params, tmp_path):  # noqa: F811
    """`dvc metrics show` reads reports/champion/metrics.json: rewritten on promotion and
    on rollback."""
    path = params.path(params.registry.champion_metrics)
    v1, _ = version(params, tmp_path, owner=other_host(), digest="sha256:a1", wrong=60)
    v2, _ = version(params, tmp_path, owner=other_host(), digest="sha256:a2", wrong=30)
    assert apply(params, v1)[1]
    first = json.loads(path.read_text())
    assert first["version"] == v1 and first["accuracy"] == 0.8  # 60 of 300 wrong
    assert apply(params, v2)[1]
    assert json.loads(path.read_text())["version"] == v2
    rollback(params, reason="test")
    assert json.loads(path.read_text()) == first
