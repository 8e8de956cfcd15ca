"""Every metric between a reference and another sample, and the report that sets each synthetic
figure beside the real-vs-real floor.

The floor answers "how far is real traffic from itself?": two real samples (a second capture,
or the later part of the same one) compared with the same reference. A synthetic metric near
1x its floor is as close to the reference as fresh real traffic is; 10x is not.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from necst.evaluate import metrics as m
from necst.evaluate.discriminator import discriminator_auc
from necst.evaluate.views import Sample, prepare


@dataclass(frozen=True)
class Metric:
    name: str
    group: str
    unit: str
    description: str


def _metric_table() -> list[Metric]:
    out = [
        Metric("src_ip_rank_jsd", "addresses", "nats",
               "NetShare popularity-rank JSD of source IPs (squared JS distance, natural log)"),
        Metric("dst_ip_rank_jsd", "addresses", "nats",
               "NetShare popularity-rank JSD of destination IPs (squared JS distance, natural log)"),
    ]
    labels = {"src_port": "source port (packets)", "dst_port": "destination port (packets)",
              "ip_proto": "IP protocol (packets; null = not IP)",
              "tcp_flags": "TCP flag combination (TCP packets)", "app": "application label (flows)"}
    for col, what in labels.items():
        out += [Metric(f"{col}_jsd", "fields", "nats", f"JSD of {what} histogram"),
                Metric(f"{col}_tv", "fields", "", f"total variation of {what} histogram"),
                Metric(f"{col}_hellinger", "fields", "", f"Hellinger distance of {what} histogram")]
    emds = [
        ("packet_length", "packets", "bytes", "packet length on the wire"),
        ("flow_gap_s", "timing", "s", "time gap between packets of one flow"),
        ("flow_gap_log10_s", "timing", "decades", "log10 of the time gap within a flow (gaps < 1 us at 1 us)"),
        ("flow_packets", "flows", "packets", "packets per flow"),
        ("flow_bytes", "flows", "bytes", "bytes per flow"),
        ("flow_duration_s", "flows", "s", "flow duration"),
        ("packets_per_s", "rates", "packets/s", "per-second packet counts (distribution of the values, quiet seconds included)"),
        ("bytes_per_s", "rates", "bytes/s", "per-second byte counts (distribution of the values)"),
        ("flows_per_s", "rates", "flows/s", "per-second new-flow counts (distribution of the values)"),
        ("arrival_s", "rates", "s", "arrival-time CDF, seconds since the first packet (NetShare)"),
        ("arrival_fraction", "rates", "", "arrival-time CDF as a fraction of each sample's span"),
        ("tcp_direction_changes", "tcp", "changes", "direction changes per TCP flow"),
    ]
    out += [Metric(f"{k}_emd", g, u, f"Wasserstein-1 of {d}") for k, g, u, d in emds]
    for share, what in (("handshake", "open with SYN / SYN-ACK / ACK"), ("fin", "carry a FIN"),
                        ("rst", "carry a RST"), ("fin_or_rst", "close with FIN or RST")):
        out.append(Metric(f"tcp_{share}_gap", "tcp", "share",
                          f"absolute difference in the share of TCP flows that {what}"))
    out.append(Metric("discriminator_auc", "discriminator", "AUC",
                      "cross-validated ROC AUC of gradient boosting on flow features, reference "
                      "vs other (0.5 = indistinguishable); its ratio uses max(AUC - 0.5, 0)"))
    return out


METRICS: list[Metric] = _metric_table()
METRIC_BY_NAME = {mt.name: mt for mt in METRICS}


def as_distance(name: str, value: float | None) -> float | None:
    """The number whose ratio to the floor is reported: the metric itself, except the AUC,
    whose distance from indistinguishable is max(AUC - 0.5, 0). Out-of-fold AUC a little below
    0.5 is what a classifier scores on samples it cannot tell apart (near-duplicates fall in
    training with the other label), not a sign of difference."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return max(value - 0.5, 0.0) if name == "discriminator_auc" else value


def compare_samples(ref: Sample, other: Sample, *, seed: int = 0,
                    discriminator: bool = True) -> tuple[dict, dict]:
    """All metrics between two prepared samples: ``(values, details)``. A metric whose input
    is missing on either side is NaN."""
    v: dict[str, float] = {mt.name: float("nan") for mt in METRICS}
    for col in ("src_ip", "dst_ip"):
        a, b = ref.categories.get(col), other.categories.get(col)
        if a is not None and b is not None and len(a) and len(b):
            v[f"{col}_rank_jsd"] = m.rank_jsd(a.to_numpy(), b.to_numpy())
    for col in ("src_port", "dst_port", "ip_proto", "tcp_flags", "app"):
        a, b = ref.categories.get(col), other.categories.get(col)
        if a is not None and b is not None and a.sum() > 0 and b.sum() > 0:
            for k, d in m.categorical_distances(a, b).items():
                v[f"{col}_{k}"] = d
    for mt in METRICS:
        if mt.name.endswith("_emd"):
            key = mt.name[: -len("_emd")]
            if key in ref.values and key in other.values:
                v[mt.name] = m.emd(ref.values[key], other.values[key])
            elif key in ref.weighted and key in other.weighted:
                v[mt.name] = m.emd(ref.weighted[key][0], other.weighted[key][0],
                                   ref.weighted[key][1], other.weighted[key][1])
    for share in ("handshake", "fin", "rst", "fin_or_rst"):
        key = f"tcp_{share}_share"
        if ref.shares.get("tcp_flows") and other.shares.get("tcp_flows"):
            v[f"tcp_{share}_gap"] = m.share_gap(ref.shares[key], other.shares[key])
    details = {"shares": {"reference": dict(ref.shares), "other": dict(other.shares)}}
    if discriminator and ref.flow_features is not None and other.flow_features is not None:
        d = discriminator_auc(ref.flow_features, other.flow_features, seed=seed)
        v["discriminator_auc"] = d["auc"]
        details["discriminator"] = d
    return v, details


def _tables(x):
    """(packets, flows) from a pair, or a packet table alone."""
    if isinstance(x, (tuple, list)):
        if len(x) != 2:
            raise ValueError("expected (packets, flows)")
        return x[0], x[1]
    return x, None


def compare(real_packets, real_flows, synth_packets, synth_flows, *, seed: int = 0,
            discriminator: bool = True) -> dict:
    """Every metric between a real and a synthetic sample, as ``{metric name: value}``.

    Tables are pyarrow Tables or pandas DataFrames (PacketTable / FlowTable columns); flows
    may be None (summed up from the packets' flow_id). Missing inputs give NaN.
    """
    ref = prepare(real_packets, real_flows, "real")
    other = prepare(synth_packets, synth_flows, "synthetic")
    return compare_samples(ref, other, seed=seed, discriminator=discriminator)[0]


def _clean(x):
    """JSON-safe: NaN and infinities become None, numpy scalars become Python numbers."""
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    if isinstance(x, (np.floating, float)):
        x = float(x)
        return x if math.isfinite(x) else None
    if isinstance(x, np.integer):
        return int(x)
    return x


def ratio(name: str, value, floor) -> float | None:
    """value / floor on the distance scale. Both 0: 1 (as close as real is to itself). Floor 0
    but value not: None (no finite ratio; read the raw numbers)."""
    a, b = as_distance(name, value), as_distance(name, floor)
    if a is None or b is None:
        return None
    if b == 0:
        return 1.0 if a == 0 else None
    return a / b


@dataclass
class Evaluation:
    """A fidelity report as data (``report``, JSON-ready) plus the prepared samples the plots
    draw from (``samples``: reference, synthetic, floor, baseline)."""

    report: dict
    samples: dict


def evaluate(real, synth=None, *, floor=None, split: float | None = None,
             baseline: str | None = None, seed: int = 0, discriminator: bool = True,
             labels: dict | None = None) -> Evaluation:
    """Score ``synth`` against ``real``, with the floor and baseline when asked.

    ``real``, ``synth`` and ``floor`` are ``(packets, flows)`` pairs (or packet tables alone).
    With ``split=f`` the real sample is cut by time: its first part (a fraction ``f`` of the
    packets) is the reference that synth and baseline are compared with, and its later part is
    the floor (reference vs later real traffic). Train the model on that first part only, so
    that the floor is held-out real traffic. ``baseline="marginals"`` also scores the
    independent-marginals generator drawn from the reference. ``synth`` may be None to score
    only the floor and the baseline (the bar a model has to clear).
    """
    from necst.evaluate.sampling import marginals_baseline, split_by_time

    if floor is not None and split is not None:
        raise ValueError("give a floor sample or a split fraction, not both")
    if baseline not in (None, "marginals"):
        from necst.errors import NecstError

        raise NecstError(f"unknown baseline {baseline!r} (known: marginals)")
    if synth is None and baseline is None and floor is None and split is None:
        raise ValueError("nothing to compare REAL with: give synth, a floor, a split or a baseline")
    real_p, real_f = _tables(real)
    floor_p = floor_f = None
    if split is not None:
        (real_p, real_f), (floor_p, floor_f) = split_by_time(real_p, real_f, split)
    elif floor is not None:
        floor_p, floor_f = _tables(floor)
    samples = {"reference": prepare(real_p, real_f, "real")}
    if synth is not None:
        samples["synthetic"] = prepare(*_tables(synth), "synthetic")
    if floor_p is not None:
        samples["floor"] = prepare(floor_p, floor_f, "floor")
    if baseline == "marginals":
        bp, bf = marginals_baseline(real_p, real_f, seed=seed)
        samples["baseline"] = prepare(bp, bf, "baseline")

    ref = samples["reference"]
    values, details = {}, {}
    for key in ("synthetic", "floor", "baseline"):
        if key in samples:
            values[key], details[key] = compare_samples(ref, samples[key], seed=seed,
                                                        discriminator=discriminator)
    rows = []
    for mt in METRICS:
        row = {"name": mt.name, "group": mt.group, "unit": mt.unit, "description": mt.description}
        for key in values:
            row[key] = values[key][mt.name]
        if "floor" in values:
            if "synthetic" in values:
                row["ratio"] = ratio(mt.name, row["synthetic"], row["floor"])
            if "baseline" in values:
                row["baseline_ratio"] = ratio(mt.name, row["baseline"], row["floor"])
        rows.append(row)
    report = {
        "reference": _describe_reference(split, floor is not None),
        "inputs": dict(labels or {}),
        "seed": seed,
        "sizes": {k: {"packets": s.n_packets, "flows": s.n_flows, "span_s": s.span_s}
                  for k, s in samples.items()},
        "shares": {"reference": ref.shares,
                   **{k: details[k]["shares"]["other"] for k in details}},
        "discriminator": {k: details[k].get("discriminator") for k in details},
        "metrics": rows,
        "summary": _summary(rows),
        "notes": NOTES + ([SPLIT_NOTE] if split is not None else []),
    }
    if split is not None:
        report["split"] = split
    return Evaluation(report=_clean(report), samples=samples)


def fidelity_report(real, synth=None, *, floor=None, split: float | None = None,
                    baseline: str | None = None, seed: int = 0,
                    discriminator: bool = True) -> dict:
    """The report as a JSON-ready dict (see ``evaluate``; ``write_report`` saves it)."""
    return evaluate(real, synth, floor=floor, split=split, baseline=baseline, seed=seed,
                    discriminator=discriminator).report


NOTES = [
    "Every metric is a distance from the reference (0 = identical). JSD is the squared "
    "Jensen-Shannon distance in nats (scipy's jensenshannon, natural log, squared: NetShare's "
    "definition, at most ln 2 = 0.693).",
    "Ratio = metric / floor. Below 1 means closer to the reference than held-out real traffic "
    "is: expected of the marginals baseline, which is drawn from the reference itself, and a "
    "sign of memorisation in a model trained on the reference.",
    "Per-second packets, bytes and new flows are compared as distributions of the per-second "
    "values (quiet seconds included), not aligned in time, since samples differ in start and "
    "length. arrival_s_emd (NetShare's) grows with the difference in span; "
    "arrival_fraction_emd compares the shape of activity over each sample's own span.",
    "TCP shares are read from packets: a handshake is a flow whose first three packets are "
    "SYN (initiator), SYN-ACK (responder), ACK (initiator).",
]
SPLIT_NOTE = ("With a split, the floor is the smaller, later part: sampling noise and drift over "
              "time both raise it, so it is the distance of fresh real traffic, not zero.")


def _describe_reference(split, has_floor) -> str:
    if split is not None:
        return (f"reference = the first {split:.0%} of REAL's packets by time (flows kept whole); "
                f"floor = its last {1 - split:.0%} compared with the reference; synthetic and "
                f"baseline are compared with the same reference")
    if has_floor:
        return "reference = REAL; floor = the second real sample compared with REAL"
    return "reference = REAL; no floor given (use --floor or --split for ratios)"


def _summary(rows: list[dict]) -> dict:
    out = {}
    for key, col in (("synthetic", "ratio"), ("baseline", "baseline_ratio")):
        r = [row.get(col) for row in rows if row.get(col) is not None]
        if r:
            r = np.asarray(r, dtype=np.float64)
            out[key] = {"median_ratio": float(np.median(r)), "metrics_with_ratio": int(len(r)),
                        "within_2x": int((r <= 2).sum()), "beyond_10x": int((r > 10).sum())}
    return out
