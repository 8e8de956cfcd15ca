"""PacketModel: decoding guarantees, the discrete interface, determinism, the numpy forward pass
against Keras, mixtures and bins. Training runs on ~1,300 synthetic packets, 15 short epochs."""
from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest

from necst.errors import NecstError
from necst.model.length_codes import LengthClassCodes
from necst.model.mixture import Mixture
from necst.model.packet import (KINDS, OUTPUT_COLUMNS, PacketModel, QuantileBins, distances,
                                fidelity_table, flow_positions)
from necst.process.features import flag_bits

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

SMALL = dict(latent_dim=3, hidden=(32,), epochs=15, batch_size=64, max_components=6,
             min_packets=200, bic_points=1500)


def synthetic_features(n_tcp: int = 120, n_udp: int = 150, n_arp: int = 150, seed: int = 0) -> pd.DataFrame:
    """Packet features of small TCP flows (SYN, SYN+ACK, ACK, data, FIN), DNS pairs and ARP."""
    rng = np.random.default_rng(seed)
    rows = []
    fid = 0
    for _ in range(n_tcp):
        data = int(rng.integers(1, 6))
        steps = [("SYN", 0, 74, 0), ("SYN+ACK", 1, 74, 0), ("ACK", 0, 66, 0)]
        for i in range(data):
            steps.append(("PSH+ACK", i % 2, 66, int(rng.integers(100, 1400))))
        steps.append(("FIN+ACK", 0, 66, 0))
        for pos, (flags, d, hdr, pay) in enumerate(steps):
            rows.append((fid, "tcp", "http" if fid % 2 else "tls", flags, "49152-65535",
                         "80" if fid % 2 else "443", d, pos, hdr, pay,
                         0.0 if pos == 0 else float(rng.exponential(0.05))))
        fid += 1
    for _ in range(n_udp):
        q = int(rng.integers(20, 60))
        rows.append((fid, "udp", "dns", "na", "32768-49151", "53", 0, 0, 42, q, 0.0))
        rows.append((fid, "udp", "dns", "na", "32768-49151", "53", 1, 1, 42, q + int(rng.integers(16, 200)),
                     float(rng.exponential(0.02))))
        fid += 1
    for _ in range(n_arp):
        rows.append((fid, "noflow", "unknown", "na", "none", "none", 0, 0, 60, 0, 0.0))
        fid += 1
    df = pd.DataFrame(rows, columns=["flow_id", "kind", "app", "flag_combo", "src_port", "dst_port",
                                     "direction", "flow_pos", "hdr_len", "payload_len", "gap_s"])
    df["wire_len"] = df["hdr_len"] + df["payload_len"]
    df["ts_ns"] = np.arange(len(df), dtype=np.int64) * 1000
    df["direction"] = df["direction"].astype(np.uint8)
    return df


@pytest.fixture(scope="module")
def feats() -> pd.DataFrame:
    return synthetic_features()


@pytest.fixture(scope="module")
def model(feats) -> PacketModel:
    return PacketModel(seed=0, **SMALL).fit(feats)


def test_sample_has_the_contract_columns_and_guarantees(model, feats):
    s = model.sample(3000, seed=1)
    assert list(s.columns[: len(OUTPUT_COLUMNS)]) == list(OUTPUT_COLUMNS)
    assert len(s) == 3000
    for col in ("wire_len", "hdr_len", "payload_len", "tcp_flags"):
        assert np.issubdtype(s[col].dtype, np.integer), col
    assert (s["wire_len"] == s["hdr_len"] + s["payload_len"]).all()
    assert (s["payload_len"] >= 0).all() and (s["gap_s"] >= 0).all()
    seen_flags = feats.groupby("kind")["flag_combo"].unique().map(set).to_dict()
    seen_hdr = feats.groupby("kind")["hdr_len"].unique().map(set).to_dict()
    for kind, part in s.groupby("kind"):
        assert set(part["flag_combo"]) <= seen_flags[kind]
        assert set(part["hdr_len"]) <= seen_hdr[kind]
    tcp = s[s["kind"] == "tcp"]
    assert (tcp["tcp_flags"] == tcp["flag_combo"].map(flag_bits)).all()
    assert (s.loc[s["kind"] != "tcp", "tcp_flags"] == 0).all()
    first = s[s["position"] == "first"]
    assert len(first) and (first["gap_s"] == 0).all() and (first["direction"] == 0).all()
    # every kind is drawn, roughly in the training shares
    shares = s["kind"].value_counts(normalize=True)
    truth = feats["kind"].value_counts(normalize=True)
    assert set(shares.index) == set(KINDS)
    assert np.allclose(shares.sort_index(), truth.sort_index(), atol=0.05)


def test_sample_kind_and_position_are_honoured(model):
    s = model.sample(500, kind="udp", position="last", seed=2)
    assert set(s["kind"]) == {"udp"} and set(s["position"]) == {"last"}
    assert set(s["flag_combo"]) == {"na"}
    assert set(s["hdr_len"]) == {42}


def test_sampling_is_seeded(model):
    a = model.sample(400, seed=5)
    pd.testing.assert_frame_equal(a, model.sample(400, seed=5))
    assert not a.equals(model.sample(400, seed=6))


def test_discrete_interface(model, feats):
    for kind in KINDS:
        k = model.n_codes(kind)
        assert k >= model.mixtures_[model.mixture_for_[kind]].n_components  # each component keeps a code
        part = feats[feats["kind"] == kind]
        codes = model.encode(part, kind)
        assert codes.dtype == np.int64 and len(codes) == len(part)
        assert codes.min() >= 0 and codes.max() < k
        out = model.sample_codes(codes[:50], kind, seed=3)
        assert len(out) == 50 and set(out["kind"]) == {kind}
        assert (out["wire_len"] == out["hdr_len"] + out["payload_len"]).all()
        pd.testing.assert_frame_equal(out, model.sample_codes(codes[:50], kind, seed=3))
    assert len(model.encode(feats.iloc[:0], "tcp")) == 0
    with pytest.raises(NecstError, match="codes must lie in"):
        model.sample_codes(np.array([model.n_codes("udp")]), "udp")


def test_codes_separate_what_the_packets_separate(model, feats):
    """SYNs and FINs of TCP flows mostly fall in different codes (the latent space keeps them apart)."""
    tcp = feats[feats["kind"] == "tcp"]
    codes = model.encode(tcp, "tcp")
    syn = set(codes[(tcp["flag_combo"] == "SYN").to_numpy()])
    data = pd.Series(codes[(tcp["flag_combo"] == "PSH+ACK").to_numpy()]).value_counts(normalize=True)
    assert data[~data.index.isin(syn)].sum() > 0.5


def test_length_class_codes_pin_the_payload_bin(model, feats):
    """A (component, payload bin) code decodes inside its own bin, with header lengths that its
    own training packets had: the flow model's choice of code carries the length class."""
    tcp = feats[feats["kind"] == "tcp"]
    lc = model.length_codes_["tcp"]
    codes = model.encode(tcp, "tcp")
    asked = np.repeat(np.arange(lc.n_codes), 40)
    out = model.sample_codes(asked, "tcp", seed=1)
    assert (out["wire_len"] == out["hdr_len"] + out["payload_len"]).all()
    got_bin = model.bins_["payload_len"].transform(out["payload_len"].to_numpy())
    pinned = lc.pbin[asked] >= 0
    assert (lc.pbin[codes] >= 0).mean() > 0.5  # most training packets have a code of their own bin
    assert (got_bin[pinned] == lc.pbin[asked][pinned]).all()
    for c in np.unique(codes):
        own = set(tcp["hdr_len"].to_numpy()[codes == c])
        assert set(out["hdr_len"].to_numpy()[asked == c]) <= own
    # the data packets (payload 100-1400 bytes) spread over several codes, each a narrower range
    data = (tcp["flag_combo"] == "PSH+ACK").to_numpy()
    assert len(np.unique(codes[data])) >= 2


def test_length_class_codes_table():
    comp = np.repeat([0, 0, 1, 1, 2], [50, 5, 3, 40, 20])
    pbin = np.repeat([2, 4, 1, 3, 0], [50, 5, 3, 40, 20])
    hdr = np.repeat([66, 54, 66, 42, 42, 60], [25, 25, 5, 3, 40, 20])
    lc = LengthClassCodes.fit(comp, pbin, hdr, n_components=4, n_bins=5, min_packets=10)
    # (0, 2) kept + rest of 0; (1, 3) kept + rest of 1; (2, 0) kept, no rest; 3 has no packets: a rest code
    assert list(lc.comp) == [0, 0, 1, 1, 2, 3] and list(lc.pbin) == [2, -1, 3, -1, 0, -1]
    assert list(lc.encode([0, 0, 0, 1, 1, 2, 2, 3], [2, 4, 0, 3, 1, 0, 4, 2])) == [0, 1, 1, 2, 3, 4, 4, 5]
    u = (np.arange(1000) + 0.5) / 1000
    h, b = lc.draw(np.zeros(1000, dtype=np.int64), u)
    assert (b == 2).all() and (h == 54).mean() == 0.5 and set(h) == {54, 66}
    h, b = lc.draw(np.full(1000, 3), u)  # the rest of component 1: its 3 packets of bin 1
    assert (b == 1).all() and (h == 42).all()
    h, b = lc.draw(np.full(1000, 5), u)  # no packets: the kind's own mix
    np.testing.assert_allclose(np.bincount(b, minlength=5), 1000 * np.array([20, 3, 50, 40, 5]) / 118, atol=1)
    again = LengthClassCodes.from_arrays(lc.to_arrays("x_"), "x_")
    np.testing.assert_array_equal(again.draw(np.arange(6), u[:6])[1], lc.draw(np.arange(6), u[:6])[1])
    with pytest.raises(NecstError, match="do not agree"):
        LengthClassCodes(lc.comp, lc.pbin[:-1], lc.lut, lc.entry_code, lc.entry_hdr, lc.entry_pbin,
                         lc.entry_count)


def test_models_without_length_class_codes_keep_component_codes(model, feats, tmp_path):
    """Bundles written before length-class codes (or ``code_min_packets=0``) encode and decode
    mixture components, as before."""
    import copy

    old = copy.copy(model)
    old.length_codes_ = {}
    loaded = PacketModel.load(old.save(tmp_path / "old"))
    assert loaded.length_codes_ == {}
    for kind in KINDS:
        mix = loaded.mixtures_[loaded.mixture_for_[kind]]
        part = feats[feats["kind"] == kind]
        assert loaded.n_codes(kind) == mix.n_components
        comp = mix.predict(loaded._latent(loaded.spec_.transform(loaded._with_bins(part))))
        np.testing.assert_array_equal(loaded.encode(part, kind), comp)
        out = loaded.sample_codes(comp[:30], kind, seed=2)
        assert len(out) == 30 and (out["wire_len"] == out["hdr_len"] + out["payload_len"]).all()


def test_numpy_forward_matches_keras(model, feats):
    from necst.model.vae import keras_predict

    X = model.spec_.transform(model._with_bins(feats.iloc[:300]))
    np.testing.assert_allclose(model.encoder_(X), keras_predict(model._keras_files["encoder"], X),
                               rtol=1e-4, atol=1e-5)
    Z = np.random.default_rng(0).standard_normal((200, SMALL["latent_dim"])).astype(np.float32)
    np.testing.assert_allclose(model.decoder_(Z), keras_predict(model._keras_files["decoder"], Z),
                               rtol=1e-4, atol=1e-5)


def test_training_is_deterministic(model, feats):
    again = PacketModel(seed=0, **SMALL).fit(feats)
    for a, b in zip(model.decoder_.weights + model.encoder_.weights,
                    again.decoder_.weights + again.encoder_.weights):
        np.testing.assert_array_equal(a, b)
    pd.testing.assert_frame_equal(model.sample(300, seed=9), again.sample(300, seed=9))


def test_joint_structure_beats_independent_marginals(model, feats):
    table = fidelity_table(model, feats, seed=0).set_index("metric")
    # length and flags are tied here (SYN 74 bytes, data large, FIN 66); direction much less so
    assert table.loc["len_x_flags_jsd", "pass"], table
    assert table.loc["protocol_jsd", "model"] < 1e-3  # kinds and positions are sampled as asked


def test_errors_are_clear(model):
    with pytest.raises(NecstError, match="not fitted"):
        PacketModel().sample(3)
    with pytest.raises(NecstError, match="kind must be"):
        model.sample(3, kind="sctp")
    with pytest.raises(NecstError, match="position must be"):
        model.sample(3, position="middle")
    with pytest.raises(NecstError, match="too few"):
        PacketModel(**SMALL).fit(synthetic_features(1, 1, 1).iloc[:5])


def test_flow_positions():
    df = pd.DataFrame({"flow_id": [7, 7, 7, 3, 9, 9], "flow_pos": [0, 1, 2, 0, 0, 1]})
    assert list(flow_positions(df)) == ["first", "body", "last", "first", "first", "last"]


def test_mixture_bic_finds_separated_clusters_and_round_trips():
    rng = np.random.default_rng(0)
    Z = np.concatenate([rng.normal(c, 0.1, (400, 2)) for c in ([0, 0], [5, 5], [0, 5])])
    m, info = Mixture.fit_bic(Z, (1, 2, 3, 4, 6, 8), seed=0)
    assert info["chosen"] in (3, 4)
    again = Mixture.from_arrays(m.to_arrays("x__"), "x__")
    np.testing.assert_array_equal(again.predict(Z), m.predict(Z))
    pts, codes = m.sample(600, np.random.default_rng(1))
    assert (m.predict(pts) == codes).mean() > 0.95
    with pytest.raises(NecstError, match="probability"):
        Mixture(np.array([0.5, 0.6]), np.zeros((2, 2)), np.stack([np.eye(2)] * 2))


def test_quantile_bins_keep_mass_points_exact():
    rng = np.random.default_rng(0)
    x = np.concatenate([np.zeros(5000), np.full(2000, 1448), rng.integers(1, 1400, 3000)])
    bins = QuantileBins.fit(x, 32, log=False, integer=True)
    b = bins.transform(x)
    drawn = bins.draw(b, np.random.default_rng(1))
    assert (drawn[x == 0] == 0).all() and (drawn[x == 1448] == 1448).all()
    lo, hi = bins.edges[b], bins.edges[b + 1]
    assert ((drawn >= np.floor(lo)) & (drawn <= np.ceil(hi))).all()
    gaps = QuantileBins.fit(np.concatenate([np.zeros(100), rng.exponential(1.0, 900)]), 16,
                            log=True, integer=False)
    g = gaps.draw(gaps.transform(np.zeros(50)), np.random.default_rng(0))
    assert (g == 0).all()


def test_distances_are_zero_on_identical_tables(feats):
    d = distances(feats, feats)
    assert all(v == pytest.approx(0.0, abs=1e-12) for v in d.values())


def test_unknown_level_is_a_clear_error(tmp_path):
    from necst.model.bundle import train_generator

    with pytest.raises(NecstError, match="unknown level 'flows'"):
        train_generator(tmp_path / "nope", tmp_path / "out", "flows")


@pytest.fixture(scope="module")
def small_dataset(shared_data, tmp_path_factory):
    from necst.process.dataset import process_captures

    out = tmp_path_factory.mktemp("ds") / "hue"
    process_captures([shared_data / "benign/iot_sentinel/HueSwitch/Setup-A-1-STA.pcap",
                      shared_data / "benign/iot_sentinel/HueSwitch/Setup-A-2-STA.pcap"], out)
    return out


def test_cli_train_packet_level_on_real_packets(small_dataset, tmp_path):
    from typer.testing import CliRunner

    from necst.cli import app
    from necst.model.bundle import load_generator
    from necst.process.dataset import load_dataset
    from necst.process.features import packet_features

    out = tmp_path / "model"
    res = CliRunner().invoke(app, ["train", str(small_dataset), "--level", "packet", "--out", str(out),
                                   "--epochs", "3", "--latent-dim", "3", "--quiet"])
    assert res.exit_code == 0, res.output
    assert "len_x_flags_jsd" in res.output and "validation loss" in res.output
    gen = load_generator(out)
    real = packet_features(load_dataset(small_dataset).packets)
    s = gen.packet.sample(2000, seed=0)
    assert (s["wire_len"] == s["hdr_len"] + s["payload_len"]).all()
    seen = real.groupby("kind", observed=True)["flag_combo"].unique().map(set).to_dict()
    for kind, part in s.groupby("kind"):
        assert set(part["flag_combo"]) <= seen[kind]
    # a second run refuses to overwrite; a bad level is one clear line, exit 2
    again = CliRunner().invoke(app, ["train", str(small_dataset), "--out", str(out), "--quiet"])
    assert again.exit_code == 2 and "exists already" in again.output
    bad = CliRunner().invoke(app, ["train", str(small_dataset), "--level", "flows", "--out",
                                   str(tmp_path / "x"), "--quiet"])
    assert bad.exit_code == 2 and "unknown level" in bad.output
    # the flow level on top of it, its sizes from the command line; a size of 0 is refused
    flow_out = tmp_path / "flow"
    res = CliRunner().invoke(app, ["train", str(small_dataset), "--level", "flow", "--model", str(out),
                                   "--out", str(flow_out), "--flow-units", "8", "--flow-head-units", "4",
                                   "--flow-epochs", "1", "--quiet"])
    assert res.exit_code == 0, res.output
    flow = load_generator(flow_out).flow
    assert (flow.units, flow.head_units, flow.epochs) == (8, 4, 1)
    assert flow.sample(flow.sample_requests(20, seed=0), gen.packet, seed=0)["flow"].nunique() == 20
    zero = CliRunner().invoke(app, ["train", str(small_dataset), "--level", "flow", "--model", str(out),
                                    "--out", str(tmp_path / "y"), "--flow-units", "0", "--quiet"])
    assert zero.exit_code == 2 and not (tmp_path / "y").exists()
