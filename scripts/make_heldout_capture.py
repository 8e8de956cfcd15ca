#!/usr/bin/env python3
"""The real held-out normal capture for `necst bench --normal`: the held-out part of the standard
iot_sentinel split (../shared/tools/iot_split.py), one capture after another (1 ms apart), as one
nanosecond pcap, the same timeline scripts/eval_detect.py scores.

usage: PYTHONPATH=. python scripts/make_heldout_capture.py OUT.pcap
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
sys.path.insert(0, str(ROOT))

from necst.bench.inject import _own  # noqa: E402
from necst.capture.reader import CaptureReader  # noqa: E402
from necst.capture.writer import CaptureWriter  # noqa: E402


def heldout_paths() -> list[Path]:
    out = subprocess.run([sys.executable, str(SHARED / "tools" / "iot_split.py")], capture_output=True, text=True,
                         check=True).stdout
    return [Path(p) for part, p in (line.split("\t") for line in out.splitlines()) if part == "heldout"]


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    clock = None
    packets = 0
    with CaptureWriter(sys.argv[1], "pcap", force=True) as w:
        for path in heldout_paths():
            batches = [_own(b) for b in CaptureReader(path)]
            batches = [b for b in batches if len(b)]
            if not batches:
                continue
            first = int(batches[0].ts_ns[0])
            shift = 0 if clock is None else clock + 1_000_000 - first
            for b in batches:
                ts = b.ts_ns.astype(np.int64) + shift
                b.ts_ns = np.maximum.accumulate(ts)  # a capture's own small reorderings, kept in order
                w.write(b)
                packets += len(b)
            clock = int(batches[-1].ts_ns[-1])
    print(f"{packets} packets -> {sys.argv[1]}")


if __name__ == "__main__":
    main()
