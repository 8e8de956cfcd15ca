"""Packet mode: header features plus damped incremental statistics in the manner of Kitsune's AfterImage.

For each packet and each decay rate λ, AfterImage keeps, per key (source host, channel
src→dst, socket src:port→dst:port), the decayed weight w = Σ 2^(-λ Δt), and the decayed mean
and standard deviation of packet sizes; per channel also of inter-arrival times (jitter).
Kitsune updates these one packet at a time; here they are computed for whole arrays in closed
form, as cumulative sums per key of exponentially scaled terms (see :func:`damped_moments`),
never with a loop per packet.
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


_EPOCH_LOG2 = 800.0  # one epoch spans 800 halvings of a key's weight: scaled sums stay far from overflow


def _segmented_cumsum(Y: np.ndarray, starts: np.ndarray, long_run: int = 1024) -> np.ndarray:
    """Cumulative sums down ``Y``'s rows, restarting at each of ``starts`` (sorted, starting at 0).

    No running total crosses a segment, so a large segment cannot swamp a small one after it:
    long segments are summed one by one (a few slices), short ones padded into one matrix per
    power-of-two length and summed along its rows.
    """
    n = len(Y)
    length = np.diff(np.r_[starts, n])
    out = Y.copy()
    for s0, ln in zip(starts[length >= long_run].tolist(), length[length >= long_run].tolist()):
        np.cumsum(out[s0:s0 + ln], axis=0, out=out[s0:s0 + ln])
    short = (length > 1) & (length < long_run)
    if not short.any():
        return out
    cls = np.ceil(np.log2(length[short])).astype(np.int64)
    st, ln = starts[short], length[short]
    Yz = np.concatenate([Y, np.zeros((1,) + Y.shape[1:])])  # row n: the padding
    for c in np.unique(cls):
        sel = cls == c
        width = np.arange(1 << int(c))
        ok = width[None, :] < ln[sel, None]
        idx = np.where(ok, st[sel, None] + width[None, :], n)
        block = Yz[idx]
        np.cumsum(block, axis=1, out=block)
        out[idx[ok]] = block[ok]
    return out


def damped_moments(t_s: np.ndarray, key_codes: np.ndarray, xs: List[np.ndarray],
                   lambdas=LAMBDAS) -> List[Dict[str, np.ndarray]]:
    """Per packet, λ and value array in ``xs``: decayed weight, mean and std over the earlier packets
    of its key (itself included), as AfterImage's update S <- 2^(-λ Δt) S + [1, x, x²] gives them.

    Closed form: S_i = 2^(-λ t_i) Σ_{j<=i} 2^(λ t_j) [1, x_j, x_j²] over the key's packets, a
    cumulative sum. Time is cut into epochs of 800/λ seconds so the scaled terms stay within
    float range; a key's sums restart each epoch (see :func:`_segmented_cumsum`) and take over
    what its previous epoch left, decayed (an exact 2^-800 between two epochs' scales; older
    epochs weigh under 2^-800: nothing). Mean and std are ratios of the sums, so the scale
    cancels. Moments are taken about each key's first value, so a key whose values barely vary
    loses no digits.
    """
    n = len(t_s)
    order = np.argsort(key_codes, kind="stable")
    ks, ts = key_codes[order], np.asarray(t_s, dtype=np.float64)[order]
    kstart = np.r_[True, ks[1:] != ks[:-1]] if n else np.zeros(0, bool)
    key_of = np.cumsum(kstart) - 1
    first = np.flatnonzero(kstart)
    nv = len(xs)
    V = np.empty((n, 1 + 2 * nv))
    V[:, 0] = 1.0
    centre = np.empty((n, nv))
    for v, x in enumerate(xs):
        xo = np.asarray(x, dtype=np.float64)[order]
        centre[:, v] = xo[first][key_of]
        xc = xo - centre[:, v]
        V[:, 1 + 2 * v] = xc
        V[:, 2 + 2 * v] = xc * xc
    names = []
    R = np.empty((n, len(tuple(lambdas)) * (1 + 2 * nv)))
    col = 0
    for lm in lambdas:
        span = _EPOCH_LOG2 / lm
        ep = np.floor(ts / span)
        start = kstart | np.r_[True, ep[1:] != ep[:-1]]
        starts = np.flatnonzero(start)
        scale = np.exp2(lm * (ts - ep * span))  # 2^(halvings since the epoch began), below 2^800
        C = _segmented_cumsum(V * scale[:, None], starts)
        # What the key's previous epoch left, when that epoch is the one just before.
        prev = starts - 1
        carry = ~kstart[starts] & (ep[starts] == ep[np.maximum(prev, 0)] + 1)
        src = np.where(carry, prev, -1)[np.cumsum(start) - 1]
        has = np.flatnonzero(src >= 0)
        if len(has):
            C[has] += C[src[has]] * np.exp2(-_EPOCH_LOG2)
        R[:, col] = C[:, 0] / scale
        names.append(("w", lm, 0))
        col += 1
        w = C[:, 0]
        for v in range(nv):
            m = C[:, 1 + 2 * v] / w
            R[:, col + 1] = np.sqrt(np.abs(C[:, 2 + 2 * v] / w - m * m))
            m += centre[:, v]
            R[:, col] = m
            names += [("mean", lm, v), ("std", lm, v)]
            col += 2
    full = np.empty_like(R)
    full[order] = R  # back to packet order, whole rows at a time
    out: List[Dict[str, np.ndarray]] = [{} for _ in xs]
    for j, (stat, lm, v) in enumerate(names):
        for res in (out if stat == "w" else [out[v]]):
            res[f"{stat}_l{lm:g}"] = full[:, j]
    return out


def damped_stats(t_s: np.ndarray, key_codes: np.ndarray, n_keys: int, x: np.ndarray,
                 lambdas=LAMBDAS) -> Dict[str, np.ndarray]:
    """Per packet and λ: decayed weight, mean and std of ``x`` over earlier packets of its key (itself included)."""
    return damped_moments(t_s, key_codes, [x], lambdas)[0]


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
        # Jitter: time since the previous packet of the same channel (0 for the first).
        order = np.argsort(keys["channel"], kind="stable")
        gap = np.zeros(n)
        cs, tt = keys["channel"][order], ts[order]
        same = np.r_[False, cs[1:] == cs[:-1]]
        gap[order] = np.where(same, np.diff(np.r_[tt[0], tt]), 0.0)
        jitter = None
        for kname, key in keys.items():
            xs = [size, gap] if kname == "channel" else [size]
            stats = damped_moments(ts, key, xs, lambdas)
            for sname, arr in stats[0].items():
                f[f"{kname}_size_{sname}"] = arr
                log_names.add(f"{kname}_size_{sname}")
            if kname == "channel":
                jitter = stats[1]
        for sname, arr in jitter.items():
            if sname.startswith("w_"):
                continue  # same weights as the channel's size statistics
            f[f"channel_jitter_{sname}"] = arr
            log_names.add(f"channel_jitter_{sname}")
    names = list(f.keys()) if n else _names(lambdas)
    X = np.empty((n, len(names)), order="F")  # filled column by column: each write is contiguous
    for j, k in enumerate(names):
        if n:
            X[:, j] = f[k]
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
    return Units("packet", meta, X, names, None,
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
