"""The detector on simulated tables: features against a brute-force count, thresholds,
post-processing, the autoencoder and baselines, persistence, robustness, and the CLI."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from necst.detect.detector import Detector, IsolationForestDetector, LOFDetector, load
from necst.detect.features import window_features
from necst.detect.simulate import attack_traffic, normal_traffic, splice
from necst.detect.threshold import PostProcess, fit_threshold
from necst.errors import BundleError, NecstError

T0 = 1_700_000_000 * 10**9


def _entropy(values) -> float:
    _, c = np.unique(np.asarray(values), return_counts=True)
    p = c / c.sum()
    return float(-(p * np.log2(p)).sum())


def test_window_features_match_brute_force():
    normal = normal_traffic(20, rate=40, seed=3)
    t, _ = splice(normal, attack_traffic("syn_flood", 3, normal.column("ts_ns")[0].as_py() + 8 * 10**9,
                                         rate=100))
    u = window_features(t, width_s=1.0, stride_s=0.5)
    df = t.to_pandas()
    df["src_ip"] = df.src_ip.astype(object)
    for _, w in u.meta.sample(15, random_state=0).iterrows():
        sel = df[(df.ts_ns >= w.start_ns) & (df.ts_ns < w.end_ns)]
        assert w.packets == len(sel)
        assert w.bytes == sel.wire_len.sum()
        assert w.src_ip_distinct == sel.src_ip.fillna("<none>").nunique()
        assert w.src_ip_entropy == pytest.approx(_entropy(sel.src_ip.fillna("<none>")), abs=1e-9)
        assert w.dst_port_entropy == pytest.approx(_entropy(sel.dst_port.fillna(-1)), abs=1e-9)
        tcp = sel[sel.ip_proto == 6]
        fl = tcp.tcp_flags.astype(int)
        syn = ((fl & 2) > 0) & ((fl & 16) == 0)
        assert w.syn_ratio == pytest.approx(syn.sum() / max(len(tcp), 1))
        assert w.size_mean == pytest.approx(sel.wire_len.mean())
        ip = sel[sel.src_ip.notna()]
        fan = ip.groupby("src_ip").dst_ip.nunique().max() if len(ip) else 0
        assert w.max_dst_ip_per_src == fan
        ports = ip.assign(p=ip.dst_port.fillna(-1)).groupby("src_ip").p.nunique().max() if len(ip) else 0
        assert w.max_dst_port_per_src == ports
    # every packet is in exactly two windows, except those in the first half-second bin
    assert u.meta.packets.sum() < 2 * t.num_rows


def test_half_open_and_new_flows_match_brute_force():
    normal = normal_traffic(20, rate=40, seed=4)
    t, _ = splice(normal, attack_traffic("syn_flood", 2, normal.column("ts_ns")[0].as_py() + 6 * 10**9,
                                         rate=50))
    u = window_features(t, width_s=1.0, stride_s=0.5)
    df = t.to_pandas()
    df["src_ip"] = df.src_ip.astype(object).fillna("-")
    df["dst_ip"] = df.dst_ip.astype(object).fillna("-")
    fl = df.tcp_flags.fillna(0).astype(int)
    df["syn"] = (df.ip_proto == 6) & ((fl & 2) > 0) & ((fl & 16) == 0)
    df["est"] = (df.ip_proto == 6) & ((fl & 16) > 0) & ((fl & 6) == 0)
    ends = [tuple(sorted([(a, b), (c, d)])) for a, b, c, d in
            zip(df.src_ip, df.src_port.fillna(-1), df.dst_ip, df.dst_port.fillna(-1))]
    df["flow"] = [(e, p) for e, p in zip(ends, df.ip_proto.fillna(-1))]
    df["first"] = ~df.flow.duplicated()
    for _, w in u.meta.iterrows():
        sel = df[(df.ts_ns >= w.start_ns) & (df.ts_ns < w.end_ns)]
        new = sel.syn | ((sel.ip_proto != 6) & sel["first"])
        assert w.new_flows_per_s == new.sum() / 1.0
        opened = set(sel.flow[sel.syn])
        est = set(sel.flow[sel.est])
        assert w.half_open_share == pytest.approx(len(opened - est) / max(len(opened), 1))


def test_streamed_batches_give_the_windows_of_one_pass():
    from necst.detect.windows import stream_windows

    a = normal_traffic(30, seed=1)
    b = normal_traffic(12, seed=2)
    b = b.set_column(b.schema.get_field_index("file_index"), "file_index",
                     pa.array(np.ones(b.num_rows, np.uint16)))
    scan = attack_traffic("port_scan", 2, a.column("ts_ns")[0].as_py() + 10 * 10**9, rate=300)
    a, _ = splice(a, scan)
    table = pa.concat_tables([a, b.cast(a.schema)])
    for width, stride in ((1.0, 0.5), (1.5, 0.5), (2.0, 2.0)):
        whole = window_features(table, width_s=width, stride_s=stride)
        cuts = np.r_[0, np.sort(np.random.default_rng(0).choice(table.num_rows, 25, replace=False)), table.num_rows]
        batches = [table.slice(x, y - x) for x, y in zip(cuts[:-1], cuts[1:])]
        s = stream_windows(batches, width_s=width, stride_s=stride)
        assert s.packets == table.num_rows
        np.testing.assert_array_equal(s.start_ns, whole.meta.start_ns.to_numpy())
        np.testing.assert_array_equal(s.file_index, whole.meta.file_index.to_numpy())
        np.testing.assert_allclose(s.X, whole.X, rtol=1e-12, atol=1e-12)


def test_stream_keeps_a_late_packet_and_checks_its_origin():
    from necst.detect.windows import WindowStream

    t = normal_traffic(10, seed=5)
    ts = t.column("ts_ns").to_numpy()
    late = t.slice(0, 1)  # the first packet again, after windows past it were emitted
    s = WindowStream(width_s=1.0, stride_s=1.0)  # one window per packet: packets are conserved
    blocks = [s.feed(t), s.feed(late), s.flush()]
    counted = sum(b.X[:, 0].sum() for b in blocks)
    assert counted == t.num_rows + 1
    with pytest.raises(NecstError, match="before the window origin"):
        WindowStream(origin_ns=int(ts[5])).feed(t)


def test_windows_never_span_files():
    a = normal_traffic(10, seed=1).to_pandas()
    b = normal_traffic(10, seed=2).to_pandas()
    b["file_index"] = 1  # same time span, another file
    u = window_features(pd.concat([a, b]))
    assert u.meta.packets.sum() == window_features(a).meta.packets.sum() + window_features(b).meta.packets.sum()


def test_window_parameters_checked():
    with pytest.raises(NecstError, match="multiple"):
        window_features(normal_traffic(5), width_s=1.0, stride_s=0.3)


def test_thresholds_and_too_few_units():
    s = np.random.default_rng(0).lognormal(size=5000)
    assert fit_threshold(s, "quantile", q=0.99)["threshold"] == pytest.approx(np.quantile(s, 0.99))
    g = fit_threshold(s, "gaussian_fit", z=3)["threshold"]
    assert g == pytest.approx(np.exp(np.log(s).mean() + 3 * np.log(s).std()))
    e = fit_threshold(s, "evt", evt_risk=1e-4)
    assert e["threshold"] > np.quantile(s, 0.999) and e["peaks"] == 100
    with pytest.raises(NecstError, match="needs at least 1000 normal units.*got 200"):
        fit_threshold(s[:200], "quantile", q=0.999)
    with pytest.raises(NecstError, match="needs at least 500"):
        fit_threshold(s[:100], "evt")


def test_postprocessing():
    pp = PostProcess(min_consecutive=2, cooldown=2, min_attack_windows=3)
    s = np.array([0, 5, 0, 5, 5, 0, 0, 5, 5, 5, 0, 0, 0, 0, 5, 5])
    f = pp.flags(s, 1)
    assert f.tolist() == [0, 0, 0, 1, 1, 0, 0, 1, 1, 1, 0, 0, 0, 0, 1, 1]
    assert pp.alerts(f) == [(3, 9), (14, 15)]
    assert pp.decision(f) == "attack detected"
    assert pp.decision(pp.flags(np.zeros(5), 1)) == "normal"
    assert pp.flags(np.array([5, 0, 0]), 1).tolist() == [1, 0, 0]  # cut by the capture's start
    assert pp.decision(np.array([True])) == "attack detected"  # a one-unit capture, flagged


@pytest.fixture(scope="module")
def trained():
    train = normal_traffic(1200, rate=50, seed=0)
    return train, Detector(q=0.99, epochs=8, seed=0).fit(train)


@pytest.fixture(scope="module")
def attacked():
    normal = normal_traffic(100, rate=50, seed=7, start_ns=T0)
    return splice(normal, attack_traffic("syn_flood", 5, T0 + 50 * 10**9, rate=400, seed=2))


def test_autoencoder_separates_a_flood(trained, attacked, tmp_path):
    from sklearn.metrics import roc_auc_score

    _, det = trained
    packets, label = attacked
    scored = det.score(packets)
    ats = np.sort(packets.column("ts_ns").to_numpy()[label])
    y = np.searchsorted(ats, scored.end_ns) > np.searchsorted(ats, scored.start_ns)
    assert roc_auc_score(y, scored.error) > 0.95
    assert det.decision(scored) == "attack detected"
    assert set(scored.loc[scored.error.idxmax(), ["top1_feature", "top2_feature", "top3_feature"]]) & {
        "new_flows_per_s", "src_ip_distinct", "src_ip_entropy", "half_open_share", "syn_ratio",
        "src_port_distinct", "src_port_entropy", "dst_ip_entropy", "dst_port_entropy", "packets_per_s",
        "packets", "size_mean", "tcp_share", "size_std"}


def test_training_is_reproducible():
    train = normal_traffic(1200, rate=50, seed=0)
    a = Detector(q=0.99, epochs=3, seed=1).fit(train)
    b = Detector(q=0.99, epochs=3, seed=1).fit(train)
    for wa, wb in zip(a.weights_, b.weights_):
        np.testing.assert_array_equal(wa, wb)
    assert a.threshold_ == b.threshold_


def test_save_load_same_scores_and_keras_agrees(trained, attacked, tmp_path):
    from necst.detect.autoencoder import forward

    _, det = trained
    packets, _ = attacked
    det.save(tmp_path / "det")
    again = load(tmp_path / "det")
    pd.testing.assert_frame_equal(det.score(packets), again.score(packets))
    X = again.scaler_.transform(again.features(packets).X)
    keras_out = again.keras_model().predict(X, verbose=0)
    np.testing.assert_allclose(keras_out, forward(again.weights_, X), atol=1e-4)
    (tmp_path / "det" / "weights.npz").write_bytes(b"not the weights")
    with pytest.raises(BundleError, match="weights.npz"):
        load(tmp_path / "det")


@pytest.mark.parametrize("cls", [IsolationForestDetector, LOFDetector])
def test_baselines_persist_without_pickle(cls, trained, attacked, tmp_path):
    train, _ = trained
    packets, _ = attacked
    det = cls(q=0.99).fit(train)
    det.save(tmp_path / "b")
    assert not any(p.suffix not in (".json", ".npz") for p in (tmp_path / "b").iterdir())
    np.testing.assert_array_equal(det.score(packets).error, load(tmp_path / "b").score(packets).error)
    assert det.decision(det.score(packets)) == "attack detected"


def test_too_few_training_windows_says_how_many(trained):
    with pytest.raises(NecstError, match=r"needs at least 1000 held-out normal windows.*at least 4000"):
        Detector(q=0.999).fit(normal_traffic(60, seed=1))


def test_odd_captures_give_clear_results(trained):
    _, det = trained
    no_ip = pd.DataFrame({"ts_ns": T0 + np.arange(50) * 10**8, "wire_len": np.full(50, 60, np.uint32)})
    r = det.score(no_ip)
    assert len(r) > 0 and np.isfinite(r.error).all()
    one = normal_traffic(10, seed=4).slice(0, 1)
    assert len(det.score(one)) == 1
    empty = normal_traffic(10, seed=4).slice(0, 0)
    scored = det.score(empty)
    assert len(scored) == 0 and det.decision(scored) == "normal"
    other = normal_traffic(30, seed=9).to_pandas()
    other["src_ip"] = other.src_ip.str.replace("192.168.1.", "10.9.9.", regex=False)
    assert np.isfinite(det.score(other).error).all()


def test_cli_train_and_score(tmp_path, attacked):
    from typer.testing import CliRunner

    from necst.cli import app

    for name, table in (("normal", normal_traffic(1200, rate=50, seed=0)), ("mixed", attacked[0])):
        (tmp_path / name).mkdir()
        pq.write_table(table, tmp_path / name / "packets.parquet")
    run = CliRunner().invoke
    r = run(app, ["detect", "train", str(tmp_path / "normal"), "--out", str(tmp_path / "det"),
                  "--detector", "isolation_forest", "--q", "0.99"])
    assert r.exit_code == 0, r.output
    r = run(app, ["detect", "score", str(tmp_path / "mixed"), "--detector", str(tmp_path / "det"),
                  "--out", str(tmp_path / "report.json")])
    assert r.exit_code == 0, r.output
    rep = json.loads((tmp_path / "report.json").read_text())
    assert rep["decision"] == "attack detected" and rep["method"] == "quantile"
    assert {"start", "end", "error", "packets", "packets_per_s", "src_ip_entropy", "dst_ip_entropy",
            "top_features"} <= set(rep["max_error_unit"])
    csv = pd.read_csv(tmp_path / "report.csv")
    assert len(csv) == rep["total_units"] and {"error", "flag"} <= set(csv.columns)
    r = run(app, ["detect", "score", str(tmp_path / "mixed"), "--detector", str(tmp_path / "nope"),
                  "--out", str(tmp_path / "r2.json")])
    assert r.exit_code == 2 and "error:" in r.output
    r = run(app, ["detect", "train", str(tmp_path / "normal"), "--out", str(tmp_path / "det2")])
    assert r.exit_code == 2 and "needs at least" in r.output


def test_packet_mode_damped_statistics_match_a_packet_by_packet_loop():
    from necst.detect.packet_features import damped_stats

    rng = np.random.default_rng(0)
    n = 2000
    t = np.sort(rng.uniform(0, 300, n))
    k = rng.integers(0, 5, n)
    x = rng.integers(60, 1500, n).astype(float)
    got = damped_stats(t, k, 5, x, lambdas=(5.0, 0.1))
    lam = np.array([5.0, 0.1])
    state = np.zeros((5, 3, 2))
    last = np.full(5, np.nan)
    for i in range(n):  # AfterImage's own update, one packet at a time
        if not np.isnan(last[k[i]]):
            state[k[i]] *= 2.0 ** (-lam * (t[i] - last[k[i]]))
        state[k[i]] += np.array([1.0, x[i], x[i] ** 2])[:, None]
        last[k[i]] = t[i]
        w, ls, ss = state[k[i]]
        mean = ls / w
        assert got["w_l5"][i] == pytest.approx(w[0], rel=1e-9)
        assert got["mean_l0.1"][i] == pytest.approx(mean[1], rel=1e-9)
        assert got["std_l5"][i] == pytest.approx(np.sqrt(abs(ss[0] / w[0] - mean[0] ** 2)), rel=1e-6, abs=1e-6)


def test_packet_mode_detects_a_scan(attacked):
    from sklearn.metrics import roc_auc_score

    packets, label = attacked
    det = IsolationForestDetector(mode="packet", q=0.99).fit(normal_traffic(300, rate=50, seed=0))
    scored = det.score(packets)
    assert len(scored) == packets.num_rows
    assert roc_auc_score(label[scored.row.to_numpy()], scored.error) > 0.9


def test_flow_mode_counts_match_pandas(attacked):
    from necst.detect.flow_features import flow_features

    packets, _ = attacked
    u = flow_features(packets)
    df = packets.to_pandas()
    df["flow"] = u.packet_unit
    g = df.groupby("flow")
    np.testing.assert_array_equal(g.size().to_numpy(), u.meta.bidirectional_packets.to_numpy())
    np.testing.assert_array_equal(g.wire_len.sum().to_numpy(), u.meta.bidirectional_bytes.to_numpy())
    assert (np.diff(u.meta.end_ns.to_numpy()) >= 0).all()  # scored in the order flows end
    assert (u.meta.src2dst_packets >= 1).all()
    det = IsolationForestDetector(mode="flow", q=0.9, validation_fraction=0.5).fit(
        normal_traffic(600, rate=50, seed=0))
    assert det.decision(det.score(packets)) == "attack detected"
