"""Packet mode: header features plus damped incremental statistics in the manner of Kitsune's AfterImage.

For each packet and each decay rate λ, AfterImage keeps, per key (source host, channel
src→dst, socket src:port→dst:port), the decayed weight w = Σ 2^(-λ Δt), and the decayed mean
and standard deviation of packet sizes; per channel also of inter-arrival times (jitter).
Kitsune updates these one packet at a time; here they are computed for whole arrays as a
segmented linear scan by recursive doubling (see :func:`damped_stats`): the Python loop runs
log2(longest run of one key) times, never once per packet.
(AfterImage's 2-D statistics between directions — magnitude, radius, covariance,
correlation — are not computed.)
"""
from __future__ import annotations

from typing import Dict, List

import numpy as np
import pandas as pd

from necst.detect.features import Units, dictionary_values, as_table, packet_arrays

LAMBDAS = (5.0, 1.0, 0.1)


def _directed_key(*parts: np.ndarray) -> np.ndarray:
    k = np.zeros(len(parts[0]), dtype=np.uint64)
    with np.errstate(over="ignore"):
        for p in parts:
            k = (k ^ (p.astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15))) * np.uint64(0xBF58476D1CE4E5B9)
    return k.view(np.int64)


def damped_stats(t_s: np.ndarray, key_codes: np.ndarray, n_keys: int, x: np.ndarray,
                 lambdas=LAMBDAS) -> Dict[str, np.ndarray]:
    """Per packet and λ: decayed weight, mean and std of ``x`` over earlier packets of its key (itself included).

    The recurrence S_i = 2^(-λ Δt) S_prev + [1, x, x²] per key is a linear scan; packets sorted
    by key are combined by recursive doubling (log2 of the longest key's run passes over the
    arrays), with the decay set to 0 where a key begins so no state leaks between keys. Every
    factor is at most 1, so nothing overflows and no large sums cancel.
    """
    n = len(t_s)
    lam = np.asarray(lambdas, dtype=np.float64)
    order = np.argsort(key_codes, kind="stable")
    ks, ts, xs = key_codes[order], t_s[order], x[order].astype(np.float64)
    same = np.r_[False, ks[1:] == ks[:-1]]
    dt = np.maximum(np.diff(np.r_[ts[:1], ts]), 0.0)
    A = np.where(same[:, None], np.exp2(-np.outer(dt, lam)), 0.0)  # (n, L)
    S = np.empty((n, 3, len(lam)))
    S[:, 0, :] = 1.0
    S[:, 1, :] = xs[:, None]
    S[:, 2, :] = (xs * xs)[:, None]
    A[A < 1e-30] = 0.0
    step = 1
    while step < n and A[step:].any():
        S[step:] += A[step:, None, :] * S[:-step]
        A[step:] *= A[:-step]
        A[A < 1e-30] = 0.0
        step *= 2
    out = np.empty_like(S)
    out[order] = S
    w = out[:, 0, :]
    mean = out[:, 1, :] / np.maximum(w, 1e-12)
    std = np.sqrt(np.abs(out[:, 2, :] / np.maximum(w, 1e-12) - mean * mean))
    res: Dict[str, np.ndarray] = {}
    for j, lm in enumerate(lambdas):
        res[f"w_l{lm:g}"] = w[:, j]
        res[f"mean_l{lm:g}"] = mean[:, j]
        res[f"std_l{lm:g}"] = std[:, j]
    return res


def packet_features(packets, lambdas=LAMBDAS) -> Units:
    t = as_table(packets)
    p = packet_arrays(t)
    n = p.n
    f: Dict[str, np.ndarray] = {}
    size = p.size.astype(np.float64)
    f["size"] = size
    f["tcp"] = (p.proto == 6).astype(float)
    f["udp"] = (p.proto == 17).astype(float)
    f["icmp"] = ((p.proto == 1) | (p.proto == 58)).astype(float)
    f["non_ip"] = (p.proto < 0).astype(float)
    for name, bit in (("syn", 0x002), ("ack", 0x010), ("rst", 0x004), ("fin", 0x001), ("psh", 0x008)):
        f[f"flag_{name}"] = ((p.flags & bit) != 0).astype(float)
    service = np.minimum(p.src_port, p.dst_port)
    f["service_low_port"] = ((service < 1024)).astype(float)
    f["service_none"] = (service >= 65536).astype(float)
    log_names = {"size"}
    if n:
        ts = (p.ts - p.ts[0]) / 1e9
        keys = {
            "host": _directed_key(p.src_ip),
            "channel": _directed_key(p.src_ip, p.dst_ip),
            "socket": _directed_key(p.src_ip, p.dst_ip, p.src_port, p.dst_port, p.proto),
        }
        for kname, key in keys.items():
            codes, uniq = pd.factorize(key, sort=False)
            for sname, arr in damped_stats(ts, codes, len(uniq), size, lambdas).items():
                f[f"{kname}_size_{sname}"] = arr
                log_names.add(f"{kname}_size_{sname}")
        # Jitter: time since the previous packet of the same channel (0 for the first).
        codes, uniq = pd.factorize(keys["channel"], sort=False)
        order = np.argsort(codes, kind="stable")
        gap = np.zeros(n)
        cs, tt = codes[order], ts[order]
        same = np.r_[False, cs[1:] == cs[:-1]]
        g = np.where(same, np.diff(np.r_[tt[0], tt]), 0.0)
        gap[order] = g
        for sname, arr in damped_stats(ts, codes, len(uniq), gap, lambdas).items():
            if sname.startswith("w_"):
                continue  # same weights as the channel's size statistics
            f[f"channel_jitter_{sname}"] = arr
            log_names.add(f"channel_jitter_{sname}")
    names = list(f.keys()) if n else _names(lambdas)
    X = np.column_stack([f[k] for k in names]) if n else np.empty((0, len(names)))
    src_vals, dst_vals = dictionary_values(t, "src_ip"), dictionary_values(t, "dst_ip")
    meta = pd.DataFrame({
        "start_ns": p.ts, "end_ns": p.ts, "row": p.order, "packets": np.ones(n, np.int64),
        "size": size,
        "src_ip": pd.Categorical.from_codes(p.src_ip, categories=pd.Index(src_vals).astype(str)) if n and len(src_vals) else None,
        "dst_ip": pd.Categorical.from_codes(p.dst_ip, categories=pd.Index(dst_vals).astype(str)) if n and len(dst_vals) else None,
        "src_port": np.where(p.src_port < 65536, p.src_port, -1),
        "dst_port": np.where(p.dst_port < 65536, p.dst_port, -1),
        "protocol": p.proto,
    })
    return Units("packet", meta, X.astype(np.float64), names, None,
                 frozenset(log_names if n else [k for k in names if "_w_" in k or "mean" in k or "std" in k] + ["size"]))


def _names(lambdas) -> List[str]:
    base = ["size", "tcp", "udp", "icmp", "non_ip", "flag_syn", "flag_ack", "flag_rst", "flag_fin", "flag_psh",
            "service_low_port", "service_none"]
    for k in ("host", "channel", "socket"):
        for lm in lambdas:
            base += [f"{k}_size_w_l{lm:g}", f"{k}_size_mean_l{lm:g}", f"{k}_size_std_l{lm:g}"]
    for lm in lambdas:
        base += [f"channel_jitter_mean_l{lm:g}", f"channel_jitter_std_l{lm:g}"]
    return base
