"""Decode header fields of a RawBatch as arrays, one gather per field over the whole batch.

Each layer computes, for every packet at once, where its header starts and whether it lies
within the captured bytes; a field that is absent or beyond the captured length is null
(a False in its validity mask), never garbage. Layers are walked with a few vectorized
passes (VLAN and MPLS stacks, IPv6 extension headers), not per packet.
"""
from __future__ import annotations

import ipaddress

import numpy as np
import pyarrow as pa

from necst._factorize import factorize
from necst.capture.batch import RawBatch
from necst.process.apps import app_dictionary, label_apps
from necst.schema import PACKET_SCHEMA, arrow_array, null_array, string_array

PAYLOAD_HEAD = 16  # transport-payload bytes kept for application signatures

ETH_IPV4, ETH_IPV6, ETH_ARP, ETH_RARP = 0x0800, 0x86DD, 0x0806, 0x8035
_VLAN_TYPES = (0x8100, 0x88A8, 0x9100, 0x9200)
_MPLS_TYPES = (0x8847, 0x8848)
_PPPOE_SESSION = 0x8864
_PPP_TO_ETHERTYPE = {0x0021: ETH_IPV4, 0x0057: ETH_IPV6}
_IPV6_EXT = (0, 43, 44, 60, 51)  # hop-by-hop, routing, fragment, destination options, AH

# Link types (LINKTYPE_* values as stored in files)
LT_NULL, LT_ETHERNET, LT_PPP, LT_RAW, LT_PPP_HDLC, LT_C_HDLC = 0, 1, 9, 101, 50, 104
LT_LOOP, LT_SLL, LT_IPV4, LT_IPV6, LT_SLL2, LT_PKTAP = 108, 113, 228, 229, 276, 258
_RAW_ALIASES = (12, 14, LT_RAW)  # DLT_RAW differs between platforms
_BSD_AF_INET6 = (10, 24, 28, 30)


class _Bytes:
    """Bounds-checked gathers from the batch buffer at per-packet offsets."""

    PAD = 64  # zero bytes after the buffer, so a window's columns never need clipping

    def __init__(self, batch: RawBatch):
        if batch.pad >= self.PAD:  # the reader left zero bytes after the data: no copy needed
            self.data = batch.data
        else:
            self.data = np.concatenate([batch.data, np.zeros(self.PAD, dtype=np.uint8)])
        self.last = len(self.data) - self.PAD
        self._items: dict[int, np.ndarray] = {}
        self.start = batch.offsets
        self.cap = batch.cap_len.astype(np.int64)

    def has(self, rel: np.ndarray, nbytes: int) -> np.ndarray:
        return (rel >= 0) & (rel + nbytes <= self.cap)

    def u8(self, rel: np.ndarray) -> np.ndarray:
        idx = np.clip(self.start + rel, 0, self.last)
        return self.data[idx].astype(np.uint32)

    def u16(self, rel: np.ndarray) -> np.ndarray:
        return (self.u8(rel) << 8) | self.u8(rel + 1)

    def u16le(self, rel: np.ndarray) -> np.ndarray:
        return self.u8(rel) | (self.u8(rel + 1) << 8)

    def u32(self, rel: np.ndarray) -> np.ndarray:
        return (self.u16(rel).astype(np.uint64) << 16 | self.u16(rel + 2)).astype(np.uint32)

    def block(self, rel: np.ndarray, width: int) -> np.ndarray:
        """(n, width) bytes from each packet's start + rel: a copy, gathered as one item per packet."""
        return self.at(np.clip(self.start + rel, 0, self.last), width)

    def at(self, pos: np.ndarray, width: int) -> np.ndarray:
        """(n, width) bytes at absolute positions (at most self.last).

        The buffer is viewed as overlapping width-byte items, one starting at every byte, so
        the gather copies one fixed-size item per packet: several times faster than indexing
        rows of a 2-D sliding window.
        """
        assert width <= self.PAD
        items = self._items.get(width)
        if items is None:
            items = self._items[width] = np.ndarray((self.last + 1,), np.dtype((np.void, width)), self.data,
                                                    strides=(1,))
        return items[pos].view(np.uint8).reshape(len(pos), width)

    def window(self, rel: np.ndarray, width: int) -> "_Window":
        return _Window(self.block(rel, width))


class _Window:
    """A header's first bytes for every packet, gathered once; fields are column arithmetic."""

    def __init__(self, a: np.ndarray):
        self.a = a

    def u8(self, k: int) -> np.ndarray:
        return self.a[:, k].astype(np.uint32)

    def u16(self, k: int) -> np.ndarray:
        return (self.a[:, k].astype(np.uint32) << 8) | self.a[:, k + 1]

    def u32(self, k: int) -> np.ndarray:
        return (self.u16(k) << 16) | self.u16(k + 2)

    def u16le(self, k: int) -> np.ndarray:
        return self.a[:, k].astype(np.uint32) | (self.a[:, k + 1].astype(np.uint32) << 8)

    def u64(self, k: int) -> np.ndarray:
        return (self.u32(k).astype(np.uint64) << np.uint64(32)) | self.u32(k + 4).astype(np.uint64)


def _link_layer(b: _Bytes, linktype: np.ndarray, n: int):
    """-> l3 offset, ethertype (0 unknown), ethertype valid, eth_present, eth offset, vlan id, vlan valid.

    One gather of each packet's first bytes serves every link header; link types that no packet
    of the batch has are skipped.
    """
    l3 = np.full(n, -1, dtype=np.int64)
    etype = np.zeros(n, dtype=np.uint32)
    ev = np.zeros(n, dtype=bool)
    zero = np.zeros(n, dtype=np.int64)
    head = b.window(zero, 20)
    present = set(np.unique(linktype).tolist())

    def found(mask, offset, ethertype):
        nonlocal l3, etype, ev
        etype = np.where(mask, ethertype, etype)
        l3 = np.where(mask, offset, l3)
        ev |= mask

    # Ethernet, bare or behind Apple's PKTAP header (its length and inner DLT lead the header)
    eth_base = zero
    eth = linktype == LT_ETHERNET
    if LT_PKTAP in present:
        pktap = (linktype == LT_PKTAP) & b.has(zero, 8)
        plen = (head.u16le(0) | (head.u16le(2) << 16)).astype(np.int64)
        pktap &= (head.u16le(4) | (head.u16le(6) << 16)) == LT_ETHERNET
        eth_base = np.where(pktap, plen, zero)
        eth |= pktap
    eth_ok = eth & b.has(eth_base, 14)
    eth_type = head.u16(12) if LT_PKTAP not in present else b.u16(eth_base + 12)
    found(eth_ok, eth_base + 14, eth_type)
    if LT_SLL in present:
        found((linktype == LT_SLL) & b.has(zero, 16), 16, head.u16(14))
    if LT_SLL2 in present:
        found((linktype == LT_SLL2) & b.has(zero, 20), 20, head.u16(0))
    if LT_C_HDLC in present:
        found((linktype == LT_C_HDLC) & b.has(zero, 4), 4, head.u16(2))
    if present & {LT_PPP, LT_PPP_HDLC}:
        ppp = np.isin(linktype, (LT_PPP, LT_PPP_HDLC)) & b.has(zero, 2)
        hdlc = head.u16(0) == 0xFF03
        poff = np.where(hdlc, 2, 0)
        proto = np.where(hdlc, head.u16(2), head.u16(0))
        okp = ppp & b.has(poff, 2)
        for p, et in _PPP_TO_ETHERTYPE.items():
            found(okp & (proto == p), poff + 2, et)
    if present & {LT_NULL, LT_LOOP}:
        null = np.isin(linktype, (LT_NULL, LT_LOOP)) & b.has(zero, 4)
        be = head.u32(0)
        le = head.u16le(0) | (head.u16le(2) << 16)
        fam = np.where(linktype == LT_LOOP, be, np.where((be & 0xFFFF) == 0, le, be))
        fam = np.where((linktype == LT_NULL) & ((le & 0xFFFF0000) == 0) & (le != 0), le, fam)
        found(null & (fam == 2), 4, ETH_IPV4)
        found(null & np.isin(fam, _BSD_AF_INET6), 4, ETH_IPV6)
    if present & set(_RAW_ALIASES + (LT_IPV4, LT_IPV6)):
        raw = np.isin(linktype, _RAW_ALIASES + (LT_IPV4, LT_IPV6)) & b.has(zero, 1)
        ver = head.u8(0) >> 4
        found(raw & (ver == 4) & (linktype != LT_IPV6), 0, ETH_IPV4)
        found(raw & (ver == 6) & (linktype != LT_IPV4), 0, ETH_IPV6)

    # VLAN stacks (Ethernet only, as tshark reads them): the outermost tag's id is kept.
    vlan_id = np.zeros(n, dtype=np.uint32)
    vlan_ok = np.zeros(n, dtype=bool)
    tagged = eth_ok & np.isin(etype, _VLAN_TYPES)
    for _ in range(8):
        tagged &= b.has(l3, 4)
        if not tagged.any():
            break
        first = tagged & ~vlan_ok
        vlan_id = np.where(first, b.u16(l3) & 0x0FFF, vlan_id)
        vlan_ok |= first
        etype = np.where(tagged, b.u16(l3 + 2), etype)
        l3 = np.where(tagged, l3 + 4, l3)
        tagged &= np.isin(etype, _VLAN_TYPES)

    # PPPoE session: 6-byte header, then a PPP protocol number.
    pppoe = ev & (etype == _PPPOE_SESSION) & b.has(l3, 8)
    if pppoe.any():
        proto = b.u16(l3 + 6)
        for p, et in _PPP_TO_ETHERTYPE.items():
            m = pppoe & (proto == p)
            etype = np.where(m, et, etype)
            l3 = np.where(m, l3 + 8, l3)

    # MPLS label stacks: walk to bottom of stack, then guess IPv4 / IPv6 by the version nibble.
    mpls = ev & np.isin(etype, _MPLS_TYPES)
    if mpls.any():
        inside = mpls.copy()
        for _ in range(16):
            inside &= b.has(l3, 4)
            if not inside.any():
                break
            bottom = inside & ((b.u8(l3 + 2) & 1) == 1)
            l3 = np.where(inside, l3 + 4, l3)
            inside &= ~bottom
        nib = b.u8(l3) >> 4
        ok = mpls & b.has(l3, 1)
        etype = np.where(ok & (nib == 4), ETH_IPV4, np.where(ok & (nib == 6), ETH_IPV6, etype))
    return l3, etype, ev, eth_ok, eth_base, vlan_id, vlan_ok


def _format_macs(b: _Bytes, base: np.ndarray, valid: np.ndarray) -> tuple[pa.Array, pa.Array]:
    """(source, destination) MAC columns of Ethernet headers starting at base."""
    w = _Window(b.block(base, 12))

    def mac(k):
        val = (w.u16(k).astype(np.uint64) << np.uint64(32)) | w.u32(k + 2).astype(np.uint64)
        return _dictionary(val, valid, lambda v: ":".join(f"{(int(v) >> s) & 0xFF:02x}" for s in range(40, -8, -8)))

    return mac(6), mac(0)


def _dictionary(keys: np.ndarray, valid: np.ndarray, fmt) -> pa.Array:
    """Format only the distinct keys (hash-factorized, in order of first appearance), then index them."""
    n = len(keys)
    indices = np.zeros(n, dtype=np.int32)
    words: list[str] = []
    if valid.any():
        codes, uniq = factorize(keys[valid])
        indices[valid] = codes
        words = [fmt(v) for v in uniq]
    return pa.DictionaryArray.from_arrays(arrow_array(indices, pa.int32(), ~valid), string_array(words))


def _null_strings(n: int) -> pa.Array:
    return pa.DictionaryArray.from_arrays(null_array(n, pa.int32()), string_array([]))


def _format_ips(v4: np.ndarray, v6hi: np.ndarray, v6lo: np.ndarray, is4: np.ndarray, is6: np.ndarray) -> pa.Array:
    """IPv4 keys are the address (< 2^32); each distinct IPv6 address gets a key from 2^32 up."""
    keys = v4.astype(np.uint64)
    words6: list[str] = []
    if is6.any():
        pairs = np.column_stack([v6hi[is6], v6lo[is6]])
        uniq6, inv6 = np.unique(pairs, axis=0, return_inverse=True)
        keys[is6] = np.uint64(1 << 32) + inv6.reshape(-1).astype(np.uint64)
        words6 = [str(ipaddress.IPv6Address((int(hi) << 64) | int(lo))) for hi, lo in uniq6]

    def fmt(k):
        k = int(k)
        return str(ipaddress.IPv4Address(k)) if k < (1 << 32) else words6[k - (1 << 32)]

    return _dictionary(keys, is4 | is6, fmt)


def decode(batch: RawBatch, columns=None) -> pa.RecordBatch:
    """Decode a batch into PacketTable columns (flow columns left null for the flow stage).

    ``columns``, when given, names the columns the caller reads: MAC addresses and application
    labels, the costliest to build, are then left null unless named.
    """
    wanted = (lambda name: True) if columns is None else set(columns).__contains__
    n = len(batch)
    b = _Bytes(batch)
    linktype = batch.linktype
    l3, etype, ev, eth_ok, eth_base, vlan_id, vlan_ok = _link_layer(b, linktype, n)

    # ---- IPv4 ------------------------------------------------------------------------
    w = b.window(l3, 40)  # the IPv4 header's fixed part, or the whole IPv6 header
    is4 = ev & (etype == ETH_IPV4) & b.has(l3, 20) & ((w.u8(0) >> 4) == 4)
    ihl = (w.u8(0) & 0x0F).astype(np.int64) * 4
    v4_total = w.u16(2).astype(np.int64)
    # As tshark: a header length under 20 or a total length under it is bogus, except a total of
    # 0, which TCP segmentation offload leaves behind (then the frame says how long it is).
    is4 &= (ihl >= 20) & ((v4_total >= ihl) | (v4_total == 0))
    v4_total = np.where(v4_total == 0, batch.wire_len.astype(np.int64) - l3, v4_total)
    v4_fragw = w.u16(6)
    v4_ttl = w.u8(8)
    v4_proto = w.u8(9)
    v4_src = w.u32(12)
    v4_dst = w.u32(16)
    v4_id = w.u16(4)

    # ---- IPv6, walking extension headers to the upper-layer protocol ------------------
    is6 = ev & (etype == ETH_IPV6) & b.has(l3, 40) & ((w.u8(0) >> 4) == 6)
    v6_plen = w.u16(4).astype(np.int64)
    nxt = w.u8(6)
    v6_hlim = w.u8(7)
    src_hi, src_lo = w.u64(8), w.u64(16)
    dst_hi, dst_lo = w.u64(24), w.u64(32)
    ext_off = l3 + 40
    nxt = nxt.copy()
    v6_frag_id = np.zeros(n, dtype=np.uint32)
    v6_frag_w = np.zeros(n, dtype=np.uint32)
    v6_has_frag = np.zeros(n, dtype=bool)
    v6_ext_cut = np.zeros(n, dtype=bool)  # an extension header lies beyond the captured bytes
    walking = np.flatnonzero(is6 & np.isin(nxt, _IPV6_EXT))  # only these packets are walked
    while len(walking):  # ends: each header is at least 8 bytes and must lie within the capture
        off = ext_off[walking]
        inside = (off + 8 <= b.cap[walking])
        v6_ext_cut[walking[~inside]] = True
        walking, off = walking[inside], off[inside]
        h = _Window(b.at(np.clip(b.start[walking] + off, 0, b.last), 8))
        cur = nxt[walking]
        frag = cur == 44
        v6_frag_w[walking[frag]] = h.u16(2)[frag]
        v6_frag_id[walking[frag]] = h.u32(4)[frag]
        v6_has_frag[walking[frag]] = True
        hlen = np.where(cur == 51, (h.u8(1).astype(np.int64) + 2) * 4,
                        np.where(frag, 8, (h.u8(1).astype(np.int64) + 1) * 8))
        nxt[walking] = h.u8(0)
        ext_off[walking] = off + hlen
        walking = walking[np.isin(nxt[walking], _IPV6_EXT)]

    ip = is4 | is6
    ip_version = np.where(is4, 4, 6)
    proto_ok = is4 | (is6 & ~v6_ext_cut)
    ip_proto = np.where(is4, v4_proto, nxt)
    ttl = np.where(is4, v4_ttl, v6_hlim)
    ip_hdr_len = np.where(is4, ihl, ext_off - l3)
    ip_end = np.where(is4, l3 + v4_total, l3 + 40 + v6_plen)  # end of the IP datagram, on the wire
    frag_offset = np.where(is4, v4_fragw & 0x1FFF, v6_frag_w >> 3)
    more_frag = np.where(is4, (v4_fragw & 0x2000) != 0, (v6_frag_w & 1) != 0)
    frag_valid = is4 | v6_has_frag
    ip_id = np.where(is4, v4_id, v6_frag_id)

    # ---- transport -----------------------------------------------------------------------
    l4 = l3 + ip_hdr_len
    first_frag = ip & proto_ok & (frag_offset == 0)
    tcp = first_frag & (ip_proto == 6) & b.has(l4, 20)
    udp = first_frag & (ip_proto == 17) & b.has(l4, 8)
    icmp = first_frag & (((ip_proto == 1) & is4) | ((ip_proto == 58) & is6)) & b.has(l4, 2)
    ports = tcp | udp
    t = b.window(l4, 16)
    src_port = t.u16(0)
    dst_port = t.u16(2)
    tcp_seq = t.u32(4)
    tcp_ack = t.u32(8)
    doff_byte = t.u8(12)
    tcp_flags = ((doff_byte & 1) << 8) | t.u8(13)
    tcp_window = t.u16(14)
    tcp_hlen = (doff_byte >> 4).astype(np.int64) * 4
    # A data offset under 5 words is bogus: like tshark, keep the ports and sequence number
    # (fixed positions before it) and nothing that depends on trusting the header.
    tcp_ok = tcp & (tcp_hlen >= 20)
    l4_hdr_len = np.where(tcp, tcp_hlen, 8)
    l4_known = tcp_ok | udp | (first_frag & (((ip_proto == 1) & is4) | ((ip_proto == 58) & is6)))
    payload_len = np.maximum(ip_end - l4 - l4_hdr_len, 0)
    pay_off = l4 + l4_hdr_len
    captured_payload = np.clip(np.minimum(b.cap, ip_end) - pay_off, 0, PAYLOAD_HEAD)
    captured_payload = np.where(ports, captured_payload, 0)

    # ---- ARP -------------------------------------------------------------------------------
    arp = ev & np.isin(etype, (ETH_ARP, ETH_RARP)) & b.has(l3, 8)
    arp_op = b.u16(l3 + 6)

    # ---- applications ---------------------------------------------------------------------
    if not wanted("app"):
        app = _null_strings(n)
    else:
        head = b.block(pay_off, PAYLOAD_HEAD)
        head[np.arange(PAYLOAD_HEAD)[None, :] >= captured_payload[:, None]] = 0
        app = app_dictionary(label_apps(
            np.where(ip & proto_ok, ip_proto, 0).astype(np.uint8),
            np.where(ports, src_port, -1).astype(np.int32),
            np.where(ports, dst_port, -1).astype(np.int32),
            head,
            captured_payload,
        ))
    if wanted("eth_src") or wanted("eth_dst"):
        eth_src, eth_dst = _format_macs(b, eth_base, eth_ok)
    else:
        eth_src = eth_dst = _null_strings(n)

    def col(values, valid, typ):
        return arrow_array(values, typ, ~valid)

    cols = {
        "ts_ns": arrow_array(batch.ts_ns, pa.int64()),
        "wire_len": arrow_array(batch.wire_len, pa.uint32()),
        "cap_len": arrow_array(batch.cap_len, pa.uint32()),
        "linktype": arrow_array(linktype, pa.uint16()),
        "file_index": arrow_array(np.full(n, batch.file_index), pa.uint16()),
        "eth_src": eth_src,
        "eth_dst": eth_dst,
        "vlan_id": col(vlan_id, vlan_ok, pa.uint16()),
        "ethertype": col(etype, ev, pa.uint16()),
        "ip_version": col(ip_version, ip, pa.uint8()),
        "src_ip": _format_ips(v4_src, src_hi, src_lo, is4, is6),
        "dst_ip": _format_ips(v4_dst, dst_hi, dst_lo, is4, is6),
        "ip_proto": col(ip_proto, ip & proto_ok, pa.uint8()),
        "ttl": col(ttl, ip, pa.uint8()),
        "ip_hdr_len": col(ip_hdr_len, ip & proto_ok, pa.uint16()),
        "ip_id": col(ip_id, is4 | v6_has_frag, pa.uint32()),
        "frag_offset": col(frag_offset, frag_valid, pa.uint16()),
        "more_fragments": col(more_frag, frag_valid, pa.bool_()),
        "src_port": col(src_port, ports, pa.uint16()),
        "dst_port": col(dst_port, ports, pa.uint16()),
        "tcp_flags": col(tcp_flags, tcp_ok, pa.uint16()),
        "tcp_seq": col(tcp_seq, tcp, pa.uint32()),
        "tcp_ack": col(tcp_ack, tcp_ok, pa.uint32()),
        "tcp_window": col(tcp_window, tcp_ok, pa.uint16()),
        "icmp_type": col(t.u8(0), icmp, pa.uint8()),
        "icmp_code": col(t.u8(1), icmp, pa.uint8()),
        "arp_op": col(arp_op, arp, pa.uint16()),
        "l4_hdr_len": col(l4_hdr_len, l4_known, pa.uint32()),
        "payload_len": col(payload_len, l4_known, pa.uint32()),
        "app": app,
        "flow_id": null_array(n, pa.int64()),
        "direction": null_array(n, pa.uint8()),
        "flow_pos": null_array(n, pa.uint32()),
        "flow_iat_ns": null_array(n, pa.int64()),
    }
    return pa.RecordBatch.from_arrays([cols[f.name] for f in PACKET_SCHEMA], schema=PACKET_SCHEMA)
