"""Attack packets as frames: explicit header fields -> necst's crafter, payload text, replays.

Scenario traffic is not a model's flow, so its header fields are given outright (a SYN scan is
a SYN and a RST, never a handshake); :func:`explicit_fields` turns such per-packet arrays into
the crafter's :class:`~necst.generate.craft.PacketFields`, and :func:`frames` lays them out with
:func:`~necst.generate.craft.build_frames`, the code behind ``necst generate`` (checksums and
lengths included). Whole TCP conversations go through :func:`~necst.generate.craft.plan_packets`
instead, which keeps sequence numbers consistent. :func:`write_payloads` then writes application
bytes (FTP commands, SSH banners, DNS answers) into the zero payloads and updates each
transport checksum incrementally (RFC 1624), so the crafter's checksums stay right.

Replayed captures are remapped (:func:`remap_ipv4`): every IPv4 packet is re-framed onto a
fresh Ethernet header, its addresses rewritten through a mapping, and the IPv4 and TCP/UDP
checksums updated incrementally, so a checksum that was right stays right (and one that a
capturing host's offload left wrong stays wrong, as in the original).
"""
from __future__ import annotations

import ipaddress

import numpy as np

from necst.capture.batch import RawBatch
from necst.capture.writer import FrameBatch, LINKTYPE_ETHERNET
from necst.errors import NecstError
from necst.generate.craft import KINDS, PacketFields, build_frames

ETH_LEN, IP4_LEN, TCP_LEN, UDP_LEN = 14, 20, 20, 8


def _parse_each_unique(values, width: int, parse, what: str) -> np.ndarray:
    """(n, width) bytes: ``parse`` (text -> bytes) runs once per distinct value."""
    values = np.asarray(values).astype(str)
    uniq, inv = np.unique(values, return_inverse=True)
    out = np.zeros((len(uniq), width), np.uint8)
    for i, s in enumerate(uniq):
        try:
            raw = parse(s)
        except ValueError:
            raise NecstError(f"bench: not {what}: {s!r}") from None
        out[i, :len(raw)] = np.frombuffer(raw, np.uint8)
    return out[inv.ravel()]


def ip_bytes(values) -> np.ndarray:
    """IPv4 strings -> (n, 16) bytes (address in the first 4, as the crafter holds them)."""
    return _parse_each_unique(values, 16, lambda s: ipaddress.IPv4Address(s).packed, "an IPv4 address")


def mac_bytes(values) -> np.ndarray:
    def parse(s: str) -> bytes:
        raw = bytes.fromhex(s.replace(":", "").replace("-", ""))
        if len(raw) != 6:
            raise ValueError(s)
        return raw

    return _parse_each_unique(values, 6, parse, "a MAC address")


def explicit_fields(n: int, *, ts_ns, kind, src_ip, dst_ip, src_mac, dst_mac, sport=0, dport=0, tcp_flags=0,
                    seq=0, ack=0, window=64240, ttl=64, payload_len=0, direction=0, ip_id=0, icmp_id=0,
                    icmp_seq=0, flow=0) -> PacketFields:
    """PacketFields for ``n`` packets whose every header field is given (scalars broadcast).

    ``kind``: tcp, udp or icmp (one name, or one per packet); ICMP is echo request for
    ``direction`` 0 and echo reply for 1, as the crafter writes it.
    """
    def arr(v, dtype):
        return np.broadcast_to(np.asarray(v), (n,)).astype(dtype)

    kind_names = np.broadcast_to(np.asarray(kind), (n,)).astype(str)
    kp = np.full(n, -1, np.int64)
    for i, k in enumerate(KINDS):
        kp[kind_names == k] = i
    if (kp < 0).any() or (kp == KINDS.index("arp")).any():
        raise NecstError("bench: explicit packets are tcp, udp or icmp")

    def addr(v, parse):
        v = np.broadcast_to(np.asarray(v).astype(str), (n,))
        return parse(v)

    cols = {
        "ts_ns": arr(ts_ns, np.int64), "flow": arr(flow, np.int64), "pos": np.arange(n, dtype=np.int64),
        "direction": arr(direction, np.uint8), "kind": kp.astype(np.uint8), "ip_version": np.full(n, 4, np.uint8),
        "tcp_flags": arr(tcp_flags, np.uint16), "payload_len": arr(payload_len, np.int64),
        "tcp_opt": np.zeros(n, np.uint8),
        "ip_src": addr(src_ip, ip_bytes), "ip_dst": addr(dst_ip, ip_bytes),
        "mac_src": addr(src_mac, mac_bytes), "mac_dst": addr(dst_mac, mac_bytes),
        "sport": arr(sport, np.uint16), "dport": arr(dport, np.uint16),
        "ttl": np.clip(arr(ttl, np.int64), 1, 255).astype(np.uint8),
        "window": np.clip(arr(window, np.int64), 0, 0xFFFF).astype(np.uint16),
        "seq": (arr(seq, np.int64) & 0xFFFFFFFF).astype(np.uint32),
        "ack": (arr(ack, np.int64) & 0xFFFFFFFF).astype(np.uint32),
        "ip_id": (arr(ip_id, np.int64) & 0xFFFF).astype(np.uint16), "flow_label": np.zeros(n, np.uint32),
        "icmp_id": (arr(icmp_id, np.int64) & 0xFFFF).astype(np.uint16),
        "icmp_seq": (arr(icmp_seq, np.int64) & 0xFFFF).astype(np.uint16),
        "app": np.zeros(n, np.int16), "first_in_dir": np.zeros(n, bool),
        # link-local message fields (IGMP, EAPOL, LLC, ICMPv6 control): unused by tcp, udp and icmp
        "sub": np.zeros(n, np.uint8), "msg_len": np.zeros(n, np.uint16), "pad": np.zeros(n, np.uint8),
        "nonce": np.zeros(n, np.uint64), "rank": np.zeros(n, np.int64),
    }
    return PacketFields(cols, ["unknown"], {})


def frames(fields: PacketFields) -> FrameBatch:
    """The crafter's frames (pcap record layout, zero payloads) of ``fields`` in the given order."""
    return build_frames(fields, layout="pcap", payload="zeros")


def _fold_add(csum: np.ndarray, add: np.ndarray) -> np.ndarray:
    """Checksum after adding ``add`` (unfolded word sum) to the summed data (RFC 1624, eq. 3)."""
    s = (~csum.astype(np.uint64) & np.uint64(0xFFFF)) + add.astype(np.uint64)
    for _ in range(4):
        s = (s & np.uint64(0xFFFF)) + (s >> np.uint64(16))
    return (~s & np.uint64(0xFFFF)).astype(np.uint16)


def _word_sum(mat: np.ndarray) -> np.ndarray:
    if mat.shape[1] % 2:
        mat = np.hstack([mat, np.zeros((len(mat), 1), np.uint8)])
    return np.ascontiguousarray(mat).view(">u2").sum(axis=1, dtype=np.uint64)


def _u16(buf: np.ndarray, at: np.ndarray) -> np.ndarray:
    return (buf[at].astype(np.uint16) << 8) | buf[at + 1]


def _put16(buf: np.ndarray, at: np.ndarray, v: np.ndarray) -> None:
    v = v.astype(np.uint16)
    buf[at] = (v >> 8).astype(np.uint8)
    buf[at + 1] = (v & 0xFF).astype(np.uint8)


def write_payloads(batch: FrameBatch, fields: PacketFields, rows: np.ndarray, mat: np.ndarray) -> None:
    """Write ``mat[i]`` at the start of packet ``rows[i]``'s zero payload; fix its checksum.

    ``fields`` are the fields the batch was built from (same order). IPv4 TCP/UDP only, no options.
    """
    rows = np.asarray(rows, np.int64)
    if len(rows) == 0:
        return
    kp = fields["kind"][rows].astype(np.int64)
    tcp = kp == KINDS.index("tcp")
    if not (tcp | (kp == KINDS.index("udp"))).all():
        raise NecstError("bench: payload text only on TCP and UDP packets")
    if (fields["payload_len"][rows] < mat.shape[1]).any():
        raise NecstError("bench: payload text longer than its packet's payload")
    l4 = batch.offsets[rows].astype(np.int64) + ETH_LEN + IP4_LEN
    start = l4 + np.where(tcp, TCP_LEN + fields["tcp_opt"][rows].astype(np.int64), UDP_LEN)
    batch.data[(start[:, None] + np.arange(mat.shape[1])).ravel()] = mat.ravel()
    at = l4 + np.where(tcp, 16, 6)
    new = _fold_add(_u16(batch.data, at), _word_sum(mat))
    new = np.where(~tcp & (new == 0), 0xFFFF, new)
    _put16(batch.data, at, new)


def text_matrix(texts) -> np.ndarray:
    """Equal-length byte strings -> (n, width) uint8."""
    texts = list(texts)
    if not texts:
        return np.zeros((0, 0), np.uint8)
    w = len(texts[0])
    if any(len(t) != w for t in texts):
        raise NecstError("bench: payload texts of one call must have equal lengths")
    return np.frombuffer(b"".join(texts), np.uint8).reshape(len(texts), w).copy()


# --------------------------------------------------------------------------------------------
# replayed captures
# --------------------------------------------------------------------------------------------
def _ip_start(batch: RawBatch) -> np.ndarray:
    """Offset of the IPv4 header after Ethernet and up to two VLAN tags; -1 when not IPv4."""
    d, off = batch.data, batch.offsets.astype(np.int64)
    cap = batch.cap_len.astype(np.int64)
    eth = batch.linktype == LINKTYPE_ETHERNET
    pos = np.full(len(off), 12, np.int64)
    for _ in range(3):
        ok = eth & (cap >= pos + 2)
        et = np.where(ok, _u16(d, np.where(ok, off + pos, 0)), 0)
        tagged = (et == 0x8100) | (et == 0x88A8)
        pos = np.where(tagged, pos + 4, pos)
    ok = eth & (cap >= pos + 2 + IP4_LEN)
    et = np.where(ok, _u16(d, np.where(ok, off + pos, 0)), 0)
    ver = np.where(ok, d[np.where(ok, off + pos + 2, 0)] >> 4, 0)
    return np.where(ok & (et == 0x0800) & (ver == 4), off + pos + 2, -1)


def remap_ipv4(batch: RawBatch, mapping: dict[str, str], macs: dict[str, str], default_mac: str,
               ts_ns: np.ndarray) -> tuple[FrameBatch, np.ndarray, np.ndarray]:
    """IPv4 packets of ``batch`` re-framed on Ethernet, addresses mapped, checksums updated.

    ``mapping``: old -> new address (others kept); ``macs``: address -> MAC for the new Ethernet
    header (``default_mac``, the gateway's, for the rest). Returns the frames (pcap layout, at
    times ``ts_ns[kept]``), the rows of ``batch`` kept, and their (src, dst) addresses after mapping.
    """
    start = _ip_start(batch)
    keep = np.flatnonzero(start >= 0)
    start = start[keep]
    d = batch.data
    ip_len = batch.cap_len.astype(np.int64)[keep] - (start - batch.offsets.astype(np.int64)[keep])
    wire_ip = batch.wire_len.astype(np.int64)[keep] - (start - batch.offsets.astype(np.int64)[keep])
    frame = ETH_LEN + ip_len
    total = 16 + frame
    rec = np.concatenate([[0], np.cumsum(total)[:-1]]).astype(np.int64)
    size = int(total.sum())
    out = np.zeros(size + 64, np.uint8)
    dst_off = rec + 16
    # copy every IP packet behind a fresh Ethernet header, as one gather
    m = int(ip_len.sum())
    within = np.arange(m, dtype=np.int64) - np.repeat(np.cumsum(ip_len) - ip_len, ip_len)
    out[np.repeat(dst_off + ETH_LEN, ip_len) + within] = d[np.repeat(start, ip_len) + within]
    ip = dst_off + ETH_LEN
    old_src = out[(ip + 12)[:, None] + np.arange(4)]
    old_dst = out[(ip + 16)[:, None] + np.arange(4)]

    def as_str(b):
        u, inv = np.unique(b.view(">u4").ravel(), return_inverse=True)
        names = np.array([str(ipaddress.IPv4Address(int(x))) for x in u], dtype=object)
        return names[inv.ravel()] if len(u) else np.zeros(0, object)

    src_s, dst_s = as_str(old_src), as_str(old_dst)
    new_src = np.array([mapping.get(s, s) for s in np.unique(src_s)], dtype=object)
    new_dst = np.array([mapping.get(s, s) for s in np.unique(dst_s)], dtype=object)
    src_n = new_src[np.unique(src_s, return_inverse=True)[1].ravel()] if len(src_s) else src_s
    dst_n = new_dst[np.unique(dst_s, return_inverse=True)[1].ravel()] if len(dst_s) else dst_s
    nb_src, nb_dst = ip_bytes(src_n), ip_bytes(dst_n)
    delta = (_word_sum(nb_src[:, :4]) + _word_sum(nb_dst[:, :4])
             + _word_sum(~old_src & np.uint8(0xFF)) + _word_sum(~old_dst & np.uint8(0xFF)))
    # IPv4 header checksum
    _put16(out, ip + 10, _fold_add(_u16(out, ip + 10), delta))
    out[(ip + 12)[:, None] + np.arange(4)] = nb_src[:, :4]
    out[(ip + 16)[:, None] + np.arange(4)] = nb_dst[:, :4]
    # TCP / UDP checksums cover the pseudo-header's addresses: first fragments only, when captured
    proto = out[ip + 9]
    ihl = (out[ip] & 0x0F).astype(np.int64) * 4
    first_frag = (_u16(out, ip + 6) & 0x1FFF) == 0
    l4 = ip + ihl
    for p, at, least in ((6, 16, 18), (17, 6, 8)):
        sel = np.flatnonzero((proto == p) & first_frag & (ip_len >= ihl + least) & (wire_ip == ip_len))
        if len(sel) == 0:
            continue
        old = _u16(out, l4[sel] + at)
        if p == 17:
            sel = sel[old != 0]  # UDP without a checksum stays without
            old = old[old != 0]
        new = _fold_add(old, delta[sel])
        if p == 17:
            new = np.where(new == 0, 0xFFFF, new)
        _put16(out, l4[sel] + at, new)
    # Ethernet: each host's own MAC, the gateway's for the rest
    def mac_of(names):
        return mac_bytes(np.array([macs.get(s, default_mac) for s in names], dtype=object)) if len(names) \
            else np.zeros((0, 6), np.uint8)

    out[dst_off[:, None] + np.arange(6)] = mac_of(dst_n)
    out[(dst_off + 6)[:, None] + np.arange(6)] = mac_of(src_n)
    out[dst_off + 12], out[dst_off + 13] = 0x08, 0x00
    wire = frame + (wire_ip - ip_len)
    fb = FrameBatch(data=out, offsets=dst_off, cap_len=frame.astype(np.uint32), wire_len=wire.astype(np.uint32),
                    ts_ns=np.asarray(ts_ns, np.int64)[keep], linktype=np.full(len(keep), LINKTYPE_ETHERNET, np.uint16),
                    pad=64, layout="pcap", record_start=0, record_end=size)
    return fb, keep, np.stack([src_n.astype(str), dst_n.astype(str)]) if len(keep) else np.zeros((2, 0), str)


def merge(parts: list[RawBatch]) -> tuple[RawBatch, np.ndarray, np.ndarray]:
    """One batch of all packets in time order (stable: earlier parts first on ties).

    Returns the batch, and for each packet of it the part it came from and its row there.
    """
    parts = [p for p in parts if p is not None]
    sizes = np.array([len(p) for p in parts], np.int64)
    base = np.concatenate([[0], np.cumsum([len(p.data) for p in parts])[:-1]]).astype(np.int64)
    data = np.concatenate([np.asarray(p.data) for p in parts] + [np.zeros(64, np.uint8)])
    offsets = np.concatenate([p.offsets.astype(np.int64) + b for p, b in zip(parts, base)])
    ts = np.concatenate([p.ts_ns.astype(np.int64) for p in parts])
    part = np.repeat(np.arange(len(parts)), sizes)
    row = np.concatenate([np.arange(s) for s in sizes]) if len(sizes) else np.zeros(0, np.int64)
    order = np.lexsort((row, part, ts))
    out = RawBatch(data=data, offsets=offsets[order],
                   cap_len=np.concatenate([p.cap_len for p in parts])[order].astype(np.uint32),
                   wire_len=np.concatenate([p.wire_len for p in parts])[order].astype(np.uint32),
                   ts_ns=ts[order], linktype=np.concatenate([p.linktype for p in parts])[order].astype(np.uint16),
                   pad=64)
    return out, part[order], row[order]
