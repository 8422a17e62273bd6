"""``recsys train``: train the two-tower and DLRM models on a feature version (Merlin runtime).

Imports nothing heavy at module level: in the control-plane environment the command re-runs
itself with the Merlin interpreter (:func:`recsys.runtime.run_in_merlin_runtime`).
"""

from __future__ import annotations

import argparse
from pathlib import Path

# (flag, TrainParams field, type); unset flags fall back to the settings' defaults.
_PARAM_FLAGS = [
    ("--epochs", "epochs", int),
    ("--batch-size", "batch_size", int),
    ("--embedding-dim", "embedding_dim", int),
    ("--learning-rate", "learning_rate", float),
    ("--negatives-per-positive", "negatives_per_positive", int),
    ("--seed", "seed", int),
]


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train two-tower retrieval and DLRM ranking on a feature version",
        description="Train both models on a feature version (docs/layouts.md section 3), evaluate them "
        "beside the popularity baseline, and write a run folder (section 4).",
    )
    parser.add_argument("--features", required=True, type=Path, help="feature version folder")
    parser.add_argument(
        "--out", type=Path, default=None, help="run folder to create (default: <home>/runs/<feature version>-<time>)"
    )
    for flag, name, kind in _PARAM_FLAGS:
        parser.add_argument(flag, dest=name, type=kind, default=None, help=f"default: settings.{name}")
    parser.set_defaults(func=_run_train)


def _run_train(args: argparse.Namespace) -> int:
    import time

    from recsys.runtime import in_merlin_runtime, run_in_merlin_runtime
    from recsys.settings import get_settings

    out = args.out or get_settings().runs_root / f"{args.features.resolve().name}-{time.strftime('%Y%m%dT%H%M%S')}"
    if not in_merlin_runtime():
        argv = ["train", "--features", str(args.features.resolve()), "--out", str(Path(out).resolve())]
        for flag, name, _kind in _PARAM_FLAGS:
            if getattr(args, name) is not None:
                argv += [flag, str(getattr(args, name))]
        return run_in_merlin_runtime(argv)

    import logging

    from recsys.training.pipeline import TrainParams, train_models

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    overrides = {name: getattr(args, name) for _f, name, _k in _PARAM_FLAGS if getattr(args, name) is not None}
    result = train_models(args.features, Path(out), TrainParams(**overrides))
    print(format_report(result.metrics, result.samples_per_second, result.device))
    print(f"run folder: {out}")
    return 0


def format_report(metrics: dict[str, float], samples_per_second: dict[str, float], device: str) -> str:
    """The final metrics as a small table: two-tower beside the popularity baseline, then DLRM."""
    lines = [f"{'metric':<16}{'two-tower':>12}{'popularity':>12}"]
    for key in ("recall_at_10", "recall_at_50", "recall_at_100", "ndcg_at_10"):
        lines.append(f"{key:<16}{metrics[key]:>12.4f}{metrics['popularity_' + key]:>12.4f}")
    lines.append(f"DLRM auc {metrics['auc']:.4f}, logloss {metrics['logloss']:.4f}")
    rates = ", ".join(f"{model} {rate:,.0f}" for model, rate in samples_per_second.items())
    lines.append(f"training samples/s on {device}: {rates}")
    return "\n".join(lines)
