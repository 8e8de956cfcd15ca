"""The generate pipeline on real captures, with a stand-in flow model (test-only) until the LSTM lands."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from necst.capture.reader import CaptureReader
from necst.errors import NecstError, OutputExistsError
from necst.generate.sampler import Sampler, packet_table
from necst.model.aggregate import AggregateModel
from necst.process.dataset import load_dataset, process_captures

from test_craft import _tshark_fields, tshark_verdict

DEVICES = ["HueBridge", "EdimaxCam1", "D-LinkCam", "TP-LinkPlugHS100", "WeMoSwitch2", "Withings"]


class EmpiricalFlows:
    """Stand-in FlowModel (tests only): replays a real flow of the same kind and app, nearest in size."""

    def __init__(self, dataset):
        p = dataset.packets.select(["flow_id", "flow_pos", "direction", "tcp_flags", "flow_iat_ns",
                                    "payload_len", "wire_len"]).to_pandas().dropna(subset=["flow_id"])
        p = p.sort_values(["flow_id", "flow_pos"], kind="stable")
        self.p = p.reset_index(drop=True)
        f = dataset.flows.to_pandas()
        self.flows = pd.DataFrame({"flow_id": f["flow_id"], "kind": f["kind"].astype(str),
                                   "app": f["app"].astype(str), "packets": f["bidirectional_packets"].astype(int)})
        ids = self.p["flow_id"].to_numpy()
        self.first = np.searchsorted(ids, self.flows["flow_id"].to_numpy())
        self.count = np.searchsorted(ids, self.flows["flow_id"].to_numpy(), side="right") - self.first

    def sample(self, requests, packet_model=None, seed=0):
        rng = np.random.default_rng(seed)
        chosen = np.zeros(len(requests), np.int64)
        for (kind, app), g in requests.groupby(["kind", "app"]):
            cand = np.flatnonzero((self.flows["kind"] == kind) & (self.flows["app"] == app) & (self.count > 0))
            if len(cand) == 0:
                cand = np.flatnonzero((self.flows["kind"] == kind) & (self.count > 0))
            size = self.flows["packets"].to_numpy()[cand]
            want = g["packets"].to_numpy()
            near = np.abs(np.log1p(size)[None, :] - np.log1p(want)[:, None]) < 0.5
            pick = [rng.choice(cand[row]) if row.any() else rng.choice(cand) for row in near]
            chosen[g.index.to_numpy()] = pick
        n = self.count[chosen]
        rows = np.concatenate([np.arange(self.first[c], self.first[c] + k) for c, k in zip(chosen, n)])
        q = self.p.iloc[rows]
        return pd.DataFrame({"flow": np.repeat(np.arange(len(requests)), n),
                             "pos": np.concatenate([np.arange(k) for k in n]),
                             "direction": q["direction"].to_numpy(), "tcp_flags": q["tcp_flags"].fillna(0).to_numpy(),
                             "gap_s": q["flow_iat_ns"].fillna(0).to_numpy() / 1e9,
                             "payload_len": q["payload_len"].fillna(0).to_numpy(),
                             "hdr_len": (q["wire_len"] - q["payload_len"].fillna(0)).to_numpy()})


@pytest.fixture(scope="module")
def trained(shared_data, tmp_path_factory):
    paths = [p for d in DEVICES for p in sorted((shared_data / "benign" / "iot_sentinel" / d).glob("*.pcap"))[:3]]
    if not paths:
        pytest.skip("iot_sentinel captures not found")
    out = tmp_path_factory.mktemp("ds") / "ds"
    process_captures(paths, out)
    ds = load_dataset(out)
    return ds, AggregateModel(seed=0).fit(ds), EmpiricalFlows(ds)


def test_packet_table_times_follow_gaps():
    plan = pd.DataFrame({"start_ns": [1000, 5000]})
    fp = pd.DataFrame({"flow": [1, 0, 0, 1], "pos": [0, 1, 0, 1], "direction": [0, 1, 0, 1],
                       "tcp_flags": [0, 0, 0, 0], "gap_s": [7.0, 2e-6, 9.0, 1e-6], "payload_len": [1, 2, 3, 4]})
    t = packet_table(plan, fp)
    assert t["ts_ns"].tolist() == [1000, 3000, 5000, 6000]  # a first packet's gap is ignored


def _real_retransmissions(tshark, ds) -> dict:
    """Packets, and the FIN and fast retransmissions tshark finds, in the real captures of a dataset."""
    out = {"packets": 0, "fin": 0, "fast": 0}
    for src in ds.meta["inputs"]:
        rows = _tshark_fields(tshark, src["path"], "frame", "tcp.flags", "tcp.analysis.retransmission",
                              "tcp.analysis.fast_retransmission")
        out["packets"] += len(rows)
        out["fin"] += sum(1 for r in rows if len(r) > 1 and r[1] and r[0] and int(r[0], 16) & 1)
        out["fast"] += sum(1 for r in rows if len(r) > 2 and r[2])
    return out


def test_generate_packets_exact_and_reproducible(trained, tmp_path):
    ds, agg, flows = trained
    s = lambda: Sampler(agg, flows, chunk_flows=50)  # noqa: E731  small chunks: exercise the pending merge
    a = s().generate(tmp_path / "a.pcap", n_packets=3000, seed=4)
    b = s().generate(tmp_path / "b.pcap", n_packets=3000, seed=4)
    c = s().generate(tmp_path / "c.pcap", n_packets=3000, seed=5)
    assert a.packets == 3000
    assert a.path.read_bytes() == b.path.read_bytes()
    assert a.path.read_bytes() != c.path.read_bytes()
    ts = np.concatenate([x.ts_ns for x in CaptureReader(a.path)])
    assert len(ts) == 3000 and np.all(np.diff(ts) >= 0)
    with pytest.raises(OutputExistsError):
        s().generate(tmp_path / "a.pcap", n_packets=10)


def test_generate_duration_start_and_apps(trained, tmp_path):
    ds, agg, flows = trained
    start = 1_600_000_000 * 10**9
    r = Sampler(agg, flows).generate(tmp_path / "d.pcapng", format="pcapng", duration_s=600, seed=1,
                                     start_ns=start)
    ts = np.concatenate([x.ts_ns for x in CaptureReader(r.path)])
    assert r.packets > 0 and ts.min() >= start and ts.max() < start + 600 * 10**9
    plan = agg.sample(n_flows=200, seed=2, apps=["dns"])
    assert set(plan["app"]) == {"dns"}
    with pytest.raises(NecstError, match="no flows of application"):
        agg.sample(n_flows=5, apps=["no-such-app"])


def test_rate_scale_scales_flow_count(trained):
    _, agg, _ = trained
    one = len(agg.sample(duration_s=3600, seed=3))
    two = len(agg.sample(duration_s=3600, seed=3, rate_scale=2.0))
    assert 1.6 < two / max(one, 1) < 2.4


def test_generated_capture_is_valid_for_tshark(trained, tmp_path, tshark):
    ds, agg, flows = trained
    r = Sampler(agg, flows).generate(tmp_path / "v.pcap", n_packets=100_000, seed=7)
    v = tshark_verdict(tshark, r.path)
    assert v["packets"] == 100_000
    assert v["malformed"] == 0 and v["expert_errors"] == 0 and v["bad_checksums"] == 0, v
    # every TCP stream opens with a SYN (a capture cut at N packets loses whole streams, not SYNs);
    # those the flows leave unanswered or refused stay failed attempts, as in the real captures
    assert v["tcp_streams"] > 1000 and v["streams_opening_with_syn"] == v["tcp_streams"], v
    assert r.repairs["failed_attempts"] > 0
    # sequence numbers follow the payload: nothing missing, nothing acknowledged unseen, no reuse;
    # the only retransmissions are the attempts' repeated SYNs and repeated FINs (craft rules 0, 4),
    # each no more frequent than in the real captures, as tshark counts them there
    assert v["lost_segment"] == v["ack_lost_segment"] == v["out_of_order"] == v["spurious_retransmission"] == 0, v
    assert v["analysis_other_than_dup_ack_or_syn_retransmission"] == (
        v["retransmissions_other_than_syn"] + v["fast_retransmission"]), v
    fin_retx = len(_tshark_fields(tshark, r.path, "tcp.analysis.retransmission && tcp.flags.fin == 1", "frame.number"))
    assert fin_retx == v["retransmissions_other_than_syn"], v
    real = _real_retransmissions(tshark, ds)
    p = ds.packets.select(["tcp_flags", "flow_pos", "direction"]).to_pandas()
    real_syn_retx = int((((p["tcp_flags"].fillna(0).astype(int) & 0x17) == 0x2) & (p["flow_pos"] > 0)
                         & (p["direction"] == 0)).sum())
    syn_retx = v["retransmission"] - fin_retx
    assert syn_retx <= r.repairs["syn_retransmissions"], v  # the capture may cut a flow short
    assert syn_retx / v["packets"] <= 1.5 * real_syn_retx / len(p) + 1e-3, (v, real_syn_retx)
    assert 0 < fin_retx <= r.repairs["fin_retransmissions"], v
    assert fin_retx / v["packets"] <= 1.5 * real["fin"] / real["packets"] + 1e-3, (v, real)
    assert v["fast_retransmission"] / v["packets"] <= 1.5 * real["fast"] / real["packets"] + 1e-3, (v, real)
    # flows the model starts mid-stream continue an earlier idle connection where one fits: inside
    # one Wireshark stream (above: each opens with a SYN), cut by necst's flow meter into two flows
    assert r.repairs["continued"] > 0, r.repairs
    process_captures([r.path], tmp_path / "v")
    metered = load_dataset(tmp_path / "v").flows.to_pandas()
    metered = metered[metered["kind"] == "tcp"]
    # (a continuation planned past the capture's last packet is counted, not written)
    assert v["tcp_streams"] < len(metered) <= v["tcp_streams"] + r.repairs["continued"], (len(metered), v)
    ends = [metered[f"{e}_ip"] + ":" + metered[f"{e}_port"].astype(str) for e in ("src", "dst")]
    metered = metered.assign(key=np.where(ends[0] < ends[1], ends[0] + ends[1], ends[1] + ends[0]))
    metered = metered.sort_values(["key", "first_seen_ns"])
    again = metered["key"].eq(metered["key"].shift()).to_numpy()
    after = metered[again]
    before = metered.shift()[again]
    cont = (~after["handshake"].astype(bool)).to_numpy() & before["handshake"].astype(bool).to_numpy() \
        & (before["end_reason"] == "idle").to_numpy() \
        & (after["first_seen_ns"].to_numpy() - before["last_seen_ns"].to_numpy() >= 120e9)
    assert cont.sum() == len(metered) - v["tcp_streams"], metered[again]
    # the link-local traffic of the real captures is crafted too, and dissected as such
    kinds = {r[0] for r in _tshark_fields(tshark, r.path, "igmp || eapol || llc || arp", "frame.protocols")}
    for proto in ("igmp", "eapol", "arp"):
        assert any(proto in k.split(":") for k in kinds), (proto, kinds)


def test_cli_generate_needs_a_model(tmp_path):
    from necst.cli import app

    res = CliRunner().invoke(app, ["generate", "--model", str(tmp_path / "none"), "--out", str(tmp_path / "x.pcap"),
                                   "--flows", "10"])
    assert res.exit_code == 2 and "error:" in res.output


def test_cli_generate_writes_capture(trained, tmp_path, monkeypatch):
    from types import SimpleNamespace

    import necst.generate.sampler as sampler
    from necst.cli import app

    ds, agg, flows = trained
    monkeypatch.setattr(sampler, "load_generator", lambda d=None: SimpleNamespace(aggregate=agg, flow=flows, packet=None))
    out = tmp_path / "x.pcapng"
    args = ["generate", "--out", str(out), "--packets", "500", "--seed", "3", "--start", "2020-01-02T03:04:05Z",
            "--format", "pcapng", "--quiet"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "500 packets" in res.output
    ts = np.concatenate([b.ts_ns for b in CaptureReader(out)])
    assert len(ts) == 500 and ts.min() >= 1577934245 * 10**9
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 2 and "exists" in res.output
    res = CliRunner().invoke(app, args[:-1] + ["--force", "--start", "yesterday"])
    assert res.exit_code == 2 and "ISO-8601" in res.output
