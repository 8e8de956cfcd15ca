"""A batch of raw packets: the one table the reader hands to the decoder."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class RawBatch:
    """Packets as one byte buffer plus per-packet offsets, so decoding is array work.

    ``data[offsets[i] : offsets[i] + cap_len[i]]`` are packet i's captured bytes.
    """

    data: np.ndarray  # uint8, the buffer the packets live in
    offsets: np.ndarray  # int64
    cap_len: np.ndarray  # uint32
    wire_len: np.ndarray  # uint32
    ts_ns: np.ndarray  # int64
    linktype: np.ndarray  # uint16, per packet (pcapng interfaces differ)
    file_index: int = 0
    pad: int = 0  # zero bytes at the end of data, beyond every packet (lets the decoder read past ends)

    def __len__(self) -> int:
        return len(self.offsets)

    def packet(self, i: int) -> bytes:
        o = int(self.offsets[i])
        return self.data[o : o + int(self.cap_len[i])].tobytes()
