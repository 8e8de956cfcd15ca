"""bench.json, a self-contained bench.html (plots inlined as PNG) and plots/*.png.

The HTML is written for someone who did not run the bench: what was run, on what, with which
seeds, how to read each table, then the numbers. Matplotlib runs on its Agg backend.
"""
from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path

METRICS = [("roc_auc", "ROC AUC", "{:.3f}"), ("pr_auc", "PR AUC", "{:.3f}"), ("tpr_at_fpr_0.001", "TPR@FPR=0.001", "{:.3f}"),
           ("f1", "F1 (own threshold)", "{:.3f}"), ("delay_s", "delay s", "{:.2f}")]


def _fmt(v, f="{:.3f}") -> str:
    return "–" if v is None else f.format(v)


def summary_rows(report: dict, groups=("scenarios", "replays", "learned")) -> list[dict]:
    rows = []
    for g in groups:
        for r in report.get(g, []):
            for d, m in r["metrics"].items():
                rows.append({"group": g, "name": r["name"], "background": r["background"], "detector": d,
                             "attack_packets": r["attack_packets"], **{k: m.get(k) for k, _, _ in METRICS}})
    return rows


def summary_markdown(report: dict, groups=("scenarios", "replays", "learned")) -> str:
    """One row per capture, one column group per detector: ROC AUC / TPR@FPR=0.001 / F1 / delay."""
    dets = list(report["inputs"]["detectors"])
    head = "| capture | background | " + " | ".join(f"{d} AUC / TPR@1e-3 / F1 / delay s" for d in dets) + " |"
    lines = [head, "|" + " --- |" * (2 + len(dets))]
    for g in groups:
        for r in report.get(g, []):
            cells = []
            for d in dets:
                m = r["metrics"][d]
                cells.append(f"{_fmt(m['roc_auc'])} / {_fmt(m['tpr_at_fpr_0.001'], '{:.2f}')} / "
                             f"{_fmt(m['f1'], '{:.2f}')} / {_fmt(m['delay_s'], '{:.1f}')}")
            lines.append(f"| {r['name']} | {r['background']} | " + " | ".join(cells) + " |")
    n = report["normal"]
    lines.append("")
    lines.append("| detector | FP rate real | FP rate synthetic | ratio synthetic/real | over threshold real | "
                 "over threshold synthetic | ratio |")
    lines.append("| --- | --- | --- | --- | --- | --- | --- |")
    for d in dets:
        ratio = n["fp_ratio_synthetic_to_real"].get(d)
        r, s = n["real"]["detectors"][d], n["synthetic"]["detectors"][d]
        oratio = n.get("over_threshold_ratio_synthetic_to_real", {}).get(d)
        lines.append(f"| {d} | {_fmt(r['fp_rate'], '{:.5f}')} | {_fmt(s['fp_rate'], '{:.5f}')} | {_fmt(ratio, '{:.2f}')} | "
                     f"{_fmt(r['over_threshold_rate'], '{:.5f}')} | {_fmt(s['over_threshold_rate'], '{:.5f}')} | "
                     f"{_fmt(oratio, '{:.2f}')} |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------- plots
def _plots(report: dict) -> dict[str, bytes]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = {}
    dets = list(report["inputs"]["detectors"])

    def save(fig, name):
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
        plt.close(fig)
        out[name] = buf.getvalue()

    groups = [("scenarios", lambda r: r["group"] == "scenarios" and not r["name"].endswith("_slow")),
              ("low-and-slow", lambda r: r["group"] == "scenarios" and r["name"].endswith("_slow")),
              ("replayed real attacks", lambda r: r["group"] == "replays")]
    for bg in report.get("backgrounds", {}):
        rows = [(label, [r for r in report["scenarios"] + report["replays"] if r["background"] == bg and keep(r)])
                for label, keep in groups]
        rows = [(label, recs) for label, recs in rows if recs]
        if not rows:
            continue
        fig, axes = plt.subplots(len(rows), len(dets), figsize=(4.2 * len(dets) + 2.5, 3.6 * len(rows)), layout="constrained",
                                 squeeze=False)
        cmap = plt.get_cmap("tab20")
        for i, (label, recs) in enumerate(rows):
            for ax, d in zip(axes[i], dets):
                for k, r in enumerate(recs):
                    roc = r["metrics"][d].get("roc")
                    if roc:
                        ax.plot(roc["fpr"], roc["tpr"], lw=1.0, color=cmap(k % 20), ls="-" if k < 20 else "--",
                                label=r["name"])
                ax.plot([0, 1], [0, 1], color="grey", lw=0.5)
                ax.set_xscale("symlog", linthresh=1e-3)
                ax.set_title(f"{d}: {label}", fontsize=9)
                ax.set_xlabel("false-positive rate (symlog)", fontsize=8)
                ax.set_ylabel("true-positive rate", fontsize=8)
            axes[i][-1].legend(fontsize=6, loc="center left", bbox_to_anchor=(1.02, 0.5))
        fig.suptitle(f"ROC curves on the {bg} background", fontsize=10)
        save(fig, f"roc_{bg}.png")

    if report.get("intensity"):
        names = list(dict.fromkeys(r["scenario"] for r in report["intensity"]))
        fig, axes = plt.subplots(2, len(names), figsize=(4 * len(names), 6.5), squeeze=False)
        for j, s in enumerate(names):
            recs = [r for r in report["intensity"] if r["scenario"] == s]
            x = [r["intensity"] for r in recs]
            for d in dets:
                axes[0][j].plot(x, [r["metrics"][d]["recall"] or 0 for r in recs], marker="o", label=d)
                axes[1][j].plot(x, [r["metrics"][d]["delay_s"] if r["metrics"][d]["delay_s"] is not None
                                    else float("nan") for r in recs], marker="o", label=d)
            for ax in axes[:, j]:
                ax.set_xscale("log")
            axes[0][j].set_title(s, fontsize=9)
            axes[0][j].set_ylabel("detection rate (attack units flagged)")
            axes[1][j].set_ylabel("detection delay s")
            axes[1][j].set_xlabel("intensity (x default rate)")
        axes[0][-1].legend(fontsize=7)
        save(fig, "intensity.png")

    if report.get("volume"):
        v = report["volume"]
        fig, axes = plt.subplots(1, 2, figsize=(10, 4))
        x = [r["volume"] for r in v]
        for d in dets:
            axes[0].plot(x, [r["metrics"][d]["packets_per_s"] for r in v], marker="o", label=d)
            axes[1].plot(x, [r["metrics"][d]["latency_s_per_traffic_s"] for r in v], marker="o", label=d)
        for ax in axes:
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlabel("background volume (x)")
        axes[0].set_ylabel("scoring throughput, packets/s (wall)")
        axes[1].set_ylabel("scoring seconds per second of traffic")
        axes[0].legend(fontsize=7)
        save(fig, "volume.png")

    n = report["normal"]
    fig, ax = plt.subplots(figsize=(1.6 * len(dets) + 2, 3.5))
    import numpy as np

    xs = np.arange(len(dets))
    ax.bar(xs - 0.2, [n["real"]["detectors"][d]["fp_rate"] or 0 for d in dets], 0.4, label="real normal")
    ax.bar(xs + 0.2, [n["synthetic"]["detectors"][d]["fp_rate"] or 0 for d in dets], 0.4, label="synthetic normal")
    ax.set_xticks(xs, dets, fontsize=7, rotation=15)
    ax.set_ylabel("false-positive rate (flagged units)")
    ax.legend(fontsize=7)
    save(fig, "normal_fp.png")
    return out


# ---------------------------------------------------------------------------------------- html
def _table(head: list[str], rows: list[list[str]]) -> str:
    h = "".join(f"<th>{html.escape(c)}</th>" for c in head)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{h}</tr>{body}</table>"


def _img(png: bytes, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'


def _metric_table(records: list, dets: list[str]) -> str:
    head = ["capture", "background", "attack packets"] + [f"{d}: {label}" for d in dets for _, label, _ in METRICS]
    rows = []
    for r in records:
        cells = [r["name"], r["background"], r["attack_packets"]]
        for d in dets:
            m = r["metrics"][d]
            cells += [_fmt(m.get(k), f) for k, _, f in METRICS]
        rows.append(cells)
    return _table(head, rows)


def render_html(report: dict, plots: dict[str, bytes]) -> str:
    dets = list(report["inputs"]["detectors"])
    cfg = report["config"]
    n = report["normal"]
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>necst bench</title><style>"
        "body{font-family:sans-serif;max-width:1400px;margin:auto;padding:1em}table{border-collapse:collapse;"
        "font-size:12px;margin:1em 0}td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}"
        "th{background:#eee}td:first-child{text-align:left}img{max-width:100%}</style></head><body>",
        "<h1>necst bench: how the detector holds up</h1>",
        f"<p>necst {html.escape(report['necst_version'])}, {html.escape(report['created'])}, "
        f"{report.get('seconds', 0):.0f} s wall, {report.get('cpu_seconds', 0):.0f} CPU-seconds on "
        f"{report['machine']['cpus']} CPUs. Seed <b>{cfg['seed']}</b>: every capture below is rebuilt "
        "byte for byte by the same command, inputs and seed.</p>",
        "<h2>What was run</h2><ul>",
        f"<li>Real normal traffic: <code>{html.escape(report['inputs']['normal'])}</code>.</li>",
        f"<li>Generator: {html.escape(report['inputs']['model'])}; synthetic normal traffic over the same time "
        f"span, its rate scaled x{n['synthetic']['rate_scale']:g} to the real packet count "
        f"({n['synthetic']['packets_at_rate_1']} packets at the model's own rate).</li>",
        "<li>Detectors: " + ", ".join(f"<code>{html.escape(d)}</code> ({html.escape(v['path'])}, threshold "
                                      f"{v['threshold']['threshold']:.4g} by {html.escape(v['threshold']['method'])})"
                                      for d, v in report["inputs"]["detectors"].items()) + ".</li>",
        f"<li>Attack scenarios are injected {cfg['attack_at']:.0%} into the densest {cfg['background_s']:g} s of each "
        "background (synthetic and real), addressed at hosts of that background: "
        + "; ".join(f"{k}: victim {v['hosts']['victim']}, insider attacker {v['hosts']['attacker']}"
                    for k, v in report["backgrounds"].items()) + ".</li>",
        "<li>Every scored capture is in <code>captures/</code> with a <code>.labels.csv</code> beside it "
        "(packet_index from 0 in capture order, ts_ns, scenario, attacker, victim; packets not listed are "
        "background), so other detectors can be benchmarked on the same files.</li></ul>",
        "<h2>How to read it</h2><p>A unit is what a detector scores (a window, a flow or a packet); it is an attack "
        "unit when it holds at least one attack packet. <b>ROC AUC</b> and <b>PR AUC</b> rank units by anomaly score "
        "(1 = every attack unit above every normal one; PR AUC is the stricter when attacks are rare). "
        "<b>TPR@FPR=0.001</b> is the share of attack units caught when one normal unit in a thousand is flagged. "
        "<b>F1</b> uses the detector's own threshold and post-processing, as deployed. <b>Delay</b> runs from the "
        "first attack packet to the end of the first flagged attack unit (– when never flagged).</p>",
        "<h2>1. Normal traffic: false positives, real vs synthetic</h2>",
        "<p>Close rates mean the generator's traffic is normal in the detector's eyes. The FP rate counts units "
        "flagged after post-processing (runs of units over the threshold); the share of units over the threshold "
        "is steadier when flags are few.</p>",
        _table(["detector", "units real", "FP rate real", "units synthetic", "FP rate synthetic", "ratio synth/real",
                "over threshold real", "over threshold synthetic", "ratio"],
               [[d, n["real"]["detectors"][d]["units"], _fmt(n["real"]["detectors"][d]["fp_rate"], "{:.5f}"),
                 n["synthetic"]["detectors"][d]["units"], _fmt(n["synthetic"]["detectors"][d]["fp_rate"], "{:.5f}"),
                 _fmt(n["fp_ratio_synthetic_to_real"].get(d), "{:.2f}"),
                 _fmt(n["real"]["detectors"][d]["over_threshold_rate"], "{:.5f}"),
                 _fmt(n["synthetic"]["detectors"][d]["over_threshold_rate"], "{:.5f}"),
                 _fmt(n.get("over_threshold_ratio_synthetic_to_real", {}).get(d), "{:.2f}")] for d in dets]),
    ]
    if "normal_fp.png" in plots:
        parts.append(_img(plots["normal_fp.png"], "false-positive rates"))
    parts.append("<h2>2. Attack scenarios</h2><p>Crafted by necst's own crafter; <code>_slow</code> is the "
                 "low-and-slow variant (2% of the rate over five times the duration).</p>")
    parts.append(_metric_table(report["scenarios"], dets))
    for bg in report.get("backgrounds", {}):
        if f"roc_{bg}.png" in plots:
            parts.append(_img(plots[f"roc_{bg}.png"], f"ROC {bg}"))
    if report["replays"]:
        parts.append("<h2>3. Real attacks replayed</h2><p>Captures time-shifted and remapped onto the background's "
                     "victim and insider (spoofed sources keep their addresses).</p>")
        parts.append(_metric_table(report["replays"], dets))
    if report["learned"]:
        parts.append("<h2>4. Learned attacks</h2><p>The generator trained on the attack capture (small setting), "
                     "variants sampled and replayed like the original: does the detector catch what it has not seen "
                     "byte for byte?</p>")
        parts.append(_metric_table(report["learned"], dets))
    if report["intensity"]:
        parts.append("<h2>5a. Intensity sweep</h2><p>The attack at a factor of its default rate on the synthetic "
                     "background: where does the detector stop seeing it? Detection rate = share of attack units "
                     "flagged.</p>")
        parts.append(_table(["scenario", "intensity", "attack packets"] + [f"{d}: detection rate" for d in dets]
                            + [f"{d}: delay s" for d in dets],
                            [[r["scenario"], f"{r['intensity']:g}x", r["attack_packets"]]
                             + [_fmt(r["metrics"][d]["recall"]) for d in dets]
                             + [_fmt(r["metrics"][d]["delay_s"], "{:.2f}") for d in dets] for r in report["intensity"]]))
        if "intensity.png" in plots:
            parts.append(_img(plots["intensity.png"], "intensity sweep"))
    if report["volume"]:
        parts.append("<h2>5b. Volume sweep</h2><p>Synthetic background at 1x to 100x the packets of its densest "
                     f"{cfg['volume_s']:g} s, compressed into {cfg['volume_s']:g} s, with a SYN scan injected. "
                     "Throughput counts features and scoring; the last columns add decoding the packets' headers "
                     "(necst's decoder, as <code>necst detect score</code> pays it; reading the file is not counted).</p>")
        parts.append(_table(["volume", "packets"] + [f"{d}: packets/s" for d in dets]
                            + [f"{d}: packets/CPU-s" for d in dets] + [f"{d}: s per traffic s" for d in dets]
                            + [f"{d}: packets/s with decoding" for d in dets],
                            [[f"{r['volume']:g}x", r["packets"]]
                             + [_fmt(r["metrics"][d]["packets_per_s"], "{:,.0f}") for d in dets]
                             + [_fmt(r["metrics"][d]["packets_per_cpu_s"], "{:,.0f}") for d in dets]
                             + [_fmt(r["metrics"][d]["latency_s_per_traffic_s"], "{:.4f}") for d in dets]
                             + [_fmt(r["metrics"][d].get("end_to_end_packets_per_s"), "{:,.0f}") for d in dets]
                             for r in report["volume"]]))
        if "volume.png" in plots:
            parts.append(_img(plots["volume.png"], "volume sweep"))
    parts.append("<h2>Stage timings (s)</h2>" + _table(["stage", "seconds"], [[k, v] for k, v in
                                                                             report.get("timings", {}).items()]))
    parts.append("<h2>Configuration</h2><pre>" + html.escape(json.dumps(cfg, indent=1)) + "</pre></body></html>")
    return "\n".join(parts)


def write_report(report: dict, out: Path) -> None:
    out = Path(out)
    plots = _plots(report)
    (out / "plots").mkdir(parents=True, exist_ok=True)
    for name, png in plots.items():
        (out / "plots" / name).write_bytes(png)
    (out / "bench.json").write_text(json.dumps(report, indent=1, default=_json_default))
    (out / "bench.html").write_text(render_html(report, plots))
    (out / "summary.md").write_text(summary_markdown(report) + "\n")


def _json_default(o):
    import numpy as np

    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serializable: {type(o).__name__}")
