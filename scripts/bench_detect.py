#!/usr/bin/env python3
"""Detector speed, end to end: `necst detect score` (capture -> report.json + report.csv) on the
≈1M-packet bench capture, in packets per second, for each mode that is available.

The capture is built by ../shared/tools/make_bench_capture.py when absent. Detectors are trained
on the iot_sentinel training split (one per mode) unless --detector-dir holds them already.
Kitsune's Python implementation is reported (Mirsky et al., NDSS 2018, and its README) to score
about 400 packets/s; it is not installed here, so that figure is quoted, not measured.

usage: PYTHONPATH=. python scripts/bench_detect.py [--capture /tmp/bench1m.pcap] [--modes window packet flow]
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
TARGET_PPS = 300_000


def count_packets(path: Path) -> int:
    import pyarrow.parquet  # noqa: F401

    sys.path.insert(0, str(ROOT))
    from necst.detect.io import read_packets

    return read_packets(path).num_rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--capture", type=Path, default=Path("/tmp/bench1m.pcap"))
    ap.add_argument("--modes", nargs="+", default=["window", "packet", "flow"])
    ap.add_argument("--detector-dir", type=Path, default=Path("/tmp/necst-bench-detectors"))
    ap.add_argument("--repeat", type=int, default=2, help="runs per mode; the best is reported")
    a = ap.parse_args()
    if not a.capture.exists():
        subprocess.run([sys.executable, str(SHARED / "tools" / "make_bench_capture.py"), str(a.capture)], check=True)
    n = count_packets(a.capture)
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    necst = [sys.executable, "-m", "necst"]
    train = subprocess.run([sys.executable, str(SHARED / "tools" / "iot_split.py"), "--only", "train"],
                           capture_output=True, text=True, check=True).stdout.split()[1::2]
    print(f"bench capture: {a.capture} ({n} packets)")
    results = {}
    for mode in a.modes:
        det = a.detector_dir / mode
        if not det.exists():
            t = time.time()
            r = subprocess.run(necst + ["detect", "train", *train, "--out", str(det), "--mode", mode],
                               env=env, capture_output=True, text=True)
            if r.returncode != 0:
                print(f"{mode}: cannot train ({r.stderr.strip().splitlines()[-1] if r.stderr else r.returncode})")
                continue
            print(f"{mode}: trained in {time.time() - t:.0f} s")
        best = None
        for i in range(a.repeat):
            out = Path(f"/tmp/necst-bench-report-{mode}.json")
            t = time.perf_counter()
            r = subprocess.run(necst + ["detect", "score", str(a.capture), "--detector", str(det),
                                        "--out", str(out), "--force"], env=env, capture_output=True, text=True)
            dt = time.perf_counter() - t
            if r.returncode != 0:
                print(f"{mode}: score failed: {r.stderr.strip()}")
                break
            best = dt if best is None else min(best, dt)
        if best is not None:
            results[mode] = n / best
            print(f"{mode}: necst detect score end to end {best:.2f} s = {n / best:,.0f} packets/s "
                  f"({n / best / 400:,.0f}x Kitsune's reported 400 packets/s)")
    if "window" in results:
        ok = results["window"] >= TARGET_PPS
        print(f"window mode {'meets' if ok else 'MISSES'} the target of {TARGET_PPS:,} packets/s")


if __name__ == "__main__":
    main()
