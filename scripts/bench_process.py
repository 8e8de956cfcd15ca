#!/usr/bin/env python3
"""Time `necst process` against its peers on the same ≈1M-packet capture, in one run.

Each tool runs in its own child process, so its wall time and peak RSS are its own:
  necst packets   reader + decoder + packets.parquet (the packet stage alone)
  necst process   the whole `necst process` command (packets, flows, app labels, meta)
  tshark          `tshark -T fields` with the same per-packet fields, output discarded
  dpkt            a dpkt loop decoding the same fields
  scapy           Scapy dissection of a sample, scaled to the whole capture
  nfstream        one NFStream meter, no dissection, no statistics (flows only)
and prints packets/s, peak RSS and necst's ratio to each.

usage: python scripts/bench_process.py [--capture /tmp/bench1m.pcap] [--packets 1000000]
       [--scapy-sample 5000] [--skip tshark,dpkt,scapy,nfstream]
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MAKE_CAPTURE = ROOT.parent / "shared" / "tools" / "make_bench_capture.py"

TSHARK_FIELDS = ["frame.time_epoch", "frame.len", "frame.cap_len", "eth.src", "eth.dst", "vlan.id",
                 "ip.src", "ip.dst", "ipv6.src", "ipv6.dst", "ip.proto", "ip.ttl", "tcp.srcport",
                 "tcp.dstport", "udp.srcport", "udp.dstport", "tcp.flags", "tcp.seq_raw", "tcp.ack_raw",
                 "tcp.window_size_value", "icmp.type", "icmp.code"]

NECST_PACKETS = """
import sys
from necst.capture.reader import CaptureReader
from necst.process.dataset import PacketsWriter
from necst.process.decode import decode
with PacketsWriter(sys.argv[2]) as w:
    for raw in CaptureReader(sys.argv[1]):
        w.write_batch(decode(raw))
"""

DPKT_LOOP = """
import sys, socket, dpkt
n = 0
with open(sys.argv[1], "rb") as f:
    for ts, buf in dpkt.pcap.Reader(f):
        n += 1
        eth = dpkt.ethernet.Ethernet(buf)
        src, dst, ip = eth.src, eth.dst, eth.data
        if isinstance(ip, dpkt.ip.IP):
            s, d, p, ttl = socket.inet_ntoa(ip.src), socket.inet_ntoa(ip.dst), ip.p, ip.ttl
            l4 = ip.data
            if isinstance(l4, dpkt.tcp.TCP):
                x = (l4.sport, l4.dport, l4.flags, l4.seq, l4.ack, l4.win)
            elif isinstance(l4, dpkt.udp.UDP):
                x = (l4.sport, l4.dport)
            elif isinstance(l4, dpkt.icmp.ICMP):
                x = (l4.type, l4.code)
        elif isinstance(ip, dpkt.ip6.IP6):
            s, d = socket.inet_ntop(socket.AF_INET6, ip.src), socket.inet_ntop(socket.AF_INET6, ip.dst)
print(n)
"""

SCAPY_SAMPLE = """
import sys
from scapy.all import PcapReader, Ether, IP, IPv6, TCP, UDP, ICMP
n = int(sys.argv[2])
with PcapReader(sys.argv[1]) as r:
    for i, p in enumerate(r):
        if i >= n:
            break
        e = p.getlayer(Ether)
        fields = (p.time, len(p), e.src if e else None, e.dst if e else None)
        if IP in p:
            fields += (p[IP].src, p[IP].dst, p[IP].proto, p[IP].ttl)
        if TCP in p:
            fields += (p[TCP].sport, p[TCP].dport, int(p[TCP].flags), p[TCP].seq, p[TCP].ack, p[TCP].window)
        elif UDP in p:
            fields += (p[UDP].sport, p[UDP].dport)
"""

NFSTREAM_METER = """
import sys
from nfstream import NFStreamer
s = NFStreamer(source=sys.argv[1], decode_tunnels=False, bpf_filter=None, promiscuous_mode=True,
               snapshot_length=1536, idle_timeout=120, active_timeout=1800, accounting_mode=0,
               udps=None, n_dissections=0, statistical_analysis=False, splt_analysis=0,
               n_meters=1, performance_report=0)
print(sum(1 for _ in s))
"""


def run(cmd: list[str], stdout=subprocess.DEVNULL) -> tuple[float, float, float, int]:
    """Run a child; return (wall seconds, CPU seconds (user + system), peak RSS in MiB, exit code)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=stdout, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        print(f"  ! {' '.join(cmd[:3])}... exited {code}: {err.strip()[-300:]}", file=sys.stderr)
    return wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024, code


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--capture", default="/tmp/bench1m.pcap")
    ap.add_argument("--packets", type=int, default=1_000_000)
    ap.add_argument("--scapy-sample", type=int, default=5000)
    ap.add_argument("--skip", default="", help="comma-separated peers to skip")
    args = ap.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    cap = Path(args.capture)
    if not cap.exists():
        if not MAKE_CAPTURE.exists():
            sys.exit(f"{cap} is missing and {MAKE_CAPTURE} is absent to build it")
        subprocess.run([sys.executable, str(MAKE_CAPTURE), str(cap), "--packets", str(args.packets)], check=True)
    py = sys.executable
    n = args.packets
    rows = []  # (name, packets, wall, cpu, rss)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        wall, cpu, rss, _ = run([py, "-c", NECST_PACKETS, str(cap), str(tmp / "packets.parquet")])
        rows.append(("necst packets", n, wall, cpu, rss))
        necst = shutil.which("necst") or "necst"
        wall, cpu, rss, _ = run([necst, "process", str(cap), "--out", str(tmp / "ds"), "--quiet"])
        rows.append(("necst process", n, wall, cpu, rss))
        # bounded memory: the same packet stage on a capture ten times smaller
        small = tmp / "small.pcap"
        subprocess.run([sys.executable, str(MAKE_CAPTURE), str(small), "--packets", str(n // 10)],
                       check=True, capture_output=True)
        _, _, rss_small, _ = run([py, "-c", NECST_PACKETS, str(small), str(tmp / "small.parquet")])
        if "tshark" not in skip and shutil.which("tshark"):
            cmd = ["tshark", "-n", "-r", str(cap), "-T", "fields"]
            for f in TSHARK_FIELDS:
                cmd += ["-e", f]
            wall, cpu, rss, _ = run(cmd)
            rows.append(("tshark -T fields", n, wall, cpu, rss))
        if "dpkt" not in skip:
            wall, cpu, rss, code = run([py, "-c", DPKT_LOOP, str(cap)])
            if code == 0:
                rows.append(("dpkt loop", n, wall, cpu, rss))
        if "scapy" not in skip:
            k = min(args.scapy_sample, n)
            t_import, c_import, _, _ = run([py, "-c", "import scapy.all"])
            wall, cpu, rss, code = run([py, "-c", SCAPY_SAMPLE, str(cap), str(k)])
            if code == 0:
                rows.append((f"scapy (sample {k}, scaled)", n, (wall - t_import) * n / k,
                             (cpu - c_import) * n / k, rss))
        if "nfstream" not in skip:
            wall, cpu, rss, code = run([py, "-c", NFSTREAM_METER, str(cap)])
            if code == 0:
                rows.append(("nfstream (1 meter)", n, wall, cpu, rss))

    wall_pps = {name: pk / wall for name, pk, wall, _, _ in rows}
    cpu_pps = {name: pk / cpu for name, pk, _, cpu, _ in rows}
    print(f"\ncapture: {cap} ({cap.stat().st_size / 1e6:.0f} MB, {n} packets); "
          f"machine: {os.cpu_count()} cores; load average before: {os.getloadavg()[0]:.2f}")
    print(f"{'tool':28s} {'wall s':>8s} {'cpu s':>8s} {'packets/s':>11s} {'pk/cpu-s':>11s} {'peak RSS':>9s}"
          f" {'packets/it':>11s} {'process/it':>11s}")
    for name, pk, wall, cpu, rss in rows:
        print(f"{name:28s} {wall:8.2f} {cpu:8.2f} {wall_pps[name]:11,.0f} {cpu_pps[name]:11,.0f} {rss:7.0f}MB"
              f" {cpu_pps['necst packets'] / cpu_pps[name]:10.1f}x {cpu_pps['necst process'] / cpu_pps[name]:10.1f}x")
    print(f"\nmemory: necst packet stage peak RSS {rss_small:.0f} MB on {n // 10} packets, "
          f"{rows[0][4]:.0f} MB on {n} packets (x{rows[0][4] / rss_small:.2f} for 10x the packets)")
    print(textwrap.dedent("""
        necst packets: read + decode + app labels + packets.parquet; necst process: the whole command
        (flows and flows.parquet too). Ratios use packets per CPU-second (user + system), which is
        what one core delivers whatever else the machine runs; wall-clock packets/s are shown too.
        Targets: necst packets >= 400,000 packets/s and >= 20x tshark; necst process >= 5x NFStream."""))


if __name__ == "__main__":
    main()
