"""The detector's report: a JSON summary an analyst reads first, and a CSV of every unit."""
from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

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
    return v


def _unit(row: pd.Series, idx: int) -> dict:
    d = {"unit": int(idx), "start_ns": int(row["start_ns"]), "end_ns": int(row["end_ns"]),
         "start": _iso(row["start_ns"]), "end": _iso(row["end_ns"]), "error": float(row["error"]),
         "flag": bool(row["flag"])}
    for k in _UNIT_FIELDS:
        if k in row.index:
            d[k] = _plain(row[k])
    d["top_features"] = [
        {"feature": row[f"top{j}_feature"], "value": _plain(row.get(row[f"top{j}_feature"], np.nan)),
         "share_of_error": round(float(row[f"top{j}_share"]), 4)}
        for j in (1, 2, 3) if f"top{j}_feature" in row.index
    ]
    return d


def build_report(scored: pd.DataFrame, detector, file: str | os.PathLike, packets: int | None = None,
                 top_k: int | None = None, alerts: list | None = None) -> dict:
    """The JSON-ready report of one scored capture."""
    top_k = detector.top_k if top_k is None else top_k
    n = len(scored)
    flags = scored["flag"].to_numpy() if n else np.zeros(0, bool)
    pp = detector.postprocess
    rep = {
        "file": str(file),
        "detector": detector.kind,
        "mode": detector.mode,
        "decision": detector.decision(scored),
        "anomalous_units": int(flags.sum()),
        "total_units": int(n),
        "packets": packets,
        "threshold": detector.threshold_["threshold"],
        "method": detector.threshold_["method"],
        "threshold_fit": detector.threshold_,
        "parameters": {**pp.to_dict(), "features": detector._fparams()},
        "alerts": [{"first_unit": a, "last_unit": b, "start": _iso(scored["start_ns"].iat[a]),
                    "end": _iso(scored["end_ns"].iat[b])} for a, b in (alerts or pp.alerts(flags))],
        "top_units": [],
        "max_error_unit": None,
    }
    if n:
        order = np.argsort(-scored["error"].to_numpy(), kind="stable")[:top_k]
        rep["top_units"] = [_unit(scored.iloc[i], i) for i in order]
        rep["max_error_unit"] = rep["top_units"][0]
    if n == 0:
        rep["note"] = "no units to score (the capture has no packets this mode can use)"
    return rep


def write_report(report: dict, scored: pd.DataFrame, out: str | os.PathLike, force: bool = False) -> tuple[Path, Path]:
    """``out`` (JSON) and the CSV beside it (same stem), each written to a temporary name first."""
    out = Path(out)
    csv = out.with_suffix(".csv")
    for p in (out, csv):
        if p.exists() and not force:
            raise OutputExistsError("exists already (use --force to overwrite)", p)
    out.parent.mkdir(parents=True, exist_ok=True)
    cols = [c for c in scored.columns if c in CSV_COLUMNS or c.endswith(("_per_s", "_entropy"))]
    table = scored[cols].copy()
    table.insert(0, "unit", np.arange(len(scored)))
    tmp_csv = csv.with_name(f".{csv.name}.tmp")
    import pyarrow as pa
    import pyarrow.csv as pacsv

    pacsv.write_csv(pa.Table.from_pandas(table, preserve_index=False), tmp_csv)
    tmp_json = out.with_name(f".{out.name}.tmp")
    tmp_json.write_text(json.dumps(report, indent=1, default=_plain))
    os.replace(tmp_csv, csv)
    os.replace(tmp_json, out)
    return out, csv
