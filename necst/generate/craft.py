"""Crafting: per-packet fields -> valid Ethernet frames, whole arrays at a time (no Scapy).

Two stages, so that a streamed generator can hold packets as fields (not bytes) while it
merges flows that overlap in time:

1. :func:`plan_packets` takes whole flows (a per-packet table and a per-flow table), repairs
   what would make an invalid TCP conversation, and fills every header field: addresses,
   ports, TTL, window, IPv4 id, TCP sequence and acknowledgement numbers, ICMP id/seq, ARP op.
2. :func:`build_frames` lays any selection of planned packets, in the order given, into one
   byte buffer in the writer's record layout (pcap or pcapng), with IPv4 header, TCP, UDP,
   ICMP and ICMPv6 checksums computed as array sums.

Inputs of :func:`plan_packets`
------------------------------
``packets`` (DataFrame or mapping of arrays), one row per packet: ``flow`` (row of ``flows``),
``ts_ns`` (int64), ``direction`` (0 initiator -> responder, 1 back), ``tcp_flags`` (9-bit,
FIN=0x001 SYN=0x002 RST=0x004 PSH=0x008 ACK=0x010), ``payload_len`` (bytes after the
transport header); optional ``pos`` (order inside the flow; else the given order) and
``hdr_len`` (Ethernet + IP + transport header bytes, as the packet model gives it: a TCP
header longer than 20 bytes is filled with NOP options, up to 40 bytes of them).

``flows``, one row per flow: ``kind`` (``tcp``, ``udp``, ``icmp``, ``arp``), ``ip_version``
(4 or 6), ``src_ip``/``dst_ip`` (strings), ``src_mac``/``dst_mac`` (``aa:bb:..``),
``src_port``/``dst_port``, ``ttl_src``/``ttl_dst`` and ``win_src``/``win_dst`` (the TTL and TCP
window of packets sent by the initiator / by the responder); optional ``app``.

TCP repair rules (as little change as possible; counted in ``PacketFields.repairs``)
-----------------------------------------------------------------------------------
0. Failed attempts (``attempts=True``, what :class:`~necst.generate.sampler.Sampler` asks for).
   A flow that opens with a run of initiator SYNs and then ends, or ends with the responder's
   RST right after the run, is a connection attempt that was not answered or was refused (9 in
   10 of the real TCP flows without a handshake are such); it is kept as it is, retransmitted
   SYNs repeating the first SYN's sequence number, and is not closed by rule 5. In any other
   flow a run of SYNs is the handshake's first step with its retransmissions. Every TCP stream
   still opens with a SYN; Wireshark marks the repeated SYNs as retransmissions, as it does in
   real captures.
1. Handshake. The first packets are matched in order against SYN (initiator, no ACK),
   SYN+ACK (responder) and ACK (initiator, no SYN/RST; may carry data). A packet that matches
   is kept; for each step that does not match, a zero-payload packet with exactly that flag
   set is inserted before it, at its timestamp. SYN and SYN+ACK carry no payload.
2. After the handshake, SYN is cleared and ACK set on every packet but a closing RST sent
   without ACK (a bare RST, as stacks send; its acknowledgement field is then 0).
3. RST only where the flow's last sender closes: its RSTs after which it sends nothing but RSTs
   (cleared elsewhere, and from the other side); the other side's packets may come between,
   sent before the RST reached it, as around 1 % of the real RSTs (a third of real RSTs are
   repeated bare RSTs, which Wireshark flags nothing in); a RST carries no payload, FIN or PSH.
4. A direction's first FIN after its last data closes it (FINs before that data are cleared):
   packets it sends after carry no payload, PSH or FIN, except its next FINs (up to
   ``FIN_RETRANSMISSIONS``), kept as retransmissions of the first: the same sequence number and
   data (or, where the model gave one no payload, the FIN alone, at the FIN's sequence number),
   no new sequence space. The other side's packets until the last resend acknowledge nothing of
   what is resent (the FIN was lost), so that Wireshark sees retransmissions, not spurious ones,
   as real captures hold (0.5 % of their TCP packets, three in four with data); the flow model
   repeats FINs at about that rate.
5. A flow with neither FIN nor RST gets FIN on its last packet (it closes with FIN/ACK), unless
   the model opened it with its own full handshake (``open_established``, the default): then the
   model left an established connection open, as 3 % of the real established flows are, cut by
   the capture's end or an idle timeout (the flow model leaves about 4 % so). Such a stream
   still opens with SYN / SYN-ACK / ACK; Wireshark flags nothing in a stream that stops.
6. A window of 0 becomes 1 (a zero window is an event Wireshark flags).

Mid-stream flows (``continuations=True``, the default). Before the rules above, a TCP flow the model
starts mid-stream (its first packet has no SYN; real captures start 1.2-1.4 % of their TCP flows so,
nearly all of them connections open before the capture began) is crafted, where it can be, as the
continuation of an earlier connection: an earlier flow of the same table between the same two hosts,
to the same server port, of the same app, that the model opened with its own full handshake and left
open (no FIN or RST), whose 5-tuple no other TCP flow of the table uses, and whose last packet comes
at least ``idle_s`` + 1 s before the mid-stream flow's first (the latest such flow; each continues at
most once, the earliest mid-stream flow first). The mid-stream flow's packets join it as one TCP
connection: its 5-tuple, sequence and acknowledgement numbers carrying on where it stopped,
directions matched by the server port. Wireshark sees one stream that opened with a full handshake;
a flow meter with that idle timeout (``necst process``: 120 s) cuts it into two flows, the second
without a handshake, as real meters cut long idle connections. The packet rows of a continued flow
then belong to the earlier flow's row (``PacketFields["flow"]``); it counts in
``repairs["continued"]``. Other mid-stream flows get rule 1's handshake.

Other repairs (all kinds): 7. a non-empty TCP or UDP payload to a port whose dissector needs a
minimum message (DNS and mDNS/LLMNR/NBNS 12 bytes, NTP 48, DHCP 244, SSH 16) is raised to it; a
payload larger than IP allows is clipped. Over TCP port 53 each segment carries one
length-prefixed DNS message (Wireshark rejects the zero length prefix of zero bytes), and a
DHCP payload (ports 67/68) starts with a BOOTP header, the magic cookie and a message-type
option (zeros there are a malformed BOOTP packet under 300 bytes).

Sequence numbers start from a seeded random ISN per flow and direction and advance by
payload bytes, plus one for SYN and for FIN; an ACK acknowledges what the other direction sent
before it, never more, so nothing is ever unseen or missing (pure ACKs acknowledge the other
side's last segments one at a time where there are enough, see ``_spread_acks``). Timestamps inside a flow
never go back (a running maximum); the ICMP echo sequence counts the initiator's requests,
the reply echoing the last one. ARP is crafted as request (initiator, to the flow's
destination MAC: broadcast, one way, or the peer's) / reply (responder). ICMP is crafted as echo request (initiator) / echo reply
(responder), except ICMPv6 to ff02::2, a solicited-node group or ff02::16: router solicitation,
neighbour solicitation and MLDv2 report (with its hop-by-hop router alert; one to five records
as the model's frame length says), sent one way, as all the real captures' ICMPv6 is. Other
ICMP types need an embedded packet that the tables do not hold.

Link-local kinds (rows of ``flows`` with kind ``igmp``, ``eapol`` or ``llc``; see
``_link_messages``): IGMP membership reports (v3 to 224.0.0.22 with one to three group
records, else v2), IPv4 with the router-alert option, TOS 0xC0, TTL 1; EAPOL-Key frames of the
WPA2 4-way handshake (ethertype 0x888E; message 2 carries an RSN element, message 3 wrapped key
data, nonces and MICs are seeded random bytes); 802.3 LLC XID frames. IGMP and LLC go one way.
Their lengths are those of the message; every kind is padded with zeros to Ethernet's 60-byte
minimum when the model's frame length (``hdr_len + payload_len``) is exactly 60 and the crafted
frame is shorter (a TCP header of 60 bytes is then padding, not options).
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from necst.capture.writer import FrameBatch, LINKTYPE_ETHERNET, record_sizes
from necst.errors import NecstError

FIN, SYN, RST, PSH, ACK = 0x001, 0x002, 0x004, 0x008, 0x010
KINDS = ("tcp", "udp", "icmp", "arp", "igmp", "eapol", "llc")
TCP, UDP, ICMP, ARP, IGMP, EAPOL, LLC = range(7)
ETH_LEN, IP4_LEN, IP6_LEN, TCP_LEN, UDP_LEN, ICMP_LEN, ARP_LEN = 14, 20, 40, 20, 8, 8, 28
IGMP_IP_LEN = 24  # IPv4 header with the router-alert option, as IGMP reports carry it
LINK_ONLY = (ARP, EAPOL, LLC)  # frames without an IP header (the flow's IP addresses are unused)
MIN_FRAME = 60  # Ethernet's minimum frame (without FCS): shorter frames a NIC receives are padded
IGMP_V3_ALL_ROUTERS = bytes([224, 0, 0, 22])
IGMP_GROUPS = np.array([[239, 255, 255, 250], [224, 0, 0, 251], [224, 0, 0, 252]], np.uint8)  # SSDP, mDNS, LLMNR
# EAPOL-Key (WPA2 4-way handshake): key information field and key data length per message 1..4
EAPOL_KEY_INFO = np.array([0, 0x008A, 0x010A, 0x13CA, 0x030A], np.int64)  # pairwise, HMAC-SHA1-AES
EAPOL_KEY_DATA = np.array([0, 0, 22, 56, 0], np.int64)  # msg 2: the STA's RSN element; msg 3: wrapped GTK
EAPOL_BODY = 95  # key descriptor fields before the key data
RSN_IE = bytes.fromhex("30140100000fac040100000fac040100000fac020000")  # CCMP / CCMP / PSK
ICMP6_CONTROL = 7  # packet kind (not a flow kind): ICMPv6 router/neighbour solicitation, MLDv2 report
RS, NS, MLD = 1, 2, 3  # its variants (MLD + r - 1: a report of r records)
MLD_GROUPS = np.array([np.frombuffer(ipaddress.IPv6Address(a).packed, np.uint8) for a in
                       ("ff02::1:3", "ff02::fb", "ff02::c", "ff02::1:ff00:1", "ff02::202")])  # LLMNR, mDNS, SSDP...
HBH_ROUTER_ALERT = bytes.fromhex("3a00050200000100")  # next: ICMPv6; router alert (MLD); PadN
LLC_XID = bytes.fromhex("0001af810100")  # 802.2 XID response, null SAPs (what Linux bridges announce)
MAX_IP_PAYLOAD = 65535
# repeated FINs a direction may send after its first, each resending it. Real captures: 0.51 % of
# TCP packets are such retransmissions, 95 % of the directions that repeat their FIN do it once (at
# most 6 times); the flow model repeats FINs about 1.1x as often, so one resend keeps the rate at
# or below the real one (6 gives 0.54 %)
FIN_RETRANSMISSIONS = 1
# the flow meter's idle timeout (``necst process``'s default): a mid-stream flow continues an earlier
# connection only after a longer silence, so that the meter cuts the two apart as the real one did
IDLE_S = 120.0
PAYLOAD_MODES = ("zeros", "app")
# port -> least non-empty payload that Wireshark's dissector for that port accepts (TCP or UDP;
# over TCP, DNS adds its 2-byte length prefix)
_MIN_PAYLOAD = {53: 12, 5353: 12, 5355: 12, 137: 12, 123: 48, 67: 244, 68: 244, 22: 16}


# --------------------------------------------------------------------------------------------
# planned packets
# --------------------------------------------------------------------------------------------
@dataclass
class PacketFields:
    """Every header field of a set of packets, one numpy array per field (2-D for addresses)."""

    cols: dict[str, np.ndarray]
    apps: list[str] = field(default_factory=list)
    repairs: dict[str, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.cols["ts_ns"])

    def __getitem__(self, name: str) -> np.ndarray:
        return self.cols[name]

    def take(self, idx: np.ndarray) -> "PacketFields":
        return PacketFields({k: v[idx] for k, v in self.cols.items()}, self.apps, dict(self.repairs))

    def slice(self, start: int, stop: int) -> "PacketFields":
        """Rows start:stop as views (no copy)."""
        return PacketFields({k: v[start:stop] for k, v in self.cols.items()}, self.apps, dict(self.repairs))

    def time_order(self) -> np.ndarray:
        """Indices ordering packets by time, ties kept in flow order (stable)."""
        return np.lexsort((self.cols["pos"], self.cols["flow"], self.cols["ts_ns"]))

    @staticmethod
    def concat(parts: list["PacketFields"]) -> "PacketFields":
        parts = [p for p in parts if p is not None]
        if len(parts) == 1:
            return parts[0]
        apps = sorted({a for p in parts for a in p.apps})
        code = {a: i for i, a in enumerate(apps)}
        cols = {}
        for k in parts[0].cols:
            if k == "app":
                cols[k] = np.concatenate([np.asarray([code[a] for a in p.apps], np.int16)[p.cols[k]]
                                          if len(p.apps) else p.cols[k] for p in parts])
            else:
                cols[k] = np.concatenate([p.cols[k] for p in parts])
        repairs: dict[str, int] = {}
        for p in parts:
            for k, v in p.repairs.items():
                repairs[k] = repairs.get(k, 0) + v
        return PacketFields(cols, apps, repairs)


def _column(table, name: str, default=None, required: bool = True) -> np.ndarray | None:
    if isinstance(table, pd.DataFrame):
        if name in table.columns:
            return table[name].to_numpy()
    elif name in table:
        return np.asarray(table[name])
    if required and default is None:
        raise NecstError(f"craft: missing column {name!r}")
    return default


def _distinct(values) -> tuple[np.ndarray, np.ndarray]:
    """``np.unique(values.astype(str), return_inverse=True)``, by hashing the values (pd.factorize)
    and sorting only the distinct ones: flow tables repeat a few hundred addresses many times."""
    codes, uniq = pd.factorize(np.asarray(values, dtype=object), use_na_sentinel=False)
    uniq = np.asarray(uniq, dtype=object).astype(str)
    order = np.argsort(uniq, kind="stable")
    rank = np.empty(len(order), np.int64)
    rank[order] = np.arange(len(order))
    return uniq[order], rank[codes]


def _parse_ips(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Strings -> (n, 16) bytes (IPv4 in the first 4) and versions, parsing distinct values once."""
    uniq, inv = _distinct(values)
    out = np.zeros((len(uniq), 16), np.uint8)
    ver = np.zeros(len(uniq), np.uint8)
    for i, s in enumerate(uniq):
        try:
            a = ipaddress.ip_address(s)
        except ValueError:
            raise NecstError(f"craft: not an IP address: {s!r}") from None
        b = a.packed
        out[i, :len(b)] = np.frombuffer(b, np.uint8)
        ver[i] = a.version
    return out[inv], ver[inv]


def _parse_macs(values: np.ndarray) -> np.ndarray:
    """'aa:bb:cc:dd:ee:ff' strings -> (n, 6) bytes, as one array operation over the distinct values."""
    uniq, inv = _distinct(values)
    raw = np.char.lower(uniq.astype("U17")).astype("S17")
    b = np.frombuffer(raw.tobytes(), np.uint8).reshape(len(uniq), 17) if len(uniq) else np.zeros((0, 17), np.uint8)
    digit = np.where(b >= ord("a"), b - ord("a") + 10, b - ord("0")).astype(np.int64)
    hexpos = np.array([0, 1, 3, 4, 6, 7, 9, 10, 12, 13, 15, 16])
    seps = b[:, [2, 5, 8, 11, 14]]
    ok = (np.char.str_len(uniq.astype(str)) == 17) & ((seps == ord(":")) | (seps == ord("-"))).all(axis=1)
    ok &= ((digit[:, hexpos] >= 0) & (digit[:, hexpos] < 16)).all(axis=1)
    if not ok.all():
        raise NecstError(f"craft: not a MAC address: {uniq[~ok][0]!r}")
    out = (digit[:, hexpos[0::2]] * 16 + digit[:, hexpos[1::2]]).astype(np.uint8)
    return out[inv]


def _grouped_exclusive_cumsum(values: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """Cumulative sum before each row, restarting at each group (rows grouped contiguously)."""
    inc = np.cumsum(values, dtype=np.int64)
    exc = inc - values
    return exc - exc[starts]


def _flow_starts(flow: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row: index of its flow's first row; and each flow's (first row) for rows grouped by flow."""
    change = np.ones(len(flow), bool)
    change[1:] = flow[1:] != flow[:-1]
    firsts = np.flatnonzero(change)
    group = np.cumsum(change) - 1
    return firsts[group], firsts


def _syn_runs(flow, d, fl, tcp_row, row_first, firsts, counts):
    """Per flow: how many initiator SYNs (no ACK, RST or FIN) open it, and whether it is a failed
    connection attempt: nothing but that run, or the run then the responder's RST as the last packet."""
    core = SYN | ACK | RST | FIN
    syn = tcp_row & (d == 0) & ((fl & core) == SYN)
    pos_in = np.arange(len(flow)) - row_first
    brk = np.where(syn, np.iinfo(np.int64).max, pos_in)
    run = np.minimum(np.minimum.reduceat(brk, firsts), counts) if len(flow) else np.zeros(0, np.int64)
    after = np.minimum(firsts + run, len(flow) - 1)
    refused = (run == counts - 1) & (d[after] == 1) & ((fl[after] & RST) != 0)
    attempt = tcp_row[firsts] & (run >= 1) & ((run == counts) | refused)
    return run, attempt


def _repair_tcp(flow, d, fl, pl, ts, tcp_row, repairs, close_flows=True, hdr=None, attempts=False,
                open_established=False):
    """Apply the TCP repair rules (module docstring) to rows grouped by flow; returns new arrays,
    the last one marking retransmitted SYNs (rule 0; all False unless ``attempts``)."""
    row_first, firsts = _flow_starts(flow)
    counts = np.diff(np.append(firsts, len(flow)))
    if attempts:
        run, attempt = _syn_runs(flow, d, fl, tcp_row, row_first, firsts, counts)
    else:
        run, attempt = np.minimum(counts, 1), np.zeros(len(firsts), bool)
    tcp_flow = tcp_row[firsts] & ~attempt  # failed attempts are kept as they are
    ptr = firsts[tcp_flow].copy()
    end = ptr + counts[tcp_flow]
    skip = np.maximum(run[tcp_flow], 1)  # a matched SYN takes its retransmissions with it
    fid = flow[ptr]
    ins_pos, ins_t, ins_flow, ins_ts = [], [], [], []
    core = SYN | ACK | RST | FIN
    for t in range(3):
        valid = ptr < end
        p = np.minimum(ptr, len(flow) - 1)
        if t == 0:
            m = (d[p] == 0) & ((fl[p] & core) == SYN)
        elif t == 1:
            m = (d[p] == 1) & ((fl[p] & core) == SYN | ACK)
        else:
            m = (d[p] == 0) & ((fl[p] & ACK) != 0) & ((fl[p] & (SYN | RST)) == 0)
        miss = ~(m & valid)
        ins_pos.append(ptr[miss])
        ins_t.append(np.full(int(miss.sum()), t))
        ins_flow.append(fid[miss])
        ins_ts.append(ts[np.where(valid, ptr, ptr - 1)[miss]])  # at the next packet's time, or the last's
        ptr = ptr + np.where(m & valid, skip if t == 0 else 1, 0)
    # retransmitted SYNs: rows 1 .. run-1 of flows whose SYN run is kept (attempts, or matched as step 0)
    hs_off = np.zeros(len(firsts), np.int64)  # per flow: SYN retransmissions before the handshake's 2nd step
    hs_off[attempt | tcp_row[firsts]] = np.maximum(run[attempt | tcp_row[firsts]] - 1, 0)
    pos_in0 = np.arange(len(flow)) - row_first
    flow_idx0 = np.cumsum(np.r_[True, flow[1:] != flow[:-1]]) - 1 if len(flow) else np.zeros(0, np.int64)
    retx = tcp_row & (pos_in0 >= 1) & (pos_in0 <= hs_off[flow_idx0])
    attempt_row = attempt[flow_idx0]
    repairs["syn_retransmissions"] = int(retx.sum())
    repairs["failed_attempts"] = int(attempt.sum())
    pos, tmpl, i_flow, i_ts = (np.concatenate(x) for x in (ins_pos, ins_t, ins_flow, ins_ts))
    order = np.lexsort((tmpl, i_flow, pos))  # np.insert keeps this order among equal positions
    pos, tmpl, i_flow, i_ts = pos[order], tmpl[order], i_flow[order], i_ts[order]
    repairs["handshake_inserted"] = int(len(pos))
    src = np.arange(len(flow))
    if len(pos):
        src = np.insert(src, pos, -1)
        flow = np.insert(flow, pos, i_flow)
        ts = np.insert(ts, pos, i_ts)
        d = np.insert(d, pos, np.array([0, 1, 0])[tmpl])
        fl = np.insert(fl, pos, np.array([SYN, SYN | ACK, ACK])[tmpl])
        pl = np.insert(pl, pos, 0)
        hdr = np.insert(hdr, pos, -1)
        tcp_row = np.insert(tcp_row, pos, True)
        retx = np.insert(retx, pos, False)
        attempt_row = np.insert(attempt_row, pos, False)
    row_first, firsts = _flow_starts(flow)
    pos_in = np.arange(len(flow)) - row_first
    last = np.zeros(len(flow), bool)
    last[np.append(firsts[1:] - 1, len(flow) - 1)] = True
    before = fl.copy()
    t = tcp_row
    off = np.repeat(hs_off, np.diff(np.append(firsts, len(flow))))  # insertions come after a SYN run
    zero_pl = t & (pos_in <= 1 + off) & (pl > 0)
    # closing: the last packet, and a RST of the last packet's sender after which it sends nothing
    # but RSTs (the peer's packets may come between, sent before the RST reached it)
    flow_idx = np.cumsum(np.r_[True, flow[1:] != flow[:-1]]) - 1 if len(flow) else np.zeros(0, np.int64)
    side = flow_idx * 2 + d
    last_other = np.full(2 * len(firsts), -1, np.int64)  # per (flow, direction): its last packet that is no RST
    other = np.flatnonzero((fl & RST) == 0)
    np.maximum.at(last_other, side[other], other)
    last_rows = np.append(firsts[1:] - 1, len(flow) - 1)
    closer = d == d[last_rows][flow_idx]
    closing = last | (((fl & RST) != 0) & closer & (np.arange(len(flow)) > last_other[side]))
    # rule 2 (closing RSTs without ACK stay so: stacks send bare RSTs, 0.8 % of real packets)
    bare_rst = t & closing & (pos_in >= 1) & ((fl & (RST | ACK)) == RST)
    fl = np.where(t & (pos_in >= 2 + off), fl & ~SYN, fl)
    fl = np.where(t & (pos_in >= 1) & ~retx & ~bare_rst, fl | ACK, fl)
    # rule 3
    fl = np.where(t & ~closing, fl & ~RST, fl)
    rst = t & closing & ((fl & RST) != 0)
    fl = np.where(rst, fl & ~(FIN | PSH), fl)
    zero_pl |= rst & (pl > 0)
    # rule 4: a direction's first FIN after its data closes it; its next FINs resend it
    # a FIN its direction sends data after is no close: cleared (the data stays)
    last_data = np.full(2 * len(firsts), -1, np.int64)  # per (flow, direction): its last data without FIN
    data = np.flatnonzero(t & (pl > 0) & ~zero_pl & ((fl & FIN) == 0))
    np.maximum.at(last_data, side[data], data)
    is_fin = t & ((fl & FIN) != 0)
    early = is_fin & (np.arange(len(flow)) < last_data[side])
    fl = np.where(early, fl & ~FIN, fl)
    is_fin &= ~early
    key = side
    order = np.lexsort((np.arange(len(flow)), key))  # rows by (flow, direction), in flow order
    k_sorted, fin_sorted = key[order], is_fin[order]
    grp_start = np.r_[True, k_sorted[1:] != k_sorted[:-1]] if len(flow) else np.zeros(0, bool)
    grp_first = np.maximum.accumulate(np.where(grp_start, np.arange(len(flow)), 0)) if len(flow) else grp_start
    fins_before = _grouped_exclusive_cumsum(fin_sorted.astype(np.int64), grp_first) if len(flow) else grp_first
    nth = np.empty(len(flow), np.int64)
    nth[order] = fins_before  # FINs its direction sent before each row
    first_fin_at = np.where(fin_sorted, np.arange(len(flow)), len(flow))
    first_fin_at = np.minimum.reduceat(first_fin_at, np.flatnonzero(grp_start)) if len(flow) else first_fin_at
    grp_id = np.cumsum(grp_start) - 1
    orig = np.empty(len(flow), np.int64)
    orig[order] = np.where(first_fin_at[grp_id] < len(flow), order[np.minimum(first_fin_at[grp_id], len(flow) - 1)], -1)
    resend = is_fin & (nth >= 1) & (nth <= FIN_RETRANSMISSIONS) & ~((fl & RST) != 0)
    after = t & (nth >= 1) & ~resend  # its direction already sent its FIN: no data, no FIN
    fl = np.where(after, fl & ~(FIN | PSH), fl)
    zero_pl |= after & (pl > 0)
    fin_orig = np.where(resend, orig, -1)
    retx = retx | resend
    repairs["fin_retransmissions"] = int(resend.sum())
    # rule 5
    has_close = np.zeros(len(flow), bool)
    closing = t & ((fl & (FIN | RST)) != 0)
    per_flow = np.add.reduceat(closing.astype(np.int64), firsts) > 0
    has_close = per_flow[np.cumsum(np.r_[True, flow[1:] != flow[:-1]]) - 1]
    if close_flows:  # a connection never opened has nothing to close
        keep_open = np.zeros(len(flow), bool)
        if open_established:  # the model's own handshake, no close: a connection cut by the capture's end
            keep_open = t & ~np.isin(flow, i_flow)
            repairs["left_open"] = int((keep_open & last & ~has_close & ~attempt_row).sum())
        fl = np.where(t & last & ~has_close & ~attempt_row & ~keep_open, fl | FIN | ACK, fl)
    repairs["flags_changed"] = int(((fl != before) & (src >= 0)).sum())
    repairs["payload_zeroed"] = int((zero_pl & (src >= 0)).sum())
    pl = np.where(zero_pl, 0, pl)
    return flow, d, fl, pl, ts, tcp_row, src, hdr, retx, fin_orig


def _latest_before(key_p, t_p, key_q, t_q) -> np.ndarray:
    """For each query (key, time): the index of the candidate with that key and the latest time at or
    before it (ties: the last index), or -1; one sort and two searches for all queries."""
    times = np.unique(np.concatenate([t_p, t_q]))
    scale = len(times) + 1
    code_p = key_p * scale + np.searchsorted(times, t_p)
    order = np.argsort(code_p, kind="stable")
    sorted_p = code_p[order]
    j = np.searchsorted(sorted_p, key_q * scale + np.searchsorted(times, t_q), side="right") - 1
    ok = (j >= 0) & (sorted_p[np.maximum(j, 0)] // scale == key_q)
    return np.where(ok, order[np.maximum(j, 0)], -1)


def _continuations(flow, d, fl, ts, tcp_row, flows, n_flows: int, idle_s: float):
    """Per flow: the earlier flow whose connection a mid-stream TCP flow continues (-1: none), and
    whether its directions run the other way (see "Mid-stream flows" in the module docstring).
    Rows grouped by flow, in flow order."""
    pred_of = np.full(n_flows, -1, np.int64)
    flip = np.zeros(n_flows, np.int64)
    row_first, firsts = _flow_starts(flow)
    counts = np.diff(np.append(firsts, len(flow)))
    fid = flow[firsts]
    tcp = tcp_row[firsts]
    mid = tcp & ((fl[firsts] & SYN) == 0)
    if not mid.any():
        return pred_of, flip
    run, attempt = _syn_runs(flow, d, fl, tcp_row, row_first, firsts, counts)
    last = len(flow) - 1
    a, b = np.minimum(firsts + run, last), np.minimum(firsts + run + 1, last)
    core = SYN | ACK | RST | FIN
    own_handshake = (tcp & (run >= 1) & (counts >= run + 2) & (d[a] == 1) & ((fl[a] & core) == SYN | ACK)
                     & (d[b] == 0) & ((fl[b] & ACK) != 0) & ((fl[b] & (SYN | RST)) == 0))
    closes = np.bitwise_or.reduceat(fl & (FIN | RST), firsts) != 0
    # hosts, server ports and apps of the flows that have packets
    zeros = np.zeros(n_flows, np.int64)
    _, hosts = _distinct(np.concatenate([np.asarray(_column(flows, "src_ip")), np.asarray(_column(flows, "dst_ip"))]))
    src_h, dst_h = hosts[:n_flows][fid], hosts[n_flows:][fid]
    sport = (np.nan_to_num(np.asarray(_column(flows, "src_port", zeros), float)).astype(np.int64) & 0xFFFF)[fid]
    dport = (np.nan_to_num(np.asarray(_column(flows, "dst_port", zeros), float)).astype(np.int64) & 0xFFFF)[fid]
    app_names = _column(flows, "app", required=False)
    app = zeros[fid] if app_names is None else \
        _distinct(pd.Series(app_names).fillna("unknown").astype(str).to_numpy())[1][fid]
    # a 5-tuple that another TCP flow of the table uses would join that flow too
    ends = np.stack([src_h * 65536 + sport, dst_h * 65536 + dport])
    tuple5 = np.unique(np.column_stack([ends.min(axis=0), ends.max(axis=0)])[tcp], axis=0, return_inverse=True)[1]
    unique5 = np.zeros(len(fid), bool)
    unique5[tcp] = np.bincount(tuple5.reshape(-1))[tuple5.reshape(-1)] == 1
    can_precede = own_handshake & ~closes & ~attempt & unique5
    t_first = ts[firsts]
    t_last = np.maximum.reduceat(ts, firsts)
    gap = int(round((idle_s + 1.0) * 1e9))  # the meter compares whole milliseconds: a second to spare
    # a key per (client, server, server port, app): the earlier flow's, and the mid-stream flow's
    # read either way (its first sender the client, or the server)
    m = np.flatnonzero(mid)
    rows = np.concatenate([np.column_stack([src_h, dst_h, dport, app]),
                           np.column_stack([src_h[m], dst_h[m], dport[m], app[m]]),
                           np.column_stack([dst_h[m], src_h[m], sport[m], app[m]])])
    keys = np.unique(rows, axis=0, return_inverse=True)[1].reshape(-1)
    key_p, key_same, key_back = keys[:len(fid)], keys[len(fid):len(fid) + len(m)], keys[len(fid) + len(m):]
    free = can_precede.copy()
    todo = np.ones(len(m), bool)
    for _ in range(8):  # rounds: a mid-stream flow whose choice another took tries the next one
        p = np.flatnonzero(free)
        q = np.flatnonzero(todo)
        if len(p) == 0 or len(q) == 0:
            break
        when = t_first[m[q]] - gap
        same = _latest_before(key_p[p], t_last[p], key_same[q], when)
        back = _latest_before(key_p[p], t_last[p], key_back[q], when)
        same_t = np.where(same >= 0, t_last[p[np.maximum(same, 0)]], np.iinfo(np.int64).min)
        back_t = np.where(back >= 0, t_last[p[np.maximum(back, 0)]], np.iinfo(np.int64).min)
        use_back = back_t > same_t
        pick = np.where(use_back, back, same)
        found = pick >= 0
        todo[q[~found]] = False
        q, pick, use_back = q[found], p[pick[found]], use_back[found]
        if len(q) == 0:
            break
        # one continuation per earlier flow: the earliest mid-stream flow that picked it
        by = np.lexsort((t_first[m[q]], pick))
        won = by[np.r_[True, pick[by][1:] != pick[by][:-1]]]
        pred_of[fid[m[q[won]]]] = fid[pick[won]]
        flip[fid[m[q[won]]]] = use_back[won]
        free[pick[won]] = False
        todo[q[won]] = False
    return pred_of, flip


def _spread_acks(flow, d, fl, pl, tcp, consumed, full, row_first) -> np.ndarray:
    """Bytes of the other side each packet acknowledges (relative to its ISN).

    A packet with data, SYN, FIN or RST acknowledges all the other side sent before it. The pure
    ACKs a side sends between two such packets of its own (the other side's packets may come
    between) acknowledge the other side's segments one by one where there are more segments than
    ACKs to come, each ACK one segment further than the one before it, the last as far as all (as
    stacks that ack every segment do, and as real pure ACKs are: 71 % acknowledge all, 14 % all but
    one segment, 6 % all but two in the held-out IoT Sentinel captures; their data packets 99 %
    all). Only where a side sends more pure ACKs than the other side sent segments does an ACK
    repeat (Wireshark's duplicate ACKs, as in real traffic). Acknowledgements never go back.
    """
    n = len(flow)
    pure = tcp & (pl == 0) & ((fl & (SYN | FIN | RST)) == 0) & ((fl & ACK) != 0)
    if not pure.any():
        return full
    out = full.copy()
    for side in (0, 1):
        other = 1 - side
        cons = tcp & (d == other) & (consumed > 0)  # the other side's segments (data, SYN, FIN)
        cons_rows = np.flatnonzero(cons)
        rows = np.flatnonzero(tcp & (d == side))
        if len(cons_rows) == 0 or not pure[rows].any():
            continue
        count = _grouped_exclusive_cumsum(cons.astype(np.int64), row_first)[rows]  # its segments before each row
        p = pure[rows].astype(np.int64)
        f = flow[rows]
        # a stretch: one of the side's packets that is no pure ACK and the pure ACKs after it
        new = np.r_[True, (f[1:] != f[:-1]) | (p[1:] == 0)]
        stretch = np.cumsum(new) - 1
        starts = np.flatnonzero(new)
        acks_so_far = _grouped_exclusive_cumsum(p, starts[stretch]) + p  # pure ACKs up to each row, in its stretch
        # the most segments each pure ACK may acknowledge so that every later one of its stretch
        # still acknowledges a new one: min over the later rows l of (count_l - acks_l) + acks_row
        room = count - acks_so_far
        top = room.max()
        later_min = top - _grouped_cummax((top - room)[::-1], stretch[::-1])[::-1]
        level = np.where(p == 1, np.maximum(acks_so_far + later_min, np.minimum(count, 1)), count)
        hold = np.flatnonzero((p == 1) & (level < count))
        if len(hold) == 0:
            continue
        sel, level = rows[hold], level[hold]
        # bytes acknowledged = the other side's running bytes up to and including its segment
        # number ``level`` (1-based) of the flow
        ends_bytes = np.cumsum(np.where(cons, consumed, 0))
        g = np.searchsorted(cons_rows, row_first[sel]) + level - 1
        first = row_first[sel]
        within = ends_bytes[cons_rows[g]] - (ends_bytes[first] - np.where(cons[first], consumed[first], 0))
        out[sel] = np.minimum(within, full[sel])
    # never acknowledge less than before: a running maximum per (flow, side)
    for side in (0, 1):
        idx = np.flatnonzero(d == side)
        if len(idx):
            out[idx] = _grouped_cummax(out[idx], flow[idx])
    return out


def _unacked_until_resent(flow, d, fin_orig, resent_from, acked) -> np.ndarray:
    """Cap the acknowledgements the other side sends between a FIN and its retransmission below the
    resent bytes (``resent_from``, relative to the sender's ISN), so that Wireshark sees the
    retransmission of a lost segment, not a spurious one. Rows grouped by flow, in order."""
    out = acked.copy()
    for side in (0, 1):
        r = np.flatnonzero((fin_orig >= 0) & (d == side))
        if len(r) == 0:
            continue
        # one interval per FIN, rows fin+1 .. its last resend - 1 (a direction's never overlap),
        # below the least of what its resends carry
        o = fin_orig[r]
        group = np.flatnonzero(np.r_[True, o[1:] != o[:-1]])
        least = np.minimum.reduceat(resent_from[r], group)
        o, r = o[group], r[np.append(group[1:], len(r)) - 1]
        step = np.zeros(len(flow) + 1, np.int64)
        np.add.at(step, o + 1, least + 1)
        np.add.at(step, r, -(least + 1))
        level = np.cumsum(step[:-1])  # resent_from + 1 inside an interval, 0 outside
        hit = (level > 0) & (d != side)
        out[hit] = np.minimum(out[hit], level[hit] - 1)
    return out


def _grouped_cummax(values: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """Running maximum restarting at each group (groups contiguous, values >= 0)."""
    change = np.ones(len(groups), bool)
    change[1:] = groups[1:] != groups[:-1]
    rank = np.cumsum(change) - 1
    if len(values) and values.max() < (1 << 40) and rank[-1] < (1 << 22):
        shift = rank.astype(np.int64) << 40  # each group above every value of the groups before
        return np.maximum.accumulate(shift + values) - shift
    return pd.Series(values).groupby(rank).cummax().to_numpy()


def _l3_len(kp: np.ndarray, v6: np.ndarray) -> np.ndarray:
    """Bytes between the Ethernet header and the transport (or link-layer message) header."""
    return np.select([kp == ARP, kp == IGMP, (kp == EAPOL) | (kp == LLC)], [ARP_LEN, IGMP_IP_LEN, 0],
                     np.where(v6, IP6_LEN, IP4_LEN))


def _icmp6_variant(is_icmp: np.ndarray, ver: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Per flow: RS to ff02::2, NS to a solicited-node group ff02::1:ffXX:XXXX, MLD to ff02::16, else 0."""
    ff02 = (dst[:, 0] == 0xFF) & (dst[:, 1] == 0x02) & (dst[:, 2:11] == 0).all(axis=1)
    v = np.zeros(len(dst), np.int64)
    v[ff02 & (dst[:, 11:15] == 0).all(axis=1) & (dst[:, 15] == 2)] = RS
    v[ff02 & (dst[:, 11] == 1) & (dst[:, 12] == 0xFF)] = NS
    v[ff02 & (dst[:, 11:15] == 0).all(axis=1) & (dst[:, 15] == 0x16)] = MLD
    return np.where(is_icmp & (ver == 6), v, 0)


def _link_messages(kp, flow, d, firsts, row_first, dst_ip, want, seed):
    """Per packet of the IGMP, EAPOL and LLC flows: message variant, message length, random bits.

    IGMP: a v3 membership report (variant = its 1..3 group records) when sent to 224.0.0.22, else
    a v2 report (variant 0); the record count follows the model's frame length (62 and 70 bytes
    are the real 2- and 3-record reports, anything else one record). EAPOL: the WPA2 4-way
    handshake's message number. In a two-way flow the initiator is the authenticator (messages
    1, 3, 1, 3...) and the responder the supplicant (2, 4, ...); a one-way flow is a station's
    side alone (2, 4, ...), as in captures taken on the station. LLC: one XID frame.
    """
    n = len(flow)
    sub = np.zeros(n, np.int64)
    length = np.zeros(n, np.int64)
    nonce = np.zeros(n, np.uint64)
    link = np.isin(kp, (IGMP, EAPOL, LLC))
    if not link.any():
        return sub, length, nonce
    igmp, eapol = kp == IGMP, kp == EAPOL
    v3 = igmp & (dst_ip[:, :4] == np.frombuffer(IGMP_V3_ALL_ROUTERS, np.uint8)).all(axis=1)[flow]  # per flow, then per packet
    records = 1 + ((want >= 62) & (want < 70)) + 2 * ((want >= 70) & (want < 78))
    sub = np.where(v3, records, sub)
    length = np.where(igmp, 8 + 8 * sub, length)
    if eapol.any():
        flow_idx = np.cumsum(np.r_[True, flow[1:] != flow[:-1]]) - 1
        two_way = (np.maximum.reduceat(d, firsts) > 0)[flow_idx]
        rank = np.where(d == 0, _grouped_exclusive_cumsum((d == 0).astype(np.int64), row_first),
                        _grouped_exclusive_cumsum((d == 1).astype(np.int64), row_first))
        authenticator = two_way & (d == 0)
        msg = np.where(authenticator, 1, 2) + 2 * (rank % 2)
        sub = np.where(eapol, msg, sub)
        length = np.where(eapol, 4 + EAPOL_BODY + EAPOL_KEY_DATA[np.where(eapol, sub, 0)], length)
    length = np.where(kp == LLC, len(LLC_XID), length)
    rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, 0x1A7E])  # apart from the TCP/IP draws
    nonce[link] = rng.integers(0, 1 << 63, size=int(link.sum()), dtype=np.int64).astype(np.uint64)
    return sub, length, nonce


def plan_packets(packets, flows, *, seed: int = 0, close_flows: bool = True,
                 attempts: bool = False, open_established: bool = True, continuations: bool = True,
                 idle_s: float = IDLE_S) -> PacketFields:
    """Repair and fill every header field of whole flows (see the module docstring).

    ``close_flows=False`` skips rule 5: flows the model left open stay open (as real flows cut by
    a capture's end or an idle timeout), at the price of TCP streams without a close.
    ``open_established=True`` (the default) skips rule 5 only for flows whose handshake is the
    model's own (nothing inserted by rule 1): the model left an established connection open.
    ``attempts=True`` applies rule 0: failed connection attempts and SYN retransmissions are kept.
    ``continuations=True`` crafts mid-stream TCP flows as continuations of an earlier connection
    left idle for more than ``idle_s`` (the flow meter's idle timeout), where one fits.
    """
    rng = np.random.default_rng(seed)
    flow = np.asarray(_column(packets, "flow"), np.int64)
    n_flows = len(flows)
    if len(flow) and (flow.min() < 0 or flow.max() >= n_flows):
        raise NecstError("craft: packet flow index outside the flow table")
    ts = np.asarray(_column(packets, "ts_ns"), np.int64)
    d = np.asarray(_column(packets, "direction"), np.int64) & 1
    fl = np.asarray(_column(packets, "tcp_flags", np.zeros(len(flow))), np.int64) & 0x1FF
    pl = np.maximum(np.asarray(_column(packets, "payload_len"), np.int64), 0)
    given_pos = _column(packets, "pos", required=False)
    keys = (np.arange(len(flow)) if given_pos is None else np.asarray(given_pos, np.int64), flow)
    order = np.lexsort(keys)
    hdr = _column(packets, "hdr_len", required=False)
    hdr = np.full(len(flow), -1, np.int64) if hdr is None else np.nan_to_num(np.asarray(hdr, float), nan=-1).astype(np.int64)
    flow, ts, d, fl, pl, hdr = flow[order], ts[order], d[order], fl[order], pl[order], hdr[order]

    kind_names = np.asarray(_column(flows, "kind")).astype(str)
    kind = np.full(n_flows, -1, np.int64)
    for i, k in enumerate(KINDS):
        kind[kind_names == k] = i
    if (kind < 0).any():
        bad = sorted(set(kind_names[kind < 0]))
        raise NecstError(f"craft: unknown flow kind {bad[0]!r} (use {', '.join(KINDS)})")
    repairs: dict[str, int] = {}
    # IGMP reports and LLC announcements go one way: host to group, host to broadcast; so does
    # ARP to the broadcast address (only the asker sends, to ff:ff:ff:ff:ff:ff)
    dst_mac = _parse_macs(np.asarray(_column(flows, "dst_mac")))
    d = np.where(np.isin(kind[flow], (IGMP, LLC)) | ((kind[flow] == ARP) & ((dst_mac[flow, 0] & 1) == 1)), 0, d)
    tcp_row = kind[flow] == TCP
    if continuations and len(flow) and tcp_row.any():
        pred, flip = _continuations(flow, d, fl, ts, tcp_row, flows, n_flows, idle_s)
        repairs["continued"] = int((pred >= 0).sum())
        if repairs["continued"]:
            moved = pred[flow] >= 0
            d = np.where(moved, d ^ flip[flow], d)
            flow = np.where(moved, pred[flow], flow)
            order = np.lexsort((np.arange(len(flow)), moved, flow))  # the earlier flow's packets first
            flow, ts, d, fl, pl, hdr = flow[order], ts[order], d[order], fl[order], pl[order], hdr[order]
            tcp_row = tcp_row[order]
    if len(flow):
        flow, d, fl, pl, ts, tcp_row, _, hdr, retx, fin_orig = _repair_tcp(
            flow, d, fl, pl, ts, tcp_row, repairs, close_flows, hdr, attempts, open_established)
    else:
        retx, fin_orig = np.zeros(0, bool), np.zeros(0, np.int64)
    n = len(flow)
    row_first, firsts = _flow_starts(flow) if n else (np.zeros(0, np.int64), np.zeros(0, np.int64))
    pos = np.arange(n) - row_first
    if n and np.any((np.diff(ts) < 0) & (flow[1:] == flow[:-1])):  # times going back inside a flow
        ts = pd.Series(ts).groupby(flow, sort=False).cummax().to_numpy()
    kp = kind[flow]

    src_ip, ver_s = _parse_ips(np.asarray(_column(flows, "src_ip")))
    dst_ip, ver_d = _parse_ips(np.asarray(_column(flows, "dst_ip")))
    link_only = np.isin(kind, LINK_ONLY)
    ipver = np.where(link_only, 4, ver_s)
    if ((ver_s != ver_d) & ~link_only).any():
        raise NecstError("craft: a flow mixes IPv4 and IPv6 addresses")
    if ((kind == ARP) & (ver_s != 4)).any():
        raise NecstError("craft: ARP needs IPv4 addresses")
    if ((kind == IGMP) & (ver_s != 4)).any():
        raise NecstError("craft: IGMP needs IPv4 addresses")
    # ICMPv6 to the all-routers, a solicited-node or the MLDv2 group: router solicitation,
    # neighbour solicitation (duplicate address detection), MLDv2 report, sent one way (the real
    # captures hold no ICMPv6 echo at all); other ICMPv6 stays echo request / reply
    icmp6 = _icmp6_variant(kind == ICMP, ver_s, dst_ip)
    if n:
        ctl = icmp6[flow] > 0
        d = np.where(ctl, 0, d)
        kp = np.where(ctl, ICMP6_CONTROL, kp)
        pl = np.where(ctl, 0, pl)
    src_mac = _parse_macs(np.asarray(_column(flows, "src_mac")))
    zeros = np.zeros(n_flows, np.int64)
    sport = np.nan_to_num(np.asarray(_column(flows, "src_port", zeros), float)).astype(np.int64) & 0xFFFF
    dport = np.nan_to_num(np.asarray(_column(flows, "dst_port", zeros), float)).astype(np.int64) & 0xFFFF
    ttl_s = np.asarray(_column(flows, "ttl_src", zeros + 64), np.int64)
    ttl_d = np.asarray(_column(flows, "ttl_dst", zeros + 64), np.int64)
    win_s = np.asarray(_column(flows, "win_src", zeros + 65535), np.int64)
    win_d = np.asarray(_column(flows, "win_dst", zeros + 65535), np.int64)
    app_names = _column(flows, "app", required=False)
    if app_names is None:
        apps, app_code = ["unknown"], np.zeros(n_flows, np.int16)
    else:
        apps_u, app_code = _distinct(pd.Series(app_names).fillna("unknown").astype(str).to_numpy())
        apps, app_code = list(apps_u), app_code.astype(np.int16)

    fwd = d == 0
    v6 = ipver[flow] == 6
    ip_len = _l3_len(kp, v6)
    # the frame length the model meant (-1: not given; inserted handshake packets have none)
    want = np.where(hdr > 0, hdr + pl, -1)
    # TCP options: what a given header length (Ethernet + IP + TCP) holds beyond the fixed 20 bytes,
    # in whole 32-bit words, at most 40 bytes; except a 60-byte frame whose option-less segment
    # would be shorter: that is Ethernet padding, not options (2.9 % of real TCP packets)
    padded_tcp = (kp == TCP) & ~v6 & (want == MIN_FRAME) & (ETH_LEN + IP4_LEN + TCP_LEN + pl < MIN_FRAME)
    tcp_opt = np.where((kp == TCP) & (hdr > 0) & ~padded_tcp,
                       np.clip((hdr - ETH_LEN - ip_len - TCP_LEN) // 4 * 4, 0, 40), 0)
    sub, msg_len, nonce = _link_messages(kp, flow, d, firsts, row_first, dst_ip, want, seed)
    if n and (kp == ICMP6_CONTROL).any():
        ctl = kp == ICMP6_CONTROL
        v = icmp6[flow]
        records = np.where((want >= 90) & (want <= 170) & ((want - 70) % 20 == 0), (want - 70) // 20, 1)
        sub = np.where(ctl, np.where(v == MLD, MLD - 1 + records, v), sub)
        msg_len = np.where(ctl, np.select([v == RS, v == NS], [16, 24], 8 + 8 + 20 * records), msg_len)
    # their whole message is laid by build_frames; ARP carries nothing after its 28 bytes (the
    # flow model's noflow packets may carry an ICMP payload's length: it made ARP frames of 97 bytes)
    pl = np.where(np.isin(kp, (ARP, IGMP, EAPOL, LLC)), 0, pl)
    l4_len = np.select([kp == TCP, kp == UDP, kp == ICMP], [TCP_LEN, UDP_LEN, ICMP_LEN], msg_len) + tcp_opt
    cap = np.where(np.isin(kp, LINK_ONLY), MAX_IP_PAYLOAD, MAX_IP_PAYLOAD - np.where(v6, 0, IP4_LEN) - l4_len)
    # rule 7: a non-empty payload to a port whose dissector needs a minimum message is raised to it
    sp_f, dp_f = sport[flow], dport[flow]
    floor = np.zeros(n, np.int64)
    for port, least in _MIN_PAYLOAD.items():
        hit = ((kp == UDP) | (kp == TCP)) & ((sp_f == port) | (dp_f == port))
        least = np.where((kp == TCP) & (port == 53), least + 2, least)
        floor = np.where(hit, np.maximum(floor, least), floor)
    raise_ = (pl > 0) & (pl < floor)
    repairs["payload_raised"] = int(raise_.sum())
    pl = np.where(raise_, floor, pl)
    clipped = pl > cap
    repairs["payload_clipped"] = int(clipped.sum())
    pl = np.minimum(pl, cap)
    # a FIN retransmission resends its FIN's data too, or (the model gave it none) the FIN alone
    fin_retx = fin_orig >= 0
    pl = np.where(fin_retx, np.where(pl > 0, pl[np.maximum(fin_orig, 0)], 0), pl)
    fl = np.where(fin_retx & (pl == 0), fl & ~PSH, fl)
    # Ethernet padding where the model's frame is 60 bytes and the crafted one would be shorter
    natural = ETH_LEN + ip_len + l4_len + pl
    pad = np.where((want == MIN_FRAME) & (natural < MIN_FRAME), MIN_FRAME - natural, 0)

    # per (flow, direction) counters, for ip id, seq/ack and icmp seq
    is0 = fwd.astype(np.int64)
    is1 = 1 - is0
    c0 = _grouped_exclusive_cumsum(is0, row_first) if n else is0
    c1 = _grouped_exclusive_cumsum(is1, row_first) if n else is1
    rank = np.where(fwd, c0, c1)
    # a retransmitted SYN repeats the first one: same sequence number, no new sequence space
    consumed = np.where((kp == TCP) & ~retx, pl + ((fl & SYN) != 0) + ((fl & FIN) != 0), 0)
    s0 = _grouped_exclusive_cumsum(consumed * is0, row_first) if n else consumed
    s1 = _grouped_exclusive_cumsum(consumed * is1, row_first) if n else consumed
    isn = rng.integers(0, 1 << 32, size=(n_flows, 2), dtype=np.int64)
    id_base = rng.integers(0, 1 << 16, size=(n_flows, 2), dtype=np.int64)
    icmp_id = rng.integers(0, 1 << 16, size=n_flows, dtype=np.int64)
    label = rng.integers(0, 1 << 20, size=(n_flows, 2), dtype=np.int64)
    # a retransmission steps back over what it resends (a SYN: 1; a FIN: its data and 1)
    seq = (isn[flow, d] + np.where(fwd, s0, s1) - np.where(retx, 1 + np.where(fin_retx, pl, 0), 0)) & 0xFFFFFFFF
    acked = _spread_acks(flow, d, fl, pl, kp == TCP, consumed, np.where(fwd, s1, s0), row_first) if n \
        else np.zeros(0, np.int64)
    if fin_retx.any():  # the FIN was lost: the other side's packets before its resend do not acknowledge it
        acked = _unacked_until_resent(flow, d, fin_orig, np.where(fwd, s0, s1) - pl - 1, acked)
    ack = np.where((fl & ACK) != 0, (isn[flow, 1 - d] + acked) & 0xFFFFFFFF, 0)
    win = np.where(fwd, win_s[flow], win_d[flow])
    repairs["window_raised"] = int(((win <= 0) & (kp == TCP)).sum())
    win = np.clip(win, 1, 0xFFFF)
    icmp_seq = (c0 + is0) & 0xFFFF
    has = (pl > 0).astype(np.int64)
    before = np.where(fwd, _grouped_exclusive_cumsum(has * is0, row_first), _grouped_exclusive_cumsum(has * is1, row_first)) \
        if n else has
    first_payload = (pl > 0) & (before == 0)  # the first packet of its direction that carries data

    ips = np.stack([src_ip, dst_ip])
    macs = np.stack([src_mac, dst_mac])
    cols = {
        "ts_ns": ts, "flow": flow, "pos": pos, "direction": d.astype(np.uint8),
        "kind": kp.astype(np.uint8), "ip_version": ipver[flow].astype(np.uint8),
        "tcp_flags": fl.astype(np.uint16), "payload_len": pl.astype(np.int64),
        "tcp_opt": tcp_opt.astype(np.uint8),
        # one gather per field from the (side, flow) stack: side = direction for the sender
        "ip_src": ips[d, flow], "ip_dst": ips[1 - d, flow],
        "mac_src": macs[d, flow], "mac_dst": macs[1 - d, flow],
        "sport": np.where(fwd, sport[flow], dport[flow]).astype(np.uint16),
        "dport": np.where(fwd, dport[flow], sport[flow]).astype(np.uint16),
        # IGMP stays on its link (TTL 1, RFC 2236 / 3376)
        "ttl": np.select([kp == IGMP, (kp == ICMP6_CONTROL) & (sub >= MLD), kp == ICMP6_CONTROL], [1, 1, 255],
                         np.clip(np.where(fwd, ttl_s[flow], ttl_d[flow]), 1, 255)).astype(np.uint8),
        "window": win.astype(np.uint16),
        "seq": seq.astype(np.uint32), "ack": ack.astype(np.uint32),
        "ip_id": ((id_base[flow, d] + rank) & 0xFFFF).astype(np.uint16),
        "flow_label": label[flow, d].astype(np.uint32),
        "icmp_id": icmp_id[flow].astype(np.uint16), "icmp_seq": icmp_seq.astype(np.uint16),
        "app": app_code[flow] if n else np.zeros(0, np.int16),
        "first_in_dir": first_payload,
        "sub": sub.astype(np.uint8), "msg_len": msg_len.astype(np.uint16), "pad": pad.astype(np.uint8),
        "nonce": nonce, "rank": rank.astype(np.int64),
    }
    return PacketFields(cols, apps, repairs)


# --------------------------------------------------------------------------------------------
# frames
# --------------------------------------------------------------------------------------------
_ETH = np.dtype([("dst", "u1", 6), ("src", "u1", 6), ("type", ">u2")])
_IP4 = np.dtype([("vihl", "u1"), ("tos", "u1"), ("total", ">u2"), ("id", ">u2"), ("frag", ">u2"),
                 ("ttl", "u1"), ("proto", "u1"), ("csum", ">u2"), ("src", "u1", 4), ("dst", "u1", 4)])
_IP6 = np.dtype([("vtf", ">u4"), ("plen", ">u2"), ("nh", "u1"), ("hlim", "u1"),
                 ("src", "u1", 16), ("dst", "u1", 16)])
_TCP = np.dtype([("sport", ">u2"), ("dport", ">u2"), ("seq", ">u4"), ("ack", ">u4"), ("offflags", ">u2"),
                 ("win", ">u2"), ("csum", ">u2"), ("urg", ">u2")])
_UDP = np.dtype([("sport", ">u2"), ("dport", ">u2"), ("len", ">u2"), ("csum", ">u2")])
_ICMP = np.dtype([("type", "u1"), ("code", "u1"), ("csum", ">u2"), ("id", ">u2"), ("seq", ">u2")])
_ARP = np.dtype([("htype", ">u2"), ("ptype", ">u2"), ("hlen", "u1"), ("plen", "u1"), ("op", ">u2"),
                 ("sha", "u1", 6), ("spa", "u1", 4), ("tha", "u1", 6), ("tpa", "u1", 4)])
_PROTO = {TCP: 6, UDP: 17}


def _bytes(a: np.ndarray) -> np.ndarray:
    return a.view(np.uint8).reshape(len(a), a.dtype.itemsize)


def _word_sum(b: np.ndarray) -> np.ndarray:
    """Ones-complement sum (unfolded) of each row of a (n, even width) byte matrix."""
    b = np.ascontiguousarray(b)
    return b.view(">u2").sum(axis=1, dtype=np.uint64)


def _fold(s: np.ndarray) -> np.ndarray:
    s = s.astype(np.uint64)
    for _ in range(3):
        s = (s & np.uint64(0xFFFF)) + (s >> np.uint64(16))
    return (~s & np.uint64(0xFFFF)).astype(np.uint16)


class Arena:
    """A byte buffer reused from batch to batch: touching fresh memory costs more than crafting."""

    def __init__(self):
        self.buf = np.zeros(0, np.uint8)

    def get(self, size: int) -> np.ndarray:
        if len(self.buf) < size:
            self.buf = np.zeros(int(size * 1.25) + 4096, np.uint8)
            return self.buf
        view = self.buf[:size]
        view[:] = 0  # payloads are zeros unless written
        return view


def build_frames(fields: PacketFields, *, layout: str = "pcap", payload: str = "zeros",
                 arena: Arena | None = None) -> FrameBatch:
    """Ethernet frames of ``fields`` in the given order, inside ``layout`` records (headers left blank).

    With an ``arena``, the frames live in its buffer, valid until its next use.
    """
    if payload not in PAYLOAD_MODES:
        raise NecstError(f"craft: unknown payload mode {payload!r} (use zeros or app)")
    n = len(fields)
    kp = fields["kind"].astype(np.int64)
    v6 = fields["ip_version"] == 6
    pl = fields["payload_len"]
    opt = fields["tcp_opt"].astype(np.int64)
    msg = fields["msg_len"].astype(np.int64)
    l4 = np.select([kp == TCP, kp == UDP, kp == ICMP], [TCP_LEN, UDP_LEN, ICMP_LEN], msg) + opt
    l3 = _l3_len(kp, v6)
    frame = ETH_LEN + l3 + l4 + pl + fields["pad"]  # padding: zeros after the message
    head, total = record_sizes(frame, layout)
    starts = np.concatenate([[0], np.cumsum(total)[:-1]]).astype(np.int64)
    size = int(total.sum())
    buf = arena.get(size + 64) if arena is not None else np.zeros(size + 64, np.uint8)
    off = starts + head
    payload_rows = _payload_bytes(fields, payload)

    # the payload's contribution to the transport checksum, per packet
    # TCP options are NOPs (kind 1): valid padding whatever the length; each word sums to 0x0101
    pay_sum = (opt // 2).astype(np.uint64) * np.uint64(0x0101)
    has_opt = np.flatnonzero(opt > 0)
    if len(has_opt):
        k = opt[has_opt]
        first = off[has_opt] + ETH_LEN + l3[has_opt] + TCP_LEN
        idx = np.repeat(first - (np.cumsum(k) - k), k) + np.arange(int(k.sum()))
        buf[idx] = 1
    for rows, mat in payload_rows:
        start = off[rows] + ETH_LEN + l3[rows] + l4[rows]
        w = mat.shape[1]
        buf[(start[:, None] + np.arange(w)).ravel()] = mat.ravel()
        pay_sum[rows] += _word_sum(mat)

    for ver in (4, 6):
        for k in (TCP, UDP, ICMP, ARP):
            if k == ARP and ver == 6:
                continue
            sel = np.flatnonzero((kp == k) & ((fields["ip_version"] == ver) | (k == ARP)))
            if len(sel) == 0:
                continue
            mat = _headers(fields, sel, ver, k, pay_sum[sel])
            w = mat.shape[1]
            buf[(off[sel][:, None] + np.arange(w)).ravel()] = mat.ravel()
    for k in (IGMP, EAPOL, LLC, ICMP6_CONTROL):
        sel_k = np.flatnonzero(kp == k)
        for variant in np.unique(fields["sub"][sel_k]):  # one fixed width per message variant
            sel = sel_k[fields["sub"][sel_k] == variant]
            mat = _link_frame(fields, sel, k, int(variant))
            w = mat.shape[1]
            buf[(off[sel][:, None] + np.arange(w)).ravel()] = mat.ravel()

    return FrameBatch(data=buf, offsets=off, cap_len=frame.astype(np.uint32), wire_len=frame.astype(np.uint32),
                      ts_ns=fields["ts_ns"].astype(np.int64), linktype=np.full(n, LINKTYPE_ETHERNET, np.uint16),
                      pad=64, layout=layout, record_start=0, record_end=size)


def _headers(f: PacketFields, sel: np.ndarray, ver: int, k: int, pay_sum: np.ndarray) -> np.ndarray:
    """The (m, width) header bytes (Ethernet + IP + transport, or Ethernet + ARP) of rows ``sel``."""
    m = len(sel)
    pl = f["payload_len"][sel]
    fwd = f["direction"][sel] == 0
    eth = np.zeros(m, _ETH)
    eth["src"] = f["mac_src"][sel]
    eth["dst"] = f["mac_dst"][sel]
    if k == ARP:
        eth["type"] = 0x0806
        # a request goes to the flow's destination MAC: broadcast in about half the real ARP
        # flows, the peer's own in the rest (cache refreshes); broadcast for all of them split every
        # two-way unicast flow in two, as a flow meter keys ARP by its MAC pair
        arp = np.zeros(m, _ARP)
        arp["htype"], arp["ptype"], arp["hlen"], arp["plen"] = 1, 0x0800, 6, 4
        arp["op"] = np.where(fwd, 1, 2)
        arp["sha"] = f["mac_src"][sel]
        arp["spa"] = f["ip_src"][sel][:, :4]
        arp["tha"] = np.where(fwd[:, None], 0, f["mac_dst"][sel])
        arp["tpa"] = f["ip_dst"][sel][:, :4]
        return np.hstack([_bytes(eth), _bytes(arp)])
    l4_len = {TCP: TCP_LEN, UDP: UDP_LEN, ICMP: ICMP_LEN}[k]
    seg_len = l4_len + pl + (f["tcp_opt"][sel].astype(np.int64) if k == TCP else 0)
    if ver == 4:
        proto = _PROTO.get(k, 1)
    else:
        proto = _PROTO.get(k, 58)
    src = f["ip_src"][sel][:, :4 if ver == 4 else 16]
    dst = f["ip_dst"][sel][:, :4 if ver == 4 else 16]
    # pseudo-header: addresses, protocol, transport length (IPv4: 16-bit; IPv6: 32-bit; same sum);
    # ICMP over IPv4 has none.
    pseudo = _word_sum(src) + _word_sum(dst) + np.uint64(proto) + seg_len.astype(np.uint64)
    if k == ICMP and ver == 4:
        pseudo = np.zeros(m, np.uint64)

    if k == TCP:
        t = np.zeros(m, _TCP)
        t["sport"], t["dport"] = f["sport"][sel], f["dport"][sel]
        t["seq"], t["ack"] = f["seq"][sel], f["ack"][sel]
        t["offflags"] = ((5 + f["tcp_opt"][sel].astype(np.int64) // 4) << 12) | f["tcp_flags"][sel].astype(np.int64)
        t["win"] = f["window"][sel]
    elif k == UDP:
        t = np.zeros(m, _UDP)
        t["sport"], t["dport"] = f["sport"][sel], f["dport"][sel]
        t["len"] = seg_len
    else:
        t = np.zeros(m, _ICMP)
        req, rep = (8, 0) if ver == 4 else (128, 129)
        t["type"] = np.where(fwd, req, rep)
        t["id"], t["seq"] = f["icmp_id"][sel], f["icmp_seq"][sel]
    tb = _bytes(t)
    csum = _fold(_word_sum(tb) + pseudo + pay_sum)
    if k == UDP:
        csum = np.where(csum == 0, 0xFFFF, csum)  # 0 means "no checksum" in UDP
    t["csum"] = csum

    eth["type"] = 0x0800 if ver == 4 else 0x86DD
    if ver == 4:
        ip = np.zeros(m, _IP4)
        ip["vihl"] = 0x45
        ip["total"] = IP4_LEN + seg_len
        ip["id"] = f["ip_id"][sel]
        ip["frag"] = np.where(k == TCP, 0x4000, 0)  # DF on TCP, as the common stacks set it
        ip["ttl"] = f["ttl"][sel]
        ip["proto"] = proto
        ip["src"], ip["dst"] = src, dst
        ip["csum"] = _fold(_word_sum(_bytes(ip)))
    else:
        ip = np.zeros(m, _IP6)
        ip["vtf"] = (6 << 28) | f["flow_label"][sel].astype(np.int64)
        ip["plen"] = seg_len
        ip["nh"] = proto
        ip["hlim"] = f["ttl"][sel]
        ip["src"], ip["dst"] = src, dst
    return np.hstack([_bytes(eth), _bytes(ip), _bytes(t)])


def _random_bytes(seed: np.ndarray, width: int) -> np.ndarray:
    """(m, width) bytes from one 64-bit seed per row (splitmix64): nonces and MICs look random."""
    words = -(-width // 8)
    x = seed.astype(np.uint64)[:, None] + np.arange(1, words + 1, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    x = x ^ (x >> np.uint64(31))
    return np.ascontiguousarray(x).view(np.uint8).reshape(len(seed), words * 8)[:, :width]


_IGMP_IP = np.dtype([("vihl", "u1"), ("tos", "u1"), ("total", ">u2"), ("id", ">u2"), ("frag", ">u2"),
                     ("ttl", "u1"), ("proto", "u1"), ("csum", ">u2"), ("src", "u1", 4), ("dst", "u1", 4),
                     ("ra", ">u4")])
_EAPOL_KEY = np.dtype([("version", "u1"), ("type", "u1"), ("length", ">u2"), ("desc", "u1"), ("info", ">u2"),
                       ("key_len", ">u2"), ("replay", ">u8"), ("nonce", "u1", 32), ("iv", "u1", 16),
                       ("rsc", "u1", 8), ("id", "u1", 8), ("mic", "u1", 16), ("data_len", ">u2")])


def _link_frame(f: PacketFields, sel: np.ndarray, k: int, variant: int) -> np.ndarray:
    """The whole (m, width) frame bytes (padding aside) of IGMP, EAPOL or LLC rows ``sel``, one variant."""
    m = len(sel)
    eth = np.zeros(m, _ETH)
    eth["src"], eth["dst"] = f["mac_src"][sel], f["mac_dst"][sel]
    seed = f["nonce"][sel]
    if k == ICMP6_CONTROL:
        return _icmp6_frame(f, sel, eth, variant)
    if k == LLC:  # 802.3: the type field holds the LLC PDU's length
        eth["type"] = len(LLC_XID)
        return np.hstack([_bytes(eth), _even_matrix(LLC_XID, m)[:, :len(LLC_XID)]])
    if k == IGMP:
        if variant == 0:  # v2 membership report for the group it is sent to (or SSDP's when sent to all hosts)
            dst = f["ip_dst"][sel][:, :4]
            group = np.where((dst[:, :3] == [224, 0, 0]).all(axis=1)[:, None], IGMP_GROUPS[0], dst)
            msg = np.zeros((m, 8), np.uint8)
            msg[:, 0] = 0x16
            msg[:, 4:8] = group
        else:  # v3 report: CHANGE_TO_EXCLUDE (join) records, one in four CHANGE_TO_INCLUDE (leave)
            msg = np.zeros((m, 8 + 8 * variant), np.uint8)
            msg[:, 0] = 0x22
            msg[:, 7] = variant
            start = (seed % np.uint64(3)).astype(np.int64)
            leave = (seed >> np.uint64(8)) % np.uint64(4) == 0
            for r in range(variant):
                msg[:, 8 + 8 * r] = np.where(leave, 3, 4)
                msg[:, 12 + 8 * r:16 + 8 * r] = IGMP_GROUPS[(start + r) % len(IGMP_GROUPS)]
        csum = _fold(_word_sum(msg))
        msg[:, 2], msg[:, 3] = csum >> 8, csum & 0xFF
        eth["type"] = 0x0800
        ip = np.zeros(m, _IGMP_IP)
        ip["vihl"], ip["tos"], ip["frag"], ip["ttl"], ip["proto"] = 0x46, 0xC0, 0x4000, f["ttl"][sel], 2
        ip["total"] = IGMP_IP_LEN + msg.shape[1]
        ip["id"] = f["ip_id"][sel]
        ip["src"], ip["dst"] = f["ip_src"][sel][:, :4], f["ip_dst"][sel][:, :4]
        ip["ra"] = 0x94040000  # router alert
        ip["csum"] = _fold(_word_sum(_bytes(ip)))
        return np.hstack([_bytes(eth), _bytes(ip), msg])
    # EAPOL-Key, message ``variant`` of the 4-way handshake
    eth["type"] = 0x888E
    kd = int(EAPOL_KEY_DATA[variant])
    key = np.zeros(m, _EAPOL_KEY)
    key["version"] = 2 if variant in (1, 3) else 1  # authenticators speak 802.1X-2004, many stations 2001
    key["type"], key["desc"], key["info"], key["key_len"] = 3, 2, EAPOL_KEY_INFO[variant], 16
    key["length"] = EAPOL_BODY + kd
    key["replay"] = f["rank"][sel] + 1  # messages 1 and 2 carry one value, 3 and 4 the next
    rnd = _random_bytes(seed, 32 + 16 + kd)
    if variant != 4:
        key["nonce"] = rnd[:, :32]  # ANonce (1, 3), SNonce (2); message 4 carries none
    if variant != 1:
        key["mic"] = rnd[:, 32:48]  # message 1 has no MIC
    key["data_len"] = kd
    parts = [_bytes(eth), _bytes(key)]
    if variant == 2:
        parts.append(np.broadcast_to(np.frombuffer(RSN_IE, np.uint8), (m, len(RSN_IE))))
    elif kd:
        parts.append(rnd[:, 48:48 + kd])  # wrapped (encrypted) key data
    return np.hstack(parts)


def _icmp6_frame(f: PacketFields, sel: np.ndarray, eth: np.ndarray, variant: int) -> np.ndarray:
    """Router solicitation (with the source link-layer address), neighbour solicitation (its target
    ends with the solicited-node group's 24 bits) or MLDv2 report of ``variant - MLD + 1`` records
    (change to exclude, no sources; after a hop-by-hop header with the router alert)."""
    m = len(sel)
    eth["type"] = 0x86DD
    src, dst = f["ip_src"][sel], f["ip_dst"][sel]
    if variant == RS:
        msg = np.zeros((m, 16), np.uint8)
        msg[:, 0], msg[:, 8], msg[:, 9] = 133, 1, 1
        msg[:, 10:16] = f["mac_src"][sel]
    elif variant == NS:
        msg = np.zeros((m, 24), np.uint8)
        msg[:, 0] = 135
        msg[:, 8:10] = [0xFE, 0x80]
        msg[:, 19:21] = [0xFF, 0xFE]
        msg[:, 21:24] = dst[:, 13:16]
    else:
        r = variant - MLD + 1
        msg = np.zeros((m, 8 + 20 * r), np.uint8)
        msg[:, 0], msg[:, 7] = 143, r
        for i in range(r):
            msg[:, 8 + 20 * i] = 4  # change to exclude: join
            msg[:, 12 + 20 * i:28 + 20 * i] = MLD_GROUPS[i % len(MLD_GROUPS)]
    pseudo = _word_sum(src) + _word_sum(dst) + np.uint64(58) + np.uint64(msg.shape[1])
    csum = _fold(_word_sum(msg) + pseudo)
    msg[:, 2], msg[:, 3] = csum >> 8, csum & 0xFF
    hbh = variant >= MLD
    ip = np.zeros(m, _IP6)
    ip["vtf"] = 6 << 28
    ip["plen"] = msg.shape[1] + (8 if hbh else 0)
    ip["nh"] = 0 if hbh else 58
    ip["hlim"] = f["ttl"][sel]
    ip["src"], ip["dst"] = src, dst
    parts = [_bytes(eth), _bytes(ip)]
    if hbh:
        parts.append(np.broadcast_to(np.frombuffer(HBH_ROUTER_ALERT, np.uint8), (m, 8)))
    return np.hstack(parts + [msg])


# --------------------------------------------------------------------------------------------
# application-plausible payload bytes
# --------------------------------------------------------------------------------------------
def _dns_message(length: int, response: bool) -> bytes | None:
    """A DNS message of exactly ``length`` bytes: one question whose name fills the rest."""
    name_len = length - 12 - 4  # header, qtype + qclass
    if name_len < 3:
        return None
    labels, left = [], name_len - 1  # the root label's zero
    while left > 0:
        take = min(63, left - 1)
        if take <= 0:
            return None
        labels.append(bytes([take]) + b"a" * take)
        left -= take + 1
    flags = 0x8180 if response else 0x0100
    header = np.array([0x4E53, flags, 1, 0, 0, 0], ">u2").tobytes()
    return header + b"".join(labels) + b"\x00" + b"\x00\x01\x00\x01"


def _dhcp_message(reply: bool) -> bytes:
    """BOOTP fixed part, magic cookie, DHCP message type (DISCOVER / OFFER) and end: 244 bytes."""
    head = bytes([2 if reply else 1, 1, 6, 0]) + b"NeCS" + bytes(228)
    return head + b"\x63\x82\x53\x63" + bytes([53, 1, 2 if reply else 1, 255])


_HTTP_REQUEST = b"GET / HTTP/1.1\r\nHost: example.com\r\nUser-Agent: necst\r\nAccept: */*\r\n\r\n"
_SSDP = (b"NOTIFY * HTTP/1.1\r\nHOST: 239.255.255.250:1900\r\nNTS: ssdp:alive\r\n\r\n",  # initiator
         b"HTTP/1.1 200 OK\r\nST: upnp:rootdevice\r\n\r\n")  # a reply to a search
_NTP = (bytes([0x23]) + bytes(47), bytes([0x24, 2]) + bytes(46))  # v4 client / server (stratum 2)


def _port_rows(f: PacketFields, kind: int, port: int) -> np.ndarray:
    return (f["kind"] == kind) & ((f["sport"] == port) | (f["dport"] == port))


def _payload_bytes(f: PacketFields, mode: str) -> list[tuple[np.ndarray, np.ndarray]]:
    """(rows, byte matrix) pieces written at the start of payloads, each matrix of even width.

    DNS messages fill the whole declared length; an HTTP request is written at the start of an
    http client's first payload when it fits in full (the rest stays zero, as a body); TLS
    payloads start with an application-data record header whose length covers the segment.
    """
    apps = {a: i for i, a in enumerate(f.apps)}
    app = f["app"]
    pl = f["payload_len"]
    kp = f["kind"]
    out: list[tuple[np.ndarray, np.ndarray]] = []
    # In every mode: DNS over TCP (port 53) needs its 2-byte length prefix, else Wireshark calls
    # the segment malformed; each segment carries one whole message.
    rows = np.flatnonzero((kp == TCP) & ((f["sport"] == 53) | (f["dport"] == 53)) & (pl >= 2))
    for length in np.unique(pl[rows]):
        r = rows[pl[rows] == length]
        msg = _dns_message(int(length) - 2, False) or bytes(int(length) - 2)
        out.append((r, _even_matrix(np.array([length - 2], ">u2").tobytes() + msg, len(r))))
    rows = np.flatnonzero((kp == UDP) & np.isin(f["sport"], (67, 68)) & np.isin(f["dport"], (67, 68)) & (pl >= 244))
    for reply in (False, True):
        r = rows[(f["sport"][rows] == 67) == reply]
        if len(r):
            out.append((r, _even_matrix(_dhcp_message(reply), len(r))))
    if mode != "app":
        return out
    covered = np.zeros(len(f), bool)  # one piece per packet: pieces must not overlap
    for r, _ in out:
        covered[r] = True
    for name, port in (("dns", None), ("mdns", 5353)):
        if name not in apps:
            continue
        rows = np.flatnonzero((app == apps[name]) & (kp == UDP) & (pl >= 17) & ~covered
                              & (True if port is None else _port_rows(f, UDP, port)))
        for length in np.unique(pl[rows]):
            for resp in (False, True):
                r = rows[(pl[rows] == length) & ((f["direction"][rows] == 1) == resp)]
                msg = _dns_message(int(length), resp)
                if len(r) and msg is not None:
                    out.append((r, _even_matrix(msg, len(r))))
    # SSDP (HTTP over UDP 1900) and NTP (UDP 123): a request or reply header at the start, on their port
    for name, port, least, pieces in (("ssdp", 1900, None, _SSDP), ("ntp", 123, 48, _NTP)):
        if name not in apps:
            continue
        for reply, msg in enumerate(pieces):
            rows = np.flatnonzero((app == apps[name]) & _port_rows(f, UDP, port) & (f["direction"] == reply)
                                  & (pl >= (least or len(msg) + len(msg) % 2)) & ~covered)
            if len(rows):
                out.append((rows, _even_matrix(msg, len(rows))))
    for name in ("http", "http_proxy"):
        if name in apps:
            rows = np.flatnonzero((app == apps[name]) & (kp == TCP) & (f["direction"] == 0)
                                  & f["first_in_dir"] & (pl >= len(_HTTP_REQUEST)) & ~covered)
            if len(rows):
                out.append((rows, _even_matrix(_HTTP_REQUEST, len(rows))))
    for name in ("tls", "https", "ssl"):
        if name in apps:
            rows = np.flatnonzero((app == apps[name]) & (kp == TCP) & (pl >= 6) & (pl <= 5 + (1 << 14) + 256) & ~covered)
            if len(rows):
                hdr = np.zeros((len(rows), 6), np.uint8)
                hdr[:, 0], hdr[:, 1], hdr[:, 2] = 0x17, 3, 3
                rec = (pl[rows] - 5).astype(np.int64)
                hdr[:, 3], hdr[:, 4] = rec >> 8, rec & 0xFF
                out.append((rows, hdr))
    return out


def _even_matrix(b: bytes, rows: int) -> np.ndarray:
    if len(b) % 2:
        b += b"\x00"
    return np.broadcast_to(np.frombuffer(b, np.uint8), (rows, len(b))).copy()


def craft(packets, flows, *, seed: int = 0, payload: str = "zeros", layout: str = "pcap") -> FrameBatch:
    """Plan and build whole flows at once, in time order: the one call for a batch of flows."""
    fields = plan_packets(packets, flows, seed=seed)
    return build_frames(fields.take(fields.time_order()), layout=layout, payload=payload)
