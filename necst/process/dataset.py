"""Dataset folders: captures in, packets.parquet + flows.parquet + meta.json out, and back.

Each capture is streamed batch by batch (read, decode, meter flows) and written row group
by row group, so memory does not grow with the capture. Several captures are processed
independently (in parallel with ``workers``) and concatenated in input order with their
flow ids offset, so the result does not depend on the number of workers.
"""
from __future__ import annotations

import json
import os
import shutil
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from necst._version import SCHEMA_VERSION, __version__
from necst.capture.reader import CaptureReader
from necst.errors import DatasetError, NecstError, OutputExistsError
from necst.process.decode import decode
from necst.process.flows import FlowMeter
from necst.schema import FLOW_SCHEMA, PACKET_SCHEMA, empty_table, numpy_column

PACKETS_FILE, FLOWS_FILE, META_FILE = "packets.parquet", "flows.parquet", "meta.json"
# Dictionary pages only for the dictionary-typed string columns: numeric columns (timestamps,
# sequence numbers) gain nothing from them and cost a third of the write time.
_DICT_COLUMNS = [f.name for s in (PACKET_SCHEMA, FLOW_SCHEMA) for f in s if pa.types.is_dictionary(f.type)]
# Statistics (min/max per row group) only where readers filter: time, file and flow.
# LZ4: the cheapest codec to write (a third less CPU than zstd level 1, for files half again larger).
_PARQUET_OPTS = dict(compression="lz4", use_dictionary=_DICT_COLUMNS,
                     write_statistics=["ts_ns", "file_index", "flow_id", "bidirectional_first_seen_ms"],
                     data_page_size=4 << 20)


@dataclass
class Dataset:
    """A processed dataset held in memory: the two tables and the meta record."""

    packets: pa.Table
    flows: pa.Table
    meta: dict


def _check_inputs(paths: Sequence[str | Path]) -> list[Path]:
    if not paths:
        raise NecstError("no capture given")
    out = []
    for p in paths:
        p = Path(p)
        if not p.exists():
            raise NecstError("no such file", p)
        if p.is_dir():
            raise NecstError("is a directory, not a capture file", p)
        out.append(p)
    return out


def _prepare_output(out: Path, inputs: Iterable[Path], force: bool) -> Path:
    out = Path(out)
    resolved = {p.resolve() for p in inputs}
    if out.resolve() in resolved:
        raise OutputExistsError("output would overwrite an input", out)
    if out.exists() and not force:
        raise OutputExistsError("exists already (use --force to overwrite)", out)
    if out.exists() and not out.is_dir():
        raise OutputExistsError("exists and is not a dataset folder", out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    return tmp


def _finish_output(tmp: Path, out: Path) -> None:
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)


def _meter_batches(reader: CaptureReader, idle_timeout: float, active_timeout: float, progress=None):
    """Yield (packets RecordBatch with flow columns, ended flows) for one capture; flows last."""
    meter = FlowMeter(idle_timeout=idle_timeout, active_timeout=active_timeout)
    for raw in reader:
        packets = decode(raw)
        flow_cols, ended = meter.update(pa.Table.from_batches([packets]))
        for name in flow_cols.column_names:
            packets = packets.set_column(PACKET_SCHEMA.get_field_index(name), PACKET_SCHEMA.field(name),
                                         flow_cols[name].combine_chunks().cast(PACKET_SCHEMA.field(name).type))
        if progress is not None:
            progress(len(raw))
        yield packets, ended
    yield None, meter.finish()


class PacketsWriter:
    """packets.parquet, written row group by row group on a second thread.

    pyarrow releases the GIL while it encodes and compresses, so writing one batch overlaps
    with reading and decoding the next; at most one batch waits, so memory stays bounded.
    """

    def __init__(self, path: Path):
        self._writer = pq.ParquetWriter(path, PACKET_SCHEMA, **_PARQUET_OPTS)
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="necst-parquet")
        self._pending: Future | None = None

    def write_batch(self, batch: pa.RecordBatch) -> None:
        self._wait()
        self._pending = self._thread.submit(self._writer.write_batch, batch)

    def _wait(self) -> None:
        if self._pending is not None:
            pending, self._pending = self._pending, None
            pending.result()  # re-raises a failed write here

    def close(self) -> None:
        try:
            self._wait()
        finally:
            self._thread.shutdown()
            self._writer.close()

    def __enter__(self) -> "PacketsWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _process_one(path: Path, index: int, out_dir: Path, idle_timeout: float, active_timeout: float,
                 progress=None) -> dict:
    """Process one capture into out_dir/packets.parquet and flows.parquet; return its meta entry."""
    reader = CaptureReader(path, file_index=index)
    flows_parts: list[pa.Table] = []
    first_ts = last_ts = None
    with PacketsWriter(out_dir / PACKETS_FILE) as writer:
        for packets, ended in _meter_batches(reader, idle_timeout, active_timeout, progress):
            if ended is not None and ended.num_rows:
                flows_parts.append(ended)
            if packets is None or packets.num_rows == 0:
                continue
            ts = packets.column(0)
            lo, hi = pc.min(ts).as_py(), pc.max(ts).as_py()
            first_ts = lo if first_ts is None else min(first_ts, lo)
            last_ts = hi if last_ts is None else max(last_ts, hi)
            writer.write_batch(packets)
    flows = pa.concat_tables(flows_parts).cast(FLOW_SCHEMA) if flows_parts else empty_table(FLOW_SCHEMA)
    flows = flows.sort_by("flow_id")
    pq.write_table(flows, out_dir / FLOWS_FILE, **_PARQUET_OPTS)
    return {
        "path": str(path),
        "sha256": reader.sha256,
        "size": path.stat().st_size,
        "format": reader.format,
        "compressed": reader.compressed,
        "packets": reader.packets,
        "flows": flows.num_rows,
        "linktypes": sorted(reader.linktypes),
        "first_ts_ns": first_ts,
        "last_ts_ns": last_ts,
        "warnings": reader.warnings,
    }


def _concatenate(parts: list[Path], out: Path) -> None:
    """Join per-capture parts in order, offsetting flow ids; row groups are copied as they are."""
    offset = 0
    with pq.ParquetWriter(out / PACKETS_FILE, PACKET_SCHEMA, **_PARQUET_OPTS) as pw:
        flow_tables = []
        for part in parts:
            pf = pq.ParquetFile(part / PACKETS_FILE)
            for g in range(pf.num_row_groups):
                t = pf.read_row_group(g)
                if offset:
                    i = PACKET_SCHEMA.get_field_index("flow_id")
                    t = t.set_column(i, PACKET_SCHEMA.field(i), pc.add(t.column(i), offset))
                pw.write_table(t)
            flows = pq.read_table(part / FLOWS_FILE)
            if offset:
                flows = flows.set_column(0, FLOW_SCHEMA.field(0), pc.add(flows.column(0), offset))
            flow_tables.append(flows)
            offset += flows.num_rows
    pq.write_table(pa.concat_tables(flow_tables), out / FLOWS_FILE, **_PARQUET_OPTS)


def process_captures(
    captures: Sequence[str | Path],
    out: str | Path,
    *,
    force: bool = False,
    workers: int = 1,
    idle_timeout: float = 120.0,
    active_timeout: float = 1800.0,
    progress: bool = False,
) -> dict:
    """Read captures into a dataset folder; return its meta record (also written to meta.json)."""
    paths = _check_inputs(captures)
    out = Path(out)
    tmp = _prepare_output(out, paths, force)
    try:
        if len(paths) == 1:
            with _progress_bar(progress, paths) as advance:
                entries = [_process_one(paths[0], 0, tmp, idle_timeout, active_timeout, advance)]
        else:
            parts = [tmp / f"part-{i:05d}" for i in range(len(paths))]
            for p in parts:
                p.mkdir()
            jobs = [(p, i, parts[i], idle_timeout, active_timeout) for i, p in enumerate(paths)]
            if workers > 1:
                from joblib import Parallel, delayed

                entries = Parallel(n_jobs=workers)(delayed(_process_one)(*j) for j in jobs)
            else:
                with _progress_bar(progress, paths) as advance:
                    entries = [_process_one(*j, progress=advance) for j in jobs]
            _concatenate(parts, tmp)
            for p in parts:
                shutil.rmtree(p)
        meta = _meta(entries, idle_timeout, active_timeout)
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
        _finish_output(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return meta


def _meta(entries: list[dict], idle_timeout: float, active_timeout: float) -> dict:
    firsts = [e["first_ts_ns"] for e in entries if e["first_ts_ns"] is not None]
    lasts = [e["last_ts_ns"] for e in entries if e["last_ts_ns"] is not None]
    return {
        "necst_version": __version__,
        "schema_version": SCHEMA_VERSION,
        "inputs": entries,
        "packets": sum(e["packets"] for e in entries),
        "flows": sum(e["flows"] for e in entries),
        "linktypes": sorted({lt for e in entries for lt in e["linktypes"]}),
        "first_ts_ns": min(firsts) if firsts else None,
        "last_ts_ns": max(lasts) if lasts else None,
        "idle_timeout": idle_timeout,
        "active_timeout": active_timeout,
        "warnings": [w for e in entries for w in e["warnings"]],
    }


class _progress_bar:
    """A Rich progress bar over packets read, or nothing when progress is off."""

    def __init__(self, enabled: bool, paths: list[Path]):
        self.enabled = enabled
        self.paths = paths

    def __enter__(self):
        if not self.enabled:
            return None
        from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        self.bar = Progress(SpinnerColumn(), TextColumn("{task.description}"),
                            TextColumn("{task.completed:,} packets"), TimeElapsedColumn(), transient=True)
        self.bar.start()
        task = self.bar.add_task(f"processing {len(self.paths)} capture(s)", total=None)
        return lambda n: self.bar.advance(task, n)

    def __exit__(self, *exc):
        if self.enabled:
            self.bar.stop()
        return False


# -- reading back ---------------------------------------------------------------------------

def _check_dataset(path: Path) -> None:
    if not (path / PACKETS_FILE).is_file():
        raise DatasetError(f"not a necst dataset (no {PACKETS_FILE})", path)
    meta_path = path / META_FILE
    if meta_path.is_file():
        try:
            meta = json.loads(meta_path.read_text())
        except json.JSONDecodeError:
            raise DatasetError(f"{META_FILE} is not valid JSON", path) from None
        if meta.get("schema_version") != SCHEMA_VERSION:
            raise DatasetError(
                f"dataset has schema version {meta.get('schema_version')}, this necst reads {SCHEMA_VERSION}; "
                "process the captures again", path)


def load_dataset(path: str | Path, *, idle_timeout: float = 120.0, active_timeout: float = 1800.0) -> Dataset:
    """A dataset folder, or a capture processed in memory (for small captures and notebooks)."""
    path = Path(path)
    if path.is_dir():
        _check_dataset(path)
        meta_path = path / META_FILE
        meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
        flows_path = path / FLOWS_FILE
        flows = pq.read_table(flows_path) if flows_path.is_file() else empty_table(FLOW_SCHEMA)
        return Dataset(pq.read_table(path / PACKETS_FILE), flows, meta)
    paths = _check_inputs([path])
    reader = CaptureReader(paths[0])
    batches, flow_parts = [], []
    for packets, ended in _meter_batches(reader, idle_timeout, active_timeout):
        if packets is not None:
            batches.append(packets)
        if ended is not None and ended.num_rows:
            flow_parts.append(ended)
    packets = pa.Table.from_batches(batches, schema=PACKET_SCHEMA)
    flows = pa.concat_tables(flow_parts).cast(FLOW_SCHEMA).sort_by("flow_id") if flow_parts \
        else empty_table(FLOW_SCHEMA)
    entry = {"path": str(path), "sha256": reader.sha256, "size": path.stat().st_size,
             "format": reader.format, "compressed": reader.compressed, "packets": reader.packets,
             "flows": flows.num_rows, "linktypes": sorted(reader.linktypes), "warnings": reader.warnings}
    meta = {"necst_version": __version__, "schema_version": SCHEMA_VERSION, "inputs": [entry],
            "packets": reader.packets, "flows": flows.num_rows, "warnings": reader.warnings}
    return Dataset(packets, flows, meta)


def read_packets(path: str | Path) -> pa.Table:
    """The PacketTable of a dataset folder or of a capture."""
    return load_dataset(path).packets


def read_flows(path: str | Path) -> pa.Table:
    """The FlowTable of a dataset folder or of a capture."""
    return load_dataset(path).flows


def flow_ids_are_rows(flows: pa.Table) -> bool:
    ids = numpy_column(flows.column("flow_id"))
    return bool(np.array_equal(ids, np.arange(len(ids))))
