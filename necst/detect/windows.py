"""Window features, streamed: packets go in batch by batch, complete windows come out.

A window is ``m = width / stride`` consecutive stride-long bins of one file's time grid (anchored
at the file's first packet). Packets arrive in time order, so a window is complete once a packet
lands past its last bin; the stream keeps only the packets of windows not yet complete (the
"tail") and two maps that forget what the windows no longer need, so memory stays flat however
long the capture, and scoring a capture, a PacketTable or a live interface are one code path.
IP strings get small integer codes; once the map has grown, it keeps only the addresses the
tail's packets still use and renumbers them (flow keys hash the strings, not the codes, so they
do not change). A non-TCP flow is remembered for ``flow_idle_s`` after its last packet: a flow
is new at its first packet and again after an idle gap longer than that (a flow meter's idle
timeout); both maps start afresh with each input file, as windows do.

Everything is whole-array numpy. Packets sorted by time make every window a contiguous packet
range, so additive counts are differences of cumulative sums at the windows' edges. Distinct
counts, entropies, fan-outs and per-flow states are group-bys done by sorting packed integer keys
(bin, value): the keys are already ordered by bin, so the sort only orders each bin's few
packets; the (bin, value) groups are then shifted into the m windows each bin belongs to and
merged by a second, small sort.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Dict, List

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from necst.errors import NecstError
from necst.schema import numpy_column

# Window features; the ones in LOG_FEATURES are heavy-tailed counts and enter the model as log1p.
# The fan-outs (max_dst_*_per_src) are not: in normal traffic they are small counts with a short
# tail (IoT Sentinel training windows: median 1, 99.9th percentile 7, max 10), and a scan's
# fan-out is exactly the signal that a log would squash.
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
LOG_FEATURES = frozenset({
    "packets", "bytes", "packets_per_s", "bytes_per_s", "src_ip_distinct", "dst_ip_distinct",
    "src_port_distinct", "dst_port_distinct", "size_mean", "size_std", "new_flows_per_s",
})

NO_PORT = 65536
# Service classes by the lower port of a packet: what a network uses is part of its normal.
_WEB_PORTS = (80, 443, 8080, 8443)
_DNS_PORTS = (53, 5353, 67, 68, 123)
_REMOTE_ADMIN_PORTS = (21, 22, 23, 2323, 3389, 5900, 5938)
_SYN, _ACK, _RST, _FIN = 0x002, 0x010, 0x004, 0x001
INPUT_COLUMNS = ("ts_ns", "wire_len", "file_index", "src_ip", "dst_ip", "ip_proto", "src_port", "dst_port",
            "tcp_flags", "icmp_type")

# Per-packet classes, summed per window: (name, bit). One packed int per packet, one cumsum per bit.
_BITS = ["tcp", "syn", "synack", "rst", "fin", "udp", "icmp", "other", "non_ip", "new",
         "web", "dns", "admin", "other_svc", "unreach"]


@dataclass
class WindowBlock:
    """Windows emitted by one step of the stream: their time span, file and feature matrix."""

    start_ns: np.ndarray
    end_ns: np.ndarray
    file_index: np.ndarray
    X: np.ndarray
    packet_window: np.ndarray | None = None  # the first window holding each packet of ``rows``
    rows: np.ndarray | None = None
    packets: int = 0  # packets that went in (stream_windows)


def _check_grid(width_s: float, stride_s: float) -> int:
    ratio = width_s / stride_s if stride_s > 0 else 0.0
    m = int(round(ratio))
    if stride_s <= 0 or m < 1 or abs(ratio - m) > 1e-9:
        raise NecstError(f"window width ({width_s} s) must be a whole multiple of the stride ({stride_s} s)")
    return m


def _int_column(t: pa.Table, name: str, fill: int) -> np.ndarray:
    """An integer column as int64, nulls (and a missing column) as ``fill``."""
    if name not in t.column_names:
        return np.full(t.num_rows, fill, dtype=np.int64)
    parts = [numpy_column(c, fill=0).astype(np.int64) for c in t.column(name).chunks]
    for v, c in zip(parts, t.column(name).chunks):
        if c.null_count:
            v[numpy_column(c.is_null())] = fill
    return np.concatenate(parts) if parts else np.empty(0, dtype=np.int64)


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser: spreads packed flow tuples over 64 bits (uint64 in, uint64 out)."""
    with np.errstate(over="ignore"):
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def _runs(sorted_keys: np.ndarray) -> np.ndarray:
    """Start index of each run of equal values."""
    if len(sorted_keys) == 0:
        return np.empty(0, dtype=np.int64)
    return np.flatnonzero(np.r_[True, sorted_keys[1:] != sorted_keys[:-1]])


def _bits(x: int) -> int:
    return max(int(x), 1).bit_length()


def _string_hashes(values: List[str]) -> np.ndarray:
    """A 64-bit hash of each string, the same in every process (flow keys must not depend on codes)."""
    return np.fromiter((int.from_bytes(hashlib.blake2b(str(v).encode(), digest_size=8).digest(), "little")
                        for v in values), dtype=np.uint64, count=len(values))


class WindowStream:
    """Sliding-window features over a stream of PacketTables (or record batches).

    ``feed(table)`` returns the windows that the new packets complete, ``flush()`` the rest.
    Windows never span two input files (``file_index``); empty windows are not units. The grid
    of each file starts at its first packet, or at ``origin_ns`` for every file when given.
    Packets must arrive in time order per file; one a little late (older than the windows
    already emitted) is counted in the oldest window still open. A non-TCP flow counts as new
    at its first packet and after a silence longer than ``flow_idle_s`` (None: never again).
    """

    ip_map_min = 4096  # the IP map is pruned to the tail's addresses once past this and twice its last size

    def __init__(self, width_s: float = 1.0, stride_s: float = 0.5, origin_ns: int | None = None,
                 flow_idle_s: float | None = 120.0):
        self.m = _check_grid(width_s, stride_s)
        self.width_s = float(width_s)
        self.stride_ns = int(round(stride_s * 1e9))
        self.origin_ns = origin_ns
        if flow_idle_s is not None and not flow_idle_s > 0:
            raise NecstError(f"flow idle timeout must be positive seconds or None, got {flow_idle_s}")
        self.flow_idle_ns = None if flow_idle_s is None else int(round(flow_idle_s * 1e9))
        self.packets = 0
        self._ip: Dict[object, int] = {}  # IP string -> code (dense: 0 .. len - 1)
        self._ip_strings: List[object] = []  # code -> IP string
        self._ip_hash = np.zeros(1, dtype=np.uint64)  # code -> hash of the string; the last entry (code -1) is 0
        self._ip_kept = 0  # map size after the last pruning
        self._known = np.empty(0, dtype=np.uint64)  # non-TCP flows seen (sorted keys) ...
        self._seen = np.empty(0, dtype=np.int64)  # ... and the time of their last packet
        self._now = np.iinfo(np.int64).min  # latest packet time of the current file
        self._file: int | None = None
        self._origin = 0
        self._next_win = 0  # first window bin not emitted yet (in the current file)
        self._tail: Dict[str, np.ndarray] | None = None

    # ------------------------------------------------------------ input
    def _ip_codes(self, t: pa.Table, name: str) -> np.ndarray:
        """Stream-wide integer codes of an IP column (-1 for null), from its dictionary."""
        n = t.num_rows
        if name not in t.column_names:
            return np.full(n, -1, dtype=np.int64)
        col = t.column(name)
        if not pa.types.is_dictionary(col.type):
            col = pc.dictionary_encode(col)
        chunks = col.chunks if isinstance(col, pa.ChunkedArray) else [col]
        out = []
        for c in chunks:
            table = self._ip
            values = c.dictionary.to_pylist()
            fresh = [v for v in values if v not in table]
            if fresh:
                for v in fresh:
                    table[v] = len(table)
                self._ip_strings.extend(fresh)
                self._ip_hash = np.r_[self._ip_hash[:-1], _string_hashes(fresh), np.uint64(0)]
            lookup = np.array([table[v] for v in values] + [-1], dtype=np.int64)
            idx = c.indices
            idx = numpy_column(idx, fill=-1).astype(np.int64)
            out.append(lookup[idx])  # -1 indexes the trailing -1
        return np.concatenate(out) if out else np.empty(0, dtype=np.int64)

    def _arrays(self, t: pa.Table, rows: bool = False) -> Dict[str, np.ndarray]:
        if "ts_ns" not in t.column_names:
            raise NecstError("packet table has no ts_ns column")
        a = {
            "ts": _int_column(t, "ts_ns", 0), "size": _int_column(t, "wire_len", 0),
            "file": _int_column(t, "file_index", 0),
            "src": self._ip_codes(t, "src_ip"), "dst": self._ip_codes(t, "dst_ip"),
            "proto": _int_column(t, "ip_proto", -1), "sport": _int_column(t, "src_port", NO_PORT),
            "dport": _int_column(t, "dst_port", NO_PORT), "flags": _int_column(t, "tcp_flags", 0),
            "icmp": _int_column(t, "icmp_type", -1),
        }
        ts, f = a["ts"], a["file"]
        if len(ts) > 1 and not (np.all(f[1:] >= f[:-1]) and np.all((ts[1:] >= ts[:-1]) | (f[1:] != f[:-1]))):
            order = np.lexsort((ts, f))
            a = {k: v[order] for k, v in a.items()}
            if rows:
                a["row"] = order
        elif rows:
            a["row"] = np.arange(len(ts))
        return a

    def _prune_ips(self) -> None:
        """Keep only the IP codes the tail still uses, renumbered 0..k-1 (tail included)."""
        if len(self._ip) <= max(self.ip_map_min, 2 * self._ip_kept):
            return
        tail = self._tail
        live = np.unique(np.r_[tail["src"], tail["dst"]]) if tail is not None else np.empty(0, np.int64)
        live = live[live >= 0]
        remap = np.full(len(self._ip_strings) + 1, -1, dtype=np.int64)  # the last entry maps -1 to -1
        remap[live] = np.arange(len(live))
        if tail is not None:
            tail["src"], tail["dst"] = remap[tail["src"]], remap[tail["dst"]]
        self._ip_strings = [self._ip_strings[c] for c in live.tolist()]
        self._ip = {v: i for i, v in enumerate(self._ip_strings)}
        self._ip_hash = np.r_[self._ip_hash[live], np.uint64(0)]
        self._ip_kept = len(live)

    def _new_file(self) -> None:
        """Flows never span files: forget the last file's."""
        self._known = np.empty(0, dtype=np.uint64)
        self._seen = np.empty(0, dtype=np.int64)
        self._now = np.iinfo(np.int64).min

    def _new_flows(self, fkey: np.ndarray, ts: np.ndarray) -> np.ndarray:
        """Which of these non-TCP packets (time order) start a flow; the flow map updated and expired."""
        idle = self.flow_idle_ns
        o = np.argsort(fkey, kind="stable")  # time order kept within each flow
        k, t = fkey[o], ts[o]
        first = _runs(k)
        new = np.zeros(len(k), dtype=bool)
        new[first] = True
        if idle is not None and len(k) > 1:
            gap = np.r_[False, (t[1:] - t[:-1]) > idle]
            gap[first] = False
            new |= gap
        cand = k[first]
        if len(self._known):
            pos = np.minimum(np.searchsorted(self._known, cand), len(self._known) - 1)
            seen = self._known[pos] == cand
            if idle is not None:
                seen &= t[first] - self._seen[pos] <= idle
            new[first[seen]] = False
        last = np.maximum.reduceat(t, first)
        keys, times = np.r_[self._known, cand], np.r_[self._seen, last]
        if len(self._known):
            order = np.argsort(keys, kind="stable")
            keys, times = keys[order], times[order]
            runs = _runs(keys)
            keys, times = keys[runs], np.maximum.reduceat(times, runs)
        self._now = max(self._now, int(t.max()))
        if idle is not None:  # a flow silent for longer than the timeout is new at its next packet anyway
            live = times >= self._now - idle
            keys, times = keys[live], times[live]
        self._known, self._seen = keys, times
        out = np.empty(len(k), dtype=bool)
        out[o] = new
        return out

    def _classes(self, a: Dict[str, np.ndarray]) -> None:
        """Per-packet flow key, class bits and the 'new flow' mark (once per packet, never again)."""
        proto, flags = a["proto"], a["flags"]
        tcp = proto == 6
        syn = tcp & ((flags & _SYN) != 0) & ((flags & _ACK) == 0)
        synack = tcp & ((flags & _SYN) != 0) & ((flags & _ACK) != 0)
        with np.errstate(over="ignore"):
            ea = _mix(self._ip_hash[a["src"]] * np.uint64(65537) + a["sport"].astype(np.uint64))
            eb = _mix(self._ip_hash[a["dst"]] * np.uint64(65537) + a["dport"].astype(np.uint64))
            fkey = _mix((ea + eb) ^ _mix(ea ^ eb) ^ (proto.astype(np.uint64) + np.uint64(1)))
        # A new flow: a bare SYN for TCP (connections open before the capture began do not count);
        # otherwise the first packet of its 5-tuple, or the first after an idle timeout.
        new = syn.copy()
        nt = np.flatnonzero(~tcp)
        if len(nt):
            new[nt] = self._new_flows(fkey[nt], a["ts"][nt])
        icmp = (proto == 1) | (proto == 58)
        udp = proto == 17
        non_ip = proto < 0
        service = np.minimum(a["sport"], a["dport"])
        web = np.isin(service, _WEB_PORTS)
        dns = np.isin(service, _DNS_PORTS)
        admin = np.isin(service, _REMOTE_ADMIN_PORTS)
        cls = {
            "tcp": tcp, "syn": syn, "synack": synack, "rst": tcp & ((flags & _RST) != 0),
            "fin": tcp & ((flags & _FIN) != 0), "udp": udp, "icmp": icmp,
            "other": ~(tcp | udp | icmp | non_ip), "non_ip": non_ip, "new": new,
            "web": web, "dns": dns, "admin": admin, "other_svc": (service < 1024) & ~(web | dns | admin),
            # Destination / port unreachable: what a closed port answers to a probe.
            "unreach": ((proto == 1) & (a["icmp"] == 3)) | ((proto == 58) & (a["icmp"] == 1)),
        }
        packed = np.zeros(len(proto), dtype=np.int64)
        for i, name in enumerate(_BITS):
            packed |= cls[name].astype(np.int64) << i
        # A TCP flow "established" here: an ACK without SYN or RST.
        est = tcp & ((flags & _ACK) != 0) & ((flags & (_SYN | _RST)) == 0)
        a["bits"] = packed
        a["est"] = est
        a["fkey"] = fkey
        del a["flags"], a["icmp"]

    # ------------------------------------------------------------ stream
    def feed(self, table) -> WindowBlock:
        """The windows completed by these packets (possibly none)."""
        t = table if isinstance(table, pa.Table) else pa.Table.from_batches([table])
        self.packets += t.num_rows
        if t.num_rows == 0:
            return _empty_block()
        a = self._arrays(t)
        f = a["file"]
        cuts = np.flatnonzero(np.r_[True, f[1:] != f[:-1], True])
        out = []
        for s, e in zip(cuts[:-1], cuts[1:]):
            seg = {k: v[s:e] for k, v in a.items()}
            if self._file is not None and int(seg["file"][0]) != self._file:
                out.append(self.flush())
            self._classes(seg)
            if self._file is None:
                self._file = int(seg["file"][0])
                self._origin = int(seg["ts"].min()) if self.origin_ns is None else int(self.origin_ns)
                if self.origin_ns is not None and int(seg["ts"].min()) < self._origin:
                    raise NecstError("packets before the window origin")
                self._next_win = 0
            out.append(self._step(seg, final=False))
        self._prune_ips()
        return _concat_blocks(out)

    def flush(self) -> WindowBlock:
        """The windows still waiting for later packets (end of the capture, or of one file)."""
        if self._file is None:
            return _empty_block()
        tail, self._tail = self._tail, None
        block = self._step(tail, final=True) if tail is not None else _empty_block()
        self._file = None
        self._new_file()
        return block

    def whole(self, table) -> WindowBlock:
        """Every window of one table at once, with the first window of each row (``packet_window``)."""
        t = table if isinstance(table, pa.Table) else pa.Table.from_batches([table])
        self.packets += t.num_rows
        if t.num_rows == 0:
            return _empty_block()
        a = self._arrays(t, rows=True)
        f = a["file"]
        cuts = np.flatnonzero(np.r_[True, f[1:] != f[:-1], True])
        blocks, pw = [], np.empty(t.num_rows, dtype=np.int64)
        done = 0
        for s, e in zip(cuts[:-1], cuts[1:]):
            seg = {k: v[s:e] for k, v in a.items()}
            self._new_file()
            self._classes(seg)
            self._file = int(seg["file"][0])
            self._origin = int(seg["ts"].min()) if self.origin_ns is None else int(self.origin_ns)
            if int(seg["ts"].min()) < self._origin:
                raise NecstError("packets before the window origin")
            self._next_win, self._tail = 0, None
            b = self._step(seg, final=True)
            pw[b.rows] = b.packet_window + done
            done += len(b.start_ns)
            blocks.append(b)
        self._file = None
        self._new_file()
        out = _concat_blocks(blocks)
        out.packet_window = pw
        return out

    def _step(self, a: Dict[str, np.ndarray], final: bool) -> WindowBlock:
        if "bin" not in a:
            a = dict(a)
            a["bin"] = np.maximum((a.pop("ts") - self._origin) // self.stride_ns, self._next_win)
        if self._tail is not None:
            a = {k: np.concatenate([self._tail[k], a[k]]) for k in self._tail}
            self._tail = None
        if len(a["bin"]) > 1 and np.any(a["bin"][1:] < a["bin"][:-1]):
            o = np.argsort(a["bin"], kind="stable")
            a = {k: v[o] for k, v in a.items()}
        m = self.m
        last = int(a["bin"][-1])
        hi = last if final else last - m  # windows starting at or before hi are complete
        block = window_block(a, m, self.stride_ns, self.width_s, self._origin, self._file,
                             lo=self._next_win, hi=hi)
        if not final:
            keep = int(np.searchsorted(a["bin"], hi + 1))
            self._tail = {k: v[keep:] for k, v in a.items()}
            self._next_win = max(self._next_win, hi + 1)
        return block


def _empty_block() -> WindowBlock:
    e = np.empty(0, np.int64)
    return WindowBlock(e, e, e, np.empty((0, len(WINDOW_FEATURES))), e, e)


def _concat_blocks(blocks: List[WindowBlock]) -> WindowBlock:
    blocks = [b for b in blocks if len(b.start_ns)]
    if not blocks:
        return _empty_block()
    if len(blocks) == 1:
        return blocks[0]
    return WindowBlock(np.concatenate([b.start_ns for b in blocks]), np.concatenate([b.end_ns for b in blocks]),
                       np.concatenate([b.file_index for b in blocks]), np.vstack([b.X for b in blocks]))


# ---------------------------------------------------------------- one step's windows

def window_block(a: Dict[str, np.ndarray], m: int, stride_ns: int, width_s: float, origin: int, file: int,
                 lo: int, hi: int) -> WindowBlock:
    """Features of the windows starting at bins ``lo..hi`` from packets ``a`` (sorted by ``bin``)."""
    bins = a["bin"]
    n = len(bins)
    starts = _runs(bins)
    ub = bins[starts]  # occupied bins
    bin_of = np.repeat(np.arange(len(ub)), np.diff(np.r_[starts, n]))
    cand = (ub[:, None] - np.arange(m)[None, :]).ravel()
    cand = np.sort(cand[(cand >= lo) & (cand <= hi)])
    wins = cand[_runs(cand)]
    nw = len(wins)
    if nw == 0:
        return _empty_block()
    # Each window is a contiguous packet range.
    plo = np.searchsorted(bins, wins, side="left")
    phi = np.searchsorted(bins, wins + m, side="left")
    # Window of (occupied bin k, shift j): the one starting at ub[k] - j, or -1.
    target = ub[:, None] - np.arange(m)[None, :]
    pos = np.minimum(np.searchsorted(wins, target), nw - 1)
    widx = np.where(wins[pos] == target, pos, -1)

    def window_sum(x: np.ndarray) -> np.ndarray:
        c = np.empty(n + 1, dtype=x.dtype if x.dtype.kind == "f" else np.int64)
        c[0] = 0
        np.cumsum(x, out=c[1:])
        return (c[phi] - c[plo]).astype(np.float64)

    cnt = (phi - plo).astype(np.float64)
    size = a["size"]
    nbytes = window_sum(size)
    sq = window_sum(size.astype(np.float64) ** 2)
    packed = a["bits"]
    s = {name: window_sum((packed >> i) & 1) for i, name in enumerate(_BITS)}

    f: Dict[str, np.ndarray] = {}
    f["packets"] = cnt
    f["bytes"] = nbytes
    f["packets_per_s"] = cnt / width_s
    f["bytes_per_s"] = nbytes / width_s
    for name, val in (("src_ip", a["src"] + 1), ("dst_ip", a["dst"] + 1),
                      ("src_port", a["sport"]), ("dst_port", a["dport"])):
        d, clogc = _distinct(bin_of, val, widx, nw)
        f[f"{name}_distinct"] = d
        tot = np.maximum(cnt, 1)
        f[f"{name}_entropy"] = np.maximum(np.log2(tot) - clogc / tot, 0.0)
    nz = np.maximum(cnt, 1)
    tz = np.maximum(s["tcp"], 1)
    f["syn_ratio"] = s["syn"] / tz
    f["synack_ratio"] = s["synack"] / tz
    f["rst_ratio"] = s["rst"] / tz
    f["fin_ratio"] = s["fin"] / tz
    for name, key in (("tcp_share", "tcp"), ("udp_share", "udp"), ("icmp_share", "icmp"),
                      ("other_ip_share", "other"), ("non_ip_share", "non_ip"), ("web_share", "web"),
                      ("dns_share", "dns"), ("remote_admin_share", "admin"),
                      ("other_service_share", "other_svc"), ("icmp_unreachable_share", "unreach")):
        f[name] = s[key] / nz
    mean = nbytes / nz
    f["size_mean"] = mean
    f["size_std"] = np.sqrt(np.maximum(sq / nz - mean * mean, 0.0))
    f["new_flows_per_s"] = s["new"] / width_s
    syn = ((packed >> _BITS.index("syn")) & 1).astype(bool)
    f["half_open_share"] = _half_open(bin_of, len(ub), a["fkey"], syn, a["est"], widx, nw)
    ip = a["src"] >= 0
    f["max_dst_ip_per_src"] = _max_fanout(bin_of[ip], len(ub), a["src"][ip], a["dst"][ip] + 1, widx, nw)
    f["max_dst_port_per_src"] = _max_fanout(bin_of[ip], len(ub), a["src"][ip], a["dport"][ip], widx, nw)

    X = np.empty((nw, len(WINDOW_FEATURES)))
    for j, k in enumerate(WINDOW_FEATURES):
        X[:, j] = f[k]
    start = origin + wins * stride_ns
    block = WindowBlock(start, start + m * stride_ns, np.full(nw, file, dtype=np.int64), X)
    if "row" in a:  # the first window holding each packet (evaluation labels)
        block.packet_window = np.minimum(np.searchsorted(wins, bins - m + 1), nw - 1)
        block.rows = a["row"]
    return block


def _shift(k: np.ndarray, rest: np.ndarray, widx: np.ndarray, rest_bits: int):
    """(bin index k, rest) groups -> sorted (window, rest) keys, one per window the bin feeds."""
    parts, order = [], []
    for j in range(widx.shape[1]):
        w = widx[k, j]
        ok = w >= 0
        parts.append((w[ok] << rest_bits) | rest[ok])
        order.append(np.flatnonzero(ok))
    key = np.concatenate(parts)
    src = np.concatenate(order)
    if widx.shape[1] > 1:  # m sorted runs: a stable sort merges them
        o = np.argsort(key, kind="stable")
        key, src = key[o], src[o]
    return key, src


def _group(bin_of: np.ndarray, val: np.ndarray, val_bits: int):
    """(bin, value) keys sorted, the start of each distinct key, and the sort order of the rows."""
    key = (bin_of << val_bits) | val
    o = np.argsort(key, kind="stable")  # already ordered by bin: only each bin's rows move
    sk = key[o]
    return sk, _runs(sk), o


def _distinct(bin_of, val, widx, nw):
    """Per window: distinct values and sum of c*log2(c) over their counts c."""
    vb = _bits(int(val.max()) + 1) if len(val) else 1
    sk, st, _ = _group(bin_of, val, vb)
    uk, cnt = sk[st], np.diff(np.r_[st, len(sk)])
    k = uk >> vb
    v = uk & ((1 << vb) - 1)
    key, src = _shift(k, v, widx, vb)
    c = cnt[src]
    if widx.shape[1] > 1:
        st = _runs(key)
        c = np.add.reduceat(c, st) if len(st) else c
        key = key[st]
    w = key >> vb
    distinct = np.bincount(w, minlength=nw).astype(np.float64)
    cf = c.astype(np.float64)
    clogc = np.bincount(w, weights=cf * np.log2(cf), minlength=nw)
    return distinct, clogc


def _dense(x: np.ndarray) -> np.ndarray:
    _, inv = np.unique(x, return_inverse=True)
    return inv.astype(np.int64)


def _max_fanout(bin_of, nbins, group, val, widx, nw) -> np.ndarray:
    """Per window: the most distinct ``val`` any one ``group`` has (a scan's fan-out)."""
    out = np.zeros(nw)
    if len(group) == 0:
        return out
    wb = _bits(max(nbins, widx.max() + 1))
    gb, vb = _bits(int(group.max()) + 1), _bits(int(val.max()) + 1)
    if wb + gb + vb > 62:
        group = _dense(group)
        gb = _bits(int(group.max()) + 1)
        if wb + gb + vb > 62:
            val = _dense(val)
            vb = _bits(int(val.max()) + 1)
    rest = (group << vb) | val
    sk, st, _ = _group(bin_of, rest, gb + vb)
    uk = sk[st]
    k = uk >> (gb + vb)
    key, _ = _shift(k, uk & ((1 << (gb + vb)) - 1), widx, gb + vb)
    if widx.shape[1] > 1:
        key = key[_runs(key)]
    wg = key >> vb  # (window, group), sorted
    st = _runs(wg)
    fan = np.diff(np.r_[st, len(wg)])
    w = wg[st] >> gb
    ws = _runs(w)
    out[w[ws]] = np.maximum.reduceat(fan, ws)
    return out


def _half_open(bin_of, nbins, fkey, syn, est, widx, nw) -> np.ndarray:
    """Share of TCP flows opened by a bare SYN in the window that never got an ACK past the handshake."""
    sel = syn | est
    if not sel.any():
        return np.zeros(nw)
    wb = _bits(max(nbins, widx.max() + 1))
    hb = 62 - wb  # a flow is its key's top bits: a collision inside one window is vanishingly rare
    h = (fkey[sel] >> np.uint64(64 - hb)).astype(np.int64)
    kind = syn[sel].astype(np.int64) | (est[sel].astype(np.int64) << 1)  # bit 0 SYN, bit 1 established
    sk, st, o = _group(bin_of[sel], h, hb)
    uk = sk[st]
    bits = np.bitwise_or.reduceat(kind[o], st)
    key, src = _shift(uk >> hb, uk & ((1 << hb) - 1), widx, hb)
    b = bits[src]
    if widx.shape[1] > 1:
        st = _runs(key)
        b = np.bitwise_or.reduceat(b, st)
        key = key[st]
    w = key >> hb
    opened = np.bincount(w, weights=(b & 1).astype(np.float64), minlength=nw)
    half = np.bincount(w, weights=(b == 1).astype(np.float64), minlength=nw)
    return half / np.maximum(opened, 1)


def stream_windows(tables, width_s: float = 1.0, stride_s: float = 0.5, origin_ns: int | None = None,
                   flow_idle_s: float | None = 120.0) -> WindowBlock:
    """All windows of an iterable of tables (batches of one capture, in order)."""
    s = WindowStream(width_s, stride_s, origin_ns, flow_idle_s)
    blocks = [s.feed(t) for t in tables]
    blocks.append(s.flush())
    out = _concat_blocks(blocks)
    out.packets = s.packets
    return out
