"""Unit scores carried down to packets, so window, flow and packet modes can be compared.

Labels of real captures are per packet (which capture a packet came from); windows and flows
are the detectors' own units and differ between modes. Every mode scores every packet once it
says how a packet inherits its unit's score: a packet in window mode takes the largest score of
the windows that hold it (it was seen as suspicious if any view of it was), in flow mode its
flow's score, in packet mode its own. Whole-array numpy, no loop per packet.
"""
from __future__ import annotations

import numpy as np


def window_packet_scores(ts_ns: np.ndarray, start_ns: np.ndarray, end_ns: np.ndarray, score: np.ndarray,
                         packet_file: np.ndarray | None = None, window_file: np.ndarray | None = None) -> np.ndarray:
    """Per packet, the maximum ``score`` over windows ``[start_ns, end_ns)`` of its file holding its ``ts_ns``.

    Windows of one file must be sorted by start and all of one width (as :class:`WindowStream`
    emits them), so the windows holding a packet are a contiguous run. A packet no window holds
    gets -inf.
    """
    ts_ns = np.asarray(ts_ns, dtype=np.int64)
    out = np.full(len(ts_ns), -np.inf)
    if len(ts_ns) == 0 or len(start_ns) == 0:
        return out
    score = np.asarray(score, dtype=np.float64)
    if packet_file is None or window_file is None:
        groups = [(np.arange(len(ts_ns)), np.arange(len(start_ns)))]
    else:
        packet_file, window_file = np.asarray(packet_file), np.asarray(window_file)
        groups = [(np.flatnonzero(packet_file == f), np.flatnonzero(window_file == f))
                  for f in np.unique(packet_file)]
    for prow, wrow in groups:
        if len(prow) == 0 or len(wrow) == 0:
            continue
        s, e, sc, t = start_ns[wrow], end_ns[wrow], score[wrow], ts_ns[prow]
        if len(s) > 1 and (np.any(s[1:] < s[:-1]) or np.any(e[1:] < e[:-1])):
            raise ValueError("windows must be sorted by start and of one width")
        lo = np.searchsorted(e, t, side="right")  # first window ending after the packet
        hi = np.searchsorted(s, t, side="right")  # past the last window starting at or before it
        best = np.full(len(t), -np.inf)
        span = int((hi - lo).max(initial=0))
        for j in range(span):  # span = windows per packet (width / stride), a handful
            idx = lo + j
            ok = idx < hi
            best[ok] = np.maximum(best[ok], sc[idx[ok]])
        out[prow] = best
    return out


def unit_packet_scores(packet_unit: np.ndarray, score: np.ndarray) -> np.ndarray:
    """Per packet, the score of its unit (flow mode: ``Units.packet_unit`` names each row's flow)."""
    return np.asarray(score, dtype=np.float64)[np.asarray(packet_unit, dtype=np.int64)]


def row_packet_scores(rows: np.ndarray, score: np.ndarray, n_packets: int) -> np.ndarray:
    """Per packet, its own score (packet mode: unit ``i`` is input row ``rows[i]``)."""
    out = np.full(n_packets, -np.inf)
    out[np.asarray(rows, dtype=np.int64)] = score
    return out
