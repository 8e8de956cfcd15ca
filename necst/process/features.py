"""Model-ready features: per-packet and per-flow tables, and a reversible FeatureSpec.

Two stages, kept apart on purpose:

* ``packet_features`` / ``flow_features`` turn a PacketTable / FlowTable into plain feature
  columns in real units (bytes, seconds, labels). They are stateless: the same packets give the
  same features whatever else is in the training set.
* ``FeatureSpec`` learns the scaling from data (min-max bounds, log offsets, category
  vocabularies) and maps those columns to a matrix for the models and back. It is the only
  learned state, and it serialises to plain JSON for the model bundle.

Packet features (one row per packet, in the input's row order; keys ``flow_id`` and ``ts_ns``
ride along unscaled so that the flow models can cut sequences):

================ ===========================================================================
``kind``         ``tcp`` (IP protocol 6 with ports), ``udp`` (17 with ports), else ``noflow``
                 (ARP, ICMP, non-first fragments, other protocols)
``app``          application label; null becomes ``unknown``
``flag_combo``   the TCP flag combination, flag names joined by ``+`` in bit order (``SYN``,
                 ``SYN+ACK``, ``PSH+ACK``); ``NULL`` for a TCP packet without flags, ``na``
                 for packets that are not TCP. ``flag_bits`` maps names back to bits.
``src_port``,    port buckets: ports below 1024 and the registered ports in ``COMMON_PORTS``
``dst_port``     are kept as themselves (``"443"``); the others fall into ranges named by
                 their bounds: ``1024-32767`` (other registered), ``32768-49151`` (Linux
                 ephemeral), ``49152-65535`` (IANA / Windows ephemeral); ``none`` without
                 ports. ``PORT_RANGES`` gives each range, for a generator to draw a port
                 from. Rare ports become ``other`` in the FeatureSpec (``min_frequency``).
``direction``    0 initiator to responder, 1 back
``flow_pos``     position of the packet in its flow, from 0
``wire_len``     bytes on the wire
``hdr_len``      everything before the payload (link + IP + L4 headers, Ethernet padding
                 included): ``wire_len - payload_len``; ``wire_len`` when payload is null
``payload_len``  bytes after the transport header; 0 when null
``gap_s``        seconds since the previous packet of the same flow (``flow_iat_ns``; 0 for
                 the first packet; negative gaps of out-of-order captures are clipped to 0)
``rate_Bps``     mean rate of the flow so far: wire bytes of the flow up to and including
                 this packet, divided by the seconds since the flow's first packet; 0 while
                 that is 0
``bytes_1s``,    wire bytes and packets of the same flow in the window ``(t - 1 s, t]``, up
``pkts_1s``      to and including this packet; ``bytes_60s``, ``pkts_60s`` over 60 s
================ ===========================================================================

"Up to and including this packet" follows flow order: timestamp, then capture order for
packets that share a timestamp, so a feature never looks at a later packet.

Exactness of the round trip ``inverse_transform(transform(df))``: with ``dtype=np.float64``
every field comes back exactly (integers after rounding) or, for seconds, within far less than
1 µs (relative error ~1e-15). The default ``float32`` matrix, which is what the models eat,
is exact for categories and for linear integer fields whose fitted range is below 2**23; a
log-scaled field carries a relative error up to about ``(z_hi - z_lo) * ln(10) * 2**-24``
(``FeatureSpec.float32_error()`` says it per field): a 1e5 s gap is then known to ~0.1 s, not 1 µs.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa

from necst.errors import NecstError
from necst.schema import TCP_FLAG_BITS

# Registered ports (>= 1024) common enough on home, office and IoT networks to keep by name.
COMMON_PORTS = frozenset({
    1080, 1194, 1433, 1723, 1883, 1900, 3074, 3306, 3389, 3478, 3479, 4500, 4070, 5000, 5060,
    5061, 5222, 5223, 5228, 5353, 5355, 5432, 5683, 5684, 5900, 6379, 6667, 6881, 8000, 8008,
    8009, 8080, 8081, 8443, 8883, 8888, 9000, 9100, 9443, 9999, 10000, 10001, 27017, 32400,
})
# Bucket label -> inclusive port range, for ports that are not kept as themselves.
PORT_RANGES = {"1024-32767": (1024, 32767), "32768-49151": (32768, 49151),
               "49152-65535": (49152, 65535)}
NO_PORT = "none"
NOT_TCP = "na"
NO_FLAGS = "NULL"
OTHER = "other"

_FLAG_ORDER = sorted(TCP_FLAG_BITS.items(), key=lambda kv: kv[1])

PACKET_FEATURES = ("kind", "app", "flag_combo", "src_port", "dst_port", "direction", "flow_pos",
                   "wire_len", "hdr_len", "payload_len", "gap_s", "rate_Bps",
                   "bytes_1s", "pkts_1s", "bytes_60s", "pkts_60s")
FLOW_FEATURES = ("kind", "app", "src_port", "dst_port", "end_reason", "handshake", "packets",
                 "bytes", "src2dst_packets", "src2dst_bytes", "dst2src_packets",
                 "dst2src_bytes", "duration_s", "start_s")
WINDOWS_S = (1, 60)


# --------------------------------------------------------------------------------------------
# raw features
# --------------------------------------------------------------------------------------------

def _to_pandas(table: pa.Table | pd.DataFrame, needed: Sequence[str], what: str) -> pd.DataFrame:
    if isinstance(table, pa.Table):
        missing = [c for c in needed if c not in table.column_names]
        if missing:
            raise NecstError(f"{what} lacks columns {missing}")
        return table.select(list(needed)).to_pandas()
    if isinstance(table, pd.DataFrame):
        missing = [c for c in needed if c not in table.columns]
        if missing:
            raise NecstError(f"{what} lacks columns {missing}")
        return table
    raise NecstError(f"{what} must be a pyarrow Table or a pandas DataFrame, not {type(table).__name__}")


def _ints(s: pd.Series, fill: int) -> np.ndarray:
    """An integer column with nulls replaced by ``fill``, as int64."""
    return s.to_numpy(dtype=np.int64, na_value=fill)


def _labels(s: pd.Series, fill: str) -> pd.Categorical:
    """A label column as a Categorical of strings, nulls replaced by ``fill``."""
    cat = pd.Categorical(s)
    if not all(isinstance(c, str) for c in cat.categories):
        cat = pd.Categorical(np.where(pd.isna(s), None, s.astype(str)))
    if cat.isna().any():
        if fill not in cat.categories:
            cat = cat.add_categories([fill])
        cat = cat.fillna(fill)
    return cat.remove_unused_categories()


def flag_names(bits: int) -> str:
    """``0x012`` -> ``"SYN+ACK"``; 0 -> ``"NULL"``."""
    names = [name for name, bit in _FLAG_ORDER if bits & bit]
    return "+".join(names) if names else NO_FLAGS


def flag_bits(names: str) -> int | None:
    """Inverse of ``flag_names``; ``None`` for ``"na"`` (not TCP)."""
    if names == NOT_TCP:
        return None
    if names == NO_FLAGS:
        return 0
    try:
        return sum(TCP_FLAG_BITS[n] for n in names.split("+"))
    except KeyError as exc:
        raise NecstError(f"unknown TCP flag {exc.args[0]!r} in {names!r}") from None


def port_bucket(port: int | None) -> str:
    """The bucket label of one port (see the module docstring)."""
    if port is None or (isinstance(port, float) and math.isnan(port)):
        return NO_PORT
    port = int(port)
    if port < 1024 or port in COMMON_PORTS:
        return str(port)
    for label, (lo, hi) in PORT_RANGES.items():
        if lo <= port <= hi:
            return label
    raise NecstError(f"port {port} is outside 0-65535")


def _lookup_labels(values: np.ndarray, size: int, label_of) -> pd.Categorical:
    """Label small non-negative integers (``-1`` = absent) through a table, without sorting."""
    if len(values) and (values.min() < -1 or values.max() >= size):
        raise NecstError(f"value {values.max() if values.max() >= size else values.min()} "
                         f"is outside 0-{size - 1}")
    present = np.flatnonzero(np.bincount(values + 1, minlength=size + 1))
    labels = [label_of(int(v) - 1) for v in present]
    cats = sorted(set(labels))
    index = {c: i for i, c in enumerate(cats)}
    table = np.zeros(size + 1, dtype=np.int32)
    table[present] = [index[label] for label in labels]
    return pd.Categorical.from_codes(table[values + 1], categories=cats)


def _port_buckets(s: pd.Series) -> pd.Categorical:
    return _lookup_labels(_ints(s, -1), 65536, lambda p: port_bucket(None if p < 0 else p))


def _flag_labels(flags: pd.Series, is_tcp: np.ndarray) -> pd.Categorical:
    bits = np.where(is_tcp, _ints(flags, 0) & 0x1FF, -1)
    return _lookup_labels(bits, 512, lambda b: NOT_TCP if b < 0 else flag_names(b))


def _kind(ip_proto: np.ndarray, has_ports: np.ndarray) -> pd.Categorical:
    codes = np.full(len(ip_proto), 0, dtype=np.int8)  # noflow
    codes[(ip_proto == 6) & has_ports] = 1
    codes[(ip_proto == 17) & has_ports] = 2
    return pd.Categorical.from_codes(codes, categories=["noflow", "tcp", "udp"])


def _rolling(group: np.ndarray, order: np.ndarray, ts: np.ndarray, nbytes: np.ndarray,
             windows_ns: Sequence[int]):
    """Bytes and packets of the same group in ``(t - w, t]`` for the rows ``order`` sorts.

    ``order`` sorts the rows by (group, ts); ``group`` and ``nbytes`` are in that order, ``ts``
    in the input's. Each timestamp is replaced by its rank among all timestamps, so that
    ``group * R + rank`` is one sorted int64 key and one ``searchsorted`` finds every window's
    first row, without the overflow ``group * span + ts`` would risk on long captures. Ranks
    are searched in time order (the capture's order, nearly sorted already), where binary
    searches run over monotone queries. Rows tied on a timestamp count up to the row itself.
    """
    n = len(ts)
    by_time = np.argsort(ts, kind="stable")  # timsort: about linear on capture order
    every = ts[by_time]

    def rank(values_by_time: np.ndarray) -> np.ndarray:
        """Count of timestamps <= each value, back in (group, ts) order."""
        r = np.empty(n, dtype=np.int64)
        r[by_time] = np.searchsorted(every, values_by_time, side="right")
        return r[order]

    base = group * np.int64(n + 1)
    key = base + rank(every)
    cum = np.concatenate([[0], np.cumsum(nbytes, dtype=np.int64)])
    rows = np.arange(n, dtype=np.int64)
    out = []
    for w in windows_ns:
        # rank(t_j) <= rank(t - w) exactly when t_j <= t - w: those rows precede the window
        first = np.searchsorted(key, base + rank(every - w), side="right")
        out.append((cum[rows + 1] - cum[first], rows + 1 - first))
    return out


def packet_features(packets: pa.Table | pd.DataFrame) -> pd.DataFrame:
    """Per-packet features in real units (see the module docstring), in the input's row order."""
    needed = ["ts_ns", "wire_len", "ip_proto", "src_port", "dst_port", "tcp_flags",
              "payload_len", "app", "flow_id", "direction", "flow_pos", "flow_iat_ns"]
    df = _to_pandas(packets, needed, "packet table")
    n = len(df)
    ts = _ints(df["ts_ns"], 0)
    wire = _ints(df["wire_len"], 0)
    payload = _ints(df["payload_len"], 0)
    if np.any(payload > wire):
        raise NecstError("packet table has payload_len greater than wire_len")
    has_ports = df["src_port"].notna().to_numpy() & df["dst_port"].notna().to_numpy()
    kind = _kind(_ints(df["ip_proto"], -1), has_ports)
    flow = df["flow_id"]
    flow_ids = _ints(flow, 0)
    if flow.isna().any():  # a packet without a flow is a flow of its own
        alone = flow.isna().to_numpy()
        flow_ids[alone] = -1 - np.flatnonzero(alone)

    order = np.lexsort((ts, flow_ids))
    f_sorted, t_sorted, w_sorted = flow_ids[order], ts[order], wire[order]
    new_group = np.empty(n, dtype=bool)
    new_group[:1] = True
    np.not_equal(f_sorted[1:], f_sorted[:-1], out=new_group[1:])
    group = np.cumsum(new_group) - 1
    group_first = np.flatnonzero(new_group)[group]
    cum = np.concatenate([[0], np.cumsum(w_sorted, dtype=np.int64)])
    so_far = cum[np.arange(1, n + 1)] - cum[group_first]
    elapsed_s = (t_sorted - t_sorted[group_first]) / 1e9
    rate_sorted = np.divide(so_far, elapsed_s, out=np.zeros(n), where=elapsed_s > 0)
    windows = _rolling(group, order, ts, w_sorted, [w * 1_000_000_000 for w in WINDOWS_S])

    def unsort(values: np.ndarray) -> np.ndarray:
        out = np.empty_like(values)
        out[order] = values
        return out

    out = {
        "flow_id": flow_ids,
        "ts_ns": ts,
        "kind": kind,
        "app": _labels(df["app"], "unknown"),
        "flag_combo": _flag_labels(df["tcp_flags"], np.asarray(kind.codes == 1)),
        "src_port": _port_buckets(df["src_port"]),
        "dst_port": _port_buckets(df["dst_port"]),
        "direction": _ints(df["direction"], 0).astype(np.uint8),
        "flow_pos": _ints(df["flow_pos"], 0),
        "wire_len": wire,
        "hdr_len": wire - payload,
        "payload_len": payload,
        "gap_s": np.maximum(_ints(df["flow_iat_ns"], 0), 0) / 1e9,
        "rate_Bps": unsort(rate_sorted),
    }
    for w, (b, p) in zip(WINDOWS_S, windows):
        out[f"bytes_{w}s"] = unsort(b)
        out[f"pkts_{w}s"] = unsort(p)
    return pd.DataFrame(out, index=df.index if isinstance(packets, pd.DataFrame) else None)


def flow_features(flows: pa.Table | pd.DataFrame) -> pd.DataFrame:
    """Per-flow features for the flow and aggregate levels, in real units.

    ``start_s`` counts seconds from the earliest flow of the table, whose absolute time (ns
    since the epoch) is kept in ``df.attrs["origin_ns"]``; ``duration_s`` is last minus first
    packet. Times come from the ``*_ns`` columns.
    """
    needed = ["flow_id", "kind", "app", "src_port", "dst_port", "end_reason", "handshake",
              "bidirectional_packets", "bidirectional_bytes", "src2dst_packets", "src2dst_bytes",
              "dst2src_packets", "dst2src_bytes", "first_seen_ns", "last_seen_ns"]
    df = _to_pandas(flows, needed, "flow table")
    first = _ints(df["first_seen_ns"], 0)
    last = _ints(df["last_seen_ns"], 0)
    origin = int(first.min()) if len(first) else 0
    out = pd.DataFrame({
        "flow_id": _ints(df["flow_id"], -1),
        "kind": _labels(df["kind"], "noflow"),
        "app": _labels(df["app"], "unknown"),
        "src_port": _port_buckets(df["src_port"]),
        "dst_port": _port_buckets(df["dst_port"]),
        "end_reason": _labels(df["end_reason"], "eof"),
        "handshake": df["handshake"].fillna(False).to_numpy(dtype=bool),
        "packets": _ints(df["bidirectional_packets"], 0),
        "bytes": _ints(df["bidirectional_bytes"], 0),
        "src2dst_packets": _ints(df["src2dst_packets"], 0),
        "src2dst_bytes": _ints(df["src2dst_bytes"], 0),
        "dst2src_packets": _ints(df["dst2src_packets"], 0),
        "dst2src_bytes": _ints(df["dst2src_bytes"], 0),
        "duration_s": np.maximum(last - first, 0) / 1e9,
        "start_s": (first - origin) / 1e9,
    }, index=df.index if isinstance(flows, pd.DataFrame) else None)
    out.attrs["origin_ns"] = origin
    return out


# --------------------------------------------------------------------------------------------
# FeatureSpec
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Block:
    """One head of the model: a continuous column (width 1) or a one-hot categorical block."""

    name: str
    kind: str  # "continuous" or "categorical"
    slice: slice
    categories: tuple | None = None  # the fitted vocabulary, then "other" (categorical only)


def continuous(name: str, *, log: bool = False, eps: float = 1.0, integer: bool = False) -> dict:
    """Config of a continuous column: ``log10(x + eps)`` when ``log``, then min-max to [0, 1]."""
    return {"name": name, "type": "continuous", "log": bool(log), "eps": float(eps),
            "integer": bool(integer)}


def categorical(name: str, *, min_frequency: float = 1, given: str | None = None,
                decode_other: bool = True, dtype: str | None = None) -> dict:
    """Config of a categorical column, one-hot with an ``other`` slot for unseen values.

    ``min_frequency``: values seen fewer times (an int) or in a smaller share of rows (a float
    below 1) join ``other``. ``given``: another categorical column; decoding then only picks
    values seen together with the decoded value of that column (flags given kind).
    ``decode_other=False``: decoding never answers ``other`` when a fitted value is allowed.
    ``dtype``: cast of the decoded values (e.g. ``"uint8"``) when no ``other`` is among them.
    """
    return {"name": name, "type": "categorical", "min_frequency": min_frequency,
            "given": given, "decode_other": bool(decode_other), "dtype": dtype}


def _py(v: Any) -> Any:
    return v.item() if isinstance(v, np.generic) else v


def _sort_key(v: Any):
    return (type(v).__name__, v)


class FeatureSpec:
    """Reversible map between a feature table and the models' matrix, fitted on data.

    The matrix holds the continuous columns first (one column each, in [0, 1]), then one
    one-hot block per categorical column (its fitted values in sorted order, then ``other``).
    ``blocks`` describes the heads. Learned state: ``bounds_`` (real-unit min and max of each
    continuous column), ``categories_``, ``allowed_`` (for ``given`` columns), ``blocks``.
    """

    def __init__(self, columns: Sequence[dict]):
        self.columns = [dict(c) for c in columns]
        names = [c["name"] for c in self.columns]
        if len(set(names)) != len(names):
            raise NecstError(f"FeatureSpec has duplicate columns: {names}")
        cats = {c["name"] for c in self.columns if c["type"] == "categorical"}
        for c in self.columns:
            if c["type"] not in ("continuous", "categorical"):
                raise NecstError(f"FeatureSpec column {c['name']!r} has unknown type {c['type']!r}")
            if c.get("given") is not None and (c["given"] not in cats or c["given"] == c["name"]):
                raise NecstError(f"FeatureSpec column {c['name']!r} is given {c['given']!r}, "
                                 "which is not another categorical column")
            if c.get("given") is not None and next(
                    d for d in self.columns if d["name"] == c["given"]).get("given") is not None:
                raise NecstError(f"FeatureSpec column {c['given']!r} is itself conditioned")
        self._cont = [c for c in self.columns if c["type"] == "continuous"]
        self._cat = [c for c in self.columns if c["type"] == "categorical"]

    # -- fitting ----------------------------------------------------------------------------

    def fit(self, df: pd.DataFrame) -> "FeatureSpec":
        self._check_columns(df)
        if len(df) == 0:
            raise NecstError("cannot fit a FeatureSpec on an empty table")
        self.bounds_ = {}
        for c in self._cont:
            x = self._values(df, c)
            lo, hi = float(x.min()), float(x.max())
            if c["log"] and lo + c["eps"] <= 0:
                raise NecstError(f"column {c['name']!r} has values <= -eps ({lo}); "
                                 "log10(x + eps) is undefined")
            self.bounds_[c["name"]] = (lo, hi)
        self.categories_ = {}
        codes = {}
        for c in self._cat:
            s = df[c["name"]]
            if s.isna().any():
                raise NecstError(f"column {c['name']!r} has missing values")
            counts = s.value_counts(sort=False)
            counts = counts[counts > 0]
            mf = c["min_frequency"]
            need = mf if mf >= 1 else math.ceil(mf * len(df))
            kept = [_py(v) for v, k in counts.items() if k >= need]
            self.categories_[c["name"]] = sorted(kept, key=_sort_key)
            codes[c["name"]] = self._codes(df, c)
        self.allowed_ = {}
        for c in self._cat:
            if c["given"] is None:
                continue
            stride = len(self.categories_[c["name"]]) + 1
            pairs = np.unique(codes[c["given"]] * stride + codes[c["name"]])
            seen: dict[int, list[int]] = {}
            for p, q in zip(pairs // stride, pairs % stride):
                seen.setdefault(int(p), []).append(int(q))
            self.allowed_[c["name"]] = [[p, qs] for p, qs in sorted(seen.items())]
        self._make_blocks()
        return self

    def _make_blocks(self) -> None:
        blocks, at = [], 0
        for c in self._cont:
            blocks.append(Block(c["name"], "continuous", slice(at, at + 1)))
            at += 1
        for c in self._cat:
            cats = tuple(self.categories_[c["name"]]) + (OTHER,)
            blocks.append(Block(c["name"], "categorical", slice(at, at + len(cats)), cats))
            at += len(cats)
        self.blocks = blocks
        self.n_features_ = at

    def get_feature_names_out(self) -> list[str]:
        """One name per matrix column: ``wire_len``, ..., ``kind=tcp``, ``kind=other``."""
        self._check_fitted()
        names = []
        for b in self.blocks:
            names += [b.name] if b.kind == "continuous" else [f"{b.name}={c}" for c in b.categories]
        return names

    @property
    def continuous_slice(self) -> slice:
        """The columns of the continuous block (one sigmoid head)."""
        return slice(0, len(self._cont))

    # -- mapping ----------------------------------------------------------------------------

    def _check_fitted(self) -> None:
        if not hasattr(self, "blocks"):
            raise NecstError("FeatureSpec is not fitted: call fit(df) first")

    def _check_columns(self, df: pd.DataFrame) -> None:
        missing = [c["name"] for c in self.columns if c["name"] not in df.columns]
        if missing:
            raise NecstError(f"feature table lacks columns {missing}")

    @staticmethod
    def _values(df: pd.DataFrame, c: dict) -> np.ndarray:
        try:
            x = df[c["name"]].to_numpy(dtype=np.float64)
        except (TypeError, ValueError):
            raise NecstError(f"column {c['name']!r} is not numeric") from None
        if not np.all(np.isfinite(x)):
            raise NecstError(f"column {c['name']!r} has missing or infinite values")
        return x

    def _z(self, c: dict, x: np.ndarray) -> np.ndarray:
        return np.log10(x + c["eps"]) if c["log"] else x

    def _zbounds(self, c: dict) -> tuple[float, float]:
        lo, hi = self.bounds_[c["name"]]
        zlo, zhi = self._z(c, np.array([lo, hi]))
        return float(zlo), float(zhi)

    def _codes(self, df: pd.DataFrame, c: dict) -> np.ndarray:
        s = df[c["name"]]
        if s.isna().any():
            raise NecstError(f"column {c['name']!r} has missing values")
        cats = self.categories_[c["name"]]
        own = s.array if isinstance(s.dtype, pd.CategoricalDtype) else pd.Categorical(s)
        lookup = pd.Index(cats, dtype=object).get_indexer(pd.Index(own.categories, dtype=object))
        lookup[lookup < 0] = len(cats)  # unseen or infrequent -> other
        codes = lookup.astype(np.int64)[np.asarray(own.codes)]
        return codes

    def transform(self, df: pd.DataFrame, dtype=np.float32) -> np.ndarray:
        """The model matrix; pass ``dtype=np.float64`` for an exact round trip."""
        self._check_fitted()
        self._check_columns(df)
        X = np.zeros((len(df), self.n_features_), dtype=dtype)
        for j, c in enumerate(self._cont):
            lo, hi = self.bounds_[c["name"]]
            z = self._z(c, np.clip(self._values(df, c), lo, hi))
            zlo, zhi = self._zbounds(c)
            X[:, j] = (z - zlo) / (zhi - zlo) if zhi > zlo else 0.0
        rows = np.arange(len(df))
        for c, b in zip(self._cat, self.blocks[len(self._cont):]):
            X[rows, b.slice.start + self._codes(df, c)] = 1
        return X

    def fit_transform(self, df: pd.DataFrame, dtype=np.float32) -> np.ndarray:
        return self.fit(df).transform(df, dtype=dtype)

    def inverse_transform(self, X: np.ndarray) -> pd.DataFrame:
        """Real units back: integers rounded, categories by (allowed) argmax, clipped to the fit."""
        self._check_fitted()
        X = np.asarray(X)
        if X.ndim != 2 or X.shape[1] != self.n_features_:
            raise NecstError(f"matrix has shape {X.shape}, expected (n, {self.n_features_})")
        out = {}
        for j, c in enumerate(self._cont):
            lo, hi = self.bounds_[c["name"]]
            zlo, zhi = self._zbounds(c)
            u = np.clip(X[:, j].astype(np.float64), 0.0, 1.0)
            z = zlo + u * (zhi - zlo)
            x = np.power(10.0, z) - c["eps"] if c["log"] else z
            x = np.clip(x, lo, hi)
            out[c["name"]] = np.rint(x).astype(np.int64) if c["integer"] else x
        by_name = {b.name: b for b in self.blocks}
        codes = {}
        for c in sorted(self._cat, key=lambda c: c["given"] is not None):  # parents first
            b = by_name[c["name"]]
            scores = X[:, b.slice].astype(np.float64)
            mask = np.ones(scores.shape[1], dtype=bool)
            if not c["decode_other"] and scores.shape[1] > 1:
                mask[-1] = False
            if c["given"] is None:
                codes[c["name"]] = np.argmax(np.where(mask, scores, -np.inf), axis=1)
            else:
                allowed = np.tile(mask, (len(by_name[c["given"]].categories), 1))
                for p, qs in self.allowed_[c["name"]]:
                    row = np.zeros(scores.shape[1], dtype=bool)
                    row[qs] = True
                    row &= mask
                    allowed[p] = row if row.any() else mask
                codes[c["name"]] = np.argmax(
                    np.where(allowed[codes[c["given"]]], scores, -np.inf), axis=1)
            values = np.array(b.categories, dtype=object)[codes[c["name"]]]
            if c["dtype"] and not np.any(codes[c["name"]] == len(b.categories) - 1):
                values = values.astype(c["dtype"])
            out[c["name"]] = values
        return pd.DataFrame({c["name"]: out[c["name"]] for c in self.columns})

    def float32_error(self) -> dict[str, float]:
        """Worst error, in real units, that float32 storage of each continuous column adds."""
        self._check_fitted()
        ulp = 2.0 ** -24
        err = {}
        for c in self._cont:
            lo, hi = self.bounds_[c["name"]]
            zlo, zhi = self._zbounds(c)
            if c["log"]:
                err[c["name"]] = (hi + c["eps"]) * (10 ** ((zhi - zlo) * ulp) - 1)
            else:
                err[c["name"]] = (hi - lo) * ulp
        return err

    # -- JSON -------------------------------------------------------------------------------

    def to_json(self) -> str:
        state = {"format": "necst.FeatureSpec", "version": 1, "columns": self.columns}
        if hasattr(self, "blocks"):
            state["fitted"] = {"bounds": {k: list(v) for k, v in self.bounds_.items()},
                               "categories": self.categories_, "allowed": self.allowed_}
        return json.dumps(state, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "FeatureSpec":
        try:
            state = json.loads(text)
        except json.JSONDecodeError as exc:
            raise NecstError(f"FeatureSpec JSON is malformed: {exc}") from None
        if not isinstance(state, dict) or state.get("format") != "necst.FeatureSpec":
            raise NecstError("not a FeatureSpec JSON (format field missing)")
        if state.get("version") != 1:
            raise NecstError(f"FeatureSpec JSON version {state.get('version')} is not supported")
        spec = cls(state["columns"])
        fitted = state.get("fitted")
        if fitted is not None:
            spec.bounds_ = {k: (float(v[0]), float(v[1])) for k, v in fitted["bounds"].items()}
            spec.categories_ = {k: list(v) for k, v in fitted["categories"].items()}
            spec.allowed_ = {k: [[int(p), [int(q) for q in qs]] for p, qs in v]
                             for k, v in fitted["allowed"].items()}
            spec._make_blocks()
        return spec

    def __repr__(self) -> str:
        return f"FeatureSpec({[c['name'] for c in self.columns]})"


def packet_spec(min_port_frequency: float = 1e-4) -> FeatureSpec:
    """The default spec of the packet-level VAE over ``packet_features`` columns."""
    return FeatureSpec([
        continuous("wire_len", integer=True),
        continuous("hdr_len", integer=True),
        continuous("payload_len", integer=True),
        continuous("flow_pos", log=True, eps=1.0, integer=True),
        continuous("gap_s", log=True, eps=1e-6),
        continuous("rate_Bps", log=True, eps=1.0),
        continuous("bytes_1s", log=True, eps=1.0, integer=True),
        continuous("pkts_1s", log=True, eps=1.0, integer=True),
        continuous("bytes_60s", log=True, eps=1.0, integer=True),
        continuous("pkts_60s", log=True, eps=1.0, integer=True),
        *packet_categoricals(min_port_frequency),
    ])


def packet_categoricals(min_port_frequency: float = 1e-4) -> list:
    """The categorical heads every packet-level spec shares: kind, app, flags and ports given the
    kind, direction."""
    return [
        categorical("kind", decode_other=False),
        categorical("app"),
        categorical("flag_combo", given="kind", decode_other=False),
        categorical("src_port", given="kind", min_frequency=min_port_frequency),
        categorical("dst_port", given="kind", min_frequency=min_port_frequency),
        categorical("direction", decode_other=False, dtype="uint8"),
    ]


def flow_spec(min_port_frequency: float = 1e-3) -> FeatureSpec:
    """The default spec of flow / aggregate attributes over ``flow_features`` columns."""
    return FeatureSpec([
        continuous("packets", log=True, eps=1.0, integer=True),
        continuous("bytes", log=True, eps=1.0, integer=True),
        continuous("src2dst_packets", log=True, eps=1.0, integer=True),
        continuous("src2dst_bytes", log=True, eps=1.0, integer=True),
        continuous("dst2src_packets", log=True, eps=1.0, integer=True),
        continuous("dst2src_bytes", log=True, eps=1.0, integer=True),
        continuous("duration_s", log=True, eps=1e-6),
        continuous("start_s"),
        categorical("kind", decode_other=False),
        categorical("app"),
        categorical("src_port", given="kind", min_frequency=min_port_frequency),
        categorical("dst_port", given="kind", min_frequency=min_port_frequency),
        categorical("end_reason", decode_other=False),
        categorical("handshake", decode_other=False, dtype="bool"),
    ])
