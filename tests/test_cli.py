"""The command line: fast help, one-line errors with exit code 2, outputs that are safe to write."""
from __future__ import annotations

import subprocess
import sys

import pytest
from typer.testing import CliRunner

from capture_builders import pcap
from necst.cli import app
from test_reader import TCP_PKT, TS

runner = CliRunner()


def heavy_modules_after(invocations: list[list[str]], then: str = "") -> list[str]:
    """Heavy modules a fresh interpreter holds after running these CLI invocations (and ``then``)."""
    code = ("import sys; from typer.testing import CliRunner; from necst.cli import app; r = CliRunner();"
            f"[r.invoke(app, a) for a in {invocations!r}]; {then or 'pass'};"
            "print(' '.join(sorted(m for m in ('pandas', 'pydantic', 'tensorflow', 'keras', 'scapy')"
            " if m in sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return out.split()


def test_help_never_imports_tensorflow():
    held = heavy_modules_after([[c, "--help"] for c in ("process", "evaluate", "detect")] + [["--help"]])
    assert "tensorflow" not in held and "keras" not in held


def test_every_subcommand_has_help():
    for args in (["--help"], ["process", "--help"], ["evaluate", "--help"], ["detect", "--help"]):
        r = runner.invoke(app, args)
        assert r.exit_code == 0, (args, r.output)
        assert "<bool>" not in r.output  # typer 0.29 renders flags as <bool>


def test_process_command_stays_light():
    """`necst process` pays for numpy and pyarrow only: no pandas, pydantic, Scapy or TensorFlow."""
    assert heavy_modules_after([["process", "--help"]], then="import necst.process.dataset") == []


@pytest.mark.parametrize("content", [b"", b"not a capture at all", b"\xd4\xc3\xb2\xa1\x02\x00"])
def test_bad_capture_is_one_line_and_exit_2(tmp_path, content):
    bad = tmp_path / "bad.pcap"
    bad.write_bytes(content)
    r = subprocess.run(["necst", "process", str(bad), "--out", str(tmp_path / "ds")],
                       capture_output=True, text=True)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and str(bad) in lines[0]
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "ds").exists()
    assert not any(p.name.startswith(".ds") for p in tmp_path.iterdir()), "temporary output left behind"


def test_missing_path_and_directory_exit_2(tmp_path):
    for target in (tmp_path / "nope.pcap", tmp_path):
        r = runner.invoke(app, ["process", str(target), "--out", str(tmp_path / "ds")])
        assert r.exit_code == 2 and "error:" in r.output


def test_existing_output_needs_force_and_inputs_are_never_overwritten(tmp_path):
    cap = tmp_path / "c.pcap"
    cap.write_bytes(pcap([(TS, TCP_PKT)] * 3))
    out = tmp_path / "ds"
    assert runner.invoke(app, ["process", str(cap), "--out", str(out), "-q"]).exit_code == 0
    r = runner.invoke(app, ["process", str(cap), "--out", str(out)])
    assert r.exit_code == 2 and "--force" in r.output
    assert runner.invoke(app, ["process", str(cap), "--out", str(out), "--force", "-q"]).exit_code == 0
    r = runner.invoke(app, ["process", str(cap), "--out", str(cap)])
    assert r.exit_code == 2 and cap.read_bytes()[:4] == b"\xd4\xc3\xb2\xa1"


def test_truncated_capture_warns_once_and_keeps_packets(tmp_path):
    cap = tmp_path / "cut.pcap"
    cap.write_bytes(pcap([(TS, TCP_PKT)] * 5)[:-7])
    r = subprocess.run(["necst", "process", str(cap), "--out", str(tmp_path / "ds")], capture_output=True, text=True)
    assert r.returncode == 0
    assert r.stderr.count("warning:") == 1 and "4 packets" in r.stdout
