"""Packet mode's damped statistics in closed form against AfterImage's packet-by-packet update."""
from __future__ import annotations

import numpy as np
import pytest

from necst.detect.packet_features import _segmented_cumsum, damped_moments


def afterimage(t, k, xs, lambdas):
    """The reference: one packet at a time, state decayed by 2^(-λ Δt) then [1, x, x²] added."""
    lam = np.asarray(lambdas)
    state, last = {}, {}
    out = np.empty((len(t), len(xs), 3, len(lam)))
    for i in range(len(t)):
        s = state.get(k[i], np.zeros((len(xs), 3, len(lam))))
        if k[i] in last:
            s = s * 2.0 ** (-lam * (t[i] - last[k[i]]))
        for v, x in enumerate(xs):
            s[v] += np.array([1.0, x[i], x[i] ** 2])[:, None]
        state[k[i]], last[k[i]] = s, t[i]
        out[i] = s
    return out


@pytest.mark.parametrize("seconds", [50.0, 30_000.0])  # one epoch, and keys spread over hundreds of epochs
def test_damped_moments_match_afterimage(seconds):
    rng = np.random.default_rng(1)
    n = 3000
    t = np.sort(rng.uniform(0, seconds, n))
    k = rng.choice(7, n, p=[0.5, 0.2, 0.1, 0.1, 0.05, 0.04, 0.01])
    xs = [rng.integers(60, 1500, n).astype(float), rng.exponential(2.0, n)]
    lambdas = (5.0, 1.0, 0.1)
    got = damped_moments(t, k, xs, lambdas)
    ref = afterimage(t, k, xs, lambdas)
    for v in range(len(xs)):
        for j, lm in enumerate(lambdas):
            w, s1, s2 = ref[:, v, 0, j], ref[:, v, 1, j], ref[:, v, 2, j]
            mean = s1 / w
            std = np.sqrt(np.abs(s2 / w - mean ** 2))
            np.testing.assert_allclose(got[v][f"w_l{lm:g}"], w, rtol=1e-9)
            np.testing.assert_allclose(got[v][f"mean_l{lm:g}"], mean, rtol=1e-9)
            # E[x²] - E[x]² cancels: in doubles the std is good to about sqrt(x² · 2^-52) = 1.5e-8 x
            np.testing.assert_allclose(got[v][f"std_l{lm:g}"], std, rtol=1e-6, atol=1e-7 * xs[v].max())


def test_segmented_cumsum_restarts_and_never_mixes_segments():
    rng = np.random.default_rng(2)
    starts = np.r_[0, np.sort(rng.choice(np.arange(1, 5000), 60, replace=False))]
    Y = rng.random((5000, 2)) * np.where(rng.random(5000) < 0.01, 1e300, 1.0)[:, None]  # a few huge values
    want = np.concatenate([np.cumsum(seg, axis=0) for seg in np.split(Y, starts[1:])])
    for long_run in (1024, 8):  # padded short segments, and slices for long ones
        np.testing.assert_array_equal(_segmented_cumsum(Y, starts, long_run=long_run), want)
