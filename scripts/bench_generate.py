"""Benchmark: necst generate (end to end, and crafting + writing alone) against a Scapy writer.

    PYTHONPATH=. python scripts/bench_generate.py [--model DIR] [--packets 1000000]
    PYTHONPATH=. python scripts/bench_generate.py --replay DATASET_OR_CAPTURE [--packets N]

With a model (default: models/default) it generates N packets end to end, including model
sampling, and reports the time per stage. With --replay (no model needed) it crafts the packet
fields of a real dataset (repeated, shifted in time, until N packets) through necst's planner,
frame builder and writer: the crafting and writing stages alone. Either way the first
--scapy-sample packets' fields, read back from necst's capture, are written the way peers do
(Scapy, one packet at a time: build the layers, compute checksums, append to a pcap) and the
Scapy rate is scaled to N. Prints packets/s for both and their ratio, from this one run.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from necst.capture.reader import CaptureReader  # noqa: E402
from necst.capture.writer import CaptureWriter  # noqa: E402
from necst.generate.craft import Arena, build_frames, plan_packets  # noqa: E402
from necst.process.decode import decode  # noqa: E402


def replay_tables(path: str):
    """Per-packet and per-flow craft tables holding a real dataset's packet fields (bench only)."""
    from necst.model.aggregate import _craft_kind
    from necst.process.dataset import load_dataset

    ds = load_dataset(path)
    f = ds.flows.to_pandas()
    ck = _craft_kind(f["kind"].astype(str).to_numpy(), f["protocol"].fillna(0).to_numpy(),
                     f["ethertype"].fillna(0).to_numpy())
    ok = (ck != "") & f["src_mac"].notna() & f["dst_mac"].notna() & (f["src_ip"].notna() | (ck == "arp"))
    f = f[ok].reset_index(drop=True)
    ck = ck[ok.to_numpy()]
    p = ds.packets.select(["flow_id", "flow_pos", "ts_ns", "direction", "tcp_flags", "payload_len", "ttl",
                           "tcp_window"]).to_pandas()
    row = pd.Series(np.arange(len(f)), index=f["flow_id"].to_numpy())
    p = p[p["flow_id"].isin(row.index)]
    p["flow"] = row[p["flow_id"].to_numpy()].to_numpy()
    per_dir = p.groupby(["flow", "direction"]).agg(ttl=("ttl", "median"), win=("tcp_window", "median")).reset_index()
    def side(d, col, default):
        s = per_dir[per_dir["direction"] == d].set_index("flow")[col]
        return s.reindex(np.arange(len(f))).fillna(default).round().astype(int).to_numpy()
    arp_ip = np.where(ck == "arp", "169.254.0.1", None)
    flows = pd.DataFrame({"kind": ck, "src_ip": f["src_ip"].fillna(pd.Series(arp_ip)).astype(str),
                          "dst_ip": f["dst_ip"].fillna(pd.Series(np.where(ck == "arp", "169.254.0.2", None))).astype(str),
                          "src_mac": f["src_mac"], "dst_mac": f["dst_mac"],
                          "src_port": f["src_port"].fillna(0).astype(int), "dst_port": f["dst_port"].fillna(0).astype(int),
                          "ttl_src": side(0, "ttl", 64), "ttl_dst": side(1, "ttl", 64),
                          "win_src": side(0, "win", 64240), "win_dst": side(1, "win", 64240),
                          "app": f["app"].astype(str)})
    packets = pd.DataFrame({"flow": p["flow"].to_numpy(), "pos": p["flow_pos"].to_numpy(np.int64),
                            "ts_ns": p["ts_ns"].to_numpy(), "direction": p["direction"].to_numpy(np.int64),
                            "tcp_flags": p["tcp_flags"].fillna(0).to_numpy(np.int64),
                            "payload_len": p["payload_len"].fillna(0).to_numpy(np.int64)})
    return packets, flows


def necst_replay(path: str, n_packets: int, out: Path) -> tuple[float, int]:
    packets, flows = replay_tables(path)
    span = int(packets["ts_ns"].max() - packets["ts_ns"].min()) + 1
    block = max(1, (1 << 16) // len(packets))  # repetitions planned together: ~64k packets per call
    pk = pd.concat([packets.assign(ts_ns=packets["ts_ns"] + r * span, flow=packets["flow"] + r * len(flows))
                    for r in range(block)], ignore_index=True)
    fl = pd.concat([flows] * block, ignore_index=True)
    arena = Arena()
    t = time.perf_counter()
    written, r = 0, 0
    with CaptureWriter(out, force=True) as w:
        while written < n_packets:  # each block: the same flows, later in time
            fields = plan_packets(pk.assign(ts_ns=pk["ts_ns"] + r * block * span), fl, seed=r)
            fields = fields.take(fields.time_order())
            for i in range(0, len(fields), 1 << 16):
                part = fields.take(np.arange(i, min(i + (1 << 16), len(fields), i + n_packets - written)))
                if len(part) == 0:
                    break
                w.write(build_frames(part, arena=arena))
                written += len(part)
            r += 1
    return time.perf_counter() - t, written


def scapy_writer(capture: Path, k: int, out: Path) -> tuple[float, int]:
    """Write the first k packets' fields of ``capture`` the way peers do: Scapy, one at a time."""
    from scapy.all import ARP, ICMP, IP, TCP, UDP, Ether, IPv6, ICMPv6EchoRequest, PcapWriter, Raw  # noqa: F401

    batch = next(iter(CaptureReader(capture)))
    t = pa.Table.from_batches([decode(batch)]).slice(0, k).to_pylist()
    start = time.perf_counter()
    w = PcapWriter(str(out), sync=False)
    for r in t:
        pkt = Ether(src=r["eth_src"], dst=r["eth_dst"])
        if r["ethertype"] == 0x0806:
            pkt = pkt / ARP()
        else:
            ip = (IP(src=r["src_ip"], dst=r["dst_ip"], ttl=r["ttl"], id=r["ip_id"] or 0) if r["ip_version"] == 4
                  else IPv6(src=r["src_ip"], dst=r["dst_ip"], hlim=r["ttl"]))
            if r["ip_proto"] == 6:
                l4 = TCP(sport=r["src_port"], dport=r["dst_port"], flags=r["tcp_flags"], seq=r["tcp_seq"],
                         ack=r["tcp_ack"], window=r["tcp_window"])
            elif r["ip_proto"] == 17:
                l4 = UDP(sport=r["src_port"], dport=r["dst_port"])
            else:
                l4 = ICMP() if r["ip_version"] == 4 else ICMPv6EchoRequest()
            pkt = pkt / ip / l4 / Raw(b"\0" * int(r["payload_len"] or 0))
        pkt.time = r["ts_ns"] / 1e9
        w.write(pkt)
    w.close()
    return time.perf_counter() - start, len(t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="generator bundle (default: the bundled model)")
    ap.add_argument("--replay", default=None, help="dataset or capture whose packet fields to craft (no model)")
    ap.add_argument("--packets", type=int, default=1_000_000)
    ap.add_argument("--scapy-sample", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None,
                    help="worker threads that sample ahead of crafting (default: NECST_GENERATE_THREADS, else "
                         "min(2, CPUs)); the capture is the same for any number")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="necst-bench-"))
    out = tmp / "necst.pcap"
    load0 = os.getloadavg()[0]
    cpu0 = time.process_time()
    if args.replay:
        seconds, n = necst_replay(args.replay, args.packets, out)
        what = "craft + write (replayed real packet fields)"
    else:
        from necst.generate.sampler import generate, generate_threads, load_generator

        threads = generate_threads() if args.threads is None else args.threads
        t, c = time.perf_counter(), time.process_time()
        models = load_generator(args.model)
        print(f"models loaded in {time.perf_counter() - t:.2f} s, CPU {time.process_time() - c:.2f} s (not in the "
              "figures below; a bundle with stored packet pools reads them here instead of decoding them in the "
              "flow_model stage)")
        cpu0 = time.process_time()  # CPU of generate itself, all threads, as its wall time
        r = generate(out, models, n_packets=args.packets, seed=args.seed, force=True, workers=threads)
        seconds, n = r.seconds, r.packets
        what = f"necst generate end to end (model sampling included; {threads} worker threads)"
        # stages on different threads overlap: their wall times may sum to more than the total
        print("stages, wall s: " + ", ".join(f"{k} {v:.2f}" for k, v in r.timings.items())
              + f" (wait: crafting waiting for the workers; total {seconds:.2f})")
        print("stages, CPU s:  " + ", ".join(f"{k} {v:.2f}" for k, v in r.cpu_timings.items() if k != "wait")
              + f" (sum {sum(r.cpu_timings.values()):.2f})")
    cpu = time.process_time() - cpu0
    size = os.path.getsize(out)
    rate = n / seconds
    print(f"{what}: {n} packets ({size / n:.0f} bytes/packet in the file) in {seconds:.2f} s = {rate:,.0f} packets/s "
          f"(CPU time of this process: {cpu:.2f} s, {n / cpu:,.0f} packets per CPU-second; load average "
          f"{load0:.1f} before, {os.getloadavg()[0]:.1f} after, on {os.cpu_count()} cores)")
    s_seconds, k = scapy_writer(out, args.scapy_sample, tmp / "scapy.pcap")
    s_rate = k / s_seconds
    print(f"Scapy writer, one packet at a time, same fields: {k} packets in {s_seconds:.2f} s = {s_rate:,.0f} "
          f"packets/s (scaled to {n} packets: {n / s_rate:.0f} s)")
    print(f"ratio necst / Scapy: {rate / s_rate:.0f}x")


if __name__ == "__main__":
    main()
