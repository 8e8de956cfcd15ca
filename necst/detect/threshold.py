"""From anomaly scores on normal data to a threshold, and from flags to a decision.

Three ways to set the threshold from scores of held-out normal units:

- ``quantile``: the q-quantile of the scores (needs at least 1/(1-q) units to mean anything);
- ``gaussian_fit``: mean + z standard deviations of log scores (errors are near log-normal);
- ``evt``: peaks over threshold (SPOT, Siffer et al. 2017): a generalized Pareto tail fitted to
  the excesses over an initial high quantile, extrapolated to a risk level far past the data.

Post-processing turns per-unit flags into alerts: ``min_consecutive`` units in a row make an
alert (a run cut by the start or end of the capture counts whatever its length), alerts closer
than ``cooldown`` units merge into one, and a file is an attack when at least
``min_attack_windows`` units are flagged (all of them, when the capture has fewer units).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from necst.errors import NecstError

METHODS = ("quantile", "gaussian_fit", "evt")


def required_units(method: str, q: float = 0.999, evt_init_q: float = 0.98, evt_min_peaks: int = 10) -> int:
    if method == "quantile":
        return int(math.ceil(1.0 / (1.0 - q)))
    if method == "gaussian_fit":
        return 30
    if method == "evt":
        return int(math.ceil(evt_min_peaks / (1.0 - evt_init_q)))
    raise NecstError(f"unknown threshold method {method!r}; choose one of {', '.join(METHODS)}")


def fit_threshold(scores: np.ndarray, method: str = "quantile", q: float = 0.999, z: float = 4.0,
                  evt_init_q: float = 0.98, evt_risk: float = 1e-4, evt_min_peaks: int = 10) -> dict:
    """The threshold and how it was found, as a JSON-ready dict (``threshold``, ``method``, ...)."""
    s = np.asarray(scores, dtype=np.float64)
    s = s[np.isfinite(s)]
    need = required_units(method, q=q, evt_init_q=evt_init_q, evt_min_peaks=evt_min_peaks)
    if len(s) < need:
        raise NecstError(
            f"threshold {method!r} needs at least {need} normal units to fit, got {len(s)}; "
            "train on more normal traffic, use a smaller window stride, or another method")
    info: dict = {"method": method, "n_units": int(len(s))}
    if method == "quantile":
        thr = float(np.quantile(s, q))
        info.update(q=q)
    elif method == "gaussian_fit":
        ls = np.log(np.maximum(s, 1e-12))
        mu, sd = float(ls.mean()), float(ls.std())
        thr = float(np.exp(mu + z * sd))
        info.update(z=z, log_mean=mu, log_std=sd)
    else:
        from scipy.stats import genpareto

        t = float(np.quantile(s, evt_init_q))
        peaks = s[s > t] - t
        if len(peaks) < evt_min_peaks:
            raise NecstError(f"threshold 'evt' found only {len(peaks)} peaks over the initial quantile; "
                             f"needs {evt_min_peaks} (scores are too discrete)")
        xi, _, sigma = genpareto.fit(peaks, floc=0.0)
        r = evt_risk * len(s) / len(peaks)
        if abs(xi) < 1e-6:
            thr = t - sigma * math.log(r)
        else:
            thr = t + sigma / xi * (r ** (-xi) - 1.0)
        if not math.isfinite(thr):
            thr = float(s.max())
        info.update(init_quantile=evt_init_q, init_threshold=t, risk=evt_risk, shape=float(xi),
                    scale=float(sigma), peaks=int(len(peaks)))
    info["threshold"] = float(thr)
    return info


@dataclass
class PostProcess:
    min_consecutive: int = 1
    cooldown: int = 0
    min_attack_windows: int = 3

    def to_dict(self) -> dict:
        return asdict(self)

    def flags(self, scores: np.ndarray, threshold: float) -> np.ndarray:
        """Raw exceedances, keeping runs of at least ``min_consecutive`` units (or cut by either end)."""
        raw = np.asarray(scores) > threshold
        k = max(1, int(self.min_consecutive))
        if k == 1 or raw.size == 0:
            return raw
        edges = np.diff(np.r_[0, raw.astype(np.int8), 0])
        starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
        keep = np.zeros(raw.size + 1, dtype=np.int64)
        # A run cut by the start or end of the capture may be the visible part of a longer event.
        long = ((ends - starts) >= k) | (starts == 0) | (ends == raw.size)
        np.add.at(keep, starts[long], 1)
        np.add.at(keep, ends[long], -1)
        return np.cumsum(keep)[:-1] > 0

    def alerts(self, flags: np.ndarray) -> list[tuple[int, int]]:
        """(first, last) unit of each alert: flagged runs merged when fewer than ``cooldown`` units apart."""
        f = np.asarray(flags, dtype=np.int8)
        if not f.any():
            return []
        edges = np.diff(np.r_[0, f, 0])
        starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1) - 1
        gaps = starts[1:] - ends[:-1] - 1
        split = np.r_[True, gaps > self.cooldown]
        first = starts[split]
        last = ends[np.r_[split[1:], True]]
        return list(zip(first.tolist(), last.tolist()))

    def decision(self, flags: np.ndarray) -> str:
        """Attack when ``min_attack_windows`` units are flagged (or all of them, in a shorter capture)."""
        flags = np.asarray(flags)
        if flags.size == 0:
            return "normal"
        need = max(1, min(int(self.min_attack_windows), flags.size))
        return "attack detected" if int(np.sum(flags)) >= need else "normal"
