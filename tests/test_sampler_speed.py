"""What keeps generation fast without changing what it draws."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def test_numpy_normal_quantile_matches_scipy():
    from scipy.special import ndtri

    from necst.model.mixture import _ndtri

    rng = np.random.default_rng(0)
    u = np.concatenate([rng.random(200_000), np.logspace(-12, -1, 500), 1 - np.logspace(-12, -1, 500),
                        [1e-12, 1 - 1e-12, 0.5, 0.075, 0.925, 0.0750001, 0.9249999]])
    want = ndtri(u)
    np.testing.assert_allclose(_ndtri(u), want, rtol=1e-13, atol=1e-15)
    assert _ndtri(np.array([0.5]))[0] == 0.0 and (np.diff(_ndtri(np.sort(u))) >= 0).all()


def test_generating_does_not_import_scipy_special(tmp_path):
    """scipy.special costs a few tenths of a second to import; the bundled model samples without it."""
    code = ("import sys; from necst.generate.sampler import generate; "
            f"generate({str(tmp_path / 'x.pcap')!r}, n_flows=300, seed=1); "
            "print('scipy.special' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}, check=True)
    assert out.stdout.strip().splitlines()[-1] == "False", out.stdout + out.stderr


def test_distinct_is_numpys_unique_with_inverse():
    from necst.generate.craft import _distinct

    rng = np.random.default_rng(1)
    pool = np.array(["10.0.0.2", "10.0.0.10", "fe80::1", "a", "A", "é", "", "192.168.1.1"], dtype=object)
    for n in (0, 1, 50, 5000):
        v = pool[rng.integers(0, len(pool), n)]
        want_u, want_i = np.unique(v.astype(str), return_inverse=True)
        got_u, got_i = _distinct(v)
        assert got_u.tolist() == want_u.tolist() and got_i.tolist() == want_i.tolist()


def test_free_port_table_is_the_port_walk_over_dissector_ports():
    """aggregate._ephemeral_ports takes the k-th port from lo that tshark does not dissect by number
    from a table; this is the walk that stepped over the dissector ports one lookup at a time."""
    from necst.model.aggregate import DISSECTOR_PORTS, FREE_PORTS

    rng = np.random.default_rng(2)
    span = rng.integers(100, 5000, 20000)
    lo = np.minimum(rng.integers(1024, 60000, 20000), 65536 - span)
    d_lo = np.searchsorted(DISSECTOR_PORTS, lo)
    free = span - (np.searchsorted(DISSECTOR_PORTS, lo + span) - d_lo)
    k = rng.integers(0, 1 << 40, len(lo)) % free
    port = lo + k
    for _ in range(256):
        nxt = lo + k + (np.searchsorted(DISSECTOR_PORTS, port, side="right") - d_lo)
        if np.array_equal(nxt, port):
            break
        port = nxt
    got = FREE_PORTS[lo - d_lo + k]
    np.testing.assert_array_equal(got, port)
    assert not np.isin(got, DISSECTOR_PORTS).any() and ((got >= lo) & (got < lo + span)).all()


def test_row_ids_are_numpys_row_unique_inverse():
    """aggregate._separate_keys numbers the flow keys with one lexsort instead of np.unique(axis=0)."""
    from necst.model.aggregate import _row_ids

    rng = np.random.default_rng(4)
    for n in (0, 1, 7, 5000):
        for hi in (2, 300, 1 << 40):
            t = np.column_stack([rng.integers(0, 4, n), rng.integers(0, hi, n), rng.integers(-hi, hi, n)])
            want = np.unique(t, axis=0, return_inverse=True)[1].reshape(-1)
            np.testing.assert_array_equal(_row_ids(t), want)
