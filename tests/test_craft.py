"""Crafting and writing: byte-exact reproducibility, repair rules, read-back, and tshark's verdict."""
from __future__ import annotations

import importlib
import subprocess

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from necst.capture.reader import CaptureReader
from necst.capture.writer import CaptureWriter, write_capture
from necst.errors import NecstError, OutputExistsError
from necst.generate.craft import ACK, FIN, PSH, RST, SYN, Arena, build_frames, craft, plan_packets
from necst.process.decode import decode

craft_module = importlib.import_module("necst.generate.craft")  # the package exports its craft function

T0 = 1_700_000_000_000_000_000


def make_tables(n_flows=300, seed=0, messy=True):
    """Random flows of every kind with (if messy) flag sequences that need repair."""
    rng = np.random.default_rng(seed)
    kinds = rng.choice(["tcp", "udp", "icmp", "arp"], n_flows, p=[.6, .25, .1, .05])
    v6 = (rng.random(n_flows) < 0.3) & (kinds != "arp")
    src = [f"fd00::{i % 250 + 1:x}" if x else f"192.168.1.{i % 250 + 1}" for i, x in enumerate(v6)]
    dst = [f"2001:db8::{i % 200 + 1:x}" if x else f"10.0.{i % 7}.{i % 200 + 1}" for i, x in enumerate(v6)]
    tcp_ports = rng.choice([80, 443, 8883, 22, 53], n_flows)
    udp_ports = rng.choice([53, 123, 5353, 1900, 443], n_flows)
    flows = pd.DataFrame(dict(
        kind=kinds, src_ip=src, dst_ip=dst,
        src_mac=[f"02:00:00:00:{i // 256 % 256:02x}:{i % 256:02x}" for i in range(n_flows)],
        dst_mac=[f"02:11:00:00:{i // 256 % 256:02x}:{i % 256:02x}" for i in range(n_flows)],
        src_port=49152 + np.arange(n_flows), dst_port=np.where(kinds == "tcp", tcp_ports, udp_ports),
        ttl_src=64, ttl_dst=rng.choice([64, 128, 255], n_flows),
        win_src=rng.integers(0, 65536, n_flows), win_dst=29200,
        app=rng.choice(["http", "tls", "dns", "unknown", "ssdp", "mdns", "ntp"], n_flows)))
    npk = rng.integers(1, 30, n_flows)
    flow = np.repeat(np.arange(n_flows), npk)
    n = len(flow)
    start = T0 + np.sort(rng.integers(0, 10**10, n_flows))
    gaps = rng.exponential(2e7, n).astype(np.int64)
    csum = gaps.cumsum()
    first = np.cumsum(npk) - npk
    ts = start[flow] + csum - np.repeat(csum[first] - gaps[first], npk)
    flags = (rng.choice([0x10, 0x18, 0x02, 0x12, 0x11, 0x04, 0x14, 0x19], n,
                        p=[.4, .3, .05, .05, .1, .03, .04, .03]) if messy else np.full(n, 0x18))
    pl = np.where(rng.random(n) < 0.4, 0, rng.integers(1, 1500, n))
    hdr = rng.choice([-1, 54, 66, 74, 94], n)  # header lengths: none given, or TCP options of 0..40 bytes
    packets = pd.DataFrame(dict(flow=flow, ts_ns=ts, direction=rng.integers(0, 2, n),
                                tcp_flags=flags, payload_len=pl, hdr_len=hdr))
    return packets, flows


def make_link_tables():
    """IGMP (v3 and v2), EAPOL (a whole 4-way handshake and a station's side alone), LLC and ARP
    flows, with the frame lengths a model would give (hdr_len, payload 0), and what to expect."""
    flows = pd.DataFrame(dict(
        kind=["igmp", "igmp", "eapol", "eapol", "llc", "arp", "icmp", "icmp", "icmp"],
        src_ip=["10.0.0.5", "10.0.0.6", "169.254.1.1", "169.254.1.2", "169.254.1.3", "10.0.0.7", "fe80::1",
                "::", "fe80::2"],
        dst_ip=["224.0.0.22", "224.0.0.1", "169.254.1.9", "169.254.1.8", "169.254.1.7", "10.0.0.1", "ff02::2",
                "ff02::1:ffaa:fd4e", "ff02::16"],
        src_mac=[f"02:00:00:00:00:0{i}" for i in range(9)],
        dst_mac=["01:00:5e:00:00:16", "01:00:5e:00:00:01", "02:00:00:00:01:07", "02:00:00:00:01:08",
                 "ff:ff:ff:ff:ff:ff", "02:00:00:00:00:0f", "33:33:00:00:00:02", "33:33:ff:aa:fd:4e",
                 "33:33:00:00:00:16"],
        src_port=0, dst_port=0, ttl_src=64, ttl_dst=64, win_src=0, win_dst=0))
    # (flow, direction, model frame length, crafted frame length, note)
    rows = [(0, 0, 54, 54, "v3 1 record"), (0, 1, 62, 62, "v3 2 records, sent one way"), (0, 0, 70, 70, "v3 3"),
            (0, 0, 60, 60, "v3 1 record padded"), (0, 0, 135, 54, "v3 1 record"), (1, 0, 46, 46, "v2"),
            (1, 0, 60, 60, "v2 padded"), (2, 0, 113, 113, "msg 1"), (2, 1, 113, 135, "msg 2"),
            (2, 0, 113, 169, "msg 3"), (2, 1, 113, 113, "msg 4"), (3, 0, 135, 135, "msg 2"),
            (3, 0, 135, 113, "msg 4"), (4, 0, 20, 20, "XID"), (4, 0, 60, 60, "XID padded"),
            (5, 0, 42, 42, "request"), (5, 1, 60, 60, "reply padded"), (5, 0, 97, 42, "no payload"),
            (6, 0, 70, 70, "RS"), (7, 1, 98, 78, "NS, sent one way"), (8, 0, 110, 110, "MLDv2 2 records"),
            (8, 0, 170, 170, "MLDv2 5 records"), (8, 0, 60, 90, "MLDv2 1 record")]
    packets = pd.DataFrame([r[:3] for r in rows], columns=["flow", "direction", "hdr_len"])
    packets["payload_len"] = np.where(packets["hdr_len"] == 97, 55, 0)  # a payload ARP cannot carry
    packets["hdr_len"] -= packets["payload_len"]
    packets["tcp_flags"] = 0
    packets["ts_ns"] = T0 + np.arange(len(rows)) * 10**6
    return packets, flows, np.array([r[3] for r in rows])


def _read_back(path) -> pa.Table:
    return pa.Table.from_batches([decode(b) for b in CaptureReader(path)])


def _one_flow(flags, dirs, payload, kind="tcp", attempts=False, open_established=True):
    n = len(flags)
    packets = pd.DataFrame(dict(flow=0, ts_ns=T0 + np.arange(n) * 1000, direction=dirs,
                                tcp_flags=flags, payload_len=payload))
    flows = pd.DataFrame(dict(kind=[kind], src_ip=["10.0.0.1"], dst_ip=["10.0.0.2"],
                              src_mac=["02:00:00:00:00:01"], dst_mac=["02:00:00:00:00:02"],
                              src_port=[40000], dst_port=[80], ttl_src=[64], ttl_dst=[128],
                              win_src=[1000], win_dst=[0]))
    return plan_packets(packets, flows, seed=1, attempts=attempts, open_established=open_established)


# ---- TCP state machine ----------------------------------------------------------------------
def test_unanswered_attempt_kept_with_its_retransmissions():
    f = _one_flow([SYN, SYN, SYN], [0, 0, 0], [0, 0, 0], attempts=True)
    assert f["tcp_flags"].tolist() == [SYN, SYN, SYN]  # no handshake inserted, no FIN added
    assert len(set(f["seq"].tolist())) == 1  # retransmissions repeat the SYN's sequence number
    assert f.repairs["failed_attempts"] == 1 and f.repairs["syn_retransmissions"] == 2
    old = _one_flow([SYN, SYN, SYN], [0, 0, 0], [0, 0, 0])  # without rule 0: repaired into a connection
    assert old["tcp_flags"][1] == SYN | ACK and old.repairs["handshake_inserted"] == 2


def test_refused_attempt_gets_rst_ack_of_the_syn():
    f = _one_flow([SYN, RST | ACK], [0, 1], [0, 0], attempts=True)
    assert f["tcp_flags"].tolist() == [SYN, RST | ACK]
    assert int(f["ack"][1]) == (int(f["seq"][0]) + 1) & 0xFFFFFFFF
    bare = _one_flow([SYN, RST], [0, 1], [0, 0], attempts=True)  # a bare RST stays bare
    assert bare["tcp_flags"].tolist() == [SYN, RST] and int(bare["ack"][1]) == 0


def test_syn_retransmission_before_a_handshake():
    f = _one_flow([SYN, SYN, SYN | ACK, ACK, ACK | PSH, ACK], [0, 0, 1, 0, 0, 1], [0, 0, 0, 0, 10, 0],
                  attempts=True, open_established=False)
    assert f["tcp_flags"].tolist() == [SYN, SYN, SYN | ACK, ACK, ACK | PSH, ACK | FIN]
    assert f.repairs["handshake_inserted"] == 0 and f.repairs["syn_retransmissions"] == 1
    assert f["seq"][0] == f["seq"][1] and int(f["ack"][2]) == (int(f["seq"][0]) + 1) & 0xFFFFFFFF
    # a SYN then data, the SYN+ACK missing: not an attempt, the handshake is completed
    g = _one_flow([SYN, ACK | PSH], [0, 0], [0, 10], attempts=True)
    assert g["tcp_flags"].tolist() == [SYN, SYN | ACK, ACK | PSH | FIN] and g.repairs["failed_attempts"] == 0


def test_data_only_flow_gets_handshake_and_fin():
    f = _one_flow([PSH | ACK, ACK], [1, 1], [100, 0])
    # the responder's data cannot be the handshake's ACK: SYN, SYN+ACK and ACK are inserted
    assert f["tcp_flags"].tolist() == [SYN, SYN | ACK, ACK, PSH | ACK, ACK | FIN]
    assert f["direction"].tolist() == [0, 1, 0, 1, 1]
    assert f["payload_len"].tolist() == [0, 0, 0, 100, 0]
    assert f.repairs["handshake_inserted"] == 3
    seq, ack = f["seq"].astype(np.int64), f["ack"].astype(np.int64)
    isn_c, isn_s = seq[0], seq[1]
    assert ack[0] == 0  # a SYN acknowledges nothing
    assert ack[1] == (isn_c + 1) % 2**32  # the SYN consumed one number
    assert seq[2] == (isn_c + 1) % 2**32 and ack[2] == (isn_s + 1) % 2**32
    assert seq[3] == (isn_s + 1) % 2**32
    assert seq[4] == (isn_s + 101) % 2**32  # after the server's 100 bytes
    assert f["window"].tolist() == [1000, 1, 1000, 1, 1]  # a zero window is raised to 1


def test_client_data_serves_as_handshake_ack():
    f = _one_flow([PSH | ACK, ACK], [0, 1], [100, 0])
    assert f["tcp_flags"].tolist() == [SYN, SYN | ACK, PSH | ACK, ACK | FIN]
    assert f.repairs["handshake_inserted"] == 2
    seq, ack = f["seq"].astype(np.int64), f["ack"].astype(np.int64)
    assert ack[3] == (seq[0] + 101) % 2**32


def test_run_of_pure_acks_acknowledges_segments_one_by_one():
    f = _one_flow([SYN, SYN | ACK, ACK, ACK, ACK, ACK, ACK, ACK, ACK | FIN],
                  [0, 1, 0, 1, 1, 1, 0, 0, 0], [0, 0, 0, 100, 200, 300, 0, 0, 0])
    seq, ack = f["seq"].astype(np.int64), f["ack"].astype(np.int64)
    isn_s = seq[1]
    # three server segments, then the client's ACKs: 100, 300, then all 600 (the FIN acks all too)
    assert [(a - isn_s - 1) % 2**32 for a in ack[6:]] == [300, 600, 600]
    assert ((ack[6] - isn_s - 1) % 2**32) >= 100  # never below what was acknowledged before


def _ack_ping_pong():
    """Three server segments, then client and server pure ACKs in turn (the server has nothing new
    to acknowledge), then the client's data."""
    return _one_flow([SYN, SYN | ACK, ACK, PSH | ACK, PSH | ACK, PSH | ACK, ACK, ACK, ACK, ACK, ACK, PSH | ACK],
                     [0, 1, 0, 1, 1, 1, 0, 1, 0, 1, 0, 0], [0, 0, 0, 100, 200, 300, 0, 0, 0, 0, 0, 10])


def test_pure_acks_between_the_other_sides_acks_acknowledge_segments_one_by_one():
    f = _ack_ping_pong()
    ack = f["ack"].astype(np.int64)
    isn_s = int(f["seq"][1])
    # the client's pure ACKs: 100, 300, 600, its data all 600 (a data packet acknowledges all)
    assert [(int(a) - isn_s - 1) % 2**32 for a in ack[[6, 8, 10, 11]]] == [100, 300, 600, 600]
    # the server's pure ACKs have only the client's SYN to acknowledge: they repeat
    assert len(set(ack[[1, 3, 4, 5, 7, 9]].tolist())) == 1


def test_existing_handshake_kept_and_only_invalid_flags_change():
    f = _one_flow([SYN, SYN | ACK, ACK | PSH, RST | ACK, ACK | FIN, ACK | FIN, PSH | ACK, RST | ACK],
                  [0, 1, 0, 1, 0, 0, 0, 1], [0, 0, 10, 5, 0, 0, 0, 3])
    assert f.repairs["handshake_inserted"] == 0
    # direction 1 resets and sends nothing but a RST after: both RSTs kept (without payload), the
    # peer's packets in between stay; direction 0's second FIN resends its first (same sequence
    # number); PSH after the FIN dropped
    assert f["tcp_flags"].tolist() == [SYN, SYN | ACK, ACK | PSH, RST | ACK, ACK | FIN, ACK | FIN, ACK, RST | ACK]
    assert f["payload_len"].tolist() == [0, 0, 10, 0, 0, 0, 0, 0]
    assert f["seq"][5] == f["seq"][4] and f["seq"][6] == f["seq"][4] + 1
    assert f.repairs["fin_retransmissions"] == 1
    # a RST its sender follows with data is no close: cleared
    g = _one_flow([SYN, SYN | ACK, ACK | PSH, RST | ACK, ACK | PSH, PSH | ACK, ACK | FIN, ACK | FIN],
                  [0, 1, 0, 1, 0, 1, 0, 1], [0, 0, 10, 5, 0, 7, 0, 0])
    assert g["tcp_flags"].tolist() == [SYN, SYN | ACK, ACK | PSH, ACK, ACK | PSH, PSH | ACK, ACK | FIN, ACK | FIN]
    assert g["payload_len"].tolist() == [0, 0, 10, 5, 0, 7, 0, 0]


def test_repeated_fin_resends_the_first(monkeypatch):
    """A FIN repeated with data resends the first FIN's segment; the other side's ACK before the last
    resend does not acknowledge the lost FIN, the one after acknowledges all; a FIN beyond
    FIN_RETRANSMISSIONS is no FIN."""
    flags = [SYN, SYN | ACK, ACK | PSH, ACK | PSH | FIN, ACK, ACK | PSH | FIN, ACK | PSH | FIN, ACK | FIN, ACK]
    dirs, payload = [0, 1, 0, 0, 1, 0, 0, 1, 0], [0, 0, 10, 20, 0, 35, 9, 0, 0]
    monkeypatch.setattr(craft_module, "FIN_RETRANSMISSIONS", 6)
    f = _one_flow(flags, dirs, payload)
    seq, ack = f["seq"].astype(np.int64), f["ack"].astype(np.int64)
    assert f["tcp_flags"].tolist() == flags[:4] + [ACK] + flags[5:]
    assert f["payload_len"].tolist() == [0, 0, 10, 20, 0, 20, 20, 0, 0]
    isn_c = seq[0]
    assert seq[6] == seq[5] == seq[3] == isn_c + 11 and seq[8] == isn_c + 32
    assert ack[4] == isn_c + 11 and ack[7] == isn_c + 32  # the FIN is acknowledged after its resends
    assert f.repairs["fin_retransmissions"] == 2
    monkeypatch.setattr(craft_module, "FIN_RETRANSMISSIONS", 1)
    f = _one_flow(flags, dirs, payload)
    seq = f["seq"].astype(np.int64)
    assert f["tcp_flags"].tolist() == flags[:4] + [ACK, ACK | PSH | FIN, ACK, ACK | FIN, ACK]
    assert f["payload_len"].tolist() == [0, 0, 10, 20, 0, 20, 0, 0, 0]
    assert seq[5] == seq[3] and seq[6] == seq[3] + 21 and f.repairs["fin_retransmissions"] == 1
    # a FIN its direction sends data after is no close: cleared, the data kept
    h = _one_flow([SYN, SYN | ACK, ACK | PSH | FIN, ACK | PSH, ACK, ACK | FIN, ACK | FIN], [0, 1, 0, 0, 1, 0, 1],
                  [0, 0, 20, 30, 0, 0, 0])
    assert h["tcp_flags"].tolist() == [SYN, SYN | ACK, ACK | PSH, ACK | PSH, ACK, ACK | FIN, ACK | FIN]
    assert h["payload_len"].tolist() == [0, 0, 20, 30, 0, 0, 0] and h.repairs["fin_retransmissions"] == 0
    # the model gave the resend no data: the FIN alone, after the data
    g = _one_flow([SYN, SYN | ACK, ACK | PSH | FIN, ACK | PSH | FIN, ACK | FIN, ACK], [0, 1, 0, 0, 1, 0],
                  [0, 0, 20, 0, 0, 0])
    assert g["tcp_flags"][3] == ACK | FIN and g["payload_len"][3] == 0
    assert g["seq"][3] == g["seq"][2] + 20


def test_close_flows_off_leaves_open_flows_open():
    packets = pd.DataFrame(dict(flow=0, ts_ns=T0 + np.arange(4), direction=[0, 1, 0, 1],
                                tcp_flags=[SYN, SYN | ACK, ACK, ACK], payload_len=[0, 0, 5, 0]))
    _, flows = make_tables(1)
    flows = flows.assign(kind="tcp", src_ip="10.0.0.1", dst_ip="10.0.0.2")
    closed = plan_packets(packets, flows, close_flows=True, open_established=False)["tcp_flags"]
    left = plan_packets(packets, flows, close_flows=False)["tcp_flags"]
    assert closed[-1] == ACK | FIN and left[-1] == ACK


def test_model_established_flow_left_open_but_repaired_one_closed():
    """Rule 5 spares only a flow whose handshake the model made itself (a connection cut by the
    capture's end); a flow that needed a handshake inserted is still closed."""
    own = _one_flow([SYN, SYN | ACK, ACK, ACK | PSH, ACK], [0, 1, 0, 0, 1], [0, 0, 0, 10, 0])
    assert own["tcp_flags"].tolist() == [SYN, SYN | ACK, ACK, ACK | PSH, ACK]
    assert own.repairs["left_open"] == 1
    repaired = _one_flow([ACK | PSH, ACK], [0, 1], [10, 0])
    assert repaired["tcp_flags"].tolist()[:3] == [SYN, SYN | ACK, ACK | PSH]
    assert repaired["tcp_flags"][-1] == ACK | FIN and repaired.repairs["left_open"] == 0
    closed = _one_flow([SYN, SYN | ACK, ACK, ACK | PSH, ACK], [0, 1, 0, 0, 1], [0, 0, 0, 10, 0],
                       open_established=False)
    assert closed["tcp_flags"][-1] == ACK | FIN


def test_repeated_closing_rsts_kept_other_rsts_cleared():
    """A side closing with a run of bare RSTs keeps them (a third of real RSTs); an RST before other
    traffic, or from the other side before the last packet, is cleared."""
    f = _one_flow([SYN, SYN | ACK, ACK, ACK | PSH, RST, RST, RST], [0, 1, 0, 0, 0, 0, 0], [0, 0, 0, 10, 0, 0, 0])
    assert f["tcp_flags"].tolist() == [SYN, SYN | ACK, ACK, ACK | PSH, RST, RST, RST]
    assert len(set(f["seq"][-3:].tolist())) == 1 and f["ack"][-3:].tolist() == [0, 0, 0]
    g = _one_flow([SYN, SYN | ACK, ACK, RST, ACK | PSH, RST | ACK, RST], [0, 1, 0, 1, 0, 1, 0], [0, 0, 0, 0, 10, 0, 0])
    assert g["tcp_flags"].tolist() == [SYN, SYN | ACK, ACK, ACK, ACK | PSH, ACK, RST]


def test_partial_handshake_completed_in_place():
    f = _one_flow([SYN, ACK | PSH, ACK], [0, 1, 0], [0, 20, 0])
    assert f["tcp_flags"][:3].tolist() == [SYN, SYN | ACK, ACK]
    assert f["direction"][:3].tolist() == [0, 1, 0]
    assert f.repairs["handshake_inserted"] == 2


def _idle_then_mid_stream(second_at_s=200.0, first_closes=False, reverse=True):
    """A connection the model opened and left open (flow 0), a flow the model starts mid-stream
    ``second_at_s`` later between the same hosts and server port (flow 1: the server's FIN then the
    client's RST, or, not ``reverse``, the client's data then its FIN), and another mid-stream flow
    of that server (flow 2) with no earlier connection left to continue."""
    close = [(0, 0, FIN | ACK, 0, 0.07), (0, 1, FIN | ACK, 0, 0.08), (0, 0, ACK, 0, 0.09)] if first_closes else []
    second = ([(1, 0, FIN | ACK, 0, 0.0), (1, 1, RST, 0, 0.01)] if reverse else
              [(1, 0, PSH | ACK, 40, 0.0), (1, 1, ACK, 0, 0.01), (1, 0, FIN | ACK, 0, 0.02), (1, 1, FIN | ACK, 0, 0.03)])
    rows = ([(0, 0, SYN, 0, 0.0), (0, 1, SYN | ACK, 0, 0.01), (0, 0, ACK, 0, 0.02), (0, 0, PSH | ACK, 100, 0.03),
             (0, 1, ACK, 0, 0.04), (0, 1, PSH | ACK, 50, 0.05), (0, 0, ACK, 0, 0.06)] + close
            + [(f, d, fl, pl, t + second_at_s) for f, d, fl, pl, t in second]
            + [(2, 0, PSH | ACK, 30, 400.0), (2, 1, ACK, 0, 400.01)])
    packets = pd.DataFrame(rows, columns=["flow", "direction", "tcp_flags", "payload_len", "t"])
    packets["ts_ns"] = T0 + np.rint(packets.pop("t") * 1e9).astype(np.int64)
    client, server = "10.0.0.1", "198.18.0.1"
    flows = pd.DataFrame(dict(kind="tcp", src_ip=[client, server if reverse else client, client],
                              dst_ip=[server, client if reverse else server, server],
                              src_mac="02:00:00:00:00:01", dst_mac="02:00:00:00:00:02",
                              src_port=[40000, 443 if reverse else 40007, 40001],
                              dst_port=[443, 40005 if reverse else 443, 443], app="tls"))
    return packets, flows


def test_mid_stream_flow_continues_an_idle_connection():
    """Same 5-tuple, sequence and acknowledgement numbers carrying on where the connection stopped,
    no handshake inserted; the mid-stream flow with nothing to continue gets one."""
    for reverse in (True, False):
        f = plan_packets(*_idle_then_mid_stream(reverse=reverse), seed=1, attempts=True)
        assert f.repairs["continued"] == 1 and f.repairs["handshake_inserted"] == 2  # flow 2's, not flow 1's
        flow, d, fl = f["flow"], f["direction"], f["tcp_flags"].astype(int)
        seq, ack, pl = f["seq"].astype(np.int64), f["ack"].astype(np.int64), f["payload_len"]
        assert (flow == 0).sum() == 7 + (2 if reverse else 4) and not (flow == 1).any()
        one = np.flatnonzero(flow == 0)
        assert ((fl[one[1:]] & SYN) == 0).sum() == len(one) - 2  # one SYN each way: the opening
        later = one[7:]  # the continuation, its directions as the connection's (the server is side 1)
        assert d[later].tolist() == ([1, 0] if reverse else [0, 1, 0, 1])
        assert set(f["sport"][later[d[later] == 0]]) == {40000} and set(f["dport"][later[d[later] == 0]]) == {443}
        for side in (0, 1):  # each side's sequence carries on from its last segment before the silence
            rows = one[d[one] == side]
            nxt = (seq[rows[:-1]] + pl[rows[:-1]] + ((fl[rows[:-1]] & (SYN | FIN)) != 0)) & 0xFFFFFFFF
            assert (seq[rows[1:]] == nxt).all()
        fin = later[(fl[later] & FIN) != 0][0]  # acknowledges all the other side sent
        other = one[(d[one] != d[fin]) & (one < fin)]
        assert ack[fin] == (seq[other[-1]] + pl[other[-1]] + ((fl[other[-1]] & (SYN | FIN)) != 0)) & 0xFFFFFFFF
    off = plan_packets(*_idle_then_mid_stream(), seed=1, continuations=False)
    assert off.repairs.get("continued", 0) == 0 and off.repairs["handshake_inserted"] == 4


def test_mid_stream_flow_continues_only_an_open_connection_idle_long_enough():
    soon = plan_packets(*_idle_then_mid_stream(second_at_s=100.0), seed=1)  # a meter would not cut it
    assert (soon["flow"] == 1).sum() == 2 + 2 and soon.repairs["handshake_inserted"] == 2  # its own handshake
    assert not (soon["flow"] == 2).any() and soon.repairs["continued"] == 1  # flow 2, 400 s on, continues
    shorter = plan_packets(*_idle_then_mid_stream(second_at_s=100.0), seed=1, idle_s=60)  # a meter cutting at 60 s
    assert not (shorter["flow"] == 1).any() and (shorter["flow"] == 2).any()
    closed = plan_packets(*_idle_then_mid_stream(first_closes=True), seed=1)
    assert closed.repairs["continued"] == 0 and closed.repairs["handshake_inserted"] == 4
    packets, flows = _idle_then_mid_stream()
    other = plan_packets(packets, flows.assign(dst_ip=["198.18.0.2", "10.0.0.1", "198.18.0.1"]), seed=1)
    assert other.repairs["continued"] == 0  # another server


def test_timestamps_never_go_back_within_flows_and_output():
    packets, flows = make_tables(100, seed=3)
    packets["ts_ns"] = packets["ts_ns"].to_numpy()[::-1].copy()  # make every flow's times go back
    batch = craft(packets, flows, seed=0)
    assert np.all(np.diff(batch.ts_ns) >= 0)
    f = plan_packets(packets, flows, seed=0)
    same = f["flow"][1:] == f["flow"][:-1]
    assert np.all(np.diff(f["ts_ns"])[same] >= 0)


# ---- bytes ------------------------------------------------------------------------------------
def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path):
    packets, flows = make_tables(200, seed=5)
    a = write_capture(tmp_path / "a.pcap", [craft(packets, flows, seed=7)])
    b = write_capture(tmp_path / "b.pcap", [craft(packets, flows, seed=7, layout="pcap")])
    c = write_capture(tmp_path / "c.pcap", [craft(packets, flows, seed=8)])
    assert a.read_bytes() == b.read_bytes()
    assert a.read_bytes() != c.read_bytes()


def test_read_back_with_necst_reader_matches_plan(tmp_path):
    packets, flows = make_tables(150, seed=2)
    f = plan_packets(packets, flows, seed=4)
    f = f.take(f.time_order())
    path = write_capture(tmp_path / "x.pcap", [build_frames(f, arena=Arena())])
    t = _read_back(path)
    assert t.num_rows == len(f)
    assert np.array_equal(t["ts_ns"].to_numpy(), f["ts_ns"])
    kind = f["kind"]
    tcp = kind == 0
    assert np.array_equal(t["tcp_flags"].to_numpy(zero_copy_only=False)[tcp], f["tcp_flags"][tcp])
    assert np.array_equal(t["tcp_seq"].to_numpy(zero_copy_only=False)[tcp], f["seq"][tcp])
    assert np.array_equal(t["tcp_ack"].to_numpy(zero_copy_only=False)[tcp], f["ack"][tcp])
    ip = kind < 3
    assert np.array_equal(t["payload_len"].to_numpy(zero_copy_only=False)[ip], f["payload_len"][ip])
    assert np.array_equal(t["ttl"].to_numpy(zero_copy_only=False)[ip], f["ttl"][ip])
    assert np.array_equal(t["ip_version"].to_numpy(zero_copy_only=False)[ip], f["ip_version"][ip])
    assert set(t["ethertype"].to_pylist()) <= {0x0800, 0x86DD, 0x0806}
    l4 = t["l4_hdr_len"].to_numpy(zero_copy_only=False)[tcp]
    assert np.array_equal(l4, 20 + f["tcp_opt"][tcp].astype(np.int64))
    assert (f["tcp_opt"][tcp] > 0).any() and set(np.unique(f["tcp_opt"])) <= set(range(0, 41, 4))
    assert t["cap_len"].to_numpy().tolist() == t["wire_len"].to_numpy().tolist()


def test_link_kinds_read_back_as_igmp_eapol_llc_arp(tmp_path):
    packets, flows, lengths = make_link_tables()
    f = plan_packets(packets, flows, seed=3)
    assert f["direction"][f["kind"] == 4].tolist() == [0] * 7  # IGMP reports go one way
    path = write_capture(tmp_path / "l.pcap", [build_frames(f.take(f.time_order()))])
    t = _read_back(path).to_pandas()
    assert t["wire_len"].tolist() == lengths.tolist()
    assert t["ethertype"].tolist() == [0x0800] * 7 + [0x888E] * 6 + [6] * 2 + [0x0806] * 3 + [0x86DD] * 5
    icmp6 = t.iloc[-5:]
    assert set(icmp6["ip_proto"]) == {58} and icmp6["icmp_type"].tolist() == [133, 135, 143, 143, 143]
    assert icmp6["ttl"].tolist() == [255, 255, 1, 1, 1]
    igmp = t.iloc[:7]
    assert set(igmp["ip_proto"]) == {2} and set(igmp["ip_hdr_len"]) == {24} and set(igmp["ttl"]) == {1}
    assert igmp["dst_ip"].tolist() == ["224.0.0.22"] * 5 + ["224.0.0.1"] * 2
    assert t["eth_dst"].tolist()[13:15] == ["ff:ff:ff:ff:ff:ff"] * 2


def test_arp_request_goes_to_the_flows_destination_mac(tmp_path):
    """Unicast ARP (cache refreshes, half the real ARP flows) stays unicast both ways, so a flow
    meter keys request and reply as one flow; a flow to the broadcast address goes one way."""
    flows = pd.DataFrame(dict(kind=["arp", "arp"], src_ip=["10.0.0.2", "10.0.0.3"], dst_ip=["10.0.0.1", "10.0.0.1"],
                              src_mac=["02:00:00:00:00:02", "02:00:00:00:00:03"],
                              dst_mac=["02:00:00:00:00:01", "ff:ff:ff:ff:ff:ff"], src_port=0, dst_port=0,
                              ttl_src=64, ttl_dst=64, win_src=0, win_dst=0))
    packets = pd.DataFrame(dict(flow=[0, 0, 1, 1], direction=[0, 1, 0, 1], tcp_flags=0, payload_len=0,
                                ts_ns=T0 + np.arange(4) * 10**6))
    f = plan_packets(packets, flows, seed=2)
    assert f["direction"].tolist() == [0, 1, 0, 0]  # nobody answers from the broadcast address
    path = write_capture(tmp_path / "a.pcap", [build_frames(f.take(f.time_order()))])
    from necst.process.flows import assign_flows

    table, metered = assign_flows(_read_back(path))
    t = table.to_pandas()
    assert t["eth_dst"].tolist() == ["02:00:00:00:00:01", "02:00:00:00:00:02"] + ["ff:ff:ff:ff:ff:ff"] * 2
    assert t["arp_op"].tolist() == [1, 2, 1, 1]
    assert metered.num_rows == 2 and t["flow_id"].nunique() == 2


def test_tcp_60_byte_frame_is_padding_not_options():
    """hdr_len 60 with no payload: a padded 54-byte segment (no options); 58: one option word."""
    packets = pd.DataFrame(dict(flow=0, ts_ns=T0 + np.arange(5), direction=[0, 1, 0, 1, 0],
                                tcp_flags=[SYN, SYN | ACK, ACK, ACK, ACK], payload_len=[0, 0, 0, 4, 0],
                                hdr_len=[58, 74, 60, 56, 66]))
    flows = pd.DataFrame(dict(kind=["tcp"], src_ip=["10.0.0.1"], dst_ip=["10.0.0.2"], src_mac=["02:00:00:00:00:01"],
                              dst_mac=["02:00:00:00:00:02"], src_port=[40000], dst_port=[8080]))
    f = plan_packets(packets, flows)
    assert f["tcp_opt"].tolist() == [4, 20, 0, 0, 12]
    assert f["pad"].tolist() == [0, 0, 6, 2, 0]
    frames = build_frames(f)
    assert frames.wire_len.tolist() == [58, 74, 60, 60, 66]


def test_unknown_kind_and_bad_mac_are_clear_errors():
    packets, flows = make_tables(5, seed=1)
    bad = flows.assign(kind="sctp")
    with pytest.raises(NecstError, match="unknown flow kind"):
        plan_packets(packets, bad)
    bad = flows.assign(src_mac="zz:00:00:00:00:01")
    with pytest.raises(NecstError, match="MAC"):
        plan_packets(packets, bad)


# ---- writer -----------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt,nanosecond", [("pcap", True), ("pcap", False), ("pcapng", True)])
def test_writer_formats_read_back(tmp_path, fmt, nanosecond):
    packets, flows = make_tables(60, seed=9)
    batch = craft(packets, flows, seed=1, layout=fmt)
    path = write_capture(tmp_path / f"x.{fmt}", [batch], format=fmt, nanosecond=nanosecond)
    reader = CaptureReader(path)
    got = list(reader)
    assert reader.format.startswith(fmt)
    ts = np.concatenate([g.ts_ns for g in got])
    want = batch.ts_ns if nanosecond else batch.ts_ns // 1000 * 1000
    assert np.array_equal(ts, want)
    assert [g.packet(i) for g in got for i in range(len(g))] == [batch.packet(i) for i in range(len(batch))]


def test_writer_copies_foreign_batches_and_cuts_at_snaplen(tmp_path):
    packets, flows = make_tables(40, seed=4)
    src = write_capture(tmp_path / "src.pcap", [craft(packets, flows)])
    batches = list(CaptureReader(src))
    for fmt in ("pcap", "pcapng"):
        out = write_capture(tmp_path / f"copy.{fmt}", batches, format=fmt, snaplen=60)
        back = list(CaptureReader(out))
        n = sum(len(b) for b in back)
        assert n == sum(len(b) for b in batches)
        assert max(int(b.cap_len.max()) for b in back) <= 60
        assert np.array_equal(np.concatenate([b.wire_len for b in back]),
                              np.concatenate([b.wire_len for b in batches]))
        assert back[0].packet(0) == batches[0].packet(0)[:60]


def test_writer_refuses_to_overwrite_and_leaves_nothing_on_failure(tmp_path):
    out = tmp_path / "x.pcap"
    out.write_bytes(b"keep")
    with pytest.raises(OutputExistsError):
        CaptureWriter(out)
    assert out.read_bytes() == b"keep"
    packets, flows = make_tables(10, seed=1)
    batch = craft(packets, flows)
    fresh = tmp_path / "y.pcap"
    with pytest.raises(RuntimeError):
        with CaptureWriter(fresh) as w:
            w.write(batch)
            raise RuntimeError("boom")
    assert not fresh.exists()
    assert list(tmp_path.iterdir()) == [out]
    back = batch.ts_ns[::-1].copy()
    batch.ts_ns = back
    with pytest.raises(NecstError, match="backwards"):
        with CaptureWriter(fresh) as w:
            w.write(batch)
    assert not fresh.exists()


# ---- Wireshark's verdict ---------------------------------------------------------------------
def _tshark_fields(tshark, path, display_filter, *fields):
    cmd = [tshark, "-r", str(path), "-o", "ip.check_checksum:TRUE", "-o", "tcp.check_checksum:TRUE",
           "-o", "udp.check_checksum:TRUE", "-Y", display_filter, "-T", "fields"]
    for f in fields:
        cmd += ["-e", f]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return [line.split("\t") for line in out.splitlines()]


_ANALYSIS = ["lost_segment", "ack_lost_segment", "retransmission", "fast_retransmission",
             "spurious_retransmission", "out_of_order", "zero_window", "reused_ports", "window_update",
             "window_full", "keep_alive", "duplicate_ack"]
_CSUM = ["ip.checksum.status", "tcp.checksum.status", "udp.checksum.status", "icmp.checksum.status",
         "icmpv6.checksum.status", "igmp.checksum.status"]
_EXPERT_ERROR = "8388608"  # PI_ERROR


def tshark_verdict(tshark, path) -> dict:
    """Counts of what Wireshark objects to in a capture, in two tshark passes (the generate issue's criteria)."""
    first = {}
    for stream, flags in _tshark_fields(tshark, path, "tcp", "tcp.stream", "tcp.flags"):
        first.setdefault(stream, int(flags, 16))
    problems = ("_ws.malformed || _ws.expert.severity == error || tcp.analysis.flags || "
                + " || ".join(f"{c} == 0" for c in _CSUM))
    rows = _tshark_fields(tshark, path, problems, "_ws.expert.severity", "_ws.expert.message", *_CSUM,
                          *(f"tcp.analysis.{a}" for a in _ANALYSIS))
    v = {"packets": sum(len(b) for b in CaptureReader(path)),
         "malformed": sum("Malformed" in r[1] for r in rows),
         "expert_errors": sum(_EXPERT_ERROR in r[0].split(",") for r in rows),
         "bad_checksums": sum(any("0" in f.split(",") for f in r[2:2 + len(_CSUM)]) for r in rows),
         "tcp_streams": len(first),
         "streams_opening_with_syn": sum(1 for f in first.values() if f & 0x12 == SYN),
         "retransmissions_other_than_syn": len(_tshark_fields(
             tshark, path, "tcp.analysis.retransmission && !(tcp.flags.syn == 1 && tcp.flags.ack == 0)",
             "frame.number"))}
    for i, a in enumerate(_ANALYSIS):
        v[a] = sum(1 for r in rows if len(r) > 2 + len(_CSUM) + i and r[2 + len(_CSUM) + i])
    v["analysis_other_than_dup_ack"] = sum(v[a] for a in _ANALYSIS if a != "duplicate_ack")
    v["analysis_other_than_dup_ack_or_syn_retransmission"] = (
        v["analysis_other_than_dup_ack"] - v["retransmission"] + v["retransmissions_other_than_syn"])
    return v


def test_tshark_sees_failed_attempts_as_real_ones(tmp_path, tshark):
    """Unanswered and refused attempts: streams opening with a SYN, the repeated SYNs Wireshark's
    retransmissions (as in real captures), nothing else flagged."""
    rows = [(0, 0, SYN, 0), (0, 0, SYN, 0), (0, 0, SYN, 0), (1, 0, SYN, 0), (1, 1, RST, 0),
            (2, 0, SYN, 0), (2, 0, SYN, 0), (2, 1, SYN | ACK, 0), (2, 0, ACK | PSH, 30), (2, 1, ACK, 0),
            (2, 0, RST, 0), (2, 0, RST, 0),  # a bare RST repeated: nothing for Wireshark to flag
            (3, 0, SYN, 0), (3, 1, SYN | ACK, 0), (3, 0, ACK | PSH, 10), (3, 1, RST, 0), (3, 0, ACK | PSH, 20),
            (3, 1, RST, 0)]  # a reset, the peer's segment sent before it arrived, the reset again
    packets = pd.DataFrame(rows, columns=["flow", "direction", "tcp_flags", "payload_len"])
    packets["ts_ns"] = T0 + np.arange(len(rows)) * 10**9
    flows = pd.DataFrame(dict(kind="tcp", src_ip="10.0.0.1", dst_ip="10.0.0.2", src_mac="02:00:00:00:00:01",
                              dst_mac="02:00:00:00:00:02", src_port=[40000, 40001, 40002, 40003], dst_port=80))
    fields = plan_packets(packets, flows, seed=3, attempts=True)
    assert fields["tcp_flags"][-4:].tolist() == [ACK | PSH, RST, ACK | PSH, RST]
    path = write_capture(tmp_path / "a.pcap", [build_frames(fields.take(fields.time_order()))])
    v = tshark_verdict(tshark, path)
    assert v["packets"] == len(rows)
    assert v["tcp_streams"] == 4 and v["streams_opening_with_syn"] == 4, v
    assert v["retransmission"] == 3 and v["retransmissions_other_than_syn"] == 0, v
    assert v["analysis_other_than_dup_ack_or_syn_retransmission"] == 0, v
    assert v["malformed"] == 0 and v["expert_errors"] == 0 and v["bad_checksums"] == 0, v


def test_tshark_sees_repeated_fins_as_retransmissions(tmp_path, tshark, monkeypatch):
    """A FIN repeated with or without data: Wireshark's retransmission of a lost segment (a note), not
    a spurious one, nothing missing or unseen; the other side's ACK before the resend repeats."""
    monkeypatch.setattr(craft_module, "FIN_RETRANSMISSIONS", 6)
    rows = [(0, 0, SYN, 0), (0, 1, SYN | ACK, 0), (0, 0, ACK | PSH, 30), (0, 1, ACK, 0), (0, 0, FIN | PSH | ACK, 20),
            (0, 1, ACK, 0), (0, 0, FIN | PSH | ACK, 20), (0, 1, FIN | ACK, 0), (0, 0, ACK, 0),
            (1, 0, SYN, 0), (1, 1, SYN | ACK, 0), (1, 0, ACK | PSH, 30), (1, 1, PSH | ACK, 100), (1, 0, FIN | ACK, 0),
            (1, 0, FIN | ACK, 0), (1, 0, FIN | ACK, 0), (1, 1, FIN | ACK, 0), (1, 1, FIN | PSH | ACK, 5), (1, 0, ACK, 0)]
    packets = pd.DataFrame(rows, columns=["flow", "direction", "tcp_flags", "payload_len"])
    packets["ts_ns"] = T0 + np.arange(len(rows)) * 10**8
    flows = pd.DataFrame(dict(kind="tcp", src_ip="10.0.0.1", dst_ip="10.0.0.2", src_mac="02:00:00:00:00:01",
                              dst_mac="02:00:00:00:00:02", src_port=[40000, 40001], dst_port=80))
    fields = plan_packets(packets, flows, seed=3)
    assert fields.repairs["fin_retransmissions"] == 4
    path = write_capture(tmp_path / "f.pcap", [build_frames(fields.take(fields.time_order()))])
    v = tshark_verdict(tshark, path)
    assert v["malformed"] == 0 and v["expert_errors"] == 0 and v["bad_checksums"] == 0, v
    assert v["retransmission"] == 4 and v["spurious_retransmission"] == 0, v
    assert v["analysis_other_than_dup_ack"] == 4, v
    resent = _tshark_fields(tshark, path, "tcp.analysis.retransmission", "frame.number", "tcp.len", "tcp.seq")
    assert [r[:2] for r in resent] == [["7", "20"], ["15", "0"], ["16", "0"], ["18", "0"]], resent
    assert [r[2] for r in resent] == ["31", "31", "31", "101"]  # relative: the first FIN's sequence numbers


def test_tshark_finds_link_kinds_valid(tmp_path, tshark):
    """IGMP, EAPOL, LLC and padded frames: dissected as such, nothing malformed, checksums good."""
    packets, flows, lengths = make_link_tables()
    path = write_capture(tmp_path / "l.pcap", [craft(packets, flows, seed=5)])
    v = tshark_verdict(tshark, path)
    assert v["packets"] == len(lengths)
    assert v["malformed"] == 0 and v["expert_errors"] == 0 and v["bad_checksums"] == 0, v
    assert not _tshark_fields(tshark, path, "_ws.expert", "frame.number")  # not even a note
    igmp = _tshark_fields(tshark, path, "igmp", "igmp.version", "igmp.type", "igmp.num_grp_recs",
                          "igmp.checksum.status", "ip.opt.type")
    assert [r[:3] for r in igmp] == [["3", "0x22", n] for n in "1231"] + [["3", "0x22", "1"]] + [["2", "0x16", ""]] * 2
    assert all(r[3] == "1" and r[4] == "148" for r in igmp)  # good checksum, router alert
    msgs = _tshark_fields(tshark, path, "eapol", "eapol.type", "wlan_rsna_eapol.keydes.msgnr")
    assert [r[1] for r in msgs] == ["1", "2", "3", "4", "2", "4"] and {r[0] for r in msgs} == {"3"}
    assert len(_tshark_fields(tshark, path, "wlan.rsn.version == 1", "frame.number")) == 2  # msg 2's RSN IE
    assert len(_tshark_fields(tshark, path, "llc.control == 0xaf", "frame.number")) == 2
    assert len(_tshark_fields(tshark, path, "eth.padding", "frame.number")) == 4
    icmp6 = _tshark_fields(tshark, path, "icmpv6", "icmpv6.type", "icmpv6.checksum.status", "icmpv6.mldr.nb_mcast_records")
    assert icmp6 == [["133", "1", ""], ["135", "1", ""], ["143", "1", "2"], ["143", "1", "5"], ["143", "1", "1"]]
    assert len(_tshark_fields(tshark, path, "ipv6.hopopts && icmpv6.type == 143", "frame.number")) == 3


def test_tshark_sees_duplicate_acks_only_where_nothing_is_left_to_acknowledge(tmp_path, tshark):
    fields = _ack_ping_pong()
    path = write_capture(tmp_path / "p.pcap", [build_frames(fields)])
    v = tshark_verdict(tshark, path)
    assert v["duplicate_ack"] == 2 and v["analysis_other_than_dup_ack"] == 0, v  # the server's two
    assert v["malformed"] == v["expert_errors"] == v["bad_checksums"] == 0, v


def test_tshark_sees_one_stream_and_necst_two_flows_in_a_continuation(tmp_path, tshark):
    """The continued connection is one Wireshark stream that opened with a full handshake, with
    nothing flagged across the silence; necst's flow meter cuts it, as real meters do, into a flow
    with the handshake and a flow without one, on the same 5-tuple."""
    from necst.process.flows import assign_flows

    fields = plan_packets(*_idle_then_mid_stream(), seed=4, attempts=True)
    path = write_capture(tmp_path / "c.pcap", [build_frames(fields.take(fields.time_order()))])
    v = tshark_verdict(tshark, path)
    assert v["tcp_streams"] == 2 and v["streams_opening_with_syn"] == 2, v
    assert v["malformed"] == v["expert_errors"] == v["bad_checksums"] == 0, v
    assert sum(v[a] for a in _ANALYSIS) == 0, v
    _, meter = assign_flows(_read_back(path))
    got = meter.to_pandas().sort_values("first_seen_ns")
    assert got["handshake"].tolist() == [True, False, True]
    assert got["end_reason"].tolist()[:2] == ["idle", "rst"]
    ends = [frozenset([(r.src_ip, r.src_port), (r.dst_ip, r.dst_port)]) for r in got.itertuples()]
    assert ends[0] == ends[1] != ends[2]
    assert (got["src_ip"].iloc[1], got["src_port"].iloc[1]) == ("198.18.0.1", 443)  # the server spoke first


@pytest.mark.parametrize("payload", ["zeros", "app"])
def test_tshark_finds_crafted_capture_valid(tmp_path, tshark, payload):
    packets, flows = make_tables(800, seed=11)
    path = write_capture(tmp_path / "x.pcap", [craft(packets, flows, seed=2, payload=payload)])
    v = tshark_verdict(tshark, path)
    assert v["packets"] > 5000
    assert v["malformed"] == 0 and v["expert_errors"] == 0 and v["bad_checksums"] == 0, v
    assert v["tcp_streams"] > 300 and v["streams_opening_with_syn"] == v["tcp_streams"], v
    # consecutive pure ACKs in the input are duplicate ACKs, as in real traffic; repeated FINs are
    # retransmissions of a lost FIN (fast ones where duplicate ACKs came just before); nothing else
    fins = plan_packets(packets, flows, seed=2).repairs["fin_retransmissions"]
    assert fins > 0 and v["retransmission"] == v["retransmissions_other_than_syn"] == fins, v
    fin_retx = _tshark_fields(tshark, path, "tcp.analysis.retransmission && tcp.flags.fin == 1", "frame.number")
    assert len(fin_retx) == fins, v
    assert v["analysis_other_than_dup_ack"] == v["retransmission"] + v["fast_retransmission"], v
    if payload == "app":
        assert _tshark_fields(tshark, path, "http.request || tls.record || dns.qry.name", "frame.number")
        assert _tshark_fields(tshark, path, "ssdp", "frame.number")
        assert _tshark_fields(tshark, path, "mdns", "frame.number")
        assert _tshark_fields(tshark, path, "ntp.flags.mode == 3", "frame.number")
