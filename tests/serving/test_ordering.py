"""The ordering rules on their own (pure numpy): boosts, at most N per category, exploration."""

from __future__ import annotations

import numpy as np
import pytest

from recsys.errors import ConfigError
from recsys.serving.ordering import OrderingRules, order, parse_boosts

ITEMS = np.array([10, 11, 12, 13, 14, 15], dtype=np.int64)
SCORES = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4], dtype=np.float32)
CATS = np.array([1, 1, 1, 2, 2, 3], dtype=np.int64)


def test_no_rules_is_the_ranker_order_cut_at_k():
    chosen, scores = order(ITEMS[::-1], SCORES[::-1], 3, OrderingRules())
    assert ITEMS[::-1][chosen].tolist() == [10, 11, 12]
    assert scores.tolist() == pytest.approx([0.9, 0.8, 0.7])


def test_ties_keep_the_input_order():
    chosen, _ = order(ITEMS, np.full(6, 0.5, np.float32), 6, OrderingRules())
    assert chosen.tolist() == [0, 1, 2, 3, 4, 5]


def test_at_most_n_per_category_is_a_hard_limit():
    chosen, _ = order(ITEMS, SCORES, 6, OrderingRules(max_per_category=1), categories=CATS)
    assert ITEMS[chosen].tolist() == [10, 13, 15]  # fewer than k when the rule cannot fill it
    chosen, _ = order(ITEMS, SCORES, 4, OrderingRules(max_per_category=2), categories=CATS)
    assert ITEMS[chosen].tolist() == [10, 11, 13, 14]
    with pytest.raises(ValueError, match="categories"):
        order(ITEMS, SCORES, 3, OrderingRules(max_per_category=1))


def test_boosts_multiply_scores_and_reorder():
    rules = OrderingRules(boosts=parse_boosts("15=3, 10=0.5"))
    chosen, scores = order(ITEMS, SCORES, 3, rules)
    assert ITEMS[chosen].tolist() == [15, 11, 12]
    assert scores.tolist() == pytest.approx([1.2, 0.8, 0.7])


def test_parse_boosts_refuses_bad_text():
    assert parse_boosts("") == {}
    with pytest.raises(ConfigError, match="ITEM_ID=MULTIPLIER"):
        parse_boosts("5003:1.5")
    with pytest.raises(ConfigError, match="boost for item 3"):
        OrderingRules(boosts={3: -1.0})


def test_exploration_with_a_seed_is_reproducible_per_user_and_varies():
    rules = OrderingRules(exploration_temperature=1.0, exploration_seed=7)
    many_items = np.arange(50, dtype=np.int64)
    many_scores = np.linspace(0.9, 0.1, 50).astype(np.float32)
    first, _ = order(many_items, many_scores, 10, rules, user_id=1)
    assert order(many_items, many_scores, 10, rules, user_id=1)[0].tolist() == first.tolist()
    assert order(many_items, many_scores, 10, rules, user_id=2)[0].tolist() != first.tolist()
    assert first.tolist() != list(range(10))  # not the plain ranking


def test_low_temperature_stays_close_to_the_ranking_high_temperature_does_not():
    items = np.arange(100, dtype=np.int64)
    scores = np.linspace(0.99, 0.01, 100).astype(np.float32)

    def mean_top10_rank(temperature: float) -> float:
        ranks = [order(items, scores, 10, OrderingRules(exploration_temperature=temperature, exploration_seed=s))[0].mean()
                 for s in range(30)]
        return float(np.mean(ranks))

    assert mean_top10_rank(0.02) < 8
    assert mean_top10_rank(10.0) > 25


def test_exploration_without_seed_is_random_and_off_is_deterministic():
    items = np.arange(100, dtype=np.int64)
    scores = np.linspace(0.99, 0.01, 100).astype(np.float32)
    random_rules = OrderingRules(exploration_temperature=2.0)
    assert not random_rules.deterministic
    draws = {tuple(order(items, scores, 10, random_rules)[0].tolist()) for _ in range(5)}
    assert len(draws) > 1
    assert OrderingRules().deterministic


def test_rules_round_trip_through_pipeline_json():
    rules = OrderingRules(max_per_category=2, boosts={5: 1.5}, exploration_temperature=0.3, exploration_seed=1)
    assert OrderingRules.from_dict(rules.to_dict()) == rules
    with pytest.raises(ConfigError):
        OrderingRules(max_per_category=-1)


def test_empty_candidates():
    chosen, scores = order(np.zeros(0, np.int64), np.zeros(0, np.float32), 5,
                           OrderingRules(max_per_category=1, exploration_temperature=1.0), categories=np.zeros(0))
    assert len(chosen) == 0 and len(scores) == 0


def test_boosts_with_text_item_ids():
    boosts = parse_boosts("SKU-1=1.5, a=b=0.5", "string")  # the last "=" splits: ids may hold "="
    assert boosts == {"SKU-1": 1.5, "a=b": 0.5}
    assert parse_boosts("5003=1.5", "string") == {"5003": 1.5}  # a numeric-looking text id stays text
    assert parse_boosts("5003=1.5, 007=2") == {5003: 1.5, 7: 2.0}  # int kind: numbers
    with pytest.raises(ConfigError, match="item_id 'SKU-1' is not an integer id; this deployment's item ids are integers"):
        parse_boosts("SKU-1=1.5")
    with pytest.raises(ConfigError, match="item_id '' is empty"):
        parse_boosts("=1.5", "string")

    rules = OrderingRules(boosts=boosts)
    assert OrderingRules.from_dict(rules.to_dict(), "string") == rules
    assert OrderingRules.from_dict({"boosts": {"5": 2.0}}).boosts == {5: 2.0}  # pipeline.json keys are text

    items = np.array(["SKU-3", "SKU-1", "a=b"], dtype=object)
    chosen, scores = order(items, np.array([0.9, 0.8, 1.0], np.float32), 3, rules)
    assert items[chosen].tolist() == ["SKU-1", "SKU-3", "a=b"]
    assert scores.tolist() == pytest.approx([1.2, 0.9, 0.5])


def test_exploration_seed_of_a_text_user_is_reproducible_and_varies():
    rules = OrderingRules(exploration_temperature=1.0, exploration_seed=7)
    items = np.array([f"SKU-{i}" for i in range(50)], dtype=object)
    scores = np.linspace(1.0, 0.5, 50).astype(np.float32)
    first, _ = order(items, scores, 10, rules, user_id="u-7f3a")
    assert order(items, scores, 10, rules, user_id="u-7f3a")[0].tolist() == first.tolist()
    assert order(items, scores, 10, rules, user_id="u-7f3b")[0].tolist() != first.tolist()
    # an int user keeps the stream it always had (its own number is the seed)
    assert order(items, scores, 10, rules, user_id=1)[0].tolist() == order(items, scores, 10, rules, user_id=np.int64(1))[0].tolist()
