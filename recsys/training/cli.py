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
    ("--patience", "patience", int),
    ("--batch-size", "batch_size", int),
    ("--embedding-dim", "embedding_dim", int),
    ("--learning-rate", "learning_rate", float),
    ("--lr-patience", "lr_patience", int),
    ("--l2-reg", "l2_reg", float),
    ("--dropout", "dropout", float),
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
    parser.add_argument("--no-refit", dest="refit", action="store_false", default=None,
                        help="export the early-stopped models instead of refitting on training + validation")
    parser.add_argument("--tune", type=int, default=None, metavar="N",
                        help="search hyperparameters with Optuna first: N trials (default: settings.tune_trials)")
    parser.add_argument("--tune-timeout", type=float, default=None, metavar="SECONDS",
                        help="stop the search after this long (default: settings.tune_timeout_seconds)")
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
        if args.refit is False:
            argv.append("--no-refit")
        for flag, value in (("--tune", args.tune), ("--tune-timeout", args.tune_timeout)):
            if value is not None:
                argv += [flag, str(value)]
        return run_in_merlin_runtime(argv)

    import logging

    from recsys.training.pipeline import TrainParams, train_models

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    overrides = {name: getattr(args, name) for _f, name, _k in _PARAM_FLAGS if getattr(args, name) is not None}
    if args.refit is False:
        overrides["refit"] = False
    settings = get_settings()
    result = train_models(
        args.features, Path(out), TrainParams(**overrides),
        tune_trials=args.tune if args.tune is not None else settings.tune_trials,
        tune_timeout_seconds=args.tune_timeout if args.tune_timeout is not None else settings.tune_timeout_seconds,
    )
    print(format_report(result.metrics, result.samples_per_second, result.device))
    for model, info in result.stopping.items():
        refit = f"; refitted on training + validation for {info['refit_epochs']} epochs" if info.get("refit_epochs") else ""
        print(f"{model}: {info.get('stop_reason', '')}{refit}")
    if result.tuning:
        print(f"tuning: {result.tuning.get('completed')} of {result.tuning.get('trials')} trials completed in "
              f"{result.tuning.get('seconds', 0):.0f}s; chosen {result.tuning.get('chosen')}")
    print(f"run folder: {out}")
    return 0


def format_report(metrics: dict[str, float], samples_per_second: dict[str, float], device: str) -> str:
    """The final metrics as a small table: two-tower beside the popularity baseline, then DLRM, and the
    train/validation gaps (a large gap: the model memorizes instead of generalizing)."""
    lines = [f"{'metric':<16}{'two-tower':>12}{'popularity':>12}"]
    for key in ("recall_at_10", "recall_at_50", "recall_at_100", "ndcg_at_10"):
        lines.append(f"{key:<16}{metrics[key]:>12.4f}{metrics['popularity_' + key]:>12.4f}")
    lines.append(f"DLRM auc {metrics['auc']:.4f}, logloss {metrics['logloss']:.4f}")
    if "train_recall_at_10" in metrics:
        lines.append(f"train vs validation: two-tower recall_at_10 {metrics['train_recall_at_10']:.4f} vs "
                     f"{metrics['recall_at_10']:.4f} (gap {metrics['gap_recall_at_10']:+.4f})")
    if "train_auc" in metrics:
        lines.append(f"train vs validation: DLRM auc {metrics['train_auc']:.4f} vs {metrics['auc']:.4f} "
                     f"(gap {metrics['gap_auc']:+.4f})")
    rates = ", ".join(f"{model} {rate:,.0f}" for model, rate in samples_per_second.items())
    lines.append(f"training samples/s on {device}: {rates}")
    return "\n".join(lines)
