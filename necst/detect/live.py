"""Live detection: sniff an interface, score batch by batch with the saved pipeline, alert at once.

Scapy's AsyncSniffer collects packets in its own thread; every ``batch_s`` seconds the new
packets become a small PacketTable and go through the same features, scaler, model and
threshold as `necst detect score`. In window mode the batches go through one
:class:`~necst.detect.windows.WindowStream` (the one a capture file goes through), so every
batch shares one window grid and windows that straddle a batch boundary are scored once, complete. Packet and flow modes score each batch on
its own (their per-host and per-flow state is not carried across batches).

Dissection is Scapy's, one packet at a time: fine for the rates of a sniffed interface, which
is why capture files never go this way.
"""
from __future__ import annotations

import socket
import threading
import time
from pathlib import Path
from typing import Callable, List

import pandas as pd
import pyarrow as pa

from necst.detect.features import extract, window_units
from necst.detect.windows import WindowStream
from necst.errors import NecstError, OutputExistsError

_FIELDS = ["ts_ns", "wire_len", "src_ip", "dst_ip", "ip_proto", "src_port", "dst_port", "tcp_flags", "file_index"]


def scapy_to_table(pkts) -> pa.Table:
    """The columns the detector uses, from Scapy packets."""
    from scapy.layers.inet import IP, TCP, UDP
    from scapy.layers.inet6 import IPv6

    rows = {k: [] for k in _FIELDS}
    for p in pkts:
        src = dst = proto = sp = dp = fl = None
        ip = p.getlayer(IP) or p.getlayer(IPv6)
        if ip is not None:
            src, dst = ip.src, ip.dst
            proto = ip.proto if ip.name == "IP" else ip.nh
            l4 = p.getlayer(TCP) or p.getlayer(UDP)
            if l4 is not None:
                sp, dp = int(l4.sport), int(l4.dport)
                if l4.name == "TCP":
                    fl = int(l4.flags)
        rows["ts_ns"].append(int(round(float(p.time) * 1e9)))
        rows["wire_len"].append(int(getattr(p, "wirelen", None) or len(p)))
        for k, v in (("src_ip", src), ("dst_ip", dst), ("ip_proto", proto), ("src_port", sp),
                     ("dst_port", dp), ("tcp_flags", fl), ("file_index", 0)):
            rows[k].append(v)
    from necst.schema import PACKET_SCHEMA

    return pa.table({k: pa.array(v, type=PACKET_SCHEMA.field(k).type) for k, v in rows.items()})


class LiveScorer:
    """Feeds batches of packets through a fitted detector, returning only units not yet scored."""

    def __init__(self, det):
        self.det = det
        # Window mode: one stream for the session, so windows straddling batches come out once, complete.
        self.stream = WindowStream(**det._fparams()) if det.mode == "window" else None
        self.scored: List[pd.DataFrame] = []
        self.packets = 0

    def feed(self, batch: pa.Table) -> pd.DataFrame:
        self.packets += batch.num_rows
        if batch.num_rows == 0:
            return pd.DataFrame()
        if self.stream is None:
            out = self.det.score(batch)
        else:
            out = self.det.score_units(window_units(self.stream.feed(batch)))
        self.scored.append(out)
        return out

    def flush(self) -> pd.DataFrame:
        """At the end: score the windows still waiting for later packets."""
        if self.stream is None:
            return pd.DataFrame()
        out = self.det.score_units(window_units(self.stream.flush()))
        self.scored.append(out)
        return out

    def result(self) -> pd.DataFrame:
        parts = [s for s in self.scored if len(s)]
        return pd.concat(parts, ignore_index=True) if parts else self.det.score_units(
            extract(pa.table({"ts_ns": pa.array([], pa.int64())}), self.det.mode, **self.det._fparams()))


def _alert_lines(out: pd.DataFrame) -> List[str]:
    lines: List[str] = []
    if len(out) == 0 or "flag" not in out.columns:
        return lines
    for _, r in out[out["flag"]].iterrows():
        when = time.strftime("%H:%M:%S", time.gmtime(r["start_ns"] / 1e9))
        lines.append(f"ALERT {when} error {r['error']:.4g} packets {int(r.get('packets', 0))} "
                     f"top {r.get('top1_feature', '?')}")
    return lines


def run_live(iface: str, duration: float, detector: str | Path, out: str | Path, batch_s: float = 2.0,
             force: bool = False, on_alert: Callable[[str], None] = print,
             on_ready: Callable[[], None] | None = None) -> dict:
    """Sniff ``iface`` for ``duration`` seconds; ``on_ready`` is called once the sniffer listens."""
    from necst.detect.detector import load
    from necst.detect.report import build_report, write_report

    out = Path(out)
    for p in (out, out.with_suffix(".csv")):
        if p.exists() and not force:
            raise OutputExistsError("exists already (use --force to overwrite)", p)
    if duration <= 0 or batch_s <= 0:
        raise NecstError("--duration and the batch length must be positive")
    det = load(detector)
    try:
        from scapy.all import AsyncSniffer, conf, get_if_list
    except ImportError as e:  # pragma: no cover
        raise NecstError(f"live capture needs scapy ({e})")
    try:  # ask the kernel: Scapy's list is cached when Scapy is first imported
        socket.if_nametoindex(iface)
    except OSError:
        raise NecstError(f"no such interface {iface!r} (have: {', '.join(get_if_list())})") from None
    conf.ifaces.reload()
    buf: list = []
    lock = threading.Lock()

    def take(p):
        with lock:
            buf.append(p)

    sniffer = AsyncSniffer(iface=iface, prn=take, store=False, started_callback=on_ready)
    try:
        sniffer.start()
    except (PermissionError, OSError) as e:
        raise NecstError(f"cannot sniff {iface}: {e} (needs root or CAP_NET_RAW)")
    scorer = LiveScorer(det)
    t_end = time.monotonic() + duration
    try:
        while True:
            now = time.monotonic()
            time.sleep(max(0.0, min(batch_s, t_end - now)))
            with lock:
                batch, buf[:] = list(buf), []
            for line in _alert_lines(scorer.feed(scapy_to_table(batch))):
                on_alert(line)
            if time.monotonic() >= t_end:
                break
    finally:
        try:
            sniffer.stop()
        except Exception:  # noqa: BLE001 - a sniffer that never started has nothing to stop
            pass
    with lock:
        batch = list(buf)
    for line in _alert_lines(scorer.feed(scapy_to_table(batch))):
        on_alert(line)
    for line in _alert_lines(scorer.flush()):
        on_alert(line)
    scored = scorer.result()
    rep = build_report(scored, det, f"live:{iface}", packets=scorer.packets)
    write_report(rep, scored, out, force=force)
    return rep
