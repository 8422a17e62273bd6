"""Sampled negatives: never a known positive, item features from items/, seeded."""

import numpy as np
import pandas as pd
import pytest

from recsys.layout import FeatureVersion
from recsys.training.negatives import sample_negatives, with_negatives


@pytest.fixture(scope="module")
def frames(feature_dir):
    fv = FeatureVersion.open(feature_dir)
    columns = fv.user_columns + fv.item_columns + [fv.target]
    return fv, fv.frame("train", columns), fv.frame("valid", columns), fv.frame("items", fv.item_columns)


@pytest.mark.parametrize("strategy", ["uniform", "popularity"])
def test_negatives_avoid_every_positive_and_carry_item_features(frames, strategy):
    fv, train, valid, items = frames
    negatives = sample_negatives(
        valid, items, user_col=fv.user_id, item_col=fv.item_id, target=fv.target,
        negatives_per_positive=3, seed=1, strategy=strategy, known_positives=train,
    )
    assert len(negatives) == 3 * len(valid)
    assert (negatives[fv.target] == 0).all()
    positive_pairs = set(zip(train[fv.user_id], train[fv.item_id])) | set(zip(valid[fv.user_id], valid[fv.item_id]))
    assert not positive_pairs & set(zip(negatives[fv.user_id], negatives[fv.item_id]))
    # item columns come from the sampled item's row in items/ (checked where the encoded id is
    # unique; cold items share the out-of-vocabulary code)
    distinct = items[~items[fv.item_id].duplicated(keep=False)]
    joined = negatives.merge(distinct, on=fv.item_id, suffixes=("", "_item"))
    assert len(joined) > 0.9 * len(negatives)
    for column in fv.item_columns[1:]:
        np.testing.assert_allclose(joined[column], joined[f"{column}_item"])
    # user columns are the positive row's
    assert set(negatives[fv.user_id]) <= set(valid[fv.user_id])


def test_negatives_are_seeded(frames):
    fv, train, _valid, items = frames
    kwargs = dict(user_col=fv.user_id, item_col=fv.item_id, target=fv.target, negatives_per_positive=2)
    a = sample_negatives(train, items, seed=5, **kwargs)
    b = sample_negatives(train, items, seed=5, **kwargs)
    c = sample_negatives(train, items, seed=6, **kwargs)
    pd.testing.assert_frame_equal(a, b)
    assert not a[fv.item_id].equals(c[fv.item_id])


def test_user_who_saw_everything_gets_no_negative():
    positives = pd.DataFrame({"u": [1, 1, 2], "i": [10, 11, 10], "click": [1, 1, 1]})
    items = pd.DataFrame({"i": [10, 11]})
    out = with_negatives(positives, items, user_col="u", item_col="i", target="click",
                         negatives_per_positive=2, seed=0)
    # user 1 has seen both items: no negatives; user 2 can only get item 11
    negatives = out[out.click == 0]
    assert len(out[out.click == 1]) == 3
    assert negatives.u.tolist() == [2, 2] and negatives.i.tolist() == [11, 11]


def test_candidate_negatives_come_from_each_users_own_candidates(frames):
    fv, train, _valid, items = frames
    users = np.sort(train[fv.user_id].unique())
    catalogue = np.unique(items[fv.item_id].to_numpy())
    rng = np.random.default_rng(0)
    with_pool = users[: len(users) // 2]  # the other half has no candidates: popularity instead
    pools = np.stack([rng.choice(catalogue, 20, replace=False) for _ in with_pool])
    negatives = sample_negatives(
        train, items, user_col=fv.user_id, item_col=fv.item_id, target=fv.target, negatives_per_positive=2,
        seed=3, strategy="candidates", candidates=(with_pool, pools),
    )
    assert len(negatives) == 2 * len(train)
    pool_of = {int(u): set(p.tolist()) for u, p in zip(with_pool, pools)}
    positive_pairs = set(zip(train[fv.user_id], train[fv.item_id]))
    assert not positive_pairs & set(zip(negatives[fv.user_id], negatives[fv.item_id]))
    from_pool = negatives[negatives[fv.user_id].isin(with_pool)]
    inside = [item in pool_of[int(user)] for user, item in zip(from_pool[fv.user_id], from_pool[fv.item_id])]
    # a user's pool item they interacted with is redrawn from popularity: almost all stay inside their pool
    assert np.mean(inside) > 0.9
    others = negatives[~negatives[fv.user_id].isin(with_pool)]
    assert len(others) > 0 and others[fv.item_id].nunique() > 20


def test_with_negatives_splits_each_positives_negatives_between_candidates_and_popularity(frames):
    fv, train, _valid, items = frames
    users = np.sort(train[fv.user_id].unique())
    pool = np.unique(items[fv.item_id].to_numpy())[:5]
    rows = with_negatives(train, items, user_col=fv.user_id, item_col=fv.item_id, target=fv.target,
                          negatives_per_positive=4, seed=1, strategy="popularity",
                          candidates=(users, np.tile(pool, (len(users), 1))), candidate_negatives=2)
    negatives = rows[rows[fv.target] == 0]
    assert len(negatives) == 4 * len(train) and (rows[fv.target] == 1).sum() == len(train)
    share_in_pool = negatives[fv.item_id].isin(pool).mean()
    assert 0.45 < share_in_pool < 0.75  # half from the 5-item pools (redraws aside), half by popularity
