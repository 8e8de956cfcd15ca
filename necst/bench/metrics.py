"""From per-packet labels and a detector's scored units to detection metrics.

A unit (window, flow or packet) is an attack unit when it holds at least one attack packet:
a window whose time span covers one, a flow one belongs to, the packet itself. Metrics are
computed over units: ROC AUC and PR AUC of the anomaly score, the TPR where the FPR is 0.001
(interpolated on the ROC curve, as scripts/eval_detect.py does), precision / recall / F1 of
the detector's own flags (its threshold and post-processing), and the detection delay: from
the first attack packet to the end of the first flagged attack unit.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd


def unit_labels(mode: str, units, scored: pd.DataFrame, ts_ns: np.ndarray, is_attack: np.ndarray) -> np.ndarray:
    if len(scored) == 0:
        return np.zeros(0, bool)
    if not is_attack.any():
        return np.zeros(len(scored), bool)
    if mode == "packet":
        return is_attack[scored["row"].to_numpy(np.int64)]
    if mode == "flow":
        return np.bincount(units.packet_unit, weights=is_attack.astype(float), minlength=len(scored)) > 0
    ats = np.sort(ts_ns[is_attack])
    lo = np.searchsorted(ats, scored["start_ns"].to_numpy(np.int64), side="left")
    hi = np.searchsorted(ats, scored["end_ns"].to_numpy(np.int64), side="left")
    return hi > lo


def _nan(x) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else float(x)


def detection_metrics(y: np.ndarray, score: np.ndarray, flag: np.ndarray, end_ns: np.ndarray,
                      attack_start_ns: int | None) -> dict:
    """Metrics of one detector on one capture (None where undefined, e.g. no attack unit)."""
    from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

    y = np.asarray(y, bool)
    flag = np.asarray(flag, bool)
    pos, neg = int(y.sum()), int((~y).sum())
    tp, fp = int((flag & y).sum()), int((flag & ~y).sum())
    out = {"units": int(len(y)), "attack_units": pos, "flagged": int(flag.sum()), "tp": tp, "fp": fp,
           "fpr": fp / neg if neg else None, "recall": tp / pos if pos else None,
           "precision": tp / (tp + fp) if tp + fp else None}
    p, r = out["precision"] or 0.0, out["recall"] or 0.0
    out["f1"] = (2 * p * r / (p + r) if p + r else 0.0) if pos else None
    if pos and neg:
        s = np.nan_to_num(np.asarray(score, float), nan=0.0, posinf=1e300)
        fpr, tpr, _ = roc_curve(y, s)
        out["roc_auc"] = float(roc_auc_score(y, s))
        out["pr_auc"] = float(average_precision_score(y, s))
        out["tpr_at_fpr_0.001"] = float(np.interp(0.001, fpr, tpr))
    else:
        out["roc_auc"] = out["pr_auc"] = out["tpr_at_fpr_0.001"] = None
    hit = np.flatnonzero(flag & y)
    if hit.size and attack_start_ns is not None:
        out["delay_s"] = max(0.0, float(end_ns[hit].min() - attack_start_ns) / 1e9)
    else:
        out["delay_s"] = None
    return {k: _nan(v) if isinstance(v, float) else v for k, v in out.items()}


def roc_points(y: np.ndarray, score: np.ndarray, max_points: int = 200) -> dict | None:
    """A thinned ROC curve for the report's plot."""
    from sklearn.metrics import roc_curve

    y = np.asarray(y, bool)
    if y.all() or not y.any():
        return None
    fpr, tpr, _ = roc_curve(y, np.nan_to_num(np.asarray(score, float), nan=0.0, posinf=1e300))
    keep = np.unique(np.r_[0, np.linspace(0, len(fpr) - 1, min(max_points, len(fpr))).astype(int), len(fpr) - 1])
    return {"fpr": fpr[keep].round(6).tolist(), "tpr": tpr[keep].round(6).tolist()}
