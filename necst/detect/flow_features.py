"""Flow mode: one unit per bidirectional flow, with NFStream's names, scored when the flow ends.

Flows are the table's own ``flow_id`` when the flow stage filled it; otherwise packets are
grouped here by bidirectional 5-tuple, a silence longer than ``idle_timeout_s`` starting a
new flow (NFStream's idle timeout). All per-flow figures are ``np.bincount`` sums over a
flow index, never a loop over flows.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from necst.detect.features import Units, as_table, column, dictionary_values, flow_keys, packet_arrays

FLOW_FEATURES = [
    "bidirectional_packets", "bidirectional_bytes", "bidirectional_duration_ms",
    "src2dst_packets", "src2dst_bytes", "dst2src_packets", "dst2src_bytes",
    "bidirectional_mean_ps", "bidirectional_stddev_ps", "bidirectional_min_ps", "bidirectional_max_ps",
    "bidirectional_mean_piat_ms", "bidirectional_stddev_piat_ms", "bidirectional_max_piat_ms",
    "syn_packets", "synack_packets", "rst_packets", "fin_packets", "psh_packets",
    "tcp", "udp", "icmp", "non_ip", "service_low_port", "remote_admin_port",
]
LOG_FLOW_FEATURES = {
    "bidirectional_packets", "bidirectional_bytes", "bidirectional_duration_ms", "src2dst_packets",
    "src2dst_bytes", "dst2src_packets", "dst2src_bytes", "bidirectional_mean_ps", "bidirectional_stddev_ps",
    "bidirectional_min_ps", "bidirectional_max_ps", "bidirectional_mean_piat_ms",
    "bidirectional_stddev_piat_ms", "bidirectional_max_piat_ms", "syn_packets", "synack_packets",
    "rst_packets", "fin_packets", "psh_packets",
}
_ADMIN = (21, 22, 23, 2323, 3389, 5900, 5938)


def flow_features(packets, idle_timeout_s: float = 120.0) -> Units:
    t = as_table(packets)
    p = packet_arrays(t)
    n = p.n
    if n == 0:
        return Units("flow", pd.DataFrame(columns=["start_ns", "end_ns"] + FLOW_FEATURES),
                     np.empty((0, len(FLOW_FEATURES))), list(FLOW_FEATURES), None, frozenset(LOG_FLOW_FEATURES))
    fid_col = column(t, "flow_id", -1, np.int64)[p.order]
    if (fid_col >= 0).all():
        key, split_idle = fid_col + (p.file << 40), False
    else:
        key, split_idle = flow_keys(p) ^ (p.file << 48), True
    order = np.lexsort((p.ts, key))
    k, ts = key[order], p.ts[order]
    start = np.r_[True, k[1:] != k[:-1]]
    if split_idle:
        start |= np.r_[True, np.diff(ts) > int(idle_timeout_s * 1e9)]
    fl = np.cumsum(start) - 1
    nf = int(fl[-1]) + 1
    first = np.flatnonzero(start)
    last = np.r_[first[1:], n] - 1
    size = p.size[order].astype(np.float64)
    sip, sport = p.src_ip[order], p.src_port[order]
    fwd = (sip == sip[first][fl]) & (sport == sport[first][fl])
    flags, proto = p.flags[order], p.proto[order]
    iat = np.where(start, 0.0, np.diff(np.r_[ts[:1], ts]) / 1e6)
    cnt = lambda w: np.bincount(fl, weights=w, minlength=nf)  # noqa: E731
    f = {}
    npk = cnt(None).astype(np.float64)
    f["bidirectional_packets"] = npk
    f["bidirectional_bytes"] = cnt(size)
    f["bidirectional_duration_ms"] = (ts[last] - ts[first]) / 1e6
    f["src2dst_packets"] = cnt(fwd.astype(float))
    f["src2dst_bytes"] = cnt(size * fwd)
    f["dst2src_packets"] = npk - f["src2dst_packets"]
    f["dst2src_bytes"] = f["bidirectional_bytes"] - f["src2dst_bytes"]
    mean = f["bidirectional_bytes"] / npk
    f["bidirectional_mean_ps"] = mean
    f["bidirectional_stddev_ps"] = np.sqrt(np.maximum(cnt(size * size) / npk - mean * mean, 0))
    f["bidirectional_min_ps"] = np.minimum.reduceat(size, first)
    f["bidirectional_max_ps"] = np.maximum.reduceat(size, first)
    ni = np.maximum(npk - 1, 1)
    im = cnt(iat) / ni
    f["bidirectional_mean_piat_ms"] = im
    f["bidirectional_stddev_piat_ms"] = np.sqrt(np.maximum(cnt(iat * iat * ~start) / ni - im * im, 0))
    f["bidirectional_max_piat_ms"] = np.maximum.reduceat(iat, first)
    tcp = proto == 6
    syn, ack = (flags & 0x002) != 0, (flags & 0x010) != 0
    f["syn_packets"] = cnt((tcp & syn & ~ack).astype(float))
    f["synack_packets"] = cnt((tcp & syn & ack).astype(float))
    f["rst_packets"] = cnt((tcp & ((flags & 0x004) != 0)).astype(float))
    f["fin_packets"] = cnt((tcp & ((flags & 0x001) != 0)).astype(float))
    f["psh_packets"] = cnt((tcp & ((flags & 0x008) != 0)).astype(float))
    fp = proto[first]
    f["tcp"] = (fp == 6).astype(float)
    f["udp"] = (fp == 17).astype(float)
    f["icmp"] = ((fp == 1) | (fp == 58)).astype(float)
    f["non_ip"] = (fp < 0).astype(float)
    service = np.minimum(sport[first], p.dst_port[order][first])
    f["service_low_port"] = (service < 1024).astype(float)
    f["remote_admin_port"] = np.isin(service, _ADMIN).astype(float)
    src_vals, dst_vals = dictionary_values(t, "src_ip"), dictionary_values(t, "dst_ip")

    def ip(codes, vals):
        if not len(vals):
            return None
        return pd.Categorical.from_codes(codes, categories=pd.Index(vals).astype(str))

    meta = pd.DataFrame({
        "start_ns": ts[first], "end_ns": ts[last], "packets": npk.astype(np.int64),
        "src_ip": ip(sip[first], src_vals), "dst_ip": ip(p.dst_ip[order][first], dst_vals),
        "src_port": np.where(sport[first] < 65536, sport[first], -1),
        "dst_port": np.where(p.dst_port[order][first] < 65536, p.dst_port[order][first], -1),
        "protocol": fp,
    })
    for name in FLOW_FEATURES:
        meta[name] = f[name]
    # Scored when the flow ends: units in order of their last packet.
    by_end = np.argsort(meta["end_ns"].to_numpy(), kind="stable")
    meta = meta.iloc[by_end].reset_index(drop=True)
    X = np.column_stack([f[k] for k in FLOW_FEATURES])[by_end]
    rank = np.empty(nf, dtype=np.int64)
    rank[by_end] = np.arange(nf)
    packet_unit = np.empty(n, dtype=np.int64)
    packet_unit[p.order[order]] = rank[fl]  # the flow unit of each input row
    return Units("flow", meta, X.astype(np.float64), list(FLOW_FEATURES), packet_unit,
                 frozenset(LOG_FLOW_FEATURES))
