"""The aggregate level: which flows a capture holds, when they start, and who talks to whom.

Three parts, all fitted from a dataset's FlowTable (and, for hosts' TTL and window, its
PacketTable):

- **Flow attributes.** Flows are grouped by (kind, application, craftable kind: tcp, udp, icmp,
  arp, ...); each group keeps its histogram of packets per flow (the count conditions the flow
  model, and small counts are discrete: 30 % of TCP flows have exactly 11 packets), and a
  Gaussian mixture over the logarithms of (packets, bytes, duration) (components chosen by BIC,
  at most ``max_components``). A plan draws (group, packet count) cells systematically, so each
  comes in its share up to rounding (independent draws let the few long flows, a quarter of the
  packets, vary by 30 % from seed to seed), then bytes and duration from the mixture
  conditioned on the count, clipped to the group's observed range. Bundles from before the
  histograms draw all three from the mixture, the group by its share.
- **Start times** (``start_model="sessions"``, the default). The capture is cut into sessions
  at silences over ``session_gap_s`` (the iot_sentinel training part: 41 captures over 147
  days); a plan (``session_order="calendar"``, the default) takes every session in calendar
  order, each with its share of the flows asked for, with the learned silences between them,
  scaled so the capture's mean rate (flows over its whole span) is kept exactly; inside a
  session, flows come in that session's own bursts (runs without a gap over ``burst_gap_s``: a
  device waking up for DNS, TLS and NTP together), each whole with its flows' learned offsets,
  the gaps between bursts drawn from the session's own, and each start goes to a planned flow
  like the one it held (same group, ranked by packets). So the plan is busy when the capture
  was, compressed or stretched to the flows asked for. (Bundles from before bursts draw each
  gap between flow starts from the session's own: 13 % more seconds with packets, at fewer
  packets each, packets_per_s_emd 2.8-3.4x the floor.) Replaying the calendar
  from its start instead put the first 4,557 flows over 129 days of a sparse start, half the
  rate (per-second metrics 13-21x the floor); ``session_order="random"`` (bundles from session
  3) strings whole sessions in random order, which keeps each session but not the calendar's
  shape (arrival-time EMD 2.4-3.3x the floor, against about 1x). ``start_model="curve"`` (bundles from before) replays
  the calendar: the capture's flow-start rate per bin (bins of at least one second, at most
  ``max_bins`` of them) is replayed, tiled when more time is asked for than was seen, and
  scaled by ``rate_scale``; inside a bin, flows come as a burst from where the real activity
  in that bin began, with gaps
  drawn from the real gaps between successive starts (those shorter than a bin), which keeps
  the burstiness. ``max_silence_s`` (off by default) shrinks longer silences, such as the days
  between captures, to the median gap, to replay active time rather than the calendar.
- **Hosts.** Every address seen, with its popularity as source and destination, its MAC,
  TTL and TCP window (medians of what it sent; the window of its SYNs where it sent any, since
  crafted SYNs negotiate no window scaling); and, per flow group, the (source, destination,
  destination port) triples with their counts. By default addresses are pseudonymised while
  keeping structure: each real /24 (IPv6: /64) maps to a fresh one of the same class (local
  ranges to 10.0.0.0/8 or fd00::/8, remote to 198.18.0.0/15 then 100.64.0.0/10 or 2001:db8::/32,
  link-local stays link-local), hosts keep their popularity rank inside it, and multicast,
  broadcast and unspecified addresses stay as they are. ``keep_addresses=True`` reuses the real
  addresses and MACs.

Flows whose kind cannot be crafted (``noflow`` other than ICMP, IGMP, ARP, EAPOL and 802.3 LLC
frames) are left out; their share is kept in ``unsupported_share_``.
"""
from __future__ import annotations

import ipaddress
from pathlib import Path

import numpy as np
import pandas as pd

from necst.errors import DatasetError, NecstError

PREFIX = "aggregate_"
EPHEMERAL_LO, EPHEMERAL_HI = 32768, 65535
LINUX_EPHEMERAL_HI = 60999
# per host: share of flows from low ports, low range, high range (hosts never seen opening a flow)
DEFAULT_PORT_RANGES = (0.0, 1024, 4999, EPHEMERAL_LO, LINUX_EPHEMERAL_HI)
MIN_PORT_SPAN = 1024  # a host's ports count up over at least this many before a 4-tuple comes back
SEPARATE_MAX_S = 300.0  # flows a meter would key alike: the longest extent counted on (_separate_keys)
SESSION_GAP_LEVELS = 21  # quantiles of each session's gaps between flow starts
# Ports that Wireshark 4.0 dissects by number (`tshark -G decodes`, tcp.port and udp.port): a
# port among them makes Wireshark read the flow as that protocol (GSM IPA on 4249, TFTP on 69,
# say) and call its zero payloads malformed, so ephemeral ports skip them, and so do flows whose
# application we cannot write (``undissected``).
_DISSECTOR_PORTS = (
    "7 13 19-23 25 37 42-43 49 53 67-70 79-80 88 102 104 110-111 119 123 137-139 143 161-162 173 "
    "177 179 199 210 213 269 319-320 323-324 389 427 434 443 445 464-465 473 496 500 502 512-515 "
    "520-521 524-525 539 546-548 554 564 573 587 623 631 636 639 646-647 654 664 674 698-699 701 "
    "705 750 802 829 853-854 862 873 910 921 925 988 993 995 1001 "
    "1044 1052 1069 1080 1089-1091 1099 1101-1102 1113 1153 1194 1213 1293 1300 1344 1433 1521 1533 "
    "1547 1628-1629 1645-1646 1700-1701 1718-1719 1723 1745 1755 1812-1813 1861 1863 1883 1900 1935 "
    "1978-1979 1985 1998 2000-2001 2029 2048 2055 2065 2067 2099 2123 2126 2152 2157 2190 2221-2222 "
    "2231 2234 2240 2246 2268-2269 2313 2321-2322 2345 2401 2404 2424 2427-2428 2433 2443 2501-2502 "
    "2571 2575 2600 2710 2727 2812 2855 2869 2887 2944-2945 2948-2949 2960 3000 3002-3003 3006 3014 "
    "3016-3019 3050 3121 3128 3130 3132 3205 3222 3245-3252 3268 3288 3306 3333-3334 3343 3357 3369 "
    "3386 3389 3452 3455 3478 3483 3496 3503 3540 3544 3567 3622 3632 3671 3689 3724 3784-3785 3792 "
    "3799 3804 3819 3860 3863 3868 3918 3956 4000 4002 4011 4058 4155 4189 4222-4224 4249-4250 "
    "4305-4307 4321 4341-4342 4369 4420 4500 4533-4534 4551 4555-4556 4569 4661-4663 4665 4672 "
    "4712-4713 4729-4730 4737 4739 4754 4784 4788-4791 4840 4880 4991 5000-5001 5010 5031 5050 "
    "5060-5061 5066 5072 5084 5094 5190 5222 5246-5247 5253 5264-5265 5350-5351 5353 5355 5404-5405 "
    "5432 5436 5445 5500-5501 5534 5555 5567 5671-5672 5678 5683-5684 5701 5721 5868 5900-5901 5985 "
    "5997 6000-6063 6068 6073 6075 6081 6084 6087 6118 6121 6160 6343 6346 6379 6417 6543 6635 6653 "
    "6666-6668 6696 6784 6881-6889 6970 7000-7010 7021 7074-7075 7171-7172 7236 7255 7275-7276 7784 "
    "7871 7890 7900 7911 7930 8000 8004 8009-8010 8023 8074 8080 8085 8088 8116 8161 8200 8211 8554 "
    "8567 8600 8611-8614 8755 8767 8805 8848 8883 9000 9003 9009 9042 9092 9168 9200-9203 9214 9300 "
    "9418 9600 9875 9877 9899 9901 9955-9956 9996 9999-10000 10253 10288 10500 11207 11210-11211 "
    "11273 11371 11898 12000-12004 12220 12222-12223 13400 13819 13907 13910 14001 15740 17220 17500 "
    "17754-17756 18246 19006 19042-19043 19132 19506 19543 19788 19948 19999-20000 20256 20561 21064 "
    "22222 23272 24576-24577 24800 25826 26000 27017 27036 27500 27910 27950-27953 27960-27963 29418 "
    "30000-30200 32000 32512 34962 34980 37008 41170 44321-44322 44818 45564 47000 47808 48049 48898 "
    "49999 54328 56000-56001 56500-56501 57000-57001 57032-57033 57500-57501 57532-57533 59000-59001 "
    "59032-59033 59500-59501 59532-59533 60001 "
)


def undissected(ports: np.ndarray) -> np.ndarray:
    """Each port tshark dissects by number as a protocol we have no label for, moved to the next
    port it does not dissect (others unchanged).

    For flows whose application we cannot write: their payload is zeros (or bytes of no known
    protocol), which such a dissector reads as a malformed message (A21 on UDP 23272 and TFTP
    on 69 in the IoT Sentinel captures). Ports of our own applications stay: an NTP flow whose
    bytes failed the NTP check is still an NTP flow, and zeros there are tested valid. Flows
    that shared a port still share one (neighbouring dissector ports may land on the same free
    port). About 1% of the IoT Sentinel flows are concerned.
    """
    from necst.process.apps import LABELLED_PORTS

    p = np.asarray(ports, dtype=np.int64)
    hit = (p > 0) & np.isin(p, DISSECTOR_PORTS) & ~np.isin(p, LABELLED_PORTS)
    if not hit.any():
        return p
    i = np.minimum(np.searchsorted(FREE_PORTS, p[hit]), len(FREE_PORTS) - 1)
    out = p.copy()
    out[hit] = FREE_PORTS[i]
    return out


def _dissector_ports() -> np.ndarray:
    out = []
    for part in "".join(_DISSECTOR_PORTS).split():
        a, _, b = part.partition("-")
        out.extend(range(int(a), int(b or a) + 1))
    return np.array(out, np.int64)


DISSECTOR_PORTS = _dissector_ports()
# the other ports, in order: the k-th free port at or after port p is FREE_PORTS[p - #dissector ports below p + k]
FREE_PORTS = np.setdiff1d(np.arange(1 << 16, dtype=np.int64), DISSECTOR_PORTS)


def _craft_kind(kind: np.ndarray, proto: np.ndarray, ethertype: np.ndarray) -> np.ndarray:
    out = np.full(len(kind), "", object)
    out[kind == "tcp"] = "tcp"
    out[kind == "udp"] = "udp"
    nf = kind == "noflow"
    out[nf & ((proto == 1) | (proto == 58))] = "icmp"
    out[nf & (proto == 2) & (ethertype == 0x0800)] = "igmp"
    out[nf & (ethertype == 0x0806)] = "arp"
    out[nf & (ethertype == 0x888E)] = "eapol"
    out[nf & (ethertype > 0) & (ethertype < 0x0600)] = "llc"  # 802.3 frames: the field is a length
    return out


def _is_special(addr: ipaddress._BaseAddress) -> bool:
    return addr.is_multicast or addr.is_unspecified or addr.is_loopback or str(addr) == "255.255.255.255" \
        or (addr.version == 4 and int(addr) & 0xFF == 0xFF and addr.is_private)


def _pseudonyms(ips: list[str], popularity: np.ndarray) -> list[str]:
    """Fresh addresses keeping subnet, locality, version and popularity rank (module docstring)."""
    parsed = [ipaddress.ip_address(s) for s in ips]
    subnet_of = []
    for a in parsed:
        bits = 24 if a.version == 4 else 64
        net = ipaddress.ip_network(f"{a}/{bits}", strict=False)
        local = a.is_private or a.is_link_local
        cls = ("v4" if a.version == 4 else "v6") + ("ll" if a.is_link_local else ("local" if local else "remote"))
        subnet_of.append((cls, net))
    # order subnets by total popularity so the mapping does not depend on the real numbers
    df = pd.DataFrame({"cls": [c for c, _ in subnet_of], "net": [str(n) for _, n in subnet_of],
                       "pop": popularity, "i": np.arange(len(ips))})
    out = list(ips)
    next_net: dict[str, int] = {}
    net_pop = df.groupby(["cls", "net"])["pop"].sum().reset_index().sort_values(["cls", "pop", "net"],
                                                                               ascending=[True, False, True])
    base_of = {}
    for cls, net in zip(net_pop["cls"], net_pop["net"]):
        k = next_net.get(cls, 0)
        next_net[cls] = k + 1
        if cls == "v4local":
            base = int(ipaddress.IPv4Address("10.0.0.0")) + (k << 8)
        elif cls == "v4remote":
            base = (int(ipaddress.IPv4Address("198.18.0.0")) + (k << 8) if k < 512
                    else int(ipaddress.IPv4Address("100.64.0.0")) + ((k - 512) << 8))
        elif cls == "v4ll":
            base = int(ipaddress.IPv4Address("169.254.0.0")) + (k << 8)
        elif cls == "v6local":
            base = int(ipaddress.IPv6Address("fd00::")) + (k << 64)
        elif cls == "v6ll":
            base = int(ipaddress.IPv6Address("fe80::")) + (k << 64)
        else:
            base = int(ipaddress.IPv6Address("2001:db8::")) + (k << 64)
        base_of[(cls, net)] = base
    for (cls, net), g in df.groupby(["cls", "net"]):
        g = g.sort_values(["pop", "i"], ascending=[False, True])
        base = base_of[(cls, net)]
        for rank, i in enumerate(g["i"]):
            a = parsed[i]
            if _is_special(a):
                continue
            out[i] = str(ipaddress.ip_address(base + rank + 1))
    return out


def _pseudo_macs(macs: list[str]) -> list[str]:
    out = []
    for i, m in enumerate(macs):
        first = int(m[:2], 16) if len(m) == 17 else 0
        if m == "ff:ff:ff:ff:ff:ff" or first & 1:  # broadcast and multicast keep their meaning
            out.append(m)
        else:
            out.append("02:" + ":".join(f"{b:02x}" for b in (i + 1).to_bytes(5, "big")))
    return out


class AggregateModel:
    """Flow attributes, start times and hosts of a capture (module docstring); sklearn-style."""

    def __init__(self, max_components: int = 4, max_bins: int = 2000, max_silence_s: float | None = None,
                 max_fit_rows: int = 20000, keep_addresses: bool = False, seed: int = 0,
                 start_model: str = "sessions", session_gap_s: float = 3600.0, session_order: str = "calendar",
                 burst_gap_s: float | None = 3.0):
        if start_model not in ("sessions", "curve"):
            raise NecstError(f"start_model must be 'sessions' or 'curve', not {start_model!r}")
        self.start_model = start_model
        self.session_gap_s = session_gap_s
        if session_order not in ("calendar", "random"):
            raise NecstError(f"session_order must be 'calendar' or 'random', not {session_order!r}")
        self.session_order = session_order
        self.burst_gap_s = burst_gap_s
        self.max_components = max_components
        self.max_fit_rows = max_fit_rows
        self.max_bins = max_bins
        self.max_silence_s = max_silence_s
        self.keep_addresses = keep_addresses
        self.seed = seed

    # ------------------------------------------------------------------------------------
    def fit(self, dataset) -> "AggregateModel":
        from sklearn.mixture import GaussianMixture

        flows = dataset.flows.to_pandas()
        if len(flows) == 0:
            raise DatasetError("no flows to learn from")
        kind = flows["kind"].astype(str).to_numpy()
        ck = _craft_kind(kind, flows["protocol"].fillna(0).to_numpy(), flows["ethertype"].fillna(0).to_numpy())
        ok = ck != ""
        self.unsupported_share_ = float(1 - ok.mean())
        flows = flows[ok].reset_index(drop=True)
        if len(flows) == 0:
            raise DatasetError("no flow of a kind necst can craft (tcp, udp, icmp, igmp, arp, eapol, llc)")
        flows["craft_kind"] = ck[ok]
        flows["app"] = flows["app"].astype(str).fillna("unknown")
        flows["kind"] = flows["kind"].astype(str)
        x = np.column_stack([
            np.log1p(flows["bidirectional_packets"].to_numpy(float)),
            np.log1p(flows["bidirectional_bytes"].to_numpy(float)),
            np.log1p(np.maximum(flows["bidirectional_duration_ms"].to_numpy(float), 0) / 1000.0),
        ])
        keys = flows[["kind", "app", "craft_kind"]].astype(str).agg("|".join, axis=1).to_numpy()
        groups, gidx, gcount = np.unique(keys, return_inverse=True, return_counts=True)
        self.groups_ = [g.split("|") for g in groups]
        self.group_p_ = gcount / gcount.sum()
        self.gmm_ = []
        for g in range(len(groups)):
            xg = x[gidx == g]
            if len(xg) > self.max_fit_rows:  # a seeded sample is plenty for a 3-D mixture
                xg = xg[np.random.default_rng(self.seed + g).choice(len(xg), self.max_fit_rows, replace=False)]
            if len(xg) < 2:  # one flow: a point mass (a tiny covariance around it)
                self.gmm_.append({"weights": np.ones(1), "means": xg[:1], "covariances": np.eye(3)[None] * 1e-3,
                                  "lo": xg.min(axis=0), "hi": xg.max(axis=0)})
                continue
            best = None
            for k in range(1, min(self.max_components, max(1, len(xg) // 10)) + 1):
                m = GaussianMixture(k, covariance_type="full", reg_covar=1e-3, random_state=self.seed).fit(xg)
                bic = m.bic(xg) if len(xg) > 1 else 0.0
                if best is None or bic < best[0]:
                    best = (bic, m)
            m = best[1]
            self.gmm_.append({"weights": m.weights_, "means": m.means_, "covariances": m.covariances_,
                              "lo": xg.min(axis=0), "hi": xg.max(axis=0)})
        # packets per flow: the group's own histogram of counts (a mixture over log counts put
        # 20 % of TCP flows on 11 packets where 30 % are, and cut the tail at 77 where it runs to 228)
        pk = flows["bidirectional_packets"].to_numpy(np.int64)
        for g in range(len(groups)):
            values, counts = np.unique(np.maximum(pk[gidx == g], 1), return_counts=True)
            self.gmm_[g]["pk_values"], self.gmm_[g]["pk_p"] = values, counts / counts.sum()

        # start times
        start = np.sort(flows["first_seen_ns"].to_numpy(np.int64))
        # silences longer than max_silence_s (the gaps between captures taken on different days)
        # are shrunk to the median gap: the curve describes active time, not the calendar
        gaps_ns = np.diff(start)
        if len(gaps_ns) and self.max_silence_s is not None:
            long = gaps_ns > int(self.max_silence_s * 1e9)
            gaps_ns[long] = int(np.median(gaps_ns))
            start = start[0] + np.concatenate([[0], np.cumsum(gaps_ns)])
        t0, t1 = int(start.min()), int(start.max())
        span_s = max((t1 - t0) / 1e9, 1.0)
        width = max(1.0, span_s / self.max_bins)
        nb = int(np.ceil(span_s / width)) or 1
        b = np.minimum(((start - t0) / 1e9 / width).astype(np.int64), nb - 1)
        self.bin_s_ = float(width)
        self.rate_counts_ = np.bincount(b, minlength=nb).astype(np.int64)
        # where in its bin each bin's activity begins (a capture's first flow, say)
        first_off = np.full(nb, np.inf)
        np.minimum.at(first_off, b, (start - t0) / 1e9 - b * width)
        self.bin_offset_s_ = np.where(np.isfinite(first_off), first_off, 0.0)
        gaps = np.diff(np.sort(start)) / 1e9
        gaps = gaps[gaps <= width]  # longer silences are the curve's business, not a burst's
        self.gap_quantiles_ = np.quantile(gaps, np.linspace(0, 1, 101)) if len(gaps) else np.zeros(101)
        self.start_ns_ = t0
        by_start = np.argsort(flows["first_seen_ns"].to_numpy(np.int64), kind="stable")
        self._fit_sessions(flows["first_seen_ns"].to_numpy(np.int64)[by_start])
        if hasattr(self, "burst_flows_"):  # what each burst's flows were: plan flows go to the like slot
            self.burst_group_ = gidx[by_start].astype(np.int64)
            self.burst_packets_ = pk[by_start]

        # the flow meter's idle timeout that cut the flows learned from (see _separate_keys)
        self.idle_s_ = float((getattr(dataset, "meta", None) or {}).get("idle_timeout", 120.0))
        # hosts
        self._fit_hosts(flows, gidx, dataset.packets)
        return self

    def _fit_sessions(self, start: np.ndarray) -> None:
        """Sessions: runs of flow starts without a silence over ``session_gap_s`` (a capture, a
        burst of activity); their flow counts and durations, the silences between them, the gaps
        inside them (quantiles), and the capture's mean rate, flows over its whole span."""
        gaps = np.diff(start) / 1e9
        cut = np.flatnonzero(gaps > self.session_gap_s)
        bounds = np.concatenate([[0], cut + 1, [len(start)]])
        self.session_flows_ = np.diff(bounds).astype(np.int64)
        self.session_dur_s_ = (start[bounds[1:] - 1] - start[bounds[:-1]]) / 1e9
        self.silence_s_ = gaps[cut].astype(np.float64)
        inside = np.delete(gaps, cut)
        self.session_gap_quantiles_ = (np.quantile(inside, np.linspace(0, 1, 101)) if len(inside)
                                       else np.zeros(101))
        # each session's own gaps (quantiles): a short capture's flows come seconds apart, a long
        # one's minutes; one pooled law stretched to each duration squeezed short sessions'
        # flows into the same second (flows per busy second 4.0, real 2.3)
        q = np.zeros((len(self.session_flows_), SESSION_GAP_LEVELS))
        levels = np.linspace(0, 1, SESSION_GAP_LEVELS)
        for i, (a, b) in enumerate(zip(bounds[:-1], bounds[1:])):
            if b - a >= 2:
                q[i] = np.quantile(gaps[a:b - 1], levels)
        self.session_gap_q_ = q
        span = max((start[-1] - start[0]) / 1e9, 1.0)
        self.mean_rate_ = float(len(start) / span)
        if self.burst_gap_s is not None:
            self._fit_bursts(start, bounds)

    def _fit_bursts(self, start: np.ndarray, bounds: np.ndarray) -> None:
        """Bursts: runs of flow starts inside a session without a gap over ``burst_gap_s`` (a
        device waking up: DNS, then TLS, then NTP within a few seconds). Kept per burst: its flow
        count and each flow's offset from the burst's first; per session, the quantiles of the
        gaps between its bursts (sessions of one burst: those of every session)."""
        gaps = np.diff(start) / 1e9
        new = np.r_[True, gaps > self.burst_gap_s]
        new[bounds[:-1]] = True  # a session starts a burst
        first = np.flatnonzero(new)
        self.burst_flows_ = np.diff(np.r_[first, len(start)]).astype(np.int64)
        self.burst_session_ = (np.searchsorted(bounds, first, side="right") - 1).astype(np.int64)
        self.burst_offset_s_ = (start - np.repeat(start[first], self.burst_flows_)) / 1e9
        levels = np.linspace(0, 1, SESSION_GAP_LEVELS)
        between = gaps[first[1:] - 1]  # from a burst's last flow to the next burst's first
        same = self.burst_session_[1:] == self.burst_session_[:-1]
        pooled = np.quantile(between[same], levels) if same.any() else np.full(SESSION_GAP_LEVELS, self.burst_gap_s)
        q = np.tile(pooled, (len(self.session_flows_), 1))
        for s in np.unique(self.burst_session_[1:][same]):
            q[s] = np.quantile(between[same & (self.burst_session_[1:] == s)], levels)
        self.session_burst_gap_q_ = q

    def _within_sessions(self, sess: np.ndarray, ks: np.ndarray, rng,
                         rate_scale: float) -> tuple[np.ndarray, np.ndarray]:
        """Flow start offsets (s) from each session's beginning, ``ks[j] > 0`` flows for session
        ``sess[j]``, concatenated: whole bursts (``_burst_offsets``), or for bundles from before
        them, gaps drawn one by one from the session's own (``session_gap_q_``); and each start's
        slot (the learned flow whose offset it took, -1 for none)."""
        if hasattr(self, "burst_flows_"):
            return self._burst_offsets(sess, ks, rng, rate_scale)
        return self._gap_offsets(sess, ks, rng, rate_scale), np.full(int(np.sum(ks)), -1, np.int64)

    def _gap_offsets(self, sess, ks, rng, rate_scale) -> np.ndarray:
        sid = np.repeat(sess, ks)
        first = np.cumsum(ks) - ks
        q = self.session_gap_q_
        u = rng.random(len(sid)) * (q.shape[1] - 1)
        i = np.minimum(u.astype(np.int64), q.shape[1] - 2)
        gaps = (q[sid, i] + (u - i) * (q[sid, i + 1] - q[sid, i])) / rate_scale
        gaps[first] = 0.0
        c = np.cumsum(gaps)
        return c - np.repeat(c[first], ks)

    def _burst_offsets(self, sess: np.ndarray, ks: np.ndarray, rng, rate_scale: float) -> tuple[np.ndarray, np.ndarray]:
        """Flow start offsets (s) from each session's beginning, ``ks[j]`` flows for session
        ``sess[j]``, concatenated: the session's own bursts whole (each with its flows' learned
        offsets), in calendar order, a seeded random subset of them (all of them, again and again,
        when more flows are asked for than it had), the last cut at ``ks[j]``; gaps between
        bursts drawn from the session's own. Gaps drawn one by one put flows that come together
        (a device's DNS, TLS and NTP within a few seconds) tens of seconds apart: 13 % more
        seconds with packets, at fewer packets each (packets_per_s_emd 2.8-3.4x the floor)."""
        size, bsess = self.burst_flows_, self.burst_session_
        b_first = np.cumsum(size) - size
        q = self.session_burst_gap_q_
        out, slots = [], []
        for s, k in zip(np.asarray(sess, np.int64), np.asarray(ks, np.int64)):
            if k <= 0:
                continue
            lo, hi = np.searchsorted(bsess, s), np.searchsorted(bsess, s, side="right")
            nb = hi - lo
            blocks = -(-int(k) // int(size[lo:hi].sum()))
            picks = np.concatenate([rng.permutation(nb) for _ in range(blocks)]) + lo
            cum = np.cumsum(size[picks])
            last = int(np.searchsorted(cum, k))  # the burst that reaches k flows
            picks = picks[:last + 1]
            # whole permutations keep their bursts in calendar order (a capture's set-up burst first)
            block = np.arange(len(picks)) // nb
            picks = picks[np.lexsort((picks, block))]
            sz = size[picks]
            idx = np.repeat(b_first[picks] - (np.cumsum(sz) - sz), sz) + np.arange(int(sz.sum()))
            off = self.burst_offset_s_[idx]
            u = rng.random(len(picks)) * (q.shape[1] - 1)
            i = np.minimum(u.astype(np.int64), q.shape[1] - 2)
            gap = q[s, i] + (u - i) * (q[s, i + 1] - q[s, i])
            span = self.burst_offset_s_[b_first[picks] + sz - 1]
            begin = np.r_[0.0, np.cumsum(span[:-1] + gap[:-1])]
            out.append(((np.repeat(begin, sz) + off)[:k]) / rate_scale)
            slots.append(idx[:k])
        if not out:
            return np.zeros(0), np.zeros(0, np.int64)
        return np.concatenate(out), np.concatenate(slots)

    def _calendar_starts(self, n_flows, rng, rate_scale) -> tuple[np.ndarray, np.ndarray]:
        """Start offsets (ns), with their slots (``_within_sessions``), for
        ``session_order="calendar"`` (the default): every learned session,
        in the order the calendar had them, each with its share of the flows asked for (drawn
        systematically, so the shares hold up to rounding) and its own gaps between flow starts;
        the silences between sessions as learned, in order, scaled so that the capture's mean
        rate (flows over its whole span, times ``rate_scale``) is kept. The capture's shape over
        time (when it was busy, when quiet) is the training calendar's, compressed or stretched;
        drawing whole sessions in random order (``"random"``) kept each session but not that shape
        (arrival-time EMD 2.4-3.3x the floor). (A duration replays the calendar as learned
        instead, see ``_session_starts``: an hour asked for is an hour of activity, not the whole
        calendar squeezed into it.)"""
        rate = self.mean_rate_ * rate_scale
        want = int(n_flows)
        if want <= 0:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        share = self.session_flows_.astype(float)
        cum = np.cumsum(share) / share.sum()
        pick = np.minimum(np.searchsorted(cum, (rng.random() + np.arange(want)) / want, side="right"), len(cum) - 1)
        ks = np.bincount(pick, minlength=len(share)).astype(np.int64)
        used = np.flatnonzero(ks > 0)  # the sessions that got flows
        within, slot = self._within_sessions(used, ks[used], rng, rate_scale)
        # the real quiet time between each session that got flows and the next of them
        durs = within[np.cumsum(ks)[used] - 1]
        real_begin = np.concatenate([[0.0], np.cumsum(self.session_dur_s_[:-1] + self.silence_s_)])
        quiet = np.maximum(np.diff(real_begin[used]) - self.session_dur_s_[used[:-1]], 0.0)
        scale = max(want / rate - durs.sum(), 0.0) / quiet.sum() if quiet.sum() > 0 else 1.0
        begin = np.zeros(len(ks))
        begin[used] = np.concatenate([[0.0], np.cumsum(durs[:-1] + quiet * scale)])
        t = np.rint((np.repeat(begin, ks) + within) * 1e9).astype(np.int64)
        order = np.argsort(t, kind="stable")
        return t[order], slot[order]

    def _session_starts(self, n_flows, duration_s, rng, rate_scale,
                        calendar: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Start offsets (ns), with their slots (``_within_sessions``), for
        ``start_model="sessions"``: the learned sessions in a seeded random
        order (each permutation used whole before the next), separated by the learned silences in
        random order; inside a session, gaps drawn from that session's own (its quantiles; bundles
        from before: the pooled gaps, stretched to its duration). The silences are then scaled so that the flows asked for span the time the capture's mean
        rate gives them (``n / (rate x rate_scale)``): the rate over the whole capture, quiet days
        included, is kept exactly, not left to which sessions were drawn. A duration lays
        sessions and silences as learned until it is covered (the mean rate in expectation; a
        short duration holds the start of one session) and cuts there. The order of sessions on
        the calendar (and the time of day) is not kept, unless ``calendar``: then sessions follow
        each other as on the calendar, with the silences that followed them, from a random one on
        (the first again after the last)."""
        rate = self.mean_rate_ * rate_scale
        want = int(n_flows) if duration_s is None else 1 << 62
        if want <= 0:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        k_all = self.session_flows_.astype(float) * rate_scale
        silences = self.silence_s_ if len(self.silence_s_) else np.zeros(1)
        sess, sil, pool = [], [], []
        total, covered = 0, 0.0
        while total < want and (duration_s is None or covered < duration_s):
            for s in (np.roll(np.arange(len(k_all)), -int(rng.integers(len(k_all)))) if calendar
                      else rng.permutation(len(k_all))):
                k = int(np.floor(k_all[s]) + (rng.random() < k_all[s] % 1))
                if k == 0:
                    continue
                if not pool:  # silences in random order, each permutation used whole
                    pool = list(rng.permutation(silences))
                sess.append((s, k))
                sil.append(self.silence_s_[s] if calendar and s < len(self.silence_s_) else pool.pop())
                total += k
                covered += self.session_dur_s_[s] + sil[-1]
                if total >= want or (duration_s is not None and covered >= duration_s):
                    break
            if not sess:
                return np.zeros(0, np.int64), np.zeros(0, np.int64)
        sil = np.asarray(sil, np.float64)
        ks = np.array([k for _, k in sess], np.int64)
        durs = self.session_dur_s_[[s for s, _ in sess]]
        first = np.cumsum(ks) - ks
        if hasattr(self, "session_gap_q_"):
            # inside each session: its own bursts or gaps (more flows asked for by rate_scale
            # come closer together); its duration is what they add up to
            within, slot = self._within_sessions(np.array([s for s, _ in sess], np.int64), ks, rng, rate_scale)
            durs = within[np.cumsum(ks) - 1]
        else:  # bundles from before: pooled gaps, scaled to the session's duration
            gaps = np.interp(rng.random(int(ks.sum())), np.linspace(0, 1, 101), self.session_gap_quantiles_)
            gaps[first] = 0.0
            c = np.cumsum(gaps)
            within = c - np.repeat(c[first], ks)
            last = within[np.cumsum(ks) - 1]
            stretch = np.where(last > 0, durs / np.maximum(last, 1e-12), 0.0)
            within = within * np.repeat(stretch, ks)
        # session starts: durations and silences laid end to end; silences scaled to the mean rate
        idx = min(want, int(ks.sum())) - 1
        s_last = int(np.searchsorted(np.cumsum(ks), idx, side="right"))  # session of the want-th flow
        active = durs[:s_last].sum() + within[idx]
        quiet = sil[:s_last].sum()
        target = want / rate
        scale = 1.0 if duration_s is not None else (max(target - active, 0.0) / quiet if quiet > 0 else 1.0)
        begin = np.concatenate([[0.0], np.cumsum(durs[:-1] + sil[:-1] * scale)])
        t = np.repeat(begin, ks) + within
        t = np.rint(t * 1e9).astype(np.int64)
        order = np.argsort(t, kind="stable")[:want]
        starts = t[order]
        slot = slot[order] if hasattr(self, "session_gap_q_") else np.full(len(starts), -1, np.int64)
        if duration_s is not None:
            keep = starts < int(duration_s * 1e9)
            starts, slot = starts[keep], slot[keep]
        return starts, slot

    def _fit_hosts(self, flows: pd.DataFrame, gidx: np.ndarray, packets) -> None:
        src = flows["src_ip"].fillna("").astype(str).to_numpy()
        dst = flows["dst_ip"].fillna("").astype(str).to_numpy()
        # frames without IP addresses in the flow table (ARP): the host is known by its MAC
        src = np.where(src == "", "mac:" + flows["src_mac"].fillna("").astype(str).to_numpy().astype(object), src)
        dst = np.where(dst == "", "mac:" + flows["dst_mac"].fillna("").astype(str).to_numpy().astype(object), dst)
        hosts, inv = np.unique(np.concatenate([src, dst]), return_inverse=True)
        n = len(flows)
        s_id, d_id = inv[:n], inv[n:]
        self.hosts_ = [str(h) for h in hosts]
        self.host_src_count_ = np.bincount(s_id, minlength=len(hosts))
        self.host_dst_count_ = np.bincount(d_id, minlength=len(hosts))
        # MAC: the most common one the host's frames carried
        macs = pd.DataFrame({"h": np.concatenate([s_id, d_id]),
                             "m": np.concatenate([flows["src_mac"].fillna("").astype(str).to_numpy(),
                                                  flows["dst_mac"].fillna("").astype(str).to_numpy()])})
        macs = macs[macs["m"].str.len() == 17]
        top = macs.groupby(["h", "m"]).size().reset_index(name="c").sort_values(["h", "c", "m"],
                                                                                   ascending=[True, False, True])
        top = top.drop_duplicates("h")
        mac = np.array(["02:00:00:00:00:00"] * len(hosts), object)
        mac[top["h"].to_numpy()] = top["m"].to_numpy()
        self.host_mac_ = [str(m) for m in mac]
        # TTL and window: medians of what each host sent
        ttl = np.full(len(hosts), 64, np.int64)
        win = np.full(len(hosts), 64240, np.int64)
        if packets is not None and packets.num_rows:
            p = packets.select(["src_ip", "ttl", "tcp_window", "tcp_flags"]).to_pandas()
            p["src_ip"] = p["src_ip"].astype(str)
            pos = pd.Series(np.arange(len(hosts)), index=hosts)
            t = p.dropna(subset=["ttl"]).groupby("src_ip")["ttl"].median()
            t = t[t.index.isin(pos.index)]
            ttl[pos[t.index].to_numpy()] = t.to_numpy().round().astype(np.int64)
            # the window of a host's SYNs is unscaled; later windows are scaled by an option that
            # crafted SYNs do not carry, so the SYN window is the one that means what it says
            syn = (p["tcp_flags"].fillna(0).astype(int) & 0x2) != 0
            ok = p["tcp_window"].fillna(0) > 0
            w_all = p[ok].groupby("src_ip")["tcp_window"].median()
            w_syn = p[ok & syn].groupby("src_ip")["tcp_window"].median()
            w = w_all.copy()
            w.loc[w_syn.index] = w_syn
            w = w[w.index.isin(pos.index)]
            win[pos[w.index].to_numpy()] = w.to_numpy().round().astype(np.int64)
        self.host_ttl_ = ttl
        self.host_window_ = win
        ver = np.array([4 if h.startswith("mac:") else ipaddress.ip_address(h).version for h in self.hosts_])
        self.host_version_ = ver
        # who talks to whom, per group, with which destination port (and source port if fixed)
        sport = flows["src_port"].fillna(0).to_numpy(np.int64)
        dport = flows["dst_port"].fillna(0).to_numpy(np.int64)
        # UDP services often send from a fixed port (NTP 123 -> 123, mDNS, DHCP 68 -> 67); a TCP
        # client reusing one would reuse its 4-tuple, so TCP source ports are always ephemeral
        is_udp = (flows["craft_kind"] == "udp").to_numpy()
        fixed = np.where(is_udp & ((sport < 1024) | (sport == dport)), sport, -1)
        # each host's ephemeral source ports: stacks differ (Linux 32768-60999, lwIP and older
        # embedded stacks 1024-5000, some hosts both); per host, the share of its flows from
        # below 32768 and the 2-98 % range of its ports on either side of it
        eph = (flows["craft_kind"].isin(["tcp", "udp"]).to_numpy()) & (fixed < 0) & (sport >= 1024)
        r = np.tile(np.array(DEFAULT_PORT_RANGES, np.float64), (len(hosts), 1))
        if eph.any():
            e = pd.DataFrame({"h": s_id[eph], "p": sport[eph].astype(float)})
            e["low"] = e["p"] < EPHEMERAL_LO
            r[e.groupby("h")["low"].mean().index.to_numpy(), 0] = e.groupby("h")["low"].mean().to_numpy()
            for side, cols in ((True, [1, 2]), (False, [3, 4])):
                g = e[e["low"] == side].groupby("h")["p"]
                lo, hi = g.quantile(0.02), g.quantile(0.98)
                r[lo.index.to_numpy()[:, None], cols] = np.rint(np.column_stack([lo.to_numpy(), hi.to_numpy()]))
        self.host_port_ranges_ = r
        # and the flow's size (a power-of-two bucket of its packets): the few long flows (a quarter
        # of the packets) belong to a few hosts; drawn for any pair of the group, they moved the
        # per-packet address popularity (dst_ip_rank_jsd 1.4x -> 1.9x the floor once counts were right)
        size = _size_bucket(flows["bidirectional_packets"].to_numpy(np.int64))
        t = pd.DataFrame({"g": gidx, "z": size, "s": s_id, "d": d_id, "dp": dport, "sp": fixed})
        trip = t.groupby(["g", "z", "s", "d", "dp", "sp"]).size().reset_index(name="c")
        self.pairs_ = {k: trip[c].to_numpy(np.int64) for k, c in
                       (("group", "g"), ("size", "z"), ("src", "s"), ("dst", "d"), ("dport", "dp"), ("sport", "sp"),
                        ("count", "c"))}
        # MAC-only hosts get link-local IPv4 addresses (numbered) in both modes
        ips = self._real_addresses()
        self.addresses_ = ips if self.keep_addresses else _pseudonyms(ips, self.host_src_count_ + self.host_dst_count_)
        self.macs_ = self.host_mac_ if self.keep_addresses else _pseudo_macs(self.host_mac_)

    # ------------------------------------------------------------------------------------
    @property
    def flows_per_second_(self) -> float:
        return float(self.rate_counts_.sum() / (len(self.rate_counts_) * self.bin_s_))

    def mean_packets(self) -> float:
        """Expected packets per flow (the mixture's mean), to plan a capture of N packets."""
        rng = np.random.default_rng(0)
        return float(self.sample(n_flows=2000, seed=rng.integers(1 << 31))["packets"].mean())

    def sample_starts(self, n_flows: int | None = None, duration_s: float | None = None, seed: int = 0,
                      rate_scale: float = 1.0) -> np.ndarray:
        """Start offsets (ns from the capture's start) following the learned rate curve."""
        return self._starts_and_slots(n_flows, duration_s, seed, rate_scale)[0]

    def _starts_and_slots(self, n_flows, duration_s, seed, rate_scale) -> tuple[np.ndarray, np.ndarray]:
        """``sample_starts`` and, per start, the learned flow whose burst offset it took (-1: none)."""
        if rate_scale <= 0:
            raise NecstError("rate scale must be positive")
        rng = np.random.default_rng(seed)
        if self.start_model == "sessions" and hasattr(self, "session_flows_"):
            if self.session_order == "calendar" and hasattr(self, "session_gap_q_"):
                if duration_s is not None:  # the calendar as learned (not compressed), cut at the duration
                    return self._session_starts(None, duration_s, rng, rate_scale, calendar=True)
                return self._calendar_starts(n_flows, rng, rate_scale)
            return self._session_starts(n_flows, duration_s, rng, rate_scale)
        counts = self.rate_counts_.astype(float) * rate_scale
        width_ns = int(self.bin_s_ * 1e9)
        if duration_s is None:
            per_tile = counts.sum()
            tiles = int(np.ceil((n_flows or 0) / max(per_tile, 1e-9))) + 1
        else:
            tiles = int(np.ceil(duration_s / (len(counts) * self.bin_s_)))
        curve = np.tile(counts, max(tiles, 1))
        k = np.floor(curve).astype(np.int64) + (rng.random(len(curve)) < curve % 1)
        # inside each bin: a burst from where the bin's real activity began, successive gaps drawn from the real gaps
        # (those shorter than a bin), wrapping around the bin's end
        total = int(k.sum())
        bins = np.repeat(np.arange(len(curve)), k)
        gaps = np.interp(rng.random(total), np.linspace(0, 1, 101), self.gap_quantiles_)
        first = np.cumsum(k) - k
        csum = np.cumsum(gaps)
        within = csum - np.repeat(csum[first], k) if total else csum  # 0 for a bin's first flow
        offset = np.repeat(np.tile(self.bin_offset_s_, max(tiles, 1)), k)
        pos_s = np.mod(offset + within, self.bin_s_)
        starts = (bins * width_ns + (pos_s * 1e9).astype(np.int64)).astype(np.int64)
        starts.sort()
        if duration_s is not None:
            starts = starts[starts < int(duration_s * 1e9)]
        if n_flows is not None:
            starts = starts[:n_flows]
        return starts, np.full(len(starts), -1, np.int64)

    def sample(self, n_flows: int | None = None, duration_s: float | None = None, seed: int = 0,
               start_ns: int | None = None, rate_scale: float = 1.0, apps=None,
               port_state: dict | None = None, keep_addresses: bool | None = None) -> pd.DataFrame:
        """A flow plan, one row per flow, in start order (module docstring for the columns' sources).

        ``port_state``: a dict shared by the successive plans of one capture, so that ephemeral
        source ports keep counting up instead of starting over (no reused 4-tuples).
        ``keep_addresses``: real addresses and MACs (True) or the pseudonyms (False); default: as
        configured. The bundle holds both, so the choice can be made at sampling time.
        """
        if n_flows is None and duration_s is None:
            raise NecstError("give a number of flows or a duration")
        rng = np.random.default_rng(seed)
        starts, slot = self._starts_and_slots(n_flows, duration_s, int(rng.integers(1 << 31)), rate_scale)
        n = len(starts)
        p = np.asarray(self.group_p_, float)
        if apps:
            allowed = np.array([g[1] in set(apps) for g in self.groups_])
            if not allowed.any():
                known = sorted({g[1] for g in self.groups_})
                raise NecstError(f"no flows of application(s) {', '.join(apps)} in the model "
                                 f"(it knows {', '.join(known)})")
            p = np.where(allowed, p, 0)
        p = p / p.sum()
        x = np.zeros((n, 3))
        if all("pk_values" in m for m in self.gmm_):
            # (group, packet count) cells drawn systematically (one uniform, n evenly spaced points
            # on the cells' cumulative shares) in random order: the plan holds each cell in its
            # share up to rounding. Drawn independently, the few long flows that carry a quarter
            # of the packets came 30 % more or less often from seed to seed, and with them the
            # packet-length and gap mixes (packet_length_emd 1.1x to 6.5x the floor).
            cell_g = np.concatenate([np.full(len(m["pk_p"]), i) for i, m in enumerate(self.gmm_)])
            cell_k = np.concatenate([m["pk_values"] for m in self.gmm_]).astype(np.int64)
            cell_p = np.concatenate([p[i] * np.asarray(m["pk_p"], float) for i, m in enumerate(self.gmm_)])
            cum = np.cumsum(cell_p)
            pick = np.minimum(np.searchsorted(cum / cum[-1], (rng.random() + np.arange(n)) / max(n, 1), side="right"),
                              len(cum) - 1)
            pick = pick[rng.permutation(n)]
            g, counts = cell_g[pick], cell_k[pick]
            for gi in np.unique(g):  # bytes and duration given the count
                sel = np.flatnonzero(g == gi)
                x[sel] = _conditional_draws(self.gmm_[gi], counts[sel], rng)
        else:  # bundles from before: the mixture draws the count too
            g = rng.choice(len(p), size=n, p=p)
        for gi in np.unique(g):
            sel = np.flatnonzero(g == gi)
            m = self.gmm_[gi]
            if "pk_values" in m:
                continue
            comp = rng.choice(len(m["weights"]), size=len(sel), p=np.asarray(m["weights"]) / np.sum(m["weights"]))
            for c in np.unique(comp):
                s = sel[comp == c]
                x[s] = rng.multivariate_normal(m["means"][c], m["covariances"][c], size=len(s))
            x[sel] = np.clip(x[sel], m["lo"], m["hi"])
        packets = np.maximum(np.rint(np.expm1(x[:, 0])), 1).astype(np.int64)
        if hasattr(self, "burst_group_") and (slot >= 0).any():
            perm = self._fill_slots(g, packets, slot, rng)
            g, x, packets = g[perm], x[perm], packets[perm]
        plan = pd.DataFrame({
            "start_ns": starts + int(self.start_ns_ if start_ns is None else start_ns),
            "kind": [self.groups_[i][0] for i in g], "app": [self.groups_[i][1] for i in g],
            "craft_kind": [self.groups_[i][2] for i in g],
            "packets": packets, "bytes": np.maximum(np.rint(np.expm1(x[:, 1])), 0).astype(np.int64),
            "duration_s": np.expm1(x[:, 2]),
        })
        self._assign_hosts(plan, g, rng, port_state, keep_addresses)
        if hasattr(self, "idle_s_"):
            plan = self._separate_keys(plan, g, rng)
        return plan

    def _fill_slots(self, g: np.ndarray, packets: np.ndarray, slot: np.ndarray, rng) -> np.ndarray:
        """Which planned flow takes each start: a start copied from a learned burst goes to a flow
        of that burst flow's group, the longer flows of the group to the starts of its longer
        flows (ranks matched, ties at random), so a burst holds what such bursts held (a device's
        DNS lookups before its TLS connections) and its packets fall in the same seconds; the
        flows and starts left over are paired at random. The plan's flows and the set of starts
        are unchanged: only who starts when."""
        n = len(g)
        ok = slot >= 0
        s_group = np.where(ok, self.burst_group_[np.maximum(slot, 0)], -1)
        s_packets = np.where(ok, self.burst_packets_[np.maximum(slot, 0)], 0)
        perm = np.full(n, -1, np.int64)
        taken = np.zeros(n, bool)
        for gi in np.unique(g):
            f, s = np.flatnonzero(g == gi), np.flatnonzero(s_group == gi)
            if not len(s):
                continue
            f = f[np.lexsort((rng.random(len(f)), packets[f]))]
            s = s[np.lexsort((rng.random(len(s)), s_packets[s]))]
            if len(s) > len(f):
                s = s[np.sort(rng.choice(len(s), len(f), replace=False))]
            elif len(f) > len(s):
                f = f[np.sort(rng.choice(len(f), len(s), replace=False))]
            perm[s] = f
            taken[f] = True
        rest, left = np.flatnonzero(perm < 0), np.flatnonzero(~taken)
        perm[rest] = left[rng.permutation(len(left))]
        return perm

    def _separate_keys(self, plan: pd.DataFrame, g: np.ndarray, rng) -> pd.DataFrame:
        """Start times swapped so that two flows a flow meter would key alike (UDP and TCP: the
        address and port pairs; link-local kinds: the MAC and address pairs) do not come within
        the idle timeout of each other, where the meter would read them as one flow.

        The real flows were read by such a meter, so each is already a whole unit; and a key
        such as DHCP's 0.0.0.0:68 -> 255.255.255.255:67 is shared by every device, which the
        real captures (one device at a time) never interleave. Unchecked, 1.5 % of the planned
        flows merged into their predecessors, each merge one gap of up to two minutes inside a
        flow (gap and duration EMDs 3-5x the floor instead of 1-2x). A flow too close to the
        one before it of its key takes the start of a flow with a key of its own (a TCP flow,
        say) where its key is free, so the set of start times, and every rate, is unchanged; only
        where no such start is left (a key as busy as DHCP's in a plan of many times the flows
        learned from) is the flow delayed until its key is free.
        A flow's extent is the idle timeout plus its planned duration, doubled, or its group's
        longest (up to ``SEPARATE_MAX_S``) if longer: the flow model draws the duration anew."""
        n = len(plan)
        if n < 2:
            return plan
        ck = plan["craft_kind"].to_numpy().astype(str)
        link = ~np.isin(ck, ("tcp", "udp"))
        # a host is one address (and, in a plan, one MAC): host ids key as the meter's addresses do;
        # link-local kinds carry no ports (the plan's are unused)
        ends = [plan[h].to_numpy(np.int64) * 65536 + np.where(link, 0, plan[p].to_numpy(np.int64))
                for h, p in (("src_host", "src_port"), ("dst_host", "dst_port"))]
        kind_code = np.unique(ck, return_inverse=True)[1].reshape(-1)
        table = np.column_stack([kind_code, np.minimum(*ends), np.maximum(*ends)])
        key = _row_ids(table)
        start = plan["start_ns"].to_numpy(np.int64).copy()
        longest = np.minimum(np.expm1([float(m["hi"][2]) for m in self.gmm_]), SEPARATE_MAX_S)[g]
        extent = (np.maximum(np.nan_to_num(plan["duration_s"].to_numpy(float)) * 2, longest) + self.idle_s_) * 1e9
        extent = np.minimum(extent, 4e12).astype(np.int64)  # 4,000 s at most
        counts = np.bincount(key)
        free = np.flatnonzero(counts[key] == 1)  # flows whose key is theirs alone: movable anywhere
        order = np.lexsort((start, key))
        k_s, s_s = key[order], start[order]
        end_s = s_s + extent[order]
        same = np.r_[False, k_s[1:] == k_s[:-1]]
        grp = np.cumsum(~same)  # the running maximum of the previous ends inside each key group
        prev_end = pd.Series(np.where(same, np.r_[np.iinfo(np.int64).min, end_s[:-1]], np.iinfo(np.int64).min)) \
            .groupby(grp).cummax().to_numpy()
        clash = order[same & (s_s < prev_end)]
        if len(clash) == 0:
            return plan
        used = np.zeros(n, bool)
        clash = clash[np.argsort(key[clash], kind="stable")]
        for k in np.unique(key[clash]):
            rows = np.flatnonzero(key == k)
            by = np.argsort(start[rows], kind="stable")
            rows = rows[by]  # the key's flows by start, kept sorted as flows move

            for i in clash[key[clash] == k]:
                # the key's other flows, by start, with the latest end so far (fixed while i is placed:
                # only i and a flow of another key move)
                others = rows[rows != i]
                r_start = start[others]
                r_end = np.maximum.accumulate(r_start + extent[others])

                def overlaps(s0, s1, skip):  # does [s0, s1) meet a flow of the key other than row ``skip`` (= i)?
                    j = np.searchsorted(r_start, s1, side="left")
                    return (j > 0) & (r_end[np.maximum(j - 1, 0)] > s0)

                if not overlaps(start[i], start[i] + extent[i], i):
                    continue  # an earlier move freed it
                for size in (32, 512):  # a few candidates, more when the key is busy
                    cand = free[rng.integers(0, len(free), size)] if len(free) else free
                    cand = cand[~used[cand]]
                    ok = ~overlaps(start[cand], start[cand] + extent[i], i)
                    if ok.any():
                        break
                if ok.any():
                    j = int(cand[np.argmax(ok)])
                    used[j] = True
                    start[i], start[j] = start[j], start[i]
                else:
                    # no free start far enough from its key's other flows (a key as busy as DHCP's
                    # in a plan of many times the flows learned from): the flow waits for its key
                    later = np.sort(start[others] + extent[others])
                    later = later[later > start[i]]
                    fits = later[~overlaps(later, later + extent[i], i)]
                    if not len(fits):
                        continue
                    start[i] = fits[0]
                # i moved: back into the key's flows, in start order
                rows = np.insert(others, np.searchsorted(r_start, start[i], side="right"), i)
        out = plan.assign(start_ns=start)
        return out.iloc[np.argsort(start, kind="stable")].reset_index(drop=True)

    def _assign_hosts(self, plan: pd.DataFrame, g: np.ndarray, rng, port_state: dict | None = None,
                      keep_addresses: bool | None = None) -> None:
        P = self.pairs_
        n = len(plan)
        row = np.zeros(n, np.int64)
        # the pair is drawn among the group's pairs of the flow's size bucket (bundles from
        # before, or a size the group never had: among all the group's pairs)
        by_size = "size" in P
        cell_of = (P["group"] * 64 + P["size"]) if by_size else P["group"] * 64
        want = g * 64 + (_size_bucket(plan["packets"].to_numpy(np.int64)) if by_size else 0)
        order = np.argsort(cell_of, kind="stable")
        cell_sorted = cell_of[order]
        grp_sorted = P["group"][order]
        for c in np.unique(want):
            sel = np.flatnonzero(want == c)
            lo, hi = np.searchsorted(cell_sorted, c), np.searchsorted(cell_sorted, c, side="right")
            if lo == hi:
                lo, hi = np.searchsorted(grp_sorted, c // 64), np.searchsorted(grp_sorted, c // 64, side="right")
            cand = order[lo:hi]
            # drawn systematically (in random order), so each pair comes in its share up to
            # rounding: drawn independently, the few ICMP flows of a group went to IPv4 or IPv6
            # pairs by chance, and ip_proto_jsd swung from 1.2x to 2.2x the floor between seeds
            cum = np.cumsum(P["count"][cand].astype(float))
            k = len(sel)
            pick = np.searchsorted(cum / cum[-1], (rng.random() + np.arange(k)) / k, side="right")
            row[sel] = cand[np.minimum(pick, len(cand) - 1)[rng.permutation(k)]]
        s, d = P["src"][row], P["dst"][row]
        keep = self.keep_addresses if keep_addresses is None else keep_addresses
        addr = np.asarray(self._real_addresses() if keep else self.addresses_, object)
        macs = np.asarray(self.host_mac_ if keep else self.macs_, object)
        plan["src_host"], plan["dst_host"] = s, d
        plan["src_ip"], plan["dst_ip"] = addr[s], addr[d]
        plan["ip_version"] = self.host_version_[s]
        plan["src_mac"], plan["dst_mac"] = macs[s], macs[d]
        plan["dst_port"] = P["dport"][row]
        # source ports: fixed service ports stay; ephemeral ones count up per (source, destination,
        # port) pair, from a fixed spread base, so a 4-tuple comes back only after 32k flows of that
        # pair; ``port_state`` carries the counts from one plan to the next of the same capture
        fixed = P["sport"][row]
        tuple_of = self._tuple_ids()
        key = tuple_of[row]
        size = int(tuple_of.max()) + 1 if len(tuple_of) else 0
        counts = port_state.setdefault("counts", np.zeros(size, np.int64)) if port_state is not None \
            else np.zeros(size, np.int64)
        if hasattr(self, "host_port_ranges_"):
            eph = self._ephemeral_ports(s, key, size, rng, port_state)
        else:  # bundles from before per-host port ranges
            rank = pd.Series(np.ones(n, np.int64)).groupby(key).cumsum().to_numpy() - 1 + counts[key]
            np.add.at(counts, key, 1)
            eph = EPHEMERAL_LO + (hash_host(key) + rank) % (EPHEMERAL_HI - EPHEMERAL_LO)
        plan["src_port"] = np.where(fixed >= 0, fixed, eph)
        unknown = (plan["app"].astype(str) == "unknown").to_numpy()
        for col in ("src_port", "dst_port"):
            plan[col] = np.where(unknown, undissected(plan[col].to_numpy(np.int64)), plan[col].to_numpy())
        plan["ttl_src"], plan["ttl_dst"] = self.host_ttl_[s], self.host_ttl_[d]
        plan["win_src"], plan["win_dst"] = self.host_window_[s], self.host_window_[d]

    def _ephemeral_ports(self, src, key, n_tuples, rng, port_state) -> np.ndarray:
        """Source ports from the host's own ranges: each flow takes the host's low range with the
        host's share of low ports, else its high range (each widened to ``MIN_PORT_SPAN``). The
        flows of one (tuple, range) walk a permutation of the range (a stride coprime with its
        width, from a start spread by the tuple id), so no 4-tuple comes back before the range is
        used up, and many flows cover the range evenly, as stacks restarted capture after capture do."""
        r = self.host_port_ranges_[src]
        low = rng.random(len(src)) < r[:, 0]
        k2 = key * 2 + low
        counts = port_state.setdefault("range_counts", np.zeros(2 * n_tuples, np.int64)) if port_state is not None \
            else np.zeros(2 * n_tuples, np.int64)
        rank = pd.Series(np.ones(len(src), np.int64)).groupby(k2).cumsum().to_numpy() - 1 + counts[k2]
        np.add.at(counts, k2, 1)
        lo = np.where(low, r[:, 1], r[:, 3]).astype(np.int64)
        hi = np.where(low, r[:, 2], r[:, 4]).astype(np.int64)
        span = np.maximum(hi - lo + 1, MIN_PORT_SPAN)
        lo = np.clip(np.minimum(lo, 65536 - span), 1024, None)
        # the range's ports less those Wireshark dissects by number: walk the k-th of those left
        d_lo = np.searchsorted(DISSECTOR_PORTS, lo)
        free = span - (np.searchsorted(DISSECTOR_PORTS, lo + span) - d_lo)
        stride = np.rint(free * 0.6180339887).astype(np.int64) | 1
        for _ in range(64):  # the next odd numbers until coprime with the width (a few steps at most)
            bad = np.gcd(stride, free) != 1
            if not bad.any():
                break
            stride = np.where(bad, stride + 2, stride)
        k = (hash_host(k2) + rank * stride) % free
        return FREE_PORTS[lo - d_lo + k]  # the k-th port from lo that is not a dissector port

    def _real_addresses(self) -> list[str]:
        """The real addresses; MAC-only hosts (ARP) numbered from 169.254.1.0."""
        ips = list(self.hosts_)
        for k, i in enumerate(i for i, h in enumerate(self.hosts_) if h.startswith("mac:")):
            ips[i] = str(ipaddress.IPv4Address("169.254.0.0") + 256 + k)
        return ips

    def _tuple_ids(self) -> np.ndarray:
        """Per pairs row: one id per (craftable kind, source, destination, destination port)."""
        P = self.pairs_
        kinds = {k: i for i, k in enumerate(sorted({g[2] for g in self.groups_}))}
        kind_of = np.array([kinds[g[2]] for g in self.groups_], np.int64)
        table = np.column_stack([kind_of[P["group"]], P["src"], P["dst"], P["dport"]]) if len(P["group"]) \
            else np.zeros((0, 4), np.int64)
        return np.unique(table, axis=0, return_inverse=True)[1].reshape(-1).astype(np.int64)

    # ------------------------------------------------------------------------------------
    def config(self) -> dict:
        return {"max_components": self.max_components, "max_bins": self.max_bins, "max_silence_s": self.max_silence_s,
                "max_fit_rows": self.max_fit_rows,
                "keep_addresses": self.keep_addresses, "seed": self.seed,
                "start_model": self.start_model, "session_gap_s": self.session_gap_s,
                "session_order": self.session_order, "burst_gap_s": self.burst_gap_s}

    def write_to(self, writer) -> None:
        arrays = {"group_p": self.group_p_, "rate_counts": self.rate_counts_, "bin_offset_s": self.bin_offset_s_,
                  "gap_quantiles": self.gap_quantiles_, "host_src_count": self.host_src_count_,
                  "host_dst_count": self.host_dst_count_, "host_ttl": self.host_ttl_,
                  "host_window": self.host_window_, "host_version": self.host_version_}
        if hasattr(self, "host_port_ranges_"):
            arrays["host_port_ranges"] = self.host_port_ranges_
        if hasattr(self, "session_flows_"):
            if hasattr(self, "session_gap_q_"):
                arrays["session_gap_q"] = self.session_gap_q_
            if hasattr(self, "burst_flows_"):
                arrays.update(burst_flows=self.burst_flows_, burst_session=self.burst_session_,
                              burst_offset_s=self.burst_offset_s_, session_burst_gap_q=self.session_burst_gap_q_,
                              burst_group=self.burst_group_, burst_packets=self.burst_packets_)
            arrays.update(session_flows=self.session_flows_, session_dur_s=self.session_dur_s_,
                          silence_s=self.silence_s_, session_gap_quantiles=self.session_gap_quantiles_,
                          mean_rate=np.array([self.mean_rate_]))
        arrays.update({f"pairs_{k}": v for k, v in self.pairs_.items()})
        for i, m in enumerate(self.gmm_):
            for k, v in m.items():
                arrays[f"gmm{i}_{k}"] = np.asarray(v)
        writer.add_arrays(PREFIX + "arrays.npz", **arrays)
        writer.add_json(PREFIX + "model.json", {
            "config": self.config(), "groups": self.groups_, "bin_s": self.bin_s_, "start_ns": self.start_ns_,
            "unsupported_share": self.unsupported_share_, "hosts": self.hosts_, "host_mac": self.host_mac_,
            "addresses": self.addresses_, "macs": self.macs_,
            **({"idle_s": self.idle_s_} if hasattr(self, "idle_s_") else {})})

    @classmethod
    def read_from(cls, bundle) -> "AggregateModel":
        meta = bundle.json(PREFIX + "model.json")
        a = bundle.arrays(PREFIX + "arrays.npz")
        config = dict(meta["config"])
        if "session_flows" not in a:  # a bundle from before the session model replays its curve
            config["start_model"] = "curve"
        config.setdefault("session_order", "random")  # bundles from before drew sessions in random order
        m = cls(**config)
        if "session_flows" in a:
            m.session_flows_, m.session_dur_s_ = a["session_flows"], a["session_dur_s"]
            m.silence_s_, m.session_gap_quantiles_ = a["silence_s"], a["session_gap_quantiles"]
            m.mean_rate_ = float(a["mean_rate"][0])
            if "session_gap_q" in a:
                m.session_gap_q_ = a["session_gap_q"]
            if "burst_flows" in a:  # bundles from session 5 on; before, gaps drawn one by one
                m.burst_flows_, m.burst_session_ = a["burst_flows"], a["burst_session"]
                m.burst_offset_s_, m.session_burst_gap_q_ = a["burst_offset_s"], a["session_burst_gap_q"]
                m.burst_group_, m.burst_packets_ = a["burst_group"], a["burst_packets"]
        m.groups_ = [list(g) for g in meta["groups"]]
        m.bin_s_, m.start_ns_ = float(meta["bin_s"]), int(meta["start_ns"])
        m.unsupported_share_ = float(meta["unsupported_share"])
        m.hosts_, m.host_mac_ = meta["hosts"], meta["host_mac"]
        m.addresses_, m.macs_ = meta["addresses"], meta["macs"]
        if "idle_s" in meta:  # bundles from before keep their flows' keys as drawn
            m.idle_s_ = float(meta["idle_s"])
        m.group_p_, m.rate_counts_, m.gap_quantiles_ = a["group_p"], a["rate_counts"], a["gap_quantiles"]
        m.bin_offset_s_ = a["bin_offset_s"]
        m.host_src_count_, m.host_dst_count_ = a["host_src_count"], a["host_dst_count"]
        m.host_ttl_, m.host_window_, m.host_version_ = a["host_ttl"], a["host_window"], a["host_version"]
        if "host_port_ranges" in a:
            m.host_port_ranges_ = a["host_port_ranges"]
        m.pairs_ = {k[6:]: v for k, v in a.items() if k.startswith("pairs_")}
        m.gmm_ = [{k: a[f"gmm{i}_{k}"] for k in ("weights", "means", "covariances", "lo", "hi", "pk_values", "pk_p")
                   if f"gmm{i}_{k}" in a} for i in range(len(m.groups_))]  # pk_*: bundles from session 4 on
        return m

    def save(self, path: str | Path, force: bool = False) -> Path:
        """A generator bundle holding this level alone."""
        from necst.model.bundle import save_generator

        return Path(save_generator(path, aggregate=self, force=force))

    @classmethod
    def load(cls, path: str | Path) -> "AggregateModel":
        """The aggregate level of any generator bundle that holds it (every file and the manifest verified)."""
        from necst.bundle import load
        from necst.errors import BundleError
        from necst.model.bundle import verify_seal

        bundle = load(path, kind="generator")
        if "aggregate" not in bundle.config.get("levels", []):
            raise BundleError("bundle has no aggregate level", path)
        verify_seal(bundle)
        return cls.read_from(bundle)


def _conditional_draws(m: dict, packets: np.ndarray, rng) -> np.ndarray:
    """(log1p packets, log1p bytes, log1p duration) rows: the packet counts given, bytes and
    duration drawn from the group's mixture conditioned on them (each component's Gaussian
    conditional, components weighted by how likely the count is under each)."""
    x0 = np.log1p(packets.astype(np.float64))
    w, mu, cov = np.asarray(m["weights"], float), np.asarray(m["means"], float), np.asarray(m["covariances"], float)
    s00 = cov[:, 0, 0]
    logp = np.log(np.maximum(w, 1e-300))[None] - 0.5 * (x0[:, None] - mu[None, :, 0]) ** 2 / s00[None] \
        - 0.5 * np.log(s00)[None]
    prob = np.exp(logp - logp.max(axis=1, keepdims=True))
    prob /= prob.sum(axis=1, keepdims=True)
    comp = (rng.random(len(x0))[:, None] > np.cumsum(prob, axis=1)[:, :-1]).sum(axis=1)
    out = np.empty((len(x0), 3))
    out[:, 0] = x0
    for c in np.unique(comp):
        s = comp == c
        k = cov[c, 1:, 0] / s00[c]
        mean = mu[c, 1:][None] + (x0[s] - mu[c, 0])[:, None] * k[None]
        ccov = cov[c, 1:, 1:] - np.outer(k, cov[c, 0, 1:])
        out[s, 1:] = mean + rng.multivariate_normal(np.zeros(2), (ccov + ccov.T) / 2, size=int(s.sum()))
    out[:, 1:] = np.clip(out[:, 1:], m["lo"][1:], m["hi"][1:])
    return out


def _row_ids(table: np.ndarray) -> np.ndarray:
    """``np.unique(table, axis=0, return_inverse=True)[1]`` (ids of the distinct rows in their
    lexicographic order), from one lexsort: numpy's row-wise unique sorts a structured copy,
    several times slower on a plan's 100k rows."""
    n = len(table)
    out = np.empty(n, np.int64)
    if n == 0:
        return out
    order = np.lexsort(table.T[::-1])  # the first column varies slowest
    s = table[order]
    new = np.empty(n, bool)
    new[0] = True
    np.any(s[1:] != s[:-1], axis=1, out=new[1:])
    out[order] = np.cumsum(new) - 1
    return out


def _size_bucket(packets: np.ndarray) -> np.ndarray:
    """log2 bucket of a flow's packet count (1, 2-3, 4-7, ...), at most 63."""
    return np.minimum(np.floor(np.log2(np.maximum(packets, 1))).astype(np.int64), 63)


def hash_host(h):
    """A deterministic spread of ephemeral port bases (per host pair row)."""
    return (np.asarray(h, np.int64) * 2654435761) % (EPHEMERAL_HI - EPHEMERAL_LO)


__all__ = ["AggregateModel"]
