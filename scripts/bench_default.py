#!/usr/bin/env python3
"""The issue's measured run: `necst bench` with the bundled generator and detectors trained on
../shared/data/benign (the iot_sentinel training split), on the held-out split as the real normal
capture. Prints the bench's wall and CPU time (the detectors' training is not part of the bench and
is timed apart) and the summary table.

Detectors (each trained once into WORK and reused): the autoencoder in window, flow and packet
mode, and the Isolation Forest baseline in window mode.

usage: PYTHONPATH=. python scripts/bench_default.py [--work /tmp/necst-bench] [--out /tmp/necst-bench/out] [--seed 0]
"""
from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
DETECTORS = [("window", "autoencoder"), ("flow", "autoencoder"), ("packet", "autoencoder"),
             ("window", "isolation_forest")]


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def split(part: str) -> list[str]:
    out = subprocess.run([sys.executable, str(SHARED / "tools" / "iot_split.py")], capture_output=True, text=True,
                         check=True).stdout
    return [p for k, p in (line.split("\t") for line in out.splitlines()) if k == part]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", type=Path, default=Path("/tmp/necst-bench"))
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    if not (SHARED / "data" / "MANIFEST.tsv").is_file():
        sys.exit(f"the real captures are not at {SHARED / 'data'}")
    a.work.mkdir(parents=True, exist_ok=True)
    out = a.out or a.work / "out"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    heldout = a.work / "heldout.pcap"
    if not heldout.exists():
        subprocess.run([sys.executable, str(ROOT / "scripts" / "make_heldout_capture.py"), str(heldout)], check=True,
                       env=env)
    train = split("train")
    dets = []
    for mode, kind in DETECTORS:
        d = a.work / f"det_{mode}_{kind}"
        if not d.exists():
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "-m", "necst", "detect", "train", *train, "--out", str(d), "--mode", mode,
                            "--detector", kind], check=True, env=env)
            print(f"trained {kind} ({mode}) in {time.perf_counter() - t0:.0f} s", flush=True)
        dets += ["-d", str(d)]
    cmd = [sys.executable, "-m", "necst", "bench", *dets, "--normal", str(heldout), "--out", str(out), "--force",
           "--seed", str(a.seed)]
    print("$ necst " + " ".join(cmd[3:]), flush=True)
    t0, c0 = time.perf_counter(), _children_cpu()
    subprocess.run(cmd, check=True, env=env)
    wall, cpu = time.perf_counter() - t0, _children_cpu() - c0
    print(f"\nnecst bench: {wall:.0f} s wall, {cpu:.0f} CPU-seconds (target: under 15 minutes)\n")
    print((out / "summary.md").read_text())


if __name__ == "__main__":
    main()
