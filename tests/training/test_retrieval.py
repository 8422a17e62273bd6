"""The two-tower's candidate pools: what retrieval proposes to each training user (the ranker's hard negatives)."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("tensorflow")

from recsys.training.pipeline import TrainParams, load_training_data  # noqa: E402

PARAMS = TrainParams(epochs=1, patience=0, batch_size=256, embedding_dim=16, learning_rate=0.01, l2_reg=1e-6, dropout=0.0,
                     history_length=20, refit=False, seed=3)


@pytest.fixture(scope="module")
def fitted(feature_dir):
    from recsys.training.retrieval import fit_two_tower, positives_of, user_histories

    data = load_training_data(feature_dir, PARAMS.seed)
    fv = data.fv
    users = user_histories(fv, data.train, data.users, PARAMS)
    model = fit_two_tower(fv, positives_of(fv, data.train, fv.path, PARAMS), PARAMS, epochs=1, users=users,
                          items=data.items).model
    return data, users, model


@pytest.mark.parametrize("prior_weight", [0.0, 0.5])
def test_pools_are_each_users_best_unseen_items_by_the_models_score(fitted, prior_weight):
    from recsys.training.retrieval import candidate_pools, embed, popularity_prior, users_in_order

    data, users, model = fitted
    fv = data.fv
    user_ids, pools = candidate_pools(model, fv, PARAMS, data.train, users, data.items, k=15, prior_weight=prior_weight)
    assert list(user_ids) == sorted(data.train[fv.user_id].unique())
    assert pools.shape == (len(user_ids), 15)

    catalogue = data.items.drop_duplicates(fv.item_id).reset_index(drop=True)
    prior = prior_weight * popularity_prior(fv, data.train, catalogue) if prior_weight else None
    queries, vectors = embed(model, fv, PARAMS, users_in_order(users, fv.user_id, user_ids, fv.path), catalogue, prior)
    scores = queries @ vectors.T
    seen = data.train.groupby(fv.user_id)[fv.item_id].agg(set)
    item_ids = catalogue[fv.item_id].to_numpy()
    for row in (0, len(user_ids) // 2, len(user_ids) - 1):
        mine = seen[user_ids[row]]
        assert not mine & set(pools[row].tolist())  # nothing the user already interacted with
        unseen = np.array([i not in mine for i in item_ids])
        best = np.sort(scores[row][unseen])[::-1][:15]
        got = np.sort(scores[row][np.isin(item_ids, pools[row])])[::-1]
        np.testing.assert_allclose(got, best, rtol=1e-5)  # the 15 highest-scoring unseen items


def test_the_learning_rate_halves_on_a_plateau_and_a_refit_replays_it(feature_dir):
    import dataclasses

    from recsys.training.retrieval import fit_two_tower, positives_of, user_histories

    data = load_training_data(feature_dir, PARAMS.seed)
    fv = data.fv
    params = dataclasses.replace(PARAMS, patience=0, lr_patience=1, learning_rate=0.05)
    positives = positives_of(fv, data.train, fv.path, params)
    fit = fit_two_tower(fv, positives, params, epochs=5, protocol=data.protocol,
                        users=user_histories(fv, data.train, data.users, params), items=data.items)
    rates, recall = fit.history["lr"], fit.history["val_recall_at_10"]
    assert rates[0] == pytest.approx(0.05) and min(rates) < 0.05  # (seeded: this run has a plateau)
    for epoch in range(1, 5):  # halved exactly after an epoch that did not beat every earlier one
        improved = recall[epoch - 1] > max(recall[:epoch - 1], default=-1.0)
        expected = rates[epoch - 1] if improved else max(rates[epoch - 1] / 2, 0.05 / 16)
        assert rates[epoch] == pytest.approx(expected, rel=1e-5), (rates, recall)
    refit = fit_two_tower(fv, positives, params, epochs=3, items=data.items, learning_rates=rates[:3])
    assert refit.history["lr"] == pytest.approx(rates[:3], rel=1e-5)
