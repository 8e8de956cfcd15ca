"""The generator bundle: save -> load gives the same samples; any edit, loss or schema change is
refused with a clear BundleError; nothing in it is a pickle."""
from __future__ import annotations

import json
import os
import zipfile

import numpy as np
import pandas as pd
import pytest

from necst.errors import BundleError, NecstError
from necst.model.bundle import load_generator, save_generator
from necst.model.packet import PacketModel
from test_packet_model import SMALL, synthetic_features

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


@pytest.fixture(scope="module")
def model() -> PacketModel:
    return PacketModel(seed=0, **dict(SMALL, epochs=2)).fit(synthetic_features(seed=1))


@pytest.fixture(scope="module")
def saved(model, tmp_path_factory):
    return model.save(tmp_path_factory.mktemp("bundle") / "gen")


def _copy(saved, tmp_path):
    import shutil

    out = tmp_path / "copy"
    shutil.copytree(saved, out)
    return out


def test_save_load_gives_identical_samples_and_codes(model, saved):
    loaded = PacketModel.load(saved)
    pd.testing.assert_frame_equal(model.sample(500, seed=4), loaded.sample(500, seed=4))
    feats = synthetic_features(seed=2)
    for kind in ("tcp", "udp", "noflow"):
        part = feats[feats["kind"] == kind]
        np.testing.assert_array_equal(model.encode(part, kind), loaded.encode(part, kind))
        assert loaded.n_codes(kind) == model.n_codes(kind)
    gen = load_generator(saved)
    assert gen.flow is None and gen.aggregate is None
    codes = np.arange(5) % model.n_codes("udp")
    pd.testing.assert_frame_equal(gen.packet.sample_codes(codes, "udp", seed=1),
                                  model.sample_codes(codes, "udp", seed=1))


def test_manifest_holds_levels_spec_and_hashes(saved):
    manifest = json.loads((saved / "manifest.json").read_text())
    assert manifest["kind"] == "generator"
    assert manifest["config"]["levels"] == ["packet"]
    assert manifest["config"]["packet"]["feature_spec"]["format"] == "necst.FeatureSpec"
    assert set(manifest["files"]) == {p.name for p in saved.iterdir()} - {"manifest.json"}
    assert {p.suffix for p in saved.iterdir()} <= {".json", ".npz", ".keras"}


def test_nothing_is_a_pickle(saved):
    for p in saved.glob("*.npz"):
        with np.load(p, allow_pickle=False) as z:  # raises on object arrays
            assert all(z[k].dtype != object for k in z.files)
    for p in saved.glob("*.keras"):
        names = zipfile.ZipFile(p).namelist()
        assert not [n for n in names if n.endswith((".pkl", ".pickle"))]


def _files(saved):
    return sorted(p.name for p in saved.iterdir())


@pytest.mark.parametrize("where", [0.0, 0.13, 0.37, 0.5, 0.71, 0.93, 1.0])
def test_a_flipped_byte_anywhere_is_refused(saved, tmp_path, where):
    for name in _files(saved):
        copy = _copy(saved, tmp_path / name)
        path = copy / name
        data = bytearray(path.read_bytes())
        i = min(int(where * len(data)), len(data) - 1)
        data[i] ^= 0x01
        path.write_bytes(bytes(data))
        with pytest.raises(BundleError) as err:
            PacketModel.load(copy)
        assert str(copy) in str(err.value), (name, i, str(err.value))
        with pytest.raises(BundleError):
            load_generator(copy)


def test_every_number_in_the_manifest_config_is_sealed(saved, tmp_path):
    copy = _copy(saved, tmp_path)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["config"]["packet"]["proportions"]["tcp"]["first"] += 1
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="does not match generator.json"):
        PacketModel.load(copy)


@pytest.mark.parametrize("victim", ["packet_network.npz", "packet_mixtures.npz",
                                    "packet_encoder.keras", "generator.json", "manifest.json"])
def test_a_missing_file_is_refused(saved, tmp_path, victim):
    copy = _copy(saved, tmp_path)
    (copy / victim).unlink()
    with pytest.raises(BundleError, match="missing|no manifest"):
        load_generator(copy)


def test_an_extra_file_is_refused(saved, tmp_path):
    copy = _copy(saved, tmp_path)
    (copy / "evil.npz").write_bytes(b"x")
    with pytest.raises(BundleError, match="unexpected"):
        PacketModel.load(copy)


def test_a_wrong_schema_version_is_refused(saved, tmp_path):
    copy = _copy(saved, tmp_path)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["schema_version"] = manifest["schema_version"] + 1
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="schema version"):
        load_generator(copy)


def test_a_wrong_packet_format_is_refused(saved, tmp_path):
    """A bundle sealed consistently but written by an incompatible packet level."""
    from necst.bundle import load
    from necst.model.bundle import SEAL, _seal

    copy = _copy(saved, tmp_path)
    b = load(copy)
    manifest = b.manifest
    manifest["config"]["packet"]["format_version"] = 99
    (copy / SEAL).write_text(json.dumps(_seal(manifest["config"], manifest["necst_version"])))
    import hashlib

    manifest["files"][SEAL] = hashlib.sha256((copy / SEAL).read_bytes()).hexdigest()
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="format 99"):
        PacketModel.load(copy)


def test_other_bundles_and_existing_outputs(saved, model, tmp_path):
    with pytest.raises(BundleError, match="not a bundle folder"):
        PacketModel.load(tmp_path / "none")
    with pytest.raises(NecstError, match="exists already"):
        model.save(saved)
    with pytest.raises(NecstError, match="no model level"):
        save_generator(tmp_path / "empty")
    # an unknown level listed in a (consistently sealed) manifest is refused, not ignored
    from necst.bundle import BundleWriter

    with BundleWriter(tmp_path / "odd", "generator", {"levels": ["teleport"]}) as w:
        from necst._version import __version__
        from necst.model.bundle import SEAL, _seal

        w.add_json(SEAL, _seal(w.config, __version__))
    with pytest.raises(BundleError, match="unknown level"):
        load_generator(tmp_path / "odd")
