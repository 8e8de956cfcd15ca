"""Can a classifier tell the two samples apart? Cross-validated ROC AUC on flow features.

0.5 means it cannot; 1.0 means every flow gives itself away. Gradient boosting on at most
``max_per_side`` flows per side (equal numbers, seeded) keeps it to seconds.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

CATEGORICAL = ("kind", "app", "end_reason")


def _encode_jointly(a: pd.DataFrame, b: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, list]:
    """Numeric matrices over the columns both sides have; labels get one code table for both."""
    cols = [c for c in a.columns if c in b.columns]
    xa, xb = [], []
    for c in cols:
        if c in CATEGORICAL:
            va = a[c].astype(object).fillna("<null>").astype(str)
            vb = b[c].astype(object).fillna("<null>").astype(str)
            cats = np.unique(np.concatenate([va.unique(), vb.unique()]))
            xa.append(np.searchsorted(cats, va.to_numpy()).astype(np.float64))
            xb.append(np.searchsorted(cats, vb.to_numpy()).astype(np.float64))
        else:
            xa.append(pd.to_numeric(a[c], errors="coerce").to_numpy(np.float64))
            xb.append(pd.to_numeric(b[c], errors="coerce").to_numpy(np.float64))
    if not cols:
        return np.zeros((len(a), 0)), np.zeros((len(b), 0)), cols
    return np.column_stack(xa), np.column_stack(xb), cols


def discriminator_auc(a: pd.DataFrame, b: pd.DataFrame, *, max_per_side: int = 20_000,
                      folds: int = 5, seed: int = 0, tells: bool = True) -> dict:
    """Mean and spread of the out-of-fold ROC AUC of a HistGradientBoostingClassifier that
    separates the rows of ``a`` from those of ``b``. ``auc`` is NaN when either side has too
    few flows to cross-validate."""
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold
    from threadpoolctl import threadpool_limits

    xa, xb, cols = _encode_jointly(a, b)
    n = min(len(xa), len(xb), max_per_side)
    result = {"auc": float("nan"), "auc_std": float("nan"), "flows_per_side": int(n),
              "features": cols, "folds": folds}
    if n < 2 * folds or not cols:
        return result
    rng = np.random.default_rng(seed)
    xa = xa[np.sort(rng.choice(len(xa), n, replace=False))]
    xb = xb[np.sort(rng.choice(len(xb), n, replace=False))]
    x = np.vstack([xa, xb])
    y = np.concatenate([np.zeros(n, dtype=np.int8), np.ones(n, dtype=np.int8)])
    aucs = []
    # One OpenMP thread: on a shared, busy machine more threads spin-wait and run 50x slower.
    with threadpool_limits(limits=1, user_api="openmp"):
        for train, test in StratifiedKFold(folds, shuffle=True, random_state=seed).split(x, y):
            clf = HistGradientBoostingClassifier(max_iter=100, learning_rate=0.1,
                                                 early_stopping=False, random_state=seed)
            clf.fit(x[train], y[train])
            aucs.append(roc_auc_score(y[test], clf.predict_proba(x[test])[:, 1]))
    result["auc"] = float(np.mean(aucs))
    result["auc_std"] = float(np.std(aucs))
    if tells:
        result["tells"] = _tells(x, y, cols, seed)
    return result


def _tells(x: np.ndarray, y: np.ndarray, cols: list, seed: int) -> dict:
    """Out-of-fold AUC of each feature alone, highest first: which features give a sample away
    (a generator's to-do list). Three folds of 30 rounds: one feature needs no more, and it
    keeps the whole list to a few seconds."""
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.metrics import roc_auc_score
    from threadpoolctl import threadpool_limits

    out = {}
    split = StratifiedKFold(3, shuffle=True, random_state=seed)
    with threadpool_limits(limits=1, user_api="openmp"):
        for j, c in enumerate(cols):
            clf = HistGradientBoostingClassifier(max_iter=30, early_stopping=False, random_state=seed)
            p = cross_val_predict(clf, x[:, [j]], y, cv=split, method="predict_proba")[:, 1]
            out[c] = float(roc_auc_score(y, p))
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))
