"""Attack scenarios: small, parameterized, seeded generators of labelled attack packets.

Each scenario takes the background's :class:`~necst.bench.hosts.Hosts`, a start time, a rate
(probes, packets or sessions per second), a duration and a seed, and returns an
:class:`Injection`: the frames (crafted by necst's own crafter, :mod:`necst.bench.frames`) and,
per packet, the attacker and victim addresses. Every packet a scenario returns is part of the
attack (replies that the attack provokes included), so labels are exact by construction.

``SCENARIOS`` maps names to (function, default rate, default duration); a ``_slow`` suffix
(low-and-slow) runs the same scenario at ``SLOW_RATE`` times its rate over ``SLOW_SPAN`` times
its duration (the slow exfiltration keeps its duration: it is slow already).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import pandas as pd

from necst.bench.frames import explicit_fields, frames, text_matrix, write_payloads
from necst.bench.hosts import Hosts
from necst.capture.writer import FrameBatch
from necst.errors import NecstError
from necst.generate.craft import PacketFields, plan_packets

FIN, SYN, RST, PSH, ACK, URG = 0x001, 0x002, 0x004, 0x008, 0x010, 0x020
NS = 1_000_000_000
SLOW_RATE, SLOW_SPAN = 0.02, 5.0
# UDP ports with no Wireshark dissector that reads a datagram of zeros as a protocol message
UDP_FLOOD_PORTS = np.arange(40000, 41000)


@dataclass
class Injection:
    """Attack frames in time order, with per-packet attacker and victim addresses."""

    name: str
    frames: FrameBatch
    attacker: np.ndarray
    victim: np.ndarray
    params: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.frames)

    @property
    def start_ns(self) -> int:
        return int(self.frames.ts_ns[0]) if len(self) else 0


class _Builder:
    """Collects parts (PacketFields) with their labels and payload texts, then crafts them once."""

    def __init__(self):
        self.parts: list[PacketFields] = []
        self.attacker: list[np.ndarray] = []
        self.victim: list[np.ndarray] = []
        self.pieces: list[tuple[np.ndarray, np.ndarray]] = []
        self.n = 0

    def add(self, f: PacketFields, attacker, victim, pieces=()) -> None:
        m = len(f)
        self.parts.append(f)
        self.attacker.append(np.broadcast_to(np.asarray(attacker, dtype=object), (m,)))
        self.victim.append(np.broadcast_to(np.asarray(victim, dtype=object), (m,)))
        for rows, mat in pieces:
            if len(rows):
                self.pieces.append((np.asarray(rows, np.int64) + self.n, mat))
        self.n += m

    def finish(self, name: str, params: dict) -> Injection:
        if self.n == 0:
            raise NecstError(f"bench: scenario {name} gives no packets (rate or duration too small)")
        f = PacketFields.concat(self.parts)
        order = np.lexsort((np.arange(len(f)), f["ts_ns"]))
        f = f.take(order)
        fb = frames(f)
        inv = np.empty(len(order), np.int64)
        inv[order] = np.arange(len(order))
        for rows, mat in self.pieces:
            write_payloads(fb, f, inv[rows], mat)
        return Injection(name, fb, np.concatenate(self.attacker)[order].astype(str),
                         np.concatenate(self.victim)[order].astype(str), params)


def _times(rng, start_ns: int, rate: float, duration_s: float) -> np.ndarray:
    """Event times at ``rate`` per second over ``duration_s`` (at least one), with jitter."""
    n = max(1, int(round(rate * duration_s)))
    gap = NS / rate
    return (start_ns + np.arange(n) * gap + rng.uniform(0, 0.2, n) * gap).astype(np.int64)


def _rtt(rng, n, lan=True) -> np.ndarray:
    lo, hi = (200_000, 900_000) if lan else (15_000_000, 40_000_000)
    return rng.integers(lo, hi, n)


def _ports(h: Hosts, victim: str, n: int, rng) -> np.ndarray:
    """Ports probed: the victim's open ones among the first 1024, then random others, shuffled."""
    open_ = [p for p in h.open_tcp.get(victim, []) if p > 0]
    rest = np.setdiff1d(np.arange(1, 1025), open_)
    pool = np.concatenate([open_, rng.permutation(rest),
                           rng.permutation(np.setdiff1d(np.arange(1025, 65536), open_))])
    return rng.permutation(pool[:n].astype(np.int64))


def _base(h: Hosts):
    v, a = h.victim(), h.attacker()
    return v, a, h.mac_of(v), h.attacker_mac()


# --------------------------------------------------------------------------------------------
# scans
# --------------------------------------------------------------------------------------------
def _tcp_scan(h: Hosts, start_ns, rate, duration_s, seed, how: str) -> _Builder:
    rng = np.random.default_rng(seed)
    v, a, vmac, amac = _base(h)
    t = _times(rng, start_ns, rate, duration_s)
    n = len(t)
    dport = _ports(h, v, n, rng)
    is_open = np.isin(dport, h.open_tcp.get(v, []))
    sport = np.full(n, int(rng.integers(32768, 61000))) if how != "connect" else \
        (int(rng.integers(32768, 50000)) + np.arange(n)) % 28000 + 32768
    seq = rng.integers(0, 1 << 32, n)
    rseq = rng.integers(0, 1 << 32, n)
    r1 = t + _rtt(rng, n)
    r2 = r1 + _rtt(rng, n)
    b = _Builder()
    probe_flags = FIN | PSH | URG if how == "xmas" else SYN
    common = dict(kind="tcp", ip_id=rng.integers(0, 1 << 16, n))
    b.add(explicit_fields(n, ts_ns=t, src_ip=a, dst_ip=v, src_mac=amac, dst_mac=vmac, sport=sport, dport=dport,
                          tcp_flags=probe_flags, seq=seq, window=1024 if how != "connect" else 64240, **common), a, v)
    closed = np.flatnonzero(~is_open)
    consumed = 1  # SYN and FIN each take one sequence number
    b.add(explicit_fields(len(closed), kind="tcp", ts_ns=r1[closed], src_ip=v, dst_ip=a, src_mac=vmac, dst_mac=amac,
                          sport=dport[closed], dport=sport[closed], tcp_flags=RST | ACK, seq=0,
                          ack=seq[closed] + consumed, window=0, direction=1), a, v)
    op = np.flatnonzero(is_open)
    if how != "xmas" and len(op):
        b.add(explicit_fields(len(op), kind="tcp", ts_ns=r1[op], src_ip=v, dst_ip=a, src_mac=vmac, dst_mac=amac,
                              sport=dport[op], dport=sport[op], tcp_flags=SYN | ACK, seq=rseq[op], ack=seq[op] + 1,
                              window=65160, direction=1), a, v)
        if how == "syn":  # the scanner's kernel resets the half-open connection
            b.add(explicit_fields(len(op), kind="tcp", ts_ns=r2[op], src_ip=a, dst_ip=v, src_mac=amac, dst_mac=vmac,
                                  sport=sport[op], dport=dport[op], tcp_flags=RST, seq=seq[op] + 1, window=0), a, v)
        else:  # connect: complete the handshake, then close with a reset
            b.add(explicit_fields(len(op), kind="tcp", ts_ns=r2[op], src_ip=a, dst_ip=v, src_mac=amac, dst_mac=vmac,
                                  sport=sport[op], dport=dport[op], tcp_flags=ACK, seq=seq[op] + 1,
                                  ack=rseq[op] + 1, window=502), a, v)
            b.add(explicit_fields(len(op), kind="tcp", ts_ns=r2[op] + 50_000, src_ip=a, dst_ip=v, src_mac=amac,
                                  dst_mac=vmac, sport=sport[op], dport=dport[op], tcp_flags=RST | ACK, seq=seq[op] + 1,
                                  ack=rseq[op] + 1, window=502), a, v)
    return b


def syn_scan(h, start_ns, rate, duration_s, seed):
    return _tcp_scan(h, start_ns, rate, duration_s, seed, "syn")


def connect_scan(h, start_ns, rate, duration_s, seed):
    return _tcp_scan(h, start_ns, rate, duration_s, seed, "connect")


def xmas_scan(h, start_ns, rate, duration_s, seed):
    return _tcp_scan(h, start_ns, rate, duration_s, seed, "xmas")


def udp_scan(h, start_ns, rate, duration_s, seed):
    """Empty datagrams to many ports; no replies (a filtering victim: nmap's open|filtered)."""
    rng = np.random.default_rng(seed)
    v, a, vmac, amac = _base(h)
    t = _times(rng, start_ns, rate, duration_s)
    b = _Builder()
    b.add(explicit_fields(len(t), kind="udp", ts_ns=t, src_ip=a, dst_ip=v, src_mac=amac, dst_mac=vmac,
                          sport=int(rng.integers(32768, 61000)), dport=_ports(h, v, len(t), rng), ttl=48,
                          ip_id=rng.integers(0, 1 << 16, len(t))), a, v)
    return b


def icmp_sweep(h, start_ns, rate, duration_s, seed):
    """Echo requests to every LAN host in turn (sweep after sweep); each host answers."""
    rng = np.random.default_rng(seed)
    a, amac = h.attacker(), h.attacker_mac()
    targets = np.array([x for x in h.lan if x != a] or [h.victim()], dtype=object)
    t = _times(rng, start_ns, rate, duration_s)
    n = len(t)
    tgt = targets[np.arange(n) % len(targets)]
    tmac = np.array([h.mac_of(x) for x in targets], dtype=object)[np.arange(n) % len(targets)]
    ident, seq = int(rng.integers(0, 1 << 16)), np.arange(n) // len(targets) + 1
    b = _Builder()
    b.add(explicit_fields(n, kind="icmp", ts_ns=t, src_ip=a, dst_ip=tgt, src_mac=amac, dst_mac=tmac, icmp_id=ident,
                          icmp_seq=seq, payload_len=0, ip_id=rng.integers(0, 1 << 16, n)), a, tgt)
    b.add(explicit_fields(n, kind="icmp", ts_ns=t + _rtt(rng, n), src_ip=tgt, dst_ip=a, src_mac=tmac, dst_mac=amac,
                          icmp_id=ident, icmp_seq=seq, direction=1, ip_id=rng.integers(0, 1 << 16, n)), a, tgt)
    return b


# --------------------------------------------------------------------------------------------
# floods
# --------------------------------------------------------------------------------------------
def syn_flood(h, start_ns, rate, duration_s, seed):
    """SYNs from spoofed outside addresses to one open port; the victim answers each with SYN/ACK."""
    rng = np.random.default_rng(seed)
    v = h.victim()
    vmac, gw = h.mac_of(v), h.gateway_mac
    t = _times(rng, start_ns, rate, duration_s)
    n = len(t)
    src = np.array([f"{x >> 24}.{(x >> 16) & 255}.{(x >> 8) & 255}.{x & 255}"
                    for x in rng.integers(0x0B000001, 0x7E000000, n)], dtype=object)
    port = (h.open_tcp.get(v) or [80])[0]
    sport = rng.integers(1024, 65536, n)
    seq, rseq = rng.integers(0, 1 << 32, n), rng.integers(0, 1 << 32, n)
    b = _Builder()
    b.add(explicit_fields(n, kind="tcp", ts_ns=t, src_ip=src, dst_ip=v, src_mac=gw, dst_mac=vmac, sport=sport,
                          dport=port, tcp_flags=SYN, seq=seq, window=512, ttl=rng.integers(40, 250, n),
                          ip_id=rng.integers(0, 1 << 16, n)), src, v)
    b.add(explicit_fields(n, kind="tcp", ts_ns=t + rng.integers(30_000, 200_000, n), src_ip=v, dst_ip=src,
                          src_mac=vmac, dst_mac=gw, sport=port, dport=sport, tcp_flags=SYN | ACK, seq=rseq,
                          ack=seq + 1, window=65160, direction=1), src, v)
    return b


def udp_flood(h, start_ns, rate, duration_s, seed):
    """512-byte datagrams from the insider to random high ports of the victim."""
    rng = np.random.default_rng(seed)
    v, a, vmac, amac = _base(h)
    t = _times(rng, start_ns, rate, duration_s)
    b = _Builder()
    b.add(explicit_fields(len(t), kind="udp", ts_ns=t, src_ip=a, dst_ip=v, src_mac=amac, dst_mac=vmac,
                          sport=int(rng.integers(32768, 39999)), dport=rng.choice(UDP_FLOOD_PORTS, len(t)),
                          payload_len=512, ip_id=np.arange(len(t)) + int(rng.integers(0, 1 << 16))), a, v)
    return b


def dns_response(length: int, qid: int = 0x1234) -> bytes:
    """A DNS response of exactly ``length`` bytes: one ANY question, TXT answers filling the rest."""
    head = np.array([qid, 0x8180, 1, 0, 0, 0], ">u2")
    q = b"\x07example\x03org\x00" + b"\x00\xff\x00\x01"
    rest = length - 12 - len(q)
    if rest < 13:
        raise NecstError("bench: a DNS response needs at least 42 bytes")
    answers = []
    while rest > 0:
        size = min(rest, 12 + 256)  # a record with one character-string of up to 255 bytes
        if 0 < rest - size < 13:
            size = rest - 13
        text = size - 12 - 1
        answers.append(b"\xc0\x0c\x00\x10\x00\x01\x00\x00\x0e\x10" + np.array([text + 1], ">u2").tobytes()
                       + bytes([text]) + b"v=spf1 " * (text // 7) + b"a" * (text % 7))
        rest -= size
    head[3] = len(answers)
    return head.tobytes() + q + b"".join(answers)


def dns_amplification(h, start_ns, rate, duration_s, seed):
    """Large DNS answers from outside resolvers to the victim, which never asked (reflection)."""
    rng = np.random.default_rng(seed)
    v = h.victim()
    vmac, gw = h.mac_of(v), h.gateway_mac
    refl = np.array(h.outside(5, rng), dtype=object)
    t = _times(rng, start_ns, rate, duration_s)
    n = len(t)
    src = refl[rng.integers(0, len(refl), n)]
    size = 1400
    b = _Builder()
    f = explicit_fields(n, kind="udp", ts_ns=t, src_ip=src, dst_ip=v, src_mac=gw, dst_mac=vmac, sport=53,
                        dport=int(rng.integers(1024, 65536)), payload_len=size, ttl=rng.integers(40, 60, n),
                        ip_id=rng.integers(0, 1 << 16, n))
    msg = dns_response(size)
    b.add(f, src, v, [(np.arange(n), text_matrix([msg] * n))])
    return b


# --------------------------------------------------------------------------------------------
# sessions (whole TCP conversations, planned by the crafter's TCP state machine)
# --------------------------------------------------------------------------------------------
def _sessions(b: _Builder, h: Hosts, client: str, server: str, cmac: str, smac: str, sport0: int, dport: int,
              starts: np.ndarray, template: list[tuple[int, int, float, bytes | int]], seed: int,
              attacker, victim, variable: dict[int, np.ndarray] | None = None) -> None:
    """Sessions following ``template`` rows (direction, flags, gap after the previous s, text or length).

    ``variable`` maps a template row to an (n_sessions, width) byte matrix replacing its text.
    """
    k, n = len(template), len(starts)
    d = np.array([r[0] for r in template])
    fl = np.array([r[1] for r in template])
    off = np.cumsum([int(r[2] * NS) for r in template])
    plen = np.array([r[3] if isinstance(r[3], int) else len(r[3]) for r in template])
    variable = variable or {}
    for j, mat in variable.items():
        plen[j] = mat.shape[1]
    rng = np.random.default_rng(seed)
    jitter = np.cumsum(rng.integers(0, 300_000, (n, k)), axis=1)
    packets = pd.DataFrame({"flow": np.repeat(np.arange(n), k), "pos": np.tile(np.arange(k), n),
                            "ts_ns": (starts[:, None] + off[None, :] + jitter).ravel(),
                            "direction": np.tile(d, n), "tcp_flags": np.tile(fl, n),
                            "payload_len": np.tile(plen, n)})
    sports = (sport0 + np.arange(n)) % 28000 + 32768
    flows = pd.DataFrame({"kind": "tcp", "src_ip": client, "dst_ip": server, "src_mac": cmac, "dst_mac": smac,
                          "src_port": sports, "dst_port": dport, "ttl_src": 64, "ttl_dst": 64,
                          "win_src": 502, "win_dst": 509}, index=np.arange(n))
    f = plan_packets(packets, flows, seed=seed)
    if f.repairs.get("handshake_inserted") or f.repairs.get("flags_changed") or f.repairs.get("payload_zeroed"):
        raise NecstError(f"bench: a session template is not a valid TCP conversation ({f.repairs})")
    pieces = []
    for j, r in enumerate(template):
        rows = np.arange(n) * k + j
        if j in variable:
            pieces.append((rows, variable[j]))
        elif isinstance(r[3], bytes) and r[3]:
            pieces.append((rows, text_matrix([r[3]] * n)))
    b.add(f, attacker, victim, pieces)


def _ssh_packet(msg: int, size: int) -> bytes:
    """An unencrypted SSH binary packet of ``size`` bytes: KEXINIT with empty lists, or IGNORE."""
    body = bytes([msg]) + (bytes(61) if msg == 20 else np.array([size - 18], ">u4").tobytes() + bytes(size - 18))
    pad = size - 4 - 1 - len(body)
    if pad < 4:
        raise NecstError("bench: SSH packet too small")
    return np.array([size - 4], ">u4").tobytes() + bytes([pad]) + body + bytes(pad)


def ssh_bruteforce(h, start_ns, rate, duration_s, seed, attempts: int = 3):
    """Many short SSH sessions: banners, key exchange offers, a few failed password rounds, close."""
    rng = np.random.default_rng(seed)
    v, a, vmac, amac = _base(h)
    starts = _times(rng, start_ns, rate, duration_s)
    c, s = 0, 1
    tpl = [(c, SYN, 0, 0), (s, SYN | ACK, 0.0005, 0), (c, ACK, 0.0005, 0),
           (s, PSH | ACK, 0.004, b"SSH-2.0-OpenSSH_7.4\r\n"), (c, PSH | ACK, 0.001, b"SSH-2.0-OpenSSH_8.2p1 Ubuntu\r\n"),
           (s, PSH | ACK, 0.002, _ssh_packet(20, 256)), (c, PSH | ACK, 0.002, _ssh_packet(20, 128))]
    for _ in range(attempts):
        tpl += [(c, PSH | ACK, 0.05, _ssh_packet(2, 96)), (s, PSH | ACK, 0.3, _ssh_packet(2, 64))]
    tpl += [(c, FIN | ACK, 0.01, 0), (s, FIN | ACK, 0.0005, 0), (c, ACK, 0.0005, 0)]
    b = _Builder()
    _sessions(b, h, a, v, amac, vmac, int(rng.integers(0, 28000)), 22, starts, tpl, seed, a, v)
    return b


def ftp_bruteforce(h, start_ns, rate, duration_s, seed, attempts: int = 3):
    """Many short FTP sessions: greeting, USER / PASS / 530 a few times, QUIT."""
    rng = np.random.default_rng(seed)
    v, a, vmac, amac = _base(h)
    starts = _times(rng, start_ns, rate, duration_s)
    n = len(starts)
    c, s = 0, 1
    tpl = [(c, SYN, 0, 0), (s, SYN | ACK, 0.0005, 0), (c, ACK, 0.0005, 0),
           (s, PSH | ACK, 0.003, b"220 (vsFTPd 3.0.3)\r\n")]
    variable = {}
    letters = np.frombuffer(b"abcdefghijklmnopqrstuvwxyz0123456789", np.uint8)
    for _ in range(attempts):
        tpl += [(c, PSH | ACK, 0.01, b"USER admin\r\n"), (s, PSH | ACK, 0.001, b"331 Please specify the password.\r\n")]
        pw = letters[rng.integers(0, len(letters), (n, 8))]
        variable[len(tpl)] = np.hstack([text_matrix([b"PASS "] * n), pw, text_matrix([b"\r\n"] * n)])
        tpl += [(c, PSH | ACK, 0.01, 0), (s, PSH | ACK, 0.5, b"530 Login incorrect.\r\n")]
    tpl += [(c, PSH | ACK, 0.01, b"QUIT\r\n"), (s, PSH | ACK, 0.001, b"221 Goodbye.\r\n"),
            (s, FIN | ACK, 0.0002, 0), (c, FIN | ACK, 0.0005, 0), (s, ACK, 0.0005, 0)]
    b = _Builder()
    _sessions(b, h, a, v, amac, vmac, int(rng.integers(0, 28000)), 21, starts, tpl, seed, a, v, variable)
    return b


def slow_exfiltration(h, start_ns, rate, duration_s, seed, segment: int = 1400):
    """One long upload from a LAN host to an outside host (TLS records), ``rate`` segments per second."""
    rng = np.random.default_rng(seed)
    v = h.victim()
    vmac, gw = h.mac_of(v), h.gateway_mac
    dst = h.outside(1, rng)[0]
    t = _times(rng, start_ns, rate, duration_s)
    m = len(t)
    # handshake, then (data, ACK) pairs, then the close
    d = np.r_[0, 1, 0, np.tile([0, 1], m), 0, 1, 0]
    fl = np.r_[SYN, SYN | ACK, ACK, np.tile([PSH | ACK, ACK], m), FIN | ACK, FIN | ACK, ACK]
    pl = np.r_[0, 0, 0, np.tile([segment, 0], m), 0, 0, 0]
    rtt = _rtt(rng, 1, lan=False)[0]
    data_t = np.repeat(t, 2) + np.tile([0, rtt], m)
    ts = np.r_[t[0] - 2 * rtt, t[0] - rtt, t[0] - rtt + 100_000, data_t, t[-1] + 2 * rtt, t[-1] + 3 * rtt,
               t[-1] + 4 * rtt]
    packets = pd.DataFrame({"flow": 0, "pos": np.arange(len(d)), "ts_ns": ts, "direction": d, "tcp_flags": fl,
                            "payload_len": pl})
    flows = pd.DataFrame({"kind": ["tcp"], "src_ip": [v], "dst_ip": [dst], "src_mac": [vmac], "dst_mac": [gw],
                          "src_port": [int(rng.integers(32768, 61000))], "dst_port": [443], "ttl_src": [64],
                          "ttl_dst": [52], "win_src": [502], "win_dst": [1024]})
    f = plan_packets(packets, flows, seed=seed)
    rows = np.flatnonzero(pl > 0)
    hdr = np.array([0x17, 3, 3, (segment - 5) >> 8, (segment - 5) & 0xFF], np.uint8)
    b = _Builder()
    b.add(f, dst, v, [(rows, np.broadcast_to(hdr, (len(rows), 5)).copy())])
    return b


Scenario = Callable[..., _Builder]
# name -> (generator, default rate per second, default duration in seconds)
SCENARIOS: dict[str, tuple[Scenario, float, float]] = {
    "syn_scan": (syn_scan, 100.0, 10.0),
    "connect_scan": (connect_scan, 100.0, 10.0),
    "udp_scan": (udp_scan, 50.0, 20.0),
    "xmas_scan": (xmas_scan, 100.0, 10.0),
    "syn_flood": (syn_flood, 500.0, 10.0),
    "udp_flood": (udp_flood, 500.0, 10.0),
    "icmp_sweep": (icmp_sweep, 10.0, 10.0),
    "ssh_bruteforce": (ssh_bruteforce, 2.0, 30.0),
    "ftp_bruteforce": (ftp_bruteforce, 2.0, 30.0),
    "dns_amplification": (dns_amplification, 300.0, 10.0),
    "slow_exfiltration": (slow_exfiltration, 1.0, 240.0),
}


def scenario_names(slow: bool = True) -> list[str]:
    names = list(SCENARIOS)
    return names + [f"{n}_slow" for n in names] if slow else names


def defaults(name: str) -> tuple[Scenario, float, float]:
    """(generator, rate, duration) of a scenario name, ``_slow`` variants included."""
    base = name[:-5] if name.endswith("_slow") else name
    if base not in SCENARIOS:
        raise NecstError(f"unknown scenario {name!r}; choose from {', '.join(scenario_names())}")
    fn, rate, dur = SCENARIOS[base]
    if name.endswith("_slow"):
        rate *= SLOW_RATE
        if base != "slow_exfiltration":
            dur *= SLOW_SPAN
    return fn, rate, dur


def make(name: str, hosts: Hosts, start_ns: int, *, seed: int = 0, intensity: float = 1.0,
         duration_s: float | None = None) -> Injection:
    """Scenario ``name`` at ``intensity`` times its default rate, starting at ``start_ns``."""
    fn, rate, dur = defaults(name)
    if intensity <= 0:
        raise NecstError("bench: intensity must be positive")
    dur = dur if duration_s is None else duration_s
    params = {"rate_per_s": rate * intensity, "duration_s": dur, "intensity": intensity, "seed": seed,
              "start_ns": int(start_ns)}
    return fn(hosts, int(start_ns), rate * intensity, dur, seed).finish(name, params)
