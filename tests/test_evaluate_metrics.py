"""Each metric pinned on small hand-made inputs whose answers are worked out by hand."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from scipy.spatial.distance import jensenshannon

from necst.evaluate import (categorical_distances, emd, hellinger, jsd, rank_jsd, share_gap,
                            total_variation)
from necst.evaluate.compare import as_distance, ratio
from necst.evaluate.views import _tcp_behaviour, per_second, prepare

LN2 = math.log(2)


# ------------------------------------------------------------------ JSD, TV, Hellinger

def test_identical_distributions_are_at_distance_zero():
    p = [5, 3, 2, 0]
    assert jsd(p, p) == 0
    assert total_variation(p, p) == 0
    assert hellinger(p, p) == 0


def test_disjoint_supports_give_ln2_and_one():
    assert jsd([1, 0], [0, 1]) == pytest.approx(LN2, abs=1e-12)
    assert total_variation([3, 0], [0, 7]) == 1.0
    assert hellinger([3, 0], [0, 7]) == pytest.approx(1.0)


def test_jsd_worked_example_and_which_is_squared():
    # p = (1, 0), q = (1/2, 1/2), m = (3/4, 1/4):
    # KL(p||m) = ln(4/3); KL(q||m) = 1/2 ln(2/3) + 1/2 ln 2 = 1/2 ln(4/3)
    # JSD = 1/2 (ln(4/3) + 1/2 ln(4/3)) = 3/4 ln(4/3)
    expected = 0.75 * math.log(4 / 3)
    assert jsd([1, 0], [1, 1]) == pytest.approx(expected, rel=1e-12)
    # our jsd is scipy's JS *distance* squared (natural log), never the distance itself
    distance = jensenshannon([1, 0], [0.5, 0.5])
    assert jsd([1, 0], [1, 1]) == pytest.approx(distance ** 2)
    assert jsd([1, 0], [1, 1]) != pytest.approx(distance)


def test_counts_and_probabilities_give_the_same_answer():
    assert jsd([2, 6], [10, 10]) == pytest.approx(jsd([0.25, 0.75], [0.5, 0.5]))
    assert total_variation([1, 0], [1, 1]) == pytest.approx(0.5)
    # sqrt(1/2 ((1 - sqrt .5)^2 + (0 - sqrt .5)^2)) = sqrt(1 - sqrt .5)
    assert hellinger([1, 0], [1, 1]) == pytest.approx(math.sqrt(1 - math.sqrt(0.5)))


def test_empty_or_mismatched_counts_are_refused():
    with pytest.raises(ValueError):
        jsd([0, 0], [1, 1])
    with pytest.raises(ValueError):
        jsd([1, 2], [1, 2, 3])


def test_categorical_distances_align_supports():
    a = pd.Series({80: 3, 443: 1})
    b = pd.Series({443: 1, 80: 3})
    assert categorical_distances(a, b) == {"jsd": 0.0, "tv": 0.0, "hellinger": 0.0}
    d = categorical_distances(pd.Series({80: 4}), pd.Series({53: 9}))
    assert d["jsd"] == pytest.approx(LN2)
    assert d["tv"] == pytest.approx(1.0)
    assert d["hellinger"] == pytest.approx(1.0)


# ------------------------------------------------------------------ NetShare rank JSD

def test_rank_jsd_worked_example():
    # real IP counts {a: 6, b: 3, c: 1}, synthetic {x: 5, y: 5}
    # ranks: p = (.6, .3, .1), q = (.5, .5, 0) after padding; m = (.55, .4, .05)
    # KL(p||m) = .6 ln(.6/.55) + .3 ln(.3/.4) + .1 ln(.1/.05) = 0.0352169
    # KL(q||m) = .5 ln(.5/.55) + .5 ln(.5/.4)                  = 0.0639167
    # JSD = (0.0352169 + 0.0639167) / 2                          = 0.0495668
    assert rank_jsd([1, 6, 3], [5, 5]) == pytest.approx(0.0495668, abs=1e-6)


def test_rank_jsd_ignores_which_address_has_which_rank():
    real = pd.Series({"10.0.0.1": 10, "10.0.0.2": 5})
    renamed = pd.Series({"192.168.9.9": 5, "172.16.0.1": 10})
    assert rank_jsd(real.to_numpy(), renamed.to_numpy()) == 0.0
    # the plain histogram JSD would call them disjoint
    assert categorical_distances(real, renamed)["jsd"] == pytest.approx(LN2)


# ------------------------------------------------------------------ EMD, shares, ratios

def test_emd_is_scipy_wasserstein():
    assert emd([0, 1, 3], [0, 1, 3]) == 0
    assert emd([0, 1, 3], [5, 6, 8]) == pytest.approx(5.0)  # a shift by 5
    assert emd([0, 0], [0, 1]) == pytest.approx(0.5)
    assert math.isnan(emd([], [1.0]))
    assert emd([1.0, np.nan], [1.0]) == 0  # nulls are left out


def test_share_gap():
    assert share_gap(0.75, 0.5) == 0.25
    assert math.isnan(share_gap(float("nan"), 0.5))


def test_ratio_to_floor():
    assert ratio("packet_length_emd", 30.0, 10.0) == pytest.approx(3.0)
    assert ratio("packet_length_emd", 0.0, 0.0) == 1.0  # as close as real is to itself
    assert ratio("packet_length_emd", 1.0, 0.0) is None  # no finite ratio
    assert ratio("packet_length_emd", float("nan"), 1.0) is None
    # the AUC is turned into its distance from chance first
    assert as_distance("discriminator_auc", 0.8) == pytest.approx(0.3)
    assert as_distance("discriminator_auc", 0.45) == 0.0
    assert ratio("discriminator_auc", 0.9, 0.6) == pytest.approx(4.0)


# ------------------------------------------------------------------ views

def test_per_second_counts_quiet_seconds():
    assert per_second(np.array([0.1, 0.2, 2.5])).tolist() == [2, 0, 1]
    assert per_second(np.array([0.1, 0.2, 2.5]), np.array([10, 20, 5])).tolist() == [30, 0, 5]


def _tcp_packets():
    """Flow 0: SYN, SYN-ACK, ACK, FIN-ACK (3 direction changes). Flow 1: ACK, RST (no
    handshake, no change). Flow 2 (UDP) must be ignored."""
    SYN, ACK, FIN, RST, PSH = 0x002, 0x010, 0x001, 0x004, 0x008
    return pd.DataFrame({
        "ts_ns": [0, 1, 2, 3, 4, 5, 6],
        "wire_len": [60, 60, 60, 60, 100, 60, 80],
        "ip_proto": [6, 6, 6, 6, 6, 6, 17],
        "flow_id": [0, 0, 0, 0, 1, 1, 2],
        "flow_pos": [0, 1, 2, 3, 0, 1, 0],
        "direction": [0, 1, 0, 1, 0, 0, 0],
        "tcp_flags": [SYN, SYN | ACK, ACK | PSH, FIN | ACK, ACK, RST, None],
    })


def test_tcp_behaviour_from_packets():
    shares, changes = _tcp_behaviour(_tcp_packets())
    assert shares == {"tcp_flows": 2, "tcp_handshake_share": 0.5, "tcp_fin_share": 0.5,
                      "tcp_rst_share": 0.5, "tcp_fin_or_rst_share": 1.0}
    assert changes.tolist() == [3, 0]


def test_handshake_needs_the_right_directions():
    p = _tcp_packets()
    p.loc[1, "direction"] = 0  # SYN-ACK sent by the initiator: not a handshake
    assert _tcp_behaviour(p)[0]["tcp_handshake_share"] == 0.0


def test_prepare_reads_pyarrow_and_pandas_alike():
    df = _tcp_packets()
    df["flow_iat_ns"] = [0, 1, 1, 1, 0, 1, 0]
    a = prepare(df)
    b = prepare(pa.Table.from_pandas(df, preserve_index=False))
    assert a.shares == b.shares
    assert a.n_flows == b.n_flows == 3  # flows summed up from flow_id when no flow table
    assert np.array_equal(a.values["flow_packets"], [4, 2, 1])
    assert np.array_equal(a.values["flow_gap_s"], b.values["flow_gap_s"])
    # gaps of 1 ns sit at the 1-us floor of the log scale
    assert np.allclose(a.values["flow_gap_log10_s"], -6.0)


def test_per_second_distribution_matches_the_dense_series():
    from necst.evaluate.views import per_second_distribution

    t = np.array([0.1, 0.2, 2.5, 2.6, 2.7, 7.0])
    w = np.array([10, 20, 5, 1, 1, 3])
    for weights in (None, w):
        dense = per_second(t, weights, start=0.0, stop=9.5)
        values, counts = per_second_distribution(t, weights, 9.5)
        assert counts.sum() == len(dense) == 10
        assert np.array_equal(np.repeat(values, counts.astype(int)), np.sort(dense))
        other = np.array([1.0, 4.0, 4.5])
        assert emd(values, per_second(other), counts) == pytest.approx(emd(dense, per_second(other)))
    # a gap of a year costs nothing
    values, counts = per_second_distribution(np.array([0.0, 3e7]), None, 3e7)
    assert values.tolist() == [0, 1] and counts.tolist() == [3e7 - 1, 2]
