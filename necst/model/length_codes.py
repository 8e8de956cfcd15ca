"""Codes that pin a packet's length class.

``LengthCodes``: a packet model without a network, whose codes are quantile bins of the wire
length. It speaks the discrete protocol the flow model uses (``n_codes``, ``encode``,
``sample_codes``; see MODELS_CONTRACT) so the flow level can be trained, tested and measured on
its own, and it is the floor any learned packet model should beat: a code says only "a packet
about this long", and sampling draws a real training packet of the bin.

``LengthClassCodes``: the PacketModel's codes refined by length. A code is a (mixture component,
payload-length bin) pair, so the flow model's LSTM chooses the length class packet by packet
and keeps a flow's sizes together; a component alone mixes lengths (code 15 of the iot_sentinel
TCP model: 61 % empty, the rest 17 to 1448 bytes), and decoding each packet's length on its own
lost the per-flow byte counts (bytes/flow 2.3x the floor with the real codes against 1.3x with
``LengthCodes``).
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from necst.errors import NecstError
from necst.process.features import packet_features

_FIELDS = ("wire_len", "hdr_len", "payload_len")


class LengthCodes:
    """Codes = per-kind quantile bins of ``wire_len``; sampling returns a training packet's lengths."""

    def __init__(self, n_bins: int = 32):
        self.n_bins = int(n_bins)

    def fit(self, data) -> "LengthCodes":
        pf = data if isinstance(data, pd.DataFrame) else packet_features(_packets_of(data))
        self.edges_, self.pool_ = {}, {}
        for kind in ("tcp", "udp", "noflow"):
            rows = pf[np.asarray(pf["kind"] == kind)]
            if len(rows) == 0:
                continue
            wl = rows["wire_len"].to_numpy(np.int64)
            edges = np.unique(np.quantile(wl, np.linspace(0, 1, self.n_bins + 1)[1:-1]))
            code = np.searchsorted(edges, wl, side="right")
            order = np.argsort(code, kind="stable")
            self.edges_[kind] = edges
            self.pool_[kind] = {
                "offsets": np.searchsorted(code[order], np.arange(len(edges) + 2)),
                **{f: rows[f].to_numpy(np.int64)[order] for f in _FIELDS},
            }
        return self

    def _check(self, kind: str) -> None:
        if kind not in getattr(self, "edges_", {}):
            raise NecstError(f"packet model has no {kind!r} packets")

    def n_codes(self, kind: str) -> int:
        self._check(kind)
        return len(self.edges_[kind]) + 1

    def encode(self, packets: pd.DataFrame, kind: str) -> np.ndarray:
        self._check(kind)
        return np.searchsorted(self.edges_[kind], packets["wire_len"].to_numpy(np.int64), side="right")

    def sample_codes(self, codes, kind: str, seed: int = 0) -> pd.DataFrame:
        self._check(kind)
        codes = np.asarray(codes, dtype=np.int64)
        pool = self.pool_[kind]
        lo, hi = pool["offsets"][codes], pool["offsets"][codes + 1]
        rng = np.random.default_rng(seed)
        # an empty bin (possible only for codes never seen in training) falls back to its neighbour
        empty = hi <= lo
        lo = np.where(empty, np.maximum(lo - 1, 0), lo)
        hi = np.where(empty, lo + 1, hi)
        pick = lo + np.floor(rng.random(len(codes)) * (hi - lo)).astype(np.int64)
        return pd.DataFrame({f: pool[f][pick] for f in _FIELDS})


class LengthClassCodes:
    """Codes = (component, payload bin) pairs with at least ``min_packets`` training packets;
    the rest of a component's packets share one more code (its "rest" code, which also takes a
    component's packets when none of its pairs is frequent enough). A bin none of a component's
    training packets fell in encodes as the rest code, or without one as the nearest kept bin. Each code keeps the training
    counts of its (hdr_len, payload bin) values and decodes by drawing from them, so a code's
    header and length classes are those of its own packets.

    Arrays (``n_codes`` rows unless said): ``comp`` (the code's component), ``pbin`` (its payload
    bin, -1 for a rest code), ``lut`` (n_components x n_bins -> code, what ``encode`` reads) and
    the entries ``entry_code``, ``entry_hdr``, ``entry_pbin``, ``entry_count`` sorted by code.
    """

    NAMES = ("comp", "pbin", "lut", "entry_code", "entry_hdr", "entry_pbin", "entry_count")

    def __init__(self, comp, pbin, lut, entry_code, entry_hdr, entry_pbin, entry_count):
        self.comp = np.asarray(comp, dtype=np.int64)
        self.pbin = np.asarray(pbin, dtype=np.int64)
        self.lut = np.asarray(lut, dtype=np.int64)
        self.entry_code = np.asarray(entry_code, dtype=np.int64)
        self.entry_hdr = np.asarray(entry_hdr, dtype=np.int64)
        self.entry_pbin = np.asarray(entry_pbin, dtype=np.int64)
        self.entry_count = np.asarray(entry_count, dtype=np.float64)
        n = len(self.comp)
        if (len(self.pbin) != n or self.lut.ndim != 2 or self.lut.size == 0
                or self.lut.min() < 0 or self.lut.max() >= n
                or not len(self.entry_code) == len(self.entry_hdr) == len(self.entry_pbin) == len(self.entry_count)
                or np.any(np.diff(self.entry_code) < 0)
                or not np.array_equal(np.unique(self.entry_code), np.arange(n))):
            raise NecstError("length-class code arrays do not agree")
        self._start = np.searchsorted(self.entry_code, np.arange(n), side="left")
        self._stop = np.searchsorted(self.entry_code, np.arange(n), side="right")
        self._cum = np.concatenate([[0.0], np.cumsum(self.entry_count)])

    @property
    def n_codes(self) -> int:
        return len(self.comp)

    @classmethod
    def fit(cls, comp: np.ndarray, pbin: np.ndarray, hdr: np.ndarray, n_components: int, n_bins: int,
            min_packets: int) -> "LengthClassCodes":
        """From the training packets' components, payload bins and header lengths."""
        comp, pbin, hdr = (np.asarray(a, dtype=np.int64) for a in (comp, pbin, hdr))
        if len(comp) == 0:
            raise NecstError("no packets to build length-class codes from")
        pair_count = np.bincount(comp * n_bins + pbin, minlength=n_components * n_bins)
        kept = (pair_count >= max(int(min_packets), 1)).reshape(n_components, n_bins)
        rest_rows = (pair_count.reshape(n_components, n_bins) * ~kept).sum(axis=1) > 0
        needs_rest = rest_rows | ~kept.any(axis=1)  # every component keeps at least one code
        lut = np.empty((n_components, n_bins), dtype=np.int64)
        codes_comp, codes_pbin = [], []
        for c in range(n_components):  # one row per component (at most max_components)
            for b in np.flatnonzero(kept[c]):
                lut[c, b] = len(codes_comp)
                codes_comp.append(c)
                codes_pbin.append(int(b))
            if needs_rest[c]:
                lut[c, ~kept[c]] = len(codes_comp)
                codes_comp.append(c)
                codes_pbin.append(-1)
            else:  # bins no training packet of c fell in: the code of c's nearest kept bin
                own = np.flatnonzero(kept[c])
                near = own[np.argmin(np.abs(np.arange(n_bins)[:, None] - own[None, :]), axis=1)]
                lut[c, ~kept[c]] = lut[c, near[~kept[c]]]
        code = lut[comp, pbin]
        n_codes = len(codes_comp)
        # entries: distinct (code, hdr, pbin) with their counts; a code without training packets
        # (a component no packet fell in) takes the kind's own mix
        key = np.stack([code, pbin, hdr], axis=1)
        uniq, counts = np.unique(key, axis=0, return_counts=True)
        empty = np.setdiff1d(np.arange(n_codes), uniq[:, 0])
        if len(empty):
            pooled, pooled_counts = np.unique(key[:, 1:], axis=0, return_counts=True)
            extra = np.concatenate([np.column_stack([np.full(len(pooled), e), pooled]) for e in empty])
            uniq = np.concatenate([uniq, extra])
            counts = np.concatenate([counts, np.tile(pooled_counts, len(empty))])
            order = np.lexsort((uniq[:, 2], uniq[:, 1], uniq[:, 0]))
            uniq, counts = uniq[order], counts[order]
        return cls(codes_comp, codes_pbin, lut, uniq[:, 0], uniq[:, 2], uniq[:, 1], counts)

    def encode(self, comp: np.ndarray, pbin: np.ndarray) -> np.ndarray:
        comp = np.clip(np.asarray(comp, dtype=np.int64), 0, self.lut.shape[0] - 1)
        pbin = np.clip(np.asarray(pbin, dtype=np.int64), 0, self.lut.shape[1] - 1)
        return self.lut[comp, pbin]

    def draw(self, codes: np.ndarray, u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(hdr_len, payload bin) per code, by the inverse CDF of the code's entries at ``u``."""
        codes = np.asarray(codes, dtype=np.int64)
        lo, hi = self._cum[self._start[codes]], self._cum[self._stop[codes]]
        at = np.searchsorted(self._cum, lo + np.asarray(u) * (hi - lo), side="right") - 1
        at = np.clip(at, self._start[codes], self._stop[codes] - 1)
        return self.entry_hdr[at], self.entry_pbin[at]

    def to_arrays(self, prefix: str) -> dict:
        return {f"{prefix}{name}": getattr(self, name) for name in self.NAMES}

    @classmethod
    def from_arrays(cls, arrays, prefix: str) -> "LengthClassCodes":
        return cls(*(arrays[f"{prefix}{name}"] for name in cls.NAMES))


def _packets_of(data):
    from necst.process.dataset import Dataset, load_dataset

    if isinstance(data, Dataset):
        return data.packets
    if hasattr(data, "column_names"):
        return data
    return load_dataset(data).packets
