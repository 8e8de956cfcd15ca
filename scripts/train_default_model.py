#!/usr/bin/env python3
"""Rebuild models/default/: the generator bundled with necst, and its README of provenance.

Trains all three levels (packet, flow, aggregate) with seed 0 on every capture of
../shared/data/benign/iot_sentinel (Aalto IoT Sentinel setups of 24 smart-home devices), then
writes models/default/README.md listing each capture with its packet count and source from
../shared/data/MANIFEST.tsv.

usage: python scripts/train_default_model.py [--out models/default] [--work /tmp/necst-default]
"""
from __future__ import annotations

import argparse
import csv
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
SOURCE = "benign/iot_sentinel"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=ROOT / "models" / "default")
    ap.add_argument("--work", type=Path, default=Path("/tmp/necst-default"))
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if not (DATA / "MANIFEST.tsv").is_file():
        sys.exit(f"the real captures are not at {DATA}")
    rows = [r for r in csv.DictReader(open(DATA / "MANIFEST.tsv"), delimiter="\t")
            if r["path"].startswith(SOURCE + "/") and r["fmt"] == "pcap"]
    captures = [DATA / r["path"] for r in rows]
    args.work.mkdir(parents=True, exist_ok=True)
    dataset = args.work / "dataset"
    t0 = time.perf_counter()
    subprocess.run(["necst", "process", *map(str, captures), "--out", str(dataset), "--force", "--quiet",
                    "--workers", "2"], check=True)
    t1 = time.perf_counter()
    tmp_out = args.work / "model"
    subprocess.run(["necst", "train", str(dataset), "--level", "all", "--out", str(tmp_out), "--force",
                    "--seed", str(args.seed), "--quiet"], check=True)
    t2 = time.perf_counter()
    if args.out.exists():
        shutil.rmtree(args.out)
    shutil.copytree(tmp_out, args.out)
    size = sum(p.stat().st_size for p in args.out.iterdir())
    packets = sum(int(r["pkts"]) for r in rows)
    lines = [
        "# The bundled default model",
        "",
        "`necst generate` uses this generator when `--model` is absent. It holds all three levels",
        "(packet VAE + mixtures, flow LSTMs, aggregate flow mixture, start times and hosts), each file",
        "listed with its sha256 in `manifest.json`; loading verifies them.",
        "",
        f"Trained with `python scripts/train_default_model.py` (seed {args.seed}): `necst process` on the",
        f"{len(rows)} captures below ({packets} packets), then `necst train --level all`. Processing took",
        f"{t1 - t0:.0f} s and training {t2 - t1:.0f} s on a 2-core machine; the bundle is {size / 1e6:.1f} MB.",
        "",
        "The captures are the Aalto University IoT Sentinel data set (Miettinen et al., ICDCS 2017), setups of",
        "24 smart-home devices, as published in the repository named below. The bundle keeps the real",
        "hosts' addresses and MACs so that `--keep-addresses` works; by default generated captures use",
        "fresh pseudonymous addresses.",
        "",
        "| capture | packets | source repository | path there |",
        "| --- | ---: | --- | --- |",
    ]
    for r in rows:
        lines.append(f"| {r['path']} | {r['pkts']} | {r['repo']} | {r['repo_path']} |")
    (args.out / "README.md").write_text("\n".join(lines) + "\n")
    print(f"{args.out}: {size / 1e6:.1f} MB, {len(rows)} captures, {packets} packets; "
          f"process {t1 - t0:.0f} s, train {t2 - t1:.0f} s")


if __name__ == "__main__":
    main()
