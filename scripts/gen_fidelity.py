"""Generate fidelity, side by side: ratio-to-floor tables of `necst evaluate` reports, and the
category histograms behind the field metrics (ip_proto, TCP flag combination, app) and the TCP
closing shares, real beside synthetic.

    python scripts/gen_fidelity.py table REPORT_DIR [REPORT_DIR ...]
    python scripts/gen_fidelity.py detail REAL_DATASET SYNTH_CAPTURE [--top 15]

    python scripts/gen_fidelity.py discriminator REAL_DATASET SYNTH_CAPTURE
    python scripts/gen_fidelity.py seconds DATASET [DATASET ...]
    python scripts/gen_fidelity.py stages MODEL REAL_DATASET FLOOR_DATASET [--seed S]
           [--conditions real,train,plan] [--out DIR]

``table`` prints one column of ratios per report (the discriminator AUC as itself); ``detail``
reads both samples with necst's own reader so the histograms are those the metrics compare;
``discriminator`` says which flow features give the synthetic flows away: the AUC with every
feature, with the end reasons eof / idle / active merged into one "open" (a dataset of many
short captures ends its open flows at each file's end, one synthetic capture by idle timeout),
without the end reason, and with each feature alone.

``seconds`` says how traffic falls on the seconds, what packets_per_s and bytes_per_s compare:
per dataset (processed captures), seconds with packets (per million seconds of its span, the
metric counts quiet seconds too) and those with at least k packets, and the flow starts: seconds
with one, seconds within 10 s after one, and bursts (runs of starts without a gap over 3 s).

``stages`` follows one set of flows through the generator and scores each stage against REAL,
as ratios to the floor (FLOOR vs REAL), with the report's own metrics: ``model`` is the flow
model's output (packets at the flow's start plus its gaps), ``craft`` the planned packets after
the TCP repairs, ``capture`` the same packets written and read back by ``necst process`` (flow
meter, idle timeouts). The flows' conditions (kind, application, packets) come from ``real``
(REAL's own flows: the flow model given the answer), ``train`` (FLOOR's flows resampled: an ideal
aggregate level) or ``plan`` (the aggregate level's plan). Start times are REAL's own for
``real``, the plan's otherwise.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd


def table(reports: list[str]) -> None:
    rows, heads = {}, []
    for rep in reports:
        r = json.loads((Path(rep) / "report.json").read_text())
        heads.append(Path(rep).name)
        for m in r["metrics"]:
            v = m.get("synthetic") if m["name"] == "discriminator_auc" else m.get("ratio")
            rows.setdefault(m["name"], []).append(v)
        s = r["summary"]["synthetic"]
        rows.setdefault("median ratio", []).append(s["median_ratio"])
        rows.setdefault("within 2x / beyond 10x", []).append(f"{s['within_2x']}/{s['beyond_10x']}")
        floor_auc = next(m["floor"] for m in r["metrics"] if m["name"] == "discriminator_auc")
        rows.setdefault("floor AUC", []).append(floor_auc)
    print("| metric | " + " | ".join(heads) + " |")
    print("|---|" + "---:|" * len(heads))
    for name, vals in rows.items():
        cells = [("-" if v is None else (f"{v:.3g}" if isinstance(v, float) else str(v))) for v in vals]
        print(f"| {name} | " + " | ".join(cells) + " |")


def _shares(counts: pd.Series) -> pd.Series:
    return counts / counts.sum()


def detail(real: str, synth: str, top: int) -> None:
    from necst.process.dataset import load_dataset

    samples = {}
    for name, path in (("real", real), ("synth", synth)):
        ds = load_dataset(path)
        p = ds.packets.select(["ethertype", "ip_proto", "tcp_flags", "wire_len", "flow_id"]).to_pandas()
        f = ds.flows.select(["kind", "app", "protocol", "ethertype", "end_reason", "handshake"]).to_pandas()
        samples[name] = (p, f)

    def show(title, series_of):
        cols = {k: _shares(series_of(*v)) for k, v in samples.items()}
        df = pd.DataFrame(cols).fillna(0.0)
        df["diff"] = df["synth"] - df["real"]
        df = df.reindex(df["diff"].abs().sort_values(ascending=False).index).head(top)
        print(f"\n## {title}\n")
        print(df.to_string(float_format=lambda x: f"{x:.4f}"))

    show("ethertype / ip_proto (packets)", lambda p, f: p.groupby(
        [p["ethertype"].fillna(-1).astype(int), p["ip_proto"].fillna(-1).astype(int)]).size())
    show("TCP flag combination (TCP packets)",
         lambda p, f: p.loc[p["ip_proto"] == 6, "tcp_flags"].fillna(-1).astype(int).map(_flag_name).value_counts())
    show("app (flows)", lambda p, f: f["app"].astype(str).value_counts())
    show("kind / end_reason / handshake (flows)", lambda p, f: f.groupby(
        [f["kind"].astype(str), f["end_reason"].astype(str), f["handshake"].astype(str)]).size())
    show("wire length (packets, top values)", lambda p, f: p["wire_len"].value_counts())


def seconds(datasets: list[str]) -> None:
    from necst.evaluate.views import per_second_distribution
    from necst.process.dataset import load_dataset

    ks = (1, 2, 3, 5, 10, 20, 30, 50, 100)
    rows = {}
    for path in datasets:
        ds = load_dataset(path)
        ts = ds.packets.column("ts_ns").to_numpy()
        t = (ts - ts.min()) / 1e9
        values, counts = per_second_distribution(t, None, float(t.max()))
        per_m = 1e6 / counts.sum()
        busy = values > 0
        start = np.sort(ds.flows.column("first_seen_ns").to_numpy())
        sec = (start - ts.min()) // 10**9
        row = {f">= {k} packets": counts[values >= k].sum() * per_m for k in ks}
        row["packets per busy second (median)"] = float(np.median(np.repeat(values[busy], counts[busy].astype(int))))
        row["flows per second with a start"] = len(start) / len(np.unique(sec))
        row["seconds within 10 s of a start, per flow"] = len(np.unique((sec[:, None] + np.arange(10)).ravel())) / len(start)
        row["flows per burst (gaps <= 3 s)"] = len(start) / (1 + int((np.diff(start) > 3e9).sum()))
        rows[Path(path).name] = row
    print("seconds with at least k packets, per million seconds of the span:")
    print(pd.DataFrame(rows).to_string(float_format=lambda x: f"{x:.3g}"))


def discriminator(real: str, synth: str) -> None:
    from necst.evaluate.discriminator import discriminator_auc
    from necst.evaluate.views import prepare
    from necst.process.dataset import load_dataset

    a, b = (prepare(d.packets, d.flows, n).flow_features for n, d in
            (("real", load_dataset(real)), ("synthetic", load_dataset(synth))))

    def merged(x):
        return x.assign(end_reason=x["end_reason"].replace({"eof": "open", "idle": "open", "active": "open"}))

    rows = [("every feature", a, b), ("end_reason eof/idle/active merged", merged(a), merged(b)),
            ("without end_reason", a.drop(columns=["end_reason"]), b.drop(columns=["end_reason"]))]
    rows += [(f"{c} alone", a[[c]], b[[c]]) for c in a.columns]
    for name, x, y in rows:
        print(f"{name:40s} AUC {discriminator_auc(x, y)['auc']:.3f}")


STAGE_METRICS = ("flow_gap_s_emd", "flow_gap_log10_s_emd", "flow_packets_emd", "flow_bytes_emd",
                 "flow_duration_s_emd", "tcp_direction_changes_emd", "tcp_handshake_gap", "tcp_fin_gap",
                 "tcp_rst_gap", "tcp_fin_or_rst_gap", "packet_length_emd", "tcp_flags_jsd", "app_jsd",
                 "src_ip_rank_jsd", "dst_ip_rank_jsd", "packets_per_s_emd", "bytes_per_s_emd",
                 "arrival_fraction_emd")
SHARES = ("tcp_handshake_share", "tcp_fin_share", "tcp_rst_share", "tcp_fin_or_rst_share")


def _conditions(agg, flows, seed: int, n: int | None = None) -> pd.DataFrame:
    """A plan whose flows have the (kind, application, craft kind, packets, start) of real flows,
    hosts drawn by the aggregate level for their group."""
    from necst.model.aggregate import _craft_kind

    f = flows.to_pandas()
    ck = _craft_kind(f["kind"].astype(str).to_numpy(), f["protocol"].fillna(0).to_numpy(),
                     f["ethertype"].fillna(0).to_numpy())
    f = f[ck != ""].assign(craft_kind=ck[ck != ""]).sort_values("first_seen_ns").reset_index(drop=True)
    if n is not None:
        f = f.iloc[np.sort(np.random.default_rng(seed).choice(len(f), min(n, len(f)), replace=False))]
        f = f.reset_index(drop=True)
    index = {tuple(g): i for i, g in enumerate(agg.groups_)}
    first_of_kind = {g[2]: i for i, g in reversed(list(enumerate(agg.groups_)))}
    g = np.array([index.get((k, a, c), first_of_kind[c]) for k, a, c in
                  zip(f["kind"].astype(str), f["app"].astype(str), f["craft_kind"])])
    plan = pd.DataFrame({"start_ns": f["first_seen_ns"].to_numpy(np.int64), "kind": f["kind"].astype(str).to_numpy(),
                         "app": f["app"].astype(str).to_numpy(), "craft_kind": f["craft_kind"].to_numpy(),
                         "packets": f["bidirectional_packets"].to_numpy(np.int64),
                         "bytes": f["bidirectional_bytes"].to_numpy(np.int64),
                         "duration_s": f["bidirectional_duration_ms"].to_numpy(float) / 1e3})
    agg._assign_hosts(plan, g, np.random.default_rng(seed), {}, None)
    return plan


def _model_view(plan: pd.DataFrame, fp: pd.DataFrame) -> pd.DataFrame:
    """The flow model's packets as evaluate reads a packet table."""
    f = fp["flow"].to_numpy()
    ck = plan["craft_kind"].to_numpy()[f]
    proto = np.select([ck == "tcp", ck == "udp", ck == "igmp", ck == "icmp"], [6, 17, 2, 1], -1).astype(float)
    proto[proto < 0] = np.nan
    d = fp["direction"].astype(int).to_numpy()
    src, dst = plan["src_ip"].to_numpy()[f], plan["dst_ip"].to_numpy()[f]
    return pd.DataFrame({
        "ts_ns": plan["start_ns"].to_numpy()[f] + np.rint(fp["time_s"].to_numpy() * 1e9).astype(np.int64),
        "wire_len": fp["wire_len"].astype(float).to_numpy(), "ip_proto": proto,
        "tcp_flags": fp["tcp_flags"].astype("Float64").to_numpy(np.float64, na_value=np.nan), "flow_id": f,
        "direction": d, "flow_pos": fp["pos"].to_numpy(), "flow_iat_ns": np.rint(fp["gap_s"].to_numpy() * 1e9),
        "app": plan["app"].to_numpy()[f], "src_ip": np.where(d == 0, src, dst), "dst_ip": np.where(d == 0, dst, src)})


def _craft_view(fields) -> pd.DataFrame:
    """Planned packets (craft.PacketFields) as evaluate reads a packet table."""
    import importlib

    c = importlib.import_module("necst.generate.craft")  # the module (the package exports its craft function)

    kp = fields["kind"].astype(np.int64)
    l4 = np.select([kp == c.TCP, kp == c.UDP, kp == c.ICMP], [c.TCP_LEN, c.UDP_LEN, c.ICMP_LEN],
                   fields["msg_len"].astype(np.int64)) + fields["tcp_opt"].astype(np.int64)
    wire = c.ETH_LEN + c._l3_len(kp, fields["ip_version"] == 6) + l4 + fields["payload_len"] + fields["pad"]
    proto = np.select([kp == c.TCP, kp == c.UDP, kp == c.IGMP, kp == c.ICMP6_CONTROL, kp == c.ICMP],
                      [6, 17, 2, 58, 1], -1).astype(float)
    proto[proto < 0] = np.nan
    flow, ts = fields["flow"], fields["ts_ns"]
    iat = np.r_[np.nan, np.diff(ts).astype(float)]
    iat[np.r_[True, flow[1:] != flow[:-1]]] = np.nan
    ips = [np.array([bytes(r).hex() for r in fields[k]], object) for k in ("ip_src", "ip_dst")]  # counts only
    return pd.DataFrame({"ts_ns": ts, "wire_len": wire.astype(float), "ip_proto": proto,
                         "tcp_flags": np.where(kp == c.TCP, fields["tcp_flags"], np.nan), "flow_id": flow,
                         "direction": fields["direction"].astype(int), "flow_pos": fields["pos"], "flow_iat_ns": iat,
                         "app": np.asarray(fields.apps, object)[fields["app"]], "src_ip": ips[0], "dst_ip": ips[1]})


def stages(model: str, real: str, floor: str, seed: int, conditions: list[str], out: str) -> None:
    import shutil

    from necst.capture.writer import CaptureWriter
    from necst.evaluate.compare import compare_samples, ratio
    from necst.evaluate.views import prepare
    from necst.generate.craft import build_frames, plan_packets
    from necst.generate.sampler import Sampler, craft_flow_table, load_generator, packet_table
    from necst.process.dataset import load_dataset, process_captures

    models = load_generator(model)
    ref_ds, floor_ds = load_dataset(real), load_dataset(floor)
    ref = prepare(ref_ds.packets, ref_ds.flows, "real")
    fl = compare_samples(ref, prepare(floor_ds.packets, floor_ds.flows, "floor"), discriminator=False)[0]
    cols = {"real": {**{k: ref.shares.get(k) for k in SHARES}, "flows": ref.n_flows, "packets": ref.n_packets}}

    def score(name, packets, flows=None):
        s = prepare(packets, flows, name)
        v = compare_samples(ref, s, discriminator=False)[0]
        cols[name] = {**{k: s.shares.get(k) for k in SHARES}, "flows": s.n_flows, "packets": s.n_packets,
                      **{k: ratio(k, v[k], fl[k]) for k in STAGE_METRICS}}

    outdir = Path(out)
    outdir.mkdir(parents=True, exist_ok=True)
    n_real = ref_ds.flows.num_rows
    for cond in conditions:
        if cond == "real":
            plan = _conditions(models.aggregate, ref_ds.flows, seed)
        elif cond == "train":
            plan = _conditions(models.aggregate, floor_ds.flows, seed, n=n_real)
            plan["start_ns"] = models.aggregate.sample(n_flows=len(plan), seed=seed)["start_ns"].to_numpy()
        elif cond == "plan":
            plan = models.aggregate.sample(n_flows=n_real, seed=seed)
        else:
            raise SystemExit(f"unknown conditions {cond!r} (real, train, plan)")
        fp = Sampler(models.aggregate, models.flow, models.packet)._sample_flows(plan, seed)
        score(f"{cond}:model", _model_view(plan, fp))
        fields = plan_packets(packet_table(plan, fp), craft_flow_table(plan), seed=seed, attempts=True)
        score(f"{cond}:craft", _craft_view(fields))
        pcap, ds = outdir / f"{cond}_{seed}.pcap", outdir / f"{cond}_{seed}_ds"
        with CaptureWriter(pcap, "pcap", force=True) as w:
            w.write(build_frames(fields.take(fields.time_order())))
        shutil.rmtree(ds, ignore_errors=True)
        process_captures([pcap], ds)
        d = load_dataset(ds)
        score(f"{cond}:capture", d.packets, d.flows)
    df = pd.DataFrame(cols)
    print(df.to_string(float_format=lambda x: f"{x:.3g}"))
    df.to_csv(outdir / f"stages_{seed}.csv")


def _flag_name(bits: int) -> str:
    names = ["FIN", "SYN", "RST", "PSH", "ACK", "URG", "ECE", "CWR", "NS"]
    if bits < 0:
        return "null"
    return "+".join(n for i, n in enumerate(names) if bits >> i & 1) or "NULL"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("table")
    t.add_argument("reports", nargs="+")
    d = sub.add_parser("detail")
    d.add_argument("real")
    d.add_argument("synth")
    d.add_argument("--top", type=int, default=15)
    c = sub.add_parser("discriminator")
    c.add_argument("real")
    c.add_argument("synth")
    sc = sub.add_parser("seconds")
    sc.add_argument("datasets", nargs="+")
    st = sub.add_parser("stages")
    st.add_argument("model")
    st.add_argument("real")
    st.add_argument("floor")
    st.add_argument("--seed", type=int, default=0)
    st.add_argument("--conditions", default="real,train,plan")
    st.add_argument("--out", default="gen_stages")
    a = ap.parse_args()
    if a.cmd == "table":
        table(a.reports)
    elif a.cmd == "discriminator":
        discriminator(a.real, a.synth)
    elif a.cmd == "seconds":
        seconds(a.datasets)
    elif a.cmd == "stages":
        stages(a.model, a.real, a.floor, a.seed, a.conditions.split(","), a.out)
    else:
        detail(a.real, a.synth, a.top)


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
