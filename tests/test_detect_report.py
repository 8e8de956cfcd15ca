"""The report reads a scored DataFrame's cells without converting whole columns, and writes valid JSON."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd

from necst.detect.report import _columns, _plain, _unit


def test_missing_cells_become_null_and_columns_convert_only_when_read():
    df = pd.DataFrame({"start_ns": [1, 2], "end_ns": [3, 4], "error": [0.5, 2.0], "flag": [False, True],
                       "packets": [1, 4], "src_ip": pd.Categorical.from_codes([-1, 0], categories=["10.0.0.1"]),
                       "top1_feature": ["packets", "packets"], "top1_share": [1.0, 1.0]})
    cols = _columns(df)
    rows = [_unit(cols, i) for i in range(2)]
    converted = set(dict.keys(cols))  # the columns converted to numpy so far
    assert [r["src_ip"] for r in rows] == [None, "10.0.0.1"]
    assert rows[1]["top_features"][0] == {"feature": "packets", "value": 4, "share_of_error": 1.0}
    assert "src_ip" not in converted and "packets" not in converted  # read cell by cell
    assert set(cols) == set(df.columns) and "error" in cols
    json.loads(json.dumps(rows, allow_nan=False))
    assert _plain(np.float64("nan")) is None and _plain(float("inf")) is None and _plain(np.int64(3)) == 3
