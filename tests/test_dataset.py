"""Dataset folders: contents, meta.json, parallel processing and streaming equal to one pass."""
from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from necst.errors import DatasetError
from necst._files import sha256_file as sha256_of
from necst.process.dataset import flow_ids_are_rows, load_dataset, process_captures
from necst.schema import FLOW_SCHEMA, PACKET_SCHEMA


@pytest.fixture(scope="module")
def captures(shared_data):
    caps = sorted((shared_data / "benign/iot_sentinel/HueBridge").glob("*.pcap"))[:6]
    caps.append(shared_data / "attacks/scan/nmap-syn-scan.pcap")
    return caps


def test_dataset_tables_follow_the_schemas(tmp_path, captures):
    meta = process_captures(captures, tmp_path / "ds")
    packets = pq.read_table(tmp_path / "ds/packets.parquet")
    flows = pq.read_table(tmp_path / "ds/flows.parquet")
    assert packets.schema.equals(PACKET_SCHEMA) and flows.schema.equals(FLOW_SCHEMA)
    assert packets.num_rows == meta["packets"] == sum(e["packets"] for e in meta["inputs"])
    assert flows.num_rows == meta["flows"] and flow_ids_are_rows(flows)
    # every packet belongs to a flow, and each flow's packet count matches its packets
    fid = packets.column("flow_id").to_numpy()
    assert fid.min() == 0 and fid.max() == flows.num_rows - 1
    counts = pa.compute.value_counts(packets.column("flow_id")).to_pylist()
    by_id = {c["values"]: c["counts"] for c in counts}
    assert [by_id[i] for i in range(flows.num_rows)] == flows.column("bidirectional_packets").to_pylist()
    on_disk = json.loads((tmp_path / "ds/meta.json").read_text())
    assert on_disk == meta
    assert meta["inputs"][0]["sha256"] == sha256_of(captures[0])
    assert meta["first_ts_ns"] <= meta["last_ts_ns"]


def test_workers_give_identical_output(tmp_path, captures):
    process_captures(captures, tmp_path / "one", workers=1)
    process_captures(captures, tmp_path / "two", workers=2)
    for name in ("packets.parquet", "flows.parquet"):
        assert pq.read_table(tmp_path / "one" / name).equals(pq.read_table(tmp_path / "two" / name))
    m1 = json.loads((tmp_path / "one/meta.json").read_text())
    m2 = json.loads((tmp_path / "two/meta.json").read_text())
    assert m1 == m2


def test_small_batches_equal_one_pass(tmp_path, shared_data, monkeypatch):
    cap = shared_data / "benign/tj_iot/lockly-hub-01.pcap"
    whole = load_dataset(cap)
    import necst.capture.reader as reader
    monkeypatch.setattr(reader, "CHUNK_BYTES", 64 << 10)  # many batches: flow state crosses boundaries
    monkeypatch.setattr(reader.CaptureReader.__init__, "__defaults__", (0, 64 << 10))
    from necst.capture.reader import CaptureReader
    assert sum(1 for _ in CaptureReader(cap)) > 10, "the test needs many batches"
    parts = load_dataset(cap)
    assert parts.packets.num_rows == whole.packets.num_rows
    assert parts.packets.equals(whole.packets) or \
        parts.packets.combine_chunks().to_pylist() == whole.packets.combine_chunks().to_pylist()
    assert parts.flows.to_pylist() == whole.flows.to_pylist()


def test_a_folder_that_is_not_a_dataset_is_refused(tmp_path):
    with pytest.raises(DatasetError, match="not a necst dataset"):
        load_dataset(tmp_path)
    (tmp_path / "packets.parquet").write_bytes(b"")
    (tmp_path / "meta.json").write_text(json.dumps({"schema_version": 999}))
    with pytest.raises(DatasetError, match="schema version 999"):
        load_dataset(tmp_path)
