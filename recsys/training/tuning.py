"""Hyperparameter search with Optuna: per-model parameters chosen on the validation rows, within a budget.

Each trial samples one value of every tunable parameter for each model (retrieval and ranking have their
own: their best learning rates and regularization differ), fits both with early stopping on the
training rows, and scores them on the validation rows (recall@10, AUC). Trials that fall behind the
median of earlier ones at the same epoch are pruned (Optuna's ``MedianPruner``, fed after every epoch).
The study's objective is the retrieval metric (the champion gate's); each model's parameters are taken
from the trial where *that* model scored best. A trial is one dict handed to ``on_trial`` (the training
job logs it as an MLflow child run); the search stops after ``trials`` trials or ``timeout_seconds``,
whichever comes first, and always keeps the trial with the settings' defaults first, so tuning can
only improve on them.

Sampling ranges (log scale where marked); ``batch_size`` 0 is the automatic size:
``learning_rate`` 1e-3..3e-2 (log), ``l2_reg`` 1e-8..1e-4 (log), ``dropout`` 0..0.5,
``embedding_dim`` 32/64/128, ``batch_size`` 0 or a half / double of the automatic size.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable, Optional

log = logging.getLogger(__name__)

SEARCH_SPACE = ("learning_rate", "l2_reg", "dropout", "embedding_dim", "batch_size")


class _Pruned(Exception):
    pass


def tune(
    data,
    base,
    *,
    trials: int,
    timeout_seconds: Optional[float] = None,
    on_trial: Optional[Callable[[dict[str, Any]], None]] = None,
) -> tuple[Any, dict[str, Any]]:
    """Search per-model parameters; returns (``base`` with ``overrides`` set, a summary for metrics.json).

    ``data``: :class:`recsys.training.pipeline.TrainingData`; ``base``: the
    :class:`~recsys.training.pipeline.TrainParams` whose values are the first trial and the fallback.
    """
    import dataclasses

    import optuna

    from recsys.training.keras_utils import auto_batch_size, configure_tensorflow
    from recsys.training.ranking import fit_dlrm, ranking_frames
    from recsys.training.retrieval import PRIMARY_METRIC, fit_two_tower, positives_of, user_histories

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    fv = data.fv
    positives = positives_of(fv, data.train, fv.path / "train", base)
    train_rows, valid_rows = ranking_frames(fv, data.train, data.valid, data.items, base)
    auto = {"retrieval": auto_batch_size(len(positives)), "ranking": auto_batch_size(len(train_rows))}
    users = user_histories(fv, data.train, data.users, base)

    def sample(trial, model: str) -> dict[str, Any]:
        p = f"{model}."
        return {
            "learning_rate": trial.suggest_float(p + "learning_rate", 1e-3, 3e-2, log=True),
            "l2_reg": trial.suggest_float(p + "l2_reg", 1e-8, 1e-4, log=True),
            "dropout": trial.suggest_float(p + "dropout", 0.0, 0.5),
            "embedding_dim": trial.suggest_categorical(p + "embedding_dim", [32, 64, 128]),
            "batch_size": trial.suggest_categorical(p + "batch_size", [0, auto[model] // 2, auto[model] * 2]),
        }

    results: list[dict[str, Any]] = []
    started = time.monotonic()

    def objective(trial) -> float:
        values = {model: sample(trial, model) for model in ("retrieval", "ranking")}
        record: dict[str, Any] = {"number": trial.number, "params": values, "metrics": {}, "state": "complete",
                                  "epochs": {}}
        began = time.monotonic()

        def report(epoch: int, value: float) -> None:
            trial.report(value, epoch)
            if trial.should_prune():
                raise _Pruned(f"pruned at epoch {epoch + 1} ({PRIMARY_METRIC} {value:.4f})")

        try:
            configure_tensorflow(base.seed)
            params = dataclasses.replace(base, overrides=values)
            retrieval = fit_two_tower(fv, positives, params.for_model("retrieval"), epochs=base.epochs,
                                      protocol=data.protocol, users=users, items=data.items, on_epoch=report,
                                      name=f"trial {trial.number} retrieval")
            record["metrics"][PRIMARY_METRIC] = retrieval.metrics[PRIMARY_METRIC]
            record["metrics"]["ndcg_at_10"] = retrieval.metrics["ndcg_at_10"]
            record["epochs"]["retrieval"] = retrieval.stopping["best_epoch"]
            ranking = fit_dlrm(fv, train_rows, params.for_model("ranking"), epochs=base.epochs, valid_rows=valid_rows,
                               name=f"trial {trial.number} ranking")
            record["metrics"]["auc"] = ranking.metrics["auc"]
            record["epochs"]["ranking"] = ranking.stopping["best_epoch"]
        except _Pruned as exc:
            record["state"] = "pruned"
            record["reason"] = str(exc)
        record["seconds"] = time.monotonic() - began
        results.append(record)
        log.info("tuning trial %d %s in %.0fs: %s", trial.number, record["state"], record["seconds"], record["metrics"])
        if on_trial is not None:
            on_trial(record)
        if record["state"] == "pruned":
            raise optuna.TrialPruned(record["reason"])
        return record["metrics"][PRIMARY_METRIC]

    study = optuna.create_study(
        direction="maximize",
        sampler=optuna.samplers.TPESampler(seed=base.seed),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=2),
    )
    # The settings' values first: tuning can only improve on what training without it would do.
    defaults = {"learning_rate": base.learning_rate, "l2_reg": max(base.l2_reg, 1e-8), "dropout": base.dropout,
                "embedding_dim": base.embedding_dim if base.embedding_dim in (32, 64, 128) else 64, "batch_size": 0}
    study.enqueue_trial({f"{m}.{k}": v for m in ("retrieval", "ranking") for k, v in defaults.items()})
    study.optimize(objective, n_trials=int(trials), timeout=timeout_seconds, catch=())

    complete = [r for r in results if r["state"] == "complete"]
    if not complete:
        log.warning("tuning: no trial completed; keeping the settings' parameters")
        return base, {"trials": len(results), "completed": 0, "seconds": time.monotonic() - started}
    best_retrieval = max(complete, key=lambda r: r["metrics"][PRIMARY_METRIC])
    best_ranking = max(complete, key=lambda r: r["metrics"]["auc"])
    overrides = {"retrieval": best_retrieval["params"]["retrieval"], "ranking": best_ranking["params"]["ranking"]}
    summary = {
        "trials": len(results),
        "completed": len(complete),
        "pruned": sum(r["state"] == "pruned" for r in results),
        "seconds": time.monotonic() - started,
        "timeout_seconds": timeout_seconds,
        "best": {"retrieval": {"trial": best_retrieval["number"], PRIMARY_METRIC: best_retrieval["metrics"][PRIMARY_METRIC]},
                 "ranking": {"trial": best_ranking["number"], "auc": best_ranking["metrics"]["auc"]}},
        "chosen": overrides,
    }
    log.info("tuning: %d trials (%d pruned) in %.0fs; chosen %s", summary["trials"], summary["pruned"], summary["seconds"], overrides)
    return dataclasses.replace(base, overrides=overrides), summary
