"""Unit scores carried down to packets: against a brute-force search over windows."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from necst.detect.features import window_features
from necst.detect.per_packet import row_packet_scores, unit_packet_scores, window_packet_scores
from necst.detect.simulate import attack_traffic, normal_traffic, splice


@pytest.mark.parametrize("width,stride", [(1.0, 0.5), (1.5, 0.5), (2.0, 2.0)])
def test_window_scores_are_the_max_over_the_windows_holding_a_packet(width, stride):
    a = normal_traffic(15, rate=30, seed=7)
    a, _ = splice(a, attack_traffic("port_scan", 2, a.column("ts_ns")[0].as_py() + 5 * 10**9, rate=200))
    b = normal_traffic(8, rate=30, seed=8)
    b = b.set_column(b.schema.get_field_index("file_index"), "file_index", pa.array(np.ones(b.num_rows, np.uint16)))
    t = pa.concat_tables([a, b.cast(a.schema)])
    u = window_features(t, width_s=width, stride_s=stride)
    start, end = u.meta.start_ns.to_numpy(), u.meta.end_ns.to_numpy()
    wf = u.meta.file_index.to_numpy()
    score = np.random.default_rng(0).random(len(start))
    ts, pf = t.column("ts_ns").to_numpy(), t.column("file_index").to_numpy().astype(np.int64)
    got = window_packet_scores(ts, start, end, score, pf, wf)
    for i in np.random.default_rng(1).choice(len(ts), 300, replace=False):
        hold = (start <= ts[i]) & (ts[i] < end) & (wf == pf[i])
        assert hold.any()
        assert got[i] == score[hold].max()
    # the first window holding each packet agrees with the stream's own bookkeeping
    assert np.all(start[u.packet_unit] <= ts) and np.all(ts < end[u.packet_unit])


def test_a_packet_outside_every_window_scores_minus_infinity():
    got = window_packet_scores(np.array([5, 15, 25]), np.array([0, 20]), np.array([10, 30]), np.array([1.0, 2.0]))
    assert got.tolist() == [1.0, -np.inf, 2.0]
    with pytest.raises(ValueError, match="sorted"):
        window_packet_scores(np.array([5]), np.array([20, 0]), np.array([30, 10]), np.array([1.0, 2.0]))


def test_flow_and_packet_units():
    assert unit_packet_scores(np.array([1, 0, 1]), np.array([0.5, 2.0])).tolist() == [2.0, 0.5, 2.0]
    assert row_packet_scores(np.array([2, 0]), np.array([3.0, 4.0]), 3).tolist() == [4.0, -np.inf, 3.0]
