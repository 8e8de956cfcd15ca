"""The fidelity report on disk: report.json, a self-contained report.html (plots embedded as
base64 PNG) and plots/*.png; and the loading of REAL / SYNTH / floor inputs for the CLI."""
from __future__ import annotations

import base64
import html
import json
import shutil
import tempfile
from pathlib import Path

from necst.errors import NecstError, OutputExistsError


# ---------------------------------------------------------------- inputs

def load_sample(path, *, name: str = "input"):
    """(packets, flows) of a dataset folder or a capture (read in memory), via the process
    stage's ``load_dataset``, which checks the schema version."""
    from necst.process.dataset import load_dataset

    path = Path(path)
    if not path.exists():
        raise NecstError(f"{name} not found", path)
    ds = load_dataset(path)
    if ds.packets.num_rows == 0:
        raise NecstError(f"{name} has no packets", path)
    return ds.packets, ds.flows


# ---------------------------------------------------------------- output

def write_report(evaluation, out_dir, *, force: bool = False) -> Path:
    """Write the report folder (to a temporary name, renamed when complete)."""
    from necst.evaluate.plots import all_plots

    out_dir = Path(out_dir)
    if out_dir.exists() and not force:
        raise OutputExistsError("exists already (use --force to overwrite)", out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; a report is for sharing
    try:
        report = dict(evaluation.report)
        pngs = all_plots(evaluation.samples, report["metrics"])
        report["plots"] = [f"plots/{k}" for k in pngs]
        (tmp / "plots").mkdir()
        for name, data in pngs.items():
            (tmp / "plots" / name).write_bytes(data)
        (tmp / "report.json").write_text(json.dumps(report, indent=2, allow_nan=False) + "\n")
        (tmp / "report.html").write_text(render_html(report, pngs), encoding="utf-8")
        if out_dir.exists():
            shutil.rmtree(out_dir)
        tmp.rename(out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def ratio_class(r) -> str:
    if r is None:
        return "na"
    if r < 0.67:
        return "below"
    if r <= 1.5:
        return "good"
    if r <= 3:
        return "fair"
    if r <= 10:
        return "poor"
    return "bad"


def _fmt(x) -> str:
    if x is None:
        return "–"
    if isinstance(x, float):
        if x == 0:
            return "0"
        return f"{x:.3g}" if abs(x) < 1e5 else f"{x:.3e}"
    return html.escape(str(x))


def _ratio_cell(r) -> str:
    return f'<td class="{ratio_class(r)}">{_fmt(r)}{"x" if r is not None else ""}</td>'


CSS = """
body{font-family:system-ui,sans-serif;margin:2em;max-width:1100px;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:13px}
th,td{border:1px solid #ccc;padding:3px 8px;text-align:right}
th{background:#f0f0f0} td.l{text-align:left}
.good{background:#c8efc8}.fair{background:#f5eaa6}.poor{background:#f7c98f}.bad{background:#f29c9c}
.na{background:#eee}.below{background:#bcd8f2}
img{max-width:100%;margin:0.5em 0;border:1px solid #ddd}
.note{color:#555;font-size:13px}
"""


def _tells_table(discriminator: dict) -> list[str]:
    """Each flow feature's AUC alone, one column per comparison, in the first one's order."""
    tells = {k: d["tells"] for k, d in discriminator.items() if d and d.get("tells")}
    if not tells:
        return []
    names = list(tells)
    h = ["<h3>Each feature alone (what gives a sample away)</h3><table><tr><th>feature</th>"
         + "".join(f"<th>{html.escape(k)}</th>" for k in names) + "</tr>"]
    for feature in tells[names[0]]:
        h.append(f"<tr><td class='l'>{html.escape(feature)}</td>"
                 + "".join(f"<td>{_fmt(tells[k].get(feature))}</td>" for k in names) + "</tr>")
    h.append("</table>")
    return h


def render_html(report: dict, pngs: dict[str, bytes]) -> str:
    cols = [k for k in ("synthetic", "floor", "baseline") if k in report["sizes"]]
    has_ratio = "floor" in cols
    h = [f"<!doctype html><html><head><meta charset='utf-8'><title>necst fidelity report"
         f"</title><style>{CSS}</style></head><body>", "<h1>necst fidelity report</h1>",
         f"<p>{html.escape(report['reference'])}.</p>"]
    if report.get("inputs"):
        h.append("<table>" + "".join(f"<tr><th>{html.escape(k)}</th><td class='l'>"
                                     f"{html.escape(str(v))}</td></tr>"
                                     for k, v in report["inputs"].items()) + "</table>")
    h.append("<h2>Samples</h2><table><tr><th>sample</th><th>packets</th><th>flows</th>"
             "<th>span (s)</th></tr>")
    for k, s in report["sizes"].items():
        h.append(f"<tr><td class='l'>{k}</td><td>{s['packets']:,}</td><td>{s['flows']:,}</td>"
                 f"<td>{_fmt(s['span_s'])}</td></tr>")
    h.append("</table>")
    if report.get("summary"):
        h.append("<h2>Summary</h2><table><tr><th>sample</th><th>median ratio to floor</th>"
                 "<th>metrics within 2x</th><th>beyond 10x</th><th>metrics with a ratio</th></tr>")
        for k, s in report["summary"].items():
            h.append(f"<tr><td class='l'>{k}</td>{_ratio_cell(s['median_ratio'])}"
                     f"<td>{s['within_2x']}</td><td>{s['beyond_10x']}</td>"
                     f"<td>{s['metrics_with_ratio']}</td></tr>")
        h.append("</table>")
    h.append("<h2>Metrics</h2><ul class='note'>" + "".join(
        f"<li>{html.escape(n)}</li>" for n in report.get("notes", [])) +
        "<li>Ratio colours: below 0.67x blue (closer than real is to itself), &le;1.5x green, "
        "&le;3x yellow, &le;10x orange, above red.</li></ul>")
    head = "<tr><th>metric</th><th>unit</th>" + "".join(f"<th>{c}</th>" for c in cols)
    if has_ratio:
        head += ("<th>synthetic / floor</th>" if "synthetic" in cols else "") + (
            "<th>baseline / floor</th>" if "baseline" in cols else "")
    h.append("<table>" + head + "<th>what</th></tr>")
    for r in report["metrics"]:
        row = f"<tr><td class='l'>{r['name']}</td><td class='l'>{html.escape(r['unit'])}</td>"
        row += "".join(f"<td>{_fmt(r.get(c))}</td>" for c in cols)
        if has_ratio:
            if "synthetic" in cols:
                row += _ratio_cell(r.get("ratio"))
            if "baseline" in cols:
                row += _ratio_cell(r.get("baseline_ratio"))
        row += f"<td class='l'>{html.escape(r['description'])}</td></tr>"
        h.append(row)
    h.append("</table>")
    h.append("<h2>TCP behaviour</h2><table><tr><th>sample</th><th>TCP flows</th>"
             "<th>open with handshake</th><th>FIN</th><th>RST</th><th>FIN or RST</th></tr>")
    for k, s in report["shares"].items():
        h.append(f"<tr><td class='l'>{k}</td><td>{_fmt(s.get('tcp_flows'))}</td>"
                 + "".join(f"<td>{_fmt(s.get(f'tcp_{x}_share'))}</td>"
                           for x in ("handshake", "fin", "rst", "fin_or_rst")) + "</tr>")
    h.append("</table><h2>Discriminator</h2><table><tr><th>reference vs</th><th>ROC AUC</th>"
             "<th>std over folds</th><th>flows per side</th></tr>")
    for k, d in report["discriminator"].items():
        if d:
            h.append(f"<tr><td class='l'>{k}</td><td>{_fmt(d['auc'])}</td>"
                     f"<td>{_fmt(d['auc_std'])}</td><td>{d['flows_per_side']:,}</td></tr>")
    h.append("</table>")
    h.extend(_tells_table(report["discriminator"]))
    h.append("<h2>Plots</h2>")
    for name, data in pngs.items():
        b64 = base64.b64encode(data).decode("ascii")
        h.append(f"<div><img alt='{html.escape(name)}' src='data:image/png;base64,{b64}'></div>")
    h.append("</body></html>")
    return "\n".join(h)
