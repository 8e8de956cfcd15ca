"""Hash factorization of integer arrays, through pyarrow.

Linear time like pandas.factorize (sorting with np.unique is several times slower on a
million keys), without importing pandas (a quarter-second) into `necst process`.
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from necst.schema import arrow_array, numpy_column


def factorize(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(codes numbered by first appearance, distinct values in that order)."""
    values = np.asarray(values)
    encoded = pc.dictionary_encode(arrow_array(values, pa.from_numpy_dtype(values.dtype)))
    return numpy_column(encoded.indices).astype(np.int64), numpy_column(encoded.dictionary)
