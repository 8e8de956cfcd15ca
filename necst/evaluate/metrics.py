"""Distances between two samples, with the published definitions so numbers compare.

Every function returns a distance: 0 for identical inputs, larger for more different ones.

Jensen-Shannon, made explicit because papers differ: ``jsd`` is the Jensen-Shannon
*divergence* in nats, which is ``scipy.spatial.distance.jensenshannon(p, q)`` (the JS
*distance*, natural log) **squared**. It lies in [0, ln 2]; disjoint supports give
ln 2 ~= 0.693. This is NetShare's ``jsd`` (``distance.jensenshannon(p, q) ** 2``), so
figures compare with NetShare and the papers that reuse its evaluation code.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.spatial.distance import jensenshannon
from scipy.stats import wasserstein_distance

LN2 = float(np.log(2.0))


def _as_probabilities(p, q) -> tuple[np.ndarray, np.ndarray]:
    p = np.asarray(p, dtype=np.float64)
    q = np.asarray(q, dtype=np.float64)
    if p.shape != q.shape:
        raise ValueError(f"count vectors differ in length: {p.shape} vs {q.shape}")
    if p.sum() <= 0 or q.sum() <= 0:
        raise ValueError("a count vector sums to zero")
    return p / p.sum(), q / q.sum()


def jsd(p, q) -> float:
    """Squared JS distance (= JS divergence) in nats between two aligned count vectors."""
    p, q = _as_probabilities(p, q)
    d = float(jensenshannon(p, q, base=np.e)) ** 2
    return min(max(d, 0.0), LN2)  # clip float noise just outside [0, ln 2]


def total_variation(p, q) -> float:
    """Half the L1 distance between the two distributions, in [0, 1]."""
    p, q = _as_probabilities(p, q)
    return float(0.5 * np.abs(p - q).sum())


def hellinger(p, q) -> float:
    """sqrt(1/2 * sum (sqrt p - sqrt q)^2), in [0, 1]."""
    p, q = _as_probabilities(p, q)
    return float(np.sqrt(0.5 * np.square(np.sqrt(p) - np.sqrt(q)).sum()))


def counts_of(values) -> pd.Series:
    """Counts of each distinct value, nulls as their own category (a missing field is a fact)."""
    s = pd.Series(values)
    if isinstance(s.dtype, pd.CategoricalDtype):
        s = s.astype(object)
    return s.value_counts(dropna=False)


def align_counts(a: pd.Series, b: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """Two count series on the union of their supports (absent categories count 0)."""
    a = a.groupby(level=0, dropna=False).sum()  # merge duplicate keys (e.g. NaN and None)
    b = b.groupby(level=0, dropna=False).sum()
    index = a.index.union(b.index)
    return (a.reindex(index, fill_value=0).to_numpy(np.float64),
            b.reindex(index, fill_value=0).to_numpy(np.float64))


def categorical_distances(a_counts: pd.Series, b_counts: pd.Series) -> dict[str, float]:
    """JSD (squared JS distance, nats), total variation and Hellinger over one histogram."""
    p, q = align_counts(a_counts, b_counts)
    return {"jsd": jsd(p, q), "tv": total_variation(p, q), "hellinger": hellinger(p, q)}


def rank_jsd(a_counts, b_counts) -> float:
    """NetShare's popularity-rank JSD: each side's counts sorted descending, the shorter padded
    with zeros, then squared JS distance in nats. Which value has which rank does not matter;
    only the shape of the popularity curve does (so anonymised addresses compare fairly)."""
    a = np.sort(np.asarray(a_counts, dtype=np.float64))[::-1]
    b = np.sort(np.asarray(b_counts, dtype=np.float64))[::-1]
    n = max(len(a), len(b))
    a = np.pad(a, (0, n - len(a)))
    b = np.pad(b, (0, n - len(b)))
    return jsd(a, b)


def emd(a, b, a_weights=None, b_weights=None) -> float:
    """Wasserstein-1 distance between two empirical distributions (scipy), in the unit of the
    values; optional weights count repeated values. NaN when either side is empty."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    ka, kb = np.isfinite(a), np.isfinite(b)
    aw = None if a_weights is None else np.asarray(a_weights, dtype=np.float64)[ka]
    bw = None if b_weights is None else np.asarray(b_weights, dtype=np.float64)[kb]
    a, b = a[ka], b[kb]
    if len(a) == 0 or len(b) == 0:
        return float("nan")
    return float(wasserstein_distance(a, b, aw, bw))


def share_gap(a_share: float, b_share: float) -> float:
    """Absolute difference between two proportions (e.g. of flows that open with a handshake)."""
    if a_share is None or b_share is None or np.isnan(a_share) or np.isnan(b_share):
        return float("nan")
    return float(abs(a_share - b_share))
