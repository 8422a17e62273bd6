"""Quality benchmark (not a test): the product end to end on MovieLens ml-latest-small beside classical peers.

Writes bench/results/quality.json and prints a table. One run, one split, everything measured in it:

1. **Split.** Every rating is an implicit interaction. Per user (seeded), a random 25% of their
   ratings (rounded half up) is the test set, the rest the training part. The training part is
   written as a MovieLens folder (ratings.csv, movies.csv and tags.csv filtered to the training
   ratings, README.txt, the licence, copied beside them) into a scratch folder outside the repository.
   The **catalogue** is the movies with a training rating (what any method can know about); test
   ratings of other movies are left out of every method's test set (counted in the JSON).
2. **The product**, through its own code paths, timed step by step: ``recsys data import-movielens``
   (the CLI) -> ingest (data version) -> NVTabular ETL (feature version) -> training + MLflow run
   (``recsys.jobs.train_and_log`` in the Merlin runtime, as the ``recsys_train`` DAG runs it) -> the
   champion gate -> the online store and publishing to Triton (``recsys.serving.publish``) -> every
   test user's top 10 read back from the served ``recsys`` model over gRPC, many requests in flight.
   Then the **live replay** (the recency signal, measured): each test user's test ratings in time
   order, the first half sent as live events (accepted and applied, as the API and the event worker
   do), the second half to find; the same users asked without the events (the first half left out
   through the request context) and with them; and the same events sent under new user ids (unknown
   to the batch data), asked before them (the popularity list) and after.
   A local stack of its own (Redis, MLflow, Triton) in a scratch RECSYS_HOME on free ports, stopped
   at the end. Training parameters are the product's own defaults unless ``--train-param`` says
   otherwise; ``--tune N`` runs the product's Optuna search first (``tune_trials``, within
   ``tune_timeout_seconds``). Also recorded: the figures the training run logged to MLflow on the
   product's own validation split of the training part (``recsys.features.split``: on this data the
   automatic choice is the per-user holdout, since its last days hold almost nothing).
3. **Peers** on the same split: popularity; EASE (closed form, numpy); implicit ALS (``implicit`` in
   ``.envs/peers``, run as a subprocess: bench/als_peer/als_peer.py). Hyper-parameters are chosen on
   a validation split carved from the training part only (per user 90/10, same rounding), by
   recall@10, then refit on the whole training part ("validation-tuned": the honest figure). The
   figure of the parameters that score best on the test split itself is recorded too, labelled
   "test-tuned" (an upper bound that earlier reports quoted; not a fair comparison).
4. **Metrics** (``recsys.training.metrics``' definitions): candidates are the catalogue's items the
   user did not rate in training; recall@10 = hits / |test items| (uncapped); ndcg@10 binary, ideal
   DCG over min(10, |test items|); both averaged over test users; coverage = distinct recommended
   items / catalogue size.

Run from the repository root with the control-plane interpreter (the Merlin runtime and the peers
environment are started as subprocesses):

    .envs/control/bin/python bench/quality.py                    # full run, a few minutes on 2 cores
    .envs/control/bin/python bench/quality.py --quick            # 150 users, small grids (development)
    .envs/control/bin/python bench/quality.py --train-param epochs=10 --train-param embedding_dim=32
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import CONTROL_BIN, RESULTS, ROOT, loadavg, log, merlin, scratch_stack, serve_champion, timed  # noqa: E402

DEFAULT_DATA = ROOT.parent / "shared" / "data" / "ml-latest-small"
PEERS_PYTHON = ROOT / ".envs" / "peers" / "bin" / "python"
ALS_PEER = ROOT / "bench" / "als_peer" / "als_peer.py"
K = 10

GRIDS = {
    "full": {
        "ease_lambda": [50.0, 100.0, 200.0, 400.0, 800.0, 1600.0],
        "als": {"factors": [32, 64], "regularization": [0.1, 1.0], "iterations": [15, 30], "alpha": [0.5, 2.0]},
    },
    "quick": {
        "ease_lambda": [100.0, 400.0],
        "als": {"factors": [64], "regularization": [0.05], "iterations": [10], "alpha": [1.0, 10.0]},
    },
}
# Figures earlier reports quoted for this data, with parameters tuned on the test split.
EARLIER_REPORTS = {"ease": {"recall_at_10": 0.165, "ndcg_at_10": 0.402}, "als": {"recall_at_10": 0.138, "ndcg_at_10": 0.343},
                   "popularity": {"recall_at_10": 0.070, "ndcg_at_10": 0.212}}


# --- 1. the split ----------------------------------------------------------------------------------
def per_user_holdout(users: np.ndarray, share: float, rng: np.random.Generator) -> np.ndarray:
    """True for a random ``share`` of each user's rows (rounded half up: 25% of 18 ratings is 5).

    ``users``: the user of each row. Deterministic for a given generator state and row order.
    """
    n = len(users)
    order = np.lexsort((rng.random(n), users))  # by user, random within a user
    sorted_users = users[order]
    starts = np.flatnonzero(np.r_[True, sorted_users[1:] != sorted_users[:-1]])
    counts = np.diff(np.r_[starts, n])
    rank = np.arange(n) - np.repeat(starts, counts)
    held = np.floor(counts * share + 0.5).astype(np.int64)
    mask = np.empty(n, dtype=bool)
    mask[order] = rank < np.repeat(held, counts)
    return mask


@dataclass
class Split:
    """One train / held-out split over fixed user and item positions (the catalogue)."""

    fit: Any
    """scipy CSR, users x items, 1 where the user rated the item in the fitting part."""
    relevant: dict[int, set]
    """user position -> held-out item positions (catalogue items not seen in the fitting part)."""

    @property
    def seen(self) -> Callable[[int], np.ndarray]:
        fit = self.fit
        return lambda user: fit.indices[fit.indptr[user] : fit.indptr[user + 1]]


def build_split(user_pos: np.ndarray, item_pos: np.ndarray, held: np.ndarray, n_users: int, n_items: int) -> Split:
    """A :class:`Split` from rows (user position, item position; item -1 = outside the catalogue)."""
    import scipy.sparse as sp

    fit_rows = ~held & (item_pos >= 0)
    fit = sp.csr_matrix((np.ones(int(fit_rows.sum()), dtype=np.float32), (user_pos[fit_rows], item_pos[fit_rows])),
                        shape=(n_users, n_items))
    fit.sum_duplicates()
    fit.data[:] = 1.0
    relevant: dict[int, set] = {}
    for user, item in zip(user_pos[held & (item_pos >= 0)].tolist(), item_pos[held & (item_pos >= 0)].tolist()):
        relevant.setdefault(user, set()).add(item)
    for user in list(relevant):
        relevant[user] -= set(fit.indices[fit.indptr[user] : fit.indptr[user + 1]].tolist())
        if not relevant[user]:
            del relevant[user]
    return Split(fit, relevant)


# --- 2. metrics (recsys.training.metrics' definitions, applied to top-10 lists) -------------------
def evaluate_lists(lists: dict[int, list[int]], relevant: dict[int, set], n_items: int, k: int = K) -> dict[str, float]:
    """Mean recall@k and ndcg@k over the users of ``relevant``; coverage of the catalogue over all lists.

    ``lists``: user -> ranked item positions (a position outside 0..n_items-1 is a miss). Every user
    of ``relevant`` must have a list: a missing answer is an error, not a zero.
    """
    from recsys.training.metrics import ndcg_at_k, recall_at_k

    missing = [u for u in relevant if u not in lists]
    if missing:
        raise ValueError(f"{len(missing)} test users have no recommendations, e.g. user position {missing[0]}")
    recall = [recall_at_k(lists[u], relevant[u], k) for u in relevant]
    ndcg = [ndcg_at_k(lists[u], relevant[u], k) for u in relevant]
    shown = {int(i) for ranked in lists.values() for i in list(ranked)[:k] if 0 <= int(i) < n_items}
    return {
        f"recall_at_{k}": round(float(np.mean(recall)), 5),
        f"ndcg_at_{k}": round(float(np.mean(ndcg)), 5),
        "coverage": round(len(shown) / n_items, 5),
        "users": len(relevant),
    }


def rank_unseen(scores: np.ndarray, split: Split, k: int = K) -> dict[int, list[int]]:
    """Top k of each held-out user among the items they did not see (ties: lower position first)."""
    from recsys.training.metrics import top_k_items

    return {u: top_k_items(scores[u], k, exclude=split.seen(u)).tolist() for u in split.relevant}


def evaluate_scores(scores: np.ndarray, split: Split) -> dict[str, float]:
    return evaluate_lists(rank_unseen(scores, split), split.relevant, scores.shape[1])


# --- 3. peers -------------------------------------------------------------------------------------
def popularity_scores(fit) -> np.ndarray:
    """Every user gets the items by their number of (fitting) ratings."""
    counts = np.asarray(fit.sum(axis=0), dtype=np.float64).ravel()
    return np.broadcast_to(counts, fit.shape)


def ease_scores(fit, lam: float) -> np.ndarray:
    """EASE (Steck 2019): scores X B with B = I - P / diag(P), P = (X^T X + lam I)^-1 (diag(B) = 0).

    With fewer users than items (610 vs ~8.5k here) P is not formed: by the push-through identity
    X P = (X X^T + lam I)^-1 X =: M X, and diag(P) = (1 - colsum(X * M X)) / lam, so
    X B = X - (M X) / diag(P), the same numbers from a users x users inverse (seconds, not minutes).
    """
    x = fit.toarray().astype(np.float64)
    n_users, n_items = x.shape
    if n_items <= n_users:
        p = np.linalg.inv(x.T @ x + lam * np.eye(n_items))
        b = -p / np.diag(p)
        np.fill_diagonal(b, 0.0)
        return x @ b
    mx = np.linalg.solve(x @ x.T + lam * np.eye(n_users), x)
    diag_p = (1.0 - (x * mx).sum(axis=0)) / lam
    return x - mx / diag_p


def grid_configs(grid: dict[str, list]) -> list[dict[str, Any]]:
    import itertools

    keys = list(grid)
    return [dict(zip(keys, values)) for values in itertools.product(*(grid[k] for k in keys))]


def als_factors(splits: dict[str, Split], configs: list[dict], seed: int, scratch: Path) -> tuple[dict, dict]:
    """Fit implicit ALS for every (split, config) in the peers environment; returns factors and its report."""
    if not PEERS_PYTHON.exists():
        raise SystemExit(
            f"{PEERS_PYTHON} not found: build the peers environment with "
            "`UV_PROJECT_ENVIRONMENT=.envs/peers .envs/bootstrap/bin/uv sync --frozen --extra peers --python python3.11`"
        )
    matrices = {}
    for name, split in splits.items():
        matrices.update({f"{name}_indptr": split.fit.indptr, f"{name}_indices": split.fit.indices,
                         f"{name}_shape": np.array(split.fit.shape)})
    np.savez(scratch / "als-input.npz", **matrices)
    fits = [[name, i] for name in splits for i in range(len(configs))]
    out = scratch / "als-factors.npz"
    run = subprocess.run(
        [str(PEERS_PYTHON), str(ALS_PEER), "--matrices", str(scratch / "als-input.npz"), "--grid", json.dumps(configs),
         "--fits", json.dumps(fits), "--out", str(out), "--seed", str(seed)],
        capture_output=True, text=True,
    )
    if run.returncode != 0:
        raise SystemExit(f"the ALS peer failed:\n{run.stdout[-2000:]}\n{run.stderr[-3000:]}")
    report = json.loads(run.stdout.strip().splitlines()[-1])
    stored = np.load(out)
    factors = {(name, i): (stored[f"{name}__{i}__users"], stored[f"{name}__{i}__items"]) for name, i in fits}
    return factors, report


def tuned(name: str, configs: list[dict], valid_metrics: list[dict], test_metrics: list[dict]) -> dict:
    """The honest choice (best on validation, by recall then ndcg) and the test-tuned one, with every figure."""
    key = lambda m: (m["recall_at_10"], m["ndcg_at_10"])  # noqa: E731
    honest = max(range(len(configs)), key=lambda i: key(valid_metrics[i]))
    cheat = max(range(len(configs)), key=lambda i: key(test_metrics[i]))
    return {
        "validation_tuned": {"params": configs[honest], "validation": valid_metrics[honest], "test": test_metrics[honest]},
        "test_tuned": {"params": configs[cheat], "test": test_metrics[cheat],
                       "note": "parameters chosen on the test split itself: an upper bound, not a fair figure"},
        "grid": [{"params": c, "validation": v, "test": t} for c, v, t in zip(configs, valid_metrics, test_metrics)],
    }


def run_peers(splits: dict[str, Split], grid: dict, seed: int, scratch: Path, timings: dict) -> dict:
    valid, full = splits["valid"], splits["full"]
    peers: dict[str, Any] = {}
    with timed("popularity", timings):
        metrics = evaluate_scores(popularity_scores(full.fit), full)
        peers["popularity"] = {"validation_tuned": {"params": {}, "validation": evaluate_scores(popularity_scores(valid.fit), valid),
                                                    "test": metrics},
                               "test_tuned": {"params": {}, "test": metrics, "note": "no parameters: the same figure"}}
    log(f"  popularity: recall@10 {metrics['recall_at_10']:.4f}, ndcg@10 {metrics['ndcg_at_10']:.4f}")

    configs = [{"lambda": lam} for lam in grid["ease_lambda"]]
    with timed("ease", timings):
        valid_m = [evaluate_scores(ease_scores(valid.fit, c["lambda"]), valid) for c in configs]
        test_m = [evaluate_scores(ease_scores(full.fit, c["lambda"]), full) for c in configs]
    peers["ease"] = tuned("ease", configs, valid_m, test_m)
    _log_tuned("EASE", peers["ease"])

    configs = grid_configs(grid["als"])
    with timed("als", timings):
        factors, report = als_factors(splits, configs, seed, scratch)
        valid_m = [evaluate_scores(factors["valid", i][0] @ factors["valid", i][1].T, valid) for i in range(len(configs))]
        test_m = [evaluate_scores(factors["full", i][0] @ factors["full", i][1].T, full) for i in range(len(configs))]
    peers["als"] = {**tuned("als", configs, valid_m, test_m), "implicit_version": report["implicit"],
                    "fit_seconds": report["fit_seconds"]}
    _log_tuned("ALS", peers["als"])
    return peers


def _log_tuned(name: str, result: dict) -> None:
    honest, cheat = result["validation_tuned"], result["test_tuned"]
    log(f"  {name}: validation-tuned {honest['params']} recall@10 {honest['test']['recall_at_10']:.4f} ndcg@10 "
        f"{honest['test']['ndcg_at_10']:.4f}; test-tuned {cheat['params']} recall@10 {cheat['test']['recall_at_10']:.4f}")


# --- 4. the product --------------------------------------------------------------------------------
_MERLIN_PREFLIGHT = """
import json, sys
from importlib.metadata import version
from recsys import jobs
from recsys.errors import RecsysError
overrides = json.loads(sys.argv[1])
known = jobs.training_params()
try:
    params = jobs.training_params(overrides)
except RecsysError as exc:
    print("BENCH-ERROR " + str(exc), flush=True)
    sys.exit(0)
versions = {}
for name in ("tensorflow", "merlin-models", "nvtabular", "faiss-cpu"):
    try:
        versions[name] = version(name)
    except Exception:
        pass
print("BENCH-RESULT " + json.dumps({"defaults": known, "params": params, "versions": versions}, default=str), flush=True)
"""


def parse_train_params(pairs: list[str], tune: Optional[int]) -> dict[str, str]:
    overrides = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise SystemExit(f"error: --train-param takes KEY=VALUE, got {pair!r}")
        overrides[key.strip()] = value.strip()
    if tune is not None:
        overrides["tune_trials"] = str(tune)  # recsys.jobs.training_params: the Optuna search's trials
    return overrides


def preflight(overrides: dict[str, str], env: dict) -> dict:
    """Check the training parameters against the product's own (fails fast, before anything starts)."""
    checked = merlin(_MERLIN_PREFLIGHT, json.dumps(overrides), env=env)
    return {**checked, "overrides": overrides}


def served_top_k(settings, user_ids: list[int], k: int, concurrency: int,
                 exclude: Optional[dict[int, list[int]]] = None) -> tuple[dict[int, list[int]], float, str]:
    """Each user's top k from the served ``recsys`` model, ``concurrency`` gRPC requests in flight
    (``exclude``: items a user's request leaves out, through its context)."""
    import tritonclient.grpc as grpcclient

    from recsys.serving.client import MODEL, recommend_inputs, recommendation_arrays, served_contract
    from recsys.serving.schema import ITEM_IDS, SCORES
    from recsys.serving.triton_client import REQUEST_TIMEOUT_S, grpc_client

    first = grpc_client(settings)
    contract = served_contract(first, MODEL)  # batching and id kinds, as every caller reads them
    server_version = first.get_server_metadata().version
    local = threading.local()
    outputs = [grpcclient.InferRequestedOutput(t.name) for t in (ITEM_IDS, SCORES)]

    def one(user: int) -> list[int]:
        if not hasattr(local, "client"):
            local.client = grpc_client(settings)
        context = {"exclude_items": exclude[user]} if exclude and exclude.get(user) else None
        result = local.client.infer(MODEL, recommend_inputs(grpcclient, user, k, context, contract=contract),
                                    outputs=outputs, client_timeout=REQUEST_TIMEOUT_S)
        return recommendation_arrays(result, contract)[0].astype(np.int64).tolist()

    began = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        answers = dict(zip(user_ids, pool.map(one, user_ids)))
    seconds = time.perf_counter() - began
    first.close()
    return answers, seconds, server_version


NEW_USER_OFFSET = 10_000_000
"""The live replay's new users: test user u sends their events again as user u + this (unknown to the batch data)."""


def live_replay(settings, sessions: dict[int, list[int]], trained: dict[int, list[int]], k: int,
                concurrency: int) -> dict[str, Any]:
    """The recency signal, measured. Each test user's test ratings in time order: the first half arrives
    as live events (accepted and applied, as the API and the event worker do), the second half is what
    to find. Known users: the same users asked without the events (the first half left out through the
    request context) and after them (the live layer filters them and feeds them to retrieval). New users:
    the same events sent again under new ids, unknown to the batch data, asked before them (the
    popularity list) and after; both times the user's training ratings are left out through the context,
    since a newcomer's answer is not to be judged on what only the batch data knows."""
    from recsys.data import ids
    from recsys.events.live import apply_pending
    from recsys.online.redis_store import RedisOnlineStore
    from recsys.online.store import EventBatch

    first = {user: items[: len(items) // 2] for user, items in sessions.items()}
    users = sorted(first)
    newcomers = {user + NEW_USER_OFFSET: user for user in users}
    without, _, _ = served_top_k(settings, users, k, concurrency, exclude=first)
    new_without, _, _ = served_top_k(settings, sorted(newcomers), k, concurrency,
                                     exclude={n: trained.get(u, []) + first[u] for n, u in newcomers.items()})
    now_ms = int(time.time() * 1000)
    events = [(who, item, now_ms - 1000 * (len(items) - n)) for user, items in first.items()
              for who in (user, user + NEW_USER_OFFSET) for n, item in enumerate(items)]
    batch = EventBatch([str(u) for u, _, _ in events], [str(i) for _, i, _ in events], ["rating"] * len(events),
                       [t for _, _, t in events], [""] * len(events), ids.IdKinds())
    with RedisOnlineStore.from_settings(settings) as store:
        store.accept_events(batch)
        applied = apply_pending(store)
    with_live, _, _ = served_top_k(settings, users, k, concurrency)
    new_with, _, _ = served_top_k(settings, sorted(newcomers), k, concurrency,
                                  exclude={n: trained.get(u, []) for n, u in newcomers.items()})
    back = lambda answers: {newcomers[n]: items for n, items in answers.items()}  # noqa: E731
    return {"without": without, "with": with_live, "new_without": back(new_without), "new_with": back(new_with),
            "events": applied, "rest": {user: items[len(items) // 2:] for user, items in sessions.items()}}


def run_product(args, train_dir: Path, home: Path, checked: dict, timings: dict) -> dict:
    """The product from the MovieLens folder to served recommendations; returns its figures and lineage.

    ``checked``: :func:`preflight`'s answer (the training parameters, as the product resolved them).
    """
    from recsys import stack
    from recsys.tracking import runs

    settings = scratch_stack(home, args.validation_days)
    env = {**os.environ, **settings.as_env()}
    overrides = checked["overrides"]
    log(f"stack in {home}: Redis :{settings.redis_port}, MLflow :{settings.mlflow_port}, Triton gRPC :{settings.triton_grpc_port}")
    product: dict[str, Any] = {"train_params": checked["params"], "train_param_overrides": overrides,
                               "validation_days": settings.validation_days, "merlin_versions": checked["versions"]}
    with timed("stack_up", timings):
        stack.up(settings, only=["redis", "mlflow", "triton"])
    try:
        with timed("import", timings):
            run = subprocess.run([str(CONTROL_BIN / "recsys"), "data", "import-movielens", str(train_dir),
                                  "--out", str(settings.landing)], env=env, capture_output=True, text=True)
            if run.returncode != 0:
                raise SystemExit(f"recsys data import-movielens failed:\n{run.stdout}\n{run.stderr[-3000:]}")
        product["import"] = run.stdout.strip().splitlines()[:2]
        log(f"  import: {product['import'][0]} ({timings['import']} s)")
        airflow_run = f"bench_quality/{time.strftime('%Y%m%dT%H%M%S')}"
        served = serve_champion(None, checked["params"], airflow_run, "bench/quality.py", env, timings)
        data, features, trained = served["data"], served["features"], served["trained"]
        gate, published = served["gate"], served["published"]
        logged = runs.run_metrics(runs.client(settings.mlflow_uri), trained["run_id"])
        product.update({
            "data_version": data["data_version"], "feature_version": features["feature_version"],
            "feature_rows": features["rows"], "mlflow_run_id": trained["run_id"],
            "gate": gate["decisions"], "triton_model_version": published["version"],
            "own_validation_metrics": {k: round(float(v), 5) for k, v in sorted(logged.items())},
        })
        with timed("recommend", timings):
            answers, seconds, server_version = served_top_k(settings, args.test_user_ids, K, args.concurrency)
        product["requests"] = {"users": len(answers), "seconds": round(seconds, 2),
                               "per_second": round(len(answers) / seconds, 1), "concurrency": args.concurrency, "k": K}
        product["triton_server_version"] = server_version
        log(f"  {len(answers)} users' top {K} from Triton in {seconds:.1f} s ({len(answers) / seconds:.0f} req/s)")
        product["answers"] = answers
        with timed("live_replay", timings):
            product["live_replay"] = live_replay(settings, args.live_sessions, args.trained_items, K, args.concurrency)
        log(f"  live replay: {product['live_replay']['events']} events of {len(args.live_sessions)} users applied, "
            f"their top {K} asked without and with them ({timings['live_replay']} s)")
    finally:
        with timed("stack_down", timings):
            stack.down(settings)
    return product


# --- 5. the run --------------------------------------------------------------------------------------
def load_movielens(folder: Path) -> dict[str, Any]:
    """ratings/movies/tags as text (written back byte-faithfully for the product's importer)."""
    import pandas as pd

    frames = {}
    for name in ("ratings", "movies", "tags"):
        frames[name] = pd.read_csv(folder / f"{name}.csv", dtype=str, keep_default_na=False, encoding="utf-8")
    return frames


def write_training_folder(dst: Path, frames: dict, train_rows, source: Path) -> dict[str, int]:
    """The training ratings as a MovieLens folder: movies and tags filtered to them, the licence beside them."""
    import pandas as pd

    dst.mkdir(parents=True)
    ratings = frames["ratings"][train_rows]
    movies = frames["movies"][frames["movies"]["movieId"].isin(set(ratings["movieId"]))]
    pairs = pd.MultiIndex.from_frame(ratings[["userId", "movieId"]])
    tags = frames["tags"][pd.MultiIndex.from_frame(frames["tags"][["userId", "movieId"]]).isin(pairs)]
    ratings.to_csv(dst / "ratings.csv", index=False)
    movies.to_csv(dst / "movies.csv", index=False)
    tags.to_csv(dst / "tags.csv", index=False)
    shutil.copy2(source / "README.txt", dst / "README.txt")
    return {"ratings": len(ratings), "movies": len(movies), "tags": len(tags)}


def git_commit() -> dict[str, Any]:
    """The checkout measured: commit, and whether it had uncommitted changes."""
    def git(*argv: str) -> str:
        return subprocess.run(["git", "-C", str(ROOT), *argv], capture_output=True, text=True).stdout.strip()

    try:
        return {"commit": git("rev-parse", "HEAD"), "uncommitted_changes": bool(git("status", "--porcelain", "--untracked-files=no"))}
    except OSError:
        return {}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="ml-latest-small folder (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--test-share", type=float, default=0.25)
    parser.add_argument("--valid-share", type=float, default=0.10, help="peers' validation split of the training part")
    parser.add_argument("--quick", action="store_true", help="150 users and small grids, for development")
    parser.add_argument("--users", type=int, default=None, help="sample this many users (default: all; --quick: 150)")
    parser.add_argument("--train-param", action="append", default=[], metavar="KEY=VALUE",
                        help="product training parameter (recsys.jobs.training_params), e.g. epochs=10; repeatable")
    parser.add_argument("--tune", type=int, default=None, metavar="N",
                        help="run the product's hyper-parameter search first: N Optuna trials (tune_trials)")
    parser.add_argument("--validation-days", type=int, default=None,
                        help="the product's own time split (RECSYS_VALIDATION_DAYS; default: the product's setting). "
                        "ml-latest-small's last 7 days hold ~28 ratings of 7 users")
    parser.add_argument("--concurrency", type=int, default=8, help="requests in flight to Triton")
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (default: a new one under the temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder")
    parser.add_argument("--out", type=Path, default=None,
                        help="default: bench/results/quality.json (--quick: bench/results/quality-quick.json)")
    args = parser.parse_args()
    out = args.out or RESULTS / ("quality-quick.json" if args.quick else "quality.json")
    overrides = parse_train_params(args.train_param, args.tune)
    grid = GRIDS["quick" if args.quick else "full"]
    if not (args.data / "ratings.csv").is_file():
        raise SystemExit(f"error: {args.data} holds no ratings.csv (pass --data PATH to ml-latest-small)")
    # the training parameters first: a typo or an unsupported --tune fails now, before anything is written
    began = time.perf_counter()
    checked = preflight(overrides, dict(os.environ))
    preflight_seconds = round(time.perf_counter() - began, 2)
    scratch = (args.work or Path(tempfile.mkdtemp(prefix="recsys-bench-quality-"))).resolve()
    if scratch == ROOT or ROOT in scratch.parents:
        raise SystemExit(f"error: --work {scratch} is inside the repository; the data must stay outside it")
    scratch.mkdir(parents=True, exist_ok=True)
    for leftover in ("movielens-train", "home"):
        shutil.rmtree(scratch / leftover, ignore_errors=True)

    import pandas as pd

    started = time.perf_counter()
    result: dict[str, Any] = {
        "benchmark": "quality", "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "load_average_at_start": loadavg(),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "mode": "quick" if args.quick else "full", "seed": args.seed, "recsys_checkout": git_commit(),
    }
    timings: dict[str, float] = {}
    log(f"quality benchmark ({result['mode']}), load {result['load_average_at_start']}, scratch {scratch}")
    timings["preflight"] = preflight_seconds
    log(f"product training parameters: {_params(checked['params'])}")

    # -- the split
    with timed("split", timings):
        frames = load_movielens(args.data)
        ratings = frames["ratings"]
        user_of_row = ratings["userId"].astype(np.int64).to_numpy()
        rng = np.random.default_rng(args.seed)
        n_users = args.users or (150 if args.quick else None)
        if n_users:
            chosen = np.sort(rng.choice(np.unique(user_of_row), size=n_users, replace=False))
            keep = np.isin(user_of_row, chosen)
            frames["ratings"] = ratings = ratings[keep].reset_index(drop=True)
            user_of_row = user_of_row[keep]
        movie_of_row = ratings["movieId"].astype(np.int64).to_numpy()
        test = per_user_holdout(user_of_row, args.test_share, rng)
        counts = write_training_folder(scratch / "movielens-train", frames, ~test, args.data)
        users = np.unique(user_of_row)
        catalogue = np.unique(movie_of_row[~test])  # the movies with a training rating
        user_pos = pd.Index(users).get_indexer(user_of_row)
        item_pos = pd.Index(catalogue).get_indexer(movie_of_row)  # -1: a movie outside the catalogue
        full = build_split(user_pos, item_pos, test, len(users), len(catalogue))
        # the peers' validation split: carved from the training rows only
        train_idx = np.flatnonzero(~test)
        valid_held = per_user_holdout(user_of_row[train_idx], args.valid_share, rng)
        valid = build_split(user_pos[train_idx], item_pos[train_idx], valid_held, len(users), len(catalogue))
    result["split"] = {
        "data": str(args.data), "ratings": int(len(ratings)), "users": int(len(users)),
        "users_sampled": n_users, "test_share": args.test_share, "rounding": "half up, per user",
        "train_ratings": counts["ratings"], "test_ratings": int(test.sum()),
        "test_ratings_outside_catalogue": int((test & (item_pos < 0)).sum()),
        "catalogue_items": int(len(catalogue)), "test_users": len(full.relevant),
        "training_folder": {"movies": counts["movies"], "tags": counts["tags"]},
        "validation": {"share_of_training": args.valid_share, "held_out": int(valid_held.sum()),
                       "users": len(valid.relevant)},
    }
    log(f"split: {len(ratings):,} ratings of {len(users)} users -> {counts['ratings']:,} training, {int(test.sum()):,} test "
        f"({result['split']['test_ratings_outside_catalogue']} of movies outside the {len(catalogue):,}-movie catalogue)")

    # -- the peers
    log("peers (validation split of the training part for the parameters, then the whole training part)")
    result["peers"] = run_peers({"valid": valid, "full": full}, grid, args.seed, scratch, timings)

    # -- the product
    log("the product, end to end")
    args.test_user_ids = [int(users[u]) for u in sorted(full.relevant)]
    # each test user's catalogue test ratings in time order (the live replay's sessions), 2 or more of them
    tested = np.flatnonzero(test & (item_pos >= 0))
    seconds_of = ratings["timestamp"].astype(np.int64).to_numpy()
    ordered = tested[np.lexsort((seconds_of[tested], user_of_row[tested]))]
    sessions: dict[int, list[int]] = {}
    for row in ordered:
        sessions.setdefault(int(user_of_row[row]), []).append(int(movie_of_row[row]))
    args.live_sessions = {user: items for user, items in sessions.items() if len(items) >= 2}
    args.trained_items = {}
    for row in np.flatnonzero(~test):
        args.trained_items.setdefault(int(user_of_row[row]), []).append(int(movie_of_row[row]))
    product = run_product(args, scratch / "movielens-train", scratch / "home", checked, timings)
    answers = product.pop("answers")
    position = pd.Series(np.arange(len(catalogue)), index=catalogue)

    def as_lists(by_user: dict[int, list[int]]) -> dict[int, list[int]]:
        return {int(np.searchsorted(users, user)): [int(position.get(i, -1)) for i in items] for user, items in by_user.items()}

    lists = as_lists(answers)
    replay = product.pop("live_replay")
    rest = {int(np.searchsorted(users, user)): {int(position[i]) for i in items} for user, items in replay["rest"].items()}
    figures = {name: evaluate_lists(as_lists(replay[name]), rest, len(catalogue))
               for name in ("without", "with", "new_without", "new_with")}

    def ratio(a: dict, b: dict) -> dict:
        return {m: round(a[m] / b[m], 3) for m in ("recall_at_10", "ndcg_at_10") if b[m]}

    product["live_replay"] = {
        "what": "each test user's test ratings in time order: the first half sent as live events, the second half "
                "to find; known users, and the same events sent again under new ids (unknown to the batch data)",
        "users": len(rest), "events": replay["events"],
        "known_users": {"without_live_events": figures["without"], "with_live_events": figures["with"],
                        "with_over_without": ratio(figures["with"], figures["without"])},
        "new_users": {"popularity_before_events": figures["new_without"], "after_events": figures["new_with"],
                      "after_over_before": ratio(figures["new_with"], figures["new_without"])},
    }
    product["metrics"] = evaluate_lists(lists, full.relevant, len(catalogue))
    product["short_lists"] = int(sum(1 for items in lists.values() if len(items) < K))
    # the protocol's candidates exclude what the user rated in training; the served model filters them itself
    product["served_items_rated_in_training"] = int(sum(len(set(items) & set(full.seen(u).tolist())) for u, items in lists.items()))
    result["product"] = product

    # -- ratios and the record
    honest = {name: peer["validation_tuned"]["test"] for name, peer in result["peers"].items()}
    best = max(honest, key=lambda name: (honest[name]["recall_at_10"], honest[name]["ndcg_at_10"]))
    result["product_over_best_peer"] = {
        "best_peer": best, "basis": "validation-tuned peers",
        **{m: round(product["metrics"][m] / honest[best][m], 3) if honest[best][m] else None
           for m in ("recall_at_10", "ndcg_at_10", "coverage")},
    }
    result["earlier_reports_test_tuned"] = EARLIER_REPORTS
    result["seconds"] = {**timings, "total": round(time.perf_counter() - started, 1)}
    result["load_average_at_end"] = loadavg()
    result["finished_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    result["versions"] = versions(result)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(json.dumps(result, indent=2, default=str) + "\n")
    tmp.replace(out)
    print(table(result))
    log(f"wrote {out}")
    if not args.keep:
        shutil.rmtree(scratch, ignore_errors=True)


def versions(result: dict) -> dict[str, Any]:
    from importlib.metadata import version

    control = {name: version(name) for name in ("numpy", "pandas", "scipy", "mlflow", "tritonclient", "redis")}
    return {"control": control, "merlin": result["product"].get("merlin_versions", {}),
            "peers": {"implicit": result["peers"]["als"]["implicit_version"]},
            "triton_server": result["product"].get("triton_server_version")}


def table(result: dict) -> str:
    """The figures as a readable table."""
    rows = [("recsys (served by Triton)", result["product"]["metrics"], _params(result["product"]["train_params"]))]
    for name, label in (("popularity", "popularity"), ("ease", "EASE"), ("als", "implicit ALS")):
        peer = result["peers"][name]
        rows.append((f"{label}, validation-tuned", peer["validation_tuned"]["test"], _params(peer["validation_tuned"]["params"])))
        if name != "popularity":
            rows.append((f"{label}, test-tuned*", peer["test_tuned"]["test"], _params(peer["test_tuned"]["params"])))
    split = result["split"]
    lines = [
        f"quality on {Path(split['data']).name}: {split['users']} users, {split['catalogue_items']:,}-movie catalogue, "
        f"{split['train_ratings']:,} training / {split['test_ratings']:,} test ratings, seed {result['seed']}",
        f"{'method':<30}{'recall@10':>10}{'ndcg@10':>10}{'coverage':>10}  parameters",
    ]
    for label, m, params in rows:
        lines.append(f"{label:<30}{m['recall_at_10']:>10.4f}{m['ndcg_at_10']:>10.4f}{m['coverage']:>10.4f}  {params}")
    ratio = result["product_over_best_peer"]
    lines.append(f"* tuned on the test split itself (an upper bound; earlier reports quoted these: "
                 + ", ".join(f"{k} {v['recall_at_10']}/{v['ndcg_at_10']}" for k, v in result["earlier_reports_test_tuned"].items()) + ")")
    lines.append(f"recsys / best validation-tuned peer ({ratio['best_peer']}): recall@10 {ratio['recall_at_10']}, "
                 f"ndcg@10 {ratio['ndcg_at_10']}, coverage {ratio['coverage']}")
    replay = result["product"].get("live_replay")
    if replay:
        known, new = replay["known_users"], replay["new_users"]

        def pair(m: dict) -> str:
            return f"{m['recall_at_10']:.4f} / {m['ndcg_at_10']:.4f}"

        lines.append(f"live replay ({replay['users']} users, {replay['events']} events; the first half of each one's test "
                     f"ratings sent as live events, the second half to find), recall@10 / ndcg@10: known users without "
                     f"{pair(known['without_live_events'])}, with {pair(known['with_live_events'])} "
                     f"({known['with_over_without']}); the same events from new users: popularity before them "
                     f"{pair(new['popularity_before_events'])}, after {pair(new['after_events'])} ({new['after_over_before']})")
    ts = result["product"]["own_validation_metrics"]
    keys = ("pipeline_recall_at_10", "recall_at_10", "popularity_recall_at_10", "ndcg_at_10", "popularity_ndcg_at_10",
            "gap_recall_at_10", "auc", "gap_auc", "logloss")
    lines.append("recsys on its own validation split (as logged to MLflow; automatic split kind): " + ", ".join(f"{k} {ts[k]:.4f}" for k in keys if k in ts))
    seconds = result["seconds"]
    lines.append("seconds: " + ", ".join(f"{k} {v}" for k, v in seconds.items()))
    lines.append(f"load average: start {result['load_average_at_start']}, end {result['load_average_at_end']}")
    return "\n".join(lines)


def _params(params: dict) -> str:
    return " ".join(f"{k}={v}" for k, v in params.items()) or "-"


if __name__ == "__main__":
    main()
