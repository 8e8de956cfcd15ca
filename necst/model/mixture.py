"""Gaussian mixtures over a latent space: fitted by scikit-learn, used and stored as plain arrays.

scikit-learn fits (EM) and scores (BIC); everything after the fit — sampling, the most likely
component, saving — runs on the three arrays ``weights``, ``means``, ``covariances`` in numpy,
so a saved mixture is an ``.npz`` of numbers, never a pickle, and loading needs no sklearn state.
"""
from __future__ import annotations

from typing import Sequence

import warnings

import numpy as np

from necst.errors import NecstError

DEFAULT_CANDIDATES = (1, 2, 4, 8, 16, 24, 32, 40)


# Wichura (1988), Algorithm AS 241 (PPND16): rational approximations in three ranges
_A = (3.3871328727963666080e0, 1.3314166789178437745e+2, 1.9715909503065514427e+3, 1.3731693765509461125e+4,
      4.5921953931549871457e+4, 6.7265770927008700853e+4, 3.3430575583588128105e+4, 2.5090809287301226727e+3)
_B = (1.0, 4.2313330701600911252e+1, 6.8718700749205790830e+2, 5.3941960214247511077e+3,
      2.1213794301586595867e+4, 3.9307895800092710610e+4, 2.8729085735721942674e+4, 5.2264952788528545610e+3)
_C = (1.42343711074968357734e0, 4.63033784615654529590e0, 5.76949722146069140550e0, 3.64784832476320460504e0,
      1.27045825245236838258e0, 2.41780725177450611770e-1, 2.27238449892691845833e-2, 7.74545014278341407640e-4)
_D = (1.0, 2.05319162663775882187e0, 1.67638483018380384940e0, 6.89767334985100004550e-1,
      1.48103976427480074590e-1, 1.51986665636164571966e-2, 5.47593808499534494600e-4, 1.05075007164441684324e-9)
_E = (6.65790464350110377720e0, 5.46378491116411436990e0, 1.78482653991729133580e0, 2.96560571828504891230e-1,
      2.65321895265761230930e-2, 1.24266094738807843860e-3, 2.71155556874348757815e-5, 2.01033439929228813265e-7)
_F = (1.0, 5.99832206555887937690e-1, 1.36929880922735805310e-1, 1.48753612908506148525e-2,
      7.86869131145613259100e-4, 1.84631831751005468180e-5, 1.42151175831644588870e-7, 2.04426310338993978564e-15)


def _ratio(num, den, x):
    return np.polynomial.polynomial.polyval(x, num) / np.polynomial.polynomial.polyval(x, den)


def _ndtri(p):
    """The standard normal quantile of ``p`` in (0, 1), numpy only (Wichura's AS 241: about 1e-16
    relative error), so that sampling does not import scipy.special."""
    p = np.asarray(p, np.float64)
    q = p - 0.5
    out = np.empty_like(q)
    mid = np.abs(q) <= 0.425
    qm = q[mid]
    out[mid] = qm * _ratio(_A, _B, 0.180625 - qm * qm)
    tail = ~mid
    r = np.sqrt(-np.log(np.minimum(p[tail], 1.0 - p[tail])))
    near = r <= 5.0
    v = np.where(near, _ratio(_C, _D, r - 1.6), _ratio(_E, _F, r - 5.0))
    out[tail] = np.where(q[tail] < 0, -v, v)
    return out


class Mixture:
    """A full-covariance Gaussian mixture held as arrays (fit with :meth:`fit_bic`)."""

    def __init__(self, weights: np.ndarray, means: np.ndarray, covariances: np.ndarray):
        self.weights = np.asarray(weights, dtype=np.float64)
        self.means = np.asarray(means, dtype=np.float64)
        self.covariances = np.asarray(covariances, dtype=np.float64)
        k, d = self.means.shape
        if self.weights.shape != (k,) or self.covariances.shape != (k, d, d):
            raise NecstError(f"mixture arrays do not agree: weights {self.weights.shape}, "
                             f"means {self.means.shape}, covariances {self.covariances.shape}")
        if not (np.all(np.isfinite(self.weights)) and np.all(self.weights >= 0)
                and abs(self.weights.sum() - 1.0) < 1e-6):
            raise NecstError("mixture weights are not a probability vector")
        self.weights = self.weights / self.weights.sum()
        try:
            self._chol = np.linalg.cholesky(self.covariances)
        except np.linalg.LinAlgError:
            raise NecstError("mixture covariance is not positive definite") from None

    @property
    def n_components(self) -> int:
        return len(self.weights)

    @classmethod
    def fit_bic(cls, Z: np.ndarray, candidates: Sequence[int] = DEFAULT_CANDIDATES, *,
                seed: int = 0, max_points: int = 20_000, max_iter: int = 100) -> tuple["Mixture", dict]:
        """The candidate size with the lowest BIC, fitted on at most ``max_points`` rows.

        Returns the mixture and ``{"bic": {k: value}, "chosen": k, "points": n}``.
        """
        from sklearn.mixture import GaussianMixture
        from threadpoolctl import threadpool_limits

        Z = np.asarray(Z, dtype=np.float64)
        rng = np.random.default_rng(seed)
        if len(Z) > max_points:
            Z = Z[np.sort(rng.choice(len(Z), max_points, replace=False))]
        sizes = [k for k in sorted(set(int(c) for c in candidates)) if 1 <= k <= max(1, len(Z) // 10)]
        sizes = sizes or [1]
        best, best_bic, bics = None, np.inf, {}
        worse = 0
        for k in sizes:
            # one BLAS thread: on small matrices threads only contend (10x slower on 2 cores)
            with warnings.catch_warnings(), threadpool_limits(1):
                warnings.simplefilter("ignore")  # duplicate latent points: fewer clusters than k
                gm = GaussianMixture(k, covariance_type="full", reg_covar=1e-5, max_iter=max_iter,
                                     random_state=seed).fit(Z)
            bic = float(gm.bic(Z))
            bics[k] = bic
            if bic < best_bic:
                best, best_bic, worse = gm, bic, 0
            else:
                worse += 1
                if worse >= 2:  # BIC has turned up for two sizes in a row: stop looking
                    break
        info = {"bic": {str(k): v for k, v in bics.items()}, "chosen": best.n_components,
                "points": len(Z)}
        return cls(best.weights_, best.means_, best.covariances_), info

    # -- use ----------------------------------------------------------------------------------

    def sample_components(self, codes: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """One latent point from each given component; the points of one component are a
        Latin hypercube of its Gaussian (stratified per coordinate, in random order)."""
        codes = np.asarray(codes, dtype=np.int64)
        if len(codes) and (codes.min() < 0 or codes.max() >= self.n_components):
            raise NecstError(f"component codes must lie in 0..{self.n_components - 1}")
        # Latin-hypercube normals per component: each coordinate of the points drawn from one
        # component covers its normal evenly (each point still N(0, I))
        u = np.column_stack([stratified_uniforms(codes, rng) for _ in range(self.means.shape[1])])
        eps = _ndtri(np.clip(u, 1e-12, 1 - 1e-12)).reshape(len(codes), self.means.shape[1])
        return self.means[codes] + np.einsum("nij,nj->ni", self._chol[codes], eps)

    def sample(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """``n`` latent points and the component each came from, in random order.

        Components are allocated by :func:`stratified_counts` rather than drawn iid: each
        component gets ``n * weight`` points up to a seeded remainder, which removes the
        multinomial noise of the allocation (what makes two samples of the same model differ
        more than the model differs from the data) while each point's component keeps the
        mixture's distribution."""
        counts = stratified_counts(self.weights, int(n), rng)
        codes = rng.permutation(np.repeat(np.arange(self.n_components), counts))
        return self.sample_components(codes, rng), codes

    def log_resp(self, Z: np.ndarray) -> np.ndarray:
        """Unnormalised log posterior of each component for each row, shape (n, k)."""
        Z = np.asarray(Z, dtype=np.float64)
        d = Z.shape[1]
        out = np.empty((len(Z), self.n_components))
        for j in range(self.n_components):  # k is small (<= 40); each step is vectorized over rows
            diff = Z - self.means[j]
            sol = np.linalg.solve(self._chol[j], diff.T)  # L^-1 (z - mu)
            logdet = 2.0 * np.log(np.diag(self._chol[j])).sum()
            out[:, j] = (np.log(self.weights[j]) - 0.5 * (sol * sol).sum(axis=0)
                         - 0.5 * logdet - 0.5 * d * np.log(2 * np.pi))
        return out

    def predict(self, Z: np.ndarray) -> np.ndarray:
        """The most likely component of each row."""
        return np.argmax(self.log_resp(Z), axis=1)

    # -- storage ------------------------------------------------------------------------------

    def to_arrays(self, prefix: str) -> dict[str, np.ndarray]:
        return {f"{prefix}weights": self.weights, f"{prefix}means": self.means,
                f"{prefix}covariances": self.covariances}

    @classmethod
    def from_arrays(cls, arrays: dict, prefix: str) -> "Mixture":
        try:
            return cls(arrays[f"{prefix}weights"], arrays[f"{prefix}means"],
                       arrays[f"{prefix}covariances"])
        except KeyError as e:
            raise NecstError(f"mixture arrays lack {e.args[0]!r}") from None


def stratified_counts(weights: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Integer counts summing to ``n`` with expectation ``n * weights``: ``floor(n * w)`` each,
    the ``r`` left over placed by systematic sampling on the fractional parts (one uniform),
    so every count is ``floor`` or ``ceil`` of ``n * w`` and a remainder of weight ``f`` goes
    to its component with probability ``f`` exactly."""
    w = np.asarray(weights, dtype=np.float64)
    w = w / w.sum()
    expected = n * w
    counts = np.floor(expected).astype(np.int64)
    frac = np.clip(expected - counts, 0.0, 1.0)
    left = n - int(counts.sum())
    if left > 0:
        frac = frac * (left / frac.sum())  # sums to `left` exactly (rounding aside), each <= 1
        edges = np.concatenate([[0.0], np.cumsum(frac)])
        points = rng.random() + np.arange(left)
        hit = np.searchsorted(edges, points, side="right") - 1
        np.add.at(counts, np.clip(hit, 0, len(w) - 1), 1)
    return counts


def stratified_uniforms(groups: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One uniform per row, stratified within each group: a random permutation ranks the m
    rows of a group, and rank r draws uniformly from [r/m, (r+1)/m). Marginally each is U(0, 1)."""
    groups = np.asarray(groups, dtype=np.int64)
    n = len(groups)
    if n == 0:
        return np.zeros(0)
    order = np.argsort(groups - groups.min() + rng.random(n))  # by group, random inside (one float sort)
    ranked = groups[order]
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(n) - np.searchsorted(ranked, ranked, side="left")
    size = np.bincount(groups - groups.min())[groups - groups.min()]
    return (rank + rng.random(n)) / size
