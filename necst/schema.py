"""The typed tables that pass between stages, defined once.

PacketTable and FlowTable are Arrow schemas: the process stage writes them, every later
stage reads them, and tests check written files against them.
"""
from __future__ import annotations

import pyarrow as pa

_dict_str = pa.dictionary(pa.int32(), pa.string())

PACKET_SCHEMA = pa.schema(
    [
        ("ts_ns", pa.int64()),
        ("wire_len", pa.uint32()),
        ("cap_len", pa.uint32()),
        ("linktype", pa.uint16()),
        ("file_index", pa.uint16()),  # which input file, as listed in meta.json
        ("eth_src", _dict_str),
        ("eth_dst", _dict_str),
        ("vlan_id", pa.uint16()),
        ("ethertype", pa.uint16()),
        ("ip_version", pa.uint8()),
        ("src_ip", _dict_str),
        ("dst_ip", _dict_str),
        ("ip_proto", pa.uint8()),
        ("ttl", pa.uint8()),
        ("ip_hdr_len", pa.uint16()),  # IPv4 header with options / IPv6 with extension headers
        ("ip_id", pa.uint32()),
        ("frag_offset", pa.uint16()),  # in 8-byte units, as on the wire
        ("more_fragments", pa.bool_()),
        ("src_port", pa.uint16()),
        ("dst_port", pa.uint16()),
        ("tcp_flags", pa.uint16()),
        ("tcp_seq", pa.uint32()),
        ("tcp_ack", pa.uint32()),
        ("tcp_window", pa.uint16()),
        ("icmp_type", pa.uint8()),
        ("icmp_code", pa.uint8()),
        ("arp_op", pa.uint16()),
        ("l4_hdr_len", pa.uint32()),
        ("payload_len", pa.uint32()),
        ("app", _dict_str),
        ("flow_id", pa.int64()),
        ("direction", pa.uint8()),
        ("flow_pos", pa.uint32()),
        ("flow_iat_ns", pa.int64()),
    ]
)

# Columns the packet reader fills; the flow stage adds the rest.
FLOW_COLUMNS_OF_PACKETS = ("flow_id", "direction", "flow_pos", "flow_iat_ns")

FLOW_SCHEMA = pa.schema(
    [
        ("flow_id", pa.int64()),
        ("kind", _dict_str),  # tcp, udp, noflow
        ("src_ip", pa.string()),
        ("dst_ip", pa.string()),
        ("src_port", pa.uint16()),
        ("dst_port", pa.uint16()),
        ("protocol", pa.uint8()),
        ("ip_version", pa.uint8()),
        ("vlan_id", pa.uint16()),
        ("src_mac", pa.string()),
        ("dst_mac", pa.string()),
        ("ethertype", pa.uint16()),
        ("bidirectional_first_seen_ms", pa.int64()),
        ("bidirectional_last_seen_ms", pa.int64()),
        ("bidirectional_duration_ms", pa.int64()),
        ("bidirectional_packets", pa.uint64()),
        ("bidirectional_bytes", pa.uint64()),
        ("src2dst_first_seen_ms", pa.int64()),
        ("src2dst_last_seen_ms", pa.int64()),
        ("src2dst_packets", pa.uint64()),
        ("src2dst_bytes", pa.uint64()),
        ("dst2src_first_seen_ms", pa.int64()),
        ("dst2src_last_seen_ms", pa.int64()),
        ("dst2src_packets", pa.uint64()),
        ("dst2src_bytes", pa.uint64()),
        ("first_seen_ns", pa.int64()),
        ("last_seen_ns", pa.int64()),
        ("app", _dict_str),
        ("end_reason", _dict_str),  # idle, active, fin, rst, eof
        ("handshake", pa.bool_()),
    ]
)

TCP_FLAG_BITS = {"FIN": 0x001, "SYN": 0x002, "RST": 0x004, "PSH": 0x008, "ACK": 0x010,
                 "URG": 0x020, "ECE": 0x040, "CWR": 0x080, "NS": 0x100}


def empty_packets() -> pa.Table:
    return PACKET_SCHEMA.empty_table()
