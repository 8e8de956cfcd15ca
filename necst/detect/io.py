"""Packets for the detector: from a capture file, a dataset folder or a packets Parquet file.

A capture is read and decoded batch by batch without the flow meter: window and packet modes
do not need flows, and flow mode groups packets itself when ``flow_id`` is empty (bidirectional
5-tuple, idle timeout), so scoring a capture costs only reading and decoding it. A dataset
folder's packets carry the flow meter's ``flow_id``, which flow mode then uses.
"""
from __future__ import annotations

from pathlib import Path
from typing import List

import pyarrow as pa
import pyarrow.parquet as pq

from necst.errors import DatasetError, NecstError


def read_packets(path: str | Path, warnings: List[str] | None = None) -> pa.Table:
    """A PacketTable; the reader's warnings (a capture cut short, ...) are appended to ``warnings``."""
    path = Path(path)
    if not path.exists():
        raise NecstError("no such file or folder", path)
    if path.is_dir() or path.suffix == ".parquet":
        target = path / "packets.parquet" if path.is_dir() else path
        if not target.is_file():
            raise DatasetError("not a dataset folder (no packets.parquet)", path)
        try:
            return pq.read_table(target)
        except (pa.ArrowInvalid, OSError) as e:
            raise DatasetError(f"unreadable Parquet ({e})", target) from None
    from necst.capture.reader import CaptureReader
    from necst.process.decode import decode
    from necst.schema import PACKET_SCHEMA

    reader = CaptureReader(path)
    batches = [decode(b) for b in reader]
    if warnings is not None:
        warnings.extend(f"{path}: {w}" for w in reader.warnings)
    return pa.Table.from_batches(batches, schema=PACKET_SCHEMA) if batches else PACKET_SCHEMA.empty_table()
