"""Backgrounds, injection and labels: attack frames spliced into normal traffic, packet-exact.

A :class:`Traffic` is a capture held as one raw batch (the bytes written to disk) and its
decoded PacketTable (what the detector scores), row for row, plus a per-packet label (the
scenario's name, "" for background) with attacker and victim. Injection merges the attack's
frames into the background by timestamp (background first on ties); the labels travel with
the packets, so the written ``labels.csv`` is exact by construction, and a test checks it
against the bytes.
"""
from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from necst.bench.frames import merge
from necst.bench.scenarios import Injection
from necst.capture.batch import RawBatch
from necst.capture.writer import LINKTYPE_ETHERNET, CaptureWriter
from necst.errors import NecstError
from necst.schema import PACKET_SCHEMA

WRITE_SLICE = 16384  # packets per writer call


def _decode(raw: RawBatch) -> pa.Table:
    from necst.process.decode import decode

    if len(raw) == 0:
        return PACKET_SCHEMA.empty_table()
    return pa.Table.from_batches([decode(raw)], schema=PACKET_SCHEMA)


def _take(raw: RawBatch, idx: np.ndarray) -> RawBatch:
    return RawBatch(data=raw.data, offsets=raw.offsets[idx], cap_len=raw.cap_len[idx], wire_len=raw.wire_len[idx],
                    ts_ns=raw.ts_ns[idx], linktype=raw.linktype[idx], pad=raw.pad)


def _own(batch: RawBatch) -> RawBatch:
    """A copy that owns its bytes (the crafter's arena and the reader reuse theirs)."""
    o = batch.offsets.astype(np.int64)
    cap = batch.cap_len.astype(np.int64)
    if len(o) == 0:
        return RawBatch(np.zeros(64, np.uint8), o, batch.cap_len.copy(), batch.wire_len.copy(), batch.ts_ns.copy(),
                        batch.linktype.copy(), pad=64)
    lo, hi = int(o.min()), int((o + cap).max())
    data = np.concatenate([np.asarray(batch.data[lo:hi]), np.zeros(64, np.uint8)])
    return RawBatch(data, o - lo, batch.cap_len.copy(), batch.wire_len.copy(), batch.ts_ns.astype(np.int64).copy(),
                    batch.linktype.copy(), pad=64)


@dataclass
class Traffic:
    """Packets in time order: raw bytes, decoded table, and per-packet labels."""

    raw: RawBatch
    table: pa.Table
    scenario: np.ndarray  # object: scenario name, "" for background
    attacker: np.ndarray
    victim: np.ndarray

    def __len__(self) -> int:
        return len(self.raw)

    @property
    def is_attack(self) -> np.ndarray:
        return self.scenario != ""

    @property
    def duration_s(self) -> float:
        ts = self.raw.ts_ns
        return float(ts[-1] - ts[0]) / 1e9 if len(ts) > 1 else 0.0

    @classmethod
    def from_batches(cls, batches) -> "Traffic":
        parts = [_own(b) for b in batches if len(b)]
        if not parts:
            raise NecstError("bench: no packets in the background")
        raw = merge(parts)[0] if len(parts) > 1 else parts[0]
        if np.any(raw.linktype != LINKTYPE_ETHERNET):
            raise NecstError("bench: the background must be Ethernet (attacks are crafted as Ethernet frames)")
        if np.any(np.diff(raw.ts_ns.astype(np.int64)) < 0):  # a capture out of time order: sort it
            raw = merge([raw])[0]
        n = len(raw)
        empty = np.full(n, "", dtype=object)
        return cls(raw, _decode(raw), empty, empty.copy(), empty.copy())

    @classmethod
    def from_capture(cls, path: str | Path) -> "Traffic":
        from necst.capture.reader import CaptureReader

        reader = CaptureReader(path)
        batches = [_own(b) for b in reader]
        if not batches:
            raise NecstError("no packets", path)
        return cls.from_batches(batches)

    def window(self, start_ns: int, end_ns: int) -> "Traffic":
        """The packets with start_ns <= ts < end_ns."""
        ts = self.raw.ts_ns
        lo, hi = np.searchsorted(ts, start_ns), np.searchsorted(ts, end_ns)
        idx = np.arange(lo, hi)
        return Traffic(_take(self.raw, idx), self.table.slice(lo, hi - lo), self.scenario[idx], self.attacker[idx],
                       self.victim[idx])

    def densest(self, seconds: float) -> "Traffic":
        """The ``seconds`` long stretch holding the most packets (the earliest among equals)."""
        ts = self.raw.ts_ns.astype(np.int64)
        span = int(seconds * 1e9)
        if len(ts) == 0 or ts[-1] - ts[0] <= span:
            return self
        ends = np.searchsorted(ts, ts + span)
        i = int(np.argmax(ends - np.arange(len(ts))))
        return self.window(int(ts[i]), int(ts[i]) + span)

    def inject(self, *injections: Injection) -> "Traffic":
        """This traffic with attacks merged in by time, each packet labelled with its scenario."""
        parts = [self.raw] + [i.frames for i in injections]
        raw, part, row = merge(parts)
        scen = [self.scenario] + [np.full(len(i), i.name, dtype=object) for i in injections]
        att = [self.attacker] + [i.attacker.astype(object) for i in injections]
        vic = [self.victim] + [i.victim.astype(object) for i in injections]

        def pick(arrs):
            out = np.empty(len(raw), dtype=object)
            for k, a in enumerate(arrs):
                sel = part == k
                out[sel] = a[row[sel]]
            return out

        return Traffic(raw, _decode(raw), pick(scen), pick(att), pick(vic))

    def write(self, path: str | Path, force: bool = True) -> Path:
        """The capture (nanosecond pcap) and ``<name>.labels.csv`` beside it."""
        path = Path(path)
        with CaptureWriter(path, "pcap", force=force) as w:
            # in slices: the writer's copy path holds int64 indices per byte of the batch it gets
            for lo in range(0, len(self), WRITE_SLICE):
                w.write(_take(self.raw, np.arange(lo, min(lo + WRITE_SLICE, len(self)))))
        write_labels(path.with_suffix(".labels.csv"), self)
        return path


LABEL_COLUMNS = ["packet_index", "ts_ns", "scenario", "attacker", "victim"]


def write_labels(path: Path, traffic: Traffic) -> None:
    """One row per attack packet (``packet_index`` from 0 in capture order); absent rows are background."""
    rows = np.flatnonzero(traffic.is_attack)
    tmp = path.with_name(f".{path.name}.part")
    with open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(LABEL_COLUMNS)
        ts = traffic.raw.ts_ns
        w.writerows(zip(rows.tolist(), ts[rows].tolist(), traffic.scenario[rows], traffic.attacker[rows],
                        traffic.victim[rows]))
    os.replace(tmp, path)


def read_labels(path: str | Path) -> dict[str, np.ndarray]:
    import pandas as pd

    df = pd.read_csv(path, dtype={"scenario": str, "attacker": str, "victim": str})
    return {c: df[c].to_numpy() for c in LABEL_COLUMNS}
