"""The detector's report: a JSON summary an analyst reads first, and a CSV of every unit.

Scored units come as a DataFrame (``Detector.score``) or as a dict of numpy columns
(``Detector.score_columns``, the path `necst detect score` takes, which never imports pandas).
"""
from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from necst.errors import OutputExistsError

_UNIT_FIELDS = ["packets", "packets_per_s", "bytes", "src_ip_entropy", "dst_ip_entropy",
                "src_ip", "dst_ip", "src_port", "dst_port", "protocol"]
CSV_COLUMNS = ["unit", "start_ns", "end_ns", "packets", "error", "flag", "top1_feature"]


def _iso(ns) -> str:
    return datetime.fromtimestamp(int(ns) / 1e9, tz=timezone.utc).isoformat(timespec="milliseconds")


def _plain(v):
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (np.floating,)):
        return None if not np.isfinite(v) else float(v)
    if isinstance(v, np.bool_):
        return bool(v)
    if isinstance(v, float) and not np.isfinite(v):  # a missing address in a pandas column: JSON has no NaN
        return None
    return v


class _LazyColumns(dict):
    """A DataFrame's columns as numpy arrays, each converted when first read: a report reads a few
    rows of most columns, and converting every column (IP addresses as a million strings) costs more
    than the rest of the report."""

    def __init__(self, frame):
        super().__init__()
        self._frame = frame
        self._names = list(frame.columns)

    def __missing__(self, key):
        if key not in self._names:
            raise KeyError(key)
        v = self[key] = self._frame[key].to_numpy()
        return v

    def __contains__(self, key) -> bool:
        return key in self._names

    def __iter__(self):
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)

    def keys(self):
        return list(self._names)

    def value(self, key, idx: int):
        """One cell, without converting the column."""
        return dict.__getitem__(self, key)[idx] if dict.__contains__(self, key) else self._frame[key].iat[idx]

    def items(self):
        return [(k, self[k]) for k in self._names]


def _columns(scored) -> dict:
    """Column name -> numpy array, for a DataFrame or a dict of arrays."""
    if isinstance(scored, dict):
        return {k: np.asarray(v) for k, v in scored.items()}
    return _LazyColumns(scored)


def _unit(cols: dict, idx: int) -> dict:
    d = {"unit": int(idx), "start_ns": int(cols["start_ns"][idx]), "end_ns": int(cols["end_ns"][idx]),
         "start": _iso(cols["start_ns"][idx]), "end": _iso(cols["end_ns"][idx]),
         "error": float(cols["error"][idx]), "flag": bool(cols["flag"][idx])}
    for k in _UNIT_FIELDS:
        if k in cols:
            d[k] = _plain(cols.value(k, idx) if isinstance(cols, _LazyColumns) else cols[k][idx])
    d["top_features"] = []
    for j in (1, 2, 3):
        if f"top{j}_feature" not in cols:
            continue
        name = cols[f"top{j}_feature"][idx]
        value = (cols.value(name, idx) if isinstance(cols, _LazyColumns) else cols[name][idx]) if name in cols else None
        d["top_features"].append({"feature": name, "value": _plain(value),
                                  "share_of_error": round(float(cols[f"top{j}_share"][idx]), 4)})
    return d


def build_report(scored, detector, file: str | os.PathLike, packets: int | None = None,
                 top_k: int | None = None, alerts: list | None = None) -> dict:
    """The JSON-ready report of one scored capture (a DataFrame or a dict of columns)."""
    top_k = detector.top_k if top_k is None else top_k
    cols = _columns(scored)
    flags = cols["flag"].astype(bool) if "flag" in cols else np.zeros(0, bool)
    n = len(flags)
    pp = detector.postprocess
    rep = {
        "file": str(file),
        "detector": detector.kind,
        "mode": detector.mode,
        "decision": pp.decision(flags),
        "anomalous_units": int(flags.sum()),
        "total_units": int(n),
        "packets": packets,
        "threshold": detector.threshold_["threshold"],
        "method": detector.threshold_["method"],
        "threshold_fit": detector.threshold_,
        "parameters": {**pp.to_dict(), "features": detector._fparams()},
        "alerts": [{"first_unit": a, "last_unit": b, "start": _iso(cols["start_ns"][a]),
                    "end": _iso(cols["end_ns"][b])} for a, b in (alerts or pp.alerts(flags))],
        "top_units": [],
        "max_error_unit": None,
    }
    if n:
        order = np.argsort(-cols["error"], kind="stable")[:top_k]
        rep["top_units"] = [_unit(cols, int(i)) for i in order]
        rep["max_error_unit"] = rep["top_units"][0]
    if n == 0:
        rep["note"] = "no units to score (the capture has no packets this mode can use)"
    return rep


def write_report(report: dict, scored, out: str | os.PathLike, force: bool = False) -> tuple[Path, Path]:
    """``out`` (JSON) and the CSV beside it (same stem), each written to a temporary name first."""
    out = Path(out)
    csv = out.with_suffix(".csv")
    for p in (out, csv):
        if p.exists() and not force:
            raise OutputExistsError("exists already (use --force to overwrite)", p)
    out.parent.mkdir(parents=True, exist_ok=True)
    import pyarrow as pa
    import pyarrow.csv as pacsv

    cols = _columns(scored)
    n = len(cols["flag"]) if "flag" in cols else 0
    table = {"unit": np.arange(n)}
    table.update({c: cols[c] for c in cols if c in CSV_COLUMNS or c.endswith(("_per_s", "_entropy"))})
    tmp_csv = csv.with_name(f".{csv.name}.tmp")
    from necst.schema import arrow_array, string_array

    def column(v: np.ndarray) -> pa.Array:  # not pa.array(): it imports pandas
        v = np.asarray(v)
        return string_array(v) if v.dtype == object else arrow_array(v, pa.from_numpy_dtype(v.dtype))

    pacsv.write_csv(pa.table({c: column(v) for c, v in table.items()}), tmp_csv)
    tmp_json = out.with_name(f".{out.name}.tmp")
    tmp_json.write_text(json.dumps(report, indent=1, default=_plain))
    os.replace(tmp_csv, csv)
    os.replace(tmp_json, out)
    return out, csv
