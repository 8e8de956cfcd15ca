"""The packet VAE: trained in Keras 3 (TensorFlow), run in numpy from its weights.

The network is a few small dense layers. Training needs Keras (its own ``train_step``, a
sampling layer, early stopping); using the trained network — encoding packets, decoding latent
points — runs the same layers in numpy, which is deterministic, needs no TensorFlow start (several
seconds) and lets a saved model load without Keras. ``.keras`` files of the encoder and the
decoder are kept as the portable form; a test checks both paths agree.

The decoder outputs logits for the whole feature matrix: a sigmoid per continuous column
(binary cross-entropy on [0, 1]) and a softmax per categorical block (cross-entropy).
"""
from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np


@dataclass
class DenseStack:
    """Dense layers as arrays: ReLU between them, the last one linear."""

    weights: list[np.ndarray]
    biases: list[np.ndarray]

    def __call__(self, X: np.ndarray) -> np.ndarray:
        h = np.asarray(X, dtype=np.float32)
        for i, (W, b) in enumerate(zip(self.weights, self.biases)):
            h = h @ W + b
            if i < len(self.weights) - 1:
                h = np.maximum(h, 0.0)
        return h

    def to_arrays(self, prefix: str) -> dict[str, np.ndarray]:
        out = {f"{prefix}layers": np.array(len(self.weights))}
        for i, (W, b) in enumerate(zip(self.weights, self.biases)):
            out[f"{prefix}W{i}"], out[f"{prefix}b{i}"] = W, b
        return out

    @classmethod
    def from_arrays(cls, arrays: dict, prefix: str) -> "DenseStack":
        n = int(arrays[f"{prefix}layers"])
        return cls([np.asarray(arrays[f"{prefix}W{i}"], dtype=np.float32) for i in range(n)],
                   [np.asarray(arrays[f"{prefix}b{i}"], dtype=np.float32) for i in range(n)])


@dataclass
class TrainedVAE:
    encoder: DenseStack  # features -> [mean | log_var]
    decoder: DenseStack  # latent -> logits
    history: dict = field(default_factory=dict)
    keras_files: dict = field(default_factory=dict)  # name -> bytes of the .keras file
    epochs_run: int = 0


def activate(logits: np.ndarray, n_continuous: int, blocks: Sequence[slice]) -> np.ndarray:
    """Sigmoid on the continuous columns, softmax within each categorical block."""
    out = np.empty_like(logits, dtype=np.float64)
    c = logits[:, :n_continuous].astype(np.float64)
    out[:, :n_continuous] = 1.0 / (1.0 + np.exp(-c))
    for s in blocks:
        z = logits[:, s].astype(np.float64)
        z = z - z.max(axis=1, keepdims=True)
        e = np.exp(z)
        out[:, s] = e / e.sum(axis=1, keepdims=True)
    return out


def train_vae(X: np.ndarray, n_continuous: int, blocks: Sequence[slice], *, latent_dim: int,
              hidden: Sequence[int], beta: float, epochs: int, batch_size: int, patience: int,
              validation_fraction: float, learning_rate: float, seed: int,
              verbose: int = 0) -> TrainedVAE:
    """Fit the VAE on the feature matrix ``X`` (rows already shuffled by the caller)."""
    import keras
    import tensorflow as tf
    from keras import ops

    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()
    n_features = X.shape[1]
    latent = int(latent_dim)
    blocks = [(s.start, s.stop) for s in blocks]

    inp = keras.Input((n_features,), name="features")
    h = inp
    for i, units in enumerate(hidden):
        h = keras.layers.Dense(units, activation="relu", name=f"enc{i}")(h)
    stats = keras.layers.Dense(2 * latent, name="mean_logvar")(h)
    encoder = keras.Model(inp, stats, name="packet_encoder")
    zin = keras.Input((latent,), name="latent")
    h = zin
    for i, units in enumerate(reversed(list(hidden))):
        h = keras.layers.Dense(units, activation="relu", name=f"dec{i}")(h)
    logits = keras.layers.Dense(n_features, name="logits")(h)
    decoder = keras.Model(zin, logits, name="packet_decoder")

    class Sampling(keras.layers.Layer):
        """z = mean + sigma * eps, eps from a seeded generator (the reparameterisation trick)."""

        def __init__(self, seed, **kwargs):
            super().__init__(**kwargs)
            self.seed_generator = keras.random.SeedGenerator(seed)

        def call(self, mean, log_var):
            eps = keras.random.normal(ops.shape(mean), seed=self.seed_generator)
            return mean + ops.exp(0.5 * log_var) * eps

    class VAE(keras.Model):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.encoder, self.decoder = encoder, decoder
            self.sampling = Sampling(seed)
            self.loss_tracker = keras.metrics.Mean(name="loss")
            self.rec_tracker = keras.metrics.Mean(name="reconstruction")
            self.kl_tracker = keras.metrics.Mean(name="kl")

        @property
        def metrics(self):
            return [self.loss_tracker, self.rec_tracker, self.kl_tracker]

        def _vae_losses(self, x, training):
            st = self.encoder(x, training=training)
            mean = st[:, :latent]
            log_var = ops.clip(st[:, latent:], -12.0, 8.0)
            z = self.sampling(mean, log_var)
            out = self.decoder(z, training=training)
            rec = 0.0
            if n_continuous:
                rec = ops.sum(ops.binary_crossentropy(x[:, :n_continuous], out[:, :n_continuous],
                                                      from_logits=True), axis=1)
            for a, b in blocks:
                rec = rec + ops.categorical_crossentropy(x[:, a:b], out[:, a:b], from_logits=True)
            kl = -0.5 * ops.sum(1.0 + log_var - ops.square(mean) - ops.exp(log_var), axis=1)
            rec, kl = ops.mean(rec), ops.mean(kl)
            return rec + beta * kl, rec, kl

        def _update_trackers(self, total, rec, kl):
            self.loss_tracker.update_state(total)
            self.rec_tracker.update_state(rec)
            self.kl_tracker.update_state(kl)
            return {m.name: m.result() for m in self.metrics}

        def train_step(self, data):
            x = data[0] if isinstance(data, (tuple, list)) else data
            with tf.GradientTape() as tape:
                total, rec, kl = self._vae_losses(x, True)
            grads = tape.gradient(total, self.trainable_weights)
            self.optimizer.apply_gradients(zip(grads, self.trainable_weights))
            return self._update_trackers(total, rec, kl)

        def test_step(self, data):
            x = data[0] if isinstance(data, (tuple, list)) else data
            return self._update_trackers(*self._vae_losses(x, False))

    X = np.asarray(X, dtype=np.float32)
    n_val = int(round(len(X) * validation_fraction)) if len(X) >= 50 else 0
    x_train, x_val = (X[:-n_val], X[-n_val:]) if n_val else (X, None)
    vae = VAE()
    vae.compile(optimizer=keras.optimizers.Adam(learning_rate))
    monitor = "val_loss" if x_val is not None else "loss"
    stop = keras.callbacks.EarlyStopping(monitor=monitor, patience=patience,
                                         restore_best_weights=True)
    fit = vae.fit(x_train, epochs=epochs, batch_size=batch_size, shuffle=True,
                  validation_data=x_val, callbacks=[stop], verbose=verbose)
    history = {k: [float(v) for v in vals] for k, vals in fit.history.items()}

    def stack(model) -> DenseStack:
        dense = [layer for layer in model.layers if isinstance(layer, keras.layers.Dense)]
        return DenseStack([np.asarray(layer.kernel.numpy(), dtype=np.float32) for layer in dense],
                          [np.asarray(layer.bias.numpy(), dtype=np.float32) for layer in dense])

    files = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, model in (("encoder", encoder), ("decoder", decoder)):
            path = Path(tmp) / f"{name}.keras"
            model.save(path)
            files[name] = path.read_bytes()
    return TrainedVAE(stack(encoder), stack(decoder), history, files,
                      epochs_run=len(history.get("loss", [])))


def keras_predict(keras_bytes: bytes, X: np.ndarray) -> np.ndarray:
    """Run a stored ``.keras`` model (for tests and users who want the Keras form)."""
    import keras

    fd, path = tempfile.mkstemp(suffix=".keras")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(keras_bytes)
        model = keras.models.load_model(path, compile=False)
        return np.asarray(model.predict(np.asarray(X, dtype=np.float32), verbose=0))
    finally:
        os.unlink(path)
