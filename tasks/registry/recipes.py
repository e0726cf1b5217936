"""Registered versions by recipe, and the DVC experiment each version was saved as.

Every registered version is tagged ``slmops.recipe`` (the fingerprint of its data,
params and code: :mod:`slmops.tasks.pipeline.recipe`); :func:`same_recipe` finds the
version a run with that recipe would train again, so the ``retrain`` flow can skip
it. After a retrain is saved as a DVC experiment the version is tagged
``dvc.experiment`` with the experiment's name (:func:`tag_experiment`).
"""

from __future__ import annotations

from dataclasses import dataclass

from slmops.tasks.core.config import Params
from slmops.tasks.registry.promotion import CHAMPION, TAG_DECISION
from slmops.tasks.registry.registration import COMPLETE, registration_state
from slmops.tasks.registry.store import Registry

TAG_RECIPE = "slmops.recipe"
TAG_EXPERIMENT = "dvc.experiment"


@dataclass(frozen=True)
class SameRecipe:
    """A registered version made from a given recipe."""

    version: str
    run_id: str
    champion: bool  # whether it is the champion now
    tags: dict[str, str]

    def describe(self) -> str:
        """``version 3 (champion)`` or ``version 2``."""
        return f"version {self.version}" + (" (champion)" if self.champion else "")


def same_recipe(params: Params, fingerprint: str) -> SameRecipe | None:
    """The registered version of the params' model with this recipe: the champion when
    it has it, else the newest. Only complete registrations the gate has judged count:
    not a failed or pending one (a deleted version is gone from the registry), nor one
    never gated (a registration killed before its gate, ``slmops register`` without
    ``--gate``): a retrain then trains the same model, finds that version registered and
    gates it. None when there is none."""
    registry = Registry.configured(params)
    name = params.registry.model_name
    if registry.aliases(name) is None:  # nothing registered yet
        return None
    matches = [
        mv
        for mv in registry.versions(name)
        if mv.tags.get(TAG_RECIPE) == fingerprint
        and registration_state(mv) == COMPLETE
        and mv.tags.get(TAG_DECISION, "pending") != "pending"
    ]
    if not matches:
        return None
    champion = registry.alias(name, CHAMPION)
    best = max(matches, key=lambda mv: (mv.version == champion, int(mv.version)))
    return SameRecipe(best.version, best.run_id, best.version == champion, dict(best.tags))


def tag_experiment(params: Params, version: str, experiment: str) -> None:
    """Record on ``version`` the DVC experiment its retrain was saved as."""
    Registry.configured(params).set_tags(
        params.registry.model_name, version, {TAG_EXPERIMENT: experiment}
    )
