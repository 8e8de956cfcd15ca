"""Streaming capture writer: pcap (nanosecond or microsecond) and pcapng, batch by batch.

Why nanosecond pcap by default: necst's timestamps are integers in nanoseconds, and the
nanosecond pcap magic (0xa1b23c4d) keeps them exactly; Wireshark, tshark, capinfos, libpcap
(>= 1.5) and Scapy read it. ``nanosecond=False`` writes the classic microsecond pcap
(0xa1b2c3d4) for older tools, rounding down to the microsecond. pcapng writes one Section
Header, one Interface Description (if_tsresol = 9, nanoseconds) and Enhanced Packet Blocks.

The file is written under a temporary sibling name and renamed when :meth:`CaptureWriter.close`
completes, so a crash never leaves a half-written capture under the final name; an existing
output is refused (:class:`~necst.errors.OutputExistsError`) unless ``force``.

Batches laid out by :func:`necst.generate.craft.build_frames` already hold room for each
record header (``FrameBatch.layout == format``): the writer then fills the headers in place
and writes the whole buffer at once. Any other RawBatch is copied record by record.
"""
from __future__ import annotations

import os
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from necst.capture.batch import RawBatch
from necst.errors import NecstError, OutputExistsError

FORMATS = ("pcap", "pcapng")
LINKTYPE_ETHERNET = 1
DEFAULT_SNAPLEN = 262144
PCAP_RECORD = 16  # ts_sec, ts_frac, incl_len, orig_len
PCAPNG_EPB_HEAD = 28  # type, total length, interface, ts high, ts low, captured, original
PCAPNG_EPB_TAIL = 4  # total length again

_PCAP_REC = np.dtype([("sec", "<u4"), ("frac", "<u4"), ("incl", "<u4"), ("orig", "<u4")])
_EPB_HEAD = np.dtype([("type", "<u4"), ("total", "<u4"), ("iface", "<u4"), ("ts_hi", "<u4"),
                      ("ts_lo", "<u4"), ("cap", "<u4"), ("orig", "<u4")])


@dataclass
class FrameBatch(RawBatch):
    """A RawBatch whose buffer already holds each packet inside a record of ``layout``.

    Record i starts ``head`` bytes before ``offsets[i]``; records follow each other with no gap
    from ``record_start`` to ``record_end``; the headers' bytes are left for the writer to fill.
    """

    layout: str = ""  # "pcap" or "pcapng"; "" for no record layout
    record_start: int = 0
    record_end: int = 0


def record_sizes(cap_len: np.ndarray, fmt: str) -> tuple[int, np.ndarray]:
    """(bytes before each packet, total record size per packet) in format ``fmt``."""
    cap = cap_len.astype(np.int64)
    if fmt == "pcap":
        return PCAP_RECORD, PCAP_RECORD + cap
    return PCAPNG_EPB_HEAD, PCAPNG_EPB_HEAD + ((cap + 3) & ~3) + PCAPNG_EPB_TAIL


def _check_format(fmt: str) -> str:
    if fmt not in FORMATS:
        raise NecstError(f"unknown capture format {fmt!r} (use pcap or pcapng)")
    return fmt


_COPY_SLICE = 8 << 20  # packet bytes placed per step by _write_copy


class CaptureWriter:
    """Write batches of packets to one capture file, under a temporary name until closed.

    Use as a context manager; on an exception the temporary file is removed and nothing is
    left under the final name::

        with CaptureWriter("synth.pcap", force=True) as w:
            for batch in batches:
                w.write(batch)
    """

    def __init__(self, path: str | Path, format: str = "pcap", *, linktype: int = LINKTYPE_ETHERNET,
                 snaplen: int = DEFAULT_SNAPLEN, nanosecond: bool = True, force: bool = False):
        self.path = Path(path)
        self.format = _check_format(format)
        self.linktype = int(linktype)
        self.snaplen = int(snaplen)
        self.nanosecond = bool(nanosecond) or self.format == "pcapng"
        if self.path.exists() and not force:
            raise OutputExistsError("exists already (use --force to overwrite)", self.path)
        if self.path.is_dir():
            raise NecstError("is a directory, not a capture file", self.path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".part", dir=self.path.parent)
        self._tmp = Path(tmp)
        self._f = os.fdopen(fd, "wb", buffering=1 << 20)
        self.packets = 0
        self.bytes = 0
        self._last_ts: int | None = None
        self._closed = False
        self._f.write(self._file_header())

    # -- headers ----------------------------------------------------------------------------
    def _file_header(self) -> bytes:
        if self.format == "pcap":
            magic = 0xA1B23C4D if self.nanosecond else 0xA1B2C3D4
            return struct.pack("<IHHiIII", magic, 2, 4, 0, 0, self.snaplen, self.linktype)
        shb_body = struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1)
        shb = struct.pack("<II", 0x0A0D0D0A, 12 + len(shb_body)) + shb_body + struct.pack("<I", 12 + len(shb_body))
        opts = struct.pack("<HH", 9, 1) + b"\x09\x00\x00\x00" + struct.pack("<HH", 0, 0)  # if_tsresol = 10^-9
        idb_body = struct.pack("<HHI", self.linktype, 0, self.snaplen) + opts
        idb = struct.pack("<II", 1, 12 + len(idb_body)) + idb_body + struct.pack("<I", 12 + len(idb_body))
        return shb + idb

    def _fill_headers(self, buf: np.ndarray, starts: np.ndarray, ts_ns: np.ndarray,
                      cap: np.ndarray, wire: np.ndarray, total: np.ndarray) -> None:
        """Write the record headers of every packet into ``buf`` at ``starts``."""
        if self.format == "pcap":
            h = np.empty(len(starts), _PCAP_REC)
            h["sec"] = ts_ns // 1_000_000_000
            frac = ts_ns % 1_000_000_000
            h["frac"] = frac if self.nanosecond else frac // 1000
            h["incl"] = cap
            h["orig"] = wire
        else:
            h = np.empty(len(starts), _EPB_HEAD)
            h["type"] = 6
            h["total"] = total
            h["iface"] = 0
            h["ts_hi"] = (ts_ns.astype(np.uint64) >> np.uint64(32)).astype(np.uint32)
            h["ts_lo"] = (ts_ns.astype(np.uint64) & np.uint64(0xFFFFFFFF)).astype(np.uint32)
            h["cap"] = cap
            h["orig"] = wire
            tail = (starts + total - PCAPNG_EPB_TAIL)[:, None] + np.arange(4)
            buf[tail.ravel()] = total.astype("<u4").view(np.uint8).reshape(-1, 4).ravel()
        width = h.dtype.itemsize
        idx = starts[:, None] + np.arange(width)
        buf[idx.ravel()] = h.view(np.uint8).ravel()

    # -- writing ----------------------------------------------------------------------------
    def write(self, batch: RawBatch) -> None:
        """Append a batch; timestamps must not go back (within and across batches)."""
        if self._closed:
            raise NecstError("writer is closed", self.path)
        n = len(batch)
        if n == 0:
            return
        ts = batch.ts_ns.astype(np.int64)
        if np.any(ts[1:] < ts[:-1]) or (self._last_ts is not None and ts[0] < self._last_ts):
            raise NecstError("packet timestamps go backwards", self.path)
        if np.any(ts < 0):
            raise NecstError("packet timestamps before 1970", self.path)
        wire = batch.wire_len.astype(np.int64)
        cap = np.minimum(batch.cap_len.astype(np.int64), self.snaplen)
        head, total = record_sizes(cap, self.format)
        in_place = (isinstance(batch, FrameBatch) and batch.layout == self.format
                    and np.array_equal(cap, batch.cap_len.astype(np.int64)))
        if in_place:
            starts = batch.offsets.astype(np.int64) - head
            in_place = (starts[0] == batch.record_start and np.array_equal(starts[1:], starts[:-1] + total[:-1])
                        and starts[-1] + total[-1] == batch.record_end)
        if in_place:
            buf = batch.data
            self._fill_headers(buf, starts, ts, cap, wire, total)
            self._f.write(memoryview(buf[batch.record_start:batch.record_end]))
        else:
            self._write_copy(batch, ts, cap, wire, head, total)
        self.packets += n
        self.bytes += int(total.sum())
        self._last_ts = int(ts[-1])

    def _write_copy(self, batch: RawBatch, ts, cap, wire, head: int, total) -> None:
        """Any RawBatch: record headers and packet bytes placed into one array, then one write."""
        starts = np.concatenate([[0], np.cumsum(total)[:-1]]).astype(np.int64)
        out = np.zeros(int(total.sum()), np.uint8)
        self._fill_headers(out, starts, ts, cap, wire, total)
        caps = cap.astype(np.int64)
        data, offsets = np.asarray(batch.data), batch.offsets.astype(np.int64)
        # Byte indices cost 8 bytes per packet byte: place the packets in slices of about
        # _COPY_SLICE bytes, so memory stays a small multiple of the batch whatever its size.
        ends = np.cumsum(caps)
        cuts = np.unique(np.concatenate([[0], np.searchsorted(ends, np.arange(_COPY_SLICE, ends[-1] if len(ends) else 0,
                                                                              _COPY_SLICE), side="right"),
                                         [len(caps)]]))
        for lo, hi in zip(cuts[:-1], cuts[1:]):
            c = caps[lo:hi]
            n = int(c.sum())
            if n:
                within = np.arange(n, dtype=np.int64) - np.repeat(np.cumsum(c) - c, c)
                src = np.repeat(offsets[lo:hi], c) + within
                out[np.repeat(starts[lo:hi] + head, c) + within] = data[src]
        self._f.write(out.tobytes())

    def close(self) -> Path:
        """Flush and rename into place; returns the final path."""
        if self._closed:
            return self.path
        self._f.close()
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(self._tmp, 0o666 & ~umask)  # mkstemp made it private; a capture is an ordinary file
        os.replace(self._tmp, self.path)
        self._closed = True
        return self.path

    def abort(self) -> None:
        if not self._closed:
            self._f.close()
            self._tmp.unlink(missing_ok=True)
            self._closed = True

    def __enter__(self) -> "CaptureWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def write_capture(path: str | Path, batches, format: str = "pcap", **kwargs) -> Path:
    """Write an iterable of batches to ``path``; returns the path."""
    with CaptureWriter(path, format, **kwargs) as w:
        for batch in batches:
            w.write(batch)
    return w.path
