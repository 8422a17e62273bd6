"""The implicit-ALS peer of bench/quality.py: fits ``implicit``'s AlternatingLeastSquares, returns factors.

Runs in the peers environment (``.envs/peers/bin/python``; ``implicit`` is never imported by the
platform), started by bench/quality.py as a subprocess. It only fits: the parent ranks every
method's scores (here ``user_factors @ item_factors.T``) with the same code and metrics.

Input ``--matrices``: an ``.npz`` with one binary users x items CSR matrix per split
(``<split>_indptr``, ``<split>_indices``, ``<split>_shape``). ``--grid``: a JSON list of configs
(factors, regularization, iterations, alpha). ``--fits``: JSON ``[[split, config index], ...]``.
Output ``--out``: an ``.npz`` with ``<split>__<index>__users`` / ``__items`` factors; prints one JSON
line (versions, seconds per fit).

Usage: python bench/als_peer/als_peer.py --matrices M.npz --grid '[...]' --fits '[...]' --out F.npz [--seed 42]
"""

from __future__ import annotations

import os

# implicit's CPU solver runs its own threads; an OpenBLAS thread pool under it slows it down (its warning)
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402
from importlib.metadata import version  # noqa: E402

import numpy as np  # noqa: E402
import scipy.sparse as sp  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--matrices", required=True)
    parser.add_argument("--grid", required=True)
    parser.add_argument("--fits", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--threads", type=int, default=0, help="0: every core")
    args = parser.parse_args()

    from implicit.als import AlternatingLeastSquares

    stored = np.load(args.matrices)
    grid = json.loads(args.grid)
    matrices = {}
    out, seconds = {}, []
    for split, index in json.loads(args.fits):
        if split not in matrices:
            shape = tuple(int(n) for n in stored[f"{split}_shape"])
            indices = stored[f"{split}_indices"]
            matrices[split] = sp.csr_matrix((np.ones(len(indices), np.float32), indices, stored[f"{split}_indptr"]), shape=shape)
        config = grid[index]
        model = AlternatingLeastSquares(
            factors=int(config["factors"]), regularization=float(config["regularization"]),
            iterations=int(config["iterations"]), alpha=float(config["alpha"]),
            random_state=args.seed, num_threads=args.threads, calculate_training_loss=False,
        )
        began = time.perf_counter()
        model.fit(matrices[split], show_progress=False)
        seconds.append(round(time.perf_counter() - began, 3))
        out[f"{split}__{index}__users"] = np.asarray(model.user_factors, dtype=np.float32)
        out[f"{split}__{index}__items"] = np.asarray(model.item_factors, dtype=np.float32)
    np.savez(args.out, **out)
    print(json.dumps({"implicit": version("implicit"), "numpy": np.__version__, "fit_seconds": seconds}))


if __name__ == "__main__":
    main()
