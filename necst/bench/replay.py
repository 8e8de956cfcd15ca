"""Real attacks replayed, and learned attacks: captures moved onto the background's hosts.

A replayed capture keeps its packets and their spacing; it is shifted to start at the
injection time and its two roles are remapped: the victim (the address most requests go to:
SYNs, UDP datagrams, ICMP echo requests) becomes the background's victim, and the attacker
(the address sending most of those requests to it) the background's insider. An attacker
sending less than a tenth of them is taken for spoofed sources, which keep their addresses
(behind the gateway's MAC). Only IPv4 packets are replayed (see :func:`remap_ipv4`).

A learned attack trains necst's generator on the attack capture itself, at a small setting,
samples as many flows as the capture holds (with its real addresses), and replays the sample
the same way: variants of the attack that no capture holds.
"""
from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from necst.bench.frames import remap_ipv4
from necst.bench.hosts import Hosts
from necst.bench.inject import Traffic
from necst.bench.scenarios import Injection
from necst.errors import NecstError

SPOOFED_SHARE = 0.1


@dataclass
class Roles:
    victim: str
    attacker: str | None  # None: spoofed sources


def roles(traffic: Traffic) -> Roles:
    t = traffic.table.select(["src_ip", "dst_ip", "ip_version", "ip_proto", "tcp_flags", "icmp_type"]).to_pandas()
    t = t[t["ip_version"] == 4]
    if t.empty:
        raise NecstError("bench: an attack capture without IPv4 packets cannot be replayed")
    fl = t["tcp_flags"].fillna(0).astype(int)
    req = ((t["ip_proto"] == 6) & ((fl & 0x12) == 0x02)) | (t["ip_proto"] == 17) | \
          ((t["ip_proto"] == 1) & (t["icmp_type"] == 8))
    r = t[req] if req.any() else t
    counts = r["dst_ip"].astype(str).value_counts()
    victim = sorted(counts.index, key=lambda a: (-int(counts[a]), a))[0]
    to_v = r[r["dst_ip"].astype(str) == victim]["src_ip"].astype(str).value_counts()
    attacker = sorted(to_v.index, key=lambda a: (-int(to_v[a]), a))[0] if len(to_v) else None
    if attacker is not None and to_v[attacker] < SPOOFED_SHARE * len(r[r["dst_ip"].astype(str) == victim]):
        attacker = None
    return Roles(victim, attacker)


def replay(traffic: Traffic, name: str, hosts: Hosts, start_ns: int, role: Roles | None = None) -> Injection:
    """``traffic`` (an attack capture) shifted to ``start_ns`` and remapped onto ``hosts``."""
    role = role or roles(traffic)
    v, a = hosts.victim(), hosts.attacker()
    mapping = {role.victim: v}
    if role.attacker is not None and role.attacker != role.victim:
        mapping[role.attacker] = a
    macs = {v: hosts.mac_of(v), a: hosts.attacker_mac()}
    ts = traffic.raw.ts_ns.astype(np.int64)
    shifted = ts - ts[0] + int(start_ns)
    fb, keep, addr = remap_ipv4(traffic.raw, mapping, macs, hosts.gateway_mac, shifted)
    if len(keep) == 0:
        raise NecstError(f"bench: {name} has no IPv4 packet to replay")
    src, dst = addr
    if role.attacker is not None:
        attacker = np.full(len(keep), a, dtype=object)
    else:  # spoofed: the source of each packet towards the victim (the destination of its replies)
        attacker = np.where(dst == v, src, dst).astype(object)
    return Injection(name, fb, attacker.astype(str), np.full(len(keep), v).astype(str),
                     {"start_ns": int(start_ns), "original_victim": role.victim,
                      "original_attacker": role.attacker or "spoofed", "packets_replayed": int(len(keep)),
                      "packets_dropped_not_ipv4": int(len(traffic) - len(keep))})


def learn(traffic: Traffic, path: Path, *, seed: int = 0, epochs: int = 3, workdir: Path | None = None):
    """A generator (packet, flow, aggregate levels) trained on one attack capture, small and fast."""
    from necst.model.bundle import GeneratorModels, level_class
    from necst.process.dataset import load_dataset, process_captures

    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        ds_dir = Path(tmp) / "dataset"
        process_captures([path], ds_dir)
        data = load_dataset(ds_dir)
        packet = level_class("packet")(seed=seed, verbose=0, epochs=epochs, min_packets=50).fit(data)
        flow = level_class("flow")(seed=seed, epochs=epochs, units=32).fit(data, packet)
        aggregate = level_class("aggregate")(seed=seed, keep_addresses=True).fit(data)
        n_flows = int(data.flows.num_rows)
    return GeneratorModels(packet=packet, flow=flow, aggregate=aggregate), n_flows


def sample_variant(models, n_flows: int, *, seed: int, start_ns: int) -> Traffic:
    from necst.generate.sampler import Sampler

    s = Sampler(models.aggregate, models.flow, models.packet, keep_addresses=True)
    from necst.bench.inject import _own

    # each batch lives in the sampler's reused buffer: copy it before the next one is made
    return Traffic.from_batches([_own(b) for b in s.batches(n_flows=n_flows, seed=seed, start_ns=int(start_ns))])
