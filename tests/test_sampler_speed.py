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
