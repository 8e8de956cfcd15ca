"""Packet level: a VAE over each packet's features and Gaussian mixtures over its latent space.

``PacketModel(**params).fit(dataset)`` learns, ``.sample(n, kind=, position=, seed=)`` draws
packets in real units, ``.save(dir)`` / ``PacketModel.load(dir)`` keep it in a model bundle.
The flow model uses the discrete interface (NeCSTGen's): ``n_codes(kind)``, ``encode(packets,
kind)`` (a packet's most likely mixture component) and ``sample_codes(codes, kind, seed)``.

Features (``model_spec``), all categorical heads (one softmax each): kind, app, flag_combo
(given kind), src_port / dst_port buckets (given kind), direction, hdr_len (given kind: the
header sizes that occur for the kind, Ethernet padding included), and the quantile-bin class of
payload_len and of log10 gap_s (``QuantileBins``: ~64 and ~48 bins, a frequent value getting a bin
of its own; a value is drawn inside the decoded bin from that bin's own quantiles). A sigmoid
head on a min-max scaled length decodes the decoder's *mean*, which blurs a multimodal size
distribution (measured: 20x the floor's packet-length EMD, against ~1.2x with bins). wire_len is
not a feature: it is decoded as ``hdr_len + payload_len``, so the three always agree. The
flow-context features of ``packet_spec`` (rates, windows, position) are left out: they describe
the flow, which the flow level models.

Mixtures: one per kind and position in the flow (first / body / last) where the training data
holds ``min_packets`` of them, else that kind's pooled mixture, else the pooled mixture of all
packets; ``mixture_for_`` records which one each (kind, position) uses. Sizes by BIC over
1..``max_components``. The per-position mixtures, which ``sample`` draws from, are fitted on one
draw from each packet's posterior (``mixture_on="posterior"``), i.e. on the aggregate posterior
the decoder was trained on; fitted on the posterior means alone (NeCSTGen's way, ``"mean"``)
they sample too close to the centres and measured worse on flags and direction. The kind's
pooled mixture, whose components underlie the codes of the discrete interface, is fitted on the
latent means: there packets form tight clusters, and BIC keeps enough components for the codes
to tell packet types apart (on posterior draws it kept as few as 1 to 4).

Codes (``code_min_packets`` > 0, the default): a code is a (component, payload-length bin) pair
with at least that many training packets, plus one "rest" code per component
(``necst.model.length_codes.LengthClassCodes``); ``sample_codes`` decodes the component through
the VAE and takes hdr_len and the payload bin from the code's own training packets. The flow
model's LSTM then picks the length class packet by packet, so a flow's sizes stay together: with
components alone as codes (bundles written before, or ``code_min_packets=0``) a component mixed
lengths (61 % empty and 17-1448 bytes in one TCP code) and each packet's length was drawn on its
own. Decoding the real training packets' codes, TCP bytes per flow went from 2.1x the floor to
1.1x (UDP 1.8x -> 1.2x; 139 / 130 / 47 codes for tcp / udp / noflow instead of 40 each); the
flow model trained on them samples TCP bytes per flow at 1.11x (was 2.26x), UDP 1.33x (1.82x).
The cost is in the flow model's larger code head: about 25 % more CPU per sampled packet, and
0.6 CPU-s more to decode its per-code pool once per process.

Calibration (``calibrate=True``): per (kind, position), each categorical head gets log-weights
fitted at training time (iterative proportional fitting over 20,000 latent draws of that group's
mixture) so that the sampled share of each value matches the training data; the latent point
still ties the fields together. Measured on the iot_sentinel split: flags JSD 13x -> 1.0x the
floor, log-gap EMD 2.0x -> 1.2x (seed 0). It changes ``sample`` (positions known), not ``sample_codes``.

Decoding guarantees: integer lengths with ``wire_len == hdr_len + payload_len``; the kind asked
for; flag combinations, header lengths and port buckets seen with that kind in training; a first
packet has ``direction`` 0 and ``gap_s`` 0; flags and gap classes that hold under 0.1 % of a
(kind, position)'s training packets are not drawn there (no SYN in a flow's body, no zero gap
after the first packet: without this mask 19 % of sampled non-first ARP/ICMP packets had the
first packets' zero gap, against 0 % in the data). Categorical heads are drawn from their softmax
(``decode="sample"``, the default) or take its argmax (``decode="argmax"``).

Variance reduction (same distribution per packet, less noise per batch): mixture components
are allocated in proportion to their weights (``stratified_counts``) rather than drawn iid;
each categorical head is drawn for the whole batch by systematic sampling over the rows ordered
by (group, component) (``systematic_categorical``); values inside a quantile bin use stratified
uniforms; and each (kind, position) group of a batch is raked to the training shares
(``_rake``) before its heads are drawn, so that its counts are the training shares up to
rounding rather than up to the noise of its latent draws. On the iot_sentinel split
(``scripts/eval_packet_model.py --sample-seeds 5``), sampling in the learned proportions, every
marginal row is within 0.8-1.34x the floor over 5 seeds (direction was 207x). Sampled with the
held-out part's kinds and positions, direction stays at 9.5x: the training shares per (kind,
position) applied to the held-out composition are 10x the floor's JSD away, since the floor's
1.5e-8 comes from train's own composition offsetting its per-group differences.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from necst.errors import BundleError, NecstError
from necst.model.length_codes import LengthClassCodes
from necst.model.mixture import DEFAULT_CANDIDATES, Mixture, stratified_counts, stratified_uniforms
from necst.model.vae import DenseStack, TrainedVAE, activate, train_vae
from necst.process.features import (NOT_TCP, FeatureSpec, categorical, flag_bits, packet_categoricals,
                                    packet_features)

KINDS = ("tcp", "udp", "noflow")
POSITION_MASKED = ("flag_combo", "gap_s_bin")
MASK_SHARE = 1e-3
CLIP_W = 1e-8  # smallest calibration weight relative to the largest
RAKE_MIN_ROWS = 100  # smaller groups sample with the stored calibration alone
POSITIONS = ("first", "body", "last")
LEVEL = "packet"
FORMAT_VERSION = 1
OUTPUT_COLUMNS = ("kind", "position", "app", "flag_combo", "tcp_flags", "src_port", "dst_port",
                  "direction", "wire_len", "hdr_len", "payload_len", "gap_s")


BINNED = {"payload_len": 64, "gap_s": 48}  # field -> number of quantile bins
QUANTILES_PER_BIN = 33


class QuantileBins:
    """A numeric field as a class: quantile bins of the training values, each with its own
    inverse CDF (``QUANTILES_PER_BIN`` points) to draw a value inside the bin.

    A value carrying more mass than a bin (payload 0, a frequent size) gets a bin of its own
    and decodes exactly; other bins decode by interpolating their quantiles. The VAE then
    predicts a distribution over bins (a softmax head) instead of a blurred mean.
    ``log``: bins and quantiles on log10(max(x, 1e-6)) (time gaps).
    """

    def __init__(self, edges: np.ndarray, quantiles: np.ndarray, log: bool, integer: bool):
        self.edges = np.asarray(edges, dtype=np.float64)
        self.quantiles = np.asarray(quantiles, dtype=np.float64)
        self.log, self.integer = bool(log), bool(integer)
        if self.quantiles.shape != (len(self.edges) - 1, QUANTILES_PER_BIN):
            raise NecstError(f"bin arrays do not agree: {self.edges.shape} edges, "
                             f"{self.quantiles.shape} quantiles")

    def _z(self, x) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        return np.log10(np.maximum(x, 1e-6)) if self.log else x

    @classmethod
    def fit(cls, x: np.ndarray, n_bins: int, log: bool, integer: bool) -> "QuantileBins":
        self = cls.__new__(cls)
        self.log, self.integer = bool(log), bool(integer)
        z = np.sort(self._z(x))
        qs = np.quantile(z, np.linspace(0, 1, n_bins + 1), method="inverted_cdf")
        # bins [e_i, e_i+1); a mass point repeated in qs becomes [v, v] then the next bin
        values, repeats = np.unique(qs, return_counts=True)
        mass = values[repeats > 1]  # more mass than a bin: a bin [v, v+) of its own
        edges = np.unique(np.concatenate([values, np.nextafter(mass, np.inf)]))
        if edges[-1] == values[-1]:
            edges = np.append(edges, np.nextafter(edges[-1], np.inf))
        index = np.clip(np.searchsorted(edges, z, side="right") - 1, 0, len(edges) - 2)
        starts = np.searchsorted(index, np.arange(len(edges) - 1), side="left")
        stops = np.searchsorted(index, np.arange(len(edges) - 1), side="right")
        quant = np.empty((len(edges) - 1, QUANTILES_PER_BIN))
        grid = np.linspace(0, 1, QUANTILES_PER_BIN)
        for b, (a, c) in enumerate(zip(starts, stops)):  # one row per bin (<= n_bins)
            quant[b] = np.quantile(z[a:c], grid) if c > a else edges[b]
        self.edges, self.quantiles = edges, quant
        return self

    def transform(self, x) -> np.ndarray:
        z = self._z(x)
        return np.clip(np.searchsorted(self.edges, z, side="right") - 1, 0, len(self.edges) - 2)

    def draw(self, bins: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """A value inside each row's bin. The rows of one bin share its inverse CDF through
        stratified (Latin-hypercube) uniforms: in a random order, the r-th of m rows draws
        from [r/m, (r+1)/m). Each value keeps the bin's distribution; the m values together
        cover it evenly instead of clumping as iid draws do."""
        bins = np.asarray(bins, dtype=np.int64)
        u = stratified_uniforms(bins, rng) * (QUANTILES_PER_BIN - 1)
        lo = np.floor(u).astype(np.int64)
        frac = u - lo
        hi = np.minimum(lo + 1, QUANTILES_PER_BIN - 1)
        q = self.quantiles[bins]
        rows = np.arange(len(bins))
        z = q[rows, lo] * (1 - frac) + q[rows, hi] * frac
        x = np.power(10.0, z) if self.log else z
        if self.log:
            x = np.where(z <= -6 + 1e-9, 0.0, x)  # the 1e-6 floor stands for 0 and sub-us gaps
        return np.rint(x).astype(np.int64) if self.integer else x

    def to_arrays(self, prefix: str) -> dict:
        return {f"{prefix}edges": self.edges, f"{prefix}quantiles": self.quantiles,
                f"{prefix}flags": np.array([self.log, self.integer])}

    @classmethod
    def from_arrays(cls, arrays: dict, prefix: str) -> "QuantileBins":
        log, integer = (bool(v) for v in arrays[f"{prefix}flags"])
        return cls(arrays[f"{prefix}edges"], arrays[f"{prefix}quantiles"], log, integer)


def _rake(P: np.ndarray, target: np.ndarray, rounds: int = 300, tol: float | None = None) -> np.ndarray:
    """Rows of probabilities reweighted per value (iterative proportional fitting) so that
    their mean is ``target`` (over the values the rows can take), weights clipped like the
    stored calibration's. The stored weights bring the model's shares to the training data's
    in expectation, over 20,000 draws at training time; raking does it for the batch at hand,
    whose latent points carry their own noise (with systematic draws after it, a group's
    count of each value is then its training share up to rounding)."""
    reach = P.sum(axis=0) > 0
    target = np.where(reach, target, 0.0)
    if target.sum() <= 0:
        return P
    target = target / target.sum()
    tol = 0.1 / len(P) if tol is None else tol
    w = (target > 0).astype(np.float64)
    Q = P
    for _ in range(rounds):
        Q = P * w
        Q = Q / np.maximum(Q.sum(axis=1, keepdims=True), 1e-300)
        got = Q.mean(axis=0)
        if np.abs(got - target).max() < tol:
            break
        w = np.where(target > 0, w * target / np.maximum(got, 1e-12), 0.0)
        w = np.where(target > 0, np.clip(w / w.max(), CLIP_W, 1.0), 0.0)
    lost = Q.sum(axis=1) <= 0  # a row whose every value got weight 0 keeps its own
    Q[lost] = P[lost]
    return Q


def systematic_categorical(P: np.ndarray, order: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One category per row of ``P`` (rows: probability vectors), each row drawn with exactly
    its own probabilities, but with the counts of the batch controlled (systematic sampling).

    Category by category (the chain rule), the rows still unassigned, in ``order``, are laid
    end to end with lengths ``q = p_c / (mass not yet passed)`` <= 1 and hit by the points
    ``U + k`` (Madow's systematic sampling with unequal probabilities: row i is hit with
    probability q_i exactly). Any run of consecutive rows then gets ``floor`` or ``ceil`` of
    its expected count of the first category, and the later ones stay close. Sort ``order``
    by a stratum (group, mixture component) with random order inside, and each stratum's
    counts follow the model's probabilities instead of the multinomial noise of iid draws.
    """
    n, width = P.shape
    Po = P[order]
    out = np.full(n, -1, dtype=np.int64)
    passed = np.zeros(n)
    alive = np.arange(n)
    for c in range(width):
        if len(alive) == 0:
            break
        pc = Po[alive, c]
        if not np.any(pc > 0):
            continue
        rest = 1.0 - passed[alive]
        q = np.where(rest > 1e-12, np.clip(pc / np.maximum(rest, 1e-300), 0.0, 1.0), 0.0)
        if c == width - 1:
            q = np.where(pc > 0, 1.0, 0.0)
        ends = np.cumsum(q)
        starts = ends - q
        u = rng.random()
        hit = (np.ceil(ends - u) - np.ceil(starts - u)) > 0
        out[alive[hit]] = c
        passed[alive] += pc
        alive = alive[~hit]
    if len(alive):  # rounding left a row unassigned: its most likely category
        out[alive] = np.argmax(Po[alive], axis=1)
    codes = np.empty(n, dtype=np.int64)
    codes[order] = out
    return codes


def model_spec(min_port_frequency: float = 1e-4) -> FeatureSpec:
    """The FeatureSpec of the packet VAE (see the module docstring); ``*_bin`` columns are
    the ``QuantileBins`` classes of payload_len and gap_s."""
    return FeatureSpec([
        *packet_categoricals(min_port_frequency),
        categorical("hdr_len", given="kind", decode_other=False, dtype="int64"),
        categorical("payload_len_bin", decode_other=False, dtype="int64"),
        categorical("gap_s_bin", decode_other=False, dtype="int64"),
    ])


def flow_positions(features: pd.DataFrame) -> np.ndarray:
    """``first`` / ``body`` / ``last`` of each packet in its flow (a one-packet flow is first)."""
    fid = features["flow_id"].to_numpy()
    pos = features["flow_pos"].to_numpy()
    _, inverse, counts = np.unique(fid, return_inverse=True, return_counts=True)
    size = counts[inverse]
    out = np.full(len(fid), "body", dtype=object)
    out[(pos == size - 1) & (size > 1)] = "last"
    out[pos == 0] = "first"
    return out


def _as_features(data) -> tuple[pd.DataFrame, dict | None]:
    """Packet features (and the dataset's meta when known) from a dataset, a path or a table."""
    from necst.process.dataset import Dataset, load_dataset

    if isinstance(data, (str, Path)):
        data = load_dataset(data)
    if isinstance(data, Dataset):
        return packet_features(data.packets), data.meta
    if isinstance(data, pd.DataFrame) and "hdr_len" in data.columns and "gap_s" in data.columns:
        return data, None
    return packet_features(data), None


def _mixture_key(kind: str | None, position: str | None) -> str:
    return "all" if kind is None else (kind if position is None else f"{kind}.{position}")


class PacketModel:
    """VAE + Gaussian mixtures over packets (see the module docstring)."""

    def __init__(self, latent_dim: int = 6, hidden: Sequence[int] = (64, 32), beta: float = 1.0,
                 epochs: int = 30, batch_size: int = 1024, patience: int = 3,
                 validation_fraction: float = 0.1, learning_rate: float = 2e-3,
                 max_components: int = 40, min_packets: int = 500,
                 max_train_packets: int = 300_000, bic_points: int = 20_000,
                 decode: str = "sample", mixture_on: str = "posterior", calibrate: bool = True,
                 min_port_frequency: float = 1e-4, code_min_packets: int = 30,
                 seed: int = 0, verbose: int = 0):
        self.latent_dim = latent_dim
        self.hidden = tuple(int(h) for h in hidden)
        self.beta = beta
        self.epochs = epochs
        self.batch_size = batch_size
        self.patience = patience
        self.validation_fraction = validation_fraction
        self.learning_rate = learning_rate
        self.max_components = max_components
        self.min_packets = min_packets
        self.max_train_packets = max_train_packets
        self.bic_points = bic_points
        self.decode = decode
        self.mixture_on = mixture_on
        self.calibrate = calibrate
        self.min_port_frequency = min_port_frequency
        self.code_min_packets = code_min_packets
        self.seed = seed
        self.verbose = verbose

    def get_params(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(self).items()
                if not k.endswith("_") and not k.startswith("_")}

    # -- fitting ----------------------------------------------------------------------------

    def fit(self, dataset) -> "PacketModel":
        """Learn from a dataset folder, a capture, a ``Dataset``, a PacketTable or its features."""
        if self.decode not in ("sample", "argmax"):
            raise NecstError(f"decode must be 'sample' or 'argmax', not {self.decode!r}")
        if self.mixture_on not in ("posterior", "mean"):
            raise NecstError(f"mixture_on must be 'posterior' or 'mean', not {self.mixture_on!r}")
        started = time.perf_counter()
        feats, meta = _as_features(dataset)
        if len(feats) < 20:
            raise NecstError(f"too few packets to learn from ({len(feats)})")
        rng = np.random.default_rng(self.seed)
        feats = feats.assign(position=flow_positions(feats))
        order = rng.permutation(len(feats))[: self.max_train_packets]
        feats = feats.iloc[order].reset_index(drop=True)

        self.bins_ = {f: QuantileBins.fit(feats[f].to_numpy(), k, log=f == "gap_s",
                                          integer=f == "payload_len") for f, k in BINNED.items()}
        feats = self._with_bins(feats)
        self.spec_ = model_spec(self.min_port_frequency).fit(feats)
        X = self.spec_.transform(feats)
        vae = train_vae(X, self._n_cont(), self._cat_slices(), latent_dim=self.latent_dim, hidden=self.hidden,
                        beta=self.beta, epochs=self.epochs, batch_size=self.batch_size,
                        patience=self.patience, validation_fraction=self.validation_fraction,
                        learning_rate=self.learning_rate, seed=self.seed, verbose=self.verbose)
        self._set_network(vae)
        self.history_ = vae.history
        val = vae.history.get("val_loss") or vae.history.get("loss") or [float("nan")]
        self.val_loss_ = float(min(val))
        self.epochs_run_ = vae.epochs_run

        self.vae_seconds_ = time.perf_counter() - started
        Z_mean = self._latent(X)
        Z = Z_mean
        if self.mixture_on == "posterior":
            # one draw from each packet's posterior: the mixtures then fit the aggregate posterior
            # the decoder was trained on, not only its centres
            log_var = np.clip(self.encoder_(X)[:, self.latent_dim:].astype(np.float64), -12, 8)
            Z = Z_mean + np.exp(0.5 * log_var) * rng.standard_normal(Z.shape)
        kinds = feats["kind"].astype(str).to_numpy()
        positions = feats["position"].to_numpy()
        self._fit_mixtures(Z, Z_mean, kinds, positions)
        self.position_masks_ = self._position_masks(X, kinds, positions)
        self.calibration_, self.calibration_targets_ = self._calibration(X, kinds, positions, rng)
        self.code_targets_ = self._code_targets(X, kinds, Z_mean)
        self.length_codes_ = self._length_codes(feats, kinds, Z_mean)
        counts = pd.crosstab(kinds, positions)
        self.proportions_ = {k: {p: int(counts.loc[k, p]) if k in counts.index and p in counts.columns
                                 else 0 for p in POSITIONS} for k in KINDS}
        self.n_train_packets_ = len(feats)
        self.dataset_fingerprint_ = None
        if meta is not None:
            from necst.model.bundle import dataset_fingerprint

            self.dataset_fingerprint_ = dataset_fingerprint(meta)
        self.fit_seconds_ = time.perf_counter() - started
        self.mixture_seconds_ = self.fit_seconds_ - self.vae_seconds_
        return self

    def _with_bins(self, feats: pd.DataFrame) -> pd.DataFrame:
        return feats.assign(**{f"{f}_bin": b.transform(feats[f].to_numpy())
                               for f, b in self.bins_.items()})

    def _position_masks(self, X: np.ndarray, kinds: np.ndarray, positions: np.ndarray) -> dict:
        """Per (kind, position), the values of ``POSITION_MASKED`` fields that hold at least
        ``MASK_SHARE`` of its packets: a SYN never decodes as a body packet, nor a zero gap
        (the gap of first packets) as a later one."""
        masks = {}
        by_name = {b.name: b for b in self.spec_.blocks}
        for name in POSITION_MASKED:
            b = by_name[name]
            codes = np.argmax(X[:, b.slice], axis=1)
            width = b.slice.stop - b.slice.start
            mask = np.ones((len(KINDS), len(POSITIONS), width), dtype=bool)
            for i, k in enumerate(KINDS):
                for j, p in enumerate(POSITIONS):
                    rows = (kinds == k) & (positions == p)
                    if rows.sum() == 0:
                        continue
                    counts = np.bincount(codes[rows], minlength=width)
                    mask[i, j] = counts >= max(1.0, MASK_SHARE * rows.sum())
            masks[name] = mask
        return masks

    def _calibration(self, X: np.ndarray, kinds: np.ndarray, positions: np.ndarray,
                     rng: np.random.Generator, draws: int = 20_000, rounds: int = 500,
                     tol: float = 1e-5) -> dict:
        """Log-weights per (kind, position) and categorical head that bring the sampled
        marginal of each head to the training data's (iterative proportional fitting on
        ``draws`` latent points of that group's mixture). A mixture with a few components
        over a smooth latent space gets a head's shares a few percent wrong (sampled first TCP
        packets were 91 % SYN against 99 % in the data); the weights fix the shares of each
        field while the latent point still ties the fields together. A value never seen in
        the group gets weight 0 (log -inf). Iterates until every share is within ``tol``:
        where the decoder is confident few rows respond to the weights, and the 10 fixed rounds
        used before left sampled shares 1.3 points off (tcp last packets: 69.4 % from the
        responder against 70.7 % in the data)."""
        blocks = [b for b in self.spec_.blocks if b.kind == "categorical" and b.name != "kind"]
        out = {b.name: np.zeros((len(KINDS), len(POSITIONS), b.slice.stop - b.slice.start))
               for b in blocks}
        targets = {name: np.zeros_like(v) for name, v in out.items()}
        for i, k in enumerate(KINDS):
            for j, p in enumerate(POSITIONS):
                rows = (kinds == k) & (positions == p)
                if rows.sum() == 0:
                    continue
                mix = self.mixtures_[self.mixture_for_[_mixture_key(k, p)]]
                Zs, _ = mix.sample(draws, rng)
                probs = activate(self.decoder_(Zs), self._n_cont(), self._cat_slices())
                for b in blocks:
                    target = X[rows, b.slice].astype(np.float64).mean(axis=0)
                    P = probs[:, b.slice]
                    if b.name in POSITION_MASKED:  # masked values are out of reach: aim at the rest
                        P = P * self.position_masks_[b.name][i, j]
                        target = target * self.position_masks_[b.name][i, j]
                        target = target / target.sum()
                    targets[b.name][i, j] = target
                    w = (target > 0).astype(np.float64)
                    for _ in range(rounds):
                        Q = P * w
                        Q /= np.maximum(Q.sum(axis=1, keepdims=True), 1e-300)
                        got = Q.mean(axis=0)
                        if np.abs(got - target).max() < tol:
                            break
                        w = np.where(target > 0, w * target / np.maximum(got, 1e-12), 0.0)
                        w = np.where(target > 0, np.clip(w / w[target > 0].max(), CLIP_W, 1.0), 0.0)
                    with np.errstate(divide="ignore"):
                        out[b.name][i, j] = np.log(w)
        return out, targets

    def _code_targets(self, X: np.ndarray, kinds: np.ndarray, Z_mean: np.ndarray | None = None) -> dict:
        """Per kind and categorical head, the share of each value among the training packets of
        each code (``{kind: {head: (n_codes, width)}}``): what ``sample_codes`` rakes a code's
        draws to. A component of the pooled mixture decodes to a spread of payload bins wider
        than its packets' own (measured in generated captures: packet length 15x the floor)."""
        if Z_mean is None:
            Z_mean = self._latent(X)
        blocks = [b for b in self.spec_.blocks if b.kind == "categorical" and b.name != "kind"]
        out: dict = {}
        for k in KINDS:
            rows = np.flatnonzero(kinds == k)
            if len(rows) == 0 or self.mixture_for_.get(k) != k:
                continue
            codes = self.mixtures_[k].predict(Z_mean[rows])
            size = np.bincount(codes, minlength=self.mixtures_[k].n_components).astype(np.float64)
            out[k] = {}
            for b in blocks:
                sums = np.zeros((len(size), b.slice.stop - b.slice.start))
                np.add.at(sums, codes, X[rows, b.slice].astype(np.float64))
                out[k][b.name] = sums / np.maximum(size, 1.0)[:, None]
        return out

    def _length_codes(self, feats: pd.DataFrame, kinds: np.ndarray, Z_mean: np.ndarray) -> dict:
        """Per kind, the codes of the discrete interface: (component, payload bin) pairs
        (``LengthClassCodes``); none with ``code_min_packets=0`` (codes are the components)."""
        if not self.code_min_packets:
            return {}
        out = {}
        n_bins = len(self.bins_["payload_len"].edges) - 1
        for k in KINDS:
            rows = np.flatnonzero(kinds == k)
            if len(rows) == 0:
                continue
            mix = self.mixtures_[self.mixture_for_[k]]
            out[k] = LengthClassCodes.fit(mix.predict(Z_mean[rows]), feats["payload_len_bin"].to_numpy()[rows],
                                          feats["hdr_len"].to_numpy()[rows], mix.n_components, n_bins,
                                          self.code_min_packets)
        return out

    def _n_cont(self) -> int:
        sl = self.spec_.continuous_slice
        return sl.stop - sl.start

    def _cat_slices(self) -> list[slice]:
        return [b.slice for b in self.spec_.blocks if b.kind == "categorical"]

    def _set_network(self, vae: TrainedVAE) -> None:
        self.encoder_, self.decoder_ = vae.encoder, vae.decoder
        self._keras_files = dict(vae.keras_files)

    def _latent(self, X: np.ndarray) -> np.ndarray:
        return self.encoder_(X)[:, : self.latent_dim].astype(np.float64)

    def _fit_mixtures(self, Z: np.ndarray, Z_mean: np.ndarray, kinds: np.ndarray,
                      positions: np.ndarray) -> None:
        candidates = [c for c in DEFAULT_CANDIDATES if c <= self.max_components]
        self.mixtures_: dict[str, Mixture] = {}
        self.mixture_info_: dict[str, dict] = {}
        self.mixture_for_: dict[str, str] = {}

        def fit(key, rows, points=Z):
            m, info = Mixture.fit_bic(points[rows], candidates, seed=self.seed, max_points=self.bic_points)
            self.mixtures_[key], self.mixture_info_[key] = m, dict(info, packets=int(len(rows)))

        for kind in KINDS:
            rows = np.flatnonzero(kinds == kind)
            own = len(rows) >= self.min_packets
            if own:  # the codes: on latent means, where packets form tight, separate clusters
                fit(kind, rows, Z_mean)
            self.mixture_for_[kind] = kind if own else "all"
            for pos in POSITIONS:
                sub = rows[positions[rows] == pos]
                key = _mixture_key(kind, pos)
                if own and len(sub) >= self.min_packets:
                    fit(key, sub)
                    self.mixture_for_[key] = key
                else:
                    self.mixture_for_[key] = self.mixture_for_[kind]
        if "all" in self.mixture_for_.values():  # a kind too rare for its own: the pooled one
            fit("all", np.arange(len(Z)), Z_mean)

    # -- using ------------------------------------------------------------------------------

    def _check_fitted(self) -> None:
        if not hasattr(self, "mixtures_"):
            raise NecstError("PacketModel is not fitted: call fit(dataset) or PacketModel.load(dir)")

    @staticmethod
    def _check_kind(kind: str | None, allow_none: bool) -> None:
        if kind is None and allow_none:
            return
        if kind not in KINDS:
            raise NecstError(f"kind must be one of {', '.join(KINDS)}, not {kind!r}")

    def n_codes(self, kind: str) -> int:
        """How many codes the kind has: its (component, payload bin) codes, or, in models
        without them (``code_min_packets=0``, bundles written before them), the components of
        the kind's pooled mixture."""
        self._check_fitted()
        self._check_kind(kind, False)
        lc = getattr(self, "length_codes_", {}).get(kind)
        return lc.n_codes if lc is not None else self.mixtures_[self.mixture_for_[kind]].n_components

    def encode(self, packets: pd.DataFrame, kind: str) -> np.ndarray:
        """Each packet's code: the most likely component of its latent mean (kind's mixture),
        with its payload bin where the model has length-class codes."""
        self._check_fitted()
        self._check_kind(kind, False)
        if len(packets) == 0:
            return np.zeros(0, dtype=np.int64)
        feats = self._with_bins(packets)
        comp = self.mixtures_[self.mixture_for_[kind]].predict(self._latent(self.spec_.transform(feats)))
        lc = getattr(self, "length_codes_", {}).get(kind)
        if lc is None:
            return comp.astype(np.int64)
        return lc.encode(comp, feats["payload_len_bin"].to_numpy())

    def sample_codes(self, codes: np.ndarray, kind: str, seed: int = 0) -> pd.DataFrame:
        """One packet per code, drawn from the code's component of the kind's mixture, decoded;
        with length-class codes, hdr_len and the payload bin come from the code's own training
        packets (stratified per code), the payload inside its bin as in ``sample``."""
        self._check_fitted()
        self._check_kind(kind, False)
        rng = np.random.default_rng(seed)
        codes = np.asarray(codes, dtype=np.int64)
        lc = getattr(self, "length_codes_", {}).get(kind)
        if lc is None:
            comp = codes
        else:
            if len(codes) and (codes.min() < 0 or codes.max() >= lc.n_codes):
                raise NecstError(f"{kind} codes must lie in 0..{lc.n_codes - 1}")
            comp = lc.comp[codes]
        Z = self.mixtures_[self.mixture_for_[kind]].sample_components(comp, rng)
        out = self._decode(Z, np.full(len(codes), kind, dtype=object), None, rng, strata=comp,
                           skip=() if lc is None else ("hdr_len", "payload_len_bin"))
        if lc is not None and len(codes):
            hdr, pbin = lc.draw(codes, stratified_uniforms(codes, rng))
            payload = self.bins_["payload_len"].draw(pbin, rng)
            out["hdr_len"], out["payload_len"], out["wire_len"] = hdr, payload, hdr + payload
        return out

    def sample(self, n: int, kind: str | None = None, position: str | None = None,
               seed: int = 0) -> pd.DataFrame:
        """``n`` packets; kind and position drawn in the training proportions when not given."""
        self._check_fitted()
        self._check_kind(kind, True)
        if position is not None and position not in POSITIONS:
            raise NecstError(f"position must be one of {', '.join(POSITIONS)}, not {position!r}")
        n = int(n)
        if n < 0:
            raise NecstError("n must be >= 0")
        rng = np.random.default_rng(seed)
        groups = [(k, p) for k in KINDS for p in POSITIONS
                  if (kind is None or k == kind) and (position is None or p == position)]
        weights = np.array([self.proportions_[k][p] for k, p in groups], dtype=np.float64)
        if weights.sum() == 0:
            weights[:] = 1.0
        counts = stratified_counts(weights, n, rng)  # group sizes without multinomial noise
        pick = rng.permutation(np.repeat(np.arange(len(groups)), counts))
        return self._sample_groups(pick, groups, rng)

    def sample_like(self, kinds: Sequence[str], positions: Sequence[str], seed: int = 0) -> pd.DataFrame:
        """One packet for each (kind, position) pair given, in that order."""
        self._check_fitted()
        rng = np.random.default_rng(seed)
        groups = [(k, p) for k in KINDS for p in POSITIONS]
        index = {g: i for i, g in enumerate(groups)}
        try:
            pick = np.array([index[(k, p)] for k, p in zip(kinds, positions)], dtype=np.int64)
        except KeyError as e:
            raise NecstError(f"unknown (kind, position) {e.args[0]!r}") from None
        return self._sample_groups(pick, groups, rng)

    def _sample_groups(self, pick: np.ndarray, groups: list, rng: np.random.Generator) -> pd.DataFrame:
        n = len(pick)
        Z = np.zeros((n, self.latent_dim))
        codes = np.zeros(n, dtype=np.int64)
        kinds = np.empty(n, dtype=object)
        positions = np.empty(n, dtype=object)
        for g, (k, p) in enumerate(groups):
            rows = np.flatnonzero(pick == g)
            if len(rows) == 0:
                continue
            Z[rows], codes[rows] = self.mixtures_[self.mixture_for_[_mixture_key(k, p)]].sample(len(rows), rng)
            kinds[rows], positions[rows] = k, p
        out = self._decode(Z, kinds, positions, rng, strata=pick.astype(np.int64) * 1000 + codes)
        out["code"] = codes
        return out

    def _draw_heads(self, scores: np.ndarray, kinds: np.ndarray, strata: np.ndarray | None,
                    rng: np.random.Generator, positions: np.ndarray | None = None,
                    codes: np.ndarray | None = None, skip: Sequence[str] = ()) -> None:
        """Draw each categorical head (kind and ``skip`` aside) from its scores in place: the chosen value
        gets score 0, the others -inf, so the spec's argmax decodes it. The distribution per
        row is the softmax of the scores over the values the spec may decode for the row's
        kind (what Gumbel-max over them gave); the rows are drawn together by systematic
        sampling, ordered by ``strata`` (random within), so the batch's counts follow the
        model closely (see ``systematic_categorical``). With positions known, each (kind,
        position) group of at least ``RAKE_MIN_ROWS`` rows is first raked to the training
        shares (``_rake``)."""
        spec = self.spec_
        n = len(scores)
        by_name = {b.name: b for b in spec.blocks}
        kind_codes = np.argmax(scores[:, by_name["kind"].slice], axis=1)
        key = rng.random(n)
        if strata is None:
            order = np.argsort(key)
        else:
            strata = np.asarray(strata, dtype=np.int64)
            order = np.argsort(strata - strata.min() + key)  # by stratum, random inside
        code_rows = []
        if positions is None and codes is not None and self.calibrate and n:
            by_code = np.argsort(codes, kind="stable")
            bounds = np.searchsorted(codes[by_code], np.arange(codes.max() + 2))
            code_rows = [(c, by_code[a:b]) for c, (a, b) in enumerate(zip(bounds[:-1], bounds[1:]))
                         if b - a >= RAKE_MIN_ROWS]
        for c in spec._cat:
            if c["name"] == "kind" or c["name"] in skip:
                continue
            sl = by_name[c["name"]].slice
            width = sl.stop - sl.start
            mask = np.ones(width, dtype=bool)
            if not c["decode_other"] and width > 1:
                mask[-1] = False
            allowed = np.tile(mask, (len(by_name["kind"].categories), 1))
            if c["given"] is not None:
                if c["given"] != "kind":
                    raise NecstError(f"head {c['name']!r} depends on {c['given']!r}, not on kind")
                for parent, qs in spec.allowed_[c["name"]]:
                    row = np.zeros(width, dtype=bool)
                    row[qs] = True
                    row &= mask
                    allowed[parent] = row if row.any() else mask
            allowed = allowed[kind_codes]
            block = np.where(allowed, scores[:, sl], -np.inf)
            top = block.max(axis=1, keepdims=True)
            none = ~np.isfinite(top[:, 0])  # every allowed value masked: fall back to allowed alone
            if none.any():
                block[none] = np.where(allowed[none], 0.0, -np.inf)
                top[none] = 0.0
            P = np.exp(block - top)
            P /= P.sum(axis=1, keepdims=True)
            targets = getattr(self, "calibration_targets_", {}).get(c["name"])
            if positions is not None and self.calibrate and targets is not None:
                for i, k in enumerate(KINDS):
                    for j, p in enumerate(POSITIONS):
                        rows = np.flatnonzero((kinds == k) & (positions == p))
                        if len(rows) >= RAKE_MIN_ROWS:
                            P[rows] = _rake(P[rows], targets[i, j])
            elif positions is None and codes is not None and self.calibrate and len(kinds):
                # sample_codes: each code's draws raked to its own packets' shares
                per_code = getattr(self, "code_targets_", {}).get(str(kinds[0]), {}).get(c["name"])
                if per_code is not None:
                    for code, rows in code_rows:
                        if code < len(per_code) and per_code[code].sum() > 0:
                            P[rows] = _rake(P[rows], per_code[code], rounds=30, tol=1e-3)
            if positions is None and codes is not None:
                # the codes path (flow model, one call per chunk): the cheaper stratified draw,
                # inverse CDFs at Latin-hypercube uniforms per code
                u = stratified_uniforms(codes, rng)
                chosen = np.minimum((np.cumsum(P, axis=1) < u[:, None] * P.sum(axis=1)[:, None]).sum(axis=1),
                                    width - 1)
                chosen = np.where(P[np.arange(n), chosen] > 0, chosen, np.argmax(P, axis=1))
            else:
                chosen = systematic_categorical(P, order, rng)
            scores[:, sl] = -np.inf
            scores[np.arange(n), sl.start + chosen] = 0.0

    def _decode(self, Z: np.ndarray, kinds: np.ndarray, positions: np.ndarray | None,
                rng: np.random.Generator, strata: np.ndarray | None = None,
                skip: Sequence[str] = ()) -> pd.DataFrame:
        """Latent points -> packet fields in real units, with the guarantees of the docstring.
        ``strata``: rows that share a value (group, mixture component) are drawn together;
        ``skip``: heads the caller replaces (decoded by argmax, not drawn)."""
        spec = self.spec_
        n = len(Z)
        probs = activate(self.decoder_(Z), self._n_cont(), self._cat_slices())
        scores = probs.copy()
        by_name = {b.name: b for b in spec.blocks}
        for b in spec.blocks:
            if b.kind != "categorical":
                continue
            scores[:, b.slice] = np.log(np.maximum(probs[:, b.slice], 1e-300))
        kb = by_name["kind"]
        cats = list(kb.categories)
        onehot = np.full((n, len(cats)), -np.inf)
        for k in np.unique(kinds.astype(str)):
            if k not in cats:
                raise NecstError(f"the model saw no {k!r} packets")
            onehot[kinds == k, cats.index(k)] = 0.0
        scores[:, kb.slice] = onehot
        if positions is not None and self.calibrate:
            for name, logw in self.calibration_.items():
                sl = by_name[name].slice
                for i, k in enumerate(KINDS):
                    for j, p in enumerate(POSITIONS):
                        rows = np.flatnonzero((kinds == k) & (positions == p))
                        if len(rows):
                            scores[rows, sl] += logw[i, j]
        if positions is not None:
            for name in POSITION_MASKED:
                sl = by_name[name].slice
                mask = self.position_masks_[name]
                for i, k in enumerate(KINDS):
                    for j, p in enumerate(POSITIONS):
                        rows = np.flatnonzero((kinds == k) & (positions == p))
                        if len(rows):
                            block = scores[rows, sl]
                            block[:, ~mask[i, j]] = -np.inf
                            scores[rows, sl] = block
        if self.decode == "sample":
            self._draw_heads(scores, kinds, strata, rng, positions,
                             codes=strata if positions is None else None, skip=skip)
        df = spec.inverse_transform(scores)
        df["kind"] = kinds.astype(str)
        hdr = df["hdr_len"].to_numpy(dtype=np.int64)
        payload = self.bins_["payload_len"].draw(df["payload_len_bin"].to_numpy(np.int64), rng)
        gap = self.bins_["gap_s"].draw(df["gap_s_bin"].to_numpy(np.int64), rng)
        direction = df["direction"].to_numpy().astype(np.uint8)
        if positions is not None:
            first = positions == "first"
            gap = np.where(first, 0.0, gap)
            direction = np.where(first, 0, direction).astype(np.uint8)
        flags = df["flag_combo"].astype(str).to_numpy()
        bits = np.zeros(n, dtype=np.int64)
        for combo in np.unique(flags):
            b = flag_bits(combo) if combo != NOT_TCP else None
            bits[flags == combo] = 0 if b is None else b
        return pd.DataFrame({
            "kind": df["kind"].to_numpy(dtype=object),
            "position": positions if positions is not None else np.full(n, None, dtype=object),
            "app": df["app"].astype(str).to_numpy(dtype=object),
            "flag_combo": flags.astype(object),
            "tcp_flags": bits,
            "src_port": df["src_port"].astype(str).to_numpy(dtype=object),
            "dst_port": df["dst_port"].astype(str).to_numpy(dtype=object),
            "direction": direction,
            "wire_len": hdr + payload,
            "hdr_len": hdr,
            "payload_len": payload,
            "gap_s": gap,
        })

    # -- bundle -------------------------------------------------------------------------------

    def bundle_config(self) -> dict:
        self._check_fitted()
        return {
            "format_version": FORMAT_VERSION,
            "params": self.get_params(),
            "feature_spec": json.loads(self.spec_.to_json()),
            "mixture_for": self.mixture_for_,
            "mixture_info": self.mixture_info_,
            "proportions": self.proportions_,
            "val_loss": self.val_loss_,
            "epochs_run": self.epochs_run_,
            "history": self.history_,
            "n_train_packets": self.n_train_packets_,
            "fit_seconds": self.fit_seconds_,
            "vae_seconds": self.vae_seconds_,
            "mixture_seconds": self.mixture_seconds_,
            "dataset_fingerprint": self.dataset_fingerprint_,
        }

    def write_to(self, writer) -> None:
        """Add this level's files to an open BundleWriter and its config to the manifest."""
        cfg = self.bundle_config()
        arrays = {}
        arrays.update(self.encoder_.to_arrays("encoder_"))
        arrays.update(self.decoder_.to_arrays("decoder_"))
        for f, b in self.bins_.items():
            arrays.update(b.to_arrays(f"bins_{f}_"))
        for name, mask in self.position_masks_.items():
            arrays[f"mask_{name}"] = mask
        for name, logw in self.calibration_.items():
            arrays[f"calibration_{name}"] = logw
        for name, target in getattr(self, "calibration_targets_", {}).items():
            arrays[f"target_{name}"] = target
        for kind, heads in getattr(self, "code_targets_", {}).items():
            for name, target in heads.items():
                arrays[f"codetarget_{kind}__{name}"] = target
        for kind, lc in getattr(self, "length_codes_", {}).items():
            arrays.update(lc.to_arrays(f"lencode_{kind}__"))
        writer.add_arrays("packet_network.npz", **arrays)
        mix = {}
        for key, m in self.mixtures_.items():
            mix.update(m.to_arrays(f"{key}__"))
        writer.add_arrays("packet_mixtures.npz", **mix)
        for name, data in sorted(self._keras_files.items()):
            writer.add_file(f"packet_{name}.keras", lambda p, data=data: Path(p).write_bytes(data))
        writer.config.setdefault("levels", [])
        if LEVEL not in writer.config["levels"]:
            writer.config["levels"].append(LEVEL)
        writer.config[LEVEL] = cfg

    @classmethod
    def read_from(cls, bundle) -> "PacketModel":
        cfg = bundle.config.get(LEVEL)
        if not isinstance(cfg, dict):
            raise BundleError("bundle holds no packet level", bundle.path)
        if cfg.get("format_version") != FORMAT_VERSION:
            raise BundleError(f"packet level format {cfg.get('format_version')!r} is not "
                              f"{FORMAT_VERSION}; retrain with this necst", bundle.path)
        try:
            model = cls(**cfg["params"])
            model.spec_ = FeatureSpec.from_json(json.dumps(cfg["feature_spec"]))
            net = bundle.arrays("packet_network.npz")
            model.encoder_ = DenseStack.from_arrays(net, "encoder_")
            model.decoder_ = DenseStack.from_arrays(net, "decoder_")
            model.bins_ = {f: QuantileBins.from_arrays(net, f"bins_{f}_") for f in BINNED}
            model.position_masks_ = {n: np.asarray(net[f"mask_{n}"], dtype=bool) for n in POSITION_MASKED}
            model.calibration_ = {k[len("calibration_"):]: np.asarray(v, dtype=np.float64)
                                  for k, v in net.items() if k.startswith("calibration_")}
            # absent from bundles written before batch raking: those sample with the weights alone
            model.calibration_targets_ = {k[len("target_"):]: np.asarray(v, dtype=np.float64)
                                          for k, v in net.items() if k.startswith("target_")}
            model.code_targets_ = {}
            for key, v in net.items():
                if key.startswith("codetarget_"):
                    kind, name = key[len("codetarget_"):].split("__", 1)
                    model.code_targets_.setdefault(kind, {})[name] = np.asarray(v, dtype=np.float64)
            # absent from bundles written before length-class codes: their codes are the components
            model.length_codes_ = {k: LengthClassCodes.from_arrays(net, f"lencode_{k}__") for k in KINDS
                                   if f"lencode_{k}__comp" in net}
            if "code_min_packets" not in cfg["params"]:
                model.code_min_packets = 0
            mix = bundle.arrays("packet_mixtures.npz")
            keys = sorted({k.split("__")[0] for k in mix})
            model.mixtures_ = {k: Mixture.from_arrays(mix, f"{k}__") for k in keys}
            model.mixture_for_ = dict(cfg["mixture_for"])
            missing = set(model.mixture_for_.values()) - set(model.mixtures_)
            if missing:
                raise BundleError(f"packet_mixtures.npz lacks mixtures {sorted(missing)}", bundle.path)
            model.mixture_info_ = cfg["mixture_info"]
            model.proportions_ = cfg["proportions"]
            model.val_loss_ = cfg["val_loss"]
            model.epochs_run_ = cfg["epochs_run"]
            model.history_ = cfg["history"]
            model.n_train_packets_ = cfg["n_train_packets"]
            model.fit_seconds_ = cfg["fit_seconds"]
            model.vae_seconds_ = cfg["vae_seconds"]
            model.mixture_seconds_ = cfg["mixture_seconds"]
            model.dataset_fingerprint_ = cfg["dataset_fingerprint"]
            model._keras_files = {n: bundle.file(f"packet_{n}.keras").read_bytes()
                                  for n in ("encoder", "decoder")}
        except (KeyError, TypeError, ValueError) as e:
            raise BundleError(f"packet level is incomplete or malformed ({e.__class__.__name__}: {e})",
                              bundle.path) from None
        n_in = model.encoder_.weights[0].shape[0]
        if n_in != model.spec_.n_features_ or model.decoder_.weights[-1].shape[1] != n_in:
            raise BundleError("packet network does not match its FeatureSpec", bundle.path)
        return model

    def save(self, path: str | Path, force: bool = False) -> Path:
        """A generator bundle holding this level alone."""
        from necst.model.bundle import save_generator

        return save_generator(path, packet=self, dataset_fingerprint=self.dataset_fingerprint_,
                              force=force)

    @classmethod
    def load(cls, path: str | Path) -> "PacketModel":
        """The packet level of any generator bundle (every file and the manifest verified)."""
        from necst.bundle import load
        from necst.model.bundle import verify_seal

        bundle = load(path, kind="generator")
        verify_seal(bundle)
        return cls.read_from(bundle)

    def size_bytes(self) -> dict[str, int]:
        """Parameter counts and stored sizes, for reports."""
        params = sum(w.size + b.size for s in (self.encoder_, self.decoder_)
                     for w, b in zip(s.weights, s.biases))
        mix = sum(m.weights.size + m.means.size + m.covariances.size for m in self.mixtures_.values())
        return {"network_parameters": int(params), "mixture_parameters": int(mix),
                "mixtures": len(self.mixtures_),
                "keras_bytes": int(sum(len(b) for b in self._keras_files.values()))}


# --------------------------------------------------------------------------------------------
# fidelity
# --------------------------------------------------------------------------------------------

LENGTH_BINS = np.arange(0, 1600 + 32, 32)


def _log_gap(gap: np.ndarray) -> np.ndarray:
    return np.log10(np.maximum(np.asarray(gap, dtype=np.float64), 1e-6))


def _joint_counts(df: pd.DataFrame, other: str) -> pd.Series:
    bins = np.digitize(df["wire_len"].to_numpy(dtype=np.float64), LENGTH_BINS)
    return pd.Series(list(zip(bins, df[other].astype(str).to_numpy()))).value_counts()


def distances(sample: pd.DataFrame, ref: pd.DataFrame) -> dict[str, float]:
    """Distances between two packet-feature tables, with necst.evaluate's metric functions.

    EMD (bytes, decades) for lengths and the log10 time gap (gaps below 1 us at 1 us; first
    packets, whose gap is 0 by definition, left out); JSD (nats) for the categorical fields and
    for the 2-D histograms of wire length (32-byte bins) x flags and x direction.
    """
    from necst.evaluate.metrics import categorical_distances, counts_of, emd

    def jsd_of(col):
        return categorical_distances(counts_of(sample[col].astype(str)),
                                     counts_of(ref[col].astype(str)))["jsd"]

    def gaps(df):
        g = df["gap_s"].to_numpy(dtype=np.float64)
        keep = (df["flow_pos"].to_numpy() > 0) if "flow_pos" in df else (df["position"].to_numpy() != "first")
        return _log_gap(g[keep])

    return {
        "wire_len_emd": emd(sample["wire_len"], ref["wire_len"]),
        "hdr_len_emd": emd(sample["hdr_len"], ref["hdr_len"]),
        "payload_len_emd": emd(sample["payload_len"], ref["payload_len"]),
        "flags_jsd": jsd_of("flag_combo"),
        "protocol_jsd": jsd_of("kind"),
        "app_jsd": jsd_of("app"),
        "direction_jsd": jsd_of("direction"),
        "log_gap_emd": emd(gaps(sample), gaps(ref)),
        "len_x_flags_jsd": categorical_distances(_joint_counts(sample, "flag_combo"),
                                                 _joint_counts(ref, "flag_combo"))["jsd"],
        "len_x_direction_jsd": categorical_distances(_joint_counts(sample, "direction"),
                                                     _joint_counts(ref, "direction"))["jsd"],
    }


JOINT_METRICS = ("len_x_flags_jsd", "len_x_direction_jsd")


def marginal_sample(feats: pd.DataFrame, n: int, seed: int = 0) -> pd.DataFrame:
    """The independent-marginals sampler over packet features (wire_len drawn on its own)."""
    from necst.evaluate.sampling import sample_marginals

    cols = ["kind", "app", "flag_combo", "direction", "wire_len", "hdr_len", "payload_len",
            "gap_s", "flow_pos"]
    return sample_marginals(feats[cols].reset_index(drop=True), n, seed=seed)


def fidelity_table(model: PacketModel, ref: pd.DataFrame, floor: pd.DataFrame | None = None,
                   seed: int = 0, composition: str = "reference") -> pd.DataFrame:
    """One row per metric: the model's sample vs ``ref``, the floor (``floor`` vs ``ref``) and the
    independent-marginals sampler (drawn from ``floor`` when given, else from ``ref``) vs ``ref``.

    The model samples as many packets as ``ref`` holds: with ``ref``'s kinds and positions
    (``composition="reference"``), or in the training proportions it learned (``"model"``,
    ``model.sample``), which is how the floor (the training packets) is composed too.
    ``noise``: a bootstrap resample of ``ref`` itself vs ``ref``, the distance that sampling
    ``len(ref)`` packets costs even a perfect generator (a floor below it is luck).
    ``pass``: marginal rows need ``model <= 1.5 x floor``; joint rows need ``model < marginals``.
    Without a floor the marginal rows only report.
    """
    ref = ref.assign(position=flow_positions(ref)) if "position" not in ref else ref
    if composition == "reference":
        sampled = model.sample_like(ref["kind"].astype(str).to_numpy(), ref["position"].to_numpy(),
                                    seed=seed)
    elif composition == "model":
        sampled = model.sample(len(ref), seed=seed)
    else:
        raise NecstError(f"composition must be 'reference' or 'model', not {composition!r}")
    source = floor if floor is not None else ref
    marg = marginal_sample(source, len(ref), seed=seed + 1)
    d_model = distances(sampled, ref)
    d_marg = distances(marg, ref)
    d_floor = distances(floor, ref) if floor is not None else {}
    boot = ref.iloc[np.random.default_rng(seed + 2).integers(0, len(ref), len(ref))]
    d_noise = distances(boot.reset_index(drop=True), ref)
    rows = []
    for key, value in d_model.items():
        fl = d_floor.get(key)
        if key in JOINT_METRICS:
            ok = bool(value < d_marg[key])
        else:
            ok = None if fl is None else bool(value <= 1.5 * fl + 1e-12)
        rows.append({"metric": key, "model": value, "floor": fl, "marginals": d_marg[key],
                     "noise": d_noise[key], "ratio": None if not fl else value / fl, "pass": ok})
    return pd.DataFrame(rows)


def format_table(table: pd.DataFrame) -> str:
    """The fidelity table as fixed-width text."""
    lines = [f"{'metric':<22}{'model':>11}{'floor':>11}{'ratio':>8}{'marginals':>11}{'noise':>11}  pass"]
    for r in table.to_dict("records"):
        fl = "-" if r["floor"] is None or pd.isna(r["floor"]) else f"{r['floor']:.3g}"
        ra = "-" if r["ratio"] is None or pd.isna(r["ratio"]) else f"{r['ratio']:.2f}"
        ok = "-" if r["pass"] is None or pd.isna(r["pass"]) else ("yes" if r["pass"] else "NO")
        lines.append(f"{r['metric']:<22}{r['model']:>11.3g}{fl:>11}{ra:>8}{r['marginals']:>11.3g}{r['noise']:>11.3g}  {ok}")
    return "\n".join(lines)


def training_fidelity(model: PacketModel, dataset, seed: int = 0, max_packets: int = 100_000) -> str:
    """The fidelity table of ``model`` against (up to ``max_packets`` of) a dataset's packets,
    as text: what ``necst train`` prints when done. There is no floor against the training
    data itself; the joint rows must beat the independent-marginals sampler."""
    feats, _ = _as_features(dataset)
    if len(feats) > max_packets:
        rng = np.random.default_rng(seed)
        feats = feats.assign(position=flow_positions(feats))
        feats = feats.iloc[np.sort(rng.choice(len(feats), max_packets, replace=False))]
    return format_table(fidelity_table(model, feats.reset_index(drop=True), seed=seed))
