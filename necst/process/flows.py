"""Flow identification: packets in capture order -> bidirectional flows, streaming and vectorized.

Rules (chosen to match NFStream 6.x wherever NFStream has a rule, so the two compare):

* A flow is keyed by the canonical 5-tuple (IP pair, port pair, IP protocol) plus VLAN id. The
  initiator (``src_*``, direction 0) is the sender of the flow's first packet, as in NFStream
  (which has no SYN logic: a flow first seen mid-connection starts with whoever spoke first).
* Time is NFStream's meter time: packet timestamps forced non-decreasing in capture order, and
  timeouts compared in whole milliseconds (``ts // 1 ms``, as libpcap + NFStream truncate).
  A packet arriving ``>= idle_timeout`` after the flow's last packet, or ``>= active_timeout``
  after its first, ends the flow (``idle`` / ``active``) and starts a new one (NFStream's
  ``flow_expiration_handler``; idle is checked first).
* Deliberate difference: NFStream has no TCP termination rule. Here (``tcp_close=True``) a TCP
  flow is *closed* once FINs were seen from both ends, or an RST from either; packets that
  follow (the last ACK, retransmitted FINs, late RSTs) still belong to it, but a new SYN
  (SYN without ACK) on the same 5-tuple starts a new flow. A closed flow's ``end_reason``
  is ``fin`` or ``rst``, whatever finally cut it. ``tcp_close=False`` gives NFStream's flows.
* Traffic without ports (ARP, ICMP, IGMP, other ethertypes, non-first IP fragments) forms
  ``noflow`` pseudo-flows keyed by (MAC pair, IP pair where present, ethertype, IP protocol,
  VLAN), canonical like the 5-tuple, with the same timeouts. Keeping the IP pair in the key
  makes ICMP noflows line up with NFStream's ICMP flows (ports 0) and keeps raw-IP links apart.
* Bytes are wire lengths, NFStream's default ``accounting_mode=0`` (``raw_size``).
* ``flow_iat_ns`` uses the same non-decreasing meter time, so it is never negative.

The meter sorts each batch by (key, capture order), splits on idle gaps with ``np.diff``, finds
active-timeout and close splits with ``searchsorted`` (one vectorized round per split depth within
a key, not per packet), and aggregates contiguous runs with ``reduceat``. Open flows are
prepended to the next batch as one "virtual" row each that carries their partial aggregates, so
any split of the input into batches gives the same result as one batch.

API: ``FlowMeter(idle_timeout, active_timeout, tcp_close=True, ordered=True)``;
``update(packets) -> (flow columns of these packets, ended flows)``; ``finish() -> the rest``;
``process(packets)`` and ``assign_flows(packets)`` for one-shot use. One meter per capture file.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from necst._factorize import factorize
from necst.schema import (FLOW_COLUMNS_OF_PACKETS, FLOW_SCHEMA, PACKET_SCHEMA, arrow_array, empty_table,
                          numpy_column, string_array)

KINDS = ("tcp", "udp", "noflow")
END_REASONS = ("idle", "active", "fin", "rst", "eof")
_IDLE, _ACTIVE, _FIN, _RST, _EOF = range(5)
_FIN_F, _SYN_F, _RST_F, _ACK_F = 0x001, 0x002, 0x004, 0x010
_BIG = np.iinfo(np.int64).max // 4
# per-packet flag bits the meter needs, sorted as one column
_B_FIN_LO, _B_FIN_HI, _B_RST, _B_SYN, _B_SYNACK, _B_ACK = 1, 2, 4, 8, 16, 32
_NS_PER_MS = 1_000_000

PACKET_FLOW_SCHEMA = pa.schema([PACKET_SCHEMA.field(n) for n in FLOW_COLUMNS_OF_PACKETS])


class _Interner:
    """Strings -> stable int codes across batches (dictionaries differ from batch to batch)."""

    def __init__(self) -> None:
        self.index: dict[str, int] = {}
        self.values: list[str] = []

    def _code(self, value: str) -> int:
        code = self.index.get(value)
        if code is None:
            code = self.index[value] = len(self.values)
            self.values.append(value)
        return code

    def codes(self, column: pa.ChunkedArray | pa.Array) -> np.ndarray:
        """int64 codes, -1 for null; Python touches only the distinct values."""
        chunks = column.chunks if isinstance(column, pa.ChunkedArray) else [column]
        out = []
        for chunk in chunks:
            if not pa.types.is_dictionary(chunk.type):
                chunk = pc.dictionary_encode(chunk)
            mapping = np.fromiter((self._code(v) for v in chunk.dictionary.to_pylist()),
                                  dtype=np.int64, count=len(chunk.dictionary))
            if mapping.size == 0:
                out.append(np.full(len(chunk), -1, np.int64))
            elif chunk.null_count == 0:
                out.append(mapping[numpy_column(chunk.indices)])
            else:
                idx = numpy_column(chunk.indices, fill=-1).astype(np.int64)
                out.append(np.where(idx >= 0, mapping[np.maximum(idx, 0)], -1))
        return np.concatenate(out) if out else np.empty(0, np.int64)

    def decode(self, codes: np.ndarray) -> pa.Array:
        indices = arrow_array(codes, pa.int32(), codes < 0)
        return pa.DictionaryArray.from_arrays(indices, string_array(self.values)).cast(pa.string())


def _num(table: pa.Table, name: str, fill: int = -1) -> np.ndarray:
    if name not in table.column_names:
        return np.full(table.num_rows, fill, np.int64)
    col = table.column(name)
    if col.null_count == 0:
        return numpy_column(col).astype(np.int64, copy=False)
    values = numpy_column(col, fill=0).astype(np.int64)
    values[numpy_column(col.is_null())] = fill
    return values


def _group_keys(w1: np.ndarray, w2: np.ndarray, w3: np.ndarray) -> np.ndarray:
    """Exact group codes of (w1, w2, w3), numbered by first appearance.

    One hash factorize, then a check that every row equals its group's first row; a 64-bit
    collision (never seen in practice) falls back to exact nested factorizing.
    """
    with np.errstate(over="ignore"):
        h = (w1.view(np.uint64) * np.uint64(0x9E3779B97F4A7C15)
             ^ w2.view(np.uint64) * np.uint64(0xC2B2AE3D27D4EB4F)
             ^ w3.view(np.uint64) * np.uint64(0x165667B19E3779F9))
        h ^= h >> np.uint64(29)
    codes, uniq = factorize(h)
    first = np.empty(len(uniq), np.int64)
    first[codes[::-1]] = np.arange(codes.size - 1, -1, -1)
    rep = first[codes]
    if (np.array_equal(w1, w1[rep]) and np.array_equal(w2, w2[rep]) and np.array_equal(w3, w3[rep])):
        return codes.astype(np.int64, copy=False)
    c12 = factorize(factorize(w1)[0].astype(np.int64) * (w2.size + 1) + factorize(w2)[0])[0]
    return factorize(c12.astype(np.int64) * (w3.size + 1) + factorize(w3)[0])[0].astype(np.int64)


class _NextTrue:
    """Query "first j >= i with mask[j]" (len(mask) if none) at chosen positions only."""

    def __init__(self, mask: np.ndarray):
        self.pos = np.append(np.flatnonzero(mask), mask.size)

    def __getitem__(self, idx: np.ndarray) -> np.ndarray:
        return self.pos[np.minimum(np.searchsorted(self.pos, idx), self.pos.size - 1)]


# Per-flow state carried between batches (all int64 arrays, one entry per open flow).
_STATE = (
    "w1", "w2", "w3", "flow_id", "init_side",
    "src_ip", "dst_ip", "src_port", "dst_port", "src_mac", "dst_mac",
    "protocol", "ip_version", "vlan_id", "ethertype", "kind",
    "first_ms", "last_ms", "first_ns", "last_ns", "last_meter_ns",
    "s2d_packets", "d2s_packets", "s2d_bytes", "d2s_bytes",
    "s2d_first_ms", "s2d_last_ms", "d2s_first_ms", "d2s_last_ms",
    "syn0", "synack_pos", "ack_pos", "fin_lo", "fin_hi", "closed",
)


@dataclass
class FlowMeter:
    """Streaming flow meter: feed packet batches in capture order, collect ended flows.

    ``update(packets)`` returns ``(packet_flow_columns, ended_flows)``: the four per-packet
    columns (flow_id, direction, flow_pos, flow_iat_ns) for the batch's rows in order, and the
    flows known to have ended (FLOW_SCHEMA rows, sorted by flow_id). ``finish()`` returns the
    flows still open (``end_reason`` ``eof`` unless closed by FIN/RST). flow_id numbers flows
    by their first packet, from 0, so the union of all emitted flows sorted by flow_id has
    flow_id == row number. Only open flows' state is kept between batches.
    """

    idle_timeout: float = 120.0
    active_timeout: float = 1800.0
    tcp_close: bool = True
    ordered: bool = True  # emit ended flows in flow_id order (held back until older ones end)
    _ips: _Interner = field(init=False, repr=False)  # string -> code, stable across batches
    _macs: _Interner = field(init=False, repr=False)
    _apps: _Interner = field(init=False, repr=False)
    _state: dict = field(init=False, repr=False)  # open flows, columns of _STATE
    _app_counts: np.ndarray = field(init=False, repr=False)  # open flows' (flow_id, app, count)
    _tick_ns: int = field(init=False, repr=False)  # meter time: newest timestamp so far
    _next_id: int = field(init=False, repr=False)
    _held: pa.Table = field(init=False, repr=False)  # ended flows waiting for older open ones

    def __post_init__(self) -> None:
        if not (self.idle_timeout > 0 and self.active_timeout > 0):
            raise ValueError("idle_timeout and active_timeout must be positive")
        self._ips, self._macs, self._apps = _Interner(), _Interner(), _Interner()
        self._tick_ns, self._next_id = int(np.iinfo(np.int64).min), 0
        self._held = empty_table(FLOW_SCHEMA)
        self._idle_ms = int(round(self.idle_timeout * 1000))
        self._active_ms = int(round(self.active_timeout * 1000))
        self._state = {k: np.empty(0, np.int64) for k in _STATE}
        self._app_counts = np.empty((0, 3), np.int64)

    # ------------------------------------------------------------------ public API
    @property
    def open_flows(self) -> int:
        return int(self._state["flow_id"].size)

    def update(self, packets: pa.Table) -> tuple[pa.Table, pa.Table]:
        """Meter the next packets of the capture (PacketTable columns; flow columns and any
        others are ignored). Cost is linear in this batch plus the open flows, so batches of
        about 100k packets (the reader's) keep the carried state a small share of the work."""
        n = packets.num_rows
        if n == 0:
            return empty_table(PACKET_FLOW_SCHEMA), empty_table(FLOW_SCHEMA)
        batch = self._encode(packets)
        return self._meter(batch)

    def finish(self) -> pa.Table:
        """The flows still open at the end of the capture; the meter is then empty."""
        st = self._state
        m = st["flow_id"].size
        reason = np.where(st["closed"] > 0, st["closed"], _EOF)
        counts = self._app_counts
        groups = self._carried_groups(counts[:, 0], st["flow_id"])
        app = self._best_app(np.stack([groups, counts[:, 1], counts[:, 2]], axis=1), m)
        out = self._flow_table(st, np.arange(m), reason, app)
        self._state = {k: np.empty(0, np.int64) for k in _STATE}
        self._app_counts = np.empty((0, 3), np.int64)
        return self._release(out)

    def process(self, packets: pa.Table) -> tuple[pa.Table, pa.Table]:
        """One-shot: the four flow columns for every packet, and all flows sorted by flow_id."""
        cols, ended = self.update(packets)
        flows = pa.concat_tables([ended, self.finish()])
        return cols, flows.sort_by("flow_id")

    # ------------------------------------------------------------------ encoding
    def _encode(self, t: pa.Table) -> dict:
        ts = _num(t, "ts_ns", 0)
        meter = np.maximum.accumulate(np.concatenate([[self._tick_ns], ts]))[1:]
        self._tick_ns = int(meter[-1])
        src_ip = self._ips.codes(t.column("src_ip"))
        dst_ip = self._ips.codes(t.column("dst_ip"))
        src_mac = self._macs.codes(t.column("eth_src"))
        dst_mac = self._macs.codes(t.column("eth_dst"))
        sport, dport = _num(t, "src_port"), _num(t, "dst_port")
        proto = _num(t, "ip_proto")
        ethertype = _num(t, "ethertype")
        vlan = _num(t, "vlan_id")
        flags = _num(t, "tcp_flags", 0)
        ported = (sport >= 0) & (dport >= 0)
        kind = np.where(ported, np.where(proto == 6, 0, 1), 2)
        # endpoints as single ints: (ip, port) for ported traffic, (mac, ip) otherwise
        ea = np.where(ported, src_ip * 65536 + sport, (src_mac + 1) * (1 << 32) + (src_ip + 1))
        eb = np.where(ported, dst_ip * 65536 + dport, (dst_mac + 1) * (1 << 32) + (dst_ip + 1))
        side = (ea > eb).astype(np.int64)
        w3 = (kind << 40) | ((proto + 1) << 30) | (np.where(ported, 0, ethertype + 1) << 13) | (vlan + 1)
        is_tcp = kind == 0

        def has(bit):
            return (flags & bit) != 0

        fin = is_tcp & has(_FIN_F)
        app = self._apps.codes(t.column("app")) if "app" in t.column_names else np.full(ts.size, -1)
        return dict(
            ts=ts, meter=meter, t=meter // _NS_PER_MS, wire=_num(t, "wire_len", 0),
            w1=np.minimum(ea, eb), w2=np.maximum(ea, eb), w3=w3, side=side,
            src_ip=src_ip, dst_ip=dst_ip, src_port=sport, dst_port=dport,
            src_mac=src_mac, dst_mac=dst_mac, protocol=proto, ip_version=_num(t, "ip_version"),
            vlan_id=vlan, ethertype=ethertype, kind=kind, app=app,
            # a FIN from the lower / higher endpoint; talking to itself, one FIN closes both ways
            bits=((fin & (side == 0)) * _B_FIN_LO | (fin & ((side == 1) | (ea == eb))) * _B_FIN_HI
                  | (is_tcp & has(_RST_F)) * _B_RST | (is_tcp & has(_SYN_F) & ~has(_ACK_F)) * _B_SYN
                  | (is_tcp & has(_SYN_F) & has(_ACK_F)) * _B_SYNACK
                  | (is_tcp & has(_ACK_F) & ~has(_SYN_F)) * _B_ACK),
        )

    # ------------------------------------------------------------------ the meter
    def _meter(self, b: dict) -> tuple[pa.Table, pa.Table]:
        st = self._state
        m, n = st["flow_id"].size, b["t"].size
        N = m + n
        virt_all = np.concatenate([np.ones(m, bool), np.zeros(n, bool)])

        def cat(state_values, batch_values):
            return np.concatenate([np.asarray(state_values, np.int64), np.asarray(batch_values, np.int64)])

        # --- key codes and the (key, capture order) sort
        key = _group_keys(*(cat(st[k], b[k]) for k in ("w1", "w2", "w3")))
        order = np.argsort(key, kind="stable")
        key = key.astype(np.int64)[order]
        virt = virt_all[order]
        src = order - m  # batch row of each sorted row (negative for virtual rows)

        def srt(state_values, batch_values):
            return cat(state_values, batch_values)[order]

        def at(state_values, batch_values, idx):
            """Values at sorted positions idx without sorting whole columns."""
            o = order[idx]
            out = np.empty(o.size, np.int64)
            v = o < m
            out[v] = np.asarray(state_values)[o[v]]
            out[~v] = np.asarray(batch_values)[o[~v] - m]
            return out

        t = srt(st["last_ms"], b["t"])
        side = srt(st["init_side"], b["side"])
        closed_st = st["closed"]
        tcp_close = self.tcp_close
        # carried flows' close state goes into their virtual row's flag bits
        state_bits = (((st["fin_lo"] > 0) | (closed_st == _FIN)) * _B_FIN_LO
                      | ((st["fin_hi"] > 0) | (closed_st == _FIN)) * _B_FIN_HI
                      | (closed_st == _RST) * _B_RST)
        bits = srt(state_bits, b["bits"])
        fin_lo, fin_hi = (bits & _B_FIN_LO) > 0, (bits & _B_FIN_HI) > 0
        rst, syn = (bits & _B_RST) > 0, (bits & _B_SYN) > 0

        # --- base segments: key starts and idle gaps
        key_start = np.empty(N, bool)
        key_start[0] = True
        key_start[1:] = key[1:] != key[:-1]
        gap = np.zeros(N, bool)
        gap[1:] = (t[1:] - t[:-1]) >= self._idle_ms
        idle_start = gap & ~key_start
        starts_mask = key_start | idle_start

        # --- active-timeout and TCP-close splits, one vectorized round per split depth
        seg = np.flatnonzero(starts_mask)
        seg_end = np.append(seg[1:], N)
        t_lo = int(min(t.min(), st["first_ms"].min())) if m else int(t.min())
        span = int(t.max()) - t_lo + self._active_ms + 1
        t_rel = t - t_lo
        composite = key * span + t_rel
        if tcp_close:
            nxt_rst, nxt_lo, nxt_hi, nxt_syn = (_NextTrue(a) for a in (rst, fin_lo, fin_hi, syn))
        cur, cur_end, cur_t0 = seg, seg_end, at(st["first_ms"], b["t"], seg) - t_lo
        while cur.size:
            nxt = np.searchsorted(composite, key[cur] * span + cur_t0 + self._active_ms, "left")
            if tcp_close:
                closed_at = np.minimum(nxt_rst[cur], np.maximum(nxt_lo[cur], nxt_hi[cur]))
                syn_split = nxt_syn[np.minimum(closed_at + 1, N)]
                nxt = np.minimum(nxt, syn_split)
            ok = nxt < cur_end
            cur, cur_end = nxt[ok], cur_end[ok]
            cur_t0 = t_rel[cur]
            starts_mask[cur] = True

        fs = np.flatnonzero(starts_mask)  # flow starts, in sorted order
        nflows = fs.size
        fe = np.append(fs[1:], N)  # exclusive ends
        flow_of_row = np.cumsum(starts_mask) - 1
        fvirt = virt[fs]
        sidx = np.where(fvirt, order[fs], 0)  # state row of carried flows
        bidx = np.where(fvirt, 0, src[fs])  # batch row of new flows' first packet

        def carried(col):
            out = np.zeros(nflows, np.int64)
            out[fvirt] = st[col][sidx[fvirt]]
            return out

        # --- flow ids: carried keep theirs, new ones numbered by first packet
        fid = np.empty(nflows, np.int64)
        fid[fvirt] = st["flow_id"][sidx[fvirt]]
        new = np.flatnonzero(~fvirt)
        rank = np.empty(new.size, np.int64)
        rank[np.argsort(bidx[new], kind="stable")] = np.arange(new.size)
        fid[new] = self._next_id + rank
        self._next_id += new.size

        # --- per-row direction, position, iat
        init_side = side[fs]
        row_flow = flow_of_row
        direction = (side != init_side[row_flow]).astype(np.int64)
        carried_n = np.where(fvirt, carried("s2d_packets") + carried("d2s_packets") - 1, 0)
        pos = np.arange(N) - fs[row_flow] + carried_n[row_flow]
        meter_s = srt(st["last_meter_ns"], b["meter"])
        iat = np.zeros(N, np.int64)
        iat[1:] = meter_s[1:] - meter_s[:-1]
        iat[fs] = 0

        real = ~virt
        out_rows = src[real]
        per_packet = {
            "flow_id": np.empty(n, np.int64), "direction": np.empty(n, np.int64),
            "flow_pos": np.empty(n, np.int64), "flow_iat_ns": np.empty(n, np.int64),
        }
        per_packet["flow_id"][out_rows] = fid[row_flow[real]]
        per_packet["direction"][out_rows] = direction[real]
        per_packet["flow_pos"][out_rows] = pos[real]
        per_packet["flow_iat_ns"][out_rows] = iat[real]

        # --- aggregates over contiguous runs
        wire = srt(np.zeros(m), b["wire"])
        fwd = real & (direction == 0)
        bwd = real & (direction == 1)

        def add(state_col, row_values):
            vals = np.where(virt, 0, row_values)
            vals[virt] = st[state_col][order[virt]]
            return np.add.reduceat(vals, fs)

        def extreme(state_col, row_values, mask, ufunc, empty):
            vals = np.where(mask, row_values, empty)
            vals[virt] = st[state_col][order[virt]]
            return ufunc.reduceat(vals, fs)

        agg = {
            "s2d_packets": add("s2d_packets", fwd.astype(np.int64)),
            "d2s_packets": add("d2s_packets", bwd.astype(np.int64)),
            "s2d_bytes": add("s2d_bytes", np.where(fwd, wire, 0)),
            "d2s_bytes": add("d2s_bytes", np.where(bwd, wire, 0)),
            "s2d_first_ms": extreme("s2d_first_ms", t, fwd, np.minimum, _BIG),
            "d2s_first_ms": extreme("d2s_first_ms", t, bwd, np.minimum, _BIG),
            "s2d_last_ms": extreme("s2d_last_ms", t, fwd, np.maximum, -1),
            "d2s_last_ms": extreme("d2s_last_ms", t, bwd, np.maximum, -1),
            "synack_pos": extreme("synack_pos", pos, bwd & ((bits & _B_SYNACK) > 0),
                                  np.minimum, _BIG),
            "ack_pos": extreme("ack_pos", pos, fwd & ((bits & _B_ACK) > 0),
                               np.minimum, _BIG),
            "fin_lo": np.maximum.reduceat(fin_lo.astype(np.int64), fs),
            "fin_hi": np.maximum.reduceat(fin_hi.astype(np.int64), fs),
        }
        agg["first_ms"] = at(st["first_ms"], b["t"], fs)
        agg["last_ms"] = t[fe - 1]
        agg["first_ns"] = at(st["first_ns"], b["ts"], fs)
        agg["last_ns"] = at(st["last_ns"], b["ts"], fe - 1)
        agg["last_meter_ns"] = meter_s[fe - 1]
        agg["syn0"] = np.where(fvirt, carried("syn0"), (bits[fs] & _B_SYN) > 0)
        agg["w1"], agg["w2"], agg["w3"] = (at(st[k], b[k], fs) for k in ("w1", "w2", "w3"))
        agg["flow_id"] = fid
        agg["init_side"] = init_side
        for k in ("src_ip", "dst_ip", "src_port", "dst_port", "src_mac", "dst_mac",
                  "protocol", "ip_version", "vlan_id", "ethertype", "kind"):
            agg[k] = np.where(fvirt, carried(k), b[k][bidx])

        # closed state: which came first, both FINs or an RST
        if tcp_close:
            rst_at = nxt_rst[fs]
            fin_at = np.maximum(nxt_lo[fs], nxt_hi[fs])
            closed = np.where((rst_at < fe) & (rst_at <= fin_at), _RST,
                              np.where(fin_at < fe, _FIN, 0))
        else:
            closed = np.zeros(nflows, np.int64)
        agg["closed"] = closed

        # --- which flows ended, and why
        last_of_key = np.append(key[fs[1:]] != key[fs[:-1]], True)
        next_is_idle = np.append(idle_start[fs[1:]], False)
        newest = int(b["t"][-1])
        idle_now = (newest - agg["last_ms"]) >= self._idle_ms
        ended = ~last_of_key | idle_now
        reason = np.where(closed > 0, closed,
                          np.where(~last_of_key & ~next_is_idle, _ACTIVE, _IDLE))

        # --- application labels: counts per (flow, app), carried for open flows
        unknown = self._apps.index.get("unknown", -2)
        rows_app = np.full(N, -1, np.int64)
        rows_app[real] = b["app"][src[real]]
        lab = (rows_app >= 0) & (rows_app != unknown)
        old = self._app_counts
        counts = self._tally(
            np.concatenate([self._carried_groups(old[:, 0], fid), row_flow[lab]]),
            np.concatenate([old[:, 1], rows_app[lab]]),
            np.concatenate([old[:, 2], np.ones(int(lab.sum()), np.int64)]))
        best_app = self._best_app(counts, nflows)

        done = np.flatnonzero(ended)
        done = done[np.argsort(fid[done], kind="stable")]
        app = best_app[done]
        flows = self._flow_table(agg, done, reason[done], app)

        keep = np.flatnonzero(~ended)
        self._state = {k: agg[k][keep] for k in _STATE}
        still_open = ~ended[counts[:, 0]]
        self._app_counts = np.stack([fid[counts[still_open, 0]], counts[still_open, 1],
                                     counts[still_open, 2]], axis=1)

        pkt = pa.table(
            {
                "flow_id": arrow_array(per_packet["flow_id"], pa.int64()),
                "direction": arrow_array(per_packet["direction"].astype(np.uint8), pa.uint8()),
                "flow_pos": arrow_array(per_packet["flow_pos"].astype(np.uint32), pa.uint32()),
                "flow_iat_ns": arrow_array(per_packet["flow_iat_ns"], pa.int64()),
            },
            schema=PACKET_FLOW_SCHEMA,
        )
        return pkt, self._release(flows)

    def _release(self, ended: pa.Table) -> pa.Table:
        """In ordered mode, the ended flows whose ids precede every open flow's, in id order.

        A flow lasts at most active_timeout and ends idle_timeout after its last packet, so
        what is held back is bounded by the flows of the last half hour, not the capture."""
        if not self.ordered:
            return ended.sort_by("flow_id")
        pool = pa.concat_tables([self._held, ended]).sort_by("flow_id") if ended.num_rows else self._held
        ids = self._state["flow_id"]
        cut = pool.num_rows if ids.size == 0 else int(np.searchsorted(
            numpy_column(pool.column("flow_id")), ids.min()))
        self._held = pool.slice(cut)
        return pool.slice(0, cut)

    # ------------------------------------------------------------------ labels
    def _tally(self, group: np.ndarray, app: np.ndarray, weight: np.ndarray) -> np.ndarray:
        """(group, app, count) rows: hashed, so linear in the number of labelled packets."""
        if group.size == 0:
            return np.empty((0, 3), np.int64)
        napps = max(len(self._apps.values), 1)
        codes, combos = factorize(group * napps + app)
        count = np.bincount(codes, weights=weight, minlength=len(combos)).astype(np.int64)
        combos = np.asarray(combos, np.int64)
        return np.stack([combos // napps, combos % napps, count], axis=1)

    def _best_app(self, counts: np.ndarray, ngroups: int) -> np.ndarray:
        """Most common labelled app per group (-1 none); ties go to the alphabetically first."""
        out = np.full(ngroups, -1, np.int64)
        if counts.size == 0:
            return out
        names = np.array(self._apps.values, dtype=str)
        alpha = np.empty(len(names), np.int64)
        alpha[np.argsort(names, kind="stable")] = np.arange(len(names))
        o = np.lexsort((alpha[counts[:, 1]], -counts[:, 2], counts[:, 0]))
        ranked = counts[o]
        first = np.ones(len(ranked), bool)
        first[1:] = ranked[1:, 0] != ranked[:-1, 0]
        out[ranked[first, 0]] = ranked[first, 1]
        return out

    def _carried_groups(self, fids: np.ndarray, flow_ids: np.ndarray) -> np.ndarray:
        """Index in flow_ids of each carried count row's flow (all of them are present)."""
        o = np.argsort(flow_ids, kind="stable")
        return o[np.searchsorted(flow_ids[o], fids)]

    # ------------------------------------------------------------------ output
    def _flow_table(self, agg: dict, rows: np.ndarray, reason: np.ndarray, app: np.ndarray) -> pa.Table:
        g = {k: np.asarray(v)[rows] for k, v in agg.items() if k in _STATE}

        def opt(values, typ):
            v = np.asarray(values)
            return arrow_array(np.maximum(v, 0), typ, v < 0)

        def first_ms(vals):
            v = np.asarray(vals)
            return arrow_array(np.where(v >= _BIG, 0, v), pa.int64(), v >= _BIG)

        def last_ms(vals):
            v = np.asarray(vals)
            return arrow_array(np.maximum(v, 0), pa.int64(), v < 0)

        app_names = self._apps.values + ["unknown"]
        unknown = self._apps.index.get("unknown", len(self._apps.values))
        used, app_inv = np.unique(np.where(app >= 0, app, unknown), return_inverse=True)
        app_dict = string_array([app_names[i] for i in used])
        hs = (g["syn0"] > 0) & (g["synack_pos"] < g["ack_pos"]) & (g["ack_pos"] < _BIG)
        cols = {
            "flow_id": arrow_array(g["flow_id"], pa.int64()),
            "kind": pa.DictionaryArray.from_arrays(arrow_array(g["kind"], pa.int32()), string_array(KINDS)),
            "src_ip": self._ips.decode(g["src_ip"]),
            "dst_ip": self._ips.decode(g["dst_ip"]),
            "src_port": opt(g["src_port"], pa.uint16()),
            "dst_port": opt(g["dst_port"], pa.uint16()),
            "protocol": opt(g["protocol"], pa.uint8()),
            "ip_version": opt(g["ip_version"], pa.uint8()),
            "vlan_id": opt(g["vlan_id"], pa.uint16()),
            "src_mac": self._macs.decode(g["src_mac"]),
            "dst_mac": self._macs.decode(g["dst_mac"]),
            "ethertype": opt(g["ethertype"], pa.uint16()),
            "bidirectional_first_seen_ms": arrow_array(g["first_ms"], pa.int64()),
            "bidirectional_last_seen_ms": arrow_array(g["last_ms"], pa.int64()),
            "bidirectional_duration_ms": arrow_array(g["last_ms"] - g["first_ms"], pa.int64()),
            "bidirectional_packets": arrow_array(g["s2d_packets"] + g["d2s_packets"], pa.uint64()),
            "bidirectional_bytes": arrow_array(g["s2d_bytes"] + g["d2s_bytes"], pa.uint64()),
            "src2dst_first_seen_ms": first_ms(g["s2d_first_ms"]),
            "src2dst_last_seen_ms": last_ms(g["s2d_last_ms"]),
            "src2dst_packets": arrow_array(g["s2d_packets"], pa.uint64()),
            "src2dst_bytes": arrow_array(g["s2d_bytes"], pa.uint64()),
            "dst2src_first_seen_ms": first_ms(g["d2s_first_ms"]),
            "dst2src_last_seen_ms": last_ms(g["d2s_last_ms"]),
            "dst2src_packets": arrow_array(g["d2s_packets"], pa.uint64()),
            "dst2src_bytes": arrow_array(g["d2s_bytes"], pa.uint64()),
            "first_seen_ns": arrow_array(g["first_ns"], pa.int64()),
            "last_seen_ns": arrow_array(g["last_ns"], pa.int64()),
            "app": pa.DictionaryArray.from_arrays(arrow_array(app_inv.ravel(), pa.int32()), app_dict),
            "end_reason": pa.DictionaryArray.from_arrays(arrow_array(reason, pa.int32()),
                                                         string_array(END_REASONS)),
            "handshake": arrow_array(hs, pa.bool_()),
        }
        return pa.table(cols, schema=FLOW_SCHEMA)


def assign_flows(packets: pa.Table, idle_timeout: float = 120.0, active_timeout: float = 1800.0,
                 tcp_close: bool = True) -> tuple[pa.Table, pa.Table]:
    """One-shot convenience: the packets with their four flow columns set, and the flows."""
    cols, flows = FlowMeter(idle_timeout, active_timeout, tcp_close).process(packets)
    for name in FLOW_COLUMNS_OF_PACKETS:
        if name in packets.column_names:
            packets = packets.set_column(packets.column_names.index(name), name, cols.column(name))
        else:
            packets = packets.append_column(name, cols.column(name))
    return packets, flows
