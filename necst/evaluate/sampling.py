"""Second samples to compare against: a time split of the real capture, and the trivial
generator that draws every column on its own.

Both work on pyarrow Tables or pandas DataFrames and return the same kind they were given.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from necst.errors import NecstError


def _column(table, name: str) -> np.ndarray | None:
    if isinstance(table, pd.DataFrame):
        if name not in table.columns:
            return None
        s = pd.to_numeric(table[name], errors="coerce").astype("Float64")
        return s.to_numpy(np.float64, na_value=np.nan)
    if name not in table.column_names:
        return None
    col = table.column(name)
    return col.to_pandas().astype("Float64").to_numpy(np.float64, na_value=np.nan)


def _take(table, idx: np.ndarray):
    if isinstance(table, pd.DataFrame):
        return table.iloc[idx].reset_index(drop=True)
    return table.take(idx)


def split_by_time(packets, flows=None, fraction: float = 0.7):
    """Cut one capture in two, earlier and later, keeping every flow whole.

    The cut is the time by which ``fraction`` of the packets have been seen. A flow belongs to
    the part in which its first packet lies, and all its packets follow it (so part A may run a
    little past the cut); packets outside any flow go by their own time. Returns
    ``((packets_a, flows_a), (packets_b, flows_b))``.
    """
    if not 0.0 < fraction < 1.0:
        raise NecstError(f"--split must lie strictly between 0 and 1, got {fraction}")
    ts = _column(packets, "ts_ns")
    if ts is None or len(ts) < 2:
        raise NecstError("cannot split by time: fewer than two packets")
    cut = np.sort(ts)[min(int(fraction * len(ts)), len(ts) - 1)]
    fid = _column(packets, "flow_id")
    start = ts.copy()
    if fid is not None:
        has = np.isfinite(fid)
        flow_start = pd.Series(ts[has]).groupby(fid[has]).transform("min").to_numpy()
        start[has] = flow_start
    in_a = start < cut
    if in_a.all() or not in_a.any():
        raise NecstError(f"cannot split by time at {fraction}: one part would be empty")
    pa_, pb_ = _take(packets, np.flatnonzero(in_a)), _take(packets, np.flatnonzero(~in_a))
    if flows is None:
        return (pa_, None), (pb_, None)
    f_start = _column(flows, "first_seen_ns")
    if f_start is None:
        ms = _column(flows, "bidirectional_first_seen_ms")
        if ms is None:
            raise NecstError("cannot split flows by time: no first_seen_ns column")
        f_start = ms * 1e6
    fa = f_start < cut
    return (pa_, _take(flows, np.flatnonzero(fa))), (pb_, _take(flows, np.flatnonzero(~fa)))


def sample_marginals(table, n: int | None = None, *, seed: int = 0, sort_by: str | None = None):
    """Each column drawn on its own, with replacement, from ``table``: the trivial generator.

    It matches every one-column histogram by construction and nothing that ties columns
    together (a flow's flags in order, its packets with its bytes), which is what a model must
    add. ``n`` rows (default: as many as ``table``); ``sort_by`` orders the result (time).
    """
    rng = np.random.default_rng(seed)
    rows = len(table)
    if rows == 0:
        return table
    n = rows if n is None else int(n)
    if isinstance(table, pd.DataFrame):
        out = pd.DataFrame({c: table[c].iloc[rng.integers(0, rows, n)].to_numpy()
                            for c in table.columns})
        for c in table.columns:
            out[c] = out[c].astype(table[c].dtype)
        if sort_by is not None and sort_by in out.columns:
            out = out.sort_values(sort_by, kind="stable").reset_index(drop=True)
        return out
    import pyarrow as pa
    import pyarrow.compute as pc

    cols = [table.column(i).take(pa.array(rng.integers(0, rows, n)))
            for i in range(table.num_columns)]
    out = pa.Table.from_arrays(cols, schema=table.schema)
    if sort_by is not None and sort_by in out.column_names:
        out = out.take(pc.sort_indices(out, sort_keys=[(sort_by, "ascending")]))
    return out


def marginals_baseline(packets, flows=None, *, seed: int = 0):
    """Packets and flows of the independent-marginals generator, as many as the reference."""
    p = sample_marginals(packets, seed=seed, sort_by="ts_ns")
    f = None if flows is None else sample_marginals(flows, seed=seed + 1)
    if f is not None:
        f = _duration_as_a_field(flows, f, seed=seed + 2)
    return p, f


def _duration_as_a_field(flows, sampled, *, seed: int):
    """Duration is a flow field of its own (as NFStream's bidirectional_duration_ms): draw it
    and set last_seen = first_seen + duration, rather than pair two unrelated timestamps."""
    first, last = _column(flows, "first_seen_ns"), _column(flows, "last_seen_ns")
    if first is None or last is None:
        return sampled
    rng = np.random.default_rng(seed)
    duration = (last - first)[rng.integers(0, len(first), len(sampled))]
    new_last = _column(sampled, "first_seen_ns") + duration
    if isinstance(sampled, pd.DataFrame):
        sampled = sampled.copy()
        sampled["last_seen_ns"] = pd.array(new_last, dtype="Int64").astype(sampled["last_seen_ns"].dtype)
        return sampled
    import pyarrow as pa

    i = sampled.schema.get_field_index("last_seen_ns")
    arr = pa.array(new_last, from_pandas=True).cast(pa.int64()).cast(sampled.schema.field(i).type)
    return sampled.set_column(i, sampled.schema.field(i), arr)
