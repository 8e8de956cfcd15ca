#!/usr/bin/env python3
"""Detector quality on real captures: train on the iot_sentinel training split, score the
held-out part with each attack capture of ../shared/data/attacks spliced in (time-shifted,
labelled per packet by origin), and print ROC AUC, PR AUC, TPR at FPR 0.001 and detection delay.

The threshold comes from held-out normal training units only (never from the test labels). A
window is an attack window when it holds any packet of the attack capture, whatever that packet
is, so an attack file's own benign background caps what any detector can reach: ssh-hydra's last
packet is an IPv6 mDNS announcement 15 s after the last SSH packet, alone in its two windows;
icmp-portscan opens with one ordinary ping to the gateway and two to one host before its sweep.

usage: PYTHONPATH=. python scripts/eval_detect.py [--modes window] [--detectors autoencoder isolation_forest]
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
sys.path.insert(0, str(ROOT))

from necst.detect.detector import DETECTORS  # noqa: E402
from necst.detect.io import read_packets  # noqa: E402

COLS = ["ts_ns", "wire_len", "src_ip", "dst_ip", "ip_proto", "src_port", "dst_port", "tcp_flags", "icmp_type",
        "file_index"]


def read(path: Path) -> pa.Table:
    return read_packets(path)


def split() -> tuple[list[Path], list[Path]]:
    out = subprocess.run([sys.executable, str(SHARED / "tools" / "iot_split.py")], capture_output=True,
                         text=True, check=True).stdout
    parts = {"train": [], "heldout": []}
    for line in out.splitlines():
        part, p = line.split("\t")
        parts[part].append(Path(p))
    return parts["train"], parts["heldout"]


def concat_timeline(tables: list[pa.Table]) -> pa.Table:
    """Held-out captures one after another (1 ms apart), as one file, like the bench capture."""
    out, clock = [], None
    for t in tables:
        if t.num_rows == 0:
            continue
        t = t.select(COLS)
        ts = t.column("ts_ns").to_numpy()
        shift = 0 if clock is None else clock + 1_000_000 - int(ts[0])
        t = t.set_column(0, "ts_ns", pa.array(ts + shift, pa.int64()))
        t = t.set_column(COLS.index("file_index"), "file_index", pa.array(np.zeros(t.num_rows, np.uint16)))
        out.append(t)
        clock = int(ts[-1] + shift)
    return pa.concat_tables([o.cast(out[0].schema) for o in out])


def splice(normal: pa.Table, attack: pa.Table, at_fraction: float = 0.5):
    ts = normal.column("ts_ns").to_numpy()
    at = attack.select(COLS).cast(normal.schema)
    ats = at.column("ts_ns").to_numpy()
    start = int(ts[0] + (ts[-1] - ts[0]) * at_fraction)
    at = at.set_column(0, "ts_ns", pa.array(ats - ats[0] + start, pa.int64()))
    t = pa.concat_tables([normal, at])
    label = np.r_[np.zeros(normal.num_rows, bool), np.ones(at.num_rows, bool)]
    order = np.argsort(t.column("ts_ns").to_numpy(), kind="stable")
    return t.take(pa.array(order)), label[order]


def unit_labels(scored, packets: pa.Table, label: np.ndarray, mode: str, det=None) -> np.ndarray:
    ts = packets.column("ts_ns").to_numpy()
    if mode == "flow":  # a flow is an attack flow when any of its packets came from the attack capture
        pu = det.features(packets).packet_unit
        return np.bincount(pu, weights=label.astype(float), minlength=len(scored)) > 0
    ats = np.sort(ts[label])
    if mode == "packet":
        return label[scored["row"].to_numpy()]
    lo = np.searchsorted(ats, scored["start_ns"].to_numpy(), side="left")
    hi = np.searchsorted(ats, scored["end_ns"].to_numpy(), side="left" if mode == "window" else "right")
    return hi > lo


def metrics(y: np.ndarray, s: np.ndarray, flag: np.ndarray, scored, attack_start_ns: int) -> dict:
    from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

    fpr, tpr, _ = roc_curve(y, s)
    tpr_at = float(np.interp(0.001, fpr, tpr))
    hit = np.flatnonzero(flag & y)
    delay = (float(scored["end_ns"].to_numpy()[hit[0]] - attack_start_ns) / 1e9) if hit.size else float("nan")
    fp = int((flag & ~y).sum())
    return {"roc_auc": roc_auc_score(y, s), "pr_auc": average_precision_score(y, s), "tpr@fpr1e-3": tpr_at,
            "delay_s": delay, "pos": int(y.sum()), "neg": int((~y).sum()), "flagged_fp": fp,
            "tp_flagged": int(hit.size)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--modes", nargs="+", default=["window"])
    ap.add_argument("--detectors", nargs="+", default=["autoencoder", "isolation_forest"])
    ap.add_argument("--threshold", default="quantile")
    ap.add_argument("--q", type=float, default=0.999)
    ap.add_argument("--clip", type=float, default=20.0, help="robust-scaled features are clipped to ±clip")
    a = ap.parse_args()
    t0 = time.time()
    train_paths, held_paths = split()
    train = [read(p) for p in train_paths]
    held = concat_timeline([read(p) for p in held_paths])
    attacks = sorted((SHARED / "data" / "attacks").glob("*/*.pcap"))
    attacks = [p for p in attacks if "normal" not in p.name]
    att_tables = {p: read(p) for p in attacks}
    print(f"read {sum(t.num_rows for t in train)} training and {held.num_rows} held-out packets, "
          f"{len(attacks)} attack captures in {time.time() - t0:.1f} s", flush=True)
    for mode in a.modes:
        for name in a.detectors:
            t1 = time.time()
            det = DETECTORS[name](mode=mode, threshold=a.threshold, q=a.q, clip=a.clip)
            det.fit(train)
            print(f"\n## {name}, {mode} mode: {det.n_train_units_} training units, threshold "
                  f"{det.threshold_['threshold']:.4g}, fitted in {time.time() - t1:.0f} s")
            base = det.score(held)
            print(f"held-out normal alone: {int(base['flag'].sum())} of {len(base)} units flagged, "
                  f"decision {det.decision(base)!r}")
            print("| attack | packets | units (attack) | ROC AUC | PR AUC | TPR@FPR=0.001 | delay s | decision |")
            print("| --- | --- | --- | --- | --- | --- | --- | --- |")
            for p in attacks:
                packets, label = splice(held, att_tables[p])
                scored = det.score(packets)
                y = unit_labels(scored, packets, label, mode, det)
                start = int(packets.column("ts_ns").to_numpy()[label][0])
                m = metrics(y, scored["error"].to_numpy(), scored["flag"].to_numpy(), scored, start)
                print(f"| {p.parent.name}/{p.stem} | {att_tables[p].num_rows} | {len(scored)} ({m['pos']}) | "
                      f"{m['roc_auc']:.4f} | {m['pr_auc']:.4f} | {m['tpr@fpr1e-3']:.3f} | {m['delay_s']:.2f} | "
                      f"{det.decision(scored)} |", flush=True)


if __name__ == "__main__":
    main()
