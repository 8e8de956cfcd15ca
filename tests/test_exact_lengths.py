"""Exact lengths: answers follow their questions, sizes repeat inside a flow, arrays round-trip."""
import numpy as np

from necst.model.exact_lengths import ExactLengths


def _dns_like(n_flows: int, rng):
    """Two-packet flows: a question of one of 5 lengths, its answer a fixed function of it."""
    q = rng.choice([30, 41, 52, 63, 74], n_flows)
    a = q * 3 + 16
    flow = np.repeat(np.arange(n_flows), 2)
    payload = np.column_stack([q, a]).ravel()
    code = np.tile([0, 1], n_flows)  # one code for questions, one for answers
    step = np.tile([0, 1], n_flows)  # direction
    return code, step, flow, np.full(len(flow), 42), payload


def test_answer_length_follows_the_question():
    rng = np.random.default_rng(0)
    code, step, flow, hdr, payload = _dns_like(400, rng)
    m = ExactLengths.fit(code, np.zeros(len(code), np.int64), step, flow, hdr, payload, n_cond=1)
    # the packet model's own draws: lengths anywhere in the codes' ranges
    own = rng.integers(20, 300, len(code))
    h, p = m.draw(code, np.zeros(len(code), np.int64), step, flow, hdr, own, np.random.default_rng(1))
    q, a = p[0::2], p[1::2]
    assert np.isin(q, [30, 41, 52, 63, 74]).all()
    assert (a == q * 3 + 16).all()
    assert (h == 42).all()
    # the independent draw alone would pair them at random
    h2, p2 = ExactLengths.fit(code, np.zeros(len(code), np.int64), step, flow, hdr, payload, n_cond=1,
                              markov=0).draw(code, np.zeros(len(code), np.int64), step, flow, hdr, own,
                                             np.random.default_rng(1))
    assert (p2[1::2] == p2[0::2] * 3 + 16).mean() < 0.5


def test_sizes_repeat_inside_a_flow_as_in_training():
    rng = np.random.default_rng(0)
    n_flows, n = 300, 40  # long flows of one code: each flow sends one size, 8 sizes in all
    size = rng.choice(np.arange(100, 180, 10), n_flows)
    flow = np.repeat(np.arange(n_flows), n)
    payload = np.repeat(size, n)
    code = np.zeros(len(flow), np.int64)
    zeros = np.zeros(len(flow), np.int64)
    m = ExactLengths.fit(code, zeros, zeros, flow, zeros, payload, n_cond=1)
    _, p = m.draw(code, zeros, zeros, flow, zeros, rng.integers(100, 180, len(flow)), np.random.default_rng(2))
    per_flow = p.reshape(n_flows, n)
    assert np.isin(p, np.arange(100, 180, 10)).all()
    same = (per_flow[:, 1:] == per_flow[:, :-1]).mean()
    assert same > 0.95


def test_whole_frames_as_headers_keep_their_length():
    """Noflow packets carry no payload: their "header" is the frame (ICMP, LLC up to 169 bytes seen)."""
    rng = np.random.default_rng(0)
    hdr = rng.choice([60, 98, 169, 600], 400)
    zeros = np.zeros(400, np.int64)
    flow = np.arange(400)
    m = ExactLengths.fit(zeros, zeros, zeros, flow, hdr, zeros, n_cond=1)
    h, p = m.draw(zeros, zeros, zeros, flow, np.full(400, 700), zeros, np.random.default_rng(1))
    assert set(np.unique(h)) == {60, 98, 169, 600} and (p == 0).all()


def test_rare_lengths_keep_the_packet_models_draw_and_arrays_round_trip():
    rng = np.random.default_rng(0)
    flow = np.arange(200)
    payload = np.where(np.arange(200) < 150, 64, 1000 + np.arange(200))  # 64 common, the rest unique
    code = zeros = np.zeros(200, np.int64)
    m = ExactLengths.fit(code, zeros, zeros, flow, zeros + 54, payload, n_cond=1)
    own = np.full(200, 7)
    h, p = m.draw(code, zeros, zeros, flow, zeros + 54, own, np.random.default_rng(3))
    assert set(np.unique(p)) == {7, 64}
    assert 0.6 < (p == 64).mean() < 0.9  # 150 of 200
    again = ExactLengths.from_arrays(m.to_arrays("x_"), "x_")
    h2, p2 = again.draw(code, zeros, zeros, flow, zeros + 54, own, np.random.default_rng(3))
    assert np.array_equal(p, p2) and np.array_equal(h, h2)
