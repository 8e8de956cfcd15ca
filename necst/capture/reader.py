"""Streaming capture reader: pcap (all magic variants), pcapng and gzip, by magic bytes.

The file is read in chunks; each chunk's record boundaries are walked in one tight loop
(the only sequential step) and handed out as a RawBatch whose headers are then decoded as
arrays. Memory is bounded by the chunk size, whatever the capture's size.
"""
from __future__ import annotations

import gzip
import hashlib
import struct
import sys
from concurrent.futures import Future, ThreadPoolExecutor
import weakref
import zlib
from pathlib import Path
from typing import BinaryIO, Iterator

import numpy as np

from necst._files import sha256_file
from necst.capture.batch import RawBatch
from necst.errors import CaptureError

CHUNK_BYTES = 32 << 20
PAD = 64  # zero bytes after each buffer's data (see RawBatch.pad)
# Wireshark's largest record for ordinary link types; larger captured lengths mean a broken file.
MAX_RECORD = 256 << 20
MAX_SNAPLEN_WARN = 262144 * 4

_PCAP_MAGICS = {
    # magic as read little-endian -> (byte order, nanosecond timestamps, modified-pcap record header)
    0xA1B2C3D4: ("<", False, False),
    0xD4C3B2A1: (">", False, False),
    0xA1B23C4D: ("<", True, False),
    0x4D3CB2A1: (">", True, False),
    0xA1B2CD34: ("<", False, True),  # Kuznetzov's modified pcap: 8 more bytes per record
    0x34CDB2A1: (">", False, True),
}
_PCAPNG_SHB = 0x0A0D0D0A
_GZIP_MAGIC = b"\x1f\x8b"


class _HashingFile:
    """A file whose bytes are hashed as they are read, so meta.json's sha256 costs no second read.

    The hash runs on a second thread (hashlib releases the GIL) while the caller walks and
    decodes what was read; every read first waits for the previous hash, and a caller that
    writes into a buffer it read into calls `settle` first.
    """

    def __init__(self, f: BinaryIO):
        self.f = f
        self._hash = hashlib.sha256()
        self.at_end = False
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="necst-sha256")
        self._pending: Future | None = None

    @property
    def hash(self):
        self.settle()
        return self._hash

    def settle(self) -> None:
        if self._pending is not None:
            pending, self._pending = self._pending, None
            pending.result()

    def read(self, n: int = -1) -> bytes:
        self.settle()
        b = self.f.read(n)
        self._hash.update(b)
        self.at_end |= n < 0 or len(b) < n
        return b

    def readinto(self, view) -> int:
        self.settle()
        k = self.f.readinto(view)
        self._pending = self._thread.submit(self._hash.update, view[:k])
        self.at_end |= k < len(view)
        return k

    def close(self) -> None:
        try:
            self.settle()
        finally:
            self._thread.shutdown()
            self.f.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _open(path: Path) -> tuple[BinaryIO, bool]:
    if not path.exists():
        raise CaptureError("no such file", path)
    if path.is_dir():
        raise CaptureError("is a directory, not a capture file", path)
    try:
        f = open(path, "rb")
    except OSError as e:
        raise CaptureError(f"cannot open: {e.strerror}", path) from None
    head = f.read(2)
    f.seek(0)
    if head == _GZIP_MAGIC:
        return gzip.GzipFile(fileobj=f, mode="rb"), True
    return _HashingFile(f), False


class CaptureReader:
    """Iterate over a capture file's packets in RawBatches.

    After iteration, ``packets``, ``linktypes`` and ``warnings`` describe what was read;
    ``format`` names the container. A file cut short keeps every complete packet and warns once.
    """

    def __init__(self, path: str | Path, file_index: int = 0, chunk_bytes: int = CHUNK_BYTES):
        self.path = Path(path)
        self.file_index = file_index
        self.chunk_bytes = chunk_bytes
        self.packets = 0
        self.linktypes: set[int] = set()
        self.warnings: list[str] = []
        self.format = "unknown"
        self.compressed = False
        self.leftover = 0  # bytes after the last complete record
        self._hashing: _HashingFile | None = None
        self._in_use: dict[int, weakref.ref] = {}  # id(buffer) -> its array handed out in a batch

    # -- plumbing ---------------------------------------------------------------------------
    def _warn(self, message: str) -> None:
        if message not in self.warnings:
            self.warnings.append(message)

    def _buffers(self, f: BinaryIO, first: bytes = b"") -> Iterator[tuple[bytearray, int]]:
        """Yield (buffer, length): the unwalked rest of the last buffer followed by the next chunk.

        Each buffer ends in zero bytes (at least PAD), so the decoder may read a little past any
        packet without bounds checks or copies. A buffer is filled again only once no array made
        by `_array` from it is alive: batches handed out and kept stay intact, and a consumer
        that drops each batch reuses two or three buffers instead of faulting in fresh memory
        for every chunk (a third of the reading time). Send the position where the walk stopped
        back into the generator.
        """
        rest = first
        standard = self.chunk_bytes + (1 << 16) + PAD  # room for the usual unwalked rest
        pool: list[bytearray] = []
        while True:
            need = len(rest) + self.chunk_bytes + PAD
            buf = next((b for b in pool if len(b) >= need and self._released(b)), None)
            if buf is None:
                buf = bytearray(max(need, standard))
                pool = [b for b in pool if not self._released(b)][-2:] + [buf]
            if self._hashing is not None:
                self._hashing.settle()  # the buffer may still be being hashed
            buf[: len(rest)] = rest
            got, broken = self._fill(f, memoryview(buf)[len(rest) : len(rest) + self.chunk_bytes])
            if not got:
                self.leftover = len(rest)
                return
            length = len(rest) + got
            buf[length:] = bytes(len(buf) - length)
            if broken:  # walk what was decompressed, then end
                yield buf, length
                self.leftover = 0
                return
            stop = yield buf, length
            rest = bytes(memoryview(buf)[stop:length])

    def _array(self, buf: bytearray) -> np.ndarray:
        """The uint8 array a batch carries over buf; the buffer is not refilled while it lives."""
        data = np.frombuffer(buf, dtype=np.uint8)
        self._in_use[id(buf)] = weakref.ref(data)
        return data

    def _released(self, buf: bytearray) -> bool:
        ref = self._in_use.get(id(buf))
        return ref is None or ref() is None

    def _fill(self, f: BinaryIO, view: memoryview) -> tuple[int, bool]:
        """Read into view; (bytes read, whether the stream broke). Small steps, so that a gzip
        stream cut short loses only its last, incomplete piece."""
        got = 0
        step = len(view) if not self.compressed else 1 << 16
        while got < len(view):
            try:
                k = f.readinto(view[got : got + step])
            except (EOFError, zlib.error, gzip.BadGzipFile, OSError) as e:
                self._warn(f"{self.path}: compressed stream ends early or is corrupt ({e}); "
                           "kept every complete packet before it")
                return got, True
            if not k:
                break
            got += k
        return got, False

    @property
    def sha256(self) -> str:
        """The file's sha256: from the bytes the reader went through when it read them all, else read anew."""
        if self._hashing is not None and self._hashing.at_end:
            return self._hashing.hash.hexdigest()
        return sha256_file(self.path)

    def __iter__(self) -> Iterator[RawBatch]:
        f, self.compressed = _open(self.path)
        self._hashing = f if isinstance(f, _HashingFile) else None
        with f:
            try:
                head = f.read(4)
            except (EOFError, zlib.error, gzip.BadGzipFile, OSError) as e:
                raise CaptureError(f"unreadable compressed data ({e})", self.path) from None
            if len(head) == 0:
                raise CaptureError("empty file", self.path)
            if len(head) < 4:
                raise CaptureError("too short to be a capture (under 4 bytes)", self.path)
            magic = struct.unpack("<I", head)[0]
            if magic not in _PCAP_MAGICS and magic != _PCAPNG_SHB:
                raise CaptureError(
                    f"unknown capture format (magic bytes {head.hex()}); expected pcap, pcapng or gzip", self.path
                )
            try:
                if magic in _PCAP_MAGICS:
                    self.format = "pcap"
                    yield from self._read_pcap(f, head, magic)
                else:
                    self.format = "pcapng"
                    yield from self._read_pcapng(f, head)
            except (EOFError, zlib.error, gzip.BadGzipFile) as e:  # a file header inside broken gzip
                raise CaptureError(f"compressed data is corrupt or cut short ({e})", self.path) from None

    # -- classic pcap -----------------------------------------------------------------------
    def _read_pcap(self, f: BinaryIO, head: bytes, magic: int) -> Iterator[RawBatch]:
        order, nanos, modified = _PCAP_MAGICS[magic]
        rest = f.read(20)
        if len(rest) < 20:
            raise CaptureError("pcap file header cut short (under 24 bytes)", self.path)
        major, minor, _zone, _sigfigs, snaplen, network = struct.unpack(order + "HHiIII", rest)
        if major != 2:  # as Wireshark's reader: every pcap writer in use writes 2.4
            raise CaptureError(f"pcap header names version {major}.{minor}, not 2.x", self.path)
        if network & 0x03FF0000:
            raise CaptureError(f"pcap header's link-type field has reserved bits set ({network:#010x})", self.path)
        linktype = network & 0xFFFF  # bits 26-31 carry the FCS length
        self.linktypes.add(linktype)
        if snaplen == 0 or snaplen > MAX_SNAPLEN_WARN:
            self._warn(f"{self.path}: header's snap length {snaplen} is implausible; using record lengths")
        rec_len = 24 if modified else 16
        buffers = self._buffers(f)
        try:
            buf, length = next(buffers)
            while True:
                offsets, stop, bad = _walk_pcap(buf, length, order, rec_len, MAX_RECORD)
                if len(offsets):
                    yield self._pcap_batch(buf, length, offsets, order, nanos, rec_len, linktype)
                if bad is not None:
                    if self.packets == 0:
                        raise CaptureError(f"first record claims a captured length of {bad} bytes", self.path)
                    self._warn(f"{self.path}: record {self.packets + 1} claims a captured length of {bad} bytes; "
                               f"stopped there, kept {self.packets} packets")
                    return
                buf, length = buffers.send(stop)
        except StopIteration:
            pass
        if self.leftover:
            self._warn(f"{self.path}: file ends in the middle of a record ({self.leftover} bytes); "
                       f"kept {self.packets} complete packets")

    def _pcap_batch(self, buf: bytearray, length: int, offsets: np.ndarray, order: str, nanos: bool,
                    rec_len: int, linktype: int) -> RawBatch:
        data = self._array(buf)
        dt = np.dtype(order + "u4")
        records = np.ndarray((length - 15,), np.dtype((np.void, 16)), data, strides=(1,))  # one at every byte
        hdr = records[offsets].view(dt).reshape(-1, 4)  # (n, 4): sec, frac, caplen, wirelen
        sec = hdr[:, 0].astype(np.int64)
        frac = hdr[:, 1].astype(np.int64)
        ts = sec * 1_000_000_000 + (frac if nanos else frac * 1000)
        n = len(offsets)
        self.packets += n
        return RawBatch(
            data=data, offsets=offsets + rec_len, cap_len=hdr[:, 2].astype(np.uint32),
            wire_len=hdr[:, 3].astype(np.uint32), ts_ns=ts,
            linktype=np.full(n, linktype, dtype=np.uint16), file_index=self.file_index,
            pad=len(buf) - length,
        )

    # -- pcapng -----------------------------------------------------------------------------
    def _read_pcapng(self, f: BinaryIO, head: bytes) -> Iterator[RawBatch]:
        state = _PcapngState()
        buffers = self._buffers(f, first=head)
        try:
            buf, length = next(buffers)
        except StopIteration:
            _check_shb(head, self.path)
            return
        _check_shb(bytes(buf[:12]) if length >= 12 else b"", self.path)
        try:
            while True:
                try:
                    cols, stop = _walk_pcapng(buf, length, state, self.path)
                except CaptureError as e:
                    cols = e.partial  # type: ignore[attr-defined]
                    if len(cols[0]):
                        yield self._pcapng_batch(buf, length, cols, state)
                    if self.packets == 0:
                        raise CaptureError(e.reason, self.path) from None
                    self._warn(f"{e}; stopped there, kept {self.packets} packets")
                    return
                if len(cols[0]):
                    yield self._pcapng_batch(buf, length, cols, state)
                buf, length = buffers.send(stop)
        except StopIteration:
            pass
        if self.leftover:
            self._warn(f"{self.path}: file ends in the middle of a block ({self.leftover} bytes); "
                       f"kept {self.packets} complete packets")

    def _pcapng_batch(self, buf: bytearray, length: int, cols, state: "_PcapngState") -> RawBatch:
        data_off, caplen, wirelen, ts_raw, iface, has_ts = (np.asarray(c) for c in cols)
        iface = iface.astype(np.int64)
        ts_raw = ts_raw.astype(np.uint64)
        link = np.asarray(state.iface_linktype, dtype=np.uint16)[iface]
        units = np.asarray(state.iface_units, dtype=np.uint64)[iface]
        pow2 = np.asarray(state.iface_pow2, dtype=np.int64)[iface]
        offset_ns = np.asarray(state.iface_offset_ns, dtype=np.int64)[iface]
        ts = np.empty(len(ts_raw), dtype=np.int64)
        dec = pow2 < 0
        # decimal resolution: units = ticks per second (10^k)
        if dec.any():
            u = units[dec]
            t = ts_raw[dec]
            sec = (t // u).astype(np.int64)
            rem = (t % u).astype(np.uint64)
            # rem * 1e9 / u without overflow: u is a power of ten
            ns = np.where(u <= 1_000_000_000, rem * (np.uint64(1_000_000_000) // np.maximum(u, 1)),
                          rem // np.maximum(u // np.uint64(1_000_000_000), 1))
            ts[dec] = sec * 1_000_000_000 + ns.astype(np.int64)
        if (~dec).any():
            p = pow2[~dec].astype(np.uint64)
            t = ts_raw[~dec]
            sec = (t >> p).astype(np.int64)
            frac = t & ((np.uint64(1) << p) - np.uint64(1))
            ns = _scale_pow2(frac, p)
            ts[~dec] = sec * 1_000_000_000 + ns
        ts += offset_ns
        # Simple packet blocks carry no timestamp: they take the previous packet's, so time never runs back.
        if not has_ts.all():
            known = np.where(has_ts, np.arange(len(ts)), -1)
            last = np.maximum.accumulate(known)
            ts = np.where(last >= 0, ts[np.maximum(last, 0)], state.last_ts_ns)
        if len(ts):
            state.last_ts_ns = int(ts[-1])
        for lt in np.unique(link):
            self.linktypes.add(int(lt))
        n = len(data_off)
        self.packets += n
        return RawBatch(
            data=self._array(buf), offsets=data_off.astype(np.int64),
            cap_len=caplen.astype(np.uint32), wire_len=wirelen.astype(np.uint32), ts_ns=ts,
            linktype=link, file_index=self.file_index, pad=len(buf) - length,
        )


def _scale_pow2(frac: np.ndarray, p: np.ndarray) -> np.ndarray:
    """frac / 2**p seconds in whole nanoseconds (truncated), without 64-bit overflow."""
    out = np.empty(len(frac), dtype=np.int64)
    small = p <= 34  # frac < 2**34, times 1e9 < 2**64
    if small.any():
        out[small] = ((frac[small] * np.uint64(1_000_000_000)) >> p[small]).astype(np.int64)
    if (~small).any():
        out[~small] = [int(f) * 1_000_000_000 >> int(q) for f, q in zip(frac[~small], p[~small])]
    return out


def _walk_pcap(buf: bytearray, end: int, order: str, rec_len: int, limit: int):
    """Offsets of the complete records in buf[:end]; where the walk stopped; a bad captured length or None.

    The loop only follows the chain of captured lengths (the one step that cannot be
    vectorized); the checks on each record run afterwards over the whole array.
    """
    offsets = []
    append = offsets.append
    pos = 0
    last = end - rec_len
    if (order == "<") == (sys.byteorder == "little") and end >= 8:
        # Indexing a uint32 view is cheaper than unpack_from: one view per byte alignment.
        mv = memoryview(buf)
        views = tuple(mv[k : k + (end - k) // 4 * 4].cast("I") for k in range(4))
        while pos <= last:
            append(pos)
            at = pos + 8
            pos += rec_len + views[at & 3][at >> 2]
        for v in views:
            v.release()
        mv.release()
    else:
        caplen_at = struct.Struct(order + "I").unpack_from
        while pos <= last:
            (cl,) = caplen_at(buf, pos + 8)
            append(pos)
            pos += rec_len + cl
    offsets = np.array(offsets, dtype=np.int64)
    caplens = np.diff(offsets, append=pos) - rec_len
    bad = None
    over = np.flatnonzero(caplens > limit)
    if len(over):  # stop at the first record with an absurd length
        k = int(over[0])
        bad = int(caplens[k])
        return offsets[:k], int(offsets[k]), bad
    if pos > end:  # the last record runs past the data read so far
        return offsets[:-1], int(offsets[-1]), None
    return offsets, pos, None


class _PcapngState:
    """Interfaces seen so far (global ids across sections) and the current section's byte order."""

    def __init__(self):
        self.order = "<"
        self.section_ifaces: list[int] = []  # section-local id -> global id
        self.iface_linktype: list[int] = []
        self.iface_snaplen: list[int] = []
        self.iface_units: list[int] = []  # ticks per second for decimal resolutions
        self.iface_pow2: list[int] = []  # -1 for decimal, else the power of two
        self.iface_offset_ns: list[int] = []
        self.last_ts_ns = 0


def _check_shb(buf: bytes, path) -> None:
    if len(buf) < 12:
        raise CaptureError("pcapng section header cut short", path)
    bom = buf[8:12]
    if bom not in (b"\x4d\x3c\x2b\x1a", b"\x1a\x2b\x3c\x4d"):
        raise CaptureError(f"pcapng section header has no valid byte-order magic ({bom.hex()})", path)


def _check_options(buf: bytes, opt: int, end: int, order: str, pos: int, broken) -> None:
    while opt + 4 <= end:
        code, olen = struct.unpack_from(order + "HH", buf, opt)
        if code == 0:
            return
        if opt + 4 + olen > end:
            raise broken(f"block at byte {pos} has an option of length {olen} that runs past the block")
        opt += 4 + ((olen + 3) & ~3)


def _parse_idb(buf: bytes, pos: int, blen: int, st: _PcapngState) -> None:
    o = st.order
    linktype, _res, snaplen = struct.unpack_from(o + "HHI", buf, pos + 8)
    units, pow2, offset_s = 1_000_000, -1, 0
    opt = pos + 16
    end = pos + blen - 4
    while opt + 4 <= end:
        code, olen = struct.unpack_from(o + "HH", buf, opt)
        if code == 0:
            break
        val = buf[opt + 4 : opt + 4 + olen]
        if code == 9 and olen >= 1:  # if_tsresol
            v = val[0]
            if v & 0x80:
                pow2 = v & 0x7F
            else:
                units, pow2 = 10 ** v, -1
        elif code == 14 and olen >= 8:  # if_tsoffset, seconds
            offset_s = struct.unpack_from(o + "q", val)[0]
        opt += 4 + ((olen + 3) & ~3)
    st.section_ifaces.append(len(st.iface_linktype))
    st.iface_linktype.append(linktype)
    st.iface_snaplen.append(snaplen)
    st.iface_units.append(units)
    st.iface_pow2.append(pow2)
    st.iface_offset_ns.append(offset_s * 1_000_000_000)


def _walk_pcapng(buf: bytearray, end: int, st: _PcapngState, path):
    """Walk complete blocks in buf[:end]; collect packet records. Raises CaptureError (with .partial)."""
    data_off, caplen, wirelen, ts_raw, iface, has_ts = [], [], [], [], [], []
    cols = (data_off, caplen, wirelen, ts_raw, iface, has_ts)
    pos = 0
    u32 = struct.Struct(st.order + "I").unpack_from

    def broken(reason: str):
        err = CaptureError(reason, path)
        err.partial = cols  # type: ignore[attr-defined]
        return err

    while pos + 12 <= end:
        btype = struct.unpack_from("<I", buf, pos)[0]
        if btype == _PCAPNG_SHB:
            bom = buf[pos + 8 : pos + 12]
            if bom == b"\x4d\x3c\x2b\x1a":
                st.order = "<"
            elif bom == b"\x1a\x2b\x3c\x4d":
                st.order = ">"
            else:
                raise broken(f"section header at byte {pos} has no valid byte-order magic")
            u32 = struct.Struct(st.order + "I").unpack_from
            blen = u32(buf, pos + 4)[0]
            if pos + blen <= end and blen >= 28:
                major, minor = struct.unpack_from(st.order + "HH", buf, pos + 12)
                if major != 1 or minor not in (0, 2):
                    raise broken(f"section header at byte {pos} has version {major}.{minor}, not 1.0")
                _check_options(buf, pos + 24, pos + blen - 4, st.order, pos, broken)
            st.section_ifaces = []
        else:
            btype = u32(buf, pos)[0]
            blen = u32(buf, pos + 4)[0]
        if blen < 12 or blen % 4 or blen > MAX_RECORD:
            raise broken(f"block at byte {pos} has an invalid length {blen}")
        if pos + blen > end:
            break
        if btype == 6 or btype == 2:  # enhanced packet block / obsolete packet block
            if blen < 32:
                raise broken(f"packet block at byte {pos} is too short ({blen} bytes)")
            if btype == 6:
                local, hi, lo, cl, wl = struct.unpack_from(st.order + "IIIII", buf, pos + 8)
            else:
                local, _drops, hi, lo, cl, wl = struct.unpack_from(st.order + "HHIIII", buf, pos + 8)
            if local >= len(st.section_ifaces):
                raise broken(f"packet block at byte {pos} names interface {local}, which was never described")
            if cl > blen - 32:
                raise broken(f"packet block at byte {pos} claims {cl} captured bytes in a {blen}-byte block")
            data_off.append(pos + 28)
            caplen.append(cl)
            wirelen.append(wl)
            ts_raw.append((hi << 32) | lo)
            iface.append(st.section_ifaces[local])
            has_ts.append(True)
        elif btype == 3:  # simple packet block: interface 0, no timestamp
            if not st.section_ifaces:
                raise broken(f"simple packet block at byte {pos} comes before any interface")
            g = st.section_ifaces[0]
            wl = u32(buf, pos + 8)[0]
            snap = st.iface_snaplen[g] or wl
            cl = min(wl, snap, blen - 16)
            data_off.append(pos + 12)
            caplen.append(cl)
            wirelen.append(wl)
            ts_raw.append(0)
            iface.append(g)
            has_ts.append(False)
        elif btype == 1:
            if blen < 20:
                raise broken(f"interface block at byte {pos} is too short ({blen} bytes)")
            _check_options(buf, pos + 16, pos + blen - 4, st.order, pos, broken)
            _parse_idb(buf, pos, blen, st)
        pos += blen
    return cols, pos


def read_batches(path: str | Path, file_index: int = 0) -> Iterator[RawBatch]:
    """Shorthand for iterating a CaptureReader when its summary is not needed."""
    yield from CaptureReader(path, file_index=file_index)
