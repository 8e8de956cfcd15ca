"""Packets for the detector: from a capture (via the process stage's reader), a dataset or a Parquet file."""
from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from necst.errors import DatasetError, NecstError


def read_packets(path: str | Path) -> pa.Table:
    """A PacketTable from a capture file, a dataset folder, or a packets Parquet file."""
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
    try:
        from necst.process.dataset import read_packets as _read
    except ImportError:  # the dataset module is not merged yet: the reader and decoder directly
        from necst.capture.reader import read_batches
        from necst.process.decode import decode
        from necst.schema import PACKET_SCHEMA

        batches = [decode(b) for b in read_batches(path)]
        return pa.Table.from_batches(batches, schema=PACKET_SCHEMA) if batches else PACKET_SCHEMA.empty_table()
    return _read(path)
