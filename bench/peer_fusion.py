"""Does a blend of the two classical peers beat EASE on MovieLens? (benchmark aside, not a test)

The question behind it: the product's two-tower scores about like implicit ALS on ml-latest-small and
below EASE (bench/quality.py). Would a hybrid, a second candidate source beside an ALS-like model,
get past EASE? This measures the cheapest version of that: EASE's and ALS's scores, each z-scored per
user, blended as (1 - w) * EASE + w * ALS, on bench/quality.py's own split (same seed, same per-user
75/25 holdout, same 90/10 validation split of the training part, same peer parameters: EASE lambda 200,
ALS 32 factors / reg 0.1 / 30 iterations / alpha 2, what quality.py's validation tuning chose).
The weight is chosen on validation; every weight's test figure is recorded too.

    .envs/control/bin/python bench/peer_fusion.py     # ~1 min; writes bench/results/peer_fusion.json
    .envs/control/bin/python bench/peer_fusion.py --data PATH/ml-latest-small --out /tmp/fusion.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import quality  # noqa: E402  (bench/quality.py: the split, the peers and the metrics)

WEIGHTS = (0.0, 0.1, 0.2, 0.35, 0.5, 0.65, 0.8, 1.0)
EASE_LAMBDA = 200.0
ALS = {"factors": 32, "regularization": 0.1, "iterations": 30, "alpha": 2.0}


def zscored(scores: np.ndarray) -> np.ndarray:
    scores = np.asarray(scores, np.float64)
    return (scores - scores.mean(axis=1, keepdims=True)) / (scores.std(axis=1, keepdims=True) + 1e-9)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=quality.DEFAULT_DATA, help="ml-latest-small folder (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=quality.RESULTS / "peer_fusion.json")
    args = parser.parse_args()
    if not (args.data / "ratings.csv").is_file():
        raise SystemExit(f"error: {args.data} holds no ratings.csv (pass --data PATH to ml-latest-small)")

    import pandas as pd

    started = time.time()
    ratings = quality.load_movielens(args.data)["ratings"]
    users_of_row = ratings["userId"].astype(np.int64).to_numpy()
    movies_of_row = ratings["movieId"].astype(np.int64).to_numpy()
    rng = np.random.default_rng(42)  # the same draws, in the same order, as quality.py's full run
    test = quality.per_user_holdout(users_of_row, 0.25, rng)
    users, catalogue = np.unique(users_of_row), np.unique(movies_of_row[~test])
    user_pos, item_pos = pd.Index(users).get_indexer(users_of_row), pd.Index(catalogue).get_indexer(movies_of_row)
    splits = {"test": quality.build_split(user_pos, item_pos, test, len(users), len(catalogue))}
    train = np.flatnonzero(~test)
    held = quality.per_user_holdout(users_of_row[train], 0.10, rng)
    splits["valid"] = quality.build_split(user_pos[train], item_pos[train], held, len(users), len(catalogue))
    with tempfile.TemporaryDirectory(prefix="recsys-bench-fusion-") as scratch:
        factors, _report = quality.als_factors(splits, [ALS], 42, Path(scratch))
    figures: dict[str, dict[str, dict]] = {}
    for name, split in splits.items():
        ease = zscored(quality.ease_scores(split.fit, EASE_LAMBDA))
        user_f, item_f = factors[(name, 0)]
        als = zscored(user_f @ item_f.T)
        figures[name] = {str(w): quality.evaluate_scores((1 - w) * ease + w * als, split) for w in WEIGHTS}
        for w in WEIGHTS:
            m = figures[name][str(w)]
            quality.log(f"{name}: ALS weight {w}: recall@10 {m['recall_at_10']:.4f}, ndcg@10 {m['ndcg_at_10']:.4f}")
    chosen = max(WEIGHTS, key=lambda w: (figures["valid"][str(w)]["recall_at_10"], figures["valid"][str(w)]["ndcg_at_10"]))
    result = {
        "benchmark": "peer_fusion", "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "seconds": round(time.time() - started, 1), "load_average": quality.loadavg(),
        "ease_lambda": EASE_LAMBDA, "als": ALS, "weights": list(WEIGHTS), "figures": figures,
        "validation_chosen_weight": chosen, "test_at_chosen_weight": figures["test"][str(chosen)],
        "test_ease_alone": figures["test"]["0.0"],
        "test_best_weight_on_test": max(figures["test"].values(), key=lambda m: m["recall_at_10"]),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    quality.log(f"weight chosen on validation {chosen}: test recall@10 {result['test_at_chosen_weight']['recall_at_10']:.4f} "
                f"vs EASE alone {result['test_ease_alone']['recall_at_10']:.4f}; wrote {args.out}")


if __name__ == "__main__":
    main()
