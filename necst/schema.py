"""The typed tables that pass between stages, defined once.

PacketTable and FlowTable are Arrow schemas: the process stage writes them, every later
stage reads them, and tests check written files against them.
"""
from __future__ import annotations

import numpy as np
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


def empty_table(schema: pa.Schema) -> pa.Table:
    """A table with no rows; pyarrow's Schema.empty_table() imports pandas (a quarter-second)."""
    return pa.Table.from_batches([], schema=schema)


# pa.array() asks pandas whether its input is a pandas object, importing it (a quarter-second
# of every `necst process`); the stages build their columns from buffers instead.
def arrow_array(values, typ: pa.DataType, mask: np.ndarray | None = None) -> pa.Array:
    """A fixed-width numpy column as an arrow array; null where mask is True."""
    values = np.ascontiguousarray(values, dtype=NUMPY_DTYPE[typ])
    data = np.packbits(values, bitorder="little") if typ == pa.bool_() else values
    validity, nulls = None, 0
    if mask is not None:
        nulls = int(np.count_nonzero(mask))
        if nulls:
            validity = pa.py_buffer(np.packbits(~np.asarray(mask, bool), bitorder="little"))
    return pa.Array.from_buffers(typ, len(values), [validity, pa.py_buffer(data)], null_count=nulls)


def numpy_column(column: pa.Array | pa.ChunkedArray, fill=None) -> np.ndarray:
    """A fixed-width arrow column as numpy, nulls replaced by fill (which a column with nulls needs).

    Zero-copy for one chunk without nulls; pyarrow's own to_numpy() imports pandas.
    """
    if isinstance(column, pa.ChunkedArray):
        column = column.chunk(0) if column.num_chunks == 1 else column.combine_chunks()
    dtype = NUMPY_DTYPE[column.type]
    n, offset = len(column), column.offset
    if n == 0:
        return np.empty(0, dtype)
    validity, data = column.buffers()[:2]
    if column.type == pa.bool_():
        values = np.unpackbits(np.frombuffer(data, np.uint8), count=offset + n, bitorder="little")[offset:].astype(bool)
    else:
        values = np.frombuffer(data, dtype, count=n, offset=offset * dtype.itemsize)
    if column.null_count:
        if fill is None:
            raise ValueError("column has nulls: give a fill value")
        valid = np.unpackbits(np.frombuffer(validity, np.uint8), count=offset + n, bitorder="little")[offset:]
        values = np.where(valid.astype(bool), values, np.asarray(fill).astype(dtype))
    return values


def string_array(values) -> pa.Array:
    """Python strings as an arrow string array; None becomes null."""
    values = list(values)
    encoded = [b"" if v is None else str(v).encode() for v in values]
    offsets = np.zeros(len(encoded) + 1, np.int32)
    np.cumsum([len(e) for e in encoded], out=offsets[1:])
    missing = np.fromiter((v is None for v in values), bool, count=len(values))
    nulls = int(missing.sum())
    validity = pa.py_buffer(np.packbits(~missing, bitorder="little")) if nulls else None
    return pa.Array.from_buffers(pa.string(), len(encoded),
                                 [validity, pa.py_buffer(offsets), pa.py_buffer(b"".join(encoded))], null_count=nulls)


def null_array(n: int, typ: pa.DataType) -> pa.Array:
    """n nulls of a fixed-width type."""
    return arrow_array(np.zeros(n, NUMPY_DTYPE[typ]), typ, np.ones(n, bool))


def empty_packets() -> pa.Table:
    return empty_table(PACKET_SCHEMA)


# numpy dtype of each fixed-width column type: pyarrow's own to_pandas_dtype() imports pandas.
NUMPY_DTYPE = {t: np.dtype(d) for t, d in [
    (pa.bool_(), np.bool_), (pa.int8(), np.int8), (pa.int16(), np.int16), (pa.int32(), np.int32),
    (pa.int64(), np.int64), (pa.uint8(), np.uint8), (pa.uint16(), np.uint16), (pa.uint32(), np.uint32),
    (pa.uint64(), np.uint64), (pa.float32(), np.float32), (pa.float64(), np.float64)]}
