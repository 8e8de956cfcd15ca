"""Packets for the detector: from a capture file, a dataset folder or a packets Parquet file.

A capture is read and decoded batch by batch without the flow meter: window and packet modes
do not need flows, and flow mode groups packets itself when ``flow_id`` is empty (bidirectional
5-tuple, idle timeout), so scoring a capture costs only reading and decoding it. A dataset
folder's packets carry the flow meter's ``flow_id``, which flow mode then uses.
Window mode never needs the whole capture at once: :func:`iter_packets` hands out the batches
as they are decoded, and a reader thread decodes the next batch while the caller works.
"""
from __future__ import annotations

from pathlib import Path
import queue
import threading
from typing import Iterator, List, Sequence

import pyarrow as pa
import pyarrow.parquet as pq

from necst.errors import DatasetError, NecstError


def read_packets(path: str | Path, warnings: List[str] | None = None, columns: Sequence[str] | None = None) -> pa.Table:
    """A PacketTable; the reader's warnings (a capture cut short, ...) are appended to ``warnings``.

    ``columns`` as in :func:`iter_packets`: the columns the caller reads (others may be null or absent).
    """
    from necst.schema import PACKET_SCHEMA

    batches = list(iter_packets(path, warnings=warnings, columns=columns, prefetch=False))
    if batches and isinstance(batches[0], pa.Table):
        return batches[0]
    if not batches:
        return PACKET_SCHEMA.empty_table()
    return pa.Table.from_batches(batches, schema=PACKET_SCHEMA if columns is None else batches[0].schema)


def iter_packets(path: str | Path, warnings: List[str] | None = None, columns: Sequence[str] | None = None,
                 prefetch: bool = True) -> Iterator:
    """PacketTable record batches of a capture, in order (a Parquet source may give one Table).

    ``columns`` narrows a Parquet source to what the caller reads. With ``prefetch`` a thread
    reads and decodes one batch ahead (numpy and the reader release the GIL), so reading and
    the caller's work overlap on a multi-core machine.
    """
    path = Path(path)
    if not path.exists():
        raise NecstError("no such file or folder", path)
    if path.is_dir() or path.suffix == ".parquet":
        target = path / "packets.parquet" if path.is_dir() else path
        if not target.is_file():
            raise DatasetError("not a dataset folder (no packets.parquet)", path)
        try:
            if columns is None:
                yield pq.read_table(target)
                return
            f = pq.ParquetFile(target)
            cols = [c for c in columns if c in f.schema_arrow.names]
            batches = f.iter_batches(columns=cols)
        except (pa.ArrowInvalid, OSError) as e:
            raise DatasetError(f"unreadable Parquet ({e})", target) from None
        yield from (_prefetched(batches) if prefetch else batches)
        return
    from necst.capture.reader import CaptureReader
    from necst.process.decode import decode

    reader = CaptureReader(path)
    decoded = (decode(b, columns=columns) for b in reader)
    yield from (_prefetched(decoded) if prefetch else decoded)
    if warnings is not None:
        warnings.extend(f"{path}: {w}" for w in reader.warnings)


_DONE = object()


def _prefetched(it: Iterator, depth: int = 1) -> Iterator:
    """The items of ``it``, produced by a thread ``depth`` items ahead; its errors re-raised here."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(x) -> bool:
        while not stop.is_set():
            try:
                q.put(x, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def work():
        try:
            for item in it:
                if not put((item, None)):
                    return
            put((_DONE, None))
        except BaseException as e:  # noqa: BLE001 - handed to the consumer, raised there
            put((_DONE, e))

    t = threading.Thread(target=work, name="necst-reader", daemon=True)
    t.start()
    try:
        while True:
            item, err = q.get()
            if item is _DONE:
                if err is not None:
                    raise err
                return
            yield item
    finally:
        stop.set()
        t.join()
