"""compare / evaluate / the report / the CLI, on generated tables with known differences."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import necst.evaluate as ev
from necst.errors import NecstError, OutputExistsError
from necst.schema import FLOW_SCHEMA, PACKET_SCHEMA

ROOT = Path(__file__).resolve().parents[1]
T0 = 1_600_000_000 * 10**9
APPS = {80: "http", 443: "tls", 8883: "mqtt"}


def make_traffic(n_flows: int = 300, seed: int = 0, *, handshake: bool = True,
                 extra_len: int = 0, span_s: float = 60.0):
    """TCP flows of 3-11 packets: SYN, SYN-ACK, ACK, data..., FIN (or all PSH-ACK without
    ``handshake``), as a PacketTable and a FlowTable with the schema's types."""
    rng = np.random.default_rng(seed)
    npk = rng.integers(3, 12, n_flows)
    fid = np.repeat(np.arange(n_flows), npk)
    starts = np.concatenate([[0], np.cumsum(npk)[:-1]])
    pos = np.arange(len(fid)) - np.repeat(starts, npk)
    last = pos == np.repeat(npk - 1, npk)
    gap = np.where(pos == 0, 0, rng.exponential(0.05e9, len(fid)).astype(np.int64))
    first_ns = T0 + (rng.uniform(0, span_s, n_flows) * 1e9).astype(np.int64)
    ts = np.repeat(first_ns, npk) + np.cumsum(gap) - np.repeat(np.cumsum(gap)[starts], npk)
    direction = np.where(pos < 3, pos % 2, rng.integers(0, 2, len(fid)))
    if handshake:
        flags = np.select([pos == 0, pos == 1, pos == 2, last], [0x002, 0x012, 0x010, 0x011], 0x018)
    else:
        flags = np.full(len(fid), 0x018)
    dport = rng.choice(list(APPS), n_flows)
    sport = rng.integers(40000, 60000, n_flows)
    host = np.array([f"10.0.0.{i}" for i in range(1, 21)])[rng.integers(0, 20, n_flows)]
    h, srv = np.repeat(host, npk), "10.0.1.1"
    fwd = direction == 0
    wire = rng.integers(60, 1500, len(fid)) + extra_len
    order = np.argsort(ts, kind="stable")
    cols = {
        "ts_ns": ts, "wire_len": wire, "src_ip": np.where(fwd, h, srv),
        "dst_ip": np.where(fwd, srv, h), "ip_proto": np.full(len(fid), 6),
        "src_port": np.where(fwd, np.repeat(sport, npk), np.repeat(dport, npk)),
        "dst_port": np.where(fwd, np.repeat(dport, npk), np.repeat(sport, npk)),
        "tcp_flags": flags, "app": np.array([APPS[d] for d in np.repeat(dport, npk)]),
        "flow_id": fid, "direction": direction, "flow_pos": pos, "flow_iat_ns": gap,
    }
    packets = _table({k: v[order] for k, v in cols.items()}, PACKET_SCHEMA)
    back = np.bincount(fid, weights=direction, minlength=n_flows).astype(np.int64)
    back_bytes = np.bincount(fid, weights=wire * direction, minlength=n_flows).astype(np.int64)
    total_bytes = np.bincount(fid, weights=wire, minlength=n_flows).astype(np.int64)
    last_ns = np.maximum.reduceat(ts, starts)
    flows = _table({
        "flow_id": np.arange(n_flows), "kind": np.full(n_flows, "tcp"), "src_ip": host,
        "dst_ip": np.full(n_flows, srv), "src_port": sport, "dst_port": dport,
        "protocol": np.full(n_flows, 6), "first_seen_ns": first_ns, "last_seen_ns": last_ns,
        "bidirectional_packets": npk, "bidirectional_bytes": total_bytes,
        "src2dst_packets": npk - back, "src2dst_bytes": total_bytes - back_bytes,
        "dst2src_packets": back, "dst2src_bytes": back_bytes,
        "app": np.array([APPS[d] for d in dport]),
        "end_reason": np.full(n_flows, "fin" if handshake else "idle"),
        "handshake": np.full(n_flows, handshake),
    }, FLOW_SCHEMA)
    return packets, flows


def _table(cols: dict, schema: pa.Schema) -> pa.Table:
    arrays = []
    for k, v in cols.items():
        t = schema.field(k).type
        arr = pa.array(v.tolist() if v.dtype.kind in "OU" else v)
        arrays.append(arr.dictionary_encode() if pa.types.is_dictionary(t) else arr.cast(t))
    return pa.Table.from_arrays(arrays, schema=pa.schema([schema.field(k) for k in cols]))


@pytest.fixture(scope="module")
def real():
    return make_traffic(300, seed=0)


@pytest.fixture(scope="module")
def real_other():
    return make_traffic(300, seed=1)


# ------------------------------------------------------------------ compare

def test_identical_samples_score_zero_everywhere(real):
    values = ev.compare(*real, *real, discriminator=False)
    finite = {k: v for k, v in values.items() if not math.isnan(v)}
    assert set(finite) == {mt.name for mt in ev.METRICS} - {"discriminator_auc"}
    assert all(v == 0 for v in finite.values()), {k: v for k, v in finite.items() if v}


def test_a_known_shift_shows_in_exactly_that_metric(real):
    shifted = make_traffic(300, seed=0, extra_len=100)
    values = ev.compare(*real, *shifted, discriminator=False)
    assert values["packet_length_emd"] == pytest.approx(100.0)
    assert values["flow_packets_emd"] == 0
    assert values["flow_gap_s_emd"] == 0
    assert values["tcp_handshake_gap"] == 0


def test_flows_may_be_left_to_the_packets(real):
    with_flows = ev.compare(*real, *real, discriminator=False)
    without = ev.compare(real[0], None, real[0], None, discriminator=False)
    assert without["flow_packets_emd"] == with_flows["flow_packets_emd"] == 0
    other = make_traffic(300, seed=3)
    a = ev.compare(*real, *other, discriminator=False)
    b = ev.compare(real[0], None, other[0], None, discriminator=False)
    for k in ("flow_packets_emd", "flow_bytes_emd", "flow_duration_s_emd", "tcp_handshake_gap"):
        assert a[k] == pytest.approx(b[k]), k


def test_pandas_tables_give_the_same_numbers(real, real_other):
    a = ev.compare(*real, *real_other, discriminator=False)
    b = ev.compare(real[0].to_pandas(), real[1].to_pandas(), real_other[0].to_pandas(),
                   real_other[1].to_pandas(), discriminator=False)
    for k in a:
        assert (math.isnan(a[k]) and math.isnan(b[k])) or a[k] == pytest.approx(b[k]), k


def test_tcp_gaps_catch_a_generator_without_handshakes(real):
    values = ev.compare(*real, *make_traffic(300, seed=2, handshake=False), discriminator=False)
    assert values["tcp_handshake_gap"] == 1.0
    # real flows of more than 3 packets end with FIN; the synthetic ones never do
    longer = np.mean(real[1].column("bidirectional_packets").to_numpy() > 3)
    assert values["tcp_fin_or_rst_gap"] == pytest.approx(longer)


def test_discriminator_separates_what_differs_and_not_what_does_not(real, real_other):
    same = ev.compare(*real, *real_other, seed=0)["discriminator_auc"]
    differs = ev.compare(*real, *make_traffic(300, seed=2, extra_len=1500), seed=0)
    assert same < 0.65
    assert differs["discriminator_auc"] > 0.99  # every packet longer than any real one


def test_discriminator_names_the_feature_that_differs(real):
    from necst.evaluate.discriminator import discriminator_auc

    a = ev.prepare(*real).flow_features
    b = ev.prepare(*make_traffic(300, seed=0, extra_len=1500)).flow_features
    d = discriminator_auc(a, b, seed=0)
    assert list(d["tells"]) == sorted(d["tells"], key=lambda c: -d["tells"][c])
    assert d["tells"]["mean_packet_bytes"] > 0.99
    assert d["tells"]["dst_port"] < 0.6  # the same flows, only longer packets


def test_open_flows_look_alike_whatever_ended_their_file():
    """A flow nobody closed is "open" to the discriminator, whether its capture file ended it
    (eof), the idle timeout did, or the active one; FIN and RST stay apart."""
    import pandas as pd

    from necst.evaluate.views import closing

    reasons = pd.Series(["eof", "idle", "active", "fin", "rst", None])
    assert closing(reasons).tolist() == ["open", "open", "open", "fin", "rst", None]
    p, f = make_traffic(300, seed=0, handshake=False)
    eof = f.set_column(f.schema.get_field_index("end_reason"), "end_reason",
                       pa.array(["eof"] * f.num_rows).dictionary_encode()
                       .cast(f.schema.field("end_reason").type))
    a, b = ev.prepare(p, f).flow_features, ev.prepare(p, eof).flow_features
    assert (a["end_reason"] == b["end_reason"]).all()


def test_discriminator_is_seeded(real, real_other):
    from necst.evaluate.discriminator import discriminator_auc

    a, b = ev.prepare(*real).flow_features, ev.prepare(*real_other).flow_features
    runs = [discriminator_auc(a, b, folds=2, max_per_side=100, seed=3) for _ in range(2)]
    assert runs[0] == runs[1]
    assert runs[0]["flows_per_side"] == 100


# ------------------------------------------------------------------ floor, split, baseline

def test_split_keeps_flows_whole(real):
    (pa_, fa), (pb, fb) = ev.split_by_time(*real, 0.7)
    assert pa_.num_rows + pb.num_rows == real[0].num_rows
    assert fa.num_rows + fb.num_rows == real[1].num_rows
    ids_a = set(pa_.column("flow_id").to_pylist())
    ids_b = set(pb.column("flow_id").to_pylist())
    assert not ids_a & ids_b
    assert ids_a == set(fa.column("flow_id").to_pylist())
    assert 0.6 < pa_.num_rows / real[0].num_rows < 0.8
    assert max(fa.column("first_seen_ns").to_pylist()) < min(fb.column("first_seen_ns").to_pylist())
    with pytest.raises(NecstError):
        ev.split_by_time(*real, 1.5)


def test_marginals_keep_each_column_and_break_the_ties(real):
    p, f = ev.marginals_baseline(*real, seed=7)
    assert p.num_rows == real[0].num_rows and f.num_rows == real[1].num_rows
    assert p.schema == real[0].schema
    assert set(p.column("wire_len").to_pylist()) <= set(real[0].column("wire_len").to_pylist())
    p2, _ = ev.marginals_baseline(*real, seed=7)
    assert p2.equals(p)  # seeded
    ts = p.column("ts_ns").to_numpy()
    assert (np.diff(ts) >= 0).all()
    values = ev.compare(*real, p, f, discriminator=False)
    assert values["packet_length_emd"] < 20  # a marginal, kept
    assert values["tcp_handshake_gap"] > 0.5  # the order of a flow's flags, lost


def test_evaluate_with_split_and_baseline_reports_ratios(real):
    synth = make_traffic(300, seed=5, handshake=False)
    e = ev.evaluate(real, synth, split=0.7, baseline="marginals", seed=0)
    r = e.report
    json.dumps(r, allow_nan=False)
    assert set(r["sizes"]) == {"reference", "synthetic", "floor", "baseline"}
    assert r["sizes"]["reference"]["packets"] + r["sizes"]["floor"]["packets"] == real[0].num_rows
    rows = {row["name"]: row for row in r["metrics"]}
    hs = rows["tcp_handshake_gap"]
    assert hs["floor"] == 0 and hs["synthetic"] == 1.0 and hs["ratio"] is None
    pl = rows["packet_length_emd"]
    assert pl["ratio"] == pytest.approx(pl["synthetic"] / pl["floor"])
    assert "median_ratio" in r["summary"]["synthetic"]
    assert "first 70%" in r["reference"]


def test_floor_and_split_are_exclusive(real, real_other):
    with pytest.raises(ValueError):
        ev.evaluate(real, real_other, floor=real_other, split=0.7)
    with pytest.raises(NecstError):
        ev.evaluate(real, real_other, baseline="gan")


# ------------------------------------------------------------------ report files and CLI

def test_write_report(tmp_path, real, real_other):
    pytest.importorskip("matplotlib")
    e = ev.evaluate(real, make_traffic(300, seed=9), floor=real_other, baseline="marginals",
                    discriminator=False)
    out = ev.write_report(e, tmp_path / "rep")
    report = json.loads((out / "report.json").read_text())
    assert report["metrics"][0]["name"] == "src_ip_rank_jsd"
    pngs = sorted(p.name for p in (out / "plots").glob("*.png"))
    assert {"ecdf_packet_length.png", "ecdf_flow_gap_s.png", "ecdf_flow_packets.png",
            "ecdf_flow_bytes.png", "ecdf_flow_duration_s.png", "throughput.png",
            "tcp_flags.png", "ratios.png"} <= set(pngs)
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") == len(pngs)
    assert "src=\"plots/" not in html and "src='plots/" not in html  # self-contained
    with pytest.raises(OutputExistsError):
        ev.write_report(e, out)
    ev.write_report(e, out, force=True)


def _dataset(folder: Path, tables) -> Path:
    folder.mkdir()
    pq.write_table(tables[0], folder / "packets.parquet")
    pq.write_table(tables[1], folder / "flows.parquet")
    return folder


def test_cli_evaluate_on_datasets_without_tensorflow(tmp_path):
    pytest.importorskip("matplotlib")
    real_dir = _dataset(tmp_path / "real", make_traffic(150, seed=0))
    synth_dir = _dataset(tmp_path / "synth", make_traffic(100, seed=4))
    code = (
        "import sys; from necst.cli import app\n"
        "try:\n"
        f"    app(['evaluate', {str(real_dir)!r}, {str(synth_dir)!r}, '--out', {str(tmp_path / 'rep')!r},"
        " '--split', '0.7'])\n"
        "except SystemExit as e:\n"
        "    assert not e.code, e.code\n"
        "assert 'tensorflow' not in sys.modules, 'evaluate imported TensorFlow'\n"
    )
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         env={**_env(), "PYTHONPATH": str(ROOT)})
    assert res.returncode == 0, res.stderr
    assert "median ratio to floor" in res.stdout
    assert (tmp_path / "rep" / "report.html").is_file()


def test_cli_bad_input_is_one_line_and_exit_2(tmp_path):
    from typer.testing import CliRunner

    from necst.cli import app

    empty = tmp_path / "empty"
    empty.mkdir()
    res = CliRunner().invoke(app, ["evaluate", str(empty), str(empty), "--out",
                                   str(tmp_path / "rep")])
    assert res.exit_code == 2
    assert "error:" in res.output and "packets.parquet" in res.output
    assert "Traceback" not in res.output


def _env():
    import os

    return dict(os.environ)


def test_floor_and_baseline_alone(real):
    e = ev.evaluate(real, None, split=0.7, baseline="marginals", discriminator=False)
    assert set(e.report["sizes"]) == {"reference", "floor", "baseline"}
    row = e.report["metrics"][0]
    assert "ratio" not in row and "baseline_ratio" in row
    with pytest.raises(ValueError):
        ev.evaluate(real, None)


def test_real_capture_floor_and_baseline(shared_data, tmp_path):
    """lockly-hub split 70/30 by time: the floor is finite where it applies, and the marginals
    baseline loses what ties a flow's packets together while the later real traffic keeps it."""
    from necst.evaluate.report import load_sample

    capture = shared_data / "benign" / "tj_iot" / "lockly-hub-01.pcap"
    real = load_sample(capture)
    e = ev.evaluate(real, None, split=0.7, baseline="marginals", seed=0)
    rows = {r["name"]: r for r in e.report["metrics"]}
    json.dumps(e.report, allow_nan=False)
    for name in ("src_ip_rank_jsd", "dst_port_jsd", "packet_length_emd", "flow_packets_emd",
                 "packets_per_s_emd", "discriminator_auc"):
        assert rows[name]["floor"] is not None, name
    assert rows["discriminator_auc"]["baseline"] > rows["discriminator_auc"]["floor"]
    # gaps drawn apart from positions: first packets' zero gaps land inside flows
    assert rows["flow_gap_log10_s_emd"]["baseline"] > 5 * rows["flow_gap_log10_s_emd"]["floor"]
