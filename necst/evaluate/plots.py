"""The report's figures as PNG bytes (matplotlib, Agg backend, imported only here)."""
from __future__ import annotations

import io

import numpy as np

from necst.evaluate.views import MIN_LOG_GAP_S
from necst.schema import TCP_FLAG_BITS

STYLE = {  # sample -> (label, colour, line style)
    "reference": ("real (reference)", "black", "-"),
    "synthetic": ("synthetic", "tab:orange", "-"),
    "floor": ("real (floor)", "tab:blue", "--"),
    "baseline": ("marginals baseline", "tab:gray", ":"),
}
ECDFS = [  # value key, title, x label, log x
    ("packet_length", "Packet length", "bytes on the wire", False),
    ("flow_gap_s", "Time gap within a flow", "seconds (gaps < 1 us at 1 us)", True),
    ("flow_packets", "Packets per flow", "packets", True),
    ("flow_bytes", "Bytes per flow", "bytes", True),
    ("flow_duration_s", "Flow duration", "seconds (0 at 1 us)", True),
]
MAX_POINTS = 4000  # an ECDF drawn from this many quantiles looks the same as from all values


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    _plt().close(fig)
    return buf.getvalue()


def _ecdf_points(v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    v = np.sort(v[np.isfinite(v)])
    if len(v) > MAX_POINTS:
        q = np.linspace(0, 1, MAX_POINTS)
        return np.quantile(v, q), q
    return v, np.arange(1, len(v) + 1) / len(v)


def ecdf_plot(samples: dict, key: str, title: str, xlabel: str, logx: bool) -> bytes | None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.6))
    drawn = False
    for name, s in samples.items():
        v = s.values.get(key)
        if v is None or not np.isfinite(v).any():
            continue
        v = np.asarray(v, dtype=np.float64)
        if logx:
            v = np.maximum(v, MIN_LOG_GAP_S if key.endswith("_s") else 1.0)
        x, y = _ecdf_points(v)
        label, colour, ls = STYLE[name]
        ax.step(x, y, where="post", color=colour, linestyle=ls, label=f"{label} (n={len(v):,})")
        drawn = True
    if not drawn:
        plt.close(fig)
        return None
    if logx:
        ax.set_xscale("log")
    ax.set(title=title, xlabel=xlabel, ylabel="fraction <= x", ylim=(0, 1.01))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    return _png(fig)


def throughput_plot(samples: dict, max_bins: int = 400) -> bytes:
    plt = _plt()
    fig, axes = plt.subplots(3, 1, figsize=(8, 7), sharex=True)
    span = max(s.span_s for s in samples.values())
    width = max(1, int(np.ceil(span / max_bins)))
    for ax, key, label in zip(axes, ("packets_per_s", "bytes_per_s", "flows_per_s"),
                              ("packets/s", "bytes/s", "new flows/s")):
        for name, s in samples.items():
            t, w = s.timeline.get(key, (None, None))
            if t is None or not np.isfinite(t).any():
                continue
            ok = np.isfinite(t)
            n = int(np.floor(s.span_s / width)) + 1
            idx = np.clip((t[ok] // width).astype(np.int64), 0, n - 1)
            rate = np.bincount(idx, weights=None if w is None else w[ok], minlength=n) / width
            lab, colour, ls = STYLE[name]
            ax.plot(np.arange(n) * width, rate, color=colour, linestyle=ls, label=lab, lw=1)
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].set_title(f"Throughput over time (mean over {width}-s bins)")
    axes[0].legend(fontsize=8, loc="upper right")
    axes[-1].set_xlabel("seconds since the sample's first packet")
    return _png(fig)


def flag_name(value) -> str:
    bits = [k for k, b in TCP_FLAG_BITS.items() if int(value) & b]
    return "|".join(bits) if bits else "none"


def tcp_flags_plot(samples: dict, top: int = 12) -> bytes | None:
    plt = _plt()
    shares = {}
    for name, s in samples.items():
        c = s.categories.get("tcp_flags")
        if c is not None and c.sum() > 0:
            shares[name] = c / c.sum()
    if not shares:
        return None
    ref = shares.get("reference", next(iter(shares.values())))
    order = list(ref.sort_values(ascending=False).index[:top])
    for v in shares.values():  # flag combinations the other samples use a lot, too
        order += [k for k in v.sort_values(ascending=False).index[:3] if k not in order]
    fig, ax = plt.subplots(figsize=(8, 3.8))
    width = 0.8 / len(shares)
    x = np.arange(len(order))
    for i, (name, v) in enumerate(shares.items()):
        lab, colour, _ = STYLE[name]
        ax.bar(x + i * width, v.reindex(order, fill_value=0).to_numpy(), width, label=lab,
               color=colour, alpha=0.8)
    ax.set_xticks(x + width * (len(shares) - 1) / 2, [flag_name(k) for k in order], rotation=45,
                  ha="right", fontsize=8)
    ax.set(title="TCP flag combinations", ylabel="share of TCP packets")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, axis="y")
    return _png(fig)


def ratio_plot(rows: list[dict]) -> bytes | None:
    plt = _plt()
    rows = [r for r in rows if r.get("ratio") is not None or r.get("baseline_ratio") is not None]
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(7, 0.22 * len(rows) + 1.2))
    y = np.arange(len(rows))
    for key, colour, off in (("ratio", "tab:orange", -0.2), ("baseline_ratio", "tab:gray", 0.2)):
        vals = np.array([r.get(key) if r.get(key) is not None else np.nan for r in rows], float)
        if np.isfinite(vals).any():
            ax.barh(y + off, np.maximum(vals, 1e-3), height=0.4, color=colour,
                    label="synthetic" if key == "ratio" else "marginals baseline")
    ax.axvline(1, color="black", lw=1)
    ax.set_xscale("log")
    ax.set_yticks(y, [r["name"] for r in rows], fontsize=7)
    ax.invert_yaxis()
    ax.set(title="Ratio to the real-vs-real floor (1 = as close as real is to itself)",
           xlabel="metric / floor (log)")
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(alpha=0.3, axis="x")
    return _png(fig)


def all_plots(samples: dict, rows: list[dict]) -> dict[str, bytes]:
    """{file name: PNG bytes} for every figure that has data."""
    out = {}
    for key, title, xlabel, logx in ECDFS:
        png = ecdf_plot(samples, key, title, xlabel, logx)
        if png is not None:
            out[f"ecdf_{key}.png"] = png
    out["throughput.png"] = throughput_plot(samples)
    png = tcp_flags_plot(samples)
    if png is not None:
        out["tcp_flags.png"] = png
    png = ratio_plot(rows)
    if png is not None:
        out["ratios.png"] = png
    return out
