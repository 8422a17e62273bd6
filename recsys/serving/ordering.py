"""Stage 4 of the four-stage recommender: business rules over the ranked candidates.

Pure numpy, no I/O, so the rules are unit-tested on their own and cost microseconds per request.

Rules (from the settings, frozen into the model version's ``pipeline.json`` at publish time):

- **boosts**: score multipliers by raw item id (promotions > 1, demotions < 1); the ids are parsed
  into the deployment's item id kind when the rules are made (:mod:`recsys.data.ids`), so
  ``RECSYS_BOOSTS='SKU-1=1.5'`` is refused with a clear error by an integer-id deployment;
- **exploration**: with a temperature T > 0 the order is *sampled* instead of sorted: item i comes
  before j with the odds of ``score_i ** (1/T)`` against ``score_j ** (1/T)`` (Gumbel top-k: add
  Gumbel noise to ``log(score) / T`` and sort). Low T stays close to the ranker's order, high T
  approaches a random order. T = 0 is exactly the ranker's order (deterministic);
- **at most N per category**: walking down the order, an item whose category already has N items
  is skipped. A hard rule: when the candidates cannot fill k slots under it, fewer come back.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Optional

import numpy as np

from recsys.data import ids
from recsys.errors import ConfigError

# log(0) guard for exploration: a zero score still gets a (tiny) chance.
_EPS = 1e-12


@dataclass(frozen=True)
class OrderingRules:
    """The ordering rules of one model version."""

    max_per_category: int = 0
    """0: no limit."""
    boosts: Mapping[ids.IdValue, float] = field(default_factory=dict)
    """raw item id (of the item id kind: int or str) -> score multiplier."""
    exploration_temperature: float = 0.0
    exploration_seed: Optional[int] = None
    """Set: the sampled order is reproducible per (seed, user); unset: fresh randomness per request."""

    def __post_init__(self) -> None:
        if self.max_per_category < 0:
            raise ConfigError(f"max_per_category must be >= 0, got {self.max_per_category}")
        if self.exploration_temperature < 0:
            raise ConfigError(f"exploration_temperature must be >= 0, got {self.exploration_temperature}")
        bad = {item: w for item, w in self.boosts.items() if not (w >= 0 and np.isfinite(w))}
        if bad:
            item, weight = next(iter(bad.items()))
            raise ConfigError(f"boost for item {item} must be a finite number >= 0, got {weight}")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], item_kind: str = ids.INT) -> "OrderingRules":
        """From the ``ordering`` section of ``pipeline.json`` (see :meth:`to_dict`); boost keys are
        parsed into ``item_kind`` (pipeline.json's ``ids.item_id``)."""
        boosts = data.get("boosts") or {}
        if isinstance(boosts, str):
            boosts = parse_boosts(boosts, item_kind)
        return cls(
            max_per_category=int(data.get("max_per_category", 0)),
            boosts={_boost_key(k, item_kind): float(v) for k, v in boosts.items()},
            exploration_temperature=float(data.get("exploration_temperature", 0.0)),
            exploration_seed=None if data.get("exploration_seed") is None else int(data["exploration_seed"]),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "max_per_category": self.max_per_category,
            "boosts": {ids.to_text(k): v for k, v in self.boosts.items()},
            "exploration_temperature": self.exploration_temperature,
            "exploration_seed": self.exploration_seed,
        }

    @property
    def deterministic(self) -> bool:
        return self.exploration_temperature == 0 or self.exploration_seed is not None


def parse_boosts(text: str, item_kind: str = ids.INT) -> dict[ids.IdValue, float]:
    """``"5003=1.5, 5010=0.5"`` -> ``{5003: 1.5, 5010: 0.5}`` (the ``RECSYS_BOOSTS`` format); item ids
    are parsed into ``item_kind`` (``"SKU-1=1.5"`` -> ``{"SKU-1": 1.5}`` for text ids). The last ``=``
    splits id and multiplier, so a text id may hold ``=`` (not ``,``, which separates entries)."""
    boosts: dict[ids.IdValue, float] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        item, sep, weight = part.rpartition("=")
        try:
            if not sep:
                raise ValueError
            multiplier = float(weight)
        except ValueError:
            raise ConfigError(
                f"boosts: {part!r} is not 'ITEM_ID=MULTIPLIER' (e.g. RECSYS_BOOSTS='5003=1.5,5010=0.5')"
            ) from None
        boosts[_boost_key(item.strip(), item_kind)] = multiplier
    return boosts


def _boost_key(item: Any, item_kind: str) -> ids.IdValue:
    try:
        return ids.parse(item, item_kind, "item_id")
    except ids.IdError as exc:
        raise ConfigError(f"boosts (RECSYS_BOOSTS): {exc}") from None


def apply_boosts(item_ids: np.ndarray, scores: np.ndarray, boosts: Mapping[ids.IdValue, float]) -> np.ndarray:
    """Scores multiplied by the boost of each item (1 for items without one)."""
    if not boosts:
        return scores
    weights = np.fromiter((boosts.get(i, 1.0) for i in ids.as_python(item_ids)), dtype=np.float32, count=len(item_ids))
    return scores * weights


def order(
    item_ids: np.ndarray,
    scores: np.ndarray,
    k: int,
    rules: OrderingRules,
    categories: Optional[np.ndarray] = None,
    user_id: ids.IdValue = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Positions (into the inputs) of the at most ``k`` items to return, in order, and their scores.

    ``item_ids`` (raw) and ``scores`` (ranker probabilities) are parallel arrays of filtered, unique
    candidates; ``categories`` (any hashable numpy dtype, e.g. encoded category ids) is needed only
    when ``rules.max_per_category`` is set. Ties keep the input order (a stable sort), so with
    exploration off the same inputs always give the same output. Returned scores are the boosted
    scores (without exploration noise).
    """
    if len(item_ids) != len(scores):
        raise ValueError(f"item_ids ({len(item_ids)}) and scores ({len(scores)}) differ in length")
    scores = apply_boosts(item_ids, np.asarray(scores, dtype=np.float32), rules.boosts)
    if rules.exploration_temperature > 0 and len(scores):
        if rules.exploration_seed is None:
            rng = np.random.default_rng()
        else:
            rng = np.random.default_rng([rules.exploration_seed, ids.as_seed(user_id)])
        keys = np.log(np.maximum(scores, _EPS)) / rules.exploration_temperature + rng.gumbel(size=len(scores))
    else:
        keys = scores
    ranked = np.argsort(-keys, kind="stable")
    if rules.max_per_category > 0:
        if categories is None:
            raise ValueError("max_per_category is set but no categories were given")
        ranked = ranked[_occurrence(np.asarray(categories)[ranked]) < rules.max_per_category]
    chosen = ranked[: max(int(k), 0)]
    return chosen, scores[chosen]


def _occurrence(values: np.ndarray) -> np.ndarray:
    """For each element, how many equal elements come before it (0 for the first of its value)."""
    n = len(values)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    by_value = np.argsort(values, kind="stable")  # equal values stay in order of appearance
    sorted_values = values[by_value]
    starts = np.flatnonzero(np.r_[True, sorted_values[1:] != sorted_values[:-1]])
    run_lengths = np.diff(np.r_[starts, n])
    rank_in_run = np.arange(n) - np.repeat(starts, run_lengths)
    occurrence = np.empty(n, dtype=np.int64)
    occurrence[by_value] = rank_in_run
    return occurrence
