"""Early stopping keeps the best epoch's weights, whether it stops early or reaches the last epoch."""

from __future__ import annotations

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

from recsys.training.keras_utils import BestEpoch, auto_batch_size  # noqa: E402


class Scripted(tf.keras.callbacks.Callback):
    """Puts the next value of a script into the logs as the monitored metric, and snapshots the weights."""

    def __init__(self, values):
        super().__init__()
        self.values, self.snapshots = list(values), []

    def on_epoch_end(self, epoch, logs=None):
        logs["val_score"] = self.values[epoch]
        self.snapshots.append([w.copy() for w in self.model.get_weights()])


def _fit(values, epochs, patience, mode="max"):
    tf.keras.utils.set_random_seed(0)
    model = tf.keras.Sequential([tf.keras.layers.Dense(3, input_shape=(4,)), tf.keras.layers.Dense(1)])
    model.compile(optimizer=tf.keras.optimizers.SGD(0.1), loss="mse")
    x, y = np.random.default_rng(0).normal(size=(64, 4)), np.random.default_rng(1).normal(size=(64, 1))
    script, stopping = Scripted(values), BestEpoch("val_score", mode, patience=patience)
    model.fit(x, y, epochs=epochs, verbose=0, callbacks=[script, stopping])
    return model, script, stopping


def _same(weights, snapshot):
    return all(np.array_equal(a, b) for a, b in zip(weights, snapshot))


def test_stops_after_patience_and_restores_the_best_epoch():
    model, script, stopping = _fit([0.10, 0.30, 0.20, 0.25, 0.15, 0.9, 0.9], epochs=7, patience=3)
    assert stopping.best_epoch == 2 and stopping.epochs_run == 5  # 3 epochs without a better value after epoch 2
    assert "did not improve on 0.3000 (epoch 2) for 3 epochs" in stopping.stop_reason
    assert _same(model.get_weights(), script.snapshots[1])  # epoch 2's weights, not epoch 5's
    assert not _same(model.get_weights(), script.snapshots[-1])


def test_reaching_the_last_epoch_also_restores_the_best_one():
    model, script, stopping = _fit([0.1, 0.5, 0.4], epochs=3, patience=5)
    assert (stopping.best_epoch, stopping.epochs_run) == (2, 3)
    assert stopping.stop_reason.startswith("reached the last epoch (3); best val_score 0.5000 at epoch 2")
    assert _same(model.get_weights(), script.snapshots[1])


def test_minimising_a_loss_and_no_patience():
    model, script, stopping = _fit([0.9, 0.5, 0.7, 0.8, 0.6], epochs=5, patience=0, mode="min")
    assert (stopping.best_epoch, stopping.epochs_run) == (2, 5)  # patience 0: never stops early
    assert _same(model.get_weights(), script.snapshots[1])
    with pytest.raises(KeyError, match="monitors 'val_missing'"):
        tf.keras.Sequential([tf.keras.layers.Dense(1, input_shape=(2,))]).compile(loss="mse") or BestEpoch(
            "val_missing").on_epoch_end(0, {"loss": 1.0})


def test_automatic_batch_size_scales_with_the_data():
    assert auto_batch_size(60_000) == 256  # ~235 steps per epoch
    assert auto_batch_size(250_000) == 1024
    assert auto_batch_size(10_000_000) == 8192  # capped: ~1,200 steps per epoch
    assert auto_batch_size(500) == 256  # floor
