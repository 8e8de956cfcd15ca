"""The flow model's fast sampling path (lstm_numpy.Walker) draws what the plain numpy step draws.

``reference_walk`` is the sampling loop as it was before the Walker: every active flow advances
with ``StepNet.step`` (checked against Keras in test_flow_model.py), finished flows are dropped by
copying the state. The Walker reorders and fuses that arithmetic, so float32 sums can round
differently in the last bit; a draw then flips only where its uniform number falls within about
1e-7 of a class boundary, and the flow diverges from there. Identical flows must therefore be
nearly all, not all.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from necst.model.flow import KINDS, FlowModel, _pos_bucket
from necst.model.lstm_numpy import ARCH_V1, ARCH_V2, HEADS, StepNet, Walker, _emb_name, _invert_blocked, _prefix_sums

DEFAULT_MODEL = Path(__file__).resolve().parents[1] / "models" / "default"


def reference_walk(net: StepNet, app, size, target, cap, window, rng, pos_lut, rem_lut, bos, want_last):
    """Per flow, its tokens (packets x 4), with the plain step: the loop the Walker replaced."""
    n = len(app)
    base = net.flow_rows({"app": app, "size": size})
    act, tgt, cp = np.arange(n), target.copy(), cap.copy()
    prev = np.tile(np.array([bos["dir"], bos["flag"], bos["code"], bos["gap"]], np.int32), (n, 1))
    out = [[] for _ in range(n)]
    state = None
    buf = net.buffers(n)
    for t in range(int(cap.max())):
        if t % window == 0:
            state = None
        u = rng.random((len(act), 5), dtype=np.float32)
        idx = net.row_index(prev, int(pos_lut[t]), rem_lut[tgt - 1 - t])
        rec, c = (None, None) if state is None else state
        tok, last, rec, c = net.step(base, act, idx, rec, c, u, buf, want_last)
        state = (rec, c)
        for f, row in zip(act, tok):
            out[f].append(row.copy())
        keep = cp > t + 1
        if want_last:
            keep &= ~last
        act, tgt, cp, tok = act[keep], tgt[keep], cp[keep], tok[keep]
        state = (state[0][keep], state[1][keep])
        if len(act) == 0:
            break
        prev = tok
    return [np.array(o, np.int32).reshape(-1, 4) for o in out]


def walker_flows(net, want_last, *args):
    length, tok = Walker(net, want_last).walk(*args)
    ends = np.cumsum(length)
    return [tok[:, e - k:e].T for k, e in zip(length, ends)]


def random_net(arch, seed, U=12, hid=8, F=5, C=11, G=17, n_app=3):
    """A network of the given architecture with random weights, logits spread like a trained one's."""
    rng = np.random.default_rng(seed)
    emb = {"e_dir": (3, 4), "e_flag": (F + 1, 3), "e_code": (C + 1, 5), "e_gap": (G + 1, 3), "e_app": (n_app, 2),
           "e_size": (27, 3), "e_pos": (40, 3), "e_rem": (40, 3)}
    w = {k: rng.normal(0, 1, s) for k, s in emb.items()}

    def width(parts):
        return sum(U if p == "h" else emb[_emb_name(p)][1] for p in parts)

    w["lstm_kernel"] = rng.normal(0, 0.4, (width(arch["step"]), 4 * U))
    w["lstm_recurrent"] = rng.normal(0, 0.4, (U, 4 * U))
    w["lstm_bias"] = rng.normal(0, 0.4, 4 * U)
    n_out = {"dir": 2, "flag": F, "code": C, "gap": G, "last": 1}
    for h in HEADS:
        w[f"{h}_hidden_kernel"] = rng.normal(0, 0.5, (width(arch["heads"][h]), hid))
        w[f"{h}_hidden_bias"] = rng.normal(0, 0.5, hid)
        w[f"{h}_kernel"] = rng.normal(0, 1.0, (hid, n_out[h]))
        w[f"{h}_bias"] = rng.normal(0, 1.0, n_out[h]) - (2.0 if h == "last" else 0.0)
    arrays = {k: v.astype(np.float32) for k, v in w.items()}
    return StepNet(arrays, arch, U), {"dir": 2, "flag": F, "code": C, "gap": G}, n_app


def walk_inputs(n, n_app, seed, window=8, max_len=40):
    rng = np.random.default_rng(seed)
    target = rng.integers(1, max_len, n)
    cap = np.minimum(target, rng.integers(1, max_len + 10, n))  # some flows cut short
    app = rng.integers(0, n_app, n).astype(np.int32)
    size = rng.integers(0, 27, n).astype(np.int32)
    return app, size, target, cap, window, _pos_bucket(np.arange(int(cap.max()))), _pos_bucket(np.arange(target.max() + 1))


@pytest.mark.parametrize("arch_name,want_last", [("v2", False), ("v2", True), ("v1", False), ("v1", True)])
def test_walker_draws_what_the_reference_step_draws(arch_name, want_last):
    net, bos, n_app = random_net(ARCH_V2 if arch_name == "v2" else ARCH_V1, seed=1)
    app, size, target, cap, window, pos_lut, rem_lut = walk_inputs(700, n_app, seed=2)
    args = (app, size, target, cap, window)
    ref = reference_walk(net, *args, np.random.default_rng(5), pos_lut, rem_lut, bos, want_last)
    got = walker_flows(net, want_last, *args, np.random.default_rng(5), pos_lut, rem_lut, bos, 64)
    same = np.array([a.shape == b.shape and (a == b).all() for a, b in zip(ref, got)])
    assert same.mean() >= 0.98, same.mean()
    lengths = np.array([len(g) for g in got])
    if want_last:  # the end-of-flow head ends some flows early
        assert (lengths <= cap).all() and (lengths < cap).any()
    else:
        assert (lengths == cap).all()
    # several blocks per step, and the whole batch in one block, give the same draws
    one = walker_flows(net, want_last, *args, np.random.default_rng(5), pos_lut, rem_lut, bos, 4096)
    assert all(a.shape == b.shape and (a == b).all() for a, b in zip(one, got))


def test_threads_split_the_flows_without_changing_the_tokens():
    net, bos, n_app = random_net(ARCH_V2, seed=3)
    app, size, target, cap, window, pos_lut, rem_lut = walk_inputs(500, n_app, seed=4)
    w = Walker(net, False)
    runs = [w.walk(app, size, target, cap, window, np.random.default_rng(9), pos_lut, rem_lut, bos, 32, threads)
            for threads in (1, 2, 3)]
    for length, tok in runs[1:]:
        np.testing.assert_array_equal(length, runs[0][0])
        np.testing.assert_array_equal(tok, runs[0][1])


def test_walker_matches_the_reference_on_the_default_model():
    fm = FlowModel.load(DEFAULT_MODEL)
    req = fm.sample_requests(3000, seed=3)
    for ki, kind in enumerate(KINDS):
        r = req[req["kind"] == kind]
        v = fm.vocab_[kind]
        app, size = v.app_ids(r["app"].to_numpy()), r["size_class"].to_numpy().astype(np.int32)
        target = r["packets"].to_numpy(np.int64)
        cap = np.minimum(target, 300)
        pos_lut, rem_lut = _pos_bucket(np.arange(int(cap.max()))), _pos_bucket(np.arange(int(target.max()) + 1))
        bos = {"dir": 2, "flag": len(v.flags), "code": v.n_codes, "gap": fm.n_gap_bins}
        args = (app, size, target, cap, fm.window)
        ref = reference_walk(fm._net(kind), *args, np.random.default_rng([7, ki, 1]), pos_lut, rem_lut, bos, False)
        got = walker_flows(fm._net(kind), False, *args, np.random.default_rng([7, ki, 1]), pos_lut, rem_lut, bos)
        same = np.array([a.shape == b.shape and (a == b).all() for a, b in zip(ref, got)])
        assert same.mean() >= 0.99, (kind, same.mean())
        # where they differ, the distribution is the same: token frequencies agree closely
        a, b = np.concatenate(ref), np.concatenate(got)
        for j in range(4):
            fa, fb = np.bincount(a[:, j]) / len(a), np.bincount(b[:, j], minlength=a[:, j].max() + 1) / len(b)
            assert np.abs(fa - fb[:len(fa)]).sum() < 0.01, (kind, j)


def test_prefix_sums_match_cumsum():
    rng = np.random.default_rng(0)
    for rows, m in ((8, 300), (40, 300), (128, 500), (16, 5), (12, 400)):
        x = rng.random((rows, m), dtype=np.float32)
        want = np.cumsum(x.astype(np.float64), axis=0)
        _prefix_sums(x)
        np.testing.assert_allclose(x, want, rtol=1e-5)


def test_blocked_inversion_counts_what_the_full_cumulative_sum_counts():
    """The draw finds the block where u falls, then counts inside it: the same class, bit for bit,
    as comparing u with every prefix sum, including thresholds that sit exactly on a sum."""
    rng = np.random.default_rng(3)
    for rows, m, pad in ((8, 128, 0), (144, 700, 5), (128, 2048, 0), (40, 300, 7), (256, 130, 3)):
        x = (rng.random((rows, m), dtype=np.float32) ** 6).astype(np.float32)
        x[rows - pad:] = 0.0  # padding classes: probability 0
        x[:, :5] = 0.0  # a column of zeros but its last classes
        x[-1 - pad, :5] = 1.0
        full = x.copy()
        _prefix_sums(full)
        u = rng.random(m, dtype=np.float32)
        u[5:10] = [0.0, 1 - 2 ** -24, 1e-9, 0.5, 0.25]
        on = np.arange(10, 20)  # thresholds equal to a prefix sum
        u[on] = (full[rng.integers(0, rows, len(on)), on] / full[-1, on]).astype(np.float32)
        want = (full < u * full[-1]).sum(axis=0)
        got = _invert_blocked(x.copy(), u, np.empty(x.size, bool))
        np.testing.assert_array_equal(got, want)


class _StubPackets:
    """A packet model's sample_codes: numeric and text fields per code."""

    def sample_codes(self, codes, kind, seed=0):
        codes = np.asarray(codes)
        return pd.DataFrame({"kind": kind, "position": None, "wire_len": 60 + codes, "hdr_len": np.full(len(codes), 60),
                             "payload_len": codes, "src_port": np.where(codes % 2 == 0, "443", "1024-49151")})


def test_sample_orders_packets_by_flow_and_keeps_text_values():
    fm = FlowModel.load(DEFAULT_MODEL)
    fm.lengths_ = {}  # the stub's own lengths, not the exact lengths learned with the real packet model
    pm = _StubPackets()
    req = fm.sample_requests(400, seed=1)  # kinds interleaved
    s = fm.sample(req, pm, seed=2)
    assert list(s.columns[:10]) == ["flow", "pos", "kind", "app", "direction", "flag_combo", "tcp_flags", "code",
                                    "gap_s", "time_s"]
    assert {"wire_len", "payload_len", "src_port", "position"} <= set(s.columns)
    flow, pos = s["flow"].to_numpy(), s["pos"].to_numpy()
    assert (np.diff(flow) >= 0).all() and set(flow) == set(range(len(req)))
    assert (pos == np.arange(len(s)) - np.repeat(np.flatnonzero(np.r_[True, flow[1:] != flow[:-1]]),
                                                 np.bincount(flow))).all()
    assert (s.groupby("flow").size().to_numpy() == req["packets"].to_numpy()).all()
    assert (s["kind"].astype(str).to_numpy() == req["kind"].to_numpy()[flow]).all()
    assert (s["app"].astype(str).to_numpy() == req["app"].astype(str).to_numpy()[flow]).all()
    assert (s["wire_len"] == 60 + s["code"]).all() and s["position"].isna().all()
    assert set(s["src_port"].astype(str)) <= {"443", "1024-49151"}
    tcp = s["kind"] == "tcp"
    assert s.loc[~tcp, "tcp_flags"].isna().all() and s.loc[tcp, "tcp_flags"].notna().all()
    assert ((s.loc[s["flag_combo"] == "SYN", "tcp_flags"]) == 0x002).all()
    pd.testing.assert_frame_equal(s, fm.sample(req, pm, seed=2))
    assert not s["code"].equals(fm.sample(req, pm, seed=3)["code"])


def test_generate_samples_flows_for_several_chunks_at_once(tmp_path):
    """The Sampler asks the flow model for several crafting chunks' flows at once; each chunk takes
    its own flows: the capture is complete, in time order, and reproducible."""
    from necst.capture.reader import CaptureReader
    from necst.generate.sampler import Sampler, load_generator

    g = load_generator(None)
    runs = {}
    for name, group, seed in (("a", 600, 3), ("b", 600, 3), ("one", 200, 3)):
        s = Sampler(g.aggregate, g.flow, g.packet, chunk_flows=200, flow_chunk_flows=group)
        r = s.generate(tmp_path / f"{name}.pcap", n_packets=12000, seed=seed)
        ts = np.concatenate([b.ts_ns for b in CaptureReader(r.path)])
        assert r.packets == len(ts) == 12000 and (np.diff(ts) >= 0).all()
        assert r.flows > 600  # several groups of chunks
        runs[name] = r.path.read_bytes()
    assert runs["a"] == runs["b"]
    assert runs["a"] != runs["one"]  # the flow model's seeds go with its calls


def test_worker_threads_do_not_change_the_capture(tmp_path):
    """Groups of chunks sampled and planned ahead on worker threads give the capture made in the
    caller's thread alone, byte for byte (N packets: the groups follow from the plan, not from how
    far crafting has got); closing the stream early stops the workers."""
    import threading

    from necst.generate.sampler import Sampler, load_generator

    g = load_generator(None)
    out = {}
    for workers in (0, 1, 2):
        s = Sampler(g.aggregate, g.flow, g.packet, chunk_flows=150, flow_chunk_flows=300, workers=workers)
        r = s.generate(tmp_path / f"w{workers}.pcap", n_packets=9000, seed=5)
        assert r.packets == 9000 and r.flows >= 900  # several groups, ahead of crafting
        out[workers] = (r.path.read_bytes(), r.repairs, r.flows)
        if workers:
            assert r.timings["wait"] >= 0.0 and r.cpu_timings["flow_model"] > 0.0
    assert out[1] == out[0] and out[2] == out[0]
    before = threading.active_count()
    s = Sampler(g.aggregate, g.flow, g.packet, chunk_flows=150, flow_chunk_flows=150, workers=2)
    stream = s.batches(n_flows=3000, seed=1)
    next(stream)
    stream.close()
    assert threading.active_count() == before


def test_row_sums_with_and_without_scipys_private_kernel(monkeypatch):
    import necst.model.lstm_numpy as ln

    rng = np.random.default_rng(0)
    table = rng.random((50, 7), dtype=np.float32)
    idx = rng.integers(0, 50, (20, 3)).astype(np.int32)
    want = table[idx].sum(axis=1) + 1.0
    out = np.ones((20, 7), np.float32)
    ln._RowSums(table, 3, 32).add(idx, out)
    np.testing.assert_allclose(out, want, rtol=1e-6)
    monkeypatch.setattr(ln, "_csr_matvecs", None)  # the public sparse product instead
    out = np.ones((20, 7), np.float32)
    ln._RowSums(table, 3, 32).add(idx, out)
    np.testing.assert_allclose(out, want, rtol=1e-6)
