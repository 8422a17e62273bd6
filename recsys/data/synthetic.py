"""A synthetic shop with real structure, so that models have something to learn and drift to detect.

Merlin's own synthetic generator draws every column independently (uniform noise: models reach
AUC 0.5 on it). Here the behaviour follows from the features:

* **users** have side features (``age_bucket``, ``gender``, ``region``, ``device``) and hidden
  tastes that depend on them: a preference over item categories (demographic effects plus a
  personal part), a style cluster, and a preferred price band;
* **items** have ``category``, ``brand``, ``price_band`` and ``item_age_days`` (float), and a
  Zipf-like popularity (newer items and better brands are more popular);
* an **engaged interaction** (``label`` 1, ``event_type`` click or purchase) picks a user (activity is
  skewed), then a category from the user's taste, then an item within that category with
  probability ∝ popularity × exp(affinity(user's style cluster and price band, item)). Purchases
  are likelier when the item's price band matches the user's;
* an **impression** (``label`` 0, ``event_type`` impression) is an item shown beside an engaged one
  (same user, a few seconds apart) drawn from popularity alone, and ignored;
* timestamps spread over ``days`` days with a daily cycle (quiet nights, busy evenings).

Sampling is vectorized: category and item draws are each one ``searchsorted`` into a stacked CDF,
so millions of interactions take seconds. The same seed gives identical output.

``string_ids`` writes text ids instead of integers (``u-6a7f3c``-style user ids, ``SKU-00042Q``-style
item ids, one per integer id, so the data is otherwise the same): what a shop whose ids are SKUs
and UUIDs brings (recsys.data.ids). The default stays integers.

``drift`` (0..1) produces a shifted batch of the same catalogue (same item ids and item features,
same user ids): the user population gets older and moves to the web, tastes rotate toward other
categories, and preferred price bands move down. A drift detector comparing it with a ``drift=0``
batch sees the shift in user features, item categories and price bands of the interactions.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from recsys.errors import InputError

if TYPE_CHECKING:  # pragma: no cover - typing only
    import numpy as np
    import pandas as pd

log = logging.getLogger(__name__)

AGE_BUCKETS = ["18-24", "25-34", "35-44", "45-54", "55+"]
GENDERS = ["f", "m", "x"]
REGIONS = ["north", "south", "east", "west", "central", "islands"]
DEVICES = ["ios", "android", "web"]
PRICE_BANDS = ["budget", "low", "mid", "high", "premium"]
EVENT_TYPES = ["impression", "click", "purchase"]

_AGE_MIX = [0.22, 0.30, 0.22, 0.15, 0.11]
_AGE_MIX_DRIFTED = [0.06, 0.12, 0.20, 0.30, 0.32]
_GENDER_MIX = [0.48, 0.48, 0.04]
_DEVICE_MIX_DRIFTED = [0.10, 0.15, 0.75]
# Share of activity per hour of day: quiet at night, peaks at lunch and in the evening.
_HOURLY = [1, 0.6, 0.4, 0.3, 0.3, 0.5, 1, 2, 3, 3.5, 3.5, 4, 5, 4.5, 4, 4, 4.5, 5, 6, 7, 7.5, 6.5, 4, 2]


GENERATOR_FILE = "generator.json"
"""Written beside the tables: the configuration that generated them."""


class SyntheticConfigError(InputError):
    """A generator parameter is out of range."""


@dataclass(frozen=True)
class SyntheticConfig:
    """Size and shape of a synthetic dataset. ``n_interactions`` counts all rows (both labels)."""

    n_users: int = 2_000
    n_items: int = 500
    n_interactions: int = 50_000
    days: int = 28
    start: str = "2024-01-01"
    seed: int = 42
    negatives_per_positive: float = 1.0
    """Impressions (label 0) per engaged interaction (label 1); 0 for positives only."""
    drift: float = 0.0
    """0 = the reference world; 1 = fully shifted user mix, tastes and price bands."""
    n_categories: int = 16
    n_style_clusters: int = 6
    temperature: float = 1.0
    """Lower = users follow their tastes more strictly."""
    string_ids: bool = False
    """Text ids (``u-6a7f3c``, ``SKU-00042Q``) instead of integers; everything else is the same."""

    def check(self) -> None:
        problems = []
        for name in ("n_users", "n_items", "n_interactions", "days"):
            if getattr(self, name) < 1:  # each named with its value: the CLI flag is the name without n_
                problems.append(f"{name}={getattr(self, name)} must be >= 1")
        if self.n_items < self.n_categories:
            problems.append(f"n_items ({self.n_items}) must be >= n_categories ({self.n_categories})")
        if not 0.0 <= self.drift <= 1.0:
            problems.append(f"drift must be within 0..1, got {self.drift}")
        if self.negatives_per_positive < 0:
            problems.append("negatives_per_positive must be >= 0")
        if self.temperature <= 0:
            problems.append("temperature must be > 0")
        if problems:
            raise SyntheticConfigError("; ".join(problems))


def generate_tables(config: SyntheticConfig = SyntheticConfig()) -> dict[str, "pd.DataFrame"]:
    """Generate the three contract tables in memory: {"interactions", "users", "items"}.

    Text columns of ``interactions`` (``event_type``) are pandas categoricals to keep millions of rows
    cheap; ``users``/``items`` text columns are plain strings.
    """
    import numpy as np
    import pandas as pd

    config.check()
    started = time.monotonic()
    seeds = np.random.SeedSequence(config.seed).spawn(4)
    world_rng, catalog_rng, user_rng, event_rng = (np.random.default_rng(s) for s in seeds)
    C, K, B = config.n_categories, config.n_style_clusters, len(PRICE_BANDS)

    # --- hidden effects of the world (independent of drift, so drifted batches share them)
    effects = {
        "age": world_rng.normal(0, 0.8, (len(AGE_BUCKETS), C)),
        "gender": world_rng.normal(0, 0.8, (len(GENDERS), C)),
        "region": world_rng.normal(0, 0.8, (len(REGIONS), C)),
        "device": world_rng.normal(0, 0.8, (len(DEVICES), C)),
        "style_age": world_rng.normal(0, 1.0, (len(AGE_BUCKETS), K)),
        "style_gender": world_rng.normal(0, 1.0, (len(GENDERS), K)),
        "device_by_age": world_rng.normal(0, 0.7, (len(AGE_BUCKETS), len(DEVICES))) + [[0.4, 0.6, -0.3]],
        "region_mix": world_rng.dirichlet(np.full(len(REGIONS), 4.0)),
        "region_wealth": world_rng.normal(0, 0.6, len(REGIONS)),
    }
    # young users are mobile-first, older ones use the web more
    effects["device_by_age"][:, 2] += np.linspace(-0.8, 0.8, len(AGE_BUCKETS))

    items, item_arrays = _make_items(config, catalog_rng)
    users, user_arrays = _make_users(config, user_rng, effects, item_arrays["category_price"])
    log.info("synthetic: %d users, %d items; sampling %d interactions", len(users), len(items), config.n_interactions)
    interactions = _make_interactions(config, event_rng, item_arrays, user_arrays)
    if config.string_ids:
        users["user_id"] = string_user_ids(users["user_id"].to_numpy())
        items["item_id"] = string_item_ids(items["item_id"].to_numpy())
        interactions["user_id"] = string_user_ids(interactions["user_id"].to_numpy())
        interactions["item_id"] = string_item_ids(interactions["item_id"].to_numpy())
    log.info(
        "synthetic: %d interactions (%d engaged) in %.1f s",
        len(interactions),
        int((interactions["label"] == 1).sum()),
        time.monotonic() - started,
    )
    return {"interactions": interactions, "users": users, "items": items}


def string_user_ids(numbers: "np.ndarray") -> "np.ndarray":
    """The text user id of each integer user id: ``u-`` + 6 hex digits, scattered (a bijection of
    0..2**24-1, so lexical order is not numeric order)."""
    import numpy as np

    scattered = (np.asarray(numbers, dtype=np.uint64) * np.uint64(2654435761)) % np.uint64(1 << 24)
    return np.array([f"u-{n:06x}" for n in scattered.tolist()], dtype=object)


def string_item_ids(numbers: "np.ndarray") -> "np.ndarray":
    """The text item id of each integer item id, SKU-like: ``SKU-`` + 5 digits + a letter."""
    letters = "ABCDEFGHJKLMNPQRSTUVWXYZ"
    import numpy as np

    return np.array([f"SKU-{n:05d}{letters[(7 * n) % len(letters)]}" for n in np.asarray(numbers).tolist()], dtype=object)


def write_synthetic(out_dir: Path, config: SyntheticConfig = SyntheticConfig(), overwrite: bool = False) -> dict[str, int]:
    """Generate a dataset and write it as ``interactions/users/items.parquet`` into ``out_dir``.

    The folder appears complete or not at all (written under a temporary name, then renamed). An
    existing non-empty ``out_dir`` is refused unless ``overwrite``. Returns rows per table.
    """
    from recsys.data.importing import check_output_folder, write_input_folder

    out_dir = Path(out_dir)
    check_output_folder(out_dir, force=overwrite)  # before generating: a wrong --out fails at once
    tables = generate_tables(config)
    return write_input_folder(out_dir, tables, force=overwrite, metadata=asdict(config), metadata_file=GENERATOR_FILE)


def append_batch(folder: Path, config: SyntheticConfig) -> dict[str, int]:
    """A new batch of data arrives in an input folder written by :func:`write_synthetic`.

    The batch's interactions start on the day after the newest one of the folder's own files and
    arrive as a new part, ``interactions/batch-<start>.parquet`` (docs/layouts.md: a table is its file
    plus its parts), so live parts the landing consumer wrote there stay as they are. ``users`` and
    ``items`` take the batch's values (the same ids: a drifted batch changes users' features, as a real
    population shifts), each file replaced atomically. Returns the rows of each table after the append.
    """
    import dataclasses
    import os

    import pandas as pd

    from recsys.data.contract import live_part, read_file, read_table, table_files
    from recsys.data.importing import write_table
    from recsys.data.versioning import write_json_atomic

    folder = Path(folder)
    own = [path for path in table_files(folder, "interactions") if live_part(path) is None]
    newest = max(pd.to_datetime(read_file(path)["timestamp"]).max() for path in own)
    start = (pd.Timestamp(newest).normalize() + pd.Timedelta(days=1)).strftime("%Y-%m-%d")
    batch = generate_tables(dataclasses.replace(config, start=start))
    targets = {
        "interactions": folder / "interactions" / f"batch-{start}.parquet",
        "users": folder / "users.parquet",
        "items": folder / "items.parquet",
    }
    targets["interactions"].parent.mkdir(exist_ok=True)
    for name, target in targets.items():
        frame = batch[name].astype({"event_type": str}) if name == "interactions" else batch[name]
        temp = target.with_name(f".{target.name}.tmp")  # hidden: readers never take a half-written file
        write_table(frame, temp)
        os.replace(temp, target)
    write_json_atomic(folder / GENERATOR_FILE, {"appended_batch": asdict(dataclasses.replace(config, start=start))})
    return {name: len(read_table(folder, name)) for name in targets}


# ------------------------------------------------------------------------------------------
# Catalogue


def _make_items(config: SyntheticConfig, rng: "np.random.Generator") -> tuple["pd.DataFrame", dict[str, Any]]:
    import numpy as np
    import pandas as pd

    n, C, K = config.n_items, config.n_categories, config.n_style_clusters
    # every category gets at least one item; the rest follow uneven category sizes
    category = np.concatenate([np.arange(C), rng.choice(C, n - C, p=rng.dirichlet(np.full(C, 2.0)))])
    rng.shuffle(category)
    brands_per_category = rng.integers(3, 9, C)
    brand = np.floor(rng.power(0.6, n) * brands_per_category[category]).astype(np.int64)
    brand_quality = rng.normal(0, 0.5, (C, 9))[category, brand]
    # price: a level per category, shifted per brand, plus noise -> 5 bands
    category_price = rng.normal(2.0, 0.8, C)
    brand_price = rng.normal(0, 0.6, (C, 9))[category, brand]
    price = np.clip(np.rint(category_price[category] + brand_price + rng.normal(0, 0.8, n)), 0, 4).astype(np.int64)
    item_age_days = np.round(rng.exponential(200.0, n), 1)
    # Zipf-like popularity over a random ranking, nudged by brand quality and freshness
    rank = rng.permutation(n) + 1
    log_pop = -1.0 * np.log(rank) + brand_quality - item_age_days / 365.0
    popularity = np.exp(log_pop - log_pop.max())
    style = rng.normal(0, 1.0, (K, n))

    items = pd.DataFrame(
        {
            "item_id": np.arange(n, dtype=np.int64),
            "category": np.array([f"cat_{c:02d}" for c in range(C)], dtype=object)[category],
            "brand": [f"brand_{c:02d}_{b}" for c, b in zip(category.tolist(), brand.tolist())],
            "price_band": np.array(PRICE_BANDS, dtype=object)[price],
            "item_age_days": item_age_days.astype(np.float64),
        }
    )
    arrays = {
        "category": category,
        "price": price,
        "popularity": popularity,
        "style": style,
        "category_price": np.bincount(category, price, C) / np.bincount(category, minlength=C),
    }
    return items, arrays


# ------------------------------------------------------------------------------------------
# Users


def _make_users(
    config: SyntheticConfig, rng: "np.random.Generator", effects: dict[str, Any], category_price: "np.ndarray"
) -> tuple["pd.DataFrame", dict[str, Any]]:
    import numpy as np
    import pandas as pd

    n, C, d = config.n_users, config.n_categories, config.drift
    age = _draw(rng, n, (1 - d) * np.array(_AGE_MIX) + d * np.array(_AGE_MIX_DRIFTED))
    gender = _draw(rng, n, np.array(_GENDER_MIX))
    region = _draw(rng, n, effects["region_mix"])
    device_logits = effects["device_by_age"][age]
    device_p = np.exp(device_logits) / np.exp(device_logits).sum(axis=1, keepdims=True)
    device_p = (1 - d) * device_p + d * np.array(_DEVICE_MIX_DRIFTED)
    device = _draw_rows(rng, device_p)

    style_logits = effects["style_age"][age] + effects["style_gender"][gender]
    style_cluster = np.argmax(style_logits + rng.gumbel(size=style_logits.shape), axis=1)
    wealth = 0.45 * age + effects["region_wealth"][region] + rng.normal(0, 0.8, n) + 1.0 - 1.8 * d
    price_pref = np.clip(np.rint(wealth), 0, len(PRICE_BANDS) - 1).astype(np.int64)

    # taste over categories: demographic effects + a personal part + affordability; drift rotates it
    logits = (
        effects["age"][age]
        + effects["gender"][gender]
        + effects["region"][region]
        + effects["device"][device]
        + rng.normal(0, 1.0, (n, C))
    )
    if d > 0:
        logits = (1 - d) * logits + d * np.roll(logits, C // 3, axis=1)
    logits -= 0.7 * np.abs(price_pref[:, None] - category_price[None, :])
    taste = np.exp((logits - logits.max(axis=1, keepdims=True)) / config.temperature)
    taste /= taste.sum(axis=1, keepdims=True)
    activity = rng.lognormal(0.0, 1.2, n)

    users = pd.DataFrame(
        {
            "user_id": np.arange(n, dtype=np.int64),
            "age_bucket": np.array(AGE_BUCKETS, dtype=object)[age],
            "gender": np.array(GENDERS, dtype=object)[gender],
            "region": np.array(REGIONS, dtype=object)[region],
            "device": np.array(DEVICES, dtype=object)[device],
        }
    )
    arrays = {"taste": taste, "style_cluster": style_cluster, "price_pref": price_pref, "activity": activity}
    return users, arrays


def _draw(rng: "np.random.Generator", n: int, p: "np.ndarray") -> "np.ndarray":
    import numpy as np

    return rng.choice(len(p), n, p=np.asarray(p) / np.sum(p))


def _draw_rows(rng: "np.random.Generator", p: "np.ndarray") -> "np.ndarray":
    """One draw per row of a row-stochastic matrix, vectorized (see _stacked_cdf)."""
    import numpy as np

    rows = np.arange(len(p))
    flat = _stacked_cdf(p)
    return _lookup(flat, _offset_draws(rows, rng)) - rows * p.shape[1]


# ------------------------------------------------------------------------------------------
# Interactions


def _make_interactions(
    config: SyntheticConfig, rng: "np.random.Generator", item: dict[str, Any], user: dict[str, Any]
) -> "pd.DataFrame":
    import numpy as np
    import pandas as pd

    C, K, B = config.n_categories, config.n_style_clusters, len(PRICE_BANDS)
    n_pos = max(1, int(round(config.n_interactions / (1.0 + config.negatives_per_positive))))
    n_neg = config.n_interactions - n_pos

    # 1. who: activity-weighted users
    activity_cdf = np.cumsum(user["activity"]) / user["activity"].sum()
    users = np.minimum(_lookup(activity_cdf, rng.random(n_pos)), config.n_users - 1)
    # 2. which category: one searchsorted into the users' stacked taste CDFs
    taste_cdf = _stacked_cdf(user["taste"])
    categories = _lookup(taste_cdf, _offset_draws(users, rng)) - users * C
    # 3. which item within the category, for the user's (style cluster, price band) group
    order, item_cdf = _item_cdfs(config, item)
    groups = user["style_cluster"][users] * B + user["price_pref"][users]
    position = _lookup(item_cdf, _offset_draws(groups * C + categories, rng))
    items = order[position - groups * config.n_items]

    # click or purchase: purchases are likelier when the price band suits the user
    gap = np.abs(item["price"][items] - user["price_pref"][users])
    purchase = rng.random(n_pos) < 0.25 * np.exp(-0.9 * gap)
    pos_events = np.where(purchase, 2, 1).astype(np.int8)

    start = np.datetime64(config.start, "s").astype(np.int64)
    pos_seconds = start + _event_seconds(rng, n_pos, config.days)

    # impressions: shown beside an engaged item (same user, seconds apart), chosen by popularity alone
    source = rng.integers(0, n_pos, n_neg)
    neg_users = users[source]
    pop_cdf = np.cumsum(item["popularity"]) / item["popularity"].sum()
    neg_items = np.minimum(_lookup(pop_cdf, rng.random(n_neg)), config.n_items - 1)
    end = start + config.days * 86400 - 1
    neg_seconds = np.clip(pos_seconds[source] + rng.integers(-30, 31, n_neg), start, end)

    frame = pd.DataFrame(
        {
            "user_id": np.concatenate([users, neg_users]).astype(np.int64),
            "item_id": np.concatenate([items, neg_items]).astype(np.int64),
            "timestamp": (np.concatenate([pos_seconds, neg_seconds]) * 1_000_000_000).view("datetime64[ns]"),
            "event_type": pd.Categorical.from_codes(
                np.concatenate([pos_events, np.zeros(n_neg, dtype=np.int8)]), EVENT_TYPES
            ),
            "label": np.concatenate([np.ones(n_pos, np.int8), np.zeros(n_neg, np.int8)]),
        }
    )
    # the same user/item/second twice is one event: engaged rows come first and win
    frame = frame[~frame.duplicated(["user_id", "item_id", "timestamp"], keep="first")]
    return frame.sort_values("timestamp", kind="stable").reset_index(drop=True)


def _item_cdfs(config: SyntheticConfig, item: dict[str, Any]) -> tuple["np.ndarray", "np.ndarray"]:
    """Items sorted by category, and one stacked CDF per (style cluster, price band) group.

    Group g's CDF over category c's items spans [g*C + c, g*C + c + 1), so a draw for
    (g, c, u) is ``searchsorted(cdf, g*C + c + u)``: one call for millions of draws.
    """
    import numpy as np

    C, K, B, n = config.n_categories, config.n_style_clusters, len(PRICE_BANDS), config.n_items
    order = np.argsort(item["category"], kind="stable")
    category = item["category"][order]
    log_pop = np.log(item["popularity"][order])
    style = item["style"][:, order]  # K x n
    price = item["price"][order]
    bands = np.arange(B)
    # affinity = style match + price match; weight = popularity * exp(affinity / temperature)
    affinity = style[:, None, :] - 1.0 * np.abs(bands[None, :, None] - price[None, None, :])  # K x B x n
    logits = log_pop[None, None, :] + affinity / config.temperature
    weights = np.exp(logits - logits.max(axis=2, keepdims=True)).reshape(K * B, n)

    seg_start = np.searchsorted(category, np.arange(C), side="left")
    seg_end = np.searchsorted(category, np.arange(C), side="right")
    cumulative = np.cumsum(weights, axis=1)
    before = np.concatenate([np.zeros((K * B, 1)), cumulative], axis=1)
    base = before[:, seg_start][:, category]  # mass before each item's segment
    total = (before[:, seg_end] - before[:, seg_start])[:, category]
    within = (cumulative - base) / total
    within[:, seg_end - 1] = 1.0  # exact segment ends: no draw can fall into the next segment
    cdf = np.arange(K * B)[:, None] * C + category[None, :] + within
    return order, cdf.ravel()


def _stacked_cdf(p: "np.ndarray") -> "np.ndarray":
    """Row i's CDF shifted into [i, i+1), flattened: a draw for row i is searchsorted(flat, i + u)."""
    import numpy as np

    cdf = np.cumsum(p, axis=1)
    cdf /= cdf[:, -1:]
    cdf[:, -1] = 1.0
    return (np.arange(len(p))[:, None] + cdf).ravel()


def _lookup(cdf: "np.ndarray", queries: "np.ndarray") -> "np.ndarray":
    """``searchsorted(cdf, queries, side="right")``, with the queries sorted first: numpy's binary
    search reuses its previous position for increasing keys, which is several times faster on
    millions of random draws than jumping around a large CDF."""
    import numpy as np

    order = np.argsort(queries)
    found = np.empty(len(queries), dtype=np.int64)
    found[order] = np.searchsorted(cdf, queries[order], side="right")
    return found


def _offset_draws(offsets: "np.ndarray", rng: "np.random.Generator") -> "np.ndarray":
    """offset + u with u uniform in [0, 1), kept strictly below offset + 1 despite float rounding."""
    import numpy as np

    low = offsets.astype(np.float64)
    high = low + 1.0
    return np.minimum(low + rng.random(len(low)), np.nextafter(high, low))


def _event_seconds(rng: "np.random.Generator", n: int, days: int) -> "np.ndarray":
    """Seconds since the start: a uniform day, an hour from the daily cycle, a uniform second."""
    import numpy as np

    hourly = np.array(_HOURLY) / np.sum(_HOURLY)
    day = rng.integers(0, days, n)
    hour = rng.choice(24, n, p=hourly)
    return day * 86400 + hour * 3600 + rng.integers(0, 3600, n)
