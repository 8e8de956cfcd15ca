"""Any capture read by necst and written back (pcap or pcapng) reads back packet for packet."""
from __future__ import annotations

import numpy as np
import pytest

from necst.capture.reader import CaptureReader
from necst.capture.writer import CaptureWriter


def _packets(path):
    ts, cap, wire, data = [], [], [], []
    for b in CaptureReader(path):
        ts.append(b.ts_ns.copy())
        cap.append(b.cap_len.copy())
        wire.append(b.wire_len.copy())
        data += [b.packet(i) for i in range(len(b))]
    return np.concatenate(ts), np.concatenate(cap), np.concatenate(wire), data


@pytest.mark.parametrize("fmt", ["pcap", "pcapng"])
def test_read_write_read_is_exact(shared_data, tmp_path, fmt):
    src = shared_data / "benign/tj_iot/schlage-lock-01.pcap"  # snaplen-cut: cap_len < wire_len
    out = tmp_path / f"copy.{fmt}"
    with CaptureWriter(out, format=fmt) as w:
        for batch in CaptureReader(src, chunk_bytes=1 << 18):  # several batches
            w.write(batch)
    a, b = _packets(src), _packets(out)
    assert len(a[3]) > 10_000 and (a[1] < a[2]).any()
    for x, y in zip(a[:3], b[:3]):
        np.testing.assert_array_equal(x, y)
    assert a[3] == b[3]


def test_copy_in_slices_is_exact(shared_data, tmp_path, monkeypatch):
    """Placing packet bytes slice by slice (bounded memory) gives the same file as one pass."""
    import necst.capture.writer as writer

    src = shared_data / "benign/tj_iot/schlage-lock-01.pcap"
    whole, sliced = tmp_path / "whole.pcap", tmp_path / "sliced.pcap"
    with CaptureWriter(whole) as w:
        for batch in CaptureReader(src):
            w.write(batch)
    monkeypatch.setattr(writer, "_COPY_SLICE", 1000)  # a few packets per slice
    with CaptureWriter(sliced) as w:
        for batch in CaptureReader(src):
            w.write(batch)
    assert whole.read_bytes() == sliced.read_bytes()
    assert _packets(src)[3] == _packets(sliced)[3]
