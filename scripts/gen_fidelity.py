"""Generate fidelity, side by side: ratio-to-floor tables of `necst evaluate` reports, and the
category histograms behind the field metrics (ip_proto, TCP flag combination, app) and the TCP
closing shares, real beside synthetic.

    python scripts/gen_fidelity.py table REPORT_DIR [REPORT_DIR ...]
    python scripts/gen_fidelity.py detail REAL_DATASET SYNTH_CAPTURE [--top 15]

    python scripts/gen_fidelity.py discriminator REAL_DATASET SYNTH_CAPTURE

``table`` prints one column of ratios per report (the discriminator AUC as itself); ``detail``
reads both samples with necst's own reader so the histograms are those the metrics compare;
``discriminator`` says which flow features give the synthetic flows away: the AUC with every
feature, with the end reasons eof / idle / active merged into one "open" (a dataset of many
short captures ends its open flows at each file's end, one synthetic capture by idle timeout),
without the end reason, and with each feature alone.
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
    a = ap.parse_args()
    if a.cmd == "table":
        table(a.reports)
    elif a.cmd == "discriminator":
        discriminator(a.real, a.synth)
    else:
        detail(a.real, a.synth, a.top)


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
