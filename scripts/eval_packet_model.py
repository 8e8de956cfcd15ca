"""Fidelity of the packet model against the real-vs-real floor (issue 5, item 1).

Standard split of iot_sentinel (../shared/tools/iot_split.py): train on the training part,
sample as many packets as the held-out part holds (with its kinds and positions in flows), and
compare with necst.evaluate's metric functions: model vs held-out beside train vs held-out (the
floor) and an independent-marginals sampler drawn from the training part.

    PYTHONPATH=. python scripts/eval_packet_model.py [--cache /tmp/necst_iot] [--seed 0]
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SPLIT = ROOT.parent / "shared" / "tools" / "iot_split.py"


def datasets(cache: Path) -> dict[str, Path]:
    from necst.process.dataset import process_captures

    out = subprocess.run([sys.executable, str(SPLIT)], capture_output=True, text=True, check=True).stdout
    parts: dict[str, list[str]] = {"train": [], "heldout": []}
    for line in out.splitlines():
        part, path = line.split("\t")
        parts[part].append(path)
    found = {}
    for part, paths in parts.items():
        folder = cache / f"iot_{part}"
        if not (folder / "meta.json").is_file():
            print(f"processing {len(paths)} {part} captures -> {folder}", flush=True)
            process_captures(paths, folder, force=True)
        found[part] = folder
    return found


def time_fit(feats, n: int, seed: int, params: dict) -> None:
    import pandas as pd

    from necst.model.packet import PacketModel

    copies, offset = [], 0
    while sum(len(c) for c in copies) < n:
        copies.append(feats.assign(flow_id=feats["flow_id"] + offset))
        offset += int(feats["flow_id"].max()) + 1
    big = pd.concat(copies, ignore_index=True).iloc[:n]
    started = time.perf_counter()
    model = PacketModel(seed=seed, **params).fit(big)
    print(f"fit on {len(big)} packets: {time.perf_counter() - started:.1f} s (VAE {model.vae_seconds_:.1f} s, "
          f"{model.epochs_run_} epochs; mixtures {model.mixture_seconds_:.1f} s, {len(model.mixtures_)} mixtures)")
    print(f"sizes: {model.size_bytes()}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache", type=Path, default=Path("/tmp/necst_iot"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--latent-dim", type=int, default=None)
    ap.add_argument("--decode", default=None)
    ap.add_argument("--mixture-on", default=None)
    ap.add_argument("--beta", type=float, default=None)
    ap.add_argument("--no-calibrate", action="store_true")
    ap.add_argument("--sample-seeds", type=int, default=1,
                    help="also print model/floor ratios for this many sampling seeds")
    ap.add_argument("--bic-points", type=int, default=None)
    ap.add_argument("--hidden", default=None, help="e.g. 128,64")
    ap.add_argument("--save", type=Path, default=None, help="also save the bundle here")
    ap.add_argument("--timing-packets", type=int, default=None,
                    help="only time a fit on this many packets (the training part repeated, "
                         "flow ids offset) and print the model sizes")
    args = ap.parse_args()

    from necst.model.packet import PacketModel, fidelity_table, format_table, flow_positions
    from necst.process.dataset import load_dataset
    from necst.process.features import packet_features

    parts = datasets(args.cache)
    train = load_dataset(parts["train"])
    held = packet_features(load_dataset(parts["heldout"]).packets)
    train_feats = packet_features(train.packets)
    params = {k: v for k, v in {"epochs": args.epochs, "latent_dim": args.latent_dim,
                                "decode": args.decode, "mixture_on": args.mixture_on, "beta": args.beta,
                                "bic_points": args.bic_points, "calibrate": False if args.no_calibrate else None,
                                "hidden": None if args.hidden is None else tuple(int(h) for h in args.hidden.split(","))
                                }.items() if v is not None}
    if args.timing_packets:
        time_fit(train_feats, args.timing_packets, args.seed, params)
        return
    started = time.perf_counter()
    model = PacketModel(seed=args.seed, **params).fit(train)
    fit_s = time.perf_counter() - started
    table = fidelity_table(model, held.assign(position=flow_positions(held)),
                           floor=train_feats, seed=args.seed)
    print(f"train: {len(train_feats)} packets, held-out: {len(held)} packets")
    print(f"fit: {fit_s:.1f} s (VAE {model.vae_seconds_:.1f} s, mixtures {model.mixture_seconds_:.1f} s), {model.epochs_run_} epochs, best val loss {model.val_loss_:.4f}, "
          f"params {model.get_params()}")
    print("mixtures: " + ", ".join(f"{k}={v['chosen']}" for k, v in model.mixture_info_.items()))
    print("mixture used per (kind, position): " + ", ".join(f"{k}->{v}" for k, v in model.mixture_for_.items()))
    print(f"sizes: {model.size_bytes()}")
    print(format_table(table))
    print(f"passed {int(table['pass'].sum())}/{len(table)} "
          f"(marginal rows: model <= 1.5 x floor; joint rows: model < marginals)")
    if args.sample_seeds > 1:
        import pandas as pd

        for composition in ("reference", "model"):
            ratios = {}
            for s in range(args.sample_seeds):
                t = fidelity_table(model, held.assign(position=flow_positions(held)), floor=train_feats,
                                   seed=args.seed + s, composition=composition).set_index("metric")
                ratios[f"seed {args.seed + s}"] = (t["model"] / t["floor"]).round(2)
            print(f"model / floor over sampling seeds (same fitted model; kinds and positions: "
                  f"{'as held-out' if composition == 'reference' else 'learned from training'}):")
            print(pd.DataFrame(ratios).to_string())
    if args.save:
        model.save(args.save, force=True)
        size = sum(p.stat().st_size for p in args.save.iterdir())
        print(f"bundle {args.save}: {size} bytes")


if __name__ == "__main__":
    main()
