"""FlowModel: learns flow structure from hand-made flows, samples reproducibly, saves safely."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from necst.errors import NecstError
from necst.model.flow import FlowModel, _pos_bucket, flow_structure, n_buckets, noflow_proto, size_class
from necst.model.length_codes import LengthCodes


def _tcp_flow(rng, n_data):
    """SYN, SYN+ACK, ACK, n_data request/response pairs, FIN+ACK both ways, last ACK."""
    flags = ["SYN", "SYN+ACK", "ACK"] + ["PSH+ACK", "ACK"] * n_data + ["FIN+ACK", "FIN+ACK", "ACK"]
    dirs = [0, 1, 0] + [0, 1] * n_data + [0, 1, 0]
    lens = [74, 74, 66] + [int(x) for pair in zip(rng.integers(200, 1400, n_data), [66] * n_data)
                           for x in pair] + [66, 66, 66]
    return flags, dirs, lens


def make_features(seed=0, n_tcp=120, n_udp=120, n_noflow=60) -> pd.DataFrame:
    """Packet features of three kinds of flows with a clear, learnable structure."""
    rng = np.random.default_rng(seed)
    rows, fid, t0 = [], 0, 0

    def add(kind, app, flags, dirs, lens):
        nonlocal fid, t0
        gaps = np.r_[0.0, np.exp(rng.normal(np.log(0.01), 1.0, len(flags) - 1))]
        ts = t0 + np.cumsum((gaps * 1e9).astype(np.int64))
        for i, (f, d, wl) in enumerate(zip(flags, dirs, lens)):
            rows.append((fid, int(ts[i]), kind, app, f, d, i, wl, min(wl, 66), max(wl - 66, 0), gaps[i]))
        fid += 1
        t0 += 10**9

    for _ in range(n_tcp):
        add("tcp", "http", *_tcp_flow(rng, int(rng.integers(1, 9))))
    for _ in range(n_udp):
        n = int(rng.integers(1, 3))
        add("udp", "dns", ["na"] * n, [0, 1][:n], [80, 160][:n])
    noflow_start = fid
    for i in range(n_noflow):  # ARP request (42 B) and reply (60 B); ICMP echo and reply (98 B each)
        n = int(rng.integers(1, 3))
        add("noflow", "unknown", ["na"] * n, [0, 1][:n], ([42, 60] if i % 2 else [98, 98])[:n])
    df = pd.DataFrame(rows, columns=["flow_id", "ts_ns", "kind", "app", "flag_combo", "direction", "flow_pos",
                                     "wire_len", "hdr_len", "payload_len", "gap_s"])
    # what the FlowTable says of each flow (the noflow level is conditioned on the protocol)
    arp = (df["flow_id"] >= noflow_start) & ((df["flow_id"] - noflow_start) % 2 == 1)
    df["ethertype"] = np.where(arp, 0x0806, 0x0800)
    df["ip_proto"] = np.where(arp, np.nan, np.where(df["kind"] == "tcp", 6, np.where(df["kind"] == "udp", 17, 1)))
    df["kind"] = pd.Categorical(df["kind"])
    df["direction"] = df["direction"].astype(np.uint8)
    return df


@pytest.fixture(scope="module")
def trained():
    pf = make_features()
    pm = LengthCodes(n_bins=4).fit(pf)
    # window 8 < the longest flows (21 packets), so windows and state resets are exercised; teacher
    # forcing alone (self_feed has its own tests), which keeps this fit fast
    fm = FlowModel(units=32, window=8, epochs=60, batch_size=32, learning_rate=1e-2, patience=60,
                   val_fraction=0.0, self_feed=0.0, seed=0).fit(pf, pm)
    return pf, pm, fm


def test_learns_tcp_handshake_and_teardown(trained):
    pf, pm, fm = trained
    # flows of 10 packets, and flows of a size class (a count drawn from the training flows)
    req = pd.DataFrame({"kind": "tcp", "app": "http", "packets": np.full(100, 10)})
    s = pd.concat([fm.sample(req, pm, seed=1),
                   fm.sample(pd.DataFrame({"kind": "tcp", "app": "http", "size_class": np.full(100, 10)}),
                             pm, seed=1).assign(flow=lambda d: d.flow + 100)])
    st = flow_structure(s[s.kind == "tcp"])
    assert st["flows"] == 200
    assert st["opens"] >= 0.9 and st["closes"] >= 0.85, st
    assert s.groupby("flow")["pos"].apply(lambda p: (p.to_numpy() == np.arange(len(p))).all()).all()
    assert (s.loc[s.pos == 0, "gap_s"] == 0).all() and (s["gap_s"] >= 0).all()
    assert (s.loc[s.flag_combo == "SYN+ACK", "tcp_flags"] == 0x012).all()


def test_udp_and_noflow_lengths_and_fields(trained):
    pf, pm, fm = trained
    req = pd.DataFrame({"kind": ["udp"] * 100 + ["noflow"] * 50, "app": "dns", "size_class": 1})
    s = fm.sample(req, pm, seed=2)
    assert set(s["flow"]) == set(range(150))
    per = s.groupby("flow").size()
    assert per.max() <= 2  # size class 1 holds 2-packet flows
    assert s["tcp_flags"].isna().all() and (s["flag_combo"] == "na").all()
    assert set(s.loc[s.kind == "udp", "wire_len"]) <= {80, 160}
    assert set(s.loc[s.kind == "noflow", "wire_len"]) <= {42, 60, 98}
    assert {"wire_len", "hdr_len", "payload_len", "time_s", "code"} <= set(s.columns)


def test_noflow_flows_follow_their_protocol(trained):
    """The noflow level is conditioned on the protocol: given as ``proto``, through the aggregate
    level's ``craft_kind``, or drawn from the training mix."""
    pf, pm, fm = trained
    assert fm.vocab_["noflow"].cond == "proto" and set(fm.vocab_["noflow"].apps) == {"arp", "icmp", "other"}
    req = pd.DataFrame({"kind": "noflow", "app": "unknown", "packets": 2,
                        "proto": ["arp"] * 40 + [None] * 40, "craft_kind": ["icmp"] * 40 + ["arp"] * 40})
    s = fm.sample(req, pm, seed=3)
    # proto wins over craft_kind where both are given; craft_kind decides where proto is missing
    assert set(s["wire_len"]) <= {42, 60}
    s = fm.sample(req.assign(proto=None, craft_kind="icmp"), pm, seed=3)
    assert set(s["wire_len"]) == {98}
    mix = fm.sample_requests({"noflow": 200}, seed=1)
    assert (mix["app"] == "unknown").all() and set(mix["proto"]) == {"arp", "icmp"}
    lens = fm.sample(mix.drop(columns="proto"), pm, seed=1).groupby("flow")["wire_len"].agg(set)
    assert 0.2 < (lens.map(lambda x: x <= {42, 60})).mean() < 0.8  # drawn from the mix: both protocols


def test_noflow_protocol_labels():
    got = noflow_proto([0x0806, 0x0800, 0x0800, 0x86DD, 0x888E, 0x0800, 0x0006], [None, 1, 2, 58, None, 89, None])
    assert list(got) == ["arp", "icmp", "igmp", "icmpv6", "eapol", "ip89", "eth0x0006"]


def test_same_seed_same_flows(trained):
    pf, pm, fm = trained
    req = fm.sample_requests(300, seed=5)
    a, b = fm.sample(req, pm, seed=7), fm.sample(req, pm, seed=7)
    pd.testing.assert_frame_equal(a, b)
    assert not a.equals(fm.sample(req, pm, seed=8))


def test_save_load_gives_the_same_samples(trained, tmp_path):
    pf, pm, fm = trained
    fm.save(tmp_path / "gen")
    with pytest.raises(NecstError):
        fm.save(tmp_path / "gen")  # exists: needs force
    back = FlowModel.load(tmp_path / "gen")
    req = fm.sample_requests(100, seed=1)
    pd.testing.assert_frame_equal(fm.sample(req, pm, seed=3), back.sample(req, pm, seed=3))
    assert not any(p.suffix == ".pkl" for p in (tmp_path / "gen").iterdir())


def test_max_packets_caps_flows(trained):
    pf, pm, fm = trained
    req = pd.DataFrame({"kind": "tcp", "app": "http", "packets": 20, "max_packets": [3] * 49 + [None]})
    per = fm.sample(req, pm, seed=0).groupby("flow").size()
    assert per[:49].max() <= 3 and per[49] == 20  # no cap where max_packets is missing: the count


def test_bad_requests_fail_clearly(trained):
    pf, pm, fm = trained
    with pytest.raises(NecstError, match="unknown flow kind"):
        fm.sample(pd.DataFrame({"kind": ["sctp"], "size_class": [1]}), pm)
    with pytest.raises(NecstError, match="size_class"):
        fm.sample(pd.DataFrame({"kind": ["tcp"]}), pm)
    with pytest.raises(NecstError, match="not fitted"):
        FlowModel().sample(pd.DataFrame({"kind": ["tcp"], "size_class": [1]}), pm)


def test_windows_never_cross_flows():
    fm = FlowModel(window=4)
    tok = {"seq_start": np.array([0, 10, 13]), "seq_len": np.array([10, 3, 9])}
    starts, lens = fm._windows(tok, np.arange(3))
    flow_of_row = np.repeat(np.arange(3), tok["seq_len"])
    for s, n in zip(starts, lens):
        assert 1 <= n <= 4 and len(set(flow_of_row[s:s + n])) == 1
    assert lens.sum() == tok["seq_len"].sum()


def test_size_classes_and_positions():
    assert list(size_class([0, 1, 2, 7, 8, 10**6])) == [0, 0, 1, 5, 6, 26]
    b = _pos_bucket(np.array([0, 15, 16, 31, 32, 10**9]))
    assert list(b[:3]) == [0, 15, 16] and b[3] == 16 and b[4] == 17 and b[5] == 39
    from necst.model.flow import N_POS

    assert n_buckets(16) == N_POS
    # packets remaining: exact below rem_exact, then one bucket per power of two
    b = _pos_bucket(np.array([0, 37, 63, 64, 127, 128, 10**9]), 64)
    assert list(b) == [0, 37, 63, 64, 64, 65, n_buckets(64) - 1] and n_buckets(64) == 86
    with pytest.raises(NecstError, match="rem_exact"):
        FlowModel(rem_exact=48).fit(make_features(n_tcp=4, n_udp=0, n_noflow=0), LengthCodes(n_bins=4))


def _reloaded_without(fm, setting: str, tmp_path, monkeypatch) -> FlowModel:
    """``fm`` saved as a bundle from before ``setting`` existed, and loaded back."""
    from necst.bundle import BundleWriter, load

    old_config = {k: v for k, v in FlowModel.get_config(fm).items() if k != setting}
    monkeypatch.setattr(fm, "get_config", lambda: old_config)
    w = BundleWriter(tmp_path / "b", "generator", {"levels": ["flow"]})
    fm.write_to(w)
    w.commit()
    return FlowModel.read_from(load(tmp_path / "b", kind="generator"))


def test_bundle_without_rem_exact_loads_with_the_old_buckets(trained, tmp_path, monkeypatch):
    """Bundles saved before ``rem_exact`` was a setting bucketed the packets remaining from 16 on."""
    pf, pm, _ = trained
    fm = FlowModel(units=8, window=32, epochs=2, batch_size=64, val_fraction=0.0, rem_exact=16).fit(pf, pm)
    back = _reloaded_without(fm, "rem_exact", tmp_path, monkeypatch)
    assert back.rem_exact == 16
    req = pd.DataFrame({"kind": "tcp", "app": "http", "packets": [21] * 20 + [17] * 20})
    pd.testing.assert_frame_equal(fm.sample(req, pm, seed=2), back.sample(req, pm, seed=2))


def test_flow_structure_on_hand_made_flows():
    rows = [(0, 0, "SYN", 0), (0, 1, "SYN+ACK", 1), (0, 2, "ACK", 0), (0, 3, "FIN+ACK", 0), (0, 4, "ACK", 1),
            (1, 0, "PSH+ACK", 0), (1, 1, "ACK", 1), (1, 2, "SYN", 0)]
    df = pd.DataFrame(rows, columns=["flow", "pos", "flag_combo", "direction"])
    st = flow_structure(df)
    assert st == {"flows": 2, "opens": 0.5, "closes": 0.5, "opens_and_closes": 0.5, "syn_inside": 0.0}


def test_numpy_step_matches_keras(trained):
    """The numpy network that samples computes what the trained Keras network computes."""
    pf, pm, fm = trained
    rows = pf[pf["kind"].astype(str) == "tcp"]
    tok, vocab = fm._tokens(rows, None, "tcp", pm, fm.vocab_["tcp"])
    starts, lens = fm._windows(tok, np.arange(12))
    b = fm._batch(tok, vocab, starts, lens)
    inputs = {k: b[k] for k in fm.models_["tcp"].input_names} if hasattr(fm.models_["tcp"], "input_names") \
        else {k: b[k] for k in ("prev_dir", "prev_flag", "prev_code", "prev_gap", "cur_dir", "cur_flag",
                                 "cur_code", "cur_gap", "app", "size", "pos", "rem")}
    want = {k: np.asarray(v) for k, v in fm.models_["tcp"](inputs).items()}
    got = fm._net("tcp").forward(inputs)
    m = b["mask"] > 0
    for head in ("dir", "flag", "code", "gap", "last"):
        np.testing.assert_allclose(got[head][m], want[head][m], atol=2e-4, rtol=1e-3, err_msg=head)


def test_old_bundle_format_loads_through_keras(trained, tmp_path):
    """A format-1 bundle (networks as .keras files) still loads and samples like the model it holds."""
    import json

    from necst.bundle import BundleWriter
    from necst.model.flow import SIZE_EDGES, N_POS

    pf, pm, _ = trained
    # the first architecture, as format-1 bundles hold it (a small, quickly trained one)
    fm = FlowModel(units=8, window=8, epochs=2, batch_size=64, prev_in_heads=False, val_fraction=0.0,
                   exact_lengths=False).fit(pf, pm)
    w = BundleWriter(tmp_path / "old", "generator", {"levels": ["flow"], "flow": fm.get_config()})
    arrays = {"gap_edges": fm.gap_edges_}
    for kind, v in fm.vocab_.items():
        arrays.update(v.arrays(kind))
        w.add_file(f"flow_{kind}.keras", fm.models_[kind].save)
    w.add_arrays("flow_arrays.npz", **arrays)
    w.add_json("flow_config.json", {"config": fm.get_config(), "kinds": {k: v.to_json() for k, v in fm.vocab_.items()},
                                    "size_edges": list(SIZE_EDGES), "n_pos": N_POS, "history": {}})
    w.commit()
    from necst.bundle import load

    back = FlowModel.read_from(load(tmp_path / "old", kind="generator"))
    req = fm.sample_requests(50, seed=4)
    pd.testing.assert_frame_equal(fm.sample(req, pm, seed=4), back.sample(req, pm, seed=4))
    meta = json.loads((tmp_path / "old" / "flow_config.json").read_text())
    assert "format" not in meta


def test_sampling_a_saved_model_needs_no_tensorflow(trained, tmp_path):
    import subprocess
    import sys

    pf, pm, fm = trained
    fm.save(tmp_path / "gen")
    pf.to_parquet(tmp_path / "pf.parquet")
    code = (
        "import sys, pandas as pd\n"
        "from necst.model.flow import FlowModel\n"
        "from necst.model.length_codes import LengthCodes\n"
        f"pf = pd.read_parquet({str(tmp_path / 'pf.parquet')!r})\n"
        "pm = LengthCodes(n_bins=4).fit(pf)\n"
        f"fm = FlowModel.load({str(tmp_path / 'gen')!r})\n"
        "s = fm.sample(fm.sample_requests(200, seed=1), pm, seed=1)\n"
        "assert len(s) > 200\n"
        "print('tensorflow' in sys.modules, 'keras' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False False", out.stdout + out.stderr


def test_own_draws_replace_only_later_steps_at_the_share():
    """Scheduled sampling swaps the fed-back tokens at about ``share`` of the steps after each
    window's first, for draws of the network's own heads (valid tokens), and nothing at share 0."""
    import tensorflow as tf

    from necst.model.flow import _own_draws

    pf = make_features(n_tcp=20, n_udp=0, n_noflow=0)
    pm = LengthCodes(n_bins=4).fit(pf)
    fm = FlowModel(units=8, window=16, epochs=1, batch_size=64, val_fraction=0.0).fit(pf, pm)
    tok, vocab = fm._tokens(pf, None, "tcp", pm, fm.vocab_["tcp"])
    b = fm._batch(tok, vocab, *fm._windows(tok, np.arange(20)))
    tb = {k: tf.constant(v) for k, v in b.items()}
    seed = tf.constant([3, 4], tf.int32)
    same = _own_draws(fm.models_["tcp"], tb, 0.0, seed)
    for name in ("dir", "flag", "code", "gap"):
        np.testing.assert_array_equal(same[f"prev_{name}"].numpy(), b[f"prev_{name}"])
    mixed = {k: v.numpy() for k, v in _own_draws(fm.models_["tcp"], tb, 0.5, seed).items()}
    again = {k: v.numpy() for k, v in _own_draws(fm.models_["tcp"], tb, 0.5, seed).items()}
    m = b["mask"][:, 1:] > 0
    changed = np.zeros_like(m)
    for name, n_tok in (("dir", 2), ("flag", len(vocab.flags)), ("code", vocab.n_codes), ("gap", fm.n_gap_bins)):
        np.testing.assert_array_equal(mixed[f"prev_{name}"], again[f"prev_{name}"])  # seeded
        np.testing.assert_array_equal(mixed[f"prev_{name}"][:, 0], b[f"prev_{name}"][:, 0])
        assert mixed[f"prev_{name}"][:, 1:][m].max() < n_tok
        changed |= mixed[f"prev_{name}"][:, 1:] != b[f"prev_{name}"][:, 1:]
        np.testing.assert_array_equal(mixed[f"cur_{name}"], b[f"cur_{name}"])  # targets stay true
    assert 0.3 < changed[m].mean() < 0.7  # an untrained net's draws differ from the truth mostly
    kept = {k: v.numpy() for k, v in _own_draws(fm.models_["tcp"], tb, 0.5, seed, ("dir", "flag")).items()}
    np.testing.assert_array_equal(kept["prev_gap"], b["prev_gap"])  # only the tokens named are replaced
    np.testing.assert_array_equal(kept["prev_flag"], mixed["prev_flag"])


def test_self_feed_changes_training_only_of_its_kinds_and_old_configs_load_without_it(tmp_path, monkeypatch):
    pf = make_features(n_tcp=12, n_udp=0, n_noflow=0)
    pm = LengthCodes(n_bins=4).fit(pf)
    kw = dict(units=8, window=8, epochs=1, batch_size=32, val_fraction=0.0, seed=1, self_feed=0.5)
    a = FlowModel(**kw).fit(pf, pm)
    c = FlowModel(self_feed_kinds=("udp",), **kw).fit(pf, pm)  # tcp trained by teacher forcing alone
    assert any(not np.array_equal(a.arrays_["tcp"][k], c.arrays_["tcp"][k]) for k in a.arrays_["tcp"])
    back = _reloaded_without(a, "self_feed", tmp_path, monkeypatch)
    assert back.self_feed == 0.0  # a training setting: sampling is the same
    req = a.sample_requests(40, seed=2)
    pd.testing.assert_frame_equal(a.sample(req, pm, seed=2), back.sample(req, pm, seed=2))
