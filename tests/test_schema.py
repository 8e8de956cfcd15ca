"""The buffer-level arrow helpers agree with pyarrow's own conversions, offsets and nulls included."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from necst.schema import FLOW_SCHEMA, arrow_array, empty_table, numpy_column, string_array


@pytest.mark.parametrize("typ", [pa.int64(), pa.uint16(), pa.uint8(), pa.int32(), pa.float64(), pa.bool_()])
def test_arrow_array_and_numpy_column_round_trip(typ):
    rng = np.random.default_rng(0)
    values = rng.integers(0, 200, 1000).astype(typ.to_pandas_dtype())
    mask = rng.random(1000) < 0.2
    arr = arrow_array(values, typ, mask)
    arr.validate(full=True)
    assert arr.equals(pa.array(values, typ, mask=mask))
    for lo, hi in [(0, 1000), (3, 517), (999, 1000)]:  # offsets that are not byte-aligned for bits
        part = arr.slice(lo, hi - lo)
        expected = np.where(mask[lo:hi], 7, values[lo:hi]).astype(values.dtype)
        np.testing.assert_array_equal(numpy_column(part, fill=7), expected)
    with pytest.raises(ValueError):
        numpy_column(arr)  # nulls need a fill value
    chunked = pa.chunked_array([arr.slice(0, 10), arr.slice(10)])
    np.testing.assert_array_equal(numpy_column(chunked, fill=7), np.where(mask, 7, values).astype(values.dtype))


def test_string_array_and_empty_table():
    words = ["", "ab", None, "ç€", "x" * 300]
    arr = string_array(words)
    arr.validate(full=True)
    assert arr.to_pylist() == words
    assert string_array([]).to_pylist() == []
    assert empty_table(FLOW_SCHEMA).schema == FLOW_SCHEMA and empty_table(FLOW_SCHEMA).num_rows == 0
