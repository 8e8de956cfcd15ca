"""Ask tshark for per-packet fields and compare them with a PacketTable, field by field.

tshark starts slowly (about 0.3 s), so captures are concatenated with `mergecap -a` into a few
pcapng files (each input keeps its own interfaces, link types and timestamp resolution) and
tshark reads each merged file once; its rows are split back per capture by capinfos' counts.
"""
from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

# our column -> tshark field per variant; the variant is chosen from OUR decode of the packet
# (IPv4 or IPv6 header, TCP or UDP), so that tshark's fields of an inner, tunnelled header are
# never compared with our outer one.
FIELDS = {
    "ts_ns": {"any": "frame.time_epoch"},
    "wire_len": {"any": "frame.len"},
    "cap_len": {"any": "frame.cap_len"},
    "eth_src": {"any": "eth.src"},
    "eth_dst": {"any": "eth.dst"},
    "vlan_id": {"any": "vlan.id"},
    "src_ip": {4: "ip.src", 6: "ipv6.src"},
    "dst_ip": {4: "ip.dst", 6: "ipv6.dst"},
    "ip_proto": {4: "ip.proto", "6plain": "ipv6.nxt"},
    "ttl": {4: "ip.ttl", 6: "ipv6.hlim"},
    "src_port": {"tcp": "tcp.srcport", "udp": "udp.srcport"},
    "dst_port": {"tcp": "tcp.dstport", "udp": "udp.dstport"},
    "tcp_flags": {"tcp": "tcp.flags"},
    "tcp_seq": {"tcp": "tcp.seq_raw"},
    "tcp_ack": {"tcp": "tcp.ack_raw"},
    "tcp_window": {"tcp": "tcp.window_size_value"},
    "icmp_type": {4: "icmp.type", 6: "icmpv6.type"},
    "icmp_code": {4: "icmp.code", 6: "icmpv6.code"},
}
TSHARK_FIELDS = sorted({f for v in FIELDS.values() for f in v.values()}
                       | {"frame.protocols", "frame.interface_id", "ipv6.nxt"})
STRING_FIELDS = {"eth_src", "eth_dst", "src_ip", "dst_ip"}


def capinfos_count(path: Path) -> tuple[int | None, bool]:
    """(packets Wireshark's reader gets from the file, whether it read the file to its end).

    (None, False) when it refuses the file outright; (N, False) when it stops at an error after
    N packets (a record cut short, a broken block): the packets before the error count.
    """
    res = subprocess.run(["capinfos", "-cM", str(path)], capture_output=True, text=True)
    m = re.search(r"error occurred after reading (\d+) packets", res.stderr)
    if m:
        return int(m.group(1)), False
    if res.returncode != 0:
        return None, False
    for line in res.stdout.splitlines():
        if line.startswith("Number of packets"):
            return int(line.split()[-1]), True
    return None, False


def tshark_rows(tshark: str, paths: list[Path], workdir: Path) -> pd.DataFrame:
    """tshark's fields for every packet of the given captures, in order (custom blocks dropped)."""
    merged = workdir / "merged.pcapng"
    subprocess.run(["mergecap", "-a", "-F", "pcapng", "-w", str(merged), *map(str, paths)],
                   check=True, capture_output=True)
    cmd = [tshark, "-n", "-r", str(merged), "-T", "fields", "-E", "separator=\t", "-E", "occurrence=f",
           "-o", "tcp.relative_sequence_numbers:FALSE",
           # necst reads the transport header where it is on the wire (the first fragment);
           # tshark would show it on the fragment that completes reassembly.
           "-o", "ip.defragment:FALSE", "-o", "ipv6.defragment:FALSE"]
    for f in TSHARK_FIELDS:
        cmd += ["-e", f]
    res = subprocess.run(cmd, capture_output=True, text=True, check=True)
    merged.unlink()
    rows = [ln.split("\t") for ln in res.stdout.splitlines()]
    df = pd.DataFrame(rows, columns=TSHARK_FIELDS, dtype=str)
    # pcapng custom blocks are records without an interface; they are not packets.
    return df[df["frame.interface_id"] != ""].reset_index(drop=True)


def _int(v: str):
    if v == "":
        return None
    return int(v, 16) if v.startswith("0x") else int(v)


def _epoch_ns(v: str):
    if v == "":
        return None
    neg = v.startswith("-")
    sec, _, frac = v.lstrip("-").partition(".")
    ns = int(sec) * 1_000_000_000 + int((frac + "000000000")[:9])
    return -ns if neg else ns


@dataclass
class Comparison:
    agree: dict = field(default_factory=dict)  # field -> packets where both decode and agree
    disagree: dict = field(default_factory=dict)  # field -> [(file, packet, ours, tshark, protocols)]
    only_ours: dict = field(default_factory=dict)  # field -> [(file, packet, ours, protocols)]
    only_tshark: dict = field(default_factory=dict)


def compare(name: str, ours: pd.DataFrame, theirs: pd.DataFrame, cmp: Comparison) -> None:
    """Add one capture's field-by-field comparison to cmp (same packet count assumed)."""
    ver = ours["ip_version"].to_numpy(dtype=float, na_value=0)
    proto = ours["ip_proto"].to_numpy(dtype=float, na_value=-1)
    variant = {
        "any": np.ones(len(ours), dtype=bool),
        4: ver == 4, 6: ver == 6,
        # IPv6 without extension headers: its next header is the upper-layer protocol
        "6plain": (ver == 6) & (ours["ip_hdr_len"].to_numpy(dtype=float, na_value=0) == 40),
        "tcp": proto == 6, "udp": proto == 17,
    }
    protos = theirs["frame.protocols"].to_numpy()
    for col, choices in FIELDS.items():
        o = ours[col].astype(object).where(ours[col].notna(), None).to_numpy()
        t = np.full(len(ours), "", dtype=object)
        decided = np.zeros(len(ours), dtype=bool)
        for key, tfield in choices.items():
            m = variant[key] & ~decided
            t[m] = theirs[tfield].to_numpy()[m]
            decided |= m
        if col == "ts_ns":
            tv = [_epoch_ns(v) for v in t]
        elif col in STRING_FIELDS:
            tv = [None if v == "" else v for v in t]
        else:
            tv = [_int(v) for v in t]
        if col == "tcp_flags":  # tshark's field also holds the 3 reserved bits
            tv = [None if v is None else v & 0x1FF for v in tv]
        ok = cmp.agree.setdefault(col, 0)
        for i, (a, b) in enumerate(zip(o, tv)):
            if a is None and b is None:
                continue
            if a is None:
                cmp.only_tshark.setdefault(col, []).append((name, i, b, protos[i]))
            elif b is None:
                cmp.only_ours.setdefault(col, []).append((name, i, a, protos[i]))
            elif (str(a) == b) if col in STRING_FIELDS else (int(a) == b):
                ok += 1
            else:
                cmp.disagree.setdefault(col, []).append((name, i, a, b, protos[i]))
        cmp.agree[col] = ok


def have_wireshark_tools() -> bool:
    return all(shutil.which(t) for t in ("tshark", "mergecap", "capinfos"))
