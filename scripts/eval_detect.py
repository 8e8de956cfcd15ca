#!/usr/bin/env python3
"""Detector quality on real captures: train on the iot_sentinel training split, score the
held-out part with each attack capture of ../shared/data/attacks spliced in (time-shifted,
labelled per packet by origin), and print ROC AUC, PR AUC, TPR at FPR 0.001 and detection delay.

Why the headline table is per packet. The labels are per packet: a packet is an attack packet
when it came from the attack capture, whatever it is. Windows, flows and packets are each
mode's own units, so a per-unit table compares different populations, and labelling a unit by
"holds any attack packet" lets one benign packet of an attack capture make a whole unit
"attack": ssh-hydra's last packet is an IPv6 mDNS announcement 15 s after the last SSH packet,
alone in its two windows; icmp-portscan opens with one ordinary ping to the gateway and two to
one host before its sweep. The packet is the one unit every mode shares, so every packet
inherits the score of its unit (window mode: the largest score of the windows that hold it;
flow mode: its flow's; packet mode: its own; see necst.detect.per_packet) and ROC AUC, PR AUC
and TPR at FPR 0.001 are computed over packets, labelled by origin. Nothing is relabelled or
dropped: the attack captures' benign packets stay attack packets, and the per-unit figures
(a unit is attack when it holds any attack packet) follow in a second table.

Other definitions. TPR at FPR 0.001 is the highest TPR of any score threshold whose FPR is at
most 0.001 (no interpolation between ROC points). "flag TPR / FPR" are the shares of attack and
normal packets in at least one flagged unit (the detector's own threshold and post-processing).
Detection delay is the time from the first attack packet to the end of the first flagged unit
that holds attack packets (when that unit is complete and can be reported); "-" when none is
flagged. The threshold comes from held-out normal training units only (never from the test
labels).

usage: PYTHONPATH=. python scripts/eval_detect.py [--modes window flow packet]
       [--detectors autoencoder isolation_forest] [--attacks ssh-hydra icmp-portscan]
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's start-up chatter

from necst.detect.detector import DETECTORS  # noqa: E402
from necst.detect.io import read_packets  # noqa: E402
from necst.detect.per_packet import row_packet_scores, unit_packet_scores, window_packet_scores  # noqa: E402

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
    """The attack capture moved to start half-way through ``normal``, one file; label True = attack."""
    ts = normal.column("ts_ns").to_numpy()
    at = attack.select(COLS).cast(normal.schema)
    ats = at.column("ts_ns").to_numpy()
    start = int(ts[0] + (ts[-1] - ts[0]) * at_fraction)
    at = at.set_column(0, "ts_ns", pa.array(ats - ats[0] + start, pa.int64()))
    at = at.set_column(COLS.index("file_index"), "file_index", pa.array(np.zeros(at.num_rows, np.uint16)))
    t = pa.concat_tables([normal, at])
    label = np.r_[np.zeros(normal.num_rows, bool), np.ones(at.num_rows, bool)]
    order = np.argsort(t.column("ts_ns").to_numpy(), kind="stable")
    return t.take(pa.array(order)), label[order]


def unit_labels(scored, units, packets: pa.Table, label: np.ndarray, mode: str) -> np.ndarray:
    """A unit is an attack unit when it holds any packet of the attack capture."""
    if mode == "flow":
        return np.bincount(units.packet_unit, weights=label.astype(float), minlength=len(scored)) > 0
    if mode == "packet":
        return label[scored["row"].to_numpy()]
    ts = packets.column("ts_ns").to_numpy()
    ats = np.sort(ts[label])
    lo = np.searchsorted(ats, scored["start_ns"].to_numpy(), side="left")
    hi = np.searchsorted(ats, scored["end_ns"].to_numpy(), side="left")  # windows are [start, end)
    return hi > lo


def packet_level(scored, units, packets: pa.Table, mode: str, column: str) -> np.ndarray:
    """Per packet (input row), the unit value ``column`` it inherits (see the module docstring)."""
    v = scored[column].to_numpy().astype(np.float64)
    if mode == "window":
        return window_packet_scores(packets.column("ts_ns").to_numpy(), scored["start_ns"].to_numpy(),
                                    scored["end_ns"].to_numpy(), v)
    if mode == "flow":
        return unit_packet_scores(units.packet_unit, v)
    return row_packet_scores(scored["row"].to_numpy(), v, packets.num_rows)


def ranking(y: np.ndarray, s: np.ndarray) -> dict:
    from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

    fpr, tpr, _ = roc_curve(y, s)
    return {"roc_auc": roc_auc_score(y, s), "pr_auc": average_precision_score(y, s),
            "tpr@1e-3": float(tpr[fpr <= 0.001].max(initial=0.0)), "pos": int(y.sum()), "neg": int((~y).sum())}


def delay_s(y_unit: np.ndarray, flag: np.ndarray, end_ns: np.ndarray, attack_start_ns: int) -> float:
    hit = np.flatnonzero(flag & y_unit)
    return float(end_ns[hit].min() - attack_start_ns) / 1e9 if hit.size else float("nan")


def fmt_delay(d: float) -> str:
    return "-" if np.isnan(d) else f"{d:.2f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--modes", nargs="+", default=["window"])
    ap.add_argument("--detectors", nargs="+", default=["autoencoder", "isolation_forest"])
    ap.add_argument("--attacks", nargs="+", default=None, help="only attack captures whose name holds one of these")
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
    if a.attacks:
        attacks = [p for p in attacks if any(s in p.name for s in a.attacks)]
    att_tables = {p: read(p) for p in attacks}
    print(f"read {sum(t.num_rows for t in train)} training and {held.num_rows} held-out packets, "
          f"{len(attacks)} attack captures in {time.time() - t0:.1f} s", flush=True)
    summary: dict = {}
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
            rows_p, rows_u = [], []
            for p in attacks:
                packets, label = splice(held, att_tables[p])
                units = det.features(packets)
                scored = det.score_units(units)
                flag = scored["flag"].to_numpy()
                y = unit_labels(scored, units, packets, label, mode)
                start = int(packets.column("ts_ns").to_numpy()[label].min())
                d = delay_s(y, flag, scored["end_ns"].to_numpy(), start)
                ps = packet_level(scored, units, packets, mode, "error")
                pf = packet_level(scored, units, packets, mode, "flag") > 0
                mp = ranking(label, ps)
                mu = ranking(y, scored["error"].to_numpy())
                att = f"{p.parent.name}/{p.stem}"
                rows_p.append(f"| {att} | {mp['pos']} | {mp['roc_auc']:.4f} | {mp['pr_auc']:.4f} | "
                              f"{mp['tpr@1e-3']:.3f} | {pf[label].mean():.3f} | {pf[~label].mean():.5f} | "
                              f"{fmt_delay(d)} | {det.decision(scored)} |")
                rows_u.append(f"| {att} | {len(scored)} ({mu['pos']}) | {mu['roc_auc']:.4f} | {mu['pr_auc']:.4f} | "
                              f"{mu['tpr@1e-3']:.3f} | {int((flag & y).sum())} | {int((flag & ~y).sum())} | "
                              f"{fmt_delay(d)} |")
                summary.setdefault(att, {})[(mode, name)] = (mp, mu, d)
            print(f"\nper packet ({held.num_rows} normal packets; a packet takes its unit's score):")
            print("| attack | attack packets | ROC AUC | PR AUC | TPR@FPR=0.001 | flag TPR | flag FPR | delay s "
                  "| decision |")
            print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
            print("\n".join(rows_p))
            print(f"\nper {mode} (attack unit = holds any attack packet):")
            print("| attack | units (attack) | ROC AUC | PR AUC | TPR@FPR=0.001 | flagged attack units | "
                  "flagged normal units | delay s |")
            print("| --- | --- | --- | --- | --- | --- | --- | --- |")
            print("\n".join(rows_u), flush=True)
    combos = [(m, n) for m in a.modes for n in a.detectors]
    short = {"autoencoder": "AE", "isolation_forest": "IForest", "lof": "LOF"}
    for title, i in (("per packet", 0), ("per unit", 1)):
        print(f"\nsummary, {title}: ROC AUC / PR AUC / TPR@FPR=0.001 / delay s")
        print("| attack | " + " | ".join(f"{m} {short.get(n, n)}" for m, n in combos) + " |")
        print("| --- |" + " --- |" * len(combos))
        for att, cells in summary.items():
            print(f"| {att} | " + " | ".join(
                f"{cells[c][i]['roc_auc']:.4f}/{cells[c][i]['pr_auc']:.3f}/{cells[c][i]['tpr@1e-3']:.3f}/"
                f"{fmt_delay(cells[c][2])}" for c in combos) + " |")
    print(f"\ntotal {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
