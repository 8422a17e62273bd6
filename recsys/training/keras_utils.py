"""Small TensorFlow helpers shared by the retrieval and ranking trainers (Merlin runtime only).

Import this module only inside functions that already need TensorFlow.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Callable, Optional

import numpy as np
import pandas as pd
import tensorflow as tf

log = logging.getLogger(__name__)


def configure_tensorflow(seed: int, threads: Optional[int] = None) -> None:
    """Seed python/numpy/TF, ask for deterministic ops, and size TF's thread pools.

    Thread pools can only be set before TensorFlow runs its first op; later calls keep the
    existing pools (logged) but still reseed.
    """
    threads = threads or max(1, os.cpu_count() or 1)
    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        # one inter-op thread: the graphs are narrow, and other processes share the cores
        tf.config.threading.set_inter_op_parallelism_threads(1)
    except RuntimeError:
        log.debug("TensorFlow already initialised; keeping its thread pools")
    tf.keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()


def device_name() -> str:
    """'GPU' when TensorFlow sees one, else 'CPU'."""
    return "GPU" if tf.config.list_physical_devices("GPU") else "CPU"


def frame_to_inputs(frame: pd.DataFrame, columns: list[str]) -> dict[str, tf.Tensor]:
    """Model inputs as the exported signatures expect them: floats as float32, the rest as int64."""
    inputs = {}
    for column in columns:
        values = frame[column].to_numpy()
        dtype = tf.float32 if np.issubdtype(values.dtype, np.floating) else tf.int64
        inputs[column] = tf.constant(values, dtype=dtype)
    return inputs


def batched_call(
    layer: Callable, frame: pd.DataFrame, columns: list[str], batch_size: int = 8192
) -> np.ndarray:
    """Call a Keras layer/model (or a reloaded SavedModel) on ``frame`` in batches; rows in order."""
    outputs = []
    for start in range(0, len(frame), batch_size):
        out = layer(frame_to_inputs(frame.iloc[start : start + batch_size], columns))
        if isinstance(out, dict):  # a reloaded SavedModel may name its single output
            (out,) = out.values()
        outputs.append(np.asarray(out))
    return np.concatenate(outputs) if outputs else np.zeros((0,), dtype=np.float32)


class EpochTimer(tf.keras.callbacks.Callback):
    """Records each epoch's wall time (only the fit part; put it first among the callbacks)."""

    def __init__(self) -> None:
        super().__init__()
        self.seconds: list[float] = []
        self._start = 0.0

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds.append(time.perf_counter() - self._start)

    def samples_per_second(self, samples_per_epoch: int) -> float:
        """Steady-state throughput: the first epoch (graph tracing) is left out when there are more."""
        steady = self.seconds[1:] if len(self.seconds) > 1 else self.seconds
        return samples_per_epoch * len(steady) / max(sum(steady), 1e-9)


class ProgressLogger(tf.keras.callbacks.Callback):
    """One log line per epoch: the model name, the epoch's metrics and its throughput."""

    def __init__(self, name: str, epochs: int, samples_per_epoch: int, timer: EpochTimer) -> None:
        super().__init__()
        self.name, self.epochs, self.samples, self.timer = name, epochs, samples_per_epoch, timer

    def on_epoch_end(self, epoch, logs=None):
        seconds = self.timer.seconds[-1] if self.timer.seconds else float("nan")
        shown = ", ".join(
            f"{k}={v:.4f}" for k, v in sorted((logs or {}).items()) if "batch" not in k and "regularization" not in k
        )
        log.info(
            "%s epoch %d/%d: %s (%d samples in %.1fs, %.0f samples/s)",
            self.name, epoch + 1, self.epochs, shown, self.samples, seconds, self.samples / max(seconds, 1e-9),
        )


def clean_history(history: dict[str, list]) -> dict[str, list[float]]:
    """Keras history without the per-batch and regularisation series, as plain floats."""
    return {
        name: [float(v) for v in values]
        for name, values in history.items()
        if "loss_batch" not in name and "regularization_loss" not in name
    }
