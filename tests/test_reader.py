"""The capture reader and the decoder on hand-built captures: every container variant, every
link type we decode, and every kind of bad input."""
from __future__ import annotations

import gzip
import struct

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP, TCP, UDP, IPOption_RR
from scapy.layers.inet6 import IPv6, IPv6ExtHdrDestOpt, IPv6ExtHdrFragment, IPv6ExtHdrHopByHop, IPv6ExtHdrRouting
from scapy.layers.l2 import ARP, Dot1AD, Dot1Q, Ether
from scapy.contrib.mpls import MPLS

from capture_builders import custom, epb, idb, pb, pcap, shb, spb
from necst.capture.reader import CaptureReader
from necst.errors import CaptureError, NecstError
from necst.process.decode import decode
from necst.schema import PACKET_SCHEMA

TS = 1_465_478_143_743_810_123  # ns

TCP_PKT = bytes(Ether(src="00:11:22:33:44:55", dst="66:77:88:99:aa:bb") /
                IP(src="10.0.0.1", dst="10.0.0.2", ttl=61, id=7) /
                TCP(sport=40000, dport=80, flags="SA", seq=123, ack=456, window=999) / b"GET / HTTP/1.1\r\n")


def read(path) -> pa.Table:
    return pa.Table.from_batches([decode(b) for b in CaptureReader(path)], schema=PACKET_SCHEMA)


def write(tmp_path, data: bytes, name="c.pcap"):
    p = tmp_path / name
    p.write_bytes(data)
    return p


@pytest.mark.parametrize("order", ["<", ">"])
@pytest.mark.parametrize("nanos", [False, True])
def test_classic_pcap_variants(tmp_path, order, nanos):
    t = read(write(tmp_path, pcap([(TS, TCP_PKT), (TS + 5000, TCP_PKT)], order=order, nanos=nanos)))
    row = t.to_pylist()[0]
    assert t.num_rows == 2
    assert row["ts_ns"] == (TS if nanos else TS // 1000 * 1000)
    assert (row["src_ip"], row["dst_ip"], row["ttl"], row["ip_id"]) == ("10.0.0.1", "10.0.0.2", 61, 7)
    assert (row["src_port"], row["dst_port"], row["tcp_flags"], row["tcp_seq"], row["tcp_ack"],
            row["tcp_window"]) == (40000, 80, 0x12, 123, 456, 999)
    assert (row["eth_src"], row["eth_dst"]) == ("00:11:22:33:44:55", "66:77:88:99:aa:bb")
    assert (row["l4_hdr_len"], row["payload_len"], row["app"]) == (20, 16, "http")


def test_modified_pcap_records(tmp_path):
    t = read(write(tmp_path, pcap([(TS, TCP_PKT)] * 3, modified=True)))
    assert t.num_rows == 3 and t.column("dst_port").to_pylist() == [80] * 3


def test_gzip_and_extension_ignored(tmp_path):
    p = write(tmp_path, gzip.compress(pcap([(TS, TCP_PKT)] * 4)), name="looks-like.pcapng")
    r = CaptureReader(p)
    assert sum(len(b) for b in r) == 4 and r.compressed and r.format == "pcap"


def test_truncated_record_keeps_complete_packets_and_warns_once(tmp_path):
    data = pcap([(TS, TCP_PKT)] * 3)
    r = CaptureReader(write(tmp_path, data[:-10]))
    assert sum(len(b) for b in r) == 2
    assert len(r.warnings) == 1 and "middle of a record" in r.warnings[0]


def test_truncated_gzip_keeps_what_was_read(tmp_path):
    data = gzip.compress(pcap([(TS, TCP_PKT)] * 2000))
    r = CaptureReader(write(tmp_path, data[: len(data) // 2], name="cut.pcap.gz"))
    n = sum(len(b) for b in r)
    assert 0 < n < 2000 and r.warnings


def test_snaplen_cut_packets_give_nulls_not_garbage(tmp_path):
    cut = TCP_PKT[:14 + 20 + 10]  # TCP header cut after the sequence number
    t = read(write(tmp_path, pcap([(TS, cut)], wire_extra=len(TCP_PKT) - len(cut)))).to_pylist()[0]
    assert t["cap_len"] == len(cut) and t["wire_len"] == len(TCP_PKT)
    assert t["src_ip"] == "10.0.0.1"
    # the TCP header's fixed 20 bytes are not all captured: no TCP fields at all
    assert t["src_port"] is None and t["tcp_flags"] is None and t["tcp_ack"] is None


@pytest.mark.parametrize("order", ["<", ">"])
def test_pcapng_sections_interfaces_resolutions(tmp_path, order):
    pkt = TCP_PKT
    data = (shb(order) + idb(1, order) + idb(101, order, tsresol=9) +
            epb(0, TS // 1000, pkt, order) + epb(1, TS, pkt[14:], order) + custom(order) +
            pb(0, TS // 1000 + 1, pkt, order) + spb(pkt, order) +
            shb(order) + idb(1, order, tsresol=0x80 | 20, tsoffset=10) + epb(0, (5 << 20) | (1 << 19), pkt, order))
    t = read(write(tmp_path, data, name="c.pcapng"))
    rows = t.to_pylist()
    assert [r["linktype"] for r in rows] == [1, 101, 1, 1, 1]
    assert rows[0]["ts_ns"] == TS // 1000 * 1000
    assert rows[1]["ts_ns"] == TS and rows[1]["src_ip"] == "10.0.0.1" and rows[1]["eth_src"] is None
    assert rows[2]["ts_ns"] == TS // 1000 * 1000 + 1000
    assert rows[3]["ts_ns"] == rows[2]["ts_ns"]  # simple packet block: previous packet's time
    assert rows[4]["ts_ns"] == 15 * 10**9 + 500_000_000  # 2^-20 resolution plus a 10 s offset
    assert all(r["dst_port"] == 80 for r in rows)


def test_pcapng_unknown_version_stops_with_warning_after_packets(tmp_path):
    data = shb() + idb() + epb(0, 1, TCP_PKT) + shb(version=(2, 0)) + idb() + epb(0, 2, TCP_PKT)
    r = CaptureReader(write(tmp_path, data, name="v.pcapng"))
    assert sum(len(b) for b in r) == 1 and "version 2.0" in r.warnings[0]
    with pytest.raises(CaptureError, match="version 2.0"):
        list(CaptureReader(write(tmp_path, shb(version=(2, 0)) + idb(), name="v2.pcapng")))


def test_pcapng_packet_before_interface_is_refused(tmp_path):
    with pytest.raises(CaptureError, match="interface 0"):
        list(CaptureReader(write(tmp_path, shb() + epb(0, 1, TCP_PKT), name="x.pcapng")))


@pytest.mark.parametrize("content, message", [
    (b"", "empty file"),
    (b"\x01\x02", "too short"),
    (b"hello world, not a capture", "unknown capture format"),
    (struct.pack("<IHHiIII", 0xA1B2C3D4, 1, 4, 0, 0, 65535, 1), "version 1.4"),
    (struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 0x00300001), "reserved bits"),
    (struct.pack("<IHH", 0xA1B2C3D4, 2, 4), "cut short"),
    (pcap([]) + struct.pack("<IIII", 1, 0, 1 << 30, 1 << 30), "captured length"),
    (b"\x0a\x0d\x0d\x0a\x1c\x00\x00\x00\x00\x00\x00\x00", "byte-order magic"),
])
def test_bad_input_is_one_clear_error(tmp_path, content, message):
    p = write(tmp_path, content, name="bad.pcap")
    with pytest.raises(CaptureError, match=message) as e:
        list(CaptureReader(p))
    assert str(p) in str(e.value) and "\n" not in str(e.value)


def test_missing_path_and_directory(tmp_path):
    with pytest.raises(CaptureError, match="no such file"):
        list(CaptureReader(tmp_path / "nope.pcap"))
    with pytest.raises(CaptureError, match="directory"):
        list(CaptureReader(tmp_path))


def _frames():
    tcp = TCP(sport=1234, dport=22, flags="S", seq=1)
    return {
        # (link type, frame bytes) -> expected fields
        "vlan-stack": (1, bytes(Ether() / Dot1AD(vlan=100) / Dot1Q(vlan=200) / IP(src="1.2.3.4", dst="5.6.7.8") / tcp),
                       {"vlan_id": 100, "ethertype": 0x0800, "src_ip": "1.2.3.4", "dst_port": 22}),
        "mpls": (1, bytes(Ether() / MPLS(label=16, s=0) / MPLS(label=17, s=1) / IP(src="1.2.3.4", dst="5.6.7.8") / tcp),
                 {"ethertype": 0x0800, "src_ip": "1.2.3.4", "dst_port": 22}),
        "sll": (113, struct.pack(">HHH8sH", 0, 1, 6, b"\0" * 8, 0x0800) + bytes(IP(src="9.9.9.9", dst="8.8.8.8") / UDP(sport=53, dport=5353)),
                {"src_ip": "9.9.9.9", "src_port": 53, "eth_src": None}),
        "sll2": (276, struct.pack(">HHIHBB8s", 0x86DD, 0, 1, 1, 0, 6, b"\0" * 8) + bytes(IPv6(src="::1", dst="2001:db8::1") / tcp),
                 {"src_ip": "::1", "dst_ip": "2001:db8::1", "ip_version": 6, "dst_port": 22}),
        "null-le": (0, struct.pack("<I", 2) + bytes(IP(src="1.1.1.1", dst="2.2.2.2") / ICMP(type=8)),
                    {"src_ip": "1.1.1.1", "icmp_type": 8, "icmp_code": 0}),
        "null-be-v6": (0, struct.pack(">I", 30) + bytes(IPv6(src="fe80::1", dst="ff02::1") / UDP(sport=1, dport=2)),
                       {"src_ip": "fe80::1", "dst_port": 2}),
        "raw": (101, bytes(IP(src="3.3.3.3", dst="4.4.4.4", options=[IPOption_RR()]) / tcp),
                {"src_ip": "3.3.3.3", "ip_hdr_len": 24 + 0 if False else None, "dst_port": 22}),
        "ppp": (9, b"\xff\x03\x00\x21" + bytes(IP(src="5.5.5.5", dst="6.6.6.6") / tcp), {"src_ip": "5.5.5.5", "dst_port": 22}),
        "chdlc": (104, b"\x0f\x00\x08\x00" + bytes(IP(src="7.7.7.7", dst="6.6.6.6") / tcp), {"src_ip": "7.7.7.7"}),
        "ipv6-ext": (1, bytes(Ether() / IPv6(src="2001:db8::2", dst="2001:db8::3") / IPv6ExtHdrHopByHop() /
                              IPv6ExtHdrRouting() / IPv6ExtHdrDestOpt() / UDP(sport=7, dport=8)),
                     {"ip_proto": 17, "ip_hdr_len": 40 + 8 + 8 + 8, "src_port": 7}),
        "ipv6-later-fragment": (1, bytes(Ether() / IPv6(src="2001:db8::2", dst="2001:db8::3") /
                                         IPv6ExtHdrFragment(offset=10, m=1, id=77, nh=17) / (b"x" * 16)),
                                {"ip_proto": 17, "src_port": None, "frag_offset": 10, "more_fragments": True, "ip_id": 77}),
        "ipv4-later-fragment": (1, bytes(Ether() / IP(src="1.2.3.4", dst="5.6.7.8", frag=3, flags="MF", proto=6) / (b"y" * 20)),
                                {"ip_proto": 6, "src_port": None, "tcp_flags": None, "frag_offset": 3, "more_fragments": True}),
        "arp": (1, bytes(Ether() / ARP(op=2)), {"ethertype": 0x0806, "arp_op": 2, "src_ip": None}),
        "unknown-linktype": (147, b"\x01\x02\x03", {"src_ip": None, "ethertype": None}),
    }


@pytest.mark.parametrize("name", list(_frames()))
def test_link_types_and_layers(tmp_path, name):
    lt, frame, want = _frames()[name]
    row = read(write(tmp_path, pcap([(TS, frame)], linktype=lt))).to_pylist()[0]
    assert row["linktype"] == lt and row["wire_len"] == len(frame)
    for k, v in want.items():
        if v is not None or k in ("eth_src", "src_ip", "src_port", "tcp_flags", "ethertype"):
            assert row[k] == v, (name, k, row[k], v)


def test_batches_do_not_change_the_result(tmp_path):
    pkts = [(TS + i * 1000, TCP_PKT[: 40 + (i % 30)]) for i in range(500)]
    p = write(tmp_path, pcap(pkts))
    whole = read(p)
    small = pa.Table.from_batches([decode(b) for b in CaptureReader(p, chunk_bytes=257)], schema=PACKET_SCHEMA)
    assert small.to_pylist() == whole.to_pylist()


# --- property-based: arbitrary and mutated bytes give packets or a NecstError, nothing else ---------

_SEED = pcap([(TS + i, TCP_PKT) for i in range(5)])
_SEED_NG = shb() + idb() + epb(0, 5, TCP_PKT) + spb(TCP_PKT) + custom() + epb(0, 6, TCP_PKT[:30])


def _try(tmp_path, data: bytes, chunk: int = 1 << 20):
    p = tmp_path / "fuzz.bin"
    p.write_bytes(data)
    try:
        for raw in CaptureReader(p, chunk_bytes=chunk):
            decode(raw)
    except NecstError:
        pass


@settings(max_examples=150, deadline=2000, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=400))
def test_fuzz_random_bytes(tmp_path, data):
    _try(tmp_path, data)


@settings(max_examples=300, deadline=2000, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.sampled_from([_SEED, _SEED_NG, gzip.compress(_SEED)]),
       st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=12),
       st.integers(0, 2000), st.sampled_from([64, 1 << 20]))
def test_fuzz_mutated_captures(tmp_path, seed, flips, cut, chunk):
    data = bytearray(seed)
    for pos, val in flips:
        data[pos % len(data)] = val
    _try(tmp_path, bytes(data[: len(data) - cut % len(data)]), chunk)


def test_decode_named_columns_leaves_only_macs_and_apps_null(shared_data):
    """decode(columns=...) skips MACs and application labels, and changes no other column."""
    raw = next(iter(CaptureReader(shared_data / "benign/tj_iot/schlage-lock-01.pcap")))
    full, narrow = decode(raw), decode(raw, columns=["ts_ns", "src_ip", "dst_port"])
    assert narrow.schema == PACKET_SCHEMA
    for name in PACKET_SCHEMA.names:
        if name in ("eth_src", "eth_dst", "app"):
            assert narrow.column(name).null_count == len(raw) and full.column(name).null_count < len(raw)
        else:
            assert narrow.column(name).equals(full.column(name)), name
