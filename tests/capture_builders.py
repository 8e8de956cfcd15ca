"""Hand-built captures for reader tests: classic pcap in every variant, pcapng block by block."""
from __future__ import annotations

import struct


def pcap(packets: list[tuple[int, bytes]], *, linktype: int = 1, order: str = "<", nanos: bool = False,
         snaplen: int = 65535, wire_extra: int = 0, modified: bool = False) -> bytes:
    """packets: (timestamp in ns, bytes)."""
    magic = 0xA1B2CD34 if modified else (0xA1B23C4D if nanos else 0xA1B2C3D4)
    out = [struct.pack(order + "IHHiIII", magic, 2, 4, 0, 0, snaplen, linktype)]
    for ts, data in packets:
        frac = ts % 1_000_000_000 if nanos else (ts % 1_000_000_000) // 1000
        out.append(struct.pack(order + "IIII", ts // 1_000_000_000, frac, len(data), len(data) + wire_extra))
        if modified:
            out.append(struct.pack(order + "IHBB", 1, 0x0800, 0, 0))
        out.append(data)
    return b"".join(out)


def _pad(b: bytes) -> bytes:
    return b + b"\0" * (-len(b) % 4)


def _block(btype: int, body: bytes, order: str) -> bytes:
    body = _pad(body)
    n = 12 + len(body)
    return struct.pack(order + "II", btype, n) + body + struct.pack(order + "I", n)


def _options(opts: list[tuple[int, bytes]], order: str) -> bytes:
    if not opts:
        return b""
    out = b"".join(struct.pack(order + "HH", c, len(v)) + _pad(v) for c, v in opts)
    return out + struct.pack(order + "HH", 0, 0)


def shb(order: str = "<", version: tuple[int, int] = (1, 0)) -> bytes:
    return _block(0x0A0D0D0A, struct.pack(order + "IHHq", 0x1A2B3C4D, *version, -1), order)


def idb(linktype: int = 1, order: str = "<", tsresol: int | None = None, snaplen: int = 0,
        tsoffset: int | None = None) -> bytes:
    opts = []
    if tsresol is not None:
        opts.append((9, bytes([tsresol])))
    if tsoffset is not None:
        opts.append((14, struct.pack(order + "q", tsoffset)))
    return _block(1, struct.pack(order + "HHI", linktype, 0, snaplen) + _options(opts, order), order)


def epb(iface: int, ticks: int, data: bytes, order: str = "<", wire_len: int | None = None) -> bytes:
    wl = len(data) if wire_len is None else wire_len
    return _block(6, struct.pack(order + "IIIII", iface, ticks >> 32, ticks & 0xFFFFFFFF, len(data), wl) + data, order)


def spb(data: bytes, order: str = "<") -> bytes:
    return _block(3, struct.pack(order + "I", len(data)) + data, order)


def pb(iface: int, ticks: int, data: bytes, order: str = "<") -> bytes:
    return _block(2, struct.pack(order + "HHIIII", iface, 0, ticks >> 32, ticks & 0xFFFFFFFF, len(data), len(data))
                  + data, order)


def custom(order: str = "<") -> bytes:
    return _block(0xBAD, struct.pack(order + "I", 32473) + b"custom", order)
