"""The window stream's state stays bounded on a long stream and gives the windows of one pass."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from necst.detect.features import window_features
from necst.detect.windows import WINDOW_FEATURES, WindowStream, stream_windows
from necst.errors import NecstError

T0 = 1_700_000_000 * 10**9


def rotating_hosts(seconds: int = 400, rate: float = 40.0, seed: int = 0) -> pa.Table:
    """UDP and TCP chatter whose hosts change every 5 s, and a few servers that come back now and then."""
    rng = np.random.default_rng(seed)
    n = int(seconds * rate)
    ts = np.sort(rng.uniform(0, seconds, n))
    epoch = (ts // 5).astype(int)
    host = np.array([f"10.{e // 250}.{e % 250}.{h}" for e, h in zip(epoch, rng.integers(1, 6, n))], dtype=object)
    back = rng.random(n) < 0.2  # a returning server: idle gaps both shorter and longer than the timeout
    srv = np.where(back, np.array(["192.168.0.1", "192.168.0.2"], dtype=object)[rng.integers(0, 2, n)],
                   np.array([f"172.16.{e % 200}.9" for e in epoch], dtype=object))
    out = rng.random(n) < 0.5
    sport = np.where(back, 5000, 40000 + rng.integers(0, 3, n))
    proto = np.where(rng.random(n) < 0.3, 6, 17)
    return pa.table({
        "ts_ns": pa.array(T0 + (ts * 1e9).astype(np.int64)),
        "wire_len": pa.array(rng.integers(60, 600, n).astype(np.uint32)),
        "src_ip": pa.array(np.where(out, host, srv)),
        "dst_ip": pa.array(np.where(out, srv, host)),
        "ip_proto": pa.array(proto.astype(np.uint8)),
        "src_port": pa.array(np.where(out, sport, 53).astype(np.uint16)),
        "dst_port": pa.array(np.where(out, 53, sport).astype(np.uint16)),
        "tcp_flags": pa.array(np.where(proto == 6, 0x002, 0).astype(np.uint16)),
        "file_index": pa.array(np.zeros(n, np.uint16)),
    })


def brute_force_new_flows(t: pa.Table, idle_s: float | None) -> np.ndarray:
    """Per packet: a bare SYN, or a non-TCP packet whose 5-tuple was silent for longer than ``idle_s``."""
    df = t.to_pandas()
    ends = [tuple(sorted([(a, b), (c, d)])) for a, b, c, d in zip(df.src_ip.astype(object), df.src_port,
                                                                  df.dst_ip.astype(object), df.dst_port)]
    flow = pd.Series([(e, p) for e, p in zip(ends, df.ip_proto)])
    gap = df.ts_ns.groupby(flow.values).diff()
    new = gap.isna() if idle_s is None else gap.isna() | (gap > idle_s * 1e9)
    tcp = df.ip_proto == 6
    return np.where(tcp, (df.tcp_flags & 0x012) == 0x002, new)


@pytest.mark.parametrize("idle_s", [10.0, None])
def test_state_stays_bounded_and_windows_equal_one_pass(idle_s):
    t = rotating_hosts()
    whole = window_features(t, flow_idle_s=idle_s)  # one pass over all packets: nothing expired on the way
    s = WindowStream(flow_idle_s=idle_s)
    s.ip_map_min = 64
    blocks, ip_sizes, flow_sizes = [], [], []
    for lo in range(0, t.num_rows, 500):
        blocks.append(s.feed(t.slice(lo, 500)))
        ip_sizes.append(len(s._ip))
        flow_sizes.append(len(s._known))
    blocks.append(s.flush())
    X = np.vstack([b.X for b in blocks])
    np.testing.assert_array_equal(np.concatenate([b.start_ns for b in blocks]), whole.meta.start_ns.to_numpy())
    np.testing.assert_allclose(X, whole.X, rtol=1e-12, atol=1e-12)
    distinct_ips = len(set(t.column("src_ip").to_pylist()) | set(t.column("dst_ip").to_pylist()))
    assert distinct_ips > 400
    # pruned to the tail's addresses whenever past ip_map_min (the tail's few addresses never double it)
    assert max(ip_sizes) <= s.ip_map_min
    # per window, new flows match the definition, packet by packet
    new = brute_force_new_flows(t, idle_s)
    ts = t.column("ts_ns").to_numpy()
    j = WINDOW_FEATURES.index("new_flows_per_s")
    for i in np.random.default_rng(0).choice(len(whole), 40, replace=False):
        w = whole.meta.iloc[i]
        assert whole.X[i, j] == new[(ts >= w.start_ns) & (ts < w.end_ns)].sum()
    if idle_s is None:
        assert flow_sizes[-1] == max(flow_sizes) > 1000  # every non-TCP flow ever seen
    else:
        assert max(flow_sizes) < 150  # only the flows of the last 10 s


def test_state_restarts_with_each_file_and_idle_timeout_is_checked():
    t = rotating_hosts(seconds=30)
    b = t.set_column(t.schema.get_field_index("file_index"), "file_index",
                     pa.array(np.ones(t.num_rows, np.uint16)))
    both = pa.concat_tables([t, b])
    one = window_features(t)
    two = window_features(both)
    np.testing.assert_allclose(two.X, np.vstack([one.X, one.X]))  # the same packets in a second file: same windows
    s = stream_windows([both.slice(lo, 300) for lo in range(0, both.num_rows, 300)])
    np.testing.assert_allclose(s.X, two.X)
    with pytest.raises(NecstError, match="idle timeout"):
        WindowStream(flow_idle_s=0)
