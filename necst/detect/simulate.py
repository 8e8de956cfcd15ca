"""Small simulated PacketTables: a quiet home network, and scans / floods to splice into it.

For tests and demos of the detector without real captures; seeded, so reproducible.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa

from necst.schema import PACKET_SCHEMA

_COLS = ["ts_ns", "wire_len", "src_ip", "dst_ip", "ip_proto", "src_port", "dst_port", "tcp_flags", "file_index"]


def _table(df: pd.DataFrame) -> pa.Table:
    fields = [PACKET_SCHEMA.field(c) for c in _COLS]
    return pa.Table.from_pandas(df[_COLS], schema=pa.schema(fields), preserve_index=False)


def normal_traffic(seconds: float = 120.0, rate: float = 60.0, hosts: int = 6, seed: int = 0,
                   start_ns: int = 1_600_000_000 * 10**9) -> pa.Table:
    """Devices talking to a few servers: TCP sessions with handshakes, DNS over UDP, some ARP."""
    rng = np.random.default_rng(seed)
    n = rng.poisson(seconds * rate)
    ts = np.sort(rng.uniform(0, seconds, n))
    dev = rng.integers(0, hosts, n)
    srv = rng.integers(0, 4, n)
    kind = rng.choice(3, n, p=[0.75, 0.2, 0.05])  # tcp, udp, arp
    out = rng.random(n) < 0.5
    dev_ip = np.array([f"192.168.1.{10 + i}" for i in range(hosts)], dtype=object)
    srv_ip = np.array(["52.1.2.3", "8.8.8.8", "34.5.6.7", "192.168.1.1"], dtype=object)
    sport = 40000 + dev * 17 + srv
    dport = np.array([443, 53, 80, 8883])[srv]
    src = np.where(out, dev_ip[dev], srv_ip[srv])
    dst = np.where(out, srv_ip[srv], dev_ip[dev])
    sp = np.where(out, sport, dport).astype(float)
    dp = np.where(out, dport, sport).astype(float)
    flags = np.where(rng.random(n) < 0.05, 0x002, 0x018).astype(float)
    flags[(flags == 0x002) & ~out] = 0x012
    flags[rng.random(n) < 0.02] = 0x011
    size = np.where(kind == 0, rng.choice([66, 120, 600, 1514], n, p=[0.4, 0.3, 0.2, 0.1]),
                    np.where(kind == 1, rng.integers(70, 200, n), 60))
    proto = np.array([6.0, 17.0, np.nan])[kind]
    df = pd.DataFrame({
        "ts_ns": start_ns + (ts * 1e9).astype(np.int64), "wire_len": size.astype(np.uint32),
        "src_ip": np.where(kind == 2, None, src), "dst_ip": np.where(kind == 2, None, dst),
        "ip_proto": proto, "src_port": np.where(kind == 2, np.nan, sp),
        "dst_port": np.where(kind == 2, np.nan, dp),
        "tcp_flags": np.where(kind == 0, flags, np.nan), "file_index": 0,
    })
    return _table(df)


def attack_traffic(kind: str, seconds: float, start_ns: int, rate: float = 2000.0, seed: int = 1) -> pa.Table:
    """``syn_flood`` (spoofed sources) or ``port_scan`` (one source, many ports) against 192.168.1.10."""
    rng = np.random.default_rng(seed)
    n = max(1, int(seconds * rate))
    ts = start_ns + np.sort(rng.uniform(0, seconds * 1e9, n)).astype(np.int64)
    if kind == "syn_flood":
        src = np.array([f"10.{a}.{b}.{c}" for a, b, c in rng.integers(0, 255, (n, 3))], dtype=object)
        sp = rng.integers(1024, 65535, n)
        dp = np.full(n, 80)
    elif kind == "port_scan":
        src = np.full(n, "203.0.113.9", dtype=object)
        sp = np.full(n, 51000)
        dp = rng.permutation(np.arange(1, 65536))[:n] if n < 65535 else rng.integers(1, 65536, n)
    else:
        raise ValueError(kind)
    df = pd.DataFrame({
        "ts_ns": ts, "wire_len": np.full(n, 60, np.uint32), "src_ip": src,
        "dst_ip": np.full(n, "192.168.1.10", dtype=object), "ip_proto": 6.0,
        "src_port": sp.astype(float), "dst_port": dp.astype(float), "tcp_flags": float(0x002),
        "file_index": 0,
    })
    return _table(df)


def splice(normal: pa.Table, attack: pa.Table) -> tuple[pa.Table, np.ndarray]:
    """Merge two tables in time order; returns the table and a per-packet attack label."""
    t = pa.concat_tables([normal.select(_COLS).cast(attack.schema), attack])
    label = np.r_[np.zeros(normal.num_rows, bool), np.ones(attack.num_rows, bool)]
    order = np.argsort(t.column("ts_ns").to_numpy(), kind="stable")
    return t.take(pa.array(order)), label[order]
