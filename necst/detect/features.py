"""Detector features from a PacketTable: sliding windows, flows, or single packets.

Each ``*_features`` function returns a :class:`Units` — one row per scored unit (a window,
a flow or a packet) with its time span and packet count, the feature matrix, and the
feature names. Everything is whole-array numpy work: windows come from per-stride bins
(``np.bincount`` over bin ids) merged into overlapping windows; distinct counts, entropies and
fan-outs from hash grouping (``pd.factorize``) of packed (bin, value) keys, counted per bin and
then shifted into the windows each bin belongs to. Never a Python loop per packet.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from necst.errors import NecstError

MODES = ("window", "flow", "packet")

# Window features; the ones in LOG_FEATURES are heavy-tailed counts and enter the model as log1p.
WINDOW_FEATURES = [
    "packets", "bytes", "packets_per_s", "bytes_per_s",
    "src_ip_distinct", "dst_ip_distinct", "src_port_distinct", "dst_port_distinct",
    "src_ip_entropy", "dst_ip_entropy", "src_port_entropy", "dst_port_entropy",
    "syn_ratio", "synack_ratio", "rst_ratio", "fin_ratio",
    "tcp_share", "udp_share", "icmp_share", "other_ip_share", "non_ip_share",
    "size_mean", "size_std", "new_flows_per_s", "half_open_share",
    "web_share", "dns_share", "remote_admin_share", "other_service_share", "icmp_unreachable_share",
    "max_dst_ip_per_src", "max_dst_port_per_src",
]
LOG_FEATURES = {
    "packets", "bytes", "packets_per_s", "bytes_per_s", "src_ip_distinct", "dst_ip_distinct",
    "src_port_distinct", "dst_port_distinct", "size_mean", "size_std", "new_flows_per_s",
    "max_dst_ip_per_src", "max_dst_port_per_src",
}

_NO_PORT = 65536
# Service classes by the lower port of a packet: what a network uses is part of its normal.
_WEB_PORTS = (80, 443, 8080, 8443)
_DNS_PORTS = (53, 5353, 67, 68, 123)
_REMOTE_ADMIN_PORTS = (21, 22, 23, 2323, 3389, 5900, 5938)
_SYN, _ACK, _RST, _FIN = 0x002, 0x010, 0x004, 0x001


@dataclass
class Units:
    """Scored units: ``meta`` (start_ns, end_ns, packets, ...), ``X`` (float64), ``names``."""

    mode: str
    meta: pd.DataFrame
    X: np.ndarray
    names: List[str]
    # For evaluation: which unit each packet row falls in (windows: first window holding it).
    packet_unit: np.ndarray | None = field(default=None, repr=False)
    # Heavy-tailed features that enter the model as log1p.
    log_features: frozenset = frozenset()

    def __len__(self) -> int:
        return len(self.meta)


# ---------------------------------------------------------------- table access

def as_table(packets) -> pa.Table:
    """Accept a pyarrow Table (the PacketTable) or a pandas DataFrame with its column names."""
    if isinstance(packets, pa.Table):
        return packets
    if isinstance(packets, pd.DataFrame):
        return pa.Table.from_pandas(packets, preserve_index=False)
    raise NecstError(f"expected a PacketTable (pyarrow.Table) or DataFrame, got {type(packets).__name__}")


def column(table: pa.Table, name: str, fill, dtype) -> np.ndarray:
    """A column as a numpy array with nulls filled; a missing column is all ``fill``."""
    if name not in table.column_names:
        return np.full(table.num_rows, fill, dtype=dtype)
    col = table.column(name)
    if pa.types.is_integer(col.type) or pa.types.is_boolean(col.type):
        col = col.cast(pa.int64())
    if col.null_count:
        col = pc.fill_null(col, fill)
    return np.asarray(col.to_numpy(), dtype=dtype)


def codes(table: pa.Table, name: str, with_hash: bool = False):
    """Integer codes of a (dictionary) string column, -1 for null; equal strings, equal codes.

    With ``with_hash``, also a per-row uint64 hash of the string (0 for null) that, unlike the
    codes, is the same in every table: flow keys built on it stay valid across live batches.
    """
    n = table.num_rows
    if name not in table.column_names or n == 0:
        c = np.full(n, -1, dtype=np.int64)
        return (c, np.zeros(n, np.uint64)) if with_hash else c
    col = table.column(name)
    if not pa.types.is_dictionary(col.type):
        col = pc.dictionary_encode(col)
        if isinstance(col, pa.Array):
            col = pa.chunked_array([col])
    col = col.unify_dictionaries()
    parts = [np.asarray(pc.fill_null(c.indices, -1).to_numpy(zero_copy_only=False), dtype=np.int64)
             for c in col.chunks]
    c = np.concatenate(parts) if parts else np.empty(0, dtype=np.int64)
    if not with_hash:
        return c
    values = np.asarray(col.chunk(0).dictionary.to_pylist(), dtype=object)
    h = np.r_[pd.util.hash_array(values) if len(values) else np.empty(0, np.uint64), np.uint64(0)]
    return c, h[c]  # code -1 picks the trailing 0


def dictionary_values(table: pa.Table, name: str) -> np.ndarray:
    """The strings behind :func:`codes` (same unification), as an object array."""
    if name not in table.column_names or table.num_rows == 0:
        return np.empty(0, dtype=object)
    col = table.column(name)
    if not pa.types.is_dictionary(col.type):
        col = pc.dictionary_encode(col)
        if isinstance(col, pa.Array):
            col = pa.chunked_array([col])
    col = col.unify_dictionaries()
    return np.asarray(col.chunk(0).dictionary.to_pylist(), dtype=object) if col.num_chunks else np.empty(0, object)


@dataclass
class PacketArrays:
    """The handful of columns every mode needs, as plain numpy arrays sorted by time."""

    ts: np.ndarray
    size: np.ndarray
    file: np.ndarray
    src_ip: np.ndarray
    dst_ip: np.ndarray
    src_port: np.ndarray
    dst_port: np.ndarray
    proto: np.ndarray  # -1 without IP
    icmp_type: np.ndarray  # -1 without ICMP
    flags: np.ndarray  # 0 without TCP
    order: np.ndarray  # row of the input table for each sorted position
    src_hash: np.ndarray = None  # stable across tables (see codes())
    dst_hash: np.ndarray = None

    @property
    def n(self) -> int:
        return len(self.ts)


def packet_arrays(packets) -> PacketArrays:
    t = as_table(packets)
    if "ts_ns" not in t.column_names:
        raise NecstError("packet table has no ts_ns column")
    ts = column(t, "ts_ns", 0, np.int64)
    file = column(t, "file_index", 0, np.int64)
    in_order = bool(np.all(file[1:] >= file[:-1])) and bool(
        np.all((ts[1:] >= ts[:-1]) | (file[1:] != file[:-1])))
    order = np.arange(t.num_rows) if in_order else np.lexsort((ts, file))
    if in_order:
        order = np.arange(t.num_rows)  # already in order: skip the gathers below
        take = lambda a: a  # noqa: E731
    else:
        take = lambda a: a[order]  # noqa: E731
    size = column(t, "wire_len", 0, np.int64)
    src, src_h = codes(t, "src_ip", with_hash=True)
    dst, dst_h = codes(t, "dst_ip", with_hash=True)
    return PacketArrays(
        ts=take(ts), size=take(size), file=take(file),
        src_ip=take(src), dst_ip=take(dst), src_hash=take(src_h), dst_hash=take(dst_h),
        src_port=take(column(t, "src_port", _NO_PORT, np.int64)),
        dst_port=take(column(t, "dst_port", _NO_PORT, np.int64)),
        proto=take(column(t, "ip_proto", -1, np.int64)),
        flags=take(column(t, "tcp_flags", 0, np.int64)),
        icmp_type=take(column(t, "icmp_type", -1, np.int64)),
        order=order,
    )


def flow_keys(p: PacketArrays) -> np.ndarray:
    """One int64 per packet naming its bidirectional 5-tuple (endpoints put in a fixed order)."""
    with np.errstate(over="ignore"):
        a = p.src_hash * np.uint64(65537) + p.src_port.astype(np.uint64)
        b = p.dst_hash * np.uint64(65537) + p.dst_port.astype(np.uint64)
        lo, hi = np.minimum(a, b), np.maximum(a, b)
        k = (lo * np.uint64(0x9E3779B97F4A7C15)) ^ (hi + np.uint64(0x632BE59BD9B4E019) + (lo << np.uint64(6)))
        k = k * np.uint64(0xBF58476D1CE4E5B9) ^ (p.proto.astype(np.uint64) + np.uint64(1))
    return k.view(np.int64)


def _factorize(keys: np.ndarray):
    """(codes, uniques) by hashing: O(n), where np.unique would sort."""
    c, u = pd.factorize(keys, sort=False)
    return c.astype(np.int64, copy=False), np.asarray(u)


def _entropy_distinct(unit: np.ndarray, value: np.ndarray, weight: np.ndarray, n_units: int):
    """Per unit: distinct values and Shannon entropy (bits) of (unit, value, weight) triples."""
    key = unit.astype(np.int64) * np.int64(1 << 32) + value.astype(np.int64)
    inv, uk = _factorize(key)
    cnt = np.bincount(inv, weights=weight)
    u = (uk >> 32).astype(np.int64)
    distinct = np.bincount(u, minlength=n_units).astype(np.float64)
    total = np.bincount(u, weights=cnt, minlength=n_units)
    clogc = np.bincount(u, weights=cnt * np.log2(np.maximum(cnt, 1)), minlength=n_units)
    with np.errstate(divide="ignore", invalid="ignore"):
        ent = np.where(total > 0, np.log2(np.maximum(total, 1)) - clogc / np.maximum(total, 1), 0.0)
    return distinct, np.maximum(ent, 0.0)


# ---------------------------------------------------------------- window mode

def window_features(packets, width_s: float = 1.0, stride_s: float = 0.5, origin_ns: int | None = None,
                    known_flows: np.ndarray | None = None) -> Units:
    """Sliding windows of ``width_s`` every ``stride_s`` (width a whole multiple of stride).

    Packets are binned by stride; a window is ``m = width/stride`` consecutive bins, so every
    additive count is a sum of m bin counts, and distinct/entropy figures come from the
    (bin, value) counts shifted into the m windows each bin belongs to. Windows never span two
    input files (file_index); empty windows are not units. The window grid starts at each
    file's first packet, or at ``origin_ns`` (live capture, where batches share one grid);
    ``known_flows`` are flow keys seen before this table (not new again).
    """
    ratio = width_s / stride_s
    m = int(round(ratio))
    if stride_s <= 0 or m < 1 or abs(ratio - m) > 1e-9:
        raise NecstError(f"window width ({width_s} s) must be a whole multiple of the stride ({stride_s} s)")
    p = packet_arrays(packets)
    if p.n == 0:
        return Units("window", pd.DataFrame(columns=["start_ns", "end_ns"] + WINDOW_FEATURES),
                     np.empty((0, len(WINDOW_FEATURES))), list(WINDOW_FEATURES), np.empty(0, np.int64),
                     frozenset(LOG_FEATURES))
    stride_ns = int(round(stride_s * 1e9))
    # Bins per file, each file's bins offset past the previous file's by m so windows stay inside a file.
    fstart = np.flatnonzero(np.r_[True, p.file[1:] != p.file[:-1]])
    t0 = np.repeat(p.ts[fstart], np.diff(np.r_[fstart, p.n]))
    if origin_ns is not None:
        if int(p.ts.min()) < origin_ns:
            raise NecstError("packets before the window origin")
        t0 = np.full(p.n, int(origin_ns), dtype=np.int64)
    local = (p.ts - t0) // stride_ns
    nb_file = np.maximum.reduceat(local, fstart) + 1 + m
    offset = np.repeat(np.r_[0, np.cumsum(nb_file)[:-1]], np.diff(np.r_[fstart, p.n]))
    bins = local + offset  # nondecreasing
    t_origin = t0 - offset * stride_ns  # bin b starts at t_origin + b*stride for this packet's file

    # Occupied bins, and the windows (indexed by their first bin) that cover them.
    change = np.r_[True, bins[1:] != bins[:-1]]  # bins are sorted: unique by run starts
    ub = bins[change]
    bin_of = np.cumsum(change) - 1
    # A window starts at one of its file's bins (none begins before the file does).
    ub_first = offset[np.searchsorted(bins, ub)]
    cand = ub[:, None] - np.arange(m)[None, :]
    c = np.sort(cand[cand >= ub_first[:, None]])  # nearly sorted already: cheaper than np.unique's hash
    wins = c[np.r_[True, c[1:] != c[:-1]]]
    nw = len(wins)

    def to_windows(bin_ids: np.ndarray, weights_list):
        """Sum per-bin quantities into windows: each bin feeds windows bin-m+1 .. bin."""
        idx = (bin_ids[:, None] - np.arange(m)[None, :]).ravel()
        w = np.searchsorted(wins, idx)
        ok = (w < nw) & (wins[np.minimum(w, nw - 1)] == idx)
        return [np.bincount(w[ok], weights=np.repeat(x, m)[ok], minlength=nw) for x in weights_list]

    tcp = p.proto == 6
    flags = p.flags
    syn = tcp & ((flags & _SYN) != 0) & ((flags & _ACK) == 0)
    synack = tcp & ((flags & _SYN) != 0) & ((flags & _ACK) != 0)
    rst = tcp & ((flags & _RST) != 0)
    fin = tcp & ((flags & _FIN) != 0)
    icmp = (p.proto == 1) | (p.proto == 58)
    udp = p.proto == 17
    non_ip = p.proto < 0
    other = ~(tcp | udp | icmp | non_ip)
    service = np.minimum(p.src_port, p.dst_port)
    web = np.isin(service, _WEB_PORTS)
    dns = np.isin(service, _DNS_PORTS)
    admin = np.isin(service, _REMOTE_ADMIN_PORTS)
    other_svc = (service < 1024) & ~(web | dns | admin)
    # Destination / port unreachable: what a closed port answers to a probe.
    unreach = ((p.proto == 1) & (p.icmp_type == 3)) | ((p.proto == 58) & (p.icmp_type == 1))
    fkey = flow_keys(p)
    # A new flow: a bare SYN for TCP (so connections open before the capture began do not
    # count), the first packet of its 5-tuple otherwise.
    first_seen = ~pd.Series(fkey).duplicated().to_numpy()
    if known_flows is not None and len(known_flows):
        first_seen &= ~np.isin(fkey, known_flows)
    new = syn | (~tcp & first_seen)
    size = p.size.astype(np.float64)

    per_bin = [np.bincount(bin_of, weights=x.astype(np.float64), minlength=len(ub)) for x in (
        np.ones(p.n), size, size * size, tcp, syn, synack, rst, fin, udp, icmp, other, non_ip, new,
        web, dns, admin, other_svc, unreach)]
    (n, nbytes, sq, ntcp, nsyn, nsynack, nrst, nfin, nudp, nicmp, nother, nnonip, nnew,
     nweb, ndns, nadmin, nsvc, nunreach) = to_windows(ub, per_bin)

    f: Dict[str, np.ndarray] = {}
    f["packets"] = n
    f["bytes"] = nbytes
    f["packets_per_s"] = n / width_s
    f["bytes_per_s"] = nbytes / width_s
    nz = np.maximum(n, 1)
    for name, val in (("src_ip", p.src_ip), ("dst_ip", p.dst_ip),
                      ("src_port", p.src_port), ("dst_port", p.dst_port)):
        # per (bin, value) counts first (N rows), then shifted into windows (few rows)
        key = bin_of.astype(np.int64) * np.int64(1 << 32) + (val + 1)
        inv, uk = _factorize(key)
        cnt = np.bincount(inv)
        b = ub[uk >> 32]
        v = uk & np.int64((1 << 32) - 1)
        idx = (b[:, None] - np.arange(m)[None, :]).ravel()
        w = np.searchsorted(wins, idx)
        ok = (w < nw) & (wins[np.minimum(w, nw - 1)] == idx)
        d, e = _entropy_distinct(w[ok], np.repeat(v, m)[ok], np.repeat(cnt, m)[ok].astype(np.float64), nw)
        f[f"{name}_distinct"] = d
        f[f"{name}_entropy"] = e
    tz = np.maximum(ntcp, 1)
    f["syn_ratio"] = nsyn / tz
    f["synack_ratio"] = nsynack / tz
    f["rst_ratio"] = nrst / tz
    f["fin_ratio"] = nfin / tz
    f["tcp_share"] = ntcp / nz
    f["udp_share"] = nudp / nz
    f["icmp_share"] = nicmp / nz
    f["other_ip_share"] = nother / nz
    f["non_ip_share"] = nnonip / nz
    f["web_share"] = nweb / nz
    f["dns_share"] = ndns / nz
    f["remote_admin_share"] = nadmin / nz
    f["other_service_share"] = nsvc / nz
    f["icmp_unreachable_share"] = nunreach / nz
    mean = nbytes / nz
    f["size_mean"] = mean
    f["size_std"] = np.sqrt(np.maximum(sq / nz - mean * mean, 0.0))
    f["new_flows_per_s"] = nnew / width_s
    f["half_open_share"] = _half_open(bin_of, ub, fkey, syn, tcp & ((flags & _ACK) != 0) & ~((flags & _SYN) != 0)
                                      & ((flags & _RST) == 0), wins, m)

    ip = p.src_ip >= 0
    f["max_dst_ip_per_src"] = _max_distinct_per_group(bin_of[ip], ub, p.src_ip[ip], p.dst_ip[ip], wins, m) \
        if ip.any() else np.zeros(nw)
    f["max_dst_port_per_src"] = _max_distinct_per_group(bin_of[ip], ub, p.src_ip[ip], p.dst_port[ip], wins, m) \
        if ip.any() else np.zeros(nw)

    # Window times: the first bin's origin belongs to the file of any packet in it.
    first_pkt_bin = np.searchsorted(bins, wins + m - 1, side="right") - 1
    first_pkt_bin = np.clip(first_pkt_bin, 0, p.n - 1)
    start = t_origin[first_pkt_bin] + wins * stride_ns
    meta = pd.DataFrame({"start_ns": start, "end_ns": start + m * stride_ns,
                         "file_index": p.file[first_pkt_bin]})
    for k in WINDOW_FEATURES:
        meta[k] = f[k]
    X = np.empty((nw, len(WINDOW_FEATURES)))
    for j, k in enumerate(WINDOW_FEATURES):
        X[:, j] = f[k]
    # The first window holding each packet (for per-packet labels -> window labels).
    pw = np.searchsorted(wins, bins - m + 1)
    packet_unit = np.empty(p.n, dtype=np.int64)
    packet_unit[p.order] = np.minimum(pw, nw - 1)
    return Units("window", meta, X, list(WINDOW_FEATURES), packet_unit, frozenset(LOG_FEATURES))


def _max_distinct_per_group(bin_of, ub, group, value, wins, m) -> np.ndarray:
    """Per window: the largest number of distinct ``value`` any one ``group`` has (a scan's fan-out)."""
    nw = len(wins)
    pair = group.astype(np.int64) * np.int64(int(value.max()) + 2) + (value + 1)
    pc, pairs = _factorize(pair)
    npair = np.int64(len(pairs))
    inv, k1 = _factorize(bin_of.astype(np.int64) * npair + pc)
    b = ub[k1 // npair]
    pr = k1 % npair
    idx = (b[:, None] - np.arange(m)[None, :]).ravel()
    w = np.searchsorted(wins, idx)
    ok = (w < nw) & (wins[np.minimum(w, nw - 1)] == idx)
    _, k2 = _factorize(w[ok].astype(np.int64) * npair + np.repeat(pr, m)[ok])
    wk = k2 // npair
    grp = pairs[k2 % npair] // np.int64(int(value.max()) + 2)
    gc, gk = _factorize(wk * np.int64(int(group.max()) + 2) + (grp + 1))
    counts = np.bincount(gc)
    out = np.zeros(nw)
    np.maximum.at(out, gk // np.int64(int(group.max()) + 2), counts.astype(float))
    return out


def _half_open(bin_of, ub, fkey, syn, est, wins, m) -> np.ndarray:
    """Share of TCP flows opened by a bare SYN in the window that never got an ACK past the handshake."""
    nw = len(wins)
    sel = syn | est
    if not sel.any():
        return np.zeros(nw)
    fcode, fk = _factorize(fkey[sel])
    key = bin_of[sel].astype(np.int64) * np.int64(len(fk)) + fcode
    kind = syn[sel].astype(np.int64) + 2 * est[sel].astype(np.int64)  # bit 1 SYN, bit 2 established
    inv, uk = _factorize(key)
    bits = np.zeros(len(uk), dtype=np.int64)
    np.bitwise_or.at(bits, inv, kind)
    b = ub[uk // len(fk)]
    flow = uk % len(fk)
    idx = (b[:, None] - np.arange(m)[None, :]).ravel()
    w = np.searchsorted(wins, idx)
    ok = (w < nw) & (wins[np.minimum(w, nw - 1)] == idx)
    wk = w[ok].astype(np.int64) * np.int64(len(fk)) + np.repeat(flow, m)[ok]
    inv2, uk2 = _factorize(wk)
    bits2 = np.zeros(len(uk2), dtype=np.int64)
    np.bitwise_or.at(bits2, inv2, np.repeat(bits, m)[ok])
    wi = uk2 // len(fk)
    opened = np.bincount(wi, weights=((bits2 & 1) != 0).astype(float), minlength=nw)
    half = np.bincount(wi, weights=(bits2 == 1).astype(float), minlength=nw)
    return half / np.maximum(opened, 1)


def extract(packets, mode: str = "window", **params) -> Units:
    """Features for one mode; ``params`` are that mode's own (width_s, stride_s, ...)."""
    if mode == "window":
        return window_features(packets, **params)
    if mode == "packet":
        from necst.detect.packet_features import packet_features
        return packet_features(packets, **params)
    if mode == "flow":
        from necst.detect.flow_features import flow_features
        return flow_features(packets, **params)
    raise NecstError(f"unknown mode {mode!r}; choose one of {', '.join(MODES)}")
