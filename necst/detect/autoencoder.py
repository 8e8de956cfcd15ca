"""Robust scaling and the denoising autoencoder (Keras 3) behind the detector.

Training runs in Keras (TensorFlow backend). Scoring runs the same dense layers in numpy from
the trained weights: the network is a few small matrices, and a numpy forward pass scores a
million windows in well under a second without TensorFlow's multi-second start. The ``.keras``
file stays in the bundle as the portable model; a test checks that both give the same output.
"""
from __future__ import annotations

from typing import Dict, List, Sequence

import numpy as np

from necst.errors import NecstError


class RobustScaler:
    """log1p on heavy-tailed counts, then (x - median) / spread, clipped to ±``clip``.

    The spread is the interquartile range, floored so that a feature constant in normal
    traffic (RST ratio 0) does not divide by zero yet still moves far when it changes.
    Quantile clipping: fitting sees the training data clipped to its [q_lo, q_hi] quantiles,
    so a few odd normal windows cannot stretch the scale; scoring clips only at ±clip, so an
    attack far outside the normal range still shows as a large error.
    """

    def __init__(self, log_mask: Sequence[bool], q_lo: float = 0.001, q_hi: float = 0.999,
                 floor: float = 0.05, clip: float = 20.0):
        self.log_mask = np.asarray(log_mask, dtype=bool)
        self.q_lo, self.q_hi, self.floor, self.clip = q_lo, q_hi, floor, clip

    def _pre(self, X: np.ndarray) -> np.ndarray:
        X = np.array(X, dtype=np.float64, copy=True)
        np.nan_to_num(X, copy=False, nan=0.0, posinf=0.0, neginf=0.0)
        for j in np.flatnonzero(self.log_mask):  # column by column: a column without negatives needs no sign work
            c = X[:, j]
            if len(c) and c.min() < 0:
                c[:] = np.copysign(np.log1p(np.abs(c)), c)
            else:
                np.log1p(c, out=c)
        return X

    def fit(self, X: np.ndarray) -> "RobustScaler":
        P = self._pre(X)
        self.lo_ = np.quantile(P, self.q_lo, axis=0)
        self.hi_ = np.quantile(P, self.q_hi, axis=0)
        C = np.clip(P, self.lo_, self.hi_)
        q25, self.center_, q75 = np.quantile(C, [0.25, 0.5, 0.75], axis=0)
        self.scale_ = np.maximum(q75 - q25, self.floor)
        return self

    def transform(self, X: np.ndarray, clip_to_training: bool = False) -> np.ndarray:
        P = self._pre(X)
        if clip_to_training:
            np.clip(P, self.lo_, self.hi_, out=P)
        P -= self.center_
        P /= self.scale_
        return np.clip(P, -self.clip, self.clip, out=P)

    def to_arrays(self) -> Dict[str, np.ndarray]:
        return {"log_mask": self.log_mask, "lo": self.lo_, "hi": self.hi_, "center": self.center_,
                "scale": self.scale_, "params": np.array([self.q_lo, self.q_hi, self.floor, self.clip])}

    @classmethod
    def from_arrays(cls, a: Dict[str, np.ndarray]) -> "RobustScaler":
        q_lo, q_hi, floor, clip = (float(v) for v in a["params"])
        s = cls(a["log_mask"], q_lo, q_hi, floor, clip)
        s.lo_, s.hi_, s.center_, s.scale_ = a["lo"], a["hi"], a["center"], a["scale"]
        return s


def build_autoencoder(n_features: int, hidden: Sequence[int], noise: float, seed: int):
    """Encoder ``hidden`` down to the bottleneck, mirrored decoder, linear output."""
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(seed)
    # Same data and seed, same weights: TF's threaded reductions are otherwise free to reorder.
    tf.config.experimental.enable_op_determinism()
    inp = keras.Input((n_features,), name="features")
    x = keras.layers.GaussianNoise(noise, seed=seed, name="denoise")(inp)
    for i, h in enumerate(hidden):
        x = keras.layers.Dense(h, activation="relu", name=f"enc{i}")(x)
    for i, h in enumerate(list(hidden[:-1])[::-1]):
        x = keras.layers.Dense(h, activation="relu", name=f"dec{i}")(x)
    out = keras.layers.Dense(n_features, name="reconstruction")(x)
    return keras.Model(inp, out, name="necst_detector_ae")


def train_autoencoder(X: np.ndarray, hidden: Sequence[int] = (32, 8), noise: float = 0.1,
                      epochs: int = 60, batch_size: int = 128, patience: int = 5,
                      validation: np.ndarray | None = None, seed: int = 0, verbose: int = 0):
    """Fit a denoising autoencoder (MSE, Adam, early stopping on the validation loss)."""
    import keras

    if len(X) < 2:
        raise NecstError(f"too few training units to fit an autoencoder ({len(X)})")
    model = build_autoencoder(X.shape[1], hidden, noise, seed)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="mse")
    val = validation if validation is not None and len(validation) else None
    cb = [keras.callbacks.EarlyStopping(monitor="val_loss" if val is not None else "loss",
                                        patience=patience, restore_best_weights=True)]
    hist = model.fit(X.astype("float32"), X.astype("float32"), epochs=epochs, batch_size=batch_size,
                     shuffle=True, verbose=verbose, callbacks=cb,
                     validation_data=None if val is None else (val.astype("float32"), val.astype("float32")))
    return model, {k: [float(v) for v in vals] for k, vals in hist.history.items()}


def dense_weights(model) -> List[np.ndarray]:
    """Kernels and biases of the dense layers, in order (noise layers have none)."""
    out: List[np.ndarray] = []
    for layer in model.layers:
        w = layer.get_weights()
        if w:
            out.extend(np.asarray(v, dtype=np.float32) for v in w)
    return out


def forward(weights: Sequence[np.ndarray], X: np.ndarray, batch: int = 16_384) -> np.ndarray:
    """Reconstruction in numpy: ReLU on every dense layer but the last (as built above).

    Blocks of rows small enough to stay in cache, on one BLAS thread: these matrices are tiny,
    and a multi-threaded BLAS spends more CPU waking its threads than multiplying.
    """
    try:  # scikit-learn's dependency, so normally present
        from threadpoolctl import threadpool_limits
        one_thread = threadpool_limits(1, user_api="blas")
    except ImportError:  # pragma: no cover
        from contextlib import nullcontext
        one_thread = nullcontext()

    X = np.asarray(X, dtype=np.float32)
    pairs = [(weights[i], weights[i + 1]) for i in range(0, len(weights), 2)]
    out = np.empty((len(X), pairs[-1][0].shape[1]), dtype=np.float32)
    with one_thread:
        for s in range(0, len(X), batch):
            h = X[s:s + batch]
            for j, (W, b) in enumerate(pairs):
                h = h @ W
                h += b
                if j < len(pairs) - 1:
                    np.maximum(h, 0, out=h)
            out[s:s + batch] = h
    return out
