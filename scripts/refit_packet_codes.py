#!/usr/bin/env python3
"""Give a trained generator's packet level length-class codes without retraining its VAE.

    PYTHONPATH=. python scripts/refit_packet_codes.py MODEL DATASET --out OUT [--min-packets 30]

Reads the packet level of the bundle MODEL, fits its (component, payload bin) codes
(``necst.model.length_codes.LengthClassCodes``) on DATASET's packets, and writes OUT with that
packet level and MODEL's aggregate level. The flow level is left out: it was trained on the old
codes; train it again with ``necst train DATASET --level flow --model OUT --out OUT2``.
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from necst.model.bundle import dataset_fingerprint, load_generator, save_generator
from necst.model.packet import _as_features
from necst.process.dataset import load_dataset


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("dataset")
    ap.add_argument("--out", required=True)
    ap.add_argument("--min-packets", type=int, default=30)
    ap.add_argument("--force", action="store_true")
    a = ap.parse_args()
    gen = load_generator(a.model)
    pm = gen.packet
    ds = load_dataset(a.dataset)
    t = time.perf_counter()
    feats = pm._with_bins(_as_features(ds)[0])
    pm.code_min_packets = a.min_packets
    Z_mean = pm._latent(pm.spec_.transform(feats))
    pm.length_codes_ = pm._length_codes(feats, feats["kind"].astype(str).to_numpy(), Z_mean)
    print(f"length-class codes fitted in {time.perf_counter() - t:.1f} s: "
          + ", ".join(f"{k} {pm.n_codes(k)} (components {pm.mixtures_[pm.mixture_for_[k]].n_components})"
                      for k in pm.length_codes_))
    save_generator(a.out, packet=pm, aggregate=gen.aggregate, dataset_fingerprint=dataset_fingerprint(ds.meta),
                   force=a.force)
    print(f"packet and aggregate levels -> {a.out} (train the flow level again)")


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
