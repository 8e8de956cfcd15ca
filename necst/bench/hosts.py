"""Who lives in a background capture: the hosts that attacks are addressed to and sent from.

Attacks are only credible (and only test the detector) when they hit hosts the detector has
seen: a victim that already talks on the network, an insider attacker with its own MAC,
outside addresses behind the gateway's MAC. Everything is read from the background's
PacketTable, deterministically (ties broken by address).
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from necst.errors import NecstError

_LAN = [ipaddress.ip_network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16")]
FALLBACK_GATEWAY_MAC = "02:00:5e:10:00:01"  # locally administered: no real vendor's


def is_lan(addr: str) -> bool:
    a = ipaddress.ip_address(addr)
    return a.version == 4 and any(a in n for n in _LAN)


def _unicast(addr: str) -> bool:
    a = ipaddress.ip_address(addr)
    return (a.version == 4 and not (a.is_multicast or a.is_unspecified or a.is_loopback or a.is_link_local)
            and not addr.endswith(".255") and not addr.endswith(".0"))


@dataclass
class Hosts:
    """IPv4 hosts of a background, busiest first, with their MACs and open TCP ports."""

    lan: list[str]
    external: list[str]
    mac: dict[str, str]
    gateway_mac: str
    open_tcp: dict[str, list[int]] = field(default_factory=dict)

    @classmethod
    def from_table(cls, packets: pa.Table) -> "Hosts":
        cols = ["src_ip", "dst_ip", "eth_src", "ip_version", "src_port", "tcp_flags"]
        df = packets.select(cols).to_pandas()
        df = df[(df["ip_version"] == 4) & df["src_ip"].notna() & df["eth_src"].notna()]
        if df.empty:
            raise NecstError("bench: the background has no IPv4 traffic to address attacks at")
        df = df.assign(src_ip=df["src_ip"].astype(str), eth_src=df["eth_src"].astype(str))
        sent = df.groupby("src_ip").size()
        senders = sorted(sent.index, key=lambda a: (-int(sent[a]), a))
        senders = [a for a in senders if _unicast(a)]
        mac = (df.groupby(["src_ip", "eth_src"]).size().reset_index(name="n")
               .sort_values(["src_ip", "n", "eth_src"], ascending=[True, False, True])
               .drop_duplicates("src_ip").set_index("src_ip")["eth_src"].to_dict())
        lan = [a for a in senders if is_lan(a)]
        external = [a for a in senders if not is_lan(a)]
        if not lan:
            raise NecstError("bench: the background has no LAN host (10/8, 172.16/12, 192.168/16) to attack")
        ext = df[df["src_ip"].isin(external)]
        if len(ext):
            counts = ext.groupby("eth_src").size()
            gateway = sorted(counts.index, key=lambda m: (-int(counts[m]), m))[0]
        else:
            gateway = FALLBACK_GATEWAY_MAC
        synack = df[(df["tcp_flags"].fillna(0).astype(int) & 0x12) == 0x12]
        open_tcp = {a: sorted(int(p) for p in g["src_port"].dropna().unique())
                    for a, g in synack.groupby("src_ip") if a in set(lan)}
        return cls(lan, external, {a: mac[a] for a in senders}, gateway, open_tcp)

    def mac_of(self, addr: str) -> str:
        return self.mac.get(addr, self.gateway_mac) if is_lan(addr) or addr in self.mac else self.gateway_mac

    def victim(self) -> str:
        """The busiest LAN host that accepts TCP connections (else the busiest LAN host)."""
        serving = [a for a in self.lan if self.open_tcp.get(a)]
        return serving[0] if serving else self.lan[0]

    def attacker(self) -> str:
        """An insider: the busiest LAN host other than the victim (a fresh LAN address if none)."""
        v = self.victim()
        for a in self.lan:
            if a != v:
                return a
        net = ipaddress.ip_network(f"{v}/24", strict=False)
        return str(next(h for h in net.hosts() if str(h) != v))

    def attacker_mac(self) -> str:
        a = self.attacker()
        return self.mac.get(a, "02:00:5e:10:00:66")

    def outside(self, k: int, rng: np.random.Generator) -> list[str]:
        """``k`` outside hosts: the background's own first, then fresh public addresses."""
        out = list(self.external[:k])
        while len(out) < k:
            cand = str(ipaddress.IPv4Address(int(rng.integers(0x0B000000, 0x7E000000))))
            if cand not in out:
                out.append(cand)
        return out

    def to_json(self) -> dict:
        return {"lan_hosts": len(self.lan), "external_hosts": len(self.external), "victim": self.victim(),
                "attacker": self.attacker(), "gateway_mac": self.gateway_mac}
