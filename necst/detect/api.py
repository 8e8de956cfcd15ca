"""The calls behind `necst detect`: capture paths in, a detector bundle or a report out."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from necst.errors import NecstError, OutputExistsError


def train(captures: Sequence[str | Path], out: str | Path, mode: str = "window", detector: str = "autoencoder",
          force: bool = False, **params):
    from necst.detect.detector import DETECTORS
    from necst.detect.io import read_packets

    if Path(out).exists() and not force:
        raise OutputExistsError("exists already (use --force to overwrite)", out)
    if detector not in DETECTORS:
        raise NecstError(f"unknown detector {detector!r}; choose one of {', '.join(DETECTORS)}")
    if not captures:
        raise NecstError("no normal captures given to train on")
    tables = [read_packets(p) for p in captures]
    det = DETECTORS[detector](mode=mode, **params)
    units = det.features(tables)
    if len(units) == 0:
        raise NecstError(f"the training captures give no {mode} units (no usable packets)")
    det.fit(None, units=units)
    det.save(out, force=force)
    return det


def score_table(packets, det, file: str | Path = "<table>"):
    """(report dict, scored units) for a PacketTable."""
    from necst.detect.report import build_report

    scored = det.score(packets)
    return build_report(scored, det, file, packets=int(packets.num_rows)), scored


def score_capture(capture: str | Path, detector: str | Path, out: str | Path, force: bool = False) -> dict:
    from necst.detect.detector import load
    from necst.detect.io import iter_packets, read_packets
    from necst.detect.report import write_report

    out = Path(out)
    for p in (out, out.with_suffix(".csv")):
        if p.exists() and not force:
            raise OutputExistsError("exists already (use --force to overwrite)", p)
    det = load(detector)
    warnings: list = []
    if det.mode == "window":  # streamed: no whole capture in memory, no pandas, reading overlaps
        from necst.detect.features import window_meta
        from necst.detect.report import build_report
        from necst.detect.windows import INPUT_COLUMNS, WINDOW_FEATURES, stream_windows

        block = stream_windows(iter_packets(capture, warnings=warnings, columns=INPUT_COLUMNS), **det._fparams())
        scored = det.score_columns(window_meta(block), block.X, WINDOW_FEATURES)
        rep = build_report(scored, det, capture, packets=block.packets)
    else:
        from necst.detect.windows import INPUT_COLUMNS

        packets = read_packets(capture, warnings=warnings, columns=(*INPUT_COLUMNS, "flow_id"))
        rep, scored = score_table(packets, det, capture)
    rep["warnings"] = warnings
    write_report(rep, scored, out, force=force)
    return rep
