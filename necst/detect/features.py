"""Detector features from a PacketTable: sliding windows, flows, or single packets.

Each ``*_features`` function returns a :class:`Units` — one row per scored unit (a window,
a flow or a packet) with its time span and packet count, the feature matrix, and the
feature names. Everything is whole-array numpy work, never a Python loop per packet; window
features live in :mod:`necst.detect.windows`, which also streams them batch by batch.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, List

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from necst.detect.windows import LOG_FEATURES, NO_PORT, WINDOW_FEATURES, WindowBlock, WindowStream
from necst.errors import NecstError

if TYPE_CHECKING:
    import pandas as pd

MODES = ("window", "flow", "packet")

_NO_PORT = NO_PORT


@dataclass
class Units:
    """Scored units: ``meta`` (start_ns, end_ns, packets, ...), ``X`` (float64), ``names``."""

    mode: str
    meta: "pd.DataFrame"
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
    if isinstance(packets, pa.RecordBatch):
        return pa.Table.from_batches([packets])
    pd = sys.modules.get("pandas")  # a DataFrame means pandas is loaded already
    if pd is not None and isinstance(packets, pd.DataFrame):
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
    import pandas as pd

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


# ---------------------------------------------------------------- window mode

def window_features(packets, width_s: float = 1.0, stride_s: float = 0.5, origin_ns: int | None = None,
                    flow_idle_s: float | None = 120.0) -> Units:
    """Sliding windows of ``width_s`` every ``stride_s`` (width a whole multiple of stride), over
    one table at once; :class:`necst.detect.windows.WindowStream` is the same, batch by batch.

    Windows never span two input files (file_index); empty windows are not units. The window
    grid starts at each file's first packet, or at ``origin_ns``.
    """
    return window_units(WindowStream(width_s, stride_s, origin_ns, flow_idle_s).whole(as_table(packets)))


def window_meta(block: WindowBlock) -> dict:
    """Per window: start_ns, end_ns, file_index and every feature, as numpy columns."""
    meta = {"start_ns": block.start_ns, "end_ns": block.end_ns, "file_index": block.file_index}
    for j, k in enumerate(WINDOW_FEATURES):
        meta[k] = block.X[:, j]
    return meta


def window_units(block: WindowBlock) -> Units:
    """A block of windows as :class:`Units` (meta: start_ns, end_ns, file_index and every feature)."""
    import pandas as pd

    return Units("window", pd.DataFrame(window_meta(block)), block.X, list(WINDOW_FEATURES), block.packet_window,
                 LOG_FEATURES)


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
