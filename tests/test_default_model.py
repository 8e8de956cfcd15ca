"""The bundled default generator: it loads (every hash checked), is small, and the Quickstart's
`necst generate` writes a capture that Wireshark's tools read and find valid, byte-identical per seed."""
from __future__ import annotations

import shutil
import subprocess

import pytest

from necst.generate.sampler import DEFAULT_MODEL_DIR
from necst.model.bundle import load_generator


@pytest.fixture(scope="module")
def default_model():
    if not (DEFAULT_MODEL_DIR / "manifest.json").is_file():
        pytest.fail(f"the bundled default model is missing at {DEFAULT_MODEL_DIR}")
    return load_generator(DEFAULT_MODEL_DIR)


def test_default_model_has_every_level_and_is_small(default_model):
    assert default_model.packet is not None and default_model.flow is not None
    assert default_model.aggregate is not None
    size = sum(p.stat().st_size for p in DEFAULT_MODEL_DIR.iterdir())
    assert size < 20e6
    readme = (DEFAULT_MODEL_DIR / "README.md").read_text()
    assert "iot_sentinel" in readme and "aucad/sensor-data" in readme


def test_quickstart_generate_is_valid_and_reproducible(default_model, tmp_path, tshark):
    outs = []
    for name in ("a.pcap", "b.pcap"):
        out = tmp_path / name
        r = subprocess.run(["necst", "generate", "--out", str(out), "--flows", "300", "--seed", "7", "-q"],
                           capture_output=True, text=True)
        assert r.returncode == 0, r.stderr[-2000:]
        outs.append(out.read_bytes())
    assert outs[0] == outs[1]
    if shutil.which("capinfos"):
        info = subprocess.run(["capinfos", "-c", str(tmp_path / "a.pcap")], capture_output=True, text=True)
        assert info.returncode == 0
    bad = subprocess.run(
        [tshark, "-n", "-r", str(tmp_path / "a.pcap"), "-o", "ip.check_checksum:TRUE",
         "-o", "tcp.check_checksum:TRUE", "-o", "udp.check_checksum:TRUE",
         "-Y", "_ws.malformed || _ws.expert.severity == error || ip.checksum.status == 0 || "
               "tcp.checksum.status == 0 || udp.checksum.status == 0"],
        capture_output=True, text=True)
    assert bad.returncode == 0 and bad.stdout.strip() == "", bad.stdout[:2000]
