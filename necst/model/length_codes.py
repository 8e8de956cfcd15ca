"""A packet model without a network: packet codes are quantile bins of the wire length.

It speaks the discrete protocol the flow model uses (``n_codes``, ``encode``,
``sample_codes``; see MODELS_CONTRACT) so the flow level can be trained, tested and
measured on its own, and it is the floor any learned packet model should beat: a code
says only "a packet about this long", and sampling draws a real training packet of the bin.
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


def _packets_of(data):
    from necst.process.dataset import Dataset, load_dataset

    if isinstance(data, Dataset):
        return data.packets
    if hasattr(data, "column_names"):
        return data
    return load_dataset(data).packets
