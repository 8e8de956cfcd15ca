"""The safe bundle refuses anything changed, missing, added, or of another schema."""
from __future__ import annotations

import json

import numpy as np
import pytest

from necst import bundle
from necst.errors import BundleError, OutputExistsError


def _make(path):
    with bundle.BundleWriter(path, kind="test", config={"a": 1}) as w:
        w.add_arrays("arrays.npz", x=np.arange(5.0), y=np.eye(2))
        w.add_json("extra.json", {"k": [1, 2]})
        w.add_file("blob.keras", lambda p: p.write_bytes(b"keras-like bytes"))
    return path


def test_round_trip(tmp_path):
    b = bundle.load(_make(tmp_path / "b"), kind="test")
    assert b.config == {"a": 1}
    np.testing.assert_array_equal(b.arrays("arrays.npz")["x"], np.arange(5.0))
    assert b.json("extra.json") == {"k": [1, 2]}
    assert not list(tmp_path.glob(".b.*")), "temporary folder left behind"


@pytest.mark.parametrize("name", ["arrays.npz", "extra.json", "blob.keras"])
def test_one_byte_tampered_is_refused(tmp_path, name):
    path = _make(tmp_path / "b")
    f = path / name
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0x01
    f.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=name):
        bundle.load(path)


def test_missing_and_extra_files_are_refused(tmp_path):
    path = _make(tmp_path / "b")
    (path / "extra.json").unlink()
    with pytest.raises(BundleError, match="missing"):
        bundle.load(path)
    path = _make(tmp_path / "c")
    (path / "sneaky.npz").write_bytes(b"x")
    with pytest.raises(BundleError, match="unexpected"):
        bundle.load(path)


def test_wrong_schema_version_and_kind_are_refused(tmp_path):
    path = _make(tmp_path / "b")
    m = json.loads((path / "manifest.json").read_text())
    m["schema_version"] += 1
    (path / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(BundleError, match="schema version"):
        bundle.load(path)
    with pytest.raises(BundleError, match="expected a 'detector'"):
        bundle.load(_make(tmp_path / "c"), kind="detector")


def test_no_pickles_and_no_overwrite(tmp_path):
    with pytest.raises(BundleError, match="object"):
        with bundle.BundleWriter(tmp_path / "b", kind="t") as w:
            w.add_arrays("a.npz", x=np.array([{"a": 1}], dtype=object))
    assert not (tmp_path / "b").exists()
    _make(tmp_path / "c")
    with pytest.raises(OutputExistsError):
        _make(tmp_path / "c")
    with pytest.raises(BundleError, match="manifest"):
        bundle.load(tmp_path)
