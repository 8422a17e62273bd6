"""The synthetic generator: deterministic, sized, learnable, and able to drift."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from recsys.data.synthetic import SyntheticConfig, SyntheticConfigError, generate_tables, write_synthetic
from recsys.data.validation import validate_input

SMALL = SyntheticConfig(n_users=800, n_items=300, n_interactions=30_000, days=14, seed=7)


@pytest.fixture(scope="module")
def reference():
    return generate_tables(SMALL)


@pytest.fixture(scope="module")
def drifted():
    from dataclasses import replace

    return generate_tables(replace(SMALL, drift=1.0))


def test_same_seed_same_output(reference):
    again = generate_tables(SMALL)
    for name in reference:
        pd.testing.assert_frame_equal(reference[name], again[name])
    from dataclasses import replace

    other = generate_tables(replace(SMALL, seed=8))
    assert not other["interactions"]["item_id"].equals(reference["interactions"]["item_id"])


def test_sizes_and_columns(reference):
    inter, users, items = reference["interactions"], reference["users"], reference["items"]
    assert len(users) == 800 and len(items) == 300
    # a few colliding (user, item, second) draws are merged: about n_interactions rows
    assert 29_900 <= len(inter) <= 30_000
    assert list(inter.columns) == ["user_id", "item_id", "timestamp", "event_type", "label"]
    assert list(users.columns) == ["user_id", "age_bucket", "gender", "region", "device"]
    assert list(items.columns) == ["item_id", "category", "brand", "price_band", "item_age_days"]
    assert items["item_age_days"].dtype == np.float64
    assert inter["timestamp"].is_monotonic_increasing
    assert inter["timestamp"].min() >= pd.Timestamp("2024-01-01")
    assert inter["timestamp"].max() < pd.Timestamp("2024-01-15")
    # about one ignored impression per engaged interaction
    assert 0.45 < inter["label"].mean() < 0.55
    assert set(inter.loc[inter["label"] == 0, "event_type"]) == {"impression"}
    assert set(inter.loc[inter["label"] == 1, "event_type"]) == {"click", "purchase"}


def test_skewed_popularity_and_daily_cycle(reference):
    inter = reference["interactions"]
    counts = inter["item_id"].value_counts()
    top_share = counts.iloc[: len(counts) // 10].sum() / counts.sum()
    assert top_share > 0.3  # the top 10% of items get far more than 10% of the traffic
    hours = inter["timestamp"].dt.hour.value_counts(normalize=True)
    assert hours.loc[[19, 20]].mean() > 3 * hours.loc[[2, 3]].mean()


def test_purchases_follow_the_price_band(reference):
    """Purchase rate is higher for users whose typical price band matches the item's."""
    inter = reference["interactions"].merge(reference["items"][["item_id", "price_band"]], on="item_id")
    engaged = inter[inter["label"] == 1]
    usual = engaged.groupby("user_id")["price_band"].agg(lambda s: s.value_counts().index[0])
    matches = engaged["price_band"].to_numpy() == usual.reindex(engaged["user_id"]).to_numpy()
    purchase = (engaged["event_type"] == "purchase").to_numpy()
    assert purchase[matches].mean() > 1.3 * purchase[~matches].mean()


def test_structure_is_learnable(reference):
    """Each user's most frequent category in the past predicts the future far better than chance."""
    inter = reference["interactions"]
    engaged = inter[inter["label"] == 1].merge(reference["items"][["item_id", "category"]], on="item_id")
    cut = engaged["timestamp"].quantile(0.8)
    train, test = engaged[engaged["timestamp"] < cut], engaged[engaged["timestamp"] >= cut]
    favourite = train.groupby("user_id")["category"].agg(lambda s: s.value_counts().index[0])
    test = test[test["user_id"].isin(favourite.index)]
    personal = (test["category"].to_numpy() == favourite.reindex(test["user_id"]).to_numpy()).mean()
    most_popular = (test["category"] == train["category"].value_counts().index[0]).mean()
    random_guess = 1 / SMALL.n_categories
    assert personal > 4 * random_guess
    assert personal > most_popular + 0.1


def test_user_features_predict_taste(reference):
    """Users sharing features share tastes: the category mix differs across age buckets."""
    inter = reference["interactions"]
    engaged = inter[inter["label"] == 1]
    joined = engaged.merge(reference["users"], on="user_id").merge(reference["items"], on="item_id")
    mix = pd.crosstab(joined["age_bucket"], joined["category"], normalize="index")
    assert total_variation(mix.iloc[0], mix.iloc[-1]) > 0.15


def total_variation(p: pd.Series, q: pd.Series) -> float:
    p, q = p.align(q, fill_value=0)
    return float(0.5 * np.abs(p - q).sum())


def test_drift_shifts_distributions(reference, drifted):
    def share(frame, column):
        return frame[column].value_counts(normalize=True)

    assert total_variation(share(reference["users"], "age_bucket"), share(drifted["users"], "age_bucket")) > 0.25
    assert total_variation(share(reference["users"], "device"), share(drifted["users"], "device")) > 0.2
    # same catalogue: item ids and features are unchanged
    pd.testing.assert_frame_equal(reference["items"], drifted["items"])

    def engaged_mix(tables, column):
        inter = tables["interactions"]
        joined = inter[inter["label"] == 1].merge(tables["items"], on="item_id")
        return joined[column].value_counts(normalize=True)

    assert total_variation(engaged_mix(reference, "category"), engaged_mix(drifted, "category")) > 0.15
    assert total_variation(engaged_mix(reference, "price_band"), engaged_mix(drifted, "price_band")) > 0.08


def test_bad_parameters_are_refused():
    with pytest.raises(SyntheticConfigError, match="drift"):
        generate_tables(SyntheticConfig(drift=2.0))
    with pytest.raises(SyntheticConfigError, match="n_categories"):
        generate_tables(SyntheticConfig(n_items=3))


def test_written_folder_passes_validation(tmp_path):
    out = tmp_path / "synthetic"
    rows = write_synthetic(out, SyntheticConfig(n_users=50, n_items=40, n_interactions=2_000, seed=1))
    tables = validate_input(out)
    assert len(tables.interactions) == rows["interactions"]
    assert tables.interactions["event_type"].map(type).eq(str).all()
    assert tables.has_labels
    assert [p.name for p in tmp_path.iterdir()] == ["synthetic"]  # no staging folder left behind
    with pytest.raises(Exception, match="not empty"):
        write_synthetic(out, SyntheticConfig(n_users=50, n_items=40, n_interactions=2_000, seed=1))
    write_synthetic(out, SyntheticConfig(n_users=60, n_items=40, n_interactions=2_000, seed=1), overwrite=True)
    assert len(validate_input(out).users) == 60


def test_an_appended_drifted_batch_follows_the_data_and_passes_validation(tmp_path):
    import pandas as pd

    from recsys.data.synthetic import SyntheticConfig, append_batch, write_synthetic
    from recsys.data.validation import validate_input

    folder = tmp_path / "landing"
    base = SyntheticConfig(n_users=300, n_items=80, n_interactions=4_000, days=10, seed=5)
    before = write_synthetic(folder, base)
    old = pd.read_parquet(folder / "interactions.parquet")
    # a live event the landing consumer wrote meanwhile (a user first seen live, on the last day)
    from data_helpers import write_live_part

    live = pd.DataFrame({"user_id": [10**6], "item_id": [int(old["item_id"].iloc[0])],
                         "timestamp": [old["timestamp"].max()], "event_type": ["click"]})
    part = write_live_part(folder, live, "1-0", "1-0")
    rows = append_batch(folder, SyntheticConfig(n_users=300, n_items=80, n_interactions=1_000, days=3, seed=6, drift=1.0))

    assert rows["interactions"] > before["interactions"] + 1 and rows["users"] == before["users"]
    assert part.exists()  # live parts are left as they are
    tables = validate_input(folder)
    assert tables.new_users and 10**6 in list(tables.new_users)
    new = tables.interactions[tables.interactions["timestamp"] > old["timestamp"].max()]
    assert len(new) == rows["interactions"] - before["interactions"] - 1
    assert new["timestamp"].min() >= old["timestamp"].max().normalize() + pd.Timedelta(days=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["landing"]  # no staging folder left
    assert not [p for p in folder.rglob(".*")]  # no temp file left


def test_string_ids_give_the_same_data_with_text_ids(reference):
    from dataclasses import replace

    from recsys.data.synthetic import string_item_ids, string_user_ids

    text = generate_tables(replace(SMALL, string_ids=True))
    for name, column in (("users", "user_id"), ("items", "item_id"), ("interactions", "user_id"), ("interactions", "item_id")):
        mapping = string_user_ids if column == "user_id" else string_item_ids
        assert text[name][column].tolist() == mapping(reference[name][column].to_numpy()).tolist(), (name, column)
        assert all(isinstance(v, str) for v in text[name][column].head())
        others = [c for c in text[name].columns if c not in ("user_id", "item_id")]
        pd.testing.assert_frame_equal(text[name][others], reference[name][others])
    assert text["users"]["user_id"].is_unique and text["items"]["item_id"].is_unique
    assert text["users"]["user_id"].str.fullmatch(r"u-[0-9a-f]{6}").all()
    assert text["items"]["item_id"].str.fullmatch(r"SKU-[0-9]{5}[A-Z]").all()
    assert not text["users"]["user_id"].is_monotonic_increasing  # lexical order is not the numeric one


def test_string_ids_validate_as_text(tmp_path):
    from dataclasses import replace

    write_synthetic(tmp_path / "s", replace(SMALL, n_interactions=3000, string_ids=True))
    tables = validate_input(tmp_path / "s")
    assert tables.id_kinds.to_dict() == {"user_id": "string", "item_id": "string"}
    assert tables.interactions["item_id"].iloc[0].startswith("SKU-")
