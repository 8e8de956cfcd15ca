"""Features: raw per-packet / per-flow columns checked against a slow reference, and the
FeatureSpec round trip (fit -> transform -> inverse) on hand-made and random tables."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from necst.errors import NecstError
from necst.process.features import (
    COMMON_PORTS, FLOW_FEATURES, PACKET_FEATURES, PORT_RANGES, FeatureSpec, categorical, continuous, flag_bits, flag_names,
    flow_features, flow_spec, packet_features, packet_spec, port_bucket,
)
from necst.schema import FLOW_SCHEMA, PACKET_SCHEMA

SEC = 1_000_000_000


def make_packets(rows: list[dict]) -> pd.DataFrame:
    """A PacketTable-like frame: the columns packet_features reads, nulls where absent."""
    cols = ["ts_ns", "wire_len", "ip_proto", "src_port", "dst_port", "tcp_flags", "payload_len",
            "app", "flow_id", "direction", "flow_pos", "flow_iat_ns"]
    return pd.DataFrame({c: [r.get(c) for r in rows] for c in cols})


def handshake_table() -> pd.DataFrame:
    return make_packets([
        dict(ts_ns=0, wire_len=74, ip_proto=6, src_port=51000, dst_port=443, tcp_flags=0x002,
             payload_len=0, app="tls", flow_id=0, direction=0, flow_pos=0, flow_iat_ns=0),
        dict(ts_ns=SEC // 2, wire_len=1514, ip_proto=6, src_port=443, dst_port=51000,
             tcp_flags=0x012, payload_len=1448, app="tls", flow_id=0, direction=1, flow_pos=1,
             flow_iat_ns=SEC // 2),
        dict(ts_ns=SEC, wire_len=66, ip_proto=6, src_port=51000, dst_port=443, tcp_flags=0x010,
             payload_len=0, app="tls", flow_id=0, direction=0, flow_pos=2, flow_iat_ns=SEC // 2),
        dict(ts_ns=3 * SEC, wire_len=100, ip_proto=17, src_port=5353, dst_port=5353,
             payload_len=58, app="mdns", flow_id=1, direction=0, flow_pos=0, flow_iat_ns=0),
        dict(ts_ns=4 * SEC, wire_len=42, flow_id=2, direction=0, flow_pos=0, flow_iat_ns=0),
        dict(ts_ns=70 * SEC, wire_len=66, ip_proto=6, src_port=51000, dst_port=443,
             tcp_flags=0x011, payload_len=0, app="tls", flow_id=0, direction=0, flow_pos=3,
             flow_iat_ns=69 * SEC),
    ])


# ------------------------------------------------------------------------------------------
# raw packet features
# ------------------------------------------------------------------------------------------

def _before(df: pd.DataFrame, i: int) -> pd.DataFrame:
    """Rows of i's flow up to and including i, in (timestamp, capture order) order."""
    flow, t = df.flow_id.iloc[i], df.ts_ns.iloc[i]
    pos = np.arange(len(df))
    return df[(df.flow_id == flow) & ((df.ts_ns < t) | ((df.ts_ns == t) & (pos <= i)))]


def reference_windows(df: pd.DataFrame, window_ns: int):
    """Per-packet loop: bytes and packets of the same flow in (t - w, t], up to the packet."""
    b, p = [], []
    for i in range(len(df)):
        rows = _before(df, i)
        rows = rows[rows.ts_ns > df.ts_ns.iloc[i] - window_ns]
        b.append(int(rows.wire_len.sum()))
        p.append(len(rows))
    return b, p


def reference_rate(df: pd.DataFrame):
    out = []
    for i in range(len(df)):
        rows = _before(df, i)
        elapsed = (df.ts_ns.iloc[i] - df[df.flow_id == df.flow_id.iloc[i]].ts_ns.min()) / 1e9
        out.append(rows.wire_len.sum() / elapsed if elapsed > 0 else 0.0)
    return out


def test_handshake_features_by_hand():
    f = packet_features(handshake_table())
    assert list(f.kind) == ["tcp", "tcp", "tcp", "udp", "noflow", "tcp"]
    assert list(f.flag_combo) == ["SYN", "SYN+ACK", "ACK", "na", "na", "FIN+ACK"]
    assert list(f.src_port) == ["49152-65535", "443", "49152-65535", "5353", "none",
                                "49152-65535"]
    assert list(f.app) == ["tls", "tls", "tls", "mdns", "unknown", "tls"]
    assert list(f.hdr_len) == [74, 66, 66, 42, 42, 66]
    assert list(f.payload_len) == [0, 1448, 0, 58, 0, 0]
    assert list(f.gap_s) == [0.0, 0.5, 0.5, 0.0, 0.0, 69.0]
    # (0, 1 s] holds the SYN-ACK and the ACK, not the SYN at exactly t - 1 s
    assert list(f.bytes_1s) == [74, 1588, 1580, 100, 42, 66]
    assert list(f.pkts_1s) == [1, 2, 2, 1, 1, 1]
    assert list(f.bytes_60s) == [74, 1588, 1654, 100, 42, 66]
    assert list(f.pkts_60s) == [1, 2, 3, 1, 1, 1]
    assert f.rate_Bps.tolist() == pytest.approx([0.0, 1588 / 0.5, 1654 / 1.0, 0.0, 0.0, 1720 / 70])


def test_row_order_and_index_are_the_inputs():
    df = handshake_table().iloc[[5, 3, 0, 4, 2, 1]]
    df.index = [10, 11, 12, 13, 14, 15]
    f = packet_features(df)
    assert list(f.index) == [10, 11, 12, 13, 14, 15]
    g = packet_features(handshake_table())
    pd.testing.assert_frame_equal(f.reset_index(drop=True),
                                  g.iloc[[5, 3, 0, 4, 2, 1]].reset_index(drop=True),
                                  check_categorical=False)


def test_nullable_integer_columns_are_read():
    df = handshake_table()
    for c in ("src_port", "dst_port", "tcp_flags", "payload_len", "ip_proto"):
        df[c] = df[c].astype("UInt16")
    pd.testing.assert_frame_equal(packet_features(df), packet_features(handshake_table()),
                                  check_categorical=False)


def test_arrow_table_gives_the_same_features():
    df = handshake_table()
    fields = [PACKET_SCHEMA.field(c) for c in df.columns]
    table = pa.Table.from_pandas(df, schema=pa.schema(fields), preserve_index=False)
    pd.testing.assert_frame_equal(packet_features(table), packet_features(df),
                                  check_categorical=False)


packet_rows = st.lists(
    st.fixed_dictionaries({
        "flow_id": st.integers(0, 3),
        "ts_ns": st.integers(0, 130 * SEC) | st.sampled_from([0, SEC, 60 * SEC, 61 * SEC]),
        "wire_len": st.integers(40, 1600),
        "direction": st.integers(0, 1),
    }),
    min_size=1, max_size=25,
)


@settings(max_examples=40, deadline=None)
@given(packet_rows)
def test_windows_and_rate_match_a_per_packet_reference(rows):
    df = make_packets([dict(r, ip_proto=6, src_port=40000, dst_port=80, tcp_flags=0x10,
                            payload_len=0, app="http", flow_pos=0, flow_iat_ns=0) for r in rows])
    f = packet_features(df)
    for w in (1, 60):
        b, p = reference_windows(df, w * SEC)
        assert f[f"bytes_{w}s"].tolist() == b
        assert f[f"pkts_{w}s"].tolist() == p
    assert f.rate_Bps.tolist() == pytest.approx(reference_rate(df), rel=1e-12)


label_rows = st.lists(st.fixed_dictionaries({
    "ip_proto": st.none() | st.sampled_from([1, 6, 17, 47]),
    "src_port": st.none() | st.integers(0, 65535),
    "dst_port": st.none() | st.sampled_from([22, 80, 443, 1883, 5353, 8080, 40000, 60000]),
    "tcp_flags": st.none() | st.integers(0, 511),
    "app": st.none() | st.sampled_from(["dns", "http"]),
}), min_size=1, max_size=30)


@settings(max_examples=40, deadline=None)
@given(label_rows)
def test_labels_match_row_by_row_rules(rows):
    df = make_packets([dict(r, ts_ns=i, wire_len=60, payload_len=0, flow_id=i, direction=0,
                            flow_pos=0, flow_iat_ns=0) for i, r in enumerate(rows)])
    f = packet_features(df)
    for r, kind, combo, sp, dp, app in zip(rows, f.kind, f.flag_combo, f.src_port, f.dst_port,
                                           f.app):
        ports = r["src_port"] is not None and r["dst_port"] is not None
        want = {6: "tcp", 17: "udp"}.get(r["ip_proto"], "noflow") if ports else "noflow"
        assert kind == want
        assert combo == (flag_names(r["tcp_flags"] or 0) if want == "tcp" else "na")
        assert (sp, dp) == (port_bucket(r["src_port"]), port_bucket(r["dst_port"]))
        assert app == (r["app"] or "unknown")


def test_no_python_loop_over_packets_on_large_input():
    # 20k packets in one flow at 1 ms spacing: 1 s window holds 1000 packets once warmed up
    n = 20_000
    df = make_packets([])
    df = pd.DataFrame({
        "ts_ns": np.arange(n, dtype=np.int64) * 1_000_000, "wire_len": np.full(n, 100),
        "ip_proto": 17, "src_port": 1234, "dst_port": 53, "tcp_flags": None,
        "payload_len": 50, "app": "dns", "flow_id": 0, "direction": 0,
        "flow_pos": np.arange(n), "flow_iat_ns": 1_000_000,
    })
    f = packet_features(df)
    assert f.pkts_1s.iloc[-1] == 1000 and f.bytes_60s.iloc[-1] == 100 * n
    assert f.pkts_1s.iloc[5] == 6


def test_flag_names_round_trip_all_bit_patterns():
    for bits in range(512):
        assert flag_bits(flag_names(bits)) == bits
    assert flag_names(0x018) == "PSH+ACK" and flag_bits("na") is None
    with pytest.raises(NecstError):
        flag_bits("SYN+BOGUS")


def test_port_buckets():
    assert port_bucket(22) == "22" and port_bucket(1023) == "1023"
    assert port_bucket(1883) == "1883" and 1883 in COMMON_PORTS
    assert port_bucket(1024) == "1024-32767" and port_bucket(32768) == "32768-49151"
    assert port_bucket(60000) == "49152-65535" and port_bucket(None) == "none"
    for label, (lo, hi) in PORT_RANGES.items():
        assert port_bucket(lo) == label and port_bucket(hi) == label


def test_empty_table_gives_empty_features():
    f = packet_features(PACKET_SCHEMA.empty_table())
    assert len(f) == 0 and list(f.columns[2:]) == list(PACKET_FEATURES)


def test_packet_features_refuses_bad_tables():
    bad = handshake_table()
    bad.loc[0, "dst_port"] = 70_000
    with pytest.raises(NecstError, match="outside"):
        packet_features(bad)

    with pytest.raises(NecstError, match="lacks columns"):
        packet_features(pd.DataFrame({"ts_ns": [1]}))
    bad = handshake_table()
    bad.loc[0, "payload_len"] = 10_000
    with pytest.raises(NecstError, match="payload_len"):
        packet_features(bad)


# ------------------------------------------------------------------------------------------
# FeatureSpec
# ------------------------------------------------------------------------------------------

def assert_round_trip(spec: FeatureSpec, df: pd.DataFrame, back: pd.DataFrame, exact: bool):
    """Integers and categories equal; seconds within 1 µs (exact) or the float32 bound."""
    err = spec.float32_error()
    for c in spec.columns:
        name = c["name"]
        if c["type"] == "categorical":
            assert back[name].tolist() == df[name].tolist(), name
        elif c["integer"] and (exact or err[name] < 0.5):
            assert back[name].tolist() == df[name].astype(np.int64).tolist(), name
        else:
            tol = 1e-6 if exact else err[name] + 1e-9 * (1 + abs(df[name]).max())
            np.testing.assert_allclose(back[name].to_numpy(), df[name].to_numpy(), rtol=0,
                                       atol=tol, err_msg=name)


def test_packet_spec_round_trip_on_hand_made_table():
    f = packet_features(handshake_table())
    spec = packet_spec().fit(f)
    X = spec.transform(f)
    assert X.dtype == np.float32 and X.min() >= 0 and X.max() <= 1
    assert_round_trip(spec, f, spec.inverse_transform(spec.transform(f, dtype=np.float64)), True)
    assert_round_trip(spec, f, spec.inverse_transform(X), False)
    # every categorical block is one-hot
    for b in spec.blocks:
        if b.kind == "categorical":
            assert np.all(X[:, b.slice].sum(axis=1) == 1)
    assert spec.continuous_slice == slice(0, 10)
    assert spec.blocks[-1].name == "direction" and spec.blocks[-1].categories == (0, 1, "other")
    assert spec.blocks[-1].slice.stop == X.shape[1]
    names = spec.get_feature_names_out()
    assert len(names) == X.shape[1] and names[0] == "wire_len" and "kind=tcp" in names
    assert names[spec.blocks[-1].slice][-1] == "direction=other"


def test_json_round_trip_behaves_identically():
    f = packet_features(handshake_table())
    spec = packet_spec().fit(f)
    text = spec.to_json()
    json.loads(text)  # plain JSON
    again = FeatureSpec.from_json(text)
    assert again.to_json() == text and again.blocks == spec.blocks
    X = spec.transform(f)
    assert np.array_equal(again.transform(f), X)
    noisy = np.random.default_rng(0).random(X.shape).astype(np.float32)
    pd.testing.assert_frame_equal(again.inverse_transform(noisy), spec.inverse_transform(noisy))
    unfitted = FeatureSpec.from_json(packet_spec().to_json())
    with pytest.raises(NecstError, match="not fitted"):
        unfitted.transform(f)
    for bad in ("{", "[]", json.dumps({"format": "necst.FeatureSpec", "version": 9})):
        with pytest.raises(NecstError):
            FeatureSpec.from_json(bad)


def tiny_spec() -> FeatureSpec:
    return FeatureSpec([continuous("len", integer=True), continuous("gap", log=True, eps=1e-6),
                        categorical("kind"), categorical("flag", given="kind", decode_other=False)])


def test_single_row_zero_gap_and_constant_column():
    df = pd.DataFrame({"len": [60], "gap": [0.0], "kind": ["tcp"], "flag": ["SYN"]})
    spec = tiny_spec().fit(df)
    X = spec.transform(df, dtype=np.float64)
    assert X[0, :2].tolist() == [0.0, 0.0]
    back = spec.inverse_transform(X)
    assert back.len.tolist() == [60] and back.gap.tolist() == [0.0]
    assert back.kind.tolist() == ["tcp"] and back.flag.tolist() == ["SYN"]
    # constant columns stay constant whatever the model outputs
    assert spec.inverse_transform(np.ones_like(X)).len.tolist() == [60]


def test_unseen_category_goes_to_other_and_decoding_stays_in_vocabulary():
    df = pd.DataFrame({"len": [60, 70, 80], "gap": [0.0, 1.0, 2.0],
                       "kind": ["tcp", "tcp", "udp"], "flag": ["SYN", "ACK", "na"]})
    spec = tiny_spec().fit(df)
    new = pd.DataFrame({"len": [10, 99], "gap": [5.0, 0.5], "kind": ["icmp", "udp"],
                        "flag": ["RST", "na"]})
    X = spec.transform(new, dtype=np.float64)
    kind, flag = spec.blocks[2], spec.blocks[3]
    assert kind.categories == ("tcp", "udp", "other") and X[0, kind.slice].tolist() == [0, 0, 1]
    assert flag.categories == ("ACK", "SYN", "na", "other")
    assert X[0, flag.slice].tolist() == [0, 0, 0, 1]
    back = spec.inverse_transform(X)
    assert back.kind.tolist() == ["other", "udp"]
    # flag: 'other' is never decoded; values out of range are clipped to the fitted range
    assert back.flag.tolist()[1] == "na" and back.flag.tolist()[0] != "other"
    assert back.len.tolist() == [60, 80] and back.gap.tolist()[0] == pytest.approx(2.0)


def test_given_restricts_decoding_to_pairs_seen():
    df = pd.DataFrame({"len": [1, 2, 3], "gap": [0.0, 0.0, 0.0],
                       "kind": ["tcp", "tcp", "udp"], "flag": ["SYN", "ACK", "na"]})
    spec = tiny_spec().fit(df)
    X = spec.transform(df, dtype=np.float64)
    flag = spec.blocks[3]
    X[:, flag.slice] = 0
    X[:, flag.slice.start + list(flag.categories).index("SYN")] = 0.9  # model prefers SYN ...
    X[:, flag.slice.start + list(flag.categories).index("na")] = 0.1
    back = spec.inverse_transform(X)
    # ... but a UDP packet can only carry the flags seen with UDP
    assert back.flag.tolist() == ["SYN", "SYN", "na"]


def test_min_frequency_sends_rare_values_to_other():
    df = pd.DataFrame({"p": ["443"] * 9 + ["8443"]})
    spec = FeatureSpec([categorical("p", min_frequency=0.2)]).fit(df)
    assert spec.blocks[0].categories == ("443", "other")
    assert spec.inverse_transform(spec.transform(df)).p.tolist() == ["443"] * 9 + ["other"]


def test_spec_refuses_bad_input():
    spec = tiny_spec()
    with pytest.raises(NecstError, match="empty"):
        spec.fit(pd.DataFrame({"len": [], "gap": [], "kind": [], "flag": []}))
    with pytest.raises(NecstError, match="lacks columns"):
        spec.fit(pd.DataFrame({"len": [1]}))
    with pytest.raises(NecstError, match="missing"):
        spec.fit(pd.DataFrame({"len": [1.0, np.nan], "gap": [0, 0], "kind": ["a", "b"],
                               "flag": ["x", "y"]}))
    with pytest.raises(NecstError, match="eps"):
        spec.fit(pd.DataFrame({"len": [1], "gap": [-1.0], "kind": ["a"], "flag": ["x"]}))
    with pytest.raises(NecstError, match="given"):
        FeatureSpec([categorical("a", given="b")])
    fitted = spec.fit(pd.DataFrame({"len": [1], "gap": [0.0], "kind": ["a"], "flag": ["x"]}))
    with pytest.raises(NecstError, match="shape"):
        fitted.inverse_transform(np.zeros((1, 3)))


feature_tables = st.integers(1, 40).flatmap(lambda n: st.fixed_dictionaries({
    "len": st.lists(st.integers(0, 65535), min_size=n, max_size=n),
    "count": st.lists(st.integers(0, 10**9), min_size=n, max_size=n),
    # seconds as the packet reader makes them: integer nanoseconds / 1e9, up to ~11 days
    "gap": st.lists(st.integers(0, 10**15) | st.integers(0, 10**4), min_size=n, max_size=n),
    "start": st.lists(st.integers(0, 10**15), min_size=n, max_size=n),
    "kind": st.lists(st.sampled_from(["tcp", "udp", "noflow"]), min_size=n, max_size=n),
    "flag": st.lists(st.sampled_from(["SYN", "ACK", "PSH+ACK", "na"]), min_size=n, max_size=n),
    "dir": st.lists(st.integers(0, 1), min_size=n, max_size=n),
}))


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(feature_tables)
def test_round_trip_on_random_tables(data):
    df = pd.DataFrame({
        "len": np.array(data["len"], dtype=np.int64),
        "count": np.array(data["count"], dtype=np.int64),
        "gap": np.array(data["gap"], dtype=np.int64) / 1e9,
        "start": np.array(data["start"], dtype=np.int64) / 1e9,
        "kind": data["kind"], "flag": data["flag"],
        "dir": np.array(data["dir"], dtype=np.uint8),
    })
    spec = FeatureSpec([
        continuous("len", integer=True), continuous("count", log=True, integer=True),
        continuous("gap", log=True, eps=1e-6), continuous("start"),
        categorical("kind"), categorical("flag", given="kind", decode_other=False),
        categorical("dir", dtype="uint8"),
    ]).fit(df)
    X64 = spec.transform(df, dtype=np.float64)
    back = spec.inverse_transform(X64)
    assert_round_trip(spec, df, back, exact=True)
    assert back.dir.dtype == np.uint8
    X32 = spec.transform(df)
    assert np.all((X32 >= 0) & (X32 <= 1))
    assert_round_trip(spec, df, spec.inverse_transform(X32), exact=False)
    again = FeatureSpec.from_json(spec.to_json())
    assert np.array_equal(again.transform(df, dtype=np.float64), X64)


# ------------------------------------------------------------------------------------------
# flows
# ------------------------------------------------------------------------------------------

def make_flows() -> pd.DataFrame:
    rows = [
        dict(flow_id=0, kind="tcp", app="tls", src_port=51000, dst_port=443, end_reason="fin",
             handshake=True, bidirectional_packets=12, bidirectional_bytes=9000,
             src2dst_packets=6, src2dst_bytes=1000, dst2src_packets=6, dst2src_bytes=8000,
             first_seen_ns=1_600_000_000 * SEC + 123_456_789,
             last_seen_ns=1_600_000_070 * SEC + 1),
        dict(flow_id=1, kind="udp", app="dns", src_port=40000, dst_port=53, end_reason="idle",
             handshake=False, bidirectional_packets=1, bidirectional_bytes=80,
             src2dst_packets=1, src2dst_bytes=80, dst2src_packets=0, dst2src_bytes=0,
             first_seen_ns=1_600_000_000 * SEC, last_seen_ns=1_600_000_000 * SEC),
        dict(flow_id=2, kind="noflow", app=None, src_port=None, dst_port=None,
             end_reason="eof", handshake=False, bidirectional_packets=3,
             bidirectional_bytes=126, src2dst_packets=2, src2dst_bytes=84, dst2src_packets=1,
             dst2src_bytes=42, first_seen_ns=1_600_000_500 * SEC,
             last_seen_ns=1_600_003_600 * SEC + 999),
    ]
    return pd.DataFrame(rows)


def test_flow_features_and_round_trip():
    flows = make_flows()
    fields = [FLOW_SCHEMA.field(c) for c in flows.columns]
    table = pa.Table.from_pandas(flows, schema=pa.schema(fields), preserve_index=False)
    f = flow_features(table)
    assert f.attrs["origin_ns"] == 1_600_000_000 * SEC
    assert f.start_s.tolist() == [0.123456789, 0.0, 500.0]
    assert f.duration_s.tolist() == pytest.approx([69.876543212, 0.0, 3100.000000999], abs=1e-9)
    assert f.dst_port.tolist() == ["443", "53", "none"] and f.app.tolist()[2] == "unknown"
    spec = flow_spec().fit(f)
    back = spec.inverse_transform(spec.transform(f, dtype=np.float64))
    assert_round_trip(spec, f, back, exact=True)
    assert back.handshake.dtype == bool
    assert_round_trip(spec, f, spec.inverse_transform(spec.transform(f)), exact=False)


# ------------------------------------------------------------------------------------------
# a real capture
# ------------------------------------------------------------------------------------------

def test_round_trip_on_a_real_capture(shared_data):
    """One iot_sentinel setup, read and metered as ``necst process`` does, then featurised."""
    from necst.capture.reader import CaptureReader
    from necst.process.decode import decode
    from necst.process.flows import assign_flows

    path = shared_data / "benign" / "iot_sentinel" / "HueBridge" / "Setup-C-12-STA.pcap"
    packets = pa.Table.from_batches([decode(b) for b in CaptureReader(path)])
    packets, flows = assign_flows(packets)
    f = packet_features(packets)
    assert len(f) == packets.num_rows
    # the packet's kind and the kind of the flow it belongs to agree
    flow_kind = flows.column("kind").to_pandas().astype(str).to_numpy()[f.flow_id.to_numpy()]
    assert (flow_kind == f.kind.astype(str).to_numpy()).all()
    assert {"tcp", "udp", "noflow"} <= set(f.kind) and "SYN+ACK" in set(f.flag_combo)
    # per-flow counts: the 60 s window of each flow's last packet, for flows shorter than 60 s
    last = f.groupby("flow_id").tail(1).set_index("flow_id")
    short = flows.filter(pc.less(flows.column("bidirectional_duration_ms"), 59_000))
    ids = short.column("flow_id").to_numpy()
    assert last.loc[ids, "pkts_60s"].tolist() == short.column("bidirectional_packets").to_pylist()
    assert last.loc[ids, "bytes_60s"].tolist() == short.column("bidirectional_bytes").to_pylist()

    spec = packet_spec().fit(f)
    assert_round_trip(spec, f, spec.inverse_transform(spec.transform(f, dtype=np.float64)), True)
    assert_round_trip(spec, f, spec.inverse_transform(spec.transform(f)), False)
    again = FeatureSpec.from_json(spec.to_json())
    assert np.array_equal(again.transform(f), spec.transform(f))

    ff = flow_features(flows)
    assert list(ff.columns[1:]) == list(FLOW_FEATURES) and len(ff) == flows.num_rows
    fspec = flow_spec().fit(ff)
    assert_round_trip(fspec, ff, fspec.inverse_transform(fspec.transform(ff, dtype=np.float64)),
                      True)
