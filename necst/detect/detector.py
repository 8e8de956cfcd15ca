"""The detectors: an autoencoder and two classic baselines behind one scikit-learn-style API.

``Detector(mode="window").fit(normal_packets)`` learns what normal traffic looks like;
``.score(packets)`` returns one row per unit (window, flow or packet) with its anomaly score,
its flag after post-processing, and the features that contribute most to the score;
``.save(dir)`` / ``Detector.load(dir)`` use the safe bundle (no pickle, hashes checked).

Persisting the baselines without pickle: scikit-learn's Isolation Forest and LOF are refitted
at load time from the scaled training matrix saved in the bundle (``train.npz``) with the saved
seed; both fits are deterministic for fixed data and seed, and a test checks that the reloaded
baseline gives identical scores.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Dict, List, Sequence

import numpy as np

from necst.bundle import BundleWriter, load as load_bundle
from necst.detect.features import MODES, Units, extract
from necst.detect.threshold import METHODS, PostProcess, fit_threshold, required_units
from necst.errors import BundleError, NecstError

if TYPE_CHECKING:
    import pandas as pd

BUNDLE_KIND = "detector"
MODE_DEFAULTS = {"window": {"width_s": 1.0, "stride_s": 0.5, "flow_idle_s": 120.0}, "packet": {}, "flow": {}}


def _concat_units(parts: List[Units]) -> Units:
    if len(parts) == 1:
        return parts[0]
    import pandas as pd

    return Units(parts[0].mode, pd.concat([u.meta for u in parts], ignore_index=True),
                 np.vstack([u.X for u in parts]), parts[0].names, None, parts[0].log_features)


class BaseDetector:
    """Features, scaling, threshold and post-processing shared by every detector."""

    kind = "base"

    def __init__(self, mode: str = "window", threshold: str = "quantile", q: float = 0.999, z: float = 4.0,
                 evt_risk: float = 1e-4, evt_init_q: float = 0.98, min_consecutive: int = 2,
                 cooldown: int = 0, min_attack_windows: int = 3, validation_fraction: float = 0.25,
                 feature_params: dict | None = None, clip: float = 20.0, top_k: int = 10, seed: int = 0):
        self.mode = mode
        self.threshold = threshold
        self.q, self.z, self.evt_risk, self.evt_init_q = q, z, evt_risk, evt_init_q
        self.min_consecutive, self.cooldown, self.min_attack_windows = min_consecutive, cooldown, min_attack_windows
        self.validation_fraction = validation_fraction
        self.feature_params = feature_params
        self.clip = clip
        self.top_k = top_k
        self.seed = seed

    # ------------------------------------------------------------ config
    def _check(self) -> None:
        if self.mode not in MODES:
            raise NecstError(f"unknown mode {self.mode!r}; choose one of {', '.join(MODES)}")
        if self.threshold not in METHODS:
            raise NecstError(f"unknown threshold method {self.threshold!r}; choose one of {', '.join(METHODS)}")

    def _fparams(self) -> dict:
        p = dict(MODE_DEFAULTS.get(self.mode, {}))
        p.update(self.feature_params or {})
        return p

    def get_params(self) -> dict:
        keys = ["mode", "threshold", "q", "z", "evt_risk", "evt_init_q", "min_consecutive", "cooldown",
                "min_attack_windows", "validation_fraction", "feature_params", "clip", "top_k", "seed"]
        return {k: getattr(self, k) for k in keys + list(self._model_param_names())}

    def _model_param_names(self) -> Sequence[str]:
        return ()

    @property
    def postprocess(self) -> PostProcess:
        return PostProcess(self.min_consecutive, self.cooldown, self.min_attack_windows)

    # ------------------------------------------------------------ features
    def features(self, packets) -> Units:
        """Units of ``packets`` (a table, or a list of tables never joined into one window)."""
        self._check()
        if isinstance(packets, (list, tuple)):
            return _concat_units([extract(p, self.mode, **self._fparams()) for p in packets])
        return extract(packets, self.mode, **self._fparams())

    # ------------------------------------------------------------ fit
    def fit(self, packets, units: Units | None = None) -> "BaseDetector":
        """Learn normal traffic; ``packets`` a PacketTable or a list of them (one per capture)."""
        from necst.detect.autoencoder import RobustScaler

        self._check()
        u = units if units is not None else self.features(packets)
        n = len(u)
        n_val = int(n * self.validation_fraction)
        need = required_units(self.threshold, q=self.q, evt_init_q=self.evt_init_q)
        if n_val < need:
            raise NecstError(
                f"threshold {self.threshold!r} needs at least {need} held-out normal {self.mode}s "
                f"(validation_fraction={self.validation_fraction} of {n} training units gives {n_val}); "
                f"train on at least {int(np.ceil(need / self.validation_fraction))} units of normal traffic")
        rng = np.random.default_rng(self.seed)
        perm = rng.permutation(n)
        val_idx, tr_idx = np.sort(perm[:n_val]), np.sort(perm[n_val:])
        self.feature_names_ = list(u.names)
        self.scaler_ = RobustScaler([nm in u.log_features for nm in u.names], clip=self.clip).fit(u.X[tr_idx])
        Xtr = self.scaler_.transform(u.X[tr_idx], clip_to_training=True)
        Xval = self.scaler_.transform(u.X[val_idx])
        self._fit_model(Xtr, Xval)
        val_scores, _ = self._scores(Xval)
        self.threshold_ = fit_threshold(val_scores, self.threshold, q=self.q, z=self.z,
                                        evt_init_q=self.evt_init_q, evt_risk=self.evt_risk)
        self.n_train_units_ = int(len(tr_idx))
        self.n_val_units_ = int(n_val)
        return self

    def _fit_model(self, Xtr: np.ndarray, Xval: np.ndarray) -> None:
        raise NotImplementedError

    def _scores(self, Xs: np.ndarray):
        """(score per unit, contribution per unit and feature) on scaled features."""
        raise NotImplementedError

    # ------------------------------------------------------------ score
    def _fitted(self) -> None:
        if not hasattr(self, "threshold_"):
            raise NecstError(f"this {type(self).__name__} is not fitted yet; call fit() or load()")

    def score_arrays(self, X: np.ndarray) -> Dict[str, np.ndarray]:
        """Per unit (rows of raw features ``X``): ``error``, ``flag``, and the three features with
        the largest share of the error (``top1_feature`` ... as column indices, ``top1_share`` ...).
        Plain numpy: the scoring path needs neither pandas nor TensorFlow."""
        self._fitted()
        n = len(X)
        out: Dict[str, np.ndarray] = {}
        if n == 0:
            out["error"], out["flag"] = np.empty(0), np.empty(0, dtype=bool)
            return out
        score, contrib = self._scores(self.scaler_.transform(X))
        out["error"] = score
        out["flag"] = self.postprocess.flags(score, self.threshold_["threshold"])
        k = min(3, contrib.shape[1])
        top = np.argpartition(-contrib, k - 1, axis=1)[:, :k] if k < contrib.shape[1] else \
            np.tile(np.arange(k), (n, 1))
        top = np.take_along_axis(top, np.argsort(-np.take_along_axis(contrib, top, axis=1), axis=1), axis=1)
        total = np.maximum(contrib.sum(axis=1, keepdims=True), 1e-12)
        share = np.take_along_axis(contrib, top, axis=1) / total
        for j in range(k):
            out[f"top{j + 1}_feature"] = top[:, j]
            out[f"top{j + 1}_share"] = share[:, j]
        return out

    def feature_name_array(self, idx: np.ndarray) -> np.ndarray:
        return np.asarray(self.feature_names_, dtype=object)[idx]

    def score_units(self, u: Units) -> "pd.DataFrame":
        self._fitted()
        if len(u) and list(u.names) != list(self.feature_names_):
            raise NecstError("features do not match the detector's (trained with another necst version?)")
        cols = self.score_arrays(u.X)
        out = u.meta.copy()
        for name, v in cols.items():
            out[name] = self.feature_name_array(v) if name.endswith("_feature") else v
        return out

    def score_columns(self, meta: Dict[str, np.ndarray], X: np.ndarray, names: Sequence[str]) -> Dict[str, np.ndarray]:
        """:meth:`score_units` without pandas: ``meta`` columns plus the scores, as a dict."""
        self._fitted()
        if len(X) and list(names) != list(self.feature_names_):
            raise NecstError("features do not match the detector's (trained with another necst version?)")
        out = dict(meta)
        for name, v in self.score_arrays(X).items():
            out[name] = self.feature_name_array(v) if name.endswith("_feature") else v
        return out

    def score(self, packets) -> "pd.DataFrame":
        """One row per unit: its time span, counts, features, ``error``, ``flag``, top features."""
        return self.score_units(self.features(packets))

    def decision(self, scored) -> str:
        """'attack detected' or 'normal', from scored units (a DataFrame or a dict of columns)."""
        return self.postprocess.decision(np.asarray(scored["flag"])) if len(scored["flag"]) else "normal"

    # ------------------------------------------------------------ persistence
    def save(self, path: str | Path, force: bool = False) -> Path:
        self._fitted()
        config = {
            "detector": self.kind, "params": self.get_params(), "feature_names": self.feature_names_,
            "threshold": self.threshold_, "n_train_units": self.n_train_units_,
            "n_val_units": self.n_val_units_,
        }
        with BundleWriter(path, kind=BUNDLE_KIND, config=config, force=force) as w:
            w.add_arrays("scaler.npz", **self.scaler_.to_arrays())
            self._save_model(w)
        return Path(path)

    def _save_model(self, writer: BundleWriter) -> None:
        raise NotImplementedError

    def _load_model(self, bundle) -> None:
        raise NotImplementedError

    @staticmethod
    def load(path: str | Path) -> "BaseDetector":
        """Any saved detector, its hashes and schema checked (BundleError otherwise)."""
        from necst.detect.autoencoder import RobustScaler

        b = load_bundle(path, kind=BUNDLE_KIND)
        cfg = b.config
        classes = {c.kind: c for c in (Detector, IsolationForestDetector, LOFDetector)}
        try:
            cls = classes[cfg["detector"]]
            det = cls(**cfg["params"])
            det.feature_names_ = list(cfg["feature_names"])
            det.threshold_ = dict(cfg["threshold"])
            det.n_train_units_ = int(cfg["n_train_units"])
            det.n_val_units_ = int(cfg["n_val_units"])
        except (KeyError, TypeError) as e:
            raise BundleError(f"detector configuration is incomplete ({e})", path) from None
        det.scaler_ = RobustScaler.from_arrays(b.arrays("scaler.npz"))
        det._load_model(b)
        return det


class Detector(BaseDetector):
    """The denoising autoencoder detector: score = mean squared reconstruction error."""

    kind = "autoencoder"

    def __init__(self, mode: str = "window", threshold: str = "quantile", hidden: Sequence[int] = (32, 8),
                 noise: float = 0.1, epochs: int = 60, batch_size: int = 128, patience: int = 5, **kw):
        super().__init__(mode=mode, threshold=threshold, **kw)
        self.hidden = list(hidden)
        self.noise, self.epochs, self.batch_size, self.patience = noise, epochs, batch_size, patience

    def _model_param_names(self):
        return ("hidden", "noise", "epochs", "batch_size", "patience")

    def _fit_model(self, Xtr, Xval) -> None:
        from necst.detect.autoencoder import dense_weights, train_autoencoder

        self.model_, self.history_ = train_autoencoder(
            Xtr, hidden=self.hidden, noise=self.noise, epochs=self.epochs, batch_size=self.batch_size,
            patience=self.patience, validation=Xval, seed=self.seed)
        self.weights_ = dense_weights(self.model_)

    def _scores(self, Xs):
        from necst.detect.autoencoder import forward

        sq = forward(self.weights_, Xs)
        sq -= Xs
        np.square(sq, out=sq)
        return sq.mean(axis=1, dtype=np.float64), sq

    def keras_model(self):
        """The Keras model (loaded from the bundle's .keras file when needed)."""
        if getattr(self, "model_", None) is None:
            import keras

            self.model_ = keras.saving.load_model(self._keras_path, compile=False, safe_mode=True)
        return self.model_

    def _save_model(self, w) -> None:
        w.add_arrays("weights.npz", **{f"w{i:02d}": a for i, a in enumerate(self.weights_)})
        w.add_file("model.keras", lambda p: self.keras_model().save(p))

    def _load_model(self, b) -> None:
        a = b.arrays("weights.npz")
        self.weights_ = [a[k] for k in sorted(a)]
        self._keras_path = str(b.file("model.keras"))
        self.model_ = None


class _TrainMatrixBaseline(BaseDetector):
    """Baselines refitted at load from the saved scaled training matrix (no pickle)."""

    def _fit_model(self, Xtr, Xval) -> None:
        self.train_X_ = np.asarray(Xtr, dtype=np.float64)
        self.model_ = self._make().fit(self.train_X_)

    def _scores(self, Xs):
        s = -self.model_.score_samples(Xs)
        # No reconstruction to explain by: the squared robust z-scores say which features are unusual.
        return s, Xs.astype(np.float64) ** 2

    def _save_model(self, w) -> None:
        w.add_arrays("train.npz", X=self.train_X_)

    def _load_model(self, b) -> None:
        self.train_X_ = b.arrays("train.npz")["X"]
        self.model_ = self._make().fit(self.train_X_)


class IsolationForestDetector(_TrainMatrixBaseline):
    kind = "isolation_forest"

    def __init__(self, mode: str = "window", threshold: str = "quantile", n_estimators: int = 200,
                 max_samples: int | str = "auto", **kw):
        super().__init__(mode=mode, threshold=threshold, **kw)
        self.n_estimators, self.max_samples = n_estimators, max_samples

    def _model_param_names(self):
        return ("n_estimators", "max_samples")

    def _make(self):
        from sklearn.ensemble import IsolationForest

        return IsolationForest(n_estimators=self.n_estimators, max_samples=self.max_samples,
                               random_state=self.seed, n_jobs=1)


class LOFDetector(_TrainMatrixBaseline):
    kind = "lof"

    def __init__(self, mode: str = "window", threshold: str = "quantile", n_neighbors: int = 20,
                 max_train: int = 20_000, **kw):
        super().__init__(mode=mode, threshold=threshold, **kw)
        self.n_neighbors, self.max_train = n_neighbors, max_train

    def _model_param_names(self):
        return ("n_neighbors", "max_train")

    def _fit_model(self, Xtr, Xval) -> None:
        # Duplicate points give zero reachability distances and unbounded LOF scores (quiet
        # networks repeat the same window many times): fit on the distinct rows.
        Xtr = np.unique(np.round(Xtr, 9), axis=0)
        if len(Xtr) > self.max_train:  # LOF is quadratic-ish: a seeded subsample of normal units
            Xtr = Xtr[np.sort(np.random.default_rng(self.seed).choice(len(Xtr), self.max_train, replace=False))]
        super()._fit_model(Xtr, Xval)

    def _make(self):
        from sklearn.neighbors import LocalOutlierFactor

        return LocalOutlierFactor(n_neighbors=self.n_neighbors, novelty=True)


DETECTORS = {"autoencoder": Detector, "isolation_forest": IsolationForestDetector, "lof": LOFDetector}


def load(path: str | Path) -> BaseDetector:
    return BaseDetector.load(path)
