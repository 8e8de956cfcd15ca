#!/usr/bin/env python3
"""Measure the flow model on the standard iot_sentinel split: structure, fidelity, cost.

Trains FlowModel on the training part, samples as many flows per kind as the training part
holds (conditions drawn from the training flows' app / size-class mix), and prints

1. structure: share of TCP flows that open with SYN, SYN+ACK, ACK, that close with FIN or
   RST (in their last four packets), both, and that carry a SYN after their third packet —
   sampled vs real held-out (and real train);
2. fidelity per kind: distance(sampled, held-out) beside the floor distance(train, held-out)
   and their ratio (target <= 1.5). Distances: EMD (necst.evaluate.emd) of log10 values for
   packets, bytes, duration (s, floored at 1 us), direction changes (log10(1 + x)) per flow and
   log10 gaps (s, floored at 1 us, packets after the first); JSD (necst.evaluate.jsd, nats) of
   the bigram counts of consecutive flag combinations with start/end marks (^, $), and of
   flag+direction tokens; beside each ratio, its noise level: the ratios a perfect model would
   score from finite samples alone (stratified bootstrap of the training flows, and random
   halves of them; see ideal_replicates, half_ratios), and its spread when the same model
   samples again with other seeds (--sample-seeds);
3. cost: training seconds (wall and CPU) per kind and sampling seconds for 10,000 flows.

With --validate the held-out part is not read: the training part is cut again per device
(its last 30 % of captures by time are the validation part; --cut random: a random 30 %), for
choosing settings. On the time cut the TCP flag-bigram floor is 4x the held-out one, so ratios
near 1 there hide the model's own error: judge it by "sampled vs train" (the JSD to the fit
part). The random cut's floor swings 4x with its seed (few captures dominate), so one random
cut is no better.

usage: PYTHONPATH=. python scripts/eval_flow_model.py [--train DIR] [--heldout DIR]
       [--packet-model length|train|BUNDLE] [--epochs N] [--seed S] [--save DIR] [--time-data DIR]
       [--validate [--cut time|random]] [--units N] [--prev-in-heads 0|1] [--rem-exact N] [--self-feed P] [--noise-reps N] [--sample-seeds K]
Datasets are made from ../shared/tools/iot_split.py when the folders do not exist.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from necst.evaluate import emd, jsd
from necst.evaluate.metrics import align_counts
from necst.model.flow import KINDS, FlowModel, flow_structure, noflow_proto
from necst.process.dataset import load_dataset, process_captures
from necst.process.features import packet_features

SPLIT = Path(__file__).resolve().parents[2] / "shared" / "tools" / "iot_split.py"


def ensure_split(train: Path, heldout: Path) -> None:
    if train.exists() and heldout.exists():
        return
    rows = [ln.split("\t") for ln in subprocess.run([sys.executable, str(SPLIT)], check=True,
                                                     capture_output=True, text=True).stdout.splitlines()]
    for part, out in (("train", train), ("heldout", heldout)):
        if not out.exists():
            process_captures([p for k, p in rows if k == part], out)


def validation_split(ds, share: float = 0.3, cut: str = "time", seed: int = 0):
    """The training part cut again, per device, for choosing settings without looking at the
    held-out part. ``cut="time"``: the last ``share`` of each device's captures by time are the
    validation part (the way the standard split cuts). ``cut="random"``: a seeded random
    ``share`` of each device's captures (whole captures, so no session is split): its floor holds
    little time drift, so a model's own error is not hidden under it (the time cut's TCP
    flag-bigram floor is 4x the held-out one, and there every model scores ~1.0)."""
    import pyarrow.compute as pc

    from necst.process.dataset import Dataset

    inputs = ds.meta["inputs"]
    by_dev: dict = {}
    for i, inp in enumerate(inputs):
        by_dev.setdefault(str(Path(inp["path"]).parent), []).append((inp["first_ts_ns"] or 0, i))
    val = set()
    rng = np.random.default_rng(seed)
    for dev in sorted(by_dev):
        files = sorted(by_dev[dev])
        k = int(round(len(files) * share)) if len(files) > 1 else 0
        if cut == "random":
            files = [files[i] for i in rng.permutation(len(files))]
        elif cut != "time":
            raise ValueError(f"validation cut must be 'time' or 'random', not {cut!r}")
        val |= {i for _, i in files[len(files) - k:]}
    is_val = pc.is_in(ds.packets["file_index"], value_set=pa.array(sorted(val), type=ds.packets["file_index"].type))
    parts = []
    for mask in (pc.invert(is_val), is_val):
        pk = ds.packets.filter(mask)
        fl = ds.flows.filter(pc.is_in(ds.flows["flow_id"], value_set=pc.unique(pk["flow_id"])))
        parts.append(Dataset(pk, fl, ds.meta))
    return parts


def real_frame(pf: pd.DataFrame, flows: pa.Table | None = None) -> pd.DataFrame:
    """Packet features in the sampled frame's shape: flow, pos, kind, direction, flags, gap, length,
    and ``cond``: what the flow model is conditioned on besides the packet count (the flow's
    application; for noflow flows their protocol label when ``flows`` is given)."""
    order = np.lexsort((pf["flow_pos"].to_numpy(), pf["ts_ns"].to_numpy(), pf["flow_id"].to_numpy()))
    pf = pf.iloc[order]
    cond = pf["app"].astype(str).to_numpy(dtype=object)
    if flows is not None:
        fl = flows.select(["flow_id", "ethertype", "protocol"]).to_pandas()
        proto = pd.Series(noflow_proto(fl["ethertype"], fl["protocol"]), index=fl["flow_id"].to_numpy())
        nf = pf["kind"].astype(str).to_numpy() == "noflow"
        cond[nf] = proto.reindex(pf["flow_id"].to_numpy()[nf]).fillna("other").to_numpy(dtype=object)
    flow = pf["flow_id"].to_numpy()
    new = np.ones(len(flow), bool)
    new[1:] = flow[1:] != flow[:-1]
    start = np.flatnonzero(new)
    pos = np.arange(len(flow)) - start[np.cumsum(new) - 1]
    gap = np.where(pos == 0, 0.0, pf["gap_s"].to_numpy(np.float64))
    return pd.DataFrame({"flow": flow, "pos": pos, "kind": pf["kind"].astype(str).to_numpy(),
                         "direction": pf["direction"].to_numpy().astype(int),
                         "flag_combo": pf["flag_combo"].astype(str).to_numpy(), "gap_s": gap,
                         "wire_len": pf["wire_len"].to_numpy(np.int64), "cond": cond})


def ideal_replicates(df: pd.DataFrame, reps: int, seed: int):
    """What a flow model that had learned the training flows exactly would give, ``reps`` times.

    The measured samples hold as many flows as the training part, with the training flows'
    (condition, packet count) mix kept by the requests; such a model draws, for each request, a
    training flow of the same (condition, packet count). So each replicate is a stratified
    bootstrap of ``df``'s flows. Its distance to held-out, over the floor, is the ratio a perfect
    model gets from finite samples alone: the noise level the measured ratio sits on.
    """
    df = df.sort_values(["flow", "pos"], kind="stable").reset_index(drop=True)
    flow = df["flow"].to_numpy()
    new = np.ones(len(flow), bool)
    new[1:] = flow[1:] != flow[:-1]
    start = np.flatnonzero(new)
    length = np.diff(np.append(start, len(flow)))
    key = pd.factorize(pd.Series(df["cond"].to_numpy()[start]).astype(str) + "|" + pd.Series(length).astype(str))[0]
    by_key = np.argsort(key, kind="stable")
    k_sorted = key[by_key]
    g_start = np.searchsorted(k_sorted, k_sorted, side="left")
    g_size = np.searchsorted(k_sorted, k_sorted, side="right") - g_start
    rng = np.random.default_rng(seed)
    for _ in range(reps):
        pick = np.empty(len(start), np.int64)
        pick[by_key] = by_key[g_start + np.floor(rng.random(len(start)) * g_size).astype(np.int64)]
        n = length[pick]
        idx = np.repeat(start[pick] - np.cumsum(n) + n, n) + np.arange(n.sum())
        rep = df.iloc[idx].reset_index(drop=True)
        rep["flow"] = np.repeat(np.arange(len(pick)), n)
        yield rep


def half_ratios(df: pd.DataFrame, ho: dict, splits: int, seed: int) -> pd.DataFrame:
    """Ratios d(B, held-out) / d(A, held-out) for random halves A, B of ``df``'s flows: what a
    model that had learned the training flows' population exactly (not the sample) would get,
    had it been trained on, and sampled, half as many flows. Halving the sample makes this noise
    larger than at full size, as the bootstrap (which copies training flows) makes it smaller."""
    flows = df["flow"].unique()
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(splits):
        half = np.isin(df["flow"].to_numpy(), rng.permutation(flows)[: len(flows) // 2])
        da, db = distances(per_flow(df[half]), ho), distances(per_flow(df[~half]), ho)
        out.append({m: db[m] / da[m] if da[m] > 0 else np.nan for m in da})
    return pd.DataFrame(out)


def per_flow(df: pd.DataFrame) -> dict:
    """Per-flow and per-packet views of a (flow, pos)-sorted frame."""
    df = df.sort_values(["flow", "pos"], kind="stable")
    flow = df["flow"].to_numpy()
    new = np.ones(len(flow), bool)
    new[1:] = flow[1:] != flow[:-1]
    seq = np.cumsum(new) - 1
    k = int(seq[-1]) + 1 if len(seq) else 0
    d = df["direction"].to_numpy()
    change = np.zeros(len(d), bool)
    change[1:] = (d[1:] != d[:-1]) & ~new[1:]
    flags = df["flag_combo"].to_numpy(dtype=object)
    tok = np.char.add(flags.astype(str), np.where(d == 0, ">", "<"))
    gap = df["gap_s"].to_numpy(np.float64)

    def bigrams(t):
        t = t.astype(object)
        nxt = np.append(t[1:], "$").astype(object)
        last = np.append(new[1:], True)  # the last packet of its flow
        nxt[last] = "$"
        firsts = pd.Series(np.char.add("^ ", t[new].astype(str)))
        pairs = pd.Series(np.char.add(np.char.add(t.astype(str), " "), nxt.astype(str)))
        return pd.concat([firsts, pairs]).value_counts()

    return {
        "packets": np.bincount(seq, minlength=k),
        "bytes": np.bincount(seq, weights=df["wire_len"].to_numpy(np.float64), minlength=k),
        "duration": np.bincount(seq, weights=gap, minlength=k),
        "dir_changes": np.bincount(seq, weights=change.astype(float), minlength=k),
        "gaps": gap[~new],
        "flag_bigrams": bigrams(flags),
        "flagdir_bigrams": bigrams(tok),
    }


def distances(a: dict, b: dict) -> dict:
    lg = lambda x: np.log10(np.maximum(x, 1e-6))  # noqa: E731
    return {
        "packets/flow": emd(np.log10(a["packets"]), np.log10(b["packets"])),
        "bytes/flow": emd(np.log10(np.maximum(a["bytes"], 1)), np.log10(np.maximum(b["bytes"], 1))),
        "duration": emd(lg(a["duration"]), lg(b["duration"])),
        "dir changes": emd(np.log10(1 + a["dir_changes"]), np.log10(1 + b["dir_changes"])),
        "log gaps": emd(lg(a["gaps"]), lg(b["gaps"])),
        "flag bigrams": jsd(*align_counts(a["flag_bigrams"], b["flag_bigrams"])),
        "flag+dir bigrams": jsd(*align_counts(a["flagdir_bigrams"], b["flagdir_bigrams"])),
    }


def load_packet_model(spec: str, train):
    if spec == "length":
        from necst.model.length_codes import LengthCodes

        return LengthCodes().fit(train), "LengthCodes (quantile bins of wire_len, stand-in)"
    from necst.model.packet import PacketModel  # the VAE + GMM packet model

    if spec == "train":
        pm = PacketModel().fit(train)
        return pm, f"PacketModel trained here ({pm.fit_seconds_:.0f} s)"
    if Path(spec).exists():
        return PacketModel.load(spec), f"PacketModel from {spec}"
    raise SystemExit(f"--packet-model: {spec} is neither 'length', 'train' nor a bundle folder")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train", type=Path, default=Path("/tmp/iot_train"))
    ap.add_argument("--heldout", type=Path, default=Path("/tmp/iot_heldout"))
    ap.add_argument("--packet-model", default="length")
    ap.add_argument("--epochs", type=int, default=FlowModel().epochs)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--save", type=Path, default=None, help="write the trained flow model here")
    ap.add_argument("--load", type=Path, default=None, help="measure this trained flow model instead")
    ap.add_argument("--validate", action="store_true",
                    help="fit on the first 70%% of the training part's captures per device and measure "
                         "against the rest (the held-out part is not read)")
    ap.add_argument("--cut", choices=("time", "random"), default="time",
                    help="with --validate: the validation part is each device's last captures by time, or a "
                         "random share of them (see validation_split)")
    ap.add_argument("--code-pool", type=int, default=None,
                    help="packet draws kept per packet-model code when sampling (0: decode every packet)")
    ap.add_argument("--prev-in-heads", type=int, default=1, help="1: architecture v2, 0: v1")
    ap.add_argument("--units", type=int, default=FlowModel().units, help="LSTM units (96: before session 5)")
    ap.add_argument("--rem-exact", type=int, default=FlowModel().rem_exact,
                    help="packets remaining known exactly below this (16: before session 4)")
    ap.add_argument("--self-feed", type=float, default=FlowModel().self_feed,
                    help="scheduled sampling: share of fed-back own draws in training (0: teacher forcing;"
                         " FlowModel's default tokens and kinds: dir, flag, code of tcp)")
    ap.add_argument("--noise-reps", type=int, default=20,
                    help="bootstrap replicates for the noise level of each ratio (0: skip)")
    ap.add_argument("--sample-seeds", type=int, default=5,
                    help="sample the model again with this many other seeds, for the spread of each ratio")
    ap.add_argument("--time-data", type=Path, default=None,
                    help="also time training on this dataset folder (e.g. 200k packets)")
    a = ap.parse_args()

    ensure_split(a.train, a.heldout)
    train, held = load_dataset(a.train), load_dataset(a.heldout)
    if a.validate:
        train, held = validation_split(train, cut=a.cut)
        print(f"validation mode ({a.cut} cut): fit part vs validation part of the training captures")
    pm, pm_name = load_packet_model(a.packet_model, train)
    print(f"train {train.packets.num_rows} packets, held-out {held.packets.num_rows}; packet model: {pm_name}")

    cpu0 = time.process_time()
    fm = FlowModel.load(a.load) if a.load else FlowModel(epochs=a.epochs, seed=a.seed, rem_exact=a.rem_exact,
                                                            self_feed=a.self_feed, units=a.units,
                                                            prev_in_heads=bool(a.prev_in_heads)).fit(train, pm)
    fit_cpu = time.process_time() - cpu0
    if a.code_pool is not None:
        fm.code_pool = a.code_pool
    if a.save:
        fm.save(a.save, force=True)
    real_tr = real_frame(packet_features(train.packets), train.flows)
    real_ho = real_frame(packet_features(held.packets), held.flows)
    n_train = real_tr.groupby("kind")["flow"].nunique().to_dict()
    req = fm.sample_requests({k: int(n_train.get(k, 0)) for k in KINDS if k in fm.vocab_}, seed=a.seed + 1)
    t = time.perf_counter()
    synth = fm.sample(req, pm, seed=a.seed + 1)
    t_sample = time.perf_counter() - t

    print("\n## 1. TCP structure (share of flows)")
    rows = {"real held-out": flow_structure(real_ho[real_ho.kind == "tcp"]),
            "real train": flow_structure(real_tr[real_tr.kind == "tcp"]),
            "sampled": flow_structure(synth[synth.kind == "tcp"])}
    st = pd.DataFrame(rows).T
    gap_pp = (st.loc["sampled"] - st.loc["real held-out"]).drop("flows") * 100
    print(st.to_string(float_format=lambda x: f"{x:.4f}"))
    print("sampled - held-out (percentage points): "
          + ", ".join(f"{k} {v:+.1f}" for k, v in gap_pp.items()))

    print("\n## 2. Fidelity: d(sampled, held-out) / d(train, held-out)  (target <= 1.5)")
    # the same model sampled again with other seeds: how much the ratio moves from one draw to the next
    others = []
    for i in range(a.sample_seeds):
        r_i = fm.sample_requests({k: int(n_train.get(k, 0)) for k in KINDS if k in fm.vocab_}, seed=a.seed + 101 + i)
        others.append(fm.sample(r_i, pm, seed=a.seed + 101 + i))
    lines = []
    for kind in KINDS:
        if kind not in fm.vocab_:
            continue
        ho = per_flow(real_ho[real_ho.kind == kind])
        tr = per_flow(real_tr[real_tr.kind == kind])
        sy = per_flow(synth[synth.kind == kind])
        floor, got, fit = distances(tr, ho), distances(sy, ho), distances(sy, tr)
        ideal = pd.DataFrame([distances(per_flow(rep), ho) for rep in
                              ideal_replicates(real_tr[real_tr.kind == kind], a.noise_reps, a.seed + 11)])
        halves = half_ratios(real_tr[real_tr.kind == kind], ho, a.noise_reps // 2, a.seed + 12) if a.noise_reps else None
        again = pd.DataFrame([distances(per_flow(o[o.kind == kind]), ho) for o in others])
        for m in floor:
            r = got[m] / floor[m] if floor[m] > 0 else np.inf
            row = {"kind": kind, "metric": m, "sampled": got[m], "floor": floor[m], "ratio": r,
                   "ok": "yes" if r <= 1.5 else "NO", "sampled vs train": fit[m]}
            if len(ideal) and floor[m] > 0:
                row["boot mean"] = ideal[m].mean() / floor[m]
                row["boot p90"] = ideal[m].quantile(0.9) / floor[m]
                row["half mean"] = halves[m].mean()
                row["half p90"] = halves[m].quantile(0.9)
            if len(again) and floor[m] > 0:
                row["seeds min"] = again[m].min() / floor[m]
                row["seeds max"] = again[m].max() / floor[m]
            lines.append(row)
    fid = pd.DataFrame(lines)
    print(fid.to_string(index=False, float_format=lambda x: f"{x:.4f}"))
    print(f"within 1.5x: {int((fid.ok == 'yes').sum())} of {len(fid)}")
    if a.noise_reps:
        print("Noise level of the ratio (what a perfect model would score from finite samples alone; mean and 90th"
              " percentile):\n  boot: the training flows resampled within their (condition, packet count),"
              f" {a.noise_reps} times (a model that copies training flows; lower bound)\n  half: d(half B, held-out) /"
              f" d(half A, held-out) over {a.noise_reps // 2} random halves of the training flows (a model of the"
              " population at half the sample size; upper bound)")
    if a.sample_seeds:
        print(f"seeds min / max: the ratio when the same model samples again, with {a.sample_seeds} other seeds"
              " (requests and packets)")

    print("\n## 3. Cost")
    for k, h in fm.history_.items():
        print(f"train {k}: {h['seconds']:.1f} s, {len(h['loss'])} epochs, {h['windows']} windows")
    print(f"train all: {fm.fit_seconds_:.1f} s on {train.packets.num_rows} packets"
          + (f" (loaded from {a.load})" if a.load else f", CPU {fit_cpu:.1f} s"))
    print(f"sample {len(req)} flows ({len(synth)} packets): {t_sample:.2f} s (first call)")
    req10 = fm.sample_requests(10_000, seed=a.seed + 2)
    t, c = time.perf_counter(), time.process_time()
    s10 = fm.sample(req10, pm, seed=a.seed + 2)
    print(f"sample 10,000 flows ({len(s10)} packets): {time.perf_counter() - t:.2f} s, "
          f"CPU {time.process_time() - c:.2f} s; load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    if a.time_data:
        big = load_dataset(a.time_data)
        pm_big = pm if a.packet_model != "length" else load_packet_model("length", big)[0]
        cpu_b = time.process_time()
        fb = FlowModel(epochs=a.epochs, seed=a.seed, rem_exact=a.rem_exact, self_feed=a.self_feed,
                       units=a.units).fit(big, pm_big)
        cpu_b = time.process_time() - cpu_b
        print(f"train all on {a.time_data} ({big.packets.num_rows} packets): {fb.fit_seconds_:.1f} s ("
              + ", ".join(f"{k} {h['seconds']:.0f} s / {len(h['loss'])} epochs" for k, h in fb.history_.items())
              + f"), CPU {cpu_b:.1f} s; load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
        t, c = time.perf_counter(), time.process_time()
        fb.sample(fb.sample_requests(10_000, seed=3), pm_big, seed=3)
        print(f"sample 10,000 flows from that model: {time.perf_counter() - t:.2f} s, CPU {time.process_time() - c:.2f} s"
              " (first call)")


if __name__ == "__main__":
    main()
