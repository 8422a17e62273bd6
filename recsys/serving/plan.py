"""What a publish serves: the champion, or the popularity list while no model beats it.

A plan is made once (``recsys_publish``'s first task, :func:`recsys.jobs.publish_plan`), travels as a
dict, and is published exactly: :meth:`PublishPlan.check_still_current` refuses it when the
``champion`` aliases moved since (Redis was prepared for the plan's feature version).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Optional

from recsys.errors import RecsysError
from recsys.settings import Settings
from recsys.tracking.champions import Champion, ChampionError, NoChampionError, resolve_champion

log = logging.getLogger(__name__)

MODELS, POPULARITY = "models", "popularity"
POPULARITY_REASON = "no model beats the popularity baseline yet: serving the popularity list"


class PublishError(RecsysError):
    """Publishing or rolling back failed; the message says what failed and what serves now."""


@dataclass(frozen=True)
class PublishPlan:
    """What a publish serves: the champion, or (``champion`` None) the popularity list of a feature version."""

    champion: Optional[Champion]
    feature_version: str
    data_version: str

    @property
    def mode(self) -> str:
        return MODELS if self.champion else POPULARITY

    @property
    def prior_slot(self) -> bool:
        """The champion's item vectors end with the popularity prior (its training chose a prior
        weight: :func:`recsys.serving.index.prior_slot_of` of the retrieval run's metrics); recorded
        in the published index's ``index.json``."""
        from recsys.serving.index import prior_slot_of

        if not self.champion or "retrieval" not in self.champion.models:
            return False
        return prior_slot_of(self.champion.metrics.get(self.champion.models["retrieval"].name, {}))

    @property
    def key(self) -> dict[str, str]:
        """``{model name: version}``: what identifies a published set (the no-op check)."""
        return self.champion.versions if self.champion else {}

    @classmethod
    def resolve(cls, s: Settings) -> "PublishPlan":
        try:
            champion = resolve_champion(s)
        except NoChampionError as exc:
            log.info("%s", exc)
            return cls(None, *popularity_plan(s))
        except ChampionError as exc:
            raise PublishError(str(exc)) from exc
        return cls(champion, champion.feature_version, champion.data_version)

    def check_still_current(self, s: Settings) -> None:
        """Refuse (nothing changed) when the champion aliases moved since this plan was made."""
        now = PublishPlan.resolve(s)
        if now.key != self.key:
            raise PublishError(f"the champion moved since this publish was planned (planned {self.key or POPULARITY}, "
                               f"now {now.key or POPULARITY}): nothing was published; run the publish again")

    def to_dict(self) -> dict[str, Any]:
        return {"champion": self.champion.to_dict() if self.champion else None, "mode": self.mode,
                "feature_version": self.feature_version, "data_version": self.data_version}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "PublishPlan":
        champion = Champion.from_dict(data["champion"]) if data.get("champion") else None
        return cls(champion, data["feature_version"], data.get("data_version", ""))


def popularity_plan(s: Settings) -> tuple[str, str]:
    """(feature version, data version) the popularity list is served from: the newest feature version."""
    from recsys.data.versioning import latest_version

    newest = latest_version(s.features_root)
    if newest is None:
        raise PublishError(f"nothing to serve: no champion in MLflow and no feature version under {s.features_root}")
    return newest.version, str(newest.manifest.get("data_version", ""))

